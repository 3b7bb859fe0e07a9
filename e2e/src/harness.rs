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
    /// Starts kubesim on a free loopback port with a temporary state dir.
    pub fn start() -> anyhow::Result<Self> {
        let state = tempfile::Builder::new().prefix("kubesim-test-").tempdir()?;
        let mut config = Config::new(state.path());
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
        let mut c = Command::new("kubectl");
        c.arg("--kubeconfig").arg(&self.kubeconfig);
        c.arg("--cache-dir").arg(self.state.path().join("kubectl-cache"));
        c.env("HOME", self.state.path());
        c
    }

    /// Runs kubectl with `args` and optional stdin.
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> anyhow::Result<Output> {
        use std::io::Write as _;
        let mut cmd = self.kubectl_command();
        cmd.args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        cmd.stdin(if stdin.is_some() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        });
        let mut child = cmd.spawn().context("running kubectl (is it installed?)")?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(input.as_bytes())?;
        }
        Ok(child.wait_with_output()?)
    }

    /// Runs kubectl and returns stdout, failing with stderr on non-zero exit.
    pub fn kubectl_ok(&self, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
        let out = self.kubectl(args, stdin)?;
        anyhow::ensure!(
            out.status.success(),
            "kubectl {} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A kube-rs client for this cluster, from the written kubeconfig.
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        let kc = kube::config::Kubeconfig::read_from(&self.kubeconfig)?;
        let config = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default()).await?;
        Ok(kube::Client::try_from(config)?)
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
