//! A change of the Mesh's trust domain in the running operator (kubesim; upstream Kubernetes
//! with `TRELLIS_E2E_CLUSTER=upstream`, the operator holding exactly its installed RBAC): the
//! certificates the operator serves itself — the push API's and the admission webhooks' — name
//! it in the new domain without a restart, and a root it generates afterwards is named after
//! the new domain. (The proxies' side of a change is `e2e/tests/trust_domain.rs`.)

mod support;

use std::net::SocketAddr;
use std::sync::Arc;

use support::{cluster_with_web, free_port, operator_client, operator_config, until, until_async};
use trellis_operator::app;

const MESH: &str = "apiVersion: mesh.trellis.dev/v1alpha1\nkind: Mesh\nmetadata: {name: default}\nspec: {trustDomain: cluster.local}\n";

/// The SPIFFE ID of the certificate the server at `addr` presents (verified against `root_pem`
/// for the name `localhost`, as its DNS names include it); the error says why there is none.
async fn served_identity(addr: SocketAddr, root_pem: &str) -> Result<String, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut root_pem.as_bytes()) {
        roots.add(cert.map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", addr.port()))
        .await
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    let name = rustls::pki_types::ServerName::try_from("localhost").map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS handshake with {addr}: {e}"))?;
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or_else(|| format!("{addr} presented no certificate"))?;
    trellis_push::identity::spiffe_id_of(leaf.as_ref())
        .map(|id| id.to_string())
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operators_own_certificates_and_its_next_root_follow_a_trust_domain_change() {
    let (cluster, _pod) = cluster_with_web();
    cluster.apply(MESH).unwrap();
    let op = app::start(operator_config(free_port(), 3600), operator_client(&cluster).await)
        .await
        .expect("the operator starts");
    let root = op.root_pem.clone();
    let servers = [("the push API", op.push_addr), ("the webhooks", op.webhook_addr)];
    for (what, addr) in servers {
        assert_eq!(
            served_identity(addr, &root).await.as_deref(),
            Ok("spiffe://cluster.local/ns/trellis-system/sa/trellis-operator"),
            "{what} at start"
        );
    }

    cluster
        .kubectl_ok(
            &[
                "patch",
                "mesh",
                "default",
                "--type",
                "merge",
                "-p",
                r#"{"spec":{"trustDomain":"prod.example"}}"#,
            ],
            None,
        )
        .unwrap();
    let moved = "spiffe://prod.example/ns/trellis-system/sa/trellis-operator";
    for (what, addr) in servers {
        until_async(&format!("{what} serves a certificate naming {moved}"), 20, || {
            let root = root.clone();
            async move { served_identity(addr, &root).await.as_deref() == Ok(moved) }
        })
        .await;
    }

    // A root generated after the change (here asked for by hand; also at expiry) is named
    // after the new domain. The one in use keeps its name: a domain change rotates no root.
    let old: Vec<String> = op.roots.status().roots.into_iter().map(|r| r.fingerprint).collect();
    support::ask_for_a_new_root(&cluster);
    until("the operator holds a new root", 30, || {
        op.roots.status().roots.iter().any(|r| !old.contains(&r.fingerprint))
    })
    .await;
    let status = op.roots.status();
    let new = status
        .roots
        .iter()
        .find(|r| !old.contains(&r.fingerprint))
        .expect("the new root");
    assert!(
        new.subject.contains("prod.example"),
        "the new root is named {:?}, not after the Mesh's trust domain prod.example",
        new.subject
    );
    op.stop();
}
