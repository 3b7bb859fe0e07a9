//! Overload protection for downstream connections, after Envoy's overload
//! manager (`global_downstream_max_connections`) as its edge best practices
//! configure it: one budget of connections shared by every traffic listener.
//! A connection over the budget is accepted and closed at once — the accept
//! queue keeps moving, and a client learns immediately instead of hanging —
//! and counted (`trellis_proxy_downstream_cx_overflow_total`).
//!
//! The admin, stats and health servers are outside the budget (Istio marks
//! them `ignore_global_conn_limit`), so `/ready` on 15021 keeps answering
//! while traffic listeners are full. The default budget leaves room in the
//! process's file descriptor limit for them and for upstream connections:
//! without it, a flood of connections exhausted the descriptors and every
//! accept — the probes' included — failed.

use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Envoy's recommended `global_downstream_max_connections` for an edge proxy.
pub const EDGE_MAX_CONNECTIONS: u32 = 50_000;

/// File descriptors kept out of the downstream budget: listeners, the admin
/// servers and their clients, DNS sockets, the runtime's own, files read.
const RESERVED_DESCRIPTORS: u64 = 128;

/// The default downstream budget for a process allowed `nofile` descriptors:
/// half of what is left after the reserve (each downstream connection may need
/// an upstream one), at most [`EDGE_MAX_CONNECTIONS`], at least one.
pub fn default_max_connections(nofile: u64) -> u32 {
    let budget = nofile.saturating_sub(RESERVED_DESCRIPTORS) / 2;
    u32::try_from(budget).unwrap_or(u32::MAX).clamp(1, EDGE_MAX_CONNECTIONS)
}

/// The process's soft limit on open file descriptors.
pub fn descriptor_limit() -> std::io::Result<u64> {
    let (soft, _) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)?;
    Ok(soft)
}

/// Raise the soft file descriptor limit to the hard one (container runtimes
/// often start processes at a soft limit of 1024 with a far higher hard
/// limit); returns the limit now in force.
pub fn raise_descriptor_limit() -> std::io::Result<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
        return Ok(hard);
    }
    Ok(soft)
}

/// The downstream connection budget shared by every traffic listener.
#[derive(Debug)]
pub struct ConnectionBudget {
    limit: u32,
    permits: Arc<Semaphore>,
}

/// One admitted downstream connection; its slot returns when it drops.
#[derive(Debug)]
pub struct Admitted {
    _permit: OwnedSemaphorePermit,
}

impl ConnectionBudget {
    /// A budget of `limit` connections (at least one).
    pub fn new(limit: u32) -> Self {
        let limit = limit.max(1);
        Self {
            limit,
            permits: Arc::new(Semaphore::new(limit as usize)),
        }
    }

    /// The configured limit.
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// Connections open now.
    pub fn in_use(&self) -> u32 {
        let free = u32::try_from(self.permits.available_permits()).unwrap_or(u32::MAX);
        self.limit.saturating_sub(free)
    }

    /// Admit one more connection, or `None` when the budget is spent.
    pub fn try_admit(&self) -> Option<Admitted> {
        Arc::clone(&self.permits)
            .try_acquire_owned()
            .ok()
            .map(|p| Admitted { _permit: p })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_leaves_room_for_upstreams_and_admin() {
        assert_eq!(default_max_connections(1024), 448);
        assert_eq!(default_max_connections(256), 64);
        // Envoy's edge figure caps large limits.
        assert_eq!(default_max_connections(1 << 20), EDGE_MAX_CONNECTIONS);
        assert_eq!(default_max_connections(u64::MAX), EDGE_MAX_CONNECTIONS);
        // A tiny limit still admits a connection.
        assert_eq!(default_max_connections(10), 1);
    }

    #[test]
    fn the_budget_admits_up_to_its_limit_and_frees_on_drop() {
        let b = ConnectionBudget::new(2);
        let one = b.try_admit().unwrap();
        let _two = b.try_admit().unwrap();
        assert!(b.try_admit().is_none());
        assert_eq!(b.in_use(), 2);
        drop(one);
        assert_eq!(b.in_use(), 1);
        assert!(b.try_admit().is_some());
    }

    #[test]
    fn raising_the_descriptor_limit_never_lowers_it() {
        let before = descriptor_limit().unwrap();
        assert!(raise_descriptor_limit().unwrap() >= before);
    }
}
