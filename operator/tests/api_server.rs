//! The operator against a real API server (kubesim, or upstream Kubernetes with
//! `TRELLIS_E2E_CLUSTER=upstream`; the operator with exactly its installed RBAC): the live index
//! follows the cluster (CRDs applied with kubectl, Services and Deployments picked up with no
//! configuration, changes and deletions followed, the compiler run from it; a Service without a
//! selector served by a hand-made EndpointSlice, an ExternalName Service), TokenReview
//! identifies ServiceAccounts, and the operator's RBAC lets it write its CA Secret and the trust
//! ConfigMaps and no other Secret or ConfigMap. Installed as OLM installs the bundle — into
//! another namespace, with the ClusterServiceVersion's permissions — the whole operator
//! becomes ready there, and its CA Secret, Lease and webhook configurations follow that
//! namespace.

mod support;

use std::sync::{Arc, RwLock};

use support::{Target, apply_crds, operator_client, until};
use trellis_operator::compile::{Role, compile};
use trellis_operator::index::{self, Index};
use trellis_operator::registry::ObjectKey;

const APP: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: payment, namespace: shop}
---
apiVersion: v1
kind: Service
metadata: {name: payment, namespace: shop}
spec:
  selector: {app: payment}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: payment, namespace: shop}
spec:
  replicas: 2
  selector: {matchLabels: {app: payment}}
  template:
    metadata: {labels: {app: payment, version: v1}}
    spec:
      serviceAccountName: payment
      # Stopped at once when scaled down (sleep as PID 1 ignores TERM).
      terminationGracePeriodSeconds: 1
      # The shell-tools image every test bed has (upstream's node imports it as busybox).
      containers:
      - {name: app, image: "busybox:1.36", imagePullPolicy: IfNotPresent, command: [sleep, "3600"], ports: [{containerPort: 8080}]}
---
apiVersion: networking.trellis.dev/v1alpha1
kind: VirtualService
metadata: {name: payment, namespace: shop}
spec:
  hosts: [payment]
  http:
  - route: [{destination: {host: payment}}]
    timeout: 3s
"#;

/// A Service without a selector, served by two EndpointSlices made by hand (one address each,
/// no pod), and an ExternalName Service.
const SELECTORLESS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: legacy, namespace: shop}
spec:
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: legacy-1, namespace: shop, labels: {kubernetes.io/service-name: legacy}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints: [{addresses: [192.0.2.10], conditions: {ready: true}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: legacy-2, namespace: shop, labels: {kubernetes.io/service-name: legacy}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints: [{addresses: [192.0.2.11], conditions: {ready: false}}]
---
apiVersion: v1
kind: Service
metadata: {name: payments-api, namespace: shop}
spec:
  type: ExternalName
  externalName: api.payments.example
  ports: [{name: http, port: 8443}]
"#;

/// Poll `cond` on the index until it holds (60 s at most: on upstream Kubernetes the pods
/// really start, on a loaded 2-core machine; on kubesim it takes milliseconds).
async fn eventually(index: &Arc<RwLock<Index>>, what: &str, cond: impl Fn(&Index) -> bool) {
    until(what, 60, || cond(&index.read().unwrap())).await;
}

/// Both parts on one cluster (started once for the test binary: upstream Kubernetes takes a
/// while to start), the operator's client holding exactly its installed RBAC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_one_cluster() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env(
            trellis_manifests::install::LOG_ENV,
        ))
        .with_test_writer()
        .try_init();
    let cluster = Target::acquire_objects_only().expect("the cluster starts");
    apply_crds(&cluster);
    cluster
        .kubectl_ok(&["create", "namespace", "trellis-system"], None)
        .unwrap();
    the_index_follows_the_cluster(&cluster).await;
    token_review_identifies_service_accounts(&cluster).await;
    the_operator_writes_its_ca_secret_and_trust_configmaps_and_nothing_else(&cluster).await;
    under_olm_the_operator_follows_the_operatorgroups_namespace(&cluster).await;
}

/// The namespace an OperatorGroup installs the bundle into (OLM's global one).
const OLM_NAMESPACE: &str = "operators";

