//! Shared by the operator's integration tests: a kubesim with the Trellis CRDs and a `web`
//! workload, the operator's test settings, a proxy's client settings, and polling.

// why: each test file compiles this module on its own and uses only part of it.
#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use trellis_e2e::harness::TestCluster;
use trellis_operator::app::Config;
use trellis_push::client::ClientConfig;

/// The `shop` namespace with a `web` ServiceAccount, Service and one-replica Deployment.
pub const WEB_APP: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: web, namespace: shop}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  ports: [{name: http, port: 8080}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      serviceAccountName: web
      containers: [{name: app, image: test-app}]
"#;

/// Poll `cond` every 50 ms until it holds; panic naming `what` after `secs` seconds.
pub async fn until(what: &str, secs: u64, cond: impl Fn() -> bool) {
    for _ in 0..secs * 20 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out after {secs}s: {what}");
}

/// Apply the repository's CRDs and wait until they are served.
pub fn apply_crds(cluster: &TestCluster) {
    let crds = format!("{}/../crds", env!("CARGO_MANIFEST_DIR"));
    cluster.kubectl_ok(&["apply", "-f", &crds], None).unwrap();
    cluster
        .kubectl_ok(
            &["wait", "--for=condition=Established", "crd", "--all", "--timeout=30s"],
            None,
        )
        .unwrap();
}

/// A fresh kubesim with the CRDs, `trellis-system`, and [`WEB_APP`] rolled out; returns it
/// and the web pod's name.
pub fn cluster_with_web() -> (TestCluster, String) {
    rustls::crypto::ring::default_provider().install_default().ok();
    let cluster = TestCluster::start().expect("kubesim starts");
    apply_crds(&cluster);
    cluster
        .kubectl_ok(&["create", "namespace", "trellis-system"], None)
        .unwrap();
    cluster.kubectl_ok(&["apply", "-f", "-"], Some(WEB_APP)).unwrap();
    cluster
        .kubectl_ok(
            &["-n", "shop", "rollout", "status", "deployment/web", "--timeout=30s"],
            None,
        )
        .unwrap();
    let pod = cluster
        .kubectl_ok(
            &[
                "-n",
                "shop",
                "get",
                "pods",
                "-l",
                "app=web",
                "-o",
                "jsonpath={.items[0].metadata.name}",
            ],
            None,
        )
        .unwrap();
    (cluster, pod)
}

/// A free loopback port (for an operator restarted on the same address).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Operator settings for tests: loopback addresses, `trellis-system`, `cluster.local`.
pub fn operator_config(push_port: u16, workload_cert_ttl_seconds: u64) -> Config {
    Config {
        namespace: "trellis-system".into(),
        push_addr: format!("127.0.0.1:{push_port}").parse().unwrap(),
        admin_addr: "127.0.0.1:0".parse().unwrap(),
        trust_domain: "cluster.local".into(),
        workload_cert_ttl_seconds,
    }
}

/// The web pod's proxy settings, with its root and a `trellis`-audience token written to
/// `dir` and its identity kept in `dir/identity`.
pub fn web_proxy(cluster: &TestCluster, dir: &Path, push_port: u16, pod: &str, root_pem: &str) -> ClientConfig {
    std::fs::write(dir.join("root.pem"), root_pem).unwrap();
    let token = cluster
        .kubectl_ok(&["-n", "shop", "create", "token", "web", "--audience", "trellis"], None)
        .unwrap();
    std::fs::write(dir.join("token"), token.trim()).unwrap();
    ClientConfig {
        endpoint: format!("https://127.0.0.1:{push_port}"),
        server_name: "localhost".into(),
        root_cert: dir.join("root.pem"),
        token: dir.join("token"),
        identity_dir: dir.join("identity"),
        namespace: "shop".into(),
        pod: pod.into(),
        role: "sidecar".into(),
        spiffe_id: "spiffe://cluster.local/ns/shop/sa/web".into(),
        proxy_version: "test".into(),
    }
}
