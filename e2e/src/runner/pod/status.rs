//! The pod's status as the kubelet reports it (container states, conditions, phase), written by
//! merge patch when it changes; and the containers' live state for logs and exec.

use serde_json::{Value, json};
use tracing::debug;

use super::{CState, Ctr, Role, Worker, now_rfc3339};
use crate::cluster::WriteOptions;
use crate::patch::PatchKind;
use crate::runner::LiveContainer;
use crate::runner::images;

impl Worker {
    /// Container state for logs and exec.
    pub(super) fn publish_live(&self) {
        let mut live = self
            .shared
            .live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        live.clear();
        for (i, c) in self.ctrs.iter().enumerate() {
            let exec = c
                .run
                .as_ref()
                .filter(|r| r.pid != 0)
                .map(|r| self.exec_target(i, r.pid, r.env.clone()));
            let waiting = match &c.state {
                CState::Waiting { reason, .. } => Some(reason.clone()),
                _ => None,
            };
            live.insert(
                c.name.clone(),
                LiveContainer {
                    restarts: c.restarts,
                    ever_started: c.ever_started,
                    running: c.run.is_some(),
                    exec,
                    waiting,
                },
            );
        }
    }

    fn condition(&mut self, t: &'static str, ok: bool, now: &str) -> bool {
        let e = self.conditions.entry(t).or_insert((ok, now.to_string()));
        if e.0 != ok {
            *e = (ok, now.to_string());
        }
        ok
    }

