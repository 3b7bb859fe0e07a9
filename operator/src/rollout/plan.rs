//! Rollout planning: plain data in (the workloads, their pods and proxies, the policy, the last
//! rollout status, the time), the next rollout status and the pod-template assignments out.
//!
//! A rollout brings every meshed workload to the Mesh's proxy image in waves: canaries (by
//! namespace or labels) first, in waves of their own, then the rest, `batch` workloads at a
//! time. A wave's workloads are assigned the target image (the pod-template annotation
//! `trellis.dev/proxy-image`, which the injector honours; a gateway's proxy container's image,
//! see [`super::gateway`]) and restarted by their own
//! controllers, with their own rolling-update strategy. The next wave starts only once the wave
//! is healthy — every workload's pods updated and Ready, their proxies connected and ACKing,
//! no restarts — and has soaked for `pause` without a gate failing. A wave that fails (or is
//! not healthy by `progressDeadline`) is rolled back: its workloads are assigned the image each
//! ran before, and no wave starts again until the Mesh names another image.
//!
//! # Guarantees
//! - Pure and deterministic: the same input gives the same plan.
//! - Resumable: everything a plan depends on is in its input, the status it returns included,
//!   so a new leader continues the wave under way (re-asserting its assignments, never
//!   starting it again) and a failed wave stays rolled back.
//! - A workload whose PodDisruptionBudget allows no disruption now is not put in a wave.
//! - Standalone pods (no controller) are never in a wave.

mod fleet;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use k8s_openapi::jiff::Timestamp;
use trellis_api::mesh::{RolloutFailure, RolloutPhase, RolloutStatus, WorkloadRollout};

use self::fleet::Fleet;
use super::gateway::GatewayProxy;
use crate::dataplane::{MeshedPod, ProxyLink, WorkloadKind, WorkloadRef};
use crate::settings::RolloutSettings;

/// How a workload's own controller is getting on with its pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Progress {
    /// The controller has seen the latest spec (`observedGeneration >= generation`).
    pub observed: bool,
    /// Pods wanted.
    pub desired: u32,
    /// Pods with the latest template.
    pub updated: u32,
    /// Pods Ready (and available).
    pub ready: u32,
    /// Pods in total, old and new.
    pub total: u32,
}

impl Progress {
    /// Every pod runs the latest template and is Ready, and no old pod is left.
    pub fn complete(&self) -> bool {
        self.observed && self.updated >= self.desired && self.ready >= self.desired && self.total <= self.desired
    }
}

/// A Deployment, StatefulSet or DaemonSet, as the planner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    /// Which.
    pub id: WorkloadRef,
    /// Its labels (canary selection).
    pub labels: BTreeMap<String, String>,
    /// The proxy image its pod template is assigned: `trellis.dev/proxy-image` for injected
    /// sidecars, if any; a gateway's proxy container's image.
    pub assigned: Option<String>,
    /// Its pods run a gateway: the proxy is this container of its own, not an injected sidecar.
    pub gateway: Option<GatewayProxy>,
    /// Its controller's progress.
    pub progress: Progress,
    /// A PodDisruptionBudget over its pods allows no disruption now.
    pub budget_exhausted: bool,
}

/// One pod-template assignment to make: the annotation, and a restart as `kubectl rollout
/// restart` does it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// The workload.
    pub workload: WorkloadRef,
    /// The proxy image to assign.
    pub image: String,
    /// A gateway's proxy container, whose image is set (`None`: the injector's annotation).
    pub gateway: Option<GatewayProxy>,
}

/// An event to publish on the Mesh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announcement {
    /// PascalCase reason.
    pub reason: &'static str,
    /// What happened.
    pub message: String,
    /// A person should look.
    pub warning: bool,
}

