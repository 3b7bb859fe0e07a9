//! The CA as the Mesh asks for it, kept by the leader:
//! - a **self-signed** root is rotated before it expires: once less than a fifth of its
//!   lifetime is left (Istio's grace period), the leader asks for a new root the way a person
//!   does, with the `trellis.dev/rotate-root` annotation on the CA Secret, and the rotation
//!   machinery ([`super::roots`], [`super::secret`]) does the rest. Its lifetime is the shorter
//!   of its validity and `spec.ca.rootCertTtl` as the Mesh says it now: shortening the TTL
//!   brings the rotation of the root in use forward, as if it had been made with the new one;
//!   the new root is made for the TTL in force then;
//! - a **plugged** root in the Secret `spec.ca.secretRef` names (any namespace) is used: its
//!   `ca.crt`, `ca.key` and `cert-chain.pem` are copied into the CA Secret, which the operator
//!   rotates to with no restart, and copied again whenever the user replaces them. Replaced
//!   during a rotation, it is copied into the CA Secret's queue (`queued-ca.*`) and rotated to
//!   once the rotation under way ends ([`super::secret`]).
//!
//! Every replica signs, so every replica follows `spec.ca.workloadCertTtl` itself
//! ([`follow_workload_ttl`]): the next certificate it signs has the lifetime the Mesh says now.
//!
//! When a root is due is [`super::expiry`]'s; [`plugged_copy`] is pure; [`run`] is the leader's
//! loop.
//!
//! # Caveats
//! - A plugged root is the user's to renew: it is never rotated here, only reported when it
//!   nears expiry (`Degraded`/`RootExpiringSoon` on the Mesh).

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use tokio::sync::watch;
use trellis_api::mesh::CaMode;

use super::MeshRoots;
use super::expiry::expiring_root;
use super::secret::{
    CA_CERT, CA_KEY, CA_SECRET, CERT_CHAIN, EXPIRY_REQUEST, PREVIOUS_CERT, QUEUED_CERT, QUEUED_CHAIN, QUEUED_KEY,
    ROTATE_ANNOTATION,
};
use crate::settings::Settings;

/// How often the leader looks at the root's expiry.
// why: roots live years and are rotated with a fifth of their life left; ten minutes of delay
// is nothing next to that, and costs nothing.
pub const EXPIRY_CHECK: Duration = Duration::from_secs(600);

/// The keys of a plugged Secret the CA Secret takes (the chain only for an intermediate).
const PLUGGED_KEYS: [&str; 3] = [CA_CERT, CA_KEY, CERT_CHAIN];

/// The merge patch copying a plugged Secret's root into the CA Secret, or why it cannot be;
/// `Ok(None)` when the CA Secret already holds it. While the CA Secret records a rotation
/// (`previous-ca.crt`) the root goes into its queue (`queued-ca.*`) instead, rotated to once
/// the rotation ends; a queued root the plugged Secret no longer asks for is removed.
pub fn plugged_copy(plugged: &Secret, ca: Option<&Secret>) -> Result<Option<serde_json::Value>, String> {
    let name = format!(
        "{}/{}",
        plugged.metadata.namespace.as_deref().unwrap_or_default(),
        plugged.metadata.name.as_deref().unwrap_or_default()
    );
    let data = plugged.data.clone().unwrap_or_default();
    for key in [CA_CERT, CA_KEY] {
        if !data.contains_key(key) {
            return Err(format!(
                "Secret {name} (spec.ca.secretRef) has no {key}: put the root or intermediate in {CA_CERT} and its key in {CA_KEY} (and {CERT_CHAIN} up to the root for an intermediate)"
            ));
        }
    }
    let cert =
        String::from_utf8(data[CA_CERT].0.clone()).map_err(|_| format!("Secret {name}: {CA_CERT} is not PEM"))?;
    let key = String::from_utf8(data[CA_KEY].0.clone()).map_err(|_| format!("Secret {name}: {CA_KEY} is not PEM"))?;
    let chain: Vec<String> = data
        .get(CERT_CHAIN)
        .and_then(|c| String::from_utf8(c.0.clone()).ok())
        .map(|pem| {
            pem.split_inclusive("-----END CERTIFICATE-----")
                .map(|c| c.trim_start().to_string())
                .filter(|c| c.contains("-----BEGIN CERTIFICATE-----"))
                .collect()
        })
        .unwrap_or_default();
    super::SigningCert::from_pem(&cert, &key, &chain)
        .map_err(|e| format!("Secret {name} (spec.ca.secretRef) cannot sign certificates: {e}"))?;
    let held = ca.and_then(|s| s.data.as_ref());
    let holds = |keys: [&str; 3]| {
        PLUGGED_KEYS
            .iter()
            .zip(keys)
            .all(|(from, to)| held.and_then(|d| d.get(to)) == data.get(*from))
    };
    let queued_keys = [QUEUED_CERT, QUEUED_KEY, QUEUED_CHAIN];
    let queued = held.is_some_and(|d| d.contains_key(QUEUED_CERT));
    if holds(PLUGGED_KEYS) {
        // In use or being rotated to; a root queued since is not asked for any more.
        return Ok(
            queued.then(|| serde_json::json!({"data": {QUEUED_CERT: null, QUEUED_KEY: null, QUEUED_CHAIN: null}}))
        );
    }
    let rotating = held.is_some_and(|d| d.contains_key(PREVIOUS_CERT));
    let to = if rotating { queued_keys } else { PLUGGED_KEYS };
    if rotating && holds(queued_keys) {
        return Ok(None);
    }
    let b64 = |k: &str| {
        data.get(k)
            .map(|v| {
                serde_json::Value::String(base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &v.0))
            })
            .unwrap_or(serde_json::Value::Null)
    };
    let copied: serde_json::Map<String, serde_json::Value> = PLUGGED_KEYS
        .iter()
        .zip(to)
        .map(|(from, to)| (to.to_string(), b64(from)))
        .collect();
    Ok(Some(serde_json::json!({ "data": copied })))
}

