//! Drift test against Istio's API: every field istio/api has on the kinds Trellis serves
//! (`data/istio-fields.txt`, read from its protos by `data/istio_fields.py` at the commit the
//! file names) is declared in the Trellis CRD schema — implemented, or refused — and never
//! "unknown field". A field declared only as a free-form object (an Istio message Trellis
//! declares to refuse) must be refused with "not supported by Trellis yet" at its path.
//! Every value of an Istio enum field (`path = VALUE` lines) is one the schema allows, and the
//! validator accepts it or refuses it with that message — never "Unsupported value".
//!
//! When istio/api adds a field: regenerate the list (`python3 crds/tests/data/istio_fields.py
//! <istio/api checkout> > crds/tests/data/istio-fields.txt`), and this test names what to
//! declare.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use trellis_api::document::Kind;
use trellis_api::schema::NOT_SUPPORTED;
use trellis_api::validation::{Outcome, Severity, validate};

const FIELDS: &str = include_str!("data/istio-fields.txt");

/// Where a field path leads in a schema.
#[derive(Debug, PartialEq)]
enum Reached {
    /// Every segment is a declared property.
    Declared,
    /// The segments up to `at` are declared, and the node there keeps whatever it holds
    /// (`x-kubernetes-preserve-unknown-fields`): it must be refused as a whole.
    FreeForm { at: usize },
    /// Segment `at` is not declared: Trellis would say "unknown field".
    Missing { at: usize },
}

/// The schema node of a list's items, a list of lists' too.
fn items(mut node: &Value) -> &Value {
    while node.get("type").and_then(Value::as_str) == Some("array") {
        match node.get("items") {
            Some(i) => node = i,
            None => break,
        }
    }
    node
}

fn free_form(node: &Value) -> bool {
    node.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true)) && node.get("properties").is_none()
}

/// Follow `segments` (`*`: a map's value) from `schema`, the object's root.
fn reach(schema: &Value, segments: &[&str]) -> Reached {
    let mut node = schema;
    for (i, seg) in segments.iter().enumerate() {
        node = items(node);
        if free_form(node) {
            return Reached::FreeForm { at: i };
        }
        let next = if *seg == "*" {
            node.get("additionalProperties").filter(|a| a.is_object())
        } else {
            node.get("properties").and_then(|p| p.get(*seg))
        };
        match next {
            Some(n) => node = n,
            None => return Reached::Missing { at: i },
        }
    }
    if free_form(items(node)) {
        return Reached::FreeForm { at: segments.len() };
    }
    Reached::Declared
}

/// An object of `kind` holding `leaf` at `segments` (a list of one where the schema has a
/// list, `k` for a map's key), and the validator's path of that value.
fn holding(kind: Kind, schema: &Value, segments: &[&str], leaf: &Value) -> (Value, String) {
    fn build(node: &Value, segments: &[&str], leaf: &Value, path: &mut String) -> Value {
        let list = node.get("type").and_then(Value::as_str) == Some("array");
        let node = items(node);
        let value = match segments.split_first() {
            None => leaf.clone(),
            Some((seg, rest)) => {
                let (key, child) = if *seg == "*" {
                    ("k", &node["additionalProperties"])
                } else {
                    (*seg, &node["properties"][*seg])
                };
                if list {
                    path.push_str("[0]");
                }
                path.push('.');
                path.push_str(key);
                json!({ key: build(child, rest, leaf, path) })
            }
        };
        if list { json!([value]) } else { value }
    }
    let mut path = String::new();
    let mut object = build(schema, segments, leaf, &mut path);
    object["apiVersion"] = json!(kind.api_version());
    object["kind"] = json!(kind.name());
    object["metadata"] = json!({"name": "drift", "namespace": "shop"});
    (object, path.trim_start_matches('.').to_string())
}

fn schemas() -> BTreeMap<String, (Kind, Value)> {
    trellis_api::crd::all()
        .into_iter()
        .filter_map(|crd| {
            let kind = Kind::ALL.into_iter().find(|k| k.name() == crd.spec.names.kind)?;
            let schema = crd.spec.versions[0].schema.as_ref()?.open_api_v3_schema.as_ref()?;
            Some((kind.name().to_string(), (kind, serde_json::to_value(schema).ok()?)))
        })
        .collect()
}

fn istio_fields() -> (String, Vec<(&'static str, &'static str)>) {
    let commit = FIELDS
        .lines()
        .find_map(|l| l.strip_prefix("# istio/api commit "))
        .expect("the list names the istio/api commit it was read at")
        .to_string();
    let fields = FIELDS
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split_once(' ').expect("a line is `Kind path`"))
        .collect();
    (commit, fields)
}

