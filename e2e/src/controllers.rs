//! Control loops that run inside kubesim: namespace lifecycle and the
//! garbage collector (owner references, `foregroundDeletion` and `orphan`
//! finalizers) live here; [`run`] also drives the workload, kubelet and
//! endpoints loops of their own modules.
//!
//! Each loop is a pure `sweep` over the current state that performs the
//! writes it needs; a driver reruns it after every batch of changes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::watch;
use tracing::debug;

use crate::cluster::{Cluster, DeleteOptions, WriteOptions};
use crate::patch::PatchKind;
use crate::resources::ResourceType;
use crate::store::ObjectKey;

/// The field manager controllers write with.
pub const MANAGER: &str = "kubesim-controller-manager";

fn meta<'a>(o: &'a Value, f: &str) -> Option<&'a str> {
    o.get("metadata")?.get(f)?.as_str()
}

fn deleting(o: &Value) -> bool {
    o.pointer("/metadata/deletionTimestamp").is_some()
}

fn has_finalizer(o: &Value, f: &str) -> bool {
    o.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|a| a.iter().any(|x| x == f))
}

fn owner_uids(o: &Value) -> Vec<String> {
    o.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|r| r["uid"].as_str().map(str::to_string))
        .collect()
}

/// The resource type of a stored key (any served version will do).
fn resource_of(cluster: &Cluster, key: &ObjectKey) -> Option<ResourceType> {
    let (group, plural) = key.group_resource.split_once('/')?;
    cluster.catalog.find_plural(group, plural)
}

fn ns_of(key: &ObjectKey) -> Option<&str> {
    (!key.namespace.is_empty()).then_some(key.namespace.as_str())
}

fn remove_finalizer(cluster: &Cluster, rt: &ResourceType, key: &ObjectKey, obj: &Value, f: &str) {
    let kept: Vec<Value> = obj
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|x| *x != f)
        .cloned()
        .collect();
    let patch = json!({"metadata": {"finalizers": kept, "resourceVersion": meta(obj, "resourceVersion")}});
    let opts = WriteOptions {
        field_manager: Some(MANAGER.into()),
        ..Default::default()
    };
    if let Err(e) = cluster.patch(
        rt,
        ns_of(key),
        &key.name,
        "",
        PatchKind::Merge,
        patch.to_string().as_bytes(),
        &opts,
    ) {
        debug!(name = %key.name, error = %e, "finalizer removal retried later");
    }
}

