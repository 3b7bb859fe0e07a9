//! The proxy application: starts the servers around one [`Runtime`] (admin,
//! stats and health, DNS, the span exporter, the traffic listeners), applies
//! configurations atomically (validate, compile, bind new listeners, swap,
//! retire removed listeners; on any error keep the last good config), and
//! drains.

use crate::admin::{self, AdminRole};
use crate::logging::LogControl;
use crate::overload::{self, ConnectionBudget};
use crate::runtime::{Rejection, Runtime};
use crate::server::{self, ListenerHandle};
use crate::snapshot::{Snapshot, SnapshotError};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use trellis_contract::ProxyConfig;

/// Addresses and hooks for [`App::start`].
#[derive(Clone)]
pub struct AppConfig {
    /// Admin API (all endpoints); keep it on localhost.
    pub admin_addr: SocketAddr,
    /// Prometheus scrape port (`/metrics`).
    pub stats_addr: Option<SocketAddr>,
    /// Probe port (`/ready`, `/live`).
    pub health_addr: Option<SocketAddr>,
    /// DNS proxy (UDP and TCP on the same port).
    pub dns_addr: Option<SocketAddr>,
    /// Log level control for `/logging`.
    pub log_control: Option<Arc<dyn LogControl>>,
    /// Downstream connections all traffic listeners together may hold (the
    /// overload limit; the admin servers are outside it). `None`: derived from
    /// the file descriptor limit, [`crate::overload::default_max_connections`].
    pub max_downstream_connections: Option<u32>,
    /// The app's own metrics, merged into the stats port's answer
    /// ([`crate::app_metrics`]).
    pub app_metrics: Option<crate::app_metrics::AppMetrics>,
    /// The app's own probes the health port answers at `/app-health/…` ([`crate::probes`];
    /// the binary's from [`crate::settings::ENV_APP_PROBES`]).
    pub app_probes: crate::probes::AppProbes,
}

impl AppConfig {
    /// Admin on `admin_addr` and nothing else: no stats, health or DNS server, the connection
    /// budget derived from the descriptor limit, no log control, app metrics or app probes. Set the other
    /// fields on the result (`AppConfig { health_addr: …, ..AppConfig::admin_only(addr) }`).
    pub fn admin_only(admin_addr: SocketAddr) -> Self {
        Self {
            admin_addr,
            stats_addr: None,
            health_addr: None,
            dns_addr: None,
            log_control: None,
            max_downstream_connections: None,
            app_metrics: None,
            app_probes: Default::default(),
        }
    }
}

impl std::fmt::Debug for AppConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppConfig")
            .field("admin_addr", &self.admin_addr)
            .field("stats_addr", &self.stats_addr)
            .field("health_addr", &self.health_addr)
            .field("dns_addr", &self.dns_addr)
            .field("max_downstream_connections", &self.max_downstream_connections)
            .field("app_metrics", &self.app_metrics)
            .field("app_probes", &self.app_probes)
            .finish_non_exhaustive()
    }
}

/// Errors applying a config. The previous config stays in force.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// Invalid or uncompilable.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// A listener socket could not be bound.
    #[error(
        "config {version:?}: cannot bind listener {listener} on {address}: {source} (is another process using the port?)"
    )]
    Bind {
        /// Config version.
        version: String,
        /// Listener name.
        listener: String,
        /// Address.
        address: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The proxy is draining and takes no new config.
    #[error("the proxy is draining")]
    Draining,
}

impl ApplyError {
    /// Whether the same configuration may apply later as it is: a listener's address is in use
    /// (by another socket — a listener of a proxy process that has not let go of the port yet)
    /// or not assigned to this host yet. Anything else is the configuration's own fault, or the
    /// proxy going away.
    pub fn is_transient(&self) -> bool {
        use std::io::ErrorKind::{AddrInUse, AddrNotAvailable};
        matches!(self, ApplyError::Bind { source, .. } if matches!(source.kind(), AddrInUse | AddrNotAvailable))
    }
}

