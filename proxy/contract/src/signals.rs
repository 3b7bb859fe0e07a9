//! Golden signals: what a proxy tells the operator, over the push subscription it already
//! holds, about the HTTP and gRPC requests it handled since its previous report — per edge
//! (the other side's workload and the destination service), the requests, the failures
//! (5xx answers, the failure of Istio's dashboards), those over mutual TLS, and their
//! durations in the buckets of `istio_request_duration_milliseconds`. The operator sums
//! reports into its mesh-wide view (`trellis_core::traffic`); `meshctl stat` prints it.
//!
//! # Guarantees
//! - [`Counts`] are additive: summing reports, edges or operator replicas is [`Counts::add`],
//!   and every figure ([`Counts::quantile_ms`] included) is computed from sums, never averaged.
//! - [`Report::check`] bounds what a proxy may send ([`MAX_EDGES`] edges, consistent counts);
//!   the operator drops a report that fails it whole.
//!
//! # Caveats
//! - A report names only the other side of each edge: the operator takes the reporting
//!   proxy's own workload from its registry (the subscription is authenticated), never from
//!   the report.
//! - Opaque TCP connections are not in reports (they have no requests, status or latency);
//!   their bytes and connections are in the proxies' `/metrics`.

use serde::{Deserialize, Serialize};

/// The upper bounds (milliseconds) of the latency buckets: Envoy's default buckets, which the
/// proxy's `istio_request_duration_milliseconds` uses, so reports and `/metrics` agree.
pub const LATENCY_BUCKETS_MS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0, 60000.0, 300000.0,
    600000.0, 1800000.0, 3600000.0,
];

/// Entries of [`Counts::latency`]: one per bucket, and one for durations past the last.
pub const LATENCY_SLOTS: usize = LATENCY_BUCKETS_MS.len() + 1;

/// The most edges one report may carry.
// why: a proxy reports one edge per (peer workload, service, side) it saw in ten seconds; a
// thousand is far beyond a real workload's fan-in and bounds what one proxy makes the operator
// parse and hold.
pub const MAX_EDGES: usize = 1000;

/// Which side of a request the reporting proxy was on (Istio's `reporter` label).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Reporter {
    /// The client side: a sidecar's outbound listener, or a gateway.
    Source,
    /// The server side: a sidecar's inbound listener.
    #[default]
    Destination,
}

/// What one proxy saw since its previous report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// One entry per edge with requests in the interval.
    pub edges: Vec<EdgeSignals>,
}

/// The requests of one edge, seen from one side.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EdgeSignals {
    /// Which side reports.
    pub reporter: Reporter,
    /// The other side's workload (empty: unknown — a client outside the mesh, or one whose
    /// metadata did not arrive).
    pub peer_workload: String,
    /// The other side's namespace (empty: unknown).
    pub peer_namespace: String,
    /// The destination service's FQDN (empty: unknown).
    pub service: String,
    /// The requests.
    pub counts: Counts,
}

/// Request counts and latencies, additive.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Counts {
    /// Requests answered.
    pub requests: u64,
    /// Of those, answered with a 5xx status.
    pub failures: u64,
    /// Of those, over mutual TLS as the server side verified it (known to the destination's
    /// proxy only: a client's proxy reports 0).
    pub mtls: u64,
    /// Requests per latency bucket: entry `i` counts durations in
    /// `(LATENCY_BUCKETS_MS[i-1], LATENCY_BUCKETS_MS[i]]`, the last entry those past the last
    /// bound. Empty when there are no requests; else [`LATENCY_SLOTS`] entries summing to
    /// `requests`.
    pub latency: Vec<u64>,
}

impl Counts {
    /// `requests`, of which `failures` failed and `mtls` came over mutual TLS, with their
    /// durations given as (bucket index, count) pairs.
    pub fn in_buckets(requests: u64, failures: u64, mtls: u64, buckets: &[(usize, u64)]) -> Counts {
        let mut latency = vec![0; LATENCY_SLOTS];
        for (i, n) in buckets {
            if let Some(slot) = latency.get_mut(*i) {
                *slot += n;
            }
        }
        Counts {
            requests,
            failures,
            mtls,
            latency,
        }
    }

    /// Whether nothing was counted.
    pub fn is_empty(&self) -> bool {
        self.requests == 0
    }

    /// Adds `other` into `self`.
    pub fn add(&mut self, other: &Counts) {
        self.requests += other.requests;
        self.failures += other.failures;
        self.mtls += other.mtls;
        if self.latency.len() < other.latency.len() {
            self.latency.resize(other.latency.len(), 0);
        }
        for (a, b) in self.latency.iter_mut().zip(&other.latency) {
            *a += b;
        }
    }

    /// What was counted since `earlier` (counters of one series at two times); `None` when a
    /// counter went down — the series restarted — so the caller takes `self` whole.
    pub fn since(&self, earlier: &Counts) -> Option<Counts> {
        let sub = |a: u64, b: u64| a.checked_sub(b);
        let mut latency = Vec::with_capacity(self.latency.len());
        for (i, now) in self.latency.iter().enumerate() {
            latency.push(sub(*now, earlier.latency.get(i).copied().unwrap_or(0))?);
        }
        if earlier.latency.len() > self.latency.len() {
            return None;
        }
        let requests = sub(self.requests, earlier.requests)?;
        Some(Counts {
            requests,
            failures: sub(self.failures, earlier.failures)?,
            mtls: sub(self.mtls, earlier.mtls)?,
            latency: if requests == 0 { Vec::new() } else { latency },
        })
    }