/// One pass of the garbage collector and namespace controller. Returns
/// whether it changed anything (the driver then runs it again).
pub fn sweep(cluster: &Cluster) -> bool {
    let objects = cluster.store.snapshot();
    let by_uid: BTreeMap<&str, (&ObjectKey, &Value)> = objects
        .iter()
        .filter_map(|(k, v)| meta(v, "uid").map(|u| (u, (k, v))))
        .collect();
    let mut dependents: BTreeMap<&str, Vec<(&ObjectKey, &Value)>> = BTreeMap::new();
    for (k, v) in &objects {
        for uid in v
            .pointer("/metadata/ownerReferences")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|r| r["uid"].as_str())
        {
            dependents.entry(uid).or_default().push((k, v));
        }
    }
    let mut changed = false;
    let background = DeleteOptions {
        propagation: Some("Background".into()),
        ..Default::default()
    };
    let mut deleted: BTreeSet<ObjectKey> = BTreeSet::new();
    for (key, obj) in &objects {
        let Some(rt) = resource_of(cluster, key) else { continue };
        let uid = meta(obj, "uid").unwrap_or_default();
        let deps = dependents.get(uid).cloned().unwrap_or_default();

        // Dangling owners: every owner is gone, so the dependent goes too.
        let owners = owner_uids(obj);
        if !owners.is_empty()
            && !deleting(obj)
            && owners.iter().all(|u| !by_uid.contains_key(u.as_str()))
            && deleted.insert(key.clone())
        {
            let opts = DeleteOptions {
                propagation: Some("Background".into()),
                ..Default::default()
            };
            if cluster.delete(&rt, ns_of(key), &key.name, &opts).is_ok() {
                changed = true;
            }
            continue;
        }
        if !deleting(obj) {
            continue;
        }
        if has_finalizer(obj, "foregroundDeletion") {
            let live: Vec<_> = deps.iter().filter(|(k, _)| !deleted.contains(*k)).collect();
            if live.is_empty() {
                remove_finalizer(cluster, &rt, key, obj, "foregroundDeletion");
                changed = true;
            } else {
                for (dk, dv) in live {
                    if deleting(dv) {
                        continue;
                    }
                    if let Some(drt) = resource_of(cluster, dk) {
                        let fg = DeleteOptions {
                            propagation: Some("Foreground".into()),
                            ..Default::default()
                        };
                        if cluster.delete(&drt, ns_of(dk), &dk.name, &fg).is_ok() {
                            changed = true;
                        }
                    }
                }
            }
        }
        if has_finalizer(obj, "orphan") {
            for (dk, dv) in &deps {
                let Some(drt) = resource_of(cluster, dk) else { continue };
                let refs: Vec<Value> = dv
                    .pointer("/metadata/ownerReferences")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter(|r| r["uid"] != uid)
                    .cloned()
                    .collect();
                let patch =
                    json!({"metadata": {"ownerReferences": if refs.is_empty() { Value::Null } else { json!(refs) }}});
                let opts = WriteOptions {
                    field_manager: Some(MANAGER.into()),
                    ..Default::default()
                };
                if let Err(e) = cluster.patch(
                    &drt,
                    ns_of(dk),
                    &dk.name,
                    "",
                    PatchKind::Merge,
                    patch.to_string().as_bytes(),
                    &opts,
                ) {
                    debug!(name = %dk.name, error = %e, "orphaning retried later");
                }
            }
            remove_finalizer(cluster, &rt, key, obj, "orphan");
            changed = true;
        }
        // Namespace lifecycle: empty the namespace, then finalize it.
        if rt.kind == "Namespace" && rt.group.is_empty() {
            let content: Vec<(ObjectKey, Value)> = cluster.store.list_namespace(&key.name);
            if content.is_empty() {
                let mut done = obj.clone();
                done["spec"]["finalizers"] = json!([]);
                if let Some(m) = done["metadata"].as_object_mut() {
                    m.remove("managedFields");
                }
                let body = done.clone();
                let opts = WriteOptions {
                    field_manager: Some(MANAGER.into()),
                    ..Default::default()
                };
                if cluster.update(&rt, None, &key.name, "", body, &opts).is_ok() || cluster.store.get(key).is_none() {
                    changed = true;
                }
                if cluster.store.get(key).is_some_and(|o| {
                    o.pointer("/metadata/finalizers")
                        .and_then(Value::as_array)
                        .is_none_or(Vec::is_empty)
                }) {
                    let _ = cluster.store.delete(key, None);
                    changed = true;
                }
            } else {
                for (ck, cv) in content {
                    if deleting(&cv) {
                        continue;
                    }
                    if let Some(crt) = resource_of(cluster, &ck)
                        && cluster.delete(&crt, ns_of(&ck), &ck.name, &background).is_ok()
                    {
                        changed = true;
                    }
                }
            }
        }
    }
    changed
}

