//! The webhook server: HTTPS on port 15017 (HTTP/1.1 and HTTP/2, as the API server speaks
//! either), a certificate from the mesh CA reissued in place ([`crate::serving`]), `POST
//! /validate` and `POST /inject`, bodies limited to [`super::MAX_BODY_BYTES`].
//!
//! [`Webhooks::handle`] is the transport-free core (a path and a body in, a status and an
//! AdmissionReview out); [`serve`] is the I/O around it, and times every answer from the
//! request read to the answer written (`trellis_operator_admission_seconds`, see
//! [`crate::metrics::AdmissionSeconds`]), split into the wait for a worker, for the body and the
//! answer ([`crate::metrics::AdmissionPhases`]). The certificate is kept current by
//! [`super::certificate`].
//!
//! The server has no side effect: a pod the injector skips is labelled by its patch
//! (`trellis.dev/injection-skipped`), and the event about it is published by
//! [`super::skipped`] once the pod exists — which is why both webhook configurations declare
//! `sideEffects: None`.
//!
//! # Guarantees
//! Every request gets an answer: a malformed, oversized or misdirected body is a clear
//! refusal (an AdmissionReview with `allowed: false` when the request's uid could be read),
//! never a panic.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use base64::Engine as _;
use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::{Method, Request, Response, StatusCode};
use kube::core::admission::AdmissionResponse;
use tokio::net::TcpListener;
use tokio::sync::watch;
use trellis_manifests::install::webhooks::{INJECT_PATH, VALIDATE_PATH};
use trellis_manifests::sidecar::Settings;

use super::inject::memo::Memo;
use super::{MAX_BODY_BYTES, Reply, refusal};
use crate::index;
use crate::metrics::Metrics;
use crate::serving::ServingTls;
use crate::settings::{Defaults, Settings as MeshSettings};

/// What the webhooks answer from.
pub struct Webhooks {
    /// The operator's index (cross-object checks, namespace labels, the Mesh).
    pub index: index::Shared,
    /// The sidecar when the Mesh names no proxy image.
    pub defaults: Settings,
    /// The Mesh's valid settings, as this replica follows them: the proxy image and trust
    /// domain injected.
    mesh: watch::Receiver<MeshSettings>,
    /// Where reviews are counted and timed (`/metrics`).
    pub metrics: Arc<Metrics>,
    /// The injector's remembered answers.
    memo: Memo,
}

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhooks")
            .field("defaults", &self.defaults)
            .field("memo", &self.memo.size())
            .finish_non_exhaustive()
    }
}

/// One answer: the HTTP status and the AdmissionReview body.
#[derive(Debug)]
pub struct Answer {
    /// 200 for every AdmissionReview answer, 4xx when there is nothing to answer to.
    pub status: StatusCode,
    /// JSON.
    pub body: Vec<u8>,
    /// What became of the review (the `outcome` label): `allowed`, `warned`, `patched`,
    /// `denied`, `malformed`.
    pub outcome: &'static str,
}

