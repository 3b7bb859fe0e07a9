//! Admission latency of the operator's webhooks: the real HTTPS webhook server
//! (`trellis_operator::admission::server`, certificate from the operator's CA code) on
//! loopback, fed real AdmissionReview bodies as the API server sends them.
//!
//! - `inject, 50 concurrent`: 50 pod creations in flight at once (50 keep-alive HTTP/1.1
//!   connections, `ROUNDS` pods each).
//! - `inject, scale-up of 500`: one Deployment scaled to 500 — the ReplicaSet controller creates
//!   pods in slow-start batches of 1, 2, 4, … concurrently — called as the API server calls
//!   webhooks: over HTTP/1.1 (since Kubernetes 1.16, kubernetes#82090), each call on an idle
//!   keep-alive connection or a new one (a full TLS handshake: client-go keeps no TLS session
//!   cache), at most 25 idle ones kept (client-go's `idleConnsPerHost`). So a batch of 128 opens
//!   about a hundred connections at once.
//! - `inject, scale-up of 500 over one HTTP/2 connection`: the same batches multiplexed over one
//!   connection, as a client that multiplexes would send them (not the API server).
//! - `inject, 50 concurrent, every pod its own template`: as the first, each pod with a label
//!   of its own, so the injector's memo never answers (every pod decided: the typed pod, the
//!   template, the JSON patch). The first three scenarios send pods of one template, as a
//!   Deployment's ReplicaSet does: the memo decides the first and answers the rest (each
//!   scenario prints how many it answered and decided).
//! - `validate, 50 concurrent`: a VirtualService (the demo's payment routing) applied 50 at a
//!   time.
//! - the decisions alone (no TLS, no HTTP), for reference.
//!
//! Two figures per scenario:
//! - **in the operator** (what the target is about): the server's own histogram,
//!   `trellis_operator_admission_seconds` — from the request's headers read to its answer
//!   written, the wait for a worker thread included — as Prometheus would estimate p50 and p99
//!   from its buckets, and exactly the share answered within 10 ms;
//! - **end to end**: the client's time from sending the request to having read the whole
//!   answer (TLS — a new connection's handshake included —, the loopback, the client's own
//!   work and its queue), and how many connections the client opened.
//!
//! And where the time in the operator went, from the server's
//! `trellis_operator_admission_phase_seconds`: `queued` (headers read → the review's task first
//! runs: the wait for a worker), `body` (→ the whole body read: the client's sending, and on
//! HTTP/2 the connection task reading it), `answer` (→ the answer handed to the connection: the
//! decision, the JSON, and waits in between), p50 and p99 of each.
//!
//! And where the threads' time went, from the kernel's scheduler statistics: how long the
//! server's threads ran on a core and how long they were runnable but waited for one, and the
//! same for the client's process.
//!
//! The server runs on a runtime of its own (2 worker threads, as the operator's on 2 cores) in
//! this process; the client runs in a process of its own (this binary started again for each
//! scenario, see `client`), so this process's threads and scheduler statistics are the
//! operator's alone. The two processes share the machine's cores (neither is pinned), as an
//! API server and the operator on one node do. The load average is printed with each scenario.
//!
//! Every answer is checked (status 200, allowed, a patch for pods); failures are counted, and
//! any failure makes the run exit with status 1. Target: p99 ≤ 10 ms per admission in the
//! operator, 0 failures. Run:
//! `cargo bench -p trellis-operator --bench admission` (release build); `ROUNDS` (40),
//! `SCALE` (500), `CONCURRENCY` (50).

#[path = "admission/client.rs"]
mod client;
#[path = "admission/cores.rs"]
mod cores;
#[path = "admission/reviews.rs"]
mod reviews;

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use client::{Results, Scenario};
use reviews::{distinct_pod_review, index, pod_review, vs_review};
use serde_json::Value;
use trellis_manifests::install::{Options, webhooks};
use trellis_manifests::sidecar::Settings;
use trellis_operator::admission::server::{Webhooks, serve};
use trellis_operator::ca::{MeshRoots, SigningCert, SystemClock};
use trellis_operator::index::Index;
use trellis_operator::metrics::{Distribution, Histogram, Metrics};
use trellis_operator::serving::{ClientAuth, Identity, ServingTls};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

