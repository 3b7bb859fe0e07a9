//! The proxy's side of the API: obtaining and rotating its workload certificate, and the
//! config subscription with ACK/NACK and reconnects.
//!
//! # Guarantees
//! - The private key is generated here and written only to the identity directory (mode
//!   0600); it is never sent anywhere.
//! - Certificate files are replaced atomically (write, then rename), so a reader never sees a
//!   half-written chain; the chain and its key are replaced as one set under [`IdentityFiles`],
//!   so a reader holding its read lock never sees a key that does not match the chain.
//! - While the operator is away the proxy keeps serving: [`run_push`] only ever hands
//!   complete configurations to the [`ConfigSink`] and reconnects with capped exponential
//!   backoff.
//! - Golden signals ([`ConfigSink::signals`]) go on the subscription every [`SIGNALS_INTERVAL`],
//!   without ever holding up an ACK or NACK: a report that finds the stream backed up is dropped.
//!   When the operator replica ends the subscription with a handover (it stops), the reports
//!   of the last [`crate::SIGNALS_WINDOW`] go again, with their ages, on the next subscription
//!   (`handover`); after a subscription that broke they do not (their replica still holds them).
//! - The certificate the proxy serves ([`Served`], set by whoever loads it into the data path)
//!   goes in every Hello and, whenever it changes, in a `Certificate` message.
//! - Deltas: [`run_push`] keeps the last pushed config the sink accepted, as received (before
//!   the sink adapts it), across reconnects, and applies each delta to it. A delta that does
//!   not apply, or whose result the sink rejects, is NACKed and leaves that config as it was.
//! - A config the sink refuses for a transient reason ([`Refusal::transient`]: a listener's port
//!   in use) is NACKed, then applied again after [`APPLY_RETRY`], doubling up to
//!   [`APPLY_RETRY_MAX`], until it applies — and is ACKed then — or another config arrives (a
//!   reconnect too: the operator sends the version again, since Hello reports the one applied).
//!   A config refused for what it says is NACKed once and never applied again.

mod certificate;
mod decode;
mod files;
mod handover;
mod refusal;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub use certificate::{ISSUER_RETRY_MAX, Issued, Renewal, Served, Wanted, issuer_retry};
use certificate::{leaf_serial, leaf_spiffe_id};
pub use files::IdentityFiles;
use handover::Handover;
use rcgen::{CertificateParams, KeyPair, SanType};
pub use refusal::{APPLY_RETRY, APPLY_RETRY_MAX, Refusal};
use refusal::{Retry, due, transient_nack};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use trellis_contract::signals::Report;
use trellis_contract::{PemSource, ProxyConfig};

use crate::v1::certificates_client::CertificatesClient;
use crate::v1::config_push_client::ConfigPushClient;
use crate::{
    Hello, MAX_SNAPSHOT_BYTES, ProxyMessage, Reassembly, SIGNALS_INTERVAL, SignRequest, Snapshot, renewal_time,
};

/// File names in the identity directory.
pub const CERT_CHAIN_FILE: &str = "cert-chain.pem";
/// The private key file.
pub const KEY_FILE: &str = "key.pem";
/// The trust bundle file (every root the proxy trusts).
pub const ROOTS_FILE: &str = "root-certs.pem";

/// Where and who the proxy is.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The operator's push API, e.g. `https://trellis-operator.trellis-system.svc:15012`.
    pub endpoint: String,
    /// The DNS name in the operator's serving certificate.
    pub server_name: String,
    /// The mesh root used to verify the operator before the proxy has a trust bundle.
    pub root_cert: PathBuf,
    /// The pod's projected ServiceAccount token (audience `trellis`).
    pub token: PathBuf,
    /// Where the certificate, key and trust bundle are written.
    pub identity_dir: PathBuf,
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub pod: String,
    /// `sidecar` or `gateway`.
    pub role: String,
    /// The identity to request: `spiffe://<td>/ns/<namespace>/sa/<serviceaccount>`.
    pub spiffe_id: String,
    /// The proxy's build version, reported to the operator.
    pub proxy_version: String,
    /// Shared by [`run_push`] and [`run_identity`] started with clones of this config: lets the
    /// subscription ask for an early renewal during a root rotation.
    pub renewal: Renewal,
    /// The certificate the proxy serves, reported to the operator by [`run_push`]; clones of
    /// this config share it.
    pub served: Served,
    /// The lock over the files in `identity_dir`: the certificate and its key are replaced
    /// together under it, and whoever reads both holds it. Clones of this config share it.
    pub files: IdentityFiles,
}

