//! HTTP `CONNECT` on an outbound listener (explicit proxying, `HTTPS_PROXY`): the target is
//! routed like a request to its authority, the proxy answers 200 once the upstream is
//! connected, and the client's own TLS runs end to end through the tunnel to a loopback
//! HTTPS server.

use crate::origination::{TlsServer, leaf};
use crate::support::*;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use trellis_proxy::admin::AdminRole;
use trellis_proxy::{App, AppConfig};

/// Sends `CONNECT target` and reads the proxy's answer: the head, and after any other status
/// than 200 the body too (it says why); on 200 the connection is the tunnel.
async fn connect_head(proxy: SocketAddr, target: &str) -> (tokio::net::TcpStream, String) {
    let mut tcp = tokio::net::TcpStream::connect(proxy).await.unwrap();
    tcp.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(15), tcp.read(&mut byte)).await {
            Ok(Ok(1)) => head.push(byte[0]),
            _ => break,
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    if head.starts_with("HTTP/1.1 200") {
        return (tcp, head);
    }
    let length = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse::<usize>().ok())?
    });
    // Up to the body's length: the connection stays open for the next request.
    let mut rest = vec![0u8; length.unwrap_or(0)];
    let body = async {
        match length {
            Some(_) => tcp.read_exact(&mut rest).await.map(drop),
            None => tcp.read_to_end(&mut rest).await.map(drop),
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), body).await;
    let answer = format!("{head}{}", String::from_utf8_lossy(&rest));
    (tcp, answer)
}

/// Sends `CONNECT target`, reads the proxy's answer head; on 200 runs TLS (trusting
/// `root_pem`, naming `sni`) and one `GET /` through the tunnel and returns its body too.
async fn connect(proxy: SocketAddr, target: &str, root_pem: &str, sni: &str) -> (String, Option<String>) {
    let (tcp, head) = connect_head(proxy, target).await;
    if !head.starts_with("HTTP/1.1 200") {
        return (head, None);
    }
    let tls = tokio_rustls::TlsConnector::from(tls_client(root_pem, None))
        .connect(rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap(), tcp)
        .await
        .expect("TLS through the tunnel");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("/")
        .header("host", sni)
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (head, Some(String::from_utf8_lossy(&body).into_owned()))
}

/// An outbound listener with `extra` settings, a virtual host for `api.example.com` (any
/// port) forwarding to `cluster`.
fn config(extra: Value, cluster: Value) -> Value {
    let mut listener = json!({
        "name": "outbound", "address": "127.0.0.1:0", "direction": "outbound", "protocol": "http",
        "virtualHosts": [{"name": "api", "domains": ["api.example.com"],
                          "routes": [forward_route("ext")]}],
    });
    for (k, v) in extra.as_object().unwrap() {
        listener[k] = v.clone();
    }
    json!({"version": "1", "listeners": [listener], "clusters": [cluster]})
}

/// The value of the first metric line starting with `prefix` that contains `needle`.
async fn metric(proxy: &Proxy, prefix: &str, needle: &str) -> Option<f64> {
    let m = get(proxy.admin(), "admin", "/metrics").await.body;
    m.lines()
        .find(|l| l.starts_with(prefix) && l.contains(needle))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test]
async fn a_routed_host_is_tunnelled_to_its_cluster_with_the_clients_tls_end_to_end() {
    let pki = Pki::new();
    let server = TlsServer::start(&leaf(&pki, &["api.example.com"], &[]), None).await;
    let cluster = json!({
        "name": "ext", "service": "api.example.com",
        "endpoints": [{"address": "127.0.0.1", "port": server.addr.port()}],
    });
    let proxy = Proxy::start(config(json!({}), cluster)).await;
    let outbound = proxy.addr("outbound").await;

    // The host does not resolve: the route, not DNS, says where it goes.
    let (head, body) = connect(outbound, "api.example.com:443", &pki.root_pem(), "api.example.com").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body.as_deref(), Some("sni=api.example.com client=none"));

    // Counted as a TCP connection of the cluster, bytes both ways.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let cluster_label = "destination_service=\"api.example.com\"";
    let opened = metric(&proxy, "istio_tcp_connections_opened_total", cluster_label).await;
    assert_eq!(
        opened,
        Some(1.0),
        "{}",
        get(proxy.admin(), "admin", "/metrics").await.body
    );
    let sent = metric(&proxy, "istio_tcp_sent_bytes_total", cluster_label)
        .await
        .unwrap();
    let received = metric(&proxy, "istio_tcp_received_bytes_total", cluster_label)
        .await
        .unwrap();
    assert!(sent > 1000.0 && received > 100.0, "sent {sent} received {received}");

    // A real HTTPS_PROXY client: curl through the proxy, verifying the server's certificate.
    if !trellis_skip::have("curl") {
        trellis_skip::skip("the curl part needs curl (Debian: apt-get install curl)");
        return;
    }
    let (_dir, ca) = pem_file(&pki.root_pem());
    let curl = tokio::process::Command::new("curl")
        .args(["-s", "-S", "-m", "10", "-w", " %{http_code}", "--cacert"])
        .arg(&ca)
        .env("HTTPS_PROXY", format!("http://{outbound}"))
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .arg(format!("https://api.example.com:{}/", server.addr.port()))
        .output()
        .await
        .expect("running curl");
    assert_eq!(
        String::from_utf8_lossy(&curl.stdout),
        "sni=api.example.com client=none 200",
        "{}",
        String::from_utf8_lossy(&curl.stderr)
    );
}

