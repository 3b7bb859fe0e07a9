//! One pod's life: a Tokio task that runs its init containers in order,
//! its native sidecars and main containers, restarts them per policy with a
//! capped back-off, follows their probes, keeps the pod's status truthful,
//! and terminates it gracefully when it is deleted.
//!
//! # Lifecycle
//! 1. Set-up: network namespace (or the node's for `hostNetwork`),
//!    `/etc/hosts`, volumes. Until volumes can be made (e.g. a missing
//!    Secret) containers wait in `ContainerCreating`.
//! 2. Init containers in order. A regular one must exit 0 before the next
//!    starts (a failure restarts it per `restartPolicy`, `Init:Error` /
//!    `Init:CrashLoopBackOff`; with `Never` the pod fails). A native
//!    sidecar (`restartPolicy: Always`) only has to be *started* (its
//!    startup probe passed, if any); it keeps running and is restarted
//!    whenever it exits.
//! 3. Main containers all start; exits are handled per `restartPolicy`
//!    (`Always`, `OnFailure`, `Never`) with back-off from
//!    [`super::RunnerConfig::backoff_initial`] doubling up to
//!    [`super::RunnerConfig::backoff_max`]. A liveness (or startup) probe
//!    failure kills the container (TERM, then KILL after the grace period)
//!    and counts as a failure.
//! 4. Run-to-completion pods end `Succeeded`/`Failed` once their main
//!    containers are done; sidecars are then stopped.
//! 5. Deletion: `preStop` hooks, TERM to the main containers, then the
//!    sidecars in reverse order once the main containers are gone; KILL to
//!    whatever is left when the grace period ends. Volumes and the network
//!    namespace are removed afterwards.
//!
//! The worker's parts: `sandbox` (network, hosts file, volumes), `start` (a container started),
//! `termination` (containers stopped), `status` (what the pod's status says).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::probe::ProbeFlags;
use super::volumes::Volumes;
use super::{Ctx, PodShared, RunnerConfig};
use crate::cluster::Cluster;

mod sandbox;
mod start;
mod status;
mod termination;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Init,
    Sidecar,
    Main,
}

#[derive(Debug, Clone, PartialEq)]
enum CState {
    Waiting {
        reason: String,
        message: String,
    },
    Running {
        started_at: String,
    },
    Terminated {
        code: i32,
        signal: Option<i32>,
        reason: String,
        message: String,
        started_at: String,
        finished_at: String,
    },
}

impl CState {
    fn waiting(reason: &str, message: &str) -> Self {
        CState::Waiting {
            reason: reason.into(),
            message: message.into(),
        }
    }

    fn to_json(&self, container_id: &str) -> Value {
        match self {
            CState::Waiting { reason, message } if message.is_empty() => json!({"waiting": {"reason": reason}}),
            CState::Waiting { reason, message } => json!({"waiting": {"reason": reason, "message": message}}),
            CState::Running { started_at } => json!({"running": {"startedAt": started_at}}),
            CState::Terminated {
                code,
                signal,
                reason,
                message,
                started_at,
                finished_at,
            } => {
                let mut t = json!({"exitCode": code, "reason": reason, "startedAt": started_at, "finishedAt": finished_at, "containerID": container_id});
                if let Some(s) = signal {
                    t["signal"] = json!(s);
                }
                if !message.is_empty() {
                    t["message"] = json!(message);
                }
                json!({"terminated": t})
            }
        }
    }
}

/// A running instance of a container.
#[derive(Debug)]
struct Run {
    id: u64,
    pid: u32,
    since: Instant,
    started_at: String,
    flags: Arc<ProbeFlags>,
    probes: JoinHandle<()>,
    /// When TERM was sent (liveness failure or termination).
    term_sent: Option<Instant>,
    /// Why it was killed (shown as the terminated message).
    kill_reason: Option<String>,
    /// KILL already sent.
    killed: bool,
    /// The container's environment (for exec).
    env: Vec<(String, String)>,
    /// Probe failures already reported as events, and when last.
    failures_seen: u64,
    unhealthy_at: Option<Instant>,
    unhealthy_msg: String,
}

