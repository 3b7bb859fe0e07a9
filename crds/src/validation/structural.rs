//! Structural validation: an object against its CRD's OpenAPI v3 schema, as the API server
//! checks it — types, required fields, enums, numeric ranges, lengths, patterns, and unknown
//! fields (which the API server would prune silently; here they are errors).
//!
//! Only the schema subset the generated CRDs use is interpreted; CEL rules are evaluated
//! elsewhere.

use std::collections::HashMap;

use regex::Regex;
use serde_json::{Map, Value};

use super::Findings;

/// The schema's `pattern`s, compiled once (a pattern that does not compile is not checked, as
/// before: the generated CRDs' patterns all compile, which a test checks).
#[derive(Debug, Default)]
pub(super) struct Patterns(pub(super) HashMap<String, Regex>);

impl Patterns {
    /// Compile every `pattern` of `schema`.
    pub(super) fn of(schema: &Value) -> Patterns {
        fn collect(v: &Value, out: &mut HashMap<String, Regex>) {
            match v {
                Value::Object(map) => {
                    if let Some(p) = map.get("pattern").and_then(Value::as_str)
                        && !out.contains_key(p)
                        && let Ok(re) = Regex::new(p)
                    {
                        out.insert(p.to_string(), re);
                    }
                    for child in map.values() {
                        collect(child, out);
                    }
                }
                Value::Array(items) => items.iter().for_each(|i| collect(i, out)),
                _ => {}
            }
        }
        let mut out = HashMap::new();
        collect(schema, &mut out);
        Patterns(out)
    }
}

/// Check `obj` against `schema`; returns true when nothing structural is wrong.
pub(super) fn check(schema: &Value, patterns: &Patterns, obj: &Value, f: &mut Findings) -> bool {
    let before = f.out.len();
    walk(schema, patterns, obj, &Path::Root, true, f);
    f.out.len() == before
}

/// Where a value is, written out only for a finding.
// why: the walk visits every field of every object validated; rendering each one's path was
// an allocation per field (a sixth of the walk) for the rare finding that needs it.
#[derive(Debug, Clone, Copy)]
enum Path<'a> {
    Root,
    /// A field: `spec.http` (`http` at the root).
    Field(&'a Path<'a>, &'a str),
    /// A map's entry: `headers[x-user]`.
    Entry(&'a Path<'a>, &'a str),
    /// A list's item: `http[0]`.
    Index(&'a Path<'a>, usize),
}

impl std::fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Path::Root => Ok(()),
            Path::Field(Path::Root, key) => f.write_str(key),
            Path::Field(parent, key) => write!(f, "{parent}.{key}"),
            Path::Entry(parent, key) => write!(f, "{parent}[{key}]"),
            Path::Index(parent, i) => write!(f, "{parent}[{i}]"),
        }
    }
}

fn walk(schema: &Value, patterns: &Patterns, value: &Value, path: &Path<'_>, root: bool, f: &mut Findings) {
    let Some(schema) = schema.as_object() else { return };
    if value.is_null() {
        if !schema.get("nullable").and_then(Value::as_bool).unwrap_or(false) {
            f.error(path.to_string(), "must not be null");
        }
        return;
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        let list: Vec<String> = allowed
            .iter()
            .filter(|v| !v.is_null())
            .map(|v| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string()))
            .collect();
        f.error(
            path.to_string(),
            format!("unsupported value {}; allowed: {}", short(value), list.join(", ")),
        );
        return;
    }
    let preserve = schema
        .get("x-kubernetes-preserve-unknown-fields")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    match schema.get("type").and_then(Value::as_str) {
        Some("object") => object(schema, patterns, value, path, root, preserve, f),
        Some("array") => {
            let Some(items) = value.as_array() else {
                return f.error(path.to_string(), format!("must be a list, not {}", type_name(value)));
            };
            bounds(schema, items.len() as f64, "minItems", "maxItems", "items", path, f);
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    walk(item_schema, patterns, item, &Path::Index(path, i), false, f);
                }
            }
        }
        Some("string") => {
            let Some(s) = value.as_str() else {
                return f.error(path.to_string(), format!("must be a string, not {}", type_name(value)));
            };
            bounds(
                schema,
                s.chars().count() as f64,
                "minLength",
                "maxLength",
                "characters",
                path,
                f,
            );
            if let Some(p) = schema.get("pattern").and_then(Value::as_str)
                && let Some(re) = patterns.0.get(p)
                && !re.is_match(s)
            {
                f.error(
                    path.to_string(),
                    format!("{} does not match the pattern {p}", short(value)),
                );
            }
        }
        Some("integer") => {
            let is_int = value.as_i64().is_some() || value.as_u64().is_some();
            if !is_int {
                return f.error(path.to_string(), format!("must be an integer, not {}", short(value)));
            }
            range(schema, value, path, f);
        }
        Some("number") => {
            if !value.is_number() {
                return f.error(path.to_string(), format!("must be a number, not {}", short(value)));
            }
            range(schema, value, path, f);
        }
        Some("boolean") if !value.is_boolean() => {
            f.error(path.to_string(), format!("must be true or false, not {}", short(value)));
        }
        _ => {}
    }
}

