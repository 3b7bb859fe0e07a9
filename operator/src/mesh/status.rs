//! What the Mesh reconciler says about the Mesh: the status computed from what it observed —
//! conditions, the CA, the data plane, the rollout —, written by server-side apply with one
//! field manager only when it changed, and an event for every condition that changed, every
//! root rotation phase and every trust domain change.

use kube::api::{Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};
use trellis_api::mesh::{CertificateAuthorityStatus, DataPlaneStatus, Mesh, MeshStatus, RolloutStatus};

use super::conditions::{self, CaObservation, Observed, WebhooksObservation};
use super::{Context, Error, trust_domain};
use crate::FIELD_MANAGER;
use crate::events::{Event, EventType};
use crate::settings::{Invalid, Settings};

/// The Mesh's status and events, as methods on it.
pub(super) trait MeshStatusExt {
    #[allow(clippy::too_many_arguments)]
    fn desired_status(
        &self,
        ctx: &Context,
        settings: &Settings,
        invalid: Option<&Invalid>,
        ca: &CaObservation,
        webhooks: &WebhooksObservation,
        data_plane: DataPlaneStatus,
        rollout: Option<RolloutStatus>,
        control_plane: Option<&str>,
    ) -> MeshStatus;
    fn announce(&self, ctx: &Context, status: &MeshStatus) -> impl Future<Output = Result<(), Error>> + Send;
    fn write_status(&self, ctx: &Context, status: MeshStatus) -> impl Future<Output = Result<(), Error>> + Send;
    fn publish(
        &self,
        ctx: &Context,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) -> impl Future<Output = Result<(), Error>> + Send;
}

impl MeshStatusExt for Mesh {
    fn desired_status(
        &self,
        ctx: &Context,
        settings: &Settings,
        invalid: Option<&Invalid>,
        ca: &CaObservation,
        webhooks: &WebhooksObservation,
        data_plane: DataPlaneStatus,
        rollout: Option<RolloutStatus>,
        control_plane: Option<&str>,
    ) -> MeshStatus {
        let previous = self
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default();
        let observed = Observed {
            generation: self.metadata.generation,
            invalid,
            ca,
            webhooks,
            data_plane: &data_plane,
            proxy_image: &settings.proxy_image,
            rollout: rollout.as_ref(),
            control_plane,
            now: ctx.observe.now(),
        };
        let conditions = conditions::conditions(&observed, &previous);
        MeshStatus {
            conditions: Some(conditions),
            version: Some(ctx.version.clone()),
            observed_generation: self.metadata.generation,
            certificate_authority: Some(CertificateAuthorityStatus {
                mode: Some(ca.mode.clone()),
                trust_domain: Some(ca.trust_domain.clone()),
                previous_trust_domains: Some(ca.previous_trust_domains.clone()).filter(|p| !p.is_empty()),
                root_fingerprint: Some(ca.root_fingerprint.clone()).filter(|f| !f.is_empty()),
                root_expires: ca
                    .root_expires
                    .and_then(|t| k8s_openapi::jiff::Timestamp::try_from(t).ok().map(|t| t.to_string())),
                rotation_phase: Some(ca.phase.clone()),
            }),
            data_plane: Some(data_plane),
            rollout,
        }
    }

    /// An event for every condition that changed from the current status to `status`.
    async fn announce(&self, ctx: &Context, status: &MeshStatus) -> Result<(), Error> {
        let previous = self
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default();
        let next = status.conditions.clone().unwrap_or_default();
        for t in conditions::transitions(&previous, &next) {
            let type_ = if t.warning {
                EventType::Warning
            } else {
                EventType::Normal
            };
            let reason = format!("{}{}", t.type_, if t.status == "True" { "" } else { "False" });
            let note = format!("{} is {} ({}): {}", t.type_, t.status, t.reason, t.message);
            self.publish(ctx, type_, &reason, "Reconcile", note).await?;
        }
        if let Some(next) = &status.certificate_authority {
            let previous = self.status.as_ref().and_then(|s| s.certificate_authority.as_ref());
            for (reason, note) in conditions::ca_transitions(previous, next) {
                self.publish(ctx, EventType::Normal, reason, "RotateRoot", note).await?;
            }
            let kept = self.spec.trust_domain_aliases.as_deref().unwrap_or_default();
            for (reason, note) in trust_domain::transitions(previous, next, kept) {
                self.publish(ctx, EventType::Normal, reason, "ChangeTrustDomain", note)
                    .await?;
            }
        }
        Ok(())
    }

