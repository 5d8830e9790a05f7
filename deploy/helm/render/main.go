// Command render renders a Helm chart offline the way `helm template` does, for machines
// without helm (it is not packaged in Debian 12): Go's text/template with the sprig function
// library (helm's template engine and functions, from Debian's golang packages), helm's extra
// functions (include, tpl, required, toYaml, fromYaml, toJson, fromJson, lookup), the built-in
// objects .Values (values.yaml merged with -f files and --set), .Release, .Chart, .Files and
// .Capabilities, and helm's output format ("---" + "# Source:" per rendered file). It renders;
// it does not lint or install. Build (Debian: golang-go, golang-github-masterminds-sprig-dev,
// golang-k8s-sigs-yaml-dev):
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o render ./deploy/helm/render
//	render -chart deploy/helm/squeeze [-f values.yaml]... [--set a.b=c]... [-name R] [-namespace N]
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/template"

	"github.com/Masterminds/sprig"
	"sigs.k8s.io/yaml"
)

type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

// Chart holds the Chart.yaml fields templates read (.Chart.Name, .Chart.Version, ...).
type Chart struct {
	Name        string `json:"name"`
	Version     string `json:"version"`
	AppVersion  string `json:"appVersion"`
	Description string `json:"description"`
	Type        string `json:"type"`
	KubeVersion string `json:"kubeVersion"`
	APIVersion  string `json:"apiVersion"`
}

// Files gives templates the chart's non-template files, like helm's .Files.
type Files map[string][]byte

func (f Files) Get(name string) string { return string(f[name]) }

func (f Files) GetBytes(name string) []byte { return f[name] }

// mergeValues overlays src on dst like helm: maps merge key by key, anything else replaces.
func mergeValues(dst, src map[string]interface{}) map[string]interface{} {
	for k, v := range src {
		if sm, ok := v.(map[string]interface{}); ok {
			if dm, ok := dst[k].(map[string]interface{}); ok {
				dst[k] = mergeValues(dm, sm)
				continue
			}
		}
		dst[k] = v
	}
	return dst
}

// setValue applies one --set a.b.c=value (the value parsed as a YAML scalar).
func setValue(values map[string]interface{}, assignment string) error {
	eq := strings.Index(assignment, "=")
	if eq <= 0 {
		return fmt.Errorf("--set %q: expected key=value", assignment)
	}
	var value interface{}
	if err := yaml.Unmarshal([]byte(assignment[eq+1:]), &value); err != nil {
		return fmt.Errorf("--set %q: %v", assignment, err)
	}
	keys := strings.Split(assignment[:eq], ".")
	m := values
	for _, k := range keys[:len(keys)-1] {
		next, ok := m[k].(map[string]interface{})
		if !ok {
			next = map[string]interface{}{}
			m[k] = next
		}
		m = next
	}
	m[keys[len(keys)-1]] = value
	return nil
}

func readYAML(path string) (map[string]interface{}, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	out := map[string]interface{}{}
	if err := yaml.Unmarshal(data, &out); err != nil {
		return nil, fmt.Errorf("%s: %v", path, err)
	}
	return out, nil
}

func toYAML(v interface{}) string {
	data, err := yaml.Marshal(v)
	if err != nil {
		return ""
	}
	return strings.TrimSuffix(string(data), "\n")
}

func fromYAML(s string) map[string]interface{} {
	m := map[string]interface{}{}
	if err := yaml.Unmarshal([]byte(s), &m); err != nil {
		m["Error"] = err.Error()
	}
	return m
}

func toJSON(v interface{}) string {
	data, err := json.Marshal(v)
	if err != nil {
		return ""
	}
	return string(data)
}

func fromJSON(s string) map[string]interface{} {
	m := map[string]interface{}{}
	if err := json.Unmarshal([]byte(s), &m); err != nil {
		m["Error"] = err.Error()
	}
	return m
}

