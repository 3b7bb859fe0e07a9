//! The end-to-end suite's toolkit: a cluster to test against (a fresh
//! kubesim with real pods by default; a fresh upstream Kubernetes with
//! `TRELLIS_E2E_CLUSTER=upstream`; or any cluster named by
//! `TRELLIS_E2E_KUBECONFIG`), `kubectl` helpers, an HTTP client for real
//! traffic, and the steps that install Trellis and deploy the demo shop.
//!
//! The suite speaks only the Kubernetes API (kubectl, kube-rs) and real
//! network traffic, so it runs unchanged on a real cluster:
//!
//! ```text
//! # images pushed to a registry the cluster pulls from (ghcr.io/trellis-mesh/*:<version>),
//! # a LoadBalancer implementation (cloud, MetalLB, or `minikube tunnel`), then:
//! TRELLIS_E2E_KUBECONFIG=$HOME/.kube/config cargo nextest run -p trellis-e2e --test first_light
//! ```

pub mod mesh;
pub mod observability;
pub mod sampling;
pub mod sync;
pub mod traces;

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use crate::harness::TestCluster;

/// The variable that chooses the test bed of a fresh cluster.
pub const CLUSTER_ENV: &str = "TRELLIS_E2E_CLUSTER";

/// Which fresh cluster [`Target::acquire`] starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bed {
    /// kubesim with pods as processes (the default).
    Kubesim,
    /// Upstream Kubernetes built by `e2e/upstream/build.sh`
    /// (`crate::upstream`).
    Upstream,
}

impl Bed {
    /// From [`CLUSTER_ENV`]: unset or `kubesim`, or `upstream`.
    pub fn from_env() -> anyhow::Result<Self> {
        match std::env::var(CLUSTER_ENV).as_deref() {
            Err(std::env::VarError::NotPresent) | Ok("" | "kubesim") => Ok(Bed::Kubesim),
            Ok("upstream") => Ok(Bed::Upstream),
            Ok(other) => bail!("{CLUSTER_ENV}={other:?}: the test bed is `kubesim` (the default) or `upstream`"),
            Err(e) => bail!("{CLUSTER_ENV}: {e}"),
        }
    }
}

/// Where the suite runs.
#[derive(Debug)]
pub struct Target {
    kubeconfig: PathBuf,
    cache: tempfile::TempDir,
    /// Kept alive for the suite's duration (stopped on drop).
    kubesim: Option<TestCluster>,
    /// Likewise; its state directory goes with it.
    upstream: Option<crate::upstream::Cluster>,
}

