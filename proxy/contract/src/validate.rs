//! Semantic validation of a [`ProxyConfig`]: everything serde cannot check
//! (references between objects, regexes, weights, ranges, addresses).
//!
//! # Guarantees
//! A config that passes [`ProxyConfig::validate`] can be compiled by the proxy
//! without further errors except I/O (certificate files, binding sockets).
//! All errors are reported at once, each with its field path.

use crate::cluster::UpstreamTls;
use crate::identity::{CertificateRef, PemSource, SpiffeId, is_valid_trust_domain};
use crate::listener::{ListenerDirection, ServerTls, ServerTlsMode};
use crate::syntax::is_dns_name;
use crate::{API_VERSION, ProxyConfig};
use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

mod cluster;
mod inbound;
mod listener;
mod route;
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

    fn spiffe(&mut self, path: &str, id: &str, _trust_domain: &str) {
        // Peers may live in federated trust domains, so only the syntax is checked.
        if let Err(e) = SpiffeId::parse(id) {
            self.err(path, e.to_string());
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