/// The whole operator, installed as OLM installs the bundle: its ServiceAccount in
/// [`OLM_NAMESPACE`], the CSV's `clusterPermissions` as a ClusterRole and its `permissions` as a
/// Role there, and the namespace its Deployment would read from the downward API. It becomes
/// ready (the registry listed, the webhook configurations created and trusted) with exactly
/// those permissions where RBAC is enforced, and everything namespaced follows: the CA Secret,
/// the Lease, the webhooks' service reference and the namespaces they leave out, and the root
/// namespace — a PeerAuthentication and an AuthorizationPolicy without a selector there apply
/// to a proxy in another namespace, as Istio's in its control plane's namespace do.
async fn under_olm_the_operator_follows_the_operatorgroups_namespace(cluster: &Target) {
    use trellis_manifests::install::{self, webhooks};
    let csv = trellis_manifests::olm::cluster_service_version(&install::Options::default());
    let strategy = &csv["spec"]["install"]["spec"];
    let (cluster_rules, rules) = (
        &strategy["clusterPermissions"][0]["rules"],
        &strategy["permissions"][0]["rules"],
    );
    let account = install::OPERATOR_NAME;
    let subject = serde_json::json!([{"kind": "ServiceAccount", "name": account, "namespace": OLM_NAMESPACE}]);
    let olm_name = "trellis-operator.v-olm-test";
    let objects = serde_json::json!([
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": OLM_NAMESPACE}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": account, "namespace": OLM_NAMESPACE}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": olm_name}, "rules": cluster_rules},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": olm_name},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": olm_name}, "subjects": subject},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": olm_name, "namespace": OLM_NAMESPACE}, "rules": rules},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": olm_name, "namespace": OLM_NAMESPACE},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": olm_name}, "subjects": subject},
    ]);
    cluster
        .apply(&trellis_manifests::to_yaml(objects.as_array().unwrap()))
        .unwrap();
    // Mesh-wide policies in the operator's namespace (applied before it runs: its validating
    // webhook would point at a Service no test runs).
    cluster.apply(MESH_WIDE_POLICIES).unwrap();
    let client = cluster.client_as(OLM_NAMESPACE, account).await.unwrap();
    let config = trellis_operator::app::Config {
        namespace: OLM_NAMESPACE.into(),
        create_webhooks: true,
        ..support::operator_config(0, 3600)
    };
    let op = trellis_operator::app::start(config, client)
        .await
        .expect("the operator starts in the OperatorGroup's namespace");
    support::until_async("the operator to be ready", 90, || async {
        support::http_get(op.admin_addr, "/ready").await.0 == 200
    })
    .await;
    let get = |args: &[&str]| cluster.kubectl_ok(args, None).unwrap_or_default();
    assert_eq!(
        get(&["-n", OLM_NAMESPACE, "get", "secret", install::CA_SECRET, "-o", "name"]).trim(),
        format!("secret/{}", install::CA_SECRET)
    );
    until(
        "the operator to lead on its Lease in the OperatorGroup's namespace",
        30,
        || {
            get(&[
                "-n",
                OLM_NAMESPACE,
                "get",
                "lease",
                install::LEADER_LEASE,
                "-o",
                "jsonpath={.spec.holderIdentity}",
            ]) == "trellis-operator-test"
        },
    )
    .await;
    for (kind, name) in [
        ("validatingwebhookconfiguration", webhooks::VALIDATOR),
        ("mutatingwebhookconfiguration", webhooks::INJECTOR),
    ] {
        let services = get(&[
            "get",
            kind,
            name,
            "-o",
            "jsonpath={.webhooks[*].clientConfig.service.namespace}",
        ]);
        assert!(
            !services.is_empty() && services.split_whitespace().all(|ns| ns == OLM_NAMESPACE),
            "{name}: {services}"
        );
    }
    // The operator's namespace is the root namespace: its policies without a selector apply
    // to every proxy, here payment's in shop. The pod is one the registry knows: on upstream
    // the replica scaled away above can still be listed, Terminating (the kubelet is slow to
    // confirm under load), and the operator serves no pod that is being deleted.
    let listed: serde_json::Value =
        serde_json::from_str(&get(&["-n", "shop", "get", "pods", "-l", "app=payment", "-o", "json"])).unwrap();
    let pod = listed["items"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["metadata"]["deletionTimestamp"].is_null())
        .and_then(|p| p["metadata"]["name"].as_str())
        .expect("a payment pod that is not being deleted")
        .to_string();
    let dir = tempfile::tempdir().unwrap();
    let settings = support::shop_proxy(cluster, dir.path(), op.push_addr.port(), "payment", &pod, &op.root_pem);
    let (proxy, control) = support::mesh_proxy(settings).await;
    for _ in 0..600 {
        if proxy.runtime().is_ready() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    if !proxy.runtime().is_ready() {
        let (_, syncz) = support::http_get(op.admin_addr, "/debug/syncz").await;
        let pods = get(&["-n", "shop", "get", "pods", "-o", "wide"]);
        let issued = std::fs::read_dir(dir.path().join("identity"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        panic!(
            "timed out after 30s: payment's proxy ({pod}) is configured: configured {}, rejection {:?}, identity files {issued:?}\nsyncz: {syncz}\npods:\n{pods}",
            proxy.runtime().snapshot().settings.version,
            proxy.runtime().last_rejection().map(|r| r.error),
        );
    }
    let inbound = proxy.runtime().snapshot().settings.inbound.clone();
    assert_eq!(
        inbound.mtls.mode,
        trellis_contract::MtlsMode::Strict,
        "the mesh-wide PeerAuthentication in {OLM_NAMESPACE}"
    );
    let policies: Vec<(&str, &str)> = inbound
        .authorization
        .iter()
        .map(|p| (p.namespace.as_str(), p.name.as_str()))
        .collect();
    assert_eq!(policies, [(OLM_NAMESPACE, "deny-debug")]);
    control.abort();
    cluster
        .kubectl_ok(&["delete", "-f", "-"], Some(MESH_WIDE_POLICIES))
        .unwrap();
    let excluded = get(&[
        "get",
        "mutatingwebhookconfiguration",
        webhooks::INJECTOR,
        "-o",
        "jsonpath={.webhooks[0].namespaceSelector.matchExpressions[1].values}",
    ]);
    assert!(
        excluded.contains(OLM_NAMESPACE) && !excluded.contains("trellis-system"),
        "{excluded}"
    );
    op.stop();
    // No operator answers them any more: out of the write path of the rest of the cluster.
    for kind in ["validatingwebhookconfiguration", "mutatingwebhookconfiguration"] {
        cluster
            .kubectl_ok(&["delete", kind, "-l", "app=trellis-operator"], None)
            .unwrap();
    }
}

/// A PeerAuthentication and an AuthorizationPolicy with no selector in [`OLM_NAMESPACE`].
const MESH_WIDE_POLICIES: &str = "apiVersion: security.trellis.dev/v1alpha1
kind: PeerAuthentication
metadata: {name: default, namespace: operators}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: deny-debug, namespace: operators}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: [/debug]}}]}]
";

