//! ServiceEntries, `outboundTrafficPolicy` and Sidecar scoping end to end: the objects
//! compiled by the operator's compiler (`trellis-core`) for a sidecar, the configuration
//! applied to a real `trellis-proxy` in process, and requests through its outbound listener to
//! servers on loopback.
//!
//! The test plays the capture rules, as `mesh.rs` does: the outbound listener is bound on a
//! free loopback port and "the app's" requests name the host and port they were addressed to
//! in their Host header. Without a redirected connection there is no original destination,
//! so unknown hosts are refused whatever the policy (passthrough needs the capture lab).
//! The DNS ServiceEntry's name is resolved against a DNS server the test runs on loopback,
//! named as the proxy's DNS upstream (in a pod, `/etc/resolv.conf`'s servers are used).

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use trellis_contract::{DnsConfig, DnsEntry, IdentityConfig, ListenerDirection, ProxyConfig};
use trellis_operator::compile::{Role, compile};
use trellis_operator::registry::ObjectKey;
use trellis_operator::snapshot::Snapshot;

use support::loopback::Loopback;

/// The client pod whose sidecar is compiled.
const CLIENT: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: client-1, namespace: shop, labels: {app: client}}
spec: {serviceAccountName: client, containers: [{name: app, image: app}]}
status: {podIP: 127.0.0.2, phase: Running, conditions: [{type: Ready, status: "True"}]}
"#;

/// An HTTP server on loopback answering every request with `200 <name> <host>`, counting them.
struct Server {
    addr: SocketAddr,
    hits: Arc<AtomicU64>,
    _server: Loopback,
}

impl Server {
    async fn start(name: &'static str) -> Server {
        let hits = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&hits);
        let server = Loopback::serve(0, move |mut tcp| {
            let counted = Arc::clone(&counted);
            async move {
                let head = read_head(&mut tcp).await;
                let host = header(&head, "host").unwrap_or_default();
                counted.fetch_add(1, Ordering::SeqCst);
                let body = format!("{name} {host}");
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tcp.write_all(reply.as_bytes()).await;
            }
        })
        .await;
        Server {
            addr: server.addr,
            hits,
            _server: server,
        }
    }

    fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }
}

async fn read_head(tcp: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

fn header(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
    })
}

/// One HTTP/1.1 GET through `proxy` with this Host header: status and body.
async fn get(proxy: SocketAddr, host: &str) -> (u16, String) {
    let (status, _, body) = exchange(proxy, host).await;
    (status, body)
}

/// One HTTP/1.1 GET through `proxy` with this Host header: status, head and body.
async fn exchange(proxy: SocketAddr, host: &str) -> (u16, String, String) {
    let mut tcp = TcpStream::connect(proxy).await.unwrap();
    tcp.write_all(format!("GET / HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_string(&mut out)).await;
    let status = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    (status, head.to_string(), body.to_string())
}

/// A DNS server on loopback answering A queries for `name` with 127.0.0.1, counting them.
struct Dns {
    addr: SocketAddr,
    queries: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Dns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Dns {
    async fn start(name: &str) -> Dns {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let table = trellis_proxy::dns_table::DnsTable::new(&DnsConfig {
            entries: vec![DnsEntry {
                hostname: name.to_string(),
                aliases: Vec::new(),
                addresses: vec!["127.0.0.1".into()],
            }],
            upstreams: Vec::new(),
        });
        let queries = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&queries);
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 512];
            loop {
                let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                    continue;
                };
                counted.fetch_add(1, Ordering::SeqCst);
                if let Some(answer) = table.answer(&buf[..n]) {
                    let _ = socket.send_to(&answer, from).await;
                }
            }
        });
        Dns { addr, queries, task }
    }
}

/// The sidecar configuration of `client-1` compiled from `yaml`, ready for a proxy in
/// process: the outbound listener alone, on a free loopback port, no workload identity (the
/// ServiceEntries here are outside the mesh), resolving names with `dns`.
fn sidecar(yaml: &str, dns: Option<SocketAddr>) -> ProxyConfig {
    let snapshot = Snapshot::from_yaml(&format!("{CLIENT}\n---\n{yaml}")).unwrap();
    let compiled = compile(&snapshot, &ObjectKey::new("shop", "client-1"), Role::Sidecar, "v1").unwrap();
    let mut config = compiled.config;
    config.listeners.retain(|l| l.direction == ListenerDirection::Outbound);
    config.listeners[0].address = "127.0.0.1:0".into();
    config.identity = IdentityConfig::default();
    config.dns.upstreams = dns.iter().map(SocketAddr::to_string).collect();
    config
}

async fn proxy(config: ProxyConfig) -> (Arc<trellis_proxy::App>, SocketAddr) {
    let app = support::proxy_app().await;
    app.apply(config).await.expect("the compiled configuration applies");
    let addr = app.listener_addr("outbound").await.expect("outbound bound");
    (app, addr)
}

const REGISTRY_ONLY: &str = r#"
apiVersion: mesh.trellis.dev/v1alpha1
kind: Mesh
metadata: {name: default}
spec: {outboundTrafficPolicy: {mode: REGISTRY_ONLY}}
"#;

/// A STATIC ServiceEntry's host is routed to its endpoint; under REGISTRY_ONLY a host in no
/// Service or ServiceEntry gets 502 and opaque TCP to an unknown destination is reset.
#[tokio::test]
async fn static_entry_is_routed_and_registry_only_refuses_unknown_hosts() {
    let external = Server::start("external").await;
    let entry = format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: api, namespace: shop}}
