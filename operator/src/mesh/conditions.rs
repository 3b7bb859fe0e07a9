//! The Mesh's conditions, computed from what the operator observes, and the transitions
//! between two sets of them (each one an event).
//!
//! The certificate authority's condition and events are [`certificate_authority`]'s.
//!
//! Pure: plain observations in, conditions out. Every condition has a reason (PascalCase, for
//! machines) and a message saying what is wrong and what to do (for people).
//!
//! # Guarantees
//! - `lastTransitionTime` moves only when a condition's status changes.
//! - [`transitions`] reports a condition whose status or reason changed, once.

use std::time::SystemTime;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use trellis_api::mesh::conditions::*;
use trellis_api::mesh::{DataPlaneStatus, RolloutPhase, RolloutStatus};

use crate::settings::Invalid;

mod certificate_authority;
use certificate_authority::ca_condition;
pub use certificate_authority::{CaObservation, ROOT_EXPIRY_WARNING, ca_transitions};

/// Whether the admission webhooks are served with a current CA bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhooksObservation {
    /// Ready.
    pub ready: bool,
    /// Why (PascalCase).
    pub reason: String,
    /// What to do.
    pub message: String,
}

/// Everything the conditions are computed from.
#[derive(Debug)]
pub struct Observed<'a> {
    /// The Mesh's `metadata.generation`.
    pub generation: Option<i64>,
    /// Why the spec is not acted on, if it is not.
    pub invalid: Option<&'a Invalid>,
    /// The CA.
    pub ca: &'a CaObservation,
    /// The webhooks.
    pub webhooks: &'a WebhooksObservation,
    /// The data plane.
    pub data_plane: &'a DataPlaneStatus,
    /// The proxy image the Mesh asks for.
    pub proxy_image: &'a str,
    /// The rollout.
    pub rollout: Option<&'a RolloutStatus>,
    /// Why the rollout waits for the control plane, if it does
    /// ([`crate::rollout::control_plane`]).
    pub control_plane: Option<&'a str>,
    /// Now.
    pub now: SystemTime,
}

/// One condition that changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// Condition type.
    pub type_: String,
    /// New status.
    pub status: String,
    /// New reason.
    pub reason: String,
    /// New message.
    pub message: String,
    /// Whether a person should look (an event of type Warning).
    pub warning: bool,
}

fn data_plane_condition(dp: &DataPlaneStatus, image: &str) -> (bool, &'static str, String) {
    let summary = format!(
        "{} proxies: {} on {image}, {} connected, {} in sync",
        dp.proxies, dp.up_to_date, dp.connected, dp.synced
    );
    if dp.proxies == 0 {
        (true, "NoProxies", "no meshed pods yet".into())
    } else if dp.up_to_date < dp.proxies {
        (
            false,
            "Outdated",
            format!("{summary}; the rollout brings the rest to it"),
        )
    } else if dp.connected < dp.proxies {
        (
            false,
            "Disconnected",
            format!("{summary}; a disconnected proxy keeps its last config (see /debug/syncz on the operator)"),
        )
    } else if dp.synced < dp.proxies {
        (
            false,
            "NotSynced",
            format!("{summary}; a proxy that NACKs says why in /debug/syncz"),
        )
    } else {
        (true, "UpToDate", summary)
    }
}

fn rollout_condition(r: Option<&RolloutStatus>) -> (bool, &'static str, String) {
    let Some(r) = r else {
        return (
            false,
            "NoRollout",
            "every meshed workload runs the Mesh's proxy image".into(),
        );
    };
    match r.phase {
        Some(RolloutPhase::Progressing) => (
            true,
            "WaveInProgress",
            format!(
                "wave {} is restarting {} workloads onto {} ({} updated, {} to go)",
                r.wave,
                r.wave_workloads.as_ref().map_or(0, Vec::len),
                r.target_image,
                r.updated,
                r.pending
            ),
        ),
        Some(RolloutPhase::Soaking) => (
            true,
            "WaveSoaking",
            format!(
                "wave {} is healthy on {} and soaking before the next ({} updated, {} to go)",
                r.wave, r.target_image, r.updated, r.pending
            ),
        ),
        Some(RolloutPhase::Paused) => (
            false,
            "Paused",
            format!(
                "spec.rollout.paused is true: {} of {} workloads run {}; set it to false to resume",
                r.updated,
                r.updated + r.pending,
                r.target_image
            ),
        ),
        Some(RolloutPhase::RolledBack) => {
            let why = r
                .failure
                .as_ref()
                .map(|f| format!("{} failed {}: {}", f.workload, f.reason, f.message))
                .unwrap_or_default();
            (
                false,
                "RolledBack",
                format!(
                    "wave {} onto {} was rolled back: {why}; fix the image and change spec.versions.proxy to try again",
                    r.wave, r.target_image
                ),
            )
        }
        Some(RolloutPhase::Complete) | None => (
            false,
            "Complete",
            format!("every meshed workload runs {}", r.target_image),
        ),
    }
}

