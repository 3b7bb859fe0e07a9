//! The admission webhooks as the operator starts them: the HTTPS server on
//! `config.webhook_addr` with a certificate from the issuing root kept current (in the Mesh's
//! trust domain), and a `WebhookCertificateRenewed` event for each renewal.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use kube::Client;
use tokio::net::TcpListener;
use trellis_api::mesh::{MESH_NAME, Mesh};

use super::{Config, WEBHOOK_CERT_TTL, injector_settings, operator_identity, recorder, service_dns_names};
use crate::admission::ca_bundle::Published;
use crate::admission::server::Webhooks;
use crate::ca::{MeshRoots, SystemClock};
use crate::events::Recorder;
use crate::index;
use crate::metrics::Metrics;
use crate::serving::{ClientAuth, Identity, ServingTls};
use crate::settings::Settings;

/// What the webhooks read: the live index, the Mesh's settings this replica follows (the
/// injected proxy image and trust domain) and the trust domain (the webhooks' certificate names
/// the operator in it).
pub(super) struct Watched<'a> {
    pub(super) index: &'a index::Shared,
    pub(super) trust_domains: crate::trust_domain::Source,
    pub(super) settings: tokio::sync::watch::Receiver<Settings>,
}

/// Start the admission webhooks on `config.webhook_addr`, with a certificate from the issuing
/// root kept current (and in the Mesh's trust domain); returns where they listen.
pub(super) async fn serve_webhooks(
    config: &Config,
    watched: Watched<'_>,
    roots: &Arc<MeshRoots>,
    client: Option<&Client>,
    metrics: &Arc<Metrics>,
    published: tokio::sync::watch::Receiver<Published>,
    tasks: &mut Vec<tokio::task::JoinHandle<()>>,
) -> anyhow::Result<SocketAddr> {
    let Watched {
        index,
        trust_domains,
        settings,
    } = watched;
    let tls = Arc::new(ServingTls::new(
        Identity {
            spiffe_id: operator_identity(config, trust_domains),
            dns_names: service_dns_names(config),
            ttl: WEBHOOK_CERT_TTL,
            client_auth: ClientAuth::None,
            alpn: vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        },
        roots,
    )?);
    let defaults = injector_settings(config);
    let events = client.map(|c| recorder(c, config.pod_name.clone()));
    let renewed = renewal_announcer(client.cloned(), events, config.pod_name.clone());
    let webhooks = Arc::new(Webhooks::new(index.clone(), defaults, metrics.clone()).following(settings.clone()));
    let listener = TcpListener::bind(config.webhook_addr)
        .await
        .with_context(|| format!("binding the admission webhooks to {}", config.webhook_addr))?;
    let addr = listener.local_addr()?;
    tasks.push(tokio::spawn(crate::admission::server::serve(
        listener,
        tls.clone(),
        webhooks,
    )));
    tasks.push(tokio::spawn(crate::admission::certificate::keep_certificate_current(
        tls,
        roots.clone(),
        published,
        settings,
        Arc::new(SystemClock),
        renewed,
    )));
    Ok(addr)
}

/// A `WebhookCertificateRenewed` event on the Mesh for each renewal of this replica's webhook
/// certificate (nothing without a Kubernetes API).
fn renewal_announcer(
    client: Option<Client>,
    recorder: Option<Recorder>,
    replica: Option<String>,
) -> impl Fn(&'static str) + Send + 'static {
    let replica = replica.unwrap_or_else(|| "(unnamed)".into());
    move |why| {
        let (Some(client), Some(recorder)) = (client.clone(), recorder.clone()) else {
            return;
        };
        let note = format!("operator replica {replica} reissued its webhook serving certificate: {why}");
        tokio::spawn(async move {
            use kube::Resource as _;
            let meshes: kube::Api<Mesh> = kube::Api::all(client);
            let reference = match meshes.get_opt(MESH_NAME).await {
                Ok(Some(mesh)) => mesh.object_ref(&()),
                Ok(None) => return, // no Mesh to tell; the log says it
                Err(e) => {
                    tracing::warn!(error = %e, "could not read the Mesh to announce the webhook certificate renewal");
                    return;
                }
            };
            let event = crate::events::Event {
                type_: crate::events::EventType::Normal,
                reason: "WebhookCertificateRenewed".into(),
                note: Some(note),
                action: "RenewCertificate".into(),
                secondary: None,
            };
            if let Err(e) = recorder.publish(&event, &reference).await {
                tracing::warn!(error = %e, "could not publish the webhook certificate renewal event");
            }
        });
    }
}

/// The Mesh's `WebhooksReady` from what the webhook configurations trust.
pub(super) fn webhooks_observation(published: &Published) -> crate::mesh::conditions::WebhooksObservation {
    use trellis_manifests::install::webhooks::{INJECTOR, VALIDATOR};
    let (ready, reason, message) = match (&published.roots, published.current) {
        (None, _) => (
            false,
            "NotInstalled",
            format!(
                "the webhook configurations {VALIDATOR} and {INJECTOR} do not exist: apply the install manifests again, or restart the operator to create them"
            ),
        ),
        (Some(_), false) => (
            false,
            "CaBundleStale",
            format!(
                "the caBundle of {VALIDATOR} or {INJECTOR} is not the mesh trust bundle yet; the operator patches it (its log says why if it cannot)"
            ),
        ),
        (Some(_), true) => (
            true,
            "Serving",
            format!("{VALIDATOR} and {INJECTOR} are served by every operator replica with a current caBundle"),
        ),
    };
    crate::mesh::conditions::WebhooksObservation {
        ready,
        reason: reason.into(),
        message,
    }
}
