//! Mesh mode's config subscription through the real proxy: `trellis_proxy::control::AppSink`
//! behind `trellis_push::client::run_push`, subscribed over TLS to a fake operator the test
//! drives. A config refused because a listener's port is taken is NACKed, applied again once
//! the port is free and ACKed then — `/config_dump` saying so at each step —; a config the proxy
//! refuses for what it says stays NACKed, without being applied again; a newer version takes the
//! place of one waiting to be applied again.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};
use tonic::transport::Identity;
use trellis_contract::ProxyConfig;
use trellis_proxy::App;
use trellis_proxy::control::AppSink;
use trellis_push::Snapshot;
use trellis_push::client::{self, CERT_CHAIN_FILE, KEY_FILE, ROOTS_FILE};
use trellis_push::testing::{FakeOperator, Session};

use crate::support::*;

/// Push `config` whole on `session`.
async fn push(session: &Session, config: &Value) {
    let config: ProxyConfig = serde_json::from_value(config.clone()).expect("test config parses");
    session.send(Snapshot::from_config(&config)).await;
}

/// The proxy in mesh mode, subscribed to a fake operator, with the workload certificate it
/// would have obtained already on disk.
struct Mesh {
    proxy: std::sync::Arc<App>,
    session: Session,
    push: tokio::task::JoinHandle<()>,
    _operator: FakeOperator,
    _dir: tempfile::TempDir,
}

impl Drop for Mesh {
    fn drop(&mut self) {
        self.push.abort();
    }
}

impl Mesh {
    async fn start() -> Mesh {
        let pki = Pki::new();
        let dir = tempfile::tempdir().unwrap();
        let identity_dir = dir.path().join("identity");
        std::fs::create_dir_all(&identity_dir).unwrap();
        let workload = pki.leaf("spiffe://cluster.local/ns/shop/sa/web");
        std::fs::write(identity_dir.join(CERT_CHAIN_FILE), &workload.cert_pem).unwrap();
        std::fs::write(identity_dir.join(KEY_FILE), &workload.key_pem).unwrap();
        std::fs::write(identity_dir.join(ROOTS_FILE), pki.root_pem()).unwrap();
        std::fs::write(dir.path().join("root.pem"), pki.root_pem()).unwrap();
        std::fs::write(dir.path().join("token"), "unused").unwrap();

        let server = pki.dns_leaf("localhost");
        let mut operator = FakeOperator::start(Identity::from_pem(server.cert_pem, server.key_pem)).await;
        let cfg = operator.client_config(dir.path());
        let proxy = std::sync::Arc::new(
            App::start(trellis_proxy::AppConfig::admin_only("127.0.0.1:0".parse().unwrap()))
                .await
                .unwrap(),
        );
        let sink = std::sync::Arc::new(AppSink::new(proxy.clone(), &cfg));
        let push = tokio::spawn(client::run_push(cfg, sink));
        let session = operator.session().await;
        Mesh {
            proxy,
            session,
            push,
            _operator: operator,
            _dir: dir,
        }
    }

    fn admin(&self) -> SocketAddr {
        self.proxy.admin_addr(trellis_proxy::admin::AdminRole::Admin).unwrap()
    }

    /// `/config_dump`'s version in force and `lastRejected`.
    async fn dump(&self) -> (String, Value) {
        let dump: Value = serde_json::from_str(&get(self.admin(), "admin", "/config_dump").await.body).unwrap();
        (
            dump["version"].as_str().unwrap_or_default().to_string(),
            dump["lastRejected"].clone(),
        )
    }

