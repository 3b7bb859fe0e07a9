//! The mesh certificate authority: a root (self-signed, or a user's root/intermediate plugged in
//! from a Secret) that signs workload certificates for SPIFFE identities
//! `spiffe://<trust-domain>/ns/<namespace>/sa/<serviceaccount>`.
//!
//! Proxies generate their keys locally and send a CSR; the CA checks that the CSR asks for
//! exactly the identity the caller was authenticated as (see [`Authorized`]) and signs a leaf
//! with exactly one URI SAN (non-critical), `CA:FALSE`, server and client auth, no name
//! constraints, valid for the configured TTL (default 24 h) and never past the root.
//!
//! Time comes from a [`Clock`], so tests drive issuance and rotation deterministically.

pub mod expiry;
pub mod lifecycle;
mod roots;
mod rotation;
pub mod secret;
pub mod service;

pub use roots::{Bundle, CaStatus, MeshRoots, RootInfo, SigningPair, Transition};
pub use rotation::{Assessment, Phase, ProxyObservation, Reports, RootRotation, RotationError, Waiting};
pub use trellis_push::renewal_time;

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use ring::rand::{SecureRandom, SystemRandom};
use time::OffsetDateTime;
use trellis_contract::{SpiffeId, TrustDomains};

/// The default lifetimes of workload certificates and self-signed roots: the operator's
/// defaults while no Mesh says otherwise ([`crate::settings`]).
pub use crate::settings::{DEFAULT_ROOT_TTL, DEFAULT_WORKLOAD_TTL};
/// Back-date certificates a little so peers with slightly slow clocks accept them.
const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// Where the CA reads the time.
pub trait Clock: Send + Sync {
    /// Now.
    fn now(&self) -> SystemTime;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock tests move by hand (feature `testing`: not in the operator's build).
#[cfg(any(test, feature = "testing"))]
#[derive(Debug)]
pub struct ManualClock(std::sync::Mutex<SystemTime>);

#[cfg(any(test, feature = "testing"))]
impl ManualClock {
    /// A clock stopped at `t`.
    pub fn new(t: SystemTime) -> Self {
        ManualClock(std::sync::Mutex::new(t))
    }

    /// Move the clock forward.
    pub fn advance(&self, d: Duration) {
        let mut t = self.0.lock().expect("clock lock");
        *t += d;
    }
}

impl<C: Clock + ?Sized> Clock for std::sync::Arc<C> {
    fn now(&self) -> SystemTime {
        (**self).now()
    }
}

#[cfg(any(test, feature = "testing"))]
impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        *self.0.lock().expect("clock lock")
    }
}

/// Why a certificate could not be issued or a root could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// The CSR is not a valid PKCS#10 request (or its signature does not verify).
    #[error("the certificate signing request is invalid: {0}")]
    BadCsr(String),
    /// The CSR asks for an identity other than the caller's.
    #[error(
        "the CSR asks for {requested:?} but the caller is authenticated as {authorized}; a proxy may only request its own pod's identity, in the trust domain or one of its aliases (check the pod's serviceAccountName, and the Mesh's spec.trustDomain and trustDomainAliases)"
    )]
    IdentityMismatch {
        /// What the CSR asks for.
        requested: Vec<String>,
        /// Who the caller is.
        authorized: String,
    },
    /// The root or its key cannot be used.
    #[error("the CA certificate or key is unusable: {0}")]
    BadRoot(String),
    /// The root has expired or expires before a useful leaf could be issued.
    #[error("the CA certificate expires at {0:?}; rotate the root (a new Mesh CA secret) before issuing")]
    RootExpiring(SystemTime),
    /// Signing failed.
    #[error("signing failed: {0}")]
    Signing(#[from] rcgen::Error),
}

/// An identity the caller has proven (from a verified ServiceAccount token and its pod).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorized {
    /// The SPIFFE ID the caller may hold: the one its certificate carries.
    pub spiffe_id: String,
    /// Other trust domains a CSR may name the same identity in (aliases of the trust domain,
    /// and the previous one during a change): the certificate carries `spiffe_id` all the same.
    pub aliases: Vec<String>,
}

impl Authorized {
    /// The identity of a ServiceAccount.
    pub fn service_account(trust_domain: &str, namespace: &str, service_account: &str) -> Self {
        Authorized {
            spiffe_id: SpiffeId::for_service_account(trust_domain, namespace, service_account).to_string(),
            aliases: Vec::new(),
        }
    }

    /// The identity of a ServiceAccount in the trust domain of `domains`, asked for in it or any
    /// of its aliases.
    pub fn service_account_in(domains: &TrustDomains, namespace: &str, service_account: &str) -> Self {
        Authorized {
            aliases: domains.aliases().to_vec(),
            ..Self::service_account(domains.domain(), namespace, service_account)
        }
    }

