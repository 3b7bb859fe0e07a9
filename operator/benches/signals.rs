//! The operator's cost of collecting golden signals at scale (issue 15's budget: ≤ 5 % CPU and
//! ≤ 50 MiB at 1000 proxies): `PROXIES` simulated proxies subscribed to the real `ConfigPush`
//! server over gRPC on loopback each send a golden-signals report every
//! `trellis_push::SIGNALS_INTERVAL` (10 s), as `trellis-proxy` does; the operator side's CPU
//! time (user + system, `/proc/self/stat`) and RSS are measured over `IDLE_S` seconds idle with
//! every proxy subscribed, then over `MEASURE_S` seconds while the reports flow; the difference
//! is the collection's cost. Then the view of 5 minutes is served once (what `meshctl stat -t
//! 5m` asks each replica for): its time and size.
//!
//! **The shop's request mix.** The proxies are copies of the demo shop
//! (`trellis_manifests::demo`), one per namespace `shop-<k>`, each with the shop's Deployments
//! scaled to [`SHOP`]'s 10 pods: the ingress gateway (1), `web` (3), `payment-v1` (3),
//! `payment-v2` (1) and `db` (2); replicas share their workload, as a Deployment's pods do
//! (`pod-template-hash`). Each copy takes `RPS` requests a second at its gateway
//! (gateway → web → payment, split 90/10 between v1 and v2 → db, 1 % failing at db), and every
//! proxy reports what `trellis-proxy` would for that traffic ([`report`]): a sidecar its inbound
//! edges (reporter destination, peer workload known, mutual TLS) and its outbound ones
//! (reporter source, no mTLS count), a gateway its outbound ones; latencies in the buckets the
//! hop's place in the chain implies. So a report carries 1 to 3 edges (2.2 on average) and the
//! store holds 6 edges per copy a slot (600 at 1000 proxies, under its 4096 bound).
//!
//! Two processes, as `convergence`: this binary is the operator side (the registry, one
//! `PushService` with its `Traffic`, a tonic server on 127.0.0.1) and re-executes itself with
//! `SIGNALS_FLEET=<addr>` as the fleet; so the CPU and memory read from `/proc/self` are the
//! operator's alone. Subscriptions are plain gRPC here (the convergence bench measures mTLS);
//! a report is a few KB, so TLS adds little to it.
//!
//! Run: `cargo bench -p trellis-operator --bench signals`. Knobs: `PROXIES` (1000), `RPS` (30
//! per shop copy), `IDLE_S` (60), `MEASURE_S` (310: the store's 5 minutes filled, so its memory
//! is at its steady state).

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

/// The ingress gateway's Deployment (and Service, ServiceAccount), as in the demo.
const GATEWAY: &str = "trellis-ingressgateway";

/// One copy of the shop: (Deployment, the Service it serves, replicas).
const SHOP: [(&str, &str, usize); 5] = [
    (GATEWAY, GATEWAY, 1),
    ("web", "web", 3),
    ("payment-v1", "payment", 3),
    ("payment-v2", "payment", 1),
    ("db", "db", 2),
];

/// Pods in one copy of the shop.
const SHOP_PODS: usize = 10;

fn knob(name: &str, default: usize) -> anyhow::Result<usize> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .with_context(|| format!("{name}={v:?} is not a number; unset it or give a count")),
        Err(_) => Ok(default),
    }
}

/// Proxy `i`: its namespace, Deployment, replica index and Service.
#[derive(Debug, Clone, Copy)]
struct ShopPod {
    copy: usize,
    deployment: &'static str,
    replica: usize,
    service: &'static str,
}

impl ShopPod {
    fn of(i: usize) -> Self {
        let (copy, mut at) = (i / SHOP_PODS, i % SHOP_PODS);
        for (deployment, service, replicas) in SHOP {
            if at < replicas {
                return ShopPod {
                    copy,
                    deployment,
                    replica: at,
                    service,
                };
            }
            at -= replicas;
        }
        unreachable!("SHOP's replicas sum to SHOP_PODS")
    }

    fn namespace(&self) -> String {
        format!("shop-{}", self.copy)
    }

    /// `<deployment>-<pod-template-hash>-<suffix>`, as a ReplicaSet names its pods.
    fn name(&self) -> String {
        format!("{}-5d9f8c7b6-{:05}", self.deployment, self.replica)
    }

    fn gateway(&self) -> bool {
        self.deployment == GATEWAY
    }
}

fn fqdn(service: &str, namespace: &str) -> String {
    format!("{service}.{namespace}.svc.cluster.local")
}

