//! Counters by upstream cluster, for events the request path meets rarely (a refused TLS
//! handshake, a circuit breaker tripping): a map behind a lock, touched only when the event
//! happens, rendered as one Prometheus counter with a `cluster` label.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Mutex;

/// One counter, by cluster.
#[derive(Debug, Default)]
pub(super) struct ByCluster {
    counts: Mutex<HashMap<String, u64>>,
}

impl ByCluster {
    /// Count one event of `cluster`.
    pub(super) fn inc(&self, cluster: &str) {
        let mut map = self.counts.lock().expect("metrics lock");
        match map.get_mut(cluster) {
            Some(n) => *n += 1,
            None => {
                map.insert(cluster.to_string(), 1);
            }
        }
    }

    /// The counter as `name` in Prometheus text format, clusters in order.
    pub(super) fn render(&self, out: &mut String, name: &str, help: &str) {
        let map = self.counts.lock().expect("metrics lock");
        let mut series: Vec<(&String, &u64)> = map.iter().collect();
        series.sort();
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (cluster, n) in series {
            let mut l = String::new();
            super::labels::label(&mut l, "cluster", cluster);
            let _ = writeln!(out, "{name}{{{l}}} {n}");
        }
    }
}
