//! What a gateway server asks of the TLS handshake (Gateway `tls`
//! `minProtocolVersion`, `maxProtocolVersion`, `cipherSuites`, `subjectAltNames`):
//! clients outside those bounds get no handshake, through a real proxy and real TLS.

use crate::gateway_tls::{GATEWAY, OTHER, WEB, https_gateway, https_get, inline, mesh_client, tls_connect};
use crate::support::*;
use rustls::crypto::ring::cipher_suite as suite;
use rustls::{SupportedCipherSuite, SupportedProtocolVersion};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;

/// A client trusting `pki`'s root that offers only these versions and (when given) these
/// suites, presenting `leaf` when given.
fn client(
    pki: &Pki,
    versions: &[&'static SupportedProtocolVersion],
    suites: Option<Vec<SupportedCipherSuite>>,
    leaf: Option<&Leaf>,
) -> Arc<rustls::ClientConfig> {
    let mut provider = rustls::crypto::ring::default_provider();
    if let Some(suites) = suites {
        provider.cipher_suites = suites;
    }
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut pki.root_pem().as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots);
    Arc::new(match leaf {
        Some(leaf) => builder.with_client_auth_cert(leaf.chain(), leaf.key()).unwrap(),
        None => builder.with_no_client_auth(),
    })
}

const TLS12: &[&SupportedProtocolVersion] = &[&rustls::version::TLS12];
const TLS13: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];
const BOTH: &[&SupportedProtocolVersion] = &[&rustls::version::TLS12, &rustls::version::TLS13];

/// A gateway terminating `tls` (JSON of the contract's `ServerTls`) in front of `app`.
async fn gateway(tls: Value, app: &Upstream) -> (Proxy, SocketAddr) {
    let proxy = Proxy::start(https_gateway(tls, None, json!([]), app)).await;
    let addr = proxy.addr("https").await;
    (proxy, addr)
}

/// The version and suite a handshake settled on, or `None` when it failed.
async fn negotiated(addr: SocketAddr, cfg: Arc<rustls::ClientConfig>) -> Option<(String, String)> {
    let tls = tls_connect(addr, "shop.example.com", cfg).await?;
    let conn = tls.get_ref().1;
    Some((
        format!("{:?}", conn.protocol_version()?),
        format!("{:?}", conn.negotiated_cipher_suite()?.suite()),
    ))
}

#[tokio::test]
async fn a_tls13_floor_refuses_tls12_clients_and_a_tls12_ceiling_tls13_ones() {
    let pki = Pki::new();
    let app = Upstream::start("web").await;
    let cert = inline(&pki.dns_leaf("shop.example.com"));

    let (_floor, addr) = gateway(
        json!({"mode": "simple", "certificate": cert, "minVersion": "tls1.3"}),
        &app,
    )
    .await;
    assert_eq!(negotiated(addr, client(&pki, TLS12, None, None)).await, None);
    let r = https_get(addr, "shop.example.com", "/", client(&pki, BOTH, None, None)).await;
    assert_eq!(r, Some((200, "web /".into())));

    let (_ceiling, addr) = gateway(
        json!({"mode": "simple", "certificate": cert, "maxVersion": "tls1.2"}),
        &app,
    )
    .await;
    assert_eq!(negotiated(addr, client(&pki, TLS13, None, None)).await, None);
    let (version, _) = negotiated(addr, client(&pki, BOTH, None, None)).await.unwrap();
    assert_eq!(version, "TLSv1_2", "a client offering both settles on the ceiling");
    assert_eq!(app.hits(), 1);
}

#[tokio::test]
async fn tls12_suites_outside_the_list_are_refused_and_the_list_order_wins() {
    let pki = Pki::new();
    let app = Upstream::start("web").await;
    // rcgen's keys are ECDSA P-256: the ECDHE-ECDSA suites apply.
    let tls = json!({"mode": "simple", "certificate": inline(&pki.dns_leaf("shop.example.com")),
                     "cipherSuites": ["ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-ECDSA-AES256-GCM-SHA384"]});
    let (_proxy, addr) = gateway(tls, &app).await;
    let only = |s: SupportedCipherSuite| client(&pki, TLS12, Some(vec![s]), None);

    assert_eq!(
        negotiated(addr, only(suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256)).await,
        None,
        "a suite outside the list gets no handshake"
    );
    let r = https_get(
        addr,
        "shop.example.com",
        "/",
        only(suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384),
    )
    .await;
    assert_eq!(r, Some((200, "web /".into())));
    // The client prefers AES-256, the list ChaCha20: the list's order decides.
    let both = client(
        &pki,
        TLS12,
        Some(vec![
            suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        ]),
        None,
    );
    assert_eq!(
        negotiated(addr, both).await,
        Some(("TLSv1_2".into(), "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256".into()))
    );
    // TLS 1.3's suites are not chosen by the list (as in Envoy).
    let (version, _) = negotiated(addr, client(&pki, BOTH, None, None)).await.unwrap();
    assert_eq!(version, "TLSv1_3");
}

#[tokio::test]
async fn client_certificates_without_a_listed_name_are_refused() {
    let pki = Pki::new();
    let app = Upstream::start("web").await;
    let cert = inline(&pki.dns_leaf("shop.example.com"));
    let ca = json!({"inline": pki.root_pem()});
    let names = json!([WEB, "client.example.com"]);
    let as_ = |leaf: Option<&Leaf>| client(&pki, BOTH, None, leaf);
    let get = |addr, cfg| https_get(addr, "shop.example.com", "/", cfg);

    let tls = json!({"mode": "mutual", "certificate": cert, "clientCa": ca, "clientSubjectAltNames": names});
    let (_mutual, addr) = gateway(tls, &app).await;
    assert_eq!(get(addr, as_(Some(&pki.leaf(WEB)))).await, Some((200, "web /".into())));
    let dns = pki.dns_leaf("client.example.com");
    assert_eq!(get(addr, as_(Some(&dns))).await, Some((200, "web /".into())));
    assert_eq!(get(addr, as_(Some(&pki.leaf(OTHER)))).await, None, "a name not listed");

    let tls = json!({"mode": "optionalMutual", "certificate": cert, "clientCa": ca, "clientSubjectAltNames": names});
    let (_optional, addr) = gateway(tls, &app).await;
    assert_eq!(
        get(addr, as_(None)).await,
        Some((200, "web /".into())),
        "no certificate, no name to check"
    );
    assert_eq!(get(addr, as_(Some(&pki.leaf(OTHER)))).await, None);
    assert_eq!(app.hits(), 3);

    // ISTIO_MUTUAL: the mesh's clients, by SPIFFE ID.
    let config = https_gateway(
        json!({"mode": "istioMutual", "clientSubjectAltNames": [WEB]}),
        Some(pki.identity(GATEWAY)),
        json!([]),
        &app,
    );
    let gw = Proxy::start(config).await;
    let port = gw.addr("https").await.port();
    let web = Proxy::start(mesh_client(&pki, WEB, GATEWAY, None, port)).await;
    let r = get_plain(&web).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let other = Proxy::start(mesh_client(&pki, OTHER, GATEWAY, None, port)).await;
    let r = get_plain(&other).await;
    assert_eq!(r.status, 503, "another mesh identity gets no connection: {}", r.body);
    assert_eq!(app.hits(), 4);
}

/// A plaintext request through a sidecar's outbound listener.
async fn get_plain(sidecar: &Proxy) -> Reply {
    get(sidecar.addr("outbound").await, "shop.example.com", "/").await
}
