//! The REST semantics' tests: create, update, status, finalizers, lists, server-side apply, and
//! what pods and namespaces get.

use super::*;
use crate::patch::PatchKind;

fn cluster() -> (Arc<Cluster>, ResourceType, ResourceType) {
    let c = Cluster::with_default_namespace();
    let ns = c.catalog.get("", "v1", "namespaces").unwrap();
    let cm = c.catalog.get("", "v1", "configmaps").unwrap();
    (c, ns, cm)
}

#[test]
fn create_fills_metadata_and_generate_name() {
    let (c, _, cm) = cluster();
    let w = c
        .create(
            &cm,
            Some("default"),
            json!({"metadata": {"generateName": "cfg-"}, "data": {"a": "1"}}),
            &WriteOptions::default(),
        )
        .unwrap();
    let m = &w.object["metadata"];
    assert!(m["name"].as_str().unwrap().starts_with("cfg-") && m["name"].as_str().unwrap().len() == 9);
    assert!(m["uid"].is_string() && m["creationTimestamp"].is_string() && m["resourceVersion"].is_string());
    assert!(m.get("generation").is_none(), "ConfigMaps have no generation");
    assert_eq!(w.object["kind"], "ConfigMap");
    let err = c
        .create(
            &cm,
            Some("nope"),
            json!({"metadata": {"name": "x"}}),
            &WriteOptions::default(),
        )
        .unwrap_err();
    assert_eq!(err.code, 404);
    // The namespace got its default ServiceAccount.
    let sa = c.catalog.get("", "v1", "serviceaccounts").unwrap();
    assert!(c.get(&sa, Some("default"), "default").is_ok());
}

#[test]
fn update_conflicts_on_stale_versions_and_bumps_generation_on_spec_changes() {
    let (c, _, _) = cluster();
    let cm = c.catalog.get("", "v1", "services").unwrap();
    let w = c
        .create(
            &cm,
            Some("default"),
            json!({"metadata": {"name": "a"}, "spec": {"ports": [{"port": 1}]}}),
            &WriteOptions::default(),
        )
        .unwrap();
    assert_eq!(w.object["metadata"]["generation"], 1);
    let mut body = w.object.clone();
    body["spec"]["ports"][0]["port"] = json!(2);
    let u = c
        .update(&cm, Some("default"), "a", "", body.clone(), &WriteOptions::default())
        .unwrap();
    assert_eq!(u.object["metadata"]["generation"], 2);
    let err = c
        .update(&cm, Some("default"), "a", "", body, &WriteOptions::default())
        .unwrap_err();
    assert_eq!(err.code, 409);
    let mut labels_only = u.object.clone();
    labels_only["metadata"]["labels"] = json!({"x": "y"});
    let u2 = c
        .update(&cm, Some("default"), "a", "", labels_only, &WriteOptions::default())
        .unwrap();
    assert_eq!(u2.object["metadata"]["generation"], 2);
}