/// What the planner reads.
#[derive(Debug)]
pub struct Input<'a> {
    /// The image every meshed workload should run.
    pub target: &'a str,
    /// The policy.
    pub settings: &'a RolloutSettings,
    /// Every Deployment, StatefulSet and DaemonSet (meshed or not).
    pub workloads: &'a [Workload],
    /// Every meshed pod.
    pub pods: &'a [MeshedPod],
    /// The proxies' links, by `namespace/pod`.
    pub links: &'a BTreeMap<String, ProxyLink>,
    /// The rollout status the Mesh holds.
    pub status: Option<&'a RolloutStatus>,
    /// Now.
    pub now: SystemTime,
    /// The hash of the injection template the injector applies now: pods injected with another
    /// one are restarted as if they ran another image (`None`: templates are not compared).
    pub template: Option<&'a str>,
    /// Why the control plane is rolling ([`super::control_plane::rolling`]): the rollout holds,
    /// starting, judging and advancing nothing, until it is not (`None`: go on).
    pub control_plane: Option<&'a str>,
}

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The rollout status to write (first: before any assignment).
    pub status: Option<RolloutStatus>,
    /// Assignments to make (only those not in place yet).
    pub assignments: Vec<Assignment>,
    /// Events.
    pub announcements: Vec<Announcement>,
    /// Look again after this long at most.
    pub recheck: Duration,
}

/// How often a wave under way is looked at.
pub const WAVE_RECHECK: Duration = Duration::from_secs(2);

fn rfc3339(t: SystemTime) -> String {
    Timestamp::try_from(t).map(|t| t.to_string()).unwrap_or_default()
}

/// A time the rollout status recorded (RFC 3339).
pub fn parse_time(s: Option<&str>) -> Option<SystemTime> {
    s.and_then(|s| s.parse::<Timestamp>().ok()).map(SystemTime::from)
}

fn ref_of(w: &WorkloadRollout) -> Option<WorkloadRef> {
    Some(WorkloadRef {
        kind: WorkloadKind::parse(&w.kind)?,
        namespace: w.namespace.clone(),
        name: w.name.clone(),
    })
}

/// Plan the next step of the rollout.
pub fn plan(input: &Input<'_>) -> Plan {
    if input.control_plane.is_some() {
        return Plan {
            status: input.status.cloned(),
            assignments: Vec::new(),
            announcements: Vec::new(),
            recheck: WAVE_RECHECK,
        };
    }
    let view = Fleet::new(input);
    let updated = view.meshed.iter().filter(|w| view.done(w)).count();
    let pending: Vec<&Workload> = view.meshed.iter().copied().filter(|w| !view.done(w)).collect();
    let counts = |mut s: RolloutStatus| {
        s.updated = u32::try_from(updated).unwrap_or(u32::MAX);
        s.pending = u32::try_from(pending.len()).unwrap_or(u32::MAX);
        s
    };
    let idle = |status: Option<RolloutStatus>| Plan {
        status,
        assignments: Vec::new(),
        announcements: Vec::new(),
        recheck: crate::settings::RESYNC,
    };

    let current = input.status.filter(|s| s.target_image == input.target);
    let Some(current) = current else {
        // A new target (or none recorded): nothing to roll, or the first wave.
        if pending.is_empty() {
            let status = input.status.map(|_| {
                counts(RolloutStatus {
                    target_image: input.target.to_string(),
                    phase: Some(RolloutPhase::Complete),
                    ..RolloutStatus::default()
                })
            });
            return idle(status);
        }
        let fresh = RolloutStatus {
            target_image: input.target.to_string(),
            ..RolloutStatus::default()
        };
        return next_wave(&view, fresh, &pending, counts);
    };

    match current.phase {
        Some(RolloutPhase::RolledBack) => {
            // Keep the failed wave on its previous images until the Mesh names another image.
            let mut plan = idle(Some(counts(current.clone())));
            plan.assignments = reassert(&view, current, |w| w.previous_image.clone());
            plan
        }
        Some(RolloutPhase::Progressing) => progressing(&view, current, counts),
        Some(RolloutPhase::Soaking) => soaking(&view, current, &pending, counts),
        Some(RolloutPhase::Paused) | Some(RolloutPhase::Complete) | None => {
            if pending.is_empty() {
                let mut plan = idle(Some(counts(RolloutStatus {
                    phase: Some(RolloutPhase::Complete),
                    ..current.clone()
                })));
                if current.phase != Some(RolloutPhase::Complete) {
                    plan.announcements.push(Announcement {
                        reason: "RolloutComplete",
                        message: format!("every meshed workload runs {}", input.target),
                        warning: false,
                    });
                }
                return plan;
            }
            next_wave(&view, current.clone(), &pending, counts)
        }
    }
}

