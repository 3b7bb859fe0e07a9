//! The push API between `trellis-operator` and `trellis-proxy`: gRPC services generated from
//! `proto/trellis/push/v1/push.proto`, and the conversions between a [`Snapshot`] and the
//! contract's [`ProxyConfig`]: a snapshot carries either a whole config or a
//! [`ConfigDelta`] against the version the proxy holds ([`Snapshot::apply_to`]).
//! Kube-free: the proxy links it.

/// Generated code (lints do not apply to it).
#[allow(
    missing_docs,
    unreachable_pub,
    clippy::all,
    rust_2018_idioms,
    missing_debug_implementations
)]
pub mod v1 {
    tonic::include_proto!("trellis.push.v1");
}

pub mod chunks;
pub mod client;
pub mod codec;
pub mod identity;
#[cfg(feature = "testing")]
pub mod testing;

use std::time::{Duration, SystemTime};

pub use chunks::{CHUNK_BYTES, ChunkError, Reassembly};
use trellis_contract::certificate::ServedCertificate;
use trellis_contract::signals::Report;
use trellis_contract::{ConfigDelta, DeltaError, ProxyConfig};
pub use v1::{
    Ack, Certificate, Hello, Nack, ProxyMessage, SignRequest, SignResponse, Signals, Snapshot, proxy_message,
};

/// Default port of the operator's push and certificate API (Istio's istiod port).
pub const PUSH_PORT: u16 = 15012;

/// How often a proxy reports its golden signals (when it handled requests since the last
/// report).
// why: ten seconds is the resolution of `meshctl stat`'s windows (the operator keeps 10 s
// slots) and costs the operator one small message per proxy per 10 s: 100 a second at 1000 proxies.
pub const SIGNALS_INTERVAL: Duration = Duration::from_secs(10);

/// How long a proxy keeps the reports it sent, to send them again after a handover: the
/// operator's longest traffic window (`trellis_core::traffic::MAX_WINDOW_SECONDS`).
pub const SIGNALS_WINDOW: Duration = Duration::from_secs(300);

/// The trailer with which an operator replica that stops ends a subscription: its traffic
/// view of the proxy goes with it, so the proxy sends its recent reports again on its next
/// subscription (`push.proto`, `Signals`).
pub const HANDOVER_TRAILER: &str = "trellis-handover";
/// [`HANDOVER_TRAILER`]'s value: the golden-signal reports are handed over.
pub const HANDOVER_SIGNALS: &str = "signals";

/// The status an operator replica that stops ends each subscription with.
pub fn handover_status() -> tonic::Status {
    let mut status = tonic::Status::unavailable("this operator replica is stopping; subscribe again to another");
    status.metadata_mut().insert(
        HANDOVER_TRAILER,
        tonic::metadata::MetadataValue::from_static(HANDOVER_SIGNALS),
    );
    status
}

/// Whether a subscription ended with [`handover_status`].
pub fn is_handover(status: &tonic::Status) -> bool {
    status
        .metadata()
        .get(HANDOVER_TRAILER)
        .is_some_and(|v| v == HANDOVER_SIGNALS)
}

/// The largest snapshot a proxy accepts, in bytes. Whole configs of a mesh of 1000 services
/// are several MiB, beyond tonic's default limit of 4 MiB; the operator sends deltas where
/// it can, but a proxy must still take a whole config on connect or after a NACK.
pub const MAX_SNAPSHOT_BYTES: usize = 64 << 20;

