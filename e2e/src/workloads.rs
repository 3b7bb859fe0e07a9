//! Workload controllers: Deployment → ReplicaSets (pod-template-hash,
//! rolling updates with maxSurge/maxUnavailable, Recreate, revisions and
//! history limit), ReplicaSet → Pods, with the status fields
//! `kubectl rollout status` reads, and Job → Pods (parallelism,
//! completions, backoffLimit, Complete/Failed conditions).

use std::collections::HashMap;

use serde_json::{Value, json};
use tracing::debug;

use crate::cluster::{Cluster, DeleteOptions, WriteOptions};
use crate::resources::ResourceType;
use crate::selector::LabelSelector;

const MANAGER: &str = "kubesim-controller-manager";

fn opts() -> WriteOptions {
    WriteOptions {
        field_manager: Some(MANAGER.into()),
        ..Default::default()
    }
}

fn meta<'a>(o: &'a Value, f: &str) -> &'a str {
    o.get("metadata")
        .and_then(|m| m.get(f))
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn int(o: &Value, ptr: &str) -> i64 {
    o.pointer(ptr).and_then(Value::as_i64).unwrap_or(0)
}

fn controlled_by(o: &Value, uid: &str) -> bool {
    o.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .is_some_and(|refs| refs.iter().any(|r| r["uid"] == uid && r["controller"] == json!(true)))
}

/// The objects (not being deleted) by the uid of the controller that owns them: one read of
/// a resource serves a whole sweep, instead of a list of the namespace per owner.
fn by_controller(objects: Vec<Value>) -> HashMap<String, Vec<Value>> {
    let mut owned: HashMap<String, Vec<Value>> = HashMap::new();
    for o in objects.into_iter().filter(|o| !deleting(o)) {
        let controller = o
            .pointer("/metadata/ownerReferences")
            .and_then(Value::as_array)
            .and_then(|refs| refs.iter().find(|r| r["controller"] == json!(true)))
            .and_then(|r| r["uid"].as_str())
            .map(str::to_string);
        if let Some(uid) = controller {
            owned.entry(uid).or_default().push(o);
        }
    }
    owned
}

fn owner_ref(owner: &Value, kind: &str, api_version: &str) -> Value {
    json!({"apiVersion": api_version, "kind": kind, "name": owner["metadata"]["name"], "uid": owner["metadata"]["uid"], "controller": true, "blockOwnerDeletion": true})
}

fn deleting(o: &Value) -> bool {
    o.pointer("/metadata/deletionTimestamp").is_some()
}

/// Whether a pod reports the Ready condition.
pub fn pod_ready(pod: &Value) -> bool {
    pod.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

/// The pod-template-hash: FNV-1a over the template's JSON, its decimal
/// digits mapped onto the API server's safe alphabet.
pub fn template_hash(template: &Value) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in canonical(template).to_string().bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    const SAFE: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    h.to_string()
        .bytes()
        .map(|d| SAFE[usize::from(d) % SAFE.len()] as char)
        .collect()
}

/// The value with every object's keys sorted and null fields dropped, so
/// equal templates hash and compare equal however they were written.
fn canonical(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            // A null field is an absent one (kubectl sends
            // `creationTimestamp: null` in templates).
            Value::Object(
                keys.into_iter()
                    .filter(|k| !m[*k].is_null())
                    .map(|k| (k.clone(), canonical(&m[k])))
                    .collect(),
            )
        }
        Value::Array(a) => Value::Array(a.iter().map(canonical).collect()),
        other => other.clone(),
    }
}

/// A ReplicaSet's pod template without the pod-template-hash label, to
/// compare with its Deployment's template.
fn template_of(rs: &Value) -> Value {
    let mut t = rs.pointer("/spec/template").cloned().unwrap_or(json!({}));
    if let Some(labels) = t.pointer_mut("/metadata/labels").and_then(Value::as_object_mut) {
        labels.remove("pod-template-hash");
    }
    canonical(&t)
}

