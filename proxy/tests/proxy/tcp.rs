//! Opaque TCP proxying and protocol detection.

use crate::support::*;
use serde_json::json;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A loopback TCP server handing each connection to `handle`.
async fn tcp_server<F, Fut>(handle: F) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>)
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { continue };
            tokio::spawn(handle(s));
        }
    });
    (addr, task)
}

pub async fn echo_server() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    tcp_server(|mut s| async move {
        let (mut r, mut w) = s.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
    })
    .await
}

/// Whether the `/metrics` text `m` has a sample of `name` (with labels) of `value`.
fn sample(m: &str, name: &str, value: &str) -> bool {
    m.lines()
        .any(|l| l.starts_with(&format!("{name}{{")) && l.ends_with(&format!(" {value}")))
}

/// What comes back within 3 s on a connection to `addr` that sends `bytes` `after` connecting
/// (as many bytes as were sent).
async fn echoed(addr: std::net::SocketAddr, after: Duration, bytes: &[u8]) -> Vec<u8> {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(after).await;
    s.write_all(bytes).await.unwrap();
    let mut buf = vec![0u8; bytes.len()];
    tokio::time::timeout(Duration::from_secs(3), s.read_exact(&mut buf))
        .await
        .expect("echoed within 3 s")
        .unwrap();
    buf
}

/// The answer (lowercased) to an HTTP/1.1 `GET path` for `host` sent `after` connecting to
/// `addr`, read until the server closes (within 5 s).
async fn late_get(addr: std::net::SocketAddr, after: Duration, host: &str, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(after).await;
    let request = format!("GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n");
    let _ = s.write_all(request.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).to_ascii_lowercase()
}

fn tcp_config(
    protocol: &str,
    echo: std::net::SocketAddr,
    http_cluster: Option<serde_json::Value>,
) -> serde_json::Value {
    let mut clusters =
        vec![json!({"name": "echo", "protocol": "tcp", "endpoints": [{"address": "127.0.0.1", "port": echo.port()}]})];
    let mut vhosts = json!([]);
    if let Some(c) = http_cluster {
        vhosts = json!([{"name": "web", "domains": ["*"], "routes": [forward_route(c["name"].as_str().unwrap())]}]);
        clusters.push(c);
    }
    json!({
        "version": "1",
        "listeners": [{
            "name": "l", "address": "127.0.0.1:0", "direction": "outbound", "protocol": protocol,
            "virtualHosts": vhosts,
            "tcpRoutes": [{"cluster": "echo"}],
            "limits": {"protocolDetectionTimeoutMs": 100},
        }],
        "clusters": clusters,
    })
}

#[tokio::test]
async fn opaque_tcp_is_proxied_and_counted() {
    let (echo, _t) = echo_server().await;
    let proxy = Proxy::start(tcp_config("tcp", echo, None)).await;
    let addr = proxy.addr("l").await;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"hello trellis").await.unwrap();
    let mut buf = [0u8; 13];
    tokio::time::timeout(Duration::from_secs(3), s.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"hello trellis");
    drop(s);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let m = get(proxy.admin(), "admin", "/metrics").await.body;
    assert!(sample(&m, "istio_tcp_connections_opened_total", "1"), "{m}");
    assert!(sample(&m, "istio_tcp_received_bytes_total", "13"), "{m}");
}

#[tokio::test]
async fn auto_listener_sniffs_http_versus_tcp() {
    let (echo, _t) = echo_server().await;
    let web = Upstream::start("web").await;
    let proxy = Proxy::start(tcp_config("auto", echo, Some(cluster("web", &[&web])))).await;
    let addr = proxy.addr("l").await;
    // HTTP goes to the HTTP route.
    assert_eq!(get(addr, "svc", "/").await.server(), "web");
    // A non-HTTP client-first protocol goes to the TCP route.
    assert_eq!(echoed(addr, Duration::ZERO, b"\x00\x01binary").await, b"\x00\x01binary");
    // A server-first protocol (client silent) falls back to TCP after the timeout.
    assert_eq!(echoed(addr, Duration::from_millis(250), b"late").await, b"late");
}

