//! Semantic checks of Sidecar: Istio's validation (`ValidateSidecar`), plus what Trellis does
//! not implement yet, said so: an ingress listener's `bind`, `captureMode: NONE`, `tls` and a
//! unix socket or the instance IP as `defaultEndpoint`, and the connection pool settings the
//! proxy has no limit for, here; an egress listener's `bind` and
//! `outboundTrafficPolicy.egressProxy` by the kind's CEL rules, which the validator runs too.

use std::collections::{BTreeMap, BTreeSet};

mod ingress;

use super::Findings;
use super::format::{dns_label, dns_subdomain, labels, not_supported};
use super::service_entry::{PROTOCOLS, PROTOCOLS_UNSUPPORTED};
use crate::networking::{CaptureMode, SidecarPort, SidecarSpec};
use ingress::{inbound_pool, ingress_listener};

pub(super) fn sidecar(spec: &SidecarSpec, f: &mut Findings) {
    if let Some(selector) = &spec.workload_selector {
        labels("spec.workloadSelector.labels", &selector.labels, f);
        if selector.labels.as_ref().is_none_or(BTreeMap::is_empty) {
            f.warn(
                "spec.workloadSelector",
                "a workloadSelector without labels selects nothing in particular: the Sidecar applies to every pod of the namespace; remove the selector, or give it the labels of the pods it is for",
            );
        }
    }
    let egress = spec.egress.as_deref().unwrap_or_default();
    let ingress = spec.ingress.as_deref().unwrap_or_default();
    if egress.is_empty()
        && ingress.is_empty()
        && spec.outbound_traffic_policy.is_none()
        && spec.inbound_connection_pool.is_none()
    {
        f.error(
            "spec",
            "empty Sidecar: it changes nothing; give it egress hosts (e.g. hosts: [\"./*\", \"trellis-system/*\"]), ingress listeners or an outboundTrafficPolicy",
        );
    }
    let mut ingress_ports = BTreeSet::new();
    for (i, listener) in ingress.iter().enumerate() {
        ingress_listener(&format!("spec.ingress[{i}]"), listener, &mut ingress_ports, f);
    }
    if let Some(pool) = &spec.inbound_connection_pool {
        inbound_pool("spec.inboundConnectionPool", pool, false, f);
    }
    let mut ports = BTreeSet::new();
    let mut catch_all = false;
    for (i, listener) in egress.iter().enumerate() {
        let p = format!("spec.egress[{i}]");
        match &listener.port {
            None if catch_all => f.error(
                format!("{p}.port"),
                "egress can have only one listener without a port; merge its hosts into the other one",
            ),
            None if i + 1 != egress.len() => f.error(
                format!("{p}.port"),
                "the egress listener without a port takes every port the others do not name, so it must be the last in the list; move it to the end",
            ),
            None => catch_all = true,
            Some(port) => {
                let pp = format!("{p}.port");
                port_name(&pp, port, f);
                if port.number == 0 {
                    not_supported(
                        &format!("{pp}.number"),
                        "port 0 (a listener on a unix domain socket `bind`)",
                        "name the port the application connects to, 1-65535",
                        f,
                    );
                } else if !ports.insert(port.number) {
                    f.error(
                        format!("{pp}.number"),
                        format!(
                            "port {} is named by an earlier egress listener; ports of egress listeners must be unique: merge their hosts",
                            port.number
                        ),
                    );
                }
                protocol(&pp, port.protocol.as_deref(), f);
            }
        }
        if listener.capture_mode == Some(CaptureMode::None) {
            not_supported(
                &format!("{p}.captureMode"),
                "captureMode NONE (the application addressing the listener itself)",
                "remove it; Trellis captures the pod's outbound traffic with iptables (DEFAULT)",
                f,
            );
        }
        hosts(&p, &listener.hosts, f);
    }
}

