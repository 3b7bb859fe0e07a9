//! What the proxy's certificate loop and its config subscription share about the workload
//! certificate: the certificate obtained ([`Issued`]), a request to renew it early during a
//! root rotation ([`Renewal`], from the subscription to the identity loop, asked again while the
//! answer comes from another root: [`issuer_retry`]), and the certificate
//! served now ([`Served`], from whoever loads it into the data path to the subscription, which
//! reports it to the operator).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use trellis_contract::SpiffeId;
use trellis_contract::certificate::ServedCertificate;

/// The workload certificate the proxy serves now, as [`super::run_push`] reports it to the operator
/// (in Hello, and in a `Certificate` message whenever it changes). Set it once the certificate
/// is loaded into the data path. Clones share it.
#[derive(Debug, Clone)]
pub struct Served(Arc<watch::Sender<Option<ServedCertificate>>>);

impl Default for Served {
    fn default() -> Self {
        Served(Arc::new(watch::Sender::new(None)))
    }
}

impl Served {
    /// The proxy serves `certificate` from now on.
    pub fn set(&self, certificate: ServedCertificate) {
        self.0.send_if_modified(|current| {
            if current.as_ref() == Some(&certificate) {
                false
            } else {
                *current = Some(certificate);
                true
            }
        });
    }

    /// The certificate served now, if one was set.
    pub fn get(&self) -> Option<ServedCertificate> {
        self.0.borrow().clone()
    }

    pub(super) fn subscribe(&self) -> watch::Receiver<Option<ServedCertificate>> {
        self.0.subscribe()
    }
}

/// A request to renew the workload certificate before its half-life, passed from the config
/// subscription (which hears about root rotations and the identity the mesh gives the proxy)
/// to the identity loop (which renews). Clones share the request.
#[derive(Debug, Clone)]
pub struct Renewal(Arc<watch::Sender<Wanted>>);

/// What the config subscription asks of the workload certificate (empty: nothing).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Wanted {
    /// The fingerprint of the root it should be issued by (a root rotation).
    pub issuer: String,
    /// The SPIFFE ID the pushed configuration gives this proxy (after a trust domain change,
    /// the same workload in the new domain).
    pub identity: String,
}

impl Default for Renewal {
    fn default() -> Self {
        Renewal(Arc::new(watch::Sender::new(Wanted::default())))
    }
}

impl Renewal {
    /// Ask for a certificate issued by the root with this fingerprint (empty: no request).
    pub fn request(&self, issuer_fingerprint: &str) {
        self.0.send_if_modified(|current| {
            if current.issuer == issuer_fingerprint {
                false
            } else {
                current.issuer = issuer_fingerprint.to_string();
                true
            }
        });
    }

    /// Ask for a certificate carrying `spiffe_id`, the identity the pushed configuration names
    /// (empty: no request).
    pub fn request_identity(&self, spiffe_id: &str) {
        self.0.send_if_modified(|current| {
            if current.identity == spiffe_id {
                false
            } else {
                current.identity = spiffe_id.to_string();
                true
            }
        });
    }

    /// The identity to ask the CA for: the one the configuration names when it is `own` in
    /// another trust domain (never another workload's), else `own`.
    pub fn identity_for(&self, own: &str) -> String {
        let wanted = self.0.borrow().identity.clone();
        match (SpiffeId::parse(&wanted), SpiffeId::parse(own)) {
            (Ok(w), Ok(o)) if w.path() == o.path() => wanted,
            _ => own.to_string(),
        }
    }

    pub(super) fn subscribe(&self) -> watch::Receiver<Wanted> {
        self.0.subscribe()
    }
}

/// During a root rotation, the longest wait between two early renewals that were answered by
/// another root than the one the subscription asks for.
// why: the answer comes from another root when the certificate request reaches an operator
// replica that has not yet heard of the phase the leader recorded (a watch event behind, so
// milliseconds to seconds): asking again at once, then after 1 s doubling, reaches it; the cap
// bounds what a replica that never issues from that root (an older operator during an upgrade)
// costs — one request per proxy every 5 minutes — while the rotation, which waits for every
// proxy's certificate, still finishes once the request lands on a current replica.
pub const ISSUER_RETRY_MAX: Duration = Duration::from_secs(300);

/// Whether to renew early because the certificate held was signed by `issuer` while the
/// subscription asks for one from `wanted` (empty: nothing asked), and after how long: at
/// once the first time, then after 1 s doubling up to [`ISSUER_RETRY_MAX`], for as long as the
/// answers come from another root. `tries` counts the early renewals made for `wanted` (reset
/// when another root is asked for).
pub fn issuer_retry(wanted: &str, issuer: &str, tries: &mut (String, u32)) -> Option<Duration> {
    if wanted.is_empty() || issuer.is_empty() || wanted == issuer {
        return None;
    }
    if tries.0 != wanted {
        *tries = (wanted.to_string(), 0);
    }
    let delay = match tries.1 {
        0 => Duration::ZERO,
        n => Duration::from_secs(1u64 << (n - 1).min(16)).min(ISSUER_RETRY_MAX),
    };
    tries.1 = tries.1.saturating_add(1);
    Some(delay)
}

/// A certificate the proxy holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
    /// SHA-256 fingerprint (hex) of the root it chains to (empty if the operator did not say).
    pub issuer_fingerprint: String,
    /// The leaf's serial number, hex octets separated by `:` (empty if it did not parse).
    pub serial: String,
    /// The leaf's SPIFFE ID (empty if it did not parse).
    pub spiffe_id: String,
}

