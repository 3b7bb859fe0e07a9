//! `meshctl demo`: the seeds' shop on a local kubesim, end to end.
//!
//! Starts kubesim (pods as processes in network namespaces; needs root),
//! installs Trellis from the install manifests, deploys the shop (ingress
//! gateway, web, payment v1/v2, db: plain Deployments in a namespace
//! labelled for injection, meshed by the operator's injector) and its
//! routing, sends traffic through the gateway, and prints the routes in force, the answers by version, the identity on each hop
//! and a metrics summary. `--keep` leaves everything running until
//! Ctrl-C; otherwise kubesim is stopped and cleaned up at the end, also
//! after a failure or a Ctrl-C midway.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use trellis_contract::ListenerDirection;
use trellis_e2e::suite::{Answer, Http, Target, prometheus_samples, steps, wait_for};
use trellis_manifests::demo;
use trellis_operator::compile::{Role, compile};
use trellis_operator::registry::ObjectKey;
use trellis_operator::snapshot::Snapshot;

use crate::EXIT_OK;
use crate::config_text::{describe_action, describe_match, describe_provenance};

/// `meshctl demo` options.
#[derive(Debug, clap::Args)]
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

/// The steps, for progress and for saying which one failed.
const STEPS: usize = 7;

struct Progress {
    step: usize,
    started: Instant,
}

impl Progress {
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
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|d| d.join("kubesim"))
        .find(|p| p.is_file());
    on_path.context(
        "kubesim was not found next to meshctl or on PATH: build the workspace first (`cargo build --bins`) \
         or pass --kubesim PATH",
    )
}

/// Runs the demo; progress goes to stderr, the report to `out`.
pub fn run(args: &Args, out: &mut dyn Write) -> anyhow::Result<u8> {
    let mut progress = Progress {
        step: 0,
        started: Instant::now(),
    };
    let binary = find_kubesim(args.kubesim.as_deref())?;

    progress.begin("Starting kubesim (a local Kubernetes; pods run as processes in network namespaces)");
    std::fs::create_dir_all(&args.state_dir)
        .with_context(|| format!("creating the state directory {}", args.state_dir.display()))?;
    let up = Command::new(&binary)
        .arg("up")
        .arg("--processes")
        .arg("--state-dir")
        .arg(&args.state_dir)
        .output()
        .with_context(|| format!("running {}", binary.display()))?;
    if !up.status.success() {
        bail!(
            "step 1 (starting kubesim) failed: {}{}",
            String::from_utf8_lossy(&up.stderr),
            String::from_utf8_lossy(&up.stdout)
        );
    }
    let guard = Kubesim {
        binary: binary.clone(),
        state_dir: args.state_dir.clone(),
    };
    let kept = Arc::new(AtomicBool::new(false));
    on_interrupt(binary.clone(), args.state_dir.clone(), kept.clone());
    let stdout = String::from_utf8_lossy(&up.stdout);
    let kubeconfig = stdout
        .lines()
        .find_map(|l| l.strip_prefix("export KUBECONFIG="))
        .map(PathBuf::from)
        .context("kubesim up did not say where its kubeconfig is")?;
    progress.done();

    let target = Target::external(&kubeconfig)?;
    let report = walk(&target, args, &mut progress).map_err(|e| {
        eprintln!("\nWhat the cluster looked like:\n{}", target.diagnose());
        e.context(format!("step {} of {STEPS} failed", progress.step))
    });
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            drop(guard);
            return Err(e);
        }
    };
    report.print(out, &kubeconfig)?;
    if args.keep {
        writeln!(
            out,
            "\nkubesim keeps running with the shop. Explore:\n  export KUBECONFIG={}\n  kubectl get pods -n shop\n  kubectl get virtualservices,destinationrules -n shop\n  curl {}/api/hello\nPress Ctrl-C to stop and clean up.",
            kubeconfig.display(),
            report.gateway
        )?;
        out.flush()?;
        kept.store(true, Ordering::SeqCst);
        // The interrupt handler stops kubesim and ends the process.
        loop {
            std::thread::park();
        }
    } else {
        writeln!(
            out,
            "\nkubesim is being stopped; run `meshctl demo --keep` to explore the shop with kubectl afterwards."
        )?;
        drop(guard);
    }
    Ok(EXIT_OK)
}

/// What the demo found.
struct Report {
    gateway: String,
    routes: Vec<[String; 4]>,
    versions: BTreeMap<String, usize>,
    canary_versions: BTreeMap<String, usize>,
    sent: usize,
    hops: Vec<[String; 4]>,
    metrics: Vec<[String; 3]>,
}