impl Results {
    /// Prints the figures — end to end, and in the operator from `server` (its histogram
    /// over the run), with the load average before and after; returns how many admissions
    /// failed.
    fn report(&mut self, name: &str, server: &Distribution, load: (String, String)) -> usize {
        self.latencies.sort();
        let q = |p: f64| {
            let i = ((self.latencies.len() as f64 * p).ceil() as usize).clamp(1, self.latencies.len().max(1)) - 1;
            self.latencies.get(i).copied().unwrap_or_default()
        };
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let in_operator = |p: f64| server.quantile(p).map_or(f64::NAN, ms);
        let within = server.at_most(0.010) as f64 * 100.0 / server.count().max(1) as f64;
        println!("{name} (load average {} -> {})", load.0, load.1);
        println!(
            "    in the operator: n={:<5} p50={:.3} ms  p99={:.3} ms  (bucket estimates)  answered within 10 ms: {within:.2} %",
            server.count(),
            in_operator(0.50),
            in_operator(0.99),
        );
        println!(
            "    end to end:      n={:<5} p50={:.3} ms  p99={:.3} ms  max={:.3} ms  failed={}  (connections opened: {})",
            self.latencies.len(),
            ms(q(0.50)),
            ms(q(0.99)),
            ms(self.latencies.last().copied().unwrap_or_default()),
            self.failures.len(),
            self.connections
        );
        for f in self.failures.iter().take(3) {
            println!("    failure: {f}");
        }
        self.failures.len()
    }
}

/// The 1-, 5- and 15-minute load averages.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// The name of the server's threads (see [`start_server`]), which [`cores`] tells apart from
/// the client's.
const SERVER_THREADS: &str = "operator";

/// The server's runtime (see [`start_server`]).
static SERVER: std::sync::OnceLock<tokio::runtime::Handle> = std::sync::OnceLock::new();

/// How long each of the server's workers has been busy (polling tasks) since it started.
fn workers_busy() -> Vec<Duration> {
    SERVER.get().map_or_else(Vec::new, |server| {
        let metrics = server.metrics();
        (0..metrics.num_workers())
            .map(|w| metrics.worker_total_busy_duration(w))
            .collect()
    })
}

/// The server's admission phases (`trellis_operator_admission_phase_seconds`), whose time
/// [`measured`] reports with each scenario.
static PHASES: std::sync::OnceLock<Arc<Metrics>> = std::sync::OnceLock::new();

fn phases() -> Vec<(&'static str, Distribution)> {
    PHASES.get().map_or_else(Vec::new, |m| {
        let p = &m.admission_phases;
        vec![
            ("queued", p.queued.snapshot()),
            ("body", p.body.snapshot()),
            ("answer", p.answer.snapshot()),
        ]
    })
}

/// Run `scenario`, then report it with what `histogram` recorded meanwhile, where that time
/// went (the server's phases), and how busy each of the server's workers was (whether the
/// work was spread over both).
async fn measured(name: &str, histogram: &Histogram, scenario: impl std::future::Future<Output = Results>) -> usize {
    let (before, load, busy, phases_before) = (histogram.snapshot(), load_average(), workers_busy(), phases());
    let cores_before = cores::so_far(SERVER_THREADS);
    let started = Instant::now();
    let mut results = scenario.await;
    let took = started.elapsed();
    let cores_after = cores::so_far(SERVER_THREADS);
    let server = histogram.snapshot().since(&before);
    let failed = results.report(name, &server, (load, load_average()));
    let ms = |d: Option<Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0);
    let spent: Vec<String> = phases()
        .into_iter()
        .zip(phases_before)
        .map(|((phase, after), (_, before))| {
            let d = after.since(&before);
            format!(
                "{phase} p50={:.3} p99={:.3} ms",
                ms(d.quantile(0.5)),
                ms(d.quantile(0.99))
            )
        })
        .collect();
    println!("    where it went in the operator: {}", spent.join(", "));
    let busy: Vec<String> = workers_busy()
        .iter()
        .zip(busy)
        .map(|(after, before)| format!("{:.1} ms", (*after - before).as_secs_f64() * 1000.0))
        .collect();
    println!(
        "    the server's workers busy: {} (of {:.1} ms)",
        busy.join(", "),
        took.as_secs_f64() * 1000.0
    );
    if let (Some((server_before, _)), Some((server, _))) = (cores_before, cores_after) {
        let client = results.cores.map_or_else(|| "unknown".to_string(), |c| c.to_string());
        println!(
            "    on the cores: the server's threads {}; the client's process {client}",
            server.since(&server_before)
        );
    }
    failed
}