/// A snapshot that cannot be turned into a configuration.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The bytes are not a contract config.
    #[error("snapshot {version:?} is not a valid proxy config: {source}")]
    Parse {
        /// The snapshot's version.
        version: String,
        /// Why.
        source: serde_json::Error,
    },
    /// The snapshot's version and the config's disagree.
    #[error("snapshot version {snapshot:?} does not match its config's version {config:?}")]
    VersionMismatch {
        /// In the envelope.
        snapshot: String,
        /// In the config.
        config: String,
    },
    /// The snapshot is a delta: it needs the config it applies to ([`Snapshot::apply_to`]).
    #[error(
        "snapshot {version:?} is a delta against version {base_version:?}, not a whole config; apply it to that version"
    )]
    NotWhole {
        /// The snapshot's version.
        version: String,
        /// The version it applies to.
        base_version: String,
    },
    /// The delta bytes are not a contract delta.
    #[error("snapshot {version:?} is not a valid config delta: {source}")]
    DeltaParse {
        /// The snapshot's version.
        version: String,
        /// Why.
        source: serde_json::Error,
    },
    /// The envelope's versions and the delta's disagree.
    #[error(
        "snapshot {snapshot_base}→{snapshot_version} carries a delta {delta_base}→{delta_version}; the operator must send matching versions"
    )]
    DeltaVersionMismatch {
        /// The envelope's `base_version`.
        snapshot_base: String,
        /// The envelope's `version`.
        snapshot_version: String,
        /// The delta's `baseVersion`.
        delta_base: String,
        /// The delta's `version`.
        delta_version: String,
    },
    /// A delta arrived before any whole config.
    #[error(
        "snapshot {version:?} is a delta against version {base_version:?}, but this proxy holds no pushed config yet: a full snapshot is needed"
    )]
    NoBase {
        /// The snapshot's version.
        version: String,
        /// The version it applies to.
        base_version: String,
    },
    /// The delta does not apply to the config held (another version, or inconsistent).
    #[error("snapshot {version:?}: {source}")]
    Delta {
        /// The snapshot's version.
        version: String,
        /// Why (boxed: the error stays small on the success path).
        source: Box<DeltaError>,
    },
}

impl Snapshot {
    /// Wrap a configuration.
    pub fn from_config(config: &ProxyConfig) -> Snapshot {
        Snapshot {
            version: config.version.clone(),
            config_json: config.to_json().into_bytes(),
            renew_unless_issued_by: String::new(),
            base_version: String::new(),
            delta_json: Vec::new(),
            more: false,
        }
    }

    /// Wrap a delta (its versions become the envelope's).
    ///
    /// # Errors
    /// Only if the delta cannot be serialized, which contract types never cause.
    pub fn from_delta(delta: &ConfigDelta) -> Result<Snapshot, serde_json::Error> {
        Ok(Snapshot {
            version: delta.version.clone(),
            config_json: Vec::new(),
            renew_unless_issued_by: String::new(),
            base_version: delta.base_version.clone(),
            delta_json: serde_json::to_vec(delta)?,
            more: false,
        })
    }

    /// Whether this snapshot is a delta (it names a base version) rather than a whole config.
    pub fn is_delta(&self) -> bool {
        !self.base_version.is_empty()
    }

    /// Unwrap a whole configuration (not yet validated: the proxy runs
    /// `ProxyConfig::validate`). A delta is refused with [`SnapshotError::NotWhole`].
    pub fn config(&self) -> Result<ProxyConfig, SnapshotError> {
        if self.is_delta() {
            return Err(SnapshotError::NotWhole {
                version: self.version.clone(),
                base_version: self.base_version.clone(),
            });
        }
        let config: ProxyConfig = serde_json::from_slice(&self.config_json).map_err(|source| SnapshotError::Parse {
            version: self.version.clone(),
            source,
        })?;
        if config.version != self.version {
            return Err(SnapshotError::VersionMismatch {
                snapshot: self.version.clone(),
                config: config.version,
            });
        }
        Ok(config)
    }

    /// The configuration this snapshot gives a proxy holding `current` (the last pushed
    /// config it applied, as received): a whole config as [`Snapshot::config`] returns it, or
    /// `current` with the delta applied. Not yet validated.
    ///
    /// # Errors
    /// A whole config as [`Snapshot::config`]; for a delta: [`SnapshotError::DeltaParse`],
    /// [`SnapshotError::DeltaVersionMismatch`] when the envelope and the delta disagree,
    /// [`SnapshotError::NoBase`] without a current config, and [`SnapshotError::Delta`] when
    /// it does not apply (the message says a full snapshot is needed when `current` is
    /// another version). `current` is never modified.
    pub fn apply_to(&self, current: Option<&ProxyConfig>) -> Result<ProxyConfig, SnapshotError> {
        if !self.is_delta() {
            return self.config();
        }
        let delta: ConfigDelta =
            serde_json::from_slice(&self.delta_json).map_err(|source| SnapshotError::DeltaParse {
                version: self.version.clone(),
                source,
            })?;
        if delta.version != self.version || delta.base_version != self.base_version {
            return Err(SnapshotError::DeltaVersionMismatch {
                snapshot_base: self.base_version.clone(),
                snapshot_version: self.version.clone(),
                delta_base: delta.base_version,
                delta_version: delta.version,
            });
        }
        let current = current.ok_or_else(|| SnapshotError::NoBase {
            version: self.version.clone(),
            base_version: self.base_version.clone(),
        })?;
        delta.apply(current).map_err(|source| SnapshotError::Delta {
            version: self.version.clone(),
            source: Box::new(source),
        })
    }
}

