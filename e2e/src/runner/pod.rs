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

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::images::{self, Image};
use super::probe::{self, ProbeFlags, ProbeTarget};
use super::process::{self, ExecTarget, Launch, Mount, Sig, User};
use super::volumes::Volumes;
use super::{Ctx, LiveContainer, PodShared, RunnerConfig, logs};
use crate::cluster::{Cluster, WriteOptions};
use crate::patch::PatchKind;

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

    /// Network namespace, `/etc/hosts`.
    async fn set_up(&mut self) -> Result<(), String> {
        std::fs::create_dir_all(&self.shared.dir).map_err(|e| format!("{}: {e}", self.shared.dir.display()))?;
        if let Some(net) = self.ctx.network.clone() {
            if self.host_network() {
                self.netns = Some(net.node_netns_path());
                self.ip = crate::network::NODE_IP.to_string();
            } else {
                let ip: std::net::Ipv4Addr = self.ip.parse().map_err(|e| format!("pod ip {}: {e}", self.ip))?;
                let (uid, ns) = (self.shared.uid.clone(), self.shared.namespace.clone());
                let attached = tokio::task::spawn_blocking(move || net.attach(&uid, &ns, ip))
                    .await
                    .map_err(|e| e.to_string())??;
                self.netns = Some(attached.path.clone());
                // `dnsPolicy: Default`: the node's resolver configuration.
                if self.pod["spec"]["dnsPolicy"] != "Default" {
                    self.resolv = Some(attached.resolv_conf.clone());
                }
            }
        } else {
            // No pod network: every pod shares kubesim's network namespace.
            self.ip = "127.0.0.1".into();
        }
        let hosts = self.shared.dir.join("hosts");
        let name = self.hostname();
        let mut text = String::from(
            "# Kubernetes-managed hosts file (kubesim).\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
        );
        if self.ip != "127.0.0.1" {
            text.push_str(&format!("{}\t{name}\n", self.ip));
        }
        for alias in self.pod["spec"]["hostAliases"].as_array().into_iter().flatten() {
            let names: Vec<&str> = alias["hostnames"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            text.push_str(&format!(
                "{}\t{}\n",
                alias["ip"].as_str().unwrap_or_default(),
                names.join("\t")
            ));
        }
        std::fs::write(&hosts, text).map_err(|e| e.to_string())?;
        self.hosts = Some(hosts);
        *self.shared.ip.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = self.ip.clone();
        Ok(())
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

    fn sync_volumes(&mut self) {
        // The latest pod (labels and annotations feed the downward API).
        if let Some(rt) = self.cluster().catalog.get("", "v1", "pods")
            && let Some(latest) =
                self.cluster()
                    .store
                    .get(&Cluster::key(&rt, Some(&self.shared.namespace), &self.shared.name))
            && latest["metadata"]["uid"] == self.pod["metadata"]["uid"]
        {
            self.pod["metadata"] = latest["metadata"].clone();
        }
        match self.volumes.sync(&self.ctx.cluster, &self.pod, &self.ip) {
            Ok(()) => {
                self.volumes_ready = true;
                self.volume_error = None;
            }
            Err(e) => {
                if self.volume_error.as_deref() != Some(e.as_str()) {
                    self.event("FailedMount", &e);
                    warn!(pod = %self.shared.name, error = %e, "volumes not ready");
                }
                self.volume_error = Some(e);
            }
        }
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

    /// The pod has run to completion (or failed for good): stop sidecars.
    fn finish(&mut self, phase: &'static str) {
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
    fn enforce_kills(&mut self, now: Instant, grace: Duration) {
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

    fn begin_termination(&mut self, grace: Duration) {
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
    fn terminate_step(&mut self) -> bool {
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

    fn user_of(&self, c: &Value) -> User {
        let sc = |f: &str| {
            c["securityContext"][f]
                .as_u64()
                .or_else(|| self.pod["spec"]["securityContext"][f].as_u64())
                .and_then(|v| u32::try_from(v).ok())
        };
        User {
            uid: sc("runAsUser"),
            gid: sc("runAsGroup"),
            groups: self.pod["spec"]["securityContext"]["fsGroup"]
                .as_u64()
                .and_then(|v| u32::try_from(v).ok()),
        }
    }

    fn exec_target(&self, i: usize, pid: u32, env: Vec<(String, String)>) -> ExecTarget {
        let c = &self.ctrs[i].spec;
        ExecTarget {
            pid,
            user: self.user_of(c),
            env,
            working_dir: c["workingDir"].as_str().map(str::to_string),
        }
    }

    fn probe_target(&self, i: usize, pid: u32) -> ProbeTarget {
        let env = self.ctrs[i].run.as_ref().map(|r| r.env.clone()).unwrap_or_default();
        ProbeTarget {
            ip: self.ip.clone(),
            netns: self.netns.clone(),
            exec: self.exec_target(i, pid, env),
            ports: self.ctrs[i].spec["ports"].clone(),
        }
    }

    /// The program and arguments of container `i` (Kubernetes semantics:
    /// `command` replaces the entrypoint, `args` replace the image's
    /// arguments, `$(VAR)` expanded).
    fn argv(&self, spec: &Value, image: &Image, env: &[(String, String)]) -> Result<(PathBuf, Vec<String>), String> {
        let vars: BTreeMap<String, String> = env.iter().cloned().collect();
        let list = |f: &str| -> Option<Vec<String>> {
            spec[f].as_array().map(|a| {
                a.iter()
                    .map(|s| super::env::expand(s.as_str().unwrap_or_default(), &vars))
                    .collect()
            })
        };
        let command = list("command").filter(|c| !c.is_empty());
        let args = list("args").unwrap_or_default();
        let not_found = |p: &str| format!("exec: \"{p}\": executable file not found in $PATH");
        match (image, command) {
            (Image::Program { path, .. }, None) => Ok((path.clone(), args)),
            (Image::Program { name, path, .. }, Some(cmd)) => {
                let first = &cmd[0];
                let base = first.rsplit('/').next().unwrap_or(first);
                let rest: Vec<String> = cmd[1..].iter().cloned().chain(args).collect();
                if base == name {
                    Ok((path.clone(), rest))
                } else {
                    let p = images::host_program(first).ok_or_else(|| not_found(first))?;
                    Ok((p, rest))
                }
            }
            (Image::Host, None) => {
                if args.is_empty() {
                    Ok((PathBuf::from("/bin/sh"), vec![]))
                } else {
                    Ok((PathBuf::from("/bin/sh"), args))
                }
            }
            (Image::Host, Some(cmd)) => {
                let first = &cmd[0];
                let p = images::host_program(first).ok_or_else(|| not_found(first))?;
                Ok((p, cmd[1..].iter().cloned().chain(args).collect()))
            }
        }
    }

    fn mounts(&self, spec: &Value) -> Result<Vec<Mount>, String> {
        let mut out = Vec::new();
        for m in spec["volumeMounts"].as_array().into_iter().flatten() {
            let name = m["name"].as_str().unwrap_or_default();
            let mut source = self
                .volumes
                .source(&self.pod, name)
                .ok_or_else(|| format!("volume \"{name}\" not found in the pod's volumes"))?;
            if let Some(sub) = m["subPath"].as_str().filter(|s| !s.is_empty()) {
                if sub.split('/').any(|c| c == "..") {
                    return Err(format!("subPath {sub:?} must not contain '..'"));
                }
                source = source.join(sub);
                if !source.exists() {
                    std::fs::create_dir_all(&source).map_err(|e| e.to_string())?;
                }
            }
            out.push(Mount {
                source,
                target: m["mountPath"].as_str().unwrap_or_default().to_string(),
                read_only: m["readOnly"].as_bool() == Some(true),
            });
        }
        Ok(out)
    }

    fn api_for_pods(&self) -> std::net::SocketAddr {
        match &self.ctx.network {
            Some(net) => net.api_server_for_pods(),
            None => self.ctx.api,
        }
    }

    /// Starts container `i` (or records why it cannot start).
    fn start(&mut self, i: usize) {
        let now = Instant::now();
        let spec = self.ctrs[i].spec.clone();
        let image_ref = spec["image"].as_str().unwrap_or_default().to_string();
        let image = match images::resolve(&image_ref, &self.cfg.bin_dirs) {
            Ok(img) => img,
            Err(msg) => {
                let c = &mut self.ctrs[i];
                let reason = if c.image_failures == 0 {
                    "ErrImagePull"
                } else {
                    "ImagePullBackOff"
                };
                c.image_failures += 1;
                if c.image_failures <= 2 {
                    let name = c.name.clone();
                    self.event("Failed", &format!("Failed to pull image for container {name}: {msg}"));
                }
                let c = &mut self.ctrs[i];
                c.cannot_start(reason, &msg);
                c.next_start = Some(now + c.backoff);
                c.backoff = (c.backoff * 2).min(self.cfg.backoff_max);
                return;
            }
        };
        let env = match super::env::container_env(self.cluster(), &self.pod, &spec, &self.ip, self.api_for_pods()) {
            Ok(mut e) => {
                // The image's environment, under the container's own (as Docker's ENV).
                if let Image::Program { env: image_env, .. } = &image {
                    for (k, v) in image_env {
                        if !e.iter().any(|(n, _)| n == k) {
                            e.push((k.clone(), v.clone()));
                        }
                    }
                }
                e
            }
            Err(msg) => {
                let c = &mut self.ctrs[i];
                c.cannot_start("CreateContainerConfigError", &msg);
                c.next_start = Some(now + Duration::from_secs(1));
                return;
            }
        };
        let mounts = match self.mounts(&spec) {
            Ok(m) => m,
            Err(msg) => {
                let c = &mut self.ctrs[i];
                c.cannot_start("CreateContainerConfigError", &msg);
                c.next_start = Some(now + Duration::from_secs(1));
                return;
            }
        };
        let started_at = now_rfc3339();
        let (program, args) = match self.argv(&spec, &image, &env) {
            Ok(x) => x,
            Err(msg) => {
                self.start_failed(i, &msg, &started_at);
                return;
            }
        };
        let launch = Launch {
            program,
            args,
            env: env.clone(),
            netns: self.netns.clone(),
            pod_dir: self.shared.dir.clone(),
            mounts,
            resolv_conf: self.resolv.clone(),
            hosts: self.hosts.clone(),
            hostname: self.hostname(),
            working_dir: spec["workingDir"]
                .as_str()
                .filter(|w| !w.is_empty())
                .map(str::to_string),
            user: self.user_of(&spec),
        };
        let cmd = process::command(&launch);
        let child = cmd.and_then(|mut c| {
            match &self.ctx.spawner {
                Some(s) => s.spawn(c),
                None => c.spawn(),
            }
            .map_err(|e| format!("starting the container: {e}"))
        });
        let mut child = match child {
            Ok(c) => c,
            Err(msg) => {
                self.start_failed(i, &msg, &started_at);
                return;
            }
        };
        let Some(pid) = child.id() else {
            self.start_failed(i, "the process exited at once", &started_at);
            return;
        };
        // Bookkeeping for `kubesim down` after a crash.
        let _ = std::fs::create_dir_all(&self.shared.pids_dir);
        let _ = std::fs::write(
            self.shared.pids_dir.join(pid.to_string()),
            process::start_time(pid).map(|t| t.to_string()).unwrap_or_default(),
        );
        {
            let c = &mut self.ctrs[i];
            if c.ever_started {
                c.restarts += 1;
                // After a start that failed (waiting), the last termination stays the last state.
                if matches!(c.state, CState::Terminated { .. }) {
                    c.last = Some(c.state.clone());
                }
            }
            c.ever_started = true;
        }
        let log_path = logs::path(&self.shared.dir, &self.ctrs[i].name, self.ctrs[i].restarts);
        let _ = std::fs::remove_file(&log_path);
        match logs::open(&log_path) {
            Ok(file) => {
                if let Some(out) = child.stdout.take() {
                    tokio::spawn(logs::copy(out, "stdout", file.clone()));
                }
                if let Some(err) = child.stderr.take() {
                    tokio::spawn(logs::copy(err, "stderr", file));
                }
            }
            Err(e) => warn!(path = %log_path.display(), error = %e, "cannot open the log file"),
        }
        let run_id = self.next_run_id;
        self.next_run_id += 1;
        let tx = self.exits_tx.clone();
        tokio::spawn(async move {
            use std::os::unix::process::ExitStatusExt as _;
            let (code, signal) = match child.wait().await {
                Ok(s) => match (s.code(), s.signal()) {
                    (Some(c), _) => (c, None),
                    (None, Some(sig)) => (128 + sig, Some(sig)),
                    _ => (-1, None),
                },
                Err(_) => (-1, None),
            };
            let _ = tx.send(Exit {
                index: i,
                run_id,
                code,
                signal,
            });
        });
        let flags = Arc::new(ProbeFlags::default());
        let mut target = self.probe_target(i, pid);
        target.exec.env = env.clone();
        let probes = tokio::spawn(probe::run(spec.clone(), target, flags.clone()));
        let uid = &self.shared.uid;
        let c = &mut self.ctrs[i];
        c.container_id = format!("kubesim://{}-{}-{}", &uid[..uid.len().min(8)], c.name, c.restarts);
        c.state = CState::Running {
            started_at: started_at.clone(),
        };
        c.next_start = None;
        c.run = Some(Run {
            id: run_id,
            pid,
            since: now,
            started_at,
            flags,
            probes,
            term_sent: None,
            kill_reason: None,
            killed: false,
            env: env.clone(),
            failures_seen: 0,
            unhealthy_at: None,
            unhealthy_msg: String::new(),
        });
        let name = c.name.clone();
        info!(pod = %self.shared.name, container = %name, pid, "container started");
        self.event("Started", &format!("Started container {name}"));
    }

    /// The process could not be started: a terminated instance with
    /// `StartError`, restarted per policy like a crash.
    fn start_failed(&mut self, i: usize, msg: &str, started_at: &str) {
        warn!(pod = %self.shared.name, container = %self.ctrs[i].name, error = %msg, "container start failed");
        let c = &mut self.ctrs[i];
        if c.ever_started {
            c.restarts += 1;
            if matches!(c.state, CState::Terminated { .. }) {
                c.last = Some(c.state.clone());
            }
        }
        c.ever_started = true;
        let run_id = self.next_run_id;
        self.next_run_id += 1;
        // Reuse the exit path for the restart policy.
        let (probes, flags) = (tokio::spawn(async {}), Arc::new(ProbeFlags::default()));
        self.ctrs[i].run = Some(Run {
            id: run_id,
            pid: 0,
            since: Instant::now(),
            started_at: started_at.to_string(),
            flags,
            probes,
            term_sent: None,
            kill_reason: Some(msg.to_string()),
            killed: false,
            env: Vec::new(),
            failures_seen: 0,
            unhealthy_at: None,
            unhealthy_msg: String::new(),
        });
        self.on_exit(Exit {
            index: i,
            run_id,
            code: 128,
            signal: None,
        });
        if let CState::Terminated { reason, .. } = &mut self.ctrs[i].state {
            *reason = "StartError".into();
        }
    }

    /// Container state for logs and exec.
    fn publish_live(&self) {
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

    fn write_status(&mut self) {
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