fn decisions(index: &RwLock<Index>, defaults: &Settings, n: usize) {
    let pod: Value = serde_json::from_slice::<Value>(&pod_review(0))
        .map(|v| v["request"]["object"].clone())
        .unwrap_or_default();
    let vs: Value = serde_json::from_slice::<Value>(&vs_review(0))
        .map(|v| v["request"]["object"].clone())
        .unwrap_or_default();
    let labels = index
        .read()
        .map(|i| i.namespace_labels("shop").cloned())
        .unwrap_or_default();
    let started = Instant::now();
    for _ in 0..n {
        std::hint::black_box(trellis_operator::admission::inject::decide(
            &pod,
            "shop",
            labels.as_ref(),
            &["trellis-system", "kube-system"],
            defaults,
        ));
    }
    let inject = started.elapsed() / n as u32;
    let started = Instant::now();
    for _ in 0..n {
        std::hint::black_box(trellis_operator::admission::validate::verdict(&vs, index).ok());
    }
    let validate = started.elapsed() / n as u32;
    println!("decision alone (no TLS, no HTTP): inject {inject:.2?}, validate {validate:.2?} (mean of {n})");
}

/// The whole answer without TLS and HTTP: the review parsed, decided (or remembered) and
/// serialized.
fn handled(webhooks: &Webhooks, n: usize) {
    let mean = |path: &str, body: fn(usize) -> Vec<u8>| {
        let bodies: Vec<Vec<u8>> = (0..n).map(body).collect();
        let started = Instant::now();
        for body in &bodies {
            std::hint::black_box(webhooks.handle(path, body));
        }
        started.elapsed() / n as u32
    };
    let (hits, misses) = webhooks.injector_memo_counts();
    let remembered = mean(webhooks::INJECT_PATH, pod_review);
    let decided = mean(webhooks::INJECT_PATH, distinct_pod_review);
    let validate = mean(webhooks::VALIDATE_PATH, vs_review);
    let (hits_after, misses_after) = webhooks.injector_memo_counts();
    println!(
        "review parsed, decided and answered (no TLS, no HTTP): inject {remembered:.2?} (the same template: remembered), {decided:.2?} (every pod its own template: decided), validate {validate:.2?} (mean of {n}; the injector's memo answered {} and decided {})",
        hits_after - hits,
        misses_after - misses
    );
}

/// How many injection reviews the memo answered and how many were decided during `scenario`.
async fn memo_counted<T>(webhooks: &Webhooks, scenario: impl std::future::Future<Output = T>) -> T {
    let (hits, misses) = webhooks.injector_memo_counts();
    let out = scenario.await;
    let (hits_after, misses_after) = webhooks.injector_memo_counts();
    println!(
        "    the injector's memo: {} answered, {} decided",
        hits_after - hits,
        misses_after - misses
    );
    out
}

