//! The index: changes, re-lists, key sets, and the Mesh in force.

use super::*;

fn svc(name: &str) -> K8sService {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {"clusterIP": "10.96.0.9", "selector": {"app": name}, "ports": [{"name": "http", "port": 80}]}
    }))
    .unwrap()
}

#[test]
fn applies_deletes_and_relists() {
    let mut idx = Index::default();
    idx.apply(Change::Applied(Object::Service(Box::new(svc("a")))));
    idx.apply(Change::Applied(Object::Service(Box::new(svc("b")))));
    assert_eq!(idx.snapshot().registry.services.len(), 2);
    idx.apply(Change::Deleted(Object::Service(Box::new(svc("a")))));
    assert_eq!(idx.snapshot().registry.services.len(), 1);
    idx.apply(Change::Applied(Object::Service(Box::new(svc("c")))));
    // A re-list that saw only c: b was deleted while the watch was down.
    idx.apply(Change::Relisted {
        kind: InputKind::Service,
        seen: BTreeSet::from([ObjectKey::new("shop", "c")]),
    });
    let names: Vec<String> = idx
        .snapshot()
        .registry
        .services
        .keys()
        .map(|k| k.name.clone())
        .collect();
    assert_eq!(names, ["c"]);
    assert_eq!(idx.generation(), 5);
}

fn slice(name: &str, service: &str, ip: &str) -> K8sEndpointSlice {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": "shop", "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080}],
        "endpoints": [{"addresses": [ip], "conditions": {"ready": true}}]
    }))
    .unwrap()
}

/// Slices are kept by their own key and grouped by Service in snapshots; a slice that
/// moves to another Service (its label changed) leaves the first one; deletions and
/// re-lists are followed.
#[test]
fn endpoint_slices_are_grouped_by_service() {
    let mut idx = Index::default();
    let apply = |idx: &mut Index, s| idx.apply(Change::Applied(Object::EndpointSlice(Box::new(s))));
    apply(&mut idx, slice("web-a", "web", "10.0.0.1"));
    apply(&mut idx, slice("web-b", "web", "10.0.0.2"));
    apply(&mut idx, slice("db-a", "db", "10.0.0.3"));
    let names = |idx: &Index, svc: &str| -> Vec<String> {
        idx.snapshot()
            .registry
            .slices(&ObjectKey::new("shop", svc))
            .map(|s| s.key.name.clone())
            .collect()
    };
    assert_eq!(names(&idx, "web"), ["web-a", "web-b"]);
    apply(&mut idx, slice("web-b", "db", "10.0.0.2"));
    assert_eq!(names(&idx, "web"), ["web-a"]);
    assert_eq!(names(&idx, "db"), ["db-a", "web-b"]);
    idx.apply(Change::Deleted(Object::EndpointSlice(Box::new(slice(
        "db-a", "db", "10.0.0.3",
    )))));
    assert_eq!(names(&idx, "db"), ["web-b"]);
    idx.apply(Change::Relisted {
        kind: InputKind::EndpointSlice,
        seen: BTreeSet::from([ObjectKey::new("shop", "web-a")]),
    });
    assert_eq!(names(&idx, "db"), Vec::<String>::new());
    assert_eq!(names(&idx, "web"), ["web-a"]);
    // A slice without the service-name label belongs to no Service: not kept.
    let mut orphan = slice("orphan", "web", "10.0.0.9");
    orphan.metadata.labels = None;
    apply(&mut idx, orphan);
    assert_eq!(idx.keys(InputKind::EndpointSlice), [ObjectKey::new("shop", "web-a")]);
}

#[test]
fn key_sets_change_the_generation_only_when_they_change() {
    let mut idx = Index::default();
    let keys = BTreeMap::from([("https://i/keys".to_string(), FetchedJwks::Keys("K".into()))]);
    assert!(idx.set_key_sets(keys.clone(), BTreeMap::new()));
    assert_eq!(idx.generation(), 1);
    assert!(
        !idx.set_key_sets(keys.clone(), BTreeMap::new()),
        "the same key sets again"
    );
    assert_eq!(idx.generation(), 1);
    let stale = BTreeMap::from([("https://i/keys".to_string(), "HTTP 503".to_string())]);
    assert!(idx.set_key_sets(keys.clone(), stale.clone()));
    let s = idx.snapshot();
    assert_eq!((s.jwks, s.jwks_stale), (keys, stale));
}

