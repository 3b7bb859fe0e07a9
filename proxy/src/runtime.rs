//! The proxy's shared run-time state: the configuration in force (swapped
//! atomically; every request keeps the snapshot it started with), readiness
//! and drain, the last refused configuration, metrics, the span sink, the
//! downstream connection budget, log control and the ports the proxy listens
//! on (which a `CONNECT` tunnel may not reach). Every server — traffic
//! listeners, admin, DNS, the span exporter — reads it; only the application
//! changes it, and it knows none of them.

use crate::logging::LogControl;
use crate::metrics::Metrics;
use crate::overload::ConnectionBudget;
use crate::snapshot::Snapshot;
use crate::spans::SpanSink;
use arc_swap::ArcSwap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// State shared by every listener, connection and the admin API.
pub struct Runtime {
    snapshot: ArcSwap<Snapshot>,
    /// Metrics registry.
    pub metrics: Metrics,
    /// Finished spans waiting for export.
    pub spans: SpanSink,
    configured: AtomicBool,
    draining: AtomicBool,
    last_rejection: Mutex<Option<Rejection>>,
    /// Run-time log level control, if the binary installed one.
    pub log_control: Option<Arc<dyn LogControl>>,
    /// The downstream connections every traffic listener draws from.
    pub connections: ConnectionBudget,
    /// The app's own metrics, served after the proxy's on the stats port.
    pub app_metrics: Option<crate::app_metrics::AppMetrics>,
    /// The app's own probes, answered on the health port (`/app-health/…`).
    pub app_probes: crate::probes::AppProbes,
    /// The ports the proxy listens on: its servers' (admin, stats, health, DNS) and its
    /// traffic listeners', as bound.
    own_ports: Mutex<OwnPorts>,
}

/// The ports the proxy listens on, as bound (a configured port 0 is the one picked).
#[derive(Debug, Default)]
struct OwnPorts {
    /// Admin, stats, health and DNS: bound once at start.
    servers: Vec<u16>,
    /// The traffic listeners of the configuration in force.
    listeners: Vec<u16>,
}

/// The last configuration the proxy refused, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Its version; `None` when it could not even be parsed to read one.
    pub version: Option<String>,
    /// The error, with the field path where there is one.
    pub error: String,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("version", &self.snapshot().settings.version)
            .field("draining", &self.draining)
            .finish_non_exhaustive()
    }
}

impl Runtime {
    /// A runtime serving `initial` (not yet configured: not ready).
    pub fn new(initial: Snapshot, log_control: Option<Arc<dyn LogControl>>, connections: ConnectionBudget) -> Self {
        Self {
            snapshot: ArcSwap::from_pointee(initial),
            metrics: Metrics::default(),
            spans: SpanSink::default(),
            configured: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            last_rejection: Mutex::new(None),
            log_control,
            connections,
            app_metrics: None,
            app_probes: Default::default(),
            own_ports: Mutex::new(OwnPorts::default()),
        }
    }

    /// Record the ports the proxy's servers (admin, stats, health, DNS) listen on.
    pub(crate) fn set_server_ports(&self, ports: Vec<u16>) {
        self.own_ports.lock().unwrap_or_else(|e| e.into_inner()).servers = ports;
    }

    /// Record the ports the traffic listeners in force listen on.
    pub(crate) fn set_listener_ports(&self, ports: Vec<u16>) {
        self.own_ports.lock().unwrap_or_else(|e| e.into_inner()).listeners = ports;
    }

    /// Whether the proxy itself listens on `port` (a server's or a traffic listener's).
    pub fn listens_on(&self, port: u16) -> bool {
        let own = self.own_ports.lock().unwrap_or_else(|e| e.into_inner());
        own.servers.contains(&port) || own.listeners.contains(&port)
    }

    /// The configuration in force.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Ready: a configuration is applied, its mesh identity (when needed) is
    /// loaded, and the proxy is not draining.
    pub fn is_ready(&self) -> bool {
        if !self.configured.load(Ordering::Acquire) || self.draining.load(Ordering::Acquire) {
            return false;
        }
        let snap = self.snapshot();
        !snap.needs_identity() || snap.identity.is_some()
    }

    /// Is the proxy draining?
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// The last rejected configuration and why, until a later one applies.
    pub fn last_rejection(&self) -> Option<Rejection> {
        self.last_rejection.lock().expect("rejection lock").clone()
    }

    /// Put a configuration in force: requests that start from now on use it,
    /// the proxy counts as configured and any earlier rejection is history.
    pub(crate) fn install(&self, snapshot: Snapshot) {
        self.snapshot.store(Arc::new(snapshot));
        self.configured.store(true, Ordering::Release);
        *self.last_rejection.lock().expect("rejection lock") = None;
    }

    /// Record a refused configuration (the one in force stays).
    pub(crate) fn reject(&self, rejection: Rejection) {
        *self.last_rejection.lock().expect("rejection lock") = Some(rejection);
    }

    /// Start draining: `/ready` turns 503 from now on.
    pub(crate) fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }
}