#[derive(Debug)]
struct Ctr {
    name: String,
    spec: Value,
    role: Role,
    restarts: u32,
    ever_started: bool,
    state: CState,
    last: Option<CState>,
    run: Option<Run>,
    next_start: Option<Instant>,
    backoff: Duration,
    /// A regular init container that exited 0.
    done: bool,
    ready: bool,
    started: bool,
    container_id: String,
    image_failures: u32,
}

impl Ctr {
    /// The container cannot be created now (`reason`): waiting, with the termination of its
    /// last instance, if it ran, kept as its last state, as the kubelet reports it (a proxy that
    /// ran and cannot restart is told from one that never ran by it).
    fn cannot_start(&mut self, reason: &str, message: &str) {
        let previous = std::mem::replace(&mut self.state, CState::waiting(reason, message));
        if matches!(previous, CState::Terminated { .. }) {
            self.last = Some(previous);
        }
    }
}

/// An exit reported by a container's wait task.
#[derive(Debug)]
struct Exit {
    index: usize,
    run_id: u64,
    code: i32,
    signal: Option<i32>,
}

fn now_rfc3339() -> String {
    crate::clock::now_rfc3339()
}

/// The pod worker.
pub(crate) struct Worker {
    ctx: Arc<Ctx>,
    cfg: Arc<RunnerConfig>,
    shared: Arc<PodShared>,
    pod: Value,
    ip: String,
    netns: Option<PathBuf>,
    resolv: Option<PathBuf>,
    hosts: Option<PathBuf>,
    volumes: Volumes,
    ctrs: Vec<Ctr>,
    exits_tx: mpsc::UnboundedSender<Exit>,
    exits_rx: mpsc::UnboundedReceiver<Exit>,
    next_run_id: u64,
    initialized: bool,
    volumes_ready: bool,
    volume_error: Option<String>,
    terminal: Option<&'static str>,
    terminating: Option<Instant>,
    start_time: String,
    conditions: BTreeMap<&'static str, (bool, String)>,
    last_status: Value,
    api_gone: bool,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker").field("pod", &self.shared.uid).finish()
    }
}

impl Worker {
    pub(crate) fn new(ctx: Arc<Ctx>, cfg: Arc<RunnerConfig>, shared: Arc<PodShared>, pod: Value, ip: String) -> Self {
        let mut ctrs = Vec::new();
        let mut add = |list: &str, default_role: Role| {
            for c in pod["spec"][list].as_array().into_iter().flatten() {
                let role = if default_role == Role::Init && c["restartPolicy"] == "Always" {
                    Role::Sidecar
                } else {
                    default_role
                };
                let name = c["name"].as_str().unwrap_or_default().to_string();
                ctrs.push(Ctr {
                    container_id: String::new(),
                    name,
                    spec: c.clone(),
                    role,
                    restarts: 0,
                    ever_started: false,
                    state: CState::waiting(
                        if default_role == Role::Init {
                            "PodInitializing"
                        } else {
                            "ContainerCreating"
                        },
                        "",
                    ),
                    last: None,
                    run: None,
                    next_start: Some(Instant::now()),
                    backoff: cfg.backoff_initial,
                    done: false,
                    ready: false,
                    started: false,
                    image_failures: 0,
                });
            }
        };
        add("initContainers", Role::Init);
        add("containers", Role::Main);
        // Main containers wait for initialization; their first state says so.
        let has_init = ctrs.iter().any(|c| c.role != Role::Main);
        for c in ctrs.iter_mut() {
            if c.role != Role::Main || has_init {
                c.state = CState::waiting("PodInitializing", "");
            }
        }
        if let Some(first) = ctrs.iter_mut().find(|c| c.role != Role::Main) {
            first.state = CState::waiting("ContainerCreating", "");
        }
        let (exits_tx, exits_rx) = mpsc::unbounded_channel();
        let volumes = Volumes::new(&shared.dir, cfg.token_refresh_fraction);
        Self {
            ctx,
            cfg,
            shared,
            pod,
            ip,
            netns: None,
            resolv: None,
            hosts: None,
            volumes,
            ctrs,
            exits_tx,
            exits_rx,
            next_run_id: 1,
            initialized: false,
            volumes_ready: false,
            volume_error: None,
            terminal: None,
            terminating: None,
            start_time: now_rfc3339(),
            conditions: BTreeMap::new(),
            last_status: Value::Null,
            api_gone: false,
        }
    }

