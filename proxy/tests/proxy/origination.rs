//! TLS origination to destinations outside the mesh (DestinationRule `tls` SIMPLE and
//! MUTUAL): a plaintext request to the proxy leaves it as TLS to a real loopback TLS server,
//! whose chain, name or SANs and (for MUTUAL) the proxy's client certificate are checked.

use crate::support::*;
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A loopback HTTPS server (HTTP/1.1 and h2 by ALPN) answering
/// `sni=<server name the client sent> client=<URI SAN of its certificate or none>`.
pub(crate) struct TlsServer {
    pub(crate) addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn certs(pem: &str) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    rustls_pemfile::certs(&mut pem.as_bytes()).map(Result::unwrap).collect()
}

impl TlsServer {
    /// Serves `leaf`; with `client_ca`, requires a client certificate chaining to it.
    pub(crate) async fn start(leaf: &Leaf, client_ca: Option<&Pki>) -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = match client_ca {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in certs(&ca.root_pem()) {
                    roots.add(c).unwrap();
                }
                builder.with_client_cert_verifier(
                    rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .unwrap(),
                )
            }
            None => builder.with_no_client_auth(),
        };
        let key = rustls_pemfile::private_key(&mut leaf.key_pem.as_bytes())
            .unwrap()
            .unwrap();
        let mut cfg = builder.with_single_cert(certs(&leaf.cert_pem), key).unwrap();
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let (_, conn) = tls.get_ref();
                    let sni = conn.server_name().unwrap_or("none").to_string();
                    let client = conn
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(|c| trellis_proxy::identity::spiffe_id_of(c).ok())
                        .unwrap_or_else(|| "none".into());
                    let text = format!("sni={sni} client={client}");
                    let svc = hyper::service::service_fn(move |_req| {
                        let text = text.clone();
                        async move { Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from(text)))) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        Self { addr, task }
    }
}

/// A leaf with these DNS names and URI SANs, for server or client use.
pub(crate) fn leaf(pki: &Pki, dns: &[&str], uris: &[&str]) -> Leaf {
    leaf_with_serial(pki, dns, uris, None)
}

