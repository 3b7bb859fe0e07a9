//! The webhooks' serving certificate kept current ([`keep_certificate_current`]): reissued
//! in place ([`crate::serving`]) before it expires, after a root rotation — only once the API
//! server trusts the new root, which the webhook configurations' `caBundle` says
//! ([`super::ca_bundle`]) — and after a change of the Mesh's trust domain; [`reissue_reason`]
//! is the pure decision.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use crate::ca::MeshRoots;
use crate::serving::{ServingTls, issuing_root};
use crate::settings::Settings as MeshSettings;

/// When the certificate must be reissued: `Some(why)` when it is due for renewal at `now`, or
/// when issuing moved to another root that the API server already trusts (`published`: the
/// roots in the webhooks' `caBundle`; `None` when there are no configurations to wait for), or
/// when the operator's identity moved to the Mesh's new trust domain (`identity_moved`) and
/// the issuing root is trusted (a certificate from a root the API server does not trust yet
/// would break the webhooks).
pub fn reissue_reason(
    issued: &crate::serving::Issued,
    issuing: Option<&str>,
    published: Option<&[String]>,
    identity_moved: bool,
    now: SystemTime,
) -> Option<&'static str> {
    if now >= issued.renew_at() {
        return Some("the certificate is due for renewal");
    }
    let issuing = issuing?;
    let trusted = published.is_none_or(|roots| roots.iter().any(|r| r == issuing));
    if !trusted {
        return None;
    }
    if issuing != issued.root {
        return Some("issuing moved to a root the API server trusts");
    }
    identity_moved.then_some("the Mesh's trust domain changed, and the operator's identity with it")
}

