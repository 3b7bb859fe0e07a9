//! Gateway listeners: TLS termination (simple and mutual) with ALPN, checked
//! with real clients (curl, openssl s_client) where available.

use crate::support::*;
use serde_json::json;
// Async processes: the proxy under test runs on this test's runtime.
use tokio::process::Command;

fn gateway_config(pki: &Pki, app: &Upstream, mode: &str) -> serde_json::Value {
    let leaf = pki.dns_leaf("shop.example.com");
    let mut tls = json!({
        "mode": mode,
        "certificate": {"inline": {"certChainPem": leaf.cert_pem, "privateKeyPem": leaf.key_pem}},
    });
    if mode == "mutual" {
        tls["clientCa"] = json!({"inline": pki.root_pem()});
    }
    json!({
        "version": "gw-1",
        "mode": "gateway",
        "node": {"workload": "ingressgateway", "namespace": "trellis-system"},
        "listeners": [{
            "name": "https", "address": "127.0.0.1:0", "direction": "gateway", "protocol": "http",
            "tls": tls,
            "virtualHosts": [{"name": "shop", "domains": ["shop.example.com"], "routes": [
                {"match": [{"uri": {"prefix": "/api"}}], "action": {"forward": {"clusters": [{"cluster": "web"}]}},
                 "provenance": {"kind": "VirtualService", "namespace": "shop", "name": "web", "ruleIndex": 0}}
            ]}],
        }],
        "clusters": [cluster("web", &[app])],
    })
}

#[tokio::test]
async fn gateway_terminates_tls_with_alpn_and_forwards() {
    let pki = Pki::new();
    let app = Upstream::start("web").await;
    let proxy = Proxy::start(gateway_config(&pki, &app, "simple")).await;
    let addr = proxy.addr("https").await;

    // rustls client, both ALPN protocols.
    for alpn in [&b"h2"[..], &b"http/1.1"[..]] {
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pemfile::certs(&mut pki.root_pem().as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let mut cfg =
            rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        cfg.alpn_protocols = vec![alpn.to_vec()];
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
            .connect("shop.example.com".try_into().unwrap(), tcp)
            .await
            .unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(alpn));
        let io = hyper_util::rt::TokioIo::new(tls);
        let req = http::Request::get(if alpn == b"h2" {
            "https://shop.example.com/api/cart"
        } else {
            "/api/cart"
        })
        .header("host", "shop.example.com")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
        let status = if alpn == b"h2" {
            let (mut s, c) = hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                .await
                .unwrap();
            tokio::spawn(c);
            let mut req = req;
            req.headers_mut().remove("host");
            s.send_request(req).await.unwrap().status()
        } else {
            let (mut s, c) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(c);
            s.send_request(req).await.unwrap().status()
        };
        assert_eq!(status, 200);
    }
    let seen = app.last_seen();
    assert_eq!(seen.headers.get("x-forwarded-proto").unwrap(), "https");
    assert_eq!(seen.headers.get("x-forwarded-for").unwrap(), "127.0.0.1");

    if !trellis_skip::have("curl") {
        trellis_skip::skip("the curl part needs curl (Debian: apt-get install curl)");
        return;
    }
    let (_dir, ca) = pem_file(&pki.root_pem());
    let resolve = format!("shop.example.com:{}:127.0.0.1", addr.port());
    let url = format!("https://shop.example.com:{}/api/x", addr.port());
    for flag in ["--http2", "--http1.1"] {
        let out = Command::new("curl")
            .args(["-s", "-m", "5", flag, "--cacert"])
            .arg(&ca)
            .args([
                "--resolve",
                &resolve,
                "-w",
                "%{http_version} %{http_code}",
                "-o",
                "/dev/null",
                &url,
            ])
            .output()
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let expected = if flag == "--http2" { "2 200" } else { "1.1 200" };
        assert_eq!(text, expected, "curl {flag}");
    }
    // Plain HTTP/2 prior knowledge against an h2c listener.
    let plain = Proxy::start(outbound_config(
        "1",
        vec![forward_route("web")],
        vec![cluster("web", &[&app])],
    ))
    .await;
    let out = Command::new("curl")
        .args([
            "-s",
            "-m",
            "5",
            "--http2-prior-knowledge",
            "-w",
            "%{http_version} %{http_code}",
            "-o",
            "/dev/null",
        ])
        .arg(format!("http://{}/", plain.addr("outbound").await))
        .output()
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "2 200");
}

