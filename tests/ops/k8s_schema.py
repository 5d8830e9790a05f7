"""Strict offline validation of Kubernetes objects against the API models of Debian's
python3-kubernetes (the Kubernetes 1.22 API): every field must exist in its type, values must
have the field's type, and required fields must be present (the models' own client-side
validation). prometheus-operator objects get a structural check of the fields this chart uses."""
import kubernetes.client.models as models
from kubernetes.client import ApiClient

BUILTIN = {
    ("v1", "Service"): "V1Service",
    ("v1", "ConfigMap"): "V1ConfigMap",
    ("v1", "PersistentVolumeClaim"): "V1PersistentVolumeClaim",
    ("apps/v1", "StatefulSet"): "V1StatefulSet",
    ("apps/v1", "Deployment"): "V1Deployment",
    ("policy/v1", "PodDisruptionBudget"): "V1PodDisruptionBudget",
}

# monitoring.coreos.com/v1 fields (prometheus-operator's CRD schemas), the subset in use.
SERVICE_MONITOR_SPEC = {"selector", "endpoints", "namespaceSelector", "jobLabel",
                        "podTargetLabels", "targetLabels", "sampleLimit"}
SERVICE_MONITOR_ENDPOINT = {"port", "targetPort", "path", "interval", "scrapeTimeout", "scheme",
                            "honorLabels", "relabelings", "metricRelabelings", "params"}
RULE_GROUP = {"name", "interval", "rules", "partial_response_strategy"}
RULE = {"alert", "record", "expr", "for", "labels", "annotations"}


def _check(value, type_name, path, errors):
    if type_name.startswith("list["):
        if not isinstance(value, list):
            errors.append(f"{path}: expected a list")
            return
        for i, item in enumerate(value):
            _check(item, type_name[5:-1], f"{path}[{i}]", errors)
    elif type_name.startswith("dict("):
        if not isinstance(value, dict):
            errors.append(f"{path}: expected a map")
            return
        inner = type_name[type_name.index(",") + 1:-1].strip()
        for k, v in value.items():
            _check(v, inner, f"{path}.{k}", errors)
    elif type_name == "str":
        # Resource quantities are strings in the model but YAML numbers are valid quantities.
        quantity = ".limits." in path or ".requests." in path
        if not (isinstance(value, str) or (quantity and isinstance(value, (int, float))
                                           and not isinstance(value, bool))):
            errors.append(f"{path}: expected a string, got {value!r}")
    elif type_name == "int":
        if not isinstance(value, int) or isinstance(value, bool):
            errors.append(f"{path}: expected an integer, got {value!r}")
    elif type_name == "float":
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            errors.append(f"{path}: expected a number, got {value!r}")
    elif type_name == "bool":
        if not isinstance(value, bool):
            errors.append(f"{path}: expected true or false, got {value!r}")
    elif type_name in ("object", "datetime", "date"):
        pass  # IntOrString and free-form values
    else:
        cls = getattr(models, type_name)
        if not isinstance(value, dict):
            errors.append(f"{path}: expected a {type_name} object")
            return
        by_json = {json_name: attr for attr, json_name in cls.attribute_map.items()}
        for key, v in value.items():
            if key not in by_json:
                errors.append(f"{path}: unknown field '{key}' in {type_name}")
                continue
            if v is not None:
                _check(v, cls.openapi_types[by_json[key]], f"{path}.{key}", errors)


def validate(doc):
    """Errors (a list of strings) for one rendered object; empty when valid."""
    api, kind = doc.get("apiVersion"), doc.get("kind")
    name = f"{kind}/{doc.get('metadata', {}).get('name')}"
    errors = []
    if (api, kind) in BUILTIN:
        type_name = BUILTIN[(api, kind)]
        _check(doc, type_name, name, errors)
        if not errors:
            try:  # required fields, through the models' own validation
                ApiClient()._ApiClient__deserialize(doc, type_name)
            except ValueError as e:
                errors.append(f"{name}: {e}")
    elif (api, kind) == ("monitoring.coreos.com/v1", "ServiceMonitor"):
        spec = doc.get("spec", {})
        errors += [f"{name}: unknown spec field {k}" for k in set(spec) - SERVICE_MONITOR_SPEC]
        if not spec.get("endpoints"):
            errors.append(f"{name}: no endpoints")
        for ep in spec.get("endpoints", []):
            errors += [f"{name}: unknown endpoint field {k}"
                       for k in set(ep) - SERVICE_MONITOR_ENDPOINT]
        _check(spec.get("selector", {}), "V1LabelSelector", f"{name}.spec.selector", errors)
    elif (api, kind) == ("monitoring.coreos.com/v1", "PrometheusRule"):
        for g in doc.get("spec", {}).get("groups", []):
            errors += [f"{name}: unknown group field {k}" for k in set(g) - RULE_GROUP]
            for r in g.get("rules", []):
                errors += [f"{name}: unknown rule field {k}" for k in set(r) - RULE]
                if ("alert" in r) == ("record" in r):
                    errors.append(f"{name}: a rule needs exactly one of alert and record: {r}")
                if not isinstance(r.get("expr"), str):
                    errors.append(f"{name}: rule without an expr string: {r}")
    else:
        errors.append(f"{name}: no schema for {api} {kind}")
    if "metadata" in doc:
        _check(doc["metadata"], "V1ObjectMeta", f"{name}.metadata", errors)
    return errors
