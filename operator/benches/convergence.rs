//! Push convergence at scale: a registry of 1000 services and 10 000 endpoints with 200 CRDs,
//! 1000 simulated proxies subscribed to the push server over gRPC on loopback; one
//! VirtualService changes, and the time until every proxy has ACKed the new version is
//! measured. Also: compile time per proxy, the operator's RSS and peak RSS, and what a proxy
//! pays to apply a delta.
//!
//! Two processes, so the memory printed is the operator's alone: this binary is the operator
//! side (registry, `PushService`, tonic server on 127.0.0.1) and re-executes itself with
//! `CONVERGENCE_FLEET=<addr>` as the fleet, which runs the simulated proxies and reports every
//! ACK on its stdout (see [`Report`]). As in production, subscriptions are mutual TLS: the
//! operator side creates a mesh root (the operator's own CA code) and serves with a
//! certificate from it, requiring each subscription to present its pod's workload identity;
//! the fleet gets the root (`CONVERGENCE_CA_DIR`) and signs each proxy's CSR for its pod's
//! ServiceAccount, as `Certificates.Sign` would after its TokenReview.
//!
//! Run: `cargo bench -p trellis-operator --bench convergence` (release build). Options via
//! env: `PROXIES` (default 1000), `SERVICES` (1000), `PODS_PER_SERVICE` (10), `ROUNDS` (3),
//! `CONNECTS_IN_FLIGHT` (32), `INITIAL_SYNC_TIMEOUT_S` (900), `ROUND_TIMEOUT_S` (300),
//! `SIDECARS` (0; 1: a Sidecar per namespace importing its own namespace, the next one and
//! `trellis-system`), `CONFIG_OUT` (a file to write proxy 0's whole config to, as JSON).

use std::collections::BTreeMap;
use std::fmt;
use std::process::Stdio;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::transport::Endpoint;
use trellis_contract::ConfigDelta;
use trellis_operator::compile::{Role, compile, compile_outbound, compile_workload};
use trellis_operator::push::{Options, PushService};
use trellis_operator::registry::ObjectKey;
use trellis_operator::snapshot::Snapshot as MeshSnapshot;
use trellis_push::v1::config_push_client::ConfigPushClient;
use trellis_push::v1::config_push_server::ConfigPushServer;
use trellis_push::{Hello, ProxyMessage, Snapshot};

/// Set in the fleet child: the operator's push address.
const FLEET_ENV: &str = "CONVERGENCE_FLEET";
/// Set in the fleet child: where the mesh root's certificate and key are.
const CA_ENV: &str = "CONVERGENCE_CA_DIR";
/// The name in the operator's serving certificate.
const SERVER_NAME: &str = "trellis-operator.trellis-system.svc";
const TRUST_DOMAIN: &str = "cluster.local";

/// The mesh CA of the run.
mod mesh_ca {
    use std::path::Path;
    use std::time::{Duration, SystemTime};

    use anyhow::Context;
    use rcgen::{CertificateParams, KeyPair, SanType};
    use tonic::transport::Identity;
    use trellis_operator::ca::{Authorized, CertificateAuthority, SigningCert, SystemClock};

    const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

    /// A new root, written to `dir` for the fleet.
    pub(super) fn create(dir: &Path) -> anyhow::Result<CertificateAuthority> {
        let root = SigningCert::self_signed_root(super::TRUST_DOMAIN, YEAR, SystemTime::now())?;
        std::fs::write(dir.join("root.pem"), root.cert_pem())?;
        std::fs::write(dir.join("root-key.pem"), root.key_pem())?;
        Ok(CertificateAuthority::new(
            root,
            Duration::from_secs(24 * 3600),
            Box::new(SystemClock),
        ))
    }

    /// The root written by [`create`].
    pub(super) fn load(dir: &Path) -> anyhow::Result<CertificateAuthority> {
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).with_context(|| format!("reading {f}"));
        let root = SigningCert::from_pem(&read("root.pem")?, &read("root-key.pem")?, &[])?;
        Ok(CertificateAuthority::new(
            root,
            Duration::from_secs(24 * 3600),
            Box::new(SystemClock),
        ))
    }

    /// The operator's serving identity.
    pub(super) fn serving(ca: &CertificateAuthority) -> anyhow::Result<Identity> {
        let id = format!("spiffe://{}/ns/trellis-system/sa/trellis-operator", super::TRUST_DOMAIN);
        let (leaf, key) = ca.issue_serving(&id, &[super::SERVER_NAME.to_string()], YEAR)?;
        Ok(Identity::from_pem(leaf.cert_chain_pem, key))
    }

    /// A workload identity for a pod of `namespace` running as `service_account`: the key is
    /// made here and a CSR signed, as a proxy obtains its certificate.
    pub(super) fn workload(
        ca: &CertificateAuthority,
        namespace: &str,
        service_account: &str,
    ) -> anyhow::Result<Identity> {
        let who = Authorized::service_account(super::TRUST_DOMAIN, namespace, service_account);
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(who.spiffe_id.as_str().try_into()?)];
        let csr = params.serialize_request(&key)?.pem()?;
        let leaf = ca.sign(&csr, &who)?;
        Ok(Identity::from_pem(leaf.cert_chain_pem, key.serialize_pem()))
    }
}