/// Assignments re-asserting what `status` says the wave's workloads should run.
fn reassert(
    view: &Fleet<'_>,
    status: &RolloutStatus,
    image: impl Fn(&WorkloadRollout) -> Option<String>,
) -> Vec<Assignment> {
    status
        .wave_workloads
        .iter()
        .flatten()
        .filter_map(|w| {
            let id = ref_of(w)?;
            let image = image(w)?;
            let workload = view.workload(&id)?;
            (workload.assigned.as_deref() != Some(image.as_str())).then(|| Assignment {
                workload: id,
                image,
                gateway: workload.gateway.clone(),
            })
        })
        .collect()
}

fn next_wave(
    view: &Fleet<'_>,
    status: RolloutStatus,
    pending: &[&Workload],
    counts: impl Fn(RolloutStatus) -> RolloutStatus,
) -> Plan {
    let input = view.input;
    if input.settings.paused {
        let paused = status.phase == Some(RolloutPhase::Paused);
        return Plan {
            status: Some(counts(RolloutStatus {
                phase: Some(RolloutPhase::Paused),
                ..status
            })),
            assignments: Vec::new(),
            announcements: if paused {
                Vec::new()
            } else {
                vec![Announcement {
                    reason: "RolloutPaused",
                    message: format!(
                        "spec.rollout.paused: {} workloads wait for {}",
                        pending.len(),
                        input.target
                    ),
                    warning: false,
                }]
            },
            recheck: crate::settings::RESYNC,
        };
    }
    let total = view.meshed.len();
    let batch = input.settings.batch.of(total);
    let mut candidates: Vec<&&Workload> = pending.iter().filter(|w| !w.budget_exhausted).collect();
    candidates.sort_by_key(|w| (!view.canary(w), &w.id));
    let canaries = candidates.first().is_some_and(|w| view.canary(w));
    let wave: Vec<&&Workload> = candidates
        .into_iter()
        .filter(|w| view.canary(w) == canaries)
        .take(batch)
        .collect();
    if wave.is_empty() {
        // Every pending workload's disruption budget is exhausted: wait for them.
        return Plan {
            status: Some(counts(RolloutStatus {
                phase: Some(RolloutPhase::Progressing),
                wave_workloads: None,
                ..status
            })),
            assignments: Vec::new(),
            announcements: Vec::new(),
            recheck: WAVE_RECHECK,
        };
    }
    let number = status.wave + 1;
    let members: Vec<WorkloadRollout> = wave
        .iter()
        .map(|w| WorkloadRollout {
            kind: w.id.kind.as_str().into(),
            namespace: w.id.namespace.clone(),
            name: w.id.name.clone(),
            previous_image: view.current_image(w),
        })
        .collect();
    let names: Vec<String> = wave.iter().map(|w| w.id.to_string()).collect();
    let status = counts(RolloutStatus {
        target_image: input.target.to_string(),
        phase: Some(RolloutPhase::Progressing),
        wave: number,
        wave_workloads: Some(members),
        wave_started: Some(rfc3339(input.now)),
        soak_started: None,
        failure: None,
        ..status
    });
    Plan {
        assignments: wave
            .iter()
            .map(|w| Assignment {
                workload: w.id.clone(),
                image: input.target.to_string(),
                gateway: w.gateway.clone(),
            })
            .collect(),
        announcements: vec![Announcement {
            reason: "RolloutWaveStarted",
            message: format!(
                "wave {number}{}: restarting {} onto {}",
                if canaries { " (canaries)" } else { "" },
                names.join(", "),
                input.target
            ),
            warning: false,
        }],
        status: Some(status),
        recheck: WAVE_RECHECK,
    }
}

fn wave_members(status: &RolloutStatus) -> Vec<WorkloadRef> {
    status.wave_workloads.iter().flatten().filter_map(ref_of).collect()
}

