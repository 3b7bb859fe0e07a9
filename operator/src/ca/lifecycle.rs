//! The CA as the Mesh asks for it, kept by the leader:
//! - a **self-signed** root is rotated before it expires: once less than a fifth of its
//!   lifetime is left (Istio's grace period), the leader asks for a new root the way a person
//!   does, with the `trellis.dev/rotate-root` annotation on the CA Secret, and the rotation
//!   machinery ([`super::roots`], [`super::secret`]) does the rest;
//! - a **plugged** root in the Secret `spec.ca.secretRef` names (any namespace) is used: its
//!   `ca.crt`, `ca.key` and `cert-chain.pem` are copied into the CA Secret, which the operator
//!   rotates to with no restart, and copied again whenever the user replaces them.
//!
//! [`rotation_due`] and [`plugged_copy`] are pure; [`run`] is the leader's loop.
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
use super::secret::{CA_CERT, CA_KEY, CA_SECRET, CERT_CHAIN, ROTATE_ANNOTATION};
use crate::mesh::settings::Settings;

/// How often the leader looks at the root's expiry.
// why: roots live years and are rotated with a fifth of their life left; ten minutes of delay
// is nothing next to that, and costs nothing.
pub const EXPIRY_CHECK: Duration = Duration::from_secs(600);

/// Whether a root valid from `not_before` to `not_after` should be rotated at `now`: less than
/// a fifth of its lifetime is left.
pub fn rotation_due(not_before: SystemTime, not_after: SystemTime, now: SystemTime) -> bool {
    let lifetime = not_after.duration_since(not_before).unwrap_or_default();
    now + lifetime / 5 >= not_after
}

/// The issuing root's fingerprint when it is due for rotation at `now` and no rotation runs.
pub fn expiring_root(roots: &MeshRoots, now: SystemTime) -> Option<String> {
    let status = roots.status();
    if status.phase != "Stable" {
        return None;
    }
    let issuing = status.roots.into_iter().find(|r| r.issuing)?;
    let at = |s: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
    rotation_due(at(issuing.not_before_unix), at(issuing.not_after_unix), now).then_some(issuing.fingerprint)
}

/// The keys of a plugged Secret the CA Secret takes (the chain only for an intermediate).
const PLUGGED_KEYS: [&str; 3] = [CA_CERT, CA_KEY, CERT_CHAIN];

/// The merge patch copying a plugged Secret's root into the CA Secret, or why it cannot be;
/// `Ok(None)` when the CA Secret already holds it.
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
    if PLUGGED_KEYS
        .iter()
        .all(|k| held.and_then(|d| d.get(*k)) == data.get(*k))
    {
        return Ok(None);
    }
    let b64 = |k: &str| {
        data.get(k)
            .map(|v| {
                serde_json::Value::String(base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &v.0))
            })
            .unwrap_or(serde_json::Value::Null)
    };
    Ok(Some(serde_json::json!({"data": {
        CA_CERT: b64(CA_CERT),
        CA_KEY: b64(CA_KEY),
        CERT_CHAIN: b64(CERT_CHAIN),
    }})))
}

/// Why the CA cannot follow the Mesh's CA settings now (shown in `CertificateAuthorityReady`).
pub type Problem = Arc<RwLock<Option<String>>>;

fn set(problem: &Problem, value: Option<String>) {
    if let Ok(mut p) = problem.write() {
        *p = value;
    }
}

/// Ask for a new self-signed root when the one in use nears its expiry.
async fn rotate_before_expiry(
    client: Client,
    namespace: String,
    roots: Arc<MeshRoots>,
    settings: watch::Receiver<Settings>,
) {
    let api: Api<Secret> = Api::namespaced(client, &namespace);
    let mut tick = tokio::time::interval(EXPIRY_CHECK);
    loop {
        tick.tick().await;
        if settings.borrow().ca.mode != CaMode::SelfSigned {
            continue;
        }
        let Some(expiring) = expiring_root(&roots, SystemTime::now()) else {
            continue;
        };
        let patch = serde_json::json!({"metadata": {"annotations": {ROTATE_ANNOTATION: "expiring"}}});
        match api
            .patch(CA_SECRET, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                tracing::info!(root = %expiring, "the self-signed root has less than a fifth of its life left; rotating to a new one")
            }
            Err(e) => tracing::warn!(error = %e, "could not ask for the rotation of the expiring root; retrying"),
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
                    tracing::info!(from = %format!("{ns}/{name}"), "copied the plugged root into the CA Secret; rotating to it");
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

    #[test]
    fn a_root_is_due_with_a_fifth_of_its_life_left() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let end = t0 + Duration::from_secs(1000);
        assert!(!rotation_due(t0, end, t0));
        assert!(!rotation_due(t0, end, t0 + Duration::from_secs(799)));
        assert!(rotation_due(t0, end, t0 + Duration::from_secs(800)));
        assert!(rotation_due(t0, end, end + Duration::from_secs(1)), "expired: overdue");
    }

    #[test]
    fn the_issuing_root_is_named_when_it_nears_expiry() {
        let t0 = SystemTime::now();
        let root = SigningCert::self_signed_root("cluster.local", Duration::from_secs(10 * 86400), t0).unwrap();
        let fp = root.fingerprint().to_string();
        let roots = MeshRoots::new(root, Duration::from_secs(3600), Arc::new(crate::ca::SystemClock));
        assert_eq!(expiring_root(&roots, t0), None);
        assert_eq!(expiring_root(&roots, t0 + Duration::from_secs(9 * 86400)), Some(fp));
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
}
