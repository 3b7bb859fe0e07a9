//! Outlier detection (passive health checking) on a cluster's endpoints, with Envoy's
//! semantics as Istio configures them from a DestinationRule's `outlierDetection`:
//! consecutive 5xx and gateway errors, local-origin failures counted apart when
//! `splitExternalLocalOriginErrors` is set, ejection for the base time times the number of
//! ejections (capped at Envoy's 300 s), returned at the first sweep (`interval`) after it,
//! and the multiplier lowered by one for each sweep the endpoint stays healthy.

use std::time::{Duration, Instant};
use trellis_contract::OutlierDetection;

use super::{ClusterRuntime, EndpointState};

/// Envoy's `max_ejection_time` default (Istio leaves it): no ejection lasts longer, unless
/// the base ejection time itself is longer.
const MAX_EJECTION: Duration = Duration::from_secs(300);

/// How an upstream attempt ended, for outlier detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response below 500.
    Success,
    /// A 5xx response (with its code).
    Status5xx(u16),
    /// Connect failure, reset or timeout: an error of local origin (a gateway error unless
    /// local-origin errors are split).
    LocalFailure,
}

/// One endpoint's outlier state.
#[derive(Debug, Default)]
pub(super) struct Outlier {
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    consecutive_local: u32,
    ejected_until: Option<Instant>,
    times_ejected: u32,
}

impl Outlier {
    fn trips(&self, od: &OutlierDetection) -> bool {
        (od.consecutive_5xx > 0 && self.consecutive_5xx >= od.consecutive_5xx)
            || (od.consecutive_gateway_errors > 0 && self.consecutive_gateway >= od.consecutive_gateway_errors)
            || (od.split_external_local_origin_errors
                && od.consecutive_local_origin_failures > 0
                && self.consecutive_local >= od.consecutive_local_origin_failures)
    }

    /// Count an outcome; whether a threshold is reached.
    fn count(&mut self, od: &OutlierDetection, outcome: Outcome) -> bool {
        match outcome {
            Outcome::Success => {
                self.consecutive_5xx = 0;
                self.consecutive_gateway = 0;
                self.consecutive_local = 0;
                false
            }
            Outcome::Status5xx(code) => {
                // The upstream answered: its connection worked.
                self.consecutive_local = 0;
                self.consecutive_5xx += 1;
                if matches!(code, 502..=504) {
                    self.consecutive_gateway += 1;
                } else {
                    self.consecutive_gateway = 0;
                }
                self.trips(od)
            }
            Outcome::LocalFailure if od.split_external_local_origin_errors => {
                self.consecutive_local += 1;
                self.trips(od)
            }
            Outcome::LocalFailure => {
                self.consecutive_5xx += 1;
                self.consecutive_gateway += 1;
                self.trips(od)
            }
        }
    }

    /// Eject at `now`: the multiplier first loses one for each sweep since the endpoint
    /// returned, then the ejection lasts base × multiplier (at most [`MAX_EJECTION`]), to the
    /// next sweep.
    fn eject(&mut self, od: &OutlierDetection, now: Instant) {
        let interval = Duration::from_millis(od.interval_ms.max(1));
        if let Some(returned) = self.ejected_until {
            let healthy_sweeps = now.saturating_duration_since(returned).as_millis() / interval.as_millis();
            self.times_ejected = self
                .times_ejected
                .saturating_sub(u32::try_from(healthy_sweeps).unwrap_or(u32::MAX));
        }
        self.times_ejected += 1;
        let base = Duration::from_millis(od.base_ejection_time_ms);
        let cap = MAX_EJECTION.max(base);
        let length = base.saturating_mul(self.times_ejected).min(cap);
        let sweeps = length.as_millis().div_ceil(interval.as_millis()).max(1);
        let length = interval.saturating_mul(u32::try_from(sweeps).unwrap_or(u32::MAX));
        self.ejected_until = Some(now + length);
        self.consecutive_5xx = 0;
        self.consecutive_gateway = 0;
        self.consecutive_local = 0;
    }

    pub(super) fn ejected(&self, now: Instant) -> bool {
        self.ejected_until.is_some_and(|t| t > now)
    }
}

