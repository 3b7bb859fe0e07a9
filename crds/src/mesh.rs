//! `mesh.trellis.dev/v1alpha1`: Mesh, the control plane's lifecycle object.
//!
//! One cluster-scoped `Mesh` (named `default`, [`MESH_NAME`]) describes the installation the
//! operator reconciles: versions, trust domain, certificate authority, default mTLS mode,
//! sidecar injection, proxy rollout and telemetry. Every field has a default, so `spec: {}` is
//! a complete, working mesh. A Mesh with another name is not acted on; the operator says so in
//! its status.
//!
//! The names shared by the operator's reconciler, the injector and `meshctl` live here: the
//! condition types ([`conditions`]), the per-workload proxy image annotation
//! ([`PROXY_IMAGE_ANNOTATION`]) and the finalizer ([`FINALIZER`]).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};
use serde_with::skip_serializing_none;

use crate::security::MtlsMode;

/// API group of the lifecycle kind.
pub const GROUP: &str = "mesh.trellis.dev";
/// The name of the one Mesh the operator acts on.
pub const MESH_NAME: &str = "default";
/// The namespace the control plane runs in.
pub const SYSTEM_NAMESPACE: &str = "trellis-system";
/// The ConfigMap the operator keeps in every namespace with the mesh's trust anchor.
pub const ROOT_CONFIGMAP: &str = "trellis-ca-root";
/// Default SPIFFE trust domain, as in Istio and Kubernetes.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
/// The namespace label that turns on sidecar injection.
pub const INJECTION_LABEL: &str = "trellis.dev/inject";
/// The value of [`INJECTION_LABEL`] that turns injection on.
pub const INJECTION_ENABLED: &str = "enabled";
/// The value of [`INJECTION_LABEL`] that keeps a namespace or pod out of the mesh.
pub const INJECTION_DISABLED: &str = "disabled";
/// Default workload certificate lifetime (Istio's and Linkerd's: one day).
pub const DEFAULT_WORKLOAD_CERT_TTL: &str = "24h";
/// Default self-signed root lifetime: ten years, rotated by the operator long before expiry.
pub const DEFAULT_ROOT_CERT_TTL: &str = "87600h";
/// The proxy image of a workload, the contract between the rollout and the injector.
///
/// - On a pod template (Deployment, StatefulSet, DaemonSet): the image the rollout assigned the
///   workload; the injector injects it instead of `spec.versions.proxy`.
/// - On a pod: the image the injector injected (copied from the template, or recorded by the
///   injector when the template has none).
pub const PROXY_IMAGE_ANNOTATION: &str = "trellis.dev/proxy-image";
/// On a pod: the hash of the injection template that meshed it (everything the injector adds
/// but the proxy image). The rollout restarts workloads whose pods were injected with another
/// template, as it does for another proxy image.
pub const INJECTION_TEMPLATE_ANNOTATION: &str = "trellis.dev/injection-template";
/// The pod-template annotation `kubectl rollout restart` sets; the rollout restarts workloads
/// the same way.
pub const RESTARTED_AT_ANNOTATION: &str = "kubectl.kubernetes.io/restartedAt";
/// The Mesh's finalizer: removes what the operator created when the Mesh is deleted.
pub const FINALIZER: &str = "mesh.trellis.dev/cleanup";
/// Default workloads per rollout wave.
pub const DEFAULT_ROLLOUT_BATCH: u32 = 1;
/// Default soak between rollout waves.
pub const DEFAULT_ROLLOUT_PAUSE: &str = "30s";
/// Default time a rollout wave may take to become healthy before it is rolled back.
pub const DEFAULT_PROGRESS_DEADLINE: &str = "10m";

