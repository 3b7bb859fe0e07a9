//! The operator's admin API (port 15014) on every replica, through the API server's pod proxy
//! (`pods/proxy` in trellis-system, as `kubectl get --raw` reaches it): each replica serves
//! the proxies subscribed to it, so what is about proxies — their traffic (`meshctl stat`,
//! `meshctl top`), their sync state and the certificates they serve (`meshctl check`,
//! `meshctl analyze`) — is asked of every running one.

use anyhow::bail;
use serde_json::Value;
use trellis_api::mesh::SYSTEM_NAMESPACE;
use trellis_core::analysis::{ProxySync, merge_sync_states};
use trellis_manifests::install::{ADMIN_PORT, OPERATOR_NAME};

use crate::cluster::{Cluster, ClusterError};

/// The operator pods that serve: running, not going. Replicas still starting, or going (a
/// rollout), serve nothing worth reading.
pub async fn running_replicas(cluster: &Cluster) -> anyhow::Result<Vec<String>> {
    let ns = SYSTEM_NAMESPACE;
    let selector = format!("app={OPERATOR_NAME}");
    let pods = cluster.list("v1", "Pod", Some(&selector), None).await?;
    Ok(pods
        .iter()
        .filter(|p| {
            p.pointer("/metadata/namespace").and_then(Value::as_str) == Some(ns)
                && p.pointer("/status/phase").and_then(Value::as_str) == Some("Running")
                && p.pointer("/metadata/deletionTimestamp").is_none_or(Value::is_null)
        })
        .filter_map(|p| p.pointer("/metadata/name").and_then(Value::as_str).map(str::to_string))
        .collect())
}

/// `GET path` of the admin API of each of the operator pods `names`: each pod's name with its
/// answer or why there is none.
pub async fn ask(cluster: &Cluster, names: Vec<String>, path: &str) -> Vec<(String, Result<String, ClusterError>)> {
    let ns = SYSTEM_NAMESPACE;
    let mut answers = Vec::with_capacity(names.len());
    for name in names {
        let answer = cluster
            .get_text(&format!("/api/v1/namespaces/{ns}/pods/{name}:{ADMIN_PORT}/proxy{path}"))
            .await;
        answers.push((name, answer));
    }
    answers
}

/// `GET path` (e.g. `/debug/syncz`) of every running operator pod's admin API: each pod's name
/// with its answer or why there is none. Fails when no operator pod runs.
pub async fn each_replica(
    cluster: &Cluster,
    path: &str,
) -> anyhow::Result<Vec<(String, Result<String, ClusterError>)>> {
    let names = running_replicas(cluster).await?;
    if names.is_empty() {
        bail!("no running {OPERATOR_NAME} pod in namespace {SYSTEM_NAMESPACE}: is Trellis installed? (meshctl check)");
    }
    Ok(ask(cluster, names, path).await)
}

/// The sync state of every proxy subscribed to one of the operator pods `names`: each pod's own
/// proxies (`/debug/syncz?scope=local`; without it a replica adds its peers' proxies as it last
/// polled them, up to seconds old), merged by the operator's rule
/// ([`trellis_core::analysis::merge_sync_states`]). Also why each pod that gave no usable
/// answer did not (its proxies are missing from the states).
pub async fn sync_states(cluster: &Cluster, names: Vec<String>) -> (Vec<ProxySync>, Vec<String>) {
    let mut states = Vec::new();
    let mut errors = Vec::new();
    for (name, answer) in ask(cluster, names, "/debug/syncz?scope=local").await {
        let pod = format!("operator pod {SYSTEM_NAMESPACE}/{name}");
        match answer.map(|text| serde_json::from_str::<Vec<ProxySync>>(&text)) {
            Ok(Ok(answered)) => states.extend(answered),
            Ok(Err(e)) => errors.push(format!("{pod}: its /debug/syncz is not a list of sync states: {e}")),
            Err(e) => errors.push(format!("{pod}: {e}")),
        }
    }
    (merge_sync_states(states), errors)
}
