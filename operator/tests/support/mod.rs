//! Shared by the operator's integration tests: a cluster (kubesim with simulated pods, or
//! upstream Kubernetes with `TRELLIS_E2E_CLUSTER=upstream`) with the Trellis CRDs and a `web`
//! workload, a client holding exactly the operator's RBAC from the install manifests, the
//! operator's test settings, a proxy's client settings, and polling.

// why: each test file compiles this module on its own and uses only part of it.
#![allow(dead_code)]

pub mod loopback;
pub mod rotation;

use std::path::Path;
use std::time::Duration;

use trellis_contract::ProxyConfig;
pub use trellis_e2e::suite::Target;
use trellis_operator::app::Config;
use trellis_proxy::control::Reapply;
use trellis_push::client::{ClientConfig, ConfigSink};

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
      # The shell-tools image every test bed has (upstream's node imports it as busybox).
      containers: [{name: app, image: "busybox:1.36", imagePullPolicy: IfNotPresent, command: [sleep, "3600"]}]
"#;

/// What [`show_logs`] shows when `TRELLIS_LOG` is not set: the operator's and the push client's
/// decisions (certificates signed, phases entered, snapshots sent, ACKed and NACKed, renewals),
/// the proxy's applied and rejected configurations, and every other crate's warnings.
pub const TEST_LOG: &str = "warn,trellis_operator=debug,trellis_push=debug,trellis_proxy=info";

/// Send the log of everything the test runs in its process — the operator replicas, the
/// proxies, kubesim — to the test's output, which nextest prints when the test fails: a
/// timed-out wait then shows what the operator and the proxy were doing. `TRELLIS_LOG`, the
/// binaries' log variable, overrides [`TEST_LOG`].
pub fn show_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_env(trellis_manifests::install::LOG_ENV)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(TEST_LOG));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_test_writer()
        .try_init();
}

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

