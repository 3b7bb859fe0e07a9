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

/// Every object one edit away from `value`, each with the JSON pointer of the edit: each value
/// made null, each scalar given another type and another value of its type, each field
/// removed, an unknown field added to each mapping, each list emptied and given an item more,
/// each mapping and list made a string.
pub(crate) fn edits(value: &Value, at: &str, out: &mut Vec<(String, Value)>) {
    let mut at_least = |v: Value| out.push((at.to_string(), v));
    at_least(Value::Null);
    match value {
        Value::Bool(b) => {
            at_least(json!(!b));
            at_least(json!("true"));
        }
        Value::Number(n) => {
            at_least(json!(n.as_f64().unwrap_or_default() * 1000.0 + 70_000.0));
            at_least(json!(-1));
            at_least(json!(1.5));
            at_least(json!("5"));
        }
        Value::String(s) => {
            at_least(json!(format!("{s}-X.Y z")));
            at_least(json!(""));
            at_least(json!("x".repeat(300)));
            at_least(json!(5));
        }
        Value::Array(items) => {
            at_least(json!([]));
            at_least(json!("a list"));
            let mut longer = items.clone();
            longer.push(items.last().cloned().unwrap_or(json!("x")));
            at_least(Value::Array(longer));
            for (i, item) in items.iter().enumerate() {
                edits(item, &format!("{at}/{i}"), out);
            }
        }
        Value::Object(fields) => {
            at_least(json!("a mapping"));
            let mut wider = fields.clone();
            wider.insert("unknownField".into(), json!("x"));
            at_least(Value::Object(wider));
            for (name, field) in fields {
                let mut narrower = fields.clone();
                narrower.shift_remove(name);
                out.push((at.to_string(), Value::Object(narrower)));
                edits(
                    field,
                    &format!("{at}/{}", name.replace('~', "~0").replace('/', "~1")),
                    out,
                );
            }
        }
        Value::Null => {}
    }
}

/// `value` with the value at `pointer` replaced by `with`.
pub(crate) fn edited(value: &Value, pointer: &str, with: Value) -> Value {
    let mut out = value.clone();
    match out.pointer_mut(pointer) {
        Some(slot) => *slot = with,
        None => return with,
    }
    out
}