fn mesh(spec: serde_json::Value) -> Mesh {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "mesh.trellis.dev/v1alpha1", "kind": "Mesh", "metadata": {"name": "default"},
        "spec": spec, "status": {"certificateAuthority": {"trustDomain": "old.example"}},
    }))
    .unwrap()
}

#[test]
fn the_compiler_reads_the_valid_mesh_in_force_and_the_flag_without_one() {
    use trellis_api::security::MtlsMode;
    use trellis_contract::TrustDomains;
    let defaults = Defaults {
        trust_domain: "flag.example".into(),
        ..Defaults::default()
    };
    let mut idx = Index::for_operator(&defaults);
    let domains = |idx: &Index| idx.snapshot().trust_domains();
    assert_eq!(domains(&idx), TrustDomains::new("flag.example", Vec::<String>::new()));
    let valid = mesh(
        serde_json::json!({"trustDomain": "prod.example", "trustDomainAliases": ["alias.example"],
                                 "defaultMtlsMode": "STRICT"}),
    );
    idx.apply(Change::Applied(Object::Mesh(Box::new(valid))));
    let in_force = TrustDomains::new("prod.example", ["alias.example", "old.example"]);
    assert_eq!(domains(&idx), in_force);
    assert!(idx.mesh_refused().is_none());
    // Refused whole by the validator (its rollout batch given twice): neither its trust
    // domain, its aliases nor its mTLS mode reach the compiler.
    let invalid = mesh(
        serde_json::json!({"trustDomain": "other.example", "trustDomainAliases": ["x.example"],
                                   "defaultMtlsMode": "PERMISSIVE", "rollout": {"batchSize": 2, "batchPercent": 10}}),
    );
    idx.apply(Change::Applied(Object::Mesh(Box::new(invalid.clone()))));
    assert_eq!(domains(&idx), in_force);
    assert_eq!(idx.snapshot().mesh.default_mtls_mode, Some(MtlsMode::Strict));
    let refused = idx.mesh_refused().expect("the invalid Mesh is refused").to_string();
    assert!(refused.contains("batchPercent"), "{refused}");
    assert_eq!(
        idx.keys(InputKind::Trellis(Kind::Mesh)),
        [ObjectKey::new("", "default")]
    );
    // Deleted: the flag's domain, not the last valid Mesh's.
    idx.apply(Change::Deleted(Object::Mesh(Box::new(invalid))));
    assert_eq!(domains(&idx), TrustDomains::new("flag.example", Vec::<String>::new()));
    assert!(idx.mesh().is_none() && idx.mesh_refused().is_none());
}

#[test]
fn synced_once_every_kind_was_listed() {
    let mut idx = Index::default();
    idx.apply(Change::Applied(Object::Service(Box::new(svc("a")))));
    assert!(!idx.synced());
    for kind in InputKind::ALL {
        assert!(!idx.synced(), "{kind:?} and later not listed yet");
        let seen = idx.keys(kind).into_iter().collect();
        idx.apply(Change::Relisted { kind, seen });
    }
    assert!(idx.synced() && idx.unlisted().is_empty());
    // A later re-list (a watch restarted) keeps it synced.
    idx.apply(Change::Relisted {
        kind: InputKind::Service,
        seen: BTreeSet::new(),
    });
    assert!(idx.synced());
}

/// Pod `shop/name` of `template` (a Deployment's `spec.template`), Ready or not.
fn pod_of(name: &str, template: &serde_json::Value, ready: bool) -> Pod {
    let mut pod = template.clone();
    pod["metadata"]["name"] = name.into();
    pod["metadata"]["namespace"] = "shop".into();
    pod["status"] = serde_json::json!({
        "phase": "Running",
        "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
    });
    serde_json::from_value(pod).unwrap()
}

