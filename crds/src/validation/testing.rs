//! Objects the validator's tests check the validator with, made from the kinds' schemas.

use serde_json::{Map, Value, json};

/// An object with every field of `schema` set (lists and maps of two), so every rule is
/// evaluated and the `!has(...)` and "at most one of" rules are broken.
pub(crate) fn filled(schema: &Value) -> Value {
    if let Some(first) = schema.get("enum").and_then(Value::as_array).and_then(|e| e.first()) {
        return first.clone();
    }
    let flag = |k: &str| schema.get(k).and_then(Value::as_bool) == Some(true);
    if flag("x-kubernetes-int-or-string") {
        return json!(8080);
    }
    match schema.get("type").and_then(Value::as_str) {
        Some("object") => {
            let mut out = Map::new();
            for (name, s) in schema
                .get("properties")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
            {
                out.insert(name.clone(), filled(s));
            }
            if let Some(values) = schema.get("additionalProperties").filter(|a| a.is_object()) {
                out.insert("x-first".into(), filled(values));
                out.insert("second.key".into(), filled(values));
            }
            Value::Object(out)
        }
        Some("array") => {
            let item = schema.get("items").map(filled).unwrap_or(json!("x"));
            json!([item.clone(), item])
        }
        Some("integer") => json!(3),
        Some("number") => json!(0.5),
        Some("boolean") => json!(true),
        _ => match schema.get("format").and_then(Value::as_str) {
            Some("date-time") => json!("2026-12-06T00:00:00Z"),
            Some("duration") => json!("1s"),
            Some("byte") => json!("eA=="),
            _ => json!("x"),
        },
    }
}

/// `value` with every mapping that is an item of a list replaced by a string.
pub(crate) fn mistyped(value: &Value) -> Value {
    match value {
        Value::Object(fields) => Value::Object(fields.iter().map(|(k, v)| (k.clone(), mistyped(v))).collect()),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|i| {
                    if i.is_object() {
                        json!("not a mapping")
                    } else {
                        mistyped(i)
                    }
                })
                .collect(),
        ),
        other => other.clone(),
    }
}