/// An HTTP client's pool opens connections it writes on only later. At a destination the
/// listener routes HTTP for (a Service's cluster IP and port), such a connection is HTTP however
/// late its request comes, although TCP routes and passthrough wait for other destinations on
/// the same listener. (first_light failed with payment's pooled connection to db taken for a
/// server-first protocol after 100 ms and sent plaintext past its routes and mTLS: 502.)
#[tokio::test]
async fn a_pooled_connection_to_an_http_service_stays_http_however_late_it_speaks() {
    let web = Upstream::start("web").await;
    let (echo, _t) = echo_server().await;
    // The listener's own address plays the Service's cluster IP and port.
    let free_port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let config = |port: u16, tcp_port: u16| {
        json!({
            "version": "1",
            "listeners": [{
                "name": "l", "address": format!("127.0.0.1:{port}"), "direction": "outbound", "protocol": "auto",
                "virtualHosts": [{"name": "web", "domains": [format!("127.0.0.1:{port}"), "web"], "routes": [forward_route("web")]}],
                // Another Service's declared TCP port, and a TCP route for this address.
                "tcpRoutes": [
                    {"destinationPort": 5432, "destinationCidrs": ["127.0.0.1/32"], "cluster": "echo"},
                    {"destinationPort": tcp_port, "destinationCidrs": ["127.0.0.1/32"], "cluster": "echo"},
                ],
                "transparent": true,
                "unrouted": "passthrough",
                "limits": {"protocolDetectionTimeoutMs": 100, "headerReadTimeoutMs": 1500},
            }],
            "clusters": [cluster("web", &[&web]), {"name": "echo", "protocol": "tcp", "endpoints": [{"address": "127.0.0.1", "port": echo.port()}]}],
        })
    };
    // Starts the proxy and checks a request sent 400 ms after connecting is routed as HTTP.
    let late_request_is_routed = |tcp_port: Option<u16>| async move {
        let port = free_port();
        let proxy = Proxy::start(config(port, tcp_port.unwrap_or(port))).await;
        let addr = proxy.addr("l").await;
        let answer = late_get(addr, Duration::from_millis(400), "web", "/").await;
        assert!(
            answer.starts_with("http/1.1 200") && answer.contains("x-server: web"),
            "{answer:?}"
        );
        (proxy, addr)
    };

    // An HTTP port (a virtual host names the address; TCP routes only for other ports).
    let (_proxy, addr) = late_request_is_routed(Some(5433)).await;
    // Silent for the whole header read timeout: closed, as an HTTP server closes it.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    assert!(matches!(closed, Ok(Ok(0))), "{closed:?} {buf:?}");

    // An undeclared port (virtual host and TCP route for the address): still HTTP when the
    // request comes late, and a client silent for the header read timeout is taken for a
    // server-first protocol.
    let (_proxy, addr) = late_request_is_routed(None).await;
    assert_eq!(echoed(addr, Duration::from_millis(1800), b"late").await, b"late");
}

/// A TCP server that answers every connection with `name` and closes.
pub async fn named_server(name: &'static str) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    tcp_server(move |mut s| async move {
        let _ = s.write_all(name.as_bytes()).await;
    })
    .await
}

