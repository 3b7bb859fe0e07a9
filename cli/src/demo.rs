//! `meshctl demo`: the seeds' shop on a local kubesim, end to end, done as a user does it.
//!
//! Checks the machine first ([`prerequisites`]: root, the programs kubesim runs, the built
//! binaries), starts kubesim (a local Kubernetes whose pods are processes in network namespaces)
//! as a separate process, then only speaks the Kubernetes API: `meshctl install --profile demo`
//! (the same code), `kubectl label namespace shop trellis.dev/inject=enabled`, the shop's plain
//! YAML and routing (the operator's injector meshes its pods), traffic through the gateway's
//! load balancer; and prints the routes in force, the answers by version, the identity on each
//! hop and every proxy's request counts ([`report`]). `--keep` leaves everything running until
//! Ctrl-C; otherwise kubesim is stopped and cleaned up at the end, also after a failure or a
//! Ctrl-C midway.

pub mod prerequisites;
pub mod report;
pub mod shop;
pub mod traffic;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use trellis_manifests::profile::Profile;

use crate::cluster::{Cluster, ClusterArgs};
use crate::install::{self, values};
use crate::output::Terminal;
use crate::progress::Progress;
use crate::{EXIT_OK, EXIT_USAGE};
use report::Report;

/// `meshctl demo` options.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  sudo meshctl demo                  # run the shop end to end, print the report, clean up
  sudo meshctl demo --keep           # and leave it running to explore with kubectl (Ctrl-C ends)
  sudo meshctl demo --requests 1000

Needs root and iproute2, iptables, util-linux, mount and procps (Debian, Ubuntu:
`sudo apt-get install -y iproute2 iptables util-linux mount procps`); meshctl checks them first
and names what is missing. kubesim, trellis-operator, trellis-proxy and trellis-testapp come
from `cargo build --bins`.

Exit status: 0 done, 2 a prerequisite missing or a step failed, 130 interrupted.")]
pub struct Args {
    /// Leave kubesim and the shop running until Ctrl-C, to explore with kubectl.
    #[arg(long)]
    pub keep: bool,
    /// Where kubesim keeps its state (kubeconfig, logs, pod files).
    #[arg(long, default_value_os_t = std::env::temp_dir().join("trellis-demo"))]
    pub state_dir: PathBuf,
    /// How many requests to send through the gateway.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(10..=100_000))]
    pub requests: u32,
    /// The kubesim binary (default: next to meshctl, then PATH).
    #[arg(long)]
    pub kubesim: Option<PathBuf>,
}

/// How long the installation and the shop get to become ready (processes on a loaded 2-core
/// machine).
const READY: Duration = Duration::from_secs(180);

/// The demo's steps, for progress and for saying which one failed.
const STEPS: usize = 7;

struct Steps {
    step: usize,
    started: Instant,
}

impl Steps {
    fn begin(&mut self, what: &str) {
        self.step += 1;
        self.started = Instant::now();
        eprintln!("[{}/{STEPS}] {what} ...", self.step);
    }

    fn done(&self) {
        eprintln!("      done in {:.1?}", self.started.elapsed());
    }
}

/// Stops kubesim when dropped.
struct Kubesim {
    binary: PathBuf,
    state_dir: PathBuf,
}

impl Drop for Kubesim {
    fn drop(&mut self) {
        stop_kubesim(&self.binary, &self.state_dir);
    }
}

/// `kubesim down`: stops it and removes everything it created.
fn stop_kubesim(binary: &Path, state_dir: &Path) {
    eprintln!("Stopping kubesim and removing everything it created ...");
    match Command::new(binary)
        .arg("down")
        .arg("--state-dir")
        .arg(state_dir)
        .output()
    {
        Ok(o) if o.status.success() => {}
        Ok(o) => eprintln!(
            "meshctl: `kubesim down --state-dir {}` failed: {}",
            state_dir.display(),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => eprintln!("meshctl: running kubesim down: {e}"),
    }
}

/// Ctrl-C at any point stops kubesim and exits: 130 while the demo is
/// running, 0 once the demo is done and only kept (`--keep`).
fn on_interrupt(binary: PathBuf, state_dir: PathBuf, kept: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
            return;
        };
        if rt.block_on(tokio::signal::ctrl_c()).is_err() {
            return;
        }
        eprintln!("\nInterrupted.");
        stop_kubesim(&binary, &state_dir);
        std::process::exit(if kept.load(Ordering::SeqCst) { 0 } else { 130 });
    });
}

fn find_kubesim(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("kubesim")))
        .filter(|p| p.is_file());
    if let Some(p) = beside {
        return Ok(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    prerequisites::find_program("kubesim", &path).context(
        "kubesim was not found next to meshctl or on PATH: build the workspace first (`cargo build --bins`) \
         or pass --kubesim PATH",
    )
}

/// Whether the machine can run the demo: prints what is missing (and a warning for kubectl).
fn check_prerequisites(kubesim: &Path) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let missing = prerequisites::missing(prerequisites::effective_uid(), &path, kubesim);
    if !missing.is_empty() {
        eprintln!("{}", missing.explain());
        return false;
    }
    if prerequisites::find_program("kubectl", &path).is_none() {
        eprintln!(
            "‼ kubectl is not on PATH: the demo runs without it, but exploring the cluster afterwards needs it \
             (install it from the Kubernetes project's packages, as the README's set-up says)"
        );
    }
    true
}

