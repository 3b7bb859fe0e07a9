//! The CA as the Mesh asks for it, in the running operator on a cluster (kubesim, or upstream Kubernetes with
//! `TRELLIS_E2E_CLUSTER=upstream`, where the operator holds exactly its installed RBAC) (`ca::lifecycle`):
//! - `spec.ca.mode: Plugged` with a `secretRef` in another namespace: the operator copies that
//!   Secret's root into `trellis-system/trellis-ca` and issues from it, follows the user's
//!   replacement of it, and says in `CertificateAuthorityReady` when the Secret is unusable;
//!   deleting the Mesh then runs its finalizer (the trust ConfigMaps removed);
//! - a self-signed root with less than a fifth of its life left is rotated by the leader to a
//!   new root valid `spec.ca.rootCertTtl`, both roots trusted while the rotation runs;
//! - `spec.ca.workloadCertTtl` and `spec.ca.rootCertTtl` changed while the operator runs are
//!   followed with no restart: the next certificates are signed for the new workload lifetime,
//!   and a shorter root lifetime makes the root in use due (it is older than four fifths of the
//!   new lifetime): it is rotated at once to a root of the new lifetime.

mod support;

use std::time::{Duration, SystemTime};

use support::{
    Target, ca_condition, cluster_with_web, free_port, operator_client, operator_config, secret_yaml, until_async,
};
use trellis_operator::app;
use trellis_operator::ca::SigningCert;

/// The issuing root's fingerprint, and every root's fingerprint, as the running CA has them.
fn issuing(op: &app::App) -> (Option<String>, Vec<String>) {
    let status = op.roots.status();
    let issuing = status.roots.iter().find(|r| r.issuing).map(|r| r.fingerprint.clone());
    (issuing, status.roots.into_iter().map(|r| r.fingerprint).collect())
}

/// Both parts on one cluster (started once for the test binary: upstream Kubernetes takes a
/// while to start), each with an operator of its own holding exactly its installed RBAC; the
/// CA's state (the Mesh, the stored root) is removed between them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_one_cluster() {
    let (cluster, _pod) = cluster_with_web();
    a_plugged_root_in_another_namespace_is_followed_and_a_broken_one_is_said(&cluster).await;
    support::delete_ca_secret(&cluster);
    a_self_signed_root_near_its_expiry_is_rotated_by_the_leader_with_both_roots_trusted(&cluster).await;
    support::delete_ca_secret(&cluster);
    certificate_lifetimes_changed_while_the_operator_runs_are_followed(&cluster).await;
}

/// The Mesh `default` with a self-signed CA of these lifetimes.
fn self_signed_mesh(workload_ttl: &str, root_ttl: &str) -> String {
    format!(
        "apiVersion: mesh.trellis.dev/v1alpha1\nkind: Mesh\nmetadata: {{name: default}}\nspec:\n  ca: {{mode: SelfSigned, workloadCertTtl: {workload_ttl}, rootCertTtl: {root_ttl}}}\n"
    )
}

async fn certificate_lifetimes_changed_while_the_operator_runs_are_followed(cluster: &Target) {
    // A root of 10 days, 2 days old: not due under 90-day roots (rotated with 2 days left).
    let day = Duration::from_secs(86400);
    let old = SigningCert::self_signed_root("cluster.local", 10 * day, SystemTime::now() - 2 * day).unwrap();
    cluster
        .kubectl_ok(
            &["apply", "-f", "-"],
            Some(&secret_yaml("trellis-system", "trellis-ca", &old)),
        )
        .unwrap();
    cluster
        .kubectl_ok(&["apply", "-f", "-"], Some(&self_signed_mesh("1h", "2160h")))
        .unwrap();
    // Started with another workload lifetime (the flag): the Mesh's wins.
    let op = app::start(operator_config(free_port(), 7200), operator_client(cluster).await)
        .await
        .expect("the operator starts");
    assert_eq!(
        op.roots.workload_ttl(),
        Duration::from_secs(3600),
        "the Mesh's, not the flag's"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        issuing(&op).0.as_deref(),
        Some(old.fingerprint()),
        "not due under 90-day roots"
    );

    // Both lifetimes changed while the operator runs.
    cluster
        .kubectl_ok(&["apply", "-f", "-"], Some(&self_signed_mesh("10m", "24h")))
        .unwrap();
    until_async("the next certificates signed for 10 minutes", 30, || async {
        op.roots.workload_ttl() == Duration::from_secs(600)
    })
    .await;
    // Two days old is past four fifths of a 24-hour life: the root is rotated to one of 24 h.
    until_async("a new root issues", 60, || async {
        issuing(&op).0.is_some_and(|fp| fp != old.fingerprint())
    })
    .await;
    let status = op.roots.status();
    let new = status.roots.iter().find(|r| r.issuing).unwrap();
    let lifetime = new.not_after_unix - new.not_before_unix;
    assert!(
        lifetime.abs_diff(24 * 3600) <= 120,
        "the new root lives the changed spec.ca.rootCertTtl (24 h): {lifetime}s"
    );
    op.stop();
}

