//! Admission latency of the operator's webhooks: the real HTTPS webhook server
//! (`trellis_operator::admission::server`, certificate from the operator's CA code) on
//! loopback, fed real AdmissionReview bodies as the API server sends them.
//!
//! - `inject, 50 concurrent`: 50 pod creations in flight at once (50 keep-alive HTTP/1.1
//!   connections, `ROUNDS` pods each).
//! - `inject, scale-up of 500`: one Deployment scaled to 500 — the ReplicaSet controller creates
//!   pods in slow-start batches of 1, 2, 4, … concurrently, here over one HTTP/2 connection as
//!   the API server multiplexes its webhook calls.
//! - `inject, 50 concurrent, every pod its own template`: as the first, each pod with a label
//!   of its own, so the injector's memo never answers (every pod decided: the typed pod, the
//!   template, the JSON patch). The first two scenarios send pods of one template, as a
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
//!   answer (TLS, the loopback, the client's own work and its queue).
//!
//! And where the time in the operator went, from the server's
//! `trellis_operator_admission_phase_seconds`: `queued` (headers read → the review's task first
//! runs: the wait for a worker), `body` (→ the whole body read: the client's sending, and on
//! HTTP/2 the connection task reading it), `answer` (→ the answer handed to the connection: the
//! decision, the JSON, and waits in between), p50 and p99 of each.
//!
//! The server runs on a runtime of its own (2 worker threads, as the operator's on 2 cores),
//! the client on another, in one process: the two share the machine's cores as an API server
//! and the operator on one node do. The load average is printed with each scenario.
//!
//! Every answer is checked (status 200, allowed, a patch for pods); failures are counted, and
//! any failure makes the run exit with status 1. Target: p99 ≤ 10 ms per admission in the
//! operator, 0 failures. Run:
//! `cargo bench -p trellis-operator --bench admission` (release build); `ROUNDS` (40),
//! `SCALE` (500), `CONCURRENCY` (50).

#[path = "admission/cores.rs"]
mod cores;
#[path = "admission/reviews.rs"]
mod reviews;

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
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

#[derive(Default)]
struct Results {
    latencies: Vec<Duration>,
    failures: Vec<String>,
}

impl Results {
    fn merge(&mut self, other: Results) {
        self.latencies.extend(other.latencies);
        self.failures.extend(other.failures);
    }

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
            "    end to end:      n={:<5} p50={:.3} ms  p99={:.3} ms  max={:.3} ms  failed={}",
            self.latencies.len(),
            ms(q(0.50)),
            ms(q(0.99)),
            ms(self.latencies.last().copied().unwrap_or_default()),
            self.failures.len()
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
    if let (Some((server_before, client_before)), Some((server, client))) = (cores_before, cores_after) {
        println!(
            "    on the cores: the server's threads {}; the client's {}",
            server.since(&server_before),
            client.since(&client_before)
        );
    }
    failed
}

fn check(status: u16, body: &[u8], want_patch: bool) -> Result<(), String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("status {status}: {e}"))?;
    if status != 200 || v["response"]["allowed"] != true {
        return Err(format!("status {status}: {}", v["response"]["status"]));
    }
    if want_patch && !v["response"]["patch"].is_string() {
        return Err("no patch".into());
    }
    Ok(())
}

/// Read a response to the end and check it.
async fn answered(
    response: Result<hyper::Response<hyper::body::Incoming>, hyper::Error>,
    want_patch: bool,
) -> Result<(), String> {
    let resp = response.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    check(status, &bytes, want_patch)
}

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