    fn cluster(&self) -> &Cluster {
        &self.ctx.cluster
    }

    fn event(&self, reason: &str, message: &str) {
        crate::events::normal(self.cluster(), &self.pod, "v1", "Pod", reason, message, "kubelet");
    }

    fn restart_policy(&self) -> &str {
        self.pod["spec"]["restartPolicy"].as_str().unwrap_or("Always")
    }

    fn grace(&self) -> Duration {
        Duration::from_secs(self.pod["spec"]["terminationGracePeriodSeconds"].as_u64().unwrap_or(30))
    }

    /// `spec.hostname`, else the pod name (hostNetwork pods get the pod
    /// name too: there is no node hostname to share).
    fn hostname(&self) -> String {
        self.pod["spec"]["hostname"]
            .as_str()
            .filter(|h| !h.is_empty())
            .map_or_else(|| self.shared.name.clone(), str::to_string)
    }

    fn host_network(&self) -> bool {
        self.pod["spec"]["hostNetwork"].as_bool() == Some(true)
    }

    pub(crate) async fn run(mut self, mut stop: watch::Receiver<Option<u64>>) {
        let set_up = self.set_up().await;
        if let Err(e) = &set_up {
            warn!(pod = %self.shared.name, error = %e, "pod set-up failed");
            self.event("FailedCreatePodSandBox", e);
            for c in &mut self.ctrs {
                c.state = CState::waiting("ContainerCreating", e);
            }
        }
        self.write_status();
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_volume_sync = Instant::now() - Duration::from_secs(3600);
        loop {
            tokio::select! {
                Some(exit) = self.exits_rx.recv() => self.on_exit(exit),
                _ = tick.tick() => {}
                _ = stop.changed() => {}
            }
            while let Ok(exit) = self.exits_rx.try_recv() {
                self.on_exit(exit);
            }
            let stop_req = *stop.borrow();
            if let Some(grace) = stop_req
                && self.terminating.is_none()
            {
                self.begin_termination(Duration::from_secs(grace));
            }
            if self.terminating.is_some() {
                if self.terminate_step() {
                    break;
                }
            } else if set_up.is_ok() {
                if last_volume_sync.elapsed() >= self.cfg.volume_sync {
                    last_volume_sync = Instant::now();
                    self.sync_volumes();
                }
                if self.volumes_ready {
                    self.step();
                }
            }
            self.publish_live();
            self.write_status();
        }
        // The pod's files and network, then the final status (whose write
        // wakes the kubelet loop, which then removes the pod object).
        self.publish_live();
        self.volumes.remove();
        if let Some(net) = &self.ctx.network
            && !self.host_network()
        {
            net.detach(&self.shared.uid);
        }
        let _ = std::fs::remove_dir_all(&self.shared.dir);
        info!(pod = %format!("{}/{}", self.shared.namespace, self.shared.name), "pod stopped");
        self.shared.finished.store(true, Ordering::SeqCst);
        self.write_status();
    }

    /// One pass of the lifecycle (not terminating).
    fn step(&mut self) {
        let now = Instant::now();
        self.enforce_kills(now, self.grace());
        for c in &mut self.ctrs {
            if let Some(r) = &c.run {
                c.started = r.flags.started.load(Ordering::SeqCst);
                c.ready = c.started && r.flags.ready.load(Ordering::SeqCst);
            }
        }
        self.report_unhealthy(now);
        if self.terminal.is_some() {
            return;
        }
        if !self.initialized {
            let mut all = true;
            for i in 0..self.ctrs.len() {
                let c = &self.ctrs[i];
                match c.role {
                    Role::Main => continue,
                    Role::Init if c.done => continue,
                    Role::Sidecar if c.run.is_some() && c.started => continue,
                    _ => {}
                }
                if c.run.is_none() && c.next_start.is_some_and(|t| t <= now) {
                    self.start(i);
                }
                all = false;
                break;
            }
            if all {
                self.initialized = true;
            }
        }
        for i in 0..self.ctrs.len() {
            let c = &self.ctrs[i];
            let due = c.run.is_none() && c.next_start.is_some_and(|t| t <= now);
            let eligible = match c.role {
                Role::Main => self.initialized,
                // Sidecars that were started once are restarted whenever they die.
                Role::Sidecar => c.ever_started,
                Role::Init => false,
            };
            if due && eligible {
                self.start(i);
            }
        }
        // Run to completion?
        let mains: Vec<&Ctr> = self.ctrs.iter().filter(|c| c.role == Role::Main).collect();
        if self.initialized
            && !mains.is_empty()
            && mains
                .iter()
                .all(|c| c.run.is_none() && c.next_start.is_none() && matches!(c.state, CState::Terminated { .. }))
        {
            let ok = mains
                .iter()
                .all(|c| matches!(c.state, CState::Terminated { code: 0, .. }));
            self.finish(if ok { "Succeeded" } else { "Failed" });
        }
    }

