//! Test fixtures of the Mesh reconciler (kube-rs/controller-rs's pattern): a mock API server
//! from `tower_test::mock::pair()` that runs one [`Scenario`] and asserts each request the
//! reconciler makes, in order, and a [`Context`] over it with a fixed clock.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{Method, Request, Response};
use kube::client::Body;
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use tokio::sync::watch;

use trellis_api::mesh::{FINALIZER, Mesh, MeshSpec, MeshStatus};

use crate::dataplane::{MeshedPod, Owner, ProxyLink, ProxyRole, WorkloadKind, WorkloadRef};
use crate::rollout::plan::{Progress, Workload};

use super::conditions::{CaObservation, WebhooksObservation};
use super::settings::{Defaults, Settings};
use super::{Context, Observe};

/// The fixed "now" of the tests.
pub fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

/// Plain observations.
#[derive(Debug, Clone)]
pub struct Fixed {
    pub ca: CaObservation,
    pub webhooks: WebhooksObservation,
    pub pods: Vec<MeshedPod>,
    pub links: BTreeMap<String, ProxyLink>,
    pub workloads: Vec<Workload>,
    /// How long after [`now`] the observation is made.
    pub elapsed: Duration,
}

/// The Deployment `shop/web`.
pub fn web() -> WorkloadRef {
    WorkloadRef {
        kind: WorkloadKind::Deployment,
        namespace: "shop".into(),
        name: "web".into(),
    }
}

impl Default for Fixed {
    fn default() -> Self {
        Fixed {
            ca: CaObservation {
                mode: "SelfSigned".into(),
                trust_domain: "cluster.local".into(),
                root_fingerprint: "ab".repeat(32),
                root_expires: Some(now() + Duration::from_secs(3650 * 86400)),
                phase: "Stable".into(),
                progress: String::new(),
                problem: None,
                secret: "trellis-system/trellis-ca".into(),
                ..CaObservation::default()
            },
            webhooks: WebhooksObservation {
                ready: true,
                reason: "Serving".into(),
                message: "the webhooks are served".into(),
            },
            pods: ["web-1", "web-2"]
                .into_iter()
                .map(|name| MeshedPod {
                    namespace: "shop".into(),
                    name: name.into(),
                    role: ProxyRole::Sidecar,
                    proxy_ran: true,
                    image: Defaults::default().proxy_image,
                    owner: Owner::Workload(web()),
                    ready: true,
                    restarts: 0,
                    failing: None,
                    template: None,
                })
                .collect(),
            links: ["shop/web-1", "shop/web-2"]
                .into_iter()
                .map(|p| {
                    (
                        p.to_string(),
                        ProxyLink {
                            connected: true,
                            synced: true,
                        },
                    )
                })
                .collect(),
            workloads: vec![Workload {
                id: web(),
                labels: BTreeMap::new(),
                assigned: None,
                gateway: None,
                progress: Progress {
                    observed: true,
                    desired: 2,
                    updated: 2,
                    ready: 2,
                    total: 2,
                },
                budget_exhausted: false,
            }],
            elapsed: Duration::ZERO,
        }
    }
}

impl Observe for Fixed {
    fn ca(&self, settings: &Settings) -> CaObservation {
        CaObservation {
            trust_domain: settings.trust_domain.clone(),
            ..self.ca.clone()
        }
    }
    fn webhooks(&self) -> WebhooksObservation {
        self.webhooks.clone()
    }
    fn pods(&self) -> Vec<MeshedPod> {
        self.pods.clone()
    }
    fn links(&self) -> BTreeMap<String, ProxyLink> {
        self.links.clone()
    }
    fn workloads(&self) -> Vec<Workload> {
        self.workloads.clone()
    }
    fn now(&self) -> SystemTime {
        now() + self.elapsed
    }
}

/// Observations a test changes between two reconciles of one [`Context`] (the cluster moved on).
#[derive(Debug, Default)]
pub struct Changing(pub std::sync::Mutex<Fixed>);

impl Changing {
    /// The observations now.
    fn current(&self) -> Fixed {
        self.0.lock().expect("not poisoned").clone()
    }
    /// Change them.
    pub fn set(&self, f: impl FnOnce(&mut Fixed)) {
        f(&mut self.0.lock().expect("not poisoned"));
    }
}

