//! Listeners: bind addresses, virtual hosts and their domains, TLS servers, TCP routes.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use crate::listener::{Listener, ListenerDirection, ListenerProtocol};
use crate::syntax::is_dns_name;

use super::{Validator, unknown_cluster};

impl Validator {
    pub(super) fn listener(&mut self, path: &str, l: &Listener, clusters: &HashSet<&str>) {
        if l.name.is_empty() {
            self.err(format!("{path}.name"), "must not be empty");
        }
        if !l.unrouted.is_not_found() && (l.direction != ListenerDirection::Outbound || !l.transparent) {
            self.err(
                format!("{path}.unrouted"),
                "only a transparent outbound listener knows where unrouted traffic was addressed; remove it",
            );
        }
        if let Some(tls) = &l.tls {
            self.server_tls(&format!("{path}.tls"), tls);
            if l.direction == ListenerDirection::Inbound {
                self.err(
                    format!("{path}.tls"),
                    "inbound listeners get mesh mTLS from inbound.mtls; remove tls",
                );
            }
        }
        let mut sni_names: HashMap<String, usize> = HashMap::new();
        for (i, entry) in l.sni_tls.iter().enumerate() {
            let ep = format!("{path}.sniTls[{i}]");
            if l.direction == ListenerDirection::Inbound {
                self.err(
                    ep.clone(),
                    "inbound listeners get mesh mTLS from inbound.mtls; remove sniTls",
                );
            }
            self.server_tls(&format!("{ep}.tls"), &entry.tls);
            if entry.server_names.is_empty() {
                self.err(format!("{ep}.serverNames"), "must list at least one server name");
            }
            for (j, name) in entry.server_names.iter().enumerate() {
                let name = name.to_ascii_lowercase();
                let np = format!("{ep}.serverNames[{j}]");
                if name.contains(':') {
                    self.err(np, format!("{name:?}: a server name has no port"));
                } else if let Err(msg) = check_domain(&name) {
                    self.err(np, msg);
                } else if let Some(first) = sni_names.insert(name.clone(), i) {
                    self.err(
                        np,
                        format!("{name:?} is already served by {path}.sniTls[{first}]; list each name once"),
                    );
                }
            }
        }
        if l.protocol == ListenerProtocol::Tcp && !l.virtual_hosts.is_empty() {
            self.err(
                format!("{path}.virtualHosts"),
                "a tcp listener has no HTTP routing; use protocol http or auto",
            );
        }
        if l.protocol == ListenerProtocol::Http && !l.tcp_routes.is_empty() {
            self.err(
                format!("{path}.tcpRoutes"),
                "an http listener has no TCP routing; use protocol tcp or auto",
            );
        }
        let lim = &l.limits;
        for (field, value) in [
            ("maxRequestHeaders", u64::from(lim.max_request_headers)),
            ("maxRequestHeaderBytes", u64::from(lim.max_request_header_bytes)),
            ("maxUriBytes", u64::from(lim.max_uri_bytes)),
            ("headerReadTimeoutMs", lim.header_read_timeout_ms),
            ("http2MaxConcurrentStreams", u64::from(lim.http2_max_concurrent_streams)),
            ("protocolDetectionTimeoutMs", lim.protocol_detection_timeout_ms),
        ] {
            if value == 0 {
                self.err(format!("{path}.limits.{field}"), "must be positive");
            }
        }
        if lim.max_request_header_bytes < 8192 {
            self.err(
                format!("{path}.limits.maxRequestHeaderBytes"),
                "must be at least 8192 (hyper's minimum read buffer)",
            );
        }

        let mut vh_names = HashSet::new();
        let mut domains = HashSet::new();
        for (i, vh) in l.virtual_hosts.iter().enumerate() {
            let vp = format!("{path}.virtualHosts[{i}]");
            if !vh_names.insert(vh.name.as_str()) {
                self.err(format!("{vp}.name"), format!("duplicate virtual host {:?}", vh.name));
            }
            if vh.domains.is_empty() {
                self.err(format!("{vp}.domains"), "must list at least one domain");
            }
            for (j, d) in vh.domains.iter().enumerate() {
                let d_lower = d.to_ascii_lowercase();
                if let Err(msg) = check_domain(&d_lower) {
                    self.err(format!("{vp}.domains[{j}]"), msg);
                } else if !domains.insert(d_lower) {
                    self.err(
                        format!("{vp}.domains[{j}]"),
                        format!("domain {d:?} appears in two virtual hosts of this listener"),
                    );
                }
            }
            for (j, r) in vh.routes.iter().enumerate() {
                self.route(&format!("{vp}.routes[{j}]"), r, clusters);
            }
        }
        for (i, t) in l.tcp_routes.iter().enumerate() {
            let tp = format!("{path}.tcpRoutes[{i}]");
            match (t.cluster.is_empty(), t.weighted_clusters.is_empty()) {
                (true, true) => self.err(format!("{tp}.cluster"), "a TCP route needs cluster or weightedClusters"),
                (false, false) => self.err(
                    format!("{tp}.weightedClusters"),
                    "set cluster (one destination) or weightedClusters (several), not both",
                ),
                (false, true) if !clusters.contains(t.cluster.as_str()) => {
                    self.err(format!("{tp}.cluster"), unknown_cluster(&t.cluster));
                }
                (false, true) => {}
                (true, false) => {
                    for (j, w) in t.weighted_clusters.iter().enumerate() {
                        if !clusters.contains(w.cluster.as_str()) {
                            self.err(
                                format!("{tp}.weightedClusters[{j}].cluster"),
                                unknown_cluster(&w.cluster),
                            );
                        }
                    }
                    let total: u64 = t.weighted_clusters.iter().map(|w| u64::from(w.weight)).sum();
                    if total != 100 {
                        self.err(
                            format!("{tp}.weightedClusters"),
                            format!("the weights sum to {total}; they must sum to 100"),
                        );
                    }
                }
            }
            for (j, h) in t.sni_hosts.iter().enumerate() {
                let name = h.strip_prefix("*.").unwrap_or(h);
                if h != "*" && !is_dns_name(name) {
                    self.err(
                        format!("{tp}.sniHosts[{j}]"),
                        format!("{h:?} is not a DNS name, *.suffix or *"),
                    );
                }
            }
            for (j, cidr) in t.destination_cidrs.iter().enumerate() {
                if cidr.parse::<ipnet::IpNet>().is_err() {
                    self.err(format!("{tp}.destinationCidrs[{j}]"), format!("{cidr:?} is not a CIDR"));
                }
            }
        }
    }
}

fn check_domain(d: &str) -> Result<(), String> {
    let (host, port) = match d.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h, Some(p)),
        _ => (d, None),
    };
    if let Some(p) = port
        && !matches!(p.parse::<u16>(), Ok(n) if n > 0)
    {
        return Err(format!("{d:?} has an invalid port"));
    }
    if host == "*" {
        return Ok(());
    }
    let name = host.strip_prefix("*.").unwrap_or(host);
    if name.contains('*') {
        return Err(format!(
            "{d:?}: a wildcard is only allowed as the whole domain or a leading \"*.\""
        ));
    }
    if is_dns_name(name) || name.parse::<IpAddr>().is_ok() {
        Ok(())
    } else {
        Err(format!("{d:?} is not a host name"))
    }
}
