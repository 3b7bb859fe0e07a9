//! The operator's cost of collecting golden signals at scale (issue 15's budget: ≤ 5 % CPU and
//! ≤ 50 MiB at 1000 proxies): `PROXIES` simulated proxies subscribed to the real `ConfigPush`
//! server over gRPC on loopback each send a golden-signals report every
//! `trellis_push::SIGNALS_INTERVAL` (10 s) carrying `EDGES` edges, as `trellis-proxy` does; the
//! operator side's CPU time (user + system, `/proc/self/stat`) and RSS are measured over
//! `MEASURE_S` seconds idle with every proxy subscribed, then over as long while the reports
//! flow; the difference is the collection's cost. Then the view of 5 minutes is served once
//! (what `meshctl stat -t 5m` asks each replica for): its time and size.
//!
//! Two processes, as `convergence`: this binary is the operator side (the registry, one
//! `PushService` with its `Traffic`, a tonic server on 127.0.0.1) and re-executes itself with
//! `SIGNALS_FLEET=<addr>` as the fleet; so the CPU and memory read from `/proc/self` are the
//! operator's alone. Subscriptions are plain gRPC here (the convergence bench measures mTLS);
//! a report is a few KB, so TLS adds little to it.
//!
//! Run: `cargo bench -p trellis-operator --bench signals`. Knobs: `PROXIES` (1000), `EDGES`
//! (10), `MEASURE_S` (60).

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use trellis_contract::signals::{Counts, EdgeSignals, Report, Reporter};
use trellis_operator::push::{Options, PushService};
use trellis_operator::snapshot::Snapshot as MeshSnapshot;
use trellis_operator::traffic::Traffic;
use trellis_push::v1::config_push_client::ConfigPushClient;
use trellis_push::v1::config_push_server::ConfigPushServer;
use trellis_push::{Hello, ProxyMessage, SIGNALS_INTERVAL};

/// Set in the fleet child: the operator's push address.
const FLEET_ENV: &str = "SIGNALS_FLEET";
/// Pods per service (the mesh has PROXIES / PODS services).
const PODS: usize = 10;

fn knob(name: &str, default: usize) -> anyhow::Result<usize> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .with_context(|| format!("{name}={v:?} is not a number; unset it or give a count")),
        Err(_) => Ok(default),
    }
}

/// Proxy `i`'s pod: service `i / PODS`, in one of 10 namespaces.
fn pod(i: usize) -> (String, String) {
    let s = i / PODS;
    (format!("ns-{}", s % 10), format!("svc-{s}-{}", i % PODS))
}

/// A meshed, ready pod per proxy and a Service per `PODS` of them.
fn mesh(proxies: usize) -> String {
    let mut y = String::new();
    for s in 0..proxies.div_ceil(PODS) {
        let ns = s % 10;
        y.push_str(&format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: svc-{s}, namespace: ns-{ns}}}\nspec: {{clusterIP: 10.96.{}.{}, selector: {{app: svc-{s}}}, ports: [{{name: http, port: 80, targetPort: 8080}}]}}\n",
            s / 250,
            s % 250 + 1
        ));
    }
    for i in 0..proxies {
        let (ns, name) = pod(i);
        y.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{app: svc-{}}}}}\nspec:\n  serviceAccountName: svc-{}\n  initContainers: [{{name: trellis-proxy, image: trellis-proxy, restartPolicy: Always}}]\n  containers: [{{name: app, image: app}}]\nstatus: {{podIP: 10.{}.{}.{}, phase: Running, conditions: [{{type: Ready, status: \"True\"}}]}}\n",
            i / PODS,
            i / PODS,
            244 + i / 65536,
            (i / 256) % 256,
            i % 256
        ));
    }
    y
}

/// One report of proxy `i`: `edges` clients, each with 100 requests in 10 s (one failing,
/// all mutual TLS) spread over three latency buckets.
fn report(i: usize, edges: usize, proxies: usize) -> Report {
    let services = proxies.div_ceil(PODS);
    let s = i / PODS;
    Report {
        edges: (1..=edges)
            .map(|k| {
                let client = (s + k) % services;
                EdgeSignals {
                    reporter: Reporter::Destination,
                    peer_namespace: format!("ns-{}", client % 10),
                    peer_workload: format!("svc-{client}"),
                    service: format!("svc-{s}.ns-{}.svc.cluster.local", s % 10),
                    counts: Counts::in_buckets(100, 1, 100, &[(2, 60), (3, 30), (5, 10)]),
                }
            })
            .collect(),
    }
}

/// User + system CPU time of this process.
fn cpu_time() -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").context("reading /proc/self/stat")?;
    // Fields after the command (which may hold spaces): state is the 3rd, utime the 14th.
    let after = stat.rsplit_once(')').context("/proc/self/stat has no command")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<u64> { Ok(fields.get(i).context("short /proc/self/stat")?.parse()?) };
    // USER_HZ is 100 on Linux.
    Ok(Duration::from_millis((ticks(11)? + ticks(12)?) * 10))
}

/// Resident memory of this process, MiB.
fn rss_mib() -> anyhow::Result<f64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .context("no VmRSS")?
        .parse()?;
    Ok(kib / 1024.0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let proxies = knob("PROXIES", 1000)?.max(1);
    let edges = knob("EDGES", 10)?;
    let measure = Duration::from_secs(knob("MEASURE_S", 60)? as u64);
    match std::env::var(FLEET_ENV) {
        Ok(addr) => fleet(&addr, proxies, edges).await,
        Err(_) => operator(proxies, edges, measure).await,
    }
}

