//! The Mesh's spec as the operator acts on it: every field read, defaulted and checked by the
//! one validator, or refused as a whole.
//!
//! # Guarantees
//! - A Mesh the validator finds an error in gives no [`Settings`] at all ([`Invalid`]), so a
//!   contradictory spec is never half applied: the operator keeps acting on the last valid one.
//! - The operator's flags only supply what an absent Mesh leaves open: the trust domain and
//!   the workload certificate lifetime of an installation with no Mesh. A Mesh that leaves a
//!   field out gets the field's documented default, the one the validator checks it with (a
//!   Mesh without `spec.trustDomain` is in `cluster.local`, without `spec.ca.workloadCertTtl`
//!   its leaves live 24h), whatever the flags say — so a Mesh the validator accepts is the Mesh
//!   the operator acts on. The one exception is the proxy image a Mesh without
//!   `spec.versions.proxy` gets: the one installed with the operator (`TRELLIS_PROXY_IMAGE`).
//!   A Mesh read at start never becomes a default.
//! - Every replica follows the Mesh ([`follow`]), not only the leader's reconciler: what every
//!   replica acts on itself — the workload certificate lifetime it signs with, the lifetime of a
//!   root it makes — is read from the same valid spec, with no restart.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use trellis_api::mesh::{
    CaMode, DEFAULT_PROGRESS_DEADLINE, DEFAULT_ROLLOUT_BATCH, DEFAULT_ROLLOUT_PAUSE, DEFAULT_ROOT_CERT_TTL,
    DEFAULT_TRUST_DOMAIN, DEFAULT_WORKLOAD_CERT_TTL, HealthGate, Mesh, MeshSpec, SYSTEM_NAMESPACE,
};
use trellis_api::security::MtlsMode;
use trellis_api::validation::{Finding, Outcome, Severity, validate};

/// How often a steady Mesh is looked at again (data plane counts, root expiry), and a rollout
/// with nothing to wait for is planned again.
pub const RESYNC: Duration = Duration::from_secs(15);

/// Default workload certificate lifetime.
pub const DEFAULT_WORKLOAD_TTL: Duration = Duration::from_secs(24 * 3600);
/// Default self-signed root lifetime (ten years).
pub const DEFAULT_ROOT_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// What the operator uses where neither a Mesh nor its field says otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Defaults {
    /// The operator's own namespace: where a plugged root's `secretRef` without a namespace
    /// points.
    pub namespace: String,
    /// The proxy image installed with the operator (`TRELLIS_PROXY_IMAGE`).
    pub proxy_image: String,
    /// Workload certificate lifetime while there is no Mesh
    /// (`TRELLIS_WORKLOAD_CERT_TTL_SECONDS`); a Mesh without `spec.ca.workloadCertTtl` gets
    /// [`DEFAULT_WORKLOAD_CERT_TTL`].
    pub workload_cert_ttl: Duration,
    /// Self-signed root lifetime while there is no Mesh; a Mesh without `spec.ca.rootCertTtl`
    /// gets [`DEFAULT_ROOT_CERT_TTL`].
    pub root_cert_ttl: Duration,
    /// The trust domain while there is no Mesh (`TRELLIS_TRUST_DOMAIN`).
    pub trust_domain: String,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            namespace: SYSTEM_NAMESPACE.to_string(),
            proxy_image: format!("ghcr.io/trellis-mesh/trellis-proxy:{}", env!("CARGO_PKG_VERSION")),
            workload_cert_ttl: DEFAULT_WORKLOAD_TTL,
            root_cert_ttl: DEFAULT_ROOT_TTL,
            trust_domain: DEFAULT_TRUST_DOMAIN.to_string(),
        }
    }
}