async fn the_index_follows_the_cluster(cluster: &Target) {
    let client = operator_client(cluster).await;
    let shared = Arc::new(RwLock::new(Index::default()));
    let (tx, mut rx) = tokio::sync::watch::channel(0);
    let metrics = Arc::new(trellis_operator::metrics::Metrics::default());
    let task = tokio::spawn(index::run(client, shared.clone(), tx, metrics.clone()));

    cluster.kubectl_ok(&["apply", "-f", "-"], Some(APP)).unwrap();
    eventually(&shared, "the Service", |i| {
        i.snapshot()
            .registry
            .services
            .contains_key(&ObjectKey::new("shop", "payment"))
    })
    .await;
    eventually(&shared, "two ready payment pods with IPs", |i| {
        let s = i.snapshot();
        s.registry
            .workloads
            .values()
            .filter(|w| w.labels.get("app").map(String::as_str) == Some("payment") && w.ready && w.ip.is_some())
            .count()
            == 2
    })
    .await;
    // Endpoints come from the Service's EndpointSlices, which the cluster's controller writes
    // after the pods turn ready (on upstream Kubernetes a moment later than the pods).
    eventually(&shared, "both payment pods in the payment Service's endpoints", |i| {
        let s = i.snapshot();
        let Some(pod) = s
            .registry
            .workloads
            .keys()
            .find(|k| k.name.starts_with("payment-"))
            .cloned()
        else {
            return false;
        };
        compile(&s, &pod, Role::Sidecar, "live-0").is_ok_and(|c| {
            c.config
                .cluster("outbound|80||payment.shop.svc.cluster.local")
                .is_some_and(|c| c.endpoints.len() == 2)
        })
    })
    .await;
    eventually(&shared, "the VirtualService", |i| {
        i.snapshot().virtual_services.len() == 1
    })
    .await;
    assert!(
        rx.has_changed().unwrap() || *rx.borrow_and_update() > 0,
        "changes are announced"
    );
    let updates = metrics.index_updates.get();
    assert!(
        updates > 0 && metrics.index_update_seconds.count() == updates,
        "{updates}"
    );

    // Compile from the live index for one of the pods.
    let snap = shared.read().unwrap().snapshot();
    let pod = snap
        .registry
        .workloads
        .keys()
        .find(|k| k.name.starts_with("payment-"))
        .unwrap()
        .clone();
    let compiled = compile(&snap, &pod, Role::Sidecar, "live-1").unwrap();
    let cluster_cfg = compiled
        .config
        .cluster("outbound|80||payment.shop.svc.cluster.local")
        .expect("payment cluster");
    assert_eq!(cluster_cfg.endpoints.len(), 2);
    assert!(cluster_cfg.endpoints.iter().all(|e| e.port == 8080));
    assert_eq!(
        compiled.config.identity.spiffe_id.as_deref(),
        Some("spiffe://cluster.local/ns/shop/sa/payment")
    );

    // A Service without a selector: its hand-made slices (the operator lists and watches
    // EndpointSlices with its installed RBAC), the ready address only; an ExternalName Service
    // as a DNS cluster to its name.
    cluster.kubectl_ok(&["apply", "-f", "-"], Some(SELECTORLESS)).unwrap();
    let legacy = ObjectKey::new("shop", "legacy");
    eventually(&shared, "both slices of legacy and the ExternalName Service", |i| {
        let s = i.snapshot();
        s.registry.slices(&legacy).count() == 2
            && s.registry
                .services
                .contains_key(&ObjectKey::new("shop", "payments-api"))
    })
    .await;
    let snap = shared.read().unwrap().snapshot();
    let compiled = compile(&snap, &pod, Role::Sidecar, "live-2").unwrap();
    let legacy_cfg = compiled
        .config
        .cluster("outbound|80||legacy.shop.svc.cluster.local")
        .expect("legacy cluster");
    let addresses: Vec<(&str, u16)> = legacy_cfg
        .endpoints
        .iter()
        .map(|e| (e.address.as_str(), e.port))
        .collect();
    assert_eq!(addresses, [("192.0.2.10", 8080)]);
    assert_eq!(legacy_cfg.tls, trellis_contract::UpstreamTls::Disable);
    let external = compiled
        .config
        .cluster("outbound|8443||payments-api.shop.svc.cluster.local")
        .expect("the ExternalName Service's cluster");
    assert_eq!(external.discovery, trellis_contract::Discovery::Dns);
    assert_eq!(external.endpoints[0].address, "api.payments.example");
    // The controller's slice of payment names its pods: the endpoints carry their identity.
    let payment = compiled
        .config
        .cluster("outbound|80||payment.shop.svc.cluster.local")
        .expect("payment cluster");
    assert!(
        payment
            .endpoints
            .iter()
            .all(|e| e.identity.is_none() && e.labels.get("app").map(String::as_str) == Some("payment")),
        "{:?}",
        payment.endpoints
    );
    cluster
        .kubectl_ok(&["delete", "-n", "shop", "endpointslice/legacy-1"], None)
        .unwrap();
    eventually(&shared, "legacy-1 gone", |i| {
        i.snapshot().registry.slices(&legacy).count() == 1
    })
    .await;

    // Changes and deletions are followed.
    cluster
        .kubectl_ok(&["scale", "-n", "shop", "deployment/payment", "--replicas=1"], None)
        .unwrap();
    eventually(&shared, "one payment pod", |i| {
        i.snapshot()
            .registry
            .workloads
            .values()
            .filter(|w| w.labels.get("app").map(String::as_str) == Some("payment"))
            .count()
            == 1
    })
    .await;
    cluster
        .kubectl_ok(&["delete", "-n", "shop", "virtualservice/payment"], None)
        .unwrap();
    eventually(&shared, "the VirtualService gone", |i| {
        i.snapshot().virtual_services.is_empty()
    })
    .await;

    task.abort();
}