#[tokio::test]
async fn mutual_gateway_requires_a_client_certificate() {
    let pki = Pki::new();
    let app = Upstream::start("web").await;
    let proxy = Proxy::start(gateway_config(&pki, &app, "mutual")).await;
    let addr = proxy.addr("https").await;
    let connect = |with_cert: bool| {
        let pki_root = pki.root_pem();
        let leaf = pki.leaf("spiffe://cluster.local/ns/x/sa/client");
        async move {
            let cfg = tls_client(&pki_root, with_cert.then_some(&leaf));
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let tls = tokio_rustls::TlsConnector::from(cfg)
                .connect("shop.example.com".try_into().unwrap(), tcp)
                .await
                .ok()?;
            let (mut s, c) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .ok()?;
            tokio::spawn(c);
            let req = http::Request::get("/api/x")
                .header("host", "shop.example.com")
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap();
            Some(s.send_request(req).await.ok()?.status().as_u16())
        }
    };
    assert_eq!(connect(true).await, Some(200));
    assert_eq!(connect(false).await, None, "no client certificate, no request");
}

/// Gateway servers on one port with their own hosts and certificates, chosen
/// by SNI; one of them mutual. Checked with openssl s_client (which
/// certificate is served for which name) and curl --resolve (hostname
/// verification end to end).
#[tokio::test]
async fn servers_on_one_port_are_chosen_by_sni() {
    let pki = Pki::new();
    let (shop, api, fallback) = (
        Upstream::start("shop").await,
        Upstream::start("api").await,
        Upstream::start("fallback").await,
    );
    let inline = |leaf: Leaf| json!({"inline": {"certChainPem": leaf.cert_pem, "privateKeyPem": leaf.key_pem}});
    let route = |cluster: &str| json!([{"action": {"forward": {"clusters": [{"cluster": cluster}]}}, "provenance": provenance()}]);
    let cfg = json!({
        "version": "sni-1",
        "mode": "gateway",
        "listeners": [{
            "name": "https", "address": "127.0.0.1:0", "direction": "gateway", "protocol": "http",
            "tls": {"mode": "simple", "certificate": inline(pki.dns_leaf("default.example.com"))},
            "sniTls": [
                {"serverNames": ["shop.example.com"], "tls": {"mode": "simple", "certificate": inline(pki.dns_leaf("shop.example.com"))}},
                {"serverNames": ["*.api.example.com"], "tls": {"mode": "simple", "certificate": inline(pki.dns_leaf("*.api.example.com"))}},
                {"serverNames": ["secure.example.com"], "tls": {"mode": "mutual", "certificate": inline(pki.dns_leaf("secure.example.com")), "clientCa": {"inline": pki.root_pem()}}},
            ],
            "virtualHosts": [
                {"name": "shop", "domains": ["shop.example.com", "secure.example.com"], "routes": route("shop")},
                {"name": "api", "domains": ["*.api.example.com"], "routes": route("api")},
                {"name": "rest", "domains": ["*"], "routes": route("fallback")},
            ],
        }],
        "clusters": [cluster("shop", &[&shop]), cluster("api", &[&api]), cluster("fallback", &[&fallback])],
    });
    let proxy = Proxy::start(cfg).await;
    let port = proxy.addr("https").await.port();

    // Config dump shows the SNI servers without their keys.
    let dump = get(proxy.admin(), "admin", "/config_dump").await.body;
    assert!(
        dump.contains("*.api.example.com") && !dump.contains("PRIVATE KEY"),
        "{dump}"
    );

    if !trellis_skip::have("openssl") || !trellis_skip::have("curl") {
        trellis_skip::skip("the SNI part needs openssl and curl (Debian: apt-get install openssl curl)");
        return;
    }
    // Which certificate does each SNI get? (`None` = no SNI sent.)
    let served = |sni: Option<&'static str>| async move {
        let mut args = vec!["s_client".to_string(), "-connect".into(), format!("127.0.0.1:{port}")];
        match sni {
            Some(name) => args.extend(["-servername".to_string(), name.to_string()]),
            None => args.push("-noservername".into()),
        }
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "openssl {} </dev/null 2>/dev/null | openssl x509 -noout -ext subjectAltName",
                args.join(" ")
            ))
            .output()
            .await
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(served(Some("shop.example.com")).await.contains("DNS:shop.example.com"));
    assert!(
        served(Some("v1.api.example.com"))
            .await
            .contains("DNS:*.api.example.com")
    );
    assert!(
        served(Some("SECURE.example.com"))
            .await
            .contains("DNS:secure.example.com")
    );
    assert!(
        served(Some("unknown.example.org"))
            .await
            .contains("DNS:default.example.com")
    );
    assert!(served(None).await.contains("DNS:default.example.com"));

    // curl verifies the served certificate against the name it asked for.
    let (dir, ca) = pem_file(&pki.root_pem());
    let client = pki.dns_leaf("client.example.com");
    let (client_cert, client_key) = (dir.path().join("client.pem"), dir.path().join("client.key"));
    std::fs::write(&client_cert, client.cert_pem).unwrap();
    std::fs::write(&client_key, client.key_pem).unwrap();
    let curl = |host: &'static str, with_cert: bool| {
        let (ca, cert, key) = (ca.clone(), client_cert.clone(), client_key.clone());
        async move {
            let mut cmd = Command::new("curl");
            cmd.args(["-s", "-m", "5", "--cacert"]).arg(&ca);
            if with_cert {
                cmd.arg("--cert").arg(&cert).arg("--key").arg(&key);
            }
            let out = cmd
                .args(["--resolve", &format!("{host}:{port}:127.0.0.1"), "-w", " %{http_code}"])
                .arg(format!("https://{host}:{port}/"))
                .output()
                .await
                .unwrap();
            (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
        }
    };
    assert_eq!(curl("shop.example.com", false).await, (Some(0), "shop / 200".into()));
    assert_eq!(curl("v1.api.example.com", false).await, (Some(0), "api / 200".into()));
    assert_eq!(
        curl("default.example.com", false).await,
        (Some(0), "fallback / 200".into())
    );
    // The mutual server on the same port wants a client certificate; the others do not.
    assert_eq!(curl("secure.example.com", true).await, (Some(0), "shop / 200".into()));
    let (code, _) = curl("secure.example.com", false).await;
    assert_ne!(code, Some(0), "no client certificate, no request on the mutual server");
}

