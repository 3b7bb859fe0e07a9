//! The Mesh reconciler: a kube-runtime `Controller` on the cluster-scoped `Mesh`, run by the
//! leader only (shaped like kube-rs/controller-rs).
//!
//! [`reconcile`] only calls `finalizer(...)`; the work is in the methods of [`MeshExt`] on the
//! Mesh: [`MeshExt::apply`] reads the spec into [`settings::Settings`] (the one validator
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
pub mod settings;
pub mod trust_domain;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use k8s_openapi::api::admissionregistration::v1::{MutatingWebhookConfiguration, ValidatingWebhookConfiguration};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use tokio::sync::watch;
use trellis_api::mesh::{
    CertificateAuthorityStatus, DataPlaneStatus, FINALIZER, MESH_NAME, Mesh, MeshStatus, RolloutStatus,
    conditions as types,
};
use trellis_manifests::install::webhooks::{INJECTOR, VALIDATOR};

use self::conditions::{CaObservation, Observed, WebhooksObservation};
use self::settings::{Defaults, Invalid, Settings};
use crate::dataplane::{self, MeshedPod, ProxyLink};
use crate::events::{Event, EventType, Recorder, Reporter};
use crate::metrics::Metrics;
use crate::rollout::{self, plan::Workload};

/// The field manager of the Mesh status (and everything else the operator applies).
pub const FIELD_MANAGER: &str = crate::trust::FIELD_MANAGER;
/// The controller's name on its events.
pub const REPORTER: &str = "trellis-operator";
/// How often a steady Mesh is looked at again (data plane counts, root expiry).
pub const RESYNC: Duration = Duration::from_secs(15);
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
        self.upgrade_operator(ctx, &settings).await?;
        // The restart time is the wave's start, the same however often the wave's assignments
        // are made (a reconcile on a stale cache, a new leader): re-asserting one changes no
        // pod template, so no workload restarts twice for one wave.
        let restarted_at = plan
            .status
            .as_ref()
            .and_then(|s| rollout::plan::parse_time(s.wave_started.as_deref()))
            .unwrap_or(now);
        for a in &plan.assignments {
            rollout::workloads::assign(&ctx.client, a, restarted_at)
                .await
                .map_err(Error::Kube)?;
            tracing::info!(workload = %a.workload, image = %a.image, "assigned the proxy image; the workload restarts");
        }
        for a in &plan.announcements {
            let type_ = if a.warning {
                EventType::Warning
            } else {
                EventType::Normal
            };
            self.publish(ctx, type_, a.reason, "Rollout", a.message.clone()).await?;
        }
        Ok(Action::requeue(plan.recheck.min(RESYNC)))
    }

    async fn cleanup(&self, ctx: &Context) -> Result<Action, Error> {
        let mut removed = Vec::new();
        let configmaps: Api<ConfigMap> = Api::all(ctx.client.clone());
        let trust = ListParams::default()
            .fields(&format!("metadata.name={}", crate::trust::ROOT_CONFIGMAP))
            .labels(PART_OF);
        for cm in configmaps.list_metadata(&trust).await.map_err(Error::Kube)? {
            let ns = cm.namespace().unwrap_or_default();
            let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ns);
            delete_if_present(&api, &cm.name_any()).await?;
            removed.push(format!("ConfigMap {ns}/{}", cm.name_any()));
        }
        // Trellis' own two configurations, listed by name: the operator may read and delete
        // no other (its RBAC names these two).
        let ours = |name: &str| {
            ListParams::default()
                .fields(&format!("metadata.name={name}"))
                .labels(PART_OF)
        };
        let mutating: Api<MutatingWebhookConfiguration> = Api::all(ctx.client.clone());
        for w in mutating.list_metadata(&ours(INJECTOR)).await.map_err(Error::Kube)? {
            delete_if_present(&mutating, &w.name_any()).await?;
            removed.push(format!("MutatingWebhookConfiguration {}", w.name_any()));
        }
        let validating: Api<ValidatingWebhookConfiguration> = Api::all(ctx.client.clone());
        for w in validating.list_metadata(&ours(VALIDATOR)).await.map_err(Error::Kube)? {
            delete_if_present(&validating, &w.name_any()).await?;
            removed.push(format!("ValidatingWebhookConfiguration {}", w.name_any()));
        }
        tracing::info!(removed = ?removed, "the Mesh was deleted; removed what the operator created");
        let note = format!(
            "removed {} objects the operator created ({}); workloads are untouched and running sidecars keep their config until their certificates expire",
            removed.len(),
            summarize(&removed)
        );
        self.publish(ctx, EventType::Normal, "Deleted", "Cleanup", note).await?;
        Ok(Action::await_change())
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