impl Target {
    /// A real cluster when `TRELLIS_E2E_KUBECONFIG` is set; otherwise a
    /// fresh cluster of the bed [`CLUSTER_ENV`] names: kubesim running pods
    /// as processes, or upstream Kubernetes. `Ok(None)`: not root, so no
    /// pods can run here; the skip is recorded (and fails the test under
    /// CI, see [`trellis_skip`]) and the caller returns.
    pub fn acquire() -> anyhow::Result<Option<Self>> {
        let cache = tempfile::Builder::new().prefix("trellis-e2e-").tempdir()?;
        if let Some(path) = std::env::var_os("TRELLIS_E2E_KUBECONFIG") {
            return Ok(Some(Target {
                kubeconfig: path.into(),
                cache,
                kubesim: None,
                upstream: None,
            }));
        }
        if Bed::from_env()? == Bed::Upstream {
            if !crate::network::available() {
                trellis_skip::skip("an upstream cluster needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN)");
                return Ok(None);
            }
            let state = tempfile::Builder::new().prefix("trellis-upstream-").tempdir()?.keep();
            let mut opts = crate::upstream::Options::new(&state);
            // The cluster removes its directory itself, after unmounting
            // what its node mounted there.
            opts.ephemeral = true;
            // On a thread of its own: the cluster owns a tokio runtime, which cannot be
            // started or blocked on from async code (the operator's tests are async).
            let cluster = std::thread::scope(|s| {
                s.spawn(|| crate::upstream::Cluster::start(&opts))
                    .join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("starting the upstream cluster panicked")))
            })?;
            return Ok(Some(Target {
                kubeconfig: cluster.kubeconfig().to_path_buf(),
                cache,
                kubesim: None,
                upstream: Some(cluster),
            }));
        }
        let Some(cluster) = TestCluster::start_with_pods()? else {
            return Ok(None);
        };
        Ok(Some(Target {
            kubeconfig: cluster.kubeconfig.clone(),
            cache,
            kubesim: Some(cluster),
            upstream: None,
        }))
    }

    /// Like [`Target::acquire`] for a test that needs objects only, not
    /// running pods: on kubesim, its pods are simulated (cheaper, and no
    /// root needed); upstream and a named cluster are what they are.
    pub fn acquire_objects_only() -> anyhow::Result<Self> {
        if std::env::var_os("TRELLIS_E2E_KUBECONFIG").is_some() || Bed::from_env()? == Bed::Upstream {
            return Target::acquire()?.context("an upstream cluster needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN)");
        }
        let cluster = TestCluster::start()?;
        Ok(Target {
            kubeconfig: cluster.kubeconfig.clone(),
            cache: tempfile::Builder::new().prefix("trellis-e2e-").tempdir()?,
            kubesim: Some(cluster),
            upstream: None,
        })
    }

    /// An existing cluster (a real one, or a kubesim started elsewhere).
    pub fn external(kubeconfig: &std::path::Path) -> anyhow::Result<Self> {
        Ok(Target {
            kubeconfig: kubeconfig.to_path_buf(),
            cache: tempfile::Builder::new().prefix("trellis-e2e-").tempdir()?,
            kubesim: None,
            upstream: None,
        })
    }

    /// The upstream cluster behind this target, if it is one.
    pub fn upstream(&self) -> Option<&crate::upstream::Cluster> {
        self.upstream.as_ref()
    }

    /// The kubesim behind this target, if it is one.
    pub fn kubesim(&self) -> Option<&TestCluster> {
        self.kubesim.as_ref()
    }

    /// The kubeconfig to point kubectl at.
    pub fn kubeconfig(&self) -> &std::path::Path {
        &self.kubeconfig
    }

    /// Runs kubectl with `args` and optional stdin.
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> anyhow::Result<Output> {
        let mut cmd = Command::new("kubectl");
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(self.cache.path().join("kubectl-cache"));
        run_kubectl(cmd, args, stdin)
    }

    /// Runs kubectl; stdout, or an error with its stderr.
    pub fn kubectl_ok(&self, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
        stdout_of(args, self.kubectl(args, stdin)?)
    }

    /// `kubectl get ... -o json`.
    pub fn get_json(&self, args: &[&str]) -> anyhow::Result<Value> {
        let mut all = vec!["get"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["-o", "json"]);
        Ok(serde_json::from_str(&self.kubectl_ok(&all, None)?)?)
    }

    /// Names of the pods in `ns` matching the label `selector`, leaving out
    /// those being deleted.
    pub fn pod_names(&self, ns: &str, selector: &str) -> anyhow::Result<Vec<String>> {
        let pods = self.get_json(&["pods", "-n", ns, "-l", selector])?;
        Ok(pods["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_string))
            .collect())
    }

    /// `kubectl apply -f -`.
    pub fn apply(&self, yaml: &str) -> anyhow::Result<String> {
        self.kubectl_ok(&["apply", "-f", "-"], Some(yaml))
    }

    /// What a person debugging a failed step looks at first: every pod with
    /// its containers' states, and the last log lines of containers that
    /// are not ready.
    pub fn diagnose(&self) -> String {
        let mut out = String::new();
        if let Ok(table) = self.kubectl_ok(&["get", "pods", "-A", "-o", "wide"], None) {
            out.push_str(&table);
        }
        let Ok(pods) = self.get_json(&["pods", "-A"]) else {
            return out;
        };
        for pod in pods["items"].as_array().into_iter().flatten() {
            let ns = pod["metadata"]["namespace"].as_str().unwrap_or_default();
            let name = pod["metadata"]["name"].as_str().unwrap_or_default();
            let statuses = pod["status"]["initContainerStatuses"]
                .as_array()
                .into_iter()
                .flatten()
                .chain(pod["status"]["containerStatuses"].as_array().into_iter().flatten());
            for status in statuses {
                if status["ready"] == true {
                    continue;
                }
                let container = status["name"].as_str().unwrap_or_default();
                out.push_str(&format!("--- {ns}/{name} [{container}] state {}\n", status["state"]));
                if let Ok(log) = self.kubectl_ok(&["logs", "-n", ns, name, "-c", container, "--tail=15"], None) {
                    out.push_str(&log);
                }
            }
        }
        if let Ok(events) = self.kubectl_ok(&["get", "events", "-A", "--field-selector", "type=Warning"], None) {
            out.push_str("--- warning events\n");
            out.push_str(&events);
        }
        if let Some(cluster) = &self.upstream {
            out.push_str(&cluster.log_tails(10));
        }
        out
    }

    /// A directory of this target's own, removed with it, for files a
    /// test hands to kubectl or meshctl.
    pub fn scratch_dir(&self) -> &std::path::Path {
        self.cache.path()
    }

    /// [`wait_for`] as a method, as [`TestCluster::wait_for`] reads.
    pub fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        f: impl FnMut() -> anyhow::Result<Option<T>>,
    ) -> anyhow::Result<T> {
        wait_for(what, timeout, f)
    }

    /// A kube-rs client for this cluster, from its kubeconfig.
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        let kc = kube::config::Kubeconfig::read_from(&self.kubeconfig)?;
        let config = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default()).await?;
        Ok(kube::Client::try_from(config)?)
    }

    /// A kube-rs client that authenticates as ServiceAccount
    /// `namespace/name` (a token from the TokenRequest API, valid an hour),
    /// so it holds exactly the RBAC bound to that account: on upstream
    /// Kubernetes a missing permission is a 403, as in production (kubesim
    /// does not enforce RBAC).
    pub async fn client_as(&self, namespace: &str, name: &str) -> anyhow::Result<kube::Client> {
        let token = self.kubectl_ok(&["create", "token", name, "-n", namespace, "--duration=1h"], None)?;
        let kc = kube::config::Kubeconfig::read_from(&self.kubeconfig)?;
        let mut config = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default()).await?;
        config.auth_info = kube::config::AuthInfo {
            token: Some(token.trim().to_string().into()),
            ..Default::default()
        };
        Ok(kube::Client::try_from(config)?)
    }

    /// `kubectl get --raw PATH`: the API server's proxy to pods and services.
    pub fn raw(&self, path: &str) -> anyhow::Result<String> {
        self.kubectl_ok(&["get", "--raw", path], None)
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(cluster) = self.upstream.take() {
            // Stopped on a thread of its own: its tokio runtime cannot be dropped from async
            // code (a test's runtime).
            let _ = std::thread::spawn(move || drop(cluster)).join();
        }
    }
}