#[tokio::test]
async fn without_a_default_unknown_sni_is_refused() {
    let pki = Pki::new();
    let app = Upstream::start("web").await;
    let leaf = pki.dns_leaf("shop.example.com");
    let cfg = json!({
        "version": "sni-2",
        "mode": "gateway",
        "listeners": [{
            "name": "https", "address": "127.0.0.1:0", "direction": "gateway", "protocol": "http",
            "sniTls": [{"serverNames": ["shop.example.com"], "tls": {"mode": "simple",
                "certificate": {"inline": {"certChainPem": leaf.cert_pem, "privateKeyPem": leaf.key_pem}}}}],
            "virtualHosts": [{"name": "all", "domains": ["*"], "routes": [forward_route("web")]}],
        }],
        "clusters": [cluster("web", &[&app])],
    });
    let proxy = Proxy::start(cfg).await;
    let addr = proxy.addr("https").await;
    let handshake = |name: &'static str| {
        let root = pki.root_pem();
        async move {
            let mut roots = rustls::RootCertStore::empty();
            for c in rustls_pemfile::certs(&mut root.as_bytes()) {
                roots.add(c.unwrap()).unwrap();
            }
            let cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
                .connect(name.try_into().unwrap(), tcp)
                .await
                .is_ok()
        }
    };
    assert!(handshake("shop.example.com").await);
    assert!(
        !handshake("other.example.com").await,
        "unknown SNI without a default is refused"
    );
}
