//! Gateways in the rollout. A gateway is not injected: its pod's proxy is a container of its
//! own (`gateway`, as [`trellis_manifests::sidecar::proxy_in`] tells it), so the injector's
//! `trellis.dev/proxy-image` annotation means nothing to it. The rollout reads a gateway
//! workload's proxy image from that container in its pod template ([`in_template`]) and
//! assigns one by setting that container's image ([`assignment_patch`]: a strategic merge
//! patch keyed by the container's name, with the `trellis.dev/proxy-version` label — unless the
//! workload's selector selects on it, which the API server would refuse — and `kubectl rollout
//! restart`'s annotation); a rollback sets the previous image back the same way. Its controller then replaces the gateway's pods with its own rolling-update strategy.
//!
//! # Guarantees
//! - Only the proxy container's image, the version label and the restart annotation change;
//!   every other field of the pod template is left as its owner wrote it.

use std::time::SystemTime;

use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use trellis_api::mesh::RESTARTED_AT_ANNOTATION;
use trellis_manifests::sidecar::{PROXY_VERSION_LABEL, ProxyRole, proxy_in, version_label};

/// Where a gateway's proxy runs in its workload's pod template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayProxy {
    /// The container's name.
    pub container: String,
    /// Among the init containers (a native sidecar), not the containers.
    pub init: bool,
    /// The workload's selector selects its pods by the `trellis.dev/proxy-version` label, so
    /// the label cannot change (the API server refuses a template its selector does not
    /// match): the assignment leaves it as it is.
    pub selected_by_version: bool,
}

/// The gateway proxy of `template` (its workload's pods selected by `selector`) and the image
/// its container names, if the template's pods run a gateway (a sidecar or no proxy at all:
/// `None`).
pub fn in_template(
    template: Option<&PodTemplateSpec>,
    selector: Option<&LabelSelector>,
) -> Option<(GatewayProxy, Option<String>)> {
    let spec = template?.spec.as_ref()?;
    let (role, container) = proxy_in(spec)?;
    if role != ProxyRole::Gateway {
        return None;
    }
    let init = spec
        .init_containers
        .iter()
        .flatten()
        .any(|c| std::ptr::eq(c, container));
    let selected_by_version = selector
        .and_then(|s| s.match_labels.as_ref())
        .is_some_and(|l| l.contains_key(PROXY_VERSION_LABEL));
    Some((
        GatewayProxy {
            container: container.name.clone(),
            init,
            selected_by_version,
        },
        container.image.clone(),
    ))
}