impl Observe for Changing {
    fn ca(&self, settings: &Settings) -> CaObservation {
        self.current().ca(settings)
    }
    fn webhooks(&self) -> WebhooksObservation {
        self.current().webhooks
    }
    fn pods(&self) -> Vec<MeshedPod> {
        self.current().pods
    }
    fn links(&self) -> BTreeMap<String, ProxyLink> {
        self.current().links
    }
    fn workloads(&self) -> Vec<Workload> {
        self.current().workloads
    }
    fn now(&self) -> SystemTime {
        self.current().now()
    }
}

/// A Mesh named `name` with `spec`.
pub fn mesh(name: &str, spec: Value) -> Mesh {
    let spec: MeshSpec = serde_json::from_value(spec).expect("a valid MeshSpec shape");
    let mut m = Mesh::new(name, spec);
    m.metadata.generation = Some(3);
    m.metadata.uid = Some("uid-1".into());
    m
}

/// Test helpers on a Mesh.
pub trait MeshFixture {
    /// With the finalizer.
    fn finalized(self) -> Self;
    /// Being deleted.
    fn deleted(self) -> Self;
    /// With this status.
    fn with_status(self, status: MeshStatus) -> Self;
}

impl MeshFixture for Mesh {
    fn finalized(mut self) -> Self {
        self.finalizers_mut().push(FINALIZER.to_string());
        self
    }
    fn deleted(mut self) -> Self {
        self.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
        ));
        self
    }
    fn with_status(mut self, status: MeshStatus) -> Self {
        self.status = Some(status);
        self
    }
}

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// The mock API server.
#[allow(missing_debug_implementations)]
pub struct ApiServerVerifier(Handle);

/// One expected request.
#[allow(missing_debug_implementations)]
pub enum Step {
    /// An event with this reason.
    Event(String),
    /// A new event (not a repeat of an earlier one) with this reason whose note contains this.
    EventSaying(String, String),
    /// The status, by server-side apply (sent back on the channel).
    Status(tokio::sync::oneshot::Sender<MeshStatus>),
    /// A merge patch of a workload's pod template assigning `image` and restarting it.
    Assign {
        /// The workload's URL path.
        path: String,
        /// The image assigned.
        image: String,
    },
    /// [`Step::Assign`] with this `kubectl.kubernetes.io/restartedAt`.
    AssignRestartedAt {
        /// The workload's URL path.
        path: String,
        /// The image assigned.
        image: String,
        /// The restart annotation's value.
        at: String,
    },
    /// A strategic merge patch of a gateway workload's proxy container (`gateway`) to `image`,
    /// with its version label and a restart.
    AssignGateway {
        /// The workload's URL path.
        path: String,
        /// The image assigned.
        image: String,
    },
    /// A strategic merge patch of the operator's Deployment to `image`.
    UpgradeOperator {
        /// The image.
        image: String,
    },
}

impl Step {
    /// What the reconcile that starts a rollout asks first: the `Ready`,
    /// `DataPlaneUpToDate=False` and `RolloutProgressing` events, then the status (sent back
    /// on `status`); the wave's assignments follow.
    pub fn rollout_starts(status: tokio::sync::oneshot::Sender<MeshStatus>) -> Vec<Step> {
        vec![
            Step::Event("Ready".into()),
            Step::Event("DataPlaneUpToDateFalse".into()),
            Step::Event("RolloutProgressing".into()),
            Step::Status(status),
        ]
    }
}

/// What the reconciler is expected to ask, in order.
#[allow(missing_debug_implementations)]
pub enum Scenario {
    /// These requests, in this order.
    Steps(Vec<Step>),
    /// A JSON patch adding the finalizer, and nothing else.
    FinalizerCreation(Mesh),
    /// Events with these reasons, then a server-side apply of the status; the status written
    /// is sent back on the channel.
    EventsThenStatus(Vec<String>, Mesh, tokio::sync::oneshot::Sender<MeshStatus>),
    /// Events with these reasons, then the status patch fails with a 500.
    EventsThenStatusFails(Vec<String>),
    /// No request at all.
    RadioSilence,
    /// Cleanup: list and delete trust ConfigMaps, list webhook configurations and delete them,
    /// an event, then the finalizer removed.
    Cleanup {
        /// `(namespace, name)` of the ConfigMaps the list returns.
        configmaps: Vec<(String, String)>,
        /// Names of the mutating webhook configurations the list returns.
        mutating: Vec<String>,
        /// The Mesh.
        mesh: Mesh,
    },
}

