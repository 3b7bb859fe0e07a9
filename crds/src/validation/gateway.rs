//! Semantic checks of Gateway: servers, their ports and hosts; their `tls` is
//! `server_tls`'s.

use std::collections::{BTreeMap, BTreeSet};

use super::Findings;
use super::format::{dns_label, host, labels, not_supported};
use super::server_tls::is_tls_proto;
use crate::networking::*;

const GATEWAY_PROTOCOLS: &[&str] = &["HTTP", "HTTPS", "GRPC", "GRPC-WEB", "HTTP2", "MONGO", "TCP", "TLS"];

pub(super) fn gateway(spec: &GatewaySpec, f: &mut Findings) {
    labels("spec.selector", &spec.selector, f);
    if spec.selector.as_ref().is_none_or(BTreeMap::is_empty) {
        f.warn(
            "spec.selector",
            "no selector: the Gateway applies to every gateway proxy in its scope",
        );
    }
    if spec.servers.is_empty() {
        f.error("spec.servers", "at least one server is required");
    }
    let mut port_protocols: BTreeMap<u32, String> = BTreeMap::new();
    let mut names = BTreeSet::new();
    for (i, s) in spec.servers.iter().enumerate() {
        let p = format!("spec.servers[{i}]");
        let proto = s.port.protocol.to_ascii_uppercase();
        if !GATEWAY_PROTOCOLS.contains(&proto.as_str()) {
            f.error(
                format!("{p}.port.protocol"),
                format!(
                    "{:?} is not a protocol; use one of {}",
                    s.port.protocol,
                    GATEWAY_PROTOCOLS.join(", ")
                ),
            );
        }
        match port_protocols.get(&s.port.number) {
            Some(other) if *other != proto && !(is_tls_proto(other) && is_tls_proto(&proto)) => f.error(
                format!("{p}.port.number"),
                format!(
                    "port {} is already used with protocol {other}; one port carries one protocol",
                    s.port.number
                ),
            ),
            _ => {
                port_protocols.insert(s.port.number, proto.clone());
            }
        }
        for (field, name) in [("name", &s.name), ("port.name", &s.port.name)] {
            if let Some(n) = name
                && field == "name"
                && !names.insert(n.clone())
            {
                f.error(format!("{p}.{field}"), format!("duplicate server name {n:?}"));
            }
        }
        if let Some(b) = &s.bind {
            server_bind(&format!("{p}.bind"), b, f);
        }
        if s.hosts.is_empty() {
            f.error(
                format!("{p}.hosts"),
                "at least one host is required, e.g. \"*/shop.example.com\"",
            );
        }
        for (j, h) in s.hosts.iter().enumerate() {
            gateway_host(&format!("{p}.hosts[{j}]"), h, f);
        }
        super::server_tls::server_tls(&p, &proto, &s.tls, f);
    }
}

/// A server's `bind`: the gateway's listeners take every address of the pod (`0.0.0.0`);
/// listening on one address only is not done yet, and saying so beats a listener that
/// would not listen where the Gateway says.
fn server_bind(p: &str, b: &str, f: &mut Findings) {
    if b.starts_with("unix://") {
        return not_supported(
            p,
            &format!("{b:?} (a Unix domain socket)"),
            "remove it; gateway servers listen on TCP ports of every address of the gateway pod",
            f,
        );
    }
    match b.parse::<std::net::IpAddr>() {
        Err(_) => f.error(p, format!("{b:?} is not an IP address")),
        Ok(ip) if ip == std::net::IpAddr::from([0, 0, 0, 0]) => {}
        Ok(_) => not_supported(
            p,
            &format!("{b:?} (listening on one address only)"),
            "remove it, or set 0.0.0.0; gateway servers listen on every address of the gateway pod",
            f,
        ),
    }
}

fn gateway_host(p: &str, h: &str, f: &mut Findings) {
    let (ns, name) = match h.split_once('/') {
        Some((ns, name)) => (Some(ns), name),
        None => (None, h),
    };
    if let Some(ns) = ns
        && !matches!(ns, "*" | "." | "~")
        && dns_label(ns).is_err()
    {
        return f.error(
            p,
            format!("{h:?}: the namespace part must be *, ., ~ or a namespace name, as in */shop.example.com"),
        );
    }
    host(p, name, true, f);
}
