//! The mesh-wide traffic view: the proxies' golden-signal reports
//! (`trellis_contract::signals`) summed per edge — source workload → destination workload,
//! through a service — over the last minutes, and the figures `meshctl stat` and `meshctl top`
//! print: requests per second, success rate, p50/p99 latency and mTLS share, per workload,
//! service, namespace or edge. Pure: the operator feeds [`Store`] with the time and the
//! reporting proxy's workload; the [`View`] it serves is what meshctl merges and prints.
//!
//! Which side counts: a request is counted once, by the proxy that served it — the
//! destination's sidecar (its inbound listener, which alone knows whether the client came over
//! mutual TLS and which workload it was), or a gateway for the requests it took from outside
//! the mesh (their client is unknown, and none is mutual TLS). Requests to workloads without a
//! proxy are not in the view.
//!
//! # Guarantees
//! - Memory is bounded whatever proxies send: [`RETAINED_SLOTS`] slots of [`SLOT_SECONDS`],
//!   each of at most [`MAX_SERIES_PER_SLOT`] edges (a report's edges past that are dropped
//!   and counted); a view holds at most [`MAX_VIEW_EDGES`] edges, the busiest.
//! - Views are additive: operator replicas each serve the proxies subscribed to them, and
//!   [`View::merge`] of their views is the mesh's.
//!
//! # Caveats
//! - A report counts in the slot it arrives in (a report sent again after a replica stopped,
//!   in the slot it was first sent in: [`Store::record_aged`]); a window of N seconds is the
//!   last N/10 slots, the current one included, so its rates are over up to 10 s less than N.

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde::{Deserialize, Serialize};
use trellis_contract::signals::{Counts, Report, Reporter};

/// The length of one slot, in seconds (the proxies report as often: `SIGNALS_INTERVAL`).
pub const SLOT_SECONDS: u64 = 10;
/// Slots kept: five minutes, the longest window.
pub const RETAINED_SLOTS: usize = 30;
/// The longest window, in seconds.
pub const MAX_WINDOW_SECONDS: u64 = SLOT_SECONDS * RETAINED_SLOTS as u64;
/// The window `meshctl stat` asks for by default, in seconds (linkerd viz stat's).
pub const DEFAULT_WINDOW_SECONDS: u64 = 60;
/// Edges one slot holds at most.
// why: an edge's counts are ~200 bytes with its names; 30 slots × 4096 edges bound the
// store near 25 MiB, half the operator's budget for collection at 1000 proxies, whose meshes
// have a few thousand workload edges at most.
pub const MAX_SERIES_PER_SLOT: usize = 4096;
/// Edges one view holds at most (the busiest).
pub const MAX_VIEW_EDGES: usize = 4096;

/// A workload: its namespace and name (Deployment or similar). Empty: unknown.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadRef {
    /// Namespace.
    pub namespace: String,
    /// Workload name.
    pub name: String,
}

impl WorkloadRef {
    /// A workload.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        WorkloadRef {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl std::fmt::Display for WorkloadRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.namespace.as_str(), self.name.as_str()) {
            ("", "") => f.write_str("unknown"),
            (ns, "") => write!(f, "{ns}/unknown"),
            (ns, name) => write!(f, "{ns}/{name}"),
        }
    }
}

/// Who sent a report: the workload of the proxy's pod, from the operator's registry (never
/// from the report), and whether the proxy is a gateway.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reporting {
    /// The proxy's own workload.
    pub workload: WorkloadRef,
    /// A gateway (else a sidecar).
    pub gateway: bool,
}

/// One edge of the view: requests from `source` to `destination` through `service`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Edge {
    /// The client workload (unknown for clients outside the mesh).
    pub source: WorkloadRef,
    /// The serving workload.
    pub destination: WorkloadRef,
    /// The destination service's FQDN (empty: a gateway's requests from outside).
    pub service: String,
    /// What was counted.
    pub counts: Counts,
}

type Key = (WorkloadRef, WorkloadRef, String);

/// The reports of the last [`RETAINED_SLOTS`] slots.
#[derive(Debug, Default)]
pub struct Store {
    /// (slot number — Unix time / [`SLOT_SECONDS`] —, its edges), oldest first.
    slots: VecDeque<(u64, HashMap<Key, Counts>)>,
    dropped: u64,
}