/// Why a certificate or subscription attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A local file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The operator could not be reached.
    #[error(
        "cannot reach the operator at {endpoint}: {detail} (is trellis-operator running, and is port 15012 reachable from this pod?)"
    )]
    Connect {
        /// Where.
        endpoint: String,
        /// Why.
        detail: String,
    },
    /// The operator refused.
    #[error("the operator refused: {0}")]
    Refused(#[from] tonic::Status),
    /// Key or CSR generation failed.
    #[error("generating the key or CSR failed: {0}")]
    Key(#[from] rcgen::Error),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ClientError + '_ {
    move |source| ClientError::Io {
        path: path.to_path_buf(),
        source,
    }
}

async fn channel(cfg: &ClientConfig, identity: Option<Identity>) -> Result<Channel, ClientError> {
    let mut roots = std::fs::read_to_string(&cfg.root_cert).map_err(io(&cfg.root_cert))?;
    // why: during a root rotation the operator's serving certificate moves to the new root
    // before the mounted root file may have caught up; the bundle this proxy last received
    // (and acknowledged) already holds the new root.
    if let Ok(bundle) = std::fs::read_to_string(cfg.identity_dir.join(ROOTS_FILE)) {
        roots.push('\n');
        roots.push_str(&bundle);
    }
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(roots))
        .domain_name(&cfg.server_name);
    if let Some(id) = identity {
        tls = tls.identity(id);
    }
    let connect = |detail: String| ClientError::Connect {
        endpoint: cfg.endpoint.clone(),
        detail,
    };
    Channel::from_shared(cfg.endpoint.clone())
        .map_err(|e| connect(e.to_string()))?
        .tls_config(tls)
        .map_err(|e| connect(e.to_string()))?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| connect(e.to_string()))
}

/// Generate a key, have the operator sign it for this pod's identity, and write the chain,
/// key and trust bundle to the identity directory. The identity asked for is the one the
/// pushed configuration names ([`Renewal::identity_for`]), else `cfg.spiffe_id`.
pub async fn obtain_certificate(cfg: &ClientConfig) -> Result<Issued, ClientError> {
    std::fs::create_dir_all(&cfg.identity_dir).map_err(io(&cfg.identity_dir))?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let identity = cfg.renewal.identity_for(&cfg.spiffe_id);
    params.subject_alt_names = vec![SanType::URI(identity.as_str().try_into()?)];
    let csr_pem = params.serialize_request(&key)?.pem()?;
    let token = std::fs::read_to_string(&cfg.token).map_err(io(&cfg.token))?;
    let mut client = CertificatesClient::new(channel(cfg, None).await?);
    let resp = client
        .sign(SignRequest {
            csr_pem,
            token: token.trim().to_string(),
            namespace: cfg.namespace.clone(),
            pod: cfg.pod.clone(),
        })
        .await?
        .into_inner();
    // Roots first: a peer may present the new leaf as soon as the chain file changes.
    let files = vec![
        (ROOTS_FILE, resp.trust_bundle_pem.concat(), false),
        (KEY_FILE, key.serialize_pem(), true),
        (CERT_CHAIN_FILE, resp.cert_chain_pem.clone(), false),
    ];
    cfg.files.replace(&cfg.identity_dir, files).await?;
    let at = |s: i64| SystemTime::UNIX_EPOCH + Duration::from_secs(s.max(0) as u64);
    Ok(Issued {
        not_before: at(resp.not_before_unix),
        not_after: at(resp.not_after_unix),
        issuer_fingerprint: resp.issuer_fingerprint,
        serial: leaf_serial(&resp.cert_chain_pem),
        spiffe_id: leaf_spiffe_id(&resp.cert_chain_pem),
    })
}

