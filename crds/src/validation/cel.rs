//! The schemas' CEL rules (`x-kubernetes-validations`), evaluated where they are and only
//! there, with kube-cel's semantics.
//!
//! kube-cel's walk (`Validator::validate_compiled`) converts the value under *every* schema
//! node to a CEL value, rules or not, and every conversion copies that node's whole subtree: a
//! VirtualService was converted once per field it holds, down to each string, and this was
//! 73 % of the instructions of validating one (callgrind, `operator/benches/admission.rs`).
//! [`Rules`] keeps, per kind, the tree of the schema nodes that have rules ([`Site`]s) and the
//! paths to them; each site's rules are compiled against the site's schema with the
//! descendants' rules stripped and the subtrees that convert alike without their schema left
//! out, so evaluating a site converts its value once and evaluates only its own rules. A site
//! whose rules all read nothing but which fields are present (most of Trellis' rules: "not
//! supported", "not both", "at most one of") answers them from the mapping's keys, without
//! kube-cel ([`presence`]); kube-cel still evaluates them on a value that is not a mapping.
//!
//! # Guarantees
//! The errors are kube-cel's for the whole object (same rules, same CEL values, same field
//! paths): a test compares both on objects that break every rule of every kind, another the
//! presence rules with kube-cel for every set of the fields they name. Schemas with a
//! `default` (none of Trellis' CRDs has one) are evaluated by kube-cel's own walk, since
//! defaulting can create the very fields a rule looks at.

mod presence;

use std::collections::HashSet;

use kube::core::cel::{CompiledSchema, Validator, compile_schema};
use serde_json::{Map, Value};

const RULES: &str = "x-kubernetes-validations";
const BRANCHES: [&str; 3] = ["allOf", "oneOf", "anyOf"];

/// One kind's CEL rules, ready to evaluate.
#[derive(Debug)]
pub(super) enum Rules {
    /// Only the schema nodes with rules (`None`: the kind has no rule).
    Sites(Option<Box<Site>>),
    /// The whole compiled schema, walked by kube-cel (a schema with defaults).
    Whole(Box<CompiledSchema>),
}

/// A schema node on the way to rules: its own rules, and its children that have rules below.
#[derive(Debug)]
pub(super) struct Site {
    /// This node's rules.
    here: Option<Here>,
    properties: Vec<(String, Site)>,
    items: Option<Box<Site>>,
    /// The schema of map values, with the declared properties (never walked as map values).
    additional: Option<(Box<Site>, HashSet<String>)>,
    /// `allOf`, `oneOf`, `anyOf` branches: the same value at the same path.
    branches: Vec<Site>,
}

/// The rules of one schema node.
#[derive(Debug)]
struct Here {
    /// Compiled with the node's schema as [`for_rules_here`] makes it.
    compiled: CompiledSchema,
    /// The same rules, when every one of them reads only which fields are present: evaluated
    /// on a mapping without kube-cel (see [`presence`]).
    presence: Option<Vec<PresenceRule>>,
}

/// A rule [`presence::Test`] evaluates, with what kube-cel reports when it is broken.
#[derive(Debug)]
struct PresenceRule {
    test: presence::Test,
    /// kube-cel's path for the rule evaluated at the node on its own: its `fieldPath`, or empty.
    path: String,
    /// Its `message`, or kube-cel's `failed rule: <rule>`.
    message: String,
}

impl PresenceRule {
    /// `rules` (a node's `x-kubernetes-validations`), when each is a presence rule with nothing
    /// kube-cel would read besides its rule, message, field path and reason.
    fn all(rules: &[Value]) -> Option<Vec<PresenceRule>> {
        rules
            .iter()
            .map(|rule| {
                let rule = rule.as_object()?;
                let known = ["rule", "message", "fieldPath", "reason"];
                if !rule.keys().all(|k| known.contains(&k.as_str())) {
                    return None;
                }
                let optional = |key: &str| match rule.get(key) {
                    None | Some(Value::Null) => Some(None),
                    Some(Value::String(s)) => Some(Some(s.clone())),
                    Some(_) => None,
                };
                let text = rule.get("rule")?.as_str()?;
                let message = optional("message")?.unwrap_or_else(|| format!("failed rule: {text}"));
                Some(PresenceRule {
                    test: presence::Test::parse(text)?,
                    path: optional("fieldPath")?.unwrap_or_default(),
                    message,
                })
            })
            .collect()
    }
}

