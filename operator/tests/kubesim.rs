//! The operator against a real API server (kubesim): the live index follows the cluster (CRDs
//! applied with kubectl, Services and Deployments picked up with no configuration, changes and
//! deletions followed, the compiler run from it), and TokenReview identifies ServiceAccounts.

mod support;

use std::sync::{Arc, RwLock};

use support::{apply_crds, until};
use trellis_e2e::harness::TestCluster;
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
      containers: [{name: app, image: test-app, ports: [{containerPort: 8080}]}]
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

/// Poll `cond` on the index until it holds (10 s at most).
async fn eventually(index: &Arc<RwLock<Index>>, what: &str, cond: impl Fn(&Index) -> bool) {
    until(what, 10, || cond(&index.read().unwrap())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_index_follows_the_cluster() {
    let cluster = TestCluster::start().expect("kubesim starts");
    apply_crds(&cluster);

    let client = cluster.client().await.unwrap();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_review_identifies_service_accounts() {
    use trellis_operator::ca::service::{KubeTokenReviewer, TOKEN_AUDIENCE, TokenReviewer};
    let cluster = TestCluster::start().expect("kubesim starts");
    cluster.kubectl_ok(&["create", "namespace", "shop"], None).unwrap();
    cluster
        .kubectl_ok(&["create", "serviceaccount", "web", "-n", "shop"], None)
        .unwrap();
    let token = cluster
        .kubectl_ok(
            &["create", "token", "web", "-n", "shop", "--audience", TOKEN_AUDIENCE],
            None,
        )
        .unwrap();
    let reviewer = KubeTokenReviewer::new(cluster.client().await.unwrap());
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