/// Resolves an int-or-percent against `total`, rounding up or down.
pub fn int_or_percent(v: Option<&Value>, total: i64, round_up: bool, default: &str) -> i64 {
    let s = match v {
        Some(Value::Number(n)) => return n.as_i64().unwrap_or(0),
        Some(Value::String(s)) => s.clone(),
        _ => default.to_string(),
    };
    match s.strip_suffix('%').and_then(|p| p.parse::<i64>().ok()) {
        Some(p) if round_up => (p * total + 99) / 100,
        Some(p) => p * total / 100,
        None => s.parse().unwrap_or(0),
    }
}

fn list(cluster: &Cluster, rt: &ResourceType, ns: &str) -> Vec<Value> {
    cluster.store.list(&rt.group_resource(), Some(ns)).0
}

fn set_status(cluster: &Cluster, rt: &ResourceType, obj: &Value, status: Value) -> bool {
    if obj.get("status") == Some(&status) {
        return false;
    }
    let mut next = obj.clone();
    next["status"] = status;
    match cluster.update(
        rt,
        Some(meta(obj, "namespace")),
        meta(obj, "name"),
        "status",
        next,
        &opts(),
    ) {
        Ok(_) => true,
        Err(e) => {
            debug!(name = meta(obj, "name"), error = %e, "status write retried later");
            false
        }
    }
}

/// Scales a Deployment's ReplicaSet, recording `ScalingReplicaSet` on the
/// Deployment.
fn scale(cluster: &Cluster, rt: &ResourceType, obj: &Value, replicas: i64, deployment: &Value) -> bool {
    let from = int(obj, "/spec/replicas");
    if from == replicas {
        return false;
    }
    let mut next = obj.clone();
    next["spec"]["replicas"] = json!(replicas);
    let ok = cluster
        .update(rt, Some(meta(obj, "namespace")), meta(obj, "name"), "", next, &opts())
        .is_ok();
    if ok {
        let dir = if replicas > from { "up" } else { "down" };
        let msg = format!(
            "Scaled {dir} replica set {} from {from} to {replicas}",
            meta(obj, "name")
        );
        crate::events::normal(
            cluster,
            deployment,
            "apps/v1",
            "Deployment",
            "ScalingReplicaSet",
            &msg,
            "deployment-controller",
        );
    }
    ok
}

/// ReplicaSet → Pods.
pub fn sweep_replicasets(cluster: &Cluster) -> bool {
    let (Some(rs_rt), Some(pod_rt)) = (
        cluster.catalog.get("apps", "v1", "replicasets"),
        cluster.catalog.get("", "v1", "pods"),
    ) else {
        return false;
    };
    let mut changed = false;
    let (all, _) = cluster.store.list(&rs_rt.group_resource(), None);
    let mut owned = by_controller(cluster.store.list(&pod_rt.group_resource(), None).0);
    for rs in all.iter().filter(|r| !deleting(r)) {
        let ns = meta(rs, "namespace");
        let uid = meta(rs, "uid");
        let mut pods: Vec<Value> = owned.remove(uid).unwrap_or_default();
        let want = rs.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1);
        let have = pods.len() as i64;
        if have < want {
            for _ in have..want {
                match create_pod(
                    cluster,
                    &pod_rt,
                    ns,
                    rs,
                    "ReplicaSet",
                    "apps/v1",
                    "replicaset-controller",
                ) {
                    Ok(pod) => {
                        pods.push(pod);
                        changed = true;
                    }
                    Err(e) => debug!(rs = meta(rs, "name"), error = %e, "pod creation retried later"),
                }
            }
        } else if have > want {
            // Not-ready pods first, then the newest.
            pods.sort_by_key(|p| {
                (
                    pod_ready(p),
                    std::cmp::Reverse(meta(p, "creationTimestamp").to_string()),
                )
            });
            for p in pods.drain(..(have - want) as usize) {
                let bg = DeleteOptions {
                    propagation: Some("Background".into()),
                    ..Default::default()
                };
                if cluster.delete(&pod_rt, Some(ns), meta(&p, "name"), &bg).is_ok() {
                    let msg = format!("Deleted pod: {}", meta(&p, "name"));
                    crate::events::normal(
                        cluster,
                        rs,
                        "apps/v1",
                        "ReplicaSet",
                        "SuccessfulDelete",
                        &msg,
                        "replicaset-controller",
                    );
                    changed = true;
                }
            }
        }
        let ready = pods.iter().filter(|p| pod_ready(p)).count() as i64;
        let status = json!({
            "replicas": pods.len(),
            "fullyLabeledReplicas": pods.len(),
            "readyReplicas": ready,
            "availableReplicas": ready,
            "observedGeneration": int(rs, "/metadata/generation"),
        });
        changed |= set_status(cluster, &rs_rt, rs, status);
    }
    changed
}