fn walk(t: &Target, args: &Args, progress: &mut Progress) -> anyhow::Result<Report> {
    progress.begin("Installing Trellis (CRDs, trellis-operator in trellis-system)");
    steps::install(t)?;
    progress.done();

    progress.begin("Deploying the shop (ingress gateway, web, payment v1/v2, db; meshed) and its routing");
    steps::deploy_shop(t)?;
    progress.done();

    progress.begin("Waiting for the first request to cross gateway → web → payment → db");
    let gateway = steps::load_balancer(t, demo::NAMESPACE, demo::GATEWAY)?;
    let http = Http::new()?;
    let api = format!("{gateway}/api/hello");
    let first = wait_for("a 200 from /api through the gateway", Duration::from_secs(90), || {
        Ok(http.get(&api, &[]).ok().filter(|a| a.status == 200))
    })?;
    progress.done();

    progress.begin(&format!(
        "Sending {} requests through the gateway (and 20 with x-canary: true)",
        args.requests
    ));
    let answers = http.many(&api, &[], args.requests as usize, 4);
    let versions = count_versions(&answers);
    let canary = http.many(&api, &[("x-canary", "true")], 20, 2);
    let canary_versions = count_versions(&canary);
    progress.done();

    progress.begin("Reading the routes in force (compiled from the cluster, as the operator compiles them)");
    let routes = routes_in_force(t)?;
    progress.done();

    progress.begin("Scraping every proxy's /metrics");
    let metrics = metrics_summary(t)?;
    progress.done();

    Ok(Report {
        gateway,
        routes,
        versions,
        canary_versions,
        sent: answers.len(),
        hops: identities(&first)?,
        metrics,
    })
}

fn count_versions(answers: &[Result<Answer, String>]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for a in answers {
        let key = match a {
            Ok(a) if a.status == 200 => a
                .hops()
                .ok()
                .and_then(|h| h.iter().find(|e| e["service"] == "payment").cloned())
                .and_then(|e| e["version"].as_str().map(|v| format!("payment {v}")))
                .unwrap_or_else(|| "no payment hop".into()),
            Ok(a) => format!("HTTP {}", a.status),
            Err(_) => "no answer".into(),
        };
        *counts.entry(key).or_insert(0) += 1;
    }
    counts
}

fn identities(answer: &Answer) -> anyhow::Result<Vec<[String; 4]>> {
    let mut rows = Vec::new();
    for hop in answer.hops()? {
        let xfcc = hop["clientCert"].as_str().unwrap_or_default();
        let field = |key: &str| {
            xfcc.split(';')
                .find_map(|f| f.strip_prefix(key))
                .unwrap_or("(none: not mTLS)")
                .to_string()
        };
        rows.push([
            hop["service"].as_str().unwrap_or("?").to_string(),
            hop["pod"].as_str().unwrap_or("?").to_string(),
            field("URI="),
            field("By="),
        ]);
    }
    Ok(rows)
}

/// The cluster's objects as the compiler reads them.
fn snapshot(t: &Target) -> anyhow::Result<Snapshot> {
    let kinds = [
        "namespaces,services,pods,serviceaccounts",
        "virtualservices.networking.trellis.dev,destinationrules.networking.trellis.dev,gateways.networking.trellis.dev",
        "peerauthentications.security.trellis.dev,authorizationpolicies.security.trellis.dev,meshes.mesh.trellis.dev",
    ];
    let mut yaml = String::new();
    for k in kinds {
        let list = t.get_json(&[k, "-A"])?;
        for item in list["items"].as_array().into_iter().flatten() {
            yaml.push_str("---\n");
            yaml.push_str(&serde_yaml_ng::to_string(item)?);
        }
    }
    Snapshot::from_yaml(&yaml).context("reading the cluster's objects")
}

fn first_pod(t: &Target, selector: &str) -> anyhow::Result<String> {
    t.pod_names(demo::NAMESPACE, selector)?
        .into_iter()
        .next()
        .with_context(|| format!("no pod matches {selector} in {}", demo::NAMESPACE))
}

