//! The operator's own metrics, rendered in the Prometheus text format on the admin API's
//! `/metrics`: index updates (the reconcile of the registry), config pushes, ACKs and NACKs,
//! certificates issued and refused, and the time a change takes to converge (from the change
//! reaching the push server to every proxy it affects ACKing it).
//!
//! Plain atomics and fixed buckets: no registry crate, no global state; one [`Metrics`] is
//! shared by the parts of one operator.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

mod admission;
pub use admission::{AdmissionPhases, AdmissionSeconds};

/// Histogram bucket bounds, in seconds: from a millisecond (an index update) to ten seconds (a
/// slow rollout), dense around the 1 s convergence target.
const BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0,
];

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Add one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Add `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The count.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Bucket bounds of the admission histograms, in seconds: from 0.1 ms (the operator's own
/// decision) to the injector's 10 s timeout, with the 10 ms target as a bound of its own.
pub const ADMISSION_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// A distribution of durations.
#[derive(Debug)]
pub struct Histogram {
    /// Upper bounds of the buckets, in seconds, increasing.
    bounds: &'static [f64],
    /// Per bucket (not cumulative), then the count above the last bound.
    counts: Box<[AtomicU64]>,
    /// Sum, in microseconds.
    sum_micros: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram::with_bounds(&BUCKETS)
    }
}

impl Histogram {
    /// A histogram with these bucket bounds (seconds, increasing).
    pub fn with_bounds(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }

    /// Record one duration.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = self.bounds.iter().position(|b| secs <= *b).unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(u64::try_from(d.as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// How many durations were recorded.
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// The counts now, to compare with a later look ([`Distribution::since`]).
    pub fn snapshot(&self) -> Distribution {
        Distribution {
            bounds: self.bounds,
            counts: self.counts.iter().map(|c| c.load(Ordering::Relaxed)).collect(),
        }
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        self.render_series(out, name, "");
    }

    /// The series of one histogram; `labels` (`k="v",`…, each followed by a comma) go before `le`.
    fn render_series(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (bound, count) in self.bounds.iter().zip(self.counts.iter()) {
            cumulative += count.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.counts[self.bounds.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}le=\"+Inf\"}} {cumulative}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let labels = labels.trim_end_matches(',');
        let labels = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{labels} {sum}\n{name}_count{labels} {cumulative}");
    }
}

/// A histogram's counts at one moment, or between two.
#[derive(Debug, Clone, PartialEq)]
pub struct Distribution {
    bounds: &'static [f64],
    /// Per bucket (not cumulative), then the count above the last bound.
    counts: Vec<u64>,
}

impl Distribution {
    /// What was recorded after `earlier` (a snapshot of the same histogram).
    pub fn since(&self, earlier: &Distribution) -> Distribution {
        Distribution {
            bounds: self.bounds,
            counts: self
                .counts
                .iter()
                .zip(earlier.counts.iter().chain(std::iter::repeat(&0)))
                .map(|(now, then)| now.saturating_sub(*then))
                .collect(),
        }
    }

    /// How many durations.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// How many durations were at most `bound` seconds (a bucket bound).
    pub fn at_most(&self, bound: f64) -> u64 {
        self.bounds
            .iter()
            .zip(&self.counts)
            .take_while(|(b, _)| **b <= bound)
            .map(|(_, c)| c)
            .sum()
    }

    /// The `q` quantile (0–1) as Prometheus' `histogram_quantile` estimates it: linear within
    /// the bucket it falls in; the last finite bound when it falls above it; `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total as f64;
        let mut below = 0u64;
        for (i, count) in self.counts.iter().enumerate() {
            let Some(&upper) = self.bounds.get(i) else {
                break;
            };
            if (below + count) as f64 >= rank && *count > 0 {
                let lower = if i == 0 { 0.0 } else { self.bounds[i - 1] };
                let within = (rank - below as f64) / *count as f64;
                return Some(Duration::from_secs_f64(lower + (upper - lower) * within));
            }
            below += count;
        }
        self.bounds.last().map(|b| Duration::from_secs_f64(*b))
    }
}

/// Why a certificate request was refused (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Refusal {
    /// No token, or the API server did not accept it.
    Unauthenticated,
    /// The token belongs to another namespace or pod.
    WrongPod,
    /// The CSR asks for another identity.
    IdentityMismatch,
    /// The CSR is malformed.
    BadCsr,
    /// The CA could not sign (e.g. its root expires).
    Internal,
}

impl Refusal {
    fn label(self) -> &'static str {
        match self {
            Refusal::Unauthenticated => "unauthenticated",
            Refusal::WrongPod => "wrong_pod",
            Refusal::IdentityMismatch => "identity_mismatch",
            Refusal::BadCsr => "bad_csr",
            Refusal::Internal => "internal",
        }
    }
}

