//! CustomResourceDefinitions: turning a CRD into served resources, and the
//! structural-schema validation, defaulting and pruning of custom objects.

use serde_json::{Map, Value, json};

use crate::resources::{Catalog, PrinterColumn, ResourceType, ScalePaths};
use crate::store::Store;

/// Field errors as `(path, message)`.
pub type FieldErrors = Vec<(String, String)>;

/// The result of validating an object against a schema.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Outcome {
    pub errors: FieldErrors,
    /// Paths of fields the schema does not know (pruned from the object).
    pub unknown: Vec<String>,
}

fn s<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or_default()
}

/// Checks a CRD's names and versions and fills its status (names
/// accepted, established, stored versions).
pub fn prepare(crd: &mut Value) -> Result<(), FieldErrors> {
    let mut errs = FieldErrors::new();
    let group = s(crd, "/spec/group").to_string();
    let plural = s(crd, "/spec/names/plural").to_string();
    let kind = s(crd, "/spec/names/kind").to_string();
    let name = s(crd, "/metadata/name").to_string();
    if group.is_empty() {
        errs.push(("spec.group".into(), "Required value".into()));
    }
    if plural.is_empty() {
        errs.push(("spec.names.plural".into(), "Required value".into()));
    }
    if kind.is_empty() {
        errs.push(("spec.names.kind".into(), "Required value".into()));
    }
    if name != format!("{plural}.{group}") {
        errs.push((
            "metadata.name".into(),
            format!("Invalid value: \"{name}\": must be spec.names.plural+\".\"+spec.group"),
        ));
    }
    let versions = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if versions.is_empty() {
        errs.push((
            "spec.versions".into(),
            "Invalid value: must have exactly one version marked as storage version".into(),
        ));
    }
    let storage: Vec<&Value> = versions.iter().filter(|v| v["storage"] == json!(true)).collect();
    if storage.len() != 1 {
        errs.push((
            "spec.versions".into(),
            "Invalid value: must have exactly one version marked as storage version".into(),
        ));
    }
    for (i, v) in versions.iter().enumerate() {
        if v.pointer("/schema/openAPIV3Schema").is_none() {
            errs.push((
                format!("spec.versions[{i}].schema.openAPIV3Schema"),
                "Required value: schemas are required".into(),
            ));
        }
    }
    if !errs.is_empty() {
        return Err(errs);
    }
    let storage_version = storage[0]["name"].clone();
    let mut stored = crd
        .pointer("/status/storedVersions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if !stored.contains(&storage_version) {
        stored.push(storage_version);
    }
    let mut names = crd["spec"]["names"].clone();
    if names.get("singular").is_none() {
        names["singular"] = json!(kind.to_ascii_lowercase());
    }
    if names.get("listKind").is_none() {
        names["listKind"] = json!(format!("{kind}List"));
    }
    crd["spec"]["names"] = names.clone();
    if crd.pointer("/spec/scope").is_none() {
        crd["spec"]["scope"] = json!("Namespaced");
    }
    let now = crate::clock::now_rfc3339();
    crd["status"] = json!({
        "acceptedNames": names,
        "storedVersions": stored,
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": now},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": now}
        ]
    });
    Ok(())
}

/// The served resources of a CRD, one per served version.
pub fn resource_types(crd: &Value) -> Vec<ResourceType> {
    let group = s(crd, "/spec/group").to_string();
    let names = &crd["spec"]["names"];
    let kind = s(names, "/kind").to_string();
    let strs = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect()
    };
    crd.pointer("/spec/versions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|v| v["served"] != json!(false))
        .map(|v| {
            let columns = v["additionalPrinterColumns"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| PrinterColumn {
                    name: s(c, "/name").to_string(),
                    type_: s(c, "/type").to_string(),
                    json_path: s(c, "/jsonPath").to_string(),
                    priority: c["priority"].as_i64().unwrap_or(0),
                    description: s(c, "/description").to_string(),
                })
                .collect();
            let scale = v.pointer("/subresources/scale").map(|sc| ScalePaths {
                spec_replicas: s(sc, "/specReplicasPath").to_string(),
                status_replicas: s(sc, "/statusReplicasPath").to_string(),
                label_selector: sc.get("labelSelectorPath").and_then(Value::as_str).map(str::to_string),
            });
            ResourceType {
                group: group.clone(),
                version: s(v, "/name").to_string(),
                kind: kind.clone(),
                plural: s(names, "/plural").to_string(),
                singular: names["singular"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| kind.to_ascii_lowercase()),
                namespaced: crd.pointer("/spec/scope").and_then(Value::as_str) != Some("Cluster"),
                short_names: strs(&names["shortNames"]),
                categories: strs(&names["categories"]),
                status: v.pointer("/subresources/status").is_some(),
                scale,
                verbs: vec![
                    "delete",
                    "deletecollection",
                    "get",
                    "list",
                    "patch",
                    "create",
                    "update",
                    "watch",
                ],
                columns,
                schema: Some(
                    v.pointer("/schema/openAPIV3Schema")
                        .cloned()
                        .unwrap_or_else(|| json!({"type": "object"})),
                ),
                storage: v["storage"] == json!(true),
            }
        })
        .collect()
}

