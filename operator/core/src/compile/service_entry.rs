//! ServiceEntries: their hosts, which the sidecar's outbound listener routes
//! ([`super::outbound`]), and the endpoints of their clusters, with Istio's semantics.
//!
//! - Each host and port of an entry visible to the proxy (`exportTo`) is a virtual host (HTTP
//!   ports, and ports of undetected protocol), a route by server name (TLS ports) or a route
//!   by address and port (opaque TCP: the entry's `addresses`, or any address without them),
//!   after the Services' routes; VirtualServices and DestinationRules select the host as they
//!   select a Service's.
//! - Endpoints by `resolution`: STATIC — the `endpoints`' IPs, or the pods `workloadSelector`
//!   picks in the entry's namespace; DNS and DNS_ROUND_ROBIN — the endpoints' names (or the
//!   host) resolved by the proxy; NONE — the address the application dialled.
//! - `MESH_INTERNAL` entries are reached with mutual TLS, verifying the endpoints' service
//!   accounts and `subjectAltNames`; `MESH_EXTERNAL` ones in plaintext unless a
//!   DestinationRule originates TLS.
//! - A host declared by several entries is the oldest entry's, and a host that is a Service's
//!   FQDN is the Service's; each is reported (TRL0113).

use std::collections::BTreeMap;
use std::net::IpAddr;

use trellis_api::networking::{Location, Resolution, ServiceEntry, ServicePort};
use trellis_contract::{Discovery, Endpoint, HealthStatus, Provenance, SpiffeId};

use super::{Ctx, DNS_DOMAIN, resolve_host, resource, visible};
use crate::registry::{Protocol, selects};
use crate::snapshot::Snapshot;

/// One host of a ServiceEntry.
#[derive(Debug, Clone)]
pub(crate) struct EntryHost<'a> {
    /// The entry.
    pub(crate) entry: &'a ServiceEntry,
    /// Its namespace.
    pub(crate) namespace: &'a str,
    /// The host, resolved as Istio resolves hosts (a short name in the entry's namespace).
    pub(crate) host: String,
}

impl EntryHost<'_> {
    /// The entry's ports.
    pub(crate) fn ports(&self) -> &[ServicePort] {
        self.entry.spec.ports.as_deref().unwrap_or_default()
    }

    /// The entry's port `number`.
    pub(crate) fn port(&self, number: u16) -> Option<&ServicePort> {
        self.ports().iter().find(|p| p.number == u32::from(number))
    }

    /// The port numbers, for messages.
    pub(crate) fn port_numbers(&self) -> Vec<u16> {
        self.ports()
            .iter()
            .filter_map(|p| u16::try_from(p.number).ok())
            .collect()
    }

    pub(crate) fn resource(&self) -> String {
        resource("ServiceEntry", &self.entry.metadata)
    }

    /// Where routes to the host come from: the entry.
    pub(crate) fn provenance(&self) -> Provenance {
        Provenance {
            kind: "ServiceEntry".into(),
            namespace: self.namespace.to_string(),
            name: self.entry.metadata.name.clone().unwrap_or_default(),
            rule_index: None,
            section: None,
            parts: Vec::new(),
        }
    }

    /// The entry's addresses that are single IPs (DNS answers, virtual host names).
    pub(crate) fn ips(&self) -> Vec<IpAddr> {
        let addresses = self.entry.spec.addresses.iter().flatten();
        addresses.filter_map(|a| a.parse().ok()).collect()
    }
}

/// A port's protocol, read as a Service port's is (its `protocol`, else its name).
pub(crate) fn protocol(p: &ServicePort) -> Protocol {
    Protocol::detect(p.protocol.as_deref(), Some(&p.name))
}

/// Every host of every entry, visible or not (which hosts are known at all).
pub(crate) fn all_hosts(snapshot: &Snapshot) -> Vec<String> {
    let mut out = Vec::new();
    for se in &snapshot.service_entries {
        let ns = se.metadata.namespace.as_deref().unwrap_or("default");
        out.extend(se.spec.hosts.iter().map(|h| resolve_host(h, ns)));
    }
    out
}

