//! The push API between `trellis-operator` and `trellis-proxy`: gRPC services generated from
//! `proto/trellis/push/v1/push.proto`, and the conversions between a [`Snapshot`] and the
//! contract's [`ProxyConfig`]. Kube-free: the proxy links it.

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

pub mod client;

use std::time::{Duration, SystemTime};

use trellis_contract::ProxyConfig;
pub use v1::{Ack, Hello, Nack, ProxyMessage, SignRequest, SignResponse, Snapshot, proxy_message};

/// Default port of the operator's push and certificate API (Istio's istiod port).
pub const PUSH_PORT: u16 = 15012;

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
}

impl Snapshot {
    /// Wrap a configuration.
    pub fn from_config(config: &ProxyConfig) -> Snapshot {
        Snapshot {
            version: config.version.clone(),
            config_json: config.to_json().into_bytes(),
            renew_unless_issued_by: String::new(),
        }
    }

    /// Unwrap the configuration (not yet validated: the proxy runs `ProxyConfig::validate`).
    pub fn config(&self) -> Result<ProxyConfig, SnapshotError> {
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
        };
        assert!(garbage.config().unwrap_err().to_string().contains("snapshot \"v9\""));
    }
}