/// The simulated proxies: subscribe, ACK every config, and once the parent says `report` on
/// stdin, send a report every interval (spread over it).
async fn fleet(addr: &str, proxies: usize, edges: usize) -> anyhow::Result<()> {
    let (start, reporting) = watch::channel(false);
    for i in 0..proxies {
        let addr = addr.to_string();
        let mut reporting = reporting.clone();
        tokio::spawn(async move {
            let Ok(mut client) = ConfigPushClient::connect(format!("http://{addr}")).await else {
                eprintln!("fleet: proxy {i} could not connect");
                return;
            };
            let (ns, name) = pod(i);
            let (tx, rx) = mpsc::channel(8);
            let hello = Hello {
                namespace: ns,
                pod: name,
                role: "sidecar".into(),
                proxy_version: "signals-bench".into(),
                accepts_chunks: true,
                certificate_json: Vec::new(),
                ..Hello::default()
            };
            let _ = tx.send(ProxyMessage::hello(hello)).await;
            let Ok(stream) = client.subscribe(ReceiverStream::new(rx)).await else {
                eprintln!("fleet: proxy {i} could not subscribe");
                return;
            };
            let mut stream = stream.into_inner();
            let acks = tx.clone();
            tokio::spawn(async move {
                while let Ok(Some(m)) = stream.message().await {
                    if !m.more {
                        let _ = acks.send(ProxyMessage::ack(m.version)).await;
                    }
                }
            });
            if reporting.wait_for(|r| *r).await.is_err() {
                return;
            }
            let offset = SIGNALS_INTERVAL.mul_f64(i as f64 / proxies as f64);
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + offset, SIGNALS_INTERVAL);
            loop {
                tick.tick().await;
                if tx
                    .send(ProxyMessage::signals(&report(i, edges, proxies)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
    }
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        if line == "report" {
            start.send_replace(true);
        }
    }
    Ok(())
}

/// The operator side: serve, wait for the fleet's subscriptions, measure idle, then reporting.
async fn operator(proxies: usize, edges: usize, measure: Duration) -> anyhow::Result<()> {
    let snapshot = MeshSnapshot::from_yaml(&mesh(proxies)).context("the generated mesh")?;
    let (_changed, changed_rx) = watch::channel(0u64);
    let traffic = Arc::new(Traffic::default());
    let push =
        PushService::new(Arc::new(RwLock::new(snapshot)), changed_rx, Options::default()).with_traffic(traffic.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ConfigPushServer::new(push.clone()))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .env(FLEET_ENV, addr.to_string())
        .stdin(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting the fleet")?;
    let mut to_fleet = child.stdin.take().context("the fleet's stdin")?;
    let started = Instant::now();
    loop {
        let synced = push
            .sync_state()
            .iter()
            .filter(|p| p.connected && p.acked.is_some() && p.acked == p.sent)
            .count();
        if synced == proxies {
            break;
        }
        if started.elapsed() > Duration::from_secs(300) {
            bail!("only {synced} of {proxies} proxies subscribed and ACKed within 300 s");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!(
        "{proxies} proxies subscribed and in sync in {:.1?}; RSS {:.1} MiB",
        started.elapsed(),
        rss_mib()?
    );
    let (cpu0, wall0) = (cpu_time()?, Instant::now());
    tokio::time::sleep(measure).await;
    let idle = (cpu_time()? - cpu0).as_secs_f64() / wall0.elapsed().as_secs_f64();
    let rss_idle = rss_mib()?;
    println!(
        "idle ({measure:?}): CPU {:.2} % of a core, RSS {rss_idle:.1} MiB",
        idle * 100.0
    );
    to_fleet.write_all(b"report\n").await?;
    // One interval for every proxy's first report, then the measurement.
    tokio::time::sleep(SIGNALS_INTERVAL).await;
    let (cpu1, wall1) = (cpu_time()?, Instant::now());
    tokio::time::sleep(measure).await;
    let busy = (cpu_time()? - cpu1).as_secs_f64() / wall1.elapsed().as_secs_f64();
    let rss = rss_mib()?;
    let mut metrics = String::new();
    traffic.render_metrics(&mut metrics);
    let count = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0)
    };
    println!(
        "reporting ({measure:?}, {edges} edges a report, one report per proxy per {SIGNALS_INTERVAL:?}): CPU {:.2} % of a core, RSS {rss:.1} MiB",
        busy * 100.0
    );
    println!(
        "collection: +{:.2} % CPU, +{:.1} MiB RSS; reports taken {}, rejected {}, edges dropped {}",
        (busy - idle) * 100.0,
        rss - rss_idle,
        count("trellis_operator_signal_reports_total"),
        count("trellis_operator_signal_reports_rejected_total"),
        count("trellis_operator_signal_edges_dropped_total"),
    );
    let served = Instant::now();
    let body = traffic.answer(Some("window=300")).map_err(anyhow::Error::msg)?;
    let view: trellis_core::traffic::View = serde_json::from_str(&body)?;
    println!(
        "the 5-minute view: {} edges, {} KiB of JSON, built and serialized in {:.1?}",
        view.edges.len(),
        body.len() / 1024,
        served.elapsed()
    );
    drop(to_fleet);
    let _ = child.wait().await;
    Ok(())
}
