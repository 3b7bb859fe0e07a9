//! The upgrade the Mesh reconciler drives once the status holds the plan: the operator's own
//! Deployment rolled to `spec.versions.operator`, then the proxy rollout's wave applied — each
//! workload of the wave assigned the proxy image with the wave's restart time — and announced.

use std::time::SystemTime;

use kube::Api;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use trellis_api::mesh::Mesh;

use super::status::MeshStatusExt;
use super::{Context, Error};
use crate::events::EventType;
use crate::rollout::{self, plan::Plan};
use crate::settings::RESYNC;
use crate::settings::Settings;

/// Act on `plan` (made for `settings` at `now`, already recorded in the status): roll the
/// operator if the Mesh names another image for it, assign the wave's images, publish the
/// plan's announcements; when to look again.
pub(super) async fn upgrade(
    mesh: &Mesh,
    ctx: &Context,
    settings: &Settings,
    plan: &Plan,
    now: SystemTime,
) -> Result<Action, Error> {
    upgrade_operator(mesh, ctx, settings).await?;
    // The restart time is the wave's start, the same however often the wave's assignments
    // are made (a reconcile on a stale cache, a new leader): re-asserting one changes no
    // pod template, so no workload restarts twice for one wave.
    let restarted_at = plan
        .status
        .as_ref()
        .and_then(|s| rollout::plan::parse_time(s.wave_started.as_deref()))
        .unwrap_or(now);
    for a in &plan.assignments {
        rollout::workloads::assign(&ctx.client, a, restarted_at)
            .await
            .map_err(Error::Kube)?;
        tracing::info!(workload = %a.workload, image = %a.image, "assigned the proxy image; the workload restarts");
    }
    for a in &plan.announcements {
        let type_ = if a.warning {
            EventType::Warning
        } else {
            EventType::Normal
        };
        mesh.publish(ctx, type_, a.reason, "Rollout", a.message.clone()).await?;
    }
    Ok(Action::requeue(plan.recheck.min(RESYNC)))
}