/// A change on its way to the proxies: when it reached the push server, how many proxies are
/// still to ACK what it produced, and whether one of them failed (NACK or disconnect).
#[derive(Debug)]
struct Rollout {
    started: Instant,
    pending: usize,
    affected: usize,
    failed: bool,
}

/// Every metric of one operator.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Changes applied to the live index.
    pub index_updates: Counter,
    /// How long applying one change to the index took.
    pub index_update_seconds: Histogram,
    /// Configs sent to proxies (whole or as deltas).
    pub pushes: Counter,
    /// Of those, deltas against the version the proxy held.
    pub delta_pushes: Counter,
    /// Bytes of configuration sent (whole configs and deltas).
    pub pushed_bytes: Counter,
    /// Compiling, serializing and queueing one proxy's config.
    pub push_seconds: Histogram,
    /// Configs the proxies applied.
    pub acks: Counter,
    /// Configs the proxies rejected.
    pub nacks: Counter,
    /// Workload certificates signed.
    pub certificates_issued: Counter,
    refused: Mutex<BTreeMap<Refusal, u64>>,
    /// From a change reaching the push server to every proxy it affects ACKing it.
    pub convergence_seconds: Histogram,
    rollouts: Mutex<BTreeMap<u64, Rollout>>,
    /// Mesh reconciles run (by the leader).
    pub reconciles: Counter,
    /// How long one Mesh reconcile took.
    pub reconcile_seconds: Histogram,
    reconcile_failures: Mutex<BTreeMap<String, u64>>,
    admissions: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    /// The operator's own time to answer one admission review, by webhook.
    pub admission_seconds: AdmissionSeconds,
    /// Where that time goes: the wait for a worker, for the body, and the answer.
    pub admission_phases: AdmissionPhases,
    diagnostics: Mutex<BTreeMap<(String, String, String), u64>>,
    jwks_fetches: Mutex<BTreeMap<&'static str, u64>>,
    jwks_uris: Mutex<BTreeMap<&'static str, u64>>,
}

impl Metrics {
    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        // why: counters stay meaningful even if a holder panicked; never take the operator down.
        m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Count a refused certificate request.
    pub fn refused(&self, why: Refusal) {
        *Self::lock(&self.refused).entry(why).or_default() += 1;
    }

    /// Refused certificate requests for one reason.
    pub fn refusals(&self, why: Refusal) -> u64 {
        Self::lock(&self.refused).get(&why).copied().unwrap_or(0)
    }

    /// Count a failed Mesh reconcile, by the kind of error (the `error` label).
    pub fn reconcile_failed(&self, error: &str) {
        *Self::lock(&self.reconcile_failures)
            .entry(error.to_string())
            .or_default() += 1;
    }

    /// Failed Mesh reconciles for one kind of error.
    pub fn reconcile_failures(&self, error: &str) -> u64 {
        Self::lock(&self.reconcile_failures).get(error).copied().unwrap_or(0)
    }

    /// Count an admission review answered by `webhook` (`validate`, `inject`, or `other` for
    /// a path nothing is served at) with `outcome` (`allowed`, `warned`, `patched`, `denied`,
    /// `malformed`), and the time the operator took ([`AdmissionSeconds`]).
    pub fn admitted(&self, webhook: &'static str, outcome: &'static str, took: Duration) {
        *Self::lock(&self.admissions).entry((webhook, outcome)).or_default() += 1;
        self.admission_seconds.of(webhook).observe(took);
    }

    /// Admission reviews answered by `webhook` with `outcome`.
    pub fn admissions(&self, webhook: &str, outcome: &str) -> u64 {
        Self::lock(&self.admissions)
            .iter()
            .filter(|((w, o), _)| *w == webhook && *o == outcome)
            .map(|(_, n)| n)
            .sum()
    }

    /// The compiler's diagnostics standing now: how many per (code, level, kind).
    pub fn set_diagnostics(&self, counts: BTreeMap<(String, String, String), u64>) {
        *Self::lock(&self.diagnostics) = counts;
    }

    /// Count a fetch of a `jwksUri` (a usable key set, or not).
    pub fn jwks_fetched(&self, ok: bool) {
        *Self::lock(&self.jwks_fetches)
            .entry(if ok { "success" } else { "failure" })
            .or_default() += 1;
    }

    /// Fetches of `jwksUri`s with `result` (`success`, `failure`).
    pub fn jwks_fetches(&self, result: &str) -> u64 {
        Self::lock(&self.jwks_fetches).get(result).copied().unwrap_or(0)
    }

    /// How many `jwksUri`s are in each state now (`fresh`, `stale`, `unavailable`, `pending`).
    pub fn set_jwks_uris(&self, counts: BTreeMap<&'static str, u64>) {
        *Self::lock(&self.jwks_uris) = counts;
    }