/// The Mesh's condition types, each with a reason and a message a person can act on.
pub mod conditions {
    /// Everything below is true: the mesh works as its spec says.
    pub const READY: &str = "Ready";
    /// The CA has a usable root (its expiry in the message).
    pub const CERTIFICATE_AUTHORITY_READY: &str = "CertificateAuthorityReady";
    /// The admission webhooks are served and their configurations carry the current CA bundle.
    pub const WEBHOOKS_READY: &str = "WebhooksReady";
    /// Every meshed pod runs the Mesh's proxy, connected to the control plane and in sync.
    pub const DATA_PLANE_UP_TO_DATE: &str = "DataPlaneUpToDate";
    /// A proxy rollout is under way (True), paused, done or rolled back (False, with why).
    pub const ROLLOUT_PROGRESSING: &str = "RolloutProgressing";
    /// Something needs a person: a failed rollout, an invalid spec, an expiring root.
    pub const DEGRADED: &str = "Degraded";
}

/// The mesh installation.
#[skip_serializing_none]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "mesh.trellis.dev",
    version = "v1alpha1",
    kind = "Mesh",
    doc = "The Trellis mesh installation reconciled by trellis-operator.",
    plural = "meshes",
    shortname = "mesh",
    category = "trellis",
    status = "MeshStatus",
    printcolumn = r#"{"name":"Ready", "type":"string", "jsonPath":".status.conditions[?(@.type==\"Ready\")].status", "description":"Whether the mesh works as its spec says"}"#,
    printcolumn = r#"{"name":"CA", "type":"string", "jsonPath":".status.conditions[?(@.type==\"CertificateAuthorityReady\")].status", "description":"Whether the certificate authority has a usable root"}"#,
    printcolumn = r#"{"name":"Webhooks", "type":"string", "jsonPath":".status.conditions[?(@.type==\"WebhooksReady\")].status", "description":"Whether the admission webhooks are served"}"#,
    printcolumn = r#"{"name":"Data Plane", "type":"string", "jsonPath":".status.conditions[?(@.type==\"DataPlaneUpToDate\")].reason", "description":"Whether every proxy runs the Mesh's version, in sync"}"#,
    printcolumn = r#"{"name":"Rollout", "type":"string", "jsonPath":".status.rollout.phase", "description":"The proxy rollout's phase"}"#,
    printcolumn = r#"{"name":"Proxy", "type":"string", "jsonPath":".spec.versions.proxy", "priority":1, "description":"The proxy image the Mesh asks for"}"#,
    printcolumn = r#"{"name":"Version", "type":"string", "jsonPath":".status.version", "priority":1, "description":"The control plane's version"}"#,
    printcolumn = r#"{"name":"Trust Domain", "type":"string", "jsonPath":".spec.trustDomain", "priority":1}"#,
    printcolumn = r#"{"name":"Age", "type":"date", "jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct MeshSpec {
    /// Images of the control plane and the proxy.
    pub versions: Option<Versions>,
    /// SPIFFE trust domain of workload identities (default `cluster.local`). A change is
    /// applied live: certificates are issued in the new domain at once, and the previous one
    /// stays an alias until every connected proxy serves a certificate in the new one.
    pub trust_domain: Option<String>,
    /// Trust domains treated as `trustDomain` itself (Istio's `trustDomainAliases`): a peer
    /// `spiffe://<alias>/ns/a/sa/b` is the workload `spiffe://<trustDomain>/ns/a/sa/b` for mTLS
    /// verification and AuthorizationPolicy principals, and CSRs naming an alias are signed in
    /// `trustDomain`.
    pub trust_domain_aliases: Option<Vec<String>>,
    /// Certificate authority settings.
    pub ca: Option<CertificateAuthority>,
    /// Mesh-wide default mTLS mode (default PERMISSIVE), overridden by PeerAuthentication.
    pub default_mtls_mode: Option<MtlsMode>,
    /// Sidecar injection defaults.
    pub injection: Option<Injection>,
    /// How proxies are rolled to a new version.
    pub rollout: Option<RolloutPolicy>,
    /// Metrics and tracing.
    pub telemetry: Option<Telemetry>,
    /// What sidecars do with traffic to hosts no Service or ServiceEntry names (Istio's
    /// `meshConfig.outboundTrafficPolicy`; default `ALLOW_ANY`).
    pub outbound_traffic_policy: Option<OutboundTrafficPolicy>,
}

