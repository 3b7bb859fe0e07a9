//! Push convergence at scale: a registry of 1000 services and 10 000 endpoints with 200 CRDs,
//! 1000 simulated proxies subscribed to the push server over gRPC on loopback; one
//! VirtualService changes, and the time until every affected proxy has received and ACKed the
//! new version is measured. Also: compile time per proxy and process RSS.
//!
//! Run: `cargo bench -p trellis-operator --bench convergence` (release build). Options via
//! env: `PROXIES` (default 1000), `SERVICES` (1000), `PODS_PER_SERVICE` (10), `ROUNDS` (3).

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use trellis_operator::compile::{Role, compile_outbound, compile_workload};
use trellis_operator::push::{Options, PushService, SharedOutbound, render};
use trellis_operator::registry::ObjectKey;
use trellis_operator::snapshot::Snapshot;
use trellis_push::v1::config_push_client::ConfigPushClient;
use trellis_push::v1::config_push_server::ConfigPushServer;
use trellis_push::{Hello, ProxyMessage};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The mesh: `services` services over 10 namespaces, `pods` meshed ready pods each, a
/// VirtualService and a DestinationRule for each of the first 100 services.
fn mesh(services: usize, pods: usize) -> String {
    let mut y = String::new();
    for n in 0..10 {
        y.push_str(&format!(
            "---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: ns-{n}}}\n"
        ));
    }
    for s in 0..services {
        let ns = s % 10;
        y.push_str(&format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: svc-{s}, namespace: ns-{ns}}}\nspec:\n  clusterIP: 10.96.{}.{}\n  selector: {{app: svc-{s}}}\n  ports: [{{name: http, port: 80, targetPort: 8080}}]\n",
            s / 250,
            s % 250 + 1
        ));
        for p in 0..pods {
            let version = if p % 2 == 0 { "v1" } else { "v2" };
            let ip = s * pods + p;
            y.push_str(&format!(
                "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: svc-{s}-{p}, namespace: ns-{ns}, labels: {{app: svc-{s}, version: {version}}}}}\nspec:\n  serviceAccountName: svc-{s}\n  initContainers: [{{name: trellis-proxy, image: trellis-proxy, restartPolicy: Always}}]\n  containers: [{{name: app, image: app}}]\nstatus: {{podIP: 10.{}.{}.{}, phase: Running, conditions: [{{type: Ready, status: \"True\"}}]}}\n",
                244 + ip / 65536,
                (ip / 256) % 256,
                ip % 256
            ));
        }
    }
    for s in 0..services.min(100) {
        let ns = s % 10;
        y.push_str(&format!(
            "---\napiVersion: networking.trellis.dev/v1alpha1\nkind: VirtualService\nmetadata: {{name: svc-{s}, namespace: ns-{ns}}}\nspec:\n  hosts: [svc-{s}]\n  http:\n  - match: [{{headers: {{x-canary: {{exact: \"true\"}}}}}}]\n    route: [{{destination: {{host: svc-{s}, subset: v2}}}}]\n  - route:\n    - {{destination: {{host: svc-{s}, subset: v1}}, weight: 90}}\n    - {{destination: {{host: svc-{s}, subset: v2}}, weight: 10}}\n    timeout: 2s\n---\napiVersion: networking.trellis.dev/v1alpha1\nkind: DestinationRule\nmetadata: {{name: svc-{s}, namespace: ns-{ns}}}\nspec:\n  host: svc-{s}\n  subsets:\n  - {{name: v1, labels: {{version: v1}}}}\n  - {{name: v2, labels: {{version: v2}}}}\n"
        ));
    }
    y
}

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).map(|l| l.to_string()))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<f64>().ok()))
        .map_or(0.0, |kb| kb / 1024.0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() {
    let (proxies, services, pods, rounds) = (
        env("PROXIES", 1000),
        env("SERVICES", 1000),
        env("PODS_PER_SERVICE", 10),
        env("ROUNDS", 3),
    );
    let snapshot = Snapshot::from_yaml(&mesh(services, pods)).expect("the generated mesh parses");
    let crds = snapshot.virtual_services.len() + snapshot.destination_rules.len();
    println!(
        "registry: {} services, {} endpoints, {crds} CRDs; {proxies} proxies",
        snapshot.registry.services.len(),
        snapshot.registry.workloads.len()
    );
    let rss_registry = rss_mib();

    // Compile time: the shared part once per namespace, each proxy's own part, on a sample.
    let sample: Vec<ObjectKey> = (0..20)
        .map(|i| ObjectKey::new(format!("ns-{}", i % 10), format!("svc-{i}-0")))
        .collect();
    let t = Instant::now();
    let shared: Vec<SharedOutbound> = sample[..10]
        .iter()
        .map(|pod| SharedOutbound::new(&compile_outbound(&snapshot, pod).unwrap()))
        .collect();
    let per_namespace = t.elapsed() / 10;
    let t = Instant::now();
    let mut bytes = 0;
    for (i, pod) in sample.iter().enumerate() {
        let own = compile_workload(&snapshot, pod, Role::Sidecar, "").unwrap();
        bytes += render(&own.config, Some(&shared[i % 10]), "").1.len();
    }
    let per_proxy = t.elapsed() / sample.len() as u32;
    println!(
        "compile: shared part {per_namespace:?} per namespace ({} KiB), then {per_proxy:?} per proxy; {} KiB of config per proxy",
        shared[0].len() / 1024,
        bytes / sample.len() / 1024
    );
    drop(shared);

    let mesh = Arc::new(RwLock::new(snapshot));
    let (changed, changed_rx) = watch::channel(0u64);
    let service = PushService::new(mesh.clone(), changed_rx, Options::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = ConfigPushServer::new(service.clone())
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(server)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );

    // The simulated proxies: each reports (when it received, version) for every snapshot.
    let (report_tx, mut report_rx) = mpsc::unbounded_channel::<(usize, Instant, String)>();
    let start = Instant::now();
    for i in 0..proxies {
        let report = report_tx.clone();
        let pod = ObjectKey::new(format!("ns-{}", i % 10), format!("svc-{}-0", i % services));
        tokio::spawn(async move {
            // A thousand clients connecting at once overflow the listen backlog: retry.
            let mut client = loop {
                match ConfigPushClient::connect(format!("http://{addr}")).await {
                    Ok(c) => break c.max_decoding_message_size(64 << 20),
                    Err(_) => tokio::time::sleep(Duration::from_millis(50 + (i % 100) as u64)).await,
                }
            };
            let (tx, rx) = mpsc::channel(4);
            let hello = Hello {
                namespace: pod.namespace,
                pod: pod.name,
                role: "sidecar".into(),
                proxy_version: "bench".into(),
                current_version: String::new(),
            };
            tx.send(ProxyMessage::hello(hello)).await.unwrap();
            let Ok(stream) = client.subscribe(ReceiverStream::new(rx)).await else {
                eprintln!("proxy {i}: subscription refused");
                return;
            };
            let mut stream = stream.into_inner();
            while let Ok(Some(snap)) = stream.message().await {
                let at = Instant::now();
                let _ = tx.send(ProxyMessage::ack(&snap.version)).await;
                let _ = report.send((i, at, snap.version));
            }
        });
    }
    let mut initial = 0;
    while initial < proxies {
        report_rx.recv().await.unwrap();
        initial += 1;
    }
    println!(
        "initial sync of {proxies} proxies: {:?}; RSS {:.0} MiB (registry alone {:.0} MiB)",
        start.elapsed(),
        rss_mib(),
        rss_registry
    );

    let mut all = Vec::new();
    for round in 0..rounds {
        tokio::time::sleep(Duration::from_millis(500)).await;
        {
            let mut m = mesh.write().unwrap();
            m.virtual_services[0].spec.http.as_mut().unwrap()[1].timeout = Some(format!("{}s", 3 + round));
        }
        let t0 = Instant::now();
        changed.send_replace(round as u64 + 1);
        let mut times = Vec::with_capacity(proxies);
        while times.len() < proxies {
            match tokio::time::timeout(Duration::from_secs(120), report_rx.recv()).await {
                Ok(Some((_, at, _))) => times.push(at - t0),
                _ => break,
            }
        }
        times.sort();
        println!(
            "round {round}: {} proxies converged; p50 {:?}, p99 {:?}, max {:?}",
            times.len(),
            percentile(&times, 0.5),
            percentile(&times, 0.99),
            times.last().copied().unwrap_or_default()
        );
        all.extend(times);
    }
    all.sort();
    let acked = service
        .sync_state()
        .iter()
        .filter(|p| p.acked.is_some() && p.acked == p.sent)
        .count();
    println!(
        "RESULT convergence p50 {:?} p99 {:?} over {} pushes; compile {per_namespace:?}/namespace + {per_proxy:?}/proxy; RSS {:.0} MiB; {acked}/{proxies} proxies in sync",
        percentile(&all, 0.5),
        percentile(&all, 0.99),
        all.len(),
        rss_mib()
    );
}
