//! The node side of kubesim: a scheduler that binds every pod to the
//! single node, and a kubelet loop that starts bound pods through a
//! [`PodRuntime`], and finishes graceful deletions (stop, then remove).
//!
//! Two runtimes: [`Simulated`] reports pods Running and Ready with an
//! address from the pod range without running anything (fast API tests);
//! [`crate::runner::ProcessRuntime`] really runs them as processes.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use serde_json::{Value, json};
use tracing::debug;

use crate::clock;
use crate::cluster::{Cluster, DeleteOptions, WriteOptions};

/// What a runtime gets from the kubesim it runs in ([`PodRuntime::bind`]).
#[derive(Debug, Clone)]
pub struct RuntimeContext {
    pub cluster: Arc<Cluster>,
    /// The API server's address (loopback).
    pub api_address: SocketAddr,
    /// The pod network, when kubesim has one.
    pub network: Option<Arc<crate::network::PodNetwork>>,
    pub state_dir: PathBuf,
}

/// What runs a pod's containers.
///
/// # Guarantees expected from an implementation
/// - `bind` is called once, before any pod, by [`crate::app::start`].
/// - `start` is called once per pod (by uid) after it is bound, and returns
///   the pod's first status (phase, `podIP`, conditions, container
///   statuses). A runtime may keep writing the status afterwards; a pod
///   whose status has a `podIP` counts as started and is not started again.
/// - `stop` is called when the pod is being deleted, repeatedly, until it
///   returns true (everything stopped); then the object goes.
/// - `reconcile` gets the uids of every pod object, so pods removed
///   without a grace period are stopped too.
/// - `shutdown` stops everything (kubesim is stopping).
pub trait PodRuntime: Send + Sync + std::fmt::Debug {
    /// Called once with the running kubesim.
    fn bind(&self, _ctx: &RuntimeContext) {}
    /// Starts a bound pod with the address `ip`; returns its status.
    fn start(&self, pod: &Value, ip: &str) -> Result<Value, String>;
    /// Stops everything the pod runs; true once it has stopped.
    fn stop(&self, pod: &Value) -> bool;
    /// The uids of all pod objects that exist.
    fn reconcile(&self, _live: &BTreeSet<String>) {}
    /// The log of one container (`kubectl logs`).
    fn logs(&self, pod: &Value, container: &str, options: &LogOptions) -> Result<String, String>;
    /// The log so far and then new lines as they come (`kubectl logs -f`),
    /// until the container stops.
    fn follow_logs(
        &self,
        pod: &Value,
        container: &str,
        options: &LogOptions,
    ) -> Result<tokio::sync::mpsc::Receiver<bytes::Bytes>, String> {
        let text = self.logs(pod, container, options)?;
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let _ = tx.try_send(bytes::Bytes::from(text));
        Ok(rx)
    }
    /// A command that runs `command` inside a running container
    /// (`kubectl exec`).
    fn exec(&self, pod: &Value, container: &str, _command: &[String]) -> Result<tokio::process::Command, String> {
        let name = pod
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        Err(format!(
            "cannot exec in container \"{container}\" of pod \"{name}\": kubesim's simulated kubelet does not run containers"
        ))
    }
    /// The network namespace of a running pod (`kubectl port-forward` connects inside it).
    fn netns(&self, pod: &Value) -> Result<std::path::PathBuf, String> {
        let name = pod
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        Err(format!(
            "cannot forward a port of pod \"{name}\": kubesim's simulated kubelet does not run pods"
        ))
    }
    /// Stops every pod at once (kubesim is stopping).
    fn shutdown(&self) {}
}

/// What `kubectl logs` asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogOptions {
    pub tail_lines: Option<usize>,
    pub previous: bool,
    pub timestamps: bool,
}

/// Pods are reported Running and Ready; nothing runs.
#[derive(Debug, Default, Clone, Copy)]
pub struct Simulated;

impl PodRuntime for Simulated {
    /// Pods that run to completion (`restartPolicy` Never or OnFailure,
    /// as Jobs use) are reported Succeeded; all others Running and Ready.
    fn start(&self, pod: &Value, ip: &str) -> Result<Value, String> {
        let batch = matches!(
            pod.pointer("/spec/restartPolicy").and_then(Value::as_str),
            Some("Never" | "OnFailure")
        );
        Ok(if batch {
            succeeded_status(pod, ip)
        } else {
            running_status(pod, ip)
        })
    }

    fn stop(&self, _pod: &Value) -> bool {
        true
    }

