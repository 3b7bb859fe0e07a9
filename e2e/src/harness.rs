//! The test helper: a fresh kubesim per test suite, plus ways to drive it
//! with the real `kubectl` and with kube-rs.
//!
//! # Guarantees
//! - Each [`TestCluster`] has its own port, state directory and kubectl
//!   discovery cache, so suites never see each other's objects.
//! - The server runs on its own thread and runtime, so it keeps serving
//!   while a test blocks on `kubectl`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::mpsc;
use std::thread::JoinHandle;

use anyhow::Context as _;

use crate::app::{self, Config, Running};

/// A kubesim started for one test suite; stopped on drop.
#[derive(Debug)]
pub struct TestCluster {
    pub kubeconfig: PathBuf,
    pub url: String,
    pub admin_token: String,
    state: tempfile::TempDir,
    stop: tokio::sync::watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

impl TestCluster {
    /// Starts kubesim on a free loopback port with a temporary state dir;
    /// pods are simulated (nothing runs).
    pub fn start() -> anyhow::Result<Self> {
        let state = tempfile::Builder::new().prefix("kubesim-test-").tempdir()?;
        let config = Config::new(state.path());
        Self::start_with(state, config)
    }

    /// Like [`TestCluster::start`], with `/version` reporting Kubernetes `version`
    /// (`v1.27.3`) instead of [`crate::discovery::KUBE_VERSION`]: for a client's check of
    /// the cluster's version (upstream reports the version it is).
    pub fn start_reporting_version(version: &str) -> anyhow::Result<Self> {
        let state = tempfile::Builder::new().prefix("kubesim-test-").tempdir()?;
        let mut config = Config::new(state.path());
        config.kubernetes_version = version.to_string();
        Self::start_with(state, config)
    }

    /// Starts kubesim with pods running as real processes and the pod
    /// network, or returns `Ok(None)` when this process is not root: the
    /// skip is recorded with [`trellis_skip::skip`] (under CI it fails the
    /// test), and the test returns.
    ///
    /// ```no_run
    /// # fn t() -> anyhow::Result<()> {
    /// let Some(cluster) = trellis_e2e::harness::TestCluster::start_with_pods()? else {
    ///     return Ok(()); // skipped: needs root (a failure under CI)
    /// };
    /// # Ok(()) }
    /// ```
    pub fn start_with_pods() -> anyhow::Result<Option<Self>> {
        Self::start_with_processes(true, crate::runner::RunnerConfig::default())
    }

    /// Like [`TestCluster::start_with_pods`], choosing whether pods get the
    /// pod network (`false`: they share kubesim's network namespace) and
    /// the runner's settings.
    pub fn start_with_processes(network: bool, runner: crate::runner::RunnerConfig) -> anyhow::Result<Option<Self>> {
        if !crate::runner::available() {
            trellis_skip::skip("running pods as processes needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN)");
            return Ok(None);
        }
        let state = tempfile::Builder::new().prefix("kubesim-test-").tempdir()?;
        let mut config = Config::with_processes(state.path(), runner);
        config.pod_network = network;
        Self::start_with(state, config).map(Some)
    }

    fn start_with(state: tempfile::TempDir, mut config: Config) -> anyhow::Result<Self> {
        // `KUBESIM_LOG=debug cargo test …` shows kubesim's log.
        if let Ok(filter) = std::env::var("KUBESIM_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_test_writer()
                .try_init();
        }
        config.bookmark_interval = std::time::Duration::from_secs(1);
        let (tx, rx) = mpsc::channel::<anyhow::Result<(PathBuf, String, String, tokio::sync::watch::Sender<bool>)>>();
        let thread = std::thread::Builder::new().name("kubesim".into()).spawn(move || {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(e.into()));
                    return;
                }
            };
            rt.block_on(async move {
                match app::start(config).await {
                    Ok(running) => {
                        let (stop, mut stop_rx) = tokio::sync::watch::channel(false);
                        let _ = tx.send(Ok((
                            running.kubeconfig.clone(),
                            running.url(),
                            running.admin_token.clone(),
                            stop,
                        )));
                        crate::shutdown::requested(&mut stop_rx).await;
                        stop_running(&running);
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            });
        })?;
        let (kubeconfig, url, admin_token, stop) = rx.recv().context("kubesim thread died while starting")??;
        Ok(Self {
            kubeconfig,
            url,
            admin_token,
            state,
            stop,
            thread: Some(thread),
        })
    }

