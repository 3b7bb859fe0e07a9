//! A pushed configuration the sink refused ([`Refusal`]), and the one the subscription applies
//! again ([`Retry`]): a configuration refused for a reason of the proxy's environment — a
//! listener's port still held by another socket — is NACKed at once, then applied again with
//! backoff until it applies (and is ACKed then) or another configuration takes its place. One
//! refused for what it says is NACKed and never tried again: nothing changes until the operator
//! sends another version.
//!
//! Envoy NACKs a listener update whose address cannot be bound and keeps its last good
//! listeners, and istiod does not send a NACKed version again (`shouldRespond` drops a request
//! with an error detail); Istio heals through its next push, which any change in the mesh brings.
//! The operator pushes a proxy only what changed its configuration, so without a retry here a
//! proxy whose first configuration met a port in use stayed unconfigured until its own
//! configuration changed.

use std::time::Duration;

use tokio::time::Instant;
use trellis_contract::ProxyConfig;
use trellis_contract::refusal::APPLIED_AGAIN;

/// How long the subscription waits before applying again a configuration refused for a
/// transient reason ([`Refusal::transient`]); each refusal doubles the wait, up to
/// [`APPLY_RETRY_MAX`].
// why: a port is held by a socket about to close (a previous proxy process or listener of the
// pod draining) for seconds, so the first retry comes soon; 30 s caps what a port held for good
// costs — one bind attempt per 30 s — while a proxy that can bind later still does within 30 s.
pub const APPLY_RETRY: Duration = Duration::from_secs(1);
/// The longest wait between two attempts to apply a configuration refused for a transient
/// reason.
pub const APPLY_RETRY_MAX: Duration = Duration::from_secs(30);

/// Why a [`super::ConfigSink`] did not apply a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// What is wrong, as the NACK tells the operator.
    pub error: String,
    /// Whether the configuration is fine as it is and the proxy's environment refused it (a
    /// listener's address in use): the subscription applies it again ([`APPLY_RETRY`]). `false`:
    /// the configuration itself is wrong, and is not tried again.
    pub transient: bool,
}

impl Refusal {
    /// A configuration that may apply later as it is: applied again with backoff.
    pub fn transient(error: impl Into<String>) -> Self {
        Refusal {
            error: error.into(),
            transient: true,
        }
    }
}

/// A configuration refused for what it is: never tried again.
impl From<String> for Refusal {
    fn from(error: String) -> Self {
        Refusal {
            error,
            transient: false,
        }
    }
}

/// A configuration refused for what it is: never tried again.
impl From<&str> for Refusal {
    fn from(error: &str) -> Self {
        Refusal::from(error.to_string())
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.error)
    }
}

/// The NACK of a configuration refused for a transient reason: the sink's error, and that the
/// proxy keeps trying.
pub(super) fn transient_nack(error: &str) -> String {
    format!(
        "{error}; {APPLIED_AGAIN} every {}–{} s until it applies (then ACKs it) or another version arrives",
        APPLY_RETRY.as_secs(),
        APPLY_RETRY_MAX.as_secs()
    )
}

/// The configuration the subscription applies again, and when.
#[derive(Debug)]
pub(super) struct Retry {
    /// The configuration as pushed (before the sink adapts it): what deltas apply to once it
    /// applies.
    pub config: ProxyConfig,
    /// The pushed snapshot's `renew_unless_issued_by`, acted on once it applies.
    pub renew_unless_issued_by: String,
    /// When to apply it again.
    pub at: Instant,
    /// The wait before that attempt.
    wait: Duration,
}

impl Retry {
    /// The first retry of `config`, refused just now.
    pub fn first(config: ProxyConfig, renew_unless_issued_by: String) -> Retry {
        Retry {
            config,
            renew_unless_issued_by,
            at: Instant::now() + APPLY_RETRY,
            wait: APPLY_RETRY,
        }
    }

    /// The next retry after this one was refused again for a transient reason: twice the wait,
    /// up to [`APPLY_RETRY_MAX`].
    pub fn again(self) -> Retry {
        let wait = (self.wait * 2).min(APPLY_RETRY_MAX);
        Retry {
            at: Instant::now() + wait,
            wait,
            ..self
        }
    }

    /// How long this attempt waited.
    pub fn wait(&self) -> Duration {
        self.wait
    }
}

/// Until `at`; never without one.
pub(super) async fn due(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_wait_twice_as_long_each_time_up_to_the_cap() {
        let mut retry = Retry::first(ProxyConfig::empty("v1"), String::new());
        let mut waits = vec![retry.wait()];
        for _ in 0..7 {
            retry = retry.again();
            waits.push(retry.wait());
        }
        let secs: Vec<u64> = waits.iter().map(Duration::as_secs).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(retry.config.version, "v1", "the same configuration each time");
    }

    #[test]
    fn refusals_from_text_are_not_retried() {
        assert!(!Refusal::from("listener 0: bad regex").transient);
        assert!(!Refusal::from(String::from("x")).transient);
        let busy = Refusal::transient("cannot bind 0.0.0.0:15006: Address in use");
        assert!(busy.transient);
        assert_eq!(busy.to_string(), "cannot bind 0.0.0.0:15006: Address in use");
        assert!(
            transient_nack(&busy.error).starts_with("cannot bind 0.0.0.0:15006: Address in use; the proxy applies")
        );
    }
}
