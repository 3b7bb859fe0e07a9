//! Gateway servers beyond SIMPLE and MUTUAL: OPTIONAL_MUTUAL, ISTIO_MUTUAL,
//! PASSTHROUGH beside terminated hosts on one port, TLS terminated into TCP
//! routes chosen by SNI, and AUTO_PASSTHROUGH carrying a client proxy's mesh
//! mTLS to the destination's proxy — each through real proxies and real TLS.

use crate::support::*;
use crate::tcp::named_server;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub(crate) const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";
pub(crate) const OTHER: &str = "spiffe://cluster.local/ns/shop/sa/other";
pub(crate) const GATEWAY: &str = "spiffe://cluster.local/ns/trellis-system/sa/gateway";

pub(crate) fn inline(leaf: &Leaf) -> Value {
    json!({"inline": {"certChainPem": leaf.cert_pem, "privateKeyPem": leaf.key_pem}})
}

pub(crate) async fn tls_connect(
    addr: SocketAddr,
    sni: &str,
    cfg: Arc<rustls::ClientConfig>,
) -> Option<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
    let mut tls = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_rustls::TlsConnector::from(cfg).connect(name, tcp),
    )
    .await
    .ok()?
    .ok()?;
    // TLS 1.3 reports a refused client certificate only after the handshake: a
    // flush and a short read bring the alert in.
    tls.flush().await.ok()?;
    Some(tls)
}

/// `GET path` over HTTPS with SNI and Host `sni`: the status and body, or `None` when
/// the handshake or the request failed.
pub(crate) async fn https_get(
    addr: SocketAddr,
    sni: &str,
    path: &str,
    cfg: Arc<rustls::ClientConfig>,
) -> Option<(u16, String)> {
    let tls = tls_connect(addr, sni, cfg).await?;
    let (mut s, c) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .ok()?;
    tokio::spawn(c);
    let req = http::Request::get(path)
        .header("host", sni)
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(5), s.send_request(req))
        .await
        .ok()?
        .ok()?;
    let status = resp.status().as_u16();
    use http_body_util::BodyExt;
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Everything a TLS connection with SNI `sni` reads until the peer closes.
async fn tls_read_all(addr: SocketAddr, sni: &str, cfg: Arc<rustls::ClientConfig>) -> Option<String> {
    let mut tls = tls_connect(addr, sni, cfg).await?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), tls.read_to_string(&mut out))
        .await
        .ok()?
        .ok()?;
    Some(out)
}

/// A gateway with one HTTP listener terminating `tls`, routing everything to `app`.
pub(crate) fn https_gateway(tls: Value, identity: Option<Value>, authorization: Value, app: &Upstream) -> Value {
    let mut cfg = json!({
        "version": "gw-1",
        "mode": "gateway",
        "node": {"workload": "ingressgateway", "namespace": "trellis-system"},
        "listeners": [{
            "name": "https", "address": "127.0.0.1:0", "direction": "gateway", "protocol": "http",
            "tls": tls,
            "virtualHosts": [{"name": "all", "domains": ["*"], "routes": [forward_route("web")]}],
        }],
        "clusters": [cluster("web", &[app])],
        "inbound": {"authorization": authorization},
    });
    if let Some(id) = identity {
        cfg["identity"] = id;
    }
    cfg
}

/// A sidecar with the workload certificate of `identity` from `ca`, sending every request
/// with mesh mTLS (SNI `sni`, if any) to the proxy at `port`, which must be `expected`.
pub(crate) fn mesh_client(ca: &Pki, identity: &str, expected: &str, sni: Option<&str>, port: u16) -> Value {
    json!({
        "version": "out-1",
        "node": {"workload": "client", "namespace": "shop"},
        "identity": ca.identity(identity),
        "listeners": [{
            "name": "outbound", "address": "127.0.0.1:0", "direction": "outbound", "protocol": "http",
            "virtualHosts": [{"name": "all", "domains": ["*"], "routes": [forward_route("upstream")]}],
        }],
        "clusters": [{
            "name": "upstream", "service": "upstream.shop.svc.cluster.local",
            "tls": {"mesh": {"expectedIdentities": [expected], "sni": sni}},
            "endpoints": [{"address": "127.0.0.1", "port": port}],
        }],
    })
}