#[tokio::test]
async fn weighted_tcp_routes_split_connections() {
    let (a, _ta) = named_server("a").await;
    let (b, _tb) = named_server("b").await;
    let config = |wa: u32, wb: u32| {
        json!({
            "version": format!("{wa}-{wb}"),
            "listeners": [{
                "name": "l", "address": "127.0.0.1:0", "direction": "outbound", "protocol": "tcp",
                "tcpRoutes": [{"weightedClusters": [{"cluster": "a", "weight": wa}, {"cluster": "b", "weight": wb}]}],
            }],
            "clusters": [
                {"name": "a", "protocol": "tcp", "endpoints": [{"address": "127.0.0.1", "port": a.port()}]},
                {"name": "b", "protocol": "tcp", "endpoints": [{"address": "127.0.0.1", "port": b.port()}]},
            ],
        })
    };
    let count = |proxy: std::net::SocketAddr, n: usize| async move {
        let mut seen = std::collections::BTreeMap::new();
        for _ in 0..n {
            let mut s = tokio::net::TcpStream::connect(proxy).await.unwrap();
            let mut out = String::new();
            tokio::time::timeout(Duration::from_secs(3), s.read_to_string(&mut out))
                .await
                .unwrap()
                .unwrap();
            *seen.entry(out).or_insert(0usize) += 1;
        }
        seen
    };
    let proxy = Proxy::start(config(75, 25)).await;
    let seen = count(proxy.addr("l").await, 200).await;
    // 75 % of 200 is 150; 6 standard deviations (about 37) either side never fails by chance.
    let (na, nb) = (seen.get("a").copied().unwrap_or(0), seen.get("b").copied().unwrap_or(0));
    assert_eq!(na + nb, 200, "{seen:?}");
    assert!((113..=187).contains(&na), "{seen:?}");

    // A weight of 0 gets nothing.
    let proxy = Proxy::start(config(0, 100)).await;
    let seen = count(proxy.addr("l").await, 50).await;
    assert_eq!(seen, std::collections::BTreeMap::from([("b".to_string(), 50)]));
}

/// The ClientHello rustls sends for `name`.
fn client_hello(name: &str) -> Vec<u8> {
    let cfg =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
    let server = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
    let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(cfg), server).unwrap();
    let mut out = Vec::new();
    conn.write_tls(&mut out).unwrap();
    out
}

#[tokio::test]
async fn tls_is_routed_by_sni_untouched() {
    let (a, _ta) = echo_server().await;
    let (b, _tb) = named_server("b").await;
    let (c, _tc) = named_server("c").await;
    let proxy = Proxy::start(json!({
        "version": "1",
        "listeners": [{
            "name": "l", "address": "127.0.0.1:0", "direction": "outbound", "protocol": "tcp",
            "tcpRoutes": [
                {"sniHosts": ["a.example.com"], "cluster": "a"},
                {"sniHosts": ["*.example.org"], "cluster": "b"},
                {"cluster": "c"},
            ],
            "limits": {"protocolDetectionTimeoutMs": 100},
        }],
        "clusters": [
            {"name": "a", "protocol": "tcp", "endpoints": [{"address": "127.0.0.1", "port": a.port()}]},
            {"name": "b", "protocol": "tcp", "endpoints": [{"address": "127.0.0.1", "port": b.port()}]},
            {"name": "c", "protocol": "tcp", "endpoints": [{"address": "127.0.0.1", "port": c.port()}]},
        ],
    }))
    .await;
    let addr = proxy.addr("l").await;

    // a.example.com reaches the echo server, which gets the ClientHello byte for byte.
    let hello = client_hello("a.example.com");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(&hello).await.unwrap();
    let mut back = vec![0u8; hello.len()];
    tokio::time::timeout(Duration::from_secs(3), s.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back, hello);

    let answer = |bytes: Vec<u8>| async move {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(&bytes).await.unwrap();
        let mut out = String::new();
        tokio::time::timeout(Duration::from_secs(3), s.read_to_string(&mut out))
            .await
            .unwrap()
            .unwrap();
        out
    };
    assert_eq!(answer(client_hello("api.example.org")).await, "b", "wildcard");
    assert_eq!(
        answer(client_hello("a.example.net")).await,
        "c",
        "no SNI route: the plain route"
    );
    assert_eq!(answer(b"not TLS at all".to_vec()).await, "c");
    // A client that sends nothing in time falls through to the plain route too.
    assert_eq!(answer(Vec::new()).await, "c");
}

