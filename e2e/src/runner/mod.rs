//! The process runtime: kubesim's kubelet that really runs pods, as local
//! processes in their own mount namespaces and (with the pod network) their
//! own network namespaces. It implements [`PodRuntime`]; the kubelet loop
//! ([`crate::kubelet::sweep`]) binds pods and calls it.
//!
//! | module | does |
//! |---|---|
//! | [`images`] | image → program mapping, bin dirs |
//! | [`env`] | container environment: Service links, `envFrom`, `env`, downward API, `$(VAR)` |
//! | [`volumes`] | Secret/ConfigMap/emptyDir/downwardAPI/projected/hostPath volumes as files, refreshed |
//! | [`process`] | launching a container (`nsenter`/`unshare`/`setpriv`), signals, exec |
//! | [`probe`] | startup/readiness/liveness probes |
//! | [`pod`] | one pod's lifecycle and status |
//! | [`logs`] | log files and `kubectl logs` |
//! | [`exec`] | `kubectl exec` over WebSocket (`v5.channel.k8s.io`) |
//!
//! # Guarantees
//! - Every process a pod runs is in a process group kubesim started;
//!   [`ProcessRuntime::shutdown`] (called when kubesim stops) TERMs, then
//!   KILLs them all, and their pids are recorded under
//!   `STATE_DIR/runner/pids` so [`kill_leftovers`] (next start, or
//!   `kubesim down`) ends those of a kubesim that crashed.
//! - Mounts exist only in the containers' own mount namespaces and vanish
//!   with them; volume files and logs live in `STATE_DIR/runner/pods/UID`
//!   and are removed when the pod goes.

pub mod env;
pub mod exec;
pub mod images;
pub mod logs;
pub mod pod;
pub mod portforward;
pub mod probe;
pub mod process;
pub mod volumes;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::cluster::Cluster;
use crate::kubelet::{LogOptions, PodRuntime, RuntimeContext};
use crate::network::PodNetwork;

/// Settings of the process runtime.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// Where the programs of the image mapping are.
    pub bin_dirs: images::BinDirs,
    /// First restart delay after a crash (doubles per crash).
    pub backoff_initial: Duration,
    /// Cap of the restart delay. Upstream: 10 s doubling to 5 min; kubesim
    /// is quicker so tests are.
    pub backoff_max: Duration,
    /// Projected tokens are replaced after this fraction of their lifetime
    /// (the kubelet's 0.8).
    pub token_refresh_fraction: f64,
    /// How often volumes are re-synced from ConfigMaps/Secrets.
    pub volume_sync: Duration,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        Self {
            bin_dirs: images::BinDirs::resolve(None),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(10),
            token_refresh_fraction: 0.8,
            volume_sync: Duration::from_secs(2),
        }
    }
}

/// What the runtime gets from the running kubesim.
#[derive(Debug)]
pub(crate) struct Ctx {
    pub cluster: Arc<Cluster>,
    /// The API server as kubesim serves it (used without a pod network).
    pub api: SocketAddr,
    pub network: Option<Arc<PodNetwork>>,
    pub state_dir: PathBuf,
    /// `None` when bound outside a Tokio runtime (then tasks spawn).
    pub spawner: Option<Spawner>,
}

/// Starts container processes from one long-lived thread: a container's
/// parent-death signal (`setpriv --pdeathsig`) fires when the thread that
/// forked it ends, and Tokio's worker threads may end early (after
/// `block_in_place`), this one only with the runtime.
#[derive(Debug, Clone)]
pub(crate) struct Spawner {
    tx: std::sync::mpsc::Sender<SpawnRequest>,
}

type SpawnRequest = (
    tokio::process::Command,
    std::sync::mpsc::Sender<std::io::Result<tokio::process::Child>>,
);

impl Spawner {
    fn start(handle: tokio::runtime::Handle) -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<SpawnRequest>();
        let spawned = std::thread::Builder::new()
            .name("kubesim-spawner".into())
            .spawn(move || {
                let _guard = handle.enter();
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            });
        if let Err(e) = spawned {
            warn!(error = %e, "no spawner thread; containers start from Tokio's threads");
        }
        Self { tx }
    }

    /// Spawns `cmd` on the spawner thread (a few milliseconds).
    pub(crate) fn spawn(&self, cmd: tokio::process::Command) -> std::io::Result<tokio::process::Child> {
        let (reply, result) = std::sync::mpsc::channel();
        self.tx
            .send((cmd, reply))
            .map_err(|_| std::io::Error::other("the spawner thread is gone"))?;
        result
            .recv()
            .map_err(|_| std::io::Error::other("the spawner thread is gone"))?
    }
}