    /// Whether a CSR's one URI SAN asks for this identity: `spiffe_id` itself, or the same
    /// workload in one of the aliases.
    fn asked_by(&self, requested: &str) -> bool {
        if requested == self.spiffe_id {
            return true;
        }
        match (SpiffeId::parse(requested), SpiffeId::parse(&self.spiffe_id)) {
            (Ok(r), Ok(own)) => r.path() == own.path() && self.aliases.iter().any(|a| a == r.trust_domain()),
            _ => false,
        }
    }
}

/// A signing certificate and key.
pub struct SigningCert {
    cert_pem: String,
    /// Certificates between this one and the trust anchor (empty for a root).
    chain_pem: Vec<String>,
    issuer: Issuer<'static, KeyPair>,
    subject: String,
    not_before: SystemTime,
    not_after: SystemTime,
    fingerprint: String,
}

impl std::fmt::Debug for SigningCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningCert")
            .field("subject", &self.subject)
            .field("not_after", &self.not_after)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl SigningCert {
    /// A new self-signed root for `trust_domain`, valid for `ttl` from `now`.
    pub fn self_signed_root(trust_domain: &str, ttl: Duration, now: SystemTime) -> Result<Self, CaError> {
        let key = KeyPair::generate().map_err(CaError::Signing)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Trellis");
        dn.push(DnType::CommonName, format!("Trellis root CA {trust_domain}"));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = OffsetDateTime::from(now - CLOCK_SKEW);
        params.not_after = OffsetDateTime::from(now + ttl);
        params.serial_number = Some(serial()?);
        let cert = params.self_signed(&key)?;
        Ok(SigningCert {
            cert_pem: cert.pem(),
            chain_pem: Vec::new(),
            fingerprint: fingerprint(cert.der()),
            issuer: Issuer::new(params, key),
            subject: format!("CN=Trellis root CA {trust_domain}"),
            not_before: now - CLOCK_SKEW,
            not_after: now + ttl,
        })
    }

    /// Load a user's root or intermediate (`ca.crt`, `ca.key`, and for an intermediate the
    /// chain up to the root, e.g. Istio's `cert-chain.pem`).
    pub fn from_pem(cert_pem: &str, key_pem: &str, chain_pem: &[String]) -> Result<Self, CaError> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| CaError::BadRoot(format!("ca.key: {e}")))?;
        let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
            .map_err(|_| CaError::BadRoot("ca.crt is not a PEM certificate".into()))?;
        let x509 = pem.parse_x509().map_err(|e| CaError::BadRoot(format!("ca.crt: {e}")))?;
        if !x509.is_ca() {
            return Err(CaError::BadRoot(
                "ca.crt is not a CA certificate (basicConstraints CA:TRUE is missing)".into(),
            ));
        }
        let at = |t: i64| SystemTime::UNIX_EPOCH + Duration::from_secs(t.max(0) as u64);
        let not_after = at(x509.validity().not_after.timestamp());
        let not_before = at(x509.validity().not_before.timestamp());
        let fingerprint = fingerprint(&pem.contents);
        let subject = x509.subject().to_string();
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key).map_err(|e| CaError::BadRoot(format!("ca.crt: {e}")))?;
        Ok(SigningCert {
            cert_pem: cert_pem.to_string(),
            chain_pem: chain_pem.to_vec(),
            issuer,
            subject,
            not_before,
            not_after,
            fingerprint,
        })
    }

    /// The certificate (PEM).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The chain between this certificate and the trust anchor (PEM, empty for a root).
    pub fn chain_pem(&self) -> String {
        self.chain_pem.concat()
    }

    /// The private key (PEM), for storing in the CA Secret. Never log it.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// When the certificate expires.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// When the certificate became valid.
    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    /// The subject (distinguished name).
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The SHA-256 fingerprint of the certificate (hex), which names the root in trust
    /// bundles, the admin API and the push API.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }
}

/// The SHA-256 fingerprint (lowercase hex) of a DER certificate.
pub fn fingerprint(der: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A signed workload certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leaf {
    /// Leaf then intermediates (PEM), as a TLS server or client presents them.
    pub cert_chain_pem: String,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
    /// The one identity in the certificate.
    pub spiffe_id: String,
}

/// The certificate authority.
pub struct CertificateAuthority {
    signer: SigningCert,
    workload_ttl: Duration,
    clock: Box<dyn Clock>,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("signer", &self.signer)
            .field("workload_ttl", &self.workload_ttl)
            .finish()
    }
}