#[test]
fn status_is_only_written_through_the_subresource() {
    let c = Cluster::with_default_namespace();
    let d = c.catalog.get("apps", "v1", "deployments").unwrap();
    let dep = json!({"metadata": {"name": "web"}, "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "a", "image": "x"}]}}}, "status": {"replicas": 9}});
    let w = c.create(&d, Some("default"), dep, &WriteOptions::default()).unwrap();
    assert!(w.object["status"].get("replicas").is_none());
    let mut body = w.object.clone();
    body["status"] = json!({"replicas": 3});
    let s = c
        .update(
            &d,
            Some("default"),
            "web",
            "status",
            body.clone(),
            &WriteOptions::default(),
        )
        .unwrap();
    assert_eq!(s.object["status"]["replicas"], 3);
    body["metadata"]["resourceVersion"] = s.object["metadata"]["resourceVersion"].clone();
    body["status"] = json!({"replicas": 7});
    let m = c
        .update(&d, Some("default"), "web", "", body, &WriteOptions::default())
        .unwrap();
    assert_eq!(m.object["status"]["replicas"], 3);
    // Scale subresource.
    let scale = c
        .set_scale(
            &d,
            Some("default"),
            "web",
            |s| {
                let mut s = s.clone();
                s["spec"]["replicas"] = json!(4);
                Ok(s)
            },
            &WriteOptions::default(),
        )
        .unwrap();
    assert_eq!(scale["spec"]["replicas"], 4);
    assert_eq!(scale["status"]["selector"], "app=web");
}

#[test]
fn pods_get_their_service_account_volume_and_namespaces_the_root_ca() {
    let c = Cluster::new();
    c.root_ca.set("-----BEGIN CERTIFICATE-----\n".into()).unwrap();
    let ns = c.catalog.get("", "v1", "namespaces").unwrap();
    c.create(
        &ns,
        None,
        json!({"metadata": {"name": "app"}}),
        &WriteOptions::default(),
    )
    .unwrap();
    let cm = c.catalog.get("", "v1", "configmaps").unwrap();
    assert!(c.get(&cm, Some("app"), "kube-root-ca.crt").is_ok());
    let pods = c.catalog.get("", "v1", "pods").unwrap();
    let pod = |name: &str, extra: Value| {
        let mut p = json!({"metadata": {"name": name}, "spec": {"containers": [{"name": "a", "image": "x"}], "initContainers": [{"name": "i", "image": "x"}]}});
        json_patch::merge(&mut p, &extra);
        p
    };
    let made = c
        .create(&pods, Some("app"), pod("p", json!({})), &WriteOptions::default())
        .unwrap()
        .object;
    let vol = made["spec"]["volumes"][0]["name"].as_str().unwrap();
    assert!(vol.starts_with("kube-api-access-"));
    for list in ["containers", "initContainers"] {
        let m = &made["spec"][list][0]["volumeMounts"][0];
        assert_eq!(
            (m["name"].as_str(), m["mountPath"].as_str()),
            (Some(vol), Some("/var/run/secrets/kubernetes.io/serviceaccount"))
        );
    }
    let off = c
        .create(
            &pods,
            Some("app"),
            pod("q", json!({"spec": {"automountServiceAccountToken": false}})),
            &WriteOptions::default(),
        )
        .unwrap()
        .object;
    assert!(off["spec"].get("volumes").is_none());
    let err = c
        .create(
            &pods,
            Some("app"),
            pod("r", json!({"spec": {"serviceAccountName": "ghost"}})),
            &WriteOptions::default(),
        )
        .unwrap_err();
    assert_eq!(err.code, 403);
    assert!(
        err.message.contains("serviceaccount \"ghost\" not found"),
        "{}",
        err.message
    );
}

#[test]
fn finalizers_hold_deletion_until_removed() {
    let (c, _, cm) = cluster();
    c.create(
        &cm,
        Some("default"),
        json!({"metadata": {"name": "f", "finalizers": ["example.com/hold"]}}),
        &WriteOptions::default(),
    )
    .unwrap();
    let marked = c.delete(&cm, Some("default"), "f", &DeleteOptions::default()).unwrap();
    assert!(marked["metadata"]["deletionTimestamp"].is_string());
    assert!(c.get(&cm, Some("default"), "f").is_ok());
    let patch = br#"{"metadata":{"finalizers":null}}"#;
    c.patch(
        &cm,
        Some("default"),
        "f",
        "",
        PatchKind::Merge,
        patch,
        &WriteOptions::default(),
    )
    .unwrap();
    assert_eq!(c.get(&cm, Some("default"), "f").unwrap_err().code, 404);
}

#[test]
fn list_paginates_and_filters() {
    let (c, _, cm) = cluster();
    for i in 0..5 {
        c.create(
            &cm,
            Some("default"),
            json!({"metadata": {"name": format!("c{i}"), "labels": {"even": (i % 2 == 0).to_string()}}}),
            &WriteOptions::default(),
        )
        .unwrap();
    }
    let (page, meta) = c
        .list(
            &cm,
            Some("default"),
            &ListOptions {
                limit: Some(2),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(page.len(), 2);
    assert_eq!(meta["remainingItemCount"], 3);
    let (rest, meta2) = c
        .list(
            &cm,
            Some("default"),
            &ListOptions {
                continue_token: meta["continue"].as_str().map(str::to_string),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(rest.len(), 3);
    assert!(meta2.get("continue").is_none());
    let (even, _) = c
        .list(
            &cm,
            None,
            &ListOptions {
                label_selector: Some("even=true".into()),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(even.len(), 3);
}

#[test]
fn server_side_apply_creates_then_conflicts() {
    let (c, _, cm) = cluster();
    let opts = WriteOptions {
        field_manager: Some("a".into()),
        ..Default::default()
    };
    let w = c
        .patch(
            &cm,
            Some("default"),
            "ssa",
            "",
            PatchKind::Apply,
            b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ssa\ndata:\n  k: one\n",
            &opts,
        )
        .unwrap();
    assert!(w.created);
    let other = WriteOptions {
        field_manager: Some("b".into()),
        ..Default::default()
    };
    let err = c
        .patch(
            &cm,
            Some("default"),
            "ssa",
            "",
            PatchKind::Apply,
            b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ssa\ndata:\n  k: two\n",
            &other,
        )
        .unwrap_err();
    assert_eq!(err.code, 409);
    let forced = WriteOptions { force: true, ..other };
    let w = c
        .patch(
            &cm,
            Some("default"),
            "ssa",
            "",
            PatchKind::Apply,
            b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ssa\ndata:\n  k: two\n",
            &forced,
        )
        .unwrap();
    assert_eq!(w.object["data"]["k"], "two");
}
