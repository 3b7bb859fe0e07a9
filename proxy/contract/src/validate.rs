//! Semantic validation of a [`ProxyConfig`]: everything serde cannot check
//! (references between objects, regexes, weights, ranges, addresses).
//!
//! # Guarantees
//! A config that passes [`ProxyConfig::validate`] can be compiled by the proxy
//! without further errors except I/O (certificate files, binding sockets).
//! All errors are reported at once, each with its field path.

use crate::cluster::{Cluster, Discovery, HashKey, LbPolicy, UpstreamTls};
use crate::identity::{CertificateRef, PemSource, SpiffeId, is_valid_trust_domain};
use crate::inbound::{AuthzCondition, AuthzSource, CONDITION_KEYS, IP_CONDITION_KEYS, InboundPolicy, condition_header};
use crate::jwt::JwtProvider;
use crate::listener::{Listener, ListenerDirection, ListenerProtocol, ServerTls, ServerTlsMode};
use crate::route::{
    CorsPolicy, FaultInjection, ForwardAction, HeaderMutation, Route, RouteAction, RouteMatch, StringMatch,
};
use crate::syntax::{
    HeaderDirection, is_dns_name, is_header_name, is_header_value, is_tchar, parse_cidr, route_may_change,
};
use crate::{API_VERSION, ProxyConfig};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};

mod tls;

/// One problem, at one field path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidationError {
    /// JSON-style path, e.g. `listeners[0].virtualHosts[1].routes[2].action`.
    pub path: String,
    /// What is wrong and, where possible, how to fix it.
    pub message: String,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// All problems found in a config.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ValidationErrors {
    /// The config version that was rejected.
    pub version: String,
    /// The problems, in document order.
    pub errors: Vec<ValidationError>,
}

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "proxy config {:?} is invalid ({} error{}): ",
            self.version,
            self.errors.len(),
            if self.errors.len() == 1 { "" } else { "s" }
        )?;
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Maximum retries we accept; more is a configuration mistake that turns one
/// failure into a storm.
const MAX_RETRY_ATTEMPTS: u32 = 10;

impl ProxyConfig {
    /// Check the config for consistency. See the module docs.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut v = Validator::default();
        v.config(self);
        if v.errors.is_empty() {
            Ok(())
        } else {
            Err(ValidationErrors {
                version: self.version.clone(),
                errors: v.errors,
            })
        }
    }
}

#[derive(Default)]
struct Validator {
    errors: Vec<ValidationError>,
}