impl Issued {
    /// The report of this certificate to the operator, once it is served; `None` when the
    /// operator named no root, or the report would not pass [`ServedCertificate::check`].
    pub fn report(&self) -> Option<ServedCertificate> {
        let unix = |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let served = ServedCertificate {
            root_fingerprint: self.issuer_fingerprint.clone(),
            serial: self.serial.clone(),
            not_before_unix: unix(self.not_before),
            not_after_unix: unix(self.not_after),
            spiffe_id: self.spiffe_id.clone(),
        };
        served.check().ok().map(|()| served)
    }
}

/// The serial of the first certificate in `chain_pem` (hex octets separated by `:`, as
/// `meshctl proxy-config secret` shows it), or empty.
pub(super) fn leaf_serial(chain_pem: &str) -> String {
    x509_parser::pem::parse_x509_pem(chain_pem.as_bytes())
        .ok()
        .and_then(|(_, pem)| {
            x509_parser::parse_x509_certificate(&pem.contents)
                .ok()
                .map(|(_, c)| c.raw_serial_as_string())
        })
        .unwrap_or_default()
}

/// The SPIFFE ID of the first certificate in `chain_pem`, or empty.
pub(super) fn leaf_spiffe_id(chain_pem: &str) -> String {
    x509_parser::pem::parse_x509_pem(chain_pem.as_bytes())
        .ok()
        .and_then(|(_, pem)| crate::identity::spiffe_id_of(&pem.contents).ok())
        .map(|id| id.to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn an_issued_certificate_is_reported_with_its_root_serial_and_validity() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.serial_number = Some(rcgen::SerialNumber::from(vec![0x1a, 0x2b, 0x3c]));
        let pem = params.self_signed(&key).unwrap().pem();
        assert_eq!(leaf_serial(&pem), "1a:2b:3c");
        assert_eq!(leaf_serial("not PEM"), "");
        let at = |s: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        let issued = Issued {
            not_before: at(1_800_000_000),
            not_after: at(1_800_086_400),
            issuer_fingerprint: "ab".repeat(32),
            serial: leaf_serial(&pem),
            spiffe_id: "spiffe://new.example/ns/shop/sa/web".into(),
        };
        assert_eq!(
            issued.report(),
            Some(ServedCertificate {
                root_fingerprint: "ab".repeat(32),
                serial: "1a:2b:3c".into(),
                not_before_unix: 1_800_000_000,
                not_after_unix: 1_800_086_400,
                spiffe_id: "spiffe://new.example/ns/shop/sa/web".into(),
            })
        );
        // An operator that named no root: nothing to report.
        let unnamed = Issued {
            issuer_fingerprint: String::new(),
            ..issued
        };
        assert_eq!(unnamed.report(), None);
    }

    #[test]
    fn the_served_certificate_is_shared_and_announced_on_change_only() {
        let served = Served::default();
        let mut changes = served.clone().subscribe();
        let c = ServedCertificate {
            root_fingerprint: "ab".repeat(32),
            serial: "01".into(),
            not_before_unix: 1,
            not_after_unix: 2,
            spiffe_id: String::new(),
        };
        served.set(c.clone());
        assert!(changes.has_changed().unwrap());
        assert_eq!(changes.borrow_and_update().as_ref(), Some(&c));
        served.set(c.clone());
        assert!(
            !changes.has_changed().unwrap(),
            "the same certificate is not announced again"
        );
        assert_eq!(served.get(), Some(c));
    }

    #[test]
    fn the_identity_asked_for_follows_the_configuration_but_only_for_the_own_workload() {
        let renewal = Renewal::default();
        let own = "spiffe://old.example/ns/shop/sa/web";
        assert_eq!(renewal.identity_for(own), own, "nothing pushed yet");
        renewal.request_identity("spiffe://new.example/ns/shop/sa/web");
        assert_eq!(renewal.identity_for(own), "spiffe://new.example/ns/shop/sa/web");
        renewal.request_identity("spiffe://new.example/ns/shop/sa/admin");
        assert_eq!(renewal.identity_for(own), own, "never another workload's identity");
        let mut changes = renewal.subscribe();
        let _ = changes.borrow_and_update();
        renewal.request_identity("spiffe://new.example/ns/shop/sa/admin");
        assert!(
            !changes.has_changed().unwrap(),
            "the same request is not announced again"
        );
        renewal.request("ab".repeat(32).as_str());
        assert_eq!(changes.borrow_and_update().issuer, "ab".repeat(32));
    }

    /// During a root rotation the proxy asks again, spaced out, for as long as the answer
    /// comes from another root than the one asked for (a replica behind the leader's phase),
    /// and stops once it holds a certificate of it.
    #[test]
    fn a_renewal_answered_by_another_root_is_asked_again_spaced_out() {
        let (old, new) = ("0a".repeat(32), "0b".repeat(32));
        let mut tries = (String::new(), 0);
        assert_eq!(issuer_retry("", &old, &mut tries), None, "nothing asked");
        assert_eq!(issuer_retry(&new, &new, &mut tries), None, "already from it");
        let delays: Vec<Option<Duration>> = (0..12).map(|_| issuer_retry(&new, &old, &mut tries)).collect();
        let secs = |s: u64| Some(Duration::from_secs(s));
        assert_eq!(
            delays,
            [
                Some(Duration::ZERO),
                secs(1),
                secs(2),
                secs(4),
                secs(8),
                secs(16),
                secs(32),
                secs(64),
                secs(128),
                secs(256),
                secs(300),
                secs(300)
            ]
        );
        assert_eq!(
            issuer_retry(&new, &new, &mut tries),
            None,
            "answered by the new root: done"
        );
        // Another rotation: asked at once again.
        assert_eq!(issuer_retry(&old, &new, &mut tries), Some(Duration::ZERO));
    }
}