/// OPTIONAL_MUTUAL: clients without a certificate are served; a presented one must chain
/// to the client CA, and its SPIFFE ID is the principal authorization sees.
#[tokio::test]
async fn optional_mutual_verifies_a_certificate_only_when_presented() {
    let (pki, stranger) = (Pki::new(), Pki::new());
    let app = Upstream::start("web").await;
    let policies = json!([{"name": "web-or-public", "namespace": "trellis-system", "action": "ALLOW", "rules": [
        {"to": [{"paths": [{"prefix": "/public"}]}]},
        {"from": [{"principals": [{"exact": WEB}]}]},
    ]}]);
    let tls = json!({"mode": "optionalMutual", "certificate": inline(&pki.dns_leaf("shop.example.com")),
                     "clientCa": {"inline": pki.root_pem()}});
    let proxy = Proxy::start(https_gateway(tls, None, policies, &app)).await;
    let addr = proxy.addr("https").await;
    let root = pki.root_pem();
    let anonymous = tls_client(&root, None);
    let web = tls_client(&root, Some(&pki.leaf(WEB)));
    let forged = tls_client(&root, Some(&stranger.leaf(WEB)));

    let get = |path: &'static str, cfg: &Arc<rustls::ClientConfig>| {
        https_get(addr, "shop.example.com", path, Arc::clone(cfg))
    };
    assert_eq!(get("/public", &anonymous).await, Some((200, "web /public".into())));
    assert_eq!(get("/private", &anonymous).await.map(|r| r.0), Some(403));
    assert_eq!(get("/private", &web).await, Some((200, "web /private".into())));
    assert_eq!(
        get("/public", &forged).await,
        None,
        "a certificate from another CA is refused, not ignored"
    );
}

/// ISTIO_MUTUAL: the gateway serves its workload certificate and requires a client
/// certificate of the mesh; the client's SPIFFE ID is its principal. The clients are
/// sidecars, which verify the gateway by its SPIFFE ID.
#[tokio::test]
async fn istio_mutual_serves_the_workload_certificate_to_mesh_clients_only() {
    let (pki, stranger) = (Pki::new(), Pki::new());
    let app = Upstream::start("web").await;
    let policies = json!([{"name": "web-only", "namespace": "trellis-system", "action": "ALLOW",
                          "rules": [{"from": [{"principals": [{"exact": WEB}]}]}]}]);
    let gateway = Proxy::start(https_gateway(
        json!({"mode": "istioMutual"}),
        Some(pki.identity(GATEWAY)),
        policies,
        &app,
    ))
    .await;
    let gw = gateway.addr("https").await;
    let sidecar = |ca: &Pki, identity: &str| mesh_client(ca, identity, GATEWAY, None, gw.port());
    let web = Proxy::start(sidecar(&pki, WEB)).await;
    let r = get(web.addr("outbound").await, "shop.example.com", "/cart").await;
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "web /cart"));

    let other = Proxy::start(sidecar(&pki, OTHER)).await;
    let r = get(other.addr("outbound").await, "shop.example.com", "/cart").await;
    assert_eq!(r.status, 403, "another mesh identity is authenticated, then denied");

    let outsider = Proxy::start(sidecar(&stranger, WEB)).await;
    let r = get(outsider.addr("outbound").await, "shop.example.com", "/cart").await;
    assert_eq!(
        r.status, 503,
        "a certificate outside the mesh gets no connection: {}",
        r.body
    );

    // A client without a certificate gets no handshake.
    let tcp = tokio::net::TcpStream::connect(gw).await.unwrap();
    let anonymous = tokio_rustls::TlsConnector::from(tls_client(&pki.root_pem(), None));
    let name = rustls::pki_types::ServerName::try_from("shop.example.com").unwrap();
    // The workload certificate names no DNS host: the handshake fails on one side or the other.
    assert!(anonymous.connect(name, tcp).await.is_err());
    assert_eq!(app.hits(), 1);
}