/// After a trust domain change, how long the proxy waits before each early renewal into the
/// identity its configuration names (the first at once), while the certificate it obtained is
/// still in another domain.
// why: the replica that signs may not have seen the change yet (milliseconds behind the one
// that pushed the configuration); three tries cover that, and a proxy an operator keeps
// refusing stays on its certificate until the usual half-life renewal.
const IDENTITY_RETRIES: [Duration; 3] = [Duration::ZERO, Duration::from_secs(10), Duration::from_secs(60)];

/// Keep a valid certificate: obtain one, renew it at half its lifetime (with jitter), or early
/// when the subscription asks for one from another root ([`issuer_retry`]: again, spaced out,
/// while the answer comes from another root) or with another identity (the trust domain
/// changed) ([`Renewal`]); retry failures with backoff while the old one is still valid.
/// Announces each on `issued`.
pub async fn run_identity(cfg: ClientConfig, issued: watch::Sender<Option<Issued>>) {
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
    let mut renewal = cfg.renewal.subscribe();
    // The root early renewals were made for, and how many ([`issuer_retry`]).
    let mut issuer_tries: (String, u32) = (String::new(), 0);
    // The identity early renewals were made for, and how many: a replica that has not seen the
    // trust domain change yet may sign in the previous one, so a few more tries follow, spaced
    // out ([`IDENTITY_RETRIES`]), never a loop.
    let mut identity_tries: (String, usize) = (String::new(), 0);
    loop {
        match obtain_certificate(&cfg).await {
            Ok(cert) => {
                backoff.reset();
                tracing::info!(identity = %cert.spiffe_id, issuer = %cert.issuer_fingerprint, "workload certificate issued");
                let renew_at = renewal_time(cert.not_before, cert.not_after, fastrand::f64() * 2.0 - 1.0);
                let wait = renew_at.duration_since(SystemTime::now()).unwrap_or_default();
                let issuer = cert.issuer_fingerprint.clone();
                let identity = cert.spiffe_id.clone();
                issued.send_replace(Some(cert));
                let sleep = tokio::time::sleep(wait);
                tokio::pin!(sleep);
                loop {
                    let wanted = renewal.borrow_and_update().clone();
                    if let Some(delay) = issuer_retry(&wanted.issuer, &issuer, &mut issuer_tries) {
                        tracing::info!(wanted = %wanted.issuer, %issuer, ?delay, "the mesh root is rotating; renewing the certificate from the new root");
                        tokio::select! {
                            _ = tokio::time::sleep(delay) => break,
                            _ = &mut sleep => break,
                            r = renewal.changed() => {
                                if r.is_err() {
                                    (&mut sleep).await;
                                    break;
                                }
                                continue;
                            }
                        }
                    }
                    let named = cfg.renewal.identity_for(&cfg.spiffe_id);
                    if !wanted.identity.is_empty()
                        && named == wanted.identity
                        && !identity.is_empty()
                        && wanted.identity != identity
                    {
                        if identity_tries.0 != wanted.identity {
                            identity_tries = (wanted.identity.clone(), 0);
                        }
                        if let Some(delay) = IDENTITY_RETRIES.get(identity_tries.1).copied() {
                            identity_tries.1 += 1;
                            tracing::info!(wanted = %wanted.identity, %identity, ?delay, "the mesh's trust domain changed; renewing the certificate");
                            tokio::select! {
                                _ = tokio::time::sleep(delay) => break,
                                _ = &mut sleep => break,
                            }
                        }
                    }
                    tokio::select! {
                        _ = &mut sleep => break,
                        r = renewal.changed() => if r.is_err() { (&mut sleep).await; break },
                    }
                }
            }
            Err(e) => {
                let delay = backoff.next();
                tracing::warn!(error = %e, retry_in = ?delay, "could not obtain a workload certificate");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Where pushed configurations go.
#[tonic::async_trait]
pub trait ConfigSink: Send + Sync + 'static {
    /// The version being served (sent in Hello so a current proxy is not sent it again).
    fn current_version(&self) -> Option<String>;
    /// Validate and apply a configuration; on error the proxy keeps its last good one and the
    /// error is NACKed to the operator (and, for a [`Refusal::transient`] one, the same
    /// configuration is applied again later).
    async fn apply(&self, config: ProxyConfig) -> Result<(), Refusal>;
    /// A pushed configuration was refused before it could reach [`ConfigSink::apply`]: its
    /// payload does not parse, its chunks do not reassemble, or its delta does not apply. It
    /// is NACKed either way; a sink that shows the proxy's state records it here. The default
    /// records nothing.
    fn rejected(&self, version: &str, error: &str) {
        let _ = (version, error);
    }
    /// The golden signals of the requests handled since the previous call, reported to the
    /// operator every [`SIGNALS_INTERVAL`] (`None`: nothing to report). The default reports
    /// nothing.
    fn signals(&self) -> Option<Report> {
        None
    }
}

/// Subscribe to the operator and apply every snapshot, forever: reconnect with backoff when
/// the operator is away (the proxy keeps serving its current config meanwhile). Whole configs
/// and deltas are both accepted (Hello says `accepts_delta`); the config deltas apply to is
/// kept across reconnects.
pub async fn run_push(cfg: ClientConfig, sink: Arc<dyn ConfigSink>) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(15));
    let mut held: Option<ProxyConfig> = None;
    let mut handover = Handover::default();
    loop {
        match subscribe_once(&cfg, sink.as_ref(), &mut held, &mut backoff, &mut handover).await {
            Ok(()) => tracing::info!("the operator closed the subscription; reconnecting"),
            Err(e) => tracing::warn!(error = %e, "config subscription failed; reconnecting"),
        }
        tokio::time::sleep(backoff.next()).await;
    }
}

/// Whether the operator may send deltas: they apply to the config held, so it must be the
/// version Hello reports as served (a sink that reports none is sent a whole config first).
fn accepts_delta(reported: Option<&str>, held: Option<&ProxyConfig>) -> bool {
    match (reported, held) {
        (None, _) => true,
        (Some(reported), Some(held)) => reported == held.version,
        (Some(_), None) => false,
    }
}

async fn subscribe_once(
    cfg: &ClientConfig,
    sink: &dyn ConfigSink,
    held: &mut Option<ProxyConfig>,
    backoff: &mut Backoff,
    handover: &mut Handover,
) -> Result<(), ClientError> {
    let chain_path = cfg.identity_dir.join(CERT_CHAIN_FILE);
    let key_path = cfg.identity_dir.join(KEY_FILE);
    let (chain, key) = {
        let _files = cfg.files.read().await;
        let chain = std::fs::read_to_string(&chain_path).map_err(io(&chain_path))?;
        (chain, std::fs::read_to_string(&key_path).map_err(io(&key_path))?)
    };
    let mut client = ConfigPushClient::new(channel(cfg, Some(Identity::from_pem(chain, key))).await?)
        .max_decoding_message_size(MAX_SNAPSHOT_BYTES);
    let (tx, rx) = mpsc::channel(8);
    let mut served = cfg.served.subscribe();
    let certificate_json = served
        .borrow_and_update()
        .as_ref()
        .map(crate::certificate_json)
        .unwrap_or_default();
    let current_version = sink.current_version();
    let hello = ProxyMessage::hello(Hello {
        namespace: cfg.namespace.clone(),
        pod: cfg.pod.clone(),
        role: cfg.role.clone(),
        proxy_version: cfg.proxy_version.clone(),
        accepts_delta: accepts_delta(current_version.as_deref(), held.as_ref()),
        accepts_chunks: true,
        current_version: current_version.unwrap_or_default(),
        certificate_json,
    });
    // The channel has room: the send cannot fail while `rx` is alive.
    let _ = tx.send(hello).await;
    let mut stream = client.subscribe(ReceiverStream::new(rx)).await?.into_inner();
    let resend = handover.subscribed(std::time::Instant::now());
    if !resend.is_empty() {
        tracing::info!(
            reports = resend.len(),
            "sending again the golden-signal reports the stopped operator replica held"
        );
    }
    for (age, report) in resend {
        if tx.send(ProxyMessage::signals_aged(&report, age)).await.is_err() {
            break;
        }
    }
    let mut chunks = Reassembly::default();
    // A config refused for a transient reason, applied again when due.
    let mut retry: Option<Retry> = None;
    let mut report = tokio::time::interval_at(tokio::time::Instant::now() + SIGNALS_INTERVAL, SIGNALS_INTERVAL);
    report.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let message = tokio::select! {
            m = stream.message() => match m {
                Ok(m) => m,
                Err(status) if crate::is_handover(&status) => {
                    tracing::info!("the operator replica is stopping and hands this proxy over; reconnecting");
                    handover.handed_over();
                    return Ok(());
                }
                Err(status) => return Err(status.into()),
            },
            _ = report.tick() => {
                // Never waits: a report that finds the channel full (the operator not reading)
                // is dropped rather than delaying ACKs.
                if let Some(signals) = sink.signals()
                    && tx.try_send(ProxyMessage::signals(&signals)).is_ok()
                {
                    handover.sent(std::time::Instant::now(), signals);
                }
                continue;
            }
            changed = served.changed() => {
                // The sender lives in `cfg`: this only ends with the subscription.
                if changed.is_err() {
                    break;
                }
                let certificate = served.borrow_and_update().clone();
                if let Some(certificate) = certificate
                    && tx.send(ProxyMessage::certificate(&certificate)).await.is_err()
                {
                    break;
                }
                continue;
            }
            () = due(retry.as_ref().map(|r| r.at)) => {
                let Some(pending) = retry.take() else { continue };
                if let Some(reply) = apply_again(cfg, sink, held, pending, &mut retry).await
                    && tx.send(reply).await.is_err()
                {
                    break;
                }
                continue;
            }
        };
        let Some(message) = message else { break };
        backoff.reset();
        let version = message.version.clone();
        let reply = match chunks.push(message) {
            Ok(None) => continue,
            Ok(Some(snapshot)) => {
                // A newer version takes the place of one waiting to be applied again.
                retry = None;
                apply_snapshot(cfg, sink, held, snapshot, &mut retry).await
            }
            Err(e) => {
                retry = None;
                tracing::warn!(%version, error = %e, "rejected a chunked config; keeping the last good one");
                sink.rejected(&version, &e.to_string());
                ProxyMessage::nack(version, e.to_string())
            }
        };
        if tx.send(reply).await.is_err() {
            break;
        }
    }
    Ok(())
}