/// The reconciler's helpers.
trait MeshStatusExt {
    #[allow(clippy::too_many_arguments)]
    fn desired_status(
        &self,
        ctx: &Context,
        settings: &Settings,
        invalid: Option<&Invalid>,
        ca: &CaObservation,
        webhooks: &WebhooksObservation,
        data_plane: DataPlaneStatus,
        rollout: Option<RolloutStatus>,
        control_plane: Option<&str>,
    ) -> MeshStatus;
    fn announce(&self, ctx: &Context, status: &MeshStatus) -> impl Future<Output = Result<(), Error>> + Send;
    fn upgrade_operator(&self, ctx: &Context, settings: &Settings) -> impl Future<Output = Result<(), Error>> + Send;
    fn write_status(&self, ctx: &Context, status: MeshStatus) -> impl Future<Output = Result<(), Error>> + Send;
    fn publish(
        &self,
        ctx: &Context,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) -> impl Future<Output = Result<(), Error>> + Send;
}

impl MeshStatusExt for Mesh {
    fn desired_status(
        &self,
        ctx: &Context,
        settings: &Settings,
        invalid: Option<&Invalid>,
        ca: &CaObservation,
        webhooks: &WebhooksObservation,
        data_plane: DataPlaneStatus,
        rollout: Option<RolloutStatus>,
        control_plane: Option<&str>,
    ) -> MeshStatus {
        let previous = self
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default();
        let observed = Observed {
            generation: self.metadata.generation,
            invalid,
            ca,
            webhooks,
            data_plane: &data_plane,
            proxy_image: &settings.proxy_image,
            rollout: rollout.as_ref(),
            control_plane,
            now: ctx.observe.now(),
        };
        let conditions = conditions::conditions(&observed, &previous);
        MeshStatus {
            conditions: Some(conditions),
            version: Some(ctx.version.clone()),
            observed_generation: self.metadata.generation,
            certificate_authority: Some(CertificateAuthorityStatus {
                mode: Some(ca.mode.clone()),
                trust_domain: Some(ca.trust_domain.clone()),
                previous_trust_domains: Some(ca.previous_trust_domains.clone()).filter(|p| !p.is_empty()),
                root_fingerprint: Some(ca.root_fingerprint.clone()).filter(|f| !f.is_empty()),
                root_expires: ca
                    .root_expires
                    .and_then(|t| k8s_openapi::jiff::Timestamp::try_from(t).ok().map(|t| t.to_string())),
                rotation_phase: Some(ca.phase.clone()),
            }),
            data_plane: Some(data_plane),
            rollout,
        }
    }

    /// An event for every condition that changed from the current status to `status`.
    async fn announce(&self, ctx: &Context, status: &MeshStatus) -> Result<(), Error> {
        let previous = self
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default();
        let next = status.conditions.clone().unwrap_or_default();
        for t in conditions::transitions(&previous, &next) {
            let type_ = if t.warning {
                EventType::Warning
            } else {
                EventType::Normal
            };
            let reason = format!("{}{}", t.type_, if t.status == "True" { "" } else { "False" });
            let note = format!("{} is {} ({}): {}", t.type_, t.status, t.reason, t.message);
            self.publish(ctx, type_, &reason, "Reconcile", note).await?;
        }
        if let Some(next) = &status.certificate_authority {
            let previous = self.status.as_ref().and_then(|s| s.certificate_authority.as_ref());
            for (reason, note) in conditions::ca_transitions(previous, next) {
                self.publish(ctx, EventType::Normal, reason, "RotateRoot", note).await?;
            }
            let kept = self.spec.trust_domain_aliases.as_deref().unwrap_or_default();
            for (reason, note) in trust_domain::transitions(previous, next, kept) {
                self.publish(ctx, EventType::Normal, reason, "ChangeTrustDomain", note)
                    .await?;
            }
        }
        Ok(())
    }

