//! The proxy's config subscription (`client::run_push`) against an in-process ConfigPush
//! server over TLS, driven step by step by each test: whole configs and deltas reach the
//! sink and are ACKed; a delta for another base, or one whose result the sink rejects, is
//! NACKed and leaves both the sink and the config deltas apply to as they were; one the sink
//! refuses for now is applied again until it applies, then ACKed; a reconnect
//! keeps that config and says so in Hello; whole configs beyond tonic's 4 MiB default pass;
//! the sink's golden signals go to the operator on the subscription every interval, and go
//! again on the next subscription after a handover (the replica stopped), never after a break.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
use tonic::Status;
use tonic::transport::Identity;
use trellis_contract::signals::{Counts, EdgeSignals, Report};
use trellis_contract::{Cluster, ConfigDelta, ProxyConfig};
use trellis_push::client::{self, CERT_CHAIN_FILE, ConfigSink, KEY_FILE};
use trellis_push::testing::{FakeOperator, STEP, Session};
use trellis_push::{Snapshot, proxy_message};

/// The test's steps on a subscription: push a snapshot, get the proxy's answer.
#[tonic::async_trait]
trait Drive {
    /// Send a snapshot and return the proxy's answer.
    async fn push(&mut self, snapshot: Snapshot) -> proxy_message::Kind;
    /// Send a snapshot in chunks and return the proxy's one answer.
    async fn push_chunked(&mut self, snapshot: Snapshot, size: usize) -> proxy_message::Kind;
    async fn acked(&mut self, snapshot: Snapshot);
    /// The NACK's error message.
    async fn nacked(&mut self, snapshot: Snapshot) -> String;
}

#[tonic::async_trait]
impl Drive for Session {
    async fn push(&mut self, snapshot: Snapshot) -> proxy_message::Kind {
        self.send(snapshot).await;
        self.answer(STEP).await.expect("the proxy answers in time")
    }

    async fn push_chunked(&mut self, snapshot: Snapshot, size: usize) -> proxy_message::Kind {
        let mut chunks = snapshot.into_chunks(size);
        let last = chunks.pop().expect("at least one chunk");
        for c in chunks {
            self.send(c).await;
        }
        self.push(last).await
    }

    async fn acked(&mut self, snapshot: Snapshot) {
        let version = snapshot.version.clone();
        self.send(snapshot).await;
        self.expect_ack(&version).await;
    }

    async fn nacked(&mut self, snapshot: Snapshot) -> String {
        let version = snapshot.version.clone();
        self.send(snapshot).await;
        self.expect_nack(&version).await
    }
}

/// Records what it applies and the versions refused before reaching it; rejects configs
/// holding a cluster named `rejected`, and for now (transiently) those holding a cluster named
/// `busy` while `busy` counts attempts left to refuse.
#[derive(Default)]
struct Sink {
    applied: Mutex<Vec<ProxyConfig>>,
    rejected: Mutex<Vec<String>>,
    /// The golden signals to report next (taken by the report).
    signals: Mutex<Option<Report>>,
    /// How many more attempts at a config with a `busy` cluster are refused for now.
    busy: Mutex<usize>,
    /// The versions of the configs refused for now, one per attempt.
    refused_for_now: Mutex<Vec<String>>,
}

impl Sink {
    fn applied(&self) -> Vec<ProxyConfig> {
        self.applied.lock().unwrap().clone()
    }
}

#[tonic::async_trait]
impl ConfigSink for Sink {
    fn current_version(&self) -> Option<String> {
        self.applied.lock().unwrap().last().map(|c| c.version.clone())
    }

    async fn apply(&self, mut config: ProxyConfig) -> Result<(), client::Refusal> {
        if config.cluster("rejected").is_some() {
            return Err("cluster \"rejected\": refused by the test sink".into());
        }
        if config.cluster("busy").is_some() {
            let mut busy = self.busy.lock().unwrap();
            if *busy > 0 {
                *busy -= 1;
                self.refused_for_now.lock().unwrap().push(config.version.clone());
                return Err(client::Refusal::transient("cluster \"busy\": its port is in use"));
            }
        }
        // Like the proxy's sink, adapt the config to this host: deltas must still apply to
        // the config as pushed, not to this copy.
        config.node.cluster = "adapted-by-the-sink".into();
        self.applied.lock().unwrap().push(config);
        Ok(())
    }

