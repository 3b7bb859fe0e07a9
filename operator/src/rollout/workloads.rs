//! The Deployments, StatefulSets and DaemonSets the rollout can restart, and the
//! PodDisruptionBudgets over their pods: converted to the planner's [`Workload`] as they are
//! watched, and the assignments written back as `kubectl rollout restart` does.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Patch, PatchParams};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use trellis_api::mesh::{PROXY_IMAGE_ANNOTATION, RESTARTED_AT_ANNOTATION};

use super::gateway::{self, GatewayProxy};
use super::plan::{Assignment, Progress, Workload};
use crate::dataplane::{WorkloadKind, WorkloadRef};

/// A workload as watched, before disruption budgets are matched to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watched {
    /// The planner's view (budget not yet known).
    pub workload: Workload,
    /// The labels of its pods (what a PodDisruptionBudget selects).
    pub pod_labels: BTreeMap<String, String>,
}

/// A PodDisruptionBudget that allows no disruption now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exhausted {
    /// Namespace.
    pub namespace: String,
    /// Its selector's `matchLabels` (a budget with expressions is matched on those labels only).
    pub match_labels: BTreeMap<String, String>,
}

fn count(v: Option<i32>) -> u32 {
    u32::try_from(v.unwrap_or(0)).unwrap_or(0)
}

fn observed(generation: Option<i64>, observed: Option<i64>) -> bool {
    match (generation, observed) {
        (Some(g), Some(o)) => o >= g,
        (None, _) => true,
        (Some(_), None) => false,
    }
}

/// A workload kind the rollout restarts.
pub trait Restartable:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static
{
    /// Its kind.
    const KIND: WorkloadKind;
    /// The planner's view of it and its pods' labels.
    fn watched(&self) -> Watched;
}

fn base<K: Resource>(o: &K, kind: WorkloadKind) -> WorkloadRef {
    WorkloadRef {
        kind,
        namespace: o.meta().namespace.clone().unwrap_or_default(),
        name: o.meta().name.clone().unwrap_or_default(),
    }
}

/// What a pod template is assigned: the image, the gateway proxy container if its pods run a
/// gateway, and its pods' labels. A gateway's image is its proxy container's; an injected
/// workload's is the injector's annotation.
struct Assigned {
    image: Option<String>,
    gateway: Option<GatewayProxy>,
    pod_labels: BTreeMap<String, String>,
}

fn assigned(
    template: Option<&k8s_openapi::api::core::v1::PodTemplateSpec>,
    selector: Option<&LabelSelector>,
) -> Assigned {
    let meta = template.and_then(|t| t.metadata.as_ref());
    let pod_labels = meta.and_then(|m| m.labels.clone()).unwrap_or_default();
    match gateway::in_template(template, selector) {
        Some((gateway, image)) => Assigned {
            image,
            gateway: Some(gateway),
            pod_labels,
        },
        None => Assigned {
            image: meta
                .and_then(|m| m.annotations.as_ref())
                .and_then(|a| a.get(PROXY_IMAGE_ANNOTATION))
                .cloned(),
            gateway: None,
            pod_labels,
        },
    }
}

impl Restartable for Deployment {
    const KIND: WorkloadKind = WorkloadKind::Deployment;
    fn watched(&self) -> Watched {
        let spec = self.spec.as_ref();
        let a = assigned(spec.map(|s| &s.template), spec.map(|s| &s.selector));
        let st = self.status.clone().unwrap_or_default();
        Watched {
            workload: Workload {
                id: base(self, Self::KIND),
                labels: self.labels().clone(),
                assigned: a.image,
                gateway: a.gateway,
                progress: Progress {
                    observed: observed(self.metadata.generation, st.observed_generation),
                    desired: count(spec.and_then(|s| s.replicas).or(Some(1))),
                    updated: count(st.updated_replicas),
                    ready: count(st.available_replicas).min(count(st.ready_replicas)),
                    total: count(st.replicas),
                },
                budget_exhausted: false,
            },
            pod_labels: a.pod_labels,
        }
    }
}