#[tokio::test]
async fn an_unknown_host_follows_the_listeners_unrouted_traffic() {
    let pki = Pki::new();
    let server = TlsServer::start(&leaf(&pki, &["localhost"], &[]), None).await;
    let target = format!("127.0.0.1:{}", server.addr.port());
    let none = json!({"name": "ext", "service": "api.example.com", "endpoints": []});

    // ALLOW_ANY: tunnelled to the address the target names; REGISTRY_ONLY: Istio's
    // BlackHoleCluster answer, nothing reaches the server; no unrouted traffic at all: no route.
    for (unrouted, status, answer) in [
        (
            json!({"transparent": true, "unrouted": "passthrough"}),
            "200",
            Some("sni=localhost client=none"),
        ),
        (
            json!({"transparent": true, "unrouted": "blackHole"}),
            "502 Bad Gateway",
            None,
        ),
        (json!({}), "404", None),
    ] {
        let proxy = Proxy::start(config(unrouted.clone(), none.clone())).await;
        let (head, body) = connect(proxy.addr("outbound").await, &target, &pki.root_pem(), "localhost").await;
        assert!(head.starts_with(&format!("HTTP/1.1 {status}")), "{unrouted}: {head}");
        assert_eq!(body.as_deref(), answer, "{unrouted}");
        if status.starts_with("502") {
            assert!(head.contains("REGISTRY_ONLY"), "{head}");
        }
    }
}

#[tokio::test]
async fn a_tunnel_moving_bytes_outlives_the_connections_idle_timeout() {
    // A TCP echo server, reached by the listener's passthrough.
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = echo.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = echo.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let none = json!({"name": "ext", "service": "api.example.com", "endpoints": []});
    let extra = json!({"transparent": true, "unrouted": "passthrough",
                       "limits": {"headerReadTimeoutMs": 300, "idleTimeoutMs": 500}});
    let proxy = Proxy::start(config(extra, none)).await;
    let (mut tunnel, head) = connect_head(proxy.addr("outbound").await, &target).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // The tunnel is the connection's request in flight: its idle timeout does not cut it.
    echoes_for(&mut tunnel, Duration::from_millis(1500)).await;
}

#[tokio::test]
async fn bad_targets_the_proxys_own_ports_and_other_directions_are_refused() {
    let pki = Pki::new();
    let ext = json!({"name": "ext", "service": "api.example.com", "endpoints": []});
    let proxy = Proxy::start(config(json!({"transparent": true, "unrouted": "passthrough"}), ext)).await;
    let outbound = proxy.addr("outbound").await;
    let root = pki.root_pem();
    let admin = proxy.admin().port();

    for (target, status, why) in [
        ("api.example.com", "400", "port"),
        ("api.example.com:0", "400", "port"),
        ("bad_host!.example.com:443", "400", "host"),
        // Through the listener back to itself, and into admin.
        (&outbound.to_string()[..], "403", "own ports"),
        (&format!("127.0.0.1:{admin}")[..], "403", "own ports"),
        (&format!("localhost:{admin}")[..], "403", "own ports"),
    ] {
        let (head, body) = connect(outbound, target, &root, "localhost").await;
        assert!(head.starts_with(&format!("HTTP/1.1 {status}")), "{target}: {head}");
        assert!(head.contains(why), "{target}: {head}");
        assert!(body.is_none(), "{target}");
    }
    // Inbound and gateway listeners are no explicit proxies.
    let upstream = Upstream::start("a").await;
    let gateway = Proxy::start(json!({
        "version": "1",
        "listeners": [{"name": "gw", "address": "127.0.0.1:0", "direction": "gateway", "protocol": "http",
                       "virtualHosts": [{"name": "a", "domains": ["*"], "routes": [forward_route("a")]}]}],
        "clusters": [cluster("a", &[&upstream])],
    }))
    .await;
    let (head, _) = connect(gateway.addr("gw").await, "a.test:80", &root, "a").await;
    assert!(head.starts_with("HTTP/1.1 405"), "{head}");
    assert!(head.contains("outbound listeners only"), "{head}");
    assert_eq!(upstream.hits(), 0);
}