impl CertificateAuthority {
    /// A CA signing with `signer`.
    pub fn new(signer: SigningCert, workload_ttl: Duration, clock: Box<dyn Clock>) -> Self {
        CertificateAuthority {
            signer,
            workload_ttl,
            clock,
        }
    }

    /// The signing certificate.
    pub fn signer(&self) -> &SigningCert {
        &self.signer
    }

    /// Sign the CSR of a caller authenticated as `who`, for the CA's workload lifetime.
    ///
    /// # Guarantees
    /// The leaf carries exactly `who.spiffe_id` as its only SAN, whatever else the CSR asks
    /// for; a CSR asking for anything else is refused, not silently corrected.
    pub fn sign(&self, csr_pem: &str, who: &Authorized) -> Result<Leaf, CaError> {
        self.sign_for(csr_pem, who, self.workload_ttl)
    }

    /// [`CertificateAuthority::sign`], the leaf valid for `ttl` (never past the root).
    pub fn sign_for(&self, csr_pem: &str, who: &Authorized, ttl: Duration) -> Result<Leaf, CaError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| CaError::BadCsr(e.to_string()))?;
        let requested: Vec<String> = csr
            .params
            .subject_alt_names
            .iter()
            .map(|s| match s {
                SanType::URI(u) => u.as_str().to_string(),
                SanType::DnsName(d) => format!("DNS:{}", d.as_str()),
                SanType::IpAddress(ip) => format!("IP:{ip}"),
                other => format!("{other:?}"),
            })
            .collect();
        if requested.len() != 1 || !who.asked_by(&requested[0]) {
            return Err(CaError::IdentityMismatch {
                requested,
                authorized: who.spiffe_id.clone(),
            });
        }
        self.issue(&csr.public_key, &who.spiffe_id, &[], ttl)
    }

    /// A serving certificate for the operator itself (its key generated here): the operator's
    /// SPIFFE ID plus DNS names, so proxies verify it by identity and other clients by name.
    /// Returns the leaf and its private key (PEM).
    pub fn issue_serving(
        &self,
        spiffe_id: &str,
        dns_names: &[String],
        ttl: Duration,
    ) -> Result<(Leaf, String), CaError> {
        let key = KeyPair::generate()?;
        let leaf = self.issue(&key, spiffe_id, dns_names, ttl)?;
        Ok((leaf, key.serialize_pem()))
    }

    fn issue(
        &self,
        public_key: &impl rcgen::PublicKeyData,
        spiffe_id: &str,
        dns_names: &[String],
        ttl: Duration,
    ) -> Result<Leaf, CaError> {
        let now = self.clock.now();
        let not_after = (now + ttl).min(self.signer.not_after);
        // A leaf cut short by the root's expiry to under a minute (or under its whole lifetime,
        // for very short lifetimes) would be useless: refuse, so the root gets rotated.
        if not_after < now + ttl.min(Duration::from_secs(60)) {
            return Err(CaError::RootExpiring(self.signer.not_after));
        }
        let mut params = CertificateParams::default();
        // why: a non-empty subject keeps the SAN extension non-critical (RFC 5280 requires it
        // critical when the subject is empty), which some TLS stacks handle badly.
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Trellis");
        params.distinguished_name = dn;
        let uri = spiffe_id
            .try_into()
            .map_err(|e: rcgen::Error| CaError::BadCsr(e.to_string()))?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        for name in dns_names {
            let dns = name
                .as_str()
                .try_into()
                .map_err(|e: rcgen::Error| CaError::BadCsr(e.to_string()))?;
            params.subject_alt_names.push(SanType::DnsName(dns));
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        // Back-date for slow peer clocks, but never by more than a quarter of a (short) lifetime.
        let not_before = now - CLOCK_SKEW.min(ttl / 4);
        params.not_before = OffsetDateTime::from(not_before);
        params.not_after = OffsetDateTime::from(not_after);
        params.serial_number = Some(serial()?);
        let cert = params.signed_by(public_key, &self.signer.issuer)?;
        let mut chain = cert.pem();
        if !self.signer.chain_pem.is_empty() {
            // An intermediate signer: peers need it (and what is above it) to reach the root.
            chain.push_str(&self.signer.cert_pem);
            chain.push_str(&self.signer.chain_pem.concat());
        }
        Ok(Leaf {
            cert_chain_pem: chain,
            not_before,
            not_after,
            spiffe_id: spiffe_id.to_string(),
        })
    }
}

fn serial() -> Result<SerialNumber, CaError> {
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| CaError::BadRoot("no randomness for serial numbers".into()))?;
    bytes[0] &= 0x7f; // positive
    Ok(SerialNumber::from_slice(&bytes))
}