/// A port's `targetPort` (refused, as Istio refuses it) and `name` (a DNS label).
fn port_name(pp: &str, port: &SidecarPort, f: &mut Findings) {
    if port.target_port.is_some_and(|t| t > 0) {
        f.error(
            format!("{pp}.targetPort"),
            "targetPort has no impact on Sidecars; remove it",
        );
    }
    if let Some(name) = port.name.as_deref().filter(|n| !n.is_empty())
        && let Err(why) = dns_label(name)
    {
        f.error(format!("{pp}.name"), format!("invalid port name: {why}"));
    }
}

/// An egress port's protocol: required, as Istio requires it; one the proxy carries.
fn protocol(p: &str, proto: Option<&str>, f: &mut Findings) {
    let path = format!("{p}.protocol");
    let Some(proto) = proto.filter(|s| !s.is_empty()) else {
        return f.error(
            path,
            format!(
                "the port's protocol is required: it says how the port's traffic is routed; use one of {}",
                PROTOCOLS.join(", ")
            ),
        );
    };
    let upper = proto.to_ascii_uppercase();
    if PROTOCOLS_UNSUPPORTED.contains(&upper.as_str()) {
        not_supported(
            &path,
            &format!("protocol {proto}"),
            &format!("use one of {}", PROTOCOLS.join(", ")),
            f,
        );
    } else if !PROTOCOLS.contains(&upper.as_str()) {
        f.error(
            path,
            format!("unsupported protocol {proto:?}; use one of {}", PROTOCOLS.join(", ")),
        );
    }
}

/// An egress listener's hosts (at least one: the schema's rule): `namespace/dnsName`, Istio's
/// rules, and its warnings about hosts another host of the listener already covers.
fn hosts(p: &str, hosts: &[String], f: &mut Findings) {
    let mut by_ns: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (i, h) in hosts.iter().enumerate() {
        let path = format!("{p}.hosts[{i}]");
        let Some((ns, name)) = h.split_once('/') else {
            f.error(
                path,
                format!("{h:?}: a host must be of form namespace/dnsName, e.g. ./{h} (the proxy's namespace) or */{h} (any namespace)"),
            );
            continue;
        };
        if ns.is_empty() || name.is_empty() {
            f.error(
                path,
                format!("{h:?}: the namespace and the dnsName of a host cannot be empty; write ./* for every host of the proxy's namespace"),
            );
            continue;
        }
        if !matches!(ns, "*" | "." | "~") && dns_label(ns).is_err() {
            f.error(
                &path,
                format!("invalid namespace {ns:?} in {h:?}: use a namespace name, `*` (any), `.` (the proxy's) or `~` (none)"),
            );
        }
        dns_name(&path, h, name, f);
        let seen = by_ns.entry(ns).or_default();
        if seen.contains(name) || seen.contains("*") || (name == "*" && !seen.is_empty()) {
            f.warn(
                &path,
                format!("duplicated egress host {h:?}: another host of the listener already covers it; remove one"),
            );
        }
        seen.insert(name);
    }
    if by_ns.get("*").is_some_and(|names| names.contains("*")) && by_ns.len() != 1 {
        f.warn(
            format!("{p}.hosts"),
            "\"*/*\" selects every host of every namespace: the listener's other hosts add nothing; remove them, or narrow \"*/*\"",
        );
    }
}

/// The dnsName of an egress host: `*`, or an FQDN with an optional leading `*.` wildcard (no
/// short names: they would be read in no particular namespace).
fn dns_name(path: &str, h: &str, name: &str, f: &mut Findings) {
    if name == "*" {
        return;
    }
    if !name.contains('.') {
        return f.error(
            path,
            format!("{h:?}: short names are not allowed in a Sidecar; write the FQDN, e.g. {name}.<namespace>.svc.cluster.local, or * for every host of the namespace"),
        );
    }
    let bare = name.strip_prefix("*.").unwrap_or(name);
    if bare.contains('*') {
        return f.error(
            path,
            format!("{h:?}: '*' is allowed only as the first label, as in */*.example.com"),
        );
    }
    if bare.bytes().any(|b| b.is_ascii_uppercase()) || dns_subdomain(bare).is_err() {
        f.error(
            path,
            format!("{h:?}: {name:?} is not a valid host name; use an FQDN such as payment.shop.svc.cluster.local or a wildcard such as *.example.com"),
        );
    }
}

