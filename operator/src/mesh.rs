//! The Mesh reconciler: a kube-runtime `Controller` on the cluster-scoped `Mesh`, run by the
//! leader only (shaped like kube-rs/controller-rs).
//!
//! [`reconcile`] only calls `finalizer(...)`; the work is in the methods of [`MeshExt`] on the
//! Mesh: [`MeshExt::apply`] reads the spec into [`crate::settings::Settings`] (the one validator
//! decides; an invalid spec is refused whole and said so), publishes them to the rest of the
//! operator, observes the CA, the webhooks and the data plane, and writes the status by
//! server-side apply with one field manager, publishing an event for every condition that
//! changed; [`MeshExt::cleanup`] removes what the operator created when the Mesh is deleted.
//! [`error_policy`] logs, counts `failures{error}` and requeues with an exponential backoff.
//!
//! # Guarantees
//! - One Mesh per cluster: only the Mesh named `default` is acted on; any other gets a status
//!   saying why and no finalizer.
//! - The status is written only when it changed, so a status write never triggers a loop.
//!
//! # Caveats
//! - Deleting the Mesh is uninstalling the mesh: its finalizer deletes the `trellis-ca-root`
//!   ConfigMaps and the admission webhook configurations (Trellis' own, by label), never a
//!   workload. Running sidecars keep serving with the config and certificates they hold until
//!   the certificates expire (`workloadCertTtl`, 24 h by default); pods created afterwards are
//!   not injected. Remove sidecars by restarting the workloads after removing the injection
//!   label.

pub mod conditions;
#[cfg(test)]
pub(crate) mod fixtures;
pub mod observe;
mod status;
pub mod trust_domain;
mod uninstall;
mod upgrade;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use tokio::sync::watch;
use trellis_api::mesh::{FINALIZER, MESH_NAME, Mesh, MeshStatus, RolloutStatus, conditions as types};

use self::conditions::{CaObservation, WebhooksObservation};
use self::status::MeshStatusExt;
use crate::dataplane::{self, MeshedPod, ProxyLink};
use crate::events::{EventType, Recorder, Reporter};
use crate::metrics::Metrics;
use crate::rollout::{self, plan::Workload};
use crate::settings::{Defaults, RESYNC, Settings};

/// The controller's name on its events.
pub const REPORTER: &str = "trellis-operator";
/// The label on everything an installation creates.
pub const PART_OF: &str = "app.kubernetes.io/part-of=trellis";

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Kubernetes API refused or failed a request.
    #[error("Kubernetes API: {0}")]
    Kube(#[source] kube::Error),
    /// Adding or removing the finalizer, or the work inside it, failed.
    #[error("{0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
}

impl Error {
    /// The `error` label of `trellis_operator_reconcile_failures_total`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Finalizer(e) => match e.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(_) => "apply",
                kube::runtime::finalizer::Error::CleanupFailed(_) => "cleanup",
                _ => "finalizer",
            },
        }
    }
}

/// What the reconciler observes besides the Mesh. The operator implements it from its CA,
/// push sync state and watches; tests from plain data.
pub trait Observe: Send + Sync {
    /// The certificate authority, for `settings`.
    fn ca(&self, settings: &Settings) -> CaObservation;
    /// The admission webhooks.
    fn webhooks(&self) -> WebhooksObservation;
    /// Every meshed pod.
    fn pods(&self) -> Vec<MeshedPod>;
    /// The proxies' links to the control plane, by `namespace/pod`.
    fn links(&self) -> BTreeMap<String, ProxyLink>;
    /// Every Deployment, StatefulSet and DaemonSet.
    fn workloads(&self) -> Vec<Workload>;
    /// Now.
    fn now(&self) -> SystemTime;
}