/// The copies of the shop the first `proxies` pods make: a Service per shop Service and a
/// meshed, ready pod per proxy (the gateway's proxy is its container, a sidecar is a native
/// sidecar), labelled as its Deployment's ReplicaSet labels it.
fn mesh(proxies: usize) -> String {
    let mut y = String::new();
    let mut ip = 0usize;
    for copy in 0..proxies.div_ceil(SHOP_PODS) {
        let ns = format!("shop-{copy}");
        y.push_str(&format!(
            "---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}, labels: {{trellis.dev/inject: enabled}}}}\n"
        ));
        for service in [GATEWAY, "web", "payment", "db"] {
            ip += 1;
            y.push_str(&format!(
                "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {service}, namespace: {ns}}}\nspec: {{clusterIP: 10.96.{}.{}, selector: {{app: {service}}}, ports: [{{name: http, port: 8080, targetPort: 8080}}]}}\n",
                ip / 250,
                ip % 250 + 1
            ));
        }
    }
    for i in 0..proxies {
        let pod = ShopPod::of(i);
        let containers = if pod.gateway() {
            "  containers: [{name: trellis-proxy, image: trellis-proxy}]\n".to_string()
        } else {
            "  initContainers: [{name: trellis-proxy, image: trellis-proxy, restartPolicy: Always}]\n  containers: [{name: app, image: app}]\n".to_string()
        };
        let version = pod.deployment.strip_prefix("payment-").unwrap_or("v1");
        y.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {}, namespace: {}, labels: {{app: {}, version: {version}, pod-template-hash: 5d9f8c7b6}}}}\nspec:\n  serviceAccountName: {}\n{containers}status: {{podIP: 10.{}.{}.{}, phase: Running, conditions: [{{type: Ready, status: \"True\"}}]}}\n",
            pod.name(),
            pod.namespace(),
            pod.service,
            pod.service,
            244 + i / 65536,
            (i / 256) % 256,
            i % 256
        ));
    }
    y
}

/// The requests one proxy of a shop copy sees per report interval, per edge, for `rps`
/// requests a second at the copy's gateway: (reporter, peer workload, service, requests,
/// failures, latency buckets as (index into `LATENCY_BUCKETS_MS`'s slots, share in %)).
type Edge = (Reporter, &'static str, &'static str, u64, u64, &'static [(usize, u64)]);

/// What `pod` reports for one interval of the shop's traffic (see the module's docs): each
/// replica takes its share of its Deployment's requests; 1 % fail at db, and the failure is
/// passed up every hop (a 5xx answer at each).
fn report(pod: &ShopPod, rps: usize) -> Report {
    let all = (rps as u64) * SIGNALS_INTERVAL.as_secs();
    let (v1, v2) = (all * 9 / 10, all / 10);
    let fail = |n: u64| n / 100;
    // Latencies: db answers within 1-5 ms, payment within 5-25 ms, web and the gateway's hop
    // within 10-100 ms (each hop's time includes the hops after it).
    const DB: &[(usize, u64)] = &[(1, 70), (2, 30)];
    const PAYMENT: &[(usize, u64)] = &[(2, 40), (3, 50), (4, 10)];
    const WEB: &[(usize, u64)] = &[(3, 30), (4, 50), (5, 15), (6, 5)];
    let edges: Vec<Edge> = match pod.deployment {
        GATEWAY => vec![(Reporter::Source, "web", "web", all, fail(all), WEB)],
        "web" => vec![
            (Reporter::Destination, GATEWAY, "web", all / 3, fail(all) / 3, WEB),
            (Reporter::Source, "payment-v1", "payment", v1 / 3, fail(v1) / 3, PAYMENT),
            (Reporter::Source, "payment-v2", "payment", v2 / 3, fail(v2) / 3, PAYMENT),
        ],
        "payment-v1" => vec![
            (Reporter::Destination, "web", "payment", v1 / 3, fail(v1) / 3, PAYMENT),
            (Reporter::Source, "db", "db", v1 / 3, fail(v1) / 3, DB),
        ],
        "payment-v2" => vec![
            (Reporter::Destination, "web", "payment", v2, fail(v2), PAYMENT),
            (Reporter::Source, "db", "db", v2, fail(v2), DB),
        ],
        _ => vec![
            (Reporter::Destination, "payment-v1", "db", v1 / 2, fail(v1) / 2, DB),
            (Reporter::Destination, "payment-v2", "db", v2 / 2, fail(v2) / 2, DB),
        ],
    };
    let ns = pod.namespace();
    Report {
        edges: edges
            .into_iter()
            .filter(|(_, _, _, requests, _, _)| *requests > 0)
            .map(|(reporter, peer, service, requests, failures, shares)| {
                let mut buckets: Vec<(usize, u64)> = shares.iter().map(|(i, pct)| (*i, requests * pct / 100)).collect();
                // What the percentages' rounding left goes to the first bucket.
                let counted: u64 = buckets.iter().map(|(_, n)| n).sum();
                buckets[0].1 += requests - counted;
                // Only the server side knows whether a request came over mutual TLS.
                let mtls = if reporter == Reporter::Destination { requests } else { 0 };
                EdgeSignals {
                    reporter,
                    peer_namespace: ns.clone(),
                    peer_workload: peer.to_string(),
                    service: fqdn(service, &ns),
                    counts: Counts::in_buckets(requests, failures, mtls, &buckets),
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
    let rps = knob("RPS", 30)?;
    let idle = Duration::from_secs(knob("IDLE_S", 60)? as u64);
    let measure = Duration::from_secs(knob("MEASURE_S", 310)? as u64);
    match std::env::var(FLEET_ENV) {
        Ok(addr) => fleet(&addr, proxies, rps).await,
        Err(_) => operator(proxies, rps, idle, measure).await,
    }
}

/// The simulated proxies: subscribe, ACK every config, and once the parent says `report` on
/// stdin, send a report every interval (spread over it).
async fn fleet(addr: &str, proxies: usize, rps: usize) -> anyhow::Result<()> {
    let (start, reporting) = watch::channel(false);
    for i in 0..proxies {
        let addr = addr.to_string();
        let mut reporting = reporting.clone();
        tokio::spawn(async move {
            let Ok(mut client) = ConfigPushClient::connect(format!("http://{addr}")).await else {
                eprintln!("fleet: proxy {i} could not connect");
                return;
            };
            let pod = ShopPod::of(i);
            let (tx, rx) = mpsc::channel(8);
            let hello = Hello {
                namespace: pod.namespace(),
                pod: pod.name(),
                role: if pod.gateway() { "gateway" } else { "sidecar" }.into(),
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
                // Built anew each time, as a proxy builds each report from its counters.
                if tx.send(ProxyMessage::signals(&report(&pod, rps))).await.is_err() {
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
async fn operator(proxies: usize, rps: usize, idle_for: Duration, measure: Duration) -> anyhow::Result<()> {
    println!("load average at the start: {}", load_average());
    let edges: usize = (0..proxies).map(|i| report(&ShopPod::of(i), rps).edges.len()).sum();
    println!(
        "{proxies} proxies in {} copies of the shop, {rps} requests/s at each gateway: {edges} edges per round of reports ({:.2} a report)",
        proxies.div_ceil(SHOP_PODS),
        edges as f64 / proxies as f64
    );
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
    tokio::time::sleep(idle_for).await;
    let idle = (cpu_time()? - cpu0).as_secs_f64() / wall0.elapsed().as_secs_f64();
    let rss_idle = rss_mib()?;
    println!(
        "idle ({idle_for:?}): CPU {:.2} % of a core, RSS {rss_idle:.1} MiB",
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
        "reporting ({measure:?}, the shop's mix, one report per proxy per {SIGNALS_INTERVAL:?}): CPU {:.2} % of a core, RSS {rss:.1} MiB",
        busy * 100.0
    );
    let (taken, rejected, dropped) = (
        count("trellis_operator_signal_reports_total"),
        count("trellis_operator_signal_reports_rejected_total"),
        count("trellis_operator_signal_edges_dropped_total"),
    );
    println!(
        "collection: +{:.2} % CPU, +{:.1} MiB RSS; reports taken {taken}, rejected {rejected}, edges dropped {dropped}",
        (busy - idle) * 100.0,
        rss - rss_idle,
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
    println!("load average at the end: {}", load_average());
    drop(to_fleet);
    let _ = child.wait().await;
    // The figures hold only for the mix the bench says it sends.
    if taken == 0 || rejected > 0 || dropped > 0 {
        bail!(
            "the reports were not all counted ({taken} taken, {rejected} rejected, {dropped} edges dropped): the figures above are not the shop's mix"
        );
    }
    Ok(())
}

/// `/proc/loadavg`'s 1, 5 and 15 minute averages.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" / "))
        .unwrap_or_else(|e| format!("unknown ({e})"))
}