/// A container as logs and exec see it.
#[derive(Debug, Clone)]
pub(crate) struct LiveContainer {
    pub restarts: u32,
    pub ever_started: bool,
    pub running: bool,
    pub exec: Option<process::ExecTarget>,
    pub waiting: Option<String>,
}

/// What the runtime and a pod's worker share.
#[derive(Debug)]
pub(crate) struct PodShared {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub dir: PathBuf,
    pub pids_dir: PathBuf,
    /// `Some(grace seconds)` once deletion is requested.
    pub stop: watch::Sender<Option<u64>>,
    pub finished: AtomicBool,
    pub live: Mutex<BTreeMap<String, LiveContainer>>,
    pub ip: Mutex<String>,
}

/// Runs pods as processes. See the module docs.
#[derive(Debug)]
pub struct ProcessRuntime {
    config: Arc<RunnerConfig>,
    ctx: OnceLock<Arc<Ctx>>,
    pods: Mutex<BTreeMap<String, Arc<PodShared>>>,
    shut: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn uid_of(pod: &Value) -> String {
    pod["metadata"]["uid"].as_str().unwrap_or_default().to_string()
}

/// Whether this process may run pods as processes (mount namespaces,
/// `setpriv`): root, or `CAP_SYS_ADMIN`.
pub fn available() -> bool {
    crate::network::available()
}

/// The runner's directory in a state dir.
pub fn runner_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("runner")
}

/// Kills the process groups a previous kubesim of `state_dir` left behind
/// (it crashed or was killed) and removes its pod files. Returns how many
/// processes were signalled.
pub fn kill_leftovers(state_dir: &Path) -> usize {
    let dir = runner_dir(state_dir);
    let pids = dir.join("pids");
    let mut n = 0;
    for entry in std::fs::read_dir(&pids).into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        let recorded = std::fs::read_to_string(entry.path()).unwrap_or_default();
        // Only a process with the recorded start time is ours (pids recycle).
        if process::start_time(pid).is_some_and(|t| t.to_string() == recorded.trim()) {
            process::signal_group(pid, process::Sig::SIGKILL);
            n += 1;
        }
        let _ = std::fs::remove_file(entry.path());
    }
    let _ = std::fs::remove_dir_all(&dir);
    if n > 0 {
        info!(processes = n, "killed the pods of an earlier kubesim");
    }
    n
}

impl ProcessRuntime {
    pub fn new(config: RunnerConfig) -> Self {
        Self {
            config: Arc::new(config),
            ctx: OnceLock::new(),
            pods: Mutex::new(BTreeMap::new()),
            shut: AtomicBool::new(false),
        }
    }

    fn ctx(&self) -> Result<&Arc<Ctx>, String> {
        self.ctx
            .get()
            .ok_or_else(|| "the process runtime is not bound to a cluster yet".to_string())
    }

    fn shared(&self, pod: &Value) -> Option<Arc<PodShared>> {
        lock(&self.pods).get(&uid_of(pod)).cloned()
    }

    fn container_of(&self, pod: &Value, container: &str) -> Result<(Arc<PodShared>, LiveContainer), String> {
        let name = pod["metadata"]["name"].as_str().unwrap_or_default();
        let shared = self
            .shared(pod)
            .ok_or_else(|| format!("pod \"{name}\" is not running on this node"))?;
        let live = lock(&shared.live).get(container).cloned().ok_or_else(|| {
            format!("container \"{container}\" in pod \"{name}\" is waiting to start: ContainerCreating")
        })?;
        Ok((shared, live))
    }

    /// The running container's exec target.
    pub(crate) fn exec_target(&self, pod: &Value, container: &str) -> Result<process::ExecTarget, String> {
        let name = pod["metadata"]["name"].as_str().unwrap_or_default();
        let (_, live) = self.container_of(pod, container)?;
        live.exec.ok_or_else(|| {
            format!("unable to upgrade connection: container {container} not found in pod {name} (it is not running)")
        })
    }