    fn logs(&self, pod: &Value, container: &str, _options: &LogOptions) -> Result<String, String> {
        let name = pod
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        Err(format!(
            "container \"{container}\" in pod \"{name}\" has no logs: kubesim's simulated kubelet does not run containers"
        ))
    }
}

/// The one node's name.
pub const NODE_NAME: &str = "kubesim";

/// Pod addresses come from 10.244.0.0/16 (kind's default pod range).
const POD_NET: [u8; 2] = [10, 244];

fn opts(manager: &str) -> WriteOptions {
    WriteOptions {
        field_manager: Some(manager.into()),
        ..Default::default()
    }
}

fn allocate_ip(used: &BTreeSet<String>) -> Option<String> {
    let [a, b] = POD_NET;
    // .0.0 and .0.1 are the network and the bridge.
    (2u32..65534)
        .map(|i| format!("{a}.{b}.{}.{}", i / 256, i % 256))
        .find(|ip| !used.contains(ip))
}

/// The status a started pod reports.
fn running_status(pod: &Value, ip: &str) -> Value {
    let now = clock::now_rfc3339();
    let cond = |t: &str| json!({"type": t, "status": "True", "lastProbeTime": null, "lastTransitionTime": now});
    let statuses: Vec<Value> = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|c| {
            let image = c["image"].as_str().unwrap_or_default();
            json!({
                "name": c["name"], "image": image, "imageID": format!("kubesim://{image}"),
                "containerID": format!("kubesim://{}", uuid::Uuid::new_v4().simple()),
                "ready": true, "started": true, "restartCount": 0,
                "state": {"running": {"startedAt": now}}
            })
        })
        .collect();
    json!({
        "phase": "Running",
        "conditions": [cond("PodReadyToStartContainers"), cond("Initialized"), cond("Ready"), cond("ContainersReady"), cond("PodScheduled")],
        "hostIP": "127.0.0.1", "hostIPs": [{"ip": "127.0.0.1"}],
        "podIP": ip, "podIPs": [{"ip": ip}],
        "startTime": now,
        "qosClass": pod.pointer("/status/qosClass").cloned().unwrap_or(json!("BestEffort")),
        "containerStatuses": statuses,
    })
}

/// The status of a pod whose containers all exited 0.
fn succeeded_status(pod: &Value, ip: &str) -> Value {
    let mut status = running_status(pod, ip);
    let now = clock::now_rfc3339();
    status["phase"] = json!("Succeeded");
    if let Some(cs) = status["containerStatuses"].as_array_mut() {
        for c in cs {
            c["ready"] = json!(false);
            c["started"] = json!(false);
            c["state"] =
                json!({"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": now, "finishedAt": now}});
        }
    }
    if let Some(conds) = status["conditions"].as_array_mut() {
        for c in conds
            .iter_mut()
            .filter(|c| c["type"] == "Ready" || c["type"] == "ContainersReady")
        {
            c["status"] = json!("False");
            c["reason"] = json!("PodCompleted");
        }
    }
    status
}

