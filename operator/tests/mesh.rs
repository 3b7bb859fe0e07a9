//! The joint test of issue 4: the operator's core (index → compiler → push, CA, admin) with two
//! real `trellis-proxy` instances in mesh mode and two `trellis-testapp` apps, on loopback.
//!
//! Pod `a` has IP 127.0.0.2 and pod `b` 127.0.0.3, so the compiler's endpoint of Service `b` is
//! `127.0.0.3:<b's target port>` exactly as it would be in a cluster. With no iptables to
//! redirect, the test plays the capture rules: each proxy's pushed listeners are bound on its
//! pod IP (outbound on a free port, inbound on the app's target port, where redirected traffic
//! would have arrived), and the test sends "app a's" requests to a's outbound listener with
//! the Service's Host header. Apps listen on 127.0.0.1, where the inbound hands traffic over.
//!
//! The registry is an `Index` fed with objects directly (no API server): the same snapshot and
//! compile path as the watchers feed in a cluster, without their latency.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use serde_json::Value;
use support::{until, until_async, until_state};
use tokio::sync::watch;
use trellis_api::networking::VirtualService;
use trellis_api::security::{AuthorizationPolicy, PeerAuthentication};
use trellis_contract::ProxyConfig;
use trellis_operator::app::{self, App, Core};
use trellis_operator::ca::service::{TokenIdentity, TokenReviewer};
use trellis_operator::ca::{DEFAULT_WORKLOAD_TTL, MeshRoots, SigningCert, SystemClock};
use trellis_operator::index::{Change, Index, Object};
use trellis_operator::snapshot::InputKind;
use trellis_push::client::{self, ConfigSink};

const TTL_SECONDS: u64 = 3;

/// How long a configuration may take to reach both proxies: a tenth of a second on an idle
/// machine (measured: 0.13-0.19 s with two spinning cores and builds beside it), seconds on a
/// loaded 2-core CI machine, where the proxies' 3 s certificates also renew (files written
/// with fsync, then the configuration applied again) every second or two.
const WAIT_SECS: u64 = 30;

/// Tokens of the two pods, as a TokenReview would answer.
struct Reviewer;

#[tonic::async_trait]
impl TokenReviewer for Reviewer {
    async fn review(&self, token: &str, _audience: &str) -> Result<TokenIdentity, String> {
        let (sa, pod) = match token {
            "token-a" => ("a", "a-1"),
            "token-b" => ("b", "b-1"),
            _ => return Err("unknown token".into()),
        };
        Ok(TokenIdentity {
            namespace: "shop".into(),
            service_account: sa.into(),
            pod: Some(pod.into()),
        })
    }
}

/// One object of YAML, as the watchers would deliver it.
fn object(yaml: &str) -> Object {
    let v: Value = serde_yaml_ng::from_str(yaml).unwrap();
    match v["kind"].as_str().unwrap() {
        "Namespace" => Object::Namespace(Box::new(serde_json::from_value::<Namespace>(v).unwrap())),
        "Service" => Object::Service(Box::new(serde_json::from_value::<Service>(v).unwrap())),
        "Pod" => Object::Pod(Box::new(serde_json::from_value::<Pod>(v).unwrap())),
        "VirtualService" => Object::VirtualService(Box::new(serde_json::from_value::<VirtualService>(v).unwrap())),
        "PeerAuthentication" => {
            Object::PeerAuthentication(Box::new(serde_json::from_value::<PeerAuthentication>(v).unwrap()))
        }
        "AuthorizationPolicy" => {
            Object::AuthorizationPolicy(Box::new(serde_json::from_value::<AuthorizationPolicy>(v).unwrap()))
        }
        other => panic!("no such kind in this test: {other}"),
    }
}

fn service(name: &str, target_port: u16) -> String {
    format!(
        "{{apiVersion: v1, kind: Service, metadata: {{name: {name}, namespace: shop}}, spec: {{clusterIP: 10.96.0.{n}, selector: {{app: {name}}}, ports: [{{name: http, port: 8080, targetPort: {target_port}}}]}}}}",
        n = if name == "a" { 20 } else { 21 }
    )
}

