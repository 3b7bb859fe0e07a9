//! The running operator: wires the Kubernetes client, the live index (and the `jwksUri`
//! fetcher that feeds it key sets), the CA (its root kept
//! in a Secret), the gRPC push and certificate API over TLS, the admission webhooks over HTTPS
//! (and their `caBundle`), the admin HTTP API, the leader election, and the Mesh reconciler.
//!
//! Every replica serves push, certificates, webhooks and the admin API; only the leader
//! ([`crate::leader`]) publishes the trust ConfigMaps, generates roots, records rotations in the
//! CA Secret and runs the Mesh reconciler with its proxy rollout.
//!
//! `main.rs` parses [`Config`] and calls [`run`]; tests call [`start`] and get an [`App`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use kube::Client;
use tokio::net::TcpListener;
use tonic::transport::Server;
use trellis_push::v1::certificates_server::CertificatesServer;
use trellis_push::v1::config_push_server::ConfigPushServer;

use crate::admission::ca_bundle::Published;
use crate::ca::service::{CertificateService, KubeTokenReviewer, TokenReviewer};
use crate::ca::{MeshRoots, SigningCert, SystemClock, secret};
use crate::events::{Recorder, Reporter};
use crate::index::{self, Index};
use crate::leader::{self, Elector, Leadership};
use crate::metrics::Metrics;
use crate::push::{self, PushService};
use crate::serving::{ClientAuth, Identity, ServingTls};
use crate::settings::Settings;
use trellis_api::mesh::{MESH_NAME, Mesh};

mod config;
mod rotation;
mod webhooks;

pub use self::config::{
    Config, LogFilterError, RUST_LOG, defaults, injector_settings, log_filter, operator_identity, service_dns_names,
};
use self::rotation::{Rotation, drive_rotation};
use self::webhooks::{Watched, serve_webhooks, webhooks_observation};

/// The Secret holding the mesh root (`ca.crt`, `ca.key`) in the control plane's namespace.
pub use crate::ca::secret::CA_SECRET;
/// Lifetime of the operator's own serving certificate.
pub const SERVING_CERT_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
/// Lifetime of the webhooks' serving certificate, reissued at two thirds of it.
// why: the API server re-reads nothing but the caBundle, so a short lifetime costs nothing and
// limits what a leaked key is worth; a week leaves days to notice a failing renewal.
pub const WEBHOOK_CERT_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// The `app` label of the operator's pods (`trellis_manifests::install`): how a replica finds
/// its peers.
pub const OPERATOR_APP: &str = "trellis-operator";
/// The operator's ServiceAccount, which its own identity is derived from.
pub const OPERATOR_SERVICE_ACCOUNT: &str = "trellis-operator";

/// A started operator.
#[derive(Debug)]
pub struct App {
    /// Where the push API listens.
    pub push_addr: SocketAddr,
    /// Where the admin API listens.
    pub admin_addr: SocketAddr,
    /// Where the admission webhooks listen.
    pub webhook_addr: SocketAddr,
    /// The roots proxies trust at start (PEM; one outside a root rotation), for clients.
    pub root_pem: String,
    /// The push service (for its sync state).
    pub push: PushService,
    /// The mesh roots and their rotation.
    pub roots: Arc<MeshRoots>,
    /// Whether this replica leads.
    pub leadership: Leadership,
    /// The other replicas' proxies.
    pub peers: crate::peers::Peers,
    /// Where this replica finds the others.
    pub replicas: crate::peers::Replicas,
    /// What the webhook configurations trust of the operator.
    pub published: tokio::sync::watch::Receiver<Published>,
    /// The Mesh's valid settings, as this replica follows them
    /// ([`crate::index::settings::follow`]).
    pub settings: tokio::sync::watch::Receiver<Settings>,
    elector: Option<Elector>,
    /// The push API's server: stopped gracefully by [`App::shutdown`].
    push_server: Option<tokio::task::JoinHandle<()>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// How long a stopping operator waits for its subscriptions to end with their handover.
const PUSH_DRAIN: std::time::Duration = std::time::Duration::from_secs(3);

impl App {
    /// Stop every task and end every subscription (the lease, if held, expires by itself).
    pub fn stop(self) {
        self.push.shutdown();
        for t in self.tasks.into_iter().chain(self.push_server) {
            t.abort();
        }
    }