impl ProxyMessage {
    /// A Hello.
    pub fn hello(h: Hello) -> Self {
        ProxyMessage {
            kind: Some(proxy_message::Kind::Hello(h)),
        }
    }

    /// An Ack.
    pub fn ack(version: impl Into<String>) -> Self {
        ProxyMessage {
            kind: Some(proxy_message::Kind::Ack(Ack {
                version: version.into(),
            })),
        }
    }

    /// A Nack.
    pub fn nack(version: impl Into<String>, error: impl Into<String>) -> Self {
        ProxyMessage {
            kind: Some(proxy_message::Kind::Nack(Nack {
                version: version.into(),
                error: error.into(),
            })),
        }
    }

    /// A golden-signals report of the requests since the previous one.
    pub fn signals(report: &Report) -> Self {
        Self::signals_aged(report, 0)
    }

    /// A golden-signals report first sent `age_seconds` ago, sent again after a handover
    /// ([`is_handover`]).
    pub fn signals_aged(report: &Report, age_seconds: u32) -> Self {
        ProxyMessage {
            kind: Some(proxy_message::Kind::Signals(Signals {
                report_json: serde_json::to_vec(report).expect("a report serializes"),
                age_seconds,
            })),
        }
    }

    /// A report of the workload certificate the proxy serves now.
    pub fn certificate(served: &ServedCertificate) -> Self {
        ProxyMessage {
            kind: Some(proxy_message::Kind::Certificate(Certificate {
                certificate_json: certificate_json(served),
            })),
        }
    }
}

/// A certificate report as it goes on the wire (in [`Hello`] and [`Certificate`]).
pub fn certificate_json(served: &ServedCertificate) -> Vec<u8> {
    serde_json::to_vec(served).expect("a certificate report serializes")
}

/// The certificate report in `json` (from [`Hello::certificate_json`] or
/// [`Certificate::certificate_json`]), parsed and checked ([`ServedCertificate::check`]);
/// `Ok(None)` when empty (the proxy had none to report).
pub fn served_certificate(json: &[u8]) -> Result<Option<ServedCertificate>, String> {
    if json.is_empty() {
        return Ok(None);
    }
    let served: ServedCertificate =
        serde_json::from_slice(json).map_err(|e| format!("not a certificate report: {e}"))?;
    served.check().map_err(|e| e.to_string())?;
    Ok(Some(served))
}

impl Signals {
    /// The report, parsed and checked ([`Report::check`]).
    pub fn report(&self) -> Result<Report, String> {
        let report: Report =
            serde_json::from_slice(&self.report_json).map_err(|e| format!("not a signals report: {e}"))?;
        report.check().map_err(|e| e.to_string())?;
        Ok(report)
    }
}