#[cfg(test)]
mod tests {
    use crate::schema::NOT_SUPPORTED;
    use crate::validation::{Finding, Outcome, Severity, validate};
    use serde_json::{Value, json};

    fn findings(spec: Value) -> Vec<Finding> {
        let obj = json!({
            "apiVersion": "networking.istio.io/v1", "kind": "Sidecar",
            "metadata": {"name": "default", "namespace": "shop"}, "spec": spec,
        });
        match validate(&obj) {
            Outcome::Validated { findings, .. } => findings,
            Outcome::Skipped(why) => panic!("skipped: {why}"),
        }
    }

    fn of(spec: Value, severity: Severity) -> Vec<String> {
        findings(spec)
            .into_iter()
            .filter(|f| f.severity == severity)
            .map(|f| format!("{}: {}", f.path, f.message))
            .collect()
    }

    /// Each spec has a finding of `severity` at its path whose message says its text.
    fn expect(severity: Severity, cases: &[(Value, &str, &str)]) {
        for (spec, path, text) in cases {
            let found = of(spec.clone(), severity);
            assert!(
                found
                    .iter()
                    .any(|e| e.starts_with(&format!("{path}: ")) && e.contains(text)),
                "{spec}: expected {path}: ...{text}..., got {found:?}"
            );
        }
    }

    /// The examples of Istio's Sidecar reference, with `apiVersion` changed.
    #[test]
    fn istios_examples_are_accepted() {
        for spec in [
            json!({"egress": [{"hosts": ["./*", "istio-system/*"]}]}),
            json!({"workloadSelector": {"labels": {"app": "ratings"}},
                   "egress": [{"port": {"number": 9080, "protocol": "HTTP", "name": "egresshttp"},
                               "hosts": ["prod-us1/*"]},
                              {"hosts": ["istio-system/*"]}]}),
            json!({"outboundTrafficPolicy": {"mode": "REGISTRY_ONLY"},
                   "egress": [{"hosts": ["./*", "~/*.example.com", "*/api.example.com"]}]}),
            json!({"egress": [{"captureMode": "IPTABLES", "hosts": ["*/*"]}]}),
            // Istio's ingress example (`defaultEndpoint` on localhost), and its variants.
            json!({"workloadSelector": {"labels": {"app": "productpage"}},
                   "ingress": [{"port": {"number": 9080, "protocol": "HTTP", "name": "somename"},
                                "defaultEndpoint": "127.0.0.1:8080"}],
                   "egress": [{"hosts": ["*/*"]}]}),
            json!({"ingress": [{"port": {"number": 9080, "protocol": "HTTP"}, "defaultEndpoint": "[::1]:8080",
                                "captureMode": "IPTABLES"},
                               {"port": {"number": 5432, "protocol": "TCP", "name": "tcp-db"}}]}),
            json!({"ingress": [{"port": {"number": 9080, "protocol": "HTTP"}, "defaultEndpoint": "127.0.0.1:8080",
                                "connectionPool": {"tcp": {"maxConnections": 10, "connectTimeout": "2s"},
                                                   "http": {"http1MaxPendingRequests": 5, "maxRequestsPerConnection": 1,
                                                            "idleTimeout": "30s"}}}],
                   "inboundConnectionPool": {"tcp": {"maxConnections": 100}}}),
            json!({"inboundConnectionPool": {"http": {"http1MaxPendingRequests": 1024}}}),
            // Every pool setting Istio applies to an inbound cluster (not the HTTP/2 upgrade).
            json!({"ingress": [{"port": {"number": 9080, "protocol": "HTTP"}, "defaultEndpoint": "127.0.0.1:8080",
                                "connectionPool": {"tcp": {"maxConnections": 10, "connectTimeout": "2s",
                                                           "maxConnectionDuration": "1h", "idleTimeout": "30m",
                                                           "tcpKeepalive": {"time": "60s", "interval": "10s", "probes": 3}},
                                                   "http": {"http1MaxPendingRequests": 5, "http2MaxRequests": 100,
                                                            "maxRequestsPerConnection": 1, "idleTimeout": "30s",
                                                            "maxConcurrentStreams": 10, "useClientProtocol": true}}}]}),
            json!({"inboundConnectionPool": {"tcp": {"tcpKeepalive": {"probes": 3}},
                                             "http": {"http2MaxRequests": 10, "maxConcurrentStreams": 10}}}),
        ] {
            let errors = of(spec.clone(), Severity::Error);
            assert!(errors.is_empty(), "{spec}: {errors:?}");
        }
    }

