//! References that do not resolve and selectors that select nothing: a VirtualService's
//! gateways, destination hosts, ports and subsets (`IST0101`, `IST0112`); a Gateway's
//! selector and credential (`IST0101`, `IST0161`); a DestinationRule's host (`IST0174`) and
//! subsets (`IST0173`) and its TLS without server verification (`IST0128`, `IST0129`); policy
//! selectors (`IST0127`), target Services and namespaces (`IST0101`).

use std::collections::BTreeMap;

use trellis_api::networking::{ClientTlsMode, ClientTlsSettings, Destination, DestinationRule, ServerTlsMode};

use super::{Facts, Raw, key_of};
use crate::code::Code;
use crate::compile::{DNS_DOMAIN, host_covers, host_matches, resolve_host, visible};
use crate::registry::{ObjectKey, selects};
use crate::snapshot::InputKind;

pub(super) fn check(f: &Facts<'_>, out: &mut Vec<Raw>) {
    virtual_services(f, out);
    gateways(f, out);
    destination_rules(f, out);
    policies(f, out);
}

fn virtual_services(f: &Facts<'_>, out: &mut Vec<Raw>) {
    let s = f.snapshot;
    for vs in &s.virtual_services {
        let key = key_of(&vs.metadata);
        let ns = key.namespace.clone();
        let spec = &vs.spec;
        // Gateways, at the top and in matches.
        let mut gateways: Vec<(String, &String)> = spec
            .gateways
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, g)| (format!("spec.gateways[{i}]"), g))
            .collect();
        for (i, r) in spec.http.iter().flatten().enumerate() {
            for (j, m) in r.matches.iter().flatten().enumerate() {
                for (k, g) in m.gateways.iter().flatten().enumerate() {
                    gateways.push((format!("spec.http[{i}].match[{j}].gateways[{k}]"), g));
                }
            }
        }
        for (field, g) in gateways {
            if g == "mesh" {
                continue;
            }
            let full = if g.contains('/') {
                g.clone()
            } else {
                format!("{ns}/{g}")
            };
            let exists = s.gateways.iter().any(|gw| key_of(&gw.metadata).to_string() == full);
            if !exists {
                out.push(Raw::new(
                    Code::ReferencedResourceNotFound,
                    "VirtualService",
                    key.clone(),
                    field,
                    format!("Referenced gateway not found: {g:?} (no Gateway {full}); create it, or fix the name (namespace/name for a Gateway in another namespace)"),
                ));
            }
        }
        if !f.knows(InputKind::Service) {
            continue;
        }
        // Destinations of every route and mirror.
        let mut dests: Vec<(String, &Destination)> = Vec::new();
        for (i, r) in spec.http.iter().flatten().enumerate() {
            for (j, d) in r.route.iter().flatten().enumerate() {
                dests.push((format!("spec.http[{i}].route[{j}].destination"), &d.destination));
            }
            if let Some(m) = &r.mirror {
                dests.push((format!("spec.http[{i}].mirror"), m));
            }
            for (j, m) in r.mirrors.iter().flatten().enumerate() {
                dests.push((format!("spec.http[{i}].mirrors[{j}].destination"), &m.destination));
            }
        }
        for (i, r) in spec.tcp.iter().flatten().enumerate() {
            for (j, d) in r.route.iter().flatten().enumerate() {
                dests.push((format!("spec.tcp[{i}].route[{j}].destination"), &d.destination));
            }
        }
        for (i, r) in spec.tls.iter().flatten().enumerate() {
            for (j, d) in r.route.iter().flatten().enumerate() {
                dests.push((format!("spec.tls[{i}].route[{j}].destination"), &d.destination));
            }
        }
        for (field, d) in dests {
            destination(f, &key, &ns, &field, d, out);
        }
    }
}

