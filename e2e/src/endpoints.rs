//! The endpoints controllers: for every Service with a selector, the
//! Endpoints object and EndpointSlices listing the matching pods'
//! addresses, ready or not, with target ports resolved (named ports too),
//! as Kubernetes' EndpointSlice controller writes them:
//! - one slice per distinct set of resolved ports (pods whose named target
//!   ports resolve differently are in different slices), at most
//!   [`MAX_ENDPOINTS_PER_SLICE`] endpoints each;
//! - conditions: `ready` (pod Ready and not terminating; always with
//!   `publishNotReadyAddresses`), `serving` (pod Ready), `terminating`
//!   (deletion requested); pods that finished (Succeeded, Failed) left out;
//! - labelled `kubernetes.io/service-name` and `endpointslice.kubernetes.io/
//!   managed-by: endpointslice-controller.k8s.io`, owned by the Service;
//!   slices it manages that a Service no longer needs (fewer port sets, no
//!   selector any more) are deleted. Slices of other managers (made by hand
//!   for a Service without a selector) are never touched.
//!
//! Slice names are `<service>-kubesim`, then `-kubesim-2`, … (the real
//! controller's are `<service>-<random>`).

use std::collections::BTreeSet;

use serde_json::{Value, json};
use tracing::debug;

use crate::cluster::{Cluster, DeleteOptions, WriteOptions};
use crate::selector::LabelSelector;
use crate::workloads::pod_ready;

const MANAGER: &str = "kubesim-endpoints-controller";
/// The `endpointslice.kubernetes.io/managed-by` value of the slices this controller writes.
const SLICE_MANAGER: &str = "endpointslice-controller.k8s.io";
/// The most endpoints one slice holds (the controller's `--max-endpoints-per-slice` default).
pub const MAX_ENDPOINTS_PER_SLICE: usize = 100;

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

/// The container port a Service port targets on one pod.
pub fn resolve_target_port(svc_port: &Value, pod: &Value) -> Option<i64> {
    match svc_port.get("targetPort").or(svc_port.get("port")) {
        Some(Value::Number(n)) => n.as_i64(),
        Some(Value::String(name)) => match name.parse::<i64>() {
            Ok(n) => Some(n),
            Err(_) => pod
                .pointer("/spec/containers")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .flat_map(|c| c["ports"].as_array().cloned().unwrap_or_default())
                .find(|p| p["name"] == json!(name))
                .and_then(|p| p["containerPort"].as_i64()),
        },
        _ => None,
    }
}

/// Writes `desired` if it differs from what is stored (ignoring metadata
/// the server manages).
fn put(cluster: &Cluster, rt: &crate::resources::ResourceType, ns: &str, name: &str, desired: Value) -> bool {
    match cluster.get(rt, Some(ns), name) {
        Ok(cur) => {
            let same = ["subsets", "endpoints", "ports", "addressType"]
                .iter()
                .all(|k| cur.get(*k) == desired.get(*k))
                && cur.pointer("/metadata/labels") == desired.pointer("/metadata/labels");
            if same {
                return false;
            }
            let mut next = desired;
            next["metadata"]["resourceVersion"] = cur["metadata"]["resourceVersion"].clone();
            cluster.update(rt, Some(ns), name, "", next, &opts()).is_ok()
        }
        Err(_) => match cluster.create(rt, Some(ns), desired, &opts()) {
            Ok(_) => true,
            Err(e) => {
                debug!(%ns, %name, error = %e, "endpoints write retried later");
                false
            }
        },
    }
}