/// The AdmissionReview answer as JSON, its patch base64-encoded as Kubernetes writes `[]byte`
/// (kube serializes it as an array of numbers, which the API server also reads, but not every
/// client does). The patch is encoded on its own: as a JSON value, each of its bytes would be
/// a number of its own (thousands per injected pod).
fn review_body(reply: impl Into<Reply>) -> Vec<u8> {
    /// `AdmissionReview` with its response, as kube serializes it, and the patch last.
    #[derive(serde::Serialize)]
    struct Written<'a> {
        #[serde(rename = "apiVersion")]
        api_version: &'a str,
        kind: &'a str,
        response: WrittenResponse<'a>,
    }
    #[derive(serde::Serialize)]
    struct WrittenResponse<'a> {
        #[serde(flatten)]
        response: &'a AdmissionResponse,
        #[serde(skip_serializing_if = "Option::is_none")]
        patch: Option<WrittenPatch<'a>>,
    }
    /// The patch's base64: as the injector keeps it, or encoded now.
    enum WrittenPatch<'a> {
        Kept(&'a serde_json::value::RawValue),
        Encoded(String),
    }
    impl serde::Serialize for WrittenPatch<'_> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            match self {
                WrittenPatch::Kept(json) => serde::Serialize::serialize(json, s),
                WrittenPatch::Encoded(base64) => s.serialize_str(base64),
            }
        }
    }
    // why: written in one pass (it was serialized into a JSON value, then the value into bytes),
    // a kept patch as it is kept.
    let Reply { mut response, patch } = reply.into();
    let encoded = response
        .patch
        .take()
        .map(|p| WrittenPatch::Encoded(base64::engine::general_purpose::STANDARD.encode(p)));
    let review = Written {
        api_version: &response.types.api_version,
        kind: &response.types.kind,
        response: WrittenResponse {
            response: &response,
            patch: patch.as_ref().map(|p| WrittenPatch::Kept(p.base64_json())).or(encoded),
        },
    };
    let patch_size = match &review.response.patch {
        Some(WrittenPatch::Kept(json)) => json.get().len(),
        Some(WrittenPatch::Encoded(base64)) => base64.len() + 2,
        None => 0,
    };
    let mut body = Vec::with_capacity(512 + patch_size);
    match serde_json::to_writer(&mut body, &review) {
        Ok(()) => body,
        Err(e) => format!(r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{{"uid":"","allowed":false,"status":{{"message":"the response does not serialize: {e}"}}}}}}"#).into_bytes(),
    }
}

fn refused(status: StatusCode, why: impl std::fmt::Display) -> Answer {
    Answer {
        status,
        body: review_body(refusal(None, &super::BadReview::NotAReview(why.to_string()))),
        outcome: "malformed",
    }
}

/// The `webhook` label of a request path.
fn webhook_of(path: &str) -> &'static str {
    match path {
        VALIDATE_PATH => "validate",
        INJECT_PATH => "inject",
        _ => "other",
    }
}

/// An answer's body that counts and times its review once hyper is done with it: hyper drops
/// a response body right after queueing its last bytes for the connection, so the time
/// recorded runs from the request read to the answer written (a connection that closes
/// before the answer is written records it too, when hyper lets go of it).
struct Timed {
    inner: Full<Bytes>,
    review: Option<Review>,
}

/// A review being answered: counted and timed when its answer is written.
struct Review {
    metrics: Arc<Metrics>,
    webhook: &'static str,
    outcome: &'static str,
    received: Instant,
    /// When its body was read (the answer phase starts).
    read: Instant,
}

impl Drop for Timed {
    fn drop(&mut self) {
        if let Some(r) = self.review.take() {
            r.metrics.admission_phases.answer.observe(r.read.elapsed());
            r.metrics.admitted(r.webhook, r.outcome, r.received.elapsed());
        }
    }
}

impl Body for Timed {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Webhooks {
    /// Webhooks answering from `index`, with the sidecar `defaults`, counted in `metrics`;
    /// they inject `defaults`' image and trust domain until [`Webhooks::following`] is given
    /// the Mesh's settings.
    pub fn new(index: index::Shared, defaults: Settings, metrics: Arc<Metrics>) -> Self {
        let (_, mesh) = watch::channel(MeshSettings::defaults(&Defaults {
            namespace: defaults.control_plane_namespace.clone(),
            proxy_image: defaults.proxy_image.clone(),
            trust_domain: defaults.trust_domain.clone(),
            ..Defaults::default()
        }));
        Webhooks {
            index,
            defaults,
            mesh,
            metrics,
            memo: Memo::default(),
        }
    }

    /// Inject the proxy image and trust domain of the Mesh's valid settings `mesh`, as they
    /// change ([`crate::index::settings::follow`]).
    pub fn following(mut self, mesh: watch::Receiver<MeshSettings>) -> Self {
        self.mesh = mesh;
        self
    }