impl Store {
    /// Counts `report`, sent by `by`, at `now_unix`. Returns the edges dropped because the
    /// slot was full. Edges the view does not count (a sidecar's client side) are skipped.
    pub fn record(&mut self, now_unix: u64, by: &Reporting, report: &Report) -> usize {
        self.record_aged(now_unix, 0, by, report)
    }

    /// Counts `report`, first sent `age_seconds` before `now_unix`, in the slot of that time:
    /// a report a proxy sends again after the replica that held it stopped. One older than the
    /// retained slots is not counted (it would have left every window). Returns the edges
    /// dropped because the slot was full.
    pub fn record_aged(&mut self, now_unix: u64, age_seconds: u64, by: &Reporting, report: &Report) -> usize {
        let now = now_unix / SLOT_SECONDS;
        let slot = now_unix.saturating_sub(age_seconds) / SLOT_SECONDS;
        while self
            .slots
            .front()
            .is_some_and(|(s, _)| s + RETAINED_SLOTS as u64 <= now)
        {
            self.slots.pop_front();
        }
        if slot + RETAINED_SLOTS as u64 <= now {
            return 0;
        }
        // Slots stay oldest first: a new one goes where its number belongs.
        let at = self.slots.partition_point(|(s, _)| *s < slot);
        if self.slots.get(at).is_none_or(|(s, _)| *s != slot) {
            self.slots.insert(at, (slot, HashMap::new()));
        }
        let Some((_, edges)) = self.slots.get_mut(at) else {
            return 0;
        };
        let mut dropped = 0;
        for e in &report.edges {
            let key = match (e.reporter, by.gateway) {
                (Reporter::Destination, false) => (
                    WorkloadRef::new(&e.peer_namespace, &e.peer_workload),
                    by.workload.clone(),
                    e.service.clone(),
                ),
                (Reporter::Source, true) => (WorkloadRef::default(), by.workload.clone(), String::new()),
                _ => continue,
            };
            if edges.len() >= MAX_SERIES_PER_SLOT && !edges.contains_key(&key) {
                dropped += 1;
                continue;
            }
            edges.entry(key).or_default().add(&e.counts);
        }
        self.dropped += dropped as u64;
        dropped
    }

    /// Edges dropped so far because a slot was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// The edges of the last `window_seconds` (rounded up to whole slots, at most
    /// [`MAX_WINDOW_SECONDS`]) at `now_unix`.
    pub fn view(&self, now_unix: u64, window_seconds: u64) -> View {
        let window = window_seconds.clamp(SLOT_SECONDS, MAX_WINDOW_SECONDS);
        let slots = window.div_ceil(SLOT_SECONDS);
        let first = (now_unix / SLOT_SECONDS + 1).saturating_sub(slots);
        let mut sums: HashMap<&Key, Counts> = HashMap::new();
        for (_, edges) in self.slots.iter().filter(|(s, _)| *s >= first) {
            for (key, counts) in edges {
                sums.entry(key).or_default().add(counts);
            }
        }
        View::of(
            slots * SLOT_SECONDS,
            sums.into_iter().map(|((source, destination, service), counts)| Edge {
                source: source.clone(),
                destination: destination.clone(),
                service: service.clone(),
                counts,
            }),
        )
    }
}

impl Store {
    /// The edges into `service` (its FQDN) in each slot of the last `window_seconds` at
    /// `now_unix`, oldest first, a quiet slot included as an empty point: what a service's
    /// golden signals over time are drawn from. Bounded by one service's edges per slot.
    pub fn series(&self, now_unix: u64, window_seconds: u64, service: &str) -> Series {
        let window = window_seconds.clamp(SLOT_SECONDS, MAX_WINDOW_SECONDS);
        let last = now_unix / SLOT_SECONDS;
        let first = (last + 1).saturating_sub(window.div_ceil(SLOT_SECONDS));
        let points = (first..=last)
            .map(|slot| {
                let mut edges: Vec<Edge> = self
                    .slots
                    .iter()
                    .filter(|(s, _)| *s == slot)
                    .flat_map(|(_, edges)| edges.iter())
                    .filter(|((_, _, svc), _)| svc == service)
                    .map(|((source, destination, service), counts)| Edge {
                        source: source.clone(),
                        destination: destination.clone(),
                        service: service.clone(),
                        counts: counts.clone(),
                    })
                    .collect();
                edges.sort_by(|a, b| (&a.source, &a.destination).cmp(&(&b.source, &b.destination)));
                Point {
                    start_unix: slot * SLOT_SECONDS,
                    edges,
                }
            })
            .collect();
        Series {
            slot_seconds: SLOT_SECONDS,
            points,
        }
    }
}

