//! The data plane as the lifecycle sees it: every pod running a Trellis proxy (an injected
//! sidecar or a gateway, told apart by [`trellis_manifests::sidecar::proxy_in`], as the
//! push API tells roles), with its proxy image, the workload that owns it, its readiness and
//! restarts, whether its proxy ever ran, and whether it is connected and in sync.
//!
//! [`MeshedPod::from_pod`] and [`summarize`] are pure; [`watch`] keeps a [`Pods`] store from a
//! kube-runtime watcher (only what this module reads is kept, not whole pods).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, PodStatus};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use trellis_api::mesh::{DataPlaneStatus, INJECTION_TEMPLATE_ANNOTATION, PROXY_IMAGE_ANNOTATION, ProxyVersionCount};
pub use trellis_manifests::sidecar::ProxyRole;

/// Standalone pods listed in the status at most (the count is in the log and metrics).
pub const STANDALONE_LISTED: usize = 50;

/// The kinds of workload a rollout restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WorkloadKind {
    /// apps/v1 Deployment.
    Deployment,
    /// apps/v1 StatefulSet.
    StatefulSet,
    /// apps/v1 DaemonSet.
    DaemonSet,
}

impl WorkloadKind {
    /// Every kind.
    pub const ALL: [WorkloadKind; 3] = [
        WorkloadKind::Deployment,
        WorkloadKind::StatefulSet,
        WorkloadKind::DaemonSet,
    ];

    /// The kind's name.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkloadKind::Deployment => "Deployment",
            WorkloadKind::StatefulSet => "StatefulSet",
            WorkloadKind::DaemonSet => "DaemonSet",
        }
    }

    /// The kind named `s`.
    pub fn parse(s: &str) -> Option<WorkloadKind> {
        WorkloadKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// A Deployment, StatefulSet or DaemonSet.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WorkloadRef {
    /// Kind.
    pub kind: WorkloadKind,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl std::fmt::Display for WorkloadRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}/{}", self.kind.as_str(), self.namespace, self.name)
    }
}

/// Who controls a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// A workload the rollout can restart.
    Workload(WorkloadRef),
    /// No controller: reported, never deleted.
    Standalone,
    /// Another controller (a Job, an operator's own kind): left to it.
    Other(String),
}

/// A pod running a trellis-proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshedPod {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// A sidecar, or a gateway.
    pub role: ProxyRole,
    /// Whether its proxy container ever ran in this pod ([`proxy_ran`]); one that never did
    /// holds no certificate.
    pub proxy_ran: bool,
    /// The proxy image it runs.
    pub image: String,
    /// Who controls it.
    pub owner: Owner,
    /// Whether it is Ready.
    pub ready: bool,
    /// Container restarts, all containers.
    pub restarts: u32,
    /// A container waiting in CrashLoopBackOff (or another error state), with the reason.
    pub failing: Option<String>,
    /// The hash of the injection template that meshed it (`trellis.dev/injection-template`).
    pub template: Option<String>,
}