    /// `spec.versions.operator` acted on: when it names another image than the one this
    /// operator runs, the operator's Deployment is rolled to it (its own rolling update: one
    /// new replica at a time, none unavailable; the new replicas know their image from the
    /// same variable, so they do nothing more).
    async fn upgrade_operator(&self, ctx: &Context, settings: &Settings) -> Result<(), Error> {
        use trellis_manifests::install::{OPERATOR_CONTAINER, OPERATOR_IMAGE_ENV, OPERATOR_NAME};
        let (namespace, Some(running)) = &ctx.operator else {
            return Ok(());
        };
        let Some(wanted) = settings.operator_image.as_ref().filter(|w| *w != running) else {
            return Ok(());
        };
        let api: Api<k8s_openapi::api::apps::v1::Deployment> = Api::namespaced(ctx.client.clone(), namespace);
        let patch = serde_json::json!({"spec": {"template": {"spec": {"containers": [{
            "name": OPERATOR_CONTAINER,
            "image": wanted,
            "env": [{"name": OPERATOR_IMAGE_ENV, "value": wanted}],
        }]}}}});
        api.patch(OPERATOR_NAME, &PatchParams::default(), &Patch::Strategic(patch))
            .await
            .map_err(Error::Kube)?;
        tracing::info!(from = %running, to = %wanted, "spec.versions.operator names another image; rolling the operator to it");
        let note = format!(
            "spec.versions.operator is {wanted}; rolling Deployment {namespace}/{OPERATOR_NAME} from {running} (one replica at a time)"
        );
        self.publish(ctx, EventType::Normal, "OperatorUpgradeStarted", "Upgrade", note)
            .await
    }

    /// Server-side apply `status` if it differs from the current one.
    async fn write_status(&self, ctx: &Context, status: MeshStatus) -> Result<(), Error> {
        if self.status.as_ref() == Some(&status) {
            return Ok(());
        }
        let api: Api<Mesh> = Api::all(ctx.client.clone());
        let patch = Patch::Apply(serde_json::json!({
            "apiVersion": Mesh::api_version(&()),
            "kind": Mesh::kind(&()),
            "status": status,
        }));
        api.patch_status(&self.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &patch)
            .await
            .map_err(Error::Kube)?;
        ctx.wrote(self.metadata.resource_version.clone(), status);
        Ok(())
    }

    async fn publish(
        &self,
        ctx: &Context,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) -> Result<(), Error> {
        // Event notes are limited to 1 kB.
        let note: String = note.chars().take(1000).collect();
        ctx.recorder
            .publish(
                &Event {
                    type_,
                    reason: reason.into(),
                    note: Some(note),
                    action: action.into(),
                    secondary: None,
                },
                &self.object_ref(&()),
            )
            .await
            .map_err(Error::Kube)
    }
}

async fn delete_if_present<K>(api: &Api<K>, name: &str) -> Result<(), Error>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(Error::Kube(e)),
    }
}