/// What every reconcile shares.
pub struct Context {
    /// The Kubernetes client.
    pub client: Client,
    /// Publishes the Mesh's events.
    pub recorder: Recorder,
    /// The operator's metrics.
    pub metrics: Arc<Metrics>,
    /// What an absent Mesh field means.
    pub defaults: Defaults,
    /// The CA, webhooks and data plane.
    pub observe: Arc<dyn Observe>,
    /// The settings of the last valid Mesh, for the rest of the operator.
    pub settings: watch::Sender<Settings>,
    /// The control plane's version (status.version).
    pub version: String,
    /// The hash of the injection template the injector applies (`None`: not compared).
    pub template: Option<String>,
    /// The control plane's namespace, and the image this operator runs (`None`: unknown, the
    /// Mesh's `spec.versions.operator` is not acted on).
    pub operator: (String, Option<String>),
    failures: AtomicU32,
    /// The last status this reconciler wrote, with the resourceVersion of the Mesh it was
    /// planned from: until the watch brings the write back, the cached Mesh still has that
    /// resourceVersion and its status is stale ([`Context::freshest`]).
    written: std::sync::Mutex<Option<(String, MeshStatus)>>,
    /// Why the rollout last waited for the control plane (logged once per change).
    control_plane: std::sync::Mutex<Option<String>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl Context {
    /// A context reconciling with `client`.
    pub fn new(
        client: Client,
        metrics: Arc<Metrics>,
        defaults: Defaults,
        observe: Arc<dyn Observe>,
        settings: watch::Sender<Settings>,
    ) -> Self {
        Context {
            recorder: Recorder::new(client.clone(), Reporter::from(REPORTER)),
            client,
            metrics,
            defaults,
            observe,
            settings,
            version: env!("CARGO_PKG_VERSION").to_string(),
            template: None,
            operator: (trellis_api::mesh::SYSTEM_NAMESPACE.to_string(), None),
            failures: AtomicU32::new(0),
            written: std::sync::Mutex::new(None),
            control_plane: std::sync::Mutex::new(None),
        }
    }

    /// The operator runs `image` in `namespace`: a Mesh naming another operator image rolls the
    /// operator's Deployment to it.
    pub fn with_operator(mut self, namespace: String, image: Option<String>) -> Self {
        self.operator = (namespace, image);
        self
    }

    /// Roll workloads whose pods were injected with another template than `hash` (the
    /// injector's, [`trellis_manifests::sidecar::template_hash`]).
    pub fn with_template(mut self, hash: String) -> Self {
        self.template = Some(hash);
        self
    }
}

impl Context {
    /// Logs, once per change, that the proxy rollout waits for the control plane (`why`) or
    /// goes on again.
    fn log_control_plane(&self, why: Option<&str>) {
        let Ok(mut last) = self.control_plane.lock() else {
            return;
        };
        if last.as_deref() == why {
            return;
        }
        match why {
            Some(why) => tracing::info!(%why, "the proxy rollout waits for the control plane"),
            None => tracing::info!("the control plane has rolled; the proxy rollout goes on"),
        }
        *last = why.map(str::to_string);
    }

    /// `mesh` with the status this reconciler last wrote when the cache has not caught up
    /// with that write yet (the cached Mesh is still the one it was planned from). Without
    /// this, a reconcile running between a status write and its watch event plans from the
    /// old status again: a rollout wave announced twice, a condition transition said twice.
    pub fn freshest(&self, mesh: Arc<Mesh>) -> Arc<Mesh> {
        let written = self.written.lock().ok().and_then(|w| w.clone());
        match written {
            Some((planned_from, status)) if mesh.metadata.resource_version.as_ref() == Some(&planned_from) => {
                let mut fresher = (*mesh).clone();
                fresher.status = Some(status);
                Arc::new(fresher)
            }
            _ => mesh,
        }
    }

