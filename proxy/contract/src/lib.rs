//! The configuration contract between the Trellis control plane and `trellis-proxy`.
//!
//! The operator compiles the mesh's resources (VirtualServices, DestinationRules,
//! Gateways, PeerAuthentications, RequestAuthentications, AuthorizationPolicies, the
//! service registry) into
//! one [`ProxyConfig`] per proxy; the proxy loads it from a file (`--config`) or
//! receives it over the push API, whole or as a [`ConfigDelta`] against the version
//! it holds. This crate owns that model, its deltas, its semantic validation, and the
//! evaluations the proxy and `meshctl` must agree on ([`matching`] of requests to routes,
//! [`authorization`] by AuthorizationPolicies), and nothing else: it depends on neither Kubernetes nor an async
//! runtime, so the operator, `meshctl` and the proxy can all link it.
//!
//! # Guarantees
//! - Serialization is plain serde (JSON or YAML), camelCase field names, and
//!   deterministic: maps are `BTreeMap`, lists keep their order.
//! - [`ProxyConfig::validate`] is the one validator: the proxy NACKs any config
//!   it rejects and keeps the last good one; the operator can run the same check
//!   before pushing.
//!
//! # Caveats
//! - Unknown fields are ignored when parsing (a newer operator may talk to an
//!   older proxy during an upgrade); [`API_VERSION`] is checked strictly.
//! - Durations are integers in milliseconds (fields end in `Ms`), percentages are
//!   floats in `0.0..=100.0`.

pub mod authorization;
pub mod certificate;
mod cluster;
mod delta;
mod dns;
mod identity;
mod inbound;
pub mod jwt;
mod listener;
pub mod matching;
pub mod refusal;
mod route;
pub mod signals;
pub mod syntax;
mod telemetry;
pub mod trust_domain;
mod validate;

pub use cluster::{
    Cluster, ConnectionPool, Discovery, Endpoint, HashKey, HealthStatus, Http2Keepalive, LbPolicy, LoadBalancer,
    OriginateTls, OutlierDetection, RetryBudget, TcpKeepalive, UpstreamProtocol, UpstreamTls,
};
pub use delta::{ConfigDelta, DeltaError, DeltaObject, ListenerPatch};
pub use dns::{DnsConfig, DnsEntry};
pub use identity::{CertificateRef, IdentityConfig, PemSource, SpiffeId, SpiffeIdError};
pub use inbound::{
    AuthorizationPolicy, AuthzAction, AuthzCondition, AuthzOperation, AuthzRule, AuthzSource, CONDITION_KEYS,
    IP_CONDITION_KEYS, InboundPolicy, MtlsMode, MtlsPolicy, REQUEST_AUTH_KEYS, condition_header,
};
pub use jwt::{ClaimToHeader, JwtHeader, JwtProvider, condition_claim};
pub use listener::{
    EscapedSlashes, HttpLimits, Listener, ListenerDirection, ListenerProtocol, PathNormalization, ServerTls,
    ServerTlsMode, SniTls, TLS12_CIPHER_SUITES, TcpRoute, TcpWeightedCluster, TlsVersion, Unrouted,
};
pub use route::{
    CorsPolicy, DirectResponse, FaultAbort, FaultDelay, FaultInjection, ForwardAction, HeaderMatch, HeaderMutation,
    Mirror, Provenance, QueryParamMatch, Redirect, RegexRewrite, RetryOn, RetryPolicy, Rewrite, Route, RouteAction,
    RouteMatch, RuleSection, StringMatch, VirtualHost, WeightedCluster,
};
pub use syntax::parse_cidr;
pub use telemetry::{AccessLog, AccessLogFormat, OtlpProtocol, Telemetry, Tracing};
pub use trust_domain::TrustDomains;
pub use validate::{ValidationError, ValidationErrors};

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The contract version this crate speaks. A config with any other
/// `apiVersion` is rejected by [`ProxyConfig::validate`].
pub const API_VERSION: &str = "proxy.trellis.dev/v1alpha1";