/// Apply one snapshot (whole or delta) and say whether it was: the ACK or NACK to send. A
/// config the sink refuses for a transient reason is left in `retry`.
async fn apply_snapshot(
    cfg: &ClientConfig,
    sink: &dyn ConfigSink,
    held: &mut Option<ProxyConfig>,
    snapshot: Snapshot,
    retry: &mut Option<Retry>,
) -> ProxyMessage {
    let version = snapshot.version.clone();
    if snapshot.is_delta() {
        tracing::debug!(%version, base = %snapshot.base_version, bytes = snapshot.delta_json.len(), "config delta received");
    } else {
        tracing::debug!(%version, bytes = snapshot.config_json.len(), "whole config received");
    }
    let renew_unless_issued_by = snapshot.renew_unless_issued_by.clone();
    let config = match decode::decoded(snapshot, held).await {
        Ok(config) => config,
        Err(e) => {
            let e = e.to_string();
            sink.rejected(&version, &e);
            tracing::warn!(%version, error = %e, "rejected a pushed config; keeping the last good one");
            return ProxyMessage::nack(version, e);
        }
    };
    // The sink takes its own copy (it may adapt it); deltas apply to the pushed one.
    match sink.apply(config.clone()).await {
        Ok(()) => {
            accepted(cfg, held, config, &renew_unless_issued_by).await;
            ProxyMessage::ack(version)
        }
        Err(refusal) if refusal.transient => {
            let pending = Retry::first(config, renew_unless_issued_by);
            tracing::warn!(%version, error = %refusal, retry_in = ?pending.wait(), "could not apply a pushed config for now; keeping the last good one and applying it again");
            *retry = Some(pending);
            ProxyMessage::nack(version, transient_nack(&refusal.error))
        }
        Err(refusal) => {
            tracing::warn!(%version, error = %refusal, "rejected a pushed config; keeping the last good one");
            ProxyMessage::nack(version, refusal.error)
        }
    }
}