    /// Each document Istio's validation denies is denied, naming its field.
    #[test]
    fn istios_denials_name_their_field() {
        expect(
            Severity::Error,
            &[
                (json!({}), "spec", "empty Sidecar"),
                (json!({"egress": [{"hosts": []}]}), "spec.egress[0].hosts", "at least 1"),
                (
                    json!({"egress": [{"hosts": ["payment.shop.svc.cluster.local"]}]}),
                    "spec.egress[0].hosts[0]",
                    "namespace/dnsName",
                ),
                (
                    json!({"egress": [{"hosts": ["/payment.shop.svc.cluster.local"]}]}),
                    "spec.egress[0].hosts[0]",
                    "cannot be empty",
                ),
                (
                    json!({"egress": [{"hosts": ["Shop/*"]}]}),
                    "spec.egress[0].hosts[0]",
                    "invalid namespace",
                ),
                (
                    json!({"egress": [{"hosts": ["./payment"]}]}),
                    "spec.egress[0].hosts[0]",
                    "short names",
                ),
                (
                    json!({"egress": [{"hosts": ["./pay*.example.com"]}]}),
                    "spec.egress[0].hosts[0]",
                    "first label",
                ),
                (
                    json!({"egress": [{"hosts": ["./*"]}, {"hosts": ["*/*"]}]}),
                    "spec.egress[0].port",
                    "must be the last",
                ),
                (
                    json!({"egress": [{"port": {"number": 80, "protocol": "HTTP"}, "hosts": ["./*"]},
                               {"port": {"number": 80, "protocol": "TCP"}, "hosts": ["*/*"]}]}),
                    "spec.egress[1].port.number",
                    "must be unique",
                ),
                (
                    json!({"egress": [{"port": {"number": 80}, "hosts": ["./*"]}]}),
                    "spec.egress[0].port.protocol",
                    "required",
                ),
                (
                    json!({"egress": [{"port": {"number": 80, "protocol": "SMTP"}, "hosts": ["./*"]}]}),
                    "spec.egress[0].port.protocol",
                    "unsupported protocol",
                ),
                (
                    json!({"egress": [{"port": {"number": 80, "protocol": "HTTP", "name": "Web_1"}, "hosts": ["./*"]}]}),
                    "spec.egress[0].port.name",
                    "invalid port name",
                ),
                (
                    json!({"egress": [{"port": {"number": 80, "protocol": "HTTP", "targetPort": 8080}, "hosts": ["./*"]}]}),
                    "spec.egress[0].port.targetPort",
                    "no impact",
                ),
                (
                    json!({"workloadSelector": {"labels": {"app": "web app"}}, "egress": [{"hosts": ["./*"]}]}),
                    "spec.workloadSelector.labels[app]",
                    "",
                ),
                (json!({"ingress": []}), "spec", "empty Sidecar"),
                (
                    json!({"ingress": [{"defaultEndpoint": "127.0.0.1:8080"}]}),
                    "spec.ingress[0].port",
                    "required",
                ),
                (
                    json!({"ingress": [{"port": {"number": 9080, "protocol": "HTTP"}},
                                       {"port": {"number": 9080, "protocol": "TCP"}}]}),
                    "spec.ingress[1].port.number",
                    "must be unique",
                ),
                (
                    json!({"ingress": [{"port": {"number": 9080}}]}),
                    "spec.ingress[0].port.protocol",
                    "required",
                ),
                (
                    json!({"ingress": [{"port": {"number": 9080, "protocol": "SMTP"}}]}),
                    "spec.ingress[0].port.protocol",
                    "unsupported protocol",
                ),
                (
                    json!({"ingress": [{"port": {"number": 9080, "protocol": "HTTP", "name": "Web_1"}}]}),
                    "spec.ingress[0].port.name",
                    "invalid port name",
                ),
                (
                    json!({"ingress": [{"port": {"number": 9080, "protocol": "HTTP", "targetPort": 8080}}]}),
                    "spec.ingress[0].port.targetPort",
                    "no impact",
                ),
                (
                    json!({"ingress": [{"port": {"number": 70000, "protocol": "HTTP"}}]}),
                    "spec.ingress[0].port.number",
                    "",
                ),
                (
                    json!({"ingress": [{"port": {"number": 9080, "protocol": "HTTP"}, "defaultEndpoint": "10.0.0.7:8080"}]}),
                    "spec.ingress[0].defaultEndpoint",
                    "must be of form 127.0.0.1:PORT",
                ),
                (
                    json!({"ingress": [{"port": {"number": 9080, "protocol": "HTTP"}, "defaultEndpoint": "127.0.0.1"}]}),
                    "spec.ingress[0].defaultEndpoint",
                    "has no port",
                ),
                (
                    json!({"ingress": [{"port": {"number": 9080, "protocol": "HTTP"}, "defaultEndpoint": "127.0.0.1:http"}]}),
                    "spec.ingress[0].defaultEndpoint",
                    "not a port number",
                ),
                (
                    json!({"ingress": [{"port": {"number": 9080, "protocol": "HTTP"}, "defaultEndpoint": "127.0.0.1:0"}]}),
                    "spec.ingress[0].defaultEndpoint",
                    "not a port number",
                ),
                (
                    json!({"ingress": [{"port": {"number": 9080, "protocol": "HTTP"}, "bind": "localhost"}]}),
                    "spec.ingress[0].bind",
                    "not an IP address",
                ),
                (
                    json!({"inboundConnectionPool": {}}),
                    "spec.inboundConnectionPool",
                    "at least one field",
                ),
                (
                    json!({"inboundConnectionPool": {"tcp": {"connectTimeout": "soon"}}}),
                    "spec.inboundConnectionPool.tcp.connectTimeout",
                    "",
                ),
                (
                    json!({"ingress": [{"port": {"number": 9080, "protocol": "HTTP"},
                                        "connectionPool": {"tcp": {"maxConnections": 0}}}]}),
                    "spec.ingress[0].connectionPool.tcp.maxConnections",
                    "",
                ),
            ],
        );
    }

