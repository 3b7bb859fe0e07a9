//! Retry policy: which failures a route retries (Envoy's `retry_on`
//! conditions), the policy of a route without retries, and whether the cluster lets a retry
//! be made (`maxRetries`, the route's budget).

use crate::metrics::Overflow;
use crate::runtime::Runtime;
use crate::upstream::{ClusterRuntime, RetryToken};
use http::StatusCode;
use trellis_contract::{RetryOn, RetryPolicy};

/// The policy of a route without retries (one attempt).
pub(super) static NO_RETRIES: RetryPolicy = RetryPolicy {
    attempts: 0,
    per_try_timeout_ms: None,
    retry_on: Vec::new(),
    retriable_status_codes: Vec::new(),
    backoff_base_ms: 25,
    backoff_max_ms: None,
    budget_percent: None,
};

pub(super) fn retry_on_status(r: &RetryPolicy, status: StatusCode) -> bool {
    let code = status.as_u16();
    r.retry_on.iter().any(|c| match c {
        RetryOn::FiveXx => status.is_server_error(),
        RetryOn::GatewayError => matches!(code, 502..=504),
        RetryOn::Retriable4xx => code == 409,
        RetryOn::RetriableStatusCodes => r.retriable_status_codes.contains(&code),
        RetryOn::Reset | RetryOn::ConnectFailure => false,
    })
}

pub(super) fn retry_on_error(r: &RetryPolicy, cond: RetryOn) -> bool {
    r.retry_on
        .iter()
        .any(|c| *c == cond || matches!(c, RetryOn::FiveXx | RetryOn::GatewayError))
}

pub(super) fn retry_on_timeout(r: &RetryPolicy) -> bool {
    // Envoy retries per-try timeouts under 5xx and gateway-error.
    r.retry_on
        .iter()
        .any(|c| matches!(c, RetryOn::FiveXx | RetryOn::GatewayError))
}

/// Decide a retry: the one in flight (`held`) ends, and another is taken if the cluster's
/// `maxRetries` and the route's budget allow; false (counted) when they do not.
pub(super) fn take_retry<'c>(
    rt: &Runtime,
    cluster: &'c ClusterRuntime,
    budget_percent: Option<f64>,
    held: &mut Option<RetryToken<'c>>,
) -> bool {
    *held = None;
    *held = cluster.circuit.try_retry(budget_percent);
    if held.is_none() {
        rt.metrics.upstream_overflow(&cluster.spec.name, Overflow::Retry);
    }
    held.is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_conditions() {
        let r = RetryPolicy {
            attempts: 1,
            per_try_timeout_ms: None,
            retry_on: vec![RetryOn::GatewayError, RetryOn::RetriableStatusCodes],
            retriable_status_codes: vec![429],
            backoff_base_ms: 1,
            backoff_max_ms: None,
            budget_percent: None,
        };
        assert!(retry_on_status(&r, StatusCode::BAD_GATEWAY));
        assert!(!retry_on_status(&r, StatusCode::INTERNAL_SERVER_ERROR));
        assert!(retry_on_status(&r, StatusCode::TOO_MANY_REQUESTS));
        assert!(retry_on_error(&r, RetryOn::Reset));
        assert!(retry_on_timeout(&r));
    }
}