/// why: a 1000-service config is 3.6 MiB of JSON, close to tonic's 4 MiB default.
const MAX_MESSAGE: usize = 64 << 20;

/// Set once the operator side runs with the deployed allocator settings.
const DEPLOYED_ENV: &str = "CONVERGENCE_AS_DEPLOYED";

fn main() -> anyhow::Result<()> {
    // The operator's Deployment sets MALLOC_ARENA_MAX (glibc reads it at start): measure the
    // operator side as deployed by re-executing once with the same environment.
    if std::env::var_os(FLEET_ENV).is_none() && std::env::var_os(DEPLOYED_ENV).is_none() {
        let exe = std::env::current_exe().context("finding this benchmark's binary")?;
        let status = std::process::Command::new(exe)
            .args(std::env::args_os().skip(1))
            .env(DEPLOYED_ENV, "1")
            // A value set by the caller wins (e.g. 16, glibc's default on 2 cores).
            .env(
                "MALLOC_ARENA_MAX",
                std::env::var("MALLOC_ARENA_MAX")
                    .unwrap_or_else(|_| trellis_manifests::install::OPERATOR_MALLOC_ARENAS.to_string()),
            )
            .status()
            .context("re-executing the benchmark with the operator's environment")?;
        std::process::exit(status.code().unwrap_or(1));
    }
    run()
}

#[tokio::main]
async fn run() -> anyhow::Result<()> {
    let knobs = Knobs::from_env()?;
    match std::env::var(FLEET_ENV) {
        Ok(addr) => fleet::run(&addr, &knobs).await,
        Err(_) => operator::run(&knobs).await,
    }
}

/// The benchmark's settings, from the environment.
#[derive(Debug, Clone)]
struct Knobs {
    proxies: usize,
    services: usize,
    pods: usize,
    rounds: usize,
    connects_in_flight: usize,
    initial_timeout: Duration,
    round_timeout: Duration,
    /// A Sidecar per namespace.
    sidecars: bool,
}

impl Knobs {
    fn from_env() -> anyhow::Result<Self> {
        fn var(name: &str, default: usize) -> anyhow::Result<usize> {
            match std::env::var(name) {
                Ok(v) => v
                    .parse()
                    .with_context(|| format!("{name}={v:?} is not a number; unset it or give a count")),
                Err(_) => Ok(default),
            }
        }
        let knobs = Knobs {
            proxies: var("PROXIES", 1000)?,
            services: var("SERVICES", 1000)?,
            pods: var("PODS_PER_SERVICE", 10)?,
            rounds: var("ROUNDS", 3)?,
            connects_in_flight: var("CONNECTS_IN_FLIGHT", 32)?.max(1),
            initial_timeout: Duration::from_secs(var("INITIAL_SYNC_TIMEOUT_S", 900)? as u64),
            round_timeout: Duration::from_secs(var("ROUND_TIMEOUT_S", 300)? as u64),
            sidecars: var("SIDECARS", 0)? > 0,
        };
        if knobs.services == 0 || knobs.pods == 0 || knobs.proxies == 0 {
            bail!("PROXIES, SERVICES and PODS_PER_SERVICE must be at least 1");
        }
        if knobs.proxies > knobs.services * knobs.pods {
            bail!(
                "PROXIES={} exceeds the {} pods of the mesh (SERVICES x PODS_PER_SERVICE): every proxy needs its own pod",
                knobs.proxies,
                knobs.services * knobs.pods
            );
        }
        Ok(knobs)
    }

    /// How many proxies a round's change (svc-0's VirtualService, in ns-0) reaches: every one,
    /// or with Sidecars those whose namespace imports ns-0 — its own and ns-9's (whose next it
    /// is); the others' configurations do not change, so they are sent nothing.
    fn reached_by_change(&self) -> usize {
        (0..self.proxies)
            .filter(|&i| !self.sidecars || matches!(self.pod(i).namespace.as_str(), "ns-0" | "ns-9"))
            .count()
    }

    /// The pod proxy `i` subscribes as: the first pod of every service, then the second, ...
    fn pod(&self, i: usize) -> ObjectKey {
        let (s, p) = (i % self.services, i / self.services);
        ObjectKey::new(format!("ns-{}", s % 10), format!("svc-{s}-{p}"))
    }
}