impl Validator {
    fn err(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ValidationError {
            path: path.into(),
            message: message.into(),
        });
    }

    fn config(&mut self, c: &ProxyConfig) {
        if c.api_version != API_VERSION {
            self.err(
                "apiVersion",
                format!(
                    "unsupported contract version {:?}; this proxy speaks {API_VERSION:?}",
                    c.api_version
                ),
            );
        }
        if c.version.trim().is_empty() {
            self.err("version", "must not be empty");
        }
        self.identity(c);

        let mut cluster_names = HashSet::new();
        for (i, cl) in c.clusters.iter().enumerate() {
            let path = format!("clusters[{i}]");
            if !cluster_names.insert(cl.name.as_str()) {
                self.err(format!("{path}.name"), format!("duplicate cluster name {:?}", cl.name));
            }
            self.cluster(&path, cl, c);
        }

        let mut listener_names = HashSet::new();
        let mut addresses = HashSet::new();
        for (i, l) in c.listeners.iter().enumerate() {
            let path = format!("listeners[{i}]");
            if !listener_names.insert(l.name.as_str()) {
                self.err(format!("{path}.name"), format!("duplicate listener name {:?}", l.name));
            }
            match l.address.parse::<SocketAddr>() {
                Ok(a) => {
                    // Port 0 asks the OS for an ephemeral port: never a conflict.
                    if a.port() != 0 && !addresses.insert(a) {
                        self.err(
                            format!("{path}.address"),
                            format!("address {a} is used by another listener"),
                        );
                    }
                }
                Err(_) => self.err(
                    format!("{path}.address"),
                    format!("{:?} is not an ip:port socket address", l.address),
                ),
            }
            self.listener(&path, l, &cluster_names);
        }

        self.inbound("inbound", &c.inbound);

        for (i, e) in c.dns.entries.iter().enumerate() {
            let path = format!("dns.entries[{i}]");
            for (j, name) in std::iter::once(&e.hostname).chain(&e.aliases).enumerate() {
                if !is_dns_name(name) {
                    let field = if j == 0 {
                        "hostname".to_string()
                    } else {
                        format!("aliases[{}]", j - 1)
                    };
                    self.err(format!("{path}.{field}"), format!("{name:?} is not a DNS name"));
                }
            }
            if e.addresses.is_empty() {
                self.err(format!("{path}.addresses"), "must list at least one address");
            }
            for (j, a) in e.addresses.iter().enumerate() {
                if a.parse::<IpAddr>().is_err() {
                    self.err(format!("{path}.addresses[{j}]"), format!("{a:?} is not an IP address"));
                }
            }
        }
        for (i, u) in c.dns.upstreams.iter().enumerate() {
            if u.parse::<SocketAddr>().is_err() {
                self.err(
                    format!("dns.upstreams[{i}]"),
                    format!("{u:?} is not an ip:port socket address"),
                );
            }
        }
        if let Some(t) = &c.telemetry.tracing {
            self.percentage("telemetry.tracing.samplingPercent", t.sampling_percent);
            if let Some(ep) = &t.otlp_endpoint {
                if !(ep.starts_with("http://") || ep.starts_with("https://")) {
                    self.err(
                        "telemetry.tracing.otlpEndpoint",
                        format!("{ep:?} must be an http:// or https:// URL"),
                    );
                } else if t.protocol == crate::OtlpProtocol::Grpc
                    && ep
                        .split_once("://")
                        .and_then(|(_, rest)| rest.split_once('/'))
                        .is_some_and(|(_, path)| !path.is_empty())
                {
                    self.err(
                        "telemetry.tracing.otlpEndpoint",
                        format!("{ep:?} has a path, which OTLP/gRPC does not use; give scheme, host and port only"),
                    );
                }
            }
            if let Some(ca) = &t.collector_ca {
                if t.otlp_endpoint.as_deref().is_some_and(|ep| ep.starts_with("https://")) {
                    self.pem_source("telemetry.tracing.collectorCa", ca);
                } else {
                    self.err(
                        "telemetry.tracing.collectorCa",
                        "only used with an https:// otlpEndpoint; remove it or use https://",
                    );
                }
            }
        }
    }

    fn identity(&mut self, c: &ProxyConfig) {
        let id = &c.identity;
        if !is_valid_trust_domain(&id.trust_domain) {
            self.err(
                "identity.trustDomain",
                format!(
                    "{:?} is not a valid trust domain (lowercase letters, digits, '.', '-', '_')",
                    id.trust_domain
                ),
            );
        }
        if id.trust_domain_aliases.len() > crate::trust_domain::MAX_ALIASES {
            self.err(
                "identity.trustDomainAliases",
                format!("at most {} aliases", crate::trust_domain::MAX_ALIASES),
            );
        }
        for (i, alias) in id.trust_domain_aliases.iter().enumerate() {
            if !is_valid_trust_domain(alias) || *alias == id.trust_domain {
                self.err(
                    format!("identity.trustDomainAliases[{i}]"),
                    format!(
                        "{alias:?} is not an alias of {:?}: a valid trust domain (lowercase letters, digits, '.', '-', '_') other than trustDomain",
                        id.trust_domain
                    ),
                );
            }
        }
        if let Some(s) = &id.spiffe_id {
            match SpiffeId::parse(s) {
                Ok(parsed) if parsed.trust_domain() != id.trust_domain => self.err(
                    "identity.spiffeId",
                    format!("{s:?} is outside the trust domain {:?}", id.trust_domain),
                ),
                Ok(_) => {}
                Err(e) => self.err("identity.spiffeId", e.to_string()),
            }
        }
        if let Some(cert) = &id.certificate {
            self.certificate("identity.certificate", cert);
        }
        if let Some(b) = &id.trust_bundle {
            self.pem_source("identity.trustBundle", b);
        }
        let istio_mutual = |t: &ServerTls| t.mode == ServerTlsMode::IstioMutual;
        let needs_mesh = c.clusters.iter().any(|cl| matches!(cl.tls, UpstreamTls::Mesh { .. }))
            || c.listeners
                .iter()
                .any(|l| l.tls.as_ref().is_some_and(istio_mutual) || l.sni_tls.iter().any(|e| istio_mutual(&e.tls)))
            || (c.listeners.iter().any(|l| l.direction == ListenerDirection::Inbound)
                && (c.inbound.mtls.mode != crate::MtlsMode::Disable
                    || c.inbound
                        .mtls
                        .port_modes
                        .values()
                        .any(|m| *m != crate::MtlsMode::Disable)));
        if needs_mesh {
            for (field, missing) in [
                ("identity.spiffeId", id.spiffe_id.is_none()),
                ("identity.certificate", id.certificate.is_none()),
                ("identity.trustBundle", id.trust_bundle.is_none()),
            ] {
                if missing {
                    self.err(
                        field,
                        "required for mesh mTLS (a cluster uses `mesh` TLS, a gateway listener \
                         `istioMutual`, or the inbound mTLS mode is not DISABLE)",
                    );
                }
            }
        }
    }

    fn certificate(&mut self, path: &str, c: &CertificateRef) {
        match c {
            CertificateRef::Files {
                cert_chain_file,
                private_key_file,
            } => {
                if cert_chain_file.is_empty() {
                    self.err(format!("{path}.files.certChainFile"), "must not be empty");
                }
                if private_key_file.is_empty() {
                    self.err(format!("{path}.files.privateKeyFile"), "must not be empty");
                }
            }
            CertificateRef::Inline {
                cert_chain_pem,
                private_key_pem,
            } => {
                if !cert_chain_pem.contains("-----BEGIN CERTIFICATE-----") {
                    self.err(format!("{path}.inline.certChainPem"), "contains no PEM certificate");
                }
                if !private_key_pem.contains("PRIVATE KEY-----") {
                    self.err(format!("{path}.inline.privateKeyPem"), "contains no PEM private key");
                }
            }
        }
    }

    fn pem_source(&mut self, path: &str, p: &PemSource) {
        match p {
            PemSource::File(f) if f.is_empty() => self.err(format!("{path}.file"), "must not be empty"),
            PemSource::Inline(pem) if !pem.contains("-----BEGIN CERTIFICATE-----") => {
                self.err(format!("{path}.inline"), "contains no PEM certificate")
            }
            _ => {}
        }
    }

    fn cluster(&mut self, path: &str, cl: &Cluster, c: &ProxyConfig) {
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

    fn spiffe(&mut self, path: &str, id: &str, _trust_domain: &str) {
        // Peers may live in federated trust domains, so only the syntax is checked.
        if let Err(e) = SpiffeId::parse(id) {
            self.err(path, e.to_string());
        }
    }

    fn listener(&mut self, path: &str, l: &Listener, clusters: &HashSet<&str>) {
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

    fn route(&mut self, path: &str, r: &Route, clusters: &HashSet<&str>) {
        if r.provenance.kind.is_empty() || r.provenance.name.is_empty() {
            self.err(
                format!("{path}.provenance"),
                "kind and name of the producing resource are required",
            );
        }
        for (i, m) in r.matches.iter().enumerate() {
            self.route_match(&format!("{path}.match[{i}]"), m);
        }
        match &r.action {
            RouteAction::Forward(f) => self.forward(&format!("{path}.action.forward"), f, clusters),
            RouteAction::Redirect(rd) => {
                if let Some(code) = rd.response_code
                    && ![301, 302, 303, 307, 308].contains(&code)
                {
                    self.err(
                        format!("{path}.action.redirect.responseCode"),
                        format!("{code} is not a redirect code (301, 302, 303, 307, 308)"),
                    );
                }
                if let Some(s) = &rd.scheme
                    && s != "http"
                    && s != "https"
                {
                    self.err(
                        format!("{path}.action.redirect.scheme"),
                        format!("{s:?} must be http or https"),
                    );
                }
                if let Some(u) = &rd.uri
                    && !u.starts_with('/')
                {
                    self.err(format!("{path}.action.redirect.uri"), "must start with '/'");
                }
                if let Some(pr) = &rd.prefix_rewrite {
                    if !pr.starts_with('/') {
                        self.err(format!("{path}.action.redirect.prefixRewrite"), "must start with '/'");
                    }
                    if rd.uri.is_some() {
                        self.err(
                            format!("{path}.action.redirect.prefixRewrite"),
                            "uri and prefixRewrite are mutually exclusive; keep one",
                        );
                    }
                }
            }
            RouteAction::DirectResponse(d) => {
                if !(200..=599).contains(&d.status) {
                    self.err(
                        format!("{path}.action.directResponse.status"),
                        format!("{} is not a final HTTP status (200-599)", d.status),
                    );
                }
            }
        }
        self.headers(
            &format!("{path}.requestHeaders"),
            &r.request_headers,
            HeaderDirection::Request,
        );
        self.headers(
            &format!("{path}.responseHeaders"),
            &r.response_headers,
            HeaderDirection::Response,
        );
        if let Some(f) = &r.fault {
            self.fault(&format!("{path}.fault"), f);
        }
        if let Some(c) = &r.cors {
            self.cors(&format!("{path}.cors"), c);
        }
    }

    fn route_match(&mut self, path: &str, m: &RouteMatch) {
        if let Some(u) = &m.uri {
            self.string_match(&format!("{path}.uri"), u);
            if let StringMatch::Exact(s) | StringMatch::Prefix(s) = u
                && !s.starts_with('/')
            {
                self.err(format!("{path}.uri"), format!("{s:?} must start with '/'"));
            }
        }
        if let Some(x) = &m.method {
            self.string_match(&format!("{path}.method"), x);
        }
        if let Some(x) = &m.authority {
            self.string_match(&format!("{path}.authority"), x);
        }
        for (i, h) in m.headers.iter().enumerate() {
            if !is_header_name(&h.name) {
                self.err(
                    format!("{path}.headers[{i}].name"),
                    format!("{:?} is not a valid header name", h.name),
                );
            }
            if let Some(v) = &h.value {
                self.string_match(&format!("{path}.headers[{i}].match"), v);
            }
        }
        for (i, q) in m.query_params.iter().enumerate() {
            if q.name.is_empty() {
                self.err(format!("{path}.queryParams[{i}].name"), "must not be empty");
            }
            if let Some(v) = &q.value {
                self.string_match(&format!("{path}.queryParams[{i}].match"), v);
            }
        }
        if m.port == Some(0) {
            self.err(format!("{path}.port"), "must be 1-65535");
        }
    }

    fn string_match(&mut self, path: &str, m: &StringMatch) {
        if let StringMatch::Regex(re) = m
            && let Err(e) = regex::Regex::new(re)
        {
            self.err(format!("{path}.regex"), format!("invalid regex: {e}"));
        }
    }

    fn forward(&mut self, path: &str, f: &ForwardAction, clusters: &HashSet<&str>) {
        if f.clusters.is_empty() {
            self.err(format!("{path}.clusters"), "must list at least one cluster");
        }
        let mut total: u64 = 0;
        for (i, wc) in f.clusters.iter().enumerate() {
            if !clusters.contains(wc.cluster.as_str()) {
                self.err(format!("{path}.clusters[{i}].cluster"), unknown_cluster(&wc.cluster));
            }
            total += u64::from(wc.weight);
            self.headers(
                &format!("{path}.clusters[{i}].requestHeaders"),
                &wc.request_headers,
                HeaderDirection::Request,
            );
            self.headers(
                &format!("{path}.clusters[{i}].responseHeaders"),
                &wc.response_headers,
                HeaderDirection::Response,
            );
        }
        if !f.clusters.is_empty() && total != 100 {
            self.err(
                format!("{path}.clusters"),
                format!("weights sum to {total}, they must sum to 100"),
            );
        }
        if let Some(rw) = &f.rewrite {
            if let Some(p) = &rw.uri_prefix
                && !p.starts_with('/')
            {
                self.err(format!("{path}.rewrite.uriPrefix"), "must start with '/'");
            }
            if let Some(rr) = &rw.uri_regex
                && let Err(e) = regex::Regex::new(&rr.pattern)
            {
                self.err(
                    format!("{path}.rewrite.uriRegex.pattern"),
                    format!("invalid regex: {e}"),
                );
            }
            if rw.uri_prefix.is_some() && rw.uri_regex.is_some() {
                self.err(format!("{path}.rewrite"), "set uriPrefix or uriRegex, not both");
            }
            if let Some(a) = &rw.authority
                && (a.is_empty() || a.bytes().any(|b| b.is_ascii_whitespace() || b == b'/'))
            {
                self.err(
                    format!("{path}.rewrite.authority"),
                    format!("{a:?} is not an authority"),
                );
            }
        }
        if f.timeout_ms == Some(0) {
            self.err(format!("{path}.timeoutMs"), "must be positive (omit for no timeout)");
        }
        if let Some(r) = &f.retries {
            if r.attempts > MAX_RETRY_ATTEMPTS {
                self.err(
                    format!("{path}.retries.attempts"),
                    format!("{} is more than {MAX_RETRY_ATTEMPTS}", r.attempts),
                );
            }
            if r.per_try_timeout_ms == Some(0) {
                self.err(format!("{path}.retries.perTryTimeoutMs"), "must be positive");
            }
            if r.backoff_base_ms == 0 {
                self.err(format!("{path}.retries.backoffBaseMs"), "must be positive");
            }
            if let Some(max) = r.backoff_max_ms
                && max < r.backoff_base_ms
            {
                self.err(format!("{path}.retries.backoffMaxMs"), "must be at least backoffBaseMs");
            }
            if let Some(b) = r.budget_percent {
                self.percentage(&format!("{path}.retries.budgetPercent"), b);
            }
            if r.retry_on.contains(&crate::RetryOn::RetriableStatusCodes) && r.retriable_status_codes.is_empty() {
                self.err(
                    format!("{path}.retries.retriableStatusCodes"),
                    "retryOn includes retriable-status-codes but no codes are listed",
                );
            }
            for (i, code) in r.retriable_status_codes.iter().enumerate() {
                if !(100..=599).contains(code) {
                    self.err(
                        format!("{path}.retries.retriableStatusCodes[{i}]"),
                        format!("{code} is not an HTTP status"),
                    );
                }
            }
        }
        for (i, m) in f.mirrors.iter().enumerate() {
            if !clusters.contains(m.cluster.as_str()) {
                self.err(format!("{path}.mirrors[{i}].cluster"), unknown_cluster(&m.cluster));
            }
            self.percentage(&format!("{path}.mirrors[{i}].percentage"), m.percentage);
        }
    }

    fn headers(&mut self, path: &str, h: &HeaderMutation, direction: HeaderDirection) {
        for (field, names) in [
            ("set", h.set.keys().collect::<Vec<_>>()),
            ("add", h.add.keys().collect()),
            ("remove", h.remove.iter().collect()),
        ] {
            for name in names {
                if let Err(why) = route_may_change(name, direction) {
                    self.err(format!("{path}.{field}"), why.to_string());
                }
            }
        }
        for (field, map) in [("set", &h.set), ("add", &h.add)] {
            for (name, value) in map {
                if !is_header_value(value) {
                    self.err(format!("{path}.{field}[{name}]"), "value contains control characters");
                }
            }
        }
    }

    fn fault(&mut self, path: &str, f: &FaultInjection) {
        if let Some(d) = &f.delay {
            self.percentage(&format!("{path}.delay.percentage"), d.percentage);
        }
        if let Some(a) = &f.abort {
            self.percentage(&format!("{path}.abort.percentage"), a.percentage);
            if !(200..=599).contains(&a.http_status) {
                self.err(
                    format!("{path}.abort.httpStatus"),
                    format!("{} is not a final HTTP status", a.http_status),
                );
            }
        }
    }

    fn cors(&mut self, path: &str, c: &CorsPolicy) {
        for (i, o) in c.allow_origins.iter().enumerate() {
            self.string_match(&format!("{path}.allowOrigins[{i}]"), o);
        }
        for (i, h) in c.allow_headers.iter().chain(&c.expose_headers).enumerate() {
            if !is_header_name(h) {
                self.err(format!("{path}.headers[{i}]"), format!("{h:?} is not a header name"));
            }
        }
        for (i, m) in c.allow_methods.iter().enumerate() {
            if m.is_empty() || !m.bytes().all(is_tchar) {
                self.err(format!("{path}.allowMethods[{i}]"), format!("{m:?} is not a method"));
            }
        }
    }

    fn inbound(&mut self, path: &str, p: &InboundPolicy) {
        for port in p.mtls.port_modes.keys() {
            if *port == 0 {
                self.err(format!("{path}.mtls.portModes"), "port 0 is not a port");
            }
        }
        for (i, provider) in p.jwt.iter().enumerate() {
            self.jwt_provider(&format!("{path}.jwt[{i}]"), provider);
        }
        let mut seen = BTreeSet::new();
        for (i, pol) in p.authorization.iter().enumerate() {
            let pp = format!("{path}.authorization[{i}]");
            if !seen.insert((pol.namespace.as_str(), pol.name.as_str())) {
                self.err(
                    format!("{pp}.name"),
                    format!("duplicate policy {}/{}", pol.namespace, pol.name),
                );
            }
            for (j, rule) in pol.rules.iter().enumerate() {
                let rp = format!("{pp}.rules[{j}]");
                for (k, s) in rule.from.iter().enumerate() {
                    self.authz_source(&format!("{rp}.from[{k}]"), s);
                }
                for (k, op) in rule.to.iter().enumerate() {
                    let op_path = format!("{rp}.to[{k}]");
                    for (field, list) in [
                        ("hosts", &op.hosts),
                        ("notHosts", &op.not_hosts),
                        ("methods", &op.methods),
                        ("notMethods", &op.not_methods),
                        ("paths", &op.paths),
                        ("notPaths", &op.not_paths),
                    ] {
                        for (n, m) in list.iter().enumerate() {
                            self.string_match(&format!("{op_path}.{field}[{n}]"), m);
                        }
                    }
                }
                for (k, cond) in rule.when.iter().enumerate() {
                    self.authz_condition(&format!("{rp}.when[{k}]"), cond);
                }
            }
        }
    }

    fn jwt_provider(&mut self, path: &str, p: &JwtProvider) {
        if p.issuer.is_empty() {
            self.err(format!("{path}.issuer"), "must not be empty");
        }
        if p.jwks_unavailable.is_none()
            && let Err(e) = crate::jwt::parse_jwks(&p.jwks)
        {
            self.err(format!("{path}.jwks"), e.to_string());
        }
        for (i, h) in p.from_headers.iter().enumerate() {
            if !crate::syntax::is_header_name(&h.name) {
                self.err(
                    format!("{path}.fromHeaders[{i}].name"),
                    format!("{:?} is not a header name", h.name),
                );
            }
        }
        for (i, name) in p.from_params.iter().chain(&p.from_cookies).enumerate() {
            if name.is_empty() {
                self.err(format!("{path}.fromParams/fromCookies[{i}]"), "must not be empty");
            }
        }
        let outputs = p
            .output_payload_to_header
            .iter()
            .map(|h| ("outputPayloadToHeader".to_string(), h))
            .chain(
                p.output_claim_to_headers
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (format!("outputClaimToHeaders[{i}].header"), &c.header)),
            );
        for (field, header) in outputs {
            if let Err(e) = crate::syntax::route_may_change(header, crate::syntax::HeaderDirection::Request) {
                self.err(format!("{path}.{field}"), e.to_string());
            }
        }
        for (i, c) in p.output_claim_to_headers.iter().enumerate() {
            if c.claim.is_empty() {
                self.err(format!("{path}.outputClaimToHeaders[{i}].claim"), "must not be empty");
            }
        }
    }

    fn authz_source(&mut self, path: &str, s: &AuthzSource) {
        for (field, list) in [
            ("principals", &s.principals),
            ("notPrincipals", &s.not_principals),
            ("requestPrincipals", &s.request_principals),
            ("notRequestPrincipals", &s.not_request_principals),
            ("namespaces", &s.namespaces),
            ("notNamespaces", &s.not_namespaces),
        ] {
            for (n, m) in list.iter().enumerate() {
                self.string_match(&format!("{path}.{field}[{n}]"), m);
            }
        }
        for (field, list) in [
            ("ipBlocks", &s.ip_blocks),
            ("notIpBlocks", &s.not_ip_blocks),
            ("remoteIpBlocks", &s.remote_ip_blocks),
            ("notRemoteIpBlocks", &s.not_remote_ip_blocks),
        ] {
            for (n, cidr) in list.iter().enumerate() {
                if parse_cidr(cidr).is_none() {
                    self.err(format!("{path}.{field}[{n}]"), format!("{cidr:?} is not an IP or CIDR"));
                }
            }
        }
    }

    fn authz_condition(&mut self, path: &str, c: &AuthzCondition) {
        let known = CONDITION_KEYS.contains(&c.key.as_str())
            || condition_header(&c.key).is_some()
            || crate::jwt::condition_claim(&c.key).is_some();
        if !known {
            self.err(
                format!("{path}.key"),
                format!(
                    "unsupported key {:?}; use request.headers[<name>], request.auth.claims[<name>], {}",
                    c.key,
                    CONDITION_KEYS.join(", ")
                ),
            );
        }
        let ip = IP_CONDITION_KEYS.contains(&c.key.as_str());
        for (n, m) in c.values.iter().chain(&c.not_values).enumerate() {
            let vp = format!("{path}.values[{n}]");
            match m {
                StringMatch::Exact(v) if ip && parse_cidr(v).is_none() => {
                    self.err(vp, format!("{v:?} is not an IP or CIDR"));
                }
                StringMatch::Exact(_) => {}
                _ if ip => self.err(vp, "addresses are matched with exact IPs or CIDRs"),
                _ => self.string_match(&vp, m),
            }
        }
    }

    fn percentage(&mut self, path: &str, p: f64) {
        if !(0.0..=100.0).contains(&p) {
            self.err(path, format!("{p} is not a percentage (0-100)"));
        }
    }
}

fn unknown_cluster(name: &str) -> String {
    format!("unknown cluster {name:?}; add it to `clusters` or fix the reference")
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