/// Flags the operator cannot act on where there is no Mesh; the message names the flag, its
/// variable and what to set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DefaultsError {
    /// A workload certificate lifetime of zero.
    #[error(
        "TRELLIS_WORKLOAD_CERT_TTL_SECONDS (--workload-cert-ttl-seconds) is 0: set it to the lifetime of \
         workload certificates while there is no Mesh, in seconds (86400 by default)"
    )]
    ZeroWorkloadCertTtl,
    /// A workload certificate lifetime over half the root's.
    #[error(
        "TRELLIS_WORKLOAD_CERT_TTL_SECONDS (--workload-cert-ttl-seconds) is {}: a workload certificate must \
         live at most half as long as its root ({} s while there is no Mesh), so leaves never outlive their \
         root: set it to at most {}, or leave it out and set spec.ca.workloadCertTtl in the Mesh",
        workload.as_secs(),
        root.as_secs(),
        (*root / 2).as_secs()
    )]
    WorkloadCertOutlivesRoot { workload: Duration, root: Duration },
}

impl Defaults {
    /// The defaults, if the flags' workload certificate lifetime fits the root's as the
    /// validator requires of a Mesh (at most half of it, so leaves never outlive their root);
    /// else what to set, naming the flag.
    pub fn checked(self) -> Result<Defaults, DefaultsError> {
        let (workload, root) = (self.workload_cert_ttl, self.root_cert_ttl);
        if workload.is_zero() {
            return Err(DefaultsError::ZeroWorkloadCertTtl);
        }
        if workload * 2 > root {
            return Err(DefaultsError::WorkloadCertOutlivesRoot { workload, root });
        }
        Ok(self)
    }
}

/// The certificate authority's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaSettings {
    /// Self-signed, or plugged from a Secret.
    pub mode: CaMode,
    /// For `Plugged`: the Secret (namespace, name) holding `ca.crt` and `ca.key`.
    pub plugged_from: Option<(String, String)>,
    /// Lifetime of workload certificates.
    pub workload_cert_ttl: Duration,
    /// Lifetime of a self-signed root.
    pub root_cert_ttl: Duration,
}

/// How many workloads a rollout wave restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Batch {
    /// This many.
    Size(u32),
    /// This share of the meshed workloads, rounded up.
    Percent(u32),
}

impl Batch {
    /// Workloads per wave out of `total` (at least one).
    pub fn of(self, total: usize) -> usize {
        match self {
            Batch::Size(n) => n as usize,
            Batch::Percent(p) => (total * p as usize).div_ceil(100),
        }
        .max(1)
    }
}

/// The proxy rollout's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutSettings {
    /// Workloads per wave.
    pub batch: Batch,
    /// Namespaces whose workloads go first.
    pub canary_namespaces: BTreeSet<String>,
    /// Labels marking workloads that go first.
    pub canary_labels: BTreeMap<String, String>,
    /// Soak after a healthy wave.
    pub pause: Duration,
    /// How long a wave may take to become healthy.
    pub progress_deadline: Duration,
    /// No new wave starts.
    pub paused: bool,
    /// What a wave must meet.
    pub gates: BTreeSet<HealthGate>,
}

/// Everything the operator acts on, from one valid Mesh (or the defaults).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// SPIFFE trust domain.
    pub trust_domain: String,
    /// Other trust domains whose identities are accepted as the trust domain's.
    pub trust_domain_aliases: Vec<String>,
    /// Certificate authority.
    pub ca: CaSettings,
    /// Mesh-wide default mTLS mode (the compiler reads it from the Mesh too).
    pub default_mtls_mode: MtlsMode,
    /// The proxy image workloads should run.
    pub proxy_image: String,
    /// The operator image the control plane should run (`None`: whatever it runs).
    pub operator_image: Option<String>,
    /// Proxy rollout.
    pub rollout: RolloutSettings,
}

/// A Mesh the operator will not act on, with every error the validator found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the Mesh is invalid: {}", .0.iter().map(|f| if f.path.is_empty() { f.message.clone() } else { format!("{}: {}", f.path, f.message) }).collect::<Vec<_>>().join("; "))]
pub struct Invalid(pub Vec<Finding>);

