//! h2load (nghttp2) as a real HTTP/2 client: many multiplexed streams over a
//! few connections, h2c with prior knowledge and h2 over TLS with ALPN, every
//! request answered 2xx. Skipped when h2load is not installed (Debian:
//! `apt-get install nghttp2-client`): a recorded skip, a failure under CI.

use crate::support::*;
use serde_json::json;
use tokio::process::Command;

/// Run h2load and check its summary: all `n` requests succeeded with 2xx.
async fn h2load(args: &[&str], url: &str, n: u32) -> String {
    let out = Command::new("h2load")
        .args(["-n", &n.to_string()])
        .args(args)
        .arg(url)
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "h2load failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(&format!(
            "requests: {n} total, {n} started, {n} done, {n} succeeded, 0 failed, 0 errored"
        )),
        "{text}"
    );
    assert!(text.contains(&format!("status codes: {n} 2xx")), "{text}");
    text
}

#[tokio::test]
async fn h2load_multiplexes_through_h2c_and_tls_listeners() {
    if !trellis_skip::have("h2load") {
        trellis_skip::skip("h2load is not installed (Debian: apt-get install nghttp2-client)");
        return;
    }
    let app = Upstream::start("app").await;
    let plain = Proxy::start(outbound_config(
        "1",
        vec![forward_route("app")],
        vec![cluster("app", &[&app])],
    ))
    .await;
    let url = format!("http://{}/h2c", plain.addr("outbound").await);
    // 4 connections x 10 concurrent streams each, prior-knowledge h2c.
    let text = h2load(&["-c", "4", "-m", "10"], &url, 1000).await;
    assert!(text.contains("Application protocol: h2c"), "{text}");
    // The same listener serves HTTP/1.1 clients.
    h2load(&["--h1", "-c", "4"], &url, 200).await;

    let pki = Pki::new();
    let leaf = pki.dns_leaf("shop.example.com");
    let gateway = Proxy::start(json!({
        "version": "1",
        "mode": "gateway",
        "listeners": [{
            "name": "https", "address": "127.0.0.1:0", "direction": "gateway", "protocol": "http",
            "tls": {"mode": "simple", "certificate": {"inline": {"certChainPem": leaf.cert_pem, "privateKeyPem": leaf.key_pem}}},
            "virtualHosts": [{"name": "all", "domains": ["*"], "routes": [forward_route("app")]}],
        }],
        "clusters": [cluster("app", &[&app])],
    }))
    .await;
    let url = format!("https://{}/tls", gateway.addr("https").await);
    let text = h2load(&["-c", "2", "-m", "20"], &url, 1000).await;
    assert!(text.contains("Application protocol: h2"), "{text}");
    assert!(app.hits() >= 2200, "{}", app.hits());
}