    fn wrote(&self, planned_from: Option<String>, status: MeshStatus) {
        if let (Ok(mut w), Some(rv)) = (self.written.lock(), planned_from) {
            *w = Some((rv, status));
        }
    }
}

/// Reconcile one Mesh: the one named `default` through its finalizer, any other by saying
/// that it is not acted on.
pub async fn reconcile(mesh: Arc<Mesh>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    ctx.metrics.reconciles.inc();
    let result = if mesh.name_any() != MESH_NAME {
        mesh.not_acted_on(&ctx).await
    } else {
        let api: Api<Mesh> = Api::all(ctx.client.clone());
        let mesh = ctx.freshest(mesh);
        finalizer(&api, FINALIZER, mesh, |event| async {
            match event {
                Finalizer::Apply(m) => m.apply(&ctx).await,
                Finalizer::Cleanup(m) => m.cleanup(&ctx).await,
            }
        })
        .await
        .map_err(|e| Error::Finalizer(Box::new(e)))
    };
    ctx.metrics.reconcile_seconds.observe(started.elapsed());
    if result.is_ok() {
        ctx.failures.store(0, Ordering::Relaxed);
    }
    result
}

/// A failed reconcile: log it, count it by error, and retry after 1 s, 2 s, 4 s ... up to
/// five minutes (reset by the next success).
pub fn error_policy(mesh: Arc<Mesh>, error: &Error, ctx: Arc<Context>) -> Action {
    let failures = ctx.failures.fetch_add(1, Ordering::Relaxed);
    let delay = Duration::from_secs(1u64 << failures.min(8)).min(Duration::from_secs(300));
    tracing::warn!(mesh = %mesh.name_any(), error = %format!("{error:#}"), retry_in = ?delay, "reconciling the Mesh failed");
    ctx.metrics.reconcile_failed(error.metric_label());
    Action::requeue(delay)
}

/// The reconciler's work, as methods on the Mesh.
pub trait MeshExt {
    /// Act on the spec and write the status.
    fn apply(&self, ctx: &Context) -> impl Future<Output = Result<Action, Error>> + Send;
    /// Remove what the operator created for this Mesh.
    fn cleanup(&self, ctx: &Context) -> impl Future<Output = Result<Action, Error>> + Send;
    /// Say, in the status, that this Mesh is not the one acted on.
    fn not_acted_on(&self, ctx: &Context) -> impl Future<Output = Result<Action, Error>> + Send;
}

impl MeshExt for Mesh {
    async fn apply(&self, ctx: &Context) -> Result<Action, Error> {
        let (settings, invalid) = match Settings::from_mesh(self, &ctx.defaults) {
            Ok(s) => {
                ctx.settings.send_if_modified(|current| {
                    let changed = *current != s;
                    *current = s.clone();
                    changed
                });
                (s, None)
            }
            Err(invalid) => (ctx.settings.borrow().clone(), Some(invalid)),
        };
        let mut ca = ctx.observe.ca(&settings);
        let webhooks = ctx.observe.webhooks();
        let (pods, links, workloads) = (ctx.observe.pods(), ctx.observe.links(), ctx.observe.workloads());
        let now = ctx.observe.now();
        // Every proxy counts, gateways included: a trust domain change waits on each, the data
        // plane's counts show each, and the rollout brings each to the Mesh's image (a
        // gateway's proxy container, see rollout::gateway) with its pods in the health gates.
        ca.unconnected = trust_domain::unconnected(&pods, &links);
        let data_plane = dataplane::summarize(&pods, &links, &settings.proxy_image);
        // An invalid spec changes nothing, the trust domain included.
        if invalid.is_none() {
            ca.previous_trust_domains = trust_domain::previous(
                self.status.as_ref(),
                &self.spec,
                &ca.served_trust_domains,
                &ca.unconnected,
            );
        } else {
            ca.previous_trust_domains = self
                .status
                .as_ref()
                .and_then(|s| s.certificate_authority.as_ref())
                .and_then(|c| c.previous_trust_domains.clone())
                .unwrap_or_default();
        }
        let previous: Option<RolloutStatus> = self.status.as_ref().and_then(|s| s.rollout.clone());
        let control_plane = rollout::control_plane::rolling(
            &ctx.operator.0,
            ctx.operator.1.as_deref(),
            settings.operator_image.as_deref(),
            &workloads,
        );
        ctx.log_control_plane(control_plane.as_deref());
        // An invalid spec changes nothing, the rollout included.
        let plan = invalid.is_none().then(|| {
            rollout::plan::plan(&rollout::plan::Input {
                target: &settings.proxy_image,
                settings: &settings.rollout,
                workloads: &workloads,
                pods: &pods,
                links: &links,
                status: previous.as_ref(),
                now,
                template: ctx.template.as_deref(),
                control_plane: control_plane.as_deref(),
            })
        });
        let rollout = match &plan {
            Some(p) => p.status.clone(),
            None => previous,
        };
        let status = self.desired_status(
            ctx,
            &settings,
            invalid.as_ref(),
            &ca,
            &webhooks,
            data_plane,
            rollout,
            control_plane.as_deref(),
        );
        self.announce(ctx, &status).await?;
        // The rollout's progress is recorded before any workload is touched, so a new leader
        // finishes a wave instead of starting it again.
        self.write_status(ctx, status).await?;
        let Some(plan) = plan else {
            return Ok(Action::requeue(RESYNC));
        };
        upgrade::upgrade(self, ctx, &settings, &plan, now).await
    }

    async fn cleanup(&self, ctx: &Context) -> Result<Action, Error> {
        uninstall::uninstall(self, ctx).await
    }

