//! The `trellis-proxy` binary: parses arguments, sets up logging, and runs
//! the library's [`trellis_proxy::App`] (or installs capture rules).

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tracing_subscriber::{EnvFilter, Registry, reload};
use trellis_proxy::capture::{self, CaptureConfig};
use trellis_proxy::logging::{LogControl, LogControlError};
use trellis_proxy::settings::Settings;
use trellis_proxy::{App, AppConfig, ports};

#[derive(Parser, Debug)]
#[command(name = "trellis-proxy", version, about = "The Trellis sidecar and gateway proxy")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the proxy.
    Run(Box<RunArgs>),
    /// Install the transparent-capture iptables rules (init container).
    Init(InitArgs),
}

#[derive(Args, Debug)]
struct RunArgs {
    /// Proxy configuration file (JSON or YAML of the trellis contract), for standalone use.
    #[arg(
        long,
        env = "TRELLIS_CONFIG",
        required_unless_present = "push_endpoint",
        conflicts_with = "push_endpoint"
    )]
    config: Option<PathBuf>,
    /// Mesh mode: the operator's push API, e.g. https://trellis-operator.trellis-system.svc:15012.
    #[arg(long, env = "TRELLIS_PUSH_ENDPOINT")]
    push_endpoint: Option<String>,
    /// The DNS name in the operator's serving certificate.
    #[arg(
        long,
        env = "TRELLIS_PUSH_SERVER_NAME",
        default_value = "trellis-operator.trellis-system.svc"
    )]
    push_server_name: String,
    /// The mesh root certificate (mounted from the trellis-ca-root ConfigMap).
    #[arg(long, env = "TRELLIS_CA_ROOT", default_value = "/var/run/trellis/ca/root-cert.pem")]
    ca_root: PathBuf,
    /// The pod's projected ServiceAccount token (audience "trellis").
    #[arg(long, env = "TRELLIS_TOKEN", default_value = "/var/run/secrets/trellis/token")]
    token: PathBuf,
    /// Where the workload certificate, key and trust bundle are kept.
    #[arg(long, env = "TRELLIS_IDENTITY_DIR", default_value = "/var/run/trellis/identity")]
    identity_dir: PathBuf,
    /// The pod's namespace (downward API).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pod_namespace: String,
    /// The pod's name (downward API).
    #[arg(long, env = "POD_NAME", default_value = "")]
    pod_name: String,
    /// The pod's ServiceAccount (downward API `spec.serviceAccountName`).
    #[arg(long, env = "SERVICE_ACCOUNT", default_value = "default")]
    service_account: String,
    /// The mesh's SPIFFE trust domain.
    #[arg(long, env = "TRELLIS_TRUST_DOMAIN", default_value = "cluster.local")]
    trust_domain: String,
    /// `sidecar` or `gateway`.
    #[arg(long, env = "TRELLIS_ROLE", default_value = "sidecar")]
    role: String,
    /// Admin API address (keep it on localhost).
    #[arg(long, env = "TRELLIS_ADMIN_ADDR", default_value_t = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), ports::ADMIN))]
    admin_addr: SocketAddr,
    /// Prometheus scrape address.
    #[arg(long, env = "TRELLIS_STATS_ADDR", default_value_t = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), ports::STATS))]
    stats_addr: SocketAddr,
    /// Probe address (`/ready`, `/live`).
    #[arg(long, env = "TRELLIS_HEALTH_ADDR", default_value_t = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), ports::HEALTH))]
    health_addr: SocketAddr,
    /// DNS proxy address (UDP and TCP); `off` disables it.
    #[arg(long, env = "TRELLIS_DNS_ADDR", default_value = "127.0.0.1:15053")]
    dns_addr: String,
    /// How often to check the config file for changes, in milliseconds.
    #[arg(long, env = "TRELLIS_CONFIG_POLL_MS", default_value_t = 1000)]
    config_poll_ms: u64,
    /// Log filter (EnvFilter syntax), changeable at run time via `/logging`.
    #[arg(long, env = "TRELLIS_LOG", default_value = "info")]
    log: String,
    /// Log as JSON lines (access logs included).
    #[arg(long, env = "TRELLIS_LOG_JSON")]
    log_json: bool,
    /// Downstream connections all traffic listeners together may hold; more are closed on
    /// arrival (overload). Default: from the file descriptor limit, at most 50000.
    #[arg(long, env = "TRELLIS_MAX_DOWNSTREAM_CONNECTIONS")]
    max_downstream_connections: Option<u32>,
    /// The app's own Prometheus annotations (`{"scrape":…,"path":…,"port":…}`, set by the
    /// sidecar injector): its metrics are served after the proxy's on the stats port.
    #[arg(long, env = "TRELLIS_PROMETHEUS_ANNOTATIONS")]
    prometheus_annotations: Option<String>,
}