impl MeshedPod {
    /// `namespace/name`, as the push keys proxies.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The meshed pod `p`; `None` when it runs no proxy (neither a sidecar nor a gateway), has
    /// finished or is being deleted.
    pub fn from_pod(p: &Pod) -> Option<MeshedPod> {
        let meta = &p.metadata;
        let spec = p.spec.as_ref()?;
        if meta.deletion_timestamp.is_some() {
            return None;
        }
        let status = p.status.as_ref();
        if matches!(status.and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed")) {
            return None;
        }
        let (role, proxy) = trellis_manifests::sidecar::proxy_in(spec)?;
        // The injector records the image it injected; a gateway is not injected, and the
        // annotation would say nothing about its container.
        let recorded = match role {
            ProxyRole::Sidecar => meta.annotations.as_ref().and_then(|a| a.get(PROXY_IMAGE_ANNOTATION)),
            ProxyRole::Gateway => None,
        };
        let image = recorded.cloned().or_else(|| proxy.image.clone()).unwrap_or_default();
        let namespace = meta.namespace.clone().unwrap_or_else(|| "default".into());
        let owner = match meta
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true))
        {
            None => Owner::Standalone,
            Some(o) => match (o.kind.as_str(), o.api_version.as_str()) {
                ("ReplicaSet", "apps/v1") => {
                    // A Deployment's ReplicaSet is named <deployment>-<pod-template-hash>.
                    let hash = meta
                        .labels
                        .as_ref()
                        .and_then(|l| l.get("pod-template-hash"))
                        .map(|h| format!("-{h}"));
                    match hash.and_then(|h| o.name.strip_suffix(&h).map(str::to_string)) {
                        Some(deployment) => Owner::Workload(WorkloadRef {
                            kind: WorkloadKind::Deployment,
                            namespace: namespace.clone(),
                            name: deployment,
                        }),
                        None => Owner::Other(format!("ReplicaSet {}", o.name)),
                    }
                }
                (kind, "apps/v1") if WorkloadKind::parse(kind).is_some() => Owner::Workload(WorkloadRef {
                    kind: WorkloadKind::parse(kind)?,
                    namespace: namespace.clone(),
                    name: o.name.clone(),
                }),
                (kind, _) => Owner::Other(format!("{kind} {}", o.name)),
            },
        };
        let statuses = status.into_iter().flat_map(|s| {
            s.init_container_statuses
                .iter()
                .flatten()
                .chain(s.container_statuses.iter().flatten())
        });
        let mut restarts = 0u32;
        let mut failing = None;
        for c in statuses {
            restarts = restarts.saturating_add(u32::try_from(c.restart_count).unwrap_or(0));
            if let Some(reason) = c
                .state
                .as_ref()
                .and_then(|s| s.waiting.as_ref())
                .and_then(|w| w.reason.as_ref())
                && matches!(
                    reason.as_str(),
                    "CrashLoopBackOff"
                        | "ErrImagePull"
                        | "ImagePullBackOff"
                        | "CreateContainerConfigError"
                        | "InvalidImageName"
                )
            {
                failing = Some(format!("container {} is {reason}", c.name));
            }
        }
        Some(MeshedPod {
            name: meta.name.clone()?,
            namespace,
            role,
            proxy_ran: proxy_ran(status, &proxy.name),
            image,
            owner,
            ready: status
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True")),
            restarts,
            failing,
            template: meta
                .annotations
                .as_ref()
                .and_then(|a| a.get(INJECTION_TEMPLATE_ANNOTATION))
                .cloned(),
        })
    }
}

/// Whether the container `name` ever ran in the pod whose status is `status`: it runs
/// (`state.running`), it stopped (`state.terminated`), it stopped before (`lastState.terminated`),
/// or it was restarted (`restartCount` above 0). A container the kubelet never started — its
/// image not pulled, its configuration not resolved, the pod not scheduled yet — has none of
/// these. A proxy obtains its certificate once it runs and keeps it in the pod's in-memory
/// volume, so one that never ran holds none, while one that ran and stopped (or restarts) may
/// still hold its last one.
///
/// # Caveats
/// A container that failed to start after being created (`terminated` with a start error) is
/// counted as having run: wrongly counting one holds a trust domain change longer, never ends
/// it early.
pub fn proxy_ran(status: Option<&PodStatus>, name: &str) -> bool {
    let Some(c) = status.into_iter().find_map(|s| {
        s.init_container_statuses
            .iter()
            .flatten()
            .chain(s.container_statuses.iter().flatten())
            .find(|c| c.name == name)
    }) else {
        return false;
    };
    let state = c.state.as_ref();
    state.is_some_and(|s| s.running.is_some() || s.terminated.is_some())
        || c.last_state.as_ref().is_some_and(|s| s.terminated.is_some())
        || c.restart_count > 0
}

/// A proxy's link to the control plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProxyLink {
    /// A subscription is open.
    pub connected: bool,
    /// It ACKed the last version sent.
    pub synced: bool,
}

/// The proxies' links by `namespace/pod`, from push sync states.
pub fn links(sync: &[crate::push::ProxySync]) -> BTreeMap<String, ProxyLink> {
    sync.iter()
        .map(|p| {
            (
                p.proxy.clone(),
                ProxyLink {
                    connected: p.connected,
                    synced: p.connected && p.sent.is_some() && p.sent == p.acked,
                },
            )
        })
        .collect()
}