    /// What Trellis does not do yet is refused as such, with the fix, never accepted and dropped.
    #[test]
    fn what_trellis_cannot_do_is_refused_as_not_supported() {
        let ingress = |extra: Value| {
            let mut l = json!({"port": {"number": 9080, "protocol": "HTTP"}, "defaultEndpoint": "127.0.0.1:8080"});
            l.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            json!({"ingress": [l]})
        };
        let cases: Vec<(Value, &str, &str)> = [
            (ingress(json!({"bind": "10.0.0.7"})), "spec.ingress[0].bind"),
            (ingress(json!({"captureMode": "NONE"})), "spec.ingress[0].captureMode"),
            (
                ingress(json!({"defaultEndpoint": "unix:///var/run/app.sock"})),
                "spec.ingress[0].defaultEndpoint",
            ),
            (ingress(json!({"defaultEndpoint": "0.0.0.0:8080"})), "spec.ingress[0].defaultEndpoint"),
            (ingress(json!({"defaultEndpoint": "[::]:8080"})), "spec.ingress[0].defaultEndpoint"),
            (ingress(json!({"defaultEndpoint": ":8080"})), "spec.ingress[0].defaultEndpoint"),
            (
                ingress(json!({"tls": {"mode": "SIMPLE", "serverCertificate": "/etc/certs/tls.crt", "privateKey": "/etc/certs/tls.key"}})),
                "spec.ingress[0].tls",
            ),
            (
                json!({"ingress": [{"port": {"number": 0, "protocol": "HTTP"}, "defaultEndpoint": "127.0.0.1:8080"}]}),
                "spec.ingress[0].port.number",
            ),
            (
                json!({"egress": [{"port": {"number": 9080, "protocol": "HTTP"}, "bind": "127.0.0.1", "hosts": ["./*"]}]}),
                "spec.egress[0].bind",
            ),
            (
                json!({"egress": [{"port": {"number": 9080, "protocol": "HTTP"}, "captureMode": "NONE", "hosts": ["./*"]}]}),
                "spec.egress[0].captureMode",
            ),
            (
                json!({"egress": [{"port": {"number": 0, "protocol": "HTTP"}, "hosts": ["./*"]}]}),
                "spec.egress[0].port.number",
            ),
            (
                json!({"egress": [{"port": {"number": 53, "protocol": "UDP"}, "hosts": ["./*"]}]}),
                "spec.egress[0].port.protocol",
            ),
            (
                json!({"outboundTrafficPolicy": {"mode": "ALLOW_ANY", "egressProxy": {"host": "proxy.example.com", "port": {"number": 3128}}}}),
                "spec.outboundTrafficPolicy.egressProxy",
            ),
            // Istio's Sidecar has no `tls` here (its Mesh has, for a mode Trellis lacks).
            (
                json!({"outboundTrafficPolicy": {"mode": "ALLOW_ANY", "tls": {"mode": "SIMPLE"}}}),
                "spec.outboundTrafficPolicy.tls",
            ),
        ]
        .into_iter()
        .map(|(spec, path)| (spec, path, NOT_SUPPORTED))
        .collect();
        expect(Severity::Error, &cases);
    }