/// Runs the controllers until `stop` turns true: a sweep after every batch
/// of changes (debounced) and at least once a second.
pub async fn run(cluster: Arc<Cluster>, runtime: Arc<dyn crate::kubelet::PodRuntime>, mut stop: watch::Receiver<bool>) {
    let mut events = cluster.store.subscribe();
    loop {
        // Why bounded: a sweep that keeps changing things must not spin.
        for _ in 0..20 {
            let mut changed = sweep(&cluster);
            changed |= crate::workloads::sweep_deployments(&cluster);
            changed |= crate::workloads::sweep_replicasets(&cluster);
            changed |= crate::workloads::sweep_jobs(&cluster);
            changed |= crate::kubelet::sweep(&cluster, runtime.as_ref());
            changed |= crate::endpoints::sweep(&cluster);
            if !changed {
                break;
            }
        }
        tokio::select! {
            _ = events.recv() => {
                tokio::time::sleep(Duration::from_millis(20)).await;
                while events.try_recv().is_ok() {}
            }
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = crate::shutdown::requested(&mut stop) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (Arc<Cluster>, ResourceType, ResourceType) {
        let c = Cluster::with_default_namespace();
        let ns = c.catalog.get("", "v1", "namespaces").unwrap();
        let cm = c.catalog.get("", "v1", "configmaps").unwrap();
        (c, ns, cm)
    }

    fn settle(c: &Cluster) {
        for _ in 0..20 {
            if !sweep(c) {
                return;
            }
        }
    }

    fn owned(c: &Cluster, cm: &ResourceType, name: &str, owner: &Value) {
        let r = json!({"apiVersion": "v1", "kind": "ConfigMap", "name": owner["metadata"]["name"], "uid": owner["metadata"]["uid"]});
        c.create(
            cm,
            Some("default"),
            json!({"metadata": {"name": name, "ownerReferences": [r]}}),
            &WriteOptions::default(),
        )
        .unwrap();
    }

    #[test]
    fn background_deletion_collects_dependents() {
        let (c, _, cm) = setup();
        let owner = c
            .create(
                &cm,
                Some("default"),
                json!({"metadata": {"name": "owner"}}),
                &WriteOptions::default(),
            )
            .unwrap()
            .object;
        owned(&c, &cm, "child", &owner);
        c.delete(&cm, Some("default"), "owner", &DeleteOptions::default())
            .unwrap();
        settle(&c);
        assert_eq!(c.get(&cm, Some("default"), "child").unwrap_err().code, 404);
    }

    #[test]
    fn foreground_deletion_waits_for_dependents_and_orphan_keeps_them() {
        let (c, _, cm) = setup();
        let owner = c
            .create(
                &cm,
                Some("default"),
                json!({"metadata": {"name": "fg"}}),
                &WriteOptions::default(),
            )
            .unwrap()
            .object;
        owned(&c, &cm, "fg-child", &owner);
        let marked = c
            .delete(
                &cm,
                Some("default"),
                "fg",
                &DeleteOptions {
                    propagation: Some("Foreground".into()),
                    ..Default::default()
                },
            )
            .unwrap();
        assert!(
            marked["metadata"]["finalizers"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f == "foregroundDeletion")
        );
        settle(&c);
        assert_eq!(c.get(&cm, Some("default"), "fg-child").unwrap_err().code, 404);
        assert_eq!(c.get(&cm, Some("default"), "fg").unwrap_err().code, 404);

        let owner = c
            .create(
                &cm,
                Some("default"),
                json!({"metadata": {"name": "or"}}),
                &WriteOptions::default(),
            )
            .unwrap()
            .object;
        owned(&c, &cm, "or-child", &owner);
        c.delete(
            &cm,
            Some("default"),
            "or",
            &DeleteOptions {
                propagation: Some("Orphan".into()),
                ..Default::default()
            },
        )
        .unwrap();
        settle(&c);
        let child = c.get(&cm, Some("default"), "or-child").unwrap();
        assert!(child.pointer("/metadata/ownerReferences").is_none());
        assert_eq!(c.get(&cm, Some("default"), "or").unwrap_err().code, 404);
    }

    #[test]
    fn namespaces_empty_then_disappear() {
        let (c, ns, cm) = setup();
        c.create(
            &ns,
            None,
            json!({"metadata": {"name": "team"}}),
            &WriteOptions::default(),
        )
        .unwrap();
        c.create(
            &cm,
            Some("team"),
            json!({"metadata": {"name": "a"}}),
            &WriteOptions::default(),
        )
        .unwrap();
        let t = c.delete(&ns, None, "team", &DeleteOptions::default()).unwrap();
        assert_eq!(t["status"]["phase"], "Terminating");
        let err = c
            .create(
                &cm,
                Some("team"),
                json!({"metadata": {"name": "b"}}),
                &WriteOptions::default(),
            )
            .unwrap_err();
        assert_eq!(err.code, 403);
        settle(&c);
        assert_eq!(c.get(&ns, None, "team").unwrap_err().code, 404);
        assert!(c.store.list_namespace("team").is_empty());
    }
}