/// [`leaf`] with a chosen serial number (to revoke it).
fn leaf_with_serial(pki: &Pki, dns: &[&str], uris: &[&str], serial: Option<u64>) -> Leaf {
    let mut params = rcgen::CertificateParams::new(dns.iter().map(|d| d.to_string()).collect::<Vec<_>>()).unwrap();
    for u in uris {
        params
            .subject_alt_names
            .push(rcgen::SanType::URI(rcgen::string::Ia5String::try_from(*u).unwrap()));
    }
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    params.serial_number = serial.map(rcgen::SerialNumber::from);
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, pki.issuer()).unwrap();
    Leaf {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

/// The proxy's `trellis_proxy_upstream_tls_failures_total` for the `ext` cluster.
async fn tls_failures(proxy: &Proxy) -> u64 {
    let m = get(proxy.admin(), "admin", "/metrics").await.body;
    m.lines()
        .find_map(|l| l.strip_prefix("trellis_proxy_upstream_tls_failures_total{cluster=\"ext\"} "))
        .map_or(0, |n| n.parse().unwrap())
}

/// A request through `proxy` is refused because the TLS handshake failed: 503 `UF`, an
/// answer that says why (`reason`), and one more failure counted for the cluster.
async fn refused(proxy: &Proxy, reason: &str) {
    let before = tls_failures(proxy).await;
    let r = get(proxy.addr("outbound").await, "db.example.com", "/").await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(
        r.body.contains("TLS handshake with 127.0.0.1:") && r.body.contains(reason),
        "{}",
        r.body
    );
    assert_eq!(tls_failures(proxy).await, before + 1);
}

/// An outbound proxy whose `ext` cluster originates TLS to `server` as `tls` says.
async fn proxy_to(server: &TlsServer, protocol: &str, tls: Value) -> Proxy {
    let cluster = json!({
        "name": "ext",
        "service": "db.example.com",
        "protocol": protocol,
        "tls": {"originate": tls},
        "endpoints": [{"address": "127.0.0.1", "port": server.addr.port()}],
    });
    Proxy::start(outbound_config("1", vec![forward_route("ext")], vec![cluster])).await
}

#[tokio::test]
async fn simple_verifies_the_chain_and_the_name_and_sends_the_sni() {
    let pki = Pki::new();
    let server = TlsServer::start(&leaf(&pki, &["db.example.com"], &[]), None).await;

    for protocol in ["http1", "http2"] {
        let proxy = proxy_to(
            &server,
            protocol,
            json!({"sni": "db.example.com", "ca": {"inline": pki.root_pem()}}),
        )
        .await;
        let r = get(proxy.addr("outbound").await, "db.example.com", "/").await;
        assert_eq!(r.status, 200, "{protocol}: {}", r.body);
        assert_eq!(r.body, "sni=db.example.com client=none", "{protocol}");
    }

    // Another CA's roots: the handshake fails, nothing is sent.
    let other = Pki::new();
    let proxy = proxy_to(
        &server,
        "http1",
        json!({"sni": "db.example.com", "ca": {"inline": other.root_pem()}}),
    )
    .await;
    // (Both test CAs have the same name, so the chain fails on the issuer's signature.)
    refused(&proxy, "invalid peer certificate: BadSignature").await;

    // The right CA, the wrong name.
    let proxy = proxy_to(
        &server,
        "http1",
        json!({"sni": "api.example.com", "ca": {"inline": pki.root_pem()}}),
    )
    .await;
    refused(&proxy, "certificate not valid for name \"api.example.com\"").await;
}

#[tokio::test]
async fn subject_alt_names_replace_the_sni_as_the_name_checked() {
    let pki = Pki::new();
    let server = TlsServer::start(
        &leaf(
            &pki,
            &["*.internal.example.com"],
            &["spiffe://partner.example/ns/db/sa/db"],
        ),
        None,
    )
    .await;
    let ca = json!({"inline": pki.root_pem()});
    for (sans, status) in [
        (json!(["db.internal.example.com"]), 200),
        (json!(["spiffe://partner.example/ns/db/sa/db"]), 200),
        (json!(["nope.example.com", "db.internal.example.com"]), 200),
        (json!(["db.example.com"]), 503),
        (json!(["spiffe://partner.example/ns/db/sa/other"]), 503),
    ] {
        let proxy = proxy_to(
            &server,
            "http1",
            json!({"sni": "db.example.com", "ca": ca, "subjectAltNames": sans}),
        )
        .await;
        if status == 200 {
            let r = get(proxy.addr("outbound").await, "db.example.com", "/").await;
            assert_eq!(r.status, status, "subjectAltNames {sans}: {}", r.body);
            assert_eq!(r.body, "sni=db.example.com client=none");
            assert_eq!(tls_failures(&proxy).await, 0);
        } else {
            refused(
                &proxy,
                &format!(
                    "server certificate is valid for [\"*.internal.example.com\", \"spiffe://partner.example/ns/db/sa/db\"], none of the subjectAltNames {sans}"
                ),
            )
            .await;
        }
    }
}

/// DestinationRule `caCrl`: a server certificate its CA revoked is refused, before and after
/// the name is checked (SNI or subjectAltNames); the CA's other certificates pass.
#[tokio::test]
async fn revoked_server_certificates_are_refused() {
    let pki = Pki::new();
    let good = TlsServer::start(&leaf_with_serial(&pki, &["db.example.com"], &[], Some(7)), None).await;
    let revoked = TlsServer::start(&leaf_with_serial(&pki, &["db.example.com"], &[], Some(666)), None).await;
    let (ca, crl) = (json!({"inline": pki.root_pem()}), json!({"inline": pki.crl(&[666])}));
    for sans in [json!([]), json!(["db.example.com"])] {
        let tls = json!({"sni": "db.example.com", "ca": ca, "crl": crl, "subjectAltNames": sans});
        let proxy = proxy_to(&good, "http1", tls.clone()).await;
        let r = get(proxy.addr("outbound").await, "db.example.com", "/").await;
        assert_eq!(
            (r.status.as_u16(), r.body.as_str()),
            (200, "sni=db.example.com client=none"),
            "{sans}"
        );
        let proxy = proxy_to(&revoked, "http1", tls).await;
        refused(&proxy, "invalid peer certificate: Revoked").await;
    }
    // Without the list the same certificate passes: the list is what refuses it.
    let proxy = proxy_to(&revoked, "http1", json!({"sni": "db.example.com", "ca": ca})).await;
    let r = get(proxy.addr("outbound").await, "db.example.com", "/").await;
    assert_eq!(r.status, 200, "{}", r.body);
}

#[tokio::test]
async fn mutual_presents_the_client_certificate_the_server_requires() {
    let (server_pki, client_pki) = (Pki::new(), Pki::new());
    let server = TlsServer::start(&leaf(&server_pki, &["db.example.com"], &[]), Some(&client_pki)).await;
    let ca = json!({"inline": server_pki.root_pem()});

    // SIMPLE: no client certificate, so the server refuses the handshake.
    let proxy = proxy_to(&server, "http1", json!({"sni": "db.example.com", "ca": ca})).await;
    let r = get(proxy.addr("outbound").await, "db.example.com", "/").await;
    assert_eq!(r.status, 503, "{}", r.body);

    // MUTUAL with a certificate from the CA the server trusts.
    let client = leaf(&client_pki, &[], &["spiffe://shop.example/ns/shop/sa/web"]);
    let proxy = proxy_to(
        &server,
        "http1",
        json!({
            "sni": "db.example.com", "ca": ca,
            "clientCertificate": {"inline": {"certChainPem": client.cert_pem, "privateKeyPem": client.key_pem}},
        }),
    )
    .await;
    let addr = proxy.addr("outbound").await;
    let r = get(addr, "db.example.com", "/").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body, "sni=db.example.com client=spiffe://shop.example/ns/shop/sa/web");

    // The key never shows in /config_dump.
    let dump = raw(
        proxy.admin(),
        b"GET /config_dump HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n",
        std::time::Duration::from_secs(5),
    )
    .await;
    assert!(dump.contains("db.example.com") && dump.contains("<redacted>"), "{dump}");
    let key_line = client.key_pem.lines().nth(1).unwrap();
    assert!(!dump.contains(key_line), "the client key leaked into /config_dump");

    // A certificate from a CA the server does not trust is refused.
    let stranger = leaf(&Pki::new(), &[], &["spiffe://shop.example/ns/shop/sa/web"]);
    let proxy = proxy_to(
        &server,
        "http1",
        json!({
            "sni": "db.example.com", "ca": ca,
            "clientCertificate": {"inline": {"certChainPem": stranger.cert_pem, "privateKeyPem": stranger.key_pem}},
        }),
    )
    .await;
    let r = get(proxy.addr("outbound").await, "db.example.com", "/").await;
    assert_eq!(r.status, 503, "{}", r.body);
}

