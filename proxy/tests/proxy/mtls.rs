//! Mesh mTLS between two real proxies: SPIFFE identity verification, inbound
//! PeerAuthentication modes, x-forwarded-client-cert, authorization.

use crate::support::*;
use serde_json::{Value, json};

const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";
const PAYMENT: &str = "spiffe://cluster.local/ns/shop/sa/payment";

fn inbound_config(pki: &Pki, app: &Upstream, mode: &str, authorization: Value) -> Value {
    json!({
        "version": "in-1",
        "node": {"workload": "payment", "namespace": "shop", "app": "payment", "version": "v1"},
        "identity": pki.identity(PAYMENT),
        "listeners": [{
            "name": "inbound", "address": "127.0.0.1:0", "direction": "inbound", "protocol": "http",
            "virtualHosts": [{"name": "inbound", "domains": ["*"], "routes": [forward_route("app")]}],
        }],
        "clusters": [cluster("app", &[app])],
        "inbound": {"mtls": {"mode": mode}, "authorization": authorization},
    })
}

fn outbound_mesh_config(pki: &Pki, target: std::net::SocketAddr, expected: &str) -> Value {
    json!({
        "version": "out-1",
        "node": {"workload": "web", "namespace": "shop", "app": "web", "version": "v1"},
        "identity": pki.identity(WEB),
        "listeners": [{
            "name": "outbound", "address": "127.0.0.1:0", "direction": "outbound", "protocol": "http",
            "virtualHosts": [{"name": "payment", "domains": ["payment", "payment:8080"], "routes": [forward_route("payment")]}],
        }],
        "clusters": [{
            "name": "payment",
            "service": "payment.shop.svc.cluster.local",
            "tls": {"mesh": {"expectedIdentities": [expected]}},
            "endpoints": [{"address": "127.0.0.1", "port": target.port(), "labels": {"app": "payment", "version": "v1"}}],
        }],
    })
}

struct Chain {
    app: Upstream,
    inbound: Proxy,
    outbound: Proxy,
}

async fn chain(mode: &str, authorization: Value, expected: &str) -> Chain {
    let pki = Pki::new();
    let app = Upstream::start("payment-app").await;
    let inbound = Proxy::start(inbound_config(&pki, &app, mode, authorization)).await;
    let in_addr = inbound.addr("inbound").await;
    let outbound = Proxy::start(outbound_mesh_config(&pki, in_addr, expected)).await;
    Chain { app, inbound, outbound }
}

#[tokio::test]
async fn mtls_chain_passes_verified_identity_to_the_app() {
    let c = chain("STRICT", json!([]), PAYMENT).await;
    let addr = c.outbound.addr("outbound").await;
    for _ in 0..3 {
        let r = get(addr, "payment:8080", "/pay").await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body, "payment-app /pay");
    }
    let xfcc = c
        .app
        .last_seen()
        .headers
        .get("x-forwarded-client-cert")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(xfcc, format!("By={PAYMENT};URI={WEB}"));
    // Both proxies report the request with Istio labels.
    let inbound_metrics = get(c.inbound.admin(), "admin", "/metrics").await.body;
    assert!(
        inbound_metrics.contains("reporter=\"destination\""),
        "{inbound_metrics}"
    );
    assert!(inbound_metrics.contains(&format!("source_principal=\"{WEB}\"")));
    assert!(inbound_metrics.contains("connection_security_policy=\"mutual_tls\""));
    let outbound_metrics = get(c.outbound.admin(), "admin", "/metrics").await.body;
    assert!(outbound_metrics.contains("reporter=\"source\""));
    assert!(outbound_metrics.contains(&format!("destination_principal=\"{PAYMENT}\"")));
    assert!(outbound_metrics.contains("destination_service=\"payment.shop.svc.cluster.local\""));
    assert!(outbound_metrics.contains("response_code=\"200\""));
}

#[tokio::test]
async fn client_forged_xfcc_is_replaced() {
    let c = chain("STRICT", json!([]), PAYMENT).await;
    let addr = c.outbound.addr("outbound").await;
    let r = send(
        addr,
        "GET",
        "payment",
        "/",
        &[("x-forwarded-client-cert", "URI=spiffe://cluster.local/ns/x/sa/admin")],
    )
    .await;
    assert_eq!(r.status, 200);
    let xfcc = c
        .app
        .last_seen()
        .headers
        .get("x-forwarded-client-cert")
        .unwrap()
        .clone();
    assert_eq!(xfcc, format!("By={PAYMENT};URI={WEB}").as_str());
}