/// Apply again a config refused for a transient reason: its ACK once it applies; nothing while
/// it is refused for a transient reason again (the next attempt left in `retry`, later); a NACK
/// with the new error if it is refused for what it says now.
async fn apply_again(
    cfg: &ClientConfig,
    sink: &dyn ConfigSink,
    held: &mut Option<ProxyConfig>,
    pending: Retry,
    retry: &mut Option<Retry>,
) -> Option<ProxyMessage> {
    let version = pending.config.version.clone();
    match sink.apply(pending.config.clone()).await {
        Ok(()) => {
            tracing::info!(%version, "applied a config refused before; acknowledging it");
            accepted(cfg, held, pending.config, &pending.renew_unless_issued_by).await;
            Some(ProxyMessage::ack(version))
        }
        Err(refusal) if refusal.transient => {
            let next = pending.again();
            tracing::debug!(%version, error = %refusal, retry_in = ?next.wait(), "still cannot apply the config");
            *retry = Some(next);
            None
        }
        Err(refusal) => {
            tracing::warn!(%version, error = %refusal, "rejected a pushed config on a retry; keeping the last good one");
            Some(ProxyMessage::nack(version, refusal.error))
        }
    }
}

/// The sink applied `config`: keep it as what deltas apply to, and act on what it says about
/// the proxy's certificate.
async fn accepted(
    cfg: &ClientConfig,
    held: &mut Option<ProxyConfig>,
    config: ProxyConfig,
    renew_unless_issued_by: &str,
) {
    // Keep the bundle file current with the roots the proxy now trusts (rewritten only when it
    // differs: most configs carry the same bundle).
    let path = cfg.identity_dir.join(ROOTS_FILE);
    if let Some(PemSource::Inline(pem)) = &config.identity.trust_bundle
        && tokio::fs::read_to_string(&path).await.ok().as_deref() != Some(pem.as_str())
        && let Err(e) = cfg
            .files
            .replace(&cfg.identity_dir, vec![(ROOTS_FILE, pem.clone(), false)])
            .await
    {
        tracing::warn!(error = %e, "could not record the pushed trust bundle");
    }
    cfg.renewal
        .request_identity(config.identity.spiffe_id.as_deref().unwrap_or_default());
    *held = Some(config);
    cfg.renewal.request(renew_unless_issued_by);
}