fn revision(rs: &Value) -> i64 {
    rs.pointer("/metadata/annotations/deployment.kubernetes.io~1revision")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Deployment → ReplicaSets.
pub fn sweep_deployments(cluster: &Cluster) -> bool {
    let (Some(d_rt), Some(rs_rt)) = (
        cluster.catalog.get("apps", "v1", "deployments"),
        cluster.catalog.get("apps", "v1", "replicasets"),
    ) else {
        return false;
    };
    let mut changed = false;
    let (all, _) = cluster.store.list(&d_rt.group_resource(), None);
    let mut owned = by_controller(cluster.store.list(&rs_rt.group_resource(), None).0);
    for d in all.iter().filter(|d| !deleting(d)) {
        let replicasets = owned.remove(meta(d, "uid")).unwrap_or_default();
        changed |= reconcile_deployment(cluster, &d_rt, &rs_rt, d, replicasets);
    }
    changed
}

/// Roll `d` with `owned`, the ReplicaSets it controls (read at the start of the sweep).
fn reconcile_deployment(
    cluster: &Cluster,
    d_rt: &ResourceType,
    rs_rt: &ResourceType,
    d: &Value,
    mut owned: Vec<Value>,
) -> bool {
    let ns = meta(d, "namespace");
    let name = meta(d, "name");
    let desired = d.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1);
    let template = d.pointer("/spec/template").cloned().unwrap_or(json!({}));
    let hash = template_hash(&template);
    owned.sort_by_key(revision);
    let mut changed = false;
    let current_rev = owned.iter().map(revision).max().unwrap_or(0);
    let wanted = canonical(&template);
    let paused = d.pointer("/spec/paused").and_then(Value::as_bool).unwrap_or(false);
    let found = owned.iter().position(|r| template_of(r) == wanted);
    if paused && found.is_none() {
        // A paused Deployment starts no new rollout.
        return changed;
    }
    let new_rs = match found {
        Some(i) => {
            let rs = owned.remove(i);
            // A rollback to an older template makes it the newest revision.
            if revision(&rs) < current_rev {
                let mut next = rs.clone();
                next["metadata"]["annotations"]["deployment.kubernetes.io/revision"] =
                    json!((current_rev + 1).to_string());
                changed |= cluster
                    .update(rs_rt, Some(ns), meta(&rs, "name"), "", next, &opts())
                    .is_ok();
            }
            rs
        }
        None => {
            let mut tpl = template.clone();
            tpl["metadata"]["labels"]["pod-template-hash"] = json!(hash);
            let mut selector = d.pointer("/spec/selector").cloned().unwrap_or(json!({}));
            selector["matchLabels"]["pod-template-hash"] = json!(hash);
            let mut labels = template.pointer("/metadata/labels").cloned().unwrap_or(json!({}));
            labels["pod-template-hash"] = json!(hash);
            let rs = json!({
                "apiVersion": "apps/v1", "kind": "ReplicaSet",
                "metadata": {
                    "name": format!("{name}-{hash}"),
                    "labels": labels,
                    "annotations": {"deployment.kubernetes.io/revision": (current_rev + 1).to_string(), "deployment.kubernetes.io/desired-replicas": desired.to_string()},
                    "ownerReferences": [owner_ref(d, "Deployment", "apps/v1")],
                },
                "spec": {"replicas": 0, "selector": selector, "template": tpl, "minReadySeconds": d.pointer("/spec/minReadySeconds").cloned().unwrap_or(json!(0))},
            });
            match cluster.create(rs_rt, Some(ns), rs, &opts()) {
                Ok(w) => {
                    changed = true;
                    w.object
                }
                Err(e) => {
                    debug!(%ns, %name, error = %e, "ReplicaSet creation retried later");
                    return changed;
                }
            }
        }
    };
    let old = owned;
    let old_replicas: i64 = old.iter().map(|r| int(r, "/spec/replicas")).sum();
    let old_available: i64 = old.iter().map(|r| int(r, "/status/availableReplicas")).sum();
    let new_available = int(&new_rs, "/status/availableReplicas");
    let recreate = d.pointer("/spec/strategy/type").and_then(Value::as_str) == Some("Recreate");
    let max_surge = int_or_percent(d.pointer("/spec/strategy/rollingUpdate/maxSurge"), desired, true, "25%");
    let mut max_unavailable = int_or_percent(
        d.pointer("/spec/strategy/rollingUpdate/maxUnavailable"),
        desired,
        false,
        "25%",
    );
    if max_surge == 0 && max_unavailable == 0 {
        max_unavailable = 1;
    }
    if paused {
        // Paused: keep the ReplicaSets as they are.
    } else if recreate {
        for r in &old {
            changed |= scale(cluster, rs_rt, r, 0, d);
        }
        let old_pods: i64 = old.iter().map(|r| int(r, "/status/replicas")).sum();
        if old_pods == 0 {
            changed |= scale(cluster, rs_rt, &new_rs, desired, d);
        }
    } else {
        // Scale the new ReplicaSet up within the surge budget.
        let new_spec = int(&new_rs, "/spec/replicas");
        let target_new = if old_replicas == 0 {
            desired
        } else {
            (desired + max_surge - old_replicas).clamp(new_spec.min(desired), desired)
        };
        changed |= scale(cluster, rs_rt, &new_rs, target_new, d);
        // Scale old ones down while enough pods stay available.
        let min_available = desired - max_unavailable;
        let mut can_remove = (old_available + new_available - min_available).max(0);
        // Old pods that are not available cost nothing to remove.
        for r in &old {
            let spec = int(r, "/spec/replicas");
            let unavailable = (spec - int(r, "/status/availableReplicas")).max(0);
            let remove = (unavailable + can_remove).min(spec);
            if remove > 0 {
                can_remove -= (remove - unavailable).max(0);
                changed |= scale(cluster, rs_rt, r, spec - remove, d);
            }
        }
    }
    // Revision history: drop empty old ReplicaSets beyond the limit.
    let limit = d
        .pointer("/spec/revisionHistoryLimit")
        .and_then(Value::as_i64)
        .unwrap_or(10);
    let empty_old: Vec<&Value> = old
        .iter()
        .filter(|r| int(r, "/spec/replicas") == 0 && int(r, "/status/replicas") == 0)
        .collect();
    if empty_old.len() as i64 > limit {
        for r in &empty_old[..empty_old.len() - limit as usize] {
            let bg = DeleteOptions {
                propagation: Some("Background".into()),
                ..Default::default()
            };
            changed |= cluster.delete(rs_rt, Some(ns), meta(r, "name"), &bg).is_ok();
        }
    }
    // Status, from the owned ReplicaSets' status (this sweep changed only their specs and
    // revisions, and deleted only empty ones; a ReplicaSet created now has no status yet).
    let fresh: Vec<&Value> = old.iter().chain(std::iter::once(&new_rs)).collect();
    let sum = |p: &str| fresh.iter().map(|r| int(r, p)).sum::<i64>();
    let updated = fresh
        .iter()
        .find(|r| r.pointer("/metadata/labels/pod-template-hash").and_then(Value::as_str) == Some(hash.as_str()))
        .map(|r| int(r, "/status/replicas"))
        .unwrap_or(0);
    let replicas = sum("/status/replicas");
    let available = sum("/status/availableReplicas");
    let complete = updated == desired && replicas == desired && available == desired;
    let prev = |t: &str| {
        d.pointer("/status/conditions")
            .and_then(Value::as_array)
            .and_then(|cs| cs.iter().find(|c| c["type"] == t).cloned())
    };
    let condition = |t: &str, status: bool, reason: &str, message: String| {
        let s = if status { "True" } else { "False" };
        match prev(t) {
            Some(c) if c["status"] == s && c["reason"] == reason => c,
            _ => {
                let now = crate::clock::now_rfc3339();
                json!({"type": t, "status": s, "reason": reason, "message": message, "lastUpdateTime": now, "lastTransitionTime": now})
            }
        }
    };
    let rs_name = meta(&new_rs, "name");
    let status = json!({
        "observedGeneration": int(d, "/metadata/generation"),
        "replicas": replicas,
        "updatedReplicas": updated,
        "readyReplicas": sum("/status/readyReplicas"),
        "availableReplicas": available,
        "unavailableReplicas": (desired - available).max(0),
        "conditions": [
            condition("Available", available >= desired - max_unavailable, if available >= desired - max_unavailable { "MinimumReplicasAvailable" } else { "MinimumReplicasUnavailable" }, if available >= desired - max_unavailable { "Deployment has minimum availability.".into() } else { "Deployment does not have minimum availability.".into() }),
            condition("Progressing", true, if complete { "NewReplicaSetAvailable" } else { "ReplicaSetUpdated" }, if complete { format!("ReplicaSet \"{rs_name}\" has successfully progressed.") } else { format!("ReplicaSet \"{rs_name}\" is progressing.") }),
        ],
    });
    changed |= set_status(cluster, d_rt, d, status);
    changed
}