    /// Hand the lease over (so another replica leads at once), end the subscriptions with a
    /// handover and let the push server send them (within [`PUSH_DRAIN`]), then [`App::stop`].
    pub async fn shutdown(mut self) {
        if let Some(elector) = self.elector.take() {
            elector.release().await;
        }
        self.push.shutdown();
        if let Some(mut server) = self.push_server.take()
            && tokio::time::timeout(PUSH_DRAIN, &mut server).await.is_err()
        {
            tracing::warn!("the push API did not drain its subscriptions in time; stopping anyway");
            server.abort();
        }
        self.stop();
    }
}

/// Run until SIGTERM or Ctrl-C.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let client = Client::try_default()
        .await
        .context("connecting to the Kubernetes API (in-cluster ServiceAccount, or KUBECONFIG out of cluster)")?;
    let app = start(config, client).await?;
    tracing::info!(push = %app.push_addr, admin = %app.admin_addr, webhooks = %app.webhook_addr, "trellis-operator is serving");
    shutdown_signal().await;
    tracing::info!("shutting down");
    app.shutdown().await;
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
    // The Mesh is the source of truth; the flags only fill in what it leaves open (and never
    // take the start-time Mesh's values: a Mesh deleted later falls back to the flags).
    let meshes: kube::Api<Mesh> = kube::Api::all(client.clone());
    let mesh = meshes
        .get_opt(MESH_NAME)
        .await
        .context("reading Mesh default (are the CRDs installed? kubectl apply -f crds/)")?;
    let defaults = defaults(&config)?;
    // What this replica acts on until its index holds the Mesh; then every replica follows the
    // Mesh's changes (crate::index::settings::follow): the certificate lifetimes included.
    let at_start = mesh
        .as_ref()
        .and_then(|m| Settings::from_mesh(m, &defaults).ok())
        .unwrap_or_else(|| Settings::defaults(&defaults));
    let ttl = at_start.ca.workload_cert_ttl;
    let (leadership, elector) = if config.leader_election {
        let identity = config.pod_name.clone().context(
            "leader election needs this replica's name: set POD_NAME (the Deployment sets it from metadata.name), or --leader-election=false for a single replica",
        )?;
        let (leadership, elector) = leader::elect(client.clone(), &config.namespace, leader::LEASE_NAME, &identity)
            .await
            .with_context(|| {
                format!(
                    "joining the leader election on Lease {}/{}",
                    config.namespace,
                    leader::LEASE_NAME
                )
            })?;
        (leadership, Some(elector))
    } else {
        (Leadership::always(), None)
    };
    let stored = secret::load_or_create(
        &client,
        &config.namespace,
        &at_start.trust_domain,
        at_start.ca.root_cert_ttl,
    )
    .await?;
    let roots = Arc::new(match stored.previous {
        // A rotation was under way: resume it in the phase the leader recorded (a replica
        // starting mid-rotation issues from the root the others issue from).
        Some(previous) => {
            let roots = MeshRoots::new(previous, ttl, Arc::new(SystemClock));
            roots
                .start_rotation(stored.root)
                .context("resuming the root rotation recorded in the CA Secret")?;
            roots.advance_to(stored.phase);
            roots
        }
        None => MeshRoots::new(stored.root, ttl, Arc::new(SystemClock)),
    });
    roots.set_queued(stored.queued.as_ref().map(|q| q.fingerprint().to_string()));