    /// How many configurations the proxy refused to apply (every attempt counts).
    async fn rejected_total(&self) -> u64 {
        let metrics = get(self.admin(), "admin", "/metrics").await.body;
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("trellis_proxy_config_rejected_total "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }
}

/// An outbound listener on `address` forwarding everything to `app`.
fn config_on(version: &str, address: &str, app: &Upstream) -> Value {
    let mut config = outbound_config(version, vec![forward_route("app")], vec![cluster("app", &[app])]);
    config["listeners"][0]["address"] = json!(address);
    config
}

#[tokio::test]
async fn a_config_refused_for_a_port_in_use_is_applied_once_the_port_is_free_and_acked() {
    let app = Upstream::start("app").await;
    let mut mesh = Mesh::start().await;
    // Another socket holds the port the config listens on (a proxy process not gone yet).
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap();

    push(&mesh.session, &config_on("v1", &address.to_string(), &app)).await;
    let error = mesh.session.expect_nack("v1").await;
    assert!(error.contains("cannot bind listener outbound"), "{error}");
    let (version, rejected) = mesh.dump().await;
    assert_eq!(version, "none", "nothing applied yet");
    assert_eq!(rejected["version"], "v1", "{rejected}");
    assert!(
        rejected["error"].as_str().is_some_and(|e| e.contains("cannot bind")),
        "{rejected}"
    );

    // The port is let go: the proxy's retry binds it and ACKs the same version, unasked.
    drop(taken);
    mesh.session.expect_ack("v1").await;
    let (version, rejected) = mesh.dump().await;
    assert_eq!((version.as_str(), rejected), ("v1", Value::Null));
    assert_eq!(mesh.proxy.listener_addr("outbound").await, Some(address));
    let reply = get(address, "app.test.svc.cluster.local", "/hello").await;
    assert_eq!((reply.status.as_u16(), reply.server()), (200, "app"));
    // The NACK said what the proxy would do.
    assert!(error.contains("applies this version again"), "{error}");
    // Applied: nothing more is tried.
    let attempts = mesh.rejected_total().await;
    assert!(mesh.session.answer(Duration::from_millis(2500)).await.is_none());
    assert_eq!(mesh.rejected_total().await, attempts);
}

#[tokio::test]
async fn a_config_the_proxy_refuses_for_what_it_says_stays_nacked_and_is_not_applied_again() {
    let app = Upstream::start("app").await;
    let mut mesh = Mesh::start().await;
    push(&mesh.session, &config_on("v1", "127.0.0.1:0", &app)).await;
    mesh.session.expect_ack("v1").await;

    // A regex Rust's engine cannot compile (a look-ahead).
    let mut bad = config_on("v2", "127.0.0.1:0", &app);
    bad["listeners"][0]["virtualHosts"][0]["routes"][0]["match"] = json!([{"uri": {"regex": "^/(?=x)"}}]);
    push(&mesh.session, &bad).await;
    let error = mesh.session.expect_nack("v2").await;
    assert!(!error.contains("applies this version again"), "{error}");
    assert_eq!(mesh.rejected_total().await, 1);
    // Past the first retries' time: no answer, no other attempt; v1 serves on.
    assert!(
        mesh.session
            .answer(client::APPLY_RETRY * 3 + Duration::from_millis(500))
            .await
            .is_none(),
        "a refused config is answered once"
    );
    assert_eq!(mesh.rejected_total().await, 1, "and applied once");
    let (version, rejected) = mesh.dump().await;
    assert_eq!(version, "v1");
    assert_eq!(rejected["version"], "v2", "{rejected}");
}

#[tokio::test]
async fn a_newer_version_takes_the_place_of_one_waiting_to_be_applied_again() {
    let app = Upstream::start("app").await;
    let mut mesh = Mesh::start().await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    push(
        &mesh.session,
        &config_on("v1", &taken.local_addr().unwrap().to_string(), &app),
    )
    .await;
    mesh.session.expect_nack("v1").await;
    push(&mesh.session, &config_on("v2", "127.0.0.1:0", &app)).await;
    mesh.session.expect_ack("v2").await;
    // v1's port free now: v1 is not applied over v2.
    drop(taken);
    assert!(
        mesh.session
            .answer(client::APPLY_RETRY * 3 + Duration::from_millis(500))
            .await
            .is_none(),
        "no answer for v1 any more"
    );
    assert_eq!(mesh.dump().await, ("v2".to_string(), Value::Null));
}
