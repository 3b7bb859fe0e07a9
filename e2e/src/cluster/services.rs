//! What the API server allocates to a Service: its cluster IP and the node ports of a NodePort or
//! LoadBalancer Service.

use std::collections::BTreeSet;

use serde_json::Value;

use super::Cluster;
use crate::defaults;

impl Cluster {
    pub(super) fn allocate_cluster_ip(&self) -> Option<String> {
        let svc = self.catalog.get("", "v1", "services")?;
        let (items, _) = self.store.list(&svc.group_resource(), None);
        let used: BTreeSet<String> = items
            .iter()
            .filter_map(|s| s.pointer("/spec/clusterIP").and_then(Value::as_str).map(str::to_string))
            .collect();
        let [a, b] = defaults::SERVICE_CIDR_PREFIX;
        // .0.1 is the kubernetes Service and .0.10 the cluster DNS.
        (2u32..65534)
            .filter(|i| *i != 10)
            .map(|i| format!("{a}.{b}.{}.{}", i / 256, i % 256))
            .find(|ip| !used.contains(ip))
    }

    /// Gives every port of a NodePort or LoadBalancer Service a `nodePort`
    /// (30000-32767, unused, kept from `old` for the same port), as the
    /// API server does. kubesim does not serve node ports; LoadBalancers
    /// are served by the pod network.
    pub(super) fn allocate_node_ports(&self, obj: &mut Value, old: Option<&Value>) {
        if !matches!(
            obj.pointer("/spec/type").and_then(Value::as_str),
            Some("NodePort" | "LoadBalancer")
        ) {
            return;
        }
        let Some(svc) = self.catalog.get("", "v1", "services") else {
            return;
        };
        let (items, _) = self.store.list(&svc.group_resource(), None);
        let mut used: BTreeSet<i64> = items
            .iter()
            .flat_map(|s| {
                s.pointer("/spec/ports")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default()
            })
            .filter_map(|p| p.get("nodePort").and_then(Value::as_i64))
            .collect();
        let previous = |port: &Value| -> Option<i64> {
            old?.pointer("/spec/ports")?
                .as_array()?
                .iter()
                .find(|p| p.get("port") == port.get("port") && p.get("protocol") == port.get("protocol"))?
                .get("nodePort")?
                .as_i64()
        };
        let start = i64::from(uuid::Uuid::new_v4().as_bytes()[0]) * 10;
        for p in obj
            .pointer_mut("/spec/ports")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            if p.get("nodePort").and_then(Value::as_i64).is_some() {
                continue;
            }
            let port = previous(p).or_else(|| {
                (0..2768)
                    .map(|i| 30000 + (start + i) % 2768)
                    .find(|n| !used.contains(n))
            });
            if let (Some(n), Some(m)) = (port, p.as_object_mut()) {
                used.insert(n);
                m.insert("nodePort".into(), Value::from(n));
            }
        }
    }
}