fn routes_in_force(t: &Target) -> anyhow::Result<Vec<[String; 4]>> {
    let snap = snapshot(t)?;
    let mut rows = Vec::new();
    for (proxy, selector, role, host) in [
        (demo::GATEWAY, format!("app={}", demo::GATEWAY), Role::Gateway, None),
        (
            "web",
            "app=web".to_string(),
            Role::Sidecar,
            Some("payment.shop.svc.cluster.local"),
        ),
    ] {
        let pod = first_pod(t, &selector)?;
        let compiled = compile(&snap, &ObjectKey::new(demo::NAMESPACE, &pod), role, "demo")
            .with_context(|| format!("compiling the configuration of {proxy}"))?;
        for listener in &compiled.config.listeners {
            let wanted = match role {
                Role::Gateway => true,
                Role::Sidecar => listener.direction == ListenerDirection::Outbound,
            };
            if !wanted {
                continue;
            }
            for vh in &listener.virtual_hosts {
                if let Some(h) = host
                    && !vh.domains.iter().any(|d| d.split(':').next() == Some(h))
                {
                    continue;
                }
                for route in &vh.routes {
                    rows.push([
                        format!("{proxy} → {}", vh.domains.first().cloned().unwrap_or_default()),
                        describe_match(route),
                        describe_action(route),
                        describe_provenance(&route.provenance),
                    ]);
                }
            }
        }
    }
    Ok(rows)
}

fn metrics_summary(t: &Target) -> anyhow::Result<Vec<[String; 3]>> {
    let mut rows = Vec::new();
    for app in [demo::GATEWAY, "web", "payment", "db"] {
        let pods = t.get_json(&["pods", "-n", demo::NAMESPACE, "-l", &format!("app={app}")])?;
        for pod in pods["items"].as_array().into_iter().flatten() {
            let Some(name) = pod["metadata"]["name"].as_str() else {
                continue;
            };
            let text = t.raw(&format!(
                "/api/v1/namespaces/{}/pods/{name}:15020/proxy/metrics",
                demo::NAMESPACE
            ))?;
            let mut inbound: BTreeMap<String, f64> = BTreeMap::new();
            let mut outbound: BTreeMap<String, f64> = BTreeMap::new();
            for s in prometheus_samples(&text)
                .into_iter()
                .filter(|s| s.name == "istio_requests_total")
            {
                let code = s.labels.get("response_code").cloned().unwrap_or_default();
                let side = if s.labels.get("reporter").is_some_and(|r| r == "destination") {
                    &mut inbound
                } else {
                    &mut outbound
                };
                *side.entry(code).or_insert(0.0) += s.value;
            }
            let fmt = |m: &BTreeMap<String, f64>| {
                if m.is_empty() {
                    "-".to_string()
                } else {
                    m.iter()
                        .map(|(c, n)| format!("{c} × {n}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            };
            rows.push([name.to_string(), fmt(&inbound), fmt(&outbound)]);
        }
    }
    Ok(rows)
}

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED).set_header(header.iter().copied());
    t
}

impl Report {
    fn print(&self, out: &mut dyn Write, kubeconfig: &Path) -> anyhow::Result<()> {
        writeln!(out, "\nThe shop is meshed and serving at {}/api\n", self.gateway)?;
        writeln!(out, "Routes in force")?;
        let mut routes = table(&["Proxy → host", "Match", "Destination", "From"]);
        for r in &self.routes {
            routes.add_row(r.iter());
        }
        writeln!(out, "{routes}\n")?;

        writeln!(out, "Answers by version ({} requests; the split is 90/10)", self.sent)?;
        let mut versions = table(&["Answered by", "Requests", "Share"]);
        for (v, n) in &self.versions {
            versions.add_row([
                v.clone(),
                n.to_string(),
                format!("{:.1} %", 100.0 * *n as f64 / self.sent.max(1) as f64),
            ]);
        }
        writeln!(out, "{versions}")?;
        let canary: Vec<String> = self.canary_versions.iter().map(|(v, n)| format!("{v} × {n}")).collect();
        writeln!(out, "With x-canary: true: {}\n", canary.join(", "))?;

        writeln!(out, "Identities on each hop (mutual TLS, from x-forwarded-client-cert)")?;
        let mut hops = table(&["Service", "Pod", "Caller (verified peer)", "Own identity"]);
        for h in &self.hops {
            hops.add_row(h.iter());
        }
        writeln!(out, "{hops}\n")?;

        writeln!(
            out,
            "Requests counted by each proxy (istio_requests_total by response code)"
        )?;
        let mut metrics = table(&["Proxy (pod)", "Inbound", "Outbound"]);
        for m in &self.metrics {
            metrics.add_row(m.iter());
        }
        writeln!(out, "{metrics}\n")?;
        writeln!(
            out,
            "Point kubectl at the cluster:\n  export KUBECONFIG={}",
            kubeconfig.display()
        )?;
        Ok(())
    }
}