async fn a_plugged_root_in_another_namespace_is_followed_and_a_broken_one_is_said(cluster: &Target) {
    let corp =
        SigningCert::self_signed_root("cluster.local", Duration::from_secs(365 * 86400), SystemTime::now()).unwrap();
    support::plug_corp_root(cluster, &corp);
    let op = app::start(operator_config(free_port(), 3600), operator_client(cluster).await)
        .await
        .expect("the operator starts");
    let self_signed = issuing(&op).0.expect("an issuing root");
    assert_ne!(self_signed, corp.fingerprint(), "the operator started on its own root");

    // The plugged root is copied into trellis-ca and rotated to.
    until_async("the CA issues from the plugged root", 60, || async {
        issuing(&op).0.as_deref() == Some(corp.fingerprint())
    })
    .await;
    let stored = app::load_or_create_root(&cluster.client().await.unwrap(), "trellis-system", "cluster.local")
        .await
        .unwrap();
    assert_eq!(
        stored.fingerprint(),
        corp.fingerprint(),
        "trellis-ca holds the plugged root"
    );

    // The user replaces the plugged root: followed again.
    let renewed =
        SigningCert::self_signed_root("cluster.local", Duration::from_secs(365 * 86400), SystemTime::now()).unwrap();
    cluster
        .kubectl_ok(
            &["apply", "-f", "-"],
            Some(&secret_yaml("security", "corp-ca", &renewed)),
        )
        .unwrap();
    until_async("the CA issues from the replaced plugged root", 60, || async {
        issuing(&op).0.as_deref() == Some(renewed.fingerprint())
    })
    .await;

    // A plugged Secret without a key is said on the Mesh, naming the Secret and the fix; the CA
    // keeps the root it has.
    cluster
        .kubectl_ok(
            &[
                "-n",
                "security",
                "patch",
                "secret",
                "corp-ca",
                "--type",
                "json",
                "-p",
                r#"[{"op":"remove","path":"/data/ca.key"}]"#,
            ],
            None,
        )
        .unwrap();
    until_async(
        "CertificateAuthorityReady says the plugged Secret has no key",
        60,
        || async {
            let (status, message) = ca_condition(cluster);
            status == "False" && message.contains("Secret security/corp-ca") && message.contains("has no ca.key")
        },
    )
    .await;
    assert_eq!(issuing(&op).0.as_deref(), Some(renewed.fingerprint()));

    // Deleting the Mesh: the leader's finalizer removes the trust ConfigMaps (listed and deleted
    // by name, all its RBAC allows) and lets the Mesh go.
    assert!(!support::published_roots(cluster, "shop").is_empty());
    cluster
        .kubectl_ok(&["delete", "mesh", "default", "--wait=false"], None)
        .unwrap();
    until_async("the Mesh's finalizer has run and the Mesh is gone", 60, || async {
        cluster
            .kubectl_ok(&["get", "mesh", "-o", "name"], None)
            .is_ok_and(|names| names.trim().is_empty())
    })
    .await;
    assert!(
        support::published_roots(cluster, "shop").is_empty(),
        "the finalizer removed the trust ConfigMap"
    );
    op.stop();
}

async fn a_self_signed_root_near_its_expiry_is_rotated_by_the_leader_with_both_roots_trusted(cluster: &Target) {
    // A root of 10 days with 1 left: past the four fifths of its life.
    let day = Duration::from_secs(86400);
    let old = SigningCert::self_signed_root("cluster.local", 10 * day, SystemTime::now() - 9 * day).unwrap();
    cluster
        .kubectl_ok(
            &["apply", "-f", "-"],
            Some(&secret_yaml("trellis-system", "trellis-ca", &old)),
        )
        .unwrap();
    cluster
        .kubectl_ok(
            &["apply", "-f", "-"],
            Some("apiVersion: mesh.trellis.dev/v1alpha1\nkind: Mesh\nmetadata: {name: default}\nspec:\n  ca: {mode: SelfSigned, rootCertTtl: 2160h}\n"),
        )
        .unwrap();
    let op = app::start(operator_config(free_port(), 3600), operator_client(cluster).await)
        .await
        .expect("the operator starts");
    assert_eq!(
        issuing(&op).0.as_deref(),
        Some(old.fingerprint()),
        "started on the stored root"
    );

    // The leader asks for a new root, which is distributed next to the old one before it issues.
    until_async("the new root issues", 60, || async {
        issuing(&op).0.is_some_and(|fp| fp != old.fingerprint())
    })
    .await;
    let phases: Vec<String> = op.roots.status().transitions.into_iter().map(|t| t.phase).collect();
    assert_eq!(
        phases.get(..3),
        Some(&["Stable".to_string(), "Distributing".into(), "Reissuing".into()][..]),
        "distributed (both roots trusted) before the new one issues: {phases:?}"
    );
    let status = op.roots.status();
    let new = status.roots.iter().find(|r| r.issuing).unwrap();
    let lifetime = new.not_after_unix - new.not_before_unix;
    assert!(
        lifetime.abs_diff(2160 * 3600) <= 3600,
        "the new root lives spec.ca.rootCertTtl (90 days), not the default: {lifetime}s"
    );
    // One rotation, not one per check.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stored = app::load_or_create_root(&cluster.client().await.unwrap(), "trellis-system", "cluster.local")
        .await
        .unwrap();
    assert_eq!(stored.fingerprint(), new.fingerprint);
    op.stop();
}