/// One broken rule: its field path (kube-cel's, e.g. `spec.http[0].delegate`) and message.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Broken {
    pub(super) path: String,
    pub(super) message: String,
}

impl Rules {
    /// The rules of `schema` (an OpenAPI v3 schema with `x-kubernetes-validations`).
    pub(super) fn of(schema: &Value) -> Rules {
        if has_key(schema, "default") {
            Rules::Whole(Box::new(compile_schema(schema)))
        } else {
            Rules::Sites(Site::of(schema).map(Box::new))
        }
    }

    /// Every rule `object` breaks.
    pub(super) fn check(&self, cel: &Validator, object: &Value) -> Vec<Broken> {
        let mut out = Vec::new();
        match self {
            Rules::Sites(Some(site)) => site.check(cel, object, "", &mut out),
            Rules::Sites(None) => {}
            Rules::Whole(compiled) => {
                if let Err(errors) = cel.validate_compiled(compiled, object, None) {
                    out.extend(errors.into_vec().into_iter().map(|e| Broken {
                        path: e.field_path,
                        message: e.message,
                    }));
                }
            }
        }
        out
    }
}

impl Site {
    /// The sites of `schema`, or `None` when neither it nor anything below it has a rule.
    fn of(schema: &Value) -> Option<Site> {
        let here = schema
            .get(RULES)
            .and_then(Value::as_array)
            .filter(|r| !r.is_empty())
            .map(|rules| Here {
                compiled: compile_schema(&for_rules_here(schema)),
                presence: PresenceRule::all(rules),
            });
        let declared = schema.get("properties").and_then(Value::as_object);
        let properties: Vec<(String, Site)> = declared
            .into_iter()
            .flatten()
            .filter_map(|(name, s)| Some((name.clone(), Site::of(s)?)))
            .collect();
        let items = schema.get("items").and_then(Site::of).map(Box::new);
        let preserve = schema
            .get("x-kubernetes-preserve-unknown-fields")
            .and_then(Value::as_bool)
            == Some(true);
        let additional = schema
            .get("additionalProperties")
            .filter(|a| a.is_object() && !preserve)
            .and_then(Site::of)
            .map(|site| {
                let names = declared.map(|p| p.keys().cloned().collect()).unwrap_or_default();
                (Box::new(site), names)
            });
        let branches: Vec<Site> = BRANCHES
            .iter()
            .filter_map(|k| schema.get(*k).and_then(Value::as_array))
            .flatten()
            .filter_map(Site::of)
            .collect();
        let empty =
            here.is_none() && properties.is_empty() && items.is_none() && additional.is_none() && branches.is_empty();
        (!empty).then_some(Site {
            here,
            properties,
            items,
            additional,
            branches,
        })
    }

    /// Evaluate the rules at and under `value`, found at `path`, in kube-cel's order.
    fn check(&self, cel: &Validator, value: &Value, path: &str, out: &mut Vec<Broken>) {
        if let Some(here) = &self.here {
            match (&here.presence, value.as_object()) {
                (Some(rules), Some(object)) => {
                    // why: kube-cel would copy the value, convert the copy and open a scope
                    // for it, to answer which keys the mapping holds.
                    out.extend(rules.iter().filter(|r| !r.test.holds(object)).map(|r| Broken {
                        path: under(path, &r.path),
                        message: r.message.clone(),
                    }));
                }
                _ => {
                    if let Err(errors) = cel.validate_compiled(&here.compiled, value, None) {
                        out.extend(errors.into_vec().into_iter().map(|e| Broken {
                            path: under(path, &e.field_path),
                            message: e.message,
                        }));
                    }
                }
            }
        }
        if let Some(object) = value.as_object() {
            for (name, site) in &self.properties {
                if let Some(child) = object.get(name) {
                    site.check(cel, child, &join(path, name), out);
                }
            }
            if let Some((site, declared)) = &self.additional {
                for (key, child) in object.iter().filter(|(k, _)| !declared.contains(*k)) {
                    site.check(cel, child, &join(path, key), out);
                }
            }
        }
        if let (Some(site), Some(items)) = (&self.items, value.as_array()) {
            for (i, item) in items.iter().enumerate() {
                let at = if path.is_empty() {
                    format!("[{i}]")
                } else {
                    format!("{path}[{i}]")
                };
                site.check(cel, item, &at, out);
            }
        }
        for branch in &self.branches {
            branch.check(cel, value, path, out);
        }
    }
}

