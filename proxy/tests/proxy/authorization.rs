//! AuthorizationPolicy attributes and actions through a real inbound proxy:
//! AUDIT (recorded, never deciding), the original client address
//! (`remoteIpBlocks`, `remote.ip`), the destination address (`destination.ip`).

use crate::support::*;
use serde_json::{Value, json};

/// A plaintext inbound listener (mTLS DISABLE) in front of one app, with these policies.
fn inbound(app: &Upstream, authorization: Value) -> Value {
    json!({
        "version": "in-1",
        "node": {"workload": "payment", "namespace": "shop", "app": "payment", "version": "v1"},
        "listeners": [{
            "name": "inbound", "address": "127.0.0.1:0", "direction": "inbound", "protocol": "http",
            "virtualHosts": [{"name": "inbound", "domains": ["*"], "routes": [forward_route("app")]}],
        }],
        "clusters": [cluster("app", &[app])],
        "inbound": {"mtls": {"mode": "DISABLE"}, "authorization": authorization},
    })
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

#[tokio::test]
async fn audit_policies_record_matching_requests_and_never_decide() {
    let app = Upstream::start("app").await;
    let policies = json!([
        {"name": "audit-admin", "namespace": "shop", "action": "AUDIT",
         "rules": [{"to": [{"paths": [{"prefix": "/admin"}]}]}]},
        {"name": "deny-secret", "namespace": "shop", "action": "DENY",
         "rules": [{"to": [{"paths": [{"exact": "/admin/secret"}]}]}]},
    ]);
    let proxy = Proxy::start(inbound(&app, policies)).await;
    let addr = proxy.addr("inbound").await;
    let admin = proxy.admin();
    let audited = || async move {
        metric(
            &get(admin, "admin", "/metrics").await.body,
            "trellis_proxy_authz_audited_total",
        )
    };
    assert_eq!(audited().await, 0.0);
    assert_eq!(get(addr, "payment", "/pay").await.status, 200);
    assert_eq!(audited().await, 0.0, "a request no AUDIT rule matches is not audited");
    // Audited, and still allowed: AUDIT does not decide.
    assert_eq!(get(addr, "payment", "/admin/users").await.status, 200);
    assert_eq!(audited().await, 1.0);
    // Audited, and denied by the DENY policy: AUDIT does not allow either.
    assert_eq!(get(addr, "payment", "/admin/secret").await.status, 403);
    assert_eq!(audited().await, 2.0);
    assert_eq!(app.hits(), 2);
}

#[tokio::test]
async fn remote_ip_blocks_match_the_original_client_behind_a_gateway() {
    let app = Upstream::start("app").await;
    let policies = json!([
        {"name": "deny-doc-net", "namespace": "shop", "action": "DENY",
         "rules": [{"from": [{"remoteIpBlocks": ["192.0.2.0/24"]}]}]},
    ]);
    let proxy = Proxy::start(inbound(&app, policies)).await;
    let addr = proxy.addr("inbound").await;
    // The gateway appended the client it saw: that is remote.ip here.
    let from = |xff: &'static str| async move { send(addr, "GET", "payment", "/", &[("x-forwarded-for", xff)]).await };
    assert_eq!(from("192.0.2.9").await.status, 403);
    assert_eq!(
        from("198.51.100.1, 192.0.2.10").await.status,
        403,
        "the last hop counts"
    );
    assert_eq!(from("192.0.2.10, 198.51.100.1").await.status, 200);
    // Without X-Forwarded-For the connection's peer (127.0.0.1) is the client.
    assert_eq!(get(addr, "payment", "/").await.status, 200);
    assert_eq!(app.hits(), 2);
}

#[tokio::test]
async fn address_conditions_match_by_cidr() {
    let app = Upstream::start("app").await;
    let policies = json!([
        {"name": "only-loopback", "namespace": "shop", "action": "ALLOW",
         "rules": [{"when": [
             {"key": "destination.ip", "values": [{"exact": "127.0.0.0/8"}]},
             {"key": "source.ip", "values": [{"exact": "127.0.0.1"}]},
             {"key": "remote.ip", "notValues": [{"exact": "203.0.113.0/24"}]},
         ]}]},
    ]);
    let proxy = Proxy::start(inbound(&app, policies)).await;
    let addr = proxy.addr("inbound").await;
    assert_eq!(get(addr, "payment", "/").await.status, 200);
    let r = send(addr, "GET", "payment", "/", &[("x-forwarded-for", "203.0.113.5")]).await;
    assert_eq!(r.status, 403);
    // An address condition whose value is no address is refused whole, never read as text.
    let bad = json!([{"name": "bad", "namespace": "shop", "action": "DENY",
        "rules": [{"when": [{"key": "destination.ip", "values": [{"prefix": "127."}]}]}]}]);
    let err = proxy.apply(inbound(&app, bad)).await.expect_err("rejected");
    assert!(err.to_string().contains("exact IPs or CIDRs"), "{err}");
}

#[tokio::test]
async fn gateways_enforce_policies_with_the_peer_as_the_client() {
    let app = Upstream::start("web").await;
    let policies = json!([
        {"name": "deny-loopback-private", "namespace": "trellis-system", "action": "DENY",
         "rules": [{"from": [{"remoteIpBlocks": ["127.0.0.0/8"]}], "to": [{"paths": [{"prefix": "/private"}]}]}]},
        {"name": "only-api", "namespace": "trellis-system", "action": "ALLOW",
         "rules": [{"to": [{"paths": [{"prefix": "/api"}, {"prefix": "/private"}]}]}]},
    ]);
    let config = json!({
        "version": "gw-1",
        "mode": "gateway",
        "node": {"workload": "ingressgateway", "namespace": "trellis-system"},
        "listeners": [{
            "name": "http", "address": "127.0.0.1:0", "direction": "gateway", "protocol": "http",
            "virtualHosts": [{"name": "shop", "domains": ["shop.example.com"], "routes": [forward_route("web")]}],
        }],
        "clusters": [cluster("web", &[&app])],
        "inbound": {"authorization": policies},
    });
    let proxy = Proxy::start(config).await;
    let addr = proxy.addr("http").await;
    assert_eq!(get(addr, "shop.example.com", "/api/cart").await.status, 200);
    assert_eq!(
        get(addr, "shop.example.com", "/other").await.status,
        403,
        "ALLOW policies apply at the gateway"
    );
    // At the edge the connection's peer is the client: a forged X-Forwarded-For changes nothing.
    let forged = send(
        addr,
        "GET",
        "shop.example.com",
        "/private/x",
        &[("x-forwarded-for", "203.0.113.1")],
    )
    .await;
    assert_eq!(forged.status, 403);
    assert_eq!(app.hits(), 1);
}

/// Send a line over a fresh connection: the echo back, or `None` when the proxy closed it.
async fn echo_through(addr: std::net::SocketAddr) -> Option<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    // The proxy may close before reading: a refused write is a closed connection too.
    if s.write_all(b"ping").await.is_err() {
        return None;
    }
    let mut buf = [0u8; 4];
    match tokio::time::timeout(std::time::Duration::from_secs(3), s.read_exact(&mut buf)).await {
        Ok(Ok(_)) => Some(buf.to_vec()),
        Ok(Err(_)) => None,
        Err(_) => panic!("neither echoed nor closed"),
    }
}