#[derive(Args, Debug)]
struct InitArgs {
    /// Print the rules instead of installing them.
    #[arg(long)]
    dry_run: bool,
    /// The proxy's UID (its traffic is not captured).
    #[arg(long, default_value_t = ports::PROXY_UID)]
    proxy_uid: u32,
    /// Inbound ports not to capture (comma separated).
    #[arg(long, value_delimiter = ',')]
    exclude_inbound_ports: Vec<u16>,
    /// Outbound ports not to capture (comma separated).
    #[arg(long, value_delimiter = ',')]
    exclude_outbound_ports: Vec<u16>,
    /// Outbound CIDRs not to capture (comma separated).
    #[arg(long, value_delimiter = ',')]
    exclude_outbound_cidrs: Vec<ipnet::IpNet>,
    /// Inbound ports to capture: `*` (default: all) or a comma-separated list.
    #[arg(long, default_value = "*")]
    include_inbound_ports: capture::Include<u16>,
    /// Outbound ports always captured, whatever the destination (comma separated).
    #[arg(long, value_delimiter = ',')]
    include_outbound_ports: Vec<u16>,
    /// Outbound destinations to capture: `*` (default: all) or a comma-separated list of CIDRs.
    #[arg(long, default_value = "*")]
    include_outbound_cidrs: capture::Include<ipnet::IpNet>,
    /// Redirect DNS (UDP and TCP port 53) to the proxy's DNS proxy (default true).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    capture_dns: bool,
    /// The iptables binary.
    #[arg(long, default_value = "iptables")]
    iptables: String,
}

struct ReloadControl {
    handle: reload::Handle<EnvFilter, Registry>,
    current: std::sync::Mutex<String>,
}

impl LogControl for ReloadControl {
    fn set(&self, directive: &str) -> Result<(), LogControlError> {
        let filter = EnvFilter::try_new(directive)?;
        self.handle.reload(filter)?;
        *self.current.lock().expect("log lock") = directive.to_string();
        Ok(())
    }

    fn current(&self) -> String {
        self.current.lock().expect("log lock").clone()
    }
}

fn init_logging(filter: &str, json: bool) -> anyhow::Result<Arc<ReloadControl>> {
    use tracing_subscriber::prelude::*;
    let env = EnvFilter::try_new(filter).map_err(|e| {
        anyhow::anyhow!(
            "--log / TRELLIS_LOG {filter:?} is not a log filter ({e}); write EnvFilter directives such as `info` or \
             `warn,trellis_proxy=debug`, or unset it for `info`"
        )
    })?;
    let (layer, handle) = reload::Layer::new(env);
    let registry = tracing_subscriber::registry().with(layer);
    if json {
        registry.with(tracing_subscriber::fmt::layer().json()).init();
    } else {
        registry.with(tracing_subscriber::fmt::layer()).init();
    }
    Ok(Arc::new(ReloadControl {
        handle,
        current: std::sync::Mutex::new(filter.to_string()),
    }))
}

/// why: glibc's malloc took about 4.8k instructions of each request on the inbound proxy of the
/// mTLS chain (rustls' record buffers and hyper's 8 KiB read buffers are over its 1 KiB tcache
/// and go through the arena, with consolidation); mimalloc takes about 3.6k (callgrind,
/// proxy/bench/README.md). Its 2.x line, built without transparent huge pages (`no_thp`):
/// with them an idle proxy's heap was 8.6 MiB instead of 1.2 (issue 14's idle target is 12).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Init(args) => init(args),
        Command::Run(args) => {
            let args = *args;
            let settings = Settings::from_env()?;
            // why: one worker (a sidecar's default) runs on tokio's current-thread scheduler:
            // every task on this thread, without the multi-thread scheduler's queues, idle
            // bookkeeping and wake-ups (bench.py: 4 % less CPU per request on the mTLS chain;
            // callgrind: 2.2 % fewer instructions). The configuration is compiled, decoded and
            // read on blocking threads (`app::off_runtime_thread`), so requests go on meanwhile.
            let rt = match settings.workers.get() {
                1 => tokio::runtime::Builder::new_current_thread().enable_all().build(),
                workers => tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(workers)
                    .enable_all()
                    .build(),
            }
            .context("cannot start the tokio runtime")?;
            rt.block_on(run(args, settings))
        }
    }
}