async fn connect(addr: std::net::SocketAddr, root_pem: &str, alpn: &[u8]) -> Tls {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut root_pem.as_bytes()).flatten() {
        roots.add(cert).ok();
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![alpn.to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(name, tcp)
        .await
        .expect("TLS handshake")
}

fn request(path: &str, body: Vec<u8>) -> hyper::Request<Full<Bytes>> {
    hyper::Request::post(path)
        .header("host", "trellis-operator.trellis-system.svc:443")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("request")
}

/// `concurrency` keep-alive HTTP/1.1 connections, each sending `rounds` requests in turn.
async fn concurrent(
    addr: std::net::SocketAddr,
    root_pem: &str,
    path: &'static str,
    concurrency: usize,
    rounds: usize,
    body: fn(usize) -> Vec<u8>,
    want_patch: bool,
) -> Results {
    let mut workers = Vec::new();
    for w in 0..concurrency {
        let tls = connect(addr, root_pem, b"http/1.1").await;
        workers.push(tokio::spawn(async move {
            let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .expect("HTTP/1.1");
            tokio::spawn(conn);
            let mut out = Results::default();
            for r in 0..rounds {
                let req = request(path, body(w * rounds + r));
                let started = Instant::now();
                let answer = async {
                    send.ready().await.map_err(|e| e.to_string())?;
                    answered(send.send_request(req).await, want_patch).await
                }
                .await;
                out.latencies.push(started.elapsed());
                if let Err(e) = answer {
                    out.failures.push(e);
                }
            }
            out
        }));
    }
    let mut all = Results::default();
    for w in workers {
        if let Ok(r) = w.await {
            all.merge(r);
        }
    }
    all
}

/// `total` pod creations in slow-start batches (1, 2, 4, …), each batch in flight at once,
/// multiplexed over one HTTP/2 connection.
async fn scale_up(addr: std::net::SocketAddr, root_pem: &str, total: usize) -> Results {
    let tls = connect(addr, root_pem, b"h2").await;
    let (send, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), hyper_util::rt::TokioIo::new(tls))
            .await
            .expect("HTTP/2");
    tokio::spawn(conn);
    let mut all = Results::default();
    let (mut created, mut batch) = (0, 1);
    while created < total {
        let n = batch.min(total - created);
        let mut in_flight = Vec::new();
        for i in 0..n {
            let mut send = send.clone();
            let req = request(webhooks::INJECT_PATH, pod_review(created + i));
            in_flight.push(tokio::spawn(async move {
                let started = Instant::now();
                let answer = async {
                    send.ready().await.map_err(|e| e.to_string())?;
                    answered(send.send_request(req).await, true).await
                }
                .await;
                (started.elapsed(), answer)
            }));
        }
        for f in in_flight {
            match f.await {
                Ok((took, answer)) => {
                    all.latencies.push(took);
                    if let Err(e) = answer {
                        all.failures.push(e);
                    }
                }
                Err(e) => all.failures.push(e.to_string()),
            }
        }
        created += n;
        batch *= 2;
    }
    all
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

/// `concurrency` pod creations in flight at once, `rounds` each, of pods `body` makes: measured,
/// with what the injector's memo answered; returns how many failed.
async fn injected(
    webhooks: &Webhooks,
    histogram: &Histogram,
    name: &str,
    (addr, root_pem): (std::net::SocketAddr, &str),
    (concurrency, rounds): (usize, usize),
    body: fn(usize) -> Vec<u8>,
) -> usize {
    let run = concurrent(addr, root_pem, webhooks::INJECT_PATH, concurrency, rounds, body, true);
    memo_counted(webhooks, measured(name, histogram, run)).await
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
    std::thread::spawn(move || {
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            serve(listener, tls, webhooks).await;
        });
    });
    addr
}

#[tokio::main(worker_threads = 2)]
async fn main() {
    rustls::crypto::ring::default_provider().install_default().ok();
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
        "webhook server on {addr} (HTTPS) on its own 2 worker threads; the client on 2 others; {} cores",
        std::thread::available_parallelism().map_or(0, usize::from)
    );

    // Warm up (connections, allocator), not counted.
    concurrent(addr, &root_pem, webhooks::INJECT_PATH, 4, 25, pod_review, true).await;

    let seconds = &metrics.admission_seconds;
    let mut failed = injected(
        &webhooks,
        &seconds.inject,
        &format!("inject, {concurrency} concurrent"),
        (addr, &root_pem),
        (concurrency, rounds),
        pod_review,
    )
    .await;
    failed += memo_counted(
        &webhooks,
        measured(
            &format!("inject, scale-up of {scale}"),
            &seconds.inject,
            scale_up(addr, &root_pem, scale),
        ),
    )
    .await;
    failed += injected(
        &webhooks,
        &seconds.inject,
        &format!("inject, {concurrency} concurrent, every pod its own template"),
        (addr, &root_pem),
        (concurrency, rounds),
        distinct_pod_review,
    )
    .await;
    failed += measured(
        &format!("validate, {concurrency} concurrent"),
        &seconds.validate,
        concurrent(
            addr,
            &root_pem,
            webhooks::VALIDATE_PATH,
            concurrency,
            rounds,
            vs_review,
            false,
        ),
    )
    .await;
    // The target is 0 failed admissions: a failure fails the run, not only its figures.
    if failed > 0 {
        eprintln!("{failed} admissions failed (target: 0); see the failures above");
        std::process::exit(1);
    }
}