/// Serves (or re-serves) a CRD's resources.
pub fn register(catalog: &Catalog, crd: &Value) {
    if crd.pointer("/metadata/deletionTimestamp").is_some() {
        return;
    }
    let group = s(crd, "/spec/group");
    let plural = s(crd, "/spec/names/plural");
    if group.is_empty() || plural.is_empty() {
        return;
    }
    catalog.set_custom(group, plural, resource_types(crd));
}

/// Stops serving a deleted CRD and removes its objects.
pub fn unregister(catalog: &Catalog, store: &Store, crd: &Value) {
    let group = s(crd, "/spec/group");
    let plural = s(crd, "/spec/names/plural");
    catalog.set_custom(group, plural, Vec::new());
    let (items, _) = store.list(&format!("{group}/{plural}"), None);
    for item in items {
        let key = crate::store::ObjectKey {
            group_resource: format!("{group}/{plural}"),
            namespace: s(&item, "/metadata/namespace").to_string(),
            name: s(&item, "/metadata/name").to_string(),
        };
        // Already gone is fine.
        let _ = store.delete(&key, None);
    }
}

/// Validates `obj` against a structural schema, applying defaults and
/// pruning unknown fields in place, then evaluates the schema's
/// `x-kubernetes-validations` CEL rules (with `oldSelf` from `old` on
/// updates).
pub fn validate(schema: &Value, obj: &mut Value, old: Option<&Value>) -> Outcome {
    let mut out = validate_structure(schema, obj, Mode::Structural);
    if out.errors.is_empty()
        && let Err(errors) = kube_cel::validate(schema, obj, old)
    {
        for e in errors.into_vec() {
            let field = if e.field_path.is_empty() {
                "<root>".to_string()
            } else {
                e.field_path.clone()
            };
            out.errors
                .push((field, format!("Invalid value: \"object\": {}", e.message)));
        }
    }
    out
}

/// Validates a built-in object against its upstream OpenAPI schema:
/// unknown fields are pruned and reported, required fields and types are
/// checked. Unlike CRD schemas, an object schema without properties is
/// free-form and `null` means "not set".
pub fn validate_builtin(schema: &Value, obj: &mut Value) -> Outcome {
    validate_structure(schema, obj, Mode::OpenApi)
}

/// How to read a schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// CRD structural schemas: defaults, pruning of everything unnamed.
    Structural,
    /// Built-in OpenAPI: no defaults, property-less objects are free-form.
    OpenApi,
}

fn validate_structure(schema: &Value, obj: &mut Value, mode: Mode) -> Outcome {
    let mut out = Outcome::default();
    let Some(props) = schema.get("properties").and_then(Value::as_object) else {
        return out;
    };
    let Some(m) = obj.as_object_mut() else {
        out.errors.push((String::new(), "must be an object".into()));
        return out;
    };
    for (k, sub) in props {
        if matches!(k.as_str(), "apiVersion" | "kind" | "metadata") || mode == Mode::OpenApi {
            continue;
        }
        apply_default(m, k, sub);
    }
    let keys: Vec<String> = m.keys().cloned().collect();
    for k in keys {
        if matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
            continue;
        }
        match props.get(&k) {
            Some(sub) => {
                if let Some(v) = m.get_mut(&k) {
                    check(sub, v, &k, &mut out, mode);
                }
            }
            None if schema["x-kubernetes-preserve-unknown-fields"] == json!(true) => {}
            None => {
                m.remove(&k);
                out.unknown.push(k);
            }
        }
    }
    required(schema, m, "", &mut out);
    out
}

fn apply_default(m: &mut Map<String, Value>, k: &str, sub: &Value) {
    if let Some(d) = sub.get("default")
        && m.get(k).is_none()
    {
        m.insert(k.to_string(), d.clone());
    }
}

fn required(schema: &Value, m: &Map<String, Value>, path: &str, out: &mut Outcome) {
    for r in schema
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        if !m.contains_key(r) {
            out.errors.push((join(path, r), "Required value".into()));
        }
    }
}

