//! Structural validation: an object against its CRD's OpenAPI v3 schema, as the API server
//! checks it — types, required fields, enums, numeric ranges, lengths, patterns, and unknown
//! fields (which the API server would prune silently; here they are errors).
//!
//! Only the schema subset the generated CRDs use is interpreted; CEL rules are evaluated
//! elsewhere.

use std::collections::HashMap;

use regex::Regex;
use serde_json::Value;

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

/// A schema node compiled for the walk: what the walk reads of it, read once.
// why: the walk read each keyword of each node it passed through from the schema's JSON (a
// hashed lookup per keyword, seven or more per field of the object validated, and the
// pattern's text hashed to find its regex).
#[derive(Debug)]
pub(super) struct Node {
    /// False for a schema that is not a mapping: nothing is checked under it.
    checked: bool,
    nullable: bool,
    /// `enum`.
    allowed: Option<Vec<Value>>,
    /// `x-kubernetes-preserve-unknown-fields`.
    preserve: bool,
    of: Type,
}

/// What a node's `type` makes the walk check.
#[derive(Debug)]
enum Type {
    Object {
        required: Vec<String>,
        /// `properties`, in the schema's order (`None` when the node has none).
        properties: Option<Vec<(String, Node)>>,
        /// The indices of `properties` by name, sorted.
        by_name: Vec<usize>,
        /// Whether the node has `additionalProperties` (whatever its value).
        has_additional: bool,
        /// `additionalProperties` when it is a schema.
        additional: Option<Box<Node>>,
    },
    Array {
        bounds: Bounds,
        items: Option<Box<Node>>,
    },
    String {
        bounds: Bounds,
        /// `pattern`, with its regex when it compiles (one that does not is not checked).
        pattern: Option<(String, Regex)>,
    },
    Integer(Bounds),
    Number(Bounds),
    Boolean,
    /// No `type`, or one the walk does not check.
    Other,
}

/// A node's lower and upper bounds (items, characters, or the value).
#[derive(Debug, Default, Clone, Copy)]
struct Bounds {
    min: Option<f64>,
    max: Option<f64>,
}

impl Node {
    /// Compile `schema`, its patterns' regexes taken from `patterns`.
    pub(super) fn of(schema: &Value, patterns: &Patterns) -> Node {
        let Some(map) = schema.as_object() else {
            return Node {
                checked: false,
                nullable: false,
                allowed: None,
                preserve: false,
                of: Type::Other,
            };
        };
        let flag = |key: &str| map.get(key).and_then(Value::as_bool).unwrap_or(false);
        let bounds = |min: &str, max: &str| Bounds {
            min: map.get(min).and_then(Value::as_f64),
            max: map.get(max).and_then(Value::as_f64),
        };
        let of = match map.get("type").and_then(Value::as_str) {
            Some("object") => {
                let properties: Option<Vec<(String, Node)>> =
                    map.get("properties").and_then(Value::as_object).map(|p| {
                        p.iter()
                            .map(|(name, s)| (name.clone(), Node::of(s, patterns)))
                            .collect()
                    });
                let mut by_name: Vec<usize> = (0..properties.as_ref().map_or(0, Vec::len)).collect();
                if let Some(p) = &properties {
                    by_name.sort_by(|a, b| p[*a].0.cmp(&p[*b].0));
                }
                let additional = map.get("additionalProperties");
                Type::Object {
                    required: map
                        .get("required")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect(),
                    properties,
                    by_name,
                    has_additional: additional.is_some(),
                    additional: additional
                        .filter(|a| a.is_object())
                        .map(|a| Box::new(Node::of(a, patterns))),
                }
            }
            Some("array") => Type::Array {
                bounds: bounds("minItems", "maxItems"),
                items: map.get("items").map(|i| Box::new(Node::of(i, patterns))),
            },
            Some("string") => Type::String {
                bounds: bounds("minLength", "maxLength"),
                pattern: map
                    .get("pattern")
                    .and_then(Value::as_str)
                    .and_then(|p| Some((p.to_string(), patterns.0.get(p)?.clone()))),
            },
            Some("integer") => Type::Integer(bounds("minimum", "maximum")),
            Some("number") => Type::Number(bounds("minimum", "maximum")),
            Some("boolean") => Type::Boolean,
            _ => Type::Other,
        };
        Node {
            checked: true,
            nullable: flag("nullable"),
            allowed: map.get("enum").and_then(Value::as_array).cloned(),
            preserve: flag("x-kubernetes-preserve-unknown-fields"),
            of,
        }
    }

    /// The property `name`, when the node declares it.
    fn property(&self, name: &str) -> Option<&Node> {
        let Type::Object {
            properties: Some(properties),
            by_name,
            ..
        } = &self.of
        else {
            return None;
        };
        let i = by_name.binary_search_by(|i| properties[*i].0.as_str().cmp(name)).ok()?;
        Some(&properties[by_name[i]].1)
    }
}