    fn rejected(&self, version: &str, _error: &str) {
        self.rejected.lock().unwrap().push(version.to_string());
    }

    fn signals(&self) -> Option<Report> {
        self.signals.lock().unwrap().take()
    }
}

/// A CA, the server's certificate for `localhost`, and the proxy's workload certificate.
struct Pki {
    ca_pem: String,
    server: Identity,
}

fn pki(identity_dir: &Path) -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_pem = ca_params.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca_params, ca_key);

    let server_key = KeyPair::generate().unwrap();
    let server_cert = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&server_key, &issuer)
        .unwrap();

    let proxy_key = KeyPair::generate().unwrap();
    let mut proxy_params = CertificateParams::default();
    proxy_params.subject_alt_names = vec![SanType::URI(
        "spiffe://cluster.local/ns/shop/sa/web".try_into().unwrap(),
    )];
    let proxy_cert = proxy_params.signed_by(&proxy_key, &issuer).unwrap();
    std::fs::create_dir_all(identity_dir).unwrap();
    std::fs::write(identity_dir.join(CERT_CHAIN_FILE), proxy_cert.pem()).unwrap();
    std::fs::write(identity_dir.join(KEY_FILE), proxy_key.serialize_pem()).unwrap();

    Pki {
        ca_pem,
        server: Identity::from_pem(server_cert.pem(), server_key.serialize_pem()),
    }
}

/// A running fake operator, a proxy subscription to it, and what the proxy applied.
struct Harness {
    operator: FakeOperator,
    sink: Arc<Sink>,
    push: tokio::task::JoinHandle<()>,
    dir: tempfile::TempDir,
}

impl Harness {
    async fn start() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let pki = pki(&dir.path().join("identity"));
        std::fs::write(dir.path().join("root.pem"), &pki.ca_pem).unwrap();
        std::fs::write(dir.path().join("token"), "unused").unwrap();

        let operator = FakeOperator::start(pki.server).await;

        let cfg = operator.client_config(dir.path());
        let sink = Arc::new(Sink::default());
        let push = tokio::spawn(client::run_push(cfg, sink.clone()));
        Harness {
            operator,
            sink,
            push,
            dir,
        }
    }

    async fn session(&mut self) -> Session {
        self.operator.session().await
    }

    /// The versions refused before they reached the sink's `apply`.
    fn rejected(&self) -> Vec<String> {
        self.sink.rejected.lock().unwrap().clone()
    }

    /// The configs the sink applied, without its local adaptation.
    fn applied(&self) -> Vec<ProxyConfig> {
        let mut applied = self.sink.applied();
        for c in &mut applied {
            assert_eq!(c.node.cluster, "adapted-by-the-sink");
            c.node.cluster = String::new();
        }
        applied
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.push.abort();
    }
}

fn cluster(name: &str, port: u16) -> Cluster {
    serde_json::from_value(serde_json::json!({"name": name, "endpoints": [{"address": "10.0.0.1", "port": port}]}))
        .unwrap()
}

fn config(version: &str, clusters: &[(&str, u16)]) -> ProxyConfig {
    let mut cfg = ProxyConfig::empty(version);
    cfg.clusters = clusters.iter().map(|(n, p)| cluster(n, *p)).collect();
    cfg
}

fn delta(old: &ProxyConfig, new: &ProxyConfig) -> Snapshot {
    let delta = ConfigDelta::between(old, new).expect("sorted configs have a delta");
    Snapshot::from_delta(&delta).unwrap()
}

#[tokio::test]
async fn a_whole_config_then_a_delta_reach_the_sink_and_are_acked() {
    let mut h = Harness::start().await;
    let mut s = h.session().await;
    assert!(s.hello.accepts_delta, "{:?}", s.hello);
    assert_eq!(s.hello.current_version, "");

    let v1 = config("v1", &[("a", 1), ("c", 3)]);
    s.acked(Snapshot::from_config(&v1)).await;
    let v2 = config("v2", &[("a", 1), ("b", 2), ("c", 33)]);
    let d = delta(&v1, &v2);
    assert!(d.is_delta() && d.config_json.is_empty());
    s.acked(d).await;
    assert_eq!(h.applied(), [v1, v2]);
}