/// A TLS server the client must reach untouched: it serves its own certificate (from its
/// own CA, which the gateway knows nothing of) and answers `backend` to anything.
async fn tls_backend(ca: &Pki, name: &str) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let leaf = ca.dns_leaf(name);
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(leaf.chain(), leaf.key())
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { continue };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(s).await {
                    let _ = tls.write_all(b"backend").await;
                    let _ = tls.shutdown().await;
                }
            });
        }
    });
    (addr, task)
}

fn tcp_cluster(name: &str, addr: SocketAddr) -> Value {
    json!({"name": name, "protocol": "tcp", "endpoints": [{"address": "127.0.0.1", "port": addr.port()}]})
}

/// PASSTHROUGH beside SIMPLE on one port: the ClientHello's SNI decides, before any
/// termination, whether the connection is passed through or terminated.
#[tokio::test]
async fn passthrough_hosts_share_a_port_with_terminated_ones() {
    let (pki, backend_ca) = (Pki::new(), Pki::new());
    let app = Upstream::start("web").await;
    let (backend, _b) = tls_backend(&backend_ca, "db.example.com").await;
    let proxy = Proxy::start(json!({
        "version": "pt-1",
        "mode": "gateway",
        "listeners": [{
            "name": "tls", "address": "127.0.0.1:0", "direction": "gateway", "protocol": "auto",
            "tls": {"mode": "simple", "certificate": inline(&pki.dns_leaf("shop.example.com"))},
            "virtualHosts": [{"name": "shop", "domains": ["shop.example.com"], "routes": [forward_route("web")]}],
            "tcpRoutes": [{"sniHosts": ["db.example.com"], "passthrough": true, "cluster": "db"}],
        }],
        "clusters": [cluster("web", &[&app]), tcp_cluster("db", backend)],
    }))
    .await;
    let addr = proxy.addr("tls").await;
    // The backend's own certificate reaches the client: the gateway did not terminate.
    let through = tls_read_all(addr, "db.example.com", tls_client(&backend_ca.root_pem(), None)).await;
    assert_eq!(through.as_deref(), Some("backend"));
    // The other names are terminated by the gateway and routed as HTTP.
    let terminated = https_get(addr, "shop.example.com", "/", tls_client(&pki.root_pem(), None)).await;
    assert_eq!(terminated, Some((200, "web /".into())));
}

/// A TLS server terminating TLS into TCP routes: two servers on one port, each with its
/// certificate, and each name's TCP route chosen by the SNI the client sent.
#[tokio::test]
async fn terminated_tls_is_routed_to_tcp_by_the_name_the_client_sent() {
    let pki = Pki::new();
    let (a, _ta) = named_server("a").await;
    let (b, _tb) = named_server("b").await;
    let proxy = Proxy::start(json!({
        "version": "tt-1",
        "mode": "gateway",
        "listeners": [{
            "name": "tls", "address": "127.0.0.1:0", "direction": "gateway", "protocol": "tcp",
            "sniTls": [
                {"serverNames": ["a.example.com"], "tls": {"mode": "simple", "certificate": inline(&pki.dns_leaf("a.example.com"))}},
                {"serverNames": ["b.example.com"], "tls": {"mode": "simple", "certificate": inline(&pki.dns_leaf("b.example.com"))}},
            ],
            "tcpRoutes": [
                {"sniHosts": ["a.example.com"], "cluster": "a"},
                {"sniHosts": ["b.example.com"], "cluster": "b"},
            ],
        }],
        "clusters": [tcp_cluster("a", a), tcp_cluster("b", b)],
    }))
    .await;
    let addr = proxy.addr("tls").await;
    let cfg = tls_client(&pki.root_pem(), None);
    assert_eq!(
        tls_read_all(addr, "a.example.com", Arc::clone(&cfg)).await.as_deref(),
        Some("a")
    );
    assert_eq!(tls_read_all(addr, "b.example.com", cfg).await.as_deref(), Some("b"));
}