/// The mesh: `services` services over 10 namespaces, `pods` meshed ready pods each, a
/// VirtualService and a DestinationRule for each of the first 100 services; with `sidecars`,
/// a Sidecar per namespace as Istio's docs advise (its own namespace and the control
/// plane's), plus the next namespace (the services each calls).
fn mesh(services: usize, pods: usize, sidecars: bool) -> String {
    let mut y = String::new();
    for n in 0..10 {
        y.push_str(&format!(
            "---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: ns-{n}}}\n"
        ));
        if sidecars {
            y.push_str(&format!(
                "---\napiVersion: networking.trellis.dev/v1alpha1\nkind: Sidecar\nmetadata: {{name: default, namespace: ns-{n}}}\nspec:\n  egress: [{{hosts: [\"./*\", \"ns-{}/*\", \"trellis-system/*\"]}}]\n",
                (n + 1) % 10
            ));
        }
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

/// The change of round `round`: the timeout of `virtual_services[0]`'s default route.
fn change_virtual_service(mesh: &mut MeshSnapshot, round: usize) -> anyhow::Result<()> {
    let vs = mesh
        .virtual_services
        .first_mut()
        .context("the mesh has no VirtualService to change")?;
    let route = vs
        .spec
        .http
        .as_mut()
        .and_then(|h| h.get_mut(1))
        .context("virtual_services[0] has no second HTTP route to change")?;
    route.timeout = Some(format!("{}s", 3 + round));
    Ok(())
}

/// Resident and peak memory of a process, from `/proc/<pid>/status`.
#[derive(Debug, Clone, Copy)]
struct Memory {
    rss_kib: u64,
    peak_kib: u64,
}

impl Memory {
    fn of(pid: &str) -> anyhow::Result<Memory> {
        let path = format!("/proc/{pid}/status");
        let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        let field = |name: &str| -> anyhow::Result<u64> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|kib| kib.parse().ok())
                .with_context(|| format!("{path} has no {name} line (not Linux?)"))
        };
        Ok(Memory {
            rss_kib: field("VmRSS:")?,
            peak_kib: field("VmHWM:")?,
        })
    }
}

impl fmt::Display for Memory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "RSS {:.0} MiB, peak {:.0} MiB",
            self.rss_kib as f64 / 1024.0,
            self.peak_kib as f64 / 1024.0
        )
    }
}

/// Nanoseconds since the Unix epoch: the only clock both processes read alike.
fn unix_nanos() -> u128 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// An ACK the fleet sent.
#[derive(Debug, Clone, PartialEq)]
struct Acked {
    /// The version ACKed.
    version: String,
    /// When the ACK was sent (Unix nanoseconds).
    at: u128,
    /// The message's payload bytes (whole config or delta).
    bytes: usize,
    /// Whether the message was a delta.
    delta: bool,
}

/// What the fleet tells the operator side, one line each on its stdout.
#[derive(Debug, Clone, PartialEq)]
enum Report {
    /// `subscribed <proxy>`: a subscription is open.
    Subscribed { proxy: usize },
    /// `ack <proxy> <version> <unix-nanos> <bytes> <full|delta>`.
    Ack { proxy: usize, ack: Acked },
    /// `nack <proxy> <version> <unix-nanos> <reason>`.
    Nack {
        proxy: usize,
        version: String,
        at: u128,
        reason: String,
    },
    /// `fail <proxy> <connect|subscribe|stream> <reason>`: an attempt failed; the proxy retries.
    Fail {
        proxy: usize,
        stage: &'static str,
        reason: String,
    },
}

impl Report {
    const STAGES: [&'static str; 3] = ["connect", "subscribe", "stream"];

    fn to_line(&self) -> String {
        let one_line = |s: &str| s.replace(['\n', '\r'], " ");
        match self {
            Report::Subscribed { proxy } => format!("subscribed {proxy}\n"),
            Report::Ack { proxy, ack } => format!(
                "ack {proxy} {} {} {} {}\n",
                ack.version,
                ack.at,
                ack.bytes,
                if ack.delta { "delta" } else { "full" }
            ),
            Report::Nack {
                proxy,
                version,
                at,
                reason,
            } => format!("nack {proxy} {version} {at} {}\n", one_line(reason)),
            Report::Fail { proxy, stage, reason } => format!("fail {proxy} {stage} {}\n", one_line(reason)),
        }
    }

    fn parse(line: &str) -> anyhow::Result<Report> {
        let bad = || format!("the fleet sent an unknown report line {line:?}");
        let mut words = line.split(' ');
        let kind = words.next().unwrap_or_default();
        let proxy = words.next().and_then(|p| p.parse().ok()).with_context(bad)?;
        let mut next = || words.next().with_context(bad);
        Ok(match kind {
            "subscribed" => Report::Subscribed { proxy },
            "ack" => Report::Ack {
                proxy,
                ack: Acked {
                    version: next()?.to_string(),
                    at: next()?.parse().with_context(bad)?,
                    bytes: next()?.parse().with_context(bad)?,
                    delta: next()? == "delta",
                },
            },
            "nack" => {
                let version = next()?.to_string();
                let at = next()?.parse().with_context(bad)?;
                Report::Nack {
                    proxy,
                    version,
                    at,
                    reason: words.collect::<Vec<_>>().join(" "),
                }
            }
            "fail" => {
                let stage = next()?;
                let stage = Report::STAGES.into_iter().find(|s| *s == stage).with_context(bad)?;
                Report::Fail {
                    proxy,
                    stage,
                    reason: words.collect::<Vec<_>>().join(" "),
                }
            }
            _ => bail!(bad()),
        })
    }
}

/// The simulated proxies (the child process).
mod fleet {
    use super::*;

