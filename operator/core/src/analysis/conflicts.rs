//! Conflicts between resources: mesh VirtualServices defining the same host (`IST0109`),
//! Sidecars selecting the same pod (`IST0110`) or several without a selector in one namespace
//! (`IST0111`), Gateway servers with the same selector, port and host (`IST0145`), and one
//! certificate served by several Gateways (`IST0138`).

use std::collections::BTreeMap;

use super::{Facts, Raw, key_of};
use crate::code::Code;
use crate::compile::{applies_to_gateway, host_matches, resolve_host};
use crate::registry::{ObjectKey, selects};

pub(super) fn check(f: &Facts<'_>, out: &mut Vec<Raw>) {
    mesh_hosts(f, out);
    sidecars(f, out);
    gateways(f, out);
}

/// Sidecars a proxy cannot follow all of, as Istio's analyzers find them: several without a
/// selector in one namespace, several selecting one pod.
fn sidecars(f: &Facts<'_>, out: &mut Vec<Raw>) {
    let mut without_selector: BTreeMap<String, Vec<ObjectKey>> = BTreeMap::new();
    let mut selecting: BTreeMap<ObjectKey, Vec<ObjectKey>> = BTreeMap::new();
    for sidecar in &f.snapshot.sidecars {
        let key = key_of(&sidecar.metadata);
        let labels = sidecar.spec.workload_selector.as_ref().and_then(|w| w.labels.as_ref());
        match labels.filter(|l| !l.is_empty()) {
            None => without_selector.entry(key.namespace.clone()).or_default().push(key),
            Some(labels) => {
                for pod in f.snapshot.registry.workloads.values() {
                    if pod.key.namespace == key.namespace && selects(labels, &pod.labels) {
                        selecting.entry(pod.key.clone()).or_default().push(key.clone());
                    }
                }
            }
        }
    }
    for (ns, list) in without_selector.into_iter().filter(|(_, l)| l.len() > 1) {
        let names: Vec<String> = list.iter().map(ToString::to_string).collect();
        for key in list {
            out.push(Raw::new(
                Code::MultipleSidecarsWithoutWorkloadSelectors,
                "Sidecar",
                key,
                "spec.workloadSelector",
                format!("The Sidecars {} in namespace {ns} have no workloadSelector; proxies follow the oldest only. Merge them into one, or give the others selectors", names.join(",")),
            ));
        }
    }
    let mut reported: BTreeMap<ObjectKey, Vec<String>> = BTreeMap::new();
    for (pod, list) in selecting.into_iter().filter(|(_, l)| l.len() > 1) {
        for key in &list {
            reported.entry(key.clone()).or_default().push(format!(
                "{} (with {})",
                pod,
                list.iter()
                    .filter(|k| *k != key)
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            ));
        }
    }
    for (key, pods) in reported {
        out.push(Raw::new(
            Code::ConflictingSidecarWorkloadSelectors,
            "Sidecar",
            key,
            "spec.workloadSelector",
            format!("The Sidecar selects pods another Sidecar selects too: {}; each proxy follows the oldest only. Give the Sidecars selectors that pick distinct pods, or merge them", pods.join("; ")),
        ));
    }
}