/// The whole configuration of one proxy: a state-of-the-world snapshot.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyConfig {
    /// Contract version, must equal [`API_VERSION`].
    #[serde(default = "default_api_version")]
    pub api_version: String,
    /// Opaque snapshot version chosen by the control plane (reported in ACK/NACK,
    /// `/config_dump` and logs). Must not be empty.
    pub version: String,
    /// Sidecar or gateway.
    #[serde(default)]
    pub mode: ProxyMode,
    /// Who this proxy is (used for metric labels and logs).
    #[serde(default)]
    pub node: NodeInfo,
    /// Workload identity and trust anchors for mesh mTLS.
    #[serde(default)]
    pub identity: IdentityConfig,
    /// Sockets to listen on and what to do with their traffic.
    #[serde(default)]
    pub listeners: Vec<Listener>,
    /// Upstream destinations, referenced by name from routes.
    #[serde(default)]
    pub clusters: Vec<Cluster>,
    /// Inbound security: peer authentication and authorization.
    #[serde(default)]
    pub inbound: InboundPolicy,
    /// Names the DNS proxy answers.
    #[serde(default)]
    pub dns: DnsConfig,
    /// Tracing and access logs.
    #[serde(default)]
    pub telemetry: Telemetry,
    /// How long a drain (SIGTERM or listener removal) waits for in-flight work.
    #[serde(default = "default_drain_timeout_ms")]
    pub drain_timeout_ms: u64,
}

fn default_api_version() -> String {
    API_VERSION.to_string()
}

fn default_drain_timeout_ms() -> u64 {
    // Matches Istio's default terminationDrainDuration (5 s).
    5_000
}

/// Whether the proxy sits beside a workload or at the edge.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ProxyMode {
    /// Outbound + inbound listeners beside one workload.
    #[default]
    Sidecar,
    /// Listeners compiled from Gateway servers.
    Gateway,
}

/// Static facts about the proxy's workload, used as telemetry labels.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct NodeInfo {
    /// Unique id, e.g. `sidecar~10.0.0.5~web-7d9f.shop~shop.svc.cluster.local`.
    pub id: String,
    /// Workload name (Deployment or similar).
    pub workload: String,
    /// Kubernetes namespace.
    pub namespace: String,
    /// Value of the `app` label.
    pub app: String,
    /// Value of the `version` label.
    pub version: String,
    /// Service account the workload runs as.
    pub service_account: String,
    /// Cluster id, for multi-cluster labels.
    pub cluster: String,
    /// Extra labels of the workload.
    pub labels: BTreeMap<String, String>,
}