/// The hosts of the entries visible from namespace `viewer`, by host; each host once (the
/// oldest entry's), none that is a Service's. With the reasons hosts were left out, as
/// (resource, message).
pub(crate) fn hosts<'a>(snapshot: &'a Snapshot, viewer: &str) -> (Vec<EntryHost<'a>>, Vec<(String, String)>) {
    let mut entries: Vec<&ServiceEntry> = snapshot.service_entries.iter().collect();
    entries.sort_by_key(|se| {
        (
            se.metadata.creation_timestamp.as_ref().map(|t| t.0),
            se.metadata.namespace.clone(),
            se.metadata.name.clone(),
        )
    });
    let mut by_host: BTreeMap<String, EntryHost<'a>> = BTreeMap::new();
    let mut notes = Vec::new();
    for se in entries {
        let ns = se.metadata.namespace.as_deref().unwrap_or("default");
        if !visible(se.spec.export_to.as_deref(), ns, viewer) {
            continue;
        }
        for h in &se.spec.hosts {
            let host = resolve_host(h, ns);
            let res = resource("ServiceEntry", &se.metadata);
            if snapshot.registry.service_by_host(&host, DNS_DOMAIN).is_some() {
                notes.push((
                    res,
                    format!("host {host} is a Service's: sidecars route it to the Service's endpoints, and this entry's ports, endpoints and resolution for it are not used; remove the host from the entry"),
                ));
                continue;
            }
            match by_host.get(&host) {
                Some(first) => notes.push((
                    res,
                    format!(
                        "host {host} is declared by {} too, which is older: sidecars use that entry's ports and endpoints for it; declare each host in one ServiceEntry",
                        first.resource()
                    ),
                )),
                None => {
                    by_host.insert(
                        host.clone(),
                        EntryHost {
                            entry: se,
                            namespace: ns,
                            host,
                        },
                    );
                }
            }
        }
    }
    (by_host.into_values().collect(), notes)
}

/// The entry host `host` (exactly, as a destination or cluster names it) seen from `viewer`.
pub(crate) fn find<'a>(snapshot: &'a Snapshot, viewer: &str, host: &str) -> Option<EntryHost<'a>> {
    if !snapshot.service_entries.iter().any(|se| {
        let ns = se.metadata.namespace.as_deref().unwrap_or("default");
        se.spec.hosts.iter().any(|h| resolve_host(h, ns) == host)
    }) {
        return None;
    }
    hosts(snapshot, viewer).0.into_iter().find(|e| e.host == host)
}

/// The endpoints of an entry host's port, as a cluster holds them.
pub(crate) struct EntryEndpoints {
    /// How the addresses are found.
    pub(crate) discovery: Discovery,
    /// The endpoints (none for NONE).
    pub(crate) endpoints: Vec<Endpoint>,
    /// Each endpoint's service account identity (STATIC and DNS endpoints with one, selected
    /// pods), in the order of `endpoints`: what explicit mesh mTLS verifies.
    pub(crate) accounts: Vec<Option<String>>,
    /// The application protocol of the port.
    pub(crate) protocol: Protocol,
    /// `MESH_INTERNAL`: the identities mutual TLS accepts (`subjectAltNames` and the
    /// endpoints' accounts); `None` for `MESH_EXTERNAL`.
    pub(crate) mesh_identities: Option<Vec<String>>,
}