fn summarize(items: &[String]) -> String {
    match items.len() {
        0 => "nothing".into(),
        n if n <= 5 => items.join(", "),
        n => format!("{}, and {} more", items[..5].join(", "), n - 5),
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

    use super::fixtures::{Fixed, MeshFixture, Scenario, Step, mesh, timeout_after_1s};
    use super::*;

    fn condition<'a>(
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

    #[tokio::test]
    async fn a_mesh_without_the_finalizer_gets_it_first() {
        let (ctx, server, _) = Context::test(Fixed::default());
        let m = mesh("default", json!({}));
        let scenario = server.run(Scenario::FinalizerCreation(m.clone()));
        reconcile(Arc::new(m), ctx).await.expect("reconcile");
        timeout_after_1s(scenario).await;
    }

    #[tokio::test]
    async fn a_valid_mesh_gets_its_status_by_server_side_apply_and_one_ready_event() {
        let (ctx, server, settings) = Context::test(Fixed::default());
        let image = Defaults::default().proxy_image;
        let m = mesh(
            "default",
            json!({"trustDomain": "example.org", "versions": {"proxy": image}, "rollout": {"batchSize": 3}}),
        )
        .finalized();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let scenario = server.run(Scenario::EventsThenStatus(vec!["Ready".into()], m.clone(), tx));
        let action = reconcile(Arc::new(m.clone()), ctx.clone()).await.expect("reconcile");
        timeout_after_1s(scenario).await;
        assert_eq!(action, Action::requeue(RESYNC));
        let status = rx.await.unwrap();
        assert_eq!(status.observed_generation, Some(3));
        assert_eq!(condition(&status, READY).status, "True");
        assert_eq!(condition(&status, CERTIFICATE_AUTHORITY_READY).reason, "RootValid");
        assert!(
            condition(&status, CERTIFICATE_AUTHORITY_READY)
                .message
                .contains("example.org")
        );
        assert_eq!(
            status
                .certificate_authority
                .as_ref()
                .and_then(|c| c.root_expires.as_deref()),
            Some("2037-01-12T08:00:00Z")
        );
        assert_eq!(status.version.as_deref(), Some(env!("CARGO_PKG_VERSION")));
        // The rest of the operator now acts on this spec.
        assert_eq!(settings.borrow().trust_domain, "example.org");
        assert_eq!(settings.borrow().rollout.batch, settings::Batch::Size(3));
        assert!(status.rollout.is_none(), "every pod runs the image: nothing to roll");

        // Reconciled again with the status it wrote: nothing to say, nothing to write.
        let (ctx2, server2, _) = Context::test(Fixed::default());
        let scenario = server2.run(Scenario::RadioSilence);
        reconcile(Arc::new(m.with_status(status)), ctx2)
            .await
            .expect("reconcile");
        timeout_after_1s(scenario).await;
    }

    #[tokio::test]
    async fn a_change_of_condition_is_an_event_once() {
        let (ctx, server, _) = Context::test(Fixed::default());
        let m = mesh("default", json!({})).finalized();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let scenario = server.run(Scenario::EventsThenStatus(vec!["Ready".into()], m.clone(), tx));
        reconcile(Arc::new(m.clone()), ctx).await.expect("reconcile");
        timeout_after_1s(scenario).await;
        let healthy = rx.await.unwrap();

        // The webhooks stop being served: WebhooksReady and Ready turn False, one event each.
        let observe = Fixed {
            webhooks: WebhooksObservation {
                ready: false,
                reason: "CaBundleStale".into(),
                message: "the caBundle of trellis-sidecar-injector is not the mesh root".into(),
            },
            ..Fixed::default()
        };
        let (ctx, server, _) = Context::test(observe);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let scenario = server.run(Scenario::EventsThenStatus(
            vec!["ReadyFalse".into(), "WebhooksReadyFalse".into()],
            m.clone(),
            tx,
        ));
        reconcile(Arc::new(m.with_status(healthy)), ctx)
            .await
            .expect("reconcile");
        timeout_after_1s(scenario).await;
        let status = rx.await.unwrap();
        assert_eq!(condition(&status, READY).reason, "WebhooksNotReady");
        assert!(condition(&status, READY).message.contains("caBundle"));
    }

    #[tokio::test]
    async fn contradictory_settings_are_a_condition_and_change_nothing() {
        let (ctx, server, settings) = Context::test(Fixed::default());
        let before = settings.borrow().clone();
        let m = mesh(
            "default",
            json!({"trustDomain": "example.org", "rollout": {"batchSize": 2, "batchPercent": 10}}),
        )
        .finalized();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let scenario = server.run(Scenario::EventsThenStatus(
            vec!["ReadyFalse".into(), "Degraded".into()],
            m.clone(),
            tx,
        ));
        reconcile(Arc::new(m), ctx)
            .await
            .expect("an invalid spec is not a failed reconcile");
        timeout_after_1s(scenario).await;
        let status = rx.await.unwrap();
        let degraded = condition(&status, DEGRADED);
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("True", "InvalidSpec")
        );
        assert!(
            degraded
                .message
                .contains("spec.rollout: set batchSize or batchPercent, not both"),
            "{}",
            degraded.message
        );
        assert_eq!(condition(&status, READY).reason, "InvalidSpec");
        assert_eq!(
            *settings.borrow(),
            before,
            "nothing of the invalid spec was applied, not even its trust domain"
        );
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
    async fn deleting_the_mesh_removes_what_the_operator_created_and_then_the_finalizer() {
        let (ctx, server, _) = Context::test(Fixed::default());
        let m = mesh("default", json!({})).finalized().deleted();
        let scenario = server.run(Scenario::Cleanup {
            configmaps: vec![
                ("shop".into(), "trellis-ca-root".into()),
                ("web".into(), "trellis-ca-root".into()),
            ],
            mutating: vec!["trellis-sidecar-injector".into()],
            mesh: m.clone(),
        });
        let action = reconcile(Arc::new(m), ctx).await.expect("reconcile");
        timeout_after_1s(scenario).await;
        assert_eq!(action, Action::await_change());
    }

    #[tokio::test]
    async fn a_new_proxy_image_is_recorded_as_wave_one_before_the_workload_is_restarted() {
        let (ctx, server, _) = Context::test(Fixed::default());
        let m = mesh("default", json!({"versions": {"proxy": "proxy:2"}})).finalized();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let scenario = server.run(Scenario::Steps(vec![
            Step::Event("Ready".into()),
            Step::Event("DataPlaneUpToDateFalse".into()),
            Step::Event("RolloutProgressing".into()),
            Step::Status(tx),
            Step::Assign {
                path: "/apis/apps/v1/namespaces/shop/deployments/web".into(),
                image: "proxy:2".into(),
            },
            Step::Event("RolloutWaveStarted".into()),
        ]));
        let action = reconcile(Arc::new(m), ctx).await.expect("reconcile");
        timeout_after_1s(scenario).await;
        assert_eq!(action, Action::requeue(rollout::plan::WAVE_RECHECK));
        let status = rx.await.unwrap();
        let r = status.rollout.clone().expect("a rollout status");
        assert_eq!((r.target_image.as_str(), r.wave), ("proxy:2", 1));
        assert_eq!(r.phase, Some(trellis_api::mesh::RolloutPhase::Progressing));
        let members = r.wave_workloads.unwrap();
        assert_eq!(members[0].name, "web");
        assert_eq!(members[0].previous_image, Some(Defaults::default().proxy_image));
        assert_eq!(condition(&status, ROLLOUT_PROGRESSING).status, "True");
        let versions = status.data_plane.unwrap().versions.unwrap();
        assert_eq!(versions[0].pods, 2, "version skew: both pods still on the old image");
    }

    /// The shop's `db`, one pod on `image`, and `web` as in [`Fixed::default`].
    fn db_and_web(db_image: &str, db_assigned: Option<&str>) -> Fixed {
        let mut f = Fixed::default();
        let db = crate::dataplane::WorkloadRef {
            name: "db".into(),
            ..super::fixtures::web()
        };
        f.pods.push(MeshedPod {
            name: "db-1".into(),
            image: db_image.into(),
            owner: crate::dataplane::Owner::Workload(db.clone()),
            ..f.pods[0].clone()
        });
        f.links.insert("shop/db-1".into(), f.links["shop/web-1"]);
        f.workloads.push(Workload {
            id: db,
            assigned: db_assigned.map(str::to_string),
            ..f.workloads[0].clone()
        });
        f
    }

    #[tokio::test]
    async fn each_wave_is_announced_by_an_event_of_its_own() {
        let old = Defaults::default().proxy_image;
        let observe = Arc::new(super::fixtures::Changing(std::sync::Mutex::new(db_and_web(&old, None))));
        let (ctx, server, _) = Context::test_observing(observe.clone());
        let m = mesh(
            "default",
            json!({"versions": {"proxy": "proxy:2"}, "rollout": {"batchSize": 1, "pause": "0s"}}),
        )
        .finalized();

        let (tx1, rx1) = tokio::sync::oneshot::channel();
        let (tx2, rx2) = tokio::sync::oneshot::channel();
        let (tx3, rx3) = tokio::sync::oneshot::channel();
        let scenario = server.run(Scenario::Steps(vec![
            // Wave 1: db (workloads in name order).
            Step::Event("Ready".into()),
            Step::Event("DataPlaneUpToDateFalse".into()),
            Step::Event("RolloutProgressing".into()),
            Step::Status(tx1),
            Step::Assign {
                path: "/apis/apps/v1/namespaces/shop/deployments/db".into(),
                image: "proxy:2".into(),
            },
            Step::EventSaying(
                "RolloutWaveStarted".into(),
                "wave 1: restarting Deployment shop/db onto proxy:2".into(),
            ),
            // db is healthy on proxy:2: wave 1 finished (soaking for 0 s).
            Step::EventSaying("RolloutProgressing".into(), "wave 1 is healthy".into()),
            Step::Status(tx2),
            Step::EventSaying("RolloutWaveFinished".into(), "wave 1 is healthy".into()),
            // Wave 2: web, announced by a new event saying so (kube-runtime's Recorder made it
            // the series of wave 1's event: "wave 1: restarting Deployment shop/db (x2)").
            Step::EventSaying("RolloutProgressing".into(), "wave 2 is restarting".into()),
            Step::Status(tx3),
            Step::Assign {
                path: "/apis/apps/v1/namespaces/shop/deployments/web".into(),
                image: "proxy:2".into(),
            },
            Step::EventSaying(
                "RolloutWaveStarted".into(),
                "wave 2: restarting Deployment shop/web onto proxy:2".into(),
            ),
        ]));
        reconcile(Arc::new(m.clone()), ctx.clone()).await.expect("wave 1");
        let wave1 = rx1.await.expect("the status of wave 1");
        observe.set(|f| *f = db_and_web("proxy:2", Some("proxy:2")));
        reconcile(Arc::new(m.clone().with_status(wave1)), ctx.clone())
            .await
            .expect("wave 1 healthy");
        let soaked = rx2.await.expect("the status of wave 1's soak");
        reconcile(Arc::new(m.with_status(soaked)), ctx.clone())
            .await
            .expect("wave 2");
        timeout_after_1s(scenario).await;
        let wave2 = rx3.await.expect("the status of wave 2").rollout.expect("a rollout");
        assert_eq!(wave2.wave, 2);
        assert_eq!(wave2.wave_workloads.expect("members")[0].name, "web");
    }

    #[tokio::test]
    async fn a_reconcile_before_the_cache_has_its_status_write_repeats_nothing() {
        let mut cluster = Fixed::default();
        // An hour more than whole days left, so "expires in 3650 days" holds 5 s later too.
        cluster.ca.root_expires = Some(super::fixtures::now() + Duration::from_secs(3650 * 86400 + 3600));
        let observe = Arc::new(super::fixtures::Changing(std::sync::Mutex::new(cluster)));
        let (ctx, server, _) = Context::test_observing(observe.clone());
        let mut m = mesh("default", json!({"versions": {"proxy": "proxy:2"}})).finalized();
        m.metadata.resource_version = Some("7".into());
        let web = "/apis/apps/v1/namespaces/shop/deployments/web".to_string();
        let wave_started = k8s_openapi::jiff::Timestamp::try_from(super::fixtures::now())
            .expect("a time")
            .to_string();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let scenario = server.run(Scenario::Steps(vec![
            Step::Event("Ready".into()),
            Step::Event("DataPlaneUpToDateFalse".into()),
            Step::Event("RolloutProgressing".into()),
            Step::Status(tx),
            Step::AssignRestartedAt {
                path: web.clone(),
                image: "proxy:2".into(),
                at: wave_started.clone(),
            },
            Step::EventSaying("RolloutWaveStarted".into(), "wave 1".into()),
            // The second reconcile: no event, no status, wave 1 not started again; the
            // assignment the stale workload cache lacks is re-asserted with the same restart
            // time, which changes no pod template.
            Step::AssignRestartedAt {
                path: web,
                image: "proxy:2".into(),
                at: wave_started,
            },
        ]));
        reconcile(Arc::new(m.clone()), ctx.clone()).await.expect("wave 1");
        // Five seconds later the cache still holds resourceVersion 7, without the status
        // written, and the workload cache has not seen the assignment either.
        observe.set(|f| f.elapsed = Duration::from_secs(5));
        reconcile(Arc::new(m), ctx.clone()).await.expect("again");
        timeout_after_1s(scenario).await;
        assert_eq!(rx.await.expect("the status").rollout.map(|r| r.wave), Some(1));
    }

    #[tokio::test]
    async fn versions_operator_rolls_the_operator_deployment_to_the_image_it_names() {
        let image = Defaults::default().proxy_image;
        let running = "ghcr.io/trellis-mesh/trellis-operator:1".to_string();
        let wanted = "ghcr.io/trellis-mesh/trellis-operator:2".to_string();
        let (ctx, server, _) = Context::test(Fixed::default());
        let ctx = Arc::new(
            Arc::into_inner(ctx)
                .expect("one owner")
                .with_operator("trellis-system".into(), Some(running.clone())),
        );
        let m = mesh("default", json!({"versions": {"operator": wanted, "proxy": image}})).finalized();
        let (tx, _rx) = tokio::sync::oneshot::channel();
        let scenario = server.run(Scenario::Steps(vec![
            Step::Event("Ready".into()),
            Step::Status(tx),
            Step::UpgradeOperator { image: wanted.clone() },
            Step::Event("OperatorUpgradeStarted".into()),
        ]));
        reconcile(Arc::new(m), ctx.clone()).await.expect("reconcile");
        timeout_after_1s(scenario).await;

        // The operator already runs the image the Mesh names: nothing to do.
        let (ctx, server, _) = Context::test(Fixed::default());
        let ctx = Arc::new(
            Arc::into_inner(ctx)
                .expect("one owner")
                .with_operator("trellis-system".into(), Some(wanted.clone())),
        );
        let m = mesh("default", json!({"versions": {"operator": wanted, "proxy": image}})).finalized();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let scenario = server.run(Scenario::EventsThenStatus(vec!["Ready".into()], m.clone(), tx));
        reconcile(Arc::new(m.clone()), ctx.clone()).await.expect("reconcile");
        timeout_after_1s(scenario).await;
        let status = rx.await.unwrap();
        let (ctx2, server2, _) = Context::test(Fixed::default());
        let ctx2 = Arc::new(
            Arc::into_inner(ctx2)
                .expect("one owner")
                .with_operator("trellis-system".into(), Some(wanted)),
        );
        let scenario = server2.run(Scenario::RadioSilence);
        reconcile(Arc::new(m.with_status(status)), ctx2)
            .await
            .expect("reconcile");
        timeout_after_1s(scenario).await;
    }

    #[tokio::test]
    async fn an_invalid_spec_starts_no_rollout() {
        let (ctx, server, _) = Context::test(Fixed::default());
        let m = mesh(
            "default",
            json!({"versions": {"proxy": "proxy:2"}, "rollout": {"pause": "soon"}}),
        )
        .finalized();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let scenario = server.run(Scenario::EventsThenStatus(
            vec!["ReadyFalse".into(), "Degraded".into()],
            m.clone(),
            tx,
        ));
        reconcile(Arc::new(m), ctx).await.expect("reconcile");
        timeout_after_1s(scenario).await;
        let status = rx.await.unwrap();
        assert!(status.rollout.is_none(), "no wave, no workload touched");
        assert!(condition(&status, DEGRADED).message.contains("spec.rollout.pause"));
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
