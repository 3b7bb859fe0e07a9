//! The certificate authority with an injected clock: issuance, identity checks, expiry and
//! renewal timing, and the chain checked by an independent tool (openssl).

use std::process::Command;
use std::time::{Duration, SystemTime};

use rcgen::{CertificateParams, KeyPair, SanType};
use trellis_operator::ca::{
    Authorized, CaError, CertificateAuthority, DEFAULT_WORKLOAD_TTL, ManualClock, SigningCert, renewal_time,
};

const T0: u64 = 1_800_000_000; // 2027-01-15

fn t0() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(T0)
}

fn ca(root_ttl: Duration) -> CertificateAuthority {
    let root = SigningCert::self_signed_root("cluster.local", root_ttl, t0()).unwrap();
    CertificateAuthority::new(root, DEFAULT_WORKLOAD_TTL, Box::new(ManualClock::new(t0())))
}

/// A proxy's CSR: its own key, one URI SAN.
fn csr(sans: &[&str]) -> (KeyPair, String) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = sans
        .iter()
        .map(|s| {
            if s.starts_with("spiffe://") {
                SanType::URI((*s).try_into().unwrap())
            } else {
                SanType::DnsName((*s).try_into().unwrap())
            }
        })
        .collect();
    let pem = params.serialize_request(&key).unwrap().pem().unwrap();
    (key, pem)
}

const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";

/// The caller authenticated as [`WEB`], no alias.
fn web() -> Authorized {
    Authorized {
        spiffe_id: WEB.into(),
        aliases: vec![],
    }
}

#[test]
fn issues_a_leaf_for_the_callers_own_identity() {
    let ca = ca(Duration::from_secs(365 * 86400));
    let (_, req) = csr(&[WEB]);
    let leaf = ca
        .sign(&req, &Authorized::service_account("cluster.local", "shop", "web"))
        .unwrap();
    assert_eq!(leaf.spiffe_id, WEB);
    assert_eq!(leaf.not_after.duration_since(t0()).unwrap(), DEFAULT_WORKLOAD_TTL);
    assert!(leaf.not_before < t0(), "back-dated for clock skew");
    assert!(leaf.cert_chain_pem.starts_with("-----BEGIN CERTIFICATE-----"));
    assert_eq!(
        leaf.cert_chain_pem.matches("BEGIN CERTIFICATE").count(),
        1,
        "a root-signed leaf needs no chain"
    );
}

