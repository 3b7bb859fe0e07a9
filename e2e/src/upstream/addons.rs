//! What a cluster has besides its components: CoreDNS as the cluster DNS
//! (`kube-system/kube-dns` at the usual ClusterIP, with the RBAC, Corefile
//! and Deployment kubeadm installs), and LoadBalancer addresses — the role
//! a cloud's load balancer controller (or MetalLB) plays: every Service of
//! type LoadBalancer gets an address from the instance's pool in
//! `status.loadBalancer.ingress`, which kube-proxy on the node serves and the
//! host routes to the node.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::watcher;
use serde_json::json;
use tokio::sync::watch;
use tracing::{info, warn};

use super::images::COREDNS_IMAGE;
use super::{CLUSTER_DOMAIN, DNS_IP};

/// The Corefile: cluster names from the API (pods `insecure` as kubeadm
/// sets it), health and readiness endpoints, metrics, caching; other names
/// forwarded to the node's resolvers when it has any.
pub fn corefile(forward: bool) -> String {
    let forward = if forward {
        "    forward . /etc/resolv.conf {\n       max_concurrent 1000\n    }\n    loop\n"
    } else {
        ""
    };
    format!(
        ".:53 {{\n    errors\n    health {{\n       lameduck 5s\n    }}\n    ready\n    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{\n       pods insecure\n       fallthrough in-addr.arpa ip6.arpa\n       ttl 30\n    }}\n    prometheus :9153\n{forward}    cache 30\n    reload\n    loadbalance\n}}\n"
    )
}

/// CoreDNS's objects, as kubeadm installs them (one replica: one node).
pub fn coredns_objects(forward: bool) -> Vec<serde_json::Value> {
    let labels = json!({"k8s-app": "kube-dns"});
    vec![
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "coredns", "namespace": "kube-system"}}),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": "system:coredns"},
            "rules": [
                {"apiGroups": [""], "resources": ["endpoints", "services", "pods", "namespaces"], "verbs": ["list", "watch"]},
                {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]},
            ],
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": "system:coredns"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:coredns"},
            "subjects": [{"kind": "ServiceAccount", "name": "coredns", "namespace": "kube-system"}],
        }),
        json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "coredns", "namespace": "kube-system"},
            "data": {"Corefile": corefile(forward)},
        }),
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "coredns", "namespace": "kube-system", "labels": labels},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "serviceAccountName": "coredns",
                        "priorityClassName": "system-cluster-critical",
                        "dnsPolicy": "Default",
                        "containers": [{
                            "name": "coredns",
                            "image": COREDNS_IMAGE,
                            "imagePullPolicy": "IfNotPresent",
                            "args": ["-conf", "/etc/coredns/Corefile"],
                            "ports": [
                                {"name": "dns", "containerPort": 53, "protocol": "UDP"},
                                {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"},
                                {"name": "metrics", "containerPort": 9153, "protocol": "TCP"},
                            ],
                            "volumeMounts": [{"name": "config-volume", "mountPath": "/etc/coredns", "readOnly": true}],
                            "livenessProbe": {"httpGet": {"path": "/health", "port": 8080}, "initialDelaySeconds": 10, "timeoutSeconds": 5, "failureThreshold": 5},
                            "readinessProbe": {"httpGet": {"path": "/ready", "port": 8181}, "periodSeconds": 2},
                            "securityContext": {
                                "allowPrivilegeEscalation": false,
                                "readOnlyRootFilesystem": true,
                                "capabilities": {"add": ["NET_BIND_SERVICE"], "drop": ["ALL"]},
                            },
                            "resources": {"requests": {"cpu": "50m", "memory": "70Mi"}, "limits": {"memory": "170Mi"}},
                        }],
                        "volumes": [{"name": "config-volume", "configMap": {"name": "coredns", "items": [{"key": "Corefile", "path": "Corefile"}]}}],
                    },
                },
            },
        }),
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "kube-dns", "namespace": "kube-system", "labels": {"k8s-app": "kube-dns", "kubernetes.io/name": "CoreDNS"}},
            "spec": {
                "selector": labels,
                "clusterIP": DNS_IP.to_string(),
                "ports": [
                    {"name": "dns", "port": 53, "protocol": "UDP"},
                    {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
                    {"name": "metrics", "port": 9153, "protocol": "TCP"},
                ],
            },
        }),
    ]
}

/// The LoadBalancer pool and what is taken from it.
#[derive(Debug, Clone)]
pub struct Pool {
    first: u32,
    last: u32,
    /// `namespace/name` → address.
    taken: BTreeMap<String, Ipv4Addr>,
}

impl Pool {
    pub fn new(first: Ipv4Addr, last: Ipv4Addr) -> Self {
        Self {
            first: first.into(),
            last: last.into(),
            taken: BTreeMap::new(),
        }
    }

