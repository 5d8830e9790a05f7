"""The Helm chart (deploy/helm/squeeze), offline: rendered by deploy/helm/render (Go
text/template + sprig, helm's template engine; helm itself is not packaged in Debian 12),
every object strictly schema-checked (k8s_schema.py), the GPU scheduling, probes, sizing,
security, routing and monitoring wiring asserted, the alert rules and the dashboard's queries
parsed by promtool, the alerts unit-tested with promtool, every metric they name checked
against a real server's /metrics, and deploy/k8s/squeeze.yaml kept equal to its rendering."""
import json
import os
import re
import subprocess
import tempfile
import unittest

import yaml

import harness
import k8s_schema

CHART = os.path.join(harness.SOURCE_DIR, "deploy", "helm", "squeeze")
RENDER_SRC = os.path.join(harness.SOURCE_DIR, "deploy", "helm", "render")
RENDER = os.path.join(harness.BUILD_DIR, "helm-render")
PLAIN = os.path.join(harness.SOURCE_DIR, "deploy", "k8s")


def build_renderer():
    env = dict(os.environ, GO111MODULE="off", GOPATH="/usr/share/gocode",
               GOCACHE=os.path.join(harness.BUILD_DIR, "gocache"), GOFLAGS="")
    subprocess.run(["go", "build", "-o", RENDER, "."], cwd=RENDER_SRC, env=env, check=True)


