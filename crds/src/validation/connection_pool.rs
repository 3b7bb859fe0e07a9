//! Connection pools (a DestinationRule's, at each level; a Sidecar's inbound ones): their
//! durations, and the settings whose reach differs from what their place suggests, said.

use std::time::Duration;

use super::Findings;
use super::format::MIN_TIMEOUT;
use super::format::duration;
use crate::networking::{ConnectionKeepalive, ConnectionPoolSettings};

/// A connection pool's durations and Istio's warnings, at `cp`.
pub(super) fn connection_pool(cp: &str, pool: &ConnectionPoolSettings, f: &mut Findings) {
    if let Some(tcp) = &pool.tcp {
        duration(
            &format!("{cp}.tcp.connectTimeout"),
            &tcp.connect_timeout,
            MIN_TIMEOUT,
            f,
        );
        duration(
            &format!("{cp}.tcp.maxConnectionDuration"),
            &tcp.max_connection_duration,
            MIN_TIMEOUT,
            f,
        );
        duration(&format!("{cp}.tcp.idleTimeout"), &tcp.idle_timeout, MIN_TIMEOUT, f);
        if let Some(ka) = &tcp.tcp_keepalive {
            duration(
                &format!("{cp}.tcp.tcpKeepalive.time"),
                &ka.time,
                Duration::from_secs(1),
                f,
            );
            duration(
                &format!("{cp}.tcp.tcpKeepalive.interval"),
                &ka.interval,
                Duration::from_secs(1),
                f,
            );
        }
    }
    if let Some(http) = &pool.http {
        duration(&format!("{cp}.http.idleTimeout"), &http.idle_timeout, MIN_TIMEOUT, f);
        if let Some(ka) = &http.http2_keep_alive {
            http2_keep_alive(&format!("{cp}.http.http2KeepAlive"), ka, f);
            if http.use_client_protocol == Some(true) {
                f.warn(
                    format!("{cp}.http.http2KeepAlive"),
                    "has no effect with useClientProtocol: true: as in Istio, keepalive PINGs go on the connections of clusters that speak HTTP/2 (a port named http2 or grpc, or h2UpgradePolicy: UPGRADE), not on those that speak the client's protocol; remove useClientProtocol to send them",
                );
            }
        }
        if http.max_retries == Some(0) {
            f.warn(
                format!("{cp}.http.maxRetries"),
                "0 sets no limit (Istio reads 0 as unset); to make no retries, set retries: {attempts: 0} on the VirtualService route",
            );
        }
    }
}

/// `http2KeepAlive` at `path`: Istio requires both the PING interval and its timeout, each at
/// least 1ms.
fn http2_keep_alive(path: &str, ka: &ConnectionKeepalive, f: &mut Findings) {
    for (field, value, example) in [("interval", &ka.interval, "30s"), ("timeout", &ka.timeout, "10s")] {
        if value.is_none() {
            f.error(
                format!("{path}.{field}"),
                format!("is required when http2KeepAlive is set (e.g. {field}: {example}); set it, or remove http2KeepAlive to send no PINGs"),
            );
        }
        duration(&format!("{path}.{field}"), value, MIN_TIMEOUT, f);
    }
}

/// The pool of a port (`portLevelSettings`) or a subset: its `tcp.idleTimeout` and
/// `tcp.maxConnectionDuration` bound the HTTP connections of that port or subset, and proxied
/// TCP connections take the rule's top-level ones (Istio's TCP proxy reads only those), which
/// is said, with the fix.
pub(super) fn below_the_rule(cp: &str, pool: &ConnectionPoolSettings, f: &mut Findings) {
    for field in tcp_proxy_fields(pool) {
        f.warn(
            format!("{cp}.tcp.{field}"),
            format!(
                "bounds HTTP connections here only: proxied TCP connections take spec.trafficPolicy.connectionPool.tcp.{field} (Istio's TCP proxy reads only the rule's); set it there to bound TCP connections"
            ),
        );
    }
}

/// The TCP proxy's settings a pool sets (`tcp.idleTimeout`, `tcp.maxConnectionDuration`), by
/// name: Istio reads them for Envoy's TCP proxy from a rule's own pool only.
fn tcp_proxy_fields(pool: &ConnectionPoolSettings) -> impl Iterator<Item = &'static str> + '_ {
    pool.tcp
        .iter()
        .flat_map(|t| {
            [
                ("idleTimeout", t.idle_timeout.is_some()),
                ("maxConnectionDuration", t.max_connection_duration.is_some()),
            ]
        })
        .filter_map(|(name, set)| set.then_some(name))
}

/// An inbound pool (a Sidecar's): `tcp.idleTimeout` and `tcp.maxConnectionDuration` bound the
/// proxy's HTTP connections to the application; proxied TCP connections keep the inbound
/// listener's idle timeout and no maximum duration, as in Istio — said, with the fix, unless
/// `http_only` (an ingress listener whose port is HTTP).
pub(super) fn inbound_tcp_reach(cp: &str, pool: &ConnectionPoolSettings, http_only: bool, f: &mut Findings) {
    if http_only {
        return;
    }
    for field in tcp_proxy_fields(pool) {
        f.warn(
            format!("{cp}.tcp.{field}"),
            format!(
                "bounds the proxy's HTTP connections to the application only: proxied TCP connections to it keep the inbound listener's idle timeout (1 h) and no maximum duration, as in Istio; bound them in the application, or on the clients' side with a DestinationRule's spec.trafficPolicy.connectionPool.tcp.{field}"
            ),
        );
    }
}
