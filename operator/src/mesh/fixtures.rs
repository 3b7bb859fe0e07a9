//! Test fixtures of the Mesh reconciler (kube-rs/controller-rs's pattern): what the reconciler
//! observes, as plain data ([`Fixed`], or [`Changing`] between reconciles) at a fixed "now",
//! the Meshes it is given, and ([`api_server`]) a mock API server that runs one [`Scenario`]
//! and asserts each request the reconciler makes, in order, with a [`super::Context`] over it.

pub mod api_server;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use kube::ResourceExt;
use serde_json::Value;
use trellis_api::mesh::{FINALIZER, Mesh, MeshSpec, MeshStatus};

pub use self::api_server::{ApiServerVerifier, Scenario, Step, reconciles_silently, running, timeout_after_1s};
use super::Observe;
use super::conditions::{CaObservation, WebhooksObservation};
use crate::dataplane::{MeshedPod, Owner, ProxyLink, ProxyRole, WorkloadKind, WorkloadRef};
use crate::rollout::plan::{Progress, Workload};
use crate::settings::{Defaults, Settings};

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