/// Traffic from sidecars to destinations outside the registry.
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = crate::schema::unsupported(
        "egressProxy",
        "remove it; send external traffic through an egress gateway with a VirtualService"
    ),
    validation = crate::schema::unsupported(
        "tls",
        "remove it; Istio applies it only to the Mesh's mode ALLOW_ANY_DYNAMIC_DNS, which Trellis does not have"
    ),
    validation = kube::core::cel::Rule::new("!has(self.mode) || self.mode != 'ALLOW_ANY_DYNAMIC_DNS'")
        .field_path(".mode")
        .message("mode ALLOW_ANY_DYNAMIC_DNS is not supported by Trellis yet: use ALLOW_ANY (traffic to unknown destinations goes to the address the application dialled)")
)]
pub struct OutboundTrafficPolicy {
    /// `ALLOW_ANY` (default): forwarded to the address the application dialled.
    /// `REGISTRY_ONLY`: refused (HTTP 502, TCP reset).
    pub mode: Option<OutboundTrafficMode>,
    /// Not supported by Trellis yet.
    #[serde(default)]
    #[schemars(schema_with = "crate::schema::preserve_unknown_object")]
    pub egress_proxy: Option<serde_json::Value>,
    /// Not supported by Trellis yet.
    #[serde(default)]
    #[schemars(schema_with = "crate::schema::preserve_unknown_object")]
    pub tls: Option<serde_json::Value>,
}

/// Istio's outbound traffic policy modes.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OutboundTrafficMode {
    /// Traffic to unknown destinations passes through to where it was addressed.
    #[default]
    AllowAny,
    /// Only Services and ServiceEntries are reachable; anything else is refused.
    RegistryOnly,
    /// Istio's MeshConfig mode resolving unknown destinations' names at request time: not
    /// supported by Trellis yet (the validator refuses it; Istio allows it on the Mesh only).
    AllowAnyDynamicDns,
}

/// Images to run.
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Versions {
    /// The `trellis-operator` image.
    pub operator: Option<String>,
    /// The `trellis-proxy` image injected as sidecar and used by gateways.
    pub proxy: Option<String>,
}

/// Certificate authority.
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::cel::Rule::new("!has(self.mode) || self.mode != 'Plugged' || has(self.secretRef)")
    .message("mode Plugged needs secretRef naming the Secret with ca.crt and ca.key"))]
pub struct CertificateAuthority {
    /// `SelfSigned` (default): the operator creates a root. `Plugged`: use the root or
    /// intermediate in `secretRef`.
    pub mode: Option<CaMode>,
    /// Secret (keys `ca.crt`, `ca.key`, optional `root-cert.pem`) for `Plugged`.
    pub secret_ref: Option<SecretReference>,
    /// Lifetime of workload certificates (default `24h`, at least `10m`).
    pub workload_cert_ttl: Option<String>,
    /// Lifetime of a self-signed root (default `87600h`).
    pub root_cert_ttl: Option<String>,
}

/// Where the CA's signing key comes from.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaMode {
    /// The operator generates and stores its own root.
    SelfSigned,
    /// The user provides a root or intermediate in a Secret.
    Plugged,
}

/// A Secret in a namespace.
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SecretReference {
    /// Secret name.
    pub name: String,
    /// Namespace (default: the operator's own, `trellis-system` unless it is installed
    /// elsewhere).
    pub namespace: Option<String>,
}

/// Sidecar injection defaults.
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = kube::core::cel::Rule::new("!has(self.namespaceLabel) || self.namespaceLabel == 'trellis.dev/inject'")
        .field_path(".namespaceLabel")
        .message("namespaceLabel other than trellis.dev/inject is not supported by Trellis yet: the injector's webhook selects namespaces labelled trellis.dev/inject=enabled; remove the field and label namespaces with it"),
    validation = kube::core::cel::Rule::new("!has(self.nativeSidecar) || self.nativeSidecar")
        .field_path(".nativeSidecar")
        .message("nativeSidecar: false is not supported by Trellis yet: the proxy is injected as a native sidecar (an init container with restartPolicy Always, Kubernetes 1.29+); remove the field")
)]
pub struct Injection {
    /// Namespace label that turns injection on: `trellis.dev/inject` (value `enabled`), the
    /// only one supported yet.
    pub namespace_label: Option<String>,
    /// Inject the proxy as a native sidecar (init container with `restartPolicy: Always`,
    /// Kubernetes 1.29+): `true`, the only mode supported yet.
    pub native_sidecar: Option<bool>,
}