/// Poll an async `cond` every 50 ms until it holds; panic naming `what` after `secs` seconds.
pub async fn until_async<F: std::future::Future<Output = bool>>(what: &str, secs: u64, cond: impl Fn() -> F) {
    for _ in 0..secs * 20 {
        if cond().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out after {secs}s: {what}");
}

/// Check `state` every 50 ms until it is `Ok`; panic naming `what` and the last state seen
/// (`Err`) once `secs` seconds of wall-clock time have passed. For waits on a configuration
/// reaching proxies: on a loaded 2-core CI machine a push and its apply take seconds, not
/// the tenth of a second they take on an idle one, so the deadline is generous and the
/// message says where each proxy was.
pub async fn until_state(what: &str, secs: u64, state: impl Fn() -> Result<(), String>) {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let seen = match state() {
            Ok(()) => return,
            Err(seen) => seen,
        };
        if std::time::Instant::now() >= deadline {
            panic!("timed out after {secs}s: {what}; last seen: {seen}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Apply the repository's CRDs and wait until they are served.
pub fn apply_crds(cluster: &Target) {
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
pub fn cluster_with_web() -> (Target, String) {
    rustls::crypto::ring::default_provider().install_default().ok();
    let cluster = Target::acquire_objects_only().expect("the cluster starts");
    apply_crds(&cluster);
    cluster
        .kubectl_ok(&["create", "namespace", "trellis-system"], None)
        .unwrap();
    cluster.kubectl_ok(&["apply", "-f", "-"], Some(WEB_APP)).unwrap();
    cluster
        .kubectl_ok(
            &["-n", "shop", "rollout", "status", "deployment/web", "--timeout=120s"],
            None,
        )
        .unwrap();
    let pod = web_pods(&cluster).into_iter().next().expect("a web pod");
    (cluster, pod)
}

/// The names of the `web` Deployment's pods.
pub fn web_pods(cluster: &Target) -> Vec<String> {
    shop_pods(cluster, "web")
}

/// The names of the pods of `shop` labelled `app=<app>`.
pub fn shop_pods(cluster: &Target, app: &str) -> Vec<String> {
    cluster
        .kubectl_ok(
            &[
                "-n",
                "shop",
                "get",
                "pods",
                "-l",
                &format!("app={app}"),
                "-o",
                "jsonpath={.items[*].metadata.name}",
            ],
            None,
        )
        .unwrap()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// The one pod of the Deployment `name` of `shop` (its pods labelled `app=<name>`), once it
/// has rolled out and its earlier pods are gone (10 s at most).
pub async fn rolled_out_pod(cluster: &Target, name: &str) -> String {
    cluster
        .kubectl_ok(
            &[
                "-n",
                "shop",
                "rollout",
                "status",
                &format!("deployment/{name}"),
                "--timeout=120s",
            ],
            None,
        )
        .unwrap();
    let mut pods = Vec::new();
    for _ in 0..100 {
        pods = shop_pods(cluster, name);
        if pods.len() == 1 {
            return pods.remove(0);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("deployment shop/{name} still has other pods than its new one: {pods:?}");
}

/// `path` (a JSONPath such as `.data`) of the CA Secret `trellis-system/trellis-ca`.
pub fn ca_secret_field(cluster: &Target, path: &str) -> String {
    cluster
        .kubectl_ok(
            &[
                "-n",
                "trellis-system",
                "get",
                "secret",
                "trellis-ca",
                "-o",
                &format!("jsonpath={{{path}}}"),
            ],
            None,
        )
        .unwrap()
}

/// Ask for a new self-signed root, as a person does: the annotation on the CA Secret.
pub fn ask_for_a_new_root(cluster: &Target) {
    cluster
        .kubectl_ok(
            &[
                "-n",
                "trellis-system",
                "annotate",
                "secret",
                "trellis-ca",
                "trellis.dev/rotate-root=now",
            ],
            None,
        )
        .unwrap();
}

/// Delete the CA Secret `trellis-system/trellis-ca` (if there is one) and wait until it is gone.
pub fn delete_ca_secret(cluster: &Target) {
    cluster
        .kubectl_ok(
            &[
                "delete",
                "--wait=true",
                "--ignore-not-found",
                "secret",
                "trellis-ca",
                "-n",
                "trellis-system",
            ],
            None,
        )
        .unwrap();
}

/// `root` plugged the way a user plugs one: in Secret `security/corp-ca` (the namespace
/// created), which the Mesh `default` names in `spec.ca.secretRef` (`mode: Plugged`).
pub fn plug_corp_root(cluster: &Target, root: &trellis_operator::ca::SigningCert) {
    cluster
        .kubectl_ok(
            &["apply", "-f", "-"],
            Some("apiVersion: v1\nkind: Namespace\nmetadata: {name: security}\n"),
        )
        .unwrap();
    cluster
        .kubectl_ok(&["apply", "-f", "-"], Some(&secret_yaml("security", "corp-ca", root)))
        .unwrap();
    cluster
        .kubectl_ok(
            &["apply", "-f", "-"],
            Some(
                "apiVersion: mesh.trellis.dev/v1alpha1\nkind: Mesh\nmetadata: {name: default}\nspec:\n  ca: {mode: Plugged, secretRef: {name: corp-ca, namespace: security}}\n",
            ),
        )
        .unwrap();
}

/// A client for the operator run in the test: the install manifests' ServiceAccount,
/// ClusterRole and binding applied (in `trellis-system`, which must exist), and a token of that
/// account, so the operator holds exactly the RBAC it is installed with (enforced on upstream
/// Kubernetes; kubesim allows everything).
pub async fn operator_client(cluster: &Target) -> kube::Client {
    let rbac: Vec<serde_json::Value> =
        trellis_manifests::install::objects(&trellis_manifests::install::Options::default())
            .into_iter()
            .filter(|o| {
                matches!(
                    o["kind"].as_str(),
                    Some("ServiceAccount" | "ClusterRole" | "ClusterRoleBinding" | "Role" | "RoleBinding")
                )
            })
            .collect();
    assert!(
        rbac.iter().any(|o| o["kind"] == "ClusterRole"),
        "the install manifests grant the operator a ClusterRole"
    );
    // A YAML stream, not a `kind: List`: kubectl validates a List against /openapi/v2, which
    // kubesim does not serve.
    cluster.apply(&trellis_manifests::to_yaml(&rbac)).unwrap();
    cluster
        .client_as("trellis-system", trellis_manifests::install::OPERATOR_NAME)
        .await
        .unwrap()
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
        webhook_addr: "127.0.0.1:0".parse().unwrap(),
        // No Service leads to an operator in a test: webhooks created for one would fail.
        create_webhooks: false,
        proxy_image: trellis_manifests::install::Options::default().proxy_image,
        pod_name: Some("trellis-operator-test".into()),
        leader_election: true,
        operator_image: None,
        peers: Vec::new(),
        log: None,
    }
}

/// The web pod's proxy settings, with its root and a `trellis`-audience token written to
/// `dir` and its identity kept in `dir/identity`.
pub fn web_proxy(cluster: &Target, dir: &Path, push_port: u16, pod: &str, root_pem: &str) -> ClientConfig {
    shop_proxy(cluster, dir, push_port, "web", pod, root_pem)
}

/// The proxy settings of pod `shop/pod`, running as ServiceAccount `account`, with its root and
/// a `trellis`-audience token written to `dir` and its identity kept in `dir/identity`.
pub fn shop_proxy(
    cluster: &Target,
    dir: &Path,
    push_port: u16,
    account: &str,
    pod: &str,
    root_pem: &str,
) -> ClientConfig {
    let token = cluster
        .kubectl_ok(
            &["-n", "shop", "create", "token", account, "--audience", "trellis"],
            None,
        )
        .unwrap();
    client_config(dir, push_port, account, pod, root_pem, token.trim())
}

/// The push client settings of a sidecar of pod `shop/<pod>` running as ServiceAccount
/// `account`, with `root_pem` and `token` written into `dir`.
pub fn client_config(
    dir: &Path,
    push_port: u16,
    account: &str,
    pod: &str,
    root_pem: &str,
    token: &str,
) -> ClientConfig {
    std::fs::write(dir.join("root.pem"), root_pem).unwrap();
    std::fs::write(dir.join("token"), token).unwrap();
    ClientConfig {
        endpoint: format!("https://127.0.0.1:{push_port}"),
        server_name: "localhost".into(),
        root_cert: dir.join("root.pem"),
        token: dir.join("token"),
        identity_dir: dir.join("identity"),
        namespace: "shop".into(),
        pod: pod.into(),
        role: "sidecar".into(),
        spiffe_id: format!("spiffe://cluster.local/ns/shop/sa/{account}"),
        proxy_version: "test".into(),
        renewal: Default::default(),
        served: Default::default(),
        files: Default::default(),
    }
}

/// A plain HTTP GET (the operator's admin API): status and body.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    let status = buf.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// A `trellis-proxy` in mesh mode, in process, with `cfg`: started, its control-plane
/// connection running (abort the handle to stop it), as `trellis_proxy::control::run` runs it
/// but for its listeners, each on a loopback port of its own ([`OwnPorts`]).
pub async fn mesh_proxy(cfg: ClientConfig) -> (std::sync::Arc<trellis_proxy::App>, tokio::task::JoinHandle<()>) {
    let proxy = proxy_app().await;
    let sink = std::sync::Arc::new(OwnPorts(trellis_proxy::control::AppSink::new(proxy.clone(), &cfg)));
    let control = tokio::spawn(trellis_proxy::control::run_with(sink, cfg));
    (proxy, control)
}

/// The proxy's configurations with every listener on a port the system picks on loopback
/// (`127.0.0.1:0`), not the address the operator pushes (a sidecar's `0.0.0.0:15001` and
/// `0.0.0.0:15006`, each pod's own in a cluster): tests run at once on this machine, and a
/// second proxy binding the same port NACKed its configuration and stayed unconfigured while
/// the first held the port (it applies it again only once the port is free).
struct OwnPorts(trellis_proxy::control::AppSink);

#[tonic::async_trait]
impl ConfigSink for OwnPorts {
    fn current_version(&self) -> Option<String> {
        self.0.current_version()
    }

    async fn apply(&self, mut config: ProxyConfig) -> Result<(), trellis_push::client::Refusal> {
        for listener in &mut config.listeners {
            listener.address = "127.0.0.1:0".into();
        }
        self.0.apply(config).await
    }

    fn rejected(&self, version: &str, error: &str) {
        self.0.rejected(version, error);
    }

    fn signals(&self) -> Option<trellis_contract::signals::Report> {
        self.0.signals()
    }
}

#[tonic::async_trait]
impl Reapply for OwnPorts {
    fn obtained(&self, issued: trellis_push::client::Issued) {
        self.0.obtained(issued);
    }

    async fn reapply(&self) -> bool {
        self.0.reapply().await
    }
}

/// The `root-cert.pem` of the `trellis-ca-root` ConfigMap in `namespace` (empty if absent).
pub fn published_roots(cluster: &Target, namespace: &str) -> String {
    cluster
        .kubectl(
            &[
                "-n",
                namespace,
                "get",
                "configmap",
                "trellis-ca-root",
                "-o",
                "jsonpath={.data.root-cert\\.pem}",
            ],
            None,
        )
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// A `trellis-proxy` with no configuration yet, its admin API on a free loopback port.
pub async fn proxy_app() -> std::sync::Arc<trellis_proxy::App> {
    std::sync::Arc::new(
        trellis_proxy::App::start(trellis_proxy::AppConfig::admin_only("127.0.0.1:0".parse().unwrap()))
            .await
            .unwrap(),
    )
}

/// A Secret manifest holding `root` as `ca.crt`/`ca.key`.
pub fn secret_yaml(namespace: &str, name: &str, root: &trellis_operator::ca::SigningCert) -> String {
    let indent = |pem: &str| pem.trim_end().replace('\n', "\n    ");
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: {namespace}}}\nstringData:\n  ca.crt: |\n    {}\n  ca.key: |\n    {}\n",
        indent(root.cert_pem()),
        indent(&root.key_pem())
    )
}

/// The status, and the message, of the Mesh's `CertificateAuthorityReady` condition (empty if
/// none).
pub fn ca_condition(cluster: &Target) -> (String, String) {
    let json = cluster
        .kubectl_ok(&["get", "mesh", "default", "-o", "json"], None)
        .unwrap_or_default();
    let mesh: serde_json::Value = serde_json::from_str(&json).unwrap_or_default();
    let c = mesh["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "CertificateAuthorityReady")
        .cloned()
        .unwrap_or_default();
    (
        c["status"].as_str().unwrap_or_default().to_string(),
        c["message"].as_str().unwrap_or_default().to_string(),
    )
}