#[test]
fn a_token_for_one_service_account_cannot_obtain_another_identity() {
    let ca = ca(Duration::from_secs(365 * 86400));
    let payment = Authorized::service_account("cluster.local", "shop", "payment");
    let (_, req) = csr(&[WEB]);
    let err = ca.sign(&req, &payment).unwrap_err();
    assert!(matches!(err, CaError::IdentityMismatch { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("authenticated as spiffe://cluster.local/ns/shop/sa/payment"),
        "{err}"
    );
    // Extra SANs are refused, not dropped.
    let (_, req) = csr(&[WEB, "evil.example.com"]);
    assert!(matches!(
        ca.sign(&req, &Authorized::service_account("cluster.local", "shop", "web")),
        Err(CaError::IdentityMismatch { .. })
    ));
    // Garbage is a clear error.
    assert!(matches!(ca.sign("not a csr", &payment), Err(CaError::BadCsr(_))));
}

#[test]
fn during_a_trust_domain_change_a_csr_in_an_alias_is_signed_in_the_new_domain() {
    let ca = ca(Duration::from_secs(365 * 86400));
    let domains = trellis_contract::TrustDomains::new("new.example", ["cluster.local"]);
    let web = Authorized::service_account_in(&domains, "shop", "web");
    // A proxy still asking for its old-domain identity gets the new one.
    let (_, old) = csr(&[WEB]);
    let leaf = ca.sign(&old, &web).unwrap();
    assert_eq!(leaf.spiffe_id, "spiffe://new.example/ns/shop/sa/web");
    let (_, pem) = x509_parser::pem::parse_x509_pem(leaf.cert_chain_pem.as_bytes()).unwrap();
    assert_eq!(
        trellis_push::identity::spiffe_id_of(&pem.contents).unwrap().to_string(),
        "spiffe://new.example/ns/shop/sa/web",
        "the certificate itself carries the new domain"
    );
    // One asking in the new domain too.
    let (_, new) = csr(&["spiffe://new.example/ns/shop/sa/web"]);
    assert_eq!(
        ca.sign(&new, &web).unwrap().spiffe_id,
        "spiffe://new.example/ns/shop/sa/web"
    );
    // An alias never lends another workload's identity, and a domain that is no alias is refused.
    for refused in [
        "spiffe://cluster.local/ns/shop/sa/payment",
        "spiffe://other.example/ns/shop/sa/web",
    ] {
        let (_, req) = csr(&[refused]);
        assert!(
            matches!(ca.sign(&req, &web), Err(CaError::IdentityMismatch { .. })),
            "{refused}"
        );
    }
    // Once the old domain is no alias any more, a CSR naming it is refused with the fix.
    let settled = Authorized::service_account("new.example", "shop", "web");
    let err = ca.sign(&old, &settled).unwrap_err();
    assert!(err.to_string().contains("trustDomainAliases"), "{err}");
}

#[test]
fn leaves_never_outlive_the_root_and_an_expiring_root_refuses() {
    let ca = ca(Duration::from_secs(3600));
    let (_, req) = csr(&[WEB]);
    let leaf = ca.sign(&req, &web()).unwrap();
    assert_eq!(leaf.not_after, ca.signer().not_after());
    let short = {
        let root = SigningCert::self_signed_root("cluster.local", Duration::from_secs(30), t0()).unwrap();
        CertificateAuthority::new(root, DEFAULT_WORKLOAD_TTL, Box::new(ManualClock::new(t0())))
    };
    assert!(matches!(short.sign(&req, &web()), Err(CaError::RootExpiring(_))));
}

#[test]
fn renewal_is_at_half_life_with_bounded_jitter() {
    let nb = t0();
    let na = t0() + Duration::from_secs(24 * 3600);
    assert_eq!(renewal_time(nb, na, 0.0), t0() + Duration::from_secs(12 * 3600));
    let early = renewal_time(nb, na, -1.0);
    let late = renewal_time(nb, na, 1.0);
    assert_eq!(
        late.duration_since(early).unwrap(),
        Duration::from_secs_f64(2.0 * 24.0 * 3600.0 / 10.0)
    );
    assert!(late < na && early > nb);
}

#[test]
fn plugged_in_intermediates_sign_with_the_chain() {
    let root = SigningCert::self_signed_root("cluster.local", Duration::from_secs(10 * 365 * 86400), t0()).unwrap();
    // Load the same root from PEM, as from a user's Secret.
    let loaded = SigningCert::from_pem(root.cert_pem(), &root.key_pem(), &[]).unwrap();
    let ca = CertificateAuthority::new(loaded, DEFAULT_WORKLOAD_TTL, Box::new(ManualClock::new(t0())));
    let (_, req) = csr(&[WEB]);
    assert!(ca.sign(&req, &web()).is_ok());
    // A leaf is not a CA.
    let (leaf_key, req) = csr(&[WEB]);
    let leaf = ca.sign(&req, &web()).unwrap();
    let err = SigningCert::from_pem(&leaf.cert_chain_pem, &leaf_key.serialize_pem(), &[]).unwrap_err();
    assert!(err.to_string().contains("not a CA certificate"), "{err}");
}

/// The chain verifies with openssl, the SAN is exactly the URI, non-critical, and CA:FALSE.
#[test]
fn openssl_verifies_the_chain_and_shows_one_uri_san() {
    if !trellis_skip::have("openssl") {
        trellis_skip::skip("openssl is not installed (Debian: apt-get install openssl)");
        return;
    }
    // openssl checks validity against the real clock: issue with the system clock.
    let now = SystemTime::now();
    let root = SigningCert::self_signed_root("cluster.local", Duration::from_secs(86400 * 30), now).unwrap();
    let root_pem = root.cert_pem().to_string();
    let ca = CertificateAuthority::new(root, DEFAULT_WORKLOAD_TTL, Box::new(ManualClock::new(now)));
    let (_, req) = csr(&[WEB]);
    let leaf = ca.sign(&req, &web()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (root_path, leaf_path) = (dir.path().join("root.pem"), dir.path().join("leaf.pem"));
    std::fs::write(&root_path, &root_pem).unwrap();
    std::fs::write(&leaf_path, &leaf.cert_chain_pem).unwrap();
    let verify = Command::new("openssl")
        .args(["verify", "-x509_strict", "-purpose", "sslclient", "-CAfile"])
        .arg(&root_path)
        .arg(&leaf_path)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&verify.stdout);
    assert!(
        verify.status.success() && out.contains(": OK"),
        "{out}{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    let text = Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(&leaf_path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains(&format!("URI:{WEB}")), "{text}");
    assert!(!text.contains("DNS:"), "{text}");
    assert!(
        text.contains("X509v3 Subject Alternative Name: \n") || text.contains("X509v3 Subject Alternative Name:\n"),
        "SAN is not critical:\n{text}"
    );
    assert!(text.contains("CA:FALSE"), "{text}");
    assert!(!text.contains("Name Constraints"), "{text}");
    assert!(
        text.contains("TLS Web Server Authentication, TLS Web Client Authentication"),
        "{text}"
    );
}

/// Root rotation at run time: the new root joins the bundle, issuing switches only once every
/// proxy has acknowledged it, proxies are asked to renew, the old root leaves the bundle only
/// once no leaf of it remains, and the status shows fingerprints and phases, never keys.
#[test]
fn mesh_roots_rotate_on_acks_and_reissued_leaves() {
    use std::sync::Arc;
    use trellis_operator::ca::{MeshRoots, Phase, ProxyObservation};

    let clock = Arc::new(ManualClock::new(t0()));
    let old = SigningCert::self_signed_root("cluster.local", Duration::from_secs(365 * 86400), t0()).unwrap();
    let old_fp = old.fingerprint().to_string();
    let old_key = old.key_pem();
    let roots = MeshRoots::new(old, DEFAULT_WORKLOAD_TTL, clock.clone());
    let web = Authorized::service_account("cluster.local", "shop", "web");
    let sign = |proxy: &str| roots.sign(&csr(&[WEB]).1, &web, proxy).unwrap();
    let (leaf_a, by) = sign("shop/a");
    assert_eq!(by, old_fp);
    sign("shop/b");
    let bundle = roots.bundle();
    assert_eq!(bundle.borrow().fingerprints, std::slice::from_ref(&old_fp));

    let new = SigningCert::self_signed_root("cluster.local", Duration::from_secs(365 * 86400), t0()).unwrap();
    let new_fp = new.fingerprint().to_string();
    roots.start_rotation(new).unwrap();
    assert_eq!(roots.phase(), Phase::Distributing);
    assert_eq!(bundle.borrow().fingerprints, [old_fp.clone(), new_fp.clone()]);
    assert_eq!(bundle.borrow().roots_pem.len(), 2);
    assert!(bundle.borrow().renew_unless_issued_by.is_empty());
    assert_eq!(
        sign("shop/a").1,
        old_fp,
        "issuing stays on the old root while distributing"
    );

    let obs = |a: &[&String], b: &[&String]| {
        vec![
            ProxyObservation {
                proxy: "shop/a".into(),
                acked_roots: a.iter().map(|s| (*s).clone()).collect(),
                leaf_root: roots.leaf_root("shop/a"),
            },
            ProxyObservation {
                proxy: "shop/b".into(),
                acked_roots: b.iter().map(|s| (*s).clone()).collect(),
                leaf_root: roots.leaf_root("shop/b"),
            },
        ]
    };
    // b has not acknowledged the new bundle: no progress, and the status says who is waited on.
    assert!(roots.observe(&obs(&[&old_fp, &new_fp], &[&old_fp])).is_empty());
    assert!(
        roots.status().progress.contains("shop/b"),
        "{}",
        roots.status().progress
    );

    assert_eq!(
        roots.observe(&obs(&[&old_fp, &new_fp], &[&old_fp, &new_fp])),
        [Phase::Reissuing]
    );
    assert_eq!(
        bundle.borrow().renew_unless_issued_by,
        new_fp,
        "proxies are asked to renew"
    );
    let (leaf, by) = sign("shop/a");
    assert_eq!(by, new_fp);
    assert_ne!(leaf.cert_chain_pem, leaf_a.cert_chain_pem);
    // b still holds a leaf of the old root.
    assert!(roots.observe(&obs(&[&old_fp, &new_fp], &[&old_fp, &new_fp])).is_empty());
    assert_eq!(roots.status().leaves_by_root.get(&old_fp), Some(&1));

    // b renews; the old root leaves the bundle.
    clock.advance(Duration::from_secs(1));
    sign("shop/b");
    assert_eq!(
        roots.observe(&obs(&[&old_fp, &new_fp], &[&old_fp, &new_fp])),
        [Phase::Retiring]
    );
    assert_eq!(bundle.borrow().fingerprints, std::slice::from_ref(&new_fp));
    assert_eq!(roots.observe(&obs(&[&new_fp], &[&new_fp])), [Phase::Stable]);
    assert!(bundle.borrow().renew_unless_issued_by.is_empty());

    let status = roots.status();
    assert_eq!(status.phase, "Stable");
    assert_eq!(status.roots.len(), 1, "the old root is dropped");
    assert_eq!(status.roots[0].fingerprint, new_fp);
    assert!(status.roots[0].issuing && status.roots[0].trusted);
    let phases: Vec<&str> = status.transitions.iter().map(|t| t.phase.as_str()).collect();
    assert_eq!(phases, ["Stable", "Distributing", "Reissuing", "Retiring", "Stable"]);
    let json = serde_json::to_string(&status).unwrap();
    assert!(!json.contains("PRIVATE KEY") && !json.contains(old_key.lines().nth(1).unwrap()));
    let (target, previous) = roots.persisted();
    assert!(target.cert_pem.contains("BEGIN CERTIFICATE") && previous.is_none());
}

/// A restarted operator learns which root signed a proxy's leaf from the chain it presents.
#[test]
fn presented_chains_tell_which_root_signed_a_leaf() {
    use std::sync::Arc;
    use trellis_operator::ca::MeshRoots;

    let now = SystemTime::now();
    let issuer = SigningCert::self_signed_root("cluster.local", Duration::from_secs(86400), now).unwrap();
    let (issuer_pem, issuer_key, issuer_fp) = (
        issuer.cert_pem().to_string(),
        issuer.key_pem(),
        issuer.fingerprint().to_string(),
    );
    let leaf = CertificateAuthority::new(issuer, DEFAULT_WORKLOAD_TTL, Box::new(ManualClock::new(now)))
        .sign(
            &csr(&[WEB]).1,
            &Authorized::service_account("cluster.local", "shop", "web"),
        )
        .unwrap();
    let der: Vec<rustls::pki_types::CertificateDer<'static>> =
        rustls_pemfile::certs(&mut leaf.cert_chain_pem.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();

    let other = SigningCert::self_signed_root("cluster.local", Duration::from_secs(86400), now).unwrap();
    let roots = MeshRoots::new(other, DEFAULT_WORKLOAD_TTL, Arc::new(ManualClock::new(now)));
    roots.note_presented("shop/a", &der);
    assert_eq!(
        roots.leaf_root("shop/a"),
        None,
        "not signed by a root the operator holds"
    );

    let reloaded = SigningCert::from_pem(&issuer_pem, &issuer_key, &[]).unwrap();
    let roots = MeshRoots::new(reloaded, DEFAULT_WORKLOAD_TTL, Arc::new(ManualClock::new(now)));
    roots.note_presented("shop/a", &der);
    assert_eq!(roots.leaf_root("shop/a"), Some(issuer_fp));
}