/// Every port the proxy listens on — wherever its configuration puts them, not only the
/// well-known ones —, on a local address, is refused: admin, stats, health, DNS (bound to
/// ports the OS picked) and each traffic listener.
#[tokio::test]
async fn every_port_the_proxy_listens_on_is_refused_wherever_it_is_bound() {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let app = App::start(AppConfig {
        admin_addr: any,
        stats_addr: Some(any),
        health_addr: Some(any),
        dns_addr: Some(any),
        log_control: None,
        max_downstream_connections: None,
        app_metrics: None,
        app_probes: Default::default(),
    })
    .await
    .unwrap();
    let ext = json!({"name": "ext", "service": "api.example.com", "endpoints": []});
    let mut cfg = config(json!({"transparent": true, "unrouted": "passthrough"}), ext);
    cfg["listeners"].as_array_mut().unwrap().push(json!({
        "name": "other", "address": "127.0.0.1:0", "direction": "outbound", "protocol": "tcp",
    }));
    app.apply(serde_json::from_value(cfg).unwrap()).await.unwrap();
    let outbound = app.listener_addr("outbound").await.unwrap();
    let own = [
        ("admin", app.admin_addr(AdminRole::Admin).unwrap()),
        ("stats", app.admin_addr(AdminRole::Stats).unwrap()),
        ("health", app.admin_addr(AdminRole::Health).unwrap()),
        ("dns", app.dns_addr().unwrap()),
        ("listener other", app.listener_addr("other").await.unwrap()),
    ];
    let pki = Pki::new();
    let root = pki.root_pem();
    for (what, addr) in own {
        assert!(
            ![15000, 15001, 15006, 15020, 15021, 15053].contains(&addr.port()),
            "{what} is on a well-known port: {addr}"
        );
        let host = if what.starts_with('d') || what.starts_with('h') {
            "localhost"
        } else {
            "127.0.0.1"
        };
        let target = format!("{host}:{}", addr.port());
        let (head, body) = connect(outbound, &target, &root, "localhost").await;
        assert!(head.starts_with("HTTP/1.1 403"), "{what} {target}: {head}");
        assert!(head.contains("own ports"), "{what} {target}: {head}");
        assert!(body.is_none());
    }
    // A local port the proxy does not listen on goes where the listener sends unrouted
    // traffic (here passed through).
    let server = TlsServer::start(&leaf(&pki, &["localhost"], &[]), None).await;
    let target = format!("127.0.0.1:{}", server.addr.port());
    let (head, body) = connect(outbound, &target, &root, "localhost").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body.as_deref(), Some("sni=localhost client=none"));
}