impl EndpointState {
    /// Is the endpoint ejected at `now`?
    pub fn ejected(&self, now: Instant) -> bool {
        self.outlier.lock().expect("outlier lock").ejected(now)
    }
}

impl ClusterRuntime {
    /// Record an attempt's outcome for outlier detection; returns true when the endpoint was
    /// just ejected.
    pub fn record(&self, idx: usize, outcome: Outcome, now: Instant) -> bool {
        let Some(od) = &self.spec.outlier_detection else {
            return false;
        };
        let ep = &self.endpoints[idx];
        let should_eject = ep.outlier.lock().expect("outlier lock").count(od, outcome);
        if !should_eject || ep.ejected(now) {
            return false;
        }
        let n = self.endpoints.len();
        let ejected = self.endpoints.iter().filter(|e| e.ejected(now)).count();
        // Envoy always allows ejecting one host; beyond that, the percentage caps.
        if ejected > 0 && ((ejected + 1) as f64) * 100.0 > od.max_ejection_percent * n as f64 {
            return false;
        }
        ep.outlier.lock().expect("outlier lock").eject(od, now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn od(interval_ms: u64, split: bool) -> OutlierDetection {
        OutlierDetection {
            consecutive_5xx: 2,
            consecutive_gateway_errors: 0,
            base_ejection_time_ms: 1000,
            max_ejection_percent: 100.0,
            interval_ms,
            split_external_local_origin_errors: split,
            consecutive_local_origin_failures: 3,
        }
    }

    #[test]
    fn an_ejection_ends_at_the_first_sweep_after_its_time() {
        let (od, t) = (od(400, false), Instant::now());
        let mut o = Outlier::default();
        o.eject(&od, t);
        // 1000 ms base, sweeps every 400 ms: back at the third, 1200 ms.
        assert!(o.ejected(t + Duration::from_millis(1199)));
        assert!(!o.ejected(t + Duration::from_millis(1200)));
    }

    #[test]
    fn the_multiplier_grows_and_healthy_sweeps_take_it_down() {
        let (od, t) = (od(1000, false), Instant::now());
        let mut o = Outlier::default();
        o.eject(&od, t);
        // Ejected again at once after returning: twice the base.
        let back = t + Duration::from_millis(1000);
        o.eject(&od, back);
        assert_eq!(o.times_ejected, 2);
        assert!(o.ejected(back + Duration::from_millis(1999)));
        // Two healthy sweeps after it returned: the multiplier is down to 0, then 1.
        let later = back + Duration::from_millis(2000) + Duration::from_millis(2000);
        o.eject(&od, later);
        assert_eq!(o.times_ejected, 1);
        assert!(!o.ejected(later + Duration::from_millis(1000)));
    }

    #[test]
    fn an_ejection_lasts_at_most_envoys_maximum() {
        let (mut od, t) = (od(1000, false), Instant::now());
        od.base_ejection_time_ms = 100_000;
        let mut o = Outlier::default();
        for _ in 0..5 {
            o.eject(&od, t);
        }
        assert!(!o.ejected(t + MAX_EJECTION), "5 × 100 s capped at 300 s");
    }

    #[test]
    fn split_local_origin_failures_count_apart_from_5xx() {
        let od = od(1000, true);
        let mut o = Outlier::default();
        // Local failures do not count as 5xx: two of them do not reach consecutive5xx 2.
        assert!(!o.count(&od, Outcome::LocalFailure));
        assert!(!o.count(&od, Outcome::LocalFailure));
        assert!(
            o.count(&od, Outcome::LocalFailure),
            "the third reaches consecutiveLocalOriginFailures"
        );
        // A 5xx answer resets the local count; 5xx answers trip on their own.
        let mut o = Outlier::default();
        o.count(&od, Outcome::LocalFailure);
        o.count(&od, Outcome::LocalFailure);
        assert!(!o.count(&od, Outcome::Status5xx(500)));
        assert!(!o.count(&od, Outcome::LocalFailure));
        assert!(o.count(&od, Outcome::Status5xx(500)));
        // Not split: a local failure is a 5xx (and a gateway error).
        let od = super::tests::od(1000, false);
        let mut o = Outlier::default();
        o.count(&od, Outcome::LocalFailure);
        assert!(o.count(&od, Outcome::LocalFailure));
    }
}