/// Starts kubesim; its kubeconfig.
fn start_kubesim(binary: &Path, state_dir: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("creating the state directory {}", state_dir.display()))?;
    let up = Command::new(binary)
        .arg("up")
        .arg("--processes")
        .arg("--state-dir")
        .arg(state_dir)
        .output()
        .with_context(|| format!("running {}", binary.display()))?;
    if !up.status.success() {
        bail!(
            "step 1 (starting kubesim) failed: {}{}",
            String::from_utf8_lossy(&up.stderr),
            String::from_utf8_lossy(&up.stdout)
        );
    }
    let stdout = String::from_utf8_lossy(&up.stdout);
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("export KUBECONFIG="))
        .map(PathBuf::from)
        .context("kubesim up did not say where its kubeconfig is")
}

/// Runs the demo; progress goes to stderr, the report to `out`.
pub async fn run(args: &Args, terminal: Terminal, out: &mut dyn Write) -> anyhow::Result<u8> {
    let binary = find_kubesim(args.kubesim.as_deref())?;
    if !check_prerequisites(&binary) {
        return Ok(EXIT_USAGE);
    }
    let mut steps = Steps {
        step: 0,
        started: Instant::now(),
    };
    steps.begin("Starting kubesim (a local Kubernetes; pods run as processes in network namespaces)");
    let kubeconfig = start_kubesim(&binary, &args.state_dir)?;
    let guard = Kubesim {
        binary: binary.clone(),
        state_dir: args.state_dir.clone(),
    };
    let kept = Arc::new(AtomicBool::new(false));
    on_interrupt(binary.clone(), args.state_dir.clone(), kept.clone());
    steps.done();

    let cluster_args = ClusterArgs {
        kubeconfig: Some(kubeconfig.clone()),
        context: None,
    };
    let cluster = Cluster::connect(&cluster_args).await?;
    let report = match walk(&cluster, args, terminal, &mut steps).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!(
                "\nWhat the cluster looked like:\n{}",
                shop::describe_pods(&cluster).await
            );
            drop(guard);
            return Err(e.context(format!("step {} of {STEPS} failed", steps.step)));
        }
    };
    report.print(out, &kubeconfig)?;
    if args.keep {
        writeln!(
            out,
            "\nkubesim keeps running with the shop. Explore:\n  export KUBECONFIG={}\n  kubectl get pods -n shop\n  kubectl get virtualservices,destinationrules -n shop\n  meshctl version\n  curl {}/api/hello\nPress Ctrl-C to stop and clean up.",
            kubeconfig.display(),
            report.gateway
        )?;
        out.flush()?;
        kept.store(true, Ordering::SeqCst);
        // The interrupt handler stops kubesim and ends the process.
        loop {
            std::thread::park();
        }
    }
    writeln!(
        out,
        "\nkubesim is being stopped; run `meshctl demo --keep` to explore the shop with kubectl afterwards."
    )?;
    drop(guard);
    Ok(EXIT_OK)
}

async fn walk(cluster: &Cluster, args: &Args, terminal: Terminal, steps: &mut Steps) -> anyhow::Result<Report> {
    let mut progress = Progress::new(terminal, false);
    steps.begin(
        "Installing Trellis: meshctl install --profile demo (CRDs, operator, ingress and egress gateways, Mesh)",
    );
    let deadline = Instant::now() + READY;
    let values = values::resolve(Profile::Demo, &[], &[])?;
    let objects = values.objects();
    install::apply(cluster, &objects, READY, &mut progress).await?;
    // The demo needs the operator and the gateway running; the rest of readiness shows in
    // the first answer through the gateway.
    install::wait_rolled_out(cluster, &objects, deadline, &mut progress).await?;
    steps.done();

    steps.begin("Deploying the shop as plain YAML into a namespace labelled for injection, and its routing");
    shop::deploy(cluster, Instant::now() + READY, &mut progress).await?;
    steps.done();

    steps.begin("Waiting for the first request to cross gateway → web → payment → db");
    let gateway = shop::gateway_address(cluster, Duration::from_secs(30)).await?;
    let http = traffic::Client::new();
    let api = format!("{gateway}/api/hello");
    let waited = Instant::now() + Duration::from_secs(90);
    let first = loop {
        let last = match http.get(&api, &[]).await {
            Ok(a) if a.status == 200 => break a,
            Ok(a) => format!("HTTP {}: {}", a.status, String::from_utf8_lossy(&a.body)),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() > waited {
            bail!("no 200 from {api} within 90 s (last: {last})");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    steps.done();

    steps.begin(&format!(
        "Sending {} requests through the gateway (and 20 with x-canary: true)",
        args.requests
    ));
    let answers = http.many(&api, &[], args.requests as usize, 4).await;
    let canary = http
        .many(&api, &[("x-canary".to_string(), "true".to_string())], 20, 2)
        .await;
    steps.done();

    steps.begin("Reading the routes in force (compiled from the cluster with trellis-core, as the operator does)");
    let snapshot = cluster.snapshot().await?;
    let routes = report::routes_in_force(cluster, &snapshot).await?;
    steps.done();

    steps.begin("Scraping every proxy's /metrics (through the API server's pod proxy)");
    let metrics = report::metrics_summary(cluster).await?;
    steps.done();

    Ok(Report {
        gateway,
        routes,
        versions: traffic::count_versions(&answers),
        canary_versions: traffic::count_versions(&canary),
        sent: answers.len(),
        hops: traffic::identities(&first)?,
        metrics,
    })
}