/// kube-cel's path of a field under a node.
fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_string()
    } else {
        format!("{path}.{field}")
    }
}

/// A path kube-cel reported for a site evaluated on its own (relative to it: empty, or the
/// rule's `fieldPath`), as it reports it for the whole object (the site at `site`).
fn under(site: &str, relative: &str) -> String {
    if relative.is_empty() {
        site.to_string()
    } else if relative.starts_with('.') || site.is_empty() {
        format!("{site}{relative}")
    } else {
        format!("{site}.{relative}")
    }
}

/// The schema a site's own rules are compiled with: the node as it is, its descendants
/// without their rules (evaluated at their own sites) and without the subtrees that convert to
/// the same CEL value without their schema (so kube-cel does not walk them), and no
/// `allOf`/`oneOf`/`anyOf` (branches are sites of their own; they do not change the value).
fn for_rules_here(schema: &Value) -> Value {
    let Some(node) = schema.as_object() else {
        return schema.clone();
    };
    let mut out = Map::new();
    for (key, value) in node {
        match key.as_str() {
            k if BRANCHES.contains(&k) => {}
            "properties" => {
                // why: a property left out would be converted as a map value when the node
                // also has `additionalProperties`; then every property stays.
                let keep_all = node.get("additionalProperties").is_some_and(Value::is_object);
                let kept: Map<String, Value> = value
                    .as_object()
                    .into_iter()
                    .flatten()
                    .filter(|(_, s)| keep_all || !converts_alike(s))
                    .map(|(name, s)| (name.clone(), without_rules(s)))
                    .collect();
                out.insert(key.clone(), Value::Object(kept));
            }
            "items" if converts_alike(value) => {}
            "items" | "additionalProperties" => {
                out.insert(key.clone(), without_rules(value));
            }
            _ => {
                out.insert(key.clone(), value.clone());
            }
        }
    }
    Value::Object(out)
}

/// A descendant of a site: no rules (its own site evaluates them), pruned like the site.
fn without_rules(schema: &Value) -> Value {
    let mut out = for_rules_here(schema);
    if let Some(node) = out.as_object_mut() {
        node.remove(RULES);
    }
    out
}

/// Whether a value under `schema` converts to the same CEL value without it: nothing in it
/// that kube-cel's conversion reads from a schema — formats parsed into CEL types (date-time,
/// duration, byte), int-or-string, maps (whose keys are not escaped), embedded resources,
/// defaults.
fn converts_alike(schema: &Value) -> bool {
    let Some(node) = schema.as_object() else {
        return true;
    };
    let format = node.get("format").and_then(Value::as_str);
    let flag = |k: &str| node.get(k).and_then(Value::as_bool) == Some(true);
    let map = !matches!(node.get("additionalProperties"), None | Some(Value::Bool(false)));
    if matches!(format, Some("date-time" | "duration" | "byte"))
        || flag("x-kubernetes-int-or-string")
        || flag("x-kubernetes-embedded-resource")
        || map
        || node.contains_key("default")
    {
        return false;
    }
    let properties = node.get("properties").and_then(Value::as_object);
    properties.into_iter().flatten().all(|(_, s)| converts_alike(s)) && node.get("items").is_none_or(converts_alike)
}

