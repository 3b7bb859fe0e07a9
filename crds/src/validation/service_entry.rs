//! Semantic checks of ServiceEntry: Istio's validation (`ValidateServiceEntry`), plus what
//! Trellis does not implement yet, said so.

use std::collections::BTreeSet;

use super::Findings;
use super::format::{cidr, dns_label, dns_subdomain, export_to, host, labels, not_supported};
use crate::networking::{Location, Resolution, ServiceEntrySpec};

/// Protocols a ServiceEntry port may name (Istio's, less those the proxy cannot carry).
pub(super) const PROTOCOLS: &[&str] = &[
    "HTTP", "HTTPS", "GRPC", "GRPC-WEB", "HTTP2", "TCP", "TLS", "MONGO", "REDIS", "MYSQL",
];
/// Istio protocols the proxy does not carry yet.
pub(super) const PROTOCOLS_UNSUPPORTED: &[&str] = &["UDP", "THRIFT", "HTTP_PROXY"];

/// Whether a port's protocol is told apart per host: HTTP by its Host header, TLS by its server
/// name. Others (opaque TCP, or undetected) are not.
fn per_host(protocol: Option<&str>) -> bool {
    matches!(
        protocol.map(str::to_ascii_uppercase).as_deref(),
        Some("HTTP" | "HTTPS" | "GRPC" | "GRPC-WEB" | "HTTP2" | "TLS")
    )
}

/// A fully qualified host name without wildcard (what the proxy can resolve).
fn is_fqdn(h: &str) -> bool {
    !h.contains('*') && h.contains('.') && dns_subdomain(h.trim_end_matches('.')).is_ok()
}

