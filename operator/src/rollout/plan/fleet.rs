//! The planner's view of the fleet: every workload a rollout is about with its meshed pods,
//! whether it runs the target already, the image it runs now (what a rollback restores),
//! whether it is a canary, and the health gates a wave's workload fails or still waits on.

use std::collections::BTreeMap;

use trellis_api::mesh::{HealthGate, RolloutFailure};

use super::{Input, Workload};
use crate::dataplane::{MeshedPod, Owner, ProxyRole, WorkloadRef};

/// The workloads a rollout is about, with their pods.
pub(super) struct Fleet<'a> {
    pub(super) input: &'a Input<'a>,
    pods: BTreeMap<&'a WorkloadRef, Vec<&'a MeshedPod>>,
    /// The workloads with a proxy (assigned one, or a meshed pod).
    pub(super) meshed: Vec<&'a Workload>,
}

impl<'a> Fleet<'a> {
    pub(super) fn new(input: &'a Input<'a>) -> Self {
        let mut pods: BTreeMap<&WorkloadRef, Vec<&MeshedPod>> = BTreeMap::new();
        for p in input.pods {
            if let Owner::Workload(w) = &p.owner {
                pods.entry(w).or_default().push(p);
            }
        }
        let meshed = input
            .workloads
            .iter()
            .filter(|w| w.assigned.is_some() || pods.contains_key(&w.id))
            .collect();
        Fleet { input, pods, meshed }
    }

    pub(super) fn pods_of(&self, w: &WorkloadRef) -> &[&'a MeshedPod] {
        self.pods.get(w).map(Vec::as_slice).unwrap_or_default()
    }

    pub(super) fn workload(&self, w: &WorkloadRef) -> Option<&'a Workload> {
        self.input.workloads.iter().find(|x| &x.id == w)
    }

    /// Whether a pod was injected with the injection template in force (a gateway is not
    /// injected: it has no template to compare).
    pub(super) fn current_template(&self, p: &MeshedPod) -> bool {
        p.role == ProxyRole::Gateway || self.input.template.is_none_or(|t| p.template.as_deref() == Some(t))
    }

    /// Runs (or is assigned) the target image, and its pods the current injection template.
    pub(super) fn done(&self, w: &Workload) -> bool {
        let pods = self.pods_of(&w.id);
        let templated = pods.iter().all(|p| self.current_template(p));
        match &w.assigned {
            Some(a) => a == self.input.target && templated,
            None => !pods.is_empty() && pods.iter().all(|p| p.image == self.input.target) && templated,
        }
    }

    /// The image a workload runs now (what a rollback restores).
    pub(super) fn current_image(&self, w: &Workload) -> Option<String> {
        if let Some(a) = &w.assigned {
            return Some(a.clone());
        }
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for p in self.pods_of(&w.id) {
            *counts.entry(p.image.as_str()).or_default() += 1;
        }
        counts
            .into_iter()
            .max_by_key(|(image, n)| (*n, std::cmp::Reverse(*image)))
            .map(|(image, _)| image.to_string())
    }

    pub(super) fn canary(&self, w: &Workload) -> bool {
        let s = self.input.settings;
        s.canary_namespaces.contains(&w.id.namespace)
            || (!s.canary_labels.is_empty() && s.canary_labels.iter().all(|(k, v)| w.labels.get(k) == Some(v)))
    }

    /// Whether a wave's workload failed a gate, and how.
    pub(super) fn failure(&self, w: &WorkloadRef) -> Option<RolloutFailure> {
        let gates = &self.input.settings.gates;
        let new_pods = self.pods_of(w).iter().filter(|p| p.image == self.input.target);
        for p in new_pods {
            if let Some(why) = &p.failing {
                return Some(RolloutFailure {
                    workload: w.to_string(),
                    reason: "NoRestarts".into(),
                    message: format!("pod {}: {why}", p.name),
                });
            }
            if gates.contains(&HealthGate::NoRestarts) && p.restarts > 0 {
                return Some(RolloutFailure {
                    workload: w.to_string(),
                    reason: "NoRestarts".into(),
                    message: format!("pod {} restarted {} times on {}", p.name, p.restarts, self.input.target),
                });
            }
        }
        None
    }

    /// What a wave's workload still lacks to be healthy (empty: healthy).
    pub(super) fn missing(&self, w: &WorkloadRef) -> Vec<String> {
        let gates = &self.input.settings.gates;
        let mut missing = Vec::new();
        let Some(workload) = self.workload(w) else {
            return missing; // deleted meanwhile: nothing left to wait for
        };
        if workload.assigned.as_deref() != Some(self.input.target) {
            missing.push(format!("not assigned {} yet", self.input.target));
            return missing;
        }
        let pods = self.pods_of(w);
        if gates.contains(&HealthGate::PodsReady) {
            let pr = workload.progress;
            if !pr.complete() {
                missing.push(format!(
                    "{} of {} pods updated and {} Ready ({} pods in all)",
                    pr.updated, pr.desired, pr.ready, pr.total
                ));
            }
            if let Some(old) = pods.iter().find(|p| p.image != self.input.target) {
                missing.push(format!("pod {} still runs {}", old.name, old.image));
            } else if let Some(old) = pods.iter().find(|p| !self.current_template(p)) {
                missing.push(format!(
                    "pod {} was injected with template {}, not the current {}",
                    old.name,
                    old.template.as_deref().unwrap_or("(none recorded)"),
                    self.input.template.unwrap_or_default()
                ));
            }
            if let Some(p) = pods.iter().find(|p| !p.ready) {
                missing.push(format!("pod {} is not Ready", p.name));
            }
        }
        if gates.contains(&HealthGate::ProxiesSynced) {
            for p in pods.iter().filter(|p| p.image == self.input.target) {
                let link = self.input.links.get(&p.key()).copied().unwrap_or_default();
                if !link.connected {
                    missing.push(format!(
                        "the proxy of pod {} is not connected to the control plane",
                        p.name
                    ));
                    break;
                }
                if !link.synced {
                    missing.push(format!("the proxy of pod {} has not ACKed its configuration", p.name));
                    break;
                }
            }
        }
        missing
    }
}