fn phase(p: &Value) -> &str {
    p.pointer("/status/phase").and_then(Value::as_str).unwrap_or("Pending")
}

fn has_condition(obj: &Value, t: &str) -> bool {
    obj.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| cs.iter().any(|c| c["type"] == t && c["status"] == "True"))
}

/// Job → Pods.
pub fn sweep_jobs(cluster: &Cluster) -> bool {
    let (Some(job_rt), Some(pod_rt)) = (
        cluster.catalog.get("batch", "v1", "jobs"),
        cluster.catalog.get("", "v1", "pods"),
    ) else {
        return false;
    };
    let mut changed = false;
    let (jobs, _) = cluster.store.list(&job_rt.group_resource(), None);
    for job in jobs.iter().filter(|j| !deleting(j)) {
        if has_condition(job, "Complete") || has_condition(job, "Failed") {
            continue;
        }
        let ns = meta(job, "namespace");
        let uid = meta(job, "uid");
        let pods: Vec<Value> = list(cluster, &pod_rt, ns)
            .into_iter()
            .filter(|p| controlled_by(p, uid))
            .collect();
        let succeeded = pods.iter().filter(|p| phase(p) == "Succeeded").count() as i64;
        let failed = pods.iter().filter(|p| phase(p) == "Failed").count() as i64;
        let active: Vec<&Value> = pods
            .iter()
            .filter(|p| !deleting(p) && !matches!(phase(p), "Succeeded" | "Failed"))
            .collect();
        let completions = job.pointer("/spec/completions").and_then(Value::as_i64).unwrap_or(1);
        let parallelism = job.pointer("/spec/parallelism").and_then(Value::as_i64).unwrap_or(1);
        let backoff_limit = job.pointer("/spec/backoffLimit").and_then(Value::as_i64).unwrap_or(6);
        let now = crate::clock::now_rfc3339();
        let start = job.pointer("/status/startTime").cloned().unwrap_or(json!(now));
        let condition = |t: &str, reason: &str, message: &str| json!({"type": t, "status": "True", "reason": reason, "message": message, "lastProbeTime": now, "lastTransitionTime": now});
        let mut status = json!({
            "startTime": start,
            "active": active.len(),
            "ready": active.iter().filter(|p| pod_ready(p)).count(),
            "succeeded": succeeded,
            "failed": failed,
            "terminating": pods.iter().filter(|p| deleting(p)).count(),
        });
        let finished = if succeeded >= completions {
            status["completionTime"] = json!(now);
            status["conditions"] = json!([
                condition(
                    "SuccessCriteriaMet",
                    "CompletionsReached",
                    "Reached expected number of succeeded pods"
                ),
                condition(
                    "Complete",
                    "CompletionsReached",
                    "Reached expected number of succeeded pods"
                ),
            ]);
            true
        } else if failed > backoff_limit {
            status["conditions"] = json!([
                condition(
                    "FailureTarget",
                    "BackoffLimitExceeded",
                    "Job has reached the specified backoff limit"
                ),
                condition(
                    "Failed",
                    "BackoffLimitExceeded",
                    "Job has reached the specified backoff limit"
                ),
            ]);
            true
        } else {
            false
        };
        if finished && succeeded >= completions {
            crate::events::normal(
                cluster,
                job,
                "batch/v1",
                "Job",
                "Completed",
                "Job completed",
                "job-controller",
            );
        }
        if finished {
            for p in &active {
                let bg = DeleteOptions {
                    propagation: Some("Background".into()),
                    ..Default::default()
                };
                changed |= cluster.delete(&pod_rt, Some(ns), meta(p, "name"), &bg).is_ok();
            }
            status["active"] = json!(0);
        } else {
            let want = parallelism.min(completions - succeeded).max(0);
            for _ in (active.len() as i64)..want {
                match create_pod(cluster, &pod_rt, ns, job, "Job", "batch/v1", "job-controller") {
                    Ok(_) => changed = true,
                    Err(e) => debug!(job = meta(job, "name"), error = %e, "job pod creation retried later"),
                }
            }
        }
        changed |= set_status(cluster, &job_rt, job, status);
    }
    changed
}

