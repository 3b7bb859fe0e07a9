//! Circuit breaking on a cluster, Envoy's thresholds as Istio sets them from a
//! DestinationRule's `connectionPool`: request slots (`maxConnections`) with a bounded queue
//! for them (`http1MaxPendingRequests`), proxied TCP connections (`maxConnections` too), active requests (`http2MaxRequests`) and retries in
//! flight (`maxRetries`).
//!
//! # Guarantees
//! Every count is held by a guard ([`Slot`], [`Admission`], [`RetryToken`]) and released when it
//! drops, so a request cancelled anywhere gives back what it held. A request refused here
//! never reaches an endpoint, so it never counts against an endpoint's health.
//!
//! # Cost
//! The request path pays one semaphore `try_acquire` and one atomic add and compare; a retry
//! one more. The overflow counters are touched only on overflow.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::Semaphore;
use trellis_contract::ConnectionPool;

/// Why a request was refused (circuit breaking).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoSlot {
    /// The pending queue is full, or the cluster has `maxRequests` active: 503, flag `UO`.
    Overflow,
    /// The wait in the pending queue outlasted the request's time.
    TimedOut,
}

/// A checked-out request slot (`maxConnections`); released on drop.
#[derive(Debug)]
pub struct Slot {
    _permit: tokio::sync::OwnedSemaphorePermit,
}

/// The thresholds of one cluster and what is held against them.
#[derive(Debug)]
pub struct CircuitBreakers {
    limiter: Arc<Semaphore>,
    tcp_connections: Option<Arc<Semaphore>>,
    pending: AtomicU64,
    max_pending: u64,
    max_requests: u64,
    max_retries: u64,
    /// Envoy's retry budget: (basis points of the active and pending requests, the minimum);
    /// it takes the place of `max_retries`.
    retry_budget: Option<(u64, u64)>,
    /// Requests active on the cluster (past the slot, until answered or cancelled).
    pub active_requests: AtomicU64,
    /// Retries in flight: decided and not yet answered.
    pub active_retries: AtomicU64,
    /// Requests refused with `UO` (queue full or `maxRequests` reached), Envoy's
    /// `upstream_rq_pending_overflow`.
    pub overflowed_requests: AtomicU64,
    /// Retries not made because `maxRetries` (or the route's retry budget) was reached,
    /// Envoy's `upstream_rq_retry_overflow`.
    pub overflowed_retries: AtomicU64,
    /// Proxied TCP connections closed because `maxTcpConnections` were open, Envoy's
    /// `upstream_cx_overflow`.
    pub overflowed_connections: AtomicU64,
}

impl CircuitBreakers {
    /// The thresholds of `pool`.
    pub fn new(pool: &ConnectionPool) -> Self {
        Self {
            // `u32::MAX` (no limit, Istio's default) fits a semaphore on 64-bit targets; the
            // clamp keeps a 32-bit one from refusing it.
            limiter: Arc::new(Semaphore::new(
                (pool.max_connections as usize).min(Semaphore::MAX_PERMITS),
            )),
            tcp_connections: pool.max_tcp_connections.map(|n| Arc::new(Semaphore::new(n as usize))),
            pending: AtomicU64::new(0),
            max_pending: u64::from(pool.max_pending_requests),
            max_requests: pool.max_requests.map_or(u64::MAX, u64::from),
            max_retries: pool.max_retries.map_or(u64::MAX, u64::from),
            retry_budget: pool
                .retry_budget
                .as_ref()
                .map(|b| (u64::from(b.budget_basis_points), u64::from(b.min_retry_concurrency))),
            active_requests: AtomicU64::new(0),
            active_retries: AtomicU64::new(0),
            overflowed_requests: AtomicU64::new(0),
            overflowed_retries: AtomicU64::new(0),
            overflowed_connections: AtomicU64::new(0),
        }
    }

