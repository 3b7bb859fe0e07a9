//! The node side of kubesim, for now simulated: a scheduler that binds
//! every pod to the single node, and a kubelet that reports bound pods as
//! Running and Ready with an address from the pod range, without running
//! anything.
//!
//! # Caveats
//! - No process runs, no probe is executed, no network namespace exists.
//!   The process runner (issue 5, section 3) replaces [`sweep`]'s status
//!   writes with real ones; the scheduler stays.

use std::collections::BTreeSet;

use serde_json::{Value, json};
use tracing::debug;

use crate::clock;
use crate::cluster::{Cluster, WriteOptions};

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

/// One pass: bind unscheduled pods, start bound pending ones.
pub fn sweep(cluster: &Cluster) -> bool {
    let Some(rt) = cluster.catalog.get("", "v1", "pods") else {
        return false;
    };
    let (pods, _) = cluster.store.list(&rt.group_resource(), None);
    let mut used: BTreeSet<String> = pods
        .iter()
        .filter_map(|p| p.pointer("/status/podIP").and_then(Value::as_str).map(str::to_string))
        .collect();
    let mut changed = false;
    for pod in pods {
        if pod.pointer("/metadata/deletionTimestamp").is_some() {
            continue;
        }
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
        if pod
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            let mut bound = pod.clone();
            bound["spec"]["nodeName"] = json!(NODE_NAME);
            match cluster.update(&rt, Some(&ns), &name, "", bound, &opts("kubesim-scheduler")) {
                Ok(_) => changed = true,
                Err(e) => debug!(%ns, %name, error = %e, "binding retried later"),
            }
            continue;
        }
        if pod.pointer("/status/phase").and_then(Value::as_str) != Some("Pending") {
            continue;
        }
        let Some(ip) = allocate_ip(&used) else { continue };
        used.insert(ip.clone());
        let mut started = pod.clone();
        started["status"] = running_status(&pod, &ip);
        match cluster.update(&rt, Some(&ns), &name, "status", started, &opts("kubesim-kubelet")) {
            Ok(_) => changed = true,
            Err(e) => debug!(%ns, %name, error = %e, "pod start retried later"),
        }
    }
    changed
}
