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
    assert_eq!(all.len(), 6);
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