    /// Stops every pod now: TERM, a short wait, KILL; files and network
    /// namespaces removed. Idempotent.
    pub fn shutdown_all(&self) {
        if self.shut.swap(true, Ordering::SeqCst) {
            return;
        }
        let pods: Vec<Arc<PodShared>> = std::mem::take(&mut *lock(&self.pods)).into_values().collect();
        let mut groups: Vec<u32> = Vec::new();
        for p in &pods {
            p.stop.send_replace(Some(0));
            for l in lock(&p.live).values() {
                if let Some(e) = &l.exec {
                    groups.push(e.pid);
                }
            }
        }
        for g in &groups {
            process::signal_group(*g, process::Sig::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        let alive = |pid: u32| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                s.rsplit_once(')')
                    .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
            })
        };
        while Instant::now() < deadline && groups.iter().any(|g| alive(*g)) {
            std::thread::sleep(Duration::from_millis(20));
        }
        for g in &groups {
            process::signal_group(*g, process::Sig::SIGKILL);
        }
        if let Ok(ctx) = self.ctx() {
            if let Some(net) = &ctx.network {
                for p in &pods {
                    net.detach(&p.uid);
                }
            }
            kill_leftovers(&ctx.state_dir);
        }
        if !pods.is_empty() {
            info!(pods = pods.len(), "process runtime stopped its pods");
        }
    }
}

impl PodRuntime for ProcessRuntime {
    fn bind(&self, ctx: &RuntimeContext) {
        let killed = kill_leftovers(&ctx.state_dir);
        if killed > 0 {
            warn!(killed, "an earlier kubesim left pod processes behind; they were killed");
        }
        let _ = self.ctx.set(Arc::new(Ctx {
            cluster: ctx.cluster.clone(),
            api: ctx.api_address,
            network: ctx.network.clone(),
            state_dir: ctx.state_dir.clone(),
            spawner: tokio::runtime::Handle::try_current().ok().map(Spawner::start),
        }));
    }

