//! Mesh mode: the proxy's connection to the control plane. It obtains (and rotates) the
//! workload certificate, then subscribes to its configuration and applies every snapshot,
//! ACKing or NACKing it; a rotated certificate is picked up by re-applying the current
//! configuration, which reloads the identity files without dropping connections. A
//! re-application that fails leaves the previous certificate in use and is retried with
//! backoff until the new one loads, a pushed configuration loads it, or a newer certificate
//! takes its place. The certificate reported to the operator as served is the one the data
//! path holds: reported after each configuration that loads the certificate obtained last (the
//! first with the first configuration).
//!
//! The protocol and its client live in `trellis-push`; this module only binds them to [`App`].

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use trellis_contract::signals::Report;
use trellis_contract::{CertificateRef, PemSource, ProxyConfig};
use trellis_push::client::{
    self, CERT_CHAIN_FILE, ClientConfig, ConfigSink, IdentityFiles, Issued, KEY_FILE, ROOTS_FILE, Refusal, Served,
};

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
    /// The certificate the identity loop obtained last: its files are the ones on disk.
    obtained: Mutex<Option<Issued>>,
    /// Where the certificate the data path holds is reported to the operator.
    served: Served,
}

/// How long [`run`] waits before re-applying the configuration again after a renewed
/// certificate failed to load; each failure doubles the wait, up to [`RELOAD_RETRY_MAX`].
// why: what makes a load fail (a file read error, descriptors exhausted under load) usually
// passes within seconds, and the renewal happened at half the certificate's lifetime, so
// there are hours left to load it in.
const RELOAD_RETRY: Duration = Duration::from_secs(1);
/// The longest wait between two loads of a renewed certificate.
const RELOAD_RETRY_MAX: Duration = Duration::from_secs(30);

impl AppSink {
    /// A sink for `app`, whose certificate files live in `cfg.identity_dir`.
    pub fn new(app: Arc<App>, cfg: &ClientConfig) -> Self {
        AppSink {
            app,
            identity_dir: cfg.identity_dir.clone(),
            files: cfg.files.clone(),
            applied: Mutex::new(None),
            signals: Signals::default(),
            obtained: Mutex::new(None),
            served: cfg.served.clone(),
        }
    }

    /// The identity loop obtained `issued` and wrote its files: it is reported as served once a
    /// configuration loads it.
    pub fn obtained(&self, issued: Issued) {
        *self.obtained.lock().expect("certificate lock") = Some(issued);
    }