#[tokio::test]
async fn a_nacked_delta_leaves_the_sink_and_the_base_as_they_were() {
    let mut h = Harness::start().await;
    let mut s = h.session().await;
    let v1 = config("v1", &[("a", 1)]);
    s.acked(Snapshot::from_config(&v1)).await;

    // Against a version the proxy does not hold.
    let v0 = config("v0", &[]);
    let error = s.nacked(delta(&v0, &config("v2", &[("b", 2)]))).await;
    assert!(error.contains("a full snapshot is needed"), "{error}");

    // Its result refused by the sink.
    let error = s.nacked(delta(&v1, &config("v3", &[("a", 1), ("rejected", 9)]))).await;
    assert!(error.contains("refused by the test sink"), "{error}");

    // A malformed delta.
    let error = s
        .nacked(Snapshot {
            delta_json: b"{\"version\": \"v4\"}".to_vec(),
            more: false,
            ..delta(&v1, &config("v4", &[]))
        })
        .await;
    assert!(error.contains("baseVersion"), "{error}");
    assert_eq!(
        h.applied(),
        std::slice::from_ref(&v1),
        "the sink keeps the last good config"
    );
    // The sink hears of the refusals it could not see itself (its own is its apply's error).
    assert_eq!(h.rejected(), ["v2", "v4"]);

    // The base is still v1: a delta against it applies.
    let v5 = config("v5", &[("a", 5), ("b", 2)]);
    s.acked(delta(&v1, &v5)).await;
    assert_eq!(h.applied(), [v1, v5]);
}

/// A config the sink refuses for now is NACKed, then applied again — 1 s, then 2 s later —
/// and ACKed once it applies, unasked; deltas apply to it from then on. One refused for what it
/// says is not applied again.
#[tokio::test]
async fn a_config_refused_for_now_is_applied_again_and_acked_and_deltas_apply_to_it() {
    let mut h = Harness::start().await;
    let mut s = h.session().await;
    *h.sink.busy.lock().unwrap() = 2;
    let v1 = config("v1", &[("busy", 1)]);
    let error = s.nacked(Snapshot::from_config(&v1)).await;
    assert!(
        error.starts_with("cluster \"busy\": its port is in use; the proxy applies"),
        "{error}"
    );
    let started = std::time::Instant::now();
    s.expect_ack("v1").await;
    let waited = started.elapsed();
    assert!(
        (Duration::from_millis(2900)..Duration::from_secs(5)).contains(&waited),
        "two retries, 1 s and 2 s apart: {waited:?}"
    );
    assert_eq!(*h.sink.refused_for_now.lock().unwrap(), ["v1", "v1"]);
    assert_eq!(h.applied(), std::slice::from_ref(&v1));

    // What deltas apply to is the config applied on the retry.
    let v2 = config("v2", &[("busy", 2)]);
    s.acked(delta(&v1, &v2)).await;
    assert_eq!(h.applied(), [v1.clone(), v2.clone()]);

    // Refused for good: NACKed once, never tried again.
    let v3 = config("v3", &[("busy", 2), ("rejected", 3)]);
    s.nacked(delta(&v2, &v3)).await;
    assert!(
        s.answer(client::APPLY_RETRY * 3).await.is_none(),
        "no other answer to a config refused for good"
    );
    assert_eq!(h.applied(), [v1, v2]);
}

#[tokio::test]
async fn a_reconnect_keeps_the_config_deltas_apply_to() {
    let mut h = Harness::start().await;
    let mut s = h.session().await;
    let v1 = config("v1", &[("a", 1)]);
    let v2 = config("v2", &[("a", 2)]);
    s.acked(Snapshot::from_config(&v1)).await;
    s.acked(delta(&v1, &v2)).await;

    // The operator ends the subscription; the proxy comes back and says what it holds.
    drop(s);
    let mut s = h.session().await;
    assert_eq!(s.hello.current_version, "v2");
    assert!(s.hello.accepts_delta, "{:?}", s.hello);
    assert_eq!((s.hello.namespace.as_str(), s.hello.pod.as_str()), ("shop", "web-1"));

    let v3 = config("v3", &[("a", 2), ("z", 26)]);
    s.acked(delta(&v2, &v3)).await;
    assert_eq!(h.applied(), [v1, v2, v3]);
}

