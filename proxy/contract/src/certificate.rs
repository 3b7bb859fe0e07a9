//! The workload certificate a proxy serves, as it tells the operator over the push
//! subscription it already holds: in its Hello, and again whenever it loads another one. The
//! operator keeps it per connected proxy (and drops it with the subscription), so `meshctl
//! check` sees, mesh-wide, which root signed each running proxy's current certificate — not
//! which root an operator replica remembers signing.
//!
//! # Guarantees
//! - [`ServedCertificate::check`] bounds what a proxy may send: a SHA-256 fingerprint, a serial
//!   of at most [`MAX_SERIAL_CHARS`] hex characters, and a validity that ends after it starts.
//!   The operator drops a report that fails it.
//! - Metadata only: never a key, never the certificate itself.
//!
//! # Caveats
//! - The root is the one the operator's CA named when it signed the leaf (the proxy does not
//!   re-derive it); the leaf's serial and validity let `meshctl proxy-config secret` confirm it
//!   is the certificate the proxy serves.

use serde::{Deserialize, Serialize};

/// The longest serial accepted, in characters: RFC 5280 allows 20 octets, written as hex with
/// `:` between octets (as `meshctl proxy-config secret` shows it) that is 59.
// why: a little room over 59 for encoders that add a leading zero octet, and a hard bound on
// what one report makes the operator hold.
pub const MAX_SERIAL_CHARS: usize = 64;

/// The longest SPIFFE ID accepted in a report (the SPIFFE specification's URI limit).
pub const MAX_SPIFFE_ID_CHARS: usize = 2048;

/// The certificate a proxy serves now.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServedCertificate {
    /// SHA-256 fingerprint (64 lowercase hex characters) of the root the certificate chains
    /// to, as the CA named it when it signed it.
    pub root_fingerprint: String,
    /// The certificate's serial number, hex (octets may be separated by `:`).
    pub serial: String,
    /// Start of validity (seconds since the epoch).
    pub not_before_unix: u64,
    /// End of validity (seconds since the epoch).
    pub not_after_unix: u64,
    /// The certificate's SPIFFE ID (empty: a proxy that does not report it). During a trust
    /// domain change the operator counts the proxies still serving the previous domain by it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub spiffe_id: String,
}

/// Why a certificate report is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertificateReportError {
    /// The root fingerprint is not SHA-256 in lowercase hex.
    #[error("rootFingerprint {0:?} is not a SHA-256 fingerprint (64 lowercase hex characters)")]
    Fingerprint(String),
    /// The serial is empty, too long or not hex.
    #[error("serial {0:?} is not a certificate serial (1 to 64 hex characters, octets optionally separated by ':')")]
    Serial(String),
    /// The SPIFFE ID is not one.
    #[error("spiffeId: {0}")]
    SpiffeId(crate::SpiffeIdError),
    /// The validity ends before it starts.
    #[error("notAfterUnix {not_after} is before notBeforeUnix {not_before}")]
    Validity {
        /// Start.
        not_before: u64,
        /// End.
        not_after: u64,
    },
}

impl ServedCertificate {
    /// Whether the report is well formed and within bounds.
    pub fn check(&self) -> Result<(), CertificateReportError> {
        let fp = &self.root_fingerprint;
        if fp.len() != 64 || !fp.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(CertificateReportError::Fingerprint(truncated(fp)));
        }
        let s = &self.serial;
        if s.is_empty()
            || s.len() > MAX_SERIAL_CHARS
            || !s.bytes().all(|b| b.is_ascii_hexdigit() || b == b':')
            || !s.bytes().any(|b| b.is_ascii_hexdigit())
        {
            return Err(CertificateReportError::Serial(truncated(s)));
        }
        if !self.spiffe_id.is_empty() {
            if self.spiffe_id.len() > MAX_SPIFFE_ID_CHARS {
                return Err(CertificateReportError::SpiffeId(crate::SpiffeIdError::Path(truncated(
                    &self.spiffe_id,
                ))));
            }
            crate::SpiffeId::parse(&self.spiffe_id).map_err(CertificateReportError::SpiffeId)?;
        }
        if self.not_after_unix < self.not_before_unix {
            return Err(CertificateReportError::Validity {
                not_before: self.not_before_unix,
                not_after: self.not_after_unix,
            });
        }
        Ok(())
    }
}

/// At most 80 characters of `s`, for an error message about a value that may be huge.
fn truncated(s: &str) -> String {
    s.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served() -> ServedCertificate {
        ServedCertificate {
            root_fingerprint: "ab".repeat(32),
            serial: "1a:2b:3c".into(),
            not_before_unix: 1_800_000_000,
            not_after_unix: 1_800_086_400,
            spiffe_id: "spiffe://cluster.local/ns/shop/sa/web".into(),
        }
    }

    #[test]
    fn a_well_formed_report_passes_and_round_trips() {
        let c = served();
        assert_eq!(c.check(), Ok(()));
        let json = serde_json::to_string(&c).unwrap();
        assert!(json.contains("\"rootFingerprint\""), "{json}");
        assert_eq!(serde_json::from_str::<ServedCertificate>(&json).unwrap(), c);
        let plain = ServedCertificate {
            serial: "00ff".into(),
            ..served()
        };
        assert_eq!(plain.check(), Ok(()));
    }

    #[test]
    fn fingerprints_serials_and_validity_are_bounded() {
        for fp in [
            "",
            "AB".repeat(32).as_str(),
            "ab".repeat(33).as_str(),
            "zz".repeat(32).as_str(),
        ] {
            let c = ServedCertificate {
                root_fingerprint: fp.into(),
                ..served()
            };
            assert!(
                matches!(c.check(), Err(CertificateReportError::Fingerprint(_))),
                "{fp:?}"
            );
        }
        for serial in ["", ":", "xyz", "ab".repeat(33).as_str()] {
            let c = ServedCertificate {
                serial: serial.into(),
                ..served()
            };
            assert!(
                matches!(c.check(), Err(CertificateReportError::Serial(_))),
                "{serial:?}"
            );
        }
        let huge = ServedCertificate {
            serial: "g".repeat(10_000),
            ..served()
        };
        let e = huge.check().unwrap_err().to_string();
        assert!(e.len() < 200, "the error quotes a bounded part: {e}");
        for id in ["cluster.local/ns/shop/sa/web", "spiffe://Bad/ns/a"] {
            let c = ServedCertificate {
                spiffe_id: id.into(),
                ..served()
            };
            assert!(matches!(c.check(), Err(CertificateReportError::SpiffeId(_))), "{id:?}");
        }
        let long = ServedCertificate {
            spiffe_id: format!("spiffe://td/{}", "a".repeat(3000)),
            ..served()
        };
        assert!(long.check().unwrap_err().to_string().len() < 300);
        let unreported = ServedCertificate {
            spiffe_id: String::new(),
            ..served()
        };
        assert_eq!(unreported.check(), Ok(()), "a proxy that does not report its identity");
        let backwards = ServedCertificate {
            not_after_unix: 1,
            ..served()
        };
        assert_eq!(
            backwards.check(),
            Err(CertificateReportError::Validity {
                not_before: 1_800_000_000,
                not_after: 1
            })
        );
    }
}
