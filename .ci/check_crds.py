#!/usr/bin/env python3
"""Independent checks of the generated CRDs and the examples, with no Trellis code involved.

1. Every CRD schema is *structural* (Kubernetes' rules: every node has a type, or is
   x-kubernetes-preserve-unknown-fields / int-or-string; no additionalProperties next to
   properties; metadata only name/generateName; no $ref/definitions).
2. Every Trellis (or Istio) object under examples/ validates against its CRD's
   openAPIV3Schema with the `jsonschema` library (unknown fields rejected, as the API
   server's strict field validation does).
"""
import glob
import os
import sys

import jsonschema
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ISTIO = {"networking.istio.io": "networking.trellis.dev", "security.istio.io": "security.trellis.dev"}
errors = []


def structural(node, path):
    if not isinstance(node, dict):
        errors.append(f"{path}: schema node is not an object")
        return
    for bad in ("$ref", "definitions", "$defs", "oneOf", "anyOf", "allOf", "not"):
        if bad in node:
            errors.append(f"{path}: {bad} is not allowed in a structural schema")
    preserve = node.get("x-kubernetes-preserve-unknown-fields") is True
    int_or_string = node.get("x-kubernetes-int-or-string") is True
    if "type" not in node and not (preserve or int_or_string):
        errors.append(f"{path}: missing type")
    if "properties" in node and "additionalProperties" in node:
        errors.append(f"{path}: properties and additionalProperties are mutually exclusive")
    if node.get("additionalProperties") is False:
        errors.append(f"{path}: additionalProperties: false is not allowed")
    for k, v in node.get("properties", {}).items():
        structural(v, f"{path}.{k}")
    if isinstance(node.get("additionalProperties"), dict):
        structural(node["additionalProperties"], f"{path}[*]")
    if "items" in node:
        structural(node["items"], f"{path}[]")


def to_json_schema(node):
    """OpenAPI v3 (Kubernetes flavour) -> JSON Schema: nullable becomes a null type, and
    objects with properties reject unknown fields unless they preserve them."""
    if not isinstance(node, dict):
        return node
    out = {k: v for k, v in node.items() if not k.startswith("x-kubernetes-") and k != "nullable"}
    if node.get("nullable") and "type" in node:
        out["type"] = [node["type"], "null"]
        if "enum" in out:
            out["enum"] = list(out["enum"]) + [None]
    if "properties" in node:
        out["properties"] = {k: to_json_schema(v) for k, v in node["properties"].items()}
        if not node.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    if isinstance(node.get("additionalProperties"), dict):
        out["additionalProperties"] = to_json_schema(node["additionalProperties"])
    if "items" in node:
        out["items"] = to_json_schema(node["items"])
    return out


schemas = {}
for path in sorted(glob.glob(os.path.join(ROOT, "crds", "*.yaml"))):
    with open(path) as f:
        crd = yaml.safe_load(f)
    name = crd["metadata"]["name"]
    spec = crd["spec"]
    for v in spec["versions"]:
        schema = v["schema"]["openAPIV3Schema"]
        structural(schema, f"{name} {v['name']}")
        js = to_json_schema(schema)
        # The root admits the API server's own fields.
        js["properties"].update({"apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": {"type": "object"}})
        schemas[(spec["group"], spec["names"]["kind"])] = js
    print(f"structural: {os.path.relpath(path, ROOT)}")

checked = 0
for path in sorted(glob.glob(os.path.join(ROOT, "examples", "**", "*.yaml"), recursive=True)):
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    for d in docs:
        group = d.get("apiVersion", "").split("/")[0]
        key = (ISTIO.get(group, group), d.get("kind"))
        if key not in schemas:
            continue
        rel = os.path.relpath(path, ROOT)
        try:
            jsonschema.validate(d, schemas[key])
            checked += 1
            print(f"schema-valid: {rel}: {d['kind']} {d['metadata'].get('namespace', '')}/{d['metadata']['name']}")
        except jsonschema.ValidationError as e:
            errors.append(f"{rel}: {d['kind']} {d['metadata'].get('name')}: {'.'.join(map(str, e.absolute_path))}: {e.message}")

if checked == 0:
    errors.append("no example objects were checked")
for e in errors:
    print(f"ERROR: {e}", file=sys.stderr)
print(f"{len(schemas)} CRDs structural, {checked} example objects schema-valid, {len(errors)} problems")
sys.exit(1 if errors else 0)