/// Runs a prepared kubectl `cmd` with `args`, feeding `stdin`.
pub fn run_kubectl(mut cmd: Command, args: &[&str], stdin: Option<&str>) -> anyhow::Result<Output> {
    use std::io::Write as _;
    cmd.args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    let mut child = cmd.spawn().context("running kubectl (is it installed?)")?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())?;
    }
    Ok(child.wait_with_output()?)
}

/// A kubectl run's stdout, or an error naming the command with its stderr.
pub fn stdout_of(args: &[&str], out: Output) -> anyhow::Result<String> {
    ensure!(
        out.status.success(),
        "kubectl {} failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Polls `f` every 100 ms until it returns `Some`, or fails after
/// `timeout` naming `what` and the last error.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    loop {
        match f() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = format!(" (last error: {e:#})"),
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}{last}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One Prometheus sample: metric name, labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub value: f64,
}

/// Parses the Prometheus text format (what a proxy's `/metrics` serves);
/// comments and malformed lines are skipped.
pub fn prometheus_samples(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else { continue };
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let mut map = std::collections::BTreeMap::new();
        let mut rest = labels;
        while let Some((k, v)) = rest.split_once("=\"") {
            let Some(end) = v.find('"') else { break };
            map.insert(k.trim_start_matches(',').to_string(), v[..end].to_string());
            rest = &v[end + 1..];
        }
        out.push(Sample {
            name: name.to_string(),
            labels: map,
            value,
        });
    }
    out
}

