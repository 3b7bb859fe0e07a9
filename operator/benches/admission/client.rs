//! The benchmark's client, in a process of its own: the API server's side of the webhooks.
//!
//! The benchmark's binary runs the server (the operator's side) and, for each scenario,
//! starts itself again with [`SCENARIO_ENV`] naming the scenario: that child connects, sends
//! the scenario's reviews, checks every answer and prints what it measured as one JSON line
//! ([`Results`]) before it exits. So the operator's process holds the webhook server alone —
//! its threads, allocator and scheduler statistics are the operator's — while the client's
//! TLS, HTTP/2 and JSON work runs in another process, as the API server does. Both still
//! share the machine's cores (not pinned): on one node, an API server and the operator do.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use serde_json::{Value, json};
use trellis_manifests::install::webhooks;

use super::cores::{self, Scheduled};
use super::reviews::{distinct_pod_review, pod_review, vs_review};

/// Set in the client's process: the scenario it runs (see [`Scenario`]).
pub const SCENARIO_ENV: &str = "ADMISSION_BENCH_CLIENT";
/// The server's address, for the client.
const SERVER_ENV: &str = "ADMISSION_BENCH_SERVER";
/// The root the server's certificate chains to (PEM), for the client.
const ROOT_ENV: &str = "ADMISSION_BENCH_ROOT";

/// What the client measured: each admission's time end to end, the failures, and how long
/// its threads ran and waited for a core.
#[derive(Default)]
pub struct Results {
    pub latencies: Vec<Duration>,
    pub failures: Vec<String>,
    /// Connections opened (each a TLS handshake).
    pub connections: usize,
    pub cores: Option<Scheduled>,
}

impl Results {
    fn merge(&mut self, other: Results) {
        self.latencies.extend(other.latencies);
        self.failures.extend(other.failures);
        self.connections += other.connections;
    }

    fn to_json(&self) -> Value {
        json!({
            "latencies_ns": self.latencies.iter().map(|d| d.as_nanos() as u64).collect::<Vec<_>>(),
            "failures": self.failures,
            "connections": self.connections,
            "cores": self.cores.map(|c| json!({
                "ran_ns": c.ran.as_nanos() as u64, "waited_ns": c.waited.as_nanos() as u64, "threads": c.threads,
            })),
        })
    }

    fn from_json(v: &Value) -> Option<Results> {
        let ns = |v: &Value| v.as_u64().map(Duration::from_nanos);
        Some(Results {
            latencies: v["latencies_ns"].as_array()?.iter().map(ns).collect::<Option<_>>()?,
            failures: v["failures"]
                .as_array()?
                .iter()
                .map(|f| f.as_str().map(str::to_string))
                .collect::<Option<_>>()?,
            connections: v["connections"].as_u64()? as usize,
            cores: v["cores"].is_object().then(|| Scheduled {
                ran: ns(&v["cores"]["ran_ns"]).unwrap_or_default(),
                waited: ns(&v["cores"]["waited_ns"]).unwrap_or_default(),
                threads: v["cores"]["threads"].as_u64().unwrap_or(0) as usize,
            }),
        })
    }
}

/// A scenario the client runs (see the benchmark's documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// A few connections, not counted: the server's allocator and caches warm.
    WarmUp,
    /// `concurrency` pod creations in flight, `rounds` each (HTTP/1.1).
    Inject { concurrency: usize, rounds: usize },
    /// One Deployment scaled to `scale` pods (slow-start batches): over HTTP/1.1 as the API
    /// server calls webhooks, or with `http2` over one HTTP/2 connection.
    ScaleUp { scale: usize, http2: bool },
    /// As `Inject`, every pod of a template of its own.
    InjectDistinct { concurrency: usize, rounds: usize },
    /// `concurrency` VirtualServices applied at once, `rounds` each.
    Validate { concurrency: usize, rounds: usize },
}

impl Scenario {
    fn encode(self) -> String {
        match self {
            Scenario::WarmUp => "warm-up".into(),
            Scenario::Inject { concurrency, rounds } => format!("inject {concurrency} {rounds}"),
            Scenario::ScaleUp { scale, http2 } => format!("scale-up {scale} {}", u8::from(http2)),
            Scenario::InjectDistinct { concurrency, rounds } => format!("inject-distinct {concurrency} {rounds}"),
            Scenario::Validate { concurrency, rounds } => format!("validate {concurrency} {rounds}"),
        }
    }

    fn decode(s: &str) -> Option<Scenario> {
        let mut words = s.split_whitespace();
        let kind = words.next()?;
        let mut n = || words.next().and_then(|w| w.parse().ok());
        Some(match kind {
            "warm-up" => Scenario::WarmUp,
            "inject" => Scenario::Inject {
                concurrency: n()?,
                rounds: n()?,
            },
            "scale-up" => Scenario::ScaleUp {
                scale: n()?,
                http2: n()? == 1,
            },
            "inject-distinct" => Scenario::InjectDistinct {
                concurrency: n()?,
                rounds: n()?,
            },
            "validate" => Scenario::Validate {
                concurrency: n()?,
                rounds: n()?,
            },
            _ => return None,
        })
    }