/// The data plane's status: proxies per image per namespace, how many run `target`, are
/// connected and in sync, and the standalone pods.
pub fn summarize<'a>(
    pods: impl IntoIterator<Item = &'a MeshedPod>,
    links: &BTreeMap<String, ProxyLink>,
    target: &str,
) -> DataPlaneStatus {
    let mut status = DataPlaneStatus::default();
    let mut versions: BTreeMap<(String, String), ProxyVersionCount> = BTreeMap::new();
    let mut standalone = Vec::new();
    for pod in pods {
        let link = links.get(&pod.key()).copied().unwrap_or_default();
        status.proxies += 1;
        status.up_to_date += u32::from(pod.image == target);
        status.connected += u32::from(link.connected);
        status.synced += u32::from(link.synced);
        let v = versions
            .entry((pod.namespace.clone(), pod.image.clone()))
            .or_insert_with(|| ProxyVersionCount {
                namespace: pod.namespace.clone(),
                image: pod.image.clone(),
                ..ProxyVersionCount::default()
            });
        v.pods += 1;
        v.connected += u32::from(link.connected);
        v.synced += u32::from(link.synced);
        if pod.owner == Owner::Standalone {
            standalone.push(pod.key());
        }
    }
    standalone.sort();
    standalone.truncate(STANDALONE_LISTED);
    status.versions = (!versions.is_empty()).then(|| versions.into_values().collect());
    status.standalone_pods = (!standalone.is_empty()).then_some(standalone);
    status
}

/// The meshed pods, by `namespace/name`.
pub type Pods = Arc<RwLock<BTreeMap<String, MeshedPod>>>;