fn pod(name: &str, ip: &str, port: u16) -> String {
    format!(
        "{{apiVersion: v1, kind: Pod, metadata: {{name: {name}-1, namespace: shop, labels: {{app: {name}}}}}, spec: {{serviceAccountName: {name}, initContainers: [{{name: trellis-proxy, image: trellis-proxy, restartPolicy: Always}}], containers: [{{name: app, image: app, ports: [{{containerPort: {port}}}]}}]}}, status: {{podIP: {ip}, phase: Running, conditions: [{{type: Ready, status: \"True\"}}]}}}}"
    )
}

fn virtual_service(tag: &str, regex: Option<&str>) -> String {
    let matches = regex
        .map(|r| format!("match: [{{uri: {{regex: '{r}'}}}}], "))
        .unwrap_or_default();
    format!(
        "{{apiVersion: networking.trellis.dev/v1alpha1, kind: VirtualService, metadata: {{name: b, namespace: shop}}, spec: {{hosts: [b], http: [{{{matches}route: [{{destination: {{host: b}}}}], headers: {{response: {{set: {{x-vs: {tag}}}}}}}}}]}}}}"
    )
}

const STRICT: &str = "{apiVersion: security.trellis.dev/v1alpha1, kind: PeerAuthentication, metadata: {name: default, namespace: shop}, spec: {mtls: {mode: STRICT}}}";
const DENY_SECRET: &str = "{apiVersion: security.trellis.dev/v1alpha1, kind: AuthorizationPolicy, metadata: {name: no-secret, namespace: shop}, spec: {selector: {matchLabels: {app: b}}, action: DENY, rules: [{to: [{operation: {paths: [/secret]}}]}]}}";

/// The registry, and how a change is announced (as the watchers do).
struct Registry {
    index: Arc<RwLock<Index>>,
    changed: watch::Sender<u64>,
}

impl Registry {
    fn apply(&self, yaml: &str) {
        let generation = {
            let mut idx = self.index.write().unwrap();
            idx.apply(Change::Applied(object(yaml)));
            idx.generation()
        };
        self.changed.send_replace(generation);
    }

    /// Every kind's first list completed, as the watchers report it.
    fn listed(&self) {
        let generation = {
            let mut idx = self.index.write().unwrap();
            for kind in InputKind::ALL {
                let seen = idx.keys(kind).into_iter().collect();
                idx.apply(Change::Relisted { kind, seen });
            }
            idx.generation()
        };
        self.changed.send_replace(generation);
    }
}

/// The proxy's listeners where this pod's capture rules would deliver traffic.
struct Captured {
    inner: trellis_proxy::control::AppSink,
    outbound: SocketAddr,
    inbound: SocketAddr,
}

#[tonic::async_trait]
impl ConfigSink for Captured {
    fn current_version(&self) -> Option<String> {
        self.inner.current_version()
    }

    async fn apply(&self, mut config: ProxyConfig) -> Result<(), trellis_push::client::Refusal> {
        for l in &mut config.listeners {
            match l.name.as_str() {
                "outbound" => l.address = self.outbound.to_string(),
                "inbound" => l.address = self.inbound.to_string(),
                _ => {}
            }
        }
        self.inner.apply(config).await
    }
}

