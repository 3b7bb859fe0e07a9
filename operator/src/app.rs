//! The running operator: wires the Kubernetes client, the live index, the CA (its root kept
//! in a Secret), the gRPC push and certificate API over TLS, and the admin HTTP API.
//!
//! `main.rs` parses [`Config`] and calls [`run`]; tests call [`start`] and get an [`App`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use trellis_push::v1::certificates_server::CertificatesServer;
use trellis_push::v1::config_push_server::ConfigPushServer;

use crate::ca::service::{CertificateService, KubeTokenReviewer};
use crate::ca::{CertificateAuthority, SigningCert, SystemClock};
use crate::index::{self, Index};
use crate::push::{self, PushService};

/// The Secret holding the mesh root (`ca.crt`, `ca.key`) in the control plane's namespace.
pub const CA_SECRET: &str = "trellis-ca";
/// Lifetime of the operator's own serving certificate.
pub const SERVING_CERT_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
/// The operator's ServiceAccount, which its own identity is derived from.
pub const OPERATOR_SERVICE_ACCOUNT: &str = "trellis-operator";

/// Settings, from flags or environment variables.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "trellis-operator", version, about = "The Trellis control plane")]
pub struct Config {
    /// Namespace the control plane runs in (its CA Secret lives there).
    #[arg(long, env = "POD_NAMESPACE", default_value = trellis_api::mesh::SYSTEM_NAMESPACE)]
    pub namespace: String,
    /// Address of the push and certificate API (gRPC over TLS).
    #[arg(long, env = "TRELLIS_PUSH_ADDR", default_value = "0.0.0.0:15012")]
    pub push_addr: SocketAddr,
    /// Address of the admin API (/ready, /live, /metrics, /debug/syncz).
    #[arg(long, env = "TRELLIS_ADMIN_ADDR", default_value = "0.0.0.0:15014")]
    pub admin_addr: SocketAddr,
    /// SPIFFE trust domain.
    #[arg(long, env = "TRELLIS_TRUST_DOMAIN", default_value = trellis_api::mesh::DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,
    /// Lifetime of workload certificates, in seconds.
    #[arg(long, env = "TRELLIS_WORKLOAD_CERT_TTL_SECONDS", default_value_t = 24 * 3600)]
    pub workload_cert_ttl_seconds: u64,
}

/// A started operator.
#[derive(Debug)]
pub struct App {
    /// Where the push API listens.
    pub push_addr: SocketAddr,
    /// Where the admin API listens.
    pub admin_addr: SocketAddr,
    /// The mesh root (PEM), for clients.
    pub root_pem: String,
    /// The push service (for its sync state).
    pub push: PushService,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl App {
    /// Stop every task.
    pub fn stop(self) {
        for t in self.tasks {
            t.abort();
        }
    }
}

/// Run until SIGTERM or Ctrl-C.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let client = Client::try_default()
        .await
        .context("connecting to the Kubernetes API (in-cluster ServiceAccount, or KUBECONFIG out of cluster)")?;
    let app = start(config, client).await?;
    tracing::info!(push = %app.push_addr, admin = %app.admin_addr, "trellis-operator is serving");
    shutdown_signal().await;
    tracing::info!("shutting down");
    app.stop();
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Start every part of the operator with `client`.
pub async fn start(config: Config, client: Client) -> anyhow::Result<App> {
    let ttl = Duration::from_secs(config.workload_cert_ttl_seconds);
    let signer = load_or_create_root(&client, &config.namespace, &config.trust_domain).await?;
    let root_pem = signer.cert_pem().to_string();
    let ca = CertificateAuthority::new(signer, ttl, Box::new(SystemClock));

    // The operator's own serving certificate, from the same CA.
    let own_id = format!(
        "spiffe://{}/ns/{}/sa/{OPERATOR_SERVICE_ACCOUNT}",
        config.trust_domain, config.namespace
    );
    let dns = vec![
        format!("trellis-operator.{}.svc", config.namespace),
        format!("trellis-operator.{}.svc.cluster.local", config.namespace),
        "localhost".to_string(),
    ];
    // why: the gRPC server's TLS config is fixed at start, so its certificate lives a year
    // (capped by the root) rather than a workload TTL; a root rotation restarts the server.
    let (serving, serving_key) = ca
        .issue_serving(&own_id, &dns, SERVING_CERT_TTL)
        .context("issuing the operator's serving certificate")?;

    // The live index.
    let index = Arc::new(RwLock::new(Index::default()));
    let (changed_tx, changed_rx) = tokio::sync::watch::channel(0u64);
    let mut tasks = Vec::new();
    tasks.push(tokio::spawn(index::run(client.clone(), index.clone(), changed_tx)));

    // gRPC: push and certificates, TLS with optional client certificates (a proxy has none
    // before its first Sign); ConfigPush itself requires the pod's workload certificate.
    let push = PushService::new(index.clone(), changed_rx.clone(), push::Options::default())
        .require_workload_identity(config.trust_domain.clone());
    let bundle = Arc::new(RwLock::new(vec![root_pem.clone()]));
    let certs = CertificateService::new(
        Arc::new(RwLock::new(ca)),
        Arc::new(KubeTokenReviewer::new(client.clone())),
        config.trust_domain.clone(),
        bundle,
    );
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(&serving.cert_chain_pem, &serving_key))
        .client_ca_root(Certificate::from_pem(&root_pem))
        .client_auth_optional(true);
    let listener = TcpListener::bind(config.push_addr)
        .await
        .with_context(|| format!("binding the push API to {}", config.push_addr))?;
    let push_addr = listener.local_addr()?;
    let grpc = Server::builder()
        .tls_config(tls)
        .context("configuring TLS for the push API")?
        .add_service(ConfigPushServer::new(push.clone()))
        .add_service(CertificatesServer::new(certs));
    tasks.push(tokio::spawn(async move {
        if let Err(e) = grpc.serve_with_incoming(TcpListenerStream::new(listener)).await {
            tracing::error!(error = %e, "the push API stopped");
        }
    }));