    /// A proxy woke for change `generation` at `at` and will compile for it.
    pub fn rollout_joined(&self, generation: u64, at: Instant) {
        let mut rollouts = Self::lock(&self.rollouts);
        let r = rollouts.entry(generation).or_insert(Rollout {
            started: at,
            pending: 0,
            affected: 0,
            failed: false,
        });
        r.started = r.started.min(at);
        r.pending += 1;
    }

    /// The proxy's config changed and was sent: it now owes an ACK for `generation`.
    pub fn rollout_sent(&self, generation: u64) {
        if let Some(r) = Self::lock(&self.rollouts).get_mut(&generation) {
            r.affected += 1;
        }
    }

    /// The proxy is done with `generation`: `acked` (or unaffected, when nothing was sent),
    /// or not (NACK, disconnect). The rollout converges when no proxy is pending.
    pub fn rollout_done(&self, generation: u64, acked: bool) {
        let mut rollouts = Self::lock(&self.rollouts);
        let Some(r) = rollouts.get_mut(&generation) else { return };
        r.pending = r.pending.saturating_sub(1);
        r.failed |= !acked;
        if r.pending == 0 {
            if r.affected > 0 && !r.failed {
                self.convergence_seconds.observe(r.started.elapsed());
            }
            rollouts.remove(&generation);
        }
    }

