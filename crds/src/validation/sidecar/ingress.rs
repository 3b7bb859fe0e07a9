//! A Sidecar's inbound side: its `ingress` listeners (Istio's `IstioIngressListener`) and
//! connection pools — Istio's checks, what Trellis does not do yet refused with the fix, and
//! what has no effect on the inbound side (as in Istio) said with the fix.

use std::collections::BTreeSet;

use super::super::Findings;
use super::super::connection_pool::{connection_pool, inbound_tcp_reach};
use super::super::format::not_supported;
use super::{port_name, protocol};
use crate::networking::{CaptureMode, ConnectionPoolSettings, IngressListener};

/// An ingress listener: a port (unique, 1-65535, with its protocol), where the traffic goes
/// (`defaultEndpoint`), and what Trellis does not do yet refused with the fix.
pub(super) fn ingress_listener(p: &str, l: &IngressListener, ports: &mut BTreeSet<u32>, f: &mut Findings) {
    let pp = format!("{p}.port");
    port_name(&pp, &l.port, f);
    match l.port.number {
        0 => not_supported(
            &format!("{pp}.number"),
            "port 0 (an ingress listener on a unix domain socket)",
            "name the port clients send the workload's traffic to, 1-65535",
            f,
        ),
        n if !ports.insert(n) => f.error(
            format!("{pp}.number"),
            format!("port {n} is named by an earlier ingress listener; ports of ingress listeners must be unique: remove one"),
        ),
        _ => {}
    }
    protocol(&pp, l.port.protocol.as_deref(), f);
    if let Some(bind) = l.bind.as_deref().filter(|b| !b.is_empty()) {
        if bind.parse::<std::net::IpAddr>().is_err() {
            f.error(
                format!("{p}.bind"),
                format!("{bind:?} is not an IP address; a bind is an IPv4 or IPv6 address (unix domain sockets are not allowed on ingress listeners)"),
            );
        }
        not_supported(
            &format!("{p}.bind"),
            "bind on an ingress listener (a listener on one address)",
            "remove it; with iptables capture the inbound listener takes the port on every address of the pod",
            f,
        );
    }
    if l.capture_mode == Some(CaptureMode::None) {
        not_supported(
            &format!("{p}.captureMode"),
            "captureMode NONE (clients addressing the proxy's listener itself)",
            "remove it; Trellis captures the pod's inbound traffic with iptables (DEFAULT)",
            f,
        );
    }
    if let Some(endpoint) = l.default_endpoint.as_deref().filter(|e| !e.is_empty()) {
        default_endpoint(&format!("{p}.defaultEndpoint"), endpoint, f);
    }
    if l.tls.is_some() {
        not_supported(
            &format!("{p}.tls"),
            "TLS terminated by the sidecar on an inbound port",
            "remove it; terminate TLS in the application (traffic from other proxies is mesh mTLS already), or take traffic from outside the mesh at a Gateway with tls SIMPLE or MUTUAL",
            f,
        );
    }
    if let Some(pool) = &l.connection_pool {
        let http = l
            .port
            .protocol
            .as_deref()
            .is_some_and(|pr| matches!(pr.to_ascii_uppercase().as_str(), "HTTP" | "HTTP2" | "GRPC" | "GRPC-WEB"));
        inbound_pool(&format!("{p}.connectionPool"), pool, http, f);
        if pool.http.is_some() && !http {
            f.warn(
                format!("{p}.connectionPool.http"),
                format!(
                    "HTTP connection pool settings on port {} whose protocol is not HTTP: only the tcp settings apply; remove http, or give the port an HTTP protocol",
                    l.port.number
                ),
            );
        }
    }
}

/// Where an ingress listener hands traffic over: `127.0.0.1:PORT` or `[::1]:PORT`; Istio's
/// other forms refused as not supported, anything else as invalid.
fn default_endpoint(path: &str, endpoint: &str, f: &mut Findings) {
    if endpoint.starts_with("unix://") {
        return not_supported(
            path,
            "a unix domain socket as defaultEndpoint",
            "have the application listen on a TCP port on localhost and write 127.0.0.1:PORT",
            f,
        );
    }
    let Some((host, port)) = endpoint.rsplit_once(':') else {
        return f.error(
            path,
            format!("{endpoint:?} has no port; write 127.0.0.1:PORT or [::1]:PORT, PORT where the application listens"),
        );
    };
    match port.parse::<u16>() {
        Ok(1..) => {}
        _ => f.error(
            path,
            format!("{endpoint:?}: port {port:?} is not a port number (1-65535); write 127.0.0.1:PORT, PORT where the application listens"),
        ),
    }
    match host {
        "127.0.0.1" | "[::1]" => {}
        "0.0.0.0" | "[::]" | "" => not_supported(
            path,
            &format!("{endpoint:?} (the pod's own IP as the application's address)"),
            "write 127.0.0.1:PORT or [::1]:PORT: the proxy hands traffic to the application on localhost",
            f,
        ),
        _ => f.error(
            path,
            format!("{endpoint:?}: defaultEndpoint must be of form 127.0.0.1:PORT, [::1]:PORT, 0.0.0.0:PORT, [::]:PORT or unix:///path; arbitrary addresses are not allowed"),
        ),
    }
}

/// An inbound connection pool (`inboundConnectionPool`, an ingress listener's
/// `connectionPool`; `http_port`: the listener's port is HTTP): Istio's checks. Every setting
/// applies to the cluster of the application's port, as Istio's `applyConnectionPool` does for
/// inbound clusters; what has no effect there, as in Istio, is said with the fix.
pub(super) fn inbound_pool(cp: &str, pool: &ConnectionPoolSettings, http_port: bool, f: &mut Findings) {
    if pool.tcp.is_none() && pool.http.is_none() {
        return f.error(cp, "a connection pool must have at least one field: tcp or http");
    }
    connection_pool(cp, pool, f);
    inbound_tcp_reach(cp, pool, http_port, f);
    let http = pool.http.as_ref();
    if http.is_some_and(|h| h.h2_upgrade_policy.is_some()) {
        f.warn(
            format!("{cp}.http.h2UpgradePolicy"),
            "has no effect on the inbound side: the proxy speaks to the application in the protocol its port declares (Istio upgrades outbound connections only); remove it, or declare the port HTTP2 or GRPC",
        );
    }
    if http.is_some_and(|h| h.max_retries.is_some_and(|n| n > 0)) {
        f.warn(
            format!("{cp}.http.maxRetries"),
            "never reached: the proxy makes no retries to the application (the inbound route has no retry policy, as in Istio); remove it, or bound retries on the clients' side with a DestinationRule's connectionPool.http.maxRetries",
        );
    }
}