#[tokio::test]
async fn whole_configs_beyond_four_mib_are_accepted() {
    let mut h = Harness::start().await;
    let mut s = h.session().await;
    let mut big = config("big", &[]);
    // Like a mesh of 1000 services: thousands of clusters, several MiB of JSON.
    big.clusters = (0..12_000)
        .map(|i| {
            let mut c = cluster(
                &format!("outbound|8080||svc-{i:05}.ns-{}.svc.cluster.local", i % 50),
                8080,
            );
            c.service = Some(format!("svc-{i:05}.ns-{}.svc.cluster.local", i % 50));
            c
        })
        .collect();
    let snapshot = Snapshot::from_config(&big);
    assert!(
        snapshot.config_json.len() > 5 << 20,
        "{} bytes",
        snapshot.config_json.len()
    );
    s.acked(snapshot).await;
    assert_eq!(h.applied(), [big]);
}

#[tokio::test]
async fn chunked_configs_and_deltas_are_put_together_and_a_mix_is_refused() {
    let mut h = Harness::start().await;
    let mut s = h.session().await;
    assert!(s.hello.accepts_chunks, "{:?}", s.hello);
    let v1 = config("v1", &[("a", 1), ("b", 2), ("c", 3)]);
    let v2 = config("v2", &[("a", 1), ("b", 22), ("d", 4)]);
    // Nothing is answered before the last chunk; then one ACK for the whole.
    let whole = Snapshot::from_config(&v1);
    assert!(whole.config_json.len() > 3 * 64);
    match s.push_chunked(whole, 64).await {
        proxy_message::Kind::Ack(a) => assert_eq!(a.version, "v1"),
        other => panic!("expected one ACK of v1, got {other:?}"),
    }
    match s.push_chunked(delta(&v1, &v2), 32).await {
        proxy_message::Kind::Ack(a) => assert_eq!(a.version, "v2"),
        other => panic!("expected one ACK of v2, got {other:?}"),
    }
    assert_eq!(h.applied(), [v1, v2.clone()]);

    // A chunk of another snapshot in the middle of one: NACKed, nothing applied.
    let v3 = config("v3", &[("x", 9)]);
    let mut first = delta(&v2, &v3).into_chunks(16);
    let other = Snapshot::from_config(&config("v4", &[])).into_chunks(16);
    s.to_proxy.send(Ok(first.remove(0))).await.unwrap();
    let error = match s.push(other[0].clone()).await {
        proxy_message::Kind::Nack(n) => n.error,
        other => panic!("expected a NACK, got {other:?}"),
    };
    assert!(
        error.contains("arrived while snapshot \"v3\" was incomplete"),
        "{error}"
    );
    assert_eq!(h.rejected(), ["v4"]);
    assert_eq!(h.applied(), [config("v1", &[("a", 1), ("b", 2), ("c", 3)]), v2.clone()]);
    // The base is still v2.
    let v5 = config("v5", &[("a", 5)]);
    s.acked(delta(&v2, &v5)).await;
}