    /// `Unhealthy` events for failed probes: a repeated message at most every
    /// 10 s per container (upstream aggregates repeated events similarly).
    fn report_unhealthy(&mut self, now: Instant) {
        let mut events = Vec::new();
        for c in &mut self.ctrs {
            let Some(r) = &mut c.run else { continue };
            let n = r.flags.failures.load(Ordering::SeqCst);
            if n <= r.failures_seen {
                continue;
            }
            r.failures_seen = n;
            let msg = r
                .flags
                .last_failure
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone();
            let due = r
                .unhealthy_at
                .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(10));
            if msg != r.unhealthy_msg || due {
                r.unhealthy_at = Some(now);
                events.push(format!("{msg} (container {})", c.name));
                r.unhealthy_msg = msg;
            }
        }
        for msg in events {
            self.event("Unhealthy", &msg);
        }
    }

    fn schedule_restart(&mut self, i: usize) {
        let c = &mut self.ctrs[i];
        c.next_start = Some(Instant::now() + c.backoff);
        c.backoff = (c.backoff * 2).min(self.cfg.backoff_max);
    }

    fn on_exit(&mut self, exit: Exit) {
        let policy = self.restart_policy().to_string();
        let terminating = self.terminating.is_some() || self.terminal.is_some();
        let Some(c) = self.ctrs.get_mut(exit.index) else { return };
        let Some(run) = c.run.take_if(|r| r.id == exit.run_id) else {
            return;
        };
        run.probes.abort();
        let _ = std::fs::remove_file(self.shared.pids_dir.join(run.pid.to_string()));
        let ran = run.since.elapsed();
        if ran > self.cfg.backoff_max * 2 {
            c.backoff = self.cfg.backoff_initial;
        }
        let reason = if exit.code == 0 { "Completed" } else { "Error" };
        c.state = CState::Terminated {
            code: exit.code,
            signal: exit.signal,
            reason: reason.into(),
            message: run.kill_reason.clone().unwrap_or_default(),
            started_at: run.started_at.clone(),
            finished_at: now_rfc3339(),
        };
        c.ready = false;
        c.started = false;
        debug!(container = %c.name, code = exit.code, "container exited");
        if terminating {
            c.next_start = None;
            return;
        }
        let failed = exit.code != 0;
        let restart = match c.role {
            Role::Init if !failed => {
                c.done = true;
                false
            }
            Role::Init => {
                if policy == "Never" {
                    self.finish("Failed");
                    return;
                }
                true
            }
            Role::Sidecar => true,
            Role::Main => match policy.as_str() {
                "Always" => true,
                "OnFailure" => failed,
                _ => false,
            },
        };
        if restart {
            self.schedule_restart(exit.index);
            if failed {
                let c = &self.ctrs[exit.index];
                let msg = format!(
                    "Back-off restarting failed container {} in pod {}_{}({})",
                    c.name, self.shared.name, self.shared.namespace, self.shared.uid
                );
                self.event("BackOff", &msg);
            }
        } else {
            self.ctrs[exit.index].next_start = None;
        }
    }
}

/// The environment of a running process (`/proc/PID/environ`).
pub(crate) fn read_environ(pid: u32) -> Vec<(String, String)> {
    std::fs::read(format!("/proc/{pid}/environ"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .filter_map(|kv| {
            let s = String::from_utf8_lossy(kv);
            let (k, v) = s.split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect()
}