fn duration(value: &Option<String>, default: &str) -> Duration {
    // Checked by the validator before this runs; a default always parses.
    value
        .as_deref()
        .and_then(|v| trellis_api::duration::parse(v).ok())
        .or_else(|| trellis_api::duration::parse(default).ok())
        .unwrap_or_default()
}

/// Whether the operator may act on `mesh`: every error the one validator finds in it, or none.
/// The live index keeps the last Mesh that passes in force ([`crate::index::Index::mesh`]), so
/// the settings every replica follows and the spec the compiler reads are the same one.
pub fn check(mesh: &Mesh) -> Result<(), Invalid> {
    let value = serde_json::to_value(mesh).map_err(|e| {
        Invalid(vec![Finding {
            severity: Severity::Error,
            object: trellis_api::validation::ObjectRef {
                kind: "Mesh".into(),
                namespace: None,
                name: mesh.metadata.name.clone().unwrap_or_default(),
            },
            path: String::new(),
            message: format!("cannot be read: {e}"),
        }])
    })?;
    let errors: Vec<Finding> = match validate(&value) {
        Outcome::Validated { findings, .. } => findings.into_iter().filter(|f| f.severity == Severity::Error).collect(),
        Outcome::Skipped(_) => Vec::new(),
    };
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Invalid(errors))
    }
}

impl Settings {
    /// The settings of an installation with no Mesh.
    pub fn defaults(defaults: &Defaults) -> Settings {
        let mut settings = Settings::from_spec(&MeshSpec::default(), defaults);
        settings.trust_domain = defaults.trust_domain.clone();
        settings.ca.workload_cert_ttl = defaults.workload_cert_ttl;
        settings.ca.root_cert_ttl = defaults.root_cert_ttl;
        settings
    }

    /// The settings of `mesh`, or every error that keeps the operator from acting on it.
    pub fn from_mesh(mesh: &Mesh, defaults: &Defaults) -> Result<Settings, Invalid> {
        check(mesh)?;
        Ok(Settings::from_spec(&mesh.spec, defaults))
    }

    fn from_spec(spec: &MeshSpec, defaults: &Defaults) -> Settings {
        let ca = spec.ca.clone().unwrap_or_default();
        let mode = ca.mode.unwrap_or(CaMode::SelfSigned);
        let rollout = spec.rollout.clone().unwrap_or_default();
        let canary = rollout.canary.clone().unwrap_or_default();
        Settings {
            trust_domain: spec
                .trust_domain
                .clone()
                .unwrap_or_else(|| DEFAULT_TRUST_DOMAIN.to_string()),
            trust_domain_aliases: spec.trust_domain_aliases.clone().unwrap_or_default(),
            ca: CaSettings {
                mode,
                plugged_from: ca
                    .secret_ref
                    .filter(|_| mode == CaMode::Plugged)
                    .map(|s| (s.namespace.unwrap_or_else(|| defaults.namespace.clone()), s.name)),
                // The documented defaults, as the validator checks them: not the flags.
                workload_cert_ttl: duration(&ca.workload_cert_ttl, DEFAULT_WORKLOAD_CERT_TTL),
                root_cert_ttl: duration(&ca.root_cert_ttl, DEFAULT_ROOT_CERT_TTL),
            },
            default_mtls_mode: spec.default_mtls_mode.unwrap_or(MtlsMode::Permissive),
            operator_image: spec.versions.as_ref().and_then(|v| v.operator.clone()),
            proxy_image: spec
                .versions
                .as_ref()
                .and_then(|v| v.proxy.clone())
                .unwrap_or_else(|| defaults.proxy_image.clone()),
            rollout: RolloutSettings {
                batch: match (rollout.batch_size, rollout.batch_percent) {
                    (_, Some(p)) => Batch::Percent(p),
                    (Some(n), None) => Batch::Size(n),
                    (None, None) => Batch::Size(DEFAULT_ROLLOUT_BATCH),
                },
                canary_namespaces: canary.namespaces.unwrap_or_default().into_iter().collect(),
                canary_labels: canary.match_labels.unwrap_or_default(),
                pause: duration(&rollout.pause, DEFAULT_ROLLOUT_PAUSE),
                progress_deadline: duration(&rollout.progress_deadline, DEFAULT_PROGRESS_DEADLINE),
                paused: rollout.paused.unwrap_or(false),
                gates: rollout
                    .health_gates
                    .map(|g| g.into_iter().collect())
                    .unwrap_or_else(|| HealthGate::ALL.into_iter().collect()),
            },
        }
    }
}