/// Why the CA cannot follow the Mesh's CA settings now (shown in `CertificateAuthorityReady`).
pub type Problem = Arc<RwLock<Option<String>>>;

fn set(problem: &Problem, value: Option<String>) {
    if let Ok(mut p) = problem.write() {
        *p = value;
    }
}

/// Ask for a new self-signed root when the one in use nears its expiry: looked at every
/// [`EXPIRY_CHECK`], and at once when the settings change (a shorter `spec.ca.rootCertTtl` can
/// make the root in use due).
async fn rotate_before_expiry(
    client: Client,
    namespace: String,
    roots: Arc<MeshRoots>,
    mut settings: watch::Receiver<Settings>,
) {
    let api: Api<Secret> = Api::namespaced(client, &namespace);
    let mut tick = tokio::time::interval(EXPIRY_CHECK);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            changed = settings.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
        let (mode, ttl) = {
            let s = settings.borrow();
            (s.ca.mode, s.ca.root_cert_ttl)
        };
        if mode != CaMode::SelfSigned {
            continue;
        }
        let Some(expiring) = expiring_root(&roots, ttl, SystemTime::now()) else {
            continue;
        };
        let patch = serde_json::json!({"metadata": {"annotations": {ROTATE_ANNOTATION: EXPIRY_REQUEST}}});
        match api
            .patch(CA_SECRET, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                tracing::info!(root = %expiring, root_cert_ttl = ?ttl, "the self-signed root has less than a fifth of its life left (its validity, or spec.ca.rootCertTtl if shorter); rotating to a new one")
            }
            Err(e) => tracing::warn!(error = %e, "could not ask for the rotation of the expiring root; retrying"),
        }
    }
}

/// Sign with the workload certificate lifetime `settings` (this replica's view of the Mesh)
/// give, from now on and whenever it changes, until they end.
pub async fn follow_workload_ttl(roots: Arc<MeshRoots>, mut settings: watch::Receiver<Settings>) {
    loop {
        let ttl = settings.borrow_and_update().ca.workload_cert_ttl;
        if roots.workload_ttl() != ttl {
            tracing::info!(from = ?roots.workload_ttl(), to = ?ttl, "spec.ca.workloadCertTtl: the next workload certificates are signed for the new lifetime");
            roots.set_workload_ttl(ttl);
        }
        if settings.changed().await.is_err() {
            return;
        }
    }
}