#[tokio::test]
async fn insecure_skip_verify_accepts_any_server() {
    let server = TlsServer::start(&leaf(&Pki::new(), &["whatever.test"], &[]), None).await;
    let proxy = proxy_to(
        &server,
        "http1",
        json!({"sni": "db.example.com", "insecureSkipVerify": true}),
    )
    .await;
    let r = get(proxy.addr("outbound").await, "db.example.com", "/").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body, "sni=db.example.com client=none");
}

#[tokio::test]
async fn tcp_routes_originate_tls_too() {
    let (server_pki, client_pki) = (Pki::new(), Pki::new());
    let server = TlsServer::start(&leaf(&server_pki, &["db.example.com"], &[]), Some(&client_pki)).await;
    let client = leaf(&client_pki, &[], &["spiffe://shop.example/ns/shop/sa/web"]);
    let config = json!({
        "version": "1",
        "listeners": [{
            "name": "l", "address": "127.0.0.1:0", "direction": "outbound", "protocol": "tcp",
            "tcpRoutes": [{"cluster": "ext"}],
        }],
        "clusters": [{
            "name": "ext", "service": "db.example.com", "protocol": "tcp",
            "tls": {"originate": {
                "sni": "db.example.com", "ca": {"inline": server_pki.root_pem()},
                "clientCertificate": {"inline": {"certChainPem": client.cert_pem, "privateKeyPem": client.key_pem}},
            }},
            "endpoints": [{"address": "127.0.0.1", "port": server.addr.port()}],
        }],
    });
    let proxy = Proxy::start(config).await;
    // The app speaks plaintext HTTP/1.1 over the TCP route; the server sees it over mTLS.
    let mut s = tokio::net::TcpStream::connect(proxy.addr("l").await).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: db.example.com\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(
        out.ends_with("sni=db.example.com client=spiffe://shop.example/ns/shop/sa/web"),
        "{out}"
    );
}

#[tokio::test]
async fn a_config_with_unreadable_material_is_refused_whole() {
    let server = TlsServer::start(&leaf(&Pki::new(), &["db.example.com"], &[]), None).await;
    let proxy = proxy_to(
        &server,
        "http1",
        json!({"sni": "db.example.com", "insecureSkipVerify": true}),
    )
    .await;
    let bad = json!({
        "name": "ext", "service": "db.example.com",
        "tls": {"originate": {"sni": "db.example.com", "ca": {"file": "/nonexistent/ca.pem"}}},
        "endpoints": [{"address": "127.0.0.1", "port": server.addr.port()}],
    });
    let err = proxy
        .apply(outbound_config("2", vec![forward_route("ext")], vec![bad]))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
    // The previous config keeps serving.
    let r = get(proxy.addr("outbound").await, "db.example.com", "/").await;
    assert_eq!(r.status, 200, "{}", r.body);
}