/// The endpoints of port `number` of entry host `e`, narrowed to `subset` labels.
pub(crate) fn endpoints(
    ctx: &Ctx<'_>,
    e: &EntryHost<'_>,
    number: u16,
    subset: Option<&BTreeMap<String, String>>,
) -> Option<EntryEndpoints> {
    let port = e.port(number)?;
    let spec = &e.entry.spec;
    let target = port.target_port.unwrap_or(port.number);
    let target = u16::try_from(target).unwrap_or(number);
    let account = |sa: &str| SpiffeId::for_service_account(&ctx.trust_domain, e.namespace, sa).to_string();
    let mut endpoints = Vec::new();
    let mut accounts = Vec::new();
    let resolution = match spec.resolution.unwrap_or_default() {
        // Refused by the validator; compiled as NONE, reported by `outbound::entry_routes`.
        Resolution::DynamicDns => Resolution::None,
        r => r,
    };
    let discovery = match resolution {
        Resolution::None | Resolution::DynamicDns => Discovery::OriginalDestination,
        Resolution::Static => Discovery::Static,
        Resolution::Dns => Discovery::Dns,
        Resolution::DnsRoundRobin => Discovery::DnsFirstAddress,
    };
    let entry_labels = |labels: &BTreeMap<String, String>| {
        let mut l = labels.clone();
        l.entry("namespace".into()).or_insert_with(|| e.namespace.to_string());
        l
    };
    if let Some(sel) = &spec.workload_selector {
        let labels = sel.labels.clone().unwrap_or_default();
        let registry = &ctx.snapshot.registry;
        let from = crate::registry::ObjectKey::new(e.namespace, String::new());
        for (_, w) in registry
            .workloads
            .range(from..)
            .take_while(|(k, _)| k.namespace == e.namespace)
        {
            let Some(ip) = &w.ip else { continue };
            if labels.is_empty() || !selects(&labels, &w.labels) || subset.is_some_and(|s| !selects(s, &w.labels)) {
                continue;
            }
            endpoints.push(Endpoint {
                address: ip.clone(),
                port: target,
                weight: 1,
                labels: entry_labels(&w.labels),
                health: if w.ready {
                    HealthStatus::Healthy
                } else {
                    HealthStatus::Unhealthy
                },
                identity: None,
            });
            accounts.push(Some(w.spiffe_id(&ctx.trust_domain).to_string()));
        }
    } else if resolution != Resolution::None {
        let listed = spec.endpoints.as_deref().unwrap_or_default();
        let implicit = [trellis_api::networking::WorkloadEntry {
            address: Some(e.host.clone()),
            ..Default::default()
        }];
        // DNS without endpoints: the host itself is resolved.
        let entries: &[trellis_api::networking::WorkloadEntry] =
            if listed.is_empty() && resolution != Resolution::Static {
                &implicit
            } else {
                listed
            };
        for we in entries {
            let labels = we.labels.clone().unwrap_or_default();
            if subset.is_some_and(|s| !selects(s, &labels)) {
                continue;
            }
            let Some(address) = we.address.clone().filter(|a| !a.is_empty()) else {
                continue;
            };
            let ep_port = we
                .ports
                .as_ref()
                .and_then(|m| m.get(&port.name))
                .and_then(|p| u16::try_from(*p).ok())
                .unwrap_or(target);
            endpoints.push(Endpoint {
                address,
                port: ep_port,
                weight: we.weight.filter(|w| *w > 0).unwrap_or(1),
                labels: entry_labels(&labels),
                health: HealthStatus::Healthy,
                identity: None,
            });
            accounts.push(we.service_account.as_deref().map(account));
        }
    }
    let mesh_identities = (spec.location.unwrap_or_default() == Location::MeshInternal).then(|| {
        let mut ids: Vec<String> = spec.subject_alt_names.clone().unwrap_or_default();
        ids.extend(accounts.iter().flatten().cloned());
        ids.sort();
        ids.dedup();
        ids
    });
    Some(EntryEndpoints {
        discovery,
        endpoints,
        accounts,
        protocol: protocol(port),
        mesh_identities,
    })
}