/// Proxy rollout policy: how meshed workloads are brought to a new proxy image.
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::cel::Rule::new("!(has(self.batchSize) && has(self.batchPercent))")
    .message("set batchSize or batchPercent, not both"))]
pub struct RolloutPolicy {
    /// Workloads restarted per wave (default 1). Exclusive with `batchPercent`.
    #[schemars(range(min = 1, max = 1000))]
    pub batch_size: Option<u32>,
    /// Share of the meshed workloads restarted per wave, 1-100, rounded up. Exclusive with
    /// `batchSize`.
    #[schemars(range(min = 1, max = 100))]
    pub batch_percent: Option<u32>,
    /// Workloads that go first, in waves of their own, before any other.
    pub canary: Option<Canary>,
    /// Soak after each wave turned healthy, before the next starts (default `30s`); the wave's
    /// health gates must hold throughout.
    pub pause: Option<String>,
    /// How long a wave may take to become healthy before it is rolled back (default `10m`).
    pub progress_deadline: Option<String>,
    /// `true`: start no new wave (the wave under way finishes). Set `false` to resume.
    pub paused: Option<bool>,
    /// Conditions a wave must meet before the next starts (default: all of them).
    pub health_gates: Option<Vec<HealthGate>>,
}

/// The workloads a rollout starts with.
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Canary {
    /// Workloads in these namespaces go first.
    pub namespaces: Option<Vec<String>>,
    /// Workloads (Deployments, StatefulSets, DaemonSets) with all of these labels go first.
    pub match_labels: Option<BTreeMap<String, String>>,
}

/// A condition checked after each rollout wave.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum HealthGate {
    /// Every workload of the wave has all its pods updated and Ready.
    PodsReady,
    /// Every new pod's proxy is connected to the control plane and has acknowledged its
    /// configuration.
    ProxiesSynced,
    /// No container of the wave's new pods restarts during the soak (no crash loop).
    NoRestarts,
}

impl HealthGate {
    /// Every gate, the default.
    pub const ALL: [HealthGate; 3] = [HealthGate::PodsReady, HealthGate::ProxiesSynced, HealthGate::NoRestarts];
}

/// Metrics and tracing.
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Telemetry {
    /// Prometheus metrics.
    pub metrics: Option<MetricsSettings>,
    /// Distributed tracing.
    pub tracing: Option<TracingSettings>,
}

/// Prometheus metrics.
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MetricsSettings {
    /// Whether proxies expose metrics (default true).
    pub enabled: Option<bool>,
}

/// Distributed tracing.
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TracingSettings {
    /// Share of new traces sampled, 0.0-100.0 (default 1.0); a request whose caller already
    /// decided (a sampled flag in `traceparent` or B3) keeps the caller's decision.
    #[schemars(range(min = 0.0, max = 100.0))]
    pub sampling: Option<f64>,
    /// The OTLP collector, `http(s)://host:port`: e.g. `http://otel-collector.observability:4317`
    /// for OTLP/gRPC, `http://otel-collector.observability:4318` for OTLP/HTTP (where a path may
    /// follow; default `/v1/traces`).
    pub otlp_endpoint: Option<String>,
    /// How spans travel to the collector: `grpc` (OTLP/gRPC, the default, as Istio's
    /// OpenTelemetry provider), `http/protobuf` or `http/json` (OTLP/HTTP) — the values of
    /// OpenTelemetry's `OTEL_EXPORTER_OTLP_PROTOCOL`.
    pub protocol: Option<OtlpProtocol>,
}

