//! The proxy's push client against the whole operator on a cluster (kubesim, or upstream
//! Kubernetes with `TRELLIS_E2E_CLUSTER=upstream`, the operator holding exactly its installed
//! RBAC): it obtains its certificate with its ServiceAccount token, rotates it at half-life,
//! subscribes over mutual TLS, ACKs, NACKs a config it rejects (keeping the last good one), and
//! reconnects when the operator is restarted.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::{Target, cluster_with_web, free_port, mesh_proxy, operator_client, operator_config, until, web_proxy};
use trellis_contract::ProxyConfig;
use trellis_operator::app::{self, App};
use trellis_push::client::{self, CERT_CHAIN_FILE, ConfigSink, KEY_FILE, ROOTS_FILE};

fn vs(timeout: &str) -> String {
    format!(
        "apiVersion: networking.trellis.dev/v1alpha1\nkind: VirtualService\nmetadata: {{name: web, namespace: shop}}\nspec:\n  hosts: [web]\n  http:\n  - route: [{{destination: {{host: web}}}}]\n    timeout: {timeout}\n"
    )
}

/// Records what it is given; rejects configs while `reject` is set.
#[derive(Default)]
struct Sink {
    applied: Mutex<Vec<ProxyConfig>>,
    reject: AtomicBool,
}

#[tonic::async_trait]
impl ConfigSink for Sink {
    fn current_version(&self) -> Option<String> {
        self.applied.lock().unwrap().last().map(|c| c.version.clone())
    }
    async fn apply(&self, config: ProxyConfig) -> Result<(), client::Refusal> {
        if self.reject.load(Ordering::SeqCst) {
            return Err("listener outbound: test rejection".into());
        }
        config.validate().map_err(|e| e.to_string())?;
        self.applied.lock().unwrap().push(config);
        Ok(())
    }
}

async fn operator(cluster: &Target, port: u16, ttl: u64) -> App {
    app::start(operator_config(port, ttl), operator_client(cluster).await)
        .await
        .expect("the operator starts")
}

fn last_timeout(sink: &Sink) -> Option<u64> {
    let applied = sink.applied.lock().unwrap();
    let cfg = applied.last()?;
    let l = cfg.listeners.iter().find(|l| l.name == "outbound")?;
    let vh = l
        .virtual_hosts
        .iter()
        .find(|v| v.name == "web.shop.svc.cluster.local:8080")?;
    match &vh.routes.first()?.action {
        trellis_contract::RouteAction::Forward(f) => f.timeout_ms,
        _ => None,
    }
}

/// Both parts on one cluster (started once for the test binary: upstream Kubernetes takes a
/// while to start), each with an operator of its own holding exactly its installed RBAC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_one_cluster() {
    let (cluster, pod) = cluster_with_web();
    identity_rotation_push_nack_and_reconnect(&cluster, &pod).await;
    trellis_proxy_in_mesh_mode(&cluster, &pod).await;
}

async fn identity_rotation_push_nack_and_reconnect(cluster: &Target, pod: &str) {
    cluster.kubectl_ok(&["apply", "-f", "-"], Some(&vs("3s"))).unwrap();

    // A short certificate lifetime, so rotation happens within the test.
    let port = free_port();
    let op = operator(cluster, port, 4).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = web_proxy(cluster, dir.path(), port, pod, &op.root_pem);

    // Identity: obtained, then rotated at half-life.
    let (issued_tx, issued_rx) = tokio::sync::watch::channel(None);
    let identity = tokio::spawn(client::run_identity(cfg.clone(), issued_tx));
    until("a first certificate", 10, || issued_rx.borrow().is_some()).await;
    let first = issued_rx.borrow().clone().unwrap();
    let chain = std::fs::read_to_string(cfg.identity_dir.join(CERT_CHAIN_FILE)).unwrap();
    assert!(cfg.identity_dir.join(ROOTS_FILE).exists() && cfg.identity_dir.join(KEY_FILE).exists());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(cfg.identity_dir.join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the key is private");
    }
    until("a rotated certificate", 10, || {
        issued_rx
            .borrow()
            .as_ref()
            .is_some_and(|c| c.not_after > first.not_after)
    })
    .await;
    assert_ne!(
        std::fs::read_to_string(cfg.identity_dir.join(CERT_CHAIN_FILE)).unwrap(),
        chain
    );

    // Push: the first config is applied and ACKed.
    let sink = Arc::new(Sink::default());
    let push = tokio::spawn(client::run_push(cfg.clone(), sink.clone()));
    until("the first config", 10, || last_timeout(&sink) == Some(3000)).await;
    let acked = sink.current_version().unwrap();
    until("the ACK", 5, || {
        op.push
            .sync_state()
            .iter()
            .any(|p| p.acked.as_deref() == Some(acked.as_str()))
    })
    .await;

    // A change arrives.
    cluster.kubectl_ok(&["apply", "-f", "-"], Some(&vs("5s"))).unwrap();
    until("the changed config", 5, || last_timeout(&sink) == Some(5000)).await;

    // A rejected config is NACKed; the last good one stays.
    sink.reject.store(true, Ordering::SeqCst);
    cluster.kubectl_ok(&["apply", "-f", "-"], Some(&vs("7s"))).unwrap();
    until("the NACK", 5, || {
        op.push
            .sync_state()
            .iter()
            .any(|p| p.nacked.as_ref().is_some_and(|n| n.error.contains("test rejection")))
    })
    .await;
    assert_eq!(last_timeout(&sink), Some(5000), "the last good config stays");
    sink.reject.store(false, Ordering::SeqCst);

    // The operator goes away and comes back: the client reconnects and gets what it missed.
    op.stop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.kubectl_ok(&["apply", "-f", "-"], Some(&vs("9s"))).unwrap();
    assert_eq!(
        last_timeout(&sink),
        Some(5000),
        "still serving while the operator is away"
    );
    let op = operator(cluster, port, 4).await;
    until("the config after the restart", 20, || last_timeout(&sink) == Some(9000)).await;

    push.abort();
    identity.abort();
    op.stop();
}

/// The real proxy in mesh mode: certificate from the operator, configuration pushed and
/// applied, ready; a rotated certificate is reloaded without a rejection.
async fn trellis_proxy_in_mesh_mode(cluster: &Target, pod: &str) {
    let port = free_port();
    let op = operator(cluster, port, 4).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = web_proxy(cluster, dir.path(), port, pod, &op.root_pem);
    // The proxy keeps its certificate in a temporary directory; the pushed config is pointed
    // at it (the operator's paths are only defaults).
    let (proxy, control) = mesh_proxy(cfg).await;
    until("the proxy is configured and ready", 20, || proxy.runtime().is_ready()).await;
    let version = proxy.runtime().snapshot().settings.version.clone();
    until("the operator sees the ACK", 5, || {
        op.push
            .sync_state()
            .iter()
            .any(|p| p.acked.as_deref() == Some(version.as_str()))
    })
    .await;
    // Rotation (4 s certificates) re-applies the config: the proxy serves the new certificate
    // and nothing is rejected.
    let leaf = || {
        proxy
            .runtime()
            .snapshot()
            .identity
            .as_ref()
            .map(|id| id.cert.chain[0].to_vec())
    };
    let first = leaf().expect("the proxy holds its workload certificate");
    until("the proxy serves a rotated certificate", 10, || {
        leaf().is_some_and(|l| l != first)
    })
    .await;
    assert!(
        proxy.runtime().last_rejection().is_none(),
        "{:?}",
        proxy.runtime().last_rejection()
    );
    assert!(proxy.runtime().is_ready());
    control.abort();
    op.stop();
}
