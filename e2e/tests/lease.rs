//! Leader election with kube-lease-manager against kubesim: one holder at
//! a time, and the lease is handed over when the holder lets go.

use std::time::Duration;

use anyhow::{Context as _, Result};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use kube_lease_manager::LeaseManagerBuilder;
use trellis_e2e::harness::TestCluster;

async fn until(rx: &mut tokio::sync::watch::Receiver<bool>, leader: bool) -> Result<()> {
    tokio::time::timeout(Duration::from_secs(15), rx.wait_for(|l| *l == leader))
        .await
        .context("leadership did not change in time")?
        .context("lease manager stopped")?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_is_held_and_handed_over() -> Result<()> {
    let k = TestCluster::start()?;
    let client = k.client().await?;
    let manager = |identity: &str| {
        LeaseManagerBuilder::new(client.clone(), "trellis-operator")
            .with_namespace("default")
            .with_identity(identity)
            // Valid for 3s, renewed 1s before expiry: slack for a loaded CI
            // machine, and a quick hand-over.
            .with_duration(3)
            .with_grace(1)
            .build()
    };
    let (mut a, a_task) = manager("a").await?.watch().await;
    until(&mut a, true).await?;
    let (mut b, b_task) = manager("b").await?.watch().await;
    // b waits while a holds the lease.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!*b.borrow(), "only one holder at a time");
    assert!(*a.borrow());

    // a steps down (dropping its receiver releases the lease); b takes over.
    drop(a);
    a_task.await??;
    until(&mut b, true).await?;
    let leases: Api<Lease> = Api::namespaced(client.clone(), "default");
    let lease = leases.get("trellis-operator").await?;
    assert_eq!(lease.spec.and_then(|s| s.holder_identity).as_deref(), Some("b"));
    drop(b);
    b_task.await??;
    Ok(())
}