pub(super) fn service_entry(spec: &ServiceEntrySpec, f: &mut Findings) {
    let resolution = spec.resolution.unwrap_or_default();
    let location = spec.location.unwrap_or_default();
    for (i, h) in spec.hosts.iter().enumerate() {
        let p = format!("spec.hosts[{i}]");
        if h == "*" {
            f.error(
                p,
                "invalid host \"*\": a ServiceEntry names its hosts; use *.example.com for a domain",
            );
        } else {
            host(&p, h, true, f);
        }
    }
    for (i, a) in spec.addresses.iter().flatten().enumerate() {
        let p = format!("spec.addresses[{i}]");
        cidr(&p, a, f);
        if a.contains('/') && !matches!(resolution, Resolution::None | Resolution::Static) {
            f.error(
                p,
                format!("{a:?}: CIDR addresses are allowed only for resolution NONE or STATIC"),
            );
        }
    }

    let ports = spec.ports.as_deref().unwrap_or_default();
    if ports.is_empty() {
        f.warn(
            "spec.ports",
            "no ports: sidecars route nothing to these hosts; list the ports the service listens on",
        );
    }
    let mut names = BTreeSet::new();
    let mut numbers = BTreeSet::new();
    for (i, port) in ports.iter().enumerate() {
        let p = format!("spec.ports[{i}]");
        if let Err(why) = dns_label(&port.name) {
            f.error(format!("{p}.name"), format!("invalid port name: {why}"));
        }
        if !names.insert(port.name.as_str()) {
            f.error(
                format!("{p}.name"),
                format!("service entry port name {:?} already defined", port.name),
            );
        }
        if !numbers.insert(port.number) {
            f.error(
                format!("{p}.number"),
                format!("service entry port {} already defined", port.number),
            );
        }
        if let Some(proto) = &port.protocol {
            let upper = proto.to_ascii_uppercase();
            if PROTOCOLS_UNSUPPORTED.contains(&upper.as_str()) {
                not_supported(
                    &format!("{p}.protocol"),
                    &format!("protocol {proto}"),
                    &format!("use one of {}", PROTOCOLS.join(", ")),
                    f,
                );
            } else if !PROTOCOLS.contains(&upper.as_str()) {
                f.error(
                    format!("{p}.protocol"),
                    format!("unsupported protocol {proto:?}; use one of {}", PROTOCOLS.join(", ")),
                );
            }
        }
        if spec.addresses.as_ref().is_none_or(Vec::is_empty)
            && !per_host(port.protocol.as_deref())
            && resolution != Resolution::None
        {
            f.warn(
                p.clone(),
                format!(
                    "port {} carries opaque TCP and the entry has no addresses: every TCP connection to port {} that no Service takes goes to this entry; add addresses",
                    port.number, port.number
                ),
            );
        }
    }
    if resolution != Resolution::None && spec.hosts.len() > 1 && ports.iter().any(|p| !per_host(p.protocol.as_deref()))
    {
        f.error(
            "spec.hosts",
            "multiple hosts provided with non-HTTP, non-TLS ports: opaque TCP cannot be told apart by host; use one host per entry, or resolution NONE",
        );
    }

    let endpoints = spec.endpoints.as_deref().unwrap_or_default();
    match resolution {
        // Refused by the CEL rule on ServiceEntrySpec ("not supported by Trellis yet").
        Resolution::DynamicDns => {}
        Resolution::None => {
            if location == Location::MeshInternal {
                not_supported(
                    "spec.location",
                    "location MESH_INTERNAL with resolution NONE",
                    "use resolution STATIC with endpoints or a workloadSelector, or location MESH_EXTERNAL",
                    f,
                );
            }
        }
        Resolution::Static => {
            if endpoints.is_empty() && spec.workload_selector.is_none() {
                f.error(
                    "spec.endpoints",
                    "endpoints must be provided if service entry resolution mode is STATIC (or a workloadSelector)",
                );
            }
        }
        Resolution::Dns | Resolution::DnsRoundRobin => {
            if endpoints.is_empty() {
                for (i, h) in spec.hosts.iter().enumerate() {
                    if !is_fqdn(h) {
                        f.error(
                            format!("spec.hosts[{i}]"),
                            format!("{h:?}: hosts must be FQDN (no wildcard) if no endpoints are provided for resolution {resolution:?}: the proxy resolves them; add endpoints or use resolution NONE"),
                        );
                    }
                }
            }
        }
    }
    if spec.workload_selector.is_some() && resolution != Resolution::Static {
        f.error(
            "spec.workloadSelector",
            "selects pods by their IP addresses: use resolution STATIC",
        );
    }
    for (i, e) in endpoints.iter().enumerate() {
        let p = format!("spec.endpoints[{i}]");
        match e.address.as_deref() {
            None | Some("") => f.error(format!("{p}.address"), "address is required"),
            Some(a) if a.starts_with("unix://") => not_supported(
                &format!("{p}.address"),
                "a unix:// endpoint",
                "give the endpoint's IP address",
                f,
            ),
            Some(a) if a.parse::<std::net::IpAddr>().is_ok() => {}
            Some(a) if matches!(resolution, Resolution::Dns | Resolution::DnsRoundRobin) => {
                if !is_fqdn(a) {
                    f.error(
                        format!("{p}.address"),
                        format!("endpoint address {a:?} is not a valid FQDN or an IP address"),
                    );
                }
            }
            Some(a) => f.error(
                format!("{p}.address"),
                format!("endpoint address {a:?} is not a valid IP address (host names need resolution DNS)"),
            ),
        }
        for (name, port) in e.ports.iter().flatten() {
            if !names.contains(name.as_str()) {
                f.error(
                    format!("{p}.ports[{name}]"),
                    format!(
                        "endpoint port {name:?} is not defined by the service entry; its ports are {:?}",
                        names
                    ),
                );
            }
            if !(1..=65535).contains(port) {
                f.error(format!("{p}.ports[{name}]"), format!("port {port} is not in 1-65535"));
            }
        }
        labels(&format!("{p}.labels"), &e.labels, f);
        if let Some(sa) = &e.service_account
            && let Err(why) = dns_subdomain(sa)
        {
            f.error(format!("{p}.serviceAccount"), why);
        }
    }
    if let Some(sel) = &spec.workload_selector {
        labels("spec.workloadSelector.labels", &sel.labels, f);
        if sel.labels.as_ref().is_none_or(|l| l.is_empty()) {
            f.error(
                "spec.workloadSelector.labels",
                "select pods by at least one label (an empty selector would take every pod of the namespace)",
            );
        }
    }
    export_to("spec.exportTo", &spec.export_to, f);

    let sans = spec.subject_alt_names.as_deref().unwrap_or_default();
    for (i, s) in sans.iter().enumerate() {
        if s.is_empty() {
            f.error(format!("spec.subjectAltNames[{i}]"), "must not be empty");
        }
    }
    match location {
        Location::MeshExternal if !sans.is_empty() => not_supported(
            "spec.subjectAltNames",
            "subjectAltNames on a MESH_EXTERNAL entry",
            "set them on a DestinationRule's tls.subjectAltNames for the host (TLS origination)",
            f,
        ),
        Location::MeshInternal
            if spec.workload_selector.is_none()
                && sans.is_empty()
                && endpoints.iter().any(|e| e.service_account.is_none()) =>
        {
            f.error(
                "spec.endpoints",
                "a MESH_INTERNAL entry is reached with mutual TLS: give each endpoint its serviceAccount, or the entry subjectAltNames (the SPIFFE IDs its endpoints prove)",
            );
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use crate::validation::{Finding, Outcome, Severity, validate};
    use serde_json::{Value, json};

    fn findings(spec: Value) -> Vec<Finding> {
        let obj = json!({
            "apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
            "metadata": {"name": "ext", "namespace": "shop"}, "spec": spec,
        });
        match validate(&obj) {
            Outcome::Validated { findings, .. } => findings,
            Outcome::Skipped(why) => panic!("skipped: {why}"),
        }
    }

    fn errors(spec: Value) -> Vec<String> {
        findings(spec)
            .into_iter()
            .filter(|f| f.severity == Severity::Error)
            .map(|f| format!("{}: {}", f.path, f.message))
            .collect()
    }

    fn has(errors: &[String], path: &str, text: &str) -> bool {
        errors
            .iter()
            .any(|e| e.starts_with(&format!("{path}: ")) && e.contains(text))
    }

    #[test]
    fn istio_examples_are_accepted() {
        for spec in [
            json!({"hosts": ["api.example.com"], "ports": [{"number": 443, "name": "https", "protocol": "TLS"}],
                   "location": "MESH_EXTERNAL", "resolution": "DNS"}),
            json!({"hosts": ["*.wikipedia.org"], "ports": [{"number": 443, "name": "https", "protocol": "TLS"}],
                   "resolution": "NONE"}),
            json!({"hosts": ["mymongodb.somedomain"], "addresses": ["192.192.192.192/24"],
                   "ports": [{"number": 27018, "name": "mongodb", "protocol": "MONGO"}],
                   "location": "MESH_INTERNAL", "resolution": "STATIC",
                   "endpoints": [{"address": "2.2.2.2", "serviceAccount": "db"}, {"address": "3.3.3.3", "serviceAccount": "db"}]}),
            json!({"hosts": ["foo.bar.com"], "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}],
                   "resolution": "DNS", "endpoints": [{"address": "us.foo.bar.com", "ports": {"http": 8080}, "labels": {"v": "1"}, "weight": 3}]}),
            json!({"hosts": ["vm.shop.internal"], "ports": [{"number": 80, "name": "http", "protocol": "HTTP", "targetPort": 8080}],
                   "location": "MESH_INTERNAL", "resolution": "STATIC", "workloadSelector": {"labels": {"app": "vm"}},
                   "exportTo": ["."]}),
        ] {
            let e = errors(spec.clone());
            assert!(e.is_empty(), "{spec}: {e:?}");
        }
    }

    #[test]
    fn istios_denials_are_denied_with_the_field() {
        let http = json!([{"number": 80, "name": "http", "protocol": "HTTP"}]);
        let cases: Vec<(Value, &str, &str)> = vec![
            (
                json!({"hosts": ["*.example.com"], "ports": http, "resolution": "DNS"}),
                "spec.hosts[0]",
                "FQDN",
            ),
            (
                json!({"hosts": ["a.example.com"], "ports": http, "resolution": "STATIC"}),
                "spec.endpoints",
                "STATIC",
            ),
            (
                json!({"hosts": ["a.example.com"], "ports": http, "resolution": "NONE", "endpoints": [{"address": "1.1.1.1"}]}),
                "spec",
                "resolution NONE",
            ),
            (json!({"hosts": ["*"], "ports": http}), "spec.hosts[0]", "invalid host"),
            (
                json!({"hosts": ["a.example.com"], "ports": [{"number": 80, "name": "Bad_Name"}]}),
                "spec.ports[0].name",
                "invalid port name",
            ),
            (
                json!({"hosts": ["a.example.com"], "ports": [{"number": 80, "name": "a"}, {"number": 80, "name": "b"}]}),
                "spec.ports[1].number",
                "already defined",
            ),
            (
                json!({"hosts": ["a.example.com"], "ports": [{"number": 80, "name": "a"}, {"number": 81, "name": "a"}]}),
                "spec.ports[1].name",
                "already defined",
            ),
            (
                json!({"hosts": ["a.example.com"], "ports": [{"number": 0, "name": "a"}]}),
                "spec.ports[0].number",
                "",
            ),
            (
                json!({"hosts": ["a.example.com"], "ports": [{"number": 80, "name": "a", "protocol": "SMTP"}]}),
                "spec.ports[0].protocol",
                "unsupported protocol",
            ),
            (
                json!({"hosts": ["a.example.com"], "ports": http, "exportTo": ["Not A Namespace"]}),
                "spec.exportTo[0]",
                "",
            ),
            (
                json!({"hosts": ["a.example.com", "b.example.com"], "ports": [{"number": 5432, "name": "tcp", "protocol": "TCP"}], "resolution": "DNS"}),
                "spec.hosts",
                "multiple hosts",
            ),
            (
                json!({"hosts": ["a.example.com"], "ports": http, "resolution": "DNS", "addresses": ["10.0.0.0/8"]}),
                "spec.addresses[0]",
                "CIDR",
            ),
            (
                json!({"hosts": ["a.example.com"], "ports": http, "resolution": "STATIC", "endpoints": [{"address": "not-an-ip"}]}),
                "spec.endpoints[0].address",
                "not a valid IP",
            ),
            (
                json!({"hosts": ["a.example.com"], "ports": http, "resolution": "DNS", "endpoints": [{"address": "under_score.example.com"}]}),
                "spec.endpoints[0].address",
                "FQDN",
            ),
            (
                json!({"hosts": ["a.example.com"], "ports": http, "resolution": "STATIC", "endpoints": [{"address": "1.1.1.1", "ports": {"grpc": 9000}}]}),
                "spec.endpoints[0].ports[grpc]",
                "not defined",
            ),
            (
                json!({"hosts": ["a.example.com"], "ports": http, "resolution": "DNS_ROUND_ROBIN", "endpoints": [{"address": "a.example.com"}, {"address": "b.example.com"}]}),
                "spec",
                "DNS_ROUND_ROBIN",
            ),
            (
                json!({"hosts": ["a.example.com"], "ports": http, "resolution": "STATIC", "endpoints": [{"address": "1.1.1.1"}], "workloadSelector": {"labels": {"app": "a"}}}),
                "spec",
                "only one of workloadSelector or endpoints",
            ),
            (
                json!({"hosts": ["a.example.com"], "ports": http, "addresses": ["10.0.0.300"]}),
                "spec.addresses[0]",
                "not an IP address",
            ),
            (
                json!({"hosts": ["a.example.com"], "ports": http, "resolution": "DNS", "workloadSelector": {"labels": {"app": "a"}}}),
                "spec.workloadSelector",
                "STATIC",
            ),
            (
                json!({"hosts": ["a.example.com"], "ports": http, "location": "MESH_INTERNAL", "resolution": "STATIC", "endpoints": [{"address": "1.1.1.1"}]}),
                "spec.endpoints",
                "serviceAccount",
            ),
        ];
        for (spec, path, text) in cases {
            let e = errors(spec.clone());
            assert!(has(&e, path, text), "{spec}: expected {path}: …{text}…, got {e:?}");
        }
    }

    #[test]
    fn what_trellis_does_not_implement_is_rejected_with_the_fix() {
        let http = json!([{"number": 80, "name": "http", "protocol": "HTTP"}]);
        let cases: Vec<(Value, &str)> = vec![
            (
                json!({"hosts": ["a.example.com"], "ports": http, "resolution": "STATIC", "endpoints": [{"address": "1.1.1.1", "network": "n1"}]}),
                "spec.endpoints[0].network",
            ),
            (
                json!({"hosts": ["a.example.com"], "ports": http, "resolution": "STATIC", "endpoints": [{"address": "1.1.1.1", "locality": "us/east"}]}),
                "spec.endpoints[0].locality",
            ),
            (
                json!({"hosts": ["a.example.com"], "ports": http, "resolution": "STATIC", "endpoints": [{"address": "unix:///var/run/a.sock"}]}),
                "spec.endpoints[0].address",
            ),
            (
                json!({"hosts": ["a.example.com"], "ports": [{"number": 53, "name": "dns", "protocol": "UDP"}]}),
                "spec.ports[0].protocol",
            ),
            (
                json!({"hosts": ["a.example.com"], "ports": http, "subjectAltNames": ["a.example.com"]}),
                "spec.subjectAltNames",
            ),
            (
                json!({"hosts": ["a.example.com"], "ports": http, "location": "MESH_INTERNAL"}),
                "spec.location",
            ),
        ];
        for (spec, path) in cases {
            let e = errors(spec.clone());
            assert!(
                e.iter()
                    .any(|e| e.starts_with(&format!("{path}: ")) && e.contains(crate::schema::NOT_SUPPORTED)),
                "{spec}: expected {path} not supported, got {e:?}"
            );
        }
    }

    #[test]
    fn tcp_without_addresses_is_a_warning_naming_the_port() {
        let out = findings(
            json!({"hosts": ["db.example.com"], "ports": [{"number": 5432, "name": "pg", "protocol": "TCP"}], "resolution": "DNS"}),
        );
        assert!(out.iter().all(|f| f.severity == Severity::Warning), "{out:?}");
        assert!(
            out.iter()
                .any(|f| f.path == "spec.ports[0]" && f.message.contains("5432")),
            "{out:?}"
        );
    }
}