def render_text(*args, namespace="ml"):
    out = subprocess.run([RENDER, "-chart", CHART, "-name", "squeeze", "-namespace", namespace,
                          *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(out.stderr)
    return out.stdout


def render(*args):
    return [d for d in yaml.safe_load_all(render_text(*args)) if d]


def find(docs, kind, name=None):
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"{kind} {name}: {len(found)} found"
    return found[0]


def matches(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


class HelmChartTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        build_renderer()
        cls.docs = render()

    def assertSchemaValid(self, docs):
        errors = [e for d in docs for e in k8s_schema.validate(d)]
        self.assertEqual(errors, [])

    def test_default_render_is_schema_valid(self):
        kinds = sorted(d["kind"] for d in self.docs)
        self.assertEqual(kinds, sorted([
            "ConfigMap", "ConfigMap", "Deployment", "PersistentVolumeClaim", "PodDisruptionBudget",
            "PrometheusRule", "Service", "Service", "Service", "Service", "ServiceMonitor",
            "StatefulSet"]))
        self.assertSchemaValid(self.docs)
        # The validator does catch mistakes.
        broken = json.loads(json.dumps(find(self.docs, "StatefulSet")))
        broken["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {}
        broken["spec"]["replicas"] = "2"
        del broken["spec"]["selector"]
        errors = k8s_schema.validate(broken)
        self.assertTrue(any("readinessprobe" in e for e in errors), errors)
        self.assertTrue(any("spec.replicas" in e for e in errors), errors)

    def test_gpu_scheduling_probes_sizing_security(self):
        sts = find(self.docs, "StatefulSet")
        pod = sts["spec"]["template"]["spec"]
        c = pod["containers"][0]
        self.assertEqual(c["resources"]["limits"]["nvidia.com/gpu"], 1)
        self.assertEqual(c["resources"]["requests"]["nvidia.com/gpu"], 1)
        self.assertEqual(pod["runtimeClassName"], "nvidia")
        self.assertIn("nvidia.com/gpu.product", pod["nodeSelector"])
        self.assertIn({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                      pod["tolerations"])
        # Memory = weights 16 + contexts 64 + overhead 8 GiB; the context budget is the flag.
        self.assertEqual(c["resources"]["limits"]["memory"], "88Gi")
        self.assertIn("--max_context_memory_mb=65536", c["args"])
        self.assertIn("--device=cuda", c["args"])
        # Probes: three endpoints with three meanings; start-up covers the model load.
        paths = {p: c[p]["httpGet"]["path"] for p in ("startupProbe", "readinessProbe",
                                                      "livenessProbe")}
        self.assertEqual(paths, {"startupProbe": "/startupz", "readinessProbe": "/readyz",
                                 "livenessProbe": "/livez"})
        startup = c["startupProbe"]
        self.assertGreaterEqual(startup["periodSeconds"] * startup["failureThreshold"], 600)
        self.assertGreater(pod["terminationGracePeriodSeconds"], 60)  # > --grace_seconds=60
        self.assertTrue(pod["securityContext"]["runAsNonRoot"])
        self.assertNotEqual(pod["securityContext"]["runAsUser"], 0)
        self.assertFalse(c["securityContext"]["allowPrivilegeEscalation"])
        self.assertTrue(c["securityContext"]["readOnlyRootFilesystem"])
        self.assertNotIn(":latest", c["image"])
        self.assertEqual(c["imagePullPolicy"], "IfNotPresent")
        # Weights from a read-only PVC; contexts through the shared ReadWriteMany store.
        volumes = {v["name"]: v for v in pod["volumes"]}
        self.assertEqual(volumes["model"]["persistentVolumeClaim"]["claimName"], "squeeze-models")
        self.assertIn("--model=/models/Llama-3.1-8B-Instruct", c["args"])
        pvc = find(self.docs, "PersistentVolumeClaim")
        self.assertEqual(pvc["spec"]["accessModes"], ["ReadWriteMany"])
        self.assertEqual(volumes["shared-store"]["persistentVolumeClaim"]["claimName"],
                         pvc["metadata"]["name"])
        self.assertIn("--shared_store=/var/lib/squeeze-shared", c["args"])

    def test_services_pdb_router_and_monitoring_select_the_pods(self):
        sts = find(self.docs, "StatefulSet")
        pod_labels = sts["spec"]["template"]["metadata"]["labels"]
        ports = {p["name"] for p in sts["spec"]["template"]["spec"]["containers"][0]["ports"]}
        self.assertEqual(ports, {"grpc", "metrics", "openai"})
        for name in ("squeeze-replicas", "squeeze-direct", "squeeze-metrics"):
            svc = find(self.docs, "Service", name)
            self.assertTrue(matches(svc["spec"]["selector"], pod_labels), name)
            for p in svc["spec"]["ports"]:
                self.assertIn(p["targetPort"], ports)
        self.assertEqual(sts["spec"]["serviceName"], "squeeze-replicas")
        pdb = find(self.docs, "PodDisruptionBudget")
        self.assertTrue(matches(pdb["spec"]["selector"]["matchLabels"], pod_labels))
        self.assertEqual(pdb["spec"]["maxUnavailable"], 1)
        metrics = find(self.docs, "Service", "squeeze-metrics")
        sm = find(self.docs, "ServiceMonitor")
        self.assertTrue(matches(sm["spec"]["selector"]["matchLabels"], metrics["metadata"]["labels"]))
        self.assertFalse(matches(sm["spec"]["selector"]["matchLabels"],
                                 find(self.docs, "Service", "squeeze-direct")["metadata"]["labels"]))
        self.assertEqual(sm["spec"]["endpoints"][0]["port"], metrics["spec"]["ports"][0]["name"])
        # The router lists every replica by its stable DNS name and hashes the context header.
        conf = find(self.docs, "ConfigMap", "squeeze-router")["data"]["squeeze.conf"]
        upstreams = re.findall(r"^\s*server (\S+) max_fails", conf, re.M)
        self.assertEqual(upstreams, [f"squeeze-{i}.squeeze-replicas.ml.svc.cluster.local:50051"
                                     for i in range(sts["spec"]["replicas"])])
        self.assertIn("hash $squeeze_route consistent;", conf)
        self.assertIn("$http_x_squeeze_context", conf)
        self.assertNotIn("@", conf.split("map ")[1])  # every placeholder filled
        router = find(self.docs, "Deployment", "squeeze-router")
        front = find(self.docs, "Service", "squeeze")
        self.assertTrue(matches(front["spec"]["selector"],
                                router["spec"]["template"]["metadata"]["labels"]))
        self.assertFalse(matches(front["spec"]["selector"], pod_labels))
        with open(os.path.join(CHART, "dashboards", "squeeze.json")) as f:
            self.assertEqual(json.loads(find(self.docs, "ConfigMap", "squeeze-dashboard")
                                        ["data"]["squeeze.json"]), json.load(f))

    def test_other_values(self):
        docs = render("--set", "model.source=initContainer", "--set", "gpu.count=2",
                      "--set", "replicas=3", "--set", "contexts.sharedStore.enabled=false",
                      "--set", "router.enabled=false", "--set", "monitoring.serviceMonitor.enabled=false",
                      "--set", "contexts.maxMemoryGiB=34")
        self.assertSchemaValid(docs)
        self.assertEqual(sorted(d["kind"] for d in docs), sorted([
            "ConfigMap", "PodDisruptionBudget", "PrometheusRule", "Service", "Service", "Service",
            "StatefulSet"]))
        sts = find(docs, "StatefulSet")
        pod = sts["spec"]["template"]["spec"]
        c = pod["containers"][0]
        self.assertEqual(c["resources"]["limits"]["nvidia.com/gpu"], 2)
        self.assertEqual(c["resources"]["limits"]["memory"], "58Gi")
        self.assertEqual(pod["initContainers"][0]["name"], "fetch-model")
        self.assertIn({"name": "MODEL_DIR", "value": "/models/Llama-3.1-8B-Instruct"},
                      pod["initContainers"][0]["env"])
        volumes = {v["name"]: v for v in pod["volumes"]}
        self.assertEqual(volumes["model"]["emptyDir"]["sizeLimit"], "40Gi")
        self.assertIn("--state_dir=/var/lib/squeeze", c["args"])
        self.assertEqual(sts["spec"]["volumeClaimTemplates"][0]["spec"]["accessModes"],
                         ["ReadWriteOnce"])
        with self.assertRaisesRegex(RuntimeError, "model.source must be"):
            render("--set", "model.source=s3")

    def test_plain_manifests_are_the_rendered_chart(self):
        text = render_text("-f", os.path.join(PLAIN, "values.yaml"), namespace="default")
        with open(os.path.join(PLAIN, "squeeze.yaml")) as f:
            committed = f.read()
        header = committed[:committed.index("---")]
        self.assertEqual(committed[len(header):], text,
                         "deploy/k8s/squeeze.yaml is stale: regenerate it as its header says")
        docs = [d for d in yaml.safe_load_all(text) if d]
        self.assertSchemaValid(docs)
        c = find(docs, "StatefulSet")["spec"]["template"]["spec"]["containers"][0]
        self.assertNotIn("nvidia.com/gpu", c["resources"]["limits"])
        self.assertIn("--device=cpu", c["args"])


class RulesAndDashboardTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        build_renderer()
        cls.rule = find(render(), "PrometheusRule")
        cls.tmp = tempfile.mkdtemp(prefix="squeeze-rules-")
        cls.rules_file = os.path.join(cls.tmp, "rules.yaml")
        with open(cls.rules_file, "w") as f:
            yaml.safe_dump({"groups": cls.rule["spec"]["groups"]}, f)
        with open(os.path.join(CHART, "dashboards", "squeeze.json")) as f:
            cls.dashboard = json.load(f)
        cls.exprs = [t["expr"] for p in cls.dashboard["panels"] for t in p["targets"]]

    def promtool(self, *args):
        out = subprocess.run(["promtool", *args], capture_output=True, text=True)
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
        return out.stdout

    def test_rules_pass_promtool(self):
        self.promtool("check", "rules", self.rules_file)
        alerts = [r["alert"] for g in self.rule["spec"]["groups"] for r in g["rules"] if "alert" in r]
        self.assertGreaterEqual(len(alerts), 8)

    def test_alerts_fire_on_synthetic_series(self):
        sel = 'job="squeeze-metrics", namespace="ml"'
        tests = {"rule_files": [self.rules_file], "evaluation_interval": "1m", "tests": [
            {"interval": "1m",
             "input_series": [
                 {"series": f'squeeze_num_requests_waiting{{{sel}, pod="squeeze-0"}}',
                  "values": "0 100x15"},
                 {"series": f'squeeze_requests_total{{{sel}, pod="squeeze-0", status="OK", finish_reason="length"}}',
                  "values": "0+60x30"},
                 {"series": f'squeeze_requests_total{{{sel}, pod="squeeze-0", status="INTERNAL", finish_reason="abort"}}',
                  "values": "0+30x30"},
                 {"series": f'squeeze_requests_total{{{sel}, pod="squeeze-0", status="RESOURCE_EXHAUSTED", finish_reason="abort"}}',
                  "values": "0+1x30"},
                 {"series": f'up{{{sel}, pod="squeeze-1"}}', "values": "0x10"},
             ],
             "alert_rule_test": [
                 {"eval_time": "10m", "alertname": "SqueezeQueueBacklog",
                  "exp_alerts": [{"exp_labels": {"severity": "warning"},
                                  "exp_annotations": self.annotations("SqueezeQueueBacklog")}]},
                 {"eval_time": "20m", "alertname": "SqueezeHighErrorRatio",
                  "exp_alerts": [{"exp_labels": {"severity": "critical"},
                                  "exp_annotations": self.annotations("SqueezeHighErrorRatio")}]},
                 {"eval_time": "15m", "alertname": "SqueezeRequestsRejected",
                  "exp_alerts": [{"exp_labels": {"severity": "warning"},
                                  "exp_annotations": self.annotations("SqueezeRequestsRejected")}]},
                 {"eval_time": "5m", "alertname": "SqueezeReplicaDown",
                  "exp_alerts": [{"exp_labels": {"severity": "critical", "job": "squeeze-metrics",
                                                 "namespace": "ml", "pod": "squeeze-1"},
                                  "exp_annotations": {
                                      "summary": "Squeeze replica squeeze-1 is not scraped",
                                      "description":
                                          self.annotations("SqueezeReplicaDown")["description"]}}]},
                 {"eval_time": "1m", "alertname": "SqueezeQueueBacklog", "exp_alerts": []},
             ]},
            {"interval": "1m",
             "input_series": [
                 {"series": f'squeeze_requests_total{{{sel}, pod="squeeze-0", status="NOT_FOUND", finish_reason="abort"}}',
                  "values": "0+30x30"},
                 {"series": f'squeeze_requests_total{{{sel}, pod="squeeze-0", status="OK", finish_reason="length"}}',
                  "values": "0+1x30"},
             ],
             # Client mistakes are not the server's errors.
             "alert_rule_test": [{"eval_time": "25m", "alertname": "SqueezeHighErrorRatio",
                                  "exp_alerts": []}]},
        ]}
        path = os.path.join(self.tmp, "alerts_test.yaml")
        with open(path, "w") as f:
            yaml.safe_dump(tests, f)
        self.promtool("test", "rules", path)

    def annotations(self, alert):
        for g in self.rule["spec"]["groups"]:
            for r in g["rules"]:
                if r.get("alert") == alert:
                    return r["annotations"]

    def test_dashboard_queries_parse(self):
        rules = {"groups": [{"name": "dashboard", "rules": [
            {"record": f"dashboard:panel_{i}",
             "expr": e.replace("$__rate_interval", "5m").replace("$namespace", ".*")
                      .replace("$pod", ".*")}
            for i, e in enumerate(self.exprs)]}]}
        path = os.path.join(self.tmp, "dashboard_rules.yaml")
        with open(path, "w") as f:
            yaml.safe_dump(rules, f)
        self.promtool("check", "rules", path)
        titles = " | ".join(p["title"] for p in self.dashboard["panels"]).lower()
        for wanted in ("time to first token", "inter-token latency", "queue", "running",
                       "kv budget", "registrations", "resident contexts",
                       "resident context kv bytes", "errors by code"):
            self.assertIn(wanted, titles)

    def test_metric_names_exist_on_a_real_server(self):
        with harness.Server() as server:
            _, text = server.http_get("/metrics")
        exposed = set(re.findall(r"^# TYPE (\w+) ", text, re.M))
        self.assertIn("squeeze_time_to_first_token_seconds", exposed)
        used = set()
        rule_exprs = [r["expr"] for g in self.rule["spec"]["groups"] for r in g["rules"]]
        for expr in self.exprs + rule_exprs:
            used |= set(re.findall(r"\b(squeeze_[a-z0-9_]+)", expr))
        used = {re.sub(r"_(bucket|sum|count)$", "", n) if re.sub(r"_(bucket|sum|count)$", "", n)
                in exposed else n for n in used}
        self.assertEqual(sorted(used - exposed), [])
        self.assertGreaterEqual(len(used), 15)


if __name__ == "__main__":
    unittest.main(verbosity=2)