/// Capped exponential backoff with jitter.
#[derive(Debug)]
struct Backoff {
    base: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    fn new(base: Duration, max: Duration) -> Self {
        Backoff {
            base,
            max,
            current: base,
        }
    }

    fn reset(&mut self) {
        self.current = self.base;
    }

    fn next(&mut self) -> Duration {
        let d = self.current;
        self.current = (self.current * 2).min(self.max);
        // Full jitter on half the delay, so a fleet does not reconnect in lockstep.
        d / 2 + d.mul_f64(fastrand::f64() / 2.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_are_accepted_when_the_config_held_is_the_one_reported() {
        let held = ProxyConfig::empty("v1");
        assert!(accepts_delta(None, None), "a first start is sent a whole config anyway");
        assert!(accepts_delta(None, Some(&held)));
        assert!(accepts_delta(Some("v1"), Some(&held)));
        assert!(!accepts_delta(Some("v2"), Some(&held)));
        assert!(!accepts_delta(Some("v1"), None));
    }

    #[test]
    fn backoff_grows_caps_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(800));
        let delays: Vec<Duration> = (0..6).map(|_| b.next()).collect();
        assert!(delays[0] >= Duration::from_millis(50) && delays[0] <= Duration::from_millis(100));
        assert!(delays[5] <= Duration::from_millis(800) && delays[5] >= Duration::from_millis(400));
        b.reset();
        assert!(b.next() <= Duration::from_millis(100));
    }
}
