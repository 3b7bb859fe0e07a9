//! Mesh mode: the proxy's connection to the control plane. It obtains (and rotates) the
//! workload certificate, then subscribes to its configuration and applies every snapshot,
//! ACKing or NACKing it; a rotated certificate is picked up by re-applying the current
//! configuration, which reloads the identity files without dropping connections. The
//! certificate is reported to the operator as served once it is loaded (the first one with
//! the first configuration; a rotated one once the re-application succeeded).
//!
//! The protocol and its client live in `trellis-push`; this module only binds them to [`App`].

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use trellis_contract::signals::Report;
use trellis_contract::{CertificateRef, PemSource, ProxyConfig};
use trellis_push::client::{self, CERT_CHAIN_FILE, ClientConfig, ConfigSink, IdentityFiles, KEY_FILE, ROOTS_FILE};

use crate::App;
use crate::signals::Signals;

/// Applies pushed configurations to the running proxy.
#[derive(Debug)]
pub struct AppSink {
    app: Arc<App>,
    identity_dir: PathBuf,
    /// Held while a configuration loads the certificate and key, so a renewal does not replace
    /// one of them between the two reads.
    files: IdentityFiles,
    /// The version of the last pushed configuration applied (the configuration itself lives
    /// in the runtime: at a thousand services it is megabytes, so it is not kept twice).
    applied: Mutex<Option<String>>,
    /// What the golden-signal reports have counted so far.
    signals: Signals,
}

impl AppSink {
    /// A sink for `app`, whose certificate files live in `cfg.identity_dir`.
    pub fn new(app: Arc<App>, cfg: &ClientConfig) -> Self {
        AppSink {
            app,
            identity_dir: cfg.identity_dir.clone(),
            files: cfg.files.clone(),
            applied: Mutex::new(None),
            signals: Signals::default(),
        }
    }

    /// The identity is this proxy's own: point the config at the files it keeps, wherever the
    /// control plane assumed they were. A trust bundle pushed inline (the operator does so to
    /// distribute a new root during a root rotation) is kept as pushed.
    fn localize(&self, mut config: ProxyConfig) -> ProxyConfig {
        let file = |name: &str| self.identity_dir.join(name).to_string_lossy().into_owned();
        config.identity.certificate = Some(CertificateRef::Files {
            cert_chain_file: file(CERT_CHAIN_FILE),
            private_key_file: file(KEY_FILE),
        });
        if !matches!(config.identity.trust_bundle, Some(PemSource::Inline(_))) {
            config.identity.trust_bundle = Some(PemSource::File(file(ROOTS_FILE)));
        }
        config
    }

    /// Re-apply the current configuration (after a certificate rotation): whether the identity
    /// files are what the proxy serves now (also when no configuration is applied yet: the
    /// first one loads them).
    pub async fn reapply(&self) -> bool {
        if self.applied.lock().expect("config lock").is_none() {
            return true;
        }
        let config = ProxyConfig::clone(&self.app.runtime().snapshot().config);
        let applied = {
            let _files = self.files.read().await;
            self.app.apply(config).await
        };
        match applied {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(error = %e, "could not reload the rotated certificate; the previous one stays in use");
                false
            }
        }
    }
}

#[tonic::async_trait]
impl ConfigSink for AppSink {
    fn current_version(&self) -> Option<String> {
        self.applied.lock().expect("config lock").clone()
    }

    async fn apply(&self, config: ProxyConfig) -> Result<(), String> {
        let version = config.version.clone();
        {
            let _files = self.files.read().await;
            self.app.apply(self.localize(config)).await.map_err(|e| e.to_string())?;
        }
        *self.applied.lock().expect("config lock") = Some(version);
        Ok(())
    }

    fn rejected(&self, version: &str, error: &str) {
        self.app.reject(Some(version), error);
    }

    fn signals(&self) -> Option<Report> {
        self.signals.report(&self.app.runtime().metrics)
    }
}

/// Run mesh mode until the task is dropped: certificate first (a config that needs mesh TLS
/// cannot load without it), then the subscription; every later certificate re-applies the
/// current configuration.
pub async fn run(app: Arc<App>, cfg: ClientConfig) {
    let (issued_tx, mut issued) = tokio::sync::watch::channel::<Option<client::Issued>>(None);
    let identity = tokio::spawn(client::run_identity(cfg.clone(), issued_tx));
    let served = cfg.served.clone();
    let report = |issued: &Option<client::Issued>| {
        if let Some(report) = issued.as_ref().and_then(client::Issued::report) {
            served.set(report);
        }
    };
    loop {
        let first = issued.borrow_and_update().clone();
        if first.is_some() {
            report(&first);
            break;
        }
        if issued.changed().await.is_err() {
            identity.abort();
            return;
        }
    }
    let sink = Arc::new(AppSink::new(app, &cfg));
    let push = tokio::spawn(client::run_push(cfg, sink.clone()));
    while issued.changed().await.is_ok() {
        let rotated = issued.borrow_and_update().clone();
        if sink.reapply().await {
            report(&rotated);
        }
    }
    push.abort();
    identity.abort();
}
