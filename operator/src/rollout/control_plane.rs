//! The control plane first, then the data plane (Istio's upgrade order). While the operator's
//! own Deployment rolls, the proxies' connections move from the replicas going away to the new
//! ones: a proxy reconnecting then is the control plane's doing, not its version's, and a wave
//! judged at that moment (its soak needs every new proxy connected) would be rolled back for
//! it. So the rollout holds while the control plane rolls ([`rolling`]): no wave starts, and a
//! wave under way is neither judged nor advanced, until the operator's replicas are replaced.
//! `meshctl upgrade` changes both versions at once; this is what orders them.
//!
//! # Caveats
//! - A replica lost otherwise (a node gone, a pod deleted) is no rolling update: the rollout
//!   goes on, so one operator replica that never turns Ready does not hold the data plane.
//! - An operator upgrade that never finishes (an image that cannot be pulled) holds the
//!   rollout as long: the operator's Deployment says why, and the operator logs that it waits.

use trellis_manifests::install::OPERATOR_NAME;

use super::plan::Workload;
use crate::dataplane::{WorkloadKind, WorkloadRef};

/// Why the proxy rollout must wait for the control plane, if it must: this operator runs
/// `running` while the Mesh's `spec.versions.operator` names `wanted` (it is about to be
/// replaced, and its successors drive the rollout), or the operator's own Deployment in
/// `namespace`, among `workloads`, is rolling (its controller has not seen its template yet,
/// replicas are not updated yet, or old ones are left).
pub fn rolling(namespace: &str, running: Option<&str>, wanted: Option<&str>, workloads: &[Workload]) -> Option<String> {
    if let (Some(running), Some(wanted)) = (running, wanted)
        && running != wanted
    {
        return Some(format!(
            "this operator runs {running} and spec.versions.operator names {wanted}: the operator is upgraded first"
        ));
    }
    let id = WorkloadRef {
        kind: WorkloadKind::Deployment,
        namespace: namespace.to_string(),
        name: OPERATOR_NAME.to_string(),
    };
    let p = workloads.iter().find(|w| w.id == id)?.progress;
    let rolling = !p.observed || p.updated < p.desired || p.total > p.desired;
    rolling.then(|| {
        format!(
            "{id} is rolling ({} of {} replicas updated, {} in all): its replicas are replaced first",
            p.updated, p.desired, p.total
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::plan::Progress;

    fn operator(observed: bool, desired: u32, updated: u32, ready: u32, total: u32) -> Workload {
        Workload {
            id: WorkloadRef {
                kind: WorkloadKind::Deployment,
                namespace: "trellis-system".into(),
                name: OPERATOR_NAME.into(),
            },
            labels: Default::default(),
            assigned: None,
            gateway: None,
            progress: Progress {
                observed,
                desired,
                updated,
                ready,
                total,
            },
            budget_exhausted: false,
        }
    }

    #[test]
    fn the_control_plane_rolls_while_this_operator_is_to_be_replaced_or_its_deployment_rolls() {
        let settled = [operator(true, 2, 2, 2, 2)];
        assert_eq!(rolling("trellis-system", Some("op:2"), Some("op:2"), &settled), None);
        assert_eq!(
            rolling("trellis-system", None, Some("op:2"), &settled),
            None,
            "image unknown"
        );
        assert_eq!(
            rolling("trellis-system", Some("op:1"), Some("op:2"), &settled).as_deref(),
            Some("this operator runs op:1 and spec.versions.operator names op:2: the operator is upgraded first")
        );
        // One new replica up, both old ones still there (maxSurge 1): rolling.
        assert_eq!(
            rolling(
                "trellis-system",
                Some("op:2"),
                Some("op:2"),
                &[operator(true, 2, 1, 1, 3)]
            )
            .as_deref(),
            Some(
                "Deployment trellis-system/trellis-operator is rolling (1 of 2 replicas updated, 3 in all): its replicas are replaced first"
            )
        );
        // The template changed and its controller has not seen it yet.
        assert!(rolling("trellis-system", None, None, &[operator(false, 2, 2, 2, 2)]).is_some());
        // Every replica updated, the last old one gone: settled, though the newest is not
        // Ready yet (a replica that never turns Ready does not hold the data plane).
        assert_eq!(
            rolling("trellis-system", None, None, &[operator(true, 2, 2, 1, 2)]),
            None
        );
        // Another namespace's Deployment of that name is not the control plane.
        assert_eq!(rolling("elsewhere", None, None, &[operator(true, 2, 1, 1, 3)]), None);
        assert_eq!(rolling("trellis-system", None, None, &[]), None);
    }

    /// The reconciler, on a mock API server (the Mesh reconciler's scenarios): `meshctl
    /// upgrade` names a new operator and a new proxy at once, and the shop's `web` runs the old
    /// proxy.
    mod reconciler {
        use std::sync::{Arc, Mutex};

        use serde_json::json;
        use trellis_api::mesh::{Mesh, MeshStatus};

        use super::*;
        use crate::mesh::fixtures::{Changing, Fixed, MeshFixture, Scenario, Step, mesh, timeout_after_1s};
        use crate::mesh::{Context, reconcile};

        const WEB_PATH: &str = "/apis/apps/v1/namespaces/shop/deployments/web";

        fn rolling_condition(status: &MeshStatus) -> (String, String, String) {
            let c = status
                .conditions
                .iter()
                .flatten()
                .find(|c| c.type_ == "RolloutProgressing")
                .expect("a RolloutProgressing condition");
            (c.status.clone(), c.reason.clone(), c.message.clone())
        }

        /// One reconcile as operator `running` sees `m` and `fixed`: the events of its condition
        /// transitions, its status, then `then`.
        async fn reconcile_as(
            running: &str,
            fixed: &Arc<Changing>,
            m: &Mesh,
            events: &[&str],
            then: Vec<Step>,
        ) -> MeshStatus {
            let (ctx, server, _) = Context::test_observing(fixed.clone());
            let ctx = crate::mesh::fixtures::running(ctx, running);
            let (tx, rx) = tokio::sync::oneshot::channel();
            let mut steps: Vec<Step> = events.iter().map(|e| Step::Event((*e).into())).collect();
            steps.push(Step::Status(tx));
            steps.extend(then);
            let scenario = server.run(Scenario::Steps(steps));
            reconcile(Arc::new(m.clone()), ctx).await.expect("reconcile");
            timeout_after_1s(scenario).await;
            rx.await.expect("the status")
        }

        #[tokio::test]
        async fn the_proxies_wait_until_the_operator_has_rolled_to_the_image_the_mesh_names() {
            let fixed = Arc::new(Changing(Mutex::new(Fixed::default())));
            let m = mesh(
                "default",
                json!({"versions": {"operator": "op:2", "proxy": "proxy:2"}, "rollout": {"batchSize": 1}}),
            )
            .finalized();

            // The old operator rolls its own Deployment and starts no wave.
            let held = reconcile_as(
                "op:1",
                &fixed,
                &m,
                &["Ready", "DataPlaneUpToDateFalse", "RolloutProgressing"],
                vec![
                    Step::UpgradeOperator { image: "op:2".into() },
                    Step::Event("OperatorUpgradeStarted".into()),
                ],
            )
            .await;
            assert_eq!(held.rollout, None, "no wave while the operator is to be replaced");
            let (on, reason, message) = rolling_condition(&held);
            assert_eq!((on.as_str(), reason.as_str()), ("True", "WaitingForControlPlane"));
            assert!(
                message.contains("the rollout onto proxy:2 waits for the control plane: this operator runs op:1"),
                "{message}"
            );

            // A new replica leads while an old one still serves: still no wave.
            fixed.set(|f| f.workloads.push(operator(true, 2, 2, 2, 3)));
            let still = reconcile_as("op:2", &fixed, &m.clone().with_status(held), &[], Vec::new()).await;
            assert_eq!(still.rollout, None);
            let (_, reason, message) = rolling_condition(&still);
            assert_eq!(reason, "WaitingForControlPlane");
            assert!(
                message.ends_with(
                    "Deployment trellis-system/trellis-operator is rolling (2 of 2 replicas updated, 3 in all): its replicas are replaced first"
                ),
                "{message}"
            );
            let m = m.with_status(still);

            // The last old replica gone: wave 1 starts.
            fixed.set(|f| f.workloads[1].progress.total = 2);
            let started = reconcile_as(
                "op:2",
                &fixed,
                &m,
                &["RolloutProgressing"],
                vec![
                    Step::Assign {
                        path: WEB_PATH.into(),
                        image: "proxy:2".into(),
                    },
                    Step::Event("RolloutWaveStarted".into()),
                ],
            )
            .await;
            assert_eq!(started.rollout.as_ref().map(|r| r.wave), Some(1));
            assert_eq!(rolling_condition(&started).1, "WaveInProgress");
        }
    }
}