#[tokio::test]
async fn tcp_connections_are_authorized_as_istio_does() {
    let (echo, _task) = crate::tcp::echo_server().await;
    let version = std::sync::atomic::AtomicU32::new(0);
    let config = |policies: Value| {
        let n = version.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        json!({
            "version": format!("tcp-{n}"),
            "node": {"workload": "db", "namespace": "shop"},
            "listeners": [{
                "name": "inbound", "address": "127.0.0.1:0", "direction": "inbound", "protocol": "tcp",
                "tcpRoutes": [{"cluster": "db"}],
            }],
            "clusters": [{"name": "db", "protocol": "tcp", "endpoints": [{"address": "127.0.0.1", "port": echo.port()}]}],
            "inbound": {"mtls": {"mode": "DISABLE"}, "authorization": policies},
        })
    };
    let allow = |rules: Value| json!([{"name": "allow", "namespace": "shop", "action": "ALLOW", "rules": rules}]);
    let proxy = Proxy::start(config(json!([]))).await;
    let addr = proxy.addr("inbound").await;
    assert_eq!(
        echo_through(addr).await.as_deref(),
        Some(&b"ping"[..]),
        "no policy: open"
    );
    let metrics = || async { get(proxy.admin(), "admin", "/metrics").await.body };

    // An ALLOW rule that needs HTTP (a path) matches no connection: nothing is allowed.
    proxy
        .apply(config(allow(json!([{"to": [{"paths": [{"prefix": "/"}]}]}]))))
        .await
        .unwrap();
    assert_eq!(echo_through(addr).await, None);
    assert!(metrics().await.contains("trellis_proxy_tcp_denied_total 1"));

    // Connection attributes do apply: the peer's address, the port.
    let port = addr.port();
    proxy
        .apply(config(allow(
            json!([{"from": [{"ipBlocks": ["127.0.0.0/8"]}], "to": [{"ports": [port]}]}]),
        )))
        .await
        .unwrap();
    assert_eq!(echo_through(addr).await.as_deref(), Some(&b"ping"[..]));
    proxy
        .apply(config(allow(json!([{"from": [{"notIpBlocks": ["127.0.0.0/8"]}]}]))))
        .await
        .unwrap();
    assert_eq!(echo_through(addr).await, None);

    // A DENY rule's HTTP part is left out: it denies the connections of its source.
    let deny = json!([
        {"name": "all", "namespace": "shop", "action": "ALLOW", "rules": [{}]},
        {"name": "no-get", "namespace": "shop", "action": "DENY",
         "rules": [{"from": [{"ipBlocks": ["127.0.0.1"]}], "to": [{"methods": [{"exact": "GET"}]}]}]},
    ]);
    proxy.apply(config(deny)).await.unwrap();
    assert_eq!(echo_through(addr).await, None);
    assert!(metrics().await.contains("trellis_proxy_tcp_denied_total 3"));
}