/// DNS answers for the proxy's DNS table: each visible entry's hosts that are names (no
/// wildcard) and that its scope imports, with the entry's single-IP addresses.
pub(crate) fn dns_entries(ctx: &Ctx<'_>) -> Vec<trellis_contract::DnsEntry> {
    let (hosts, _) = hosts(ctx.snapshot, &ctx.proxy.key.namespace);
    hosts
        .into_iter()
        .filter(|e| !e.host.contains('*') && ctx.scope.host(e.namespace, &e.host))
        .filter_map(|e| {
            let ips = e.ips();
            (!ips.is_empty()).then(|| trellis_contract::DnsEntry {
                hostname: e.host.clone(),
                aliases: Vec::new(),
                addresses: ips.iter().map(IpAddr::to_string).collect(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use crate::compile::{Role, compile};
    use crate::registry::ObjectKey;
    use crate::snapshot::Snapshot;
    use trellis_contract::{Discovery, ProxyConfig, UpstreamTls};

    const PODS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: client-1, namespace: shop, labels: {app: client}}
spec: {containers: [{name: app, image: app}]}
status: {podIP: 10.244.0.5, phase: Running, conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: other-1, namespace: elsewhere, labels: {app: other}}
spec: {containers: [{name: app, image: app}]}
status: {podIP: 10.244.0.6, phase: Running, conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: vm-1, namespace: shop, labels: {app: vm}}
spec: {serviceAccountName: vm, containers: [{name: app, image: app}]}
status: {podIP: 10.244.0.9, phase: Running, conditions: [{type: Ready, status: "True"}]}
"#;

    fn sidecar(yaml: &str, ns: &str, pod: &str) -> ProxyConfig {
        let snapshot = Snapshot::from_yaml(&format!("{PODS}\n---\n{yaml}")).unwrap();
        compile(&snapshot, &ObjectKey::new(ns, pod), Role::Sidecar, "v1")
            .unwrap()
            .config
    }

    /// workloadSelector: the selected pods are the endpoints, on the targetPort; MESH_INTERNAL:
    /// mutual TLS to their identity; `exportTo: .` keeps the host from other namespaces.
    #[test]
    fn a_selected_pod_is_a_mesh_internal_endpoint_in_the_entrys_namespace_only() {
        let yaml = r#"
apiVersion: networking.trellis.dev/v1alpha1
kind: ServiceEntry
metadata: {name: vm, namespace: shop}
spec:
  hosts: [vm.shop.internal]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 80, name: http, protocol: HTTP, targetPort: 8080}]
  workloadSelector: {labels: {app: vm}}
  exportTo: ["."]
"#;
        let config = sidecar(yaml, "shop", "client-1");
        let cluster = config
            .cluster("outbound|80||vm.shop.internal")
            .expect("the entry's cluster");
        let ep: Vec<(String, u16)> = cluster.endpoints.iter().map(|e| (e.address.clone(), e.port)).collect();
        assert_eq!(ep, [("10.244.0.9".to_string(), 8080)]);
        assert_eq!(
            cluster.tls,
            UpstreamTls::Mesh {
                expected_identities: vec!["spiffe://cluster.local/ns/shop/sa/vm".into()],
                sni: None
            }
        );
        let outbound = &config.listeners[0];
        let vhost = outbound
            .virtual_hosts
            .iter()
            .find(|v| v.name == "vm.shop.internal:80")
            .unwrap();
        assert_eq!(vhost.routes[0].provenance.kind, "ServiceEntry");

        let elsewhere = sidecar(yaml, "elsewhere", "other-1");
        assert!(elsewhere.cluster("outbound|80||vm.shop.internal").is_none());
        assert!(
            !elsewhere.listeners[0]
                .virtual_hosts
                .iter()
                .any(|v| v.name.starts_with("vm."))
        );
    }

    /// NONE: the original destination; a TLS port: routed by server name, wildcards included;
    /// an opaque TCP port with addresses: by those addresses, which the DNS proxy answers.
    #[test]
    fn resolutions_and_protocols_compile_as_istio_routes_them() {
        let yaml = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: wiki, namespace: shop}
spec:
  hosts: ["*.wikipedia.org"]
  resolution: NONE
  ports: [{number: 443, name: tls, protocol: TLS}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db, namespace: shop}
spec:
  hosts: [db.example.com]
  addresses: [192.0.2.10]
  resolution: STATIC
  ports: [{number: 5432, name: tcp-pg, protocol: TCP}]
  endpoints: [{address: 192.0.2.20, ports: {tcp-pg: 6432}}]
"#;
        let config = sidecar(yaml, "shop", "client-1");
        let wiki = config
            .cluster("outbound|443||*.wikipedia.org")
            .expect("wildcard cluster");
        assert_eq!(wiki.discovery, Discovery::OriginalDestination);
        assert!(wiki.endpoints.is_empty());
        let routes = &config.listeners[0].tcp_routes;
        let sni = routes
            .iter()
            .find(|r| r.cluster == "outbound|443||*.wikipedia.org")
            .unwrap();
        assert_eq!(
            (sni.destination_port, sni.sni_hosts.clone()),
            (Some(443), vec!["*.wikipedia.org".to_string()])
        );
        let db = routes
            .iter()
            .find(|r| r.cluster == "outbound|5432||db.example.com")
            .unwrap();
        assert_eq!(db.destination_cidrs, ["192.0.2.10/32"]);
        let db_cluster = config.cluster("outbound|5432||db.example.com").unwrap();
        assert_eq!(
            (db_cluster.endpoints[0].address.as_str(), db_cluster.endpoints[0].port),
            ("192.0.2.20", 6432)
        );
        assert_eq!(db_cluster.tls, UpstreamTls::Disable);
        let dns = config
            .dns
            .entries
            .iter()
            .find(|e| e.hostname == "db.example.com")
            .unwrap();
        assert_eq!(dns.addresses, ["192.0.2.10"]);
    }
}