    pub(super) async fn run(addr: &str, knobs: &Knobs) -> anyhow::Result<()> {
        let endpoint = Endpoint::from_shared(format!("https://{addr}"))
            .with_context(|| format!("{FLEET_ENV}={addr:?} is not a host:port"))?
            // The proxy's own connect timeout (trellis-push client).
            .connect_timeout(Duration::from_secs(5));
        let ca_dir = std::env::var(CA_ENV).with_context(|| format!("{CA_ENV} is not set"))?;
        let ca = mesh_ca::load(std::path::Path::new(&ca_dir))?;
        let root = tonic::transport::Certificate::from_pem(ca.signer().cert_pem());
        let signing = std::time::Instant::now();
        let mut endpoints = Vec::with_capacity(knobs.proxies);
        for i in 0..knobs.proxies {
            let pod = knobs.pod(i);
            // The generated pods `svc-<s>-<p>` run as ServiceAccount `svc-<s>`.
            let sa = pod.name.rsplit_once('-').map_or(pod.name.as_str(), |(sa, _)| sa);
            let tls = tonic::transport::ClientTlsConfig::new()
                .ca_certificate(root.clone())
                .domain_name(SERVER_NAME)
                .identity(mesh_ca::workload(&ca, &pod.namespace, sa)?);
            endpoints.push(endpoint.clone().tls_config(tls).context("the proxy's TLS")?);
        }
        eprintln!(
            "fleet: {} workload certificates signed in {:?}",
            knobs.proxies,
            signing.elapsed()
        );
        let (reports, mut queued) = mpsc::unbounded_channel::<Report>();
        let writer = tokio::spawn(async move {
            let mut out = tokio::io::BufWriter::new(tokio::io::stdout());
            while let Some(report) = queued.recv().await {
                out.write_all(report.to_line().as_bytes()).await?;
                if queued.is_empty() {
                    out.flush().await?;
                }
            }
            out.flush().await
        });
        // why: a thousand handshakes at once overflow the listen backlog and starve the
        // server's accept loop; a bounded number in flight is what a rolling fleet start is.
        let gate = Arc::new(Semaphore::new(knobs.connects_in_flight));
        for (i, endpoint) in endpoints.into_iter().enumerate() {
            tokio::spawn(proxy(i, knobs.pod(i), endpoint, gate.clone(), reports.clone()));
        }
        drop(reports);
        // Run until the operator side closes our stdin.
        let mut stdin = tokio::io::stdin();
        let mut buf = [0u8; 256];
        while stdin.read(&mut buf).await.context("reading the fleet's stdin")? > 0 {}
        writer.abort();
        Ok(())
    }

    /// Capped exponential backoff, spread per proxy so retries do not arrive in waves.
    fn backoff(proxy: usize, attempt: u32) -> Duration {
        let base = 50u64 << attempt.min(6);
        let spread = (proxy as u64 * 37 + attempt as u64 * 11) % 50;
        Duration::from_millis(base.min(2_000) + spread)
    }