/// Await the scenario, failing the test on a missing request.
pub async fn timeout_after_1s(handle: tokio::task::JoinHandle<()>) {
    tokio::time::timeout(Duration::from_secs(1), handle)
        .await
        .expect("the reconciler made every request the scenario expects")
        .expect("the scenario's assertions hold");
}

async fn body_json(request: Request<Body>) -> Value {
    let bytes = request.into_body().collect_bytes().await.expect("a request body");
    if bytes.is_empty() {
        return Value::Null;
    }
    serde_json::from_slice(&bytes).expect("a JSON request body")
}

fn respond(send: tower_test::mock::SendResponse<Response<Body>>, body: &Value) {
    send.send_response(
        Response::builder()
            .body(Body::from(serde_json::to_vec(body).expect("JSON")))
            .expect("a response"),
    );
}

fn list(kind: &str, items: Vec<Value>) -> Value {
    json!({"apiVersion": "v1", "kind": format!("{kind}List"), "metadata": {"resourceVersion": "1"}, "items": items})
}

impl ApiServerVerifier {
    /// Run `scenario` against the reconciler's requests.
    pub fn run(self, scenario: Scenario) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            match scenario {
                Scenario::Steps(steps) => {
                    let mut s = self;
                    for step in steps {
                        s = match step {
                            Step::Event(reason) => s.event(&reason).await,
                            Step::EventSaying(reason, says) => s.event_saying(&reason, &says).await,
                            Step::Status(tx) => {
                                let (s, status) = s.status_patch(mesh("default", json!({}))).await;
                                let _ = tx.send(status);
                                s
                            }
                            Step::Assign { path, image } => s.assignment(&path, &image, None).await,
                            Step::AssignRestartedAt { path, image, at } => s.assignment(&path, &image, Some(&at)).await,
                            Step::AssignGateway { path, image } => s.gateway_assignment(&path, &image).await,
                            Step::UpgradeOperator { image } => s.operator_upgrade(&image).await,
                        };
                    }
                    s
                }
                Scenario::FinalizerCreation(mesh) => self.finalizer_added(mesh).await,
                Scenario::EventsThenStatus(reasons, mesh, tx) => {
                    let mut s = self;
                    for r in reasons {
                        s = s.event(&r).await;
                    }
                    let (s, status) = s.status_patch(mesh).await;
                    let _ = tx.send(status);
                    s
                }
                Scenario::EventsThenStatusFails(reasons) => {
                    let mut s = self;
                    for r in reasons {
                        s = s.event(&r).await;
                    }
                    s.status_patch_fails().await
                }
                Scenario::RadioSilence => self,
                Scenario::Cleanup {
                    configmaps,
                    mutating,
                    mesh,
                } => self.cleanup(configmaps, mutating, mesh).await,
            };
        })
    }

    async fn next(&mut self) -> (Request<Body>, tower_test::mock::SendResponse<Response<Body>>) {
        self.0
            .next_request()
            .await
            .expect("the reconciler made another request")
    }

    async fn finalizer_added(mut self, mesh: Mesh) -> Self {
        let (request, send) = self.next().await;
        assert_eq!(request.method(), Method::PATCH);
        assert_eq!(
            request.uri().to_string(),
            format!("/apis/mesh.trellis.dev/v1alpha1/meshes/{}?", mesh.name_any())
        );
        let patch = body_json(request).await;
        assert_eq!(
            patch,
            json!([
                {"op": "test", "path": "/metadata/finalizers", "value": null},
                {"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]},
            ])
        );
        respond(send, &serde_json::to_value(mesh.finalized()).expect("JSON"));
        self
    }

    async fn event(self, reason: &str) -> Self {
        self.event_saying(reason, "").await
    }

    async fn event_saying(mut self, reason: &str, says: &str) -> Self {
        let (request, send) = self.next().await;
        if request.method() != Method::POST {
            let what = format!("{} {}", request.method(), request.uri());
            panic!(
                "expected a new event {reason} saying {says:?}, got {what}: {}",
                body_json(request).await
            );
        }
        assert!(
            request.uri().path().starts_with("/apis/events.k8s.io/v1/namespaces/")
                && request.uri().path().ends_with("/events"),
            "expected the event {reason}, got {}",
            request.uri()
        );
        let event = body_json(request).await;
        assert_eq!(event["reason"], reason, "event {event}");
        assert!(
            event["note"].as_str().is_some_and(|n| n.contains(says)),
            "event {reason} should say {says:?}: {event}"
        );
        assert_eq!(event["regarding"]["kind"], "Mesh");
        respond(send, &event);
        self
    }

    async fn status_patch(mut self, mesh: Mesh) -> (Self, MeshStatus) {
        let (request, send) = self.next().await;
        if request.method() != Method::PATCH {
            let uri = request.uri().to_string();
            panic!("expected the status, got {uri}: {}", body_json(request).await);
        }
        assert_eq!(
            request.uri().to_string(),
            format!(
                "/apis/mesh.trellis.dev/v1alpha1/meshes/{}/status?&force=true&fieldManager=trellis-operator",
                mesh.name_any()
            )
        );
        assert_eq!(
            request.headers().get("content-type").and_then(|v| v.to_str().ok()),
            Some("application/apply-patch+yaml"),
            "the status is written by server-side apply"
        );
        let body = body_json(request).await;
        assert_eq!(body["apiVersion"], "mesh.trellis.dev/v1alpha1");
        assert_eq!(body["kind"], "Mesh");
        let status: MeshStatus = serde_json::from_value(body["status"].clone()).expect("a MeshStatus");
        respond(
            send,
            &serde_json::to_value(mesh.with_status(status.clone())).expect("JSON"),
        );
        (self, status)
    }

    async fn assignment(mut self, path: &str, image: &str, at: Option<&str>) -> Self {
        let (request, send) = self.next().await;
        assert_eq!(request.method(), Method::PATCH);
        assert_eq!(request.uri().path(), path);
        assert_eq!(
            request.headers().get("content-type").and_then(|v| v.to_str().ok()),
            Some("application/merge-patch+json")
        );
        let patch = body_json(request).await;
        let annotations = &patch["spec"]["template"]["metadata"]["annotations"];
        assert_eq!(annotations[trellis_api::mesh::PROXY_IMAGE_ANNOTATION], image);
        assert!(
            annotations[trellis_api::mesh::RESTARTED_AT_ANNOTATION].is_string(),
            "restarted as kubectl rollout restart does: {patch}"
        );
        if let Some(at) = at {
            assert_eq!(annotations[trellis_api::mesh::RESTARTED_AT_ANNOTATION], at, "{patch}");
        }
        respond(
            send,
            &json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "shop"}}),
        );
        self
    }

    async fn gateway_assignment(mut self, path: &str, image: &str) -> Self {
        let (request, send) = self.next().await;
        assert_eq!((request.method(), request.uri().path()), (&Method::PATCH, path));
        let content_type = request.headers().get("content-type").and_then(|v| v.to_str().ok());
        assert_eq!(content_type, Some("application/strategic-merge-patch+json"));
        let template = body_json(request).await["spec"]["template"].take();
        let container = json!([{"name": trellis_manifests::sidecar::GATEWAY_CONTAINER, "image": image}]);
        assert_eq!(template["spec"], json!({"containers": container}), "{template}");
        let version = trellis_manifests::sidecar::version_label(image);
        assert_eq!(
            template["metadata"]["labels"],
            json!({"trellis.dev/proxy-version": version})
        );
        assert!(template["metadata"]["annotations"][trellis_api::mesh::RESTARTED_AT_ANNOTATION].is_string());
        assert!(
            template["metadata"]["annotations"][trellis_api::mesh::PROXY_IMAGE_ANNOTATION].is_null(),
            "a gateway is not injected: {template}"
        );
        respond(
            send,
            &json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "gw"}}),
        );
        self
    }

    async fn operator_upgrade(mut self, image: &str) -> Self {
        let (request, send) = self.next().await;
        assert_eq!(request.method(), Method::PATCH);
        assert_eq!(
            request.uri().path(),
            "/apis/apps/v1/namespaces/trellis-system/deployments/trellis-operator"
        );
        assert_eq!(
            request.headers().get("content-type").and_then(|v| v.to_str().ok()),
            Some("application/strategic-merge-patch+json")
        );
        let patch = body_json(request).await;
        let container = &patch["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(container["name"], trellis_manifests::install::OPERATOR_CONTAINER);
        assert_eq!(container["image"], image);
        assert_eq!(
            container["env"],
            json!([{"name": trellis_manifests::install::OPERATOR_IMAGE_ENV, "value": image}])
        );
        respond(
            send,
            &json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "trellis-operator", "namespace": "trellis-system"}}),
        );
        self
    }

    async fn status_patch_fails(mut self) -> Self {
        let (request, send) = self.next().await;
        assert_eq!(request.method(), Method::PATCH);
        assert!(request.uri().path().ends_with("/status"));
        send.send_response(
            Response::builder()
                .status(500)
                .body(Body::from(
                    serde_json::to_vec(&json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                        "message": "etcd is unhappy", "reason": "InternalError", "code": 500}))
                    .expect("JSON"),
                ))
                .expect("a response"),
        );
        self
    }

    async fn cleanup(mut self, configmaps: Vec<(String, String)>, mutating: Vec<String>, mesh: Mesh) -> Self {
        let (request, send) = self.next().await;
        assert_eq!(request.method(), Method::GET);
        let uri = request.uri().to_string();
        assert!(uri.starts_with("/api/v1/configmaps?"), "{uri}");
        assert!(uri.contains("fieldSelector=metadata.name%3Dtrellis-ca-root"), "{uri}");
        assert!(
            uri.contains("labelSelector=app.kubernetes.io%2Fpart-of%3Dtrellis"),
            "{uri}"
        );
        let items = configmaps
            .iter()
            .map(|(ns, name)| json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": {"name": name, "namespace": ns}}))
            .collect();
        respond(send, &list("PartialObjectMetadata", items));
        for (ns, name) in &configmaps {
            let (request, send) = self.next().await;
            assert_eq!(request.method(), Method::DELETE);
            assert_eq!(
                request.uri().path(),
                format!("/api/v1/namespaces/{ns}/configmaps/{name}")
            );
            respond(
                send,
                &json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
            );
        }
        for (kind, plural, ours, names) in [
            (
                "MutatingWebhookConfiguration",
                "mutatingwebhookconfigurations",
                trellis_manifests::install::webhooks::INJECTOR,
                mutating,
            ),
            (
                "ValidatingWebhookConfiguration",
                "validatingwebhookconfigurations",
                trellis_manifests::install::webhooks::VALIDATOR,
                Vec::new(),
            ),
        ] {
            let (request, send) = self.next().await;
            assert_eq!(request.method(), Method::GET);
            let uri = request.uri().to_string();
            assert!(
                uri.starts_with(&format!("/apis/admissionregistration.k8s.io/v1/{plural}?")),
                "{uri}"
            );
            // Listed by name: the operator's RBAC lets it read only its own two.
            assert!(uri.contains(&format!("fieldSelector=metadata.name%3D{ours}")), "{uri}");
            let items = names
                .iter()
                .map(|n| json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": {"name": n}}))
                .collect();
            respond(send, &list(kind, items));
            for n in names {
                let (request, send) = self.next().await;
                assert_eq!(request.method(), Method::DELETE);
                assert_eq!(
                    request.uri().path(),
                    format!("/apis/admissionregistration.k8s.io/v1/{plural}/{n}")
                );
                respond(
                    send,
                    &json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
                );
            }
        }
        self = self.event("Deleted").await;
        // The finalizer comes off last.
        let (request, send) = self.next().await;
        assert_eq!(request.method(), Method::PATCH);
        assert_eq!(
            request.uri().to_string(),
            format!("/apis/mesh.trellis.dev/v1alpha1/meshes/{}?", mesh.name_any())
        );
        let patch = body_json(request).await;
        assert_eq!(
            patch[0],
            json!({"op": "test", "path": "/metadata/finalizers/0", "value": FINALIZER})
        );
        assert_eq!(patch[1]["op"], "remove");
        respond(send, &serde_json::to_value(&mesh).expect("JSON"));
        self
    }
}

impl Context {
    /// A context over a mock API server with `observe`, and the settings receiver.
    pub fn test(observe: Fixed) -> (Arc<Context>, ApiServerVerifier, watch::Receiver<Settings>) {
        Context::test_observing(Arc::new(observe))
    }

    /// A context over a mock API server with `observe`, and the settings receiver.
    pub fn test_observing(observe: Arc<dyn Observe>) -> (Arc<Context>, ApiServerVerifier, watch::Receiver<Settings>) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, "default");
        let defaults = Defaults::default();
        let (tx, rx) = watch::channel(Settings::defaults(&defaults));
        let ctx = Context::new(client, Arc::default(), defaults, observe, tx);
        (Arc::new(ctx), ApiServerVerifier(handle), rx)
    }
}

/// The condition of `type_` in `status`.
pub fn condition<'a>(
    status: &'a MeshStatus,
    type_: &str,
) -> &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {status:?}"))
}