func run() error {
	chartDir := flag.String("chart", "", "chart directory")
	name := flag.String("name", "squeeze", "release name")
	namespace := flag.String("namespace", "default", "release namespace")
	kubeVersion := flag.String("kube-version", "1.28.0", "Kubernetes version for .Capabilities")
	var valueFiles, sets stringList
	flag.Var(&valueFiles, "f", "values file (repeatable; later ones win)")
	flag.Var(&sets, "set", "key.path=value (repeatable; applied last)")
	flag.Parse()
	if *chartDir == "" {
		return fmt.Errorf("-chart is required")
	}

	var chart Chart
	data, err := os.ReadFile(filepath.Join(*chartDir, "Chart.yaml"))
	if err != nil {
		return err
	}
	if err := yaml.Unmarshal(data, &chart); err != nil {
		return fmt.Errorf("Chart.yaml: %v", err)
	}
	values, err := readYAML(filepath.Join(*chartDir, "values.yaml"))
	if err != nil {
		return err
	}
	for _, f := range valueFiles {
		overlay, err := readYAML(f)
		if err != nil {
			return err
		}
		values = mergeValues(values, overlay)
	}
	for _, s := range sets {
		if err := setValue(values, s); err != nil {
			return err
		}
	}

	files := Files{}
	var templates []string
	err = filepath.Walk(*chartDir, func(path string, info os.FileInfo, err error) error {
		if err != nil || info.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(*chartDir, path)
		rel = filepath.ToSlash(rel)
		if strings.HasPrefix(rel, "templates/") {
			templates = append(templates, rel)
		} else {
			content, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			files[rel] = content
		}
		return nil
	})
	if err != nil {
		return err
	}
	sort.Strings(templates)

	root := template.New("root").Option("missingkey=zero")
	funcs := sprig.TxtFuncMap()
	delete(funcs, "env") // as helm: templates do not read the environment
	delete(funcs, "expandenv")
	funcs["toYaml"] = toYAML
	funcs["fromYaml"] = fromYAML
	funcs["toJson"] = toJSON
	funcs["fromJson"] = fromJSON
	funcs["include"] = func(name string, data interface{}) (string, error) {
		var buf bytes.Buffer
		err := root.ExecuteTemplate(&buf, name, data)
		return buf.String(), err
	}
	funcs["tpl"] = func(text string, data interface{}) (string, error) {
		t, err := root.Clone()
		if err != nil {
			return "", err
		}
		t, err = t.New("tpl").Parse(text)
		if err != nil {
			return "", err
		}
		var buf bytes.Buffer
		err = t.Execute(&buf, data)
		return buf.String(), err
	}
	funcs["required"] = func(msg string, v interface{}) (interface{}, error) {
		if v == nil || v == "" {
			return nil, fmt.Errorf("%s", msg)
		}
		return v, nil
	}
	funcs["lookup"] = func(...interface{}) map[string]interface{} { return map[string]interface{}{} }
	root.Funcs(funcs)
	for _, rel := range templates {
		content, err := os.ReadFile(filepath.Join(*chartDir, rel))
		if err != nil {
			return err
		}
		if _, err := root.New(chart.Name + "/" + rel).Parse(string(content)); err != nil {
			return err
		}
	}

	major, minor := "1", "28"
	if parts := strings.Split(*kubeVersion, "."); len(parts) >= 2 {
		major, minor = parts[0], parts[1]
	}
	top := map[string]interface{}{
		"Values": values,
		"Chart":  chart,
		"Files":  files,
		"Release": map[string]interface{}{
			"Name": *name, "Namespace": *namespace, "Service": "Helm", "IsInstall": true,
			"IsUpgrade": false, "Revision": 1,
		},
		"Capabilities": map[string]interface{}{
			"KubeVersion": map[string]interface{}{
				"Version": "v" + *kubeVersion, "Major": major, "Minor": minor,
			},
		},
		"Template": map[string]interface{}{"BasePath": chart.Name + "/templates"},
	}
	var out bytes.Buffer
	for _, rel := range templates {
		base := filepath.Base(rel)
		if strings.HasPrefix(base, "_") || strings.HasSuffix(base, ".txt") {
			continue // partials and NOTES.txt render nothing
		}
		name := chart.Name + "/" + rel
		var buf bytes.Buffer
		if err := root.ExecuteTemplate(&buf, name, top); err != nil {
			return err
		}
		text := strings.ReplaceAll(buf.String(), "<no value>", "")
		if strings.TrimSpace(text) == "" {
			continue
		}
		fmt.Fprintf(&out, "---\n# Source: %s\n%s\n", name, strings.TrimSpace(text))
	}
	_, err = os.Stdout.Write(out.Bytes())
	return err
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "render:", err)
		os.Exit(1)
	}
}