/// One service's edges slot by slot, oldest first: what an operator replica serves on
/// `/traffic/series`, and what the dashboard merges.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Series {
    /// The length of a slot, in seconds.
    pub slot_seconds: u64,
    /// One point per slot.
    pub points: Vec<Point>,
}

/// The edges of one slot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Point {
    /// When the slot starts (seconds since the epoch).
    pub start_unix: u64,
    /// Its edges.
    pub edges: Vec<Edge>,
}

impl Series {
    /// The series of several operator replicas as one: edges summed slot by slot (a slot
    /// one replica lacks counts as empty there).
    pub fn merge(all: impl IntoIterator<Item = Series>) -> Series {
        let mut slots: BTreeMap<u64, Vec<Edge>> = BTreeMap::new();
        for series in all {
            for p in series.points {
                slots.entry(p.start_unix).or_default().extend(p.edges);
            }
        }
        Series {
            slot_seconds: SLOT_SECONDS,
            points: slots
                .into_iter()
                .map(|(start_unix, edges)| Point {
                    start_unix,
                    edges: View::of(SLOT_SECONDS, edges).edges,
                })
                .collect(),
        }
    }

    /// The figures of each slot, oldest first.
    pub fn stats(&self) -> Vec<(u64, Stat)> {
        self.points
            .iter()
            .map(|p| {
                let mut counts = Counts::default();
                for e in &p.edges {
                    counts.add(&e.counts);
                }
                (p.start_unix, Stat::of(&counts, self.slot_seconds))
            })
            .collect()
    }
}

/// Whether a window asked for is one the store keeps: whole slots, up to five minutes.
pub fn check_window(seconds: u64) -> Result<(), String> {
    if seconds == 0 || seconds > MAX_WINDOW_SECONDS || !seconds.is_multiple_of(SLOT_SECONDS) {
        return Err(format!(
            "window {seconds}s: use a multiple of {SLOT_SECONDS}s up to {MAX_WINDOW_SECONDS}s (5m)"
        ));
    }
    Ok(())
}

/// The traffic of one window: what an operator replica serves, and what meshctl merges.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct View {
    /// The window's length, in seconds.
    pub window_seconds: u64,
    /// Every edge with requests in the window, sorted.
    pub edges: Vec<Edge>,
    /// Edges left out (the quietest) to stay within [`MAX_VIEW_EDGES`].
    pub truncated: usize,
}

impl View {
    /// A view of `edges` (summed by edge, the busiest [`MAX_VIEW_EDGES`] kept, sorted).
    fn of(window_seconds: u64, edges: impl IntoIterator<Item = Edge>) -> View {
        let mut by_key: BTreeMap<Key, Counts> = BTreeMap::new();
        for e in edges {
            by_key
                .entry((e.source, e.destination, e.service))
                .or_default()
                .add(&e.counts);
        }
        let mut edges: Vec<Edge> = by_key
            .into_iter()
            .map(|((source, destination, service), counts)| Edge {
                source,
                destination,
                service,
                counts,
            })
            .collect();
        let mut truncated = 0;
        if edges.len() > MAX_VIEW_EDGES {
            edges.sort_by_key(|e| std::cmp::Reverse(e.counts.requests));
            truncated = edges.len() - MAX_VIEW_EDGES;
            edges.truncate(MAX_VIEW_EDGES);
            edges.sort_by(|a, b| (&a.source, &a.destination, &a.service).cmp(&(&b.source, &b.destination, &b.service)));
        }
        View {
            window_seconds,
            edges,
            truncated,
        }
    }