/// Mesh VirtualServices by the namespaces that see them and their hosts, as Istio scopes them:
/// `exportTo` unset or `*` is every namespace; `.` is the VirtualService's own.
fn mesh_hosts(f: &Facts<'_>, out: &mut Vec<Raw>) {
    let mut by_host: BTreeMap<(String, String), Vec<ObjectKey>> = BTreeMap::new();
    for vs in &f.snapshot.virtual_services {
        let key = key_of(&vs.metadata);
        if !applies_to_gateway(vs.spec.gateways.as_deref().unwrap_or_default(), &key.namespace, "mesh") {
            continue;
        }
        let scopes: Vec<String> = match vs.spec.export_to.as_deref().filter(|e| !e.is_empty()) {
            None => vec!["*".into()],
            Some(list) if list.iter().any(|e| e == "*") => vec!["*".into()],
            Some(list) => list
                .iter()
                .filter(|e| *e != "~")
                .map(|e| if e == "." { key.namespace.clone() } else { e.clone() })
                .collect(),
        };
        let mut hosts: Vec<String> = vs
            .spec
            .hosts
            .iter()
            .flatten()
            .map(|h| resolve_host(h, &key.namespace))
            .collect();
        hosts.sort();
        hosts.dedup();
        for scope in scopes {
            for h in &hosts {
                let list = by_host.entry((scope.clone(), h.clone())).or_default();
                if !list.contains(&key) {
                    list.push(key.clone());
                }
            }
        }
    }
    for ((_, host), list) in by_host {
        if list.len() < 2 {
            continue;
        }
        let names: Vec<String> = list.iter().map(ToString::to_string).collect();
        for key in list {
            out.push(Raw::new(
                Code::ConflictingMeshGatewayVirtualServiceHosts,
                "VirtualService",
                key,
                "spec.hosts",
                format!("The VirtualServices {} associated with mesh gateway define the same host {host} which can lead to undefined behavior (sidecars merge their rules in creation order). This can be fixed by merging the conflicting VirtualServices into a single resource.", names.join(",")),
            ));
        }
    }
}

/// A host of a Gateway server: the Gateway, the server's index, the host.
type ServerHost = (ObjectKey, usize, String);

fn gateways(f: &Facts<'_>, out: &mut Vec<Raw>) {
    // (selector, port) → (gateway, server index, host) of each server.
    let mut servers: BTreeMap<(String, u32), Vec<ServerHost>> = BTreeMap::new();
    // credential → the gateways that serve it.
    let mut certificates: BTreeMap<String, Vec<ObjectKey>> = BTreeMap::new();
    for gw in &f.snapshot.gateways {
        let key = key_of(&gw.metadata);
        let selector = gw
            .spec
            .selector
            .iter()
            .flatten()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        for (i, server) in gw.spec.servers.iter().enumerate() {
            for h in &server.hosts {
                let host = h.split_once('/').map_or(h.as_str(), |(_, host)| host).to_string();
                servers
                    .entry((selector.clone(), server.port.number))
                    .or_default()
                    .push((key.clone(), i, host));
            }
            let Some(tls) = &server.tls else { continue };
            let credential = match (&tls.credential_name, &tls.server_certificate) {
                (Some(name), _) => format!("Secret {}/{name}", key.namespace),
                (None, Some(file)) => format!("file {file}"),
                (None, None) => continue,
            };
            let list = certificates.entry(credential).or_default();
            if !list.contains(&key) {
                list.push(key.clone());
            }
        }
    }
    for ((selector, port), list) in servers {
        // One finding per server: the hosts it shares and the gateways it shares them with.
        let mut conflicts: BTreeMap<(ObjectKey, usize), (Vec<String>, Vec<String>)> = BTreeMap::new();
        for (key, i, host) in &list {
            let others: Vec<String> = list
                .iter()
                .filter(|(k, _, h)| k != key && (host_matches(h, host) || host_matches(host, h)))
                .map(|(k, _, _)| k.to_string())
                .collect();
            if others.is_empty() {
                continue;
            }
            let (hosts, gateways) = conflicts.entry((key.clone(), *i)).or_default();
            hosts.push(host.clone());
            gateways.extend(others);
        }
        for ((key, i), (hosts, mut gateways)) in conflicts {
            gateways.sort();
            gateways.dedup();
            out.push(Raw::new(
                Code::ConflictingGateways,
                "Gateway",
                key,
                format!("spec.servers[{i}]"),
                format!("Conflict with gateways {} (workload selector {selector}, port {port}, hosts {}); only one of them takes the hosts' traffic. Give the servers distinct hosts or ports, or merge the Gateways", gateways.join(","), hosts.join(",")),
            ));
        }
    }
    for (credential, list) in certificates {
        if list.len() < 2 {
            continue;
        }
        let names: Vec<String> = list.iter().map(ToString::to_string).collect();
        for key in list {
            out.push(Raw::new(
                Code::GatewayDuplicateCertificate,
                "Gateway",
                key,
                "",
                format!("Duplicate certificate ({credential}) in multiple gateways {} may cause 404s if clients re-use HTTP2 connections. Give each Gateway its own certificate, or serve the hosts from one Gateway", names.join(",")),
            ));
        }
    }
}