async fn run(args: RunArgs, settings: Settings) -> anyhow::Result<()> {
    let log = init_logging(&args.log, args.log_json)?;
    match trellis_proxy::overload::raise_descriptor_limit() {
        Ok(limit) => tracing::debug!(limit, "file descriptor limit"),
        Err(e) => tracing::warn!(error = %e, "cannot read or raise the file descriptor limit"),
    }
    let app = App::start(AppConfig {
        admin_addr: args.admin_addr,
        stats_addr: Some(args.stats_addr),
        health_addr: Some(args.health_addr),
        dns_addr: match args.dns_addr.as_str() {
            "off" => None,
            a => Some(a.parse().with_context(|| format!("invalid --dns-addr {a:?}"))?),
        },
        log_control: Some(log),
        max_downstream_connections: args.max_downstream_connections,
        app_metrics: match &args.prometheus_annotations {
            Some(json) => trellis_proxy::app_metrics::AppMetrics::from_annotations(json, args.stats_addr.port())?,
            None => None,
        },
        app_probes: settings.app_probes,
    })
    .await
    .context("cannot bind the admin ports (is another proxy running?)")?;
    let app = Arc::new(app);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install the SIGTERM handler")?;
    match (&args.config, &args.push_endpoint) {
        (Some(path), _) => {
            let cfg = trellis_proxy::config::load_file(path)?;
            app.apply(cfg).await.context("the initial configuration was rejected")?;
            tokio::select! {
                _ = trellis_proxy::config::watch_file(&app, path, Duration::from_millis(args.config_poll_ms)) => {}
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = tokio::signal::ctrl_c() => tracing::info!("interrupt received"),
            }
        }
        (None, Some(endpoint)) => {
            let client = trellis_push::client::ClientConfig {
                endpoint: endpoint.clone(),
                server_name: args.push_server_name.clone(),
                root_cert: args.ca_root.clone(),
                token: args.token.clone(),
                identity_dir: args.identity_dir.clone(),
                namespace: args.pod_namespace.clone(),
                pod: args.pod_name.clone(),
                role: args.role.clone(),
                spiffe_id: trellis_contract::SpiffeId::for_service_account(
                    &args.trust_domain,
                    &args.pod_namespace,
                    &args.service_account,
                )
                .to_string(),
                proxy_version: env!("CARGO_PKG_VERSION").to_string(),
                renewal: Default::default(),
                served: Default::default(),
                files: Default::default(),
            };
            tracing::info!(%endpoint, pod = %args.pod_name, "mesh mode: connecting to the control plane");
            tokio::select! {
                _ = trellis_proxy::control::run(app.clone(), client) => {}
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = tokio::signal::ctrl_c() => tracing::info!("interrupt received"),
            }
        }
        (None, None) => anyhow::bail!("give --config FILE (standalone) or --push-endpoint URL (mesh mode)"),
    }
    match args.role.as_str() {
        "gateway" => app.drain_gateway().await,
        _ => app.drain().await,
    }
    Ok(())
}

fn init(args: InitArgs) -> anyhow::Result<()> {
    let cfg = CaptureConfig {
        proxy_uid: args.proxy_uid,
        exclude_inbound_ports: args.exclude_inbound_ports,
        exclude_outbound_ports: args.exclude_outbound_ports,
        exclude_outbound_cidrs: args.exclude_outbound_cidrs,
        include_inbound_ports: args.include_inbound_ports.0,
        include_outbound_ports: args.include_outbound_ports,
        include_outbound_cidrs: args.include_outbound_cidrs.0,
        dns_port: args.capture_dns.then_some(ports::DNS),
        ..CaptureConfig::default()
    };
    if args.dry_run {
        for r in capture::iptables_rules(&cfg) {
            println!("{} {}", args.iptables, r.join(" "));
        }
        return Ok(());
    }
    capture::install(&cfg, &args.iptables).context("installing capture rules failed")
}