/// An address of this host other than loopback (in a pod: the pod IP), from `ip addr`.
fn non_loopback_address() -> Option<IpAddr> {
    let out = std::process::Command::new("ip")
        .args(["-o", "addr", "show", "scope", "global"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).lines().find_map(|line| {
        let mut words = line.split_whitespace();
        words.find(|w| *w == "inet" || *w == "inet6")?;
        words.next()?.split('/').next()?.parse().ok()
    })
}

/// The proxy's ports are refused on every local address, not only on loopback or the one the
/// client reached the listener at: a client of the loopback listener cannot reach the health
/// and stats servers (bound to `0.0.0.0`, as in a pod), admin or the listener itself at the
/// pod IP. Another port at the pod IP is tunnelled.
#[tokio::test]
async fn the_proxys_ports_at_the_pod_ip_are_refused_to_a_client_of_the_loopback_listener() {
    if !trellis_skip::have("ip") {
        trellis_skip::skip("needs `ip` to find this host's address (Debian: apt-get install iproute2)");
        return;
    }
    let Some(pod_ip) = non_loopback_address() else {
        trellis_skip::skip("needs an address other than loopback on an interface (`ip addr` shows none)");
        return;
    };
    let every: SocketAddr = "0.0.0.0:0".parse().unwrap();
    let app = App::start(AppConfig {
        stats_addr: Some(every),
        health_addr: Some(every),
        ..AppConfig::admin_only("127.0.0.1:0".parse().unwrap())
    })
    .await
    .unwrap();
    let ext = json!({"name": "ext", "service": "api.example.com", "endpoints": []});
    let cfg = config(json!({"transparent": true, "unrouted": "passthrough"}), ext);
    app.apply(serde_json::from_value(cfg).unwrap()).await.unwrap();
    let outbound = app.listener_addr("outbound").await.unwrap();
    assert!(outbound.ip().is_loopback(), "{outbound}");
    for (what, port) in [
        ("health", app.admin_addr(AdminRole::Health).unwrap().port()),
        ("stats", app.admin_addr(AdminRole::Stats).unwrap().port()),
        ("admin", app.admin_addr(AdminRole::Admin).unwrap().port()),
        ("the listener", outbound.port()),
    ] {
        let target = SocketAddr::new(pod_ip, port).to_string();
        let (_, head) = connect_head(outbound, &target).await;
        assert!(head.starts_with("HTTP/1.1 403"), "{what} at {target}: {head}");
        assert!(head.contains("own ports"), "{what} at {target}: {head}");
    }
    let other = tokio::net::TcpListener::bind(SocketAddr::new(pod_ip, 0)).await.unwrap();
    let target = other.local_addr().unwrap().to_string();
    let (_tunnel, head) = connect_head(outbound, &target).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{target}: {head}");
    let (_, from) = tokio::time::timeout(Duration::from_secs(5), other.accept())
        .await
        .expect("the tunnel reaches the server at the pod IP")
        .unwrap();
    assert!(!from.ip().is_loopback(), "{from}");
}

/// CONNECT over HTTP/2 (RFC 9113 §8.5, as Envoy terminates it): a stream of an h2c connection
/// becomes the tunnel, and the client's TLS runs end to end through it. Extended CONNECT
/// (RFC 8441, `:protocol`) is not offered: the proxy does not advertise it, so a client does
/// not send it.
#[tokio::test]
async fn connect_over_http2_tunnels_one_stream_and_extended_connect_is_not_offered() {
    let pki = Pki::new();
    let server = TlsServer::start(&leaf(&pki, &["api.example.com"], &[]), None).await;
    let cluster = json!({
        "name": "ext", "service": "api.example.com",
        "endpoints": [{"address": "127.0.0.1", "port": server.addr.port()}],
    });
    let proxy = Proxy::start(config(json!({}), cluster)).await;
    let outbound = proxy.addr("outbound").await;

    let tcp = tokio::net::TcpStream::connect(outbound).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::connect("api.example.com:443")
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.expect("CONNECT over h2 answered");
    assert_eq!(resp.status(), 200, "{resp:?}");
    let stream = hyper::upgrade::on(resp).await.expect("the stream is the tunnel");
    let tls = tokio_rustls::TlsConnector::from(tls_client(&pki.root_pem(), None))
        .connect(
            rustls::pki_types::ServerName::try_from("api.example.com").unwrap(),
            TokioIo::new(stream),
        )
        .await
        .expect("TLS through the h2 tunnel");
    let (mut inner, inner_conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
    tokio::spawn(inner_conn);
    let get = http::Request::get("/")
        .header("host", "api.example.com")
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    let body = inner
        .send_request(get)
        .await
        .unwrap()
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(body, "sni=api.example.com client=none");

    // The same connection serves another stream: a bad target is refused on its own stream.
    let bad = http::Request::connect("127.0.0.1:0")
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = sender.send_request(bad).await.unwrap();
    assert_eq!(resp.status(), 400);

    // Extended CONNECT needs SETTINGS_ENABLE_CONNECT_PROTOCOL from the server; without it the
    // client refuses to send `:protocol`.
    let mut ws = http::Request::connect("api.example.com:443")
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    ws.extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    assert!(sender.send_request(ws).await.is_err());
}