/// Keep `pods` current from a watch on every pod; runs until the watch ends.
pub async fn watch(client: Client, pods: Pods, changed: tokio::sync::watch::Sender<u64>) {
    use kube::runtime::WatchStreamExt;
    let api: Api<Pod> = Api::all(client);
    let mut stream = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut relisting: BTreeMap<String, MeshedPod> = BTreeMap::new();
    while let Some(event) = stream.next().await {
        let key = |p: &Pod| {
            format!(
                "{}/{}",
                p.metadata.namespace.as_deref().unwrap_or_default(),
                p.metadata.name.as_deref().unwrap_or_default()
            )
        };
        {
            let Ok(mut store) = pods.write() else { return };
            match event {
                Ok(Event::Apply(p)) => match MeshedPod::from_pod(&p) {
                    Some(m) => {
                        store.insert(key(&p), m);
                    }
                    None => {
                        store.remove(&key(&p));
                    }
                },
                Ok(Event::Delete(p)) => {
                    store.remove(&key(&p));
                }
                Ok(Event::Init) => relisting.clear(),
                Ok(Event::InitApply(p)) => {
                    if let Some(m) = MeshedPod::from_pod(&p) {
                        relisting.insert(key(&p), m);
                    }
                }
                Ok(Event::InitDone) => *store = std::mem::take(&mut relisting),
                Err(e) => {
                    tracing::warn!(error = %e, "watching pods for the data plane status failed; retrying");
                    continue;
                }
            }
        }
        changed.send_modify(|g| *g += 1);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    fn meshed(name: &str, owner: serde_json::Value, annotations: serde_json::Value) -> Pod {
        pod(json!({
            "metadata": {"name": name, "namespace": "shop", "labels": {"pod-template-hash": "5d8f"},
                         "ownerReferences": owner, "annotations": annotations},
            "spec": {"initContainers": [{"name": "trellis-proxy", "image": "proxy:1", "restartPolicy": "Always"}],
                     "containers": [{"name": "app", "image": "app"}]},
            "status": {"conditions": [{"type": "Ready", "status": "True"}],
                       "containerStatuses": [{"name": "app", "restartCount": 2, "ready": true, "image": "app", "imageID": "",
                                              "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}
        }))
    }

    #[test]
    fn pods_are_read_with_their_owner_image_and_health() {
        let rs = json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5d8f", "uid": "1", "controller": true}]);
        let p = MeshedPod::from_pod(&meshed("web-5d8f-abc", rs, json!({}))).unwrap();
        assert_eq!(
            p.owner,
            Owner::Workload(WorkloadRef {
                kind: WorkloadKind::Deployment,
                namespace: "shop".into(),
                name: "web".into()
            })
        );
        assert_eq!(p.image, "proxy:1", "from the container without the annotation");
        assert!(p.ready);
        assert_eq!(p.restarts, 2);
        assert_eq!(p.failing.as_deref(), Some("container app is CrashLoopBackOff"));

        let sts =
            json!([{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "db", "uid": "2", "controller": true}]);
        let p = MeshedPod::from_pod(&meshed("db-0", sts, json!({PROXY_IMAGE_ANNOTATION: "proxy:2"}))).unwrap();
        assert_eq!(p.image, "proxy:2", "the injector's record wins");
        assert!(matches!(
            p.owner,
            Owner::Workload(WorkloadRef {
                kind: WorkloadKind::StatefulSet,
                ..
            })
        ));

        let job = json!([{"apiVersion": "batch/v1", "kind": "Job", "name": "migrate", "uid": "3", "controller": true}]);
        assert_eq!(
            MeshedPod::from_pod(&meshed("migrate-x", job, json!({}))).unwrap().owner,
            Owner::Other("Job migrate".into())
        );
        assert_eq!(
            MeshedPod::from_pod(&meshed("debug", json!([]), json!({})))
                .unwrap()
                .owner,
            Owner::Standalone
        );
        let plain = pod(json!({"metadata": {"name": "plain", "namespace": "shop"},
                               "spec": {"containers": [{"name": "app", "image": "app"}]}}));
        assert!(MeshedPod::from_pod(&plain).is_none(), "no proxy, not meshed");
    }

    #[test]
    fn a_terminating_or_finished_pod_counts_neither_up_to_date_nor_out_of_date() {
        // A rollout: web-new runs the target image; web-old, on the previous one, is being
        // deleted (its proxy may still be connected while it drains), and a finished Job's
        // pod ran it too. As `kubectl rollout status` and a ReplicaSet's status.replicas,
        // neither counts: the data plane is up to date with one proxy.
        let rs = json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5d8f", "uid": "1", "controller": true}]);
        let at = |image: &str| json!({PROXY_IMAGE_ANNOTATION: image});
        let new = meshed("web-5d8f-new", rs.clone(), at("proxy:2"));
        let mut old = meshed("web-5d8f-old", rs, at("proxy:1"));
        old.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
        ));
        let mut done = meshed("migrate-x", json!([]), at("proxy:1"));
        done.status.get_or_insert_with(Default::default).phase = Some("Succeeded".into());
        let pods: Vec<MeshedPod> = [&new, &old, &done]
            .into_iter()
            .filter_map(MeshedPod::from_pod)
            .collect();
        let connected = ProxyLink {
            connected: true,
            synced: true,
        };
        let links = BTreeMap::from([
            ("shop/web-5d8f-new".to_string(), connected),
            ("shop/web-5d8f-old".to_string(), connected),
        ]);
        let s = summarize(&pods, &links, "proxy:2");
        assert_eq!((s.proxies, s.up_to_date, s.connected, s.synced), (1, 1, 1, 1));
        assert_eq!(s.versions.unwrap().len(), 1, "no proxy:1 line for pods going away");
    }

    #[test]
    fn a_gateway_pod_is_a_meshed_pod_in_the_gateway_role() {
        let settings = trellis_manifests::sidecar::Settings::new(&trellis_manifests::install::Options::default());
        let template = trellis_manifests::sidecar::gateway_pod_template("trellis-ingressgateway", &settings, &[8080]);
        let mut gateway = pod(json!({
            "metadata": {"name": "trellis-ingressgateway-5d8f-x", "namespace": "shop",
                         "labels": {"pod-template-hash": "5d8f"},
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                              "name": "trellis-ingressgateway-5d8f", "uid": "1", "controller": true}]},
            "status": {"containerStatuses": [{"name": "gateway", "restartCount": 0, "ready": true, "image": "", "imageID": "",
                                              "state": {"running": {"startedAt": "2026-12-06T12:00:00Z"}}}]}
        }));
        gateway.spec = template.spec;
        let p = MeshedPod::from_pod(&gateway).expect("a gateway runs a proxy");
        assert_eq!(p.role, ProxyRole::Gateway);
        assert!(p.proxy_ran);
        assert_eq!(p.image, settings.proxy_image);
        // The injector's annotation is not a gateway's image: its container is.
        gateway
            .metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(PROXY_IMAGE_ANNOTATION.into(), "proxy:elsewhere".into());
        assert_eq!(MeshedPod::from_pod(&gateway).unwrap().image, settings.proxy_image);
        let sidecar = MeshedPod::from_pod(&meshed("web-5d8f-abc", json!([]), json!({}))).unwrap();
        assert_eq!(sidecar.role, ProxyRole::Sidecar);
    }

    #[test]
    fn a_proxy_ran_if_it_runs_stopped_or_restarted_and_never_ran_if_only_waiting() {
        let with = |proxy: serde_json::Value| {
            let mut p = meshed("web-5d8f-abc", json!([]), json!({}));
            let status = p.status.get_or_insert_with(Default::default);
            status.init_container_statuses = Some(vec![serde_json::from_value(proxy).unwrap()]);
            MeshedPod::from_pod(&p).unwrap().proxy_ran
        };
        let status = |state: serde_json::Value, last: serde_json::Value, restarts: i32| {
            json!({"name": "trellis-proxy", "image": "proxy:1", "imageID": "", "ready": false,
                   "restartCount": restarts, "state": state, "lastState": last})
        };
        let waiting = |reason: &str| json!({"waiting": {"reason": reason}});
        let terminated = json!({"terminated": {"exitCode": 137, "reason": "Error"}});
        // Never started: its image not pulled, its configuration not resolved.
        assert!(!with(status(waiting("ImagePullBackOff"), json!({}), 0)));
        assert!(!with(status(waiting("CreateContainerConfigError"), json!({}), 0)));
        assert!(!with(status(waiting("ContainerCreating"), json!({}), 0)));
        // Not even a status yet (not scheduled).
        let mut pending = meshed("web-5d8f-abc", json!([]), json!({}));
        pending.status = None;
        assert!(!MeshedPod::from_pod(&pending).unwrap().proxy_ran);
        // Ran: running, stopped, stopped before, or restarted.
        assert!(with(status(
            json!({"running": {"startedAt": "2026-12-06T12:00:00Z"}}),
            json!({}),
            0
        )));
        assert!(with(status(terminated.clone(), json!({}), 0)));
        assert!(with(status(waiting("CreateContainerConfigError"), terminated, 0)));
        assert!(with(status(waiting("CrashLoopBackOff"), json!({}), 3)));
    }

    #[test]
    fn the_summary_counts_versions_per_namespace() {
        let mk = |ns: &str, name: &str, image: &str, owner: Owner| MeshedPod {
            namespace: ns.into(),
            name: name.into(),
            role: ProxyRole::Sidecar,
            proxy_ran: true,
            image: image.into(),
            owner,
            ready: true,
            restarts: 0,
            failing: None,
            template: None,
        };
        let pods = [
            mk("shop", "a", "proxy:1", Owner::Standalone),
            mk("shop", "b", "proxy:2", Owner::Other("Job j".into())),
            mk("shop", "c", "proxy:2", Owner::Other("Job j".into())),
            mk("web", "d", "proxy:2", Owner::Other("Job j".into())),
        ];
        let links = BTreeMap::from([
            (
                "shop/b".to_string(),
                ProxyLink {
                    connected: true,
                    synced: true,
                },
            ),
            (
                "shop/c".to_string(),
                ProxyLink {
                    connected: true,
                    synced: false,
                },
            ),
        ]);
        let s = summarize(&pods, &links, "proxy:2");
        assert_eq!((s.proxies, s.up_to_date, s.connected, s.synced), (4, 3, 2, 1));
        let versions = s.versions.unwrap();
        assert_eq!(versions.len(), 3);
        assert_eq!(
            versions[1],
            ProxyVersionCount {
                namespace: "shop".into(),
                image: "proxy:2".into(),
                pods: 2,
                connected: 2,
                synced: 1
            }
        );
        assert_eq!(s.standalone_pods, Some(vec!["shop/a".to_string()]));
    }
}