async fn token_review_identifies_service_accounts(cluster: &Target) {
    use trellis_operator::ca::service::{KubeTokenReviewer, TOKEN_AUDIENCE, TokenReviewer};
    cluster
        .apply(
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n---\n\
             apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: web, namespace: shop}\n",
        )
        .unwrap();
    let token = cluster
        .kubectl_ok(
            &["create", "token", "web", "-n", "shop", "--audience", TOKEN_AUDIENCE],
            None,
        )
        .unwrap();
    let reviewer = KubeTokenReviewer::new(operator_client(cluster).await);
    let who = reviewer
        .review(token.trim(), TOKEN_AUDIENCE)
        .await
        .expect("a valid token");
    assert_eq!((who.namespace.as_str(), who.service_account.as_str()), ("shop", "web"));
    let err = reviewer.review("not-a-token", TOKEN_AUDIENCE).await.unwrap_err();
    assert!(!err.is_empty());
    let other = cluster
        .kubectl_ok(
            &["create", "token", "web", "-n", "shop", "--audience", "someone-else"],
            None,
        )
        .unwrap();
    assert!(
        reviewer.review(other.trim(), TOKEN_AUDIENCE).await.is_err(),
        "a token for another audience is refused"
    );
}

/// Whether the cluster holds `client` to its RBAC: kubesim allows everything (and answers every
/// access review "allowed"), upstream Kubernetes and real clusters do not. The operator is never
/// granted to create Namespaces.
async fn enforces_rbac(client: &kube::Client) -> bool {
    use k8s_openapi::api::authorization::v1::{
        ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
    };
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                verb: Some("create".into()),
                resource: Some("namespaces".into()),
                ..ResourceAttributes::default()
            }),
            ..SelfSubjectAccessReviewSpec::default()
        },
        ..SelfSubjectAccessReview::default()
    };
    let answer = kube::Api::<SelfSubjectAccessReview>::all(client.clone())
        .create(&kube::api::PostParams::default(), &review)
        .await
        .expect("an access review is answered");
    !answer.status.is_some_and(|s| s.allowed)
}