/// When a certificate valid from `not_before` to `not_after` should be renewed: at half its
/// lifetime, moved by `jitter` (a fraction in -1.0..=1.0 of a tenth of the lifetime) so a fleet
/// issued together does not renew together.
pub fn renewal_time(not_before: SystemTime, not_after: SystemTime, jitter: f64) -> SystemTime {
    let lifetime = not_after.duration_since(not_before).unwrap_or_default();
    let half = lifetime / 2;
    let spread = lifetime.as_secs_f64() / 10.0 * jitter.clamp(-1.0, 1.0);
    if spread >= 0.0 {
        not_before + half + Duration::from_secs_f64(spread)
    } else {
        not_before + half - Duration::from_secs_f64(-spread)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_round_trip_and_check_versions() {
        let cfg = ProxyConfig::empty("v7");
        let snap = Snapshot::from_config(&cfg);
        assert_eq!(snap.config().unwrap(), cfg);
        let bad = Snapshot {
            version: "v8".into(),
            ..snap.clone()
        };
        assert!(matches!(bad.config(), Err(SnapshotError::VersionMismatch { .. })));
        let garbage = Snapshot {
            version: "v9".into(),
            config_json: b"{".to_vec(),
            renew_unless_issued_by: String::new(),
            base_version: String::new(),
            delta_json: Vec::new(),
            more: false,
        };
        assert!(garbage.config().unwrap_err().to_string().contains("snapshot \"v9\""));
    }

    fn delta_v1_v2() -> ConfigDelta {
        let mut delta = ConfigDelta::new("v1", "v2");
        delta.drain_timeout_ms = Some(1_000);
        delta.dns_upstreams = Some(vec!["10.96.0.10:53".into()]);
        delta
    }

    #[test]
    fn a_whole_snapshot_replaces_whatever_is_held() {
        let held = ProxyConfig::empty("v1");
        let snap = Snapshot::from_config(&ProxyConfig::empty("v5"));
        assert_eq!(snap.apply_to(Some(&held)).unwrap(), ProxyConfig::empty("v5"));
        assert_eq!(snap.apply_to(None).unwrap(), ProxyConfig::empty("v5"));
        assert!(!snap.is_delta());
    }

    #[test]
    fn a_delta_applies_to_the_config_held() {
        let held = ProxyConfig::empty("v1");
        let snap = Snapshot::from_delta(&delta_v1_v2()).unwrap();
        assert!(snap.is_delta() && snap.config_json.is_empty());
        assert_eq!((snap.base_version.as_str(), snap.version.as_str()), ("v1", "v2"));
        let out = snap.apply_to(Some(&held)).unwrap();
        assert_eq!(out.version, "v2");
        assert_eq!(out.drain_timeout_ms, 1_000);
        assert_eq!(out.dns.upstreams, ["10.96.0.10:53"]);
        assert_eq!(held, ProxyConfig::empty("v1"), "the held config is untouched");
        // A delta is not a whole config.
        let err = snap.config().unwrap_err();
        assert!(matches!(err, SnapshotError::NotWhole { .. }), "{err}");
    }

    #[test]
    fn a_delta_needs_its_base() {
        let snap = Snapshot::from_delta(&delta_v1_v2()).unwrap();
        let err = snap.apply_to(None).unwrap_err();
        assert!(matches!(err, SnapshotError::NoBase { .. }), "{err}");
        assert!(err.to_string().contains("a full snapshot is needed"), "{err}");

        let err = snap.apply_to(Some(&ProxyConfig::empty("v0"))).unwrap_err();
        assert!(
            matches!(&err, SnapshotError::Delta { source, .. }
                if **source == DeltaError::Base { expected: "v1".into(), found: "v0".into() }),
            "{err}"
        );
        assert!(err.to_string().contains("a full snapshot is needed"), "{err}");
    }

    #[test]
    fn a_delta_must_match_its_envelope_and_parse() {
        let held = ProxyConfig::empty("v1");
        let snap = Snapshot::from_delta(&delta_v1_v2()).unwrap();
        for bad in [
            Snapshot {
                version: "v3".into(),
                ..snap.clone()
            },
            Snapshot {
                base_version: "v0".into(),
                ..snap.clone()
            },
        ] {
            let err = bad.apply_to(Some(&held)).unwrap_err();
            assert!(matches!(err, SnapshotError::DeltaVersionMismatch { .. }), "{err}");
        }
        let garbage = Snapshot {
            delta_json: br#"{"version": "v2"}"#.to_vec(),
            more: false,
            ..snap
        };
        let err = garbage.apply_to(Some(&held)).unwrap_err();
        assert!(matches!(err, SnapshotError::DeltaParse { .. }), "{err}");
        assert!(err.to_string().contains("baseVersion"), "{err}");
    }
}