/// The pod template of the Deployment `name` among `objects`.
fn template_of(objects: &[serde_json::Value], name: &str) -> serde_json::Value {
    objects
        .iter()
        .find(|o| o["kind"] == "Deployment" && o["metadata"]["name"] == name)
        .map(|d| d["spec"]["template"].clone())
        .unwrap_or_else(|| panic!("no Deployment {name}"))
}

/// A Ready pod's proxy runs configured, whatever its role: an injected sidecar, and the
/// ingress and egress gateways as the install deploys them. A pod that is not Ready, a pod
/// without a proxy, and a user's own container named `gateway` are not among them; a pod
/// deleted, finished or gone from a re-list leaves them.
#[test]
fn ready_proxies_are_the_ready_pods_running_a_sidecar_or_a_gateway() {
    use trellis_manifests::install::Options;
    use trellis_manifests::profile::{EGRESS_GATEWAY, GATEWAY, egress_gateway, ingress_gateway};
    let opts = Options::default();
    let ingress = template_of(&ingress_gateway(&opts), GATEWAY);
    let egress = template_of(&egress_gateway(&opts), EGRESS_GATEWAY);
    let mut sidecar: k8s_openapi::api::core::v1::PodTemplateSpec = serde_json::from_value(serde_json::json!({
        "spec": {"containers": [{"name": "web", "image": "web"}]}
    }))
    .unwrap();
    let settings = trellis_manifests::sidecar::Settings::new(&opts);
    trellis_manifests::sidecar::inject(&mut sidecar, &settings).unwrap();
    let sidecar = serde_json::to_value(sidecar).unwrap();
    let plain = serde_json::json!({"spec": {"containers": [{"name": "app", "image": "app"}]}});
    let users_gateway = serde_json::json!({"spec": {"containers": [{"name": "gateway", "image": "nginx"}]}});

    let mut idx = Index::default();
    let apply = |idx: &mut Index, pod: Pod| idx.apply(Change::Applied(Object::Pod(Box::new(pod))));
    apply(&mut idx, pod_of("web-1", &sidecar, true));
    apply(&mut idx, pod_of("web-2", &sidecar, false));
    apply(&mut idx, pod_of("ingress-1", &ingress, true));
    apply(&mut idx, pod_of("ingress-2", &ingress, false));
    apply(&mut idx, pod_of("egress-1", &egress, true));
    apply(&mut idx, pod_of("plain-1", &plain, true));
    apply(&mut idx, pod_of("nginx-1", &users_gateway, true));
    let ready = |idx: &Index| -> Vec<String> { idx.ready_proxies().map(ToString::to_string).collect() };
    assert_eq!(ready(&idx), ["shop/egress-1", "shop/ingress-1", "shop/web-1"]);

    // ingress-2 turns Ready; ingress-1 stops being Ready, then is deleted.
    apply(&mut idx, pod_of("ingress-2", &ingress, true));
    apply(&mut idx, pod_of("ingress-1", &ingress, false));
    assert_eq!(ready(&idx), ["shop/egress-1", "shop/ingress-2", "shop/web-1"]);
    idx.apply(Change::Deleted(Object::Pod(Box::new(pod_of(
        "ingress-1",
        &ingress,
        false,
    )))));
    // egress-1 finished; a re-list that no longer returns web-1.
    let mut finished = pod_of("egress-1", &egress, true);
    finished.status.as_mut().unwrap().phase = Some("Succeeded".into());
    apply(&mut idx, finished);
    let seen = idx
        .keys(InputKind::Pod)
        .into_iter()
        .filter(|k| k.name != "web-1")
        .collect();
    idx.apply(Change::Relisted {
        kind: InputKind::Pod,
        seen,
    });
    assert_eq!(ready(&idx), ["shop/ingress-2"]);
    // A pod that stops running a proxy (replaced under the same name) leaves them too.
    apply(&mut idx, pod_of("ingress-2", &plain, true));
    assert!(ready(&idx).is_empty(), "{:?}", ready(&idx));
}