    /// The views of several operator replicas as one. They must share a window.
    pub fn merge(views: impl IntoIterator<Item = View>) -> Result<View, String> {
        let views: Vec<View> = views.into_iter().collect();
        let window = views.first().map_or(DEFAULT_WINDOW_SECONDS, |v| v.window_seconds);
        if let Some(other) = views.iter().find(|v| v.window_seconds != window) {
            return Err(format!(
                "the replicas answered for windows of {window}s and {}s",
                other.window_seconds
            ));
        }
        let truncated: usize = views.iter().map(|v| v.truncated).sum();
        let mut merged = View::of(window, views.into_iter().flat_map(|v| v.edges));
        merged.truncated += truncated;
        Ok(merged)
    }

    /// One row per serving workload.
    pub fn workloads(&self) -> Vec<Row> {
        self.rows(|e| Some((e.destination.namespace.clone(), e.destination.name.clone())))
    }

    /// One row per destination service (`name` in `namespace`, from its FQDN); a gateway's
    /// requests from outside have none.
    pub fn services(&self) -> Vec<Row> {
        self.rows(|e| {
            let mut parts = e.service.split('.');
            let (name, namespace) = (parts.next()?, parts.next()?);
            (!name.is_empty()).then(|| (namespace.to_string(), name.to_string()))
        })
    }

    /// One row per namespace of serving workloads (`name` is the namespace too).
    pub fn namespaces(&self) -> Vec<Row> {
        self.rows(|e| Some((e.destination.namespace.clone(), e.destination.namespace.clone())))
    }

    /// Rows grouped by `group` (namespace, name) of each edge, sorted.
    fn rows(&self, group: impl Fn(&Edge) -> Option<(String, String)>) -> Vec<Row> {
        let mut sums: BTreeMap<(String, String), Counts> = BTreeMap::new();
        for e in &self.edges {
            if let Some(key) = group(e) {
                sums.entry(key).or_default().add(&e.counts);
            }
        }
        sums.into_iter()
            .map(|((namespace, name), counts)| Row {
                namespace,
                name,
                stat: Stat::of(&counts, self.window_seconds),
            })
            .collect()
    }

    /// The edges with their figures.
    pub fn edge_rows(&self) -> Vec<EdgeRow> {
        self.edges
            .iter()
            .map(|e| EdgeRow {
                source: e.source.clone(),
                destination: e.destination.clone(),
                service: e.service.clone(),
                stat: Stat::of(&e.counts, self.window_seconds),
            })
            .collect()
    }
}

/// The figures of some requests over a window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Stat {
    /// Requests in the window.
    pub requests: u64,
    /// Of those, answered 5xx.
    pub failures: u64,
    /// Of those, over mutual TLS.
    pub mtls: u64,
    /// Requests per second over the window.
    pub rps: f64,
    /// Share of requests not answered 5xx (0..=1); none without requests.
    pub success_rate: Option<f64>,
    /// Median latency, ms ([`Counts::quantile_ms`]).
    pub p50_ms: Option<f64>,
    /// 99th percentile latency, ms.
    pub p99_ms: Option<f64>,
    /// Share of requests over mutual TLS (0..=1); none without requests.
    pub mtls_share: Option<f64>,
}

impl Stat {
    /// The figures of `counts` over `window_seconds`.
    pub fn of(counts: &Counts, window_seconds: u64) -> Stat {
        let share = |n: u64| (counts.requests > 0).then(|| n as f64 / counts.requests as f64);
        Stat {
            requests: counts.requests,
            failures: counts.failures,
            mtls: counts.mtls,
            rps: counts.requests as f64 / window_seconds.max(1) as f64,
            success_rate: share(counts.requests - counts.failures.min(counts.requests)),
            p50_ms: counts.quantile_ms(0.5),
            p99_ms: counts.quantile_ms(0.99),
            mtls_share: share(counts.mtls),
        }
    }
}

/// A workload's, service's or namespace's figures.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Row {
    /// Namespace.
    pub namespace: String,
    /// Workload, service or namespace name.
    pub name: String,
    /// The figures.
    #[serde(flatten)]
    pub stat: Stat,
}

/// An edge's figures.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EdgeRow {
    /// The client workload.
    pub source: WorkloadRef,
    /// The serving workload.
    pub destination: WorkloadRef,
    /// The destination service's FQDN.
    pub service: String,
    /// The figures.
    #[serde(flatten)]
    pub stat: Stat,
}

#[cfg(test)]
#[path = "traffic/tests.rs"]
mod tests;