/// One pass: bind unscheduled pods, start bound pending ones, finish the
/// graceful deletion of deleting ones.
pub fn sweep(cluster: &Cluster, runtime: &dyn PodRuntime) -> bool {
    let Some(rt) = cluster.catalog.get("", "v1", "pods") else {
        return false;
    };
    let (pods, _) = cluster.store.list(&rt.group_resource(), None);
    let mut used: BTreeSet<String> = pods
        .iter()
        .filter_map(|p| p.pointer("/status/podIP").and_then(Value::as_str).map(str::to_string))
        .collect();
    runtime.reconcile(
        &pods
            .iter()
            .filter_map(|p| p.pointer("/metadata/uid").and_then(Value::as_str).map(str::to_string))
            .collect(),
    );
    let mut changed = false;
    // A cordoned node (`kubectl cordon/drain`) takes no new pods.
    let schedulable = cluster
        .catalog
        .get("", "v1", "nodes")
        .and_then(|n| cluster.store.get(&Cluster::key(&n, None, NODE_NAME)))
        .is_some_and(|n| n.pointer("/spec/unschedulable").and_then(Value::as_bool) != Some(true));
    for pod in pods {
        let ns = pod
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("default")
            .to_string();
        let name = pod
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if pod.pointer("/metadata/deletionTimestamp").is_some() {
            let finalizing = pod
                .pointer("/metadata/finalizers")
                .and_then(Value::as_array)
                .is_some_and(|f| !f.is_empty());
            if !finalizing {
                if !runtime.stop(&pod) {
                    // Still terminating; the runtime's status writes and the
                    // loop's tick bring us back.
                    continue;
                }
                let now = DeleteOptions {
                    grace_period_seconds: Some(0),
                    ..Default::default()
                };
                match cluster.delete(&rt, Some(&ns), &name, &now) {
                    Ok(_) => changed = true,
                    Err(e) => debug!(%ns, %name, error = %e, "pod removal retried later"),
                }
            }
            continue;
        }
        if pod
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            if !schedulable {
                continue;
            }
            let mut bound = pod.clone();
            bound["spec"]["nodeName"] = json!(NODE_NAME);
            match cluster.update(&rt, Some(&ns), &name, "", bound, &opts("kubesim-scheduler")) {
                Ok(w) => {
                    let msg = format!("Successfully assigned {ns}/{name} to {NODE_NAME}");
                    crate::events::normal(cluster, &w.object, "v1", "Pod", "Scheduled", &msg, "default-scheduler");
                    changed = true;
                }
                Err(e) => debug!(%ns, %name, error = %e, "binding retried later"),
            }
            continue;
        }
        if pod.pointer("/status/phase").and_then(Value::as_str) != Some("Pending")
            || pod
                .pointer("/status/podIP")
                .and_then(Value::as_str)
                .is_some_and(|ip| !ip.is_empty())
        {
            continue;
        }
        let Some(ip) = allocate_ip(&used) else { continue };
        used.insert(ip.clone());
        let mut started = pod.clone();
        started["status"] = match runtime.start(&pod, &ip) {
            Ok(status) => status,
            Err(e) => {
                debug!(%ns, %name, error = %e, "pod start failed");
                continue;
            }
        };
        match cluster.update(&rt, Some(&ns), &name, "status", started, &opts("kubesim-kubelet")) {
            // A runtime that reports the pod Running at once (the simulated
            // one) gets its Started events here; others record their own.
            Ok(w) if w.object.pointer("/status/phase").and_then(Value::as_str) == Some("Running") => {
                for c in pod
                    .pointer("/spec/containers")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let msg = format!("Started container {}", c["name"].as_str().unwrap_or_default());
                    crate::events::normal(cluster, &w.object, "v1", "Pod", "Started", &msg, "kubelet");
                }
                changed = true;
            }
            Ok(_) => changed = true,
            Err(e) => debug!(%ns, %name, error = %e, "pod start retried later"),
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Records what the kubelet asked of it.
    #[derive(Debug, Default)]
    struct Recording {
        calls: Mutex<Vec<String>>,
    }

    impl PodRuntime for Recording {
        fn start(&self, pod: &Value, ip: &str) -> Result<Value, String> {
            self.calls.lock().unwrap().push(format!(
                "start {} {ip}",
                pod["metadata"]["name"].as_str().unwrap_or_default()
            ));
            Ok(running_status(pod, ip))
        }
        fn stop(&self, pod: &Value) -> bool {
            self.calls
                .lock()
                .unwrap()
                .push(format!("stop {}", pod["metadata"]["name"].as_str().unwrap_or_default()));
            true
        }
        fn logs(&self, _pod: &Value, container: &str, _options: &LogOptions) -> Result<String, String> {
            Ok(format!("log of {container}\n"))
        }
    }

    #[test]
    fn pods_are_bound_started_and_stopped_before_removal() {
        let c = Cluster::with_default_namespace();
        let nodes = c.catalog.get("", "v1", "nodes").unwrap();
        c.create(
            &nodes,
            None,
            json!({"metadata": {"name": NODE_NAME}}),
            &WriteOptions::default(),
        )
        .unwrap();
        let pods = c.catalog.get("", "v1", "pods").unwrap();
        let pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a", "image": "x"}]}});
        c.create(&pods, Some("default"), pod, &WriteOptions::default()).unwrap();
        let rt = Recording::default();
        while sweep(&c, &rt) {}
        let running = c.get(&pods, Some("default"), "p").unwrap();
        assert_eq!(running["spec"]["nodeName"], NODE_NAME);
        assert_eq!(running["status"]["phase"], "Running");
        assert_eq!(running["status"]["podIP"], "10.244.0.2");

        // Deletion is graceful: marked first, stopped, then removed.
        let marked = c
            .delete(&pods, Some("default"), "p", &DeleteOptions::default())
            .unwrap();
        assert_eq!(marked["metadata"]["deletionGracePeriodSeconds"], 30);
        assert!(c.get(&pods, Some("default"), "p").is_ok());
        while sweep(&c, &rt) {}
        assert_eq!(c.get(&pods, Some("default"), "p").unwrap_err().code, 404);
        assert_eq!(*rt.calls.lock().unwrap(), ["start p 10.244.0.2", "stop p"]);
    }
}