/// What the operator writes, done with exactly its installed RBAC: the CA Secret created, read
/// and rewritten in `trellis-system`, the trust ConfigMap applied into a namespace (server-side
/// apply creates it by name) and listed by name across namespaces (the Mesh's finalizer). Where
/// RBAC is enforced, writing any other Secret or ConfigMap is refused.
async fn the_operator_writes_its_ca_secret_and_trust_configmaps_and_nothing_else(cluster: &Target) {
    use k8s_openapi::api::core::v1::{ConfigMap, Secret};
    use kube::api::{ListParams, Patch, PatchParams, PostParams};
    use trellis_operator::ca::{MeshRoots, SystemClock, secret};
    use trellis_operator::trust;

    let client = operator_client(cluster).await;
    let ttl = std::time::Duration::from_secs(30 * 86400);
    let created = secret::load_or_create(&client, "trellis-system", "cluster.local", ttl)
        .await
        .expect("the operator creates its CA Secret");
    let read = secret::load_or_create(&client, "trellis-system", "cluster.local", ttl)
        .await
        .expect("the operator reads its CA Secret");
    assert_eq!(read.root.fingerprint(), created.root.fingerprint());
    let roots = Arc::new(MeshRoots::new(
        read.root,
        std::time::Duration::from_secs(3600),
        Arc::new(SystemClock),
    ));
    secret::persist(&client, "trellis-system", &roots)
        .await
        .expect("the operator rewrites its CA Secret");

    // The trust ConfigMap, published by the operator's own task into every namespace it knows.
    let shared = Arc::new(RwLock::new(Index::default()));
    let (tx, rx) = tokio::sync::watch::channel(0);
    let metrics = Arc::new(trellis_operator::metrics::Metrics::default());
    let indexing = tokio::spawn(index::run(client.clone(), shared.clone(), tx, metrics));
    let publishing = tokio::spawn(trust::publish(client.clone(), shared, rx, roots.bundle()));
    until("the trust ConfigMap in shop", 60, || {
        !support::published_roots(cluster, "shop").is_empty()
    })
    .await;
    publishing.abort();
    indexing.abort();
    let by_name = ListParams::default().fields(&format!("metadata.name={}", trust::ROOT_CONFIGMAP));
    let listed = kube::Api::<ConfigMap>::all(client.clone())
        .list_metadata(&by_name)
        .await
        .expect("the trust ConfigMaps are listed by name");
    assert!(
        listed
            .items
            .iter()
            .any(|c| c.metadata.namespace.as_deref() == Some("shop"))
    );

    if !enforces_rbac(&client).await {
        eprintln!("this cluster does not enforce RBAC (kubesim): the refusals are checked on upstream Kubernetes");
        return;
    }
    cluster
        .apply(
            "apiVersion: v1\nkind: Secret\nmetadata: {name: app-credentials, namespace: shop}\nstringData: {password: x}\n---\n\
             apiVersion: v1\nkind: Secret\nmetadata: {name: other, namespace: trellis-system}\nstringData: {password: x}\n---\n\
             apiVersion: v1\nkind: ConfigMap\nmetadata: {name: app-settings, namespace: shop}\ndata: {a: b}\n",
        )
        .unwrap();
    let secrets = |ns: &str| kube::Api::<Secret>::namespaced(client.clone(), ns);
    let configmaps = kube::Api::<ConfigMap>::namespaced(client.clone(), "shop");
    let new_secret = serde_json::from_value::<Secret>(
        serde_json::json!({"metadata": {"name": "planted"}, "stringData": {"a": "b"}}),
    )
    .unwrap();
    let new_configmap =
        serde_json::from_value::<ConfigMap>(serde_json::json!({"metadata": {"name": "planted"}, "data": {"a": "b"}}))
            .unwrap();
    let merge = Patch::Merge(serde_json::json!({"stringData": {"password": "y"}}));
    let attempts = [
        (
            "create Secret shop/planted",
            secrets("shop")
                .create(&PostParams::default(), &new_secret)
                .await
                .map(drop),
        ),
        (
            "patch Secret shop/app-credentials",
            secrets("shop")
                .patch("app-credentials", &PatchParams::default(), &merge)
                .await
                .map(drop),
        ),
        (
            "patch Secret trellis-system/other",
            secrets("trellis-system")
                .patch("other", &PatchParams::default(), &merge)
                .await
                .map(drop),
        ),
        (
            "delete Secret trellis-system/trellis-ca",
            secrets("trellis-system")
                .delete(secret::CA_SECRET, &Default::default())
                .await
                .map(drop),
        ),
        (
            "create ConfigMap shop/planted",
            configmaps
                .create(&PostParams::default(), &new_configmap)
                .await
                .map(drop),
        ),
        (
            "patch ConfigMap shop/app-settings",
            configmaps
                .patch(
                    "app-settings",
                    &PatchParams::default(),
                    &Patch::Merge(serde_json::json!({"data": {"a": "c"}})),
                )
                .await
                .map(drop),
        ),
    ];
    for (what, result) in attempts {
        match result {
            Err(kube::Error::Api(e)) if e.code == 403 => {}
            other => panic!("the operator could {what} ({other:?}); its RBAC must refuse it"),
        }
    }
}
