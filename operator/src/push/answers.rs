//! A subscription's inbound half: the proxy's ACKs and NACKs — into its sync state, the
//! rollout's convergence metric, and the sender waiting for them ([`answer_to`],
//! [`acked_later`]) —, the certificate it reports serving, and its golden-signal reports.

use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tonic::Streaming;
use trellis_push::{ProxyMessage, proxy_message};

use super::{Nacked, PushService, lock, sync};
use crate::compile::Role;
use crate::registry::ObjectKey;

/// The latest answer of a proxy: the version and whether it applied it.
pub(super) type Answer = Option<(String, bool)>;

/// What the inbound half of one subscription updates.
pub(super) struct Inbound {
    pub push: PushService,
    /// `namespace/pod`.
    pub proxy: String,
    /// The subscription's id in the sync states.
    pub subscription: u64,
    /// The pod its golden signals are attributed to.
    pub reporter: ObjectKey,
    pub role: Role,
    /// Versions sent and not yet answered, with the change (generation) each carries.
    pub owed: Arc<Mutex<Vec<(String, u64)>>>,
    /// Where the sender hears the answers.
    pub answers: watch::Sender<Answer>,
}

impl Inbound {
    /// Read the proxy's messages until the subscription ends or the replica stops; then the
    /// versions still owed count as not converged and the sync state goes.
    pub async fn read(self, mut inbound: Streaming<ProxyMessage>) {
        let Inbound {
            push,
            proxy,
            subscription,
            reporter,
            role,
            owed,
            answers,
        } = self;
        let metrics = push.metrics.clone();
        let mut stopping = push.stopping.subscribe();
        // Answer the versions owed up to `version`; later ones stay owed.
        let answered = |version: &str, acked: bool| {
            let mut owed = lock(&owed);
            if let Some(i) = owed.iter().position(|(v, _)| v == version) {
                for (_, g) in owed.drain(..=i) {
                    metrics.rollout_done(g, acked);
                }
            }
        };
        loop {
            let message = tokio::select! {
                m = inbound.message() => m,
                _ = stopping.wait_for(|s| *s) => break,
            };
            match message {
                Ok(Some(ProxyMessage {
                    kind: Some(proxy_message::Kind::Ack(a)),
                })) => {
                    metrics.acks.inc();
                    answered(&a.version, true);
                    answers.send_replace(Some((a.version.clone(), true)));
                    push.sync.update(&proxy, subscription, |s| {
                        if s.sent.as_deref() == Some(a.version.as_str()) {
                            s.acked_roots = s.sent_roots.clone();
                        }
                        // A version NACKed first and applied on a retry: rejected no more.
                        if s.nacked.as_ref().is_some_and(|n| n.version == a.version) {
                            s.nacked = None;
                        }
                        s.acked = Some(a.version);
                    });
                }
                Ok(Some(ProxyMessage {
                    kind: Some(proxy_message::Kind::Nack(n)),
                })) => {
                    metrics.nacks.inc();
                    answered(&n.version, false);
                    answers.send_replace(Some((n.version.clone(), false)));
                    tracing::warn!(%proxy, version = %n.version, error = %n.error, "proxy rejected a config");
                    push.sync.update(&proxy, subscription, |s| {
                        s.nacked = Some(Nacked {
                            version: n.version,
                            error: n.error,
                        })
                    });
                }
                Ok(Some(ProxyMessage {
                    kind: Some(proxy_message::Kind::Certificate(c)),
                })) => {
                    if let Some(certificate) = sync::reported_certificate(&proxy, &c.certificate_json) {
                        tracing::info!(%proxy, root = %certificate.root_fingerprint, serial = %certificate.serial, "proxy serves a new certificate");
                        push.sync
                            .update(&proxy, subscription, |s| s.certificate = Some(certificate));
                    }
                }
                Ok(Some(ProxyMessage {
                    kind: Some(proxy_message::Kind::Signals(signals)),
                })) => {
                    if let Some(traffic) = &push.traffic {
                        traffic.record(&push.snapshot(), &reporter, role == Role::Gateway, &signals);
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        for (_, g) in lock(&owed).drain(..) {
            metrics.rollout_done(g, false);
        }
        push.sync.unsubscribed(&proxy, subscription);
        tracing::info!(%proxy, "proxy disconnected");
    }
}

/// The proxy's next answer to `version` (whether it applied it); `None` once it is gone.
pub(super) async fn answer_to(answers: &mut watch::Receiver<Answer>, version: &str) -> Option<bool> {
    loop {
        answers.changed().await.ok()?;
        if let Some((v, applied)) = answers.borrow_and_update().as_ref()
            && v == version
        {
            return Some(*applied);
        }
    }
}

/// Until the proxy ACKs `version`, one it NACKed (`None`: never); `None` once it is gone.
pub(super) async fn acked_later(answers: &mut watch::Receiver<Answer>, version: Option<&str>) -> Option<()> {
    let Some(version) = version else {
        return std::future::pending().await;
    };
    while !answer_to(answers, version).await? {}
    Some(())
}