    /// Records what `svc` holds, or frees it when it is not (or no longer) a
    /// LoadBalancer; returns an address to give it when it needs one.
    pub fn observe(&mut self, key: &str, svc: &Service) -> Option<Ipv4Addr> {
        let wants = svc.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("LoadBalancer")
            && svc.metadata.deletion_timestamp.is_none();
        let has = svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .and_then(|i| i.first())
            .and_then(|i| i.ip.as_deref())
            .and_then(|ip| ip.parse::<Ipv4Addr>().ok());
        if !wants {
            self.taken.remove(key);
            return None;
        }
        if let Some(ip) = has {
            self.taken.insert(key.to_string(), ip);
            return None;
        }
        if let Some(ip) = self.taken.get(key) {
            return Some(*ip);
        }
        let ip = (self.first..=self.last)
            .map(Ipv4Addr::from)
            .find(|ip| !self.taken.values().any(|t| t == ip))?;
        self.taken.insert(key.to_string(), ip);
        Some(ip)
    }

    /// Frees the address of a deleted Service.
    pub fn release(&mut self, key: &str) {
        self.taken.remove(key);
    }
}

fn key(svc: &Service) -> String {
    format!(
        "{}/{}",
        svc.metadata.namespace.as_deref().unwrap_or_default(),
        svc.metadata.name.as_deref().unwrap_or_default()
    )
}

/// Gives every LoadBalancer Service an address from `pool` until `stop`.
pub async fn load_balancers(client: kube::Client, mut pool: Pool, mut stop: watch::Receiver<bool>) {
    let all: Api<Service> = Api::all(client.clone());
    let mut events = watcher(all, watcher::Config::default()).boxed();
    loop {
        let event = tokio::select! {
            e = events.next() => e,
            _ = stop.changed() => return,
        };
        let Some(event) = event else { return };
        let svc = match event {
            Ok(watcher::Event::Apply(svc) | watcher::Event::InitApply(svc)) => svc,
            Ok(watcher::Event::Delete(svc)) => {
                pool.release(&key(&svc));
                continue;
            }
            Ok(_) => continue,
            Err(e) => {
                warn!(error = %e, "watching Services for LoadBalancers");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
        };
        let Some(ip) = pool.observe(&key(&svc), &svc) else {
            continue;
        };
        let (Some(ns), Some(name)) = (svc.metadata.namespace.as_deref(), svc.metadata.name.as_deref()) else {
            continue;
        };
        let api: Api<Service> = Api::namespaced(client.clone(), ns);
        let patch = json!({"status": {"loadBalancer": {"ingress": [{"ip": ip.to_string(), "ipMode": "VIP"}]}}});
        match api
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => info!(service = %format!("{ns}/{name}"), %ip, "LoadBalancer address assigned"),
            Err(e) => warn!(service = %format!("{ns}/{name}"), error = %e, "assigning a LoadBalancer address failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str, kind: &str, ip: Option<&str>) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ns"},
            "spec": {"type": kind},
            "status": {"loadBalancer": {"ingress": ip.map(|ip| vec![json!({"ip": ip})]).unwrap_or_default()}},
        }))
        .unwrap()
    }

    #[test]
    fn the_pool_gives_distinct_addresses_and_frees_them() {
        let mut pool = Pool::new(Ipv4Addr::new(198, 18, 0, 128), Ipv4Addr::new(198, 18, 0, 129));
        let a = pool.observe("ns/a", &svc("a", "LoadBalancer", None)).unwrap();
        let b = pool.observe("ns/b", &svc("b", "LoadBalancer", None)).unwrap();
        assert_ne!(a, b);
        assert_eq!(
            pool.observe("ns/c", &svc("c", "LoadBalancer", None)),
            None,
            "pool exhausted"
        );
        // Once the status shows it, nothing more to do; the same answer again otherwise.
        assert_eq!(
            pool.observe("ns/a", &svc("a", "LoadBalancer", Some(&a.to_string()))),
            None
        );
        assert_eq!(pool.observe("ns/b", &svc("b", "LoadBalancer", None)), Some(b));
        // A Service turned into a ClusterIP one frees its address.
        assert_eq!(pool.observe("ns/a", &svc("a", "ClusterIP", None)), None);
        assert_eq!(pool.observe("ns/c", &svc("c", "LoadBalancer", None)), Some(a));
        pool.release("ns/b");
        assert_eq!(pool.observe("ns/d", &svc("d", "LoadBalancer", None)), Some(b));
    }

    #[test]
    fn coredns_serves_the_usual_cluster_ip_and_forwards_only_with_resolvers() {
        let objects = coredns_objects(false);
        let service = objects.iter().find(|o| o["kind"] == "Service").unwrap();
        assert_eq!(service["spec"]["clusterIP"], "10.96.0.10");
        assert_eq!(service["metadata"]["name"], "kube-dns");
        assert!(!corefile(false).contains("forward"));
        assert!(corefile(true).contains("forward . /etc/resolv.conf"));
        assert!(corefile(true).contains("kubernetes cluster.local"));
    }
}