/// Copy the plugged Secret `(ns, name)` into the CA Secret whenever it changes.
async fn follow_plugged(client: Client, namespace: String, from: (String, String), problem: Problem) {
    use kube::runtime::WatchStreamExt;
    let (ns, name) = from;
    let source: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let ca: Api<Secret> = Api::namespaced(client, &namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut stream = watcher::watcher(source, config).default_backoff().boxed();
    let mut seen = false;
    while let Some(event) = stream.next().await {
        let plugged = match event {
            Ok(Event::Apply(s) | Event::InitApply(s)) => {
                seen = true;
                s
            }
            Ok(Event::Delete(_)) => {
                seen = false;
                set(
                    &problem,
                    Some(format!(
                        "Secret {ns}/{name} (spec.ca.secretRef) was deleted; the CA keeps the root it holds"
                    )),
                );
                continue;
            }
            Ok(Event::InitDone) if !seen => {
                set(
                    &problem,
                    Some(format!(
                        "Secret {ns}/{name} (spec.ca.secretRef) does not exist: create it with ca.crt and ca.key"
                    )),
                );
                continue;
            }
            Ok(_) => continue,
            Err(e) => {
                tracing::warn!(error = %e, secret = %format!("{ns}/{name}"), "watching the plugged CA Secret failed; retrying");
                continue;
            }
        };
        let current = match ca.get_opt(CA_SECRET).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "could not read the CA Secret");
                continue;
            }
        };
        match plugged_copy(&plugged, current.as_ref()) {
            Ok(None) => set(&problem, None),
            Ok(Some(patch)) => match ca
                .patch(CA_SECRET, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    set(&problem, None);
                    if patch["data"].get(QUEUED_CERT).is_some_and(|v| !v.is_null()) {
                        tracing::info!(from = %format!("{ns}/{name}"), "copied the plugged root into the CA Secret's queue; rotating to it once the rotation under way ends");
                    } else {
                        tracing::info!(from = %format!("{ns}/{name}"), "copied the plugged root into the CA Secret; rotating to it");
                    }
                }
                Err(e) => set(
                    &problem,
                    Some(format!(
                        "could not copy Secret {ns}/{name} into {namespace}/{CA_SECRET}: {e}"
                    )),
                ),
            },
            Err(why) => set(&problem, Some(why)),
        }
    }
}