    /// One proxy: connect, subscribe, ACK every version; reconnect (announcing the version it
    /// holds) whenever any step fails.
    async fn proxy(
        i: usize,
        pod: ObjectKey,
        endpoint: Endpoint,
        gate: Arc<Semaphore>,
        reports: mpsc::UnboundedSender<Report>,
    ) {
        let fail = |stage, reason: String| {
            let _ = reports.send(Report::Fail {
                proxy: i,
                stage,
                reason,
            });
        };
        let mut held: Option<String> = None;
        let mut attempt = 0u32;
        loop {
            if attempt > 0 {
                tokio::time::sleep(backoff(i, attempt)).await;
            }
            attempt += 1;
            let Ok(permit) = gate.acquire().await else { return };
            let channel = match endpoint.connect().await {
                Ok(c) => c,
                Err(e) => {
                    fail("connect", format!("{e:?}"));
                    continue;
                }
            };
            let mut client = ConfigPushClient::new(channel).max_decoding_message_size(MAX_MESSAGE);
            let (tx, rx) = mpsc::channel(4);
            let hello = Hello {
                namespace: pod.namespace.clone(),
                pod: pod.name.clone(),
                role: "sidecar".into(),
                proxy_version: "convergence-bench".into(),
                current_version: held.clone().unwrap_or_default(),
                accepts_delta: true,
                accepts_chunks: true,
                certificate_json: Vec::new(),
            };
            if tx.try_send(ProxyMessage::hello(hello)).is_err() {
                // A fresh channel with room for 4: cannot happen; retry like any failure.
                fail("subscribe", "could not queue Hello".into());
                continue;
            }
            let mut stream = match client.subscribe(ReceiverStream::new(rx)).await {
                Ok(s) => s.into_inner(),
                Err(status) => {
                    fail("subscribe", format!("{:?}: {}", status.code(), status.message()));
                    continue;
                }
            };
            drop(permit);
            let _ = reports.send(Report::Subscribed { proxy: i });
            let mut chunks = trellis_push::Reassembly::default();
            loop {
                let message = match stream.message().await {
                    Ok(Some(s)) => s,
                    Ok(None) => {
                        fail("stream", "the operator ended the subscription".into());
                        break;
                    }
                    Err(status) => {
                        fail("stream", format!("{:?}: {}", status.code(), status.message()));
                        break;
                    }
                };
                attempt = 0;
                // Payloads come in chunks, as to real proxies; chunks that do not fit together are
                // NACKed as trellis-push's client does.
                let version = message.version.clone();
                let (bytes, decoded) = match chunks.push(message) {
                    Ok(None) => continue,
                    Ok(Some(whole)) => (
                        whole.config_json.len() + whole.delta_json.len(),
                        decode(&whole, held.as_deref()),
                    ),
                    Err(e) => (0, Err(e.to_string())),
                };
                let answer = match &decoded {
                    Ok(d) => {
                        held = Some(d.version.clone());
                        ProxyMessage::ack(d.version.clone())
                    }
                    Err(reason) => ProxyMessage::nack(version.clone(), reason.clone()),
                };
                if tx.send(answer).await.is_err() {
                    fail("stream", "the subscription closed before the answer was sent".into());
                    break;
                }
                let at = unix_nanos();
                let _ = reports.send(match decoded {
                    Ok(d) => Report::Ack {
                        proxy: i,
                        ack: Acked {
                            version: d.version,
                            at,
                            bytes,
                            delta: d.delta,
                        },
                    },
                    Err(reason) => Report::Nack {
                        proxy: i,
                        version,
                        at,
                        reason,
                    },
                });
            }
        }
    }

    /// A message a proxy could use.
    struct Decoded {
        version: String,
        delta: bool,
    }

    /// What a proxy does with a message before answering. A full snapshot: parse the whole
    /// config, check its version, and drop it (a thousand parsed configs would not fit), keeping
    /// only the version. A delta: parse it and check it applies to the version held (applying
    /// it is measured separately, on one real config).
    fn decode(snapshot: &Snapshot, held: Option<&str>) -> Result<Decoded, String> {
        if !snapshot.is_delta() {
            let config = snapshot.config().map_err(|e| e.to_string())?;
            return Ok(Decoded {
                version: config.version,
                delta: false,
            });
        }
        if held != Some(snapshot.base_version.as_str()) {
            return Err(format!(
                "delta to {} is against {}, but this proxy holds {}",
                snapshot.version,
                snapshot.base_version,
                held.unwrap_or("nothing")
            ));
        }
        let delta: ConfigDelta = serde_json::from_slice(&snapshot.delta_json)
            .map_err(|e| format!("delta to {} is not a ConfigDelta: {e}", snapshot.version))?;
        if delta.base_version != snapshot.base_version || delta.version != snapshot.version {
            return Err(format!(
                "delta says {} -> {} but its envelope says {} -> {}",
                delta.base_version, delta.version, snapshot.base_version, snapshot.version
            ));
        }
        Ok(Decoded {
            version: delta.version,
            delta: true,
        })
    }
}

/// The operator side (the parent process).
mod operator {
    use super::*;

