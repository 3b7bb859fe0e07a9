//! Outlier detection (passive health checking) on a cluster's endpoints: consecutive 5xx and
//! gateway errors eject an endpoint for the base time times the number of its ejections.

use std::time::{Duration, Instant};
use trellis_contract::OutlierDetection;

use super::{ClusterRuntime, EndpointState};

/// How an upstream attempt ended, for outlier detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response below 500.
    Success,
    /// A 5xx response (with its code).
    Status5xx(u16),
    /// Connect failure or reset: a gateway error.
    LocalFailure,
}

/// One endpoint's outlier state.
#[derive(Debug, Default)]
pub(super) struct Outlier {
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    ejected_until: Option<Instant>,
    times_ejected: u32,
}

impl Outlier {
    fn trips(&self, od: &OutlierDetection) -> bool {
        (od.consecutive_5xx > 0 && self.consecutive_5xx >= od.consecutive_5xx)
            || (od.consecutive_gateway_errors > 0 && self.consecutive_gateway >= od.consecutive_gateway_errors)
    }

    /// Count an outcome; whether a threshold is reached.
    fn count(&mut self, od: &OutlierDetection, outcome: Outcome) -> bool {
        match outcome {
            Outcome::Success => {
                self.consecutive_5xx = 0;
                self.consecutive_gateway = 0;
                false
            }
            Outcome::Status5xx(code) => {
                self.consecutive_5xx += 1;
                if matches!(code, 502..=504) {
                    self.consecutive_gateway += 1;
                } else {
                    self.consecutive_gateway = 0;
                }
                self.trips(od)
            }
            Outcome::LocalFailure => {
                self.consecutive_5xx += 1;
                self.consecutive_gateway += 1;
                self.trips(od)
            }
        }
    }

    /// Eject at `now` for the base time times the number of ejections.
    fn eject(&mut self, od: &OutlierDetection, now: Instant) {
        self.times_ejected += 1;
        let ms = od.base_ejection_time_ms.saturating_mul(u64::from(self.times_ejected));
        self.ejected_until = Some(now + Duration::from_millis(ms));
        self.consecutive_5xx = 0;
        self.consecutive_gateway = 0;
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