/// Serve the webhooks on a runtime of their own (2 worker threads, as the operator's on 2
/// cores), on a thread of their own; returns where they listen.
fn start_server(tls: Arc<ServingTls>, webhooks: Arc<Webhooks>) -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address");
    listener.set_nonblocking(true).expect("non-blocking");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(SERVER_THREADS)
        .enable_all()
        .build()
        .expect("the server's runtime");
    SERVER.set(runtime.handle().clone()).ok();
    // (the thread that accepts connections is one of the server's too)
    let accepting = std::thread::Builder::new().name(SERVER_THREADS.into());
    accepting
        .spawn(move || {
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                serve(listener, tls, webhooks).await;
            });
        })
        .expect("the server's thread");
    addr
}

#[tokio::main(worker_threads = 2)]
async fn main() {
    rustls::crypto::ring::default_provider().install_default().ok();
    if let Ok(scenario) = std::env::var(client::SCENARIO_ENV) {
        if let Err(e) = client::run_as_child(&scenario).await {
            eprintln!("the admission benchmark's client: {e}");
            std::process::exit(2);
        }
        return;
    }
    let (rounds, scale, concurrency) = (env("ROUNDS", 40), env("SCALE", 500), env("CONCURRENCY", 50));
    let root = SigningCert::self_signed_root(
        "cluster.local",
        Duration::from_secs(86400),
        std::time::SystemTime::now(),
    )
    .expect("root");
    let root_pem = root.cert_pem().to_string();
    let roots = MeshRoots::new(root, Duration::from_secs(3600), Arc::new(SystemClock));
    let tls = Arc::new(
        ServingTls::new(
            Identity {
                spiffe_id: "spiffe://cluster.local/ns/trellis-system/sa/trellis-operator".into(),
                dns_names: vec!["trellis-operator.trellis-system.svc".into(), "localhost".into()],
                ttl: trellis_operator::app::WEBHOOK_CERT_TTL,
                client_auth: ClientAuth::None,
                alpn: vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            },
            &roots,
        )
        .expect("serving certificate"),
    );
    let defaults = Settings::new(&Options::default());
    let index = Arc::new(RwLock::new(index()));
    decisions(&index, &defaults, 2000);
    let metrics = Arc::new(Metrics::default());
    PHASES.set(metrics.clone()).ok();
    let webhooks = Arc::new(Webhooks::new(index, defaults, metrics.clone()));
    handled(&webhooks, 2000);
    let addr = start_server(tls, webhooks.clone());
    println!(
        "webhook server on {addr} (HTTPS) on its own 2 worker threads; the client in a process of its own (2 worker threads); {} cores, shared",
        std::thread::available_parallelism().map_or(0, usize::from)
    );

    // Warm up (connections, allocator), not counted.
    let warm = Scenario::WarmUp.in_client(addr, &root_pem).await;
    if let Some(f) = warm.failures.first() {
        eprintln!("warming up failed: {f}");
        std::process::exit(1);
    }

    let seconds = &metrics.admission_seconds;
    let mut failed = 0;
    for (name, scenario) in [
        (
            format!("inject, {concurrency} concurrent"),
            Scenario::Inject { concurrency, rounds },
        ),
        (
            format!("inject, scale-up of {scale} (HTTP/1.1, as the API server calls webhooks)"),
            Scenario::ScaleUp { scale, http2: false },
        ),
        (
            format!("inject, scale-up of {scale} over one HTTP/2 connection"),
            Scenario::ScaleUp { scale, http2: true },
        ),
        (
            format!("inject, {concurrency} concurrent, every pod its own template"),
            Scenario::InjectDistinct { concurrency, rounds },
        ),
        (
            format!("validate, {concurrency} concurrent"),
            Scenario::Validate { concurrency, rounds },
        ),
    ] {
        let run = scenario.in_client(addr, &root_pem);
        failed += match scenario {
            Scenario::Validate { .. } => measured(&name, &seconds.validate, run).await,
            _ => memo_counted(&webhooks, measured(&name, &seconds.inject, run)).await,
        };
    }
    // The target is 0 failed admissions: a failure fails the run, not only its figures.
    if failed > 0 {
        eprintln!("{failed} admissions failed (target: 0); see the failures above");
        std::process::exit(1);
    }
}