fn roll_back(
    view: &Fleet<'_>,
    status: &RolloutStatus,
    failure: RolloutFailure,
    counts: impl Fn(RolloutStatus) -> RolloutStatus,
) -> Plan {
    let message = format!(
        "wave {} onto {} failed: {} {}: {}; rolling its workloads back to their previous proxy image",
        status.wave, status.target_image, failure.workload, failure.reason, failure.message
    );
    let status = counts(RolloutStatus {
        phase: Some(RolloutPhase::RolledBack),
        failure: Some(failure),
        ..status.clone()
    });
    Plan {
        assignments: reassert(view, &status, |w| w.previous_image.clone()),
        announcements: vec![Announcement {
            reason: "RolloutRolledBack",
            message,
            warning: true,
        }],
        status: Some(status),
        recheck: crate::settings::RESYNC,
    }
}

fn progressing(view: &Fleet<'_>, status: &RolloutStatus, counts: impl Fn(RolloutStatus) -> RolloutStatus) -> Plan {
    let input = view.input;
    let members = wave_members(status);
    for w in &members {
        if let Some(f) = view.failure(w) {
            return roll_back(view, status, f, counts);
        }
    }
    let missing: Vec<(WorkloadRef, Vec<String>)> = members
        .iter()
        .map(|w| (w.clone(), view.missing(w)))
        .filter(|(_, m)| !m.is_empty())
        .collect();
    let started = parse_time(status.wave_started.as_deref()).unwrap_or(input.now);
    let waited = input.now.duration_since(started).unwrap_or_default();
    if let Some((w, what)) = missing.first() {
        if waited >= input.settings.progress_deadline {
            let failure = RolloutFailure {
                workload: w.to_string(),
                reason: "ProgressDeadline".into(),
                message: format!(
                    "not healthy after {}s (spec.rollout.progressDeadline): {}",
                    waited.as_secs(),
                    what.join("; ")
                ),
            };
            return roll_back(view, status, failure, counts);
        }
        return Plan {
            status: Some(counts(status.clone())),
            assignments: reassert(view, status, |_| Some(input.target.to_string())),
            announcements: Vec::new(),
            recheck: WAVE_RECHECK,
        };
    }
    let names: Vec<String> = members.iter().map(ToString::to_string).collect();
    let soaking = counts(RolloutStatus {
        phase: Some(RolloutPhase::Soaking),
        soak_started: Some(rfc3339(input.now)),
        ..status.clone()
    });
    Plan {
        status: Some(soaking),
        assignments: Vec::new(),
        announcements: vec![Announcement {
            reason: "RolloutWaveFinished",
            message: format!(
                "wave {} is healthy on {} ({}); soaking {}s",
                status.wave,
                input.target,
                names.join(", "),
                input.settings.pause.as_secs()
            ),
            warning: false,
        }],
        recheck: input.settings.pause.min(WAVE_RECHECK),
    }
}

fn soaking(
    view: &Fleet<'_>,
    status: &RolloutStatus,
    pending: &[&Workload],
    counts: impl Fn(RolloutStatus) -> RolloutStatus + Copy,
) -> Plan {
    let input = view.input;
    let members = wave_members(status);
    for w in &members {
        if let Some(f) = view.failure(w) {
            return roll_back(view, status, f, counts);
        }
        if let Some(what) = view.missing(w).first() {
            let failure = RolloutFailure {
                workload: w.to_string(),
                reason: "Soak".into(),
                message: format!("became unhealthy during the soak: {what}"),
            };
            return roll_back(view, status, failure, counts);
        }
    }
    let since = parse_time(status.soak_started.as_deref()).unwrap_or(input.now);
    if input.now.duration_since(since).unwrap_or_default() < input.settings.pause {
        return Plan {
            status: Some(counts(status.clone())),
            assignments: Vec::new(),
            announcements: Vec::new(),
            recheck: WAVE_RECHECK,
        };
    }
    let waiting: BTreeSet<&WorkloadRef> = pending.iter().map(|w| &w.id).collect();
    if waiting.is_empty() {
        return Plan {
            status: Some(counts(RolloutStatus {
                phase: Some(RolloutPhase::Complete),
                ..status.clone()
            })),
            assignments: Vec::new(),
            announcements: vec![Announcement {
                reason: "RolloutComplete",
                message: format!(
                    "every meshed workload runs {} after {} waves",
                    input.target, status.wave
                ),
                warning: false,
            }],
            recheck: crate::settings::RESYNC,
        };
    }
    next_wave(view, status.clone(), pending, counts)
}