    /// Acquire a request slot, waiting at most `within` (`None`: as long as it takes) in the
    /// pending queue while it has room.
    pub async fn acquire(&self, within: Option<Duration>) -> Result<Slot, NoSlot> {
        if let Some(slot) = self.try_slot() {
            return Ok(slot);
        }
        if self.pending.fetch_add(1, Ordering::AcqRel) >= self.max_pending {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            self.overflowed_requests.fetch_add(1, Ordering::Relaxed);
            return Err(NoSlot::Overflow);
        }
        let wait = Arc::clone(&self.limiter).acquire_owned();
        let permit = match within {
            Some(t) => tokio::time::timeout(t, wait).await.map_err(|_| NoSlot::TimedOut),
            None => Ok(wait.await),
        };
        self.pending.fetch_sub(1, Ordering::AcqRel);
        match permit? {
            Ok(p) => Ok(Slot { _permit: p }),
            // The semaphore is never closed.
            Err(_) => Err(NoSlot::Overflow),
        }
    }

    /// A place for a proxied TCP connection, held until it closes; `None`, counted, when
    /// `maxTcpConnections` are open (Envoy's TCP proxy does not queue connections).
    pub fn try_tcp_connection(&self) -> Result<Option<Slot>, NoSlot> {
        let Some(limit) = &self.tcp_connections else {
            return Ok(None);
        };
        match Arc::clone(limit).try_acquire_owned() {
            Ok(permit) => Ok(Some(Slot { _permit: permit })),
            Err(_) => {
                self.overflowed_connections.fetch_add(1, Ordering::Relaxed);
                Err(NoSlot::Overflow)
            }
        }
    }

    /// A slot at once, or none.
    fn try_slot(&self) -> Option<Slot> {
        let permit = Arc::clone(&self.limiter).try_acquire_owned().ok()?;
        Some(Slot { _permit: permit })
    }

    /// Admit a request: a slot, waited for as [`Self::acquire`] does, then a place among the
    /// cluster's active requests, both held until the [`Admission`] drops; `Overflow` when
    /// `maxRequests` are active already (Envoy checks it as the request is given a
    /// connection, so a queued request counts only once it leaves the queue).
    pub async fn admit(self: &Arc<Self>, within: Option<Duration>) -> Result<Admission, NoSlot> {
        let slot = self.acquire(within).await?;
        if self.active_requests.fetch_add(1, Ordering::Relaxed) >= self.max_requests {
            self.active_requests.fetch_sub(1, Ordering::Relaxed);
            self.overflowed_requests.fetch_add(1, Ordering::Relaxed);
            return Err(NoSlot::Overflow);
        }
        Ok(Admission {
            _slot: slot,
            active: Arc::clone(self),
        })
    }

    /// Take a retry, held until the token drops (after the retried attempt is answered);
    /// `None`, counted, when `maxRetries` retries are in flight — or, with the cluster's retry
    /// budget, its share of the active and pending requests (at least its minimum), as Envoy
    /// counts it —, or when the route's retry `budget_percent` of the active requests (at
    /// least 3) is.
    pub fn try_retry(&self, budget_percent: Option<f64>) -> Option<RetryToken<'_>> {
        let mut allowed = match self.retry_budget {
            Some((basis_points, min)) => {
                let requests = self.active_requests.load(Ordering::Relaxed) + self.pending.load(Ordering::Relaxed);
                (requests.saturating_mul(basis_points) / 10_000).max(min)
            }
            None => self.max_retries,
        };
        if let Some(pct) = budget_percent {
            let active = self.active_requests.load(Ordering::Relaxed) as f64;
            allowed = allowed.min((active * pct / 100.0).max(3.0) as u64);
        }
        if self.active_retries.fetch_add(1, Ordering::Relaxed) >= allowed {
            self.active_retries.fetch_sub(1, Ordering::Relaxed);
            self.overflowed_retries.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(RetryToken(self))
    }
}

/// A request admitted to its cluster: its slot, and its place among the active requests;
/// kept with the response until its body ends ([`super::InFlight::hold`]).
#[derive(Debug)]
pub struct Admission {
    _slot: Slot,
    active: Arc<CircuitBreakers>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.active.active_requests.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A retry counted in flight on its cluster.
#[derive(Debug)]
pub struct RetryToken<'a>(&'a CircuitBreakers);