/// AUTO_PASSTHROUGH: a client sidecar's mesh mTLS, with Istio's SNI
/// `outbound_.PORT_.SUBSET_.HOST`, crosses a gateway that has no identity at all and is
/// terminated by the destination's sidecar, which sees the client's own identity.
#[tokio::test]
async fn auto_passthrough_carries_mesh_mtls_to_the_destination() {
    const SNI: &str = "outbound_.8080_._.web.shop.svc.cluster.local";
    let pki = Pki::new();
    let app = Upstream::start("web-app").await;
    let destination = Proxy::start(json!({
        "version": "in-1",
        "node": {"workload": "web", "namespace": "shop"},
        "identity": pki.identity(WEB),
        "listeners": [{
            "name": "inbound", "address": "127.0.0.1:0", "direction": "inbound", "protocol": "http",
            "virtualHosts": [{"name": "inbound", "domains": ["*"], "routes": [forward_route("app")]}],
        }],
        "clusters": [cluster("app", &[&app])],
        "inbound": {"mtls": {"mode": "STRICT"}},
    }))
    .await;
    let gateway = Proxy::start(json!({
        "version": "ap-1",
        "mode": "gateway",
        "listeners": [{
            "name": "eastwest", "address": "127.0.0.1:0", "direction": "gateway", "protocol": "tcp",
            "tcpRoutes": [{"sniHosts": [SNI], "cluster": SNI}],
        }],
        "clusters": [tcp_cluster(SNI, destination.addr("inbound").await)],
    }))
    .await;
    let client = Proxy::start(mesh_client(
        &pki,
        OTHER,
        WEB,
        Some(SNI),
        gateway.addr("eastwest").await.port(),
    ))
    .await;
    let r = get(client.addr("outbound").await, "web.shop.svc.cluster.local", "/x").await;
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "web-app /x"));
    let xfcc = app.last_seen().headers["x-forwarded-client-cert"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        xfcc.starts_with(&format!("By={WEB};")) && xfcc.ends_with(&format!("URI={OTHER}")),
        "{xfcc}"
    );

    // Any other name reaches nothing.
    let mut s = tokio::net::TcpStream::connect(gateway.addr("eastwest").await)
        .await
        .unwrap();
    let hello = {
        let cfg = tls_client(&pki.root_pem(), None);
        let name = rustls::pki_types::ServerName::try_from("outbound_.9090_._.db.shop.svc.cluster.local").unwrap();
        let mut conn = rustls::ClientConnection::new(cfg, name).unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    };
    s.write_all(&hello).await.unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "closed without an answer: {buf:?}"
    );
}

/// A client certificate with `serial`, for `identity`, from `ca`.
fn leaf_with_serial(ca: &Pki, identity: &str, serial: u64) -> Leaf {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = vec![rcgen::SanType::URI(
        rcgen::string::Ia5String::try_from(identity).unwrap(),
    )];
    params.serial_number = Some(rcgen::SerialNumber::from(serial));
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, ca.issuer()).unwrap();
    Leaf {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

/// Gateway `caCrl`: a client certificate the CA revoked is refused; the CA's others pass.
#[tokio::test]
async fn revoked_client_certificates_are_refused() {
    let pki = Pki::new();
    let app = Upstream::start("web").await;
    let crl = pki.crl(&[666]);
    let tls = json!({"mode": "mutual", "certificate": inline(&pki.dns_leaf("shop.example.com")),
                     "clientCa": {"inline": pki.root_pem()}, "clientCrl": {"inline": crl}});
    let proxy = Proxy::start(https_gateway(tls, None, json!([]), &app)).await;
    let addr = proxy.addr("https").await;
    let root = pki.root_pem();
    let good = tls_client(&root, Some(&leaf_with_serial(&pki, WEB, 7)));
    let revoked = tls_client(&root, Some(&leaf_with_serial(&pki, WEB, 666)));
    assert_eq!(
        https_get(addr, "shop.example.com", "/", good).await,
        Some((200, "web /".into()))
    );
    assert_eq!(
        https_get(addr, "shop.example.com", "/", revoked).await,
        None,
        "the revoked certificate gets no request through"
    );
    assert_eq!(app.hits(), 1);
}