    // Admin.
    let ready = Arc::new(AtomicBool::new(false));
    let admin = crate::admin::Admin {
        push: push.clone(),
        index: index.clone(),
        ready: ready.clone(),
    };
    let admin_listener = TcpListener::bind(config.admin_addr)
        .await
        .with_context(|| format!("binding the admin API to {}", config.admin_addr))?;
    let admin_addr = admin_listener.local_addr()?;
    tasks.push(tokio::spawn(crate::admin::serve(admin_listener, admin)));

    // The trust anchor, in every namespace, for proxies to verify the operator at first start.
    tasks.push(tokio::spawn(crate::trust::publish(
        client.clone(),
        index.clone(),
        changed_rx.clone(),
        root_pem.clone(),
    )));

    // Ready once the index has seen the cluster.
    let mut rx = changed_rx;
    tasks.push(tokio::spawn(async move {
        while *rx.borrow() == 0 {
            if rx.changed().await.is_err() {
                return;
            }
        }
        ready.store(true, Ordering::SeqCst);
        tracing::info!("the registry is synced; ready");
    }));
    Ok(App {
        push_addr,
        admin_addr,
        root_pem,
        push,
        tasks,
    })
}

/// The mesh root from the `trellis-ca` Secret, created (self-signed) on first start.
///
/// # Guarantees
/// Two operators starting at once end up with the same root: the loser of the create race
/// reads the winner's Secret.
pub async fn load_or_create_root(client: &Client, namespace: &str, trust_domain: &str) -> anyhow::Result<SigningCert> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    for _ in 0..3 {
        if let Some(secret) = api.get_opt(CA_SECRET).await.context("reading the CA Secret")? {
            let field = |k: &str| {
                secret
                    .data
                    .as_ref()
                    .and_then(|d| d.get(k))
                    .and_then(|b| String::from_utf8(b.0.clone()).ok())
                    .with_context(|| {
                        format!(
                            "Secret {namespace}/{CA_SECRET} has no {k}; delete it to have a new root created, or fix it"
                        )
                    })
            };
            return SigningCert::from_pem(&field("ca.crt")?, &field("ca.key")?, &[])
                .with_context(|| format!("Secret {namespace}/{CA_SECRET}"));
        }
        let root =
            SigningCert::self_signed_root(trust_domain, crate::ca::DEFAULT_ROOT_TTL, std::time::SystemTime::now())?;
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(CA_SECRET.into()),
                namespace: Some(namespace.into()),
                labels: Some([("app.kubernetes.io/part-of".to_string(), "trellis".to_string())].into()),
                ..ObjectMeta::default()
            },
            type_: Some("Opaque".into()),
            data: Some(
                [
                    ("ca.crt".to_string(), ByteString(root.cert_pem().as_bytes().to_vec())),
                    ("ca.key".to_string(), ByteString(root.key_pem().into_bytes())),
                ]
                .into(),
            ),
            ..Secret::default()
        };
        match api.create(&PostParams::default(), &secret).await {
            Ok(_) => {
                tracing::info!(%namespace, secret = CA_SECRET, "created a self-signed mesh root");
                return Ok(root);
            }
            Err(kube::Error::Api(e)) if e.code == 409 => continue, // another replica won; read theirs
            Err(e) => return Err(e).context(format!("creating Secret {namespace}/{CA_SECRET}")),
        }
    }
    anyhow::bail!("could not read or create Secret {namespace}/{CA_SECRET}")
}