    /// The metrics in the Prometheus text format, after `extra` (gauges the caller computes).
    pub fn render(&self, extra: &str) -> String {
        let mut out = extra.to_string();
        let mut counter = |name: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        counter(
            "trellis_operator_index_updates_total",
            "Changes applied to the live index (registry reconciles).",
            self.index_updates.get(),
        );
        counter(
            "trellis_operator_pushes_total",
            "Configs sent to proxies.",
            self.pushes.get(),
        );
        counter(
            "trellis_operator_delta_pushes_total",
            "Configs sent as deltas against the version the proxy held (the rest were whole).",
            self.delta_pushes.get(),
        );
        counter(
            "trellis_operator_pushed_bytes_total",
            "Bytes of configuration sent to proxies.",
            self.pushed_bytes.get(),
        );
        counter(
            "trellis_operator_acks_total",
            "Configs the proxies applied.",
            self.acks.get(),
        );
        counter(
            "trellis_operator_nacks_total",
            "Configs the proxies rejected (they keep their last good one).",
            self.nacks.get(),
        );
        counter(
            "trellis_operator_certificates_issued_total",
            "Workload certificates signed.",
            self.certificates_issued.get(),
        );
        counter(
            "trellis_operator_reconciles_total",
            "Mesh reconciles run (by the leader).",
            self.reconciles.get(),
        );
        let name = "trellis_operator_certificates_refused_total";
        let _ = writeln!(
            out,
            "# HELP {name} Certificate requests refused, by reason.\n# TYPE {name} counter"
        );
        for why in [
            Refusal::Unauthenticated,
            Refusal::WrongPod,
            Refusal::IdentityMismatch,
            Refusal::BadCsr,
            Refusal::Internal,
        ] {
            let _ = writeln!(out, "{name}{{reason=\"{}\"}} {}", why.label(), self.refusals(why));
        }
        let name = "trellis_operator_reconcile_failures_total";
        let _ = writeln!(
            out,
            "# HELP {name} Mesh reconciles that failed, by error.\n# TYPE {name} counter"
        );
        for (error, n) in Self::lock(&self.reconcile_failures).iter() {
            let _ = writeln!(out, "{name}{{error=\"{error}\"}} {n}");
        }
        let name = "trellis_operator_admission_reviews_total";
        let _ = writeln!(
            out,
            "# HELP {name} Admission reviews answered, by webhook and outcome.\n# TYPE {name} counter"
        );
        for ((webhook, outcome), n) in Self::lock(&self.admissions).iter() {
            let _ = writeln!(out, "{name}{{webhook=\"{webhook}\",outcome=\"{outcome}\"}} {n}");
        }
        self.admission_seconds.render(&mut out);
        self.admission_phases.render(&mut out);
        let name = "trellis_operator_config_diagnostics";
        let _ = writeln!(
            out,
            "# HELP {name} The compiler's diagnostics standing now (configuration dropped or doubtful), by code, level and kind of object.\n# TYPE {name} gauge"
        );
        for ((code, level, kind), n) in Self::lock(&self.diagnostics).iter() {
            let _ = writeln!(out, "{name}{{code=\"{code}\",level=\"{level}\",kind=\"{kind}\"}} {n}");
        }
        let name = "trellis_operator_jwks_fetches_total";
        let _ = writeln!(
            out,
            "# HELP {name} Fetches of RequestAuthentications' jwksUri, by result (failure: no usable key set).\n# TYPE {name} counter"
        );
        for result in ["success", "failure"] {
            let _ = writeln!(out, "{name}{{result=\"{result}\"}} {}", self.jwks_fetches(result));
        }
        let name = "trellis_operator_jwks_uris";
        let _ = writeln!(
            out,
            "# HELP {name} jwksUris by state: fresh, stale (the last refresh failed; the last good keys are in use), unavailable (no keys: the issuer's tokens get 401), pending (not fetched yet).\n# TYPE {name} gauge"
        );
        for (state, n) in Self::lock(&self.jwks_uris).iter() {
            let _ = writeln!(out, "{name}{{state=\"{state}\"}} {n}");
        }
        self.reconcile_seconds.render(
            &mut out,
            "trellis_operator_reconcile_seconds",
            "Time to reconcile the Mesh once.",
        );
        self.index_update_seconds.render(
            &mut out,
            "trellis_operator_index_update_seconds",
            "Time to apply one change to the live index.",
        );
        self.push_seconds.render(
            &mut out,
            "trellis_operator_push_seconds",
            "Time to compile, serialize and queue one proxy's config.",
        );
        self.convergence_seconds.render(
            &mut out,
            "trellis_operator_convergence_seconds",
            "From a change reaching the push server to every proxy it affects ACKing it.",
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_with_sum_and_count() {
        let h = Histogram::default();
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_millis(300));
        h.observe(Duration::from_secs(60));
        let mut out = String::new();
        h.render(&mut out, "x", "help");
        assert!(out.contains("x_bucket{le=\"0.005\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.5\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"10\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_sum 60.303\n") && out.contains("x_count 3\n"), "{out}");
    }

    #[test]
    fn quantiles_interpolate_within_buckets_and_differences_isolate_a_run() {
        let h = Histogram::with_bounds(&ADMISSION_BUCKETS);
        assert_eq!(h.snapshot().quantile(0.99), None);
        // 100 answers between 0.5 and 1 ms, then one run of 10 between 5 and 7.5 ms.
        for _ in 0..100 {
            h.observe(Duration::from_micros(800));
        }
        let before = h.snapshot();
        for _ in 0..10 {
            h.observe(Duration::from_millis(6));
        }
        let all = h.snapshot();
        let p50 = all.quantile(0.5).unwrap().as_secs_f64();
        assert!((p50 - 0.000_775).abs() < 1e-9, "{p50}");
        let run = all.since(&before);
        assert_eq!(run.count(), 10);
        assert_eq!(run.at_most(0.005), 0);
        assert_eq!(run.at_most(0.01), 10);
        let p99 = run.quantile(0.99).unwrap().as_secs_f64();
        assert!((p99 - (0.005 + 0.0025 * 0.99)).abs() < 1e-9, "{p99}");
        // Above the last bound: the last bound.
        h.observe(Duration::from_secs(30));
        assert_eq!(h.snapshot().since(&all).quantile(0.5), Some(Duration::from_secs(10)));
    }

    #[test]
    fn admission_seconds_are_per_webhook() {
        let m = Metrics::default();
        m.admitted("inject", "patched", Duration::from_micros(300));
        m.admitted("validate", "denied", Duration::from_millis(2));
        m.admitted("other", "denied", Duration::from_micros(50));
        let out = m.render("");
        assert!(
            out.contains("trellis_operator_admission_seconds_bucket{webhook=\"inject\",le=\"0.0005\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("trellis_operator_admission_seconds_bucket{webhook=\"validate\",le=\"0.001\"} 0\n"),
            "{out}"
        );
        assert!(
            out.contains("trellis_operator_admission_seconds_count{webhook=\"validate\"} 1\n"),
            "{out}"
        );
        assert_eq!(m.admission_seconds.inject.count(), 1);
        assert_eq!(m.admission_seconds.other.count(), 1);
    }

    #[test]
    fn a_rollout_converges_when_every_affected_proxy_acked() {
        let m = Metrics::default();
        let t = Instant::now();
        for _ in 0..3 {
            m.rollout_joined(7, t);
        }
        m.rollout_sent(7);
        m.rollout_sent(7);
        m.rollout_done(7, true); // unaffected proxy
        m.rollout_done(7, true);
        assert_eq!(m.convergence_seconds.count(), 0, "one proxy still owes its ACK");
        m.rollout_done(7, true);
        assert_eq!(m.convergence_seconds.count(), 1);

        // A NACK means the change never converged.
        m.rollout_joined(8, t);
        m.rollout_sent(8);
        m.rollout_done(8, false);
        assert_eq!(m.convergence_seconds.count(), 1);
        // Nobody affected: nothing to observe.
        m.rollout_joined(9, t);
        m.rollout_done(9, true);
        assert_eq!(m.convergence_seconds.count(), 1);
    }
}
