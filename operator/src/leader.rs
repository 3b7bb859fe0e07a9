//! Leader election: one replica of the operator leads, on the Lease `trellis-operator` in the
//! control plane's namespace (kube-lease-manager).
//!
//! The leader alone reconciles the Mesh, drives proxy rollouts, generates new roots and
//! records root rotations; every replica serves config push, certificate signing and the
//! webhooks. [`while_leading`] runs a task only while this replica leads and stops it the
//! moment leadership is lost.
//!
//! # Guarantees
//! - At most one holder of a valid lease at a time (the API server arbitrates by
//!   resourceVersion).
//! - A replica that stops gracefully releases the lease ([`Elector::release`]), so another
//!   leads within about a second; a replica that is killed is replaced once its lease expires
//!   ([`LEASE_SECONDS`] after its last renewal).
//!
//! # Caveats
//! - A leader cut off from the API server keeps believing it leads until its renewal fails
//!   and kube-lease-manager says otherwise; everything the leader writes is idempotent and
//!   recorded in the objects themselves (Mesh status, workload annotations, the CA Secret), so
//!   a short overlap repeats no rollout wave and generates no second root.

use std::future::Future;
use std::time::Duration;

use kube::Client;
use kube_lease_manager::{LeaseManagerBuilder, LeaseManagerError};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The Lease's name.
pub const LEASE_NAME: &str = trellis_manifests::install::LEADER_LEASE;
/// How long a lease is valid after its last renewal.
// why: a killed leader is replaced within this (plus up to a second of jitter); the issue's
// bound is 15 s for a new leader.
pub const LEASE_SECONDS: u64 = 10;
/// The leader renews this long before its lease expires.
// why: room for a slow API server on a loaded node; renewals every 6 s.
pub const RENEW_BEFORE_SECONDS: u64 = 4;

/// Whether this replica leads, as it changes.
#[derive(Debug, Clone)]
pub struct Leadership {
    rx: watch::Receiver<bool>,
    // A fixed leadership keeps its sender, so the receiver never reads as closed ("lost").
    _fixed: Option<std::sync::Arc<watch::Sender<bool>>>,
}

impl Leadership {
    /// A replica that always leads (a single operator with no election, and tests).
    pub fn always() -> Self {
        let (tx, rx) = watch::channel(true);
        Leadership {
            rx,
            _fixed: Some(std::sync::Arc::new(tx)),
        }
    }

    /// Leadership driven by hand (tests).
    pub fn manual(leading: bool) -> (watch::Sender<bool>, Self) {
        let (tx, rx) = watch::channel(leading);
        (tx, Leadership { rx, _fixed: None })
    }

    /// Whether this replica leads now.
    pub fn is_leader(&self) -> bool {
        *self.rx.borrow()
    }

    /// Wait until this replica leads; `false` if the election stopped.
    pub async fn acquired(&mut self) -> bool {
        // A stopped election leads no more, whatever it said last.
        if self.rx.has_changed().is_err() {
            return false;
        }
        self.rx.wait_for(|l| *l).await.is_ok()
    }

    /// Wait until this replica no longer leads (or the election stopped).
    pub async fn lost(&mut self) {
        let _ = self.rx.wait_for(|l| !*l).await;
    }
}

/// The running election; [`Elector::release`] hands the lease over on shutdown.
#[derive(Debug)]
pub struct Elector {
    leadership: Option<watch::Receiver<bool>>,
    task: JoinHandle<Result<kube_lease_manager::LeaseManager, LeaseManagerError>>,
}

impl Elector {
    /// Stop competing and release the lease if held (waits at most 5 s for the API server).
    pub async fn release(mut self) {
        // Dropping the last receiver makes kube-lease-manager release the lease and stop.
        self.leadership = None;
        match tokio::time::timeout(Duration::from_secs(5), &mut self.task).await {
            Ok(Ok(Ok(_))) => tracing::info!("released the leader lease"),
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "could not release the leader lease; it expires by itself"),
            Ok(Err(e)) => tracing::warn!(error = %e, "the leader election task failed"),
            Err(_) => {
                self.task.abort();
                tracing::warn!("releasing the leader lease timed out; it expires by itself");
            }
        }
    }
}

/// Compete for the lease `name` in `namespace` as `identity` (the pod name).
pub async fn elect(
    client: Client,
    namespace: &str,
    name: &str,
    identity: &str,
) -> Result<(Leadership, Elector), LeaseManagerError> {
    let manager = LeaseManagerBuilder::new(client, name)
        .with_namespace(namespace)
        .with_identity(identity)
        .with_duration(LEASE_SECONDS)
        .with_grace(RENEW_BEFORE_SECONDS)
        .with_field_manager(format!("{}-{identity}", crate::FIELD_MANAGER))
        .build()
        .await?;
    let (rx, task) = manager.watch().await;
    let mut log = rx.clone();
    let who = identity.to_string();
    tokio::spawn(async move {
        loop {
            if *log.borrow_and_update() {
                tracing::info!(identity = %who, "this replica leads: reconciling the Mesh, rollouts and root rotations");
            } else {
                tracing::info!(identity = %who, "this replica follows: serving push, certificates and webhooks");
            }
            if log.changed().await.is_err() {
                return;
            }
        }
    });
    Ok((
        Leadership {
            rx: rx.clone(),
            _fixed: None,
        },
        Elector {
            leadership: Some(rx),
            task,
        },
    ))
}

/// Run the task `make` builds whenever this replica leads, and abort it as soon as leadership
/// is lost (a task that ends by itself is started again at the next term). Runs until the
/// election stops.
pub async fn while_leading<F, Fut>(mut leadership: Leadership, what: &'static str, mut make: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        if !leadership.acquired().await {
            return;
        }
        tracing::info!(task = what, "leading: starting");
        let mut task = tokio::spawn(make());
        tokio::select! {
            _ = leadership.lost() => {
                task.abort();
                tracing::info!(task = what, "no longer leading: stopped");
            }
            _ = &mut task => {
                // Ended by itself: wait for leadership to be lost before running it again.
                leadership.lost().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_task_runs_only_while_leading() {
        let (tx, leadership) = Leadership::manual(false);
        let started = Arc::new(AtomicUsize::new(0));
        let running = Arc::new(AtomicUsize::new(0));
        let (s, r) = (started.clone(), running.clone());
        let supervisor = tokio::spawn(while_leading(leadership, "test", move || {
            let (s, r) = (s.clone(), r.clone());
            async move {
                s.fetch_add(1, Ordering::SeqCst);
                struct Running(Arc<AtomicUsize>);
                impl Drop for Running {
                    fn drop(&mut self) {
                        self.0.fetch_sub(1, Ordering::SeqCst);
                    }
                }
                r.fetch_add(1, Ordering::SeqCst);
                let _guard = Running(r);
                std::future::pending::<()>().await;
            }
        }));
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(started.load(Ordering::SeqCst), 0, "a follower runs nothing");

        tx.send(true).unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(running.load(Ordering::SeqCst), 1, "the leader runs the task");

        tx.send(false).unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(running.load(Ordering::SeqCst), 0, "losing leadership stops it");

        tx.send(true).unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(started.load(Ordering::SeqCst), 2, "a new term starts it again");
        assert_eq!(running.load(Ordering::SeqCst), 1);

        drop(tx);
        tokio::time::timeout(Duration::from_secs(1), supervisor)
            .await
            .expect("the supervisor ends with the election")
            .unwrap();
    }
}