fn object(
    schema: &Map<String, Value>,
    patterns: &Patterns,
    value: &Value,
    path: &Path<'_>,
    root: bool,
    preserve: bool,
    f: &mut Findings,
) {
    let Some(map) = value.as_object() else {
        return f.error(path.to_string(), format!("must be a mapping, not {}", type_name(value)));
    };
    if let Some(required) = schema.get("required").and_then(Value::as_array) {
        for r in required.iter().filter_map(Value::as_str) {
            if !map.contains_key(r) {
                f.error(Path::Field(path, r).to_string(), "is required");
            }
        }
    }
    let properties = schema.get("properties").and_then(Value::as_object);
    let additional = schema.get("additionalProperties");
    for (key, v) in map {
        let child = if properties.is_none() && additional.is_some() {
            Path::Entry(path, key)
        } else {
            Path::Field(path, key)
        };
        if let Some(p) = properties.and_then(|p| p.get(key)) {
            walk(p, patterns, v, &child, false, f);
        } else if let Some(a) = additional.filter(|a| a.is_object()) {
            walk(a, patterns, v, &child, false, f);
        } else if root && matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
            // Type meta and object meta are the API server's, checked in `format::metadata`.
        } else if !preserve && properties.is_some() {
            let known: Vec<&str> = properties
                .map(|p| p.keys().map(String::as_str).collect())
                .unwrap_or_default();
            f.error(
                child.to_string(),
                format!("unknown field {key:?}; known fields here: {}", known.join(", ")),
            );
        }
    }
}

fn range(schema: &Map<String, Value>, value: &Value, path: &Path<'_>, f: &mut Findings) {
    let Some(n) = value.as_f64() else { return };
    let min = schema.get("minimum").and_then(Value::as_f64);
    let max = schema.get("maximum").and_then(Value::as_f64);
    let out_of_range = min.is_some_and(|m| n < m) || max.is_some_and(|m| n > m);
    if out_of_range {
        let allowed = match (min, max) {
            (Some(a), Some(b)) => format!("allowed: {} to {}", num(a), num(b)),
            (Some(a), None) => format!("allowed: {} or more", num(a)),
            (None, Some(b)) => format!("allowed: {} or less", num(b)),
            (None, None) => unreachable!("out of range needs a bound"),
        };
        f.error(path.to_string(), format!("{} is out of range; {allowed}", short(value)));
    }
}

fn bounds(
    schema: &Map<String, Value>,
    n: f64,
    min_key: &str,
    max_key: &str,
    unit: &str,
    path: &Path<'_>,
    f: &mut Findings,
) {
    if let Some(min) = schema.get(min_key).and_then(Value::as_f64)
        && n < min
    {
        f.error(path.to_string(), format!("must have at least {} {unit}", num(min)));
    }
    if let Some(max) = schema.get(max_key).and_then(Value::as_f64)
        && n > max
    {
        f.error(path.to_string(), format!("must have at most {} {unit}", num(max)));
    }
}

fn num(n: f64) -> String {
    if n.fract() == 0.0 {
        format!("{}", n as i64)
    } else {
        format!("{n}")
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 60 {
        format!("{}...", s.chars().take(57).collect::<String>())
    } else {
        s
    }
}