#[tokio::test]
async fn the_pushed_trust_bundle_is_recorded_only_when_it_changes() {
    use std::os::unix::fs::MetadataExt;
    use trellis_contract::PemSource;

    let mut h = Harness::start().await;
    let mut s = h.session().await;
    let roots = h.dir.path().join("identity").join(client::ROOTS_FILE);
    let with_bundle = |version: &str, pem: &str| {
        let mut c = config(version, &[("a", 1)]);
        c.identity.trust_bundle = Some(PemSource::Inline(pem.into()));
        c
    };
    let v1 = with_bundle("v1", "ROOT-A");
    s.acked(Snapshot::from_config(&v1)).await;
    assert_eq!(std::fs::read_to_string(&roots).unwrap(), "ROOT-A");
    let inode = std::fs::metadata(&roots).unwrap().ino();
    // The same bundle again: the file is not rewritten (each write is an fsync).
    let v2 = with_bundle("v2", "ROOT-A");
    s.acked(delta(&v1, &v2)).await;
    assert_eq!(
        std::fs::metadata(&roots).unwrap().ino(),
        inode,
        "rewritten although unchanged"
    );
    // Another bundle (a root rotation): written before the ACK.
    let v3 = with_bundle("v3", "ROOT-A\nROOT-B");
    s.acked(delta(&v2, &v3)).await;
    assert_eq!(std::fs::read_to_string(&roots).unwrap(), "ROOT-A\nROOT-B");
}

#[tokio::test]
async fn golden_signals_are_reported_on_the_subscription_every_interval() {
    let mut h = Harness::start().await;
    let mut s = h.session().await;
    s.acked(Snapshot::from_config(&config("v1", &[("a", 1)]))).await;
    let report = Report {
        edges: vec![EdgeSignals {
            peer_namespace: "shop".into(),
            peer_workload: "gateway".into(),
            counts: Counts::in_buckets(3, 1, 3, &[(2, 3)]),
            ..EdgeSignals::default()
        }],
    };
    *h.sink.signals.lock().unwrap() = Some(report.clone());
    let started = std::time::Instant::now();
    let message = tokio::time::timeout(trellis_push::SIGNALS_INTERVAL + STEP, s.from_proxy.message())
        .await
        .expect("a report within the interval")
        .unwrap()
        .unwrap();
    let Some(proxy_message::Kind::Signals(signals)) = message.kind else {
        panic!("expected a report, got {message:?}");
    };
    assert_eq!(signals.report(), Ok(report));
    assert!(started.elapsed() <= trellis_push::SIGNALS_INTERVAL + Duration::from_secs(1));
    // The subscription goes on: configs are still ACKed.
    s.acked(Snapshot::from_config(&config("v2", &[("a", 2)]))).await;
}

/// The next golden-signals report on `s`, within a report interval.
async fn next_signals(s: &mut Session) -> trellis_push::Signals {
    let message = tokio::time::timeout(trellis_push::SIGNALS_INTERVAL + STEP, s.from_proxy.message())
        .await
        .expect("a report within the interval")
        .expect("the stream is healthy")
        .expect("the proxy keeps the stream open");
    match message.kind {
        Some(proxy_message::Kind::Signals(signals)) => signals,
        other => panic!("expected a report, got {other:?}"),
    }
}

#[tokio::test]
async fn after_a_handover_the_reports_go_again_and_after_a_break_they_do_not() {
    let mut h = Harness::start().await;
    let mut s = h.session().await;
    let report = Report {
        edges: vec![EdgeSignals {
            peer_namespace: "shop".into(),
            peer_workload: "gateway".into(),
            counts: Counts::in_buckets(5, 0, 5, &[(2, 5)]),
            ..EdgeSignals::default()
        }],
    };
    *h.sink.signals.lock().unwrap() = Some(report.clone());
    let first = next_signals(&mut s).await;
    assert_eq!((first.report(), first.age_seconds), (Ok(report.clone()), 0));

    // The replica stops: it ends the subscription with the handover status, and the next
    // subscription is sent the report again, with its age, before anything else.
    s.to_proxy.send(Err(trellis_push::handover_status())).await.unwrap();
    let mut s = h.session().await;
    let again = next_signals(&mut s).await;
    assert_eq!(again.report(), Ok(report.clone()));
    assert!(again.age_seconds <= 2, "sent about now: {}", again.age_seconds);

    // That subscription breaks (no handover): its replica keeps what it took, and the next
    // subscription is sent nothing again.
    s.to_proxy
        .send(Err(Status::unavailable("connection reset")))
        .await
        .unwrap();
    let mut s = h.session().await;
    let quiet = tokio::time::timeout(Duration::from_secs(3), s.from_proxy.message()).await;
    assert!(quiet.is_err(), "nothing sent again after a break: {quiet:?}");
}