/// The conditions for `o`, keeping the transition times of `previous` where nothing changed.
pub fn conditions(o: &Observed<'_>, previous: &[Condition]) -> Vec<Condition> {
    let (ca_ok, ca_reason, ca_message) = ca_condition(o.ca, o.now);
    let (dp_ok, dp_reason, dp_message) = data_plane_condition(o.data_plane, o.proxy_image);
    let phase = o.rollout.and_then(|r| r.phase);
    let (ro_on, ro_reason, ro_message) = match o.control_plane {
        // Held with proxies to bring (a rolled-back or paused rollout says so instead).
        Some(why)
            if o.data_plane.up_to_date < o.data_plane.proxies
                && !matches!(phase, Some(RolloutPhase::RolledBack | RolloutPhase::Paused)) =>
        {
            (
                true,
                "WaitingForControlPlane",
                format!("the rollout onto {} waits for the control plane: {why}", o.proxy_image),
            )
        }
        _ => rollout_condition(o.rollout),
    };
    let expiring =
        o.ca.root_expires
            .and_then(|e| e.duration_since(o.now).ok())
            .is_some_and(|left| left < ROOT_EXPIRY_WARNING);
    let rolled_back = o.rollout.and_then(|r| r.phase) == Some(RolloutPhase::RolledBack);

    let (degraded, deg_reason, deg_message) = if let Some(invalid) = o.invalid {
        (
            true,
            "InvalidSpec",
            format!("{invalid}; fix the Mesh: the operator keeps acting on the last valid spec"),
        )
    } else if !ca_ok {
        (true, "CertificateAuthorityNotReady", ca_message.clone())
    } else if rolled_back {
        (true, "RolloutFailed", ro_message.clone())
    } else if expiring {
        (true, "RootExpiringSoon", ca_message.clone())
    } else {
        (false, "AsExpected", "nothing needs attention".to_string())
    };
    let (ready, ready_reason, ready_message) = if o.invalid.is_some() {
        (false, "InvalidSpec", deg_message.clone())
    } else if !ca_ok {
        (false, "CertificateAuthorityNotReady", ca_message.clone())
    } else if !o.webhooks.ready {
        (false, "WebhooksNotReady", o.webhooks.message.clone())
    } else if degraded {
        (false, deg_reason, deg_message.clone())
    } else {
        (true, "Ready", format!("the mesh works as its spec says; {dp_message}"))
    };

    let status = |b: bool| if b { "True" } else { "False" };
    let rows = [
        (READY, status(ready), ready_reason, ready_message),
        (CERTIFICATE_AUTHORITY_READY, status(ca_ok), ca_reason, ca_message),
        (
            WEBHOOKS_READY,
            status(o.webhooks.ready),
            o.webhooks.reason.as_str(),
            o.webhooks.message.clone(),
        ),
        (DATA_PLANE_UP_TO_DATE, status(dp_ok), dp_reason, dp_message),
        (ROLLOUT_PROGRESSING, status(ro_on), ro_reason, ro_message),
        (DEGRADED, status(degraded), deg_reason, deg_message),
    ];
    let now = Time(Timestamp::try_from(o.now).unwrap_or(Timestamp::UNIX_EPOCH));
    rows.into_iter()
        .map(|(type_, status, reason, message)| {
            let last_transition_time = previous
                .iter()
                .find(|c| c.type_ == type_ && c.status == status)
                .map(|c| c.last_transition_time.clone())
                .unwrap_or_else(|| now.clone());
            Condition {
                type_: type_.to_string(),
                status: status.to_string(),
                reason: reason.to_string(),
                message,
                observed_generation: o.generation,
                last_transition_time,
            }
        })
        .collect()
}

