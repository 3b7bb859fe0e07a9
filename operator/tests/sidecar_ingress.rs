//! A Sidecar's ingress listeners, and the connection pool of the pod's Service's
//! DestinationRule on the inbound side, through a real `trellis-proxy`: the inbound
//! configuration the operator's compiler (`trellis-core`) makes for a pod, applied to a proxy
//! in process, and connections to its inbound listener.
//!
//! The test plays the capture rules, as `mesh.rs` does: the inbound listener is bound on the
//! "pod IP" 127.0.0.2 at the port traffic arrives for (where iptables would have redirected
//! it from), and the applications listen on 127.0.0.1, where the proxy hands traffic over.
//! The Service's target port on 127.0.0.1 is served too, by a decoy: without the Sidecar the
//! traffic goes there, with it to the `defaultEndpoint`.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use trellis_contract::{IdentityConfig, ListenerDirection, ProxyConfig};
use trellis_operator::compile::{Role, compile};
use trellis_operator::registry::ObjectKey;
use trellis_operator::snapshot::Snapshot;

use support::loopback::Loopback;

/// A server on 127.0.0.1 answering each connection with `<name>: ` and the first bytes it
/// read (an HTTP request's first line, or an opaque client's greeting), then closing.
struct App {
    port: u16,
    _server: Loopback,
}

impl App {
    async fn start(name: &'static str, port: u16) -> App {
        let server = Loopback::serve(port, move |mut tcp| async move {
            let mut buf = [0u8; 1024];
            let n = tcp.read(&mut buf).await.unwrap_or(0);
            let text = String::from_utf8_lossy(&buf[..n]);
            let first = text.lines().next().unwrap_or_default().to_string();
            let body = format!("{name}: {first}");
            let reply = if text.starts_with("GET ") {
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                )
            } else {
                body
            };
            let _ = tcp.write_all(reply.as_bytes()).await;
        })
        .await;
        App {
            port: server.addr.port(),
            _server: server,
        }
    }
}

/// A free port on 127.0.0.1 (and so, on this test's loopback, on 127.0.0.2 too).
fn free_port() -> u16 {
    support::free_port()
}

/// The pod `web-1` (IP 127.0.0.2) and its Service, whose port 80 targets `target`; mTLS
/// DISABLE, so the proxy needs no certificate (the inbound mapping is the same under mTLS).
fn mesh(target: u16, extra: &str) -> Snapshot {
    Snapshot::from_yaml(&format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: shop}}
spec: {{clusterIP: 10.96.1.1, selector: {{app: web}}, ports: [{{name: http, port: 80, targetPort: {target}}}]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: web-1, namespace: shop, labels: {{app: web}}}}
spec: {{serviceAccountName: web, containers: [{{name: app, image: web}}]}}
status: {{podIP: 127.0.0.2, phase: Running, conditions: [{{type: Ready, status: "True"}}]}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: plaintext, namespace: shop}}
spec: {{mtls: {{mode: DISABLE}}}}
---
{extra}
"#
    ))
    .unwrap()
}

/// A proxy in process with web-1's compiled inbound listener bound on `ip` at each of `ports`
/// (one copy a port: the capture rules would redirect each there), without an identity.
async fn proxy(snapshot: &Snapshot, ip: [u8; 4], ports: &[u16]) -> Arc<trellis_proxy::App> {
    let compiled = compile(snapshot, &ObjectKey::new("shop", "web-1"), Role::Sidecar, "v1").unwrap();
    let mut config: ProxyConfig = compiled.config;
    let inbound = config
        .listeners
        .iter()
        .find(|l| l.direction == ListenerDirection::Inbound)
        .cloned()
        .expect("an inbound listener");
    config.listeners = ports
        .iter()
        .map(|p| {
            let mut l = inbound.clone();
            l.name = format!("inbound-{p}");
            l.address = SocketAddr::from((ip, *p)).to_string();
            l
        })
        .collect();
    config.identity = IdentityConfig::default();
    let app = support::proxy_app().await;
    app.apply(config).await.expect("the compiled configuration applies");
    app
}