    /// The injector's remembered answers: how many reviews were answered from them and how
    /// many decided, since the start.
    pub fn injector_memo_counts(&self) -> (u64, u64) {
        self.memo.counts()
    }

    /// Answer one `POST` of `body` to `path` (the transport-free core: [`serve`] counts and
    /// times it).
    pub fn handle(&self, path: &str, body: &[u8]) -> Answer {
        let review = match super::review(body) {
            Ok(r) => r,
            Err((uid, why)) => {
                tracing::info!(%path, error = %why, "malformed AdmissionReview refused");
                let status = if uid.is_some() {
                    StatusCode::OK
                } else {
                    StatusCode::BAD_REQUEST
                };
                return Answer {
                    status,
                    body: review_body(refusal(uid, &why)),
                    outcome: "malformed",
                };
            }
        };
        let reply = match path {
            VALIDATE_PATH => super::validate::respond(&review, &self.index).into(),
            INJECT_PATH => {
                let mesh = self.mesh.borrow().clone();
                super::inject::reply(&review, &self.index, (&self.defaults, &mesh), &self.memo)
            }
            other => super::deny(
                &review.request,
                format!("no webhook at {other}; Trellis serves {VALIDATE_PATH} and {INJECT_PATH}"),
                404,
            )
            .into(),
        };
        let response = &reply.response;
        let outcome = if !response.allowed {
            "denied"
        } else if reply.patch.is_some() || response.patch.is_some() {
            "patched"
        } else if !response.warnings.as_ref().is_none_or(Vec::is_empty) {
            "warned"
        } else {
            "allowed"
        };
        Answer {
            status: StatusCode::OK,
            body: review_body(reply),
            outcome,
        }
    }

    /// Answer `req`, whose headers were read at `received`.
    async fn serve_http(
        self: Arc<Self>,
        req: Request<Incoming>,
        received: Instant,
    ) -> Result<Response<Timed>, Infallible> {
        let polled = Instant::now();
        self.metrics.admission_phases.queued.observe(polled - received);
        let webhook = webhook_of(req.uri().path());
        let (Answer { status, body, outcome }, read) = self.clone().answer(req).await;
        self.metrics.admission_phases.body.observe(read - polled);
        let timed = |inner| Timed {
            inner,
            review: Some(Review {
                metrics: self.metrics.clone(),
                webhook,
                outcome,
                received,
                read,
            }),
        };
        let response = Response::builder()
            .status(status)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(timed(Full::new(Bytes::from(body))));
        Ok(response.unwrap_or_else(|_| Response::new(timed(Full::new(Bytes::new())))))
    }

    /// The answer to `req`, and when its body was read (now, for a request refused unread).
    async fn answer(self: Arc<Self>, req: Request<Incoming>) -> (Answer, Instant) {
        if req.method() != Method::POST {
            let answer = refused(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{} {}: webhooks take POST", req.method(), req.uri().path()),
            );
            return (answer, Instant::now());
        }
        let declared = req
            .headers()
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|n| n > MAX_BODY_BYTES) {
            return (too_large(), Instant::now());
        }
        let path = req.uri().path().to_string();
        let body = Limited::new(req.into_body(), MAX_BODY_BYTES).collect().await;
        let read = Instant::now();
        let body = match body {
            Ok(b) => b.to_bytes(),
            Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => return (too_large(), read),
            Err(e) => {
                let answer = refused(StatusCode::BAD_REQUEST, format!("reading the body failed: {e}"));
                return (answer, read);
            }
        };
        // why: validation and injection are CPU work on plain data, under a millisecond; they
        // run on the connection's task rather than a blocking pool.
        (self.handle(&path, &body), read)
    }
}

fn too_large() -> Answer {
    refused(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the body is larger than {MAX_BODY_BYTES} bytes, more than any AdmissionReview the API server sends"),
    )
}