fn destination(f: &Facts<'_>, key: &ObjectKey, ns: &str, field: &str, d: &Destination, out: &mut Vec<Raw>) {
    let s = f.snapshot;
    let host = resolve_host(&d.host, ns);
    if s.registry.service_by_host(&host, DNS_DOMAIN).is_none() && crate::compile::entry_hosts(s).contains(&host) {
        // A ServiceEntry's host: the compiler checks its ports.
        return;
    }
    let Some(svc) = s.registry.service_by_host(&host, DNS_DOMAIN) else {
        out.push(Raw::new(
            Code::ReferencedResourceNotFound,
            "VirtualService",
            key.clone(),
            format!("{field}.host"),
            format!("Referenced host not found: {:?} (no Service {host}); requests routed to it get 503. Create the Service or fix the host (a short name is a Service in {ns}; write name.namespace for another namespace)", d.host),
        ));
        return;
    };
    if !svc.visible_from(ns) {
        out.push(Raw::new(
            Code::ReferencedResourceNotFound,
            "VirtualService",
            key.clone(),
            format!("{field}.host"),
            format!(
                "Referenced host not visible: {:?}: Service {} is not exported to namespace {ns} ({}: {:?}); requests routed to it from there get 503. Add {ns} to the annotation, or remove it to export the Service everywhere",
                d.host,
                svc.key,
                svc.export_to_annotation,
                svc.export_to.join(",")
            ),
        ));
        return;
    }
    let ports: Vec<String> = svc.ports.iter().map(|p| p.port.to_string()).collect();
    match &d.port {
        None if svc.ports.len() > 1 => out.push(Raw::new(
            Code::VirtualServiceDestinationPortSelectorRequired,
            "VirtualService",
            key.clone(),
            field,
            format!(
                "This VirtualService routes to a service {:?} that exposes multiple ports [{}]. Specifying a port in the destination is required to disambiguate: set destination.port.number",
                d.host,
                ports.join(", ")
            ),
        )),
        Some(p) if !svc.ports.iter().any(|sp| u32::from(sp.port) == p.number) => out.push(Raw::new(
            Code::ReferencedResourceNotFound,
            "VirtualService",
            key.clone(),
            format!("{field}.port.number"),
            format!(
                "Referenced host:port not found: \"{}:{}\"; Service {} has ports {}",
                d.host,
                p.number,
                svc.key,
                ports.join(", ")
            ),
        )),
        _ => {}
    }
    if let Some(subset) = &d.subset {
        let defined = s.destination_rules.iter().any(|dr| {
            let dr_ns = dr.metadata.namespace.as_deref().unwrap_or("default");
            visible(dr.spec.export_to.as_deref(), dr_ns, ns)
                && host_covers(&dr.spec.host, dr_ns, &host)
                && dr.spec.subsets.iter().flatten().any(|s| &s.name == subset)
        });
        if !defined {
            out.push(Raw::new(
                Code::ReferencedResourceNotFound,
                "VirtualService",
                key.clone(),
                format!("{field}.subset"),
                format!("Referenced host+subset in destinationrule not found: \"{}+{subset}\"; no DestinationRule for {host} defines subset {subset:?}, so requests routed to it get 503. Add the subset to the host's DestinationRule", d.host),
            ));
        }
    }
}

/// The pods a Gateway selects (any namespace, as the compiler places Gateways).
fn gateway_pods<'a>(f: &'a Facts<'_>, selector: Option<&BTreeMap<String, String>>) -> Vec<&'a super::Pod> {
    f.pods
        .iter()
        .filter(|p| selector.is_none_or(|s| selects(s, &p.labels)))
        .collect()
}

fn gateways(f: &Facts<'_>, out: &mut Vec<Raw>) {
    for gw in &f.snapshot.gateways {
        let key = key_of(&gw.metadata);
        let pods = gateway_pods(f, gw.spec.selector.as_ref());
        if f.knows(InputKind::Pod) && pods.is_empty() {
            let selector = selector_text(gw.spec.selector.as_ref());
            out.push(Raw::new(
                Code::ReferencedResourceNotFound,
                "Gateway",
                key.clone(),
                "spec.selector",
                format!("Referenced selector not found: {selector:?}; no pod has these labels, so no proxy serves this Gateway. Fix the selector or deploy the gateway"),
            ));
        }
        if !f.knows(InputKind::Secret) {
            continue;
        }
        // Credentials are read in the gateway pods' namespace (the Gateway's, without pods).
        let mut namespaces: Vec<String> = pods.iter().map(|p| p.key.namespace.clone()).collect();
        if namespaces.is_empty() {
            namespaces.push(key.namespace.clone());
        }
        namespaces.sort();
        namespaces.dedup();
        for (i, server) in gw.spec.servers.iter().enumerate() {
            let Some(tls) = &server.tls else { continue };
            let Some(name) = &tls.credential_name else { continue };
            // Only servers that terminate with the Secret read it (passthrough ignores it).
            let mutual = match tls.effective_mode() {
                ServerTlsMode::Simple => false,
                ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual => true,
                _ => continue,
            };
            for ns in &namespaces {
                let field = format!("spec.servers[{i}].tls.credentialName");
                match f.secrets.get(&ObjectKey::new(ns.clone(), name.clone())) {
                    None => out.push(Raw::new(
                        Code::ReferencedResourceNotFound,
                        "Gateway",
                        key.clone(),
                        field,
                        format!("Referenced credentialName not found: {name:?} (no Secret {ns}/{name}); the server is dropped until it exists. Create a kubernetes.io/tls Secret {name} in {ns}, where the gateway pods run"),
                    )),
                    Some((type_, keys)) => {
                        let mut missing: Vec<&str> = ["tls.crt", "tls.key"]
                            .into_iter()
                            .filter(|k| !keys.contains(*k))
                            .collect();
                        let ca_elsewhere = f
                            .secrets
                            .contains_key(&ObjectKey::new(ns.clone(), format!("{name}-cacert")));
                        if mutual && !keys.contains("ca.crt") && !ca_elsewhere {
                            missing.push("ca.crt");
                        }
                        if type_ != crate::snapshot::TLS_SECRET_TYPE || !missing.is_empty() {
                            let mut why = Vec::new();
                            if type_ != crate::snapshot::TLS_SECRET_TYPE {
                                why.push(format!("its type is {type_}, not kubernetes.io/tls"));
                            }
                            if !missing.is_empty() {
                                why.push(format!("it has no {}", missing.join(", ")));
                            }
                            out.push(Raw::new(
                                Code::InvalidGatewayCredential,
                                "Gateway",
                                key.clone(),
                                field,
                                format!("The credential referenced by the Gateway {} in namespace {} is invalid: Secret {ns}/{name}: {}; the server is dropped. Recreate it with kubectl create secret tls {name} -n {ns} --cert=... --key=...", key.name, key.namespace, why.join(" and ")),
                            ));
                        }
                    }
                }
            }
        }
    }
}

