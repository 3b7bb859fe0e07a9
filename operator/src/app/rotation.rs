//! The root rotation as every replica drives it ([`drive_rotation`]): from what every
//! replica's connected proxies acknowledge and report serving, the leader records each phase in
//! the CA Secret and enters it; the push API's serving certificate follows the trust bundle and
//! the Mesh's trust domain.

use std::sync::Arc;
use std::time::Duration;

use kube::Client;

use crate::ca::{MeshRoots, Phase, secret};
use crate::index;
use crate::leader::Leadership;
use crate::push::PushService;
use crate::serving::ServingTls;

/// How often the rotation looks at the proxies' sync state.
// why: ACKs arrive within milliseconds of a push; a fifth of a second keeps each phase change
// prompt without a notification path from every ACK.
const ROTATION_TICK: Duration = Duration::from_millis(200);

/// What the root rotation reads besides the roots and the push: where the CA Secret is (none:
/// a replica alone, with no Kubernetes API, decides and enters phases by itself), whether this
/// replica leads, and the other replicas' proxies.
pub(super) struct Rotation {
    pub(super) secret: Option<(Client, String)>,
    pub(super) leadership: Leadership,
    pub(super) replicas: crate::peers::Replicas,
    pub(super) index: index::Shared,
    pub(super) peers: crate::peers::Peers,
}

/// Advance the root rotation from what every replica's connected proxies acknowledge and
/// report serving: the leader records the phase the reports allow in the CA Secret, then enters
/// it; the others only assess (for their status) and enter the phases the Secret records
/// ([`secret::watch`]). Reissue the operator's serving certificate when the bundle changes, or
/// when the Mesh's trust domain changed (it names the operator in it).
pub(super) async fn drive_rotation(
    rotation: Rotation,
    roots: Arc<MeshRoots>,
    push: PushService,
    serving: Arc<ServingTls>,
) {
    let mut tick = tokio::time::interval(ROTATION_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut bundle = roots.bundle();
    // Every proxy known to run — seen connected on any replica, or the proxy of a Ready pod
    // running one (an injected sidecar or a gateway) —, and when it was seen: one away from
    // every replica (its replica killed, its reconnection slow) holds the rotation while its
    // pod exists. Kept up to date with no rotation under way too, so that this replica, leading
    // next, knows the proxies of the one it replaces.
    let mut seen = std::collections::BTreeMap::new();
    loop {
        tick.tick().await;
        if serving.identity_moved()
            && let Err(e) = serving.refresh(&roots)
        {
            tracing::error!(error = %format!("{e:#}"), "could not reissue the push API's serving certificate in the Mesh's trust domain");
        }
        let replicas: Vec<String> = rotation
            .replicas
            .targets(&rotation.index)
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        // Nothing is decided on an index that has not listed the pods yet (it would know of
        // no proxy's pod).
        let reports = match (rotation.peers.read(), rotation.index.read()) {
            (Ok(answers), Ok(index)) if index.synced() => {
                let pod_exists = |proxy: &str| {
                    proxy
                        .split_once('/')
                        .is_some_and(|(namespace, pod)| index.has_pod(namespace, pod))
                };
                let ready_proxies: Vec<String> = index.ready_proxies().map(ToString::to_string).collect();
                let now = std::time::SystemTime::now();
                Some(crate::peers::rotation_reports(
                    push.sync_state(),
                    &replicas,
                    &answers,
                    &mut seen,
                    pod_exists,
                    &ready_proxies,
                    now,
                ))
            }
            _ => None,
        };
        if let Some(reports) = reports.filter(|_| roots.phase() != Phase::Stable) {
            let assessment = roots.assess(&reports);
            // The rotation assessed, by the root it rotates to: the CA Secret's watch may end
            // it (following the leader's own record of its end) and start a queued root's
            // rotation while this one records; the phase is recorded and entered for the
            // rotation it was assessed for only, never for the next one.
            if let (Some(to), Some(target)) = (assessment.to.as_deref(), assessment.allowed.last().copied())
                && rotation.leadership.is_leader()
            {
                match &rotation.secret {
                    None => {
                        roots.advance_rotation(to, target);
                    }
                    // Recorded before entered: the followers never run behind a phase the
                    // leader acts on for longer than their watch takes.
                    Some((client, namespace)) => {
                        match secret::record_phase(client, namespace, &roots, to, target).await {
                            Ok(true) => {
                                roots.advance_rotation(to, target);
                            }
                            Ok(false) => {}
                            Err(e) => {
                                tracing::warn!(phase = %target, error = %format!("{e:#}"), "could not record the root rotation's next phase in the CA Secret; retrying")
                            }
                        }
                    }
                }
            }
        }
        if bundle.has_changed().unwrap_or(false) {
            bundle.borrow_and_update();
            if let Err(e) = serving.refresh(&roots) {
                tracing::error!(error = %format!("{e:#}"), "could not reissue the push API's serving certificate");
            }
        }
    }
}