/// One HTTP/1.1 GET to `addr`: status and body.
async fn get(addr: SocketAddr) -> (u16, String) {
    let out = exchange(addr, b"GET /hello HTTP/1.1\r\nhost: web\r\nconnection: close\r\n\r\n").await;
    let status = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// `bytes` sent to `addr`, and everything read back until it closes.
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

const POD: [u8; 4] = [127, 0, 0, 2];
const OTHER_POD: [u8; 4] = [127, 0, 0, 3];

/// HTTP for the Service's target port goes to the ingress listener's `defaultEndpoint`;
/// opaque TCP for a port no Service names goes to its listener's; without the Sidecar the
/// Service's port reaches the application on that same port, as before.
#[tokio::test]
async fn traffic_for_an_ingress_port_reaches_its_default_endpoint() {
    let decoy = App::start("target-port", 0).await;
    let http_app = App::start("default-endpoint", 0).await;
    let tcp_app = App::start("tcp-endpoint", 0).await;
    let tcp_port = free_port();
    let sidecar = format!(
        r#"
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: web, namespace: shop}}
spec:
  workloadSelector: {{labels: {{app: web}}}}
  ingress:
  - port: {{number: {target}, protocol: HTTP, name: http}}
    defaultEndpoint: 127.0.0.1:{http}
  - port: {{number: {tcp_port}, protocol: TCP, name: tcp-admin}}
    defaultEndpoint: 127.0.0.1:{tcp}
"#,
        target = decoy.port,
        http = http_app.port,
        tcp = tcp_app.port,
    );
    let object: serde_json::Value = serde_yaml_ng::from_str(&sidecar).unwrap();
    use trellis_api::validation::{Outcome, Severity, validate};
    let Outcome::Validated { findings, .. } = validate(&object) else {
        panic!("a Sidecar is the validator's to validate");
    };
    let errors: Vec<_> = findings.iter().filter(|f| f.severity == Severity::Error).collect();
    assert!(errors.is_empty(), "the validator accepts the Sidecar: {errors:?}");

    let _with = proxy(&mesh(decoy.port, &sidecar), POD, &[decoy.port, tcp_port]).await;
    let (status, body) = get(SocketAddr::from((POD, decoy.port))).await;
    assert_eq!((status, body.as_str()), (200, "default-endpoint: GET /hello HTTP/1.1"));
    let opaque = exchange(
        SocketAddr::from((POD, tcp_port)),
        b"\x00\x01 hello from an opaque client\n",
    )
    .await;
    assert_eq!(opaque, "tcp-endpoint: \u{0}\u{1} hello from an opaque client");

    // The same pod without the Sidecar (its proxy on another "pod IP"): the Service's target
    // port, on localhost.
    let _without = proxy(&mesh(decoy.port, ""), OTHER_POD, &[decoy.port]).await;
    let (status, body) = get(SocketAddr::from((OTHER_POD, decoy.port))).await;
    assert_eq!((status, body.as_str()), (200, "target-port: GET /hello HTTP/1.1"));
}

/// An application on 127.0.0.1 that holds each request until the test releases one, counting
/// the requests it has received.
struct Holding {
    port: u16,
    received: Arc<std::sync::atomic::AtomicU32>,
    release: Arc<tokio::sync::Semaphore>,
    _server: Loopback,
}

impl Holding {
    async fn start() -> Holding {
        let received = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let release = Arc::new(tokio::sync::Semaphore::new(0));
        let (counted, released) = (Arc::clone(&received), Arc::clone(&release));
        let server = Loopback::serve(0, move |mut tcp| {
            let (counted, released) = (Arc::clone(&counted), Arc::clone(&released));
            async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if let Ok(permit) = released.acquire().await {
                    permit.forget();
                }
                let _ = tcp
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\nconnection: close\r\n\r\nheld")
                    .await;
            }
        })
        .await;
        Holding {
            port: server.addr.port(),
            received,
            release,
            _server: server,
        }
    }

    fn received(&self) -> u32 {
        self.received.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Istio sets a DestinationRule's connection pool on the receiving side too ("circuit breakers
/// ... need to be set on the receiver end (server side) as well as client side"): with web's
/// rule allowing one request at a time and one waiting, web's own proxy hands its application
/// one request, queues the second and refuses the third with 503 — without the rule, all
/// three reach the application.
#[tokio::test]
async fn a_destination_rules_pool_limits_what_the_inbound_side_sends_the_application() {
    let rule = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web, namespace: shop}
spec:
  host: web
  trafficPolicy:
    connectionPool: {tcp: {maxConnections: 1}, http: {http1MaxPendingRequests: 1}}
"#;
    let object: serde_json::Value = serde_yaml_ng::from_str(rule).unwrap();
    use trellis_api::validation::{Outcome, Severity, validate};
    let Outcome::Validated { findings, .. } = validate(&object) else {
        panic!("a DestinationRule is the validator's to validate");
    };
    assert!(
        findings.iter().all(|f| f.severity != Severity::Error),
        "the validator accepts the rule: {findings:?}"
    );

    /// Three GETs to `app` through a proxy on `ip`: the application's count after the first,
    /// after the second, and the statuses once it answers every request it holds.
    async fn three(app: &Holding, snapshot: &Snapshot, ip: [u8; 4]) -> (u32, u32, Vec<u16>) {
        let _proxy = proxy(snapshot, ip, &[app.port]).await;
        let addr = SocketAddr::from((ip, app.port));
        let send = || tokio::spawn(async move { get(addr).await.0 });
        let first = send();
        support::until("the first request reaches the application", 5, || app.received() >= 1).await;
        let second = send();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let after_second = app.received();
        let third = send();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let after_third = app.received();
        app.release.add_permits(3);
        let mut statuses = Vec::new();
        for r in [first, second, third] {
            statuses.push(r.await.unwrap());
        }
        (after_second, after_third, statuses)
    }

    let app = Holding::start().await;
    let (after_second, after_third, statuses) = three(&app, &mesh(app.port, rule), POD).await;
    assert_eq!(
        (after_second, after_third),
        (1, 1),
        "one request at a time reaches the application"
    );
    assert_eq!(statuses, [200, 200, 503], "the second waited, the third overflowed");
    assert_eq!(app.received(), 2);

    let app = Holding::start().await;
    let (after_second, after_third, statuses) = three(&app, &mesh(app.port, ""), OTHER_POD).await;
    assert_eq!((after_second, after_third), (2, 3), "without the rule, no limit");
    assert_eq!(statuses, [200, 200, 200]);
}