/// The conditions of `next` whose status or reason differs from `previous` (a condition
/// seen for the first time counts when it is not the healthy state).
pub fn transitions(previous: &[Condition], next: &[Condition]) -> Vec<Transition> {
    next.iter()
        .filter_map(|c| {
            let healthy = match c.type_.as_str() {
                DEGRADED | ROLLOUT_PROGRESSING => c.status == "False",
                _ => c.status == "True",
            };
            let changed = match previous.iter().find(|p| p.type_ == c.type_) {
                Some(p) => p.status != c.status || p.reason != c.reason,
                None => !healthy || c.type_ == READY,
            };
            changed.then(|| Transition {
                type_: c.type_.clone(),
                status: c.status.clone(),
                reason: c.reason.clone(),
                message: c.message.clone(),
                warning: !healthy && c.type_ != ROLLOUT_PROGRESSING,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::certificate_authority::tests::ca;
    use super::*;

    fn webhooks(ready: bool) -> WebhooksObservation {
        WebhooksObservation {
            ready,
            reason: if ready { "Serving" } else { "NotServed" }.into(),
            message: "webhooks".into(),
        }
    }

    fn get<'a>(cs: &'a [Condition], t: &str) -> &'a Condition {
        cs.iter().find(|c| c.type_ == t).unwrap()
    }

    #[test]
    fn a_healthy_mesh_is_ready_and_says_its_root_expiry() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let ca = ca(now);
        let dp = DataPlaneStatus {
            proxies: 3,
            up_to_date: 3,
            connected: 3,
            synced: 3,
            ..DataPlaneStatus::default()
        };
        let wh = webhooks(true);
        let o = Observed {
            generation: Some(4),
            invalid: None,
            ca: &ca,
            webhooks: &wh,
            data_plane: &dp,
            proxy_image: "proxy:1",
            rollout: None,
            control_plane: None,
            now,
        };
        let cs = conditions(&o, &[]);
        assert_eq!(cs.len(), 6);
        assert!(cs.iter().all(|c| c.observed_generation == Some(4)));
        assert_eq!(get(&cs, READY).status, "True");
        assert_eq!(get(&cs, DEGRADED).status, "False");
        assert_eq!(get(&cs, DATA_PLANE_UP_TO_DATE).reason, "UpToDate");
        let ca_cond = get(&cs, CERTIFICATE_AUTHORITY_READY);
        assert!(
            ca_cond.message.contains("expires 2037-") && ca_cond.message.contains("3650 days"),
            "{}",
            ca_cond.message
        );
        // Only Ready is news on a first reconcile of a healthy mesh.
        let t = transitions(&[], &cs);
        assert_eq!(t.iter().map(|t| t.type_.as_str()).collect::<Vec<_>>(), [READY]);
        // The same observation later changes nothing, not even transition times.
        let later = Observed {
            now: now + Duration::from_secs(60),
            ..o
        };
        let again = conditions(&later, &cs);
        assert_eq!(
            again.iter().map(|c| &c.last_transition_time).collect::<Vec<_>>(),
            cs.iter().map(|c| &c.last_transition_time).collect::<Vec<_>>()
        );
        assert!(transitions(&cs, &again).is_empty());
    }

    #[test]
    fn problems_name_themselves_and_make_the_mesh_not_ready() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut ca = ca(now);
        ca.root_expires = Some(now + Duration::from_secs(5 * 86400));
        let dp = DataPlaneStatus {
            proxies: 2,
            up_to_date: 1,
            connected: 2,
            synced: 2,
            ..DataPlaneStatus::default()
        };
        let rollout = RolloutStatus {
            target_image: "proxy:2".into(),
            phase: Some(RolloutPhase::RolledBack),
            wave: 1,
            failure: Some(trellis_api::mesh::RolloutFailure {
                workload: "Deployment shop/web".into(),
                reason: "PodsReady".into(),
                message: "pod web-1 not Ready".into(),
            }),
            ..RolloutStatus::default()
        };
        let wh = webhooks(true);
        let o = Observed {
            generation: Some(5),
            invalid: None,
            ca: &ca,
            webhooks: &wh,
            data_plane: &dp,
            proxy_image: "proxy:2",
            rollout: Some(&rollout),
            // A rolled-back rollout says so, whatever the control plane does.
            control_plane: Some("the operator rolls"),
            now,
        };
        let cs = conditions(&o, &[]);
        assert_eq!(get(&cs, READY).status, "False");
        // An expired root names the Secret to annotate, in the operator's namespace.
        let mut expired = ca.clone();
        expired.root_expires = Some(now - Duration::from_secs(60));
        let (_, reason, message) = ca_condition(&expired, now);
        assert_eq!(reason, "RootExpired");
        assert!(message.contains("annotate Secret operators/trellis-ca"), "{message}");
        let degraded = get(&cs, DEGRADED);
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("True", "RolloutFailed")
        );
        assert!(
            degraded.message.contains("Deployment shop/web failed PodsReady"),
            "{}",
            degraded.message
        );
        assert_eq!(get(&cs, DATA_PLANE_UP_TO_DATE).reason, "Outdated");
        assert_eq!(get(&cs, ROLLOUT_PROGRESSING).reason, "RolledBack");
        let warnings: Vec<_> = transitions(&[], &cs).into_iter().filter(|t| t.warning).collect();
        assert!(warnings.iter().any(|t| t.type_ == DEGRADED));
    }
}