fn selector_text(s: Option<&BTreeMap<String, String>>) -> String {
    s.map(|m| m.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","))
        .unwrap_or_default()
}

fn destination_rules(f: &Facts<'_>, out: &mut Vec<Raw>) {
    let s = f.snapshot;
    for dr in &s.destination_rules {
        let key = key_of(&dr.metadata);
        tls(dr, &key, out);
        if !f.knows(InputKind::Service) {
            continue;
        }
        let host = resolve_host(&dr.spec.host, &key.namespace);
        let services: Vec<&crate::registry::Service> = if host.contains('*') {
            s.registry
                .services
                .values()
                .filter(|svc| host_matches(&host, &svc.fqdn(DNS_DOMAIN)))
                .collect()
        } else {
            s.registry.service_by_host(&host, DNS_DOMAIN).into_iter().collect()
        };
        let entries = crate::compile::entry_hosts(s);
        if services.is_empty() && entries.iter().any(|h| host_matches(&host, h)) {
            // A ServiceEntry's host: its endpoints are the entry's.
            continue;
        }
        if services.is_empty() {
            out.push(Raw::new(
                Code::UnknownDestinationRuleHost,
                "DestinationRule",
                key.clone(),
                "spec.host",
                format!("The host {} defined in the DestinationRule does not match any services in the mesh; the policy applies to nothing. Fix the host (a short name is a Service in {}) or create the Service", dr.spec.host, key.namespace),
            ));
            continue;
        }
        if !f.knows(InputKind::Pod) {
            continue;
        }
        for (i, subset) in dr.spec.subsets.iter().flatten().enumerate() {
            let labels = subset.labels.clone().unwrap_or_default();
            let selected = services.iter().any(|svc| {
                let Some(sel) = &svc.selector else { return false };
                f.pods_in(&svc.key.namespace)
                    .any(|p| selects(sel, &p.labels) && selects(&labels, &p.labels))
            });
            if !selected {
                out.push(Raw::new(
                    Code::DestinationRuleSubsetNotSelectPods,
                    "DestinationRule",
                    key.clone(),
                    format!("spec.subsets[{i}]"),
                    format!("The Subset {} defined in the DestinationRule does not select any pods ({} of {}), which may lead to 503 UH (NoHealthyUpstream). Fix the subset's labels, deploy its pods, or remove it", subset.name, selector_text(Some(&labels)), dr.spec.host),
                ));
            }
        }
    }
}