/// The OTLP transport and encoding.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// OTLP/gRPC (protobuf over HTTP/2), usually port 4317.
    #[default]
    #[serde(rename = "grpc")]
    Grpc,
    /// OTLP/HTTP with protobuf bodies, usually port 4318.
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
    /// OTLP/HTTP with JSON bodies, usually port 4318.
    #[serde(rename = "http/json")]
    HttpJson,
}

impl OtlpProtocol {
    /// The value as written in a Mesh.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Grpc => "grpc",
            Self::HttpProtobuf => "http/protobuf",
            Self::HttpJson => "http/json",
        }
    }
}

/// Observed state of the mesh.
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MeshStatus {
    /// `Ready`, `CertificateAuthorityReady`, `WebhooksReady`, `DataPlaneUpToDate`,
    /// `RolloutProgressing`, `Degraded` (see [`conditions`]).
    pub conditions: Option<Vec<Condition>>,
    /// The version the control plane runs.
    pub version: Option<String>,
    /// The `metadata.generation` the status describes.
    pub observed_generation: Option<i64>,
    /// The certificate authority.
    pub certificate_authority: Option<CertificateAuthorityStatus>,
    /// The proxies: how many run which image, per namespace.
    pub data_plane: Option<DataPlaneStatus>,
    /// The proxy rollout.
    pub rollout: Option<RolloutStatus>,
}

/// What the certificate authority runs on.
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CertificateAuthorityStatus {
    /// `SelfSigned` or `Plugged`.
    pub mode: Option<String>,
    /// The trust domain certificates are issued in.
    pub trust_domain: Option<String>,
    /// Trust domains that were `spec.trustDomain` before and that connected proxies still
    /// serve certificates in: aliases of the trust domain until the last of those proxies has
    /// a certificate in the new one.
    pub previous_trust_domains: Option<Vec<String>>,
    /// SHA-256 fingerprint of the root new certificates chain to.
    pub root_fingerprint: Option<String>,
    /// When that root expires (RFC 3339).
    pub root_expires: Option<String>,
    /// `Stable`, or the phase of the root rotation under way.
    pub rotation_phase: Option<String>,
}

/// The data plane, as the control plane sees it.
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DataPlaneStatus {
    /// Meshed pods.
    pub proxies: u32,
    /// Of those, running the image the Mesh asks for.
    pub up_to_date: u32,
    /// Of those, connected to the control plane.
    pub connected: u32,
    /// Of those, holding the latest configuration they were sent.
    pub synced: u32,
    /// Version skew: proxies per image, per namespace.
    pub versions: Option<Vec<ProxyVersionCount>>,
    /// Meshed pods no controller owns (`namespace/name`, at most 50): a rollout never deletes
    /// them; recreate them to update their proxy.
    pub standalone_pods: Option<Vec<String>>,
}

/// Proxies running one image in one namespace.
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub struct ProxyVersionCount {
    /// Namespace.
    pub namespace: String,
    /// The proxy image.
    pub image: String,
    /// Pods.
    pub pods: u32,
    /// Of those, connected to the control plane.
    pub connected: u32,
    /// Of those, in sync.
    pub synced: u32,
}

/// Where a proxy rollout stands.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RolloutPhase {
    /// Every meshed workload runs the target image.
    Complete,
    /// A wave is restarting its workloads.
    Progressing,
    /// A wave is healthy; its soak runs before the next wave.
    Soaking,
    /// `spec.rollout.paused`: no new wave starts.
    Paused,
    /// A wave failed its health gates; its workloads were rolled back and no wave starts until
    /// the Mesh's proxy image changes.
    RolledBack,
}

/// The proxy rollout's progress, kept so that a new leader resumes where the last one stopped.
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    /// The image being rolled out.
    pub target_image: String,
    /// Phase.
    pub phase: Option<RolloutPhase>,
    /// The current (or last) wave, from 1.
    pub wave: u32,
    /// The workloads of that wave, with the image each ran before.
    pub wave_workloads: Option<Vec<WorkloadRollout>>,
    /// When that wave started (RFC 3339).
    pub wave_started: Option<String>,
    /// When that wave became healthy and its soak began (RFC 3339).
    pub soak_started: Option<String>,
    /// Meshed workloads running the target image.
    pub updated: u32,
    /// Meshed workloads still to roll.
    pub pending: u32,
    /// Why the rollout stopped, when it did.
    pub failure: Option<RolloutFailure>,
}

