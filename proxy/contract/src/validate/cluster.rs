//! Clusters: discovery, load balancing (ring hash and Maglev sizes), outlier detection,
//! connection pools, upstream TLS and endpoints.

use std::net::IpAddr;

use crate::ProxyConfig;
use crate::cluster::{Cluster, Discovery, HashKey, LbPolicy, UpstreamTls};
use crate::syntax::is_dns_name;

use super::Validator;

impl Validator {
    pub(super) fn cluster(&mut self, path: &str, cl: &Cluster, c: &ProxyConfig) {
        if cl.name.is_empty() {
            self.err(format!("{path}.name"), "must not be empty");
        }
        if cl.connect_timeout_ms == 0 {
            self.err(format!("{path}.connectTimeoutMs"), "must be positive");
        }
        self.percentage(&format!("{path}.panicThresholdPercent"), cl.panic_threshold_percent);
        match &cl.load_balancer.policy {
            LbPolicy::RingHash { minimum_ring_size } => {
                if !(1..=8_388_608).contains(minimum_ring_size) {
                    self.err(
                        format!("{path}.loadBalancer.policy.ringHash.minimumRingSize"),
                        "must be between 1 and 8388608",
                    );
                }
            }
            LbPolicy::Maglev { table_size } => {
                if *table_size > 5_000_011 || !is_prime(*table_size) {
                    self.err(
                        format!("{path}.loadBalancer.policy.maglev.tableSize"),
                        format!("{table_size} must be a prime at most 5000011 (e.g. 65537)"),
                    );
                }
            }
            _ => {
                if cl.load_balancer.hash_key.is_some() {
                    self.err(
                        format!("{path}.loadBalancer.hashKey"),
                        "only used by ringHash and maglev; remove it or change the policy",
                    );
                }
            }
        }
        if let Some(HashKey::Header(h) | HashKey::QueryParam(h)) = &cl.load_balancer.hash_key
            && h.is_empty()
        {
            self.err(format!("{path}.loadBalancer.hashKey"), "name must not be empty");
        }
        if let Some(HashKey::Cookie { name, .. }) = &cl.load_balancer.hash_key
            && name.is_empty()
        {
            self.err(format!("{path}.loadBalancer.hashKey.cookie.name"), "must not be empty");
        }
        let pool = &cl.connection_pool;
        if pool.max_connections == 0 {
            self.err(format!("{path}.connectionPool.maxConnections"), "must be positive");
        }
        for (field, value) in [
            ("maxRequests", pool.max_requests.map(u64::from)),
            ("maxTcpConnections", pool.max_tcp_connections.map(u64::from)),
            ("maxConcurrentStreams", pool.max_concurrent_streams.map(u64::from)),
            ("maxConnectionDurationMs", pool.max_connection_duration_ms),
            ("tcpIdleTimeoutMs", pool.tcp_idle_timeout_ms),
            ("tcpMaxConnectionDurationMs", pool.tcp_max_connection_duration_ms),
            (
                "tcpKeepalive.timeSecs",
                pool.tcp_keepalive.as_ref().and_then(|k| k.time_secs).map(u64::from),
            ),
            (
                "tcpKeepalive.intervalSecs",
                pool.tcp_keepalive.as_ref().and_then(|k| k.interval_secs).map(u64::from),
            ),
            (
                "tcpKeepalive.probes",
                pool.tcp_keepalive.as_ref().and_then(|k| k.probes).map(u64::from),
            ),
        ] {
            if value == Some(0) {
                self.err(
                    format!("{path}.connectionPool.{field}"),
                    "must be positive; leave it out for no limit",
                );
            }
        }
        if let Some(ka) = &pool.http2_keepalive {
            for (field, ms) in [("intervalMs", ka.interval_ms), ("timeoutMs", ka.timeout_ms)] {
                if ms == 0 {
                    self.err(
                        format!("{path}.connectionPool.http2Keepalive.{field}"),
                        "must be at least 1 ms; leave http2Keepalive out for the proxy's default",
                    );
                }
            }
        }
        if let Some(b) = &pool.retry_budget
            && b.budget_basis_points > 10_000
        {
            self.err(
                format!("{path}.connectionPool.retryBudget.budgetBasisPoints"),
                "must be at most 10000 (100 %)",
            );
        }
        if let Some(od) = &cl.outlier_detection {
            self.percentage(
                &format!("{path}.outlierDetection.maxEjectionPercent"),
                od.max_ejection_percent,
            );
            if od.interval_ms == 0 {
                self.err(format!("{path}.outlierDetection.intervalMs"), "must be positive");
            }
            if od.base_ejection_time_ms == 0 {
                self.err(
                    format!("{path}.outlierDetection.baseEjectionTimeMs"),
                    "must be positive",
                );
            }
        }
        match &cl.tls {
            UpstreamTls::Disable => {}
            UpstreamTls::Mesh {
                expected_identities,
                sni,
            } => {
                if expected_identities.is_empty() && cl.endpoints.iter().any(|e| e.identity.is_none()) {
                    self.err(
                        format!("{path}.tls.mesh.expectedIdentities"),
                        "mesh TLS needs the peer identity: list expected identities or set \
                         every endpoint's identity",
                    );
                }
                for (i, id) in expected_identities.iter().enumerate() {
                    self.spiffe(
                        &format!("{path}.tls.mesh.expectedIdentities[{i}]"),
                        id,
                        &c.identity.trust_domain,
                    );
                }
                if let Some(sni) = sni.as_deref().filter(|s| !is_dns_name(s)) {
                    self.err(format!("{path}.tls.mesh.sni"), format!("{sni:?} is not a DNS name"));
                }
            }
            UpstreamTls::Originate(o) => {
                let p = format!("{path}.tls.originate");
                if o.sni.is_empty() || !(is_dns_name(&o.sni) || o.sni.parse::<IpAddr>().is_ok()) {
                    self.err(
                        format!("{p}.sni"),
                        format!("{:?} is not a DNS name or IP address", o.sni),
                    );
                }
                if let Some(ca) = &o.ca {
                    self.pem_source(&format!("{p}.ca"), ca);
                }
                if let Some(crl) = &o.crl {
                    self.crl_source(&format!("{p}.crl"), crl);
                }
                if let Some(cert) = &o.client_certificate {
                    self.certificate(&format!("{p}.clientCertificate"), cert);
                }
                for (i, san) in o.subject_alt_names.iter().enumerate() {
                    if san.is_empty() || san.chars().any(|c| c.is_whitespace() || c.is_control()) {
                        self.err(format!("{p}.subjectAltNames[{i}]"), format!("{san:?} is not a name"));
                    }
                }
                if o.insecure_skip_verify && (o.ca.is_some() || o.crl.is_some() || !o.subject_alt_names.is_empty()) {
                    self.err(
                        format!("{p}.insecureSkipVerify"),
                        "nothing is verified with insecureSkipVerify: drop ca, crl and subjectAltNames, or it",
                    );
                }
            }
        }
        if cl.discovery == Discovery::OriginalDestination && !cl.endpoints.is_empty() {
            self.err(
                format!("{path}.endpoints"),
                "an originalDestination cluster has no endpoints: each connection goes where it was addressed",
            );
        }
        for (i, e) in cl.endpoints.iter().enumerate() {
            let ep = format!("{path}.endpoints[{i}]");
            if cl.discovery.resolves() {
                if e.address.parse::<IpAddr>().is_err() && !is_dns_name(&e.address) {
                    self.err(
                        format!("{ep}.address"),
                        format!("{:?} is not a host name or IP address", e.address),
                    );
                }
            } else if e.address.parse::<IpAddr>().is_err() {
                self.err(format!("{ep}.address"), format!("{:?} is not an IP address", e.address));
            }
            if e.port == 0 {
                self.err(format!("{ep}.port"), "must be 1-65535");
            }
            if e.weight == 0 {
                self.err(format!("{ep}.weight"), "must be positive (remove the endpoint instead)");
            }
            if let Some(id) = &e.identity {
                self.spiffe(&format!("{ep}.identity"), id, &c.identity.trust_domain);
            }
        }
    }
}

fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    let mut i = 2u64;
    while i * i <= u64::from(n) {
        if u64::from(n) % i == 0 {
            return false;
        }
        i += 1;
    }
    true
}
