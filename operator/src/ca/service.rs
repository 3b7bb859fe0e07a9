//! The gRPC `Certificates` service: a proxy sends a CSR with its pod's projected
//! ServiceAccount token; the operator verifies the token (a TokenReview, behind
//! [`TokenReviewer`]), checks that the caller asks for its own pod's identity, and signs.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use trellis_push::v1::certificates_server::Certificates;
use trellis_push::{SignRequest, SignResponse};

use super::{Authorized, CaError, MeshRoots};
use crate::metrics::{Metrics, Refusal};

/// The audience proxies request for their projected tokens, so a token minted for Trellis
/// cannot be replayed against the API server and vice versa.
pub const TOKEN_AUDIENCE: &str = "trellis";

/// Who a verified token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenIdentity {
    /// The ServiceAccount's namespace.
    pub namespace: String,
    /// The ServiceAccount's name.
    pub service_account: String,
    /// The pod the token is bound to, when the token is pod-bound.
    pub pod: Option<String>,
}

/// Verifies ServiceAccount tokens (the operator uses the Kubernetes TokenReview API).
#[tonic::async_trait]
pub trait TokenReviewer: Send + Sync + 'static {
    /// The identity of a valid token for `audience`, or why it is not valid.
    async fn review(&self, token: &str, audience: &str) -> Result<TokenIdentity, String>;
}

/// The `Certificates` service.
pub struct CertificateService {
    roots: Arc<MeshRoots>,
    reviewer: Arc<dyn TokenReviewer>,
    trust_domains: crate::trust_domain::Source,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for CertificateService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateService")
            .field("trust_domains", &self.trust_domains)
            .finish_non_exhaustive()
    }
}

impl CertificateService {
    /// A service signing with the issuing root of `roots` for identities in the trust domain
    /// `trust_domains` names at each request (a CSR may name the identity in one of its
    /// aliases; the certificate carries the trust domain), returning the current trust bundle
    /// (several roots during a root rotation).
    pub fn new(
        roots: Arc<MeshRoots>,
        reviewer: Arc<dyn TokenReviewer>,
        trust_domains: impl Into<crate::trust_domain::Source>,
    ) -> Self {
        CertificateService {
            roots,
            reviewer,
            trust_domains: trust_domains.into(),
            metrics: Arc::default(),
        }
    }

    /// Count issued and refused certificates in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Sign a request (the transport-free core of [`Certificates::sign`]).
    pub async fn handle(&self, req: &SignRequest) -> Result<SignResponse, Status> {
        match self.sign(req).await {
            Ok(resp) => {
                self.metrics.certificates_issued.inc();
                Ok(resp)
            }
            Err((why, status)) => {
                self.metrics.refused(why);
                Err(status)
            }
        }
    }

    async fn sign(&self, req: &SignRequest) -> Result<SignResponse, (Refusal, Status)> {
        if req.token.is_empty() {
            return Err((
                Refusal::Unauthenticated,
                Status::unauthenticated(
                    "no ServiceAccount token: mount a projected token with audience \"trellis\" and send it",
                ),
            ));
        }
        let who = self.reviewer.review(&req.token, TOKEN_AUDIENCE).await.map_err(|e| {
            (
                Refusal::Unauthenticated,
                Status::unauthenticated(format!("the ServiceAccount token was not accepted: {e}")),
            )
        })?;
        if who.namespace != req.namespace {
            return Err((
                Refusal::WrongPod,
                Status::permission_denied(format!(
                    "the token belongs to namespace {:?} but the request is for {:?}",
                    who.namespace, req.namespace
                )),
            ));
        }
        if let Some(pod) = &who.pod
            && *pod != req.pod
        {
            return Err((
                Refusal::WrongPod,
                Status::permission_denied(format!(
                    "the token is bound to pod {pod:?} but the request is for pod {:?}",
                    req.pod
                )),
            ));
        }
        let authorized =
            Authorized::service_account_in(&self.trust_domains.get(), &who.namespace, &who.service_account);
        let (leaf, issuer) = self.roots.sign(&req.csr_pem, &authorized).map_err(|e| match e {
            CaError::BadCsr(_) => (Refusal::BadCsr, Status::invalid_argument(e.to_string())),
            CaError::IdentityMismatch { .. } => (Refusal::IdentityMismatch, Status::permission_denied(e.to_string())),
            _ => (Refusal::Internal, Status::internal(e.to_string())),
        })?;
        tracing::info!(identity = %leaf.spiffe_id, pod = %req.pod, root = %issuer, "issued a workload certificate");
        let unix = |t: std::time::SystemTime| {
            t.duration_since(std::time::SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0)
        };
        Ok(SignResponse {
            cert_chain_pem: leaf.cert_chain_pem,
            trust_bundle_pem: self.roots.bundle().borrow().roots_pem.clone(),
            not_before_unix: unix(leaf.not_before),
            not_after_unix: unix(leaf.not_after),
            issuer_fingerprint: issuer,
        })
    }
}

#[tonic::async_trait]
impl Certificates for CertificateService {
    async fn sign(&self, request: Request<SignRequest>) -> Result<Response<SignResponse>, Status> {
        self.handle(request.get_ref()).await.map(Response::new)
    }
}

/// [`TokenReviewer`] backed by the Kubernetes TokenReview API.
#[derive(Clone)]
pub struct KubeTokenReviewer {
    client: kube::Client,
}

impl std::fmt::Debug for KubeTokenReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KubeTokenReviewer")
    }
}

impl KubeTokenReviewer {
    /// A reviewer using `client` (which needs `create` on `tokenreviews`).
    pub fn new(client: kube::Client) -> Self {
        KubeTokenReviewer { client }
    }
}

#[tonic::async_trait]
impl TokenReviewer for KubeTokenReviewer {
    async fn review(&self, token: &str, audience: &str) -> Result<TokenIdentity, String> {
        use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: Some(vec![audience.to_string()]),
            },
            ..TokenReview::default()
        };
        let api: kube::Api<TokenReview> = kube::Api::all(self.client.clone());
        let result = api
            .create(&kube::api::PostParams::default(), &review)
            .await
            .map_err(|e| {
                format!("TokenReview failed (does the operator's ClusterRole allow creating tokenreviews?): {e}")
            })?;
        let status = result.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            return Err(status
                .error
                .unwrap_or_else(|| "the API server did not authenticate the token".into()));
        }
        if let Some(auds) = &status.audiences
            && !auds.iter().any(|a| a == audience)
        {
            return Err(format!("the token is not for audience {audience:?}"));
        }
        let user = status.user.unwrap_or_default();
        let username = user.username.unwrap_or_default();
        // ServiceAccount users are "system:serviceaccount:<namespace>:<name>".
        let Some(rest) = username.strip_prefix("system:serviceaccount:") else {
            return Err(format!("{username:?} is not a ServiceAccount"));
        };
        let Some((namespace, service_account)) = rest.split_once(':') else {
            return Err(format!("{username:?} is not a ServiceAccount"));
        };
        let pod = user
            .extra
            .as_ref()
            .and_then(|e| e.get("authentication.kubernetes.io/pod-name"))
            .and_then(|v| v.first())
            .cloned();
        Ok(TokenIdentity {
            namespace: namespace.into(),
            service_account: service_account.into(),
            pod,
        })
    }
}