/// A sidecar's inbound listener as the compiler builds it: one HTTP route per port the app
/// serves HTTP on, one TCP route per port it serves TCP on, both for a port whose protocol the
/// Service leaves to detection. `http` and `tcp` are the ports each routes.
fn inbound_config(
    version: &str,
    app: &Upstream,
    echo: std::net::SocketAddr,
    http: &[u16],
    tcp: &[u16],
) -> serde_json::Value {
    let routes: Vec<serde_json::Value> = http
        .iter()
        .map(|port| {
            json!({"name": format!("inbound|{port}"), "match": [{"port": port}],
                   "action": {"forward": {"clusters": [{"cluster": "app"}]}}, "provenance": provenance()})
        })
        .collect();
    let tcp_routes: Vec<serde_json::Value> = tcp
        .iter()
        .map(|port| json!({"destinationPort": port, "cluster": "echo"}))
        .collect();
    json!({
        "version": version,
        "listeners": [{
            "name": "inbound", "address": "127.0.0.1:0", "direction": "inbound", "protocol": "auto",
            "virtualHosts": [{"name": "inbound", "domains": ["*"], "routes": routes}],
            "tcpRoutes": tcp_routes,
            "limits": {"protocolDetectionTimeoutMs": 100},
        }],
        "clusters": [
            cluster("app", &[app]),
            {"name": "echo", "protocol": "tcp", "endpoints": [{"address": "127.0.0.1", "port": echo.port()}]},
        ],
        "inbound": {"mtls": {"mode": "DISABLE"}},
    })
}

/// Inbound, a port the Service declares is taken in its protocol whatever the client sends,
/// as Istio's protocol selection: HTTP bytes to a TCP port (`tcp-*`, `appProtocol: tcp`) reach
/// the app as they are, counted as TCP; a client of an HTTP port may speak late; only an
/// undeclared port is sniffed.
#[tokio::test]
async fn inbound_ports_are_taken_in_their_declared_protocol_and_only_undeclared_ones_are_sniffed() {
    let (echo, _t) = echo_server().await;
    let app = Upstream::start("app").await;
    let proxy = Proxy::start(inbound_config("bind", &app, echo, &[], &[])).await;
    let addr = proxy.addr("inbound").await;
    // The listener's own port plays the port the connections were sent to; another port of the
    // app's is declared in the other protocol, as a pod's inbound listener holds every port.
    let (port, other) = (addr.port(), addr.port().wrapping_add(1));
    let request = b"GET /hello HTTP/1.1\r\nhost: app\r\n\r\n";

    // Declared TCP: the HTTP request reaches the app's TCP server byte for byte.
    proxy
        .apply(inbound_config("tcp", &app, echo, &[other], &[port]))
        .await
        .unwrap();
    let answer = raw(addr, request, Duration::from_secs(3)).await;
    assert_eq!(answer.as_bytes(), request, "{answer:?}");
    assert_eq!(app.hits(), 0);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let m = get(proxy.admin(), "admin", "/metrics").await.body;
    assert!(sample(&m, "istio_tcp_connections_opened_total", "1"), "{m}");
    assert!(!m.contains("istio_requests_total{"), "no HTTP metrics: {m}");

    // Declared HTTP: a client silent past the detection timeout is still HTTP.
    proxy
        .apply(inbound_config("http", &app, echo, &[port], &[other]))
        .await
        .unwrap();
    let answer = late_get(addr, Duration::from_millis(300), "app", "/late").await;
    assert!(
        answer.starts_with("http/1.1 200") && answer.contains("x-server: app"),
        "{answer:?}"
    );

    // Undeclared (both routes): sniffed, HTTP to the HTTP route and other bytes to the TCP one.
    proxy
        .apply(inbound_config("auto", &app, echo, &[port], &[port]))
        .await
        .unwrap();
    assert_eq!(get(addr, "app", "/sniffed").await.server(), "app");
    assert_eq!(app.last_seen().path, "/sniffed");
    assert_eq!(echoed(addr, Duration::ZERO, b"\x00\x01binary").await, b"\x00\x01binary");
}