/// The strategic merge patch that assigns `image` to the gateway proxy `gateway`, restarting
/// its pods as `kubectl rollout restart` does at `now`.
pub fn assignment_patch(gateway: &GatewayProxy, image: &str, now: SystemTime) -> serde_json::Value {
    let at = k8s_openapi::jiff::Timestamp::try_from(now)
        .map(|t| t.to_string())
        .unwrap_or_default();
    let list = if gateway.init { "initContainers" } else { "containers" };
    let mut patch = serde_json::json!({"spec": {"template": {
        "metadata": {"annotations": {RESTARTED_AT_ANNOTATION: at}},
        "spec": {list: [{"name": gateway.container, "image": image}]},
    }}});
    if !gateway.selected_by_version {
        patch["spec"]["template"]["metadata"]["labels"] =
            serde_json::json!({PROXY_VERSION_LABEL: version_label(image)});
    }
    patch
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;
    use trellis_manifests::install::Options;
    use trellis_manifests::sidecar::{GATEWAY_CONTAINER, Settings, gateway_pod_template, inject};

    use super::*;

    #[test]
    fn a_gateway_template_names_its_proxy_container_and_image() {
        let settings = Settings::new(&Options::default());
        let template = gateway_pod_template("trellis-ingressgateway", &settings, &[8080]);
        let by_app: LabelSelector = serde_json::from_value(json!({"matchLabels": {"app": "gw"}})).unwrap();
        let (gateway, image) = in_template(Some(&template), Some(&by_app)).expect("a gateway");
        assert_eq!(
            gateway,
            GatewayProxy {
                container: GATEWAY_CONTAINER.into(),
                init: false,
                selected_by_version: false,
            }
        );
        let by_version: LabelSelector =
            serde_json::from_value(json!({"matchLabels": {"app": "gw", "trellis.dev/proxy-version": "0.1.0"}}))
                .unwrap();
        let (gateway, _) = in_template(Some(&template), Some(&by_version)).unwrap();
        assert!(gateway.selected_by_version);
        assert_eq!(image.as_deref(), Some(settings.proxy_image.as_str()));

        let mut injected: PodTemplateSpec =
            serde_json::from_value(json!({"spec": {"containers": [{"name": "web", "image": "web"}]}})).unwrap();
        inject(&mut injected, &settings).unwrap();
        assert_eq!(in_template(Some(&injected), None), None, "a sidecar is the injector's");
        assert_eq!(in_template(None, None), None);
    }

    #[test]
    fn the_patch_sets_the_proxy_container_image_its_version_label_and_a_restart() {
        let gateway = GatewayProxy {
            container: GATEWAY_CONTAINER.into(),
            init: false,
            selected_by_version: false,
        };
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let patch = assignment_patch(&gateway, "ghcr.io/trellis-mesh/trellis-proxy:0.3.0", at);
        assert_eq!(
            patch,
            json!({"spec": {"template": {
                "metadata": {
                    "labels": {"trellis.dev/proxy-version": "0.3.0"},
                    "annotations": {"kubectl.kubernetes.io/restartedAt": "2027-01-15T08:00:00Z"},
                },
                "spec": {"containers": [{"name": "gateway", "image": "ghcr.io/trellis-mesh/trellis-proxy:0.3.0"}]},
            }}})
        );
        // A selector on the version label cannot be kept matching a new one: left as it is.
        let selected = GatewayProxy {
            selected_by_version: true,
            ..gateway.clone()
        };
        let patch = assignment_patch(&selected, "p:2", at);
        assert!(patch["spec"]["template"]["metadata"]["labels"].is_null(), "{patch}");
        assert_eq!(patch["spec"]["template"]["spec"]["containers"][0]["image"], "p:2");
        let native = GatewayProxy { init: true, ..gateway };
        assert!(assignment_patch(&native, "p:1", at)["spec"]["template"]["spec"]["initContainers"].is_array());
    }

    /// The reconciler, on a mock API server (the Mesh reconciler's scenarios): the shop's
    /// `web` and its ingress gateway, one pod each on the old image.
    mod reconciler {
        use std::sync::{Arc, Mutex};

        use trellis_api::mesh::{MeshStatus, RolloutPhase};

        use super::*;
        use crate::dataplane::{MeshedPod, Owner, ProxyLink, WorkloadRef};
        use crate::mesh::fixtures::{Changing, Fixed, MeshFixture, Scenario, Step, mesh, timeout_after_1s, web};
        use crate::mesh::{Context, reconcile};
        use crate::rollout::plan::Workload;
        use crate::settings::Defaults;

        const GATEWAY: &str = "trellis-ingressgateway";
        const GATEWAY_PATH: &str = "/apis/apps/v1/namespaces/shop/deployments/trellis-ingressgateway";

        fn gateway_id() -> WorkloadRef {
            WorkloadRef {
                name: GATEWAY.into(),
                ..web()
            }
        }

        /// `web` as in [`Fixed::default`], and the gateway Deployment assigned `assigned` (its
        /// proxy container's image) whose one pod runs `image`, Ready, its proxy connected or
        /// not.
        fn shop(assigned: &str, image: &str, connected: bool) -> Fixed {
            let mut f = Fixed::default();
            let pod = format!("{GATEWAY}-5d8f-x");
            f.pods.push(MeshedPod {
                name: pod.clone(),
                role: ProxyRole::Gateway,
                image: image.into(),
                owner: Owner::Workload(gateway_id()),
                ..f.pods[0].clone()
            });
            f.links.insert(
                format!("shop/{pod}"),
                ProxyLink {
                    connected,
                    synced: connected,
                },
            );
            f.workloads.push(Workload {
                id: gateway_id(),
                assigned: Some(assigned.into()),
                gateway: Some(GatewayProxy {
                    container: GATEWAY_CONTAINER.into(),
                    init: false,
                    selected_by_version: false,
                }),
                ..f.workloads[0].clone()
            });
            f
        }

        /// The first reconcile onto proxy:2 in waves of one: the gateway comes first (by name)
        /// and its proxy container is assigned proxy:2.
        async fn wave_one(ctx: Arc<Context>, server: crate::mesh::fixtures::ApiServerVerifier, m: &Mesh) -> MeshStatus {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let mut steps = Step::rollout_starts(tx);
            steps.extend([
                Step::AssignGateway {
                    path: GATEWAY_PATH.into(),
                    image: "proxy:2".into(),
                },
                Step::EventSaying(
                    "RolloutWaveStarted".into(),
                    format!("wave 1: restarting Deployment shop/{GATEWAY} onto proxy:2"),
                ),
            ]);
            let scenario = server.run(Scenario::Steps(steps));
            reconcile(Arc::new(m.clone()), ctx).await.expect("wave 1");
            timeout_after_1s(scenario).await;
            rx.await.expect("the status of wave 1")
        }

        use trellis_api::mesh::Mesh;

        #[tokio::test]
        async fn a_gateway_is_assigned_the_new_image_in_its_wave_on_its_proxy_container() {
            let old = Defaults::default().proxy_image;
            let (ctx, server, _) = Context::test(shop(&old, &old, true));
            let m = mesh(
                "default",
                serde_json::json!({"versions": {"proxy": "proxy:2"}, "rollout": {"batchSize": 1}}),
            )
            .finalized();
            let status = wave_one(ctx, server, &m).await;
            let r = status.rollout.expect("a rollout");
            let members = r.wave_workloads.expect("wave 1's workloads");
            assert_eq!(members.len(), 1);
            assert_eq!(
                (members[0].name.as_str(), members[0].previous_image.as_deref()),
                (GATEWAY, Some(old.as_str()))
            );
            let dp = status.data_plane.expect("the data plane");
            assert_eq!(
                (dp.proxies, dp.up_to_date),
                (3, 0),
                "the gateway's proxy is counted: {dp:?}"
            );
        }

        #[tokio::test]
        async fn a_gateway_whose_new_proxy_never_connects_fails_its_wave_and_gets_its_image_back() {
            let old = Defaults::default().proxy_image;
            let observe = Arc::new(Changing(Mutex::new(shop(&old, &old, true))));
            let (ctx, server, _) = Context::test_observing(observe.clone());
            let m = mesh(
                "default",
                serde_json::json!({"versions": {"proxy": "proxy:2"},
                                   "rollout": {"batchSize": 1, "progressDeadline": "30s"}}),
            )
            .finalized();
            let wave1 = wave_one(ctx.clone(), server, &m).await;

            // The gateway's new pod runs proxy:2 and is Ready, but its proxy never connects to
            // the control plane; the deadline passes: the gateway's pod fails the wave's gate,
            // and its proxy container gets the previous image back.
            observe.set(|f| {
                *f = shop("proxy:2", "proxy:2", false);
                f.elapsed = Duration::from_secs(31);
            });
            let (ctx, server, _) = Context::test_observing(observe.clone());
            let (tx, rx) = tokio::sync::oneshot::channel();
            let scenario = server.run(Scenario::Steps(vec![
                Step::Event("ReadyFalse".into()),
                Step::Event("RolloutProgressingFalse".into()),
                Step::Event("Degraded".into()),
                Step::Status(tx),
                Step::AssignGateway {
                    path: GATEWAY_PATH.into(),
                    image: old.clone(),
                },
                Step::EventSaying("RolloutRolledBack".into(), format!("Deployment shop/{GATEWAY}")),
            ]));
            reconcile(Arc::new(m.with_status(wave1)), ctx)
                .await
                .expect("rolled back");
            timeout_after_1s(scenario).await;
            let r = rx.await.expect("the rolled-back status").rollout.expect("a rollout");
            assert_eq!(r.phase, Some(RolloutPhase::RolledBack));
            let failure = r.failure.expect("the failure");
            assert_eq!(failure.workload, format!("Deployment shop/{GATEWAY}"));
            assert!(
                failure
                    .message
                    .contains(&format!("the proxy of pod {GATEWAY}-5d8f-x is not connected")),
                "{}",
                failure.message
            );
        }
    }
}