    async fn not_acted_on(&self, ctx: &Context) -> Result<Action, Error> {
        let message = format!(
            "only the Mesh named {MESH_NAME:?} is acted on, one per cluster; move this spec into Mesh {MESH_NAME:?} and delete Mesh {:?}",
            self.name_any()
        );
        let now = ctx.observe.now();
        let previous = self
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default();
        let time = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::try_from(now).unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
        );
        let condition = |type_: &str, status: &str| {
            let last_transition_time = previous
                .iter()
                .find(|c| c.type_ == type_ && c.status == status)
                .map(|c| c.last_transition_time.clone())
                .unwrap_or_else(|| time.clone());
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
                type_: type_.into(),
                status: status.into(),
                reason: "NotTheActiveMesh".into(),
                message: message.clone(),
                observed_generation: self.metadata.generation,
                last_transition_time,
            }
        };
        let status = MeshStatus {
            conditions: Some(vec![
                condition(types::READY, "False"),
                condition(types::DEGRADED, "True"),
            ]),
            observed_generation: self.metadata.generation,
            ..MeshStatus::default()
        };
        if !previous.iter().any(|c| c.reason == "NotTheActiveMesh") {
            self.publish(ctx, EventType::Warning, "NotTheActiveMesh", "Ignore", message)
                .await?;
        }
        self.write_status(ctx, status).await?;
        Ok(Action::await_change())
    }
}

/// Run the Mesh controller until it stops (the leader runs it; see [`crate::leader`]). `nudge`
/// re-reconciles the Mesh when something it reports on changes (the data plane, the CA).
pub async fn run(ctx: Arc<Context>, nudge: watch::Receiver<u64>) {
    let api: Api<Mesh> = Api::all(ctx.client.clone());
    let nudges = futures::stream::unfold(
        nudge,
        |mut rx| async move { rx.changed().await.ok().map(|()| ((), rx)) },
    );
    Controller::new(api, watcher::Config::default())
        // why: pods come and go in bursts (a rollout wave); one reconcile per second is enough.
        .with_config(kube::runtime::controller::Config::default().debounce(Duration::from_secs(1)))
        .reconcile_all_on(nudges)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "Mesh controller event");
            }
        })
        .await;
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use trellis_api::mesh::conditions::*;

    use super::fixtures::{Fixed, MeshFixture, Scenario, condition, mesh, timeout_after_1s};
    use super::*;

    #[tokio::test]
    async fn a_mesh_without_the_finalizer_gets_it_first() {
        let (ctx, server, _) = Context::test(Fixed::default());
        let m = mesh("default", json!({}));
        let scenario = server.run(Scenario::FinalizerCreation(m.clone()));
        reconcile(Arc::new(m), ctx).await.expect("reconcile");
        timeout_after_1s(scenario).await;
    }

    #[tokio::test]
    async fn a_second_mesh_is_not_acted_on_and_says_why() {
        let (ctx, server, settings) = Context::test(Fixed::default());
        let before = settings.borrow().clone();
        let m = mesh("production", json!({"trustDomain": "example.org"}));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let scenario = server.run(Scenario::EventsThenStatus(
            vec!["NotTheActiveMesh".into()],
            m.clone(),
            tx,
        ));
        reconcile(Arc::new(m), ctx).await.expect("reconcile");
        timeout_after_1s(scenario).await;
        let status = rx.await.unwrap();
        let ready = condition(&status, READY);
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "NotTheActiveMesh")
        );
        assert!(
            ready.message.contains("move this spec into Mesh \"default\""),
            "{}",
            ready.message
        );
        assert_eq!(*settings.borrow(), before);
    }

    #[tokio::test]
    async fn a_failed_reconcile_is_counted_by_error_and_backs_off() {
        let mut observe = Fixed::default();
        observe.links.insert(
            "shop/web-2".into(),
            ProxyLink {
                connected: true,
                synced: false,
            },
        );
        let (ctx, server, _) = Context::test(observe);
        let m = Arc::new(mesh("default", json!({})).finalized());
        let scenario = server.run(Scenario::EventsThenStatusFails(vec![
            "Ready".into(),
            "DataPlaneUpToDateFalse".into(),
        ]));
        let err = reconcile(m.clone(), ctx.clone())
            .await
            .expect_err("the status write failed");
        timeout_after_1s(scenario).await;
        assert_eq!(err.metric_label(), "apply");
        assert!(err.to_string().contains("etcd is unhappy"), "{err}");
        let first = error_policy(m.clone(), &err, ctx.clone());
        let second = error_policy(m.clone(), &err, ctx.clone());
        assert_eq!(first, Action::requeue(Duration::from_secs(1)));
        assert_eq!(second, Action::requeue(Duration::from_secs(2)));
        assert_eq!(ctx.metrics.reconcile_failures("apply"), 2);
        assert!(
            ctx.metrics
                .render("")
                .contains("trellis_operator_reconcile_failures_total{error=\"apply\"} 2")
        );
    }
}