/// Whether `key` appears anywhere in `schema` as a keyword (not as a property's name).
fn has_key(schema: &Value, key: &str) -> bool {
    match schema {
        Value::Object(node) => node.iter().any(|(k, v)| {
            if k == "properties" {
                v.as_object().is_some_and(|p| p.values().any(|s| has_key(s, key)))
            } else {
                k == key || has_key(v, key)
            }
        }),
        Value::Array(items) => items.iter().any(|s| has_key(s, key)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validation::testing::{filled, mistyped};
    use serde_json::json;

    /// Every schema node of `schema` with rules.
    fn nodes_with_rules<'a>(schema: &'a Value, out: &mut Vec<&'a Value>) {
        match schema {
            Value::Object(node) => {
                if node.get(RULES).and_then(Value::as_array).is_some_and(|r| !r.is_empty()) {
                    out.push(schema);
                }
                node.iter()
                    .filter(|(k, _)| *k != RULES)
                    .for_each(|(_, v)| nodes_with_rules(v, out));
            }
            Value::Array(items) => items.iter().for_each(|i| nodes_with_rules(i, out)),
            _ => {}
        }
    }

    /// The fields a presence test names.
    fn named(test: &presence::Test, out: &mut Vec<String>) {
        use presence::Test;
        match test {
            Test::Has(f) => out.push(f.clone()),
            Test::Not(t) => named(t, out),
            Test::And(a, b) | Test::Or(a, b) => {
                named(a, out);
                named(b, out);
            }
            Test::Count { fields, .. } => out.extend(fields.iter().cloned()),
        }
    }

    #[test]
    fn presence_rules_break_what_kube_cel_breaks_for_every_set_of_the_fields_they_name() {
        let cel = Validator::new();
        let (mut native, mut left_to_cel) = (0, 0);
        for crd in crate::crd::all() {
            let schema = crd.spec.versions[0]
                .schema
                .as_ref()
                .unwrap()
                .open_api_v3_schema
                .as_ref();
            let schema = serde_json::to_value(schema).unwrap();
            let mut nodes = Vec::new();
            nodes_with_rules(&schema, &mut nodes);
            for node in nodes {
                let Some(rules) = PresenceRule::all(node[RULES].as_array().unwrap()) else {
                    left_to_cel += 1;
                    continue;
                };
                native += rules.len();
                let compiled = compile_schema(&for_rules_here(node));
                let mut fields = Vec::new();
                rules.iter().for_each(|r| named(&r.test, &mut fields));
                fields.sort();
                fields.dedup();
                let full = filled(node);
                for set in 0..1u32 << fields.len() {
                    let mut object = full.as_object().cloned().unwrap_or_default();
                    for (i, field) in fields.iter().enumerate() {
                        if set & (1 << i) == 0 {
                            object.shift_remove(field);
                        } else if !object.contains_key(field) {
                            object.insert(field.clone(), json!("x"));
                        }
                    }
                    let mut mine: Vec<Broken> = rules
                        .iter()
                        .filter(|r| !r.test.holds(&object))
                        .map(|r| Broken {
                            path: r.path.clone(),
                            message: r.message.clone(),
                        })
                        .collect();
                    mine.sort();
                    let object = Value::Object(object);
                    assert_eq!(
                        mine,
                        whole(&cel, &compiled, &object),
                        "{}: {object}",
                        crd.spec.names.kind
                    );
                }
            }
        }
        // Every rule but the Mesh's that compare values.
        assert!(
            native >= 30 && left_to_cel >= 1,
            "{native} presence rules, {left_to_cel} nodes left to CEL"
        );
    }

    fn whole(cel: &Validator, compiled: &CompiledSchema, object: &Value) -> Vec<Broken> {
        let mut out: Vec<Broken> = match cel.validate_compiled(compiled, object, None) {
            Ok(()) => Vec::new(),
            Err(errors) => errors
                .into_vec()
                .into_iter()
                .map(|e| Broken {
                    path: e.field_path,
                    message: e.message,
                })
                .collect(),
        };
        out.sort();
        out
    }

    fn rules_in(schema: &Value) -> usize {
        match schema {
            Value::Object(node) => node
                .iter()
                .map(|(k, v)| match (k.as_str(), v) {
                    (RULES, Value::Array(rules)) => rules.len(),
                    _ => rules_in(v),
                })
                .sum(),
            Value::Array(items) => items.iter().map(rules_in).sum(),
            _ => 0,
        }
    }

    #[test]
    fn the_sites_break_exactly_what_kube_cels_walk_breaks() {
        let cel = Validator::new();
        let demo = crate::document::parse_documents(include_str!("../../../examples/demo/routing.yaml"));
        let mut evaluated = 0;
        for crd in crate::crd::all() {
            let kind = crd.spec.names.kind.clone();
            let schema = serde_json::to_value(
                crd.spec.versions[0]
                    .schema
                    .as_ref()
                    .unwrap()
                    .open_api_v3_schema
                    .as_ref(),
            )
            .unwrap();
            let rules = Rules::of(&schema);
            assert!(matches!(rules, Rules::Sites(_)), "{kind}: no defaults, so sites");
            let compiled = compile_schema(&schema);
            let full = filled(&schema);
            // Also the filled object with each mapping in a list made a string: rules evaluated
            // on values that are not mappings (left to kube-cel).
            let mut objects = vec![full.clone(), mistyped(&full), json!({}), json!({"spec": {}})];
            objects.extend(
                demo.iter()
                    .filter_map(|d| d.content.clone().ok())
                    .filter(|o| o["kind"] == kind.as_str()),
            );
            for object in &objects {
                let mut mine = rules.check(&cel, object);
                mine.sort();
                assert_eq!(mine, whole(&cel, &compiled, object), "{kind}: {object}");
            }
            // The filled object reaches every site: each rule is broken at least once, or
            // holds for it (a rule that only checks a value's form).
            let broken = whole(&cel, &compiled, &full);
            evaluated += broken.len();
            if rules_in(&schema) > 0 {
                assert!(!broken.is_empty(), "{kind}: the filled object breaks no rule");
            }
        }
        assert!(
            evaluated > 40,
            "{evaluated} broken rules over the kinds' filled objects"
        );
    }

    #[test]
    fn paths_are_kube_cels_for_rules_with_and_without_a_field_path() {
        let schema = json!({"type": "object", "properties": {"spec": {"type": "object", "properties": {
            "http": {"type": "array", "items": {"type": "object",
                "x-kubernetes-validations": [
                    {"rule": "!has(self.delegate)", "message": "no delegate", "fieldPath": ".delegate"},
                    {"rule": "!has(self.mirror)", "message": "no mirror"},
                    // Rules that read below themselves: map keys (not escaped) and a duration.
                    {"rule": "!has(self.headers) || !('x-a.b' in self.headers)", "message": "no x-a.b"},
                    {"rule": "!has(self.timeout) || self.timeout < duration('10s')", "message": "short"}],
                "properties": {"delegate": {"type": "string"}, "mirror": {"type": "string"},
                    "timeout": {"type": "string", "format": "duration"},
                    "headers": {"type": "object", "additionalProperties": {"type": "object",
                        "x-kubernetes-validations": [{"rule": "!(has(self.exact) && has(self.prefix))", "message": "one"}],
                        "properties": {"exact": {"type": "string"}, "prefix": {"type": "string"}}}}}}}}}},
            "x-kubernetes-validations": [{"rule": "has(self.spec)", "message": "spec", "fieldPath": "spec"}]});
        let object = json!({"spec": {"http": [{"timeout": "5s"}, {"delegate": "d", "mirror": "m", "timeout": "1m",
            "headers": {"x-a.b": {"exact": "1", "prefix": "2"}}}]}});
        let cel = Validator::new();
        let mut mine = Rules::of(&schema).check(&cel, &object);
        mine.sort();
        let paths: Vec<&str> = mine.iter().map(|b| b.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "spec.http[1]",
                "spec.http[1]",
                "spec.http[1]",
                "spec.http[1].delegate",
                "spec.http[1].headers.x-a.b"
            ]
        );
        let messages: Vec<&str> = mine.iter().map(|b| b.message.as_str()).collect();
        assert_eq!(messages, ["no mirror", "no x-a.b", "short", "no delegate", "one"]);
        assert_eq!(mine, whole(&cel, &compile_schema(&schema), &object));
        let mut missing = Rules::of(&schema).check(&cel, &json!({}));
        missing.sort();
        assert_eq!(missing, whole(&cel, &compile_schema(&schema), &json!({})));
        assert_eq!(missing[0].path, "spec");
    }

    #[test]
    fn a_schema_with_defaults_is_walked_whole() {
        // A default can create the field a rule looks at: kube-cel's walk applies it first.
        let schema = json!({"type": "object", "properties": {"spec": {"type": "object", "default": {},
            "x-kubernetes-validations": [{"rule": "has(self.port)", "message": "port is required"}],
            "properties": {"port": {"type": "integer"}}}}});
        let rules = Rules::of(&schema);
        assert!(matches!(rules, Rules::Whole(_)));
        let broken = rules.check(&Validator::new(), &json!({}));
        assert_eq!(broken.len(), 1, "{broken:?}");
        assert_eq!(broken[0].message, "port is required");
    }
}
