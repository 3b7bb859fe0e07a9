//! The committed CRD YAML under `crds/` is exactly what the Rust types generate, and every CRD
//! has what users rely on: short names, the `trellis` category, printer columns, status.

use std::collections::BTreeSet;
use std::path::Path;

use trellis_api::crd;

#[test]
fn committed_yaml_matches_the_types() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut expected = BTreeSet::new();
    for c in crd::all() {
        let name = crd::file_name(&c);
        let committed = std::fs::read_to_string(dir.join(&name)).unwrap_or_default();
        assert!(
            committed == crd::render(&c),
            "crds/{name} is out of date with the Rust types; regenerate with `cargo run -p trellis-api --bin trellis-crdgen`"
        );
        expected.insert(name);
    }
    let on_disk: BTreeSet<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    assert_eq!(
        on_disk, expected,
        "crds/ holds YAML files no type generates; remove them"
    );
}

#[test]
fn every_crd_is_discoverable_and_printable() {
    let all = crd::all();
    assert_eq!(all.len(), trellis_api::document::Kind::ALL.len());
    for c in all {
        let names = &c.spec.names;
        assert_eq!(
            names.categories.as_deref(),
            Some(&["trellis".to_string()][..]),
            "{}",
            names.kind
        );
        assert!(
            names.short_names.as_ref().is_some_and(|s| !s.is_empty()),
            "{}",
            names.kind
        );
        let v = &c.spec.versions[0];
        assert_eq!(v.name, "v1alpha1");
        assert!(
            v.subresources.as_ref().and_then(|s| s.status.as_ref()).is_some(),
            "{}",
            names.kind
        );
        let cols = v.additional_printer_columns.as_deref().unwrap_or_default();
        assert!(cols.iter().any(|c| c.name == "Age"), "{}", names.kind);
        assert!(cols.len() >= 2, "{}", names.kind);
    }
}

#[test]
fn mesh_is_cluster_scoped_with_version_and_ready_columns() {
    let mesh = crd::all().into_iter().find(|c| c.spec.names.kind == "Mesh").unwrap();
    assert_eq!(mesh.spec.scope, "Cluster");
    let cols: Vec<String> = mesh.spec.versions[0]
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| c.name.clone())
        .collect();
    assert!(
        cols.contains(&"Version".to_string()) && cols.contains(&"Ready".to_string()),
        "{cols:?}"
    );
}

/// Every `x-kubernetes-validations` rule of every CRD, with the path of the schema node it is on.
fn cel_rules(schema: &serde_json::Value, path: &str, out: &mut Vec<(String, String)>) {
    match schema {
        serde_json::Value::Object(map) => {
            for rule in map
                .get("x-kubernetes-validations")
                .and_then(|v| v.as_array())
                .into_iter()
                .flatten()
            {
                if let Some(r) = rule["rule"].as_str() {
                    out.push((path.to_string(), r.to_string()));
                }
            }
            for (k, v) in map {
                cel_rules(v, &format!("{path}.{k}"), out);
            }
        }
        serde_json::Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                cel_rules(v, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// The API server estimates each rule's cost times how often it can run (rules under unbounded
/// lists and maps run once per item) and rejects a CRD whose estimate exceeds its budget. A list
/// literal with a macro over it (`[has(a), has(b)].filter(x, x).size()`, the usual "only one of"
/// idiom) is estimated far above a sum of conditionals: upstream Kubernetes v1.33 rejected the
/// VirtualService and DestinationRule CRDs for it (7.1× and 8.7× the budget; kubesim does not
/// estimate costs, `tests/upstream.rs` applies the CRDs to a real API server). "Only one of"
/// rules count with `(has(a) ? 1 : 0) + …` instead.
#[test]
fn no_cel_rule_runs_a_macro_over_a_list_literal() {
    let mut rules = Vec::new();
    for c in crd::all() {
        let v = serde_json::to_value(&c).unwrap();
        cel_rules(&v["spec"], &c.spec.names.kind, &mut rules);
    }
    assert!(rules.len() > 10, "the CRDs' CEL rules were not found: {rules:?}");
    let costly: Vec<_> = rules
        .iter()
        .filter(|(_, r)| {
            [".filter(", ".map(", ".exists(", ".all(", ".exists_one("]
                .iter()
                .any(|m| r.contains(&format!("]{m}")))
        })
        .collect();
    assert!(
        costly.is_empty(),
        "rules the API server may reject for their cost: {costly:#?}"
    );
}