spec:
  hosts: [api.external.test]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  endpoints: [{{address: 127.0.0.1, ports: {{http: {port}}}}}]
"#,
        port = external.addr.port()
    );
    let config = sidecar(&format!("{REGISTRY_ONLY}\n---\n{entry}"), None);
    let (_app, outbound) = proxy(config).await;

    let (status, body) = get(outbound, "api.external.test:80").await;
    assert_eq!((status, body.as_str()), (200, "external api.external.test:80"));
    assert_eq!(external.hits(), 1);

    let (status, body) = get(outbound, "unknown.example.org:80").await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("REGISTRY_ONLY"), "{body}");
    assert_eq!(external.hits(), 1, "nothing reached the external server");

    // Opaque TCP (not HTTP) to a destination no route takes: reset, as Istio's BlackHoleCluster.
    let mut tcp = TcpStream::connect(outbound).await.unwrap();
    tcp.write_all(b"\x00\x01 binary protocol hello").await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
        .await
        .expect("the proxy answers at once");
    let err = read.expect_err("reset, not a clean close");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
}

/// A DNS ServiceEntry without endpoints: the proxy resolves the host itself (against the
/// test's DNS server) and sends the request to the address it resolved to, on the port's
/// targetPort; a DestinationRule's subset-less policy and a VirtualService for the host apply
/// as for a Service.
#[tokio::test]
async fn dns_entry_is_resolved_by_the_proxy() {
    let external = Server::start("resolved").await;
    let dns = Dns::start("api.dns.test").await;
    let yaml = format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: api, namespace: shop}}
spec:
  hosts: [api.dns.test]
  resolution: DNS
  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: {port}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: api, namespace: shop}}
spec:
  hosts: [api.dns.test]
  http:
  - timeout: 5s
    route: [{{destination: {{host: api.dns.test}}}}]
    headers: {{response: {{set: {{x-routed-by: vs}}}}}}
"#,
        port = external.addr.port()
    );
    let config = sidecar(&yaml, Some(dns.addr));
    let cluster = config
        .clusters
        .iter()
        .find(|c| c.name == "outbound|80||api.dns.test")
        .expect("the entry's cluster");
    assert_eq!(cluster.discovery, trellis_contract::Discovery::Dns);
    let (_app, outbound) = proxy(config).await;

    let (status, head, body) = exchange(outbound, "api.dns.test:80").await;
    assert_eq!((status, body.as_str()), (200, "resolved api.dns.test:80"));
    assert_eq!(header(&head, "x-routed-by").as_deref(), Some("vs"), "{head}");
    assert!(
        dns.queries.load(Ordering::SeqCst) >= 1,
        "the proxy asked the DNS server"
    );
    // The answer is kept: a second request needs no lookup.
    let asked = dns.queries.load(Ordering::SeqCst);
    let (status, _) = get(outbound, "api.dns.test:80").await;
    assert_eq!(status, 200);
    assert_eq!(dns.queries.load(Ordering::SeqCst), asked);
    assert_eq!(external.hits(), 2);
}

/// A STATIC entry for `host` in `namespace`, its endpoint `server`.
fn static_entry(namespace: &str, host: &str, server: &Server) -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  hosts: [{host}]
  resolution: STATIC
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  endpoints: [{{address: 127.0.0.1, ports: {{http: {port}}}}}]
"#,
        name = host.split('.').next().unwrap_or(host),
        port = server.addr.port()
    )
}

/// shop's Sidecar imports shop's hosts only: the partner's host, routed without it, is no
/// registered service with it — its cluster is not pushed, and its requests are unrouted: 502
/// under the Sidecar's REGISTRY_ONLY, passed through under ALLOW_ANY (503 here: no original
/// destination without the capture lab) — and its server never sees a request.
#[tokio::test]
async fn a_host_the_sidecar_does_not_import_is_unrouted() {
    let inside = Server::start("inside").await;
    let partner = Server::start("partner").await;
    let entries = format!(
        "{}\n---\n{}",
        static_entry("shop", "api.inside.test", &inside),
        static_entry("partner", "api.partner.test", &partner)
    );

    // No Sidecar: both hosts are registered services.
    let (_app, outbound) = proxy(sidecar(&entries, None)).await;
    assert_eq!(get(outbound, "api.inside.test:80").await.0, 200);
    assert_eq!(get(outbound, "api.partner.test:80").await.0, 200);
    assert_eq!((inside.hits(), partner.hits()), (1, 1));

    for (mode, status) in [("REGISTRY_ONLY", 502), ("ALLOW_ANY", 503)] {
        let scoped = format!(
            r#"{entries}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: default, namespace: shop}}
spec:
  egress: [{{hosts: ["./*"]}}]
  outboundTrafficPolicy: {{mode: {mode}}}
"#
        );
        let config = sidecar(&scoped, None);
        assert!(
            config.clusters.iter().all(|c| !c.name.contains("partner")),
            "{mode}: the partner's cluster is not pushed"
        );
        let (_app, outbound) = proxy(config).await;
        let (got, body) = get(outbound, "api.inside.test:80").await;
        assert_eq!((got, body.as_str()), (200, "inside api.inside.test:80"), "{mode}");
        let (got, body) = get(outbound, "api.partner.test:80").await;
        assert_eq!(got, status, "{mode}: {body}");
        if mode == "REGISTRY_ONLY" {
            assert!(body.contains("REGISTRY_ONLY"), "{body}");
        }
        assert_eq!(partner.hits(), 1, "{mode}: nothing reached the partner's server");
    }
    assert_eq!(inside.hits(), 3);
}
