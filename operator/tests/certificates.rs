//! The Certificates service: token review, namespace and pod binding, identity checks.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{CertificateParams, KeyPair, SanType};
use trellis_operator::ca::service::{CertificateService, TOKEN_AUDIENCE, TokenIdentity, TokenReviewer};
use trellis_operator::ca::{DEFAULT_WORKLOAD_TTL, ManualClock, MeshRoots, SigningCert};
use trellis_operator::metrics::{Metrics, Refusal};
use trellis_push::SignRequest;

/// Tokens known to the fake API server.
struct FakeReviewer(BTreeMap<String, TokenIdentity>);

#[tonic::async_trait]
impl TokenReviewer for FakeReviewer {
    async fn review(&self, token: &str, audience: &str) -> Result<TokenIdentity, String> {
        assert_eq!(audience, TOKEN_AUDIENCE);
        self.0
            .get(token)
            .cloned()
            .ok_or_else(|| "token is not valid".to_string())
    }
}

fn service() -> (CertificateService, String) {
    let (svc, root, _) = service_with_metrics();
    (svc, root)
}

fn service_with_metrics() -> (CertificateService, String, Arc<Metrics>) {
    let now = SystemTime::now();
    let root = SigningCert::self_signed_root("cluster.local", Duration::from_secs(86400 * 365), now).unwrap();
    let root_pem = root.cert_pem().to_string();
    let roots = MeshRoots::new(root, DEFAULT_WORKLOAD_TTL, Arc::new(ManualClock::new(now)));
    let reviewer = FakeReviewer(BTreeMap::from([
        (
            "web-token".to_string(),
            TokenIdentity {
                namespace: "shop".into(),
                service_account: "web".into(),
                pod: Some("web-1".into()),
            },
        ),
        (
            "legacy-token".to_string(),
            TokenIdentity {
                namespace: "shop".into(),
                service_account: "payment".into(),
                pod: None,
            },
        ),
    ]));
    let metrics = Arc::new(Metrics::default());
    let svc =
        CertificateService::new(Arc::new(roots), Arc::new(reviewer), "cluster.local").with_metrics(metrics.clone());
    (svc, root_pem, metrics)
}

fn csr(uri: &str) -> String {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
    params.serialize_request(&key).unwrap().pem().unwrap()
}

fn req(token: &str, ns: &str, pod: &str, uri: &str) -> SignRequest {
    SignRequest {
        csr_pem: csr(uri),
        token: token.into(),
        namespace: ns.into(),
        pod: pod.into(),
    }
}

#[tokio::test]
async fn a_pod_gets_its_own_identity_and_the_trust_bundle() {
    let (svc, root) = service();
    let resp = svc
        .handle(&req(
            "web-token",
            "shop",
            "web-1",
            "spiffe://cluster.local/ns/shop/sa/web",
        ))
        .await
        .unwrap();
    assert!(resp.cert_chain_pem.contains("BEGIN CERTIFICATE"));
    assert_eq!(resp.trust_bundle_pem, [root]);
    assert_eq!(
        resp.not_after_unix - resp.not_before_unix,
        DEFAULT_WORKLOAD_TTL.as_secs() as i64 + 60
    );
}

#[tokio::test]
async fn tokens_cannot_be_used_for_other_identities_namespaces_or_pods() {
    let (svc, _, metrics) = service_with_metrics();
    let other_sa = svc
        .handle(&req(
            "web-token",
            "shop",
            "web-1",
            "spiffe://cluster.local/ns/shop/sa/payment",
        ))
        .await;
    assert_eq!(other_sa.unwrap_err().code(), tonic::Code::PermissionDenied);
    let other_ns = svc
        .handle(&req(
            "web-token",
            "bank",
            "web-1",
            "spiffe://cluster.local/ns/bank/sa/web",
        ))
        .await;
    let err = other_ns.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(err.message().contains("namespace \"shop\""), "{}", err.message());
    let other_pod = svc
        .handle(&req(
            "web-token",
            "shop",
            "web-2",
            "spiffe://cluster.local/ns/shop/sa/web",
        ))
        .await;
    assert!(other_pod.unwrap_err().message().contains("bound to pod \"web-1\""));
    let bad = svc
        .handle(&req("forged", "shop", "web-1", "spiffe://cluster.local/ns/shop/sa/web"))
        .await;
    assert_eq!(bad.unwrap_err().code(), tonic::Code::Unauthenticated);
    let none = svc
        .handle(&req("", "shop", "web-1", "spiffe://cluster.local/ns/shop/sa/web"))
        .await;
    assert!(none.unwrap_err().message().contains("projected token"));
    // A token that is not pod-bound still only yields its own service account.
    let ok = svc
        .handle(&req(
            "legacy-token",
            "shop",
            "any",
            "spiffe://cluster.local/ns/shop/sa/payment",
        ))
        .await;
    assert!(ok.is_ok());

    // Each refusal is counted by its reason; the one success as issued.
    assert_eq!(metrics.refusals(Refusal::IdentityMismatch), 1);
    assert_eq!(metrics.refusals(Refusal::WrongPod), 2);
    assert_eq!(metrics.refusals(Refusal::Unauthenticated), 2);
    assert_eq!(metrics.refusals(Refusal::BadCsr), 0);
    assert_eq!(metrics.certificates_issued.get(), 1);
    let text = metrics.render("");
    assert!(
        text.contains("trellis_operator_certificates_refused_total{reason=\"wrong_pod\"} 2"),
        "{text}"
    );
    assert!(text.contains("trellis_operator_certificates_issued_total 1"), "{text}");
}
