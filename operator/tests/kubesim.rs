//! The operator against a real API server (kubesim, or upstream Kubernetes with
//! `TRELLIS_E2E_CLUSTER=upstream`; the operator with exactly its installed RBAC): the live index
//! follows the cluster (CRDs applied with kubectl, Services and Deployments picked up with no
//! configuration, changes and deletions followed, the compiler run from it), and TokenReview
//! identifies ServiceAccounts.

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

/// Poll `cond` on the index until it holds (60 s at most: on upstream Kubernetes the pods
/// really start, on a loaded 2-core machine; on kubesim it takes milliseconds).
async fn eventually(index: &Arc<RwLock<Index>>, what: &str, cond: impl Fn(&Index) -> bool) {
    until(what, 60, || cond(&index.read().unwrap())).await;
}

/// Both parts on one cluster (started once for the test binary: upstream Kubernetes takes a
/// while to start), the operator's client holding exactly its installed RBAC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_one_cluster() {
    let cluster = Target::acquire_objects_only().expect("the cluster starts");
    apply_crds(&cluster);
    cluster
        .kubectl_ok(&["create", "namespace", "trellis-system"], None)
        .unwrap();
    the_index_follows_the_cluster(&cluster).await;
    token_review_identifies_service_accounts(&cluster).await;
}

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