impl Restartable for StatefulSet {
    const KIND: WorkloadKind = WorkloadKind::StatefulSet;
    fn watched(&self) -> Watched {
        let spec = self.spec.as_ref();
        let a = assigned(spec.map(|s| &s.template), spec.map(|s| &s.selector));
        let st = self.status.clone().unwrap_or_default();
        let same_revision = st.current_revision.is_some() && st.current_revision == st.update_revision;
        let desired = count(spec.and_then(|s| s.replicas).or(Some(1)));
        Watched {
            workload: Workload {
                id: base(self, Self::KIND),
                labels: self.labels().clone(),
                assigned: a.image,
                gateway: a.gateway,
                progress: Progress {
                    observed: observed(self.metadata.generation, st.observed_generation),
                    desired,
                    updated: if same_revision {
                        desired.max(count(st.updated_replicas))
                    } else {
                        count(st.updated_replicas)
                    },
                    ready: count(st.ready_replicas),
                    total: count(Some(st.replicas)),
                },
                budget_exhausted: false,
            },
            pod_labels: a.pod_labels,
        }
    }
}

impl Restartable for DaemonSet {
    const KIND: WorkloadKind = WorkloadKind::DaemonSet;
    fn watched(&self) -> Watched {
        let spec = self.spec.as_ref();
        let a = assigned(spec.map(|s| &s.template), spec.map(|s| &s.selector));
        let st = self.status.clone().unwrap_or_default();
        Watched {
            workload: Workload {
                id: base(self, Self::KIND),
                labels: self.labels().clone(),
                assigned: a.image,
                gateway: a.gateway,
                progress: Progress {
                    observed: observed(self.metadata.generation, st.observed_generation),
                    desired: count(Some(st.desired_number_scheduled)),
                    updated: count(st.updated_number_scheduled),
                    ready: count(st.number_available).min(count(Some(st.number_ready))),
                    total: count(Some(st.current_number_scheduled)),
                },
                budget_exhausted: false,
            },
            pod_labels: a.pod_labels,
        }
    }
}

/// Watched workloads by kind/namespace/name, and the exhausted budgets by namespace/name.
#[derive(Debug, Default)]
pub struct Store {
    workloads: BTreeMap<WorkloadRef, Watched>,
    exhausted: BTreeMap<(String, String), Exhausted>,
}

/// The store, shared with the watchers.
pub type Shared = Arc<RwLock<Store>>;

impl Store {
    /// The planner's workloads, each marked when a budget over its pods is exhausted.
    pub fn workloads(&self) -> Vec<Workload> {
        self.workloads
            .values()
            .map(|w| {
                let mut out = w.workload.clone();
                out.budget_exhausted = self.exhausted.values().any(|b| {
                    b.namespace == w.workload.id.namespace
                        && !b.match_labels.is_empty()
                        && b.match_labels.iter().all(|(k, v)| w.pod_labels.get(k) == Some(v))
                });
                out
            })
            .collect()
    }
}

fn exhausted(pdb: &PodDisruptionBudget) -> Option<Exhausted> {
    // No status: no disruption controller has judged it (kubesim); it blocks nothing.
    let allowed = pdb.status.as_ref()?.disruptions_allowed;
    (allowed <= 0).then(|| Exhausted {
        namespace: pdb.namespace().unwrap_or_default(),
        match_labels: pdb
            .spec
            .as_ref()
            .and_then(|s| s.selector.clone())
            .and_then(|s: LabelSelector| s.match_labels)
            .unwrap_or_default(),
    })
}

async fn watch_kind<K: Restartable>(client: Client, store: Shared, changed: tokio::sync::watch::Sender<u64>) {
    use kube::runtime::WatchStreamExt;
    let api: Api<K> = Api::all(client);
    let mut stream = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut relist = BTreeMap::new();
    while let Some(event) = stream.next().await {
        {
            let Ok(mut s) = store.write() else { return };
            match event {
                Ok(Event::Apply(o)) => {
                    let w = o.watched();
                    s.workloads.insert(w.workload.id.clone(), w);
                }
                Ok(Event::Delete(o)) => {
                    s.workloads.remove(&o.watched().workload.id);
                }
                Ok(Event::Init) => relist.clear(),
                Ok(Event::InitApply(o)) => {
                    let w = o.watched();
                    relist.insert(w.workload.id.clone(), w);
                }
                Ok(Event::InitDone) => {
                    s.workloads.retain(|id, _| id.kind != K::KIND);
                    s.workloads.append(&mut relist);
                }
                Err(e) => {
                    tracing::warn!(kind = K::KIND.as_str(), error = %e, "watching workloads for the rollout failed; retrying");
                    continue;
                }
            }
        }
        changed.send_modify(|g| *g += 1);
    }
}