    /// Whether the data path holds the certificate obtained last; if so, report it as served.
    /// (A load that raced a renewal may hold a newer certificate than the one announced so
    /// far: that one is reported once it is announced.)
    fn report_served(&self) -> bool {
        let Some(obtained) = self.obtained.lock().expect("certificate lock").clone() else {
            return false;
        };
        let snapshot = self.app.runtime().snapshot();
        let loaded = snapshot
            .identity
            .as_ref()
            .and_then(|id| id.cert.chain.first())
            .and_then(|leaf| x509_parser::parse_x509_certificate(leaf).ok())
            .map(|(_, leaf)| leaf.raw_serial_as_string());
        if loaded.as_deref() != Some(obtained.serial.as_str()) {
            return false;
        }
        if let Some(report) = obtained.report() {
            self.served.set(report);
        }
        true
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
    /// first one loads them). When the data path already holds the certificate obtained last
    /// (a pushed configuration loaded it), nothing is re-applied.
    pub async fn reapply(&self) -> bool {
        if self.applied.lock().expect("config lock").is_none() || self.report_served() {
            return true;
        }
        let config = self.app.runtime().snapshot().config();
        let applied = {
            let _files = self.files.read().await;
            self.app.apply(config).await
        };
        match applied {
            Ok(_) => {
                self.report_served();
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not load the renewed certificate; the previous one stays in use until a retry loads it");
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

    /// A listener address in use (or not assigned to this host yet) refuses the configuration
    /// for now: the subscription applies it again ([`Refusal::transient`]).
    async fn apply(&self, config: ProxyConfig) -> Result<(), Refusal> {
        let version = config.version.clone();
        {
            let _files = self.files.read().await;
            self.app.apply(self.localize(config)).await.map_err(|e| Refusal {
                transient: e.is_transient(),
                error: e.to_string(),
            })?;
        }
        *self.applied.lock().expect("config lock") = Some(version);
        self.report_served();
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
/// current configuration ([`load_renewals`]).
pub async fn run(app: Arc<App>, cfg: ClientConfig) {
    let sink = Arc::new(AppSink::new(app, &cfg));
    run_with(sink, cfg).await;
}

/// A [`ConfigSink`] whose current configuration can be applied again, so that it loads the
/// identity files anew (after a certificate rotation). [`AppSink`] is the proxy's.
#[tonic::async_trait]
pub trait Reapply: ConfigSink {
    /// A certificate was obtained: the one the next re-application loads.
    fn obtained(&self, issued: Issued);
    /// Apply the current configuration again: whether the identity files are what the proxy
    /// serves now.
    async fn reapply(&self) -> bool;
}

#[tonic::async_trait]
impl Reapply for AppSink {
    fn obtained(&self, issued: Issued) {
        AppSink::obtained(self, issued);
    }

    async fn reapply(&self) -> bool {
        AppSink::reapply(self).await
    }
}

/// [`run`] through `sink`, which stands in front of an [`AppSink`]: one that adapts each
/// pushed configuration before the proxy applies it. Several proxies in one network namespace
/// (tests run at once on one machine) cannot all bind the addresses the operator pushes — a
/// sidecar's `0.0.0.0:15001` and `0.0.0.0:15006` —: such a sink moves the listeners.
pub async fn run_with<S: Reapply + 'static>(sink: Arc<S>, cfg: ClientConfig) {
    let (issued_tx, mut issued) = tokio::sync::watch::channel::<Option<Issued>>(None);
    let identity = tokio::spawn(client::run_identity(cfg.clone(), issued_tx));
    let first = match issued.wait_for(Option::is_some).await {
        Ok(first) => first.clone(),
        Err(_) => {
            identity.abort();
            return;
        }
    };
    if let Some(first) = first {
        sink.obtained(first);
    }
    let push = tokio::spawn(client::run_push(cfg, sink.clone()));
    load_renewals(sink.as_ref(), issued, RELOAD_RETRY, RELOAD_RETRY_MAX).await;
    push.abort();
    identity.abort();
}

/// Load every renewed certificate announced on `issued` into the data path by re-applying the
/// configuration in force. While that fails (the previous certificate stays in use, and stays
/// the one reported), try again after `retry`, doubled after each failure up to `max`, until it
/// loads, a pushed configuration loads it, or a newer certificate takes its place (tried at
/// once). Returns when the identity loop ends.
async fn load_renewals<S: Reapply>(
    sink: &S,
    mut issued: tokio::sync::watch::Receiver<Option<Issued>>,
    retry: Duration,
    max: Duration,
) {
    while issued.changed().await.is_ok() {
        let mut wait = retry;
        loop {
            if let Some(renewed) = issued.borrow_and_update().clone() {
                sink.obtained(renewed);
            }
            if sink.reapply().await {
                break;
            }
            tokio::select! {
                () = tokio::time::sleep(wait) => wait = (wait * 2).min(max),
                changed = issued.changed() => match changed {
                    Ok(()) => wait = retry,
                    Err(_) => return,
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType, SerialNumber};

    use super::*;
    use crate::AppConfig;

    const ID: &str = "spiffe://cluster.local/ns/shop/sa/web";

    /// A CA whose leaves carry [`ID`], and a proxy in mesh mode whose identity files it writes.
    struct Mesh {
        ca: Issuer<'static, KeyPair>,
        dir: tempfile::TempDir,
        sink: AppSink,
        served: Served,
    }

    impl Mesh {
        async fn start() -> Mesh {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::default();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            let ca_pem = params.self_signed(&key).unwrap().pem();
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join(ROOTS_FILE), ca_pem).unwrap();
            let cfg = ClientConfig {
                endpoint: "https://127.0.0.1:1".into(),
                server_name: "localhost".into(),
                root_cert: dir.path().join(ROOTS_FILE),
                token: dir.path().join("token"),
                identity_dir: dir.path().to_path_buf(),
                namespace: "shop".into(),
                pod: "web-1".into(),
                role: "sidecar".into(),
                spiffe_id: ID.into(),
                proxy_version: "test".into(),
                renewal: Default::default(),
                served: Default::default(),
                files: Default::default(),
            };
            let app = App::start(AppConfig::admin_only("127.0.0.1:0".parse().unwrap()))
                .await
                .unwrap();
            Mesh {
                ca: Issuer::new(params, key),
                sink: AppSink::new(Arc::new(app), &cfg),
                served: cfg.served,
                dir,
            }
        }

        /// Issues a leaf with `serial` and writes its key and chain (`broken`: a chain that does
        /// not parse instead); returns what the identity loop would announce and the leaf.
        fn renew(&self, serial: u8, broken: bool) -> (Issued, String) {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::default();
            params.serial_number = Some(SerialNumber::from(vec![serial]));
            params.subject_alt_names = vec![SanType::URI(ID.try_into().unwrap())];
            let leaf = params.signed_by(&key, &self.ca).unwrap().pem();
            std::fs::write(self.dir.path().join(KEY_FILE), key.serialize_pem()).unwrap();
            self.write_chain(if broken { "not a certificate" } else { &leaf });
            let now = SystemTime::now();
            let issued = Issued {
                not_before: now,
                not_after: now + Duration::from_secs(3600),
                issuer_fingerprint: "ab".repeat(32),
                serial: format!("{serial:02x}"),
                spiffe_id: ID.into(),
            };
            (issued, leaf)
        }

        fn write_chain(&self, pem: &str) {
            std::fs::write(self.dir.path().join(CERT_CHAIN_FILE), pem).unwrap();
        }

        /// A pushed configuration whose identity needs the certificate.
        async fn push(&self, version: &str) -> Result<(), Refusal> {
            let mut config = ProxyConfig::empty(version);
            config.identity.spiffe_id = Some(ID.into());
            self.sink.apply(config).await
        }

        /// The serial of the leaf the data path holds and the one reported as served.
        fn serials(&self) -> (String, Option<String>) {
            let snapshot = self.sink.app.runtime().snapshot();
            let leaf = &snapshot.identity.as_ref().expect("an identity is loaded").cert.chain[0];
            let (_, leaf) = x509_parser::parse_x509_certificate(leaf).unwrap();
            (leaf.raw_serial_as_string(), self.served.get().map(|s| s.serial))
        }

        /// Waits until the data path holds the leaf with `serial` and reports it.
        async fn serves(&self, serial: &str, within: Duration) -> Result<(), (String, Option<String>)> {
            let deadline = tokio::time::Instant::now() + within;
            loop {
                let now = self.serials();
                if now == (serial.to_string(), Some(serial.to_string())) {
                    return Ok(());
                }
                if tokio::time::Instant::now() > deadline {
                    return Err(now);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }

    /// A renewed certificate that fails to load is loaded by a retry once it can be, with no
    /// newer certificate or configuration; meanwhile the previous one is served and reported.
    #[tokio::test]
    async fn a_renewed_certificate_that_failed_to_load_is_retried_until_it_loads() {
        let mesh = Mesh::start().await;
        mesh.sink.obtained(mesh.renew(1, false).0);
        mesh.push("1").await.unwrap();
        assert_eq!(
            mesh.serials(),
            ("01".into(), Some("01".into())),
            "the first certificate, with the first config"
        );

        let (renewed, issued) = tokio::sync::watch::channel(None);
        let (second, leaf) = mesh.renew(2, true);
        renewed.send_replace(Some(second));
        let retry = Duration::from_millis(20);
        let loading = load_renewals(&mesh.sink, issued, retry, retry * 4);
        let check = async {
            tokio::time::sleep(retry * 10).await;
            assert_eq!(
                mesh.serials(),
                ("01".into(), Some("01".into())),
                "the previous certificate is served and reported while the renewed one does not load"
            );
            // The renewed chain readable now: a retry loads it, with no other announcement.
            mesh.write_chain(&leaf);
            mesh.serves("02", Duration::from_secs(5)).await
        };
        tokio::select! {
            () = loading => panic!("load_renewals returned while the identity loop runs"),
            served = check => served.expect("the renewed certificate is loaded by a retry and reported"),
        }
    }

    /// A renewed certificate that failed to load is loaded by the next pushed configuration,
    /// and reported then; a newer certificate takes a failing one's place at once.
    #[tokio::test]
    async fn a_pushed_configuration_or_a_newer_certificate_supersedes_the_retries() {
        let mesh = Mesh::start().await;
        mesh.sink.obtained(mesh.renew(1, false).0);
        mesh.push("1").await.unwrap();
        let (renewed, issued) = tokio::sync::watch::channel(None);
        let (second, leaf) = mesh.renew(2, true);
        renewed.send_replace(Some(second));
        // Retries an hour apart: within the test only a push or a newer certificate loads one.
        let hour = Duration::from_secs(3600);
        let loading = load_renewals(&mesh.sink, issued, hour, hour);
        let check = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert_eq!(mesh.serials(), ("01".into(), Some("01".into())));
            mesh.write_chain(&leaf);
            mesh.push("2").await.unwrap();
            assert_eq!(
                mesh.serials(),
                ("02".into(), Some("02".into())),
                "the pushed config loaded it"
            );

            renewed.send_replace(Some(mesh.renew(3, true).0));
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert_eq!(mesh.serials(), ("02".into(), Some("02".into())));
            renewed.send_replace(Some(mesh.renew(4, false).0));
            mesh.serves("04", Duration::from_secs(5)).await
        };
        tokio::select! {
            () = loading => panic!("load_renewals returned while the identity loop runs"),
            served = check => served.expect("the newer certificate loads at once"),
        }
    }
}
