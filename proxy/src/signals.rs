//! The golden signals this proxy reports to the operator over its push subscription
//! (`trellis_contract::signals`): every [`trellis_push::SIGNALS_INTERVAL`], what its
//! `istio_requests_total` and `istio_request_duration_milliseconds` series counted since the
//! previous report, summed per edge — the other side's workload and namespace, the
//! destination service, and which side this proxy was on.
//!
//! # Guarantees
//! - Reports are differences of the metrics' own counters, so `/metrics` and the operator's
//!   view count the same requests; a request is in exactly one report (unless the report
//!   carrying it is lost with a broken subscription).
//! - The work is done at report time, off the request path: it reads the series under the
//!   metrics lock once and keeps one total per edge between reports.

use std::collections::HashMap;
use std::sync::Mutex;

use trellis_contract::signals::{Counts, EdgeSignals, LATENCY_SLOTS, MAX_EDGES, Report, Reporter};

use crate::metrics::{self, Metrics, RequestLabels, Security};

/// One edge, as a report names it.
type Edge = (Reporter, String, String, String);

/// The totals reported last, per edge.
#[derive(Debug, Default)]
pub struct Signals {
    reported: Mutex<HashMap<Edge, Counts>>,
}

fn edge_of(l: &RequestLabels) -> Edge {
    let (reporter, peer) = match l.conn.reporter {
        metrics::Reporter::Source => (Reporter::Source, &l.conn.destination),
        metrics::Reporter::Destination => (Reporter::Destination, &l.conn.source),
    };
    (
        reporter,
        peer.workload.clone(),
        peer.namespace.clone(),
        l.conn.destination_service.to_string(),
    )
}

impl Signals {
    /// What `metrics` counted since the previous call, per edge; `None` when nothing was.
    /// At most [`MAX_EDGES`] edges, the busiest first; the others stay for the next report.
    pub fn report(&self, metrics: &Metrics) -> Option<Report> {
        let mut totals: HashMap<Edge, Counts> = HashMap::new();
        metrics.each_request_series(|labels, requests, latency| {
            let counts = totals.entry(edge_of(labels)).or_insert_with(|| Counts {
                latency: vec![0; LATENCY_SLOTS],
                ..Counts::default()
            });
            counts.requests += requests;
            if labels.response_code >= 500 {
                counts.failures += requests;
            }
            if labels.conn.security == Security::MutualTls {
                counts.mtls += requests;
            }
            for (total, n) in counts.latency.iter_mut().zip(latency) {
                *total += n;
            }
        });
        let mut reported = self.reported.lock().expect("signals lock");
        let mut edges: Vec<(Edge, Counts)> = totals
            .iter()
            .filter_map(|(edge, now)| {
                let new = match reported.get(edge) {
                    Some(before) => now.since(before).unwrap_or_else(|| now.clone()),
                    None => now.clone(),
                };
                (!new.is_empty()).then(|| (edge.clone(), new))
            })
            .collect();
        edges.sort_by(|a, b| b.1.requests.cmp(&a.1.requests).then_with(|| a.0.cmp(&b.0)));
        edges.truncate(MAX_EDGES);
        for (edge, _) in &edges {
            if let Some(now) = totals.remove(edge) {
                reported.insert(edge.clone(), now);
            }
        }
        if edges.is_empty() {
            return None;
        }
        let edges = edges
            .into_iter()
            .map(
                |((reporter, peer_workload, peer_namespace, service), counts)| EdgeSignals {
                    reporter,
                    peer_workload,
                    peer_namespace,
                    service,
                    counts,
                },
            )
            .collect();
        Some(Report { edges })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::metrics::{ConnLabels, Peer};

    fn peer(workload: &str) -> Arc<Peer> {
        Arc::new(Peer {
            workload: workload.into(),
            namespace: "shop".into(),
            ..Peer::default()
        })
    }

    fn inbound(code: u16, security: Security) -> RequestLabels {
        RequestLabels {
            conn: ConnLabels {
                reporter: metrics::Reporter::Destination,
                source: peer("web"),
                destination: peer("payment"),
                destination_service: "payment.shop.svc.cluster.local".into(),
                response_flags: "-",
                security,
            },
            response_code: code,
            ..RequestLabels::default()
        }
    }

    fn latency(pairs: &[(usize, u64)]) -> Vec<u64> {
        Counts::in_buckets(0, 0, 0, pairs).latency
    }

    #[test]
    fn reports_sum_series_per_edge_and_carry_only_what_is_new() {
        let m = Metrics::default();
        let signals = Signals::default();
        assert_eq!(signals.report(&m), None, "nothing handled: nothing reported");
        m.record_request(inbound(200, Security::MutualTls), 3.0, 0, 0);
        m.record_request(inbound(200, Security::MutualTls), 3.0, 0, 0);
        m.record_request(inbound(503, Security::MutualTls), 70.0, 0, 0);
        m.record_request(inbound(200, Security::None), 0.2, 0, 0);
        let mut outbound = inbound(200, Security::Unknown);
        outbound.conn.reporter = metrics::Reporter::Source;
        outbound.conn.destination = peer("db");
        outbound.conn.destination_service = "db.shop.svc.cluster.local".into();
        m.record_request(outbound.clone(), 7000.0, 0, 0);
        let report = signals.report(&m).unwrap();
        assert_eq!(
            report.edges,
            vec![
                EdgeSignals {
                    reporter: Reporter::Destination,
                    peer_workload: "web".into(),
                    peer_namespace: "shop".into(),
                    service: "payment.shop.svc.cluster.local".into(),
                    counts: Counts {
                        requests: 4,
                        failures: 1,
                        mtls: 3,
                        // 0.2 ms in (0, 0.5]; 3 ms in (1, 5]; 70 ms in (50, 100].
                        latency: latency(&[(0, 1), (2, 2), (6, 1)]),
                    },
                },
                EdgeSignals {
                    reporter: Reporter::Source,
                    peer_workload: "db".into(),
                    peer_namespace: "shop".into(),
                    service: "db.shop.svc.cluster.local".into(),
                    counts: Counts {
                        requests: 1,
                        failures: 0,
                        mtls: 0,
                        // 7000 ms in (5000, 10000].
                        latency: latency(&[(12, 1)]),
                    },
                },
            ]
        );
        assert!(report.check().is_ok());
        assert_eq!(signals.report(&m), None, "reported once");
        m.record_request(outbound, 1e9, 0, 0);
        let report = signals.report(&m).unwrap();
        assert_eq!(report.edges.len(), 1);
        assert_eq!(report.edges[0].counts.requests, 1);
        assert_eq!(
            report.edges[0].counts.latency,
            latency(&[(19, 1)]),
            "past the last bucket"
        );
    }
}