struct Proxy {
    app: Arc<trellis_proxy::App>,
    outbound: SocketAddr,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Proxy {
    /// A proxy in mesh mode for pod `<name>-1`, as `trellis_proxy::control::run` runs it.
    async fn start(name: &str, ip: &str, app_port: u16, push_port: u16, dir: &Path, root_pem: &str) -> Proxy {
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = support::client_config(
            &dir,
            push_port,
            name,
            &format!("{name}-1"),
            root_pem,
            &format!("token-{name}"),
        );
        let app = support::proxy_app().await;
        let outbound: SocketAddr = format!("{ip}:{}", support::free_port()).parse().unwrap();
        let sink = Arc::new(Captured {
            inner: trellis_proxy::control::AppSink::new(app.clone(), &cfg),
            outbound,
            inbound: format!("{ip}:{app_port}").parse().unwrap(),
        });
        let (issued_tx, mut issued) = watch::channel(None);
        let mut tasks = vec![tokio::spawn(client::run_identity(cfg.clone(), issued_tx))];
        while issued.borrow_and_update().is_none() {
            issued.changed().await.unwrap();
        }
        tasks.push(tokio::spawn(client::run_push(cfg, sink.clone())));
        tasks.push(tokio::spawn(async move {
            while issued.changed().await.is_ok() {
                sink.inner.reapply().await;
            }
        }));
        Proxy { app, outbound, tasks }
    }

    fn config(&self) -> ProxyConfig {
        self.app.runtime().snapshot().config()
    }

    /// The version and `x-vs` tag this proxy serves, and whether it is ready: what a wait
    /// that timed out saw.
    fn served(&self) -> String {
        let config = self.config();
        let json = serde_json::to_string(&config).unwrap_or_default();
        let tag = json
            .split("\"x-vs\":\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or("no tag");
        format!(
            "version {} (x-vs {tag}, ready {})",
            config.version,
            self.app.runtime().is_ready()
        )
    }

    fn leaf(&self) -> Vec<u8> {
        self.app.runtime().snapshot().identity.as_ref().unwrap().cert.chain[0].to_vec()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// What an app answered through the mesh.
struct Answer {
    status: u16,
    headers: BTreeMap<String, String>,
    body: Value,
}

/// "App a" calls `http://b.shop.svc.cluster.local:8080<path>` through its sidecar.
async fn call_b(
    client: &Client<HttpConnector, Empty<Bytes>>,
    outbound: SocketAddr,
    path: &str,
) -> Result<Answer, String> {
    let req = hyper::Request::get(format!("http://{outbound}{path}"))
        .header("host", "b.shop.svc.cluster.local:8080")
        .body(Empty::new())
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(5), client.request(req))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| format!("{e:?}"))?;
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_string()))
        .collect();
    let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(Answer {
        status,
        headers,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    })
}

