//! `mesh.trellis.dev/v1alpha1`: Mesh, the control plane's lifecycle object.
//!
//! One cluster-scoped `Mesh` (conventionally named `default`) describes the installation the
//! operator reconciles: versions, trust domain, certificate authority, default mTLS mode,
//! sidecar injection, proxy rollout and telemetry. Every field has a default, so `spec: {}` is
//! a complete, working mesh.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};
use serde_with::skip_serializing_none;

use crate::security::MtlsMode;

/// API group of the lifecycle kind.
pub const GROUP: &str = "mesh.trellis.dev";
/// The namespace the control plane runs in.
pub const SYSTEM_NAMESPACE: &str = "trellis-system";
/// Default SPIFFE trust domain, as in Istio and Kubernetes.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
/// The namespace label that turns on sidecar injection.
pub const INJECTION_LABEL: &str = "trellis.dev/inject";
/// The value of [`INJECTION_LABEL`] that turns injection on.
pub const INJECTION_ENABLED: &str = "enabled";
/// Default workload certificate lifetime (Istio's and Linkerd's: one day).
pub const DEFAULT_WORKLOAD_CERT_TTL: &str = "24h";
/// Default self-signed root lifetime: ten years, rotated by the operator long before expiry.
pub const DEFAULT_ROOT_CERT_TTL: &str = "87600h";

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
    printcolumn = r#"{"name":"Version", "type":"string", "jsonPath":".status.version", "description":"Version running"}"#,
    printcolumn = r#"{"name":"Ready", "type":"string", "jsonPath":".status.conditions[?(@.type==\"Ready\")].status", "description":"Whether the mesh is ready"}"#,
    printcolumn = r#"{"name":"Trust Domain", "type":"string", "jsonPath":".spec.trustDomain", "priority":1}"#,
    printcolumn = r#"{"name":"Age", "type":"date", "jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct MeshSpec {
    /// Images of the control plane and the proxy.
    pub versions: Option<Versions>,
    /// SPIFFE trust domain of workload identities (default `cluster.local`).
    pub trust_domain: Option<String>,
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
    /// Namespace (default `trellis-system`).
    pub namespace: Option<String>,
}

/// Sidecar injection defaults.
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Injection {
    /// Namespace label that turns injection on (default `trellis.dev/inject`, value `enabled`).
    pub namespace_label: Option<String>,
    /// Inject the proxy as a native sidecar (init container with `restartPolicy: Always`;
    /// default true, needs Kubernetes 1.29+).
    pub native_sidecar: Option<bool>,
}

/// Proxy rollout policy.
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RolloutPolicy {
    /// Workloads restarted at a time (default 1).
    #[schemars(range(min = 1, max = 1000))]
    pub batch_size: Option<u32>,
    /// Pause between batches, e.g. `30s`.
    pub pause: Option<String>,
    /// Conditions a batch must meet before the next starts.
    pub health_gates: Option<Vec<HealthGate>>,
}

/// A condition checked after each rollout batch.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum HealthGate {
    /// All pods of the batch are Ready.
    PodsReady,
    /// Every proxy of the batch has acknowledged its configuration.
    ProxiesSynced,
    /// The batch's 5xx rate did not rise.
    ErrorRateStable,
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
    /// Share of requests sampled, 0.0-100.0 (default 1.0).
    #[schemars(range(min = 0.0, max = 100.0))]
    pub sampling: Option<f64>,
    /// OTLP/gRPC or OTLP/HTTP collector, e.g. `http://otel-collector.observability:4317`.
    pub otlp_endpoint: Option<String>,
}

/// Observed state of the mesh.
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MeshStatus {
    /// Standard conditions: `Ready`, `CertificatesReady`, `ProxiesUpToDate`, `Degraded`.
    pub conditions: Option<Vec<Condition>>,
    /// The version the control plane runs.
    pub version: Option<String>,
    /// The `metadata.generation` the status describes.
    pub observed_generation: Option<i64>,
}