    // The live index, fed by the watchers.
    let index = Arc::new(RwLock::new(Index::for_operator(&defaults)));
    let (changed_tx, changed_rx) = tokio::sync::watch::channel(0u64);
    let metrics = Arc::new(Metrics::default());
    let index_task = tokio::spawn(index::run(
        client.clone(),
        index.clone(),
        changed_tx.clone(),
        metrics.clone(),
    ));
    // The key sets of RequestAuthentications' jwksUri, fetched by every replica (each pushes).
    let jwks_task = tokio::spawn(crate::jwks::run(
        index.clone(),
        changed_tx,
        crate::jwks::Fetcher::system(),
        metrics.clone(),
        crate::jwks::Options::default(),
    ));
    let core = Core {
        settings: at_start.clone(),
        metrics,
        index: index.clone(),
        changed: changed_rx.clone(),
        reviewer: Arc::new(KubeTokenReviewer::new(client.clone())),
        roots: roots.clone(),
        client: Some(client.clone()),
        leadership: leadership.clone(),
    };
    let mut app = serve(&config, core).await?;
    app.elector = elector;
    app.tasks.push(index_task);
    app.tasks.push(jwks_task);
    let live = app.settings.clone();
    // Every replica signs: each signs with the Mesh's workload certificate lifetime of the time.
    app.tasks.push(tokio::spawn(crate::ca::lifecycle::follow_workload_ttl(
        roots.clone(),
        live.clone(),
    )));
    app.tasks.push(tokio::spawn(secret::watch(secret::Watched {
        client: client.clone(),
        namespace: config.namespace.clone(),
        trust_domains: crate::trust_domain::Source::settings(live.clone(), index.clone()),
        settings: live,
        roots: roots.clone(),
        leadership: leadership.clone(),
    })));
    // The compiler's diagnostics as status, events and metrics (written by the leader).
    let (diag_client, diag_index, diag_changed, diag_metrics) = (
        client.clone(),
        index.clone(),
        changed_rx.clone(),
        app.push.metrics().clone(),
    );
    app.tasks.push(tokio::spawn(leader::while_leading(
        leadership.clone(),
        "configuration diagnostics",
        move || {
            crate::diagnostics::run(
                diag_client.clone(),
                diag_index.clone(),
                diag_changed.clone(),
                diag_metrics.clone(),
            )
        },
    )));
    // The trust anchors, in every namespace, for proxies to verify the operator at first start
    // (written by the leader).
    let bundle = roots.bundle();
    let (trust_client, trust_index) = (client.clone(), index.clone());
    app.tasks.push(tokio::spawn(leader::while_leading(
        leadership.clone(),
        "trust anchors",
        move || {
            crate::trust::publish(
                trust_client.clone(),
                trust_index.clone(),
                changed_rx.clone(),
                bundle.clone(),
            )
        },
    )));
    // Events about the pods the injector skipped, from the label its patch gives them (the
    // leader publishes them; the webhook itself has no side effect).
    let skipped = (client.clone(), recorder(&client, config.pod_name.clone()));
    app.tasks.push(tokio::spawn(leader::while_leading(
        leadership.clone(),
        "injection skip events",
        move || crate::admission::skipped::run(skipped.0.clone(), skipped.1.clone()),
    )));
    // Every replica's proxies count for the leader's gates and the root rotation.
    app.tasks.push(tokio::spawn(crate::peers::poll(
        index,
        app.replicas.clone(),
        app.peers.clone(),
    )));
    // The Mesh reconciler and the proxy rollout, with the watches they read (leader only).
    let (settings_tx, settings_rx) = tokio::sync::watch::channel(at_start);
    // The CA as the Mesh asks (leader only): self-signed roots rotated before expiry, a plugged
    // root followed from the Secret spec.ca.secretRef names.
    let ca_problem = crate::ca::lifecycle::Problem::default();
    let (ca_client, ca_namespace, ca_roots, ca_problem_w) = (
        client.clone(),
        config.namespace.clone(),
        roots.clone(),
        ca_problem.clone(),
    );
    app.tasks.push(tokio::spawn(leader::while_leading(
        leadership.clone(),
        "certificate authority",
        move || {
            crate::ca::lifecycle::run(
                ca_client.clone(),
                ca_namespace.clone(),
                ca_roots.clone(),
                settings_rx.clone(),
                ca_problem_w.clone(),
            )
        },
    )));
    let pods = crate::dataplane::Pods::default();
    let workloads = crate::rollout::workloads::Shared::default();
    let observe = Arc::new(crate::mesh::observe::Live {
        roots: roots.clone(),
        namespace: config.namespace.clone(),
        push: app.push.clone(),
        peers: app.peers.clone(),
        ca_problem,
        pods: pods.clone(),
        workloads: workloads.clone(),
        webhooks: {
            let published = app.published.clone();
            Arc::new(move || webhooks_observation(&published.borrow()))
        },
    });
    let ctx = Arc::new(
        crate::mesh::Context::new(
            client.clone(),
            app.push.metrics().clone(),
            defaults,
            observe,
            settings_tx,
        )
        .with_template(trellis_manifests::sidecar::template_hash(&injector_settings(&config)))
        .with_operator(config.namespace.clone(), config.operator_image.clone()),
    );
    app.tasks.push(tokio::spawn(leader::while_leading(
        leadership,
        "mesh reconciler",
        move || {
            let (client, ctx, pods, workloads) = (client.clone(), ctx.clone(), pods.clone(), workloads.clone());
            async move {
                let (nudge_tx, nudge_rx) = tokio::sync::watch::channel(0u64);
                tokio::join!(
                    crate::dataplane::watch(client.clone(), pods, nudge_tx.clone()),
                    crate::rollout::workloads::watch(client, workloads, nudge_tx),
                    crate::mesh::run(ctx, nudge_rx),
                );
            }
        },
    )));
    Ok(app)
}