/// Everything wrong with Trellis' schemas against `fields`.
fn drift(fields: &[(&str, &str)], schemas: &BTreeMap<String, (Kind, Value)>) -> Vec<String> {
    let mut problems = Vec::new();
    let mut refusals_checked = BTreeMap::new();
    for (kind_name, path) in fields {
        let Some((kind, schema)) = schemas.get(*kind_name) else {
            problems.push(format!("{kind_name}: Trellis has no such kind"));
            continue;
        };
        if let Some((path, value)) = path.split_once(" = ") {
            problems.extend(enum_value(*kind, schema, path, value));
            continue;
        }
        let segments: Vec<&str> = path.split('.').collect();
        match reach(schema, &segments) {
            Reached::Declared => {}
            Reached::Missing { at } => problems.push(format!(
                "{kind_name} {path}: {} is not in the Trellis schema (\"unknown field\"); declare it, and implement it or refuse it with trellis_api::schema::unsupported",
                segments[..=at].join(".")
            )),
            Reached::FreeForm { at } => {
                let declared = segments[..at].join(".");
                let refused = refusals_checked.entry((kind_name.to_string(), declared.clone())).or_insert_with(|| {
                    let (object, at_path) = holding(*kind, schema, &segments[..at], &json!({}));
                    let Outcome::Validated { findings, .. } = validate(&object) else {
                        return false;
                    };
                    findings.iter().any(|f| f.path == at_path && f.message.contains(NOT_SUPPORTED))
                });
                if !*refused {
                    problems.push(format!(
                        "{kind_name} {path}: {declared} is declared free-form but not refused with \"{NOT_SUPPORTED}\""
                    ));
                }
            }
        }
    }
    problems
}

/// What is wrong with Trellis' answer to `value` of Istio's enum field `path`: nothing when
/// the schema allows it and the validator accepts it, warns about it, or refuses it as not
/// supported. A field Trellis declares free-form (refused whole) or lacks is not looked into:
/// its field line says what is wrong.
fn enum_value(kind: Kind, schema: &Value, path: &str, value: &str) -> Option<String> {
    let segments: Vec<&str> = path.split('.').collect();
    if reach(schema, &segments) != Reached::Declared {
        return None;
    }
    let mut node = schema;
    for seg in &segments {
        node = items(node);
        node = if *seg == "*" {
            &node["additionalProperties"]
        } else {
            &node["properties"][*seg]
        };
    }
    let node = items(node);
    if let Some(allowed) = node.get("enum").and_then(Value::as_array)
        && !allowed.iter().any(|a| a.as_str() == Some(value))
    {
        return Some(format!(
            "{} {path} = {value}: the schema does not allow Istio's value {value} (\"Unsupported value\"); allow it, and implement it or refuse it with trellis_api::schema::unsupported",
            kind.name()
        ));
    }
    let (object, at_path) = holding(kind, schema, &segments, &json!(value));
    let Outcome::Validated { findings, .. } = validate(&object) else {
        return Some(format!("{} {path} = {value}: not validated", kind.name()));
    };
    let wrong: Vec<String> = findings
        .iter()
        .filter(|f| f.severity == Severity::Error && f.path.starts_with(&at_path) && !f.message.contains(NOT_SUPPORTED))
        .map(|f| f.message.clone())
        .collect();
    (!wrong.is_empty()).then(|| {
        format!(
            "{} {path} = {value}: Istio accepts it, Trellis refuses it without saying it is \"{NOT_SUPPORTED}\": {}",
            kind.name(),
            wrong.join("; ")
        )
    })
}

#[test]
fn every_istio_field_is_declared_or_refused_as_not_supported() {
    let (commit, fields) = istio_fields();
    assert!(
        fields.len() > 500,
        "the list has {} fields; is it complete?",
        fields.len()
    );
    let problems = drift(&fields, &schemas());
    assert!(
        problems.is_empty(),
        "against istio/api {commit}:\n{}",
        problems.join("\n")
    );
}

#[test]
fn a_field_trellis_does_not_declare_is_found() {
    let schemas = schemas();
    let problems = drift(&[("DestinationRule", "spec.trafficPolicy.retryBudgets")], &schemas);
    one_problem(
        &problems,
        "spec.trafficPolicy.retryBudgets is not in the Trellis schema",
    );
    // A message Trellis declares free-form is checked for its refusal, at its path.
    assert_eq!(
        drift(
            &[("DestinationRule", "spec.subsets.trafficPolicy.tunnel.targetHost")],
            &schemas
        ),
        Vec::<String>::new()
    );
}

#[test]
fn a_free_form_field_that_is_not_refused_is_found() {
    // The Mesh's `spec.rollout` is Trellis' own and accepted: declared free-form in a copy of
    // the schema, it is a field the validator does not refuse.
    let mut schemas = schemas();
    let mesh = &mut schemas.get_mut("Mesh").expect("the Mesh kind").1;
    mesh["properties"]["spec"]["properties"]["rollout"] =
        json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true});
    let problems = drift(&[("Mesh", "spec.rollout.batchSize")], &schemas);
    one_problem(&problems, "spec.rollout is declared free-form but not refused");
}

fn one_problem(problems: &[String], saying: &str) {
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains(saying), "{}", problems[0]);
}