    pub(super) async fn run(knobs: &Knobs) -> anyhow::Result<()> {
        let snapshot =
            MeshSnapshot::from_yaml(&mesh(knobs.services, knobs.pods, knobs.sidecars)).context("the generated mesh")?;
        let crds = snapshot.virtual_services.len() + snapshot.destination_rules.len();
        println!(
            "registry: {} services, {} endpoints, {crds} CRDs; {} proxies in a separate fleet process",
            snapshot.registry.services.len(),
            snapshot.registry.workloads.len(),
            knobs.proxies
        );
        println!(
            "operator side with MALLOC_ARENA_MAX={} (the operator's Deployment sets {})",
            std::env::var("MALLOC_ARENA_MAX").unwrap_or_else(|_| "unset".into()),
            trellis_manifests::install::OPERATOR_MALLOC_ARENAS
        );
        println!("operator after the registry: {}", Memory::of("self")?);

        let mesh = Arc::new(RwLock::new(snapshot));
        let (changed, changed_rx) = watch::channel(0u64);
        let service =
            PushService::new(mesh.clone(), changed_rx, Options::default()).require_workload_identity(TRUST_DOMAIN);
        let ca_dir = tempfile::tempdir().context("a directory for the mesh root")?;
        let ca = mesh_ca::create(ca_dir.path())?;
        let tls = tonic::transport::ServerTlsConfig::new()
            .identity(mesh_ca::serving(&ca)?)
            .client_ca_root(tonic::transport::Certificate::from_pem(ca.signer().cert_pem()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the push server on loopback")?;
        let addr = listener.local_addr()?;
        let server = ConfigPushServer::new(service.clone())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        tokio::spawn(
            tonic::transport::Server::builder()
                .tls_config(tls)
                .context("the push server's TLS")?
                .add_service(server)
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );

        let exe = std::env::current_exe().context("finding this benchmark's binary to start the fleet")?;
        let started = unix_nanos();
        let mut child = tokio::process::Command::new(&exe)
            .env(FLEET_ENV, addr.to_string())
            .env(CA_ENV, ca_dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting the fleet ({})", exe.display()))?;
        let fleet_pid = child.id().context("the fleet exited at once")?.to_string();
        let stdout = child.stdout.take().context("the fleet's stdout")?;
        let (events_tx, events) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if events_tx.send(Report::parse(&line)).is_err() {
                    break;
                }
            }
        });
        let mut fleet = Fleet::new(knobs, events);

        // Initial sync: every proxy ACKs its first version.
        let deadline = Instant::now() + knobs.initial_timeout;
        while fleet.synced() < knobs.proxies && fleet.next(deadline).await? {}
        let last = fleet.acked.iter().flatten().map(|a| a.at).max().unwrap_or(started);
        println!(
            "initial sync: {}/{} proxies ACKed their first version, the last {:.2} s after the fleet started; {} subscriptions opened; failures: {}",
            fleet.synced(),
            knobs.proxies,
            secs(last.saturating_sub(started)),
            fleet.subscribed,
            fleet.failures()
        );
        let mut first: Vec<usize> = fleet.acked.iter().flatten().map(|a| a.bytes).collect();
        first.sort();
        println!(
            "  first config: {} KiB per proxy (median)",
            first.get(first.len() / 2).copied().unwrap_or(0) / 1024
        );
        if fleet.synced() < knobs.proxies {
            bail!(
                "initial sync: only {}/{} proxies ACKed their first version within INITIAL_SYNC_TIMEOUT_S={} s (failures: {})",
                fleet.synced(),
                knobs.proxies,
                knobs.initial_timeout.as_secs(),
                fleet.failures()
            );
        }
        let confirmed = server_in_sync(&service, knobs, &fleet, Duration::from_secs(60)).await?;
        println!("  server sync state: {confirmed}");
        println!("operator after the initial sync: {}", Memory::of("self")?);
        println!("fleet after the initial sync: {}", Memory::of(&fleet_pid)?);

        let mut all = Vec::new();
        let mut in_sync_after_rounds = String::new();
        for round in 0..knobs.rounds {
            // why: let the last round's ACKs settle so rounds do not overlap.
            tokio::time::sleep(Duration::from_millis(200)).await;
            let before: Vec<Option<String>> = fleet
                .acked
                .iter()
                .map(|a| a.as_ref().map(|a| a.version.clone()))
                .collect();
            {
                let mut m = mesh.write().map_err(|_| anyhow::anyhow!("the mesh lock is poisoned"))?;
                change_virtual_service(&mut m, round)?;
            }
            let t0 = unix_nanos();
            changed.send_replace(round as u64 + 1);
            let deadline = Instant::now() + knobs.round_timeout;
            let converged = |f: &Fleet| {
                f.acked
                    .iter()
                    .zip(&before)
                    .filter(|(now, then)| now.as_ref().map(|a| &a.version) != then.as_ref())
                    .count()
            };
            let nacks_before = fleet.nacks;
            let reached = knobs.reached_by_change();
            while converged(&fleet) < reached && fleet.next(deadline).await? {}
            let mut times = Vec::new();
            let mut bytes = Vec::new();
            let mut deltas = 0;
            for (now, then) in fleet.acked.iter().zip(&before) {
                if let Some(a) = now
                    && Some(&a.version) != then.as_ref()
                {
                    times.push(Duration::from_nanos(a.at.saturating_sub(t0) as u64));
                    bytes.push(a.bytes);
                    deltas += usize::from(a.delta);
                }
            }
            times.sort();
            bytes.sort();
            println!(
                "round {round}: {}/{reached} proxies ACKed the new version (of {}; with Sidecars, those that import the change); p50 {}, p99 {}, max {}; {:.1} KiB per proxy (median), {deltas} as deltas; {} NACKs; failures so far: {}",
                times.len(),
                knobs.proxies,
                ms(percentile(&times, 0.5)),
                ms(percentile(&times, 0.99)),
                ms(times.last().copied().unwrap_or_default()),
                bytes.get(bytes.len() / 2).copied().unwrap_or(0) as f64 / 1024.0,
                fleet.nacks - nacks_before,
                fleet.failures()
            );
            if times.len() != reached {
                bail!(
                    "round {round}: {}/{reached} proxies ACKed a new version within ROUND_TIMEOUT_S={} s ({} NACKs)",
                    times.len(),
                    knobs.round_timeout.as_secs(),
                    fleet.nacks - nacks_before
                );
            }
            in_sync_after_rounds = server_in_sync(&service, knobs, &fleet, Duration::from_secs(30)).await?;
            println!(
                "  server sync state: {in_sync_after_rounds}; operator {}",
                Memory::of("self")?
            );
            all.extend(times);
        }
        all.sort();
        let operator_memory = Memory::of("self")?;
        let fleet_memory = Memory::of(&fleet_pid)?;
        println!("operator after the rounds: {operator_memory}");
        println!("fleet after the rounds: {fleet_memory}");
        println!(
            "RESULT convergence (change to ACK sent) p50 {} p99 {} max {} over {} pushes; operator {operator_memory}; server sync state: {in_sync_after_rounds}",
            ms(percentile(&all, 0.5)),
            ms(percentile(&all, 0.99)),
            ms(all.last().copied().unwrap_or_default()),
            all.len(),
        );

        drop(child.stdin.take());
        if tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .is_err()
        {
            child.kill().await.context("stopping the fleet")?;
        }
        let snapshot = mesh
            .read()
            .map_err(|_| anyhow::anyhow!("the mesh lock is poisoned"))?
            .clone();
        // Measured last: their whole compiles (structured, not pieces) are not the push's
        // working set and would inflate the operator's memory figures above.
        compile_times(&snapshot, knobs)?;
        delta_apply_cost(&snapshot, knobs)
    }