    #[test]
    fn istios_warnings() {
        expect(
            Severity::Warning,
            &[
                (
                    json!({"egress": [{"hosts": ["./*", "./payment.shop.svc.cluster.local"]}]}),
                    "spec.egress[0].hosts[1]",
                    "duplicated egress host",
                ),
                (
                    json!({"egress": [{"hosts": ["*/*", "shop/*"]}]}),
                    "spec.egress[0].hosts",
                    "\"*/*\" selects every host",
                ),
                (
                    json!({"workloadSelector": {}, "egress": [{"hosts": ["./*"]}]}),
                    "spec.workloadSelector",
                    "every pod of the namespace",
                ),
                (
                    json!({"ingress": [{"port": {"number": 5432, "protocol": "TCP"},
                                        "connectionPool": {"http": {"http1MaxPendingRequests": 5}}}]}),
                    "spec.ingress[0].connectionPool.http",
                    "only the tcp settings apply",
                ),
                // What has no effect inbound in Istio either, said with the fix.
                (
                    json!({"inboundConnectionPool": {"http": {"h2UpgradePolicy": "UPGRADE"}}}),
                    "spec.inboundConnectionPool.http.h2UpgradePolicy",
                    "has no effect on the inbound side",
                ),
                (
                    json!({"inboundConnectionPool": {"http": {"maxRetries": 3}}}),
                    "spec.inboundConnectionPool.http.maxRetries",
                    "makes no retries to the application",
                ),
                (
                    json!({"inboundConnectionPool": {"tcp": {"idleTimeout": "1h"}}}),
                    "spec.inboundConnectionPool.tcp.idleTimeout",
                    "proxied TCP connections to it keep the inbound listener's idle timeout",
                ),
                (
                    json!({"ingress": [{"port": {"number": 5432, "protocol": "TCP"},
                                        "connectionPool": {"tcp": {"maxConnectionDuration": "1h"}}}]}),
                    "spec.ingress[0].connectionPool.tcp.maxConnectionDuration",
                    "no maximum duration, as in Istio",
                ),
            ],
        );
    }
}