fn join(path: &str, k: &str) -> String {
    if path.is_empty() {
        k.to_string()
    } else {
        format!("{path}.{k}")
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn check(schema: &Value, v: &mut Value, path: &str, out: &mut Outcome, mode: Mode) {
    if v.is_null() && (schema["nullable"] == json!(true) || mode == Mode::OpenApi) {
        return;
    }
    if schema["x-kubernetes-int-or-string"] == json!(true) {
        // Quantities are int-or-string too and accept any number.
        let number_ok = type_name(v) == "integer" || (mode == Mode::OpenApi && v.is_number());
        if !(v.is_string() || number_ok) {
            out.errors.push((
                path.to_string(),
                format!(
                    "Invalid value: \"{}\": {path} in body must be of type integer-or-string",
                    type_name(v)
                ),
            ));
        }
        return;
    }
    let expected = schema.get("type").and_then(Value::as_str).unwrap_or_default();
    let actual = type_name(v);
    let type_ok = match expected {
        "" => true,
        "number" => matches!(actual, "number" | "integer"),
        t => t == actual,
    };
    if !type_ok {
        out.errors.push((
            path.to_string(),
            format!("Invalid value: \"{actual}\": {path} in body must be of type {expected}: \"{actual}\""),
        ));
        return;
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(v)
    {
        let list: Vec<String> = allowed.iter().map(|a| a.to_string()).collect();
        out.errors.push((
            path.to_string(),
            format!("Unsupported value: {v}: supported values: {}", list.join(", ")),
        ));
    }
    match v {
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or(0.0);
            if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
                let excl = schema["exclusiveMinimum"] == json!(true);
                if x < min || (excl && x <= min) {
                    out.errors.push((
                        path.to_string(),
                        format!("Invalid value: {v}: {path} in body should be greater than or equal to {min}"),
                    ));
                }
            }
            if let Some(max) = schema.get("maximum").and_then(Value::as_f64) {
                let excl = schema["exclusiveMaximum"] == json!(true);
                if x > max || (excl && x >= max) {
                    out.errors.push((
                        path.to_string(),
                        format!("Invalid value: {v}: {path} in body should be less than or equal to {max}"),
                    ));
                }
            }
        }
        Value::String(st) => {
            let len = st.chars().count() as u64;
            if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
                && len < min
            {
                out.errors.push((
                    path.to_string(),
                    format!("Invalid value: \"{st}\": {path} in body should be at least {min} chars long"),
                ));
            }
            if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
                && len > max
            {
                out.errors
                    .push((path.to_string(), format!("Too long: may not be more than {max} bytes")));
            }
            if let Some(p) = schema.get("pattern").and_then(Value::as_str) {
                match regex::Regex::new(p) {
                    Ok(re) if !re.is_match(st) => out.errors.push((
                        path.to_string(),
                        format!("Invalid value: \"{st}\": {path} in body should match '{p}'"),
                    )),
                    _ => {}
                }
            }
        }
        Value::Array(items) => {
            let n = items.len() as u64;
            if let Some(min) = schema.get("minItems").and_then(Value::as_u64)
                && n < min
            {
                out.errors.push((
                    path.to_string(),
                    format!("Invalid value: {n}: {path} in body should have at least {min} items"),
                ));
            }
            if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
                && n > max
            {
                out.errors.push((
                    path.to_string(),
                    format!("Too many: {n}: must have at most {max} items"),
                ));
            }
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    if let Value::Object(m) = item
                        && mode == Mode::Structural
                    {
                        default_children(item_schema, m);
                    }
                    check(item_schema, item, &format!("{path}[{i}]"), out, mode);
                }
            }
        }
        Value::Object(m) => {
            if schema["x-kubernetes-embedded-resource"] == json!(true) && schema.get("properties").is_none() {
                return;
            }
            if mode == Mode::Structural {
                default_children(schema, m);
            }
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties");
            if mode == Mode::OpenApi && props.is_none() && additional.is_none() {
                return;
            }
            let preserve = schema["x-kubernetes-preserve-unknown-fields"] == json!(true);
            let keys: Vec<String> = m.keys().cloned().collect();
            for k in keys {
                let child_path = join(path, &k);
                let sub = props.and_then(|p| p.get(&k)).or(match additional {
                    Some(a) if a.is_object() => Some(a),
                    _ => None,
                });
                match sub {
                    Some(sub) => {
                        if let Some(child) = m.get_mut(&k) {
                            check(sub, child, &child_path, out, mode);
                        }
                    }
                    None if preserve || additional == Some(&json!(true)) => {}
                    None if schema["x-kubernetes-embedded-resource"] == json!(true)
                        && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") => {}
                    None => {
                        m.remove(&k);
                        out.unknown.push(child_path);
                    }
                }
            }
            required(schema, m, path, out);
        }
        _ => {}
    }
}