/// `spec.versions.operator` acted on: when it names another image than the one this
/// operator runs, the operator's Deployment is rolled to it (its own rolling update: one
/// new replica at a time, none unavailable; the new replicas know their image from the
/// same variable, so they do nothing more).
async fn upgrade_operator(mesh: &Mesh, ctx: &Context, settings: &Settings) -> Result<(), Error> {
    use trellis_manifests::install::{OPERATOR_CONTAINER, OPERATOR_IMAGE_ENV, OPERATOR_NAME};
    let (namespace, Some(running)) = &ctx.operator else {
        return Ok(());
    };
    let Some(wanted) = settings.operator_image.as_ref().filter(|w| *w != running) else {
        return Ok(());
    };
    let api: Api<k8s_openapi::api::apps::v1::Deployment> = Api::namespaced(ctx.client.clone(), namespace);
    let patch = serde_json::json!({"spec": {"template": {"spec": {"containers": [{
        "name": OPERATOR_CONTAINER,
        "image": wanted,
        "env": [{"name": OPERATOR_IMAGE_ENV, "value": wanted}],
    }]}}}});
    api.patch(OPERATOR_NAME, &PatchParams::default(), &Patch::Strategic(patch))
        .await
        .map_err(Error::Kube)?;
    tracing::info!(from = %running, to = %wanted, "spec.versions.operator names another image; rolling the operator to it");
    let note = format!(
        "spec.versions.operator is {wanted}; rolling Deployment {namespace}/{OPERATOR_NAME} from {running} (one replica at a time)"
    );
    mesh.publish(ctx, EventType::Normal, "OperatorUpgradeStarted", "Upgrade", note)
        .await
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;
    use trellis_api::mesh::conditions::*;

    use crate::dataplane::MeshedPod;
    use crate::mesh::fixtures::{
        Changing, Fixed, MeshFixture, Scenario, Step, condition, mesh, reconciles_silently, running, timeout_after_1s,
        web,
    };
    use crate::mesh::{Context, reconcile};
    use crate::rollout::plan::Workload;
    use crate::settings::Defaults;

    use super::*;

    #[tokio::test]
    async fn a_new_proxy_image_is_recorded_as_wave_one_before_the_workload_is_restarted() {
        let (ctx, server, _) = Context::test(Fixed::default());
        let m = mesh("default", json!({"versions": {"proxy": "proxy:2"}})).finalized();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut steps = Step::rollout_starts(tx);
        steps.extend([
            Step::Assign {
                path: "/apis/apps/v1/namespaces/shop/deployments/web".into(),
                image: "proxy:2".into(),
            },
            Step::Event("RolloutWaveStarted".into()),
        ]);
        let scenario = server.run(Scenario::Steps(steps));
        let action = reconcile(Arc::new(m), ctx).await.expect("reconcile");
        timeout_after_1s(scenario).await;
        assert_eq!(action, Action::requeue(rollout::plan::WAVE_RECHECK));
        let status = rx.await.unwrap();
        let r = status.rollout.clone().expect("a rollout status");
        assert_eq!((r.target_image.as_str(), r.wave), ("proxy:2", 1));
        assert_eq!(r.phase, Some(trellis_api::mesh::RolloutPhase::Progressing));
        let members = r.wave_workloads.unwrap();
        assert_eq!(members[0].name, "web");
        assert_eq!(members[0].previous_image, Some(Defaults::default().proxy_image));
        assert_eq!(condition(&status, ROLLOUT_PROGRESSING).status, "True");
        let versions = status.data_plane.unwrap().versions.unwrap();
        assert_eq!(versions[0].pods, 2, "version skew: both pods still on the old image");
    }

    /// The shop's `db`, one pod on `image`, and `web` as in [`Fixed::default`].
    fn db_and_web(db_image: &str, db_assigned: Option<&str>) -> Fixed {
        let mut f = Fixed::default();
        let db = crate::dataplane::WorkloadRef {
            name: "db".into(),
            ..web()
        };
        f.pods.push(MeshedPod {
            name: "db-1".into(),
            image: db_image.into(),
            owner: crate::dataplane::Owner::Workload(db.clone()),
            ..f.pods[0].clone()
        });
        f.links.insert("shop/db-1".into(), f.links["shop/web-1"]);
        f.workloads.push(Workload {
            id: db,
            assigned: db_assigned.map(str::to_string),
            ..f.workloads[0].clone()
        });
        f
    }

    #[tokio::test]
    async fn each_wave_is_announced_by_an_event_of_its_own() {
        let old = Defaults::default().proxy_image;
        let observe = Arc::new(Changing(std::sync::Mutex::new(db_and_web(&old, None))));
        let (ctx, server, _) = Context::test_observing(observe.clone());
        let m = mesh(
            "default",
            json!({"versions": {"proxy": "proxy:2"}, "rollout": {"batchSize": 1, "pause": "0s"}}),
        )
        .finalized();

        let (tx1, rx1) = tokio::sync::oneshot::channel();
        let (tx2, rx2) = tokio::sync::oneshot::channel();
        let (tx3, rx3) = tokio::sync::oneshot::channel();
        // Wave 1: db (workloads in name order).
        let mut steps = Step::rollout_starts(tx1);
        steps.extend([
            Step::Assign {
                path: "/apis/apps/v1/namespaces/shop/deployments/db".into(),
                image: "proxy:2".into(),
            },
            Step::EventSaying(
                "RolloutWaveStarted".into(),
                "wave 1: restarting Deployment shop/db onto proxy:2".into(),
            ),
            // db is healthy on proxy:2: wave 1 finished (soaking for 0 s).
            Step::EventSaying("RolloutProgressing".into(), "wave 1 is healthy".into()),
            Step::Status(tx2),
            Step::EventSaying("RolloutWaveFinished".into(), "wave 1 is healthy".into()),
            // Wave 2: web, announced by a new event saying so (kube-runtime's Recorder made it
            // the series of wave 1's event: "wave 1: restarting Deployment shop/db (x2)").
            Step::EventSaying("RolloutProgressing".into(), "wave 2 is restarting".into()),
            Step::Status(tx3),
            Step::Assign {
                path: "/apis/apps/v1/namespaces/shop/deployments/web".into(),
                image: "proxy:2".into(),
            },
            Step::EventSaying(
                "RolloutWaveStarted".into(),
                "wave 2: restarting Deployment shop/web onto proxy:2".into(),
            ),
        ]);
        let scenario = server.run(Scenario::Steps(steps));
        reconcile(Arc::new(m.clone()), ctx.clone()).await.expect("wave 1");
        let wave1 = rx1.await.expect("the status of wave 1");
        observe.set(|f| *f = db_and_web("proxy:2", Some("proxy:2")));
        reconcile(Arc::new(m.clone().with_status(wave1)), ctx.clone())
            .await
            .expect("wave 1 healthy");
        let soaked = rx2.await.expect("the status of wave 1's soak");
        reconcile(Arc::new(m.with_status(soaked)), ctx.clone())
            .await
            .expect("wave 2");
        timeout_after_1s(scenario).await;
        let wave2 = rx3.await.expect("the status of wave 2").rollout.expect("a rollout");
        assert_eq!(wave2.wave, 2);
        assert_eq!(wave2.wave_workloads.expect("members")[0].name, "web");
    }

    #[tokio::test]
    async fn versions_operator_rolls_the_operator_deployment_to_the_image_it_names() {
        let image = Defaults::default().proxy_image;
        let current = "ghcr.io/trellis-mesh/trellis-operator:1".to_string();
        let wanted = "ghcr.io/trellis-mesh/trellis-operator:2".to_string();
        let (ctx, server, _) = Context::test(Fixed::default());
        let ctx = running(ctx, &current);
        let m = mesh("default", json!({"versions": {"operator": wanted, "proxy": image}})).finalized();
        let (tx, _rx) = tokio::sync::oneshot::channel();
        let scenario = server.run(Scenario::Steps(vec![
            Step::Event("Ready".into()),
            Step::Status(tx),
            Step::UpgradeOperator { image: wanted.clone() },
            Step::Event("OperatorUpgradeStarted".into()),
        ]));
        reconcile(Arc::new(m), ctx.clone()).await.expect("reconcile");
        timeout_after_1s(scenario).await;

        // The operator already runs the image the Mesh names: nothing to do.
        let (ctx, server, _) = Context::test(Fixed::default());
        let ctx = running(ctx, &wanted);
        let m = mesh("default", json!({"versions": {"operator": wanted, "proxy": image}})).finalized();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let scenario = server.run(Scenario::EventsThenStatus(vec!["Ready".into()], m.clone(), tx));
        reconcile(Arc::new(m.clone()), ctx.clone()).await.expect("reconcile");
        timeout_after_1s(scenario).await;
        let status = rx.await.unwrap();
        let (ctx2, server2, _) = Context::test(Fixed::default());
        let ctx2 = running(ctx2, &wanted);
        reconciles_silently(m.with_status(status), ctx2, server2).await;
    }

    #[tokio::test]
    async fn an_invalid_spec_starts_no_rollout() {
        let (ctx, server, _) = Context::test(Fixed::default());
        let m = mesh(
            "default",
            json!({"versions": {"proxy": "proxy:2"}, "rollout": {"pause": "soon"}}),
        )
        .finalized();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let scenario = server.run(Scenario::EventsThenStatus(
            vec!["ReadyFalse".into(), "Degraded".into()],
            m.clone(),
            tx,
        ));
        reconcile(Arc::new(m), ctx).await.expect("reconcile");
        timeout_after_1s(scenario).await;
        let status = rx.await.unwrap();
        assert!(status.rollout.is_none(), "no wave, no workload touched");
        assert!(condition(&status, DEGRADED).message.contains("spec.rollout.pause"));
    }
}