    fn start(&self, pod: &Value, ip: &str) -> Result<Value, String> {
        let ctx = self.ctx()?.clone();
        if self.shut.load(Ordering::SeqCst) {
            return Err("kubesim is stopping".into());
        }
        let uid = uid_of(pod);
        if uid.is_empty() {
            return Err("pod has no uid".into());
        }
        let mut pods = lock(&self.pods);
        if pods.contains_key(&uid) {
            return Err(format!("pod {uid} is already running"));
        }
        let dir = runner_dir(&ctx.state_dir).join("pods").join(&uid);
        let (stop, stop_rx) = watch::channel(None);
        let shared = Arc::new(PodShared {
            uid: uid.clone(),
            namespace: pod["metadata"]["namespace"].as_str().unwrap_or("default").to_string(),
            name: pod["metadata"]["name"].as_str().unwrap_or_default().to_string(),
            dir,
            pids_dir: runner_dir(&ctx.state_dir).join("pids"),
            stop,
            finished: AtomicBool::new(false),
            live: Mutex::new(BTreeMap::new()),
            ip: Mutex::new(ip.to_string()),
        });
        pods.insert(uid, shared.clone());
        drop(pods);
        let worker = pod::Worker::new(ctx, self.config.clone(), shared, pod.clone(), ip.to_string());
        tokio::spawn(worker.run(stop_rx));
        // What the kubelet loop writes first; the worker takes over.
        let now = crate::clock::now_rfc3339();
        let waiting = |list: &str, reason: &str| -> Vec<Value> {
            pod["spec"][list]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| json!({"name": c["name"], "image": c["image"], "imageID": "", "ready": false, "started": false, "restartCount": 0, "state": {"waiting": {"reason": reason}}}))
                .collect()
        };
        let mut status = json!({
            "phase": "Pending",
            "conditions": [{"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": now}],
            "hostIP": "127.0.0.1", "hostIPs": [{"ip": "127.0.0.1"}],
            "podIP": ip, "podIPs": [{"ip": ip}],
            "startTime": now,
            "qosClass": pod.pointer("/status/qosClass").cloned().unwrap_or(json!("BestEffort")),
            "containerStatuses": waiting("containers", "ContainerCreating"),
        });
        let init = waiting("initContainers", "PodInitializing");
        if !init.is_empty() {
            status["initContainerStatuses"] = json!(init);
        }
        Ok(status)
    }

    fn stop(&self, pod: &Value) -> bool {
        let Some(shared) = self.shared(pod) else {
            return true;
        };
        if shared.finished.load(Ordering::SeqCst) {
            lock(&self.pods).remove(&shared.uid);
            return true;
        }
        if shared.stop.borrow().is_none() {
            let grace = pod["metadata"]["deletionGracePeriodSeconds"]
                .as_u64()
                .or_else(|| pod["spec"]["terminationGracePeriodSeconds"].as_u64())
                .unwrap_or(30);
            shared.stop.send_replace(Some(grace));
        }
        false
    }

    fn reconcile(&self, live: &BTreeSet<String>) {
        let gone: Vec<Arc<PodShared>> = lock(&self.pods)
            .values()
            .filter(|p| !live.contains(&p.uid))
            .cloned()
            .collect();
        for p in gone {
            if p.finished.load(Ordering::SeqCst) {
                lock(&self.pods).remove(&p.uid);
            } else if p.stop.borrow().is_none() {
                // Removed without a grace period (e.g. --force): stop at once.
                p.stop.send_replace(Some(0));
            }
        }
    }

    fn logs(&self, pod: &Value, container: &str, options: &LogOptions) -> Result<String, String> {
        let name = pod["metadata"]["name"].as_str().unwrap_or_default();
        let (shared, live) = self.container_of(pod, container)?;
        let n = if options.previous {
            if live.restarts == 0 {
                return Err(format!(
                    "previous terminated container \"{container}\" in pod \"{name}\" not found"
                ));
            }
            live.restarts - 1
        } else {
            if !live.ever_started {
                return Err(format!(
                    "container \"{container}\" in pod \"{name}\" is waiting to start: {}",
                    live.waiting.as_deref().unwrap_or("ContainerCreating")
                ));
            }
            live.restarts
        };
        let stored = std::fs::read_to_string(logs::path(&shared.dir, container, n)).unwrap_or_default();
        Ok(logs::render(&stored, options))
    }

    fn follow_logs(
        &self,
        pod: &Value,
        container: &str,
        options: &LogOptions,
    ) -> Result<tokio::sync::mpsc::Receiver<bytes::Bytes>, String> {
        let first = self.logs(pod, container, options)?;
        let (shared, live) = self.container_of(pod, container)?;
        let path = logs::path(&shared.dir, container, live.restarts);
        let container = container.to_string();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let timestamps = options.timestamps;
        tokio::spawn(async move {
            let mut offset = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            if tx.send(bytes::Bytes::from(first)).await.is_err() {
                return;
            }
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let data = std::fs::read(&path).unwrap_or_default();
                let len = data.len() as u64;
                if len > offset {
                    // Whole records only.
                    let chunk = &data[offset as usize..];
                    if let Some(end) = chunk.iter().rposition(|b| *b == b'\n') {
                        let text = String::from_utf8_lossy(&chunk[..=end]);
                        offset += end as u64 + 1;
                        let o = LogOptions {
                            timestamps,
                            ..Default::default()
                        };
                        if tx.send(bytes::Bytes::from(logs::render(&text, &o))).await.is_err() {
                            return;
                        }
                    }
                }
                let running = lock(&shared.live)
                    .get(&container)
                    .is_some_and(|l| l.running && l.restarts == live.restarts);
                if (!running && len <= offset) || shared.finished.load(Ordering::SeqCst) {
                    return;
                }
            }
        });
        Ok(rx)
    }

    fn exec(&self, pod: &Value, container: &str, command: &[String]) -> Result<tokio::process::Command, String> {
        let target = self.exec_target(pod, container)?;
        Ok(process::exec_command(&target, command))
    }

    fn netns(&self, pod: &Value) -> Result<PathBuf, String> {
        let name = pod["metadata"]["name"].as_str().unwrap_or_default();
        self.ctx
            .get()
            .and_then(|ctx| ctx.network.as_ref())
            .and_then(|net| net.pod(&uid_of(pod)))
            .map(|p| p.path)
            .ok_or_else(|| format!("pod {name} has no network namespace (is it running?)"))
    }

    fn shutdown(&self) {
        self.shutdown_all();
    }
}

impl Drop for ProcessRuntime {
    fn drop(&mut self) {
        self.shutdown_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leftovers_of_a_crashed_kubesim_are_killed() {
        use std::os::unix::process::CommandExt as _;
        let state = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = child.id();
        let pids = runner_dir(state.path()).join("pids");
        std::fs::create_dir_all(&pids).unwrap();
        std::fs::write(
            pids.join(pid.to_string()),
            process::start_time(pid).unwrap().to_string(),
        )
        .unwrap();
        // A recycled pid (other start time) is left alone.
        std::fs::write(pids.join("1"), "0").unwrap();
        assert_eq!(kill_leftovers(state.path()), 1);
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt as _;
        assert_eq!(status.signal(), Some(9));
        assert!(!runner_dir(state.path()).exists());
    }
}