impl Settings {
    /// The settings of the spec the live index keeps in force ([`crate::index::Index::mesh`]:
    /// the last valid Mesh's, already [`check`]ed; `None`: no valid Mesh, the defaults).
    pub fn in_force(spec: Option<&MeshSpec>, defaults: &Defaults) -> Settings {
        match spec {
            None => Settings::defaults(defaults),
            Some(spec) => Settings::from_spec(spec, defaults),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use serde_json::json;

    use super::*;

    pub(crate) fn mesh(spec: serde_json::Value) -> Mesh {
        serde_json::from_value(json!({
            "apiVersion": "mesh.trellis.dev/v1alpha1",
            "kind": "Mesh",
            "metadata": {"name": "default"},
            "spec": spec,
        }))
        .unwrap()
    }

    #[test]
    fn an_empty_spec_is_the_defaults() {
        let defaults = Defaults::default();
        let s = Settings::from_mesh(&mesh(json!({})), &defaults).unwrap();
        assert_eq!(s, Settings::defaults(&defaults));
        assert_eq!(s.trust_domain, "cluster.local");
        assert_eq!(s.proxy_image, defaults.proxy_image);
        assert_eq!(s.rollout.batch, Batch::Size(1));
        assert_eq!(s.rollout.pause, Duration::from_secs(30));
        assert_eq!(s.rollout.gates.len(), 3);
        assert_eq!(s.ca.workload_cert_ttl, defaults.workload_cert_ttl);
    }

    #[test]
    fn every_field_is_read() {
        let s = Settings::from_mesh(
            &mesh(json!({
                "versions": {"proxy": "registry.example/proxy:2"},
                "trustDomain": "example.org",
                "ca": {"mode": "Plugged", "secretRef": {"name": "cacerts"}, "workloadCertTtl": "1h", "rootCertTtl": "48h"},
                "defaultMtlsMode": "STRICT",
                "injection": {"namespaceLabel": "trellis.dev/inject", "nativeSidecar": true},
                "rollout": {"batchPercent": 25, "canary": {"namespaces": ["staging"], "matchLabels": {"tier": "canary"}},
                            "pause": "5s", "progressDeadline": "2m", "paused": true, "healthGates": ["PodsReady"]},
            })),
            &Defaults::default(),
        )
        .unwrap();
        assert_eq!(s.trust_domain, "example.org");
        assert_eq!(s.proxy_image, "registry.example/proxy:2");
        assert_eq!(s.ca.mode, CaMode::Plugged);
        assert_eq!(s.ca.plugged_from, Some(("trellis-system".into(), "cacerts".into())));
        // An operator installed elsewhere (under OLM: the OperatorGroup's namespace) looks in
        // its own namespace.
        let elsewhere = Defaults {
            namespace: "operators".into(),
            ..Defaults::default()
        };
        let other = Settings::from_mesh(
            &mesh(json!({"ca": {"mode": "Plugged", "secretRef": {"name": "cacerts"}}})),
            &elsewhere,
        )
        .unwrap();
        assert_eq!(other.ca.plugged_from, Some(("operators".into(), "cacerts".into())));
        assert_eq!(s.ca.workload_cert_ttl, Duration::from_secs(3600));
        assert_eq!(s.ca.root_cert_ttl, Duration::from_secs(48 * 3600));
        assert_eq!(s.default_mtls_mode, MtlsMode::Strict);
        assert_eq!(s.rollout.batch, Batch::Percent(25));
        assert_eq!(s.rollout.batch.of(10), 3, "25 % of 10, rounded up");
        assert!(s.rollout.canary_namespaces.contains("staging"));
        assert_eq!(s.rollout.canary_labels.get("tier").map(String::as_str), Some("canary"));
        assert_eq!(s.rollout.pause, Duration::from_secs(5));
        assert_eq!(s.rollout.progress_deadline, Duration::from_secs(120));
        assert!(s.rollout.paused);
        assert_eq!(s.rollout.gates, [HealthGate::PodsReady].into_iter().collect());
    }

    #[test]
    fn a_mesh_leaving_a_lifetime_out_gets_its_documented_default_not_the_flag() {
        // The operator runs with TRELLIS_WORKLOAD_CERT_TTL_SECONDS=108000 (30h).
        let defaults = Defaults {
            workload_cert_ttl: Duration::from_secs(30 * 3600),
            ..Defaults::default()
        }
        .checked()
        .unwrap();
        // Valid to the validator, which counts the default 24h for the lifetime left out: at
        // most half the 48h root. The operator signs what the validator checked, not 30h
        // leaves outliving half their root.
        let s = Settings::from_mesh(&mesh(json!({"ca": {"rootCertTtl": "48h"}})), &defaults).unwrap();
        assert_eq!(
            (s.ca.workload_cert_ttl, s.ca.root_cert_ttl),
            (Duration::from_secs(24 * 3600), Duration::from_secs(48 * 3600))
        );
        let s = Settings::from_mesh(&mesh(json!({})), &defaults).unwrap();
        assert_eq!(s.ca.workload_cert_ttl, Duration::from_secs(24 * 3600));
        // No Mesh: the flag.
        assert_eq!(
            Settings::defaults(&defaults).ca.workload_cert_ttl,
            Duration::from_secs(30 * 3600)
        );
        // A flag the validator would refuse in a Mesh is refused at start, naming the fix.
        let too_long = Defaults {
            workload_cert_ttl: Duration::from_secs(50_000 * 3600),
            ..Defaults::default()
        };
        let why = too_long.checked().unwrap_err().to_string();
        assert!(
            why.contains("TRELLIS_WORKLOAD_CERT_TTL_SECONDS (--workload-cert-ttl-seconds) is 180000000")
                && why.contains("set it to at most 157680000"),
            "{why}"
        );
        let zero = Defaults {
            workload_cert_ttl: Duration::ZERO,
            ..Defaults::default()
        };
        let why = zero.checked().unwrap_err();
        assert_eq!(why, DefaultsError::ZeroWorkloadCertTtl);
        assert!(why.to_string().contains("is 0"), "{why}");
    }

    #[test]
    fn injection_settings_trellis_cannot_honour_are_refused_not_ignored() {
        let invalid = Settings::from_mesh(
            &mesh(json!({"injection": {"namespaceLabel": "example.org/mesh", "nativeSidecar": false}})),
            &Defaults::default(),
        )
        .unwrap_err();
        let text = invalid.to_string();
        assert!(
            text.contains("spec.injection.namespaceLabel: namespaceLabel other than trellis.dev/inject is not supported by Trellis yet"),
            "{text}"
        );
        assert!(
            text.contains("spec.injection.nativeSidecar: nativeSidecar: false is not supported by Trellis yet"),
            "{text}"
        );
    }

    #[test]
    fn contradictory_settings_are_refused_whole() {
        let invalid = Settings::from_mesh(
            &mesh(json!({
                "versions": {"proxy": "registry.example/proxy:2"},
                "ca": {"workloadCertTtl": "48h", "rootCertTtl": "72h"},
                "rollout": {"batchSize": 2, "batchPercent": 10},
            })),
            &Defaults::default(),
        )
        .unwrap_err();
        let text = invalid.to_string();
        assert!(text.contains("spec.ca.workloadCertTtl"), "{text}");
        assert!(text.contains("batchPercent, not both"), "{text}");
    }
}