#[tokio::test]
async fn wrong_peer_identity_is_refused() {
    let c = chain("STRICT", json!([]), "spiffe://cluster.local/ns/shop/sa/impostor-check").await;
    let addr = c.outbound.addr("outbound").await;
    let r = get(addr, "payment", "/").await;
    assert_eq!(r.status, 503);
    assert!(r.body.contains("connect"), "{}", r.body);
    assert_eq!(c.app.hits(), 0);
}

#[tokio::test]
async fn certificate_from_another_ca_is_refused() {
    let pki = Pki::new();
    let other = Pki::new();
    let app = Upstream::start("app").await;
    let inbound = Proxy::start(inbound_config(&pki, &app, "STRICT", json!([]))).await;
    let in_addr = inbound.addr("inbound").await;
    // The client trusts and is issued by a different root.
    let outbound = Proxy::start(outbound_mesh_config(&other, in_addr, PAYMENT)).await;
    let r = get(outbound.addr("outbound").await, "payment", "/").await;
    assert_eq!(r.status, 503);
    assert_eq!(app.hits(), 0);
}

#[tokio::test]
async fn strict_refuses_plaintext() {
    let c = chain("STRICT", json!([]), PAYMENT).await;
    let in_addr = c.inbound.addr("inbound").await;
    let reply = raw(
        in_addr,
        b"GET / HTTP/1.1\r\nHost: payment\r\n\r\n",
        std::time::Duration::from_secs(3),
    )
    .await;
    assert!(!reply.contains("HTTP/1.1 200"), "{reply}");
    assert_eq!(c.app.hits(), 0);
}

#[tokio::test]
async fn permissive_accepts_plaintext_and_mtls() {
    let c = chain("PERMISSIVE", json!([]), PAYMENT).await;
    let in_addr = c.inbound.addr("inbound").await;
    let plain = get(in_addr, "payment", "/plain").await;
    assert_eq!(plain.status, 200);
    assert!(c.app.last_seen().headers.get("x-forwarded-client-cert").is_none());
    let mtls = get(c.outbound.addr("outbound").await, "payment", "/mtls").await;
    assert_eq!(mtls.status, 200);
    assert!(c.app.last_seen().headers.get("x-forwarded-client-cert").is_some());
}

#[tokio::test]
async fn disable_serves_plaintext() {
    let pki = Pki::new();
    let app = Upstream::start("app").await;
    let inbound = Proxy::start(inbound_config(&pki, &app, "DISABLE", json!([]))).await;
    let r = get(inbound.addr("inbound").await, "payment", "/").await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn authorization_deny_then_allow() {
    let policies = json!([
        {"name": "deny-admin", "namespace": "shop", "action": "DENY",
         "rules": [{"to": [{"paths": [{"prefix": "/admin"}]}]}]},
        {"name": "allow-web", "namespace": "shop", "action": "ALLOW",
         "rules": [{"from": [{"principals": [{"exact": WEB}]}]}]},
    ]);
    let c = chain("PERMISSIVE", policies, PAYMENT).await;
    let out = c.outbound.addr("outbound").await;
    assert_eq!(get(out, "payment", "/pay").await.status, 200);
    let denied = get(out, "payment", "/admin/users").await;
    assert_eq!(denied.status, 403);
    assert_eq!(denied.body, "RBAC: access denied\n");
    // Path tricks are normalized before authorization.
    assert_eq!(get(out, "payment", "/pay/../admin").await.status, 403);
    // Plaintext has no principal, so the ALLOW policy does not match.
    let plain = get(c.inbound.addr("inbound").await, "payment", "/pay").await;
    assert_eq!(plain.status, 403);
}

#[tokio::test]
async fn allow_policy_without_rules_allows_nothing() {
    let policies = json!([{"name": "nothing", "namespace": "shop", "action": "ALLOW"}]);
    let c = chain("STRICT", policies, PAYMENT).await;
    assert_eq!(get(c.outbound.addr("outbound").await, "payment", "/").await.status, 403);
    assert_eq!(c.app.hits(), 0);
}

#[tokio::test]
async fn endpoint_identity_takes_precedence() {
    let pki = Pki::new();
    let app = Upstream::start("app").await;
    let inbound = Proxy::start(inbound_config(&pki, &app, "STRICT", json!([]))).await;
    let in_addr = inbound.addr("inbound").await;
    let mut cfg = outbound_mesh_config(&pki, in_addr, PAYMENT);
    // The cluster would accept PAYMENT, but this endpoint must be `db`.
    cfg["clusters"][0]["endpoints"][0]["identity"] = json!("spiffe://cluster.local/ns/shop/sa/db");
    let outbound = Proxy::start(cfg).await;
    assert_eq!(get(outbound.addr("outbound").await, "payment", "/").await.status, 503);
    assert_eq!(app.hits(), 0);
}

#[tokio::test]
async fn certificate_rotation_by_config_swap_drops_no_requests() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let pki = Pki::new();
    let app = Upstream::start("app").await;
    let inbound = Proxy::start(inbound_config(&pki, &app, "STRICT", json!([]))).await;
    let in_addr = inbound.addr("inbound").await;
    let outbound = Arc::new(Proxy::start(outbound_mesh_config(&pki, in_addr, PAYMENT)).await);
    let out_addr = outbound.addr("outbound").await;
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    let mut load = Vec::new();
    for _ in 0..3 {
        let (stop, failures) = (Arc::clone(&stop), Arc::clone(&failures));
        load.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if get(out_addr, "payment", "/").await.status != 200 {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                n += 1;
            }
            n
        }));
    }
    // Reissue both workloads' certificates several times under load.
    for i in 0..5 {
        let mut cfg = inbound_config(&pki, &app, "STRICT", json!([]));
        cfg["version"] = json!(format!("in-rot-{i}"));
        cfg["listeners"][0]["address"] = json!(in_addr.to_string());
        inbound.apply(cfg).await.unwrap();
        let mut cfg = outbound_mesh_config(&pki, in_addr, PAYMENT);
        cfg["version"] = json!(format!("out-rot-{i}"));
        cfg["listeners"][0]["address"] = json!(out_addr.to_string());
        outbound.apply(cfg).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for t in load {
        total += t.await.unwrap();
    }
    assert!(total > 10, "{total}");
    assert_eq!(failures.load(Ordering::Relaxed), 0);
    let dump: serde_json::Value =
        serde_json::from_str(&get(outbound.admin(), "admin", "/config_dump").await.body).unwrap();
    assert_eq!(dump["version"], "out-rot-4");
}

