//! The operator's admin API (port 15014) on every replica, through the API server's pod proxy
//! (`pods/proxy` in trellis-system, as `kubectl get --raw` reaches it): each replica serves
//! the proxies subscribed to it, so what is about proxies — their traffic (`meshctl stat`,
//! `meshctl top`) — is asked of every running one.

use anyhow::bail;
use serde_json::Value;
use trellis_api::mesh::SYSTEM_NAMESPACE;
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