    async fn run(self, addr: std::net::SocketAddr, root_pem: &str) -> Results {
        let inject = webhooks::INJECT_PATH;
        match self {
            Scenario::WarmUp => concurrent(addr, root_pem, inject, 4, 25, pod_review, true).await,
            Scenario::Inject { concurrency, rounds } => {
                concurrent(addr, root_pem, inject, concurrency, rounds, pod_review, true).await
            }
            Scenario::ScaleUp { scale, http2 } => scale_up(addr, root_pem, scale, http2).await,
            Scenario::InjectDistinct { concurrency, rounds } => {
                concurrent(addr, root_pem, inject, concurrency, rounds, distinct_pod_review, true).await
            }
            Scenario::Validate { concurrency, rounds } => {
                concurrent(
                    addr,
                    root_pem,
                    webhooks::VALIDATE_PATH,
                    concurrency,
                    rounds,
                    vs_review,
                    false,
                )
                .await
            }
        }
    }

    /// Run this scenario in a client process of its own against the server at `addr`, and
    /// what it measured; a client that fails to start, run or report is a failure.
    pub async fn in_client(self, addr: std::net::SocketAddr, root_pem: &str) -> Results {
        let failed = |why: String| Results {
            failures: vec![format!("the client process ({}): {why}", self.encode())],
            ..Results::default()
        };
        let exe = match std::env::current_exe() {
            Ok(exe) => exe,
            Err(e) => return failed(format!("finding this benchmark's binary: {e}")),
        };
        let output = tokio::process::Command::new(exe)
            .env(SCENARIO_ENV, self.encode())
            .env(SERVER_ENV, addr.to_string())
            .env(ROOT_ENV, root_pem)
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true)
            .output()
            .await;
        let output = match output {
            Ok(o) => o,
            Err(e) => return failed(format!("starting it: {e}")),
        };
        let reported = String::from_utf8_lossy(&output.stdout);
        let results = serde_json::from_str::<Value>(reported.trim())
            .ok()
            .and_then(|v| Results::from_json(&v));
        match (output.status.success(), results) {
            (true, Some(results)) => results,
            _ => failed(format!(
                "exited with {}, reporting {:?}",
                output.status,
                reported.trim()
            )),
        }
    }
}

/// The client's process: run the scenario [`SCENARIO_ENV`] names against the server the
/// environment names, print what it measured (one JSON line) and return; `Err` when the
/// environment does not name a scenario to run.
pub async fn run_as_child(scenario: &str) -> Result<(), String> {
    let scenario = Scenario::decode(scenario).ok_or_else(|| format!("{SCENARIO_ENV}={scenario:?} is no scenario"))?;
    let addr = std::env::var(SERVER_ENV)
        .ok()
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| format!("{SERVER_ENV} is not a server address"))?;
    let root_pem = std::env::var(ROOT_ENV).map_err(|_| format!("{ROOT_ENV} holds no root certificate"))?;
    // (no thread of this process is named "": all of them are counted)
    let before = cores::so_far("").map(|(_, all)| all);
    let mut results = scenario.run(addr, &root_pem).await;
    let after = cores::so_far("").map(|(_, all)| all);
    results.cores = before.zip(after).map(|(before, after)| after.since(&before));
    println!("{}", results.to_json());
    Ok(())
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

/// The client's TLS configuration: the server's root, `alpn`, and no session resumption —
/// client-go's transport, which the API server calls webhooks with, keeps no session cache, so
/// every new connection is a full handshake.
fn tls_config(root_pem: &str, alpn: &[u8]) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut root_pem.as_bytes()) {
        let cert = cert.map_err(|e| format!("the server's root: {e}"))?;
        roots.add(cert).map_err(|e| format!("the server's root: {e}"))?;
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS versions: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![alpn.to_vec()];
    tls.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(tls))
}

async fn connect(addr: std::net::SocketAddr, tls: &Arc<rustls::ClientConfig>) -> Result<Tls, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    // As the API server (Go) does on every connection.
    tcp.set_nodelay(true)
        .map_err(|e| format!("TCP_NODELAY on the connection to {addr}: {e}"))?;
    let name = rustls::pki_types::ServerName::try_from("localhost").map_err(|e| e.to_string())?;
    tokio_rustls::TlsConnector::from(tls.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS handshake with {addr}: {e}"))
}