/// Run `work` on a blocking thread and wait for it: a sidecar's runtime is one thread
/// (`TRELLIS_WORKERS=1`), which carries every request, so CPU-heavy control work (compiling or
/// reading a configuration) runs off it and requests keep being served meanwhile. A panic in
/// `work` goes on here, as if it had run on the caller's thread.
pub(crate) async fn off_runtime_thread<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(work).await {
        Ok(done) => done,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// A running proxy.
#[derive(Debug)]
pub struct App {
    rt: Arc<Runtime>,
    listeners: tokio::sync::Mutex<HashMap<String, ListenerHandle>>,
    admin: Vec<(AdminRole, ListenerHandleAdmin)>,
    dns: Option<ListenerHandleAdmin>,
    exporter: tokio::task::JoinHandle<()>,
}

#[derive(Debug)]
struct ListenerHandleAdmin {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for App {
    fn drop(&mut self) {
        for (_, a) in &self.admin {
            a.task.abort();
        }
        if let Some(d) = &self.dns {
            d.task.abort();
        }
        self.exporter.abort();
    }
}

/// Bind the DNS proxy's UDP socket and TCP listener on the same port. With
/// port 0 the UDP socket picks the port; should TCP find it taken, try again
/// with another.
async fn bind_dns(addr: SocketAddr) -> std::io::Result<(tokio::net::UdpSocket, tokio::net::TcpListener)> {
    let mut attempts = 0;
    loop {
        let socket = tokio::net::UdpSocket::bind(addr).await?;
        let bound = socket.local_addr()?;
        match server::bind(bound) {
            Ok(tcp) => return Ok((socket, tcp)),
            Err(e) if addr.port() == 0 && attempts < 8 => {
                attempts += 1;
                tracing::debug!(%bound, error = %e, "DNS TCP port taken; picking another");
            }
            Err(e) => return Err(e),
        }
    }
}

impl App {
    /// Start with no configuration: admin servers up, not ready.
    pub async fn start(cfg: AppConfig) -> std::io::Result<Self> {
        let empty = Snapshot::build(ProxyConfig::empty("none"), None).expect("the empty config is valid");
        let max_connections = match cfg.max_downstream_connections {
            Some(n) => n,
            None => overload::default_max_connections(overload::descriptor_limit().unwrap_or_else(|e| {
                // POSIX's minimum for the limit.
                tracing::warn!(error = %e, "cannot read the file descriptor limit; assuming 1024");
                1024
            })),
        };
        tracing::debug!(max_connections, "downstream connection budget");
        let mut runtime = Runtime::new(empty, cfg.log_control.clone(), ConnectionBudget::new(max_connections));
        runtime.app_metrics = cfg.app_metrics.clone();
        runtime.app_probes = cfg.app_probes.clone();
        let rt = Arc::new(runtime);
        let mut admin = Vec::new();
        for (role, addr) in [
            (AdminRole::Admin, Some(cfg.admin_addr)),
            (AdminRole::Stats, cfg.stats_addr),
            (AdminRole::Health, cfg.health_addr),
        ] {
            let Some(addr) = addr else { continue };
            let listener = server::bind(addr)?;
            let addr = listener.local_addr()?;
            let task = tokio::spawn(admin::serve(Arc::clone(&rt), role, listener));
            admin.push((role, ListenerHandleAdmin { addr, task }));
        }
        let dns = match cfg.dns_addr {
            Some(addr) => {
                let (socket, tcp) = bind_dns(addr).await?;
                let addr = socket.local_addr()?;
                let task = tokio::spawn(crate::dns::serve(Arc::clone(&rt), socket, tcp));
                Some(ListenerHandleAdmin { addr, task })
            }
            None => None,
        };
        rt.set_server_ports(
            admin
                .iter()
                .map(|(_, a)| a.addr.port())
                .chain(dns.as_ref().map(|d| d.addr.port()))
                .collect(),
        );
        let exporter = crate::span_export::spawn(&rt);
        Ok(Self {
            rt,
            listeners: tokio::sync::Mutex::new(HashMap::new()),
            admin,
            dns,
            exporter,
        })
    }

    /// The shared run-time state.
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.rt
    }

    /// Bound address of an admin server.
    pub fn admin_addr(&self, role: AdminRole) -> Option<SocketAddr> {
        self.admin.iter().find(|(r, _)| *r == role).map(|(_, a)| a.addr)
    }

    /// Bound address of the DNS proxy.
    pub fn dns_addr(&self) -> Option<SocketAddr> {
        self.dns.as_ref().map(|d| d.addr)
    }

    /// Bound address of a traffic listener.
    pub async fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners.lock().await.get(name).map(|h| h.addr)
    }

    /// Apply a configuration atomically. On error nothing changes: the last
    /// good configuration keeps serving, and the error says why (a NACK).
    pub async fn apply(&self, config: ProxyConfig) -> Result<(), ApplyError> {
        if self.rt.is_draining() {
            return Err(ApplyError::Draining);
        }
        let version = config.version.clone();
        let result = self.apply_inner(config).await;
        match &result {
            Ok(()) => {
                self.rt.metrics.config_result(true);
                tracing::info!(%version, "configuration applied");
            }
            Err(e) => self.reject(Some(&version), &e.to_string()),
        }
        result
    }

    /// Record a configuration that was refused before it could be applied —
    /// one that does not parse (`version` unknown) or a pushed delta that does
    /// not apply: `/config_dump` shows it as `lastRejected` until a later
    /// configuration applies, and the last good configuration keeps serving.
    pub fn reject(&self, version: Option<&str>, error: &str) {
        self.rt.metrics.config_result(false);
        tracing::warn!(version = version.unwrap_or("-"), %error, "configuration rejected; keeping the last good one");
        self.rt.reject(Rejection {
            version: version.map(str::to_string),
            error: error.to_string(),
        });
    }

    async fn apply_inner(&self, config: ProxyConfig) -> Result<(), ApplyError> {
        // One apply at a time: the listener map lock serializes them.
        let mut listeners = self.listeners.lock().await;
        let previous = self.rt.snapshot();
        // why: compiling a configuration (validation, TLS material, route tables, one client
        // config per cluster) takes milliseconds to hundreds of them for a large mesh.
        let snapshot = off_runtime_thread(move || Snapshot::build(config, Some(&previous))).await?;
        let version = snapshot.settings.version.clone();

        // Bind new listeners first; if any bind fails, nothing changes.
        let mut fresh: Vec<(String, tokio::net::TcpListener)> = Vec::new();
        for l in &snapshot.settings.listeners {
            let addr: SocketAddr = l.address.parse().expect("validated address");
            let keep = listeners
                .get(&l.name)
                .is_some_and(|h| (addr.port() == 0 && h.addr.ip() == addr.ip()) || h.addr == addr);
            if keep {
                continue;
            }
            match server::bind(addr) {
                Ok(sock) => fresh.push((l.name.clone(), sock)),
                Err(source) => {
                    return Err(ApplyError::Bind {
                        version,
                        listener: l.name.clone(),
                        address: l.address.clone(),
                        source,
                    });
                }
            }
        }
        let drain = Duration::from_millis(snapshot.settings.drain_timeout_ms);
        let wanted: Vec<String> = snapshot.settings.listeners.iter().map(|l| l.name.clone()).collect();
        self.rt.install(snapshot);

        let mut retired = Vec::new();
        for (name, sock) in fresh {
            if let Some(old) = listeners.remove(&name) {
                retired.push(old);
            }
            let handle =
                server::spawn(Arc::clone(&self.rt), name.clone(), sock).map_err(|source| ApplyError::Bind {
                    version: version.clone(),
                    listener: name.clone(),
                    address: String::new(),
                    source,
                })?;
            listeners.insert(name, handle);
        }
        let removed: Vec<String> = listeners.keys().filter(|n| !wanted.contains(n)).cloned().collect();
        for name in removed {
            if let Some(h) = listeners.remove(&name) {
                retired.push(h);
            }
        }
        self.rt
            .set_listener_ports(listeners.values().map(|h| h.addr.port()).collect());
        for h in retired {
            tokio::spawn(h.shutdown(drain));
        }
        Ok(())
    }

    /// Drain a gateway (SIGTERM): report not ready at once, then keep accepting
    /// and serving for the config's drain timeout before [`App::drain`]. A
    /// gateway's callers reach it through a load balancer (a Service), which
    /// stops sending it new connections only once its endpoint is removed, and
    /// that travels after the signal; meanwhile every HTTP/1 response closes
    /// its connection (`Connection: close`), so keep-alive clients reconnect
    /// to a pod that stays instead of meeting a closed connection. (A sidecar
    /// is signalled only after its app stopped: nothing is sent its way then.)
    pub async fn drain_gateway(&self) {
        self.rt.start_draining();
        let serve_on = Duration::from_millis(self.rt.snapshot().settings.drain_timeout_ms);
        tracing::info!(?serve_on, "not ready; serving on while the load balancer lets go");
        tokio::time::sleep(serve_on).await;
        self.drain().await;
    }

    /// Drain (SIGTERM): report not ready, stop accepting, let in-flight
    /// requests finish within the config's drain timeout, then close.
    pub async fn drain(&self) {
        self.rt.start_draining();
        let drain = Duration::from_millis(self.rt.snapshot().settings.drain_timeout_ms);
        let handles: Vec<ListenerHandle> = self.listeners.lock().await.drain().map(|(_, h)| h).collect();
        tracing::info!(listeners = handles.len(), ?drain, "draining");
        futures::future::join_all(handles.into_iter().map(|h| h.shutdown(drain))).await;
        tracing::info!("drained");
    }
}
