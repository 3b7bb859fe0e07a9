//! The whole operator against kubesim: it creates and keeps its root in a Secret, becomes
//! ready once the registry syncs, signs a pod's CSR authenticated by its ServiceAccount token
//! over TLS, and pushes the pod's configuration over mutual TLS — only to the pod's identity.

mod support;

use std::time::Duration;

use rcgen::{CertificateParams, KeyPair, SanType};
use support::{cluster_with_web, http_get, operator_config, published_roots, until};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use trellis_operator::app;
use trellis_push::v1::certificates_client::CertificatesClient;
use trellis_push::v1::config_push_client::ConfigPushClient;
use trellis_push::{Hello, ProxyMessage, SignRequest};

async fn channel(addr: std::net::SocketAddr, root: &str, identity: Option<Identity>) -> Channel {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(root))
        .domain_name("localhost");
    if let Some(id) = identity {
        tls = tls.identity(id);
    }
    Channel::from_shared(format!("https://127.0.0.1:{}", addr.port()))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_issues_identities_and_pushes_config_over_mtls() {
    let (cluster, pod) = cluster_with_web();
    let client = cluster.client().await.unwrap();
    let op = app::start(operator_config(0, 3600), client.clone())
        .await
        .expect("the operator starts");

    // The root is kept in a Secret and reused by the next start.
    let secret = support::ca_secret_field(&cluster, ".data.ca\\.crt");
    assert!(!secret.is_empty());
    let again = app::load_or_create_root(&client, "trellis-system", "cluster.local")
        .await
        .unwrap();
    assert_eq!(again.cert_pem(), op.root_pem, "a restart keeps the same root");

    // The root is published to every namespace for proxies' first connection.
    until("the root ConfigMap in namespace shop", 5, || {
        published_roots(&cluster, "shop") == op.root_pem
    })
    .await;

    // Admin API.
    let mut ready = 0;
    for _ in 0..100 {
        ready = http_get(op.admin_addr, "/ready").await.0;
        if ready == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ready, 200);
    assert_eq!(http_get(op.admin_addr, "/live").await.0, 200);
    let (_, metrics) = http_get(op.admin_addr, "/metrics").await;
    assert!(metrics.contains("trellis_operator_ready 1"), "{metrics}");
    let (_, metrics_text) = http_get(op.admin_addr, "/metrics").await;
    assert!(!metrics_text.contains("PRIVATE KEY"));

    // A web pod asks for its certificate with its ServiceAccount token.

    let token = cluster
        .kubectl_ok(&["-n", "shop", "create", "token", "web", "--audience", "trellis"], None)
        .unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(
        "spiffe://cluster.local/ns/shop/sa/web".try_into().unwrap(),
    )];
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    let mut certs = CertificatesClient::new(channel(op.push_addr, &op.root_pem, None).await);
    let signed = certs
        .sign(SignRequest {
            csr_pem: csr,
            token: token.trim().into(),
            namespace: "shop".into(),
            pod: pod.clone(),
        })
        .await
        .expect("signed")
        .into_inner();
    assert_eq!(signed.trust_bundle_pem, std::slice::from_ref(&op.root_pem));

    // Without a client certificate, no config.
    let hello = || {
        ProxyMessage::hello(Hello {
            namespace: "shop".into(),
            pod: pod.clone(),
            role: "sidecar".into(),
            proxy_version: "test".into(),
            current_version: String::new(),
            accepts_delta: false,
            accepts_chunks: false,
            certificate_json: Vec::new(),
        })
    };
    let mut anonymous = ConfigPushClient::new(channel(op.push_addr, &op.root_pem, None).await);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(hello()).await.unwrap();
    let err = anonymous.subscribe(ReceiverStream::new(rx)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");

    // With the workload certificate, the pod's configuration arrives.
    let identity = Identity::from_pem(&signed.cert_chain_pem, key.serialize_pem());
    let mut push = ConfigPushClient::new(channel(op.push_addr, &op.root_pem, Some(identity)).await);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(hello()).await.unwrap();
    let mut stream = push
        .subscribe(ReceiverStream::new(rx))
        .await
        .expect("subscribed")
        .into_inner();
    let snapshot = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let cfg = snapshot.config().unwrap();
    assert_eq!(
        cfg.identity.spiffe_id.as_deref(),
        Some("spiffe://cluster.local/ns/shop/sa/web")
    );
    assert!(cfg.cluster("outbound|8080||web.shop.svc.cluster.local").is_some());
    tx.send(ProxyMessage::ack(&snapshot.version)).await.unwrap();
    until("the ACK", 5, || {
        op.push
            .sync_state()
            .iter()
            .any(|p| p.acked.as_deref() == Some(snapshot.version.as_str()))
    })
    .await;
    let (_, syncz) = http_get(op.admin_addr, "/debug/syncz").await;
    assert!(syncz.contains(&snapshot.version), "{syncz}");

    // Another identity cannot subscribe as this pod: a payment certificate is refused.
    cluster
        .kubectl_ok(&["-n", "shop", "create", "serviceaccount", "payment"], None)
        .unwrap();
    let token = cluster
        .kubectl_ok(
            &["-n", "shop", "create", "token", "payment", "--audience", "trellis"],
            None,
        )
        .unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(
        "spiffe://cluster.local/ns/shop/sa/payment".try_into().unwrap(),
    )];
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    let payment = certs
        .sign(SignRequest {
            csr_pem: csr,
            token: token.trim().into(),
            namespace: "shop".into(),
            pod: "payment-1".into(),
        })
        .await
        .expect("payment gets its own identity")
        .into_inner();
    let identity = Identity::from_pem(&payment.cert_chain_pem, key.serialize_pem());
    let mut impostor = ConfigPushClient::new(channel(op.push_addr, &op.root_pem, Some(identity)).await);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(hello()).await.unwrap();
    let err = impostor.subscribe(ReceiverStream::new(rx)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
    assert!(
        err.message().contains("runs as spiffe://cluster.local/ns/shop/sa/web"),
        "{}",
        err.message()
    );
    op.stop();
}