    /// What one proxy pays to take a change as a delta: its full config (compiled by the
    /// operator's compiler), a copy with the changed VirtualService, the delta between them,
    /// and the time to parse the delta's JSON, apply it and validate the result (medians).
    fn delta_apply_cost(mesh: &MeshSnapshot, knobs: &Knobs) -> anyhow::Result<()> {
        let pod = knobs.pod(0);
        let old = compile(mesh, &pod, Role::Sidecar, "before")
            .with_context(|| format!("compiling {pod}"))?
            .config;
        let mut changed = mesh.clone();
        change_virtual_service(&mut changed, knobs.rounds)?;
        let new = compile(&changed, &pod, Role::Sidecar, "after")
            .with_context(|| format!("compiling {pod} after the change"))?
            .config;
        let t = Instant::now();
        let delta = ConfigDelta::between(&old, &new)
            .with_context(|| format!("ConfigDelta::between found no delta for {pod}'s change"))?;
        let between = t.elapsed();
        let pushed = Snapshot::from_delta(&delta).context("wrapping the delta")?;
        let full_json = serde_json::to_vec(&new).context("serializing the new config")?;
        if let Ok(path) = std::env::var("CONFIG_OUT") {
            std::fs::write(&path, &full_json).with_context(|| format!("writing {pod}'s config to {path}"))?;
            println!("wrote {pod}'s whole config ({} KiB) to {path}", full_json.len() / 1024);
        }
        const RUNS: usize = 21;
        let (mut parse, mut apply, mut validate, mut full_parse) = (vec![], vec![], vec![], vec![]);
        for _ in 0..RUNS {
            let t = Instant::now();
            let received: ConfigDelta =
                serde_json::from_slice(&pushed.delta_json).context("parsing the delta's JSON")?;
            parse.push(t.elapsed());
            drop(received);
            // What trellis-push's run_push does with a delta: parse and apply to the config held.
            let t = Instant::now();
            let applied = pushed
                .apply_to(Some(&old))
                .with_context(|| format!("applying the delta to {pod}'s config"))?;
            apply.push(t.elapsed());
            let t = Instant::now();
            applied
                .validate()
                .map_err(|e| anyhow::anyhow!("{pod}'s config after the delta does not validate: {e}"))?;
            validate.push(t.elapsed());
            if applied != new {
                bail!("the delta applied to {pod}'s config does not give the new config");
            }
            let t = Instant::now();
            let whole: trellis_contract::ProxyConfig =
                serde_json::from_slice(&full_json).context("parsing the whole config")?;
            full_parse.push(t.elapsed());
            drop(whole);
        }
        let median = |v: &mut Vec<Duration>| {
            v.sort();
            ms(v[v.len() / 2])
        };
        println!(
            "delta apply (one proxy, {pod}): delta {:.1} KiB of JSON vs {} KiB whole (compact); proxy: parse the delta {}, Snapshot::apply_to (parse + apply) {}, validate {} (medians of {RUNS}); parsing the whole config instead: {}; ConfigDelta::between (operator side, includes its own check): {}",
            pushed.delta_json.len() as f64 / 1024.0,
            full_json.len() / 1024,
            median(&mut parse),
            median(&mut apply),
            median(&mut validate),
            median(&mut full_parse),
            ms(between)
        );
        Ok(())
    }