/// One workload of a wave.
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadRollout {
    /// `Deployment`, `StatefulSet` or `DaemonSet`.
    pub kind: String,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The proxy image it ran before the wave (what a rollback restores).
    pub previous_image: Option<String>,
}

/// Why a wave failed.
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RolloutFailure {
    /// The workload that failed, `Kind namespace/name`.
    pub workload: String,
    /// Which gate failed: `PodsReady`, `ProxiesSynced`, `NoRestarts` or `ProgressDeadline`.
    pub reason: String,
    /// What was seen.
    pub message: String,
}

impl MeshSpec {
    /// `spec.trustDomain`, or [`DEFAULT_TRUST_DOMAIN`].
    pub fn trust_domain(&self) -> &str {
        self.trust_domain.as_deref().unwrap_or(DEFAULT_TRUST_DOMAIN)
    }

    /// The trust domain with its aliases: `spec.trustDomainAliases` and `previous` (the domains
    /// proxies may still serve certificates in, [`MeshStatus::previous_trust_domains`]).
    pub fn trust_domains(&self, previous: &[String]) -> trellis_contract::TrustDomains {
        let aliases = self.trust_domain_aliases.iter().flatten().chain(previous).cloned();
        trellis_contract::TrustDomains::new(self.trust_domain(), aliases)
    }
}

impl MeshStatus {
    /// The trust domains connected proxies may still serve certificates in, other than
    /// `spec`'s: the previous ones the status records, and the one the status says
    /// certificates are issued in when `spec.trustDomain` names another (a change the
    /// operator has not recorded yet). Sorted, each once.
    pub fn previous_trust_domains(&self, spec: &MeshSpec) -> Vec<String> {
        let ca = self.certificate_authority.as_ref();
        let mut previous: Vec<String> = ca
            .and_then(|ca| ca.previous_trust_domains.clone())
            .unwrap_or_default()
            .into_iter()
            .chain(ca.and_then(|ca| ca.trust_domain.clone()))
            .filter(|td| td != spec.trust_domain())
            .collect();
        previous.sort();
        previous.dedup();
        previous
    }
}

#[cfg(test)]
mod trust_domain_tests {
    use super::*;

    #[test]
    fn a_trust_domain_change_keeps_the_recorded_domains_as_aliases() {
        let spec = MeshSpec {
            trust_domain: Some("new.example".into()),
            trust_domain_aliases: Some(vec!["alias.example".into()]),
            ..MeshSpec::default()
        };
        let status = |issued: &str, previous: &[&str]| MeshStatus {
            certificate_authority: Some(CertificateAuthorityStatus {
                trust_domain: Some(issued.into()),
                previous_trust_domains: Some(previous.iter().map(|s| s.to_string()).collect()),
                ..CertificateAuthorityStatus::default()
            }),
            ..MeshStatus::default()
        };
        // The change is not recorded yet: the domain certificates were issued in is previous.
        let previous = status("old.example", &[]).previous_trust_domains(&spec);
        assert_eq!(previous, ["old.example"]);
        // Recorded: the status keeps it until no proxy serves it.
        assert_eq!(
            status("new.example", &["old.example", "new.example"]).previous_trust_domains(&spec),
            ["old.example"]
        );
        assert!(status("new.example", &[]).previous_trust_domains(&spec).is_empty());
        assert!(MeshStatus::default().previous_trust_domains(&spec).is_empty());
        let t = spec.trust_domains(&previous);
        assert_eq!(t.domain(), "new.example");
        assert_eq!(t.aliases(), ["alias.example", "old.example"]);
        assert_eq!(MeshSpec::default().trust_domains(&[]).domain(), "cluster.local");
    }
}
