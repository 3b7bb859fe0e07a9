//! Root rotation and gateways. A gateway's proxy is not an injected sidecar but its pod's own
//! container (`gateway`, started in the gateway role, as the install's ingress and egress
//! gateways run it); it subscribes under its pod's name as a sidecar does. A replica that never
//! saw it connected — one started after the leader it replaces was killed, while the gateway
//! was reconnecting — knows it runs from its Ready pod, so the rotation waits for it: otherwise
//! Reissuing would begin while the gateway trusts only the old root, and its handshakes with
//! sidecars renewed from the new one would fail until it subscribed again.

mod support;

use std::time::Duration;

use support::rotation::{
    assert_held_by_a_proxy_away, assert_the_rotation_ends_through, pem_fingerprints, phases, subscribed, trust_monitor,
};
use support::{
    cluster_with_web, free_port, mesh_proxy, operator_client, operator_config, rolled_out_pod, shop_proxy, until,
};
use trellis_operator::app;

/// The gateway's name, ServiceAccount and `app` label.
const GATEWAY: &str = "trellis-ingressgateway";

/// A gateway Deployment in `shop`: its pod's proxy is the container `gateway` with
/// `TRELLIS_ROLE=gateway`, as `trellis_manifests::sidecar::gateway_pod_template` makes it (here a
/// stand-in that only sleeps: the proxy itself runs in the test's process). No readiness probe,
/// so its pod is Ready once it runs.
const GATEWAY_APP: &str = r#"
apiVersion: v1
kind: ServiceAccount
metadata: {name: trellis-ingressgateway, namespace: shop}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: trellis-ingressgateway, namespace: shop}
spec:
  replicas: 1
  selector: {matchLabels: {app: trellis-ingressgateway}}
  template:
    metadata:
      labels: {app: trellis-ingressgateway, trellis.dev/gateway: trellis-ingressgateway, trellis.dev/inject: disabled}
    spec:
      serviceAccountName: trellis-ingressgateway
      containers:
      - name: gateway
        image: "busybox:1.36"
        imagePullPolicy: IfNotPresent
        command: [sleep, "3600"]
        env: [{name: TRELLIS_ROLE, value: gateway}]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ready_gateway_never_seen_connected_holds_the_rotation_until_its_proxy_reports() {
    support::show_logs();
    let (cluster, _) = cluster_with_web();
    cluster.kubectl_ok(&["apply", "-f", "-"], Some(GATEWAY_APP)).unwrap();
    let pod = rolled_out_pod(&cluster, GATEWAY).await;

    // The operator starts with the gateway's pod Ready and its proxy connected nowhere: this
    // replica never sees it before a rotation is asked for.
    let push = free_port();
    let op = app::start(operator_config(push, 3600), operator_client(&cluster).await)
        .await
        .expect("the operator starts");
    until("the operator leads", 30, || op.leadership.is_leader()).await;
    let old_fp = pem_fingerprints(&op.root_pem)[0].clone();
    support::ask_for_a_new_root(&cluster);
    // Started: it left Stable (and, were the gateway not waited for, would be over at once).
    until("the rotation starts", 30, || phases(&op).len() >= 2).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_held_by_a_proxy_away(&op, &pod, &old_fp);

    // The gateway's proxy subscribes, in its role, under its pod's name: the rotation runs to
    // its end through it, never untrusting the old root while it serves a leaf of it.
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = shop_proxy(&cluster, dir.path(), push, GATEWAY, &pod, &op.root_pem);
    cfg.role = "gateway".into();
    let served = cfg.served.clone();
    let monitor = trust_monitor([("op", op.roots.clone())], [("gateway", served.clone())], &old_fp);
    let (proxy, control) = mesh_proxy(cfg).await;
    until("the gateway's proxy is configured", 30, || {
        proxy.runtime().is_ready() && subscribed(&op, &pod)
    })
    .await;
    assert!(
        op.push
            .sync_state()
            .iter()
            .any(|s| s.proxy == format!("shop/{pod}") && s.role == "gateway"),
        "{:?}",
        op.push.sync_state()
    );
    assert_the_rotation_ends_through(&op, monitor, &proxy, &served, &old_fp).await;
    control.abort();
    op.stop();
}
