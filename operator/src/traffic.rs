//! The operator's edge of the mesh-wide traffic view (`trellis_core::traffic`): the golden
//! signals each proxy sends on its push subscription go into one [`Store`], attributed to the
//! workload the operator's registry knows the subscribed pod by (never to what the report
//! says), and the admin API serves the view as JSON (`/traffic?window=SECONDS`).
//!
//! Each replica holds the reports of the proxies subscribed to it; `meshctl stat` asks every
//! replica and merges ([`trellis_core::traffic::View::merge`]). A replica that stops hands its
//! proxies over (`crate::push`): they send the reports it held again, with their ages, to the
//! replica they subscribe to next, which counts each in the slot it was first sent in.
//!
//! # Guarantees
//! - Bounded: the store's bounds ([`trellis_core::traffic::MAX_SERIES_PER_SLOT`] edges per
//!   10 s slot, 5 minutes), and a report over `MAX_EDGES` edges or whose counts do not add up
//!   is dropped whole and counted.
//! - No secrets: reports carry workload names, service names and counts only.

use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use trellis_core::compile::workload_name;
use trellis_core::registry::ObjectKey;
use trellis_core::snapshot::Snapshot;
use trellis_core::traffic::{
    DEFAULT_WINDOW_SECONDS, MAX_WINDOW_SECONDS, Reporting, Series, Store, View, WorkloadRef, check_window,
};

/// The value of `name` in `query` (`a=b&c=d`).
pub fn query_value<'q>(query: Option<&'q str>, name: &str) -> Option<&'q str> {
    query
        .unwrap_or_default()
        .split('&')
        .filter_map(|p| p.split_once('='))
        .find_map(|(k, v)| (k == name).then_some(v))
}

/// A traffic query the admin API refuses (its parameters), or could not answer.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// `window=` with something other than a number.
    #[error("window={0}: not a number of seconds (e.g. window=60)")]
    WindowNotANumber(String),
    /// A window that is not whole slots within the store's five minutes.
    #[error("{0}")]
    Window(String),
    /// A parameter the query does not take.
    #[error("unknown query parameter {pair:?}; the parameters are {known}")]
    UnknownParameter { pair: String, known: String },
    /// `/traffic/series` without `service=`.
    #[error("service=FQDN is required (e.g. service=web.shop.svc.cluster.local)")]
    ServiceRequired,
    /// The dashboard's `service=` not as `NAME.NAMESPACE`.
    #[error("service={0}: name the service as NAME.NAMESPACE (e.g. service=payment.shop)")]
    ServiceName(String),
    /// The replicas' views could not be merged.
    #[error("{0}")]
    Merge(String),
    /// The index's lock is poisoned.
    #[error("the index is unavailable")]
    IndexUnavailable,
    /// The answer could not be written.
    #[error("the answer could not be written as JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// The window `query` asks for (`window=SECONDS`, else `default`), checked; parameters other
/// than `window` and `others` are refused.
pub fn window(query: Option<&str>, others: &[&str], default: u64) -> Result<u64, QueryError> {
    let mut window = default;
    for pair in query.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("window", v)) => {
                window = v.parse().map_err(|_| QueryError::WindowNotANumber(v.to_string()))?;
            }
            Some((k, _)) if others.contains(&k) => {}
            _ => {
                let known: Vec<String> = std::iter::once("window=SECONDS".to_string())
                    .chain(others.iter().map(|o| format!("{o}=...")))
                    .collect();
                return Err(QueryError::UnknownParameter {
                    pair: pair.to_string(),
                    known: known.join(", "),
                });
            }
        }
    }
    check_window(window).map_err(QueryError::Window)?;
    Ok(window)
}