/// Errors from parsing a serialized config (before validation).
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// The text is not valid JSON for the contract.
    #[error("invalid JSON proxy config: {0}")]
    Json(#[from] serde_json::Error),
    /// The text is not valid YAML for the contract.
    #[error("invalid YAML proxy config: {0}")]
    Yaml(#[from] serde_yaml_ng::Error),
}

impl ProxyConfig {
    /// An empty config of the current [`API_VERSION`] with the given version.
    pub fn empty(version: impl Into<String>) -> Self {
        Self {
            api_version: API_VERSION.to_string(),
            version: version.into(),
            mode: ProxyMode::Sidecar,
            node: NodeInfo::default(),
            identity: IdentityConfig::default(),
            listeners: Vec::new(),
            clusters: Vec::new(),
            inbound: InboundPolicy::default(),
            dns: DnsConfig::default(),
            telemetry: Telemetry::default(),
            drain_timeout_ms: default_drain_timeout_ms(),
        }
    }

    /// Parse JSON or YAML; JSON is tried first when the text starts with `{`.
    ///
    /// # Caveats
    /// Parsing does not validate: call [`ProxyConfig::validate`] before use.
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        if text.trim_start().starts_with('{') {
            Ok(serde_json::from_str(text)?)
        } else {
            // Enums are written as single-key maps (`forward: {...}`) in both
            // formats; YAML would otherwise expect `!forward` tags.
            let de = serde_yaml_ng::Deserializer::from_str(text);
            Ok(serde_yaml_ng::with::singleton_map_recursive::deserialize(de)?)
        }
    }

    /// Deterministic JSON (same config, same bytes).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("contract types always serialize")
    }

    /// Look up a cluster by name.
    pub fn cluster(&self, name: &str) -> Option<&Cluster> {
        self.clusters.iter().find(|c| c.name == name)
    }

    /// A copy that is safe to show (`/config_dump`, `meshctl proxy-config`, logs): every
    /// inline private key — the workload's, gateway servers', clients' for TLS origination —
    /// replaced by `<redacted>`.
    pub fn redacted(&self) -> Self {
        self.clone().into_redacted()
    }

    /// [`ProxyConfig::redacted`] without the copy, for a config already copied.
    pub fn into_redacted(self) -> Self {
        let mut c = self;
        if let Some(cert) = &c.identity.certificate {
            c.identity.certificate = Some(cert.redacted());
        }
        for l in &mut c.listeners {
            if let Some(tls) = &mut l.tls {
                tls.certificate = tls.certificate.as_ref().map(CertificateRef::redacted);
            }
            for entry in &mut l.sni_tls {
                entry.tls.certificate = entry.tls.certificate.as_ref().map(CertificateRef::redacted);
            }
        }
        for cl in &mut c.clusters {
            cl.tls = cl.tls.redacted();
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_accepts_json_and_yaml_and_fills_defaults() {
        let json = r#"{"version":"v1"}"#;
        let cfg = ProxyConfig::parse(json).unwrap();
        assert_eq!(cfg.api_version, API_VERSION);
        assert_eq!(cfg.mode, ProxyMode::Sidecar);
        assert_eq!(cfg.drain_timeout_ms, 5_000);

        let yaml = "version: v2\nmode: gateway\n";
        let cfg = ProxyConfig::parse(yaml).unwrap();
        assert_eq!(cfg.version, "v2");
        assert_eq!(cfg.mode, ProxyMode::Gateway);
    }

    #[test]
    fn parse_reports_type_errors() {
        let err = ProxyConfig::parse(r#"{"version": 3, "mode": "sidecar"}"#).unwrap_err();
        assert!(err.to_string().contains("invalid JSON"), "{err}");
    }

    #[test]
    fn retry_conditions_use_envoy_names() {
        let all = [
            RetryOn::FiveXx,
            RetryOn::GatewayError,
            RetryOn::Reset,
            RetryOn::ConnectFailure,
            RetryOn::Retriable4xx,
            RetryOn::RetriableStatusCodes,
        ];
        assert_eq!(
            serde_json::to_string(&all).unwrap(),
            r#"["5xx","gateway-error","reset","connect-failure","retriable-4xx","retriable-status-codes"]"#
        );
    }

    #[test]
    fn redacted_hides_every_inline_private_key() {
        let key = "-----BEGIN PRIVATE KEY-----\nSECRETKEYBYTES\n-----END PRIVATE KEY-----\n";
        let inline = || CertificateRef::Inline {
            cert_chain_pem: "CHAIN".into(),
            private_key_pem: key.into(),
        };
        let mut cfg = ProxyConfig::empty("v1");
        cfg.identity.certificate = Some(inline());
        cfg.clusters.push(Cluster {
            name: "db".into(),
            service: None,
            subset: None,
            protocol: UpstreamProtocol::Tcp,
            load_balancer: LoadBalancer::default(),
            connect_timeout_ms: 1000,
            connection_pool: ConnectionPool::default(),
            outlier_detection: None,
            panic_threshold_percent: 50.0,
            tls: UpstreamTls::Originate(Box::new(OriginateTls {
                sni: "db.example.com".into(),
                client_certificate: Some(inline()),
                ..OriginateTls::default()
            })),
            discovery: Discovery::Static,
            endpoints: Vec::new(),
            provenance: None,
        });
        assert!(cfg.to_json().contains("SECRETKEYBYTES"));
        let shown = cfg.redacted().to_json();
        assert!(!shown.contains("SECRETKEYBYTES"), "{shown}");
        assert!(shown.contains("CHAIN") && shown.contains("db.example.com"));
        assert!(!format!("{cfg:?}").contains("SECRETKEYBYTES"));
    }

    #[test]
    fn json_round_trip_is_stable() {
        let cfg = ProxyConfig::empty("v1");
        let text = cfg.to_json();
        let back = ProxyConfig::parse(&text).unwrap();
        assert_eq!(cfg, back);
        assert_eq!(text, back.to_json());
    }
}