    fn status(&mut self) -> Value {
        let now = now_rfc3339();
        let terminating = self.terminating.is_some();
        let ctr_json = |c: &Ctr, image: &str| {
            let mut j = json!({
                "name": c.name, "image": image, "imageID": format!("kubesim://{}", images::repository(image)),
                "ready": c.ready, "started": c.started,
                "restartCount": c.restarts,
                "state": c.state.to_json(&c.container_id),
                "lastState": c.last.as_ref().map(|l| l.to_json(&c.container_id)).unwrap_or(json!({})),
            });
            if !c.container_id.is_empty() {
                j["containerID"] = json!(c.container_id);
            }
            j
        };
        let mut init_statuses = Vec::new();
        let mut main_statuses = Vec::new();
        for c in &self.ctrs {
            let image = c.spec["image"].as_str().unwrap_or_default();
            let mut j = ctr_json(c, image);
            if c.role == Role::Init {
                j["ready"] = json!(c.done);
            }
            if c.role == Role::Main {
                main_statuses.push(j);
            } else {
                init_statuses.push(j);
            }
        }
        // Waiting reasons while back-off runs.
        let crash_waiting = |c: &Ctr| {
            c.run.is_none() && c.next_start.is_some() && c.ever_started && matches!(c.state, CState::Terminated { .. })
        };
        for (c, j) in self
            .ctrs
            .iter()
            .filter(|c| c.role != Role::Main)
            .zip(init_statuses.iter_mut())
            .chain(
                self.ctrs
                    .iter()
                    .filter(|c| c.role == Role::Main)
                    .zip(main_statuses.iter_mut()),
            )
        {
            if crash_waiting(c) && !terminating && self.terminal.is_none() {
                j["lastState"] = c.state.to_json(&c.container_id);
                j["state"] = json!({"waiting": {"reason": "CrashLoopBackOff", "message": format!("back-off restarting failed container {} in pod {}_{}({})", c.name, self.shared.name, self.shared.namespace, self.shared.uid)}});
            }
        }
        let mains_ready = self.ctrs.iter().filter(|c| c.role != Role::Init).all(|c| c.ready);
        let not_ready: Vec<String> = self
            .ctrs
            .iter()
            .filter(|c| c.role != Role::Init && !c.ready)
            .map(|c| c.name.clone())
            .collect();
        let not_init: Vec<String> = self
            .ctrs
            .iter()
            .filter(|c| (c.role == Role::Init && !c.done) || (c.role == Role::Sidecar && !c.started))
            .map(|c| c.name.clone())
            .collect();
        let initialized = self.condition("Initialized", self.initialized, &now);
        let ready = self.condition("Ready", mains_ready && self.terminal.is_none() && !terminating, &now);
        let ctrs_ready = self.condition("ContainersReady", mains_ready && self.terminal.is_none(), &now);
        let sandbox = self.condition("PodReadyToStartContainers", self.hosts.is_some(), &now);
        let cond = |t: &str, ok: bool, reason: &str, message: String, at: &str| {
            let mut c = json!({"type": t, "status": if ok { "True" } else { "False" }, "lastProbeTime": null, "lastTransitionTime": at});
            if !ok && !reason.is_empty() {
                c["reason"] = json!(reason);
                c["message"] = json!(message);
            }
            c
        };
        let at = |t: &str| {
            self.conditions
                .get(t)
                .map(|c| c.1.clone())
                .unwrap_or_else(|| now.clone())
        };
        let completed = self.terminal.is_some();
        let (ready_reason, ready_msg) = if completed {
            ("PodCompleted", String::new())
        } else {
            (
                "ContainersNotReady",
                format!("containers with unready status: [{}]", not_ready.join(" ")),
            )
        };
        let conditions = vec![
            cond(
                "PodReadyToStartContainers",
                sandbox,
                "",
                String::new(),
                &at("PodReadyToStartContainers"),
            ),
            cond(
                "Initialized",
                initialized,
                "ContainersNotInitialized",
                format!("containers with incomplete status: [{}]", not_init.join(" ")),
                &at("Initialized"),
            ),
            cond("Ready", ready, ready_reason, ready_msg.clone(), &at("Ready")),
            cond(
                "ContainersReady",
                ctrs_ready,
                ready_reason,
                ready_msg,
                &at("ContainersReady"),
            ),
            json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": self.start_time}),
        ];
        let any_main_started = self.ctrs.iter().any(|c| c.role == Role::Main && c.ever_started);
        let phase = match self.terminal {
            Some(p) => p,
            None if self.initialized && any_main_started => "Running",
            None => "Pending",
        };
        let mut status = json!({
            "phase": phase,
            "conditions": conditions,
            "hostIP": "127.0.0.1", "hostIPs": [{"ip": "127.0.0.1"}],
            "podIP": self.ip, "podIPs": [{"ip": self.ip}],
            "startTime": self.start_time,
            "qosClass": self.pod.pointer("/status/qosClass").cloned().unwrap_or(json!("BestEffort")),
            "containerStatuses": main_statuses,
        });
        if !init_statuses.is_empty() {
            status["initContainerStatuses"] = json!(init_statuses);
        }
        status
    }

    pub(super) fn write_status(&mut self) {
        if self.api_gone {
            return;
        }
        let status = self.status();
        if status == self.last_status {
            return;
        }
        let Some(rt) = self.cluster().catalog.get("", "v1", "pods") else {
            return;
        };
        // Merge patch, with explicit nulls so dropped fields go away.
        let mut patch_status = status.clone();
        if status.get("initContainerStatuses").is_none() {
            patch_status["initContainerStatuses"] = Value::Null;
        }
        let body = json!({"metadata": {"uid": self.shared.uid}, "status": patch_status});
        let opts = WriteOptions {
            field_manager: Some("kubesim-kubelet".into()),
            ..Default::default()
        };
        match self.cluster().patch(
            &rt,
            Some(&self.shared.namespace),
            &self.shared.name,
            "status",
            PatchKind::Merge,
            body.to_string().as_bytes(),
            &opts,
        ) {
            Ok(_) => self.last_status = status,
            Err(e) if e.code == 404 => self.api_gone = true,
            Err(e) => debug!(pod = %self.shared.name, error = %e.message, "status write retried"),
        }
    }
}