/// The hops of a test-app answer (each app's echo, outermost first).
pub fn hops(body: &Value) -> Vec<Value> {
    let mut hops = Vec::new();
    let mut echo = body.clone();
    loop {
        let next = echo.get("upstream").map(|u| u["body"].clone());
        hops.push(echo);
        match next {
            Some(body) if body.is_object() => echo = body,
            _ => break,
        }
    }
    hops
}

/// One HTTP answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Answer {
    /// The hops of the answer (see [`hops`]).
    pub fn hops(&self) -> anyhow::Result<Vec<Value>> {
        Ok(hops(&self.json()?))
    }

    /// The body as JSON (the test app's echo).
    pub fn json(&self) -> anyhow::Result<Value> {
        serde_json::from_slice(&self.body).with_context(|| {
            format!(
                "status {}: not JSON: {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// A blocking facade over a hyper client, for tests.
#[derive(Debug, Clone)]
pub struct Http {
    rt: Arc<tokio::runtime::Runtime>,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Http {
    pub fn new() -> anyhow::Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let client = {
            let _guard = rt.enter();
            Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(5))
                .build_http()
        };
        Ok(Http {
            rt: Arc::new(rt),
            client,
        })
    }

    /// One request; a 10 s deadline.
    pub fn request(
        &self,
        method: http::Method,
        url: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> anyhow::Result<Answer> {
        let mut builder = http::Request::builder().method(method).uri(url);
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        let request = builder.body(Full::new(Bytes::from(body.to_string())))?;
        let client = self.client.clone();
        let url = url.to_string();
        self.rt.block_on(async move {
            tokio::time::timeout(Duration::from_secs(10), async {
                let response = client
                    .request(request)
                    .await
                    .with_context(|| format!("requesting {url}"))?;
                let status = response.status().as_u16();
                let headers = response.headers().clone();
                let body = response.into_body().collect().await?.to_bytes();
                Ok(Answer { status, headers, body })
            })
            .await
            .with_context(|| format!("no answer from {url} within 10 s"))?
        })
    }

    /// `GET url` with headers.
    pub fn get(&self, url: &str, headers: &[(&str, &str)]) -> anyhow::Result<Answer> {
        self.request(http::Method::GET, url, headers, "")
    }

    /// `n` GETs, `concurrency` at a time; every answer (or the error, as text).
    pub fn many(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        n: usize,
        concurrency: usize,
    ) -> Vec<Result<Answer, String>> {
        let (tx, rx) = std::sync::mpsc::channel();
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        std::thread::scope(|s| {
            for _ in 0..concurrency.max(1) {
                let tx = tx.clone();
                let next = next.clone();
                s.spawn(move || {
                    while next.fetch_add(1, Ordering::SeqCst) < n {
                        let _ = tx.send(self.get(url, headers).map_err(|e| format!("{e:#}")));
                    }
                });
            }
        });
        drop(tx);
        rx.into_iter().collect()
    }

    /// Sends GETs back to back on another thread until stopped.
    pub fn background(&self, url: &str, headers: Vec<(String, String)>) -> Background {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let http = self.clone();
        let url = url.to_string();
        let flag = stop.clone();
        let counter = sent.clone();
        let thread = std::thread::spawn(move || {
            let mut log = Vec::new();
            let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            while !flag.load(Ordering::SeqCst) {
                let started = Instant::now();
                counter.fetch_add(1, Ordering::SeqCst);
                let answer = http.get(&url, &h).map_err(|e| format!("{e:#}"));
                log.push((started, answer));
                std::thread::sleep(Duration::from_millis(10));
            }
            log
        });
        Background { stop, sent, thread }
    }
}

/// A load loop running on its own thread.
#[derive(Debug)]
pub struct Background {
    stop: Arc<AtomicBool>,
    sent: Arc<std::sync::atomic::AtomicUsize>,
    thread: std::thread::JoinHandle<Vec<(Instant, Result<Answer, String>)>>,
}

impl Background {
    /// How many requests were sent so far (the one in flight included).
    pub fn sent(&self) -> usize {
        self.sent.load(Ordering::SeqCst)
    }

    /// Stops and returns every request's start time and answer.
    pub fn finish(self) -> Vec<(Instant, Result<Answer, String>)> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().unwrap_or_default()
    }

    /// Stops, and fails unless at least 20 requests were sent during `what` and none failed
    /// (an error, or a status of 400 or more); returns how many were sent.
    pub fn finish_without_failure(self, what: &str) -> anyhow::Result<usize> {
        self.finish_expecting(what, "with a status below 400", |a| a.status < 400)
    }

    /// Stops, and fails unless at least 20 requests were sent during `what` and every one was
    /// answered as `ok` says (`expected` in words); returns how many were sent.
    pub fn finish_expecting(self, what: &str, expected: &str, ok: impl Fn(&Answer) -> bool) -> anyhow::Result<usize> {
        let log = self.finish();
        let other: Vec<String> = log
            .iter()
            .filter_map(|(_, a)| match a {
                Ok(a) if ok(a) => None,
                Ok(a) => Some(format!("{}: {}", a.status, String::from_utf8_lossy(&a.body))),
                Err(e) => Some(e.clone()),
            })
            .collect();
        ensure!(log.len() >= 20, "only {} requests were sent during {what}", log.len());
        ensure!(
            other.is_empty(),
            "{} of {} requests during {what} were not answered {expected}: {:?}",
            other.len(),
            log.len(),
            &other[..other.len().min(5)]
        );
        Ok(log.len())
    }
}

/// The failures of a batch, described (status and body, or the error).
pub fn failures<'a>(answers: impl IntoIterator<Item = &'a Result<Answer, String>>) -> Vec<String> {
    answers
        .into_iter()
        .filter_map(|a| match a {
            Ok(a) if a.status < 400 => None,
            Ok(a) => Some(format!("{}: {}", a.status, String::from_utf8_lossy(&a.body))),
            Err(e) => Some(e.clone()),
        })
        .collect()
}

/// The steps every end-to-end test and the demo share.
pub mod steps {
    use super::*;
    use trellis_manifests::{demo, install, sidecar, to_yaml};

    /// How long pods get to start (processes on a loaded 2-core machine).
    pub const READY: Duration = Duration::from_secs(120);

    /// Runs one named step of a test (`test` names it in the log): its start, its time, and
    /// on failure the cluster's state ([`Target::diagnose`]) and the step's name in the error.
    pub fn step<T>(t: &Target, test: &str, name: &str, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
        let started = Instant::now();
        eprintln!("[{test}] {name} ...");
        let out = f().map_err(|e| {
            eprintln!("[{test}] {name}: FAILED: {e:#}\n{}", t.diagnose());
            e
        });
        let out = out.with_context(|| format!("step `{name}` failed"))?;
        eprintln!("[{test}] {name}: ok in {:.1?}", started.elapsed());
        Ok(out)
    }

    /// Installs as the dry-run header's kubectl recipe does: the CRDs, waited
    /// for until Established; the control plane, waited for until the
    /// operator has rolled out; then the Mesh. The operator creates its
    /// validating webhook configuration (failure policy Fail) as it starts,
    /// so a Mesh applied with the rest can meet a webhook whose server is
    /// not serving yet (seen on upstream Kubernetes, where the image is on
    /// the node and the pod starts at once); it is applied again until the
    /// webhook's endpoint is ready, as `meshctl install` does.
    pub fn install(t: &Target) -> anyhow::Result<()> {
        let objects = install::objects(&install::Options::default());
        let (crds, rest): (Vec<_>, Vec<_>) = objects
            .into_iter()
            .partition(|o| o["kind"] == "CustomResourceDefinition");
        let (mesh, rest): (Vec<_>, Vec<_>) = rest.into_iter().partition(|o| o["kind"] == "Mesh");
        t.apply(&to_yaml(&crds))?;
        let names: Vec<String> = crds
            .iter()
            .filter_map(|c| c["metadata"]["name"].as_str().map(|n| format!("crd/{n}")))
            .collect();
        let mut args = vec!["wait", "--for=condition=Established", "--timeout=60s"];
        args.extend(names.iter().map(String::as_str));
        t.kubectl_ok(&args, None)?;
        t.apply(&to_yaml(&rest))?;
        rollout(t, trellis_api::mesh::SYSTEM_NAMESPACE, install::OPERATOR_NAME)?;
        let mesh = to_yaml(&mesh);
        wait_for(
            "the Mesh applied through the operator's webhook",
            Duration::from_secs(60),
            || t.apply(&mesh).map(Some),
        )
        .map(|_| ())
    }

    /// `kubectl rollout status` of a Deployment.
    pub fn rollout(t: &Target, ns: &str, name: &str) -> anyhow::Result<()> {
        let timeout = format!("--timeout={}s", READY.as_secs());
        t.kubectl_ok(
            &["rollout", "status", "-n", ns, &format!("deployment/{name}"), &timeout],
            None,
        )
        .map(|_| ())
    }

    /// The shop's workloads (plain Deployments in a namespace labelled for injection: the
    /// operator's injector meshes their pods), the tracing setting, then its routing.
    pub fn deploy_shop(t: &Target) -> anyhow::Result<()> {
        let settings = sidecar::Settings::new(&install::Options::default());
        let mut objects = demo::objects(&settings);
        objects.push(demo::mesh_tracing());
        t.kubectl_ok(
            &["apply", "--server-side", "--force-conflicts", "-f", "-"],
            Some(&to_yaml(&objects)),
        )?;
        t.apply(demo::ROUTING)?;
        for o in objects.iter().filter(|o| o["kind"] == "Deployment") {
            let (Some(ns), Some(name)) = (o["metadata"]["namespace"].as_str(), o["metadata"]["name"].as_str()) else {
                continue;
            };
            rollout(t, ns, name)?;
        }
        Ok(())
    }

    /// `http://<load balancer address>:<port>` of a LoadBalancer Service.
    pub fn load_balancer(t: &Target, ns: &str, name: &str) -> anyhow::Result<String> {
        wait_for(
            &format!("a load balancer address for Service {ns}/{name}"),
            Duration::from_secs(30),
            || {
                let svc = t.get_json(&["service", "-n", ns, name])?;
                let ingress = &svc["status"]["loadBalancer"]["ingress"][0];
                let host = ingress["ip"].as_str().or_else(|| ingress["hostname"].as_str());
                let port = svc["spec"]["ports"][0]["port"].as_i64();
                Ok(host.zip(port).map(|(h, p)| format!("http://{h}:{p}")))
            },
        )
    }
}