/// SIMPLE or MUTUAL origination without a CA to verify the server.
fn tls(dr: &DestinationRule, key: &ObjectKey, out: &mut Vec<Raw>) {
    let unverified = |t: &ClientTlsSettings| {
        matches!(t.mode, Some(ClientTlsMode::Simple | ClientTlsMode::Mutual))
            && t.ca_certificates.is_none()
            && t.credential_name.is_none()
            && t.insecure_skip_verify != Some(true)
    };
    let mode = |t: &ClientTlsSettings| match t.mode {
        Some(ClientTlsMode::Mutual) => "MUTUAL",
        _ => "SIMPLE",
    };
    let mut policies = vec![("spec.trafficPolicy".to_string(), dr.spec.traffic_policy.as_ref())];
    for (i, s) in dr.spec.subsets.iter().flatten().enumerate() {
        policies.push((format!("spec.subsets[{i}].trafficPolicy"), s.traffic_policy.as_ref()));
    }
    for (field, p) in policies {
        let Some(p) = p else { continue };
        if let Some(t) = p.tls.as_ref().filter(|t| unverified(t)) {
            out.push(Raw::new(
                Code::NoServerCertificateVerificationDestinationLevel,
                "DestinationRule",
                key.clone(),
                format!("{field}.tls"),
                format!("DestinationRule {} in namespace {} has TLS mode set to {} but no caCertificates are set to validate server identity for host: {}; set tls.caCertificates", key.name, key.namespace, mode(t), dr.spec.host),
            ));
        }
        for (i, pl) in p.port_level_settings.iter().flatten().enumerate() {
            if let Some(t) = pl.tls.as_ref().filter(|t| unverified(t)) {
                let port = pl.port.as_ref().map(|p| p.number.to_string()).unwrap_or_default();
                out.push(Raw::new(
                    Code::NoServerCertificateVerificationPortLevel,
                    "DestinationRule",
                    key.clone(),
                    format!("{field}.portLevelSettings[{i}].tls"),
                    format!("DestinationRule {} in namespace {} has TLS mode set to {} but no caCertificates are set to validate server identity for host: {} at port {port}; set tls.caCertificates", key.name, key.namespace, mode(t), dr.spec.host),
                ));
            }
        }
    }
}

type Labels = BTreeMap<String, String>;

fn policies(f: &Facts<'_>, out: &mut Vec<Raw>) {
    let s = f.snapshot;
    let root = s.root_namespace.as_str();
    let selects_any = |ns: &str, labels: &BTreeMap<String, String>| {
        if ns == root {
            f.pods.iter().any(|p| selects(labels, &p.labels))
        } else {
            f.pods_in(ns).any(|p| selects(labels, &p.labels))
        }
    };
    let mut selectors: Vec<(&str, ObjectKey, Option<&Labels>)> = Vec::new();
    for pa in &s.peer_authentications {
        let labels = pa.spec.selector.as_ref().and_then(|s| s.match_labels.as_ref());
        selectors.push(("PeerAuthentication", key_of(&pa.metadata), labels));
    }
    for ap in &s.authorization_policies {
        let labels = ap.spec.selector.as_ref().and_then(|s| s.match_labels.as_ref());
        selectors.push(("AuthorizationPolicy", key_of(&ap.metadata), labels));
    }
    if f.knows(InputKind::Pod) {
        for (kind, key, labels) in selectors {
            let Some(labels) = labels.filter(|l| !l.is_empty()) else {
                continue;
            };
            if !selects_any(&key.namespace, labels) {
                out.push(Raw::new(
                    Code::NoMatchingWorkloadsFound,
                    kind,
                    key,
                    "spec.selector",
                    format!("No matching workloads for this resource with the following labels: {}; it has no effect. Fix the selector or deploy the workload", selector_text(Some(labels))),
                ));
            }
        }
    }
    for ap in &s.authorization_policies {
        let key = key_of(&ap.metadata);
        if f.knows(InputKind::Service) {
            let refs = ap
                .spec
                .target_ref
                .iter()
                .map(|r| ("spec.targetRef".to_string(), r))
                .chain(
                    ap.spec
                        .target_refs
                        .iter()
                        .flatten()
                        .enumerate()
                        .map(|(i, r)| (format!("spec.targetRefs[{i}]"), r)),
                );
            for (field, r) in refs {
                if r.kind == "Service"
                    && !s
                        .registry
                        .services
                        .contains_key(&ObjectKey::new(key.namespace.clone(), r.name.clone()))
                {
                    out.push(Raw::new(
                        Code::ReferencedResourceNotFound,
                        "AuthorizationPolicy",
                        key.clone(),
                        format!("{field}.name"),
                        format!("Referenced Service not found: {:?} (no Service {}/{}); the policy applies to nothing. Fix the name or create the Service", r.name, key.namespace, r.name),
                    ));
                }
            }
        }
        if f.knows(InputKind::Namespace) {
            for (i, rule) in ap.spec.rules.iter().flatten().enumerate() {
                for (j, from) in rule.from.iter().flatten().enumerate() {
                    for (k, n) in from.source.namespaces.iter().flatten().enumerate() {
                        if !n.contains('*') && !s.registry.namespaces.contains_key(n) {
                            out.push(Raw::new(
                                Code::ReferencedResourceNotFound,
                                "AuthorizationPolicy",
                                key.clone(),
                                format!("spec.rules[{i}].from[{j}].source.namespaces[{k}]"),
                                format!(
                                    "Referenced namespace not found: {n:?}; no request can come from it. Fix the name"
                                ),
                            ));
                        }
                    }
                }
            }
        }
    }
}
