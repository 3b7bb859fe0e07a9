//! The cluster's identity material: a CA, the API server's serving
//! certificate, the admin bearer token, and the kubeconfig that ties them
//! together. Everything lives in the state directory so `kubesim down` and
//! test helpers can find it.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};

/// Errors while creating or loading credentials.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("generating certificates: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("writing {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("loading the serving key pair: {0}")]
    Load(String),
}

/// Who a client certificate names (CN = user, O = group), as the API
/// server's x509 authenticator reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subject<'a> {
    pub user: &'a str,
    pub group: Option<&'a str>,
}

/// A signed certificate and its private key, in PEM.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A certificate authority (ECDSA P-256) that signs serving and client
/// certificates.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority").finish_non_exhaustive()
    }
}

impl Authority {
    /// A fresh self-signed CA named `cn`.
    pub fn new(cn: &str) -> Result<Self, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, cn);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key)?;
        let key_pem = key.serialize_pem();
        Ok(Self {
            cert_pem: cert.pem(),
            key_pem,
            issuer: Issuer::new(params, key),
        })
    }

    /// A serving certificate for `names` (DNS names or IP addresses).
    pub fn server(&self, cn: &str, names: &[String]) -> Result<Issued, PkiError> {
        let mut params = CertificateParams::new(names.to_vec())?;
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params)
    }

    /// A client certificate for `subject`.
    pub fn client(&self, subject: Subject<'_>) -> Result<Issued, PkiError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, subject.user);
        if let Some(group) = subject.group {
            params.distinguished_name.push(DnType::OrganizationName, group);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    fn sign(&self, mut params: CertificateParams) -> Result<Issued, PkiError> {
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// The CA and serving certificate of one kubesim instance, in PEM.
#[derive(Debug, Clone)]
pub struct ServingIdentity {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl ServingIdentity {
    /// A fresh CA (`kubesim-ca`) and a serving certificate for `localhost`,
    /// `127.0.0.1`, the `kubernetes` Service's names and 10.96.0.1, and the
    /// pod network's API listener 10.244.0.1, signed by it.
    ///
    /// Why a CA and not a bare self-signed leaf: rustls (kube-rs) refuses a
    /// leaf used as its own trust anchor in some configurations, while a CA
    /// plus leaf is accepted by both Go (kubectl) and rustls.
    pub fn generate() -> Result<Self, PkiError> {
        let ca = Authority::new("kubesim-ca")?;
        let leaf = ca.server(
            "kube-apiserver",
            &[
                "localhost",
                "127.0.0.1",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
                // The `kubernetes` Service and the node-namespace listener, as
                // pods reach them (kube-rs in-cluster config, rustls).
                "10.96.0.1",
                "10.244.0.1",
            ]
            .map(String::from),
        )?;
        Ok(Self {
            ca_pem: ca.cert_pem,
            cert_pem: leaf.cert_pem,
            key_pem: leaf.key_pem,
        })
    }

    /// A rustls server configuration that serves this identity with ALPN
    /// `h2` and `http/1.1` (kubectl speaks HTTP/2, kube-rs HTTP/1.1).
    pub fn server_config(&self) -> Result<rustls::ServerConfig, PkiError> {
        let certs = rustls_pemfile_certs(&self.cert_pem)?;
        let key = rustls::pki_types::PrivateKeyDer::from(rustls::pki_types::PrivatePkcs8KeyDer::from(pem_body(
            &self.key_pem,
        )?));
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| PkiError::Load(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| PkiError::Load(e.to_string()))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }
}

fn rustls_pemfile_certs(pem: &str) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, PkiError> {
    Ok(vec![rustls::pki_types::CertificateDer::from(pem_body(pem)?)])
}

/// Decodes the first PEM block of `pem`.
fn pem_body(pem: &str) -> Result<Vec<u8>, PkiError> {
    let body: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    base64_decode(&body).ok_or_else(|| PkiError::Load("malformed PEM".to_string()))
}

/// Standard base64 decoding (PEM bodies and Secret data).
pub fn base64_decode(input: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(input.len() * 3 / 4);
    let mut buf = 0u32;
    let mut bits = 0;
    for c in input.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            b'=' | b'\n' | b'\r' | b' ' => continue,
            _ => return None,
        };
        buf = (buf << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits) as u8);
            buf &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// Standard base64 encoding with padding.
pub fn base64_encode(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A random bearer token (256 bits from two v4 UUIDs).
pub fn random_token() -> String {
    format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple())
}

/// File names inside a state directory.
#[derive(Debug, Clone)]
pub struct StateFiles {
    pub dir: PathBuf,
}

impl StateFiles {
    pub fn new(dir: &Path) -> Self {
        Self { dir: dir.to_path_buf() }
    }
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }
    pub fn pid(&self) -> PathBuf {
        self.dir.join("kubesim.pid")
    }
    pub fn log(&self) -> PathBuf {
        self.dir.join("kubesim.log")
    }
}

/// Writes `ca.crt` and `kubeconfig` (context `kubesim`, user `admin`) into
/// the state directory and returns the kubeconfig path.
pub fn write_kubeconfig(
    files: &StateFiles,
    identity: &ServingIdentity,
    server: &str,
    token: &str,
) -> Result<PathBuf, PkiError> {
    let write =
        |path: PathBuf, data: &str| std::fs::write(&path, data).map_err(|source| PkiError::Write { path, source });
    std::fs::create_dir_all(&files.dir).map_err(|source| PkiError::Write {
        path: files.dir.clone(),
        source,
    })?;
    write(files.ca(), &identity.ca_pem)?;
    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: kubesim\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\ncontexts:\n- name: kubesim\n  context:\n    cluster: kubesim\n    user: admin\n    namespace: default\ncurrent-context: kubesim\nusers:\n- name: admin\n  user:\n    token: {token}\n",
        ca = base64_encode(identity.ca_pem.as_bytes()),
    );
    write(files.kubeconfig(), &kubeconfig)?;
    Ok(files.kubeconfig())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips() {
        for s in ["", "a", "ab", "abc", "abcd", "hello world!"] {
            let enc = base64_encode(s.as_bytes());
            assert_eq!(base64_decode(&enc).unwrap(), s.as_bytes(), "{enc}");
        }
        assert_eq!(base64_encode(b"abcd"), "YWJjZA==");
    }

    #[test]
    fn identity_builds_a_server_config() {
        let id = ServingIdentity::generate().unwrap();
        assert!(id.ca_pem.contains("BEGIN CERTIFICATE"));
        let cfg = id.server_config().unwrap();
        assert_eq!(cfg.alpn_protocols[0], b"h2");
    }
}
