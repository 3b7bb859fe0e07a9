//! Stopping containers: sidecars once the pod has run to completion, TERM then KILL after the
//! grace period (a liveness failure's too), and the pod's deletion: `preStop` hooks, the main
//! containers, then the sidecars in reverse order.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::json;
use tracing::debug;

use super::{CState, Role, Worker};
use crate::runner::probe;
use crate::runner::process::{self, Sig};

impl Worker {
    /// The pod has run to completion (or failed for good): stop sidecars.
    pub(super) fn finish(&mut self, phase: &'static str) {
        self.terminal = Some(phase);
        for c in &mut self.ctrs {
            c.next_start = None;
            if let Some(r) = &mut c.run {
                process::signal_group(r.pid, Sig::SIGTERM);
                r.term_sent = Some(Instant::now());
            }
        }
    }

    /// TERM'd containers past `grace` get KILL; liveness failures get TERM.
    pub(super) fn enforce_kills(&mut self, now: Instant, grace: Duration) {
        let mut events = Vec::new();
        for c in &mut self.ctrs {
            let Some(r) = &mut c.run else { continue };
            if r.term_sent.is_none() && r.flags.kill.load(Ordering::SeqCst) {
                let why = r
                    .flags
                    .kill_reason
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clone();
                events.push((
                    "Killing",
                    format!("Container {} failed its probe, will be restarted: {why}", c.name),
                ));
                r.kill_reason = Some(why);
                process::signal_group(r.pid, Sig::SIGTERM);
                r.term_sent = Some(now);
            }
            if let Some(t) = r.term_sent
                && !r.killed
                && now.duration_since(t) >= grace
            {
                process::signal_group(r.pid, Sig::SIGKILL);
                r.killed = true;
            }
        }
        for (reason, msg) in events {
            self.event(reason, &msg);
        }
    }

    pub(super) fn begin_termination(&mut self, grace: Duration) {
        let deadline = Instant::now() + grace;
        self.terminating = Some(deadline);
        for i in 0..self.ctrs.len() {
            self.ctrs[i].next_start = None;
            let c = &self.ctrs[i];
            let Some(r) = &c.run else { continue };
            if c.role == Role::Sidecar {
                continue;
            }
            let pid = r.pid;
            let hook = c.spec.pointer("/lifecycle/preStop").cloned();
            let name = c.name.clone();
            let target = self.probe_target(i, pid);
            if let Some(r) = self.ctrs[i].run.as_mut() {
                r.term_sent = Some(Instant::now());
            }
            tokio::spawn(async move {
                if let Some(h) = hook {
                    let mut p = h.clone();
                    p["timeoutSeconds"] = json!(grace.as_secs().max(1));
                    if let Err(e) = probe::run_once(&target, &p).await {
                        debug!(container = %name, error = %e, "preStop hook failed");
                    }
                }
                process::signal_group(pid, Sig::SIGTERM);
            });
        }
        self.event("Killing", "Stopping the pod's containers");
    }

    /// One pass of termination; true when nothing runs any more.
    pub(super) fn terminate_step(&mut self) -> bool {
        let now = Instant::now();
        let deadline = self.terminating.unwrap_or(now);
        if now >= deadline {
            for c in &mut self.ctrs {
                if let Some(r) = &mut c.run
                    && !r.killed
                {
                    process::signal_group(r.pid, Sig::SIGKILL);
                    r.killed = true;
                }
            }
        }
        let others_running = self.ctrs.iter().any(|c| c.role != Role::Sidecar && c.run.is_some());
        if !others_running {
            // Sidecars in reverse order, one at a time.
            if let Some(c) = self
                .ctrs
                .iter_mut()
                .rev()
                .find(|c| c.role == Role::Sidecar && c.run.is_some())
                && let Some(r) = &mut c.run
                && r.term_sent.is_none()
            {
                process::signal_group(r.pid, Sig::SIGTERM);
                r.term_sent = Some(now);
            }
        }
        for c in &mut self.ctrs {
            if c.run.is_none() && !matches!(c.state, CState::Terminated { .. }) {
                c.ready = false;
            }
        }
        self.ctrs.iter().all(|c| c.run.is_none())
    }
}
