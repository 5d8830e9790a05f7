{{- define "squeeze.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "squeeze.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "squeeze.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: server
{{- end -}}

{{- define "squeeze.routerSelectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: router
{{- end -}}

{{/* The model directory inside the pod. */}}
{{- define "squeeze.modelDir" -}}
{{- if eq .Values.model.source "image" -}}
{{ .Values.model.imagePath }}
{{- else -}}
{{ printf "%s/%s" .Values.model.mountPath .Values.model.subdir }}
{{- end -}}
{{- end -}}

{{/* Host memory: memory-mapped weights + resident context KV (--max_context_memory_mb) +
     overhead, in GiB. */}}
{{- define "squeeze.memoryGiB" -}}
{{- add .Values.model.weightsGiB .Values.contexts.maxMemoryGiB .Values.server.overheadGiB -}}
{{- end -}}

{{- define "squeeze.resources" -}}
{{- if .Values.resources -}}
{{ toYaml .Values.resources }}
{{- else -}}
requests:
  cpu: {{ .Values.server.cpu | quote }}
  memory: {{ include "squeeze.memoryGiB" . }}Gi
  {{- if gt (int .Values.gpu.count) 0 }}
  {{ .Values.gpu.resourceName }}: {{ .Values.gpu.count }}
  {{- end }}
limits:
  memory: {{ include "squeeze.memoryGiB" . }}Gi
  {{- if gt (int .Values.gpu.count) 0 }}
  {{ .Values.gpu.resourceName }}: {{ .Values.gpu.count }}
  {{- end }}
{{- end -}}
{{- end -}}
