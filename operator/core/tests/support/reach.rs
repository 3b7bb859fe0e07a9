//! What a sidecar's compiled configuration reaches, for the scoping tests (`sidecar_scope`,
//! `service_export_to`).

use std::collections::BTreeSet;

use trellis_contract::ProxyConfig;

/// The hosts of the outbound listener's virtual hosts and TCP routes, the services of its
/// clusters, and the DNS names, each as a set of FQDNs.
pub fn reach(c: &ProxyConfig) -> (BTreeSet<String>, BTreeSet<String>, BTreeSet<String>) {
    let outbound = c.listeners.iter().find(|l| l.name == "outbound").expect("outbound");
    let mut routed: BTreeSet<String> = outbound
        .virtual_hosts
        .iter()
        .map(|v| v.name.split(':').next().unwrap_or_default().to_string())
        .collect();
    for r in &outbound.tcp_routes {
        for (cluster, _) in r.destinations() {
            routed.insert(cluster_host(cluster));
        }
    }
    let clusters = c
        .clusters
        .iter()
        .filter(|c| c.name.starts_with("outbound|"))
        .map(|c| cluster_host(&c.name))
        .collect();
    let dns = c.dns.entries.iter().map(|e| e.hostname.clone()).collect();
    (routed, clusters, dns)
}

/// `outbound|PORT|SUBSET|HOST` → HOST.
fn cluster_host(name: &str) -> String {
    name.rsplit('|').next().unwrap_or_default().to_string()
}