/// Serve the webhooks on `listener` until the task is dropped: each TLS connection with the
/// certificate current when it arrived.
pub async fn serve(listener: TcpListener, tls: Arc<ServingTls>, webhooks: Arc<Webhooks>) {
    let mut incoming = std::pin::pin!(tls.incoming(listener));
    while let Some(conn) = incoming.next().await {
        let Ok(stream) = conn else { continue };
        let webhooks = webhooks.clone();
        tokio::spawn(async move {
            // why: the clock starts when hyper hands over the request (its headers read), before
            // any wait for a worker, so queueing inside the operator is counted.
            let service = hyper::service::service_fn(move |req| webhooks.clone().serve_http(req, Instant::now()));
            let builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            if let Err(e) = builder
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %e, "webhook connection ended");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::index::settings::Followed;

    #[test]
    fn a_remembered_injection_is_answered_byte_for_byte_as_a_decided_one() {
        let webhooks = || {
            Webhooks::new(
                Arc::new(std::sync::RwLock::new(index::Index::default())),
                Settings::new(&trellis_manifests::install::Options::default()),
                Arc::new(Metrics::default()),
            )
        };
        let body = |name: &str| {
            let pod = serde_json::json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "app:1",
                                          "readinessProbe": {"tcpSocket": {"port": 8080}}}]},
            });
            crate::admission::fixtures::review(("", "v1", "Pod"), "pods", Some("shop"), pod)
                .to_string()
                .into_bytes()
        };
        let remembering = webhooks();
        let decided = remembering.handle(INJECT_PATH, &body("web-1"));
        let remembered = remembering.handle(INJECT_PATH, &body("web-2"));
        assert_eq!(remembering.injector_memo_counts(), (1, 1));
        let fresh = webhooks().handle(INJECT_PATH, &body("web-2"));
        assert_eq!((remembered.status, remembered.outcome), (StatusCode::OK, "patched"));
        assert_eq!((fresh.status, fresh.outcome), (remembered.status, remembered.outcome));
        assert_eq!(
            String::from_utf8_lossy(&remembered.body),
            String::from_utf8_lossy(&fresh.body)
        );
        assert_eq!(remembered.body, decided.body, "the name is in neither answer");
    }

    #[tokio::test]
    async fn the_injector_follows_the_valid_mesh_and_an_invalid_one_changes_neither_image_nor_trust_domain() {
        let sidecar = Settings::new(&trellis_manifests::install::Options::default());
        let defaults = Defaults {
            proxy_image: sidecar.proxy_image.clone(),
            ..Defaults::default()
        };
        let followed = Followed::start(defaults.clone(), MeshSettings::defaults(&defaults));
        let webhooks = Webhooks::new(followed.index.clone(), sidecar.clone(), Arc::new(Metrics::default()))
            .following(followed.settings.clone());
        let mut settings = followed.settings.clone();
        // The image and trust domain the next pod is injected with.
        let injected = |name: &str| {
            let pod = serde_json::json!({
                "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
                "spec": {"containers": [{"name": "web", "image": "app:1"}]},
            });
            let body = crate::admission::fixtures::review(("", "v1", "Pod"), "pods", Some("shop"), pod);
            let answer = webhooks.handle(INJECT_PATH, body.to_string().as_bytes());
            let review: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
            let patch = base64::engine::general_purpose::STANDARD
                .decode(review["response"]["patch"].as_str().expect("a patch"))
                .unwrap();
            let patch: serde_json::Value = serde_json::from_slice(&patch).unwrap();
            let proxy = patch
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|op| match &op["value"] {
                    serde_json::Value::Array(containers) => containers.clone(),
                    one => vec![one.clone()],
                })
                .find(|c| c["name"] == trellis_manifests::sidecar::PROXY_CONTAINER)
                .unwrap_or_else(|| panic!("no proxy container in {patch}"));
            let env = |name: &str| {
                proxy["env"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|e| e["name"] == name)
                    .map(|e| e["value"].as_str().unwrap().to_string())
            };
            (
                proxy["image"].as_str().unwrap().to_string(),
                env("TRELLIS_TRUST_DOMAIN"),
            )
        };
        assert_eq!(
            injected("web-1"),
            (sidecar.proxy_image.clone(), Some("cluster.local".into()))
        );
        // A valid Mesh: its image and trust domain.
        followed.apply_mesh(serde_json::json!({
            "trustDomain": "prod.example",
            "versions": {"proxy": "registry.example/trellis-proxy:2"},
        }));
        followed.list();
        tokio::time::timeout(Duration::from_secs(1), settings.changed())
            .await
            .unwrap()
            .unwrap();
        let valid = (
            "registry.example/trellis-proxy:2".to_string(),
            Some("prod.example".to_string()),
        );
        assert_eq!(injected("web-2"), valid);
        // An invalid one (its rollout batch given twice) is refused whole: the pods created
        // meanwhile get the last valid Mesh's image and trust domain, not the invalid one's.
        followed.apply_mesh(serde_json::json!({
            "trustDomain": "other.example",
            "versions": {"proxy": "registry.example/trellis-proxy:3"},
            "rollout": {"batchSize": 2, "batchPercent": 10},
        }));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(injected("web-3"), valid);
        followed.stop().await;
    }

    /// The answer's body as it was written before `review_body` wrote it in one pass: the
    /// review serialized to a JSON value, the patch added to it, the value to bytes.
    fn review_body_through_a_value(mut response: AdmissionResponse) -> Vec<u8> {
        let patch = response.patch.take();
        let mut review = serde_json::to_value(response.into_review()).unwrap();
        if let Some(patch) = patch {
            review["response"].as_object_mut().unwrap().insert(
                "patch".into(),
                base64::engine::general_purpose::STANDARD.encode(patch).into(),
            );
        }
        serde_json::to_vec(&review).unwrap()
    }

    #[test]
    fn answers_are_written_byte_for_byte_as_before() {
        let body = crate::admission::fixtures::review(
            ("", "v1", "Pod"),
            "pods",
            Some("shop"),
            serde_json::json!({"metadata": {"name": "web-1"}, "spec": {"containers": []}}),
        );
        let review = crate::admission::review(body.to_string().as_bytes()).unwrap();
        let allowed = AdmissionResponse::from(&review.request);
        let mut warned = allowed.clone();
        warned.warnings = Some(vec!["a \"quoted\" warning\nover two lines".into(), "ünïcode".into()]);
        let patched = allowed
            .clone()
            .with_patch(json_patch::diff(
                &serde_json::json!({"metadata": {}}),
                &serde_json::json!({"metadata": {"labels": {"a": "b"}}}),
            ))
            .unwrap();
        let mut patched_and_warned = patched.clone();
        patched_and_warned.warnings = warned.warnings.clone();
        let responses = [
            allowed.clone(),
            warned,
            patched,
            patched_and_warned,
            crate::admission::deny(&review.request, "no: spec.containers is empty", 422),
            refusal(None, &crate::admission::BadReview::NotJson("eof".into())),
            refusal(
                Some("u1".into()),
                &crate::admission::BadReview::NotAReview("no request".into()),
            ),
        ];
        for response in responses {
            assert_eq!(
                String::from_utf8(review_body(response.clone())).unwrap(),
                String::from_utf8(review_body_through_a_value(response.clone())).unwrap()
            );
            // The same answer with its patch as the injector keeps it.
            if let Some(bytes) = response.patch.clone() {
                let mut without = response.clone();
                without.patch = None;
                let kept = Reply {
                    response: without,
                    patch: Some(crate::admission::inject::Patch::new(bytes).unwrap()),
                };
                assert_eq!(
                    String::from_utf8(review_body(kept)).unwrap(),
                    String::from_utf8(review_body_through_a_value(response)).unwrap()
                );
            }
        }
    }
}