/// What the operator's core serves from: the registry, its change announcements, the token
/// reviewer and the mesh roots. [`start`] builds it from the Kubernetes API; tests build it
/// from plain data.
pub struct Core {
    /// The Mesh's settings until the index has listed every kind (then the index's Mesh is
    /// followed): the Mesh's read at start, or the defaults.
    pub settings: Settings,
    /// The index the push compiles from.
    pub index: index::Shared,
    /// Bumped on every change of the index (0: not synced yet).
    pub changed: tokio::sync::watch::Receiver<u64>,
    /// Verifies ServiceAccount tokens of certificate requests.
    pub reviewer: Arc<dyn TokenReviewer>,
    /// The mesh roots.
    pub roots: Arc<MeshRoots>,
    /// The Kubernetes API, if there is one: where the end of a root rotation is recorded (the
    /// CA Secret), events are published, and the webhooks' `caBundle` is kept current.
    pub client: Option<Client>,
    /// The operator's metrics (the index records its updates here too).
    pub metrics: Arc<Metrics>,
    /// Whether this replica leads (only the leader records rotations in the CA Secret).
    pub leadership: Leadership,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("roots", &self.roots)
            .finish_non_exhaustive()
    }
}

/// Serve the push and certificate API (gRPC over TLS), the admin API and the root rotation
/// from `core`, on the addresses of `config`.
pub async fn serve(config: &Config, core: Core) -> anyhow::Result<App> {
    let Core {
        settings,
        index,
        changed,
        reviewer,
        roots,
        client,
        metrics,
        leadership,
    } = core;
    let root_pem = roots.bundle().borrow().roots_pem.concat();
    let mut tasks = Vec::new();

    // gRPC: push and certificates, TLS with optional client certificates (a proxy has none
    // before its first Sign); ConfigPush itself requires the pod's workload certificate.
    let traffic = Arc::new(crate::traffic::Traffic::default());
    // The Mesh's settings as this replica follows them: the trust domain and the injected proxy
    // image among them, an invalid Mesh changing nothing (the flags stand in while there is no
    // Mesh).
    let (settings_tx, settings) = tokio::sync::watch::channel(settings);
    tasks.push(tokio::spawn(crate::index::settings::follow(
        index.clone(),
        changed.clone(),
        defaults(config).map_err(anyhow::Error::msg)?,
        settings_tx,
    )));
    let trust_domains = crate::trust_domain::Source::settings(settings.clone(), index.clone());
    let push = PushService::new(index.clone(), changed.clone(), push::Options::default())
        .require_workload_identity(trust_domains.clone())
        .with_roots(roots.clone())
        .with_metrics(metrics.clone())
        .with_traffic(traffic.clone());
    let certs = CertificateService::new(roots.clone(), reviewer, trust_domains.clone()).with_metrics(metrics.clone());
    let serving = Arc::new(ServingTls::new(
        Identity {
            spiffe_id: operator_identity(config, trust_domains.clone()),
            dns_names: service_dns_names(config),
            ttl: SERVING_CERT_TTL,
            client_auth: ClientAuth::MeshOptional,
            alpn: vec![b"h2".to_vec()],
        },
        &roots,
    )?);
    let listener = TcpListener::bind(config.push_addr)
        .await
        .with_context(|| format!("binding the push API to {}", config.push_addr))?;
    let push_addr = listener.local_addr()?;
    let grpc = Server::builder()
        .add_service(ConfigPushServer::new(push.clone()))
        .add_service(CertificatesServer::new(certs));
    let incoming = serving.clone().incoming(listener);
    // Graceful: on shutdown the subscriptions end with their handover trailers, sent before
    // the server stops ([`App::shutdown`] waits for it).
    let stopped = push.stopped();
    let push_server = tokio::spawn(async move {
        if let Err(e) = grpc.serve_with_incoming_shutdown(incoming, stopped).await {
            tracing::error!(error = %e, "the push API stopped");
        }
    });

    let peers = crate::peers::Peers::default();

    // Admission webhooks, and their caBundle.
    let (published_tx, published) = tokio::sync::watch::channel(Published {
        roots: None,
        current: true,
    });
    if let Some(client) = &client {
        tasks.push(tokio::spawn(crate::admission::ca_bundle::run(
            client.clone(),
            roots.clone(),
            config.create_webhooks.then(|| config.namespace.clone()),
            published_tx,
        )));
    }
    let webhook_addr = serve_webhooks(
        config,
        Watched {
            index: &index,
            trust_domains,
            settings: settings.clone(),
        },
        &roots,
        client.as_ref(),
        &metrics,
        published.clone(),
        &mut tasks,
    )
    .await?;

    // Admin.
    let ready = Arc::new(AtomicBool::new(false));
    let admin_listener = TcpListener::bind(config.admin_addr)
        .await
        .with_context(|| format!("binding the admin API to {}", config.admin_addr))?;
    let admin_addr = admin_listener.local_addr()?;
    let replicas = crate::peers::Replicas {
        fixed: config.peers.clone(),
        namespace: config.namespace.clone(),
        app: OPERATOR_APP.to_string(),
        me: config.pod_name.clone(),
        admin_port: admin_addr.port(),
    };
    // Root rotation: advanced by what every replica's proxies acknowledge and report serving
    // (the other replicas' from their admin API); the operator's own serving certificate
    // follows the issuing root.
    tasks.push(tokio::spawn(drive_rotation(
        Rotation {
            secret: client.clone().map(|c| (c, config.namespace.clone())),
            leadership: leadership.clone(),
            replicas: replicas.clone(),
            index: index.clone(),
            peers: peers.clone(),
        },
        roots.clone(),
        push.clone(),
        serving,
    )));
    let admin = crate::admin::Admin {
        push: push.clone(),
        peers: peers.clone(),
        replicas: replicas.clone(),
        index: index.clone(),
        ready: ready.clone(),
        roots: roots.clone(),
        traffic,
    };
    tasks.push(tokio::spawn(crate::admin::serve(admin_listener, admin)));

    // Ready once the index has listed every kind (the push serves nothing before) and the
    // webhook configurations trust the operator (the API server could not call it before).
    let mut rx = changed;
    let mut ready_published = published.clone();
    let synced_index = index.clone();
    tasks.push(tokio::spawn(async move {
        while !synced_index.read().is_ok_and(|i| i.synced()) {
            if rx.changed().await.is_err() {
                return;
            }
        }
        while !ready_published.borrow_and_update().current {
            if ready_published.changed().await.is_err() {
                return;
            }
        }
        ready.store(true, Ordering::SeqCst);
        tracing::info!("the registry is synced and the webhooks are trusted; ready");
    }));
    Ok(App {
        push_addr,
        admin_addr,
        webhook_addr,
        root_pem,
        push,
        roots,
        leadership,
        peers,
        replicas,
        published,
        settings,
        elector: None,
        push_server: Some(push_server),
        tasks,
    })
}

/// The mesh roots from the `trellis-ca` Secret, created (self-signed) on first start; during a
/// rotation, the root being rotated to. See [`crate::ca::secret`].
pub async fn load_or_create_root(client: &Client, namespace: &str, trust_domain: &str) -> anyhow::Result<SigningCert> {
    Ok(
        secret::load_or_create(client, namespace, trust_domain, crate::ca::DEFAULT_ROOT_TTL)
            .await?
            .root,
    )
}

/// Events written as the operator, this replica (`pod_name`) reporting.
fn recorder(client: &Client, pod_name: Option<String>) -> Recorder {
    Recorder::new(
        client.clone(),
        Reporter {
            controller: OPERATOR_SERVICE_ACCOUNT.into(),
            instance: pod_name,
        },
    )
}