/// Keep the webhooks' certificate current: reissued before it expires, after a root rotation
/// once the `caBundle` holds the new root, and after a change of the Mesh's trust domain (looked
/// at on every change of the Mesh's valid settings this replica follows, `settings`, which
/// the certificate's identity reads its trust domain from); `renewed` hears why each time (the
/// operator makes it an event on the Mesh). Runs until the task is dropped.
pub async fn keep_certificate_current(
    tls: Arc<ServingTls>,
    roots: Arc<MeshRoots>,
    mut published: watch::Receiver<super::ca_bundle::Published>,
    mut settings: watch::Receiver<MeshSettings>,
    clock: Arc<dyn crate::ca::Clock>,
    renewed: impl Fn(&'static str) + Send,
) {
    let mut bundle = roots.bundle();
    let mut settings_open = true;
    loop {
        let issued = tls.issued();
        let wait = issued
            .renew_at()
            .duration_since(clock.now())
            .unwrap_or_default()
            // why: re-check at least every minute, so a clock jump cannot delay a renewal long.
            .min(Duration::from_secs(60));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            r = bundle.changed() => if r.is_err() { return },
            r = published.changed() => if r.is_err() { return },
            // The settings outliving the webhooks is not theirs to require: without them,
            // renewals go on.
            r = settings.changed(), if settings_open => settings_open = r.is_ok(),
        }
        let reason = {
            let published = published.borrow();
            reissue_reason(
                &tls.issued(),
                issuing_root(&roots).as_deref(),
                published.roots.as_deref(),
                tls.identity_moved(),
                clock.now(),
            )
        };
        if let Some(why) = reason {
            match tls.refresh(&roots) {
                Ok(()) => {
                    tracing::info!(%why, "the webhooks' serving certificate was reissued");
                    renewed(why);
                }
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "could not reissue the webhooks' serving certificate")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::settings::Followed;
    use crate::serving::Issued;
    use crate::settings::Defaults;

    /// [`keep_certificate_current`] running on a certificate, with no webhook configurations to
    /// wait for: what it announces, following the Mesh's settings `settings`.
    struct Kept {
        task: tokio::task::JoinHandle<()>,
        announced: tokio::sync::mpsc::UnboundedReceiver<&'static str>,
        _published: watch::Sender<crate::admission::ca_bundle::Published>,
    }

    impl Kept {
        fn start(
            tls: &Arc<ServingTls>,
            roots: Arc<MeshRoots>,
            clock: Arc<crate::ca::ManualClock>,
            settings: watch::Receiver<MeshSettings>,
        ) -> Kept {
            let (published_tx, published) = watch::channel(crate::admission::ca_bundle::Published {
                roots: None,
                current: true,
            });
            let (tx, announced) = tokio::sync::mpsc::unbounded_channel();
            let task = tokio::spawn(keep_certificate_current(
                tls.clone(),
                roots,
                published,
                settings,
                clock,
                move |why| {
                    let _ = tx.send(why);
                },
            ));
            Kept {
                task,
                announced,
                _published: published_tx,
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_renewal_reissues_in_place_and_is_announced() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000);
        let clock = Arc::new(crate::ca::ManualClock::new(t0));
        let root = crate::ca::SigningCert::self_signed_root("cluster.local", Duration::from_secs(3650 * 86400), t0)
            .expect("root");
        let roots = Arc::new(MeshRoots::new(root, Duration::from_secs(3600), clock.clone()));
        let tls = Arc::new(
            ServingTls::new(
                crate::serving::Identity {
                    spiffe_id: "spiffe://cluster.local/ns/trellis-system/sa/trellis-operator".into(),
                    dns_names: vec!["localhost".into()],
                    ttl: Duration::from_secs(3000),
                    client_auth: crate::serving::ClientAuth::None,
                    alpn: vec![],
                },
                &roots,
            )
            .expect("serving certificate"),
        );
        let first = tls.issued();
        let (_settings, settings) = watch::channel(MeshSettings::defaults(&Defaults::default()));
        let mut kept = Kept::start(&tls, roots, clock.clone(), settings);
        let (task, rx) = (&kept.task, &mut kept.announced);
        // Not yet due: nothing happens for a minute.
        tokio::time::sleep(Duration::from_secs(61)).await;
        assert!(rx.try_recv().is_err());
        // Past two thirds of its life: reissued in place, and said once.
        clock.advance(Duration::from_secs(2100));
        tokio::time::sleep(Duration::from_secs(61)).await;
        assert_eq!(rx.try_recv().ok(), Some("the certificate is due for renewal"));
        assert!(tls.issued().not_after > first.not_after, "a new certificate is served");
        assert!(rx.try_recv().is_err());
        task.abort();
    }

    #[test]
    fn reissue_on_renewal_or_once_the_new_root_is_trusted() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let issued = Issued {
            root: "old".into(),
            spiffe_id: "spiffe://cluster.local/ns/trellis-system/sa/trellis-operator".into(),
            not_before: t0,
            not_after: t0 + Duration::from_secs(3000),
        };
        let early = t0 + Duration::from_secs(10);
        assert_eq!(reissue_reason(&issued, Some("old"), None, false, early), None);
        assert!(reissue_reason(&issued, Some("old"), None, false, t0 + Duration::from_secs(2000)).is_some());
        // A rotation: not before the caBundle holds the new root.
        let only_old = vec!["old".to_string()];
        let both = vec!["old".to_string(), "new".to_string()];
        assert_eq!(
            reissue_reason(&issued, Some("new"), Some(&only_old), false, early),
            None
        );
        assert!(reissue_reason(&issued, Some("new"), Some(&both), false, early).is_some());
        assert!(reissue_reason(&issued, Some("new"), None, false, early).is_some());
        // A trust domain change: at once from a trusted root, never from one the API server
        // does not trust yet.
        assert!(reissue_reason(&issued, Some("old"), Some(&only_old), true, early).is_some());
        assert_eq!(reissue_reason(&issued, Some("new"), Some(&only_old), true, early), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_trust_domain_change_reissues_the_certificate_in_the_new_domain_and_is_announced() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000);
        let clock = Arc::new(crate::ca::ManualClock::new(t0));
        let root = crate::ca::SigningCert::self_signed_root("cluster.local", Duration::from_secs(3650 * 86400), t0)
            .expect("root");
        let roots = Arc::new(MeshRoots::new(root, Duration::from_secs(3600), clock.clone()));
        // The index, listed, and the Mesh's settings this replica follows from it.
        let defaults = Defaults::default();
        let followed = Followed::start(defaults.clone(), MeshSettings::defaults(&defaults));
        followed.apply_mesh(serde_json::json!({"trustDomain": "cluster.local"}));
        followed.list();
        let domains = crate::trust_domain::Source::settings(followed.settings.clone(), followed.index.clone());
        let tls = Arc::new(
            ServingTls::new(
                crate::serving::Identity {
                    spiffe_id: crate::serving::Subject::service_account(domains, "trellis-system", "trellis-operator"),
                    dns_names: vec!["localhost".into()],
                    ttl: Duration::from_secs(7 * 86400),
                    client_auth: crate::serving::ClientAuth::None,
                    alpn: vec![],
                },
                &roots,
            )
            .expect("serving certificate"),
        );
        assert_eq!(
            tls.issued().spiffe_id,
            "spiffe://cluster.local/ns/trellis-system/sa/trellis-operator"
        );
        let mut kept = Kept::start(&tls, roots, clock.clone(), followed.settings.clone());
        let (task, rx) = (&kept.task, &mut kept.announced);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(rx.try_recv().is_err(), "nothing changed, nothing reissued");
        // The Mesh moves to prod.example: the settings follow the index, the certificate
        // follows them at once (not at the next minute's look), and says why.
        followed.apply_mesh(serde_json::json!({"trustDomain": "prod.example"}));
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(
            rx.try_recv().ok(),
            Some("the Mesh's trust domain changed, and the operator's identity with it")
        );
        assert_eq!(
            tls.issued().spiffe_id,
            "spiffe://prod.example/ns/trellis-system/sa/trellis-operator"
        );
        // Once: other changes of the index reissue nothing; nor does an invalid Mesh naming
        // another trust domain (refused whole by the validator: its rollout batch is given
        // twice), whose trust domain is never acted on.
        followed.apply_mesh(serde_json::json!({
            "trustDomain": "other.example",
            "rollout": {"batchSize": 2, "batchPercent": 10},
        }));
        tokio::time::sleep(Duration::from_secs(61)).await;
        assert!(rx.try_recv().is_err());
        assert_eq!(
            tls.issued().spiffe_id,
            "spiffe://prod.example/ns/trellis-system/sa/trellis-operator"
        );
        task.abort();
        followed.stop().await;
    }
}