    /// Server-side apply `status` if it differs from the current one.
    async fn write_status(&self, ctx: &Context, status: MeshStatus) -> Result<(), Error> {
        if self.status.as_ref() == Some(&status) {
            return Ok(());
        }
        let api: Api<Mesh> = Api::all(ctx.client.clone());
        let patch = Patch::Apply(serde_json::json!({
            "apiVersion": Mesh::api_version(&()),
            "kind": Mesh::kind(&()),
            "status": status,
        }));
        api.patch_status(&self.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &patch)
            .await
            .map_err(Error::Kube)?;
        ctx.wrote(self.metadata.resource_version.clone(), status);
        Ok(())
    }

    async fn publish(
        &self,
        ctx: &Context,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) -> Result<(), Error> {
        // Event notes are limited to 1 kB.
        let note: String = note.chars().take(1000).collect();
        ctx.recorder
            .publish(
                &Event {
                    type_,
                    reason: reason.into(),
                    note: Some(note),
                    action: action.into(),
                    secondary: None,
                },
                &self.object_ref(&()),
            )
            .await
            .map_err(Error::Kube)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use kube::runtime::controller::Action;
    use serde_json::json;
    use trellis_api::mesh::conditions::*;

    use crate::mesh::fixtures::{
        Changing, Fixed, MeshFixture, Scenario, Step, condition, mesh, now, reconciles_silently, timeout_after_1s,
    };
    use crate::mesh::{Context, reconcile};
    use crate::settings::RESYNC;
    use crate::settings::{self, Defaults};

    use super::*;

    #[tokio::test]
    async fn a_valid_mesh_gets_its_status_by_server_side_apply_and_one_ready_event() {
        let (ctx, server, settings) = Context::test(Fixed::default());
        let image = Defaults::default().proxy_image;
        let m = mesh(
            "default",
            json!({"trustDomain": "example.org", "versions": {"proxy": image}, "rollout": {"batchSize": 3}}),
        )
        .finalized();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let scenario = server.run(Scenario::EventsThenStatus(vec!["Ready".into()], m.clone(), tx));
        let action = reconcile(Arc::new(m.clone()), ctx.clone()).await.expect("reconcile");
        timeout_after_1s(scenario).await;
        assert_eq!(action, Action::requeue(RESYNC));
        let status = rx.await.unwrap();
        assert_eq!(status.observed_generation, Some(3));
        assert_eq!(condition(&status, READY).status, "True");
        assert_eq!(condition(&status, CERTIFICATE_AUTHORITY_READY).reason, "RootValid");
        assert!(
            condition(&status, CERTIFICATE_AUTHORITY_READY)
                .message
                .contains("example.org")
        );
        assert_eq!(
            status
                .certificate_authority
                .as_ref()
                .and_then(|c| c.root_expires.as_deref()),
            Some("2037-01-12T08:00:00Z")
        );
        assert_eq!(status.version.as_deref(), Some(env!("CARGO_PKG_VERSION")));
        // The rest of the operator now acts on this spec.
        assert_eq!(settings.borrow().trust_domain, "example.org");
        assert_eq!(settings.borrow().rollout.batch, settings::Batch::Size(3));
        assert!(status.rollout.is_none(), "every pod runs the image: nothing to roll");

        // Reconciled again with the status it wrote: nothing to say, nothing to write.
        let (ctx2, server2, _) = Context::test(Fixed::default());
        reconciles_silently(m.with_status(status), ctx2, server2).await;
    }

    #[tokio::test]
    async fn a_change_of_condition_is_an_event_once() {
        let (ctx, server, _) = Context::test(Fixed::default());
        let m = mesh("default", json!({})).finalized();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let scenario = server.run(Scenario::EventsThenStatus(vec!["Ready".into()], m.clone(), tx));
        reconcile(Arc::new(m.clone()), ctx).await.expect("reconcile");
        timeout_after_1s(scenario).await;
        let healthy = rx.await.unwrap();

        // The webhooks stop being served: WebhooksReady and Ready turn False, one event each.
        let observe = Fixed {
            webhooks: WebhooksObservation {
                ready: false,
                reason: "CaBundleStale".into(),
                message: "the caBundle of trellis-sidecar-injector is not the mesh root".into(),
            },
            ..Fixed::default()
        };
        let (ctx, server, _) = Context::test(observe);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let scenario = server.run(Scenario::EventsThenStatus(
            vec!["ReadyFalse".into(), "WebhooksReadyFalse".into()],
            m.clone(),
            tx,
        ));
        reconcile(Arc::new(m.with_status(healthy)), ctx)
            .await
            .expect("reconcile");
        timeout_after_1s(scenario).await;
        let status = rx.await.unwrap();
        assert_eq!(condition(&status, READY).reason, "WebhooksNotReady");
        assert!(condition(&status, READY).message.contains("caBundle"));
    }

    #[tokio::test]
    async fn contradictory_settings_are_a_condition_and_change_nothing() {
        let (ctx, server, settings) = Context::test(Fixed::default());
        let before = settings.borrow().clone();
        let m = mesh(
            "default",
            json!({"trustDomain": "example.org", "rollout": {"batchSize": 2, "batchPercent": 10}}),
        )
        .finalized();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let scenario = server.run(Scenario::EventsThenStatus(
            vec!["ReadyFalse".into(), "Degraded".into()],
            m.clone(),
            tx,
        ));
        reconcile(Arc::new(m), ctx)
            .await
            .expect("an invalid spec is not a failed reconcile");
        timeout_after_1s(scenario).await;
        let status = rx.await.unwrap();
        let degraded = condition(&status, DEGRADED);
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("True", "InvalidSpec")
        );
        assert!(
            degraded
                .message
                .contains("spec.rollout: set batchSize or batchPercent, not both"),
            "{}",
            degraded.message
        );
        assert_eq!(condition(&status, READY).reason, "InvalidSpec");
        assert_eq!(
            *settings.borrow(),
            before,
            "nothing of the invalid spec was applied, not even its trust domain"
        );
    }