/// Check `obj` against `schema`; returns true when nothing structural is wrong.
pub(super) fn check(schema: &Node, obj: &Value, f: &mut Findings) -> bool {
    let before = f.out.len();
    walk(schema, obj, &Path::Root, true, f);
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

fn walk(schema: &Node, value: &Value, path: &Path<'_>, root: bool, f: &mut Findings) {
    if !schema.checked {
        return;
    }
    if value.is_null() {
        if !schema.nullable {
            f.error(path.to_string(), "must not be null");
        }
        return;
    }
    if let Some(allowed) = &schema.allowed
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
    match &schema.of {
        Type::Object { .. } => object(schema, value, path, root, f),
        Type::Array { bounds: b, items } => {
            let Some(list) = value.as_array() else {
                return f.error(path.to_string(), format!("must be a list, not {}", type_name(value)));
            };
            bounds(*b, list.len() as f64, "items", path, f);
            if let Some(item_schema) = items {
                for (i, item) in list.iter().enumerate() {
                    walk(item_schema, item, &Path::Index(path, i), false, f);
                }
            }
        }
        Type::String { bounds: b, pattern } => {
            let Some(s) = value.as_str() else {
                return f.error(path.to_string(), format!("must be a string, not {}", type_name(value)));
            };
            if b.min.is_some() || b.max.is_some() {
                bounds(*b, s.chars().count() as f64, "characters", path, f);
            }
            if let Some((p, re)) = pattern
                && !re.is_match(s)
            {
                f.error(
                    path.to_string(),
                    format!("{} does not match the pattern {p}", short(value)),
                );
            }
        }
        Type::Integer(b) => {
            let is_int = value.as_i64().is_some() || value.as_u64().is_some();
            if !is_int {
                return f.error(path.to_string(), format!("must be an integer, not {}", short(value)));
            }
            range(*b, value, path, f);
        }
        Type::Number(b) => {
            if !value.is_number() {
                return f.error(path.to_string(), format!("must be a number, not {}", short(value)));
            }
            range(*b, value, path, f);
        }
        Type::Boolean if !value.is_boolean() => {
            f.error(path.to_string(), format!("must be true or false, not {}", short(value)));
        }
        Type::Boolean | Type::Other => {}
    }
}

fn object(schema: &Node, value: &Value, path: &Path<'_>, root: bool, f: &mut Findings) {
    let Type::Object {
        required,
        properties,
        has_additional,
        additional,
        ..
    } = &schema.of
    else {
        return;
    };
    let Some(map) = value.as_object() else {
        return f.error(path.to_string(), format!("must be a mapping, not {}", type_name(value)));
    };
    for r in required {
        if !map.contains_key(r) {
            f.error(Path::Field(path, r).to_string(), "is required");
        }
    }
    for (key, v) in map {
        let child = if properties.is_none() && *has_additional {
            Path::Entry(path, key)
        } else {
            Path::Field(path, key)
        };
        if let Some(p) = schema.property(key) {
            walk(p, v, &child, false, f);
        } else if let Some(a) = additional {
            walk(a, v, &child, false, f);
        } else if root && matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
            // Type meta and object meta are the API server's, checked in `format::metadata`.
        } else if !schema.preserve
            && let Some(properties) = properties
        {
            let known: Vec<&str> = properties.iter().map(|(name, _)| name.as_str()).collect();
            f.error(
                child.to_string(),
                format!("unknown field {key:?}; known fields here: {}", known.join(", ")),
            );
        }
    }
}

fn range(b: Bounds, value: &Value, path: &Path<'_>, f: &mut Findings) {
    let Some(n) = value.as_f64() else { return };
    let (min, max) = (b.min, b.max);
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

fn bounds(b: Bounds, n: f64, unit: &str, path: &Path<'_>, f: &mut Findings) {
    if let Some(min) = b.min
        && n < min
    {
        f.error(path.to_string(), format!("must have at least {} {unit}", num(min)));
    }
    if let Some(max) = b.max
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validation::testing::{edited, edits, filled, mistyped};
    use crate::validation::{Findings, ObjectRef};

    /// The walk as it was before the schema was compiled (each keyword read from the schema's
    /// JSON at each value): what the compiled walk must find, finding for finding.
    mod before {
        use super::super::{Path, Patterns, num, short, type_name};
        use crate::validation::Findings;
        use serde_json::{Map, Value};

        pub(super) fn walk(
            schema: &Value,
            patterns: &Patterns,
            value: &Value,
            path: &Path<'_>,
            root: bool,
            f: &mut Findings,
        ) {
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
    }

    fn findings(of: impl FnOnce(&mut Findings)) -> Vec<crate::validation::Finding> {
        let mut f = Findings::new(ObjectRef::of(
            &serde_json::json!({"kind": "X", "metadata": {"name": "x"}}),
        ));
        of(&mut f);
        f.out
    }

    #[test]
    fn the_compiled_schema_finds_what_the_schema_read_at_each_value_found() {
        let (mut objects, mut found) = (0, 0);
        for crd in crate::crd::all() {
            let schema = crd.spec.versions[0]
                .schema
                .as_ref()
                .and_then(|s| s.open_api_v3_schema.as_ref());
            let schema = serde_json::to_value(schema).unwrap();
            let patterns = Patterns::of(&schema);
            let node = Node::of(&schema, &patterns);
            let full = filled(&schema);
            let mut all = vec![(String::new(), full.clone()), (String::new(), mistyped(&full))];
            edits(&full, "", &mut all);
            for (pointer, with) in all {
                let object = edited(&full, &pointer, with);
                let compiled = findings(|f| {
                    check(&node, &object, f);
                });
                let read = findings(|f| before::walk(&schema, &patterns, &object, &Path::Root, true, f));
                assert_eq!(compiled, read, "{}: {pointer}", crd.spec.names.kind);
                objects += 1;
                found += compiled.len();
            }
        }
        assert!(objects > 1000 && found > 1000, "{objects} objects, {found} findings");
    }
}