impl Drop for RetryToken<'_> {
    fn drop(&mut self) {
        self.0.active_retries.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breakers(max_requests: Option<u32>, max_retries: Option<u32>) -> CircuitBreakers {
        CircuitBreakers::new(&ConnectionPool {
            max_requests,
            max_retries,
            ..ConnectionPool::default()
        })
    }

    #[tokio::test]
    async fn max_requests_bounds_active_requests_and_counts_the_overflow() {
        let cb = Arc::new(breakers(Some(2), None));
        let a = cb.admit(None).await.expect("first");
        let _b = cb.admit(None).await.expect("second");
        assert_eq!(cb.admit(None).await.unwrap_err(), NoSlot::Overflow);
        assert_eq!(cb.overflowed_requests.load(Ordering::Relaxed), 1);
        drop(a);
        let _c = cb.admit(None).await.expect("a finished request frees its place");
        assert_eq!(cb.active_requests.load(Ordering::Relaxed), 2);
    }

    /// Istio sets each of Envoy's thresholds to MaxUint32 unless a DestinationRule sets it:
    /// a cluster without a rule never answers 503 `UO` for load (Envoy's own default, and
    /// Trellis' until now, was 1024 requests plus 1024 queued).
    #[tokio::test]
    async fn without_a_rule_no_threshold_refuses_a_request() {
        let cb = Arc::new(CircuitBreakers::new(&ConnectionPool::default()));
        let mut held = Vec::new();
        for n in 0..5000 {
            // No wait in the pending queue: a request past a limit would time out at once.
            match cb.admit(Some(Duration::ZERO)).await {
                Ok(a) => held.push(a),
                Err(e) => panic!("request {n} refused with {e:?} by the default thresholds"),
            }
        }
        assert_eq!(cb.active_requests.load(Ordering::Relaxed), 5000);
        let retries: Vec<_> = (0..5000).filter_map(|_| cb.try_retry(None)).collect();
        assert_eq!(retries.len(), 5000, "retries in flight: no limit either");
        assert_eq!(cb.overflowed_requests.load(Ordering::Relaxed), 0);
    }

    /// Envoy's retry budget: a share of the active and pending requests, at least its
    /// minimum, in place of `maxRetries`.
    #[tokio::test]
    async fn the_retry_budget_allows_its_share_of_the_requests_and_replaces_max_retries() {
        let cb = Arc::new(CircuitBreakers::new(&ConnectionPool {
            max_retries: Some(1),
            retry_budget: Some(trellis_contract::RetryBudget {
                budget_basis_points: 2000,
                min_retry_concurrency: 2,
            }),
            ..ConnectionPool::default()
        }));
        let held: Vec<_> = (0..2).map(|_| cb.try_retry(None).expect("the minimum")).collect();
        assert!(cb.try_retry(None).is_none(), "no request active: the minimum, 2");
        let mut active = Vec::new();
        for _ in 0..20 {
            active.push(cb.admit(None).await.expect("admitted"));
        }
        let more: Vec<_> = (0..2).map(|_| cb.try_retry(None).expect("20 % of 20")).collect();
        assert!(cb.try_retry(None).is_none(), "20 % of 20 requests: 4 in flight");
        assert_eq!(cb.overflowed_retries.load(Ordering::Relaxed), 2);
        drop((held, more, active));
    }

    #[test]
    fn max_retries_bounds_retries_in_flight_and_counts_the_overflow() {
        let cb = breakers(None, Some(1));
        let t = cb.try_retry(None).expect("first retry");
        assert!(cb.try_retry(None).is_none());
        assert_eq!(cb.overflowed_retries.load(Ordering::Relaxed), 1);
        drop(t);
        assert!(cb.try_retry(None).is_some());
        // The route's budget and the cluster's maximum: the lower wins.
        let cb = breakers(None, Some(10));
        let held: Vec<_> = (0..3)
            .map(|_| cb.try_retry(Some(1.0)).expect("3 always allowed"))
            .collect();
        assert!(cb.try_retry(Some(1.0)).is_none(), "budget of 1 % of no requests: 3");
        drop(held);
        let unlimited = breakers(None, None);
        assert!(
            matches!(unlimited.try_tcp_connection(), Ok(None)),
            "no TCP limit unless set"
        );
        let held: Vec<_> = (0..100).filter_map(|_| unlimited.try_retry(None)).collect();
        assert_eq!(held.len(), 100, "no maxRetries: unlimited, as Istio");
    }
}