/// Keep the CA as the Mesh's settings ask, until the task is aborted (leadership lost): the
/// self-signed root rotated before expiry, a plugged root in another Secret followed.
pub async fn run(
    client: Client,
    namespace: String,
    roots: Arc<MeshRoots>,
    mut settings: watch::Receiver<Settings>,
    problem: Problem,
) {
    let expiry = tokio::spawn(rotate_before_expiry(
        client.clone(),
        namespace.clone(),
        roots,
        settings.clone(),
    ));
    let mut follower: Option<((String, String), tokio::task::JoinHandle<()>)> = None;
    loop {
        let wanted = settings
            .borrow_and_update()
            .ca
            .plugged_from
            .clone()
            .filter(|(ns, name)| !(ns == &namespace && name == CA_SECRET));
        if follower.as_ref().map(|(f, _)| f) != wanted.as_ref() {
            if let Some((_, task)) = follower.take() {
                task.abort();
            }
            set(&problem, None);
            if let Some(from) = wanted {
                let task = tokio::spawn(follow_plugged(
                    client.clone(),
                    namespace.clone(),
                    from.clone(),
                    problem.clone(),
                ));
                follower = Some((from, task));
            }
        }
        if settings.changed().await.is_err() {
            break;
        }
    }
    expiry.abort();
    if let Some((_, task)) = follower {
        task.abort();
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::ByteString;

    use super::*;
    use crate::ca::SigningCert;

    #[tokio::test]
    async fn every_replica_signs_with_the_workload_ttl_the_mesh_says_now() {
        use crate::settings::Defaults;
        let t0 = SystemTime::now();
        let root = SigningCert::self_signed_root("cluster.local", Duration::from_secs(365 * 86400), t0).unwrap();
        let roots = Arc::new(MeshRoots::new(
            root,
            Duration::from_secs(3600),
            Arc::new(crate::ca::SystemClock),
        ));
        let mut settings = Settings::defaults(&Defaults::default());
        settings.ca.workload_cert_ttl = Duration::from_secs(24 * 3600);
        let (tx, rx) = watch::channel(settings.clone());
        let follower = tokio::spawn(follow_workload_ttl(roots.clone(), rx));
        let lifetime = |roots: &MeshRoots| {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut params = rcgen::CertificateParams::default();
            params.subject_alt_names = vec![rcgen::SanType::URI(
                "spiffe://cluster.local/ns/shop/sa/web".try_into().unwrap(),
            )];
            let csr = params.serialize_request(&key).unwrap().pem().unwrap();
            let who = crate::ca::Authorized::service_account("cluster.local", "shop", "web");
            let (leaf, _) = roots.sign(&csr, &who).unwrap();
            leaf.not_after.duration_since(t0).unwrap()
        };
        let within = |got: Duration, want: Duration| got.abs_diff(want) < Duration::from_secs(120);
        let waited = |want: Duration| {
            let roots = roots.clone();
            async move {
                for _ in 0..100 {
                    if roots.workload_ttl() == want {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                panic!("the follower did not apply {want:?}");
            }
        };
        waited(Duration::from_secs(24 * 3600)).await;
        assert!(
            within(lifetime(&roots), Duration::from_secs(24 * 3600)),
            "the Mesh's, not the start's"
        );
        // The Mesh changes: the next certificate has the new lifetime, without a restart.
        settings.ca.workload_cert_ttl = Duration::from_secs(600);
        tx.send_replace(settings);
        waited(Duration::from_secs(600)).await;
        assert!(
            within(lifetime(&roots), Duration::from_secs(600)),
            "{:?}",
            lifetime(&roots)
        );
        drop(tx);
        tokio::time::timeout(Duration::from_secs(1), follower)
            .await
            .expect("the follower ends with its settings")
            .unwrap();
    }

    /// The expiry check can write its request again before the leader has answered the first
    /// (at start, the periodic look and the settings the index brings run a moment apart): the
    /// second is moot once the expiring root is being replaced, or has been, never queued as a
    /// second rotation. A person's request during the rotation is still queued.
    #[test]
    fn the_request_for_an_expiring_root_is_one_rotation_however_often_it_is_written() {
        use crate::ca::Phase;
        use crate::ca::secret::{CA_SECRET, Request, read, requested_root};
        let day = Duration::from_secs(86400);
        let old = SigningCert::self_signed_root("cluster.local", 10 * day, SystemTime::now() - 9 * day).unwrap();
        let old_pem = (old.cert_pem().to_string(), old.key_pem());
        let roots = MeshRoots::new(old, Duration::from_secs(3600), Arc::new(crate::ca::SystemClock));
        let asking = |(cert, key): &(String, String), value: &str| {
            let mut s = secret("trellis-system", CA_SECRET, &[(CA_CERT, cert), (CA_KEY, key)]);
            s.metadata.annotations = Some([(ROTATE_ANNOTATION.to_string(), value.to_string())].into());
            s
        };
        let request = |s: &Secret| requested_root(s, read(s), &roots, "cluster.local", 10 * day, true).unwrap();
        let new = match request(&asking(&old_pem, EXPIRY_REQUEST)) {
            Request::Rotate { root, from_queue } => {
                assert!(!from_queue);
                root
            }
            r => panic!("the first request rotates: {r:?}"),
        };
        let new_pem = (new.cert_pem().to_string(), new.key_pem());
        roots.start_rotation(new).unwrap();
        let again = request(&asking(&new_pem, EXPIRY_REQUEST));
        assert!(
            matches!(again, Request::Moot),
            "written again during the rotation: {again:?}"
        );
        assert!(matches!(request(&asking(&new_pem, "now")), Request::Queue(_)));
        roots.advance_to(Phase::Stable);
        let after = request(&asking(&new_pem, EXPIRY_REQUEST));
        assert!(
            matches!(after, Request::Moot),
            "written again once the rotation ended: {after:?}"
        );
    }

    fn secret(ns: &str, name: &str, data: &[(&str, &str)]) -> Secret {
        Secret {
            metadata: kube::api::ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(name.into()),
                ..Default::default()
            },
            data: Some(
                data.iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                    .collect(),
            ),
            ..Secret::default()
        }
    }

    #[test]
    fn a_plugged_root_is_copied_once_and_a_broken_one_is_said() {
        let root =
            SigningCert::self_signed_root("example.org", Duration::from_secs(365 * 86400), SystemTime::now()).unwrap();
        let key = root.key_pem();
        let plugged = secret("security", "corp-ca", &[(CA_CERT, root.cert_pem()), (CA_KEY, &key)]);
        let patch = plugged_copy(&plugged, None).unwrap().expect("a copy");
        let b64 = |s: &str| base64::Engine::encode(&base64::engine::general_purpose::STANDARD, s);
        assert_eq!(patch["data"][CA_CERT], b64(root.cert_pem()));
        assert_eq!(patch["data"][CA_KEY], b64(&key));
        assert!(patch["data"][CERT_CHAIN].is_null(), "no chain for a root: removed");
        // The CA Secret holds it: nothing to copy.
        let ca = secret(
            "trellis-system",
            CA_SECRET,
            &[(CA_CERT, root.cert_pem()), (CA_KEY, &key)],
        );
        assert_eq!(plugged_copy(&plugged, Some(&ca)).unwrap(), None);
        // Missing or unusable keys are said, naming the Secret and the fix.
        let err = plugged_copy(&secret("security", "corp-ca", &[(CA_CERT, root.cert_pem())]), None).unwrap_err();
        assert!(
            err.contains("Secret security/corp-ca") && err.contains("has no ca.key"),
            "{err}"
        );
        let err = plugged_copy(
            &secret("security", "corp-ca", &[(CA_CERT, "junk"), (CA_KEY, "junk")]),
            None,
        )
        .unwrap_err();
        assert!(err.contains("cannot sign certificates"), "{err}");
    }

    /// A plugged root replaced during a rotation goes into the CA Secret's queue, never over
    /// the root being rotated to; asked for again, nothing more is written; the rotation's
    /// own root asked for again empties the queue.
    #[test]
    fn a_plugged_root_replaced_during_a_rotation_is_queued() {
        let root = |cn: &str| {
            let r = SigningCert::self_signed_root(cn, Duration::from_secs(365 * 86400), SystemTime::now()).unwrap();
            let key = r.key_pem();
            (r.cert_pem().to_string(), key)
        };
        let (target, target_key) = root("target.example");
        let (old, old_key) = root("old.example");
        let (next, next_key) = root("next.example");
        let rotating = secret(
            "trellis-system",
            CA_SECRET,
            &[
                (CA_CERT, &target),
                (CA_KEY, &target_key),
                (PREVIOUS_CERT, &old),
                (super::super::secret::PREVIOUS_KEY, &old_key),
            ],
        );
        let plugged = secret("security", "corp-ca", &[(CA_CERT, &next), (CA_KEY, &next_key)]);
        let patch = plugged_copy(&plugged, Some(&rotating)).unwrap().expect("a copy");
        let b64 = |s: &str| base64::Engine::encode(&base64::engine::general_purpose::STANDARD, s);
        assert_eq!(patch["data"][QUEUED_CERT], b64(&next), "{patch}");
        assert_eq!(patch["data"][QUEUED_KEY], b64(&next_key));
        assert!(
            patch["data"].get(CA_CERT).is_none() && patch["data"].get(CA_KEY).is_none(),
            "the root being rotated to stays: {patch}"
        );
        // Queued already: nothing to write.
        let mut queued = rotating.clone();
        let data = queued.data.as_mut().unwrap();
        data.insert(QUEUED_CERT.into(), ByteString(next.as_bytes().to_vec()));
        data.insert(QUEUED_KEY.into(), ByteString(next_key.as_bytes().to_vec()));
        assert_eq!(plugged_copy(&plugged, Some(&queued)).unwrap(), None);
        // The user goes back to the root being rotated to: the queue is emptied.
        let back = secret("security", "corp-ca", &[(CA_CERT, &target), (CA_KEY, &target_key)]);
        let patch = plugged_copy(&back, Some(&queued)).unwrap().expect("the queue emptied");
        assert!(
            patch["data"][QUEUED_CERT].is_null() && patch["data"][QUEUED_KEY].is_null(),
            "{patch}"
        );
        // No rotation under way: copied into ca.* as before.
        let stable = secret(
            "trellis-system",
            CA_SECRET,
            &[(CA_CERT, &target), (CA_KEY, &target_key)],
        );
        let patch = plugged_copy(&plugged, Some(&stable)).unwrap().expect("a copy");
        assert_eq!(patch["data"][CA_CERT], b64(&next));
    }
}