    /// The state directory.
    pub fn state_dir(&self) -> &Path {
        self.state.path()
    }

    /// A `kubectl` command pointed at this cluster, with its own cache.
    pub fn kubectl_command(&self) -> Command {
        kubectl_command_at(&self.kubeconfig, self.state.path())
    }

    /// Runs kubectl with `args` and optional stdin.
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> anyhow::Result<Output> {
        crate::suite::run_kubectl(self.kubectl_command(), args, stdin)
    }

    /// Runs kubectl and returns stdout, failing with stderr on non-zero exit.
    pub fn kubectl_ok(&self, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
        crate::suite::stdout_of(args, self.kubectl(args, stdin)?)
    }

    /// A kube-rs client for this cluster, from the written kubeconfig.
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        let kc = kube::config::Kubeconfig::read_from(&self.kubeconfig)?;
        let config = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default()).await?;
        Ok(kube::Client::try_from(config)?)
    }

    /// Polls `f` every 100 ms until it returns `Some`, or fails after
    /// `timeout` with `what` and the last error.
    pub fn wait_for<T>(
        &self,
        what: &str,
        timeout: std::time::Duration,
        f: impl FnMut() -> anyhow::Result<Option<T>>,
    ) -> anyhow::Result<T> {
        crate::suite::wait_for(what, timeout, f)
    }

    /// `kubectl apply -f -` of `yaml`.
    pub fn apply(&self, yaml: &str) -> anyhow::Result<String> {
        self.kubectl_ok(&["apply", "-f", "-"], Some(yaml))
    }

    /// A pod as JSON (`kubectl get pod -o json`).
    pub fn pod(&self, ns: &str, name: &str) -> anyhow::Result<serde_json::Value> {
        let out = self.kubectl_ok(&["get", "pod", "-n", ns, name, "-o", "json"], None)?;
        Ok(serde_json::from_str(&out)?)
    }

    /// Pods of `ns` matching the label selector.
    pub fn pods(&self, ns: &str, selector: &str) -> anyhow::Result<Vec<serde_json::Value>> {
        let out = self.kubectl_ok(&["get", "pods", "-n", ns, "-l", selector, "-o", "json"], None)?;
        let list: serde_json::Value = serde_json::from_str(&out)?;
        Ok(list["items"].as_array().cloned().unwrap_or_default())
    }

    /// Waits until the pod satisfies `pred`; returns it.
    pub fn wait_pod(
        &self,
        ns: &str,
        name: &str,
        timeout: std::time::Duration,
        what: &str,
        mut pred: impl FnMut(&serde_json::Value) -> bool,
    ) -> anyhow::Result<serde_json::Value> {
        let mut last = serde_json::Value::Null;
        self.wait_for(&format!("pod {ns}/{name}: {what}"), timeout, || {
            let p = self.pod(ns, name)?;
            if pred(&p) {
                return Ok(Some(p));
            }
            last = p;
            Ok(None)
        })
        .map_err(|e| e.context(format!("last status: {}", last["status"])))
    }

    /// Waits until the pod has the phase (`Running`, `Succeeded`, `Failed`).
    pub fn wait_pod_phase(&self, ns: &str, name: &str, phase: &str) -> anyhow::Result<serde_json::Value> {
        self.wait_pod(
            ns,
            name,
            std::time::Duration::from_secs(30),
            &format!("phase {phase}"),
            |p| p["status"]["phase"] == phase,
        )
    }

    /// Waits until the pod's `Ready` condition is True.
    pub fn wait_pod_ready(&self, ns: &str, name: &str) -> anyhow::Result<serde_json::Value> {
        self.wait_pod(ns, name, std::time::Duration::from_secs(30), "Ready", pod_ready)
    }

    /// Waits until `n` pods matching `selector` are Ready (and not
    /// terminating); returns them.
    pub fn wait_pods_ready(&self, ns: &str, selector: &str, n: usize) -> anyhow::Result<Vec<serde_json::Value>> {
        self.wait_for(
            &format!("{n} ready pods {selector} in {ns}"),
            std::time::Duration::from_secs(60),
            || {
                let pods: Vec<serde_json::Value> = self
                    .pods(ns, selector)?
                    .into_iter()
                    .filter(|p| p.pointer("/metadata/deletionTimestamp").is_none())
                    .collect();
                Ok((pods.len() == n && pods.iter().all(pod_ready)).then_some(pods))
            },
        )
    }

    /// Waits for a Deployment's rollout (`kubectl rollout status`), then for
    /// its pods to be Ready.
    pub fn wait_deployment_ready(&self, ns: &str, name: &str) -> anyhow::Result<Vec<serde_json::Value>> {
        self.kubectl_ok(
            &[
                "rollout",
                "status",
                "-n",
                ns,
                &format!("deployment/{name}"),
                "--timeout=60s",
            ],
            None,
        )?;
        let d: serde_json::Value =
            serde_json::from_str(&self.kubectl_ok(&["get", "deployment", "-n", ns, name, "-o", "json"], None)?)?;
        let replicas = d["spec"]["replicas"].as_u64().unwrap_or(1) as usize;
        let selector = d["spec"]["selector"]["matchLabels"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default();
        self.wait_pods_ready(ns, &selector, replicas)
    }

    /// `kubectl logs` of one container.
    pub fn logs(&self, ns: &str, pod: &str, container: &str) -> anyhow::Result<String> {
        self.kubectl_ok(&["logs", "-n", ns, pod, "-c", container], None)
    }

    /// `kubectl exec POD -c C -- argv…`, returning stdout.
    pub fn exec(&self, ns: &str, pod: &str, container: &str, argv: &[&str]) -> anyhow::Result<String> {
        let mut args = vec!["exec", "-n", ns, pod, "-c", container, "--"];
        args.extend_from_slice(argv);
        self.kubectl_ok(&args, None)
    }

    /// Simulates an etcd compaction: open watches end and old
    /// resourceVersions become `410 Gone`.
    pub async fn compact(&self) -> anyhow::Result<()> {
        let client = self.client().await?;
        let req = http::Request::post("/kubesim/compact").body(Vec::new())?;
        let _: serde_json::Value = client.request(req).await?;
        Ok(())
    }
}

/// A `kubectl` command pointed at the cluster of `kubeconfig`, with its cache
/// and HOME in `state`: [`TestCluster::kubectl_command`] for a thread that
/// cannot hold the cluster (a webhook server calling back into it).
pub fn kubectl_command_at(kubeconfig: &Path, state: &Path) -> Command {
    let mut c = Command::new("kubectl");
    c.arg("--kubeconfig").arg(kubeconfig);
    c.arg("--cache-dir").arg(state.join("kubectl-cache"));
    c.env("HOME", state);
    c
}

/// Whether a pod's `Ready` condition is True.
pub fn pod_ready(p: &serde_json::Value) -> bool {
    p["status"]["conditions"]
        .as_array()
        .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

fn stop_running(running: &Running) {
    running.stop();
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        self.stop.send_replace(true);
        if let Some(t) = self.thread.take() {
            // A panicked server thread has already reported its panic.
            let _ = t.join();
        }
    }
}