async fn watch_budgets(client: Client, store: Shared) {
    use kube::runtime::WatchStreamExt;
    let api: Api<PodDisruptionBudget> = Api::all(client);
    let mut stream = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    while let Some(event) = stream.next().await {
        let Ok(mut s) = store.write() else { return };
        let key = |p: &PodDisruptionBudget| (p.namespace().unwrap_or_default(), p.name_any());
        match event {
            Ok(Event::Apply(p) | Event::InitApply(p)) => match exhausted(&p) {
                Some(e) => {
                    s.exhausted.insert(key(&p), e);
                }
                None => {
                    s.exhausted.remove(&key(&p));
                }
            },
            Ok(Event::Delete(p)) => {
                s.exhausted.remove(&key(&p));
            }
            Ok(Event::Init) => s.exhausted.clear(),
            Ok(Event::InitDone) => {}
            Err(e) => tracing::warn!(error = %e, "watching PodDisruptionBudgets for the rollout failed; retrying"),
        }
    }
}

/// Keep `store` current: every workload kind the API server serves, and the budgets. Kinds it
/// does not serve are skipped (said once). Runs until the watches end.
pub async fn watch(client: Client, store: Shared, changed: tokio::sync::watch::Sender<u64>) {
    let served = |group: &str, version: &str, plural: &str| {
        let client = client.clone();
        let (group, version, plural) = (group.to_string(), version.to_string(), plural.to_string());
        async move {
            let path = format!("/apis/{group}/{version}");
            match client.list_api_group_resources(&path.replace("/apis/", "")).await {
                Ok(list) => list.resources.iter().any(|r| r.name == plural),
                Err(e) => {
                    tracing::warn!(api = %path, error = %e, "discovery failed; assuming the kind is served");
                    true
                }
            }
        }
    };
    let mut tasks = Vec::new();
    for (plural, kind) in [
        ("deployments", WorkloadKind::Deployment),
        ("statefulsets", WorkloadKind::StatefulSet),
        ("daemonsets", WorkloadKind::DaemonSet),
    ] {
        if !served("apps", "v1", plural).await {
            tracing::info!(
                kind = kind.as_str(),
                "the API server does not serve this kind; the rollout skips it"
            );
            continue;
        }
        let (c, s, ch) = (client.clone(), store.clone(), changed.clone());
        tasks.push(match kind {
            WorkloadKind::Deployment => tokio::spawn(watch_kind::<Deployment>(c, s, ch)),
            WorkloadKind::StatefulSet => tokio::spawn(watch_kind::<StatefulSet>(c, s, ch)),
            WorkloadKind::DaemonSet => tokio::spawn(watch_kind::<DaemonSet>(c, s, ch)),
        });
    }
    if served("policy", "v1", "poddisruptionbudgets").await {
        tasks.push(tokio::spawn(watch_budgets(client.clone(), store.clone())));
    }
    struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            for t in &self.0 {
                t.abort();
            }
        }
    }
    // The watchers run until this task is aborted (leadership lost), and stop with it.
    let _watchers = AbortOnDrop(tasks);
    futures::future::pending::<()>().await;
}

/// The merge patch of an assignment: the proxy image on the pod template, and a restart as
/// `kubectl rollout restart` makes it.
pub fn assignment_patch(image: &str, now: SystemTime) -> serde_json::Value {
    let at = k8s_openapi::jiff::Timestamp::try_from(now)
        .map(|t| t.to_string())
        .unwrap_or_default();
    serde_json::json!({"spec": {"template": {"metadata": {"annotations": {
        PROXY_IMAGE_ANNOTATION: image,
        RESTARTED_AT_ANNOTATION: at,
    }}}}})
}

/// Make `a`: patch the workload's pod template (its controller then rolls its pods with its own
/// strategy): the injector's annotation, or a gateway's proxy container.
pub async fn assign(client: &Client, a: &Assignment, now: SystemTime) -> Result<(), kube::Error> {
    let patch = match &a.gateway {
        None => Patch::Merge(assignment_patch(&a.image, now)),
        Some(g) => Patch::Strategic(gateway::assignment_patch(g, &a.image, now)),
    };
    let params = PatchParams::default();
    let (ns, name) = (a.workload.namespace.as_str(), a.workload.name.as_str());
    match a.workload.kind {
        WorkloadKind::Deployment => {
            Api::<Deployment>::namespaced(client.clone(), ns)
                .patch(name, &params, &patch)
                .await?;
        }
        WorkloadKind::StatefulSet => {
            Api::<StatefulSet>::namespaced(client.clone(), ns)
                .patch(name, &params, &patch)
                .await?;
        }
        WorkloadKind::DaemonSet => {
            Api::<DaemonSet>::namespaced(client.clone(), ns)
                .patch(name, &params, &patch)
                .await?;
        }
    }
    Ok(())
}