    /// The `q` quantile (0..=1) of the durations, in milliseconds, estimated as Prometheus'
    /// `histogram_quantile` does: linear within the bucket the rank falls in (the first
    /// bucket starts at 0); past the last bound, the last bound. `None` without requests.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let total: u64 = self.latency.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total as f64;
        let mut below = 0u64;
        for (i, n) in self.latency.iter().enumerate() {
            let Some(upper) = LATENCY_BUCKETS_MS.get(i) else {
                return LATENCY_BUCKETS_MS.last().copied();
            };
            if *n > 0 && (below + n) as f64 >= rank {
                let lower = if i == 0 { 0.0 } else { LATENCY_BUCKETS_MS[i - 1] };
                return Some(lower + (upper - lower) * (rank - below as f64) / *n as f64);
            }
            below += n;
        }
        LATENCY_BUCKETS_MS.last().copied()
    }
}

/// Why a report was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    /// Too many edges.
    #[error("the report has {0} edges; at most {max} are taken", max = MAX_EDGES)]
    TooManyEdges(usize),
    /// The counts of an edge do not add up.
    #[error("edge {index} ({service}): {why}")]
    Inconsistent {
        /// The edge's position.
        index: usize,
        /// Its service.
        service: String,
        /// What does not add up.
        why: String,
    },
}

impl Report {
    /// Whether the report is within bounds and its counts add up.
    pub fn check(&self) -> Result<(), ReportError> {
        if self.edges.len() > MAX_EDGES {
            return Err(ReportError::TooManyEdges(self.edges.len()));
        }
        for (index, e) in self.edges.iter().enumerate() {
            let c = &e.counts;
            let why = if c.failures > c.requests || c.mtls > c.requests {
                Some(format!(
                    "{} failures and {} over mTLS of {} requests",
                    c.failures, c.mtls, c.requests
                ))
            } else if c.requests > 0 && c.latency.len() != LATENCY_SLOTS {
                Some(format!("{} latency buckets, expected {LATENCY_SLOTS}", c.latency.len()))
            } else if c.latency.iter().sum::<u64>() != c.requests {
                Some(format!(
                    "latency buckets sum to {} of {} requests",
                    c.latency.iter().sum::<u64>(),
                    c.requests
                ))
            } else {
                None
            };
            if let Some(why) = why {
                return Err(ReportError::Inconsistent {
                    index,
                    service: e.service.clone(),
                    why,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(requests: u64, failures: u64, mtls: u64, buckets: &[(usize, u64)]) -> Counts {
        Counts::in_buckets(requests, failures, mtls, buckets)
    }

    #[test]
    fn quantiles_interpolate_within_buckets_as_prometheus_does() {
        // 9 requests in (1, 5] ms, 1 in (100, 250] ms.
        let c = counts(10, 0, 0, &[(2, 9), (7, 1)]);
        // p50: rank 5 of the 9 in (1, 5]: 1 + 4 × 5/9.
        assert_eq!(c.quantile_ms(0.5), Some(1.0 + 4.0 * 5.0 / 9.0));
        // p99: rank 9.9, 0.9 into the one request in (100, 250]: 100 + 150 × 0.9.
        assert!(
            (c.quantile_ms(0.99).unwrap() - 235.0).abs() < 1e-9,
            "{:?}",
            c.quantile_ms(0.99)
        );
        // The first bucket starts at 0.
        assert_eq!(counts(2, 0, 0, &[(0, 2)]).quantile_ms(0.5), Some(0.25));
        // Past the last bound: the last bound.
        assert_eq!(counts(1, 0, 0, &[(19, 1)]).quantile_ms(0.5), Some(3_600_000.0));
        assert_eq!(Counts::default().quantile_ms(0.5), None);
    }

    #[test]
    fn counts_add_and_subtract_and_restarts_show() {
        let mut a = counts(3, 1, 2, &[(2, 3)]);
        a.add(&counts(2, 0, 2, &[(3, 2)]));
        assert_eq!(a, counts(5, 1, 4, &[(2, 3), (3, 2)]));
        assert_eq!(a.since(&counts(3, 1, 2, &[(2, 3)])), Some(counts(2, 0, 2, &[(3, 2)])));
        assert_eq!(a.since(&a), Some(Counts::default()), "nothing new: empty");
        assert_eq!(
            a.since(&counts(9, 0, 0, &[(2, 9)])),
            None,
            "a counter went down: restarted"
        );
        let mut empty = Counts::default();
        empty.add(&a);
        assert_eq!(empty, a);
    }

    #[test]
    fn reports_are_checked() {
        let edge = |c: Counts| EdgeSignals {
            service: "web.shop.svc.cluster.local".into(),
            counts: c,
            ..EdgeSignals::default()
        };
        assert_eq!(
            Report {
                edges: vec![edge(counts(2, 1, 2, &[(2, 2)]))]
            }
            .check(),
            Ok(())
        );
        let bad = Report {
            edges: vec![edge(counts(2, 3, 0, &[(2, 2)]))],
        };
        assert!(
            bad.check().unwrap_err().to_string().contains("3 failures"),
            "{:?}",
            bad.check()
        );
        let bad = Report {
            edges: vec![edge(counts(2, 0, 0, &[(2, 1)]))],
        };
        assert!(bad.check().unwrap_err().to_string().contains("sum to 1 of 2"));
        let bad = Report {
            edges: vec![edge(Counts {
                requests: 1,
                latency: vec![1],
                ..Counts::default()
            })],
        };
        assert!(bad.check().unwrap_err().to_string().contains("1 latency buckets"));
        let many = Report {
            edges: vec![EdgeSignals::default(); MAX_EDGES + 1],
        };
        assert_eq!(many.check(), Err(ReportError::TooManyEdges(MAX_EDGES + 1)));
    }
}