/// Creates one pod from `owner`'s pod template (generateName, labels,
/// annotations, an owner reference) and records `SuccessfulCreate` as
/// `controller`; returns the created pod.
fn create_pod(
    cluster: &Cluster,
    pod_rt: &ResourceType,
    ns: &str,
    owner: &Value,
    kind: &str,
    api_version: &str,
    controller: &str,
) -> Result<Value, crate::status::ApiError> {
    let template = owner.pointer("/spec/template").cloned().unwrap_or(json!({}));
    let mut pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "generateName": format!("{}-", meta(owner, "name")),
            "labels": template.pointer("/metadata/labels").cloned().unwrap_or(json!({})),
            "ownerReferences": [owner_ref(owner, kind, api_version)],
        },
        "spec": template.get("spec").cloned().unwrap_or(json!({})),
    });
    if let Some(a) = template.pointer("/metadata/annotations") {
        pod["metadata"]["annotations"] = a.clone();
    }
    let w = cluster.create(pod_rt, Some(ns), pod, &opts())?;
    let msg = format!("Created pod: {}", meta(&w.object, "name"));
    crate::events::normal(cluster, owner, api_version, kind, "SuccessfulCreate", &msg, controller);
    Ok(w.object)
}

/// Label selectors of a workload, for `kubectl` and endpoints.
pub fn selector_of(obj: &Value) -> LabelSelector {
    LabelSelector::from_object(obj.pointer("/spec/selector").unwrap_or(&Value::Null))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_round_like_the_deployment_controller() {
        assert_eq!(int_or_percent(Some(&json!("25%")), 3, true, "0"), 1);
        assert_eq!(int_or_percent(Some(&json!("25%")), 3, false, "0"), 0);
        assert_eq!(int_or_percent(Some(&json!(2)), 3, false, "0"), 2);
        assert_eq!(int_or_percent(None, 4, false, "25%"), 1);
    }

    #[test]
    fn template_hashes_are_stable_and_safe() {
        let a = template_hash(&json!({"spec": {"containers": [{"image": "a"}]}}));
        assert_eq!(a, template_hash(&json!({"spec": {"containers": [{"image": "a"}]}})));
        assert_ne!(a, template_hash(&json!({"spec": {"containers": [{"image": "b"}]}})));
        assert!(a.bytes().all(|b| b"bcdfghjklmnpqrstvwxz2456789".contains(&b)));
    }
}