/// One pass over every Service.
pub fn sweep(cluster: &Cluster) -> bool {
    let (Some(svc_rt), Some(pod_rt), Some(ep_rt), Some(slice_rt)) = (
        cluster.catalog.get("", "v1", "services"),
        cluster.catalog.get("", "v1", "pods"),
        cluster.catalog.get("", "v1", "endpoints"),
        cluster.catalog.get("discovery.k8s.io", "v1", "endpointslices"),
    ) else {
        return false;
    };
    let mut changed = false;
    let mut wanted: BTreeSet<(String, String)> = BTreeSet::new();
    let (services, _) = cluster.store.list(&svc_rt.group_resource(), None);
    for svc in services {
        let Some(sel) = svc
            .pointer("/spec/selector")
            .filter(|s| s.as_object().is_some_and(|m| !m.is_empty()))
        else {
            continue;
        };
        if svc.pointer("/metadata/deletionTimestamp").is_some() {
            continue;
        }
        let ns = meta(&svc, "namespace").to_string();
        let name = meta(&svc, "name").to_string();
        let selector = LabelSelector::from_object(&json!({"matchLabels": sel}));
        let (pods, _) = cluster.store.list(&pod_rt.group_resource(), Some(&ns));
        let pods: Vec<Value> = pods
            .into_iter()
            .filter(|p| {
                selector.matches(p)
                    && !matches!(
                        p.pointer("/status/phase").and_then(Value::as_str),
                        Some("Succeeded" | "Failed")
                    )
                    && p.pointer("/status/podIP")
                        .and_then(Value::as_str)
                        .is_some_and(|ip| !ip.is_empty())
            })
            .collect();
        let svc_ports: Vec<Value> = svc
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let target_ref =
            |p: &Value| json!({"kind": "Pod", "namespace": ns, "name": meta(p, "name"), "uid": meta(p, "uid")});
        let ip = |p: &Value| p.pointer("/status/podIP").cloned().unwrap_or(Value::Null);

        // Endpoints: one subset per distinct resolved port set (usually one).
        let ports_for = |p: &Value| -> Vec<Value> {
            svc_ports
                .iter()
                .filter_map(|sp| {
                    let port = resolve_target_port(sp, p)?;
                    let mut v = json!({"port": port, "protocol": sp["protocol"].as_str().unwrap_or("TCP")});
                    if let Some(n) = sp.get("name").filter(|n| n.as_str().is_some_and(|s| !s.is_empty())) {
                        v["name"] = n.clone();
                    }
                    Some(v)
                })
                .collect()
        };
        let mut subsets: Vec<(Vec<Value>, Vec<Value>, Vec<Value>)> = Vec::new();
        for p in &pods {
            let ports = ports_for(p);
            let addr = json!({"ip": ip(p), "nodeName": p.pointer("/spec/nodeName"), "targetRef": target_ref(p)});
            let idx = match subsets.iter().position(|(ps, _, _)| *ps == ports) {
                Some(i) => i,
                None => {
                    subsets.push((ports, Vec::new(), Vec::new()));
                    subsets.len() - 1
                }
            };
            if pod_ready(p) && p.pointer("/metadata/deletionTimestamp").is_none() {
                subsets[idx].1.push(addr);
            } else {
                subsets[idx].2.push(addr);
            }
        }
        let subsets: Vec<Value> = subsets
            .into_iter()
            .map(|(ports, ready, not_ready)| {
                let mut s = json!({"ports": ports});
                if !ready.is_empty() {
                    s["addresses"] = json!(ready);
                }
                if !not_ready.is_empty() {
                    s["notReadyAddresses"] = json!(not_ready);
                }
                s
            })
            .collect();
        let mut labels = svc.pointer("/metadata/labels").cloned().unwrap_or(json!({}));
        labels["endpoints.kubernetes.io/managed-by"] = json!("endpoint-controller");
        let ep = json!({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": name, "namespace": ns, "labels": labels}, "subsets": subsets});
        changed |= put(cluster, &ep_rt, &ns, &name, ep);

        // EndpointSlices: one per resolved port set, at most MAX_ENDPOINTS_PER_SLICE each.
        let publish_not_ready = svc.pointer("/spec/publishNotReadyAddresses") == Some(&json!(true));
        let mut groups: Vec<(Vec<Value>, Vec<Value>)> = Vec::new();
        for p in &pods {
            let ports: Vec<Value> = ports_for(p)
                .into_iter()
                .map(|mut v| {
                    // A slice port has a name, empty for the Service's single unnamed port.
                    if v.get("name").is_none() {
                        v["name"] = json!("");
                    }
                    v
                })
                .collect();
            let terminating = p.pointer("/metadata/deletionTimestamp").is_some();
            let serving = pod_ready(p) || publish_not_ready;
            let ready = serving && (!terminating || publish_not_ready);
            let endpoint = json!({"addresses": [ip(p)], "conditions": {"ready": ready, "serving": serving, "terminating": terminating}, "nodeName": p.pointer("/spec/nodeName"), "targetRef": target_ref(p)});
            match groups
                .iter_mut()
                .find(|(ps, eps)| *ps == ports && eps.len() < MAX_ENDPOINTS_PER_SLICE)
            {
                Some((_, eps)) => eps.push(endpoint),
                None => groups.push((ports, vec![endpoint])),
            }
        }
        if groups.is_empty() {
            // No pods: one slice without endpoints, its ports unresolved.
            let ports = svc_ports
                .iter()
                .map(|sp| json!({"name": sp.get("name").cloned().unwrap_or(json!("")), "port": null, "protocol": sp["protocol"].as_str().unwrap_or("TCP")}))
                .collect();
            groups.push((ports, Vec::new()));
        }
        for (i, (ports, endpoints)) in groups.into_iter().enumerate() {
            let slice_name = match i {
                0 => format!("{name}-kubesim"),
                n => format!("{name}-kubesim-{}", n + 1),
            };
            wanted.insert((ns.clone(), slice_name.clone()));
            let slice = json!({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {
                    "name": slice_name, "namespace": ns,
                    "labels": {"kubernetes.io/service-name": name, "endpointslice.kubernetes.io/managed-by": SLICE_MANAGER},
                    "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": name, "uid": meta(&svc, "uid"), "controller": true, "blockOwnerDeletion": true}],
                },
                "addressType": "IPv4",
                "endpoints": endpoints,
                "ports": ports,
            });
            changed |= put(cluster, &slice_rt, &ns, &slice_name, slice);
        }
    }
    // Slices this controller wrote that no Service needs any more.
    let (slices, _) = cluster.store.list(&slice_rt.group_resource(), None);
    for slice in slices {
        let managed = slice.pointer("/metadata/labels/endpointslice.kubernetes.io~1managed-by")
            == Some(&json!(SLICE_MANAGER))
            && slice.pointer("/metadata/deletionTimestamp").is_none();
        let key = (meta(&slice, "namespace").to_string(), meta(&slice, "name").to_string());
        if managed
            && !wanted.contains(&key)
            && cluster
                .delete(&slice_rt, Some(&key.0), &key.1, &DeleteOptions::default())
                .is_ok()
        {
            changed = true;
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_ports_resolve_by_number_and_name() {
        let pod = json!({"spec": {"containers": [{"ports": [{"name": "http", "containerPort": 8080}]}]}});
        assert_eq!(
            resolve_target_port(&json!({"port": 80, "targetPort": "http"}), &pod),
            Some(8080)
        );
        assert_eq!(
            resolve_target_port(&json!({"port": 80, "targetPort": 9090}), &pod),
            Some(9090)
        );
        assert_eq!(resolve_target_port(&json!({"port": 80}), &pod), Some(80));
        assert_eq!(
            resolve_target_port(&json!({"port": 80, "targetPort": "grpc"}), &pod),
            None
        );
    }
}
