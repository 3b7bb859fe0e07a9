//! The certificate authority with an injected clock: issuance, identity checks, expiry and
//! renewal timing, and the chain checked by an independent tool (openssl); root rotation as
//! the CA Secret records it: the phase the leader records and the other replicas follow (a root
//! put in the Secret only once the leader has recorded it), and the root asked for during a
//! rotation, queued.

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
/// once no proxy reports serving a leaf of it, and the status shows fingerprints and phases,
/// never keys.
#[test]
fn mesh_roots_rotate_on_acks_and_reported_leaves() {
    use std::sync::Arc;
    use trellis_operator::ca::{MeshRoots, Phase, ProxyObservation, Reports};

    let clock = Arc::new(ManualClock::new(t0()));
    let old = SigningCert::self_signed_root("cluster.local", Duration::from_secs(365 * 86400), t0()).unwrap();
    let old_fp = old.fingerprint().to_string();
    let old_key = old.key_pem();
    let roots = MeshRoots::new(old, DEFAULT_WORKLOAD_TTL, clock.clone());
    let web = Authorized::service_account("cluster.local", "shop", "web");
    let sign = || roots.sign(&csr(&[WEB]).1, &web).unwrap();
    let (leaf_a, by) = sign();
    assert_eq!(by, old_fp);
    let bundle = roots.bundle();
    assert_eq!(bundle.borrow().fingerprints, std::slice::from_ref(&old_fp));

    let new = SigningCert::self_signed_root("cluster.local", Duration::from_secs(365 * 86400), t0()).unwrap();
    let new_fp = new.fingerprint().to_string();
    roots.start_rotation(new).unwrap();
    assert_eq!(roots.phase(), Phase::Distributing);
    assert_eq!(bundle.borrow().fingerprints, [old_fp.clone(), new_fp.clone()]);
    assert_eq!(bundle.borrow().roots_pem.len(), 2);
    assert!(bundle.borrow().renew_unless_issued_by.is_empty());
    assert_eq!(sign().1, old_fp, "issuing stays on the old root while distributing");

    // What the proxies report: the roots they acknowledged and the root of the leaf they serve.
    let reports = |a: (&[&String], &String), b: (&[&String], &String)| Reports {
        proxies: [("shop/a", a), ("shop/b", b)]
            .into_iter()
            .map(|(proxy, (acked, leaf))| ProxyObservation {
                proxy: proxy.into(),
                acked_roots: acked.iter().map(|s| (*s).clone()).collect(),
                leaf_root: Some(leaf.clone()),
                connected: true,
            })
            .collect(),
        unknown_replicas: Vec::new(),
    };
    let both = [&old_fp, &new_fp];
    // b has not acknowledged the new bundle: no progress, and the status says who is waited on.
    assert!(
        roots
            .observe(&reports((&both, &old_fp), (&[&old_fp], &old_fp)))
            .is_empty()
    );
    assert!(
        roots.status().progress.contains("shop/b"),
        "{}",
        roots.status().progress
    );

    assert_eq!(
        roots.observe(&reports((&both, &old_fp), (&both, &old_fp))),
        [Phase::Reissuing]
    );
    assert_eq!(
        bundle.borrow().renew_unless_issued_by,
        new_fp,
        "proxies are asked to renew"
    );
    let (leaf, by) = sign();
    assert_eq!(by, new_fp);
    assert_ne!(leaf.cert_chain_pem, leaf_a.cert_chain_pem);
    // b still serves a leaf of the old root.
    assert!(roots.observe(&reports((&both, &new_fp), (&both, &old_fp))).is_empty());
    assert_eq!(roots.status().leaves_by_root.get(&old_fp), Some(&1));
    assert_eq!(roots.status().leaves_by_root.get(&new_fp), Some(&1));

    // b renews; the old root leaves the bundle.
    clock.advance(Duration::from_secs(1));
    assert_eq!(
        roots.observe(&reports((&both, &new_fp), (&both, &new_fp))),
        [Phase::Retiring]
    );
    assert_eq!(bundle.borrow().fingerprints, std::slice::from_ref(&new_fp));
    assert_eq!(
        roots.observe(&reports((&[&new_fp], &new_fp), (&[&new_fp], &new_fp))),
        [Phase::Stable]
    );
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

/// A Secret as a merge patch of the operator's leaves it (the patch's non-null values).
fn secret_of(patch: &serde_json::Value) -> k8s_openapi::api::core::v1::Secret {
    use base64::Engine as _;
    let strings = |v: &serde_json::Value| -> std::collections::BTreeMap<String, String> {
        v.as_object()
            .into_iter()
            .flatten()
            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
            .collect()
    };
    k8s_openapi::api::core::v1::Secret {
        metadata: kube::api::ObjectMeta {
            namespace: Some("trellis-system".into()),
            name: Some("trellis-ca".into()),
            annotations: Some(strings(&patch["metadata"]["annotations"])),
            ..Default::default()
        },
        data: Some(
            strings(&patch["data"])
                .into_iter()
                .map(|(k, v)| {
                    let bytes = base64::engine::general_purpose::STANDARD.decode(v).unwrap();
                    (k, k8s_openapi::ByteString(bytes))
                })
                .collect(),
        ),
        ..Default::default()
    }
}

/// Two replicas' roots, rotating from the same old root to the same new one (loaded from the
/// same PEM, as each replica loads them from the CA Secret).
fn two_replicas() -> [std::sync::Arc<trellis_operator::ca::MeshRoots>; 2] {
    use trellis_operator::ca::{MeshRoots, SystemClock};
    let year = Duration::from_secs(365 * 86400);
    let old = SigningCert::self_signed_root("cluster.local", year, t0()).unwrap();
    let new = SigningCert::self_signed_root("cluster.local", year, t0()).unwrap();
    let pems = [
        (old.cert_pem().to_string(), old.key_pem()),
        (new.cert_pem().to_string(), new.key_pem()),
    ];
    let load = |(c, k): &(String, String)| SigningCert::from_pem(c, k, &[]).unwrap();
    [0, 1].map(|_| {
        let roots = MeshRoots::new(load(&pems[0]), DEFAULT_WORKLOAD_TTL, std::sync::Arc::new(SystemClock));
        roots.start_rotation(load(&pems[1])).unwrap();
        std::sync::Arc::new(roots)
    })
}

/// The leader records each phase in the CA Secret before it enters it; a follower enters the
/// phases the Secret records, in order, never back, and nothing of its own.
#[test]
fn followers_enter_the_phase_the_leader_records_in_the_ca_secret() {
    use trellis_operator::ca::Phase;
    use trellis_operator::ca::secret::{Queue, follow_record, read, record_patch, recorded_phase};

    let [leader, follower] = two_replicas();
    let recorded = |phase: Phase| {
        let (target, previous) = leader.persisted_at(phase);
        secret_of(&record_patch(&target, previous.as_ref(), phase, Queue::Keep))
    };
    let old = follower
        .status()
        .roots
        .iter()
        .find(|r| r.issuing)
        .unwrap()
        .fingerprint
        .clone();
    let new = follower.next().unwrap();

    let reissuing = read(&recorded(Phase::Reissuing)).unwrap();
    assert_eq!(reissuing.phase, Phase::Reissuing);
    assert_eq!(follow_record(&reissuing, &follower), [Phase::Reissuing]);
    let issuing = follower.status().roots.into_iter().find(|r| r.issuing).unwrap();
    assert_eq!(
        issuing.fingerprint, new,
        "the follower issues from the root the leader moved to"
    );
    // A record behind it (a stale version) changes nothing.
    let distributing = read(&recorded(Phase::Distributing)).unwrap();
    assert!(follow_record(&distributing, &follower).is_empty());
    assert_eq!(follower.phase(), Phase::Reissuing);
    // The end: no previous root, no phase annotation, the new root recorded; the follower goes
    // through Retiring.
    let stable = recorded(Phase::Stable);
    let annotations = stable.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(
        annotations,
        [("trellis.dev/recorded-root".to_string(), new.clone())].into(),
        "{annotations:?}"
    );
    assert!(!stable.data.as_ref().unwrap().contains_key("previous-ca.crt"));
    let stable = read(&stable).unwrap();
    assert_eq!(stable.phase, Phase::Stable);
    assert_eq!(follow_record(&stable, &follower), [Phase::Retiring, Phase::Stable]);
    let status = follower.status();
    assert_eq!(status.roots.len(), 1);
    assert_eq!(status.roots[0].fingerprint, new);
    assert_ne!(new, old);
    let phases: Vec<String> = status.transitions.into_iter().map(|t| t.phase).collect();
    assert_eq!(phases, ["Stable", "Distributing", "Reissuing", "Retiring", "Stable"]);

    // What a Secret without a readable phase means: the safest phase of a rotation under way.
    assert_eq!(recorded_phase(None, true), Phase::Distributing);
    assert_eq!(recorded_phase(Some("Sideways"), true), Phase::Distributing);
    assert_eq!(recorded_phase(Some("Retiring"), false), Phase::Stable);
}

/// A root asked for during a rotation — the annotation, or `ca.*` replaced — is queued by the
/// leader (never by a follower), kept in the Secret apart from the root being rotated to, and
/// rotated to by the leader once no rotation runs.
#[test]
fn a_root_asked_for_during_a_rotation_is_queued_by_the_leader() {
    use trellis_operator::ca::Phase;
    use trellis_operator::ca::secret::{Queue, Request, read, record_patch, requested_root};

    let [leader, follower] = two_replicas();
    let day = Duration::from_secs(86400);
    let request = |secret: &k8s_openapi::api::core::v1::Secret, roots: &trellis_operator::ca::MeshRoots, leads| {
        requested_root(secret, read(secret), roots, "cluster.local", day, leads).unwrap()
    };
    let (target, previous) = leader.persisted_at(Phase::Distributing);
    let mut annotated = secret_of(&record_patch(
        &target,
        previous.as_ref(),
        Phase::Distributing,
        Queue::Keep,
    ));
    annotated
        .metadata
        .annotations
        .get_or_insert_default()
        .insert("trellis.dev/rotate-root".into(), "now".into());
    assert!(matches!(request(&annotated, &leader, true), Request::Queue(_)));
    assert!(matches!(request(&annotated, &follower, false), Request::Nothing));

    // ca.* replaced by a person during the rotation.
    let other = SigningCert::self_signed_root("cluster.local", day * 365, t0()).unwrap();
    let other_fp = other.fingerprint().to_string();
    let replaced = secret_of(&record_patch(
        &trellis_operator::ca::SigningPair::of(&other),
        previous.as_ref(),
        Phase::Distributing,
        Queue::Keep,
    ));
    match request(&replaced, &leader, true) {
        Request::Queue(root) => assert_eq!(root.fingerprint(), other_fp),
        r => panic!("the leader queues the replaced root: {r:?}"),
    }
    assert!(matches!(request(&replaced, &follower, false), Request::Nothing));

    // Queued: kept apart from the root being rotated to.
    let queued = secret_of(&record_patch(
        &target,
        previous.as_ref(),
        Phase::Distributing,
        Queue::Set(&other),
    ));
    let stored = read(&queued).unwrap();
    assert_eq!(stored.root.fingerprint(), target_fp(&target));
    assert_eq!(
        stored.queued.as_ref().map(|q| q.fingerprint().to_string()),
        Some(other_fp.clone())
    );
    assert!(
        matches!(request(&queued, &leader, true), Request::Nothing),
        "not while rotating"
    );

    // The rotation ends (recorded, queue kept): the leader rotates to the queued root.
    leader.advance_to(Phase::Stable);
    let (target, _) = leader.persisted_at(Phase::Stable);
    let ended = secret_of(&record_patch(&target, None, Phase::Stable, Queue::Set(&other)));
    match request(&ended, &leader, true) {
        Request::Rotate { root, from_queue } => {
            assert_eq!(root.fingerprint(), other_fp);
            assert!(from_queue);
        }
        r => panic!("the leader rotates to the queued root: {r:?}"),
    }
    follower.advance_to(Phase::Stable);
    assert!(matches!(request(&ended, &follower, false), Request::Nothing));
    let cleared = record_patch(&target, None, Phase::Stable, Queue::Clear);
    assert!(cleared["data"]["queued-ca.crt"].is_null() && cleared["data"]["queued-ca.key"].is_null());
}

/// A `ca.*` replaced while no rotation runs (copied from the Secret the Mesh's
/// `spec.ca.secretRef` names, or by a person) is a request only the leader answers: a follower
/// that sees it before the leader's record starts nothing — the Secret records no rotation, and
/// read as one it would be one that has ended: the old root retired at once —; it follows the
/// leader's record, and the record of the end of a rotation it missed whole.
#[test]
fn a_replaced_root_is_followed_only_once_the_leader_has_recorded_it() {
    use trellis_operator::ca::secret::{Queue, Request, read, record_patch, requested_root};
    use trellis_operator::ca::{MeshRoots, Phase, SigningPair, SystemClock};

    let year = Duration::from_secs(365 * 86400);
    let old = SigningCert::self_signed_root("cluster.local", year, t0()).unwrap();
    let new = SigningCert::self_signed_root("cluster.local", year, t0()).unwrap();
    let load = |c: &SigningCert| SigningCert::from_pem(c.cert_pem(), &c.key_pem(), &[]).unwrap();
    let replica = || MeshRoots::new(load(&old), DEFAULT_WORKLOAD_TTL, std::sync::Arc::new(SystemClock));
    let (leader, follower) = (replica(), replica());
    let request = |secret: &k8s_openapi::api::core::v1::Secret, roots: &MeshRoots, leads| {
        requested_root(secret, read(secret), roots, "cluster.local", year, leads).unwrap()
    };

    // The leader's last record: stable on the old root; then ca.* replaced (data only, as
    // lifecycle::plugged_copy writes it).
    let stable_on_old = record_patch(&SigningPair::of(&old), None, Phase::Stable, Queue::Keep);
    assert_eq!(
        stable_on_old["metadata"]["annotations"]["trellis.dev/recorded-root"],
        old.fingerprint()
    );
    let mut replaced = secret_of(&stable_on_old);
    let data = replaced.data.as_mut().unwrap();
    data.insert(
        "ca.crt".into(),
        k8s_openapi::ByteString(new.cert_pem().as_bytes().to_vec()),
    );
    data.insert("ca.key".into(), k8s_openapi::ByteString(new.key_pem().into_bytes()));
    assert!(!read(&replaced).unwrap().recorded);
    assert!(
        matches!(request(&replaced, &follower, false), Request::Nothing),
        "a follower leaves the request to the leader"
    );
    match request(&replaced, &leader, true) {
        Request::Rotate { root, from_queue } => {
            assert_eq!(root.fingerprint(), new.fingerprint());
            assert!(!from_queue);
        }
        r => panic!("the leader answers the request: {r:?}"),
    }

    // The leader records the start (previous = the old root): the follower follows it.
    let started = secret_of(&record_patch(
        &SigningPair::of(&new),
        Some(&SigningPair::of(&old)),
        Phase::Distributing,
        Queue::Keep,
    ));
    let stored = read(&started).unwrap();
    assert!(stored.recorded);
    assert_eq!(stored.phase, Phase::Distributing);
    assert!(matches!(request(&started, &follower, false), Request::Rotate { .. }));

    // A follower that missed the whole rotation: the leader's record of its end is followed.
    let ended = secret_of(&record_patch(&SigningPair::of(&new), None, Phase::Stable, Queue::Keep));
    let stored = read(&ended).unwrap();
    assert!(stored.recorded && stored.phase == Phase::Stable);
    assert!(matches!(request(&ended, &follower, false), Request::Rotate { .. }));

    // A Secret written before the annotation: a recorded rotation (previous-ca.*) is followed, a
    // bare ca.* is not.
    let mut legacy_started = started.clone();
    legacy_started
        .metadata
        .annotations
        .as_mut()
        .unwrap()
        .remove("trellis.dev/recorded-root");
    assert!(read(&legacy_started).unwrap().recorded);
    let mut legacy_replaced = replaced.clone();
    legacy_replaced
        .metadata
        .annotations
        .as_mut()
        .unwrap()
        .remove("trellis.dev/recorded-root");
    assert!(!read(&legacy_replaced).unwrap().recorded);
    assert!(matches!(request(&legacy_replaced, &follower, false), Request::Nothing));
}

fn target_fp(pair: &trellis_operator::ca::SigningPair) -> String {
    SigningCert::from_pem(&pair.cert_pem, &pair.key_pem, &[])
        .unwrap()
        .fingerprint()
        .to_string()
}