    /// Compile time, on a sample: a sidecar's outbound part (shared by a namespace) and each
    /// proxy's own part. The push's own costs (serializing, versioning) are in the rounds.
    fn compile_times(snapshot: &MeshSnapshot, knobs: &Knobs) -> anyhow::Result<()> {
        let sample: Vec<ObjectKey> = (0..20).map(|i| knobs.pod(i % knobs.services)).collect();
        let t = Instant::now();
        for pod in &sample[..10] {
            compile_outbound(snapshot, pod)?;
        }
        let per_namespace = t.elapsed() / 10;
        let t = Instant::now();
        for pod in &sample {
            compile_workload(snapshot, pod, Role::Sidecar, "")?;
        }
        let per_proxy = t.elapsed() / sample.len() as u32;
        println!(
            "compile: outbound part {} per namespace, then {} per proxy for its own part",
            ms(per_namespace),
            ms(per_proxy)
        );
        Ok(())
    }

    /// What the fleet has reported so far.
    #[derive(Debug)]
    struct Fleet {
        events: mpsc::UnboundedReceiver<anyhow::Result<Report>>,
        acked: Vec<Option<Acked>>,
        subscribed: usize,
        nacks: usize,
        failed: BTreeMap<&'static str, usize>,
        shown: usize,
    }

    impl Fleet {
        fn new(knobs: &Knobs, events: mpsc::UnboundedReceiver<anyhow::Result<Report>>) -> Self {
            Fleet {
                events,
                acked: vec![None; knobs.proxies],
                subscribed: 0,
                nacks: 0,
                failed: BTreeMap::new(),
                shown: 0,
            }
        }

        fn synced(&self) -> usize {
            self.acked.iter().filter(|a| a.is_some()).count()
        }

        fn failures(&self) -> String {
            if self.failed.is_empty() {
                return "none".into();
            }
            self.failed
                .iter()
                .map(|(stage, n)| format!("{stage} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        }

        /// Take in the next report; false when the deadline passed.
        async fn next(&mut self, deadline: Instant) -> anyhow::Result<bool> {
            let report = match tokio::time::timeout_at(deadline.into(), self.events.recv()).await {
                Err(_) => return Ok(false),
                Ok(None) => bail!("the fleet process exited (its errors are above)"),
                Ok(Some(r)) => r?,
            };
            match report {
                Report::Subscribed { .. } => self.subscribed += 1,
                Report::Ack { proxy, ack } => {
                    let slot = self
                        .acked
                        .get_mut(proxy)
                        .with_context(|| format!("the fleet reported proxy {proxy}, which does not exist"))?;
                    *slot = Some(ack);
                }
                Report::Nack {
                    proxy, version, reason, ..
                } => {
                    self.nacks += 1;
                    println!("  proxy {proxy} NACKed {version}: {reason}");
                }
                Report::Fail { proxy, stage, reason } => {
                    *self.failed.entry(stage).or_default() += 1;
                    // The first few in full; the counts are in every summary line.
                    if self.shown < 10 {
                        self.shown += 1;
                        println!("  proxy {proxy}: {stage} failed (retrying): {reason}");
                    }
                }
            }
            Ok(true)
        }
    }

    /// Wait (up to `limit`) until the server's sync state has every proxy's last sent version
    /// ACKed and equal to what the fleet reported; describe the outcome, or fail with it when
    /// some proxy is not in sync by then (the benchmark's figures would not be about a mesh
    /// in sync).
    async fn server_in_sync(
        service: &PushService,
        knobs: &Knobs,
        fleet: &Fleet,
        limit: Duration,
    ) -> anyhow::Result<String> {
        let t = Instant::now();
        let expected: BTreeMap<String, Option<&str>> = (0..knobs.proxies)
            .map(|i| {
                (
                    knobs.pod(i).to_string(),
                    fleet.acked[i].as_ref().map(|a| a.version.as_str()),
                )
            })
            .collect();
        loop {
            let state = service.sync_state();
            let in_sync = state
                .iter()
                .filter(|s| {
                    s.acked.is_some()
                        && s.acked == s.sent
                        && expected.get(&s.proxy).copied().flatten() == s.acked.as_deref()
                })
                .count();
            if in_sync == knobs.proxies || t.elapsed() >= limit {
                let outcome = format!(
                    "{in_sync}/{} proxies with acked == sent == the version the fleet ACKed (checked within {})",
                    knobs.proxies,
                    ms(t.elapsed())
                );
                if in_sync < knobs.proxies {
                    bail!("the server's sync state: only {outcome}");
                }
                return Ok(outcome);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 10.0 {
        format!("{ms:.3} ms")
    } else {
        format!("{ms:.1} ms")
    }
}

fn secs(nanos: u128) -> f64 {
    nanos as f64 / 1e9
}