/// The reports of this replica's proxies.
#[derive(Debug, Default)]
pub struct Traffic {
    store: Mutex<Store>,
    reports: AtomicU64,
    rejected: AtomicU64,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Traffic {
    /// Counts one report of the proxy of `pod`, as the registry in `snapshot` knows it, in the
    /// slot of when it was first sent (`age_seconds`, for a report sent again after another
    /// replica stopped).
    pub fn record(&self, snapshot: &Snapshot, pod: &ObjectKey, gateway: bool, signals: &trellis_push::Signals) {
        let report = match signals.report() {
            Ok(r) => r,
            Err(error) => {
                self.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(proxy = %pod, %error, "dropped a golden-signals report");
                return;
            }
        };
        let Some(w) = snapshot.registry.workloads.get(pod) else {
            self.rejected.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(proxy = %pod, "a report from a pod the registry does not know (yet); dropped");
            return;
        };
        let by = Reporting {
            workload: WorkloadRef::new(&pod.namespace, workload_name(w)),
            gateway,
        };
        self.reports.fetch_add(1, Ordering::Relaxed);
        // A report sent again after a handover counts in the slot it was first sent in.
        let dropped = self
            .store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .record_aged(now_unix(), u64::from(signals.age_seconds), &by, &report);
        if dropped > 0 {
            tracing::warn!(proxy = %pod, dropped, "the traffic view is full for this slot; edges dropped");
        }
    }

    /// The view of the last `window_seconds`.
    pub fn view(&self, window_seconds: u64) -> View {
        self.store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .view(now_unix(), window_seconds)
    }

    /// The edges into `service` (FQDN) slot by slot over the last `window_seconds`.
    pub fn series(&self, window_seconds: u64, service: &str) -> Series {
        self.store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .series(now_unix(), window_seconds, service)
    }

    /// Answers `/traffic?window=SECONDS` (default 60): the view as JSON, or why the query is
    /// refused.
    pub fn answer(&self, query: Option<&str>) -> Result<String, QueryError> {
        let window = window(query, &[], DEFAULT_WINDOW_SECONDS)?;
        Ok(serde_json::to_string(&self.view(window))?)
    }

    /// Answers `/traffic/series?service=FQDN&window=SECONDS` (default 300): the edges into
    /// the service slot by slot, as JSON, or why the query is refused.
    pub fn answer_series(&self, query: Option<&str>) -> Result<String, QueryError> {
        let window = window(query, &["service"], MAX_WINDOW_SECONDS)?;
        let service = query_value(query, "service")
            .filter(|s| !s.is_empty())
            .ok_or(QueryError::ServiceRequired)?;
        Ok(serde_json::to_string(&self.series(window, service))?)
    }

    /// The collection's counters, in Prometheus text format.
    pub fn render_metrics(&self, out: &mut String) {
        let dropped = self
            .store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .dropped();
        for (name, help, v) in [
            (
                "trellis_operator_signal_reports_total",
                "Golden-signal reports taken from proxies.",
                self.reports.load(Ordering::Relaxed),
            ),
            (
                "trellis_operator_signal_reports_rejected_total",
                "Golden-signal reports dropped: malformed, over the bounds, or from a pod not in the registry.",
                self.rejected.load(Ordering::Relaxed),
            ),
            (
                "trellis_operator_signal_edges_dropped_total",
                "Edges of reports dropped because the traffic view's slot was full.",
                dropped,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        }
    }
}

#[cfg(test)]
mod tests {
    use trellis_contract::signals::{Counts, EdgeSignals, Report};

    use super::*;

    fn signals(report: &Report) -> trellis_push::Signals {
        trellis_push::Signals {
            report_json: serde_json::to_vec(report).unwrap(),
            age_seconds: 0,
        }
    }

    fn snapshot() -> Snapshot {
        Snapshot::from_yaml(
            "apiVersion: v1
kind: Pod
metadata: {name: web-5d8f-x7k2p, namespace: shop, labels: {app: web, pod-template-hash: 5d8f}}
spec: {serviceAccountName: web, containers: [{name: app, image: web}, {name: trellis-proxy, image: proxy}]}
status: {podIP: 10.0.0.5}
",
        )
        .unwrap()
    }

    #[test]
    fn reports_count_for_the_pods_workload_and_bad_ones_are_refused() {
        let traffic = Traffic::default();
        let pod = ObjectKey::new("shop", "web-5d8f-x7k2p");
        let report = Report {
            edges: vec![EdgeSignals {
                peer_namespace: "shop".into(),
                peer_workload: "client".into(),
                service: "web.shop.svc.cluster.local".into(),
                counts: Counts::in_buckets(3, 1, 3, &[(2, 3)]),
                ..EdgeSignals::default()
            }],
        };
        let snap = snapshot();
        traffic.record(&snap, &pod, false, &signals(&report));
        let view: View = serde_json::from_str(&traffic.answer(Some("window=60")).unwrap()).unwrap();
        assert_eq!(view.edges.len(), 1);
        assert_eq!(view.edges[0].destination, WorkloadRef::new("shop", "web"));
        assert_eq!(view.edges[0].counts.requests, 3);
        // Malformed, inconsistent, or from an unknown pod: dropped and counted.
        traffic.record(
            &snap,
            &pod,
            false,
            &trellis_push::Signals {
                report_json: b"{".to_vec(),
                age_seconds: 0,
            },
        );
        let mut bad = report.clone();
        bad.edges[0].counts.failures = 4;
        traffic.record(&snap, &pod, false, &signals(&bad));
        traffic.record(&snap, &ObjectKey::new("shop", "ghost"), false, &signals(&report));
        let mut metrics = String::new();
        traffic.render_metrics(&mut metrics);
        assert!(
            metrics.contains("trellis_operator_signal_reports_total 1\n"),
            "{metrics}"
        );
        assert!(
            metrics.contains("trellis_operator_signal_reports_rejected_total 3\n"),
            "{metrics}"
        );
        assert_eq!(traffic.view(60).edges[0].counts.requests, 3);
        // One service's edges slot by slot: the current slot holds the report.
        let series: Series = serde_json::from_str(
            &traffic
                .answer_series(Some("service=web.shop.svc.cluster.local&window=30"))
                .unwrap(),
        )
        .unwrap();
        assert_eq!(series.points.len(), 3);
        assert_eq!(series.points[2].edges[0].counts.requests, 3);
        assert!(series.points[..2].iter().all(|p| p.edges.is_empty()));
        let other: Series = serde_json::from_str(
            &traffic
                .answer_series(Some("service=db.shop.svc.cluster.local"))
                .unwrap(),
        )
        .unwrap();
        assert_eq!(other.points.len(), 30, "five minutes by default");
        assert!(other.points.iter().all(|p| p.edges.is_empty()));
        assert!(
            traffic
                .answer_series(None)
                .unwrap_err()
                .to_string()
                .contains("service=FQDN is required")
        );
        // Queries are checked.
        assert!(traffic.answer(None).is_ok());
        let refused = |query| traffic.answer(Some(query)).unwrap_err();
        assert!(refused("window=7").to_string().contains("multiple of 10s"));
        assert!(matches!(refused("window=x"), QueryError::WindowNotANumber(v) if v == "x"));
        assert!(refused("window=x").to_string().contains("not a number"));
        assert!(refused("ns=shop").to_string().contains("unknown query parameter"));
    }
}