/// A new HTTP/1.1 connection, its task spawned.
async fn open_http1(
    addr: std::net::SocketAddr,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, String> {
    let tls = connect(addr, tls).await?;
    let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .map_err(|e| format!("HTTP/1.1: {e}"))?;
    tokio::spawn(conn);
    Ok(send)
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
    let mut all = Results::default();
    let tls = match tls_config(root_pem, b"http/1.1") {
        Ok(tls) => tls,
        Err(e) => {
            all.failures.push(e);
            return all;
        }
    };
    let mut workers = Vec::new();
    for w in 0..concurrency {
        let mut send = match open_http1(addr, &tls).await {
            Ok(send) => send,
            Err(e) => {
                all.failures.push(e);
                continue;
            }
        };
        all.connections += 1;
        workers.push(tokio::spawn(async move {
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
    for w in workers {
        match w.await {
            Ok(r) => all.merge(r),
            Err(e) => all.failures.push(e.to_string()),
        }
    }
    all
}

/// How many idle keep-alive connections client-go's transport keeps to one host
/// (`idleConnsPerHost` in k8s.io/client-go/transport): after a burst, the others are closed.
const IDLE_KEPT: usize = 25;

/// The API server's connections to a webhook: HTTP/1.1 — it has called webhooks over HTTP/1.1
/// only since Kubernetes 1.16 (kubernetes#82090, so that concurrent calls open several
/// connections and spread over the webhook's replicas) — a call taking an idle keep-alive
/// connection or opening a new one (a full TLS handshake), at most [`IDLE_KEPT`] idle ones kept.
struct Pool {
    addr: std::net::SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    idle: std::sync::Mutex<Vec<hyper::client::conn::http1::SendRequest<Full<Bytes>>>>,
    opened: std::sync::atomic::AtomicUsize,
}

impl Pool {
    async fn call(&self, req: hyper::Request<Full<Bytes>>, want_patch: bool) -> Result<(), String> {
        let idle = loop {
            let taken = self.idle.lock().map_err(|_| "the pool's lock".to_string())?.pop();
            match taken {
                Some(send) if send.is_closed() => continue,
                other => break other,
            }
        };
        let mut send = match idle {
            Some(send) => send,
            None => {
                self.opened.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                open_http1(self.addr, &self.tls).await?
            }
        };
        send.ready().await.map_err(|e| e.to_string())?;
        answered(send.send_request(req).await, want_patch).await?;
        let mut idle = self.idle.lock().map_err(|_| "the pool's lock".to_string())?;
        if idle.len() < IDLE_KEPT {
            idle.push(send);
        }
        Ok(())
    }
}

/// One pod creation of a scale-up: over the pool, or over the one HTTP/2 connection.
#[derive(Clone)]
enum Caller {
    Pool(Arc<Pool>),
    Http2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

impl Caller {
    async fn call(self, req: hyper::Request<Full<Bytes>>) -> Result<(), String> {
        match self {
            Caller::Pool(pool) => pool.call(req, true).await,
            Caller::Http2(mut send) => {
                send.ready().await.map_err(|e| e.to_string())?;
                answered(send.send_request(req).await, true).await
            }
        }
    }
}

/// `total` pod creations in slow-start batches (1, 2, 4, …), each batch in flight at once:
/// with `http2`, multiplexed over one HTTP/2 connection; else as the API server calls
/// webhooks ([`Pool`]).
async fn scale_up(addr: std::net::SocketAddr, root_pem: &str, total: usize, http2: bool) -> Results {
    let mut all = Results::default();
    let tls = match tls_config(root_pem, if http2 { b"h2" } else { b"http/1.1" }) {
        Ok(tls) => tls,
        Err(e) => {
            all.failures.push(e);
            return all;
        }
    };
    let caller = if http2 {
        let opened = async {
            let tls = connect(addr, &tls).await?;
            let (send, conn) = hyper::client::conn::http2::handshake(
                hyper_util::rt::TokioExecutor::new(),
                hyper_util::rt::TokioIo::new(tls),
            )
            .await
            .map_err(|e| format!("HTTP/2: {e}"))?;
            tokio::spawn(conn);
            Ok::<_, String>(send)
        };
        match opened.await {
            Ok(send) => {
                all.connections = 1;
                Caller::Http2(send)
            }
            Err(e) => {
                all.failures.push(e);
                return all;
            }
        }
    } else {
        Caller::Pool(Arc::new(Pool {
            addr,
            tls,
            idle: Default::default(),
            opened: Default::default(),
        }))
    };
    let (mut created, mut batch) = (0, 1);
    while created < total {
        let n = batch.min(total - created);
        let mut in_flight = Vec::new();
        for i in 0..n {
            let (caller, req) = (caller.clone(), request(webhooks::INJECT_PATH, pod_review(created + i)));
            in_flight.push(tokio::spawn(async move {
                let started = Instant::now();
                let answer = caller.call(req).await;
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
    if let Caller::Pool(pool) = caller {
        all.connections = pool.opened.load(std::sync::atomic::Ordering::Relaxed);
    }
    all
}