    #[tokio::test]
    async fn a_reconcile_before_the_cache_has_its_status_write_repeats_nothing() {
        let mut cluster = Fixed::default();
        // An hour more than whole days left, so "expires in 3650 days" holds 5 s later too.
        cluster.ca.root_expires = Some(now() + Duration::from_secs(3650 * 86400 + 3600));
        let observe = Arc::new(Changing(std::sync::Mutex::new(cluster)));
        let (ctx, server, _) = Context::test_observing(observe.clone());
        let mut m = mesh("default", json!({"versions": {"proxy": "proxy:2"}})).finalized();
        m.metadata.resource_version = Some("7".into());
        let web = "/apis/apps/v1/namespaces/shop/deployments/web".to_string();
        let wave_started = k8s_openapi::jiff::Timestamp::try_from(now())
            .expect("a time")
            .to_string();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut steps = Step::rollout_starts(tx);
        steps.extend([
            Step::AssignRestartedAt {
                path: web.clone(),
                image: "proxy:2".into(),
                at: wave_started.clone(),
            },
            Step::EventSaying("RolloutWaveStarted".into(), "wave 1".into()),
            // The second reconcile: no event, no status, wave 1 not started again; the
            // assignment the stale workload cache lacks is re-asserted with the same restart
            // time, which changes no pod template.
            Step::AssignRestartedAt {
                path: web,
                image: "proxy:2".into(),
                at: wave_started,
            },
        ]);
        let scenario = server.run(Scenario::Steps(steps));
        reconcile(Arc::new(m.clone()), ctx.clone()).await.expect("wave 1");
        // Five seconds later the cache still holds resourceVersion 7, without the status
        // written, and the workload cache has not seen the assignment either.
        observe.set(|f| f.elapsed = Duration::from_secs(5));
        reconcile(Arc::new(m), ctx.clone()).await.expect("again");
        timeout_after_1s(scenario).await;
        assert_eq!(rx.await.expect("the status").rollout.map(|r| r.wave), Some(1));
    }
}