/// Requests in a loop until stopped; returns (ok, failures with their reasons).
fn load(
    client: Client<HttpConnector, Empty<Bytes>>,
    proxy: &Proxy,
    stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<(u64, Vec<String>)> {
    let outbound = proxy.outbound;
    let ok = Arc::new(AtomicU64::new(0));
    tokio::spawn(async move {
        let mut failures = Vec::new();
        while !*stop.borrow() {
            match call_b(&client, outbound, "/load").await {
                Ok(a) if a.status == 200 => {
                    ok.fetch_add(1, Ordering::Relaxed);
                }
                Ok(a) => failures.push(format!("status {}: {}", a.status, a.body)),
                Err(e) => failures.push(e),
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        (ok.load(Ordering::Relaxed), failures)
    })
}

/// The operator's sync state of each proxy: sent, acked, nacked (a timed-out wait says it).
fn sync_state(op: &App) -> String {
    op.push
        .sync_state()
        .iter()
        .map(|p| {
            format!(
                "{} sent {:?} acked {:?} nacked {:?}",
                p.proxy,
                p.sent,
                p.acked,
                p.nacked.as_ref().map(|n| (&n.version, &n.error))
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// One sample of the operator's `/metrics`; fails the test when the operator does not export it
/// (an absent metric is not a zero).
async fn metric(op: &App, sample: &str) -> f64 {
    let (status, text) = support::http_get(op.admin_addr, "/metrics").await;
    assert_eq!(status, 200);
    sample_value(&text, sample).unwrap_or_else(|| panic!("the operator exports no sample {sample}:\n{text}"))
}

fn sample_value(text: &str, sample: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn an_absent_metric_is_not_a_zero() {
    let text = "# TYPE trellis_operator_pushes_total counter\ntrellis_operator_pushes_total 0\n";
    assert_eq!(sample_value(text, "trellis_operator_pushes_total"), Some(0.0));
    assert_eq!(sample_value(text, "trellis_operator_pushes"), None);
    assert_eq!(sample_value(text, "trellis_operator_nacks_total"), None);
}

/// SHA-256 (hex) of a certificate: what `x-forwarded-client-cert`'s `Hash=` names.
fn sha256_hex(der: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// One field (`By=`, `Hash=`, `URI=`) of an `x-forwarded-client-cert` value.
fn xfcc_field<'a>(xfcc: &'a str, key: &str) -> Option<&'a str> {
    xfcc.split(';').find_map(|f| f.strip_prefix(key))
}

/// Every request of a load loop succeeded.
fn no_failures(ok: u64, failures: &[String]) {
    assert!(
        failures.is_empty(),
        "{} failed of {}: {:?}",
        failures.len(),
        ok + failures.len() as u64,
        &failures[..failures.len().min(5)]
    );
}

async fn start_operator(core: Core, push_port: u16) -> App {
    let mut config = support::operator_config(push_port, TTL_SECONDS);
    config.admin_addr = "127.0.0.1:0".parse().unwrap();
    app::serve(&config, core).await.expect("the operator starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_proxies_and_two_apps_on_loopback() {
    rustls::crypto::ring::default_provider().install_default().ok();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env(
            trellis_manifests::install::LOG_ENV,
        ))
        .with_test_writer()
        .try_init();
    // The apps, on the pods' localhost.
    let (port_a, port_b) = (support::free_port(), support::free_port());
    let echo = |svc: &str, port: u16| {
        let mut s = trellis_testapp::Settings::echo(svc, format!("127.0.0.1:{port}").parse().unwrap());
        s.namespace = "shop".into();
        s.pod = format!("{svc}-1");
        s
    };
    let _app_a = trellis_testapp::start(echo("a", port_a)).await.unwrap();
    let _app_b = trellis_testapp::start(echo("b", port_b)).await.unwrap();

    // The registry.
    let (changed, changed_rx) = watch::channel(0);
    let registry = Registry {
        index: Arc::default(),
        changed,
    };
    registry.apply("{apiVersion: v1, kind: Namespace, metadata: {name: shop}}");
    registry.apply(&service("a", port_a));
    registry.apply(&service("b", port_b));
    registry.apply(&pod("a", "127.0.0.2", port_a));
    registry.apply(&pod("b", "127.0.0.3", port_b));
    registry.apply(STRICT);
    registry.apply(&virtual_service("one", None));

    // The operator.
    let root = SigningCert::self_signed_root(
        "cluster.local",
        Duration::from_secs(86400),
        std::time::SystemTime::now(),
    )
    .unwrap();
    let (root_pem, root_key) = (root.cert_pem().to_string(), root.key_pem());
    let ttl = Duration::from_secs(TTL_SECONDS);
    assert!(ttl < DEFAULT_WORKLOAD_TTL);
    let core = |roots: MeshRoots| Core {
        settings: trellis_operator::settings::Settings::defaults(&Default::default()),
        index: registry.index.clone(),
        changed: changed_rx.clone(),
        reviewer: Arc::new(Reviewer),
        roots: Arc::new(roots),
        client: None,
        metrics: Arc::default(),
        leadership: trellis_operator::leader::Leadership::always(),
    };
    let push_port = support::free_port();
    let op = start_operator(core(MeshRoots::new(root, ttl, Arc::new(SystemClock))), push_port).await;

    // Two proxies.
    let dir = tempfile::tempdir().unwrap();
    let a = Proxy::start("a", "127.0.0.2", port_a, push_port, dir.path(), &root_pem).await;
    let b = Proxy::start("b", "127.0.0.3", port_b, push_port, dir.path(), &root_pem).await;
    // Until the registry has listed every kind, the operator is not ready and pushes nothing:
    // a config compiled from a partial view would drop what has not arrived yet.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(support::http_get(op.admin_addr, "/ready").await.0, 503);
    assert_eq!(
        metric(&op, "trellis_operator_pushes_total").await,
        0.0,
        "nothing pushed yet"
    );
    registry.listed();
    until_async("ready once listed", 5, || async {
        support::http_get(op.admin_addr, "/ready").await.0 == 200
    })
    .await;
    let has_tag = |p: &Proxy, tag: &str| {
        p.app.runtime().is_ready()
            && serde_json::to_string(&p.config())
                .unwrap()
                .contains(&format!("\"x-vs\":\"{tag}\""))
    };
    until("both proxies configured", 10, || {
        has_tag(&a, "one") && has_tag(&b, "one")
    })
    .await;
    let client: Client<HttpConnector, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    // Until both proxies serve `tag` (and the operator's view of them while they do not).
    let both_serve = |op: &App, tag: &str| -> Result<(), String> {
        if has_tag(&a, tag) && has_tag(&b, tag) {
            return Ok(());
        }
        Err(format!(
            "a serves {}, b serves {}; the operator's sync state: {}",
            a.served(),
            b.served(),
            sync_state(op)
        ))
    };

    // A request crosses a (outbound, mTLS) → b (inbound) → app b, which sees a's identity.
    let answer = call_b(&client, a.outbound, "/hello").await.unwrap();
    assert_eq!(
        answer.status,
        200,
        "{:?} {}",
        answer.headers,
        serde_json::to_string(&a.config()).unwrap()
    );
    assert_eq!(answer.body["service"], "b");
    // The caller's identity as b's proxy verified it, and b's own.
    let xfcc = answer.body["clientCert"].as_str().unwrap_or_default();
    assert_eq!(
        xfcc_field(xfcc, "URI="),
        Some("spiffe://cluster.local/ns/shop/sa/a"),
        "{}",
        answer.body
    );
    assert_eq!(
        xfcc_field(xfcc, "By="),
        Some("spiffe://cluster.local/ns/shop/sa/b"),
        "{}",
        answer.body
    );
    assert_eq!(answer.headers.get("x-vs").map(String::as_str), Some("one"));

    // A VirtualService change reaches both proxies, and the traffic.
    registry.apply(&virtual_service("two", None));
    until_state("the change reaches both proxies", WAIT_SECS, || both_serve(&op, "two")).await;
    let answer = call_b(&client, a.outbound, "/hello").await.unwrap();
    assert_eq!(answer.headers.get("x-vs").map(String::as_str), Some("two"));
    // It travelled as deltas (the proxies' clients accept them), applied by the real proxies.
    assert!(metric(&op, "trellis_operator_delta_pushes_total").await >= 2.0);

    // Plaintext to b's STRICT inbound is refused: no HTTP answer comes back.
    let mut plain = tokio::net::TcpStream::connect(format!("127.0.0.3:{port_b}"))
        .await
        .unwrap();
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let _ = plain
            .write_all(b"GET /hello HTTP/1.1\r\nhost: b\r\nconnection: close\r\n\r\n")
            .await;
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut buf)).await;
        assert!(
            !String::from_utf8_lossy(&buf).contains("HTTP/1.1 200"),
            "plaintext got through"
        );
        assert!(
            !String::from_utf8_lossy(&buf).contains("\"service\""),
            "plaintext reached the app"
        );
    }

    // An AuthorizationPolicy denies one path with 403; another still works.
    registry.apply(DENY_SECRET);
    until_state("b enforces the policy", WAIT_SECS, || {
        if b.config().inbound.authorization.is_empty() {
            return Err(format!("b serves {} without it; {}", b.served(), sync_state(&op)));
        }
        Ok(())
    })
    .await;
    let denied = call_b(&client, a.outbound, "/secret").await.unwrap();
    assert_eq!(denied.status, 403);
    assert_eq!(call_b(&client, a.outbound, "/hello").await.unwrap().status, 200);

    // A config the proxies reject (a regex Rust cannot compile, valid to the schema) is NACKed;
    // traffic keeps flowing on the last good config.
    registry.apply(&virtual_service("three", Some("^/(?=x)")));
    until_state("both proxies NACK", WAIT_SECS, || {
        let nacked = op
            .push
            .sync_state()
            .iter()
            .filter(|p| p.nacked.as_ref().is_some_and(|n| Some(&n.version) == p.sent.as_ref()))
            .count();
        if nacked == 2 {
            return Ok(());
        }
        Err(sync_state(&op))
    })
    .await;
    assert_eq!(metric(&op, "trellis_operator_nacks_total").await, 2.0);
    assert_eq!(metric(&op, "trellis_operator_proxies_nacked").await, 2.0);
    let answer = call_b(&client, a.outbound, "/hello").await.unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.headers.get("x-vs").map(String::as_str),
        Some("two"),
        "the last good config serves"
    );
    registry.apply(&virtual_service("four", None));
    until_state("a good config again", WAIT_SECS, || both_serve(&op, "four")).await;

    // The operator stops and restarts (a new CA state from the stored root) under load:
    // no request fails, and the proxies resubscribe and get what changed meanwhile.
    let (stop_tx, stop_rx) = watch::channel(false);
    let loader = load(client.clone(), &a, stop_rx.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    op.stop();
    registry.apply(&virtual_service("five", None));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        has_tag(&a, "four"),
        "the proxies keep serving while the operator is away"
    );
    let stored = SigningCert::from_pem(&root_pem, &root_key, &[]).unwrap();
    let op = start_operator(core(MeshRoots::new(stored, ttl, Arc::new(SystemClock))), push_port).await;
    until_state("the change made while the operator was away", WAIT_SECS, || {
        both_serve(&op, "five")
    })
    .await;
    stop_tx.send_replace(true);
    let (ok, failures) = loader.await.unwrap();
    no_failures(ok, &failures);
    assert!(ok > 20, "the load loop ran ({ok} requests)");

    // Short-lived leaves (3 s) rotate several times under steady load: nothing fails, and
    // the peer receives each new certificate: app b sees a's leaves in turn as the `Hash=`
    // of the client certificate b's proxy verified.
    let (stop_tx, stop_rx) = watch::channel(false);
    let loader = load(client.clone(), &a, stop_rx);
    let (mut leaves_a, mut leaves_b) = (vec![a.leaf()], vec![b.leaf()]);
    let mut seen_by_b: Vec<String> = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        if let Ok(answer) = call_b(&client, a.outbound, "/rotation").await
            && let Some(hash) = answer.body["clientCert"].as_str().and_then(|x| xfcc_field(x, "Hash="))
            && seen_by_b.last().map(String::as_str) != Some(hash)
        {
            seen_by_b.push(hash.to_string());
        }
        if leaves_a.last() != Some(&a.leaf()) {
            leaves_a.push(a.leaf());
        }
        if leaves_b.last() != Some(&b.leaf()) {
            leaves_b.push(b.leaf());
        }
        if leaves_a.len() > 3 && leaves_b.len() > 3 && seen_by_b.len() > 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop_tx.send_replace(true);
    let (ok, failures) = loader.await.unwrap();
    assert!(
        leaves_a.len() > 3 && leaves_b.len() > 3,
        "rotations: a {}, b {}",
        leaves_a.len() - 1,
        leaves_b.len() - 1
    );
    let hashes_a: Vec<String> = leaves_a.iter().map(|l| sha256_hex(l)).collect();
    assert!(
        seen_by_b.len() > 3,
        "b received only {} distinct certificates from a over {} rotations of a's leaf: {seen_by_b:?}",
        seen_by_b.len(),
        leaves_a.len() - 1
    );
    for hash in &seen_by_b {
        assert!(
            hashes_a.contains(hash),
            "b received a certificate {hash} that a never held: {hashes_a:?}"
        );
    }
    no_failures(ok, &failures);
    op.stop();
}