#[tokio::test]
async fn mesh_hop_uses_the_downstream_protocol() {
    let pki = Pki::new();
    let app = Upstream::start("app").await;
    let inbound = Proxy::start(inbound_config(&pki, &app, "STRICT", json!([]))).await;
    let in_addr = inbound.addr("inbound").await;
    let mut cfg = outbound_mesh_config(&pki, in_addr, PAYMENT);
    cfg["clusters"][0]["protocol"] = json!("useDownstream");
    let outbound = Proxy::start(cfg).await;
    let out = outbound.addr("outbound").await;
    // HTTP/1.1 in, HTTP/1.1 across the mesh hop.
    let r = get(out, "payment", "/h1").await;
    assert_eq!(r.status, 200, "{}", r.body);
    // HTTP/2 in, HTTP/2 across (ALPN h2), and the app still gets the request.
    let r = send_h2(out, "payment", "/h2").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(app.last_seen().path, "/h2");
}

#[tokio::test]
async fn opaque_tcp_over_mesh_mtls() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pki = Pki::new();
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo_addr = echo.local_addr().unwrap();
    let _echo = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = echo.accept().await else { continue };
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let inbound = Proxy::start(json!({
        "version": "in",
        "identity": pki.identity(PAYMENT),
        "listeners": [{"name": "inbound", "address": "127.0.0.1:0", "direction": "inbound", "protocol": "auto",
                       "tcpRoutes": [{"cluster": "db"}]}],
        "clusters": [{"name": "db", "protocol": "tcp", "endpoints": [{"address": "127.0.0.1", "port": echo_addr.port()}]}],
        "inbound": {"mtls": {"mode": "STRICT"}},
    }))
    .await;
    let in_addr = inbound.addr("inbound").await;
    let outbound = Proxy::start(json!({
        "version": "out",
        "identity": pki.identity(WEB),
        "listeners": [{"name": "outbound", "address": "127.0.0.1:0", "direction": "outbound", "protocol": "tcp",
                       "tcpRoutes": [{"cluster": "db"}]}],
        "clusters": [{"name": "db", "protocol": "tcp", "tls": {"mesh": {"expectedIdentities": [PAYMENT]}},
                      "endpoints": [{"address": "127.0.0.1", "port": in_addr.port()}]}],
    }))
    .await;
    let mut s = tokio::net::TcpStream::connect(outbound.addr("outbound").await)
        .await
        .unwrap();
    s.write_all(b"SELECT 1;").await.unwrap();
    let mut buf = [0u8; 9];
    tokio::time::timeout(std::time::Duration::from_secs(3), s.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"SELECT 1;");
    drop(s);
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let m = get(inbound.admin(), "admin", "/metrics").await.body;
    assert!(
        m.lines().any(|l| l.starts_with("trellis_tcp_connections_opened_total{")
            && l.contains(&format!("source_principal=\"{WEB}\""))
            && l.contains("connection_security_policy=\"mutual_tls\"")),
        "{m}"
    );
}