fn default_children(schema: &Value, m: &mut Map<String, Value>) {
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (k, sub) in props {
            apply_default(m, k, sub);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn widget_crd() -> Value {
        json!({
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "widgets.example.com"},
            "spec": {"group": "example.com", "scope": "Namespaced",
                "names": {"plural": "widgets", "kind": "Widget", "shortNames": ["wd"]},
                "versions": [{"name": "v1", "served": true, "storage": true,
                    "subresources": {"status": {}, "scale": {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas"}},
                    "additionalPrinterColumns": [{"name": "Size", "type": "integer", "jsonPath": ".spec.size"}],
                    "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                        "spec": {"type": "object", "required": ["size"], "properties": {
                            "size": {"type": "integer", "minimum": 1, "maximum": 10},
                            "color": {"type": "string", "enum": ["red", "blue"], "default": "red"},
                            "name": {"type": "string", "pattern": "^[a-z]+$"},
                            "tags": {"type": "array", "maxItems": 2, "items": {"type": "string"}},
                            "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                            "port": {"x-kubernetes-int-or-string": true}
                        }},
                        "status": {"type": "object", "properties": {"replicas": {"type": "integer"}}}
                    }}}
                }]
            }
        })
    }

    #[test]
    fn crds_become_served_resources_with_status() {
        let mut crd = widget_crd();
        prepare(&mut crd).unwrap();
        assert_eq!(crd["status"]["conditions"][1]["type"], "Established");
        assert_eq!(crd["spec"]["names"]["singular"], "widget");
        let rts = resource_types(&crd);
        assert_eq!(rts.len(), 1);
        let rt = &rts[0];
        assert!(rt.namespaced && rt.status && rt.scale.is_some());
        assert_eq!(rt.columns[0].name, "Size");
        let mut bad = widget_crd();
        bad["metadata"]["name"] = json!("nope");
        assert!(prepare(&mut bad).is_err());
    }

    #[test]
    fn cel_rules_are_enforced_with_old_self() {
        let schema = json!({"type": "object", "properties": {"spec": {
            "type": "object",
            "x-kubernetes-validations": [
                {"rule": "self.min <= self.max", "message": "min must not exceed max"},
                {"rule": "self.mode == oldSelf.mode", "message": "mode is immutable"}
            ],
            "properties": {"min": {"type": "integer"}, "max": {"type": "integer"}, "mode": {"type": "string"}}
        }}});
        let mut ok = json!({"spec": {"min": 1, "max": 2, "mode": "a"}});
        assert!(validate(&schema, &mut ok, None).errors.is_empty());
        let mut bad = json!({"spec": {"min": 3, "max": 2, "mode": "a"}});
        let out = validate(&schema, &mut bad, None);
        assert_eq!(out.errors.len(), 1, "{:?}", out.errors);
        assert!(out.errors[0].1.contains("min must not exceed max"), "{:?}", out.errors);
        let old = json!({"spec": {"min": 1, "max": 2, "mode": "a"}});
        let mut changed = json!({"spec": {"min": 1, "max": 2, "mode": "b"}});
        let out = validate(&schema, &mut changed, Some(&old));
        assert!(
            out.errors.iter().any(|(_, m)| m.contains("mode is immutable")),
            "{:?}",
            out.errors
        );
    }

    #[test]
    fn validation_defaults_prunes_and_reports() {
        let crd = widget_crd();
        let schema = crd.pointer("/spec/versions/0/schema/openAPIV3Schema").unwrap();
        let mut ok = json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {"size": 3, "extra": {"any": 1}, "port": "http", "bogus": 1}, "top": 1});
        let out = validate(schema, &mut ok, None);
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        assert_eq!(ok["spec"]["color"], "red");
        assert_eq!(out.unknown, ["spec.bogus", "top"]);
        assert!(ok["spec"].get("bogus").is_none());
        assert_eq!(ok["spec"]["extra"]["any"], 1);

        let mut bad =
            json!({"spec": {"size": 11, "color": "green", "name": "A1", "tags": ["a", "b", "c"], "port": true}});
        let out = validate(schema, &mut bad, None);
        let mut fields: Vec<&str> = out.errors.iter().map(|(f, _)| f.as_str()).collect();
        fields.sort_unstable();
        assert_eq!(
            fields,
            ["spec.color", "spec.name", "spec.port", "spec.size", "spec.tags"],
            "{:?}",
            out.errors
        );

        let mut missing = json!({"spec": {}});
        let out = validate(schema, &mut missing, None);
        assert_eq!(out.errors, [("spec.size".to_string(), "Required value".to_string())]);

        let mut wrong = json!({"spec": {"size": "big"}});
        assert!(
            validate(schema, &mut wrong, None).errors[0]
                .1
                .contains("must be of type integer")
        );
    }
}
