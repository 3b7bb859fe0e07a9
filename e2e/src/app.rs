//! Starting and stopping a whole kubesim: credentials, the API server, the
//! controllers and the objects every cluster has (namespaces, the node, the
//! `kubernetes` Service).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::json;
use tokio::sync::watch;
use tracing::info;

use crate::apiserver::{ApiServer, ServerSettings};
use crate::cluster::{Cluster, WriteOptions};
use crate::controllers;
use crate::defaults::KUBERNETES_SERVICE_IP;
use crate::pki::{self, ServingIdentity, StateFiles};

/// How to start kubesim.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the kubeconfig, CA, pid file and log go.
    pub state_dir: PathBuf,
    /// Port on 127.0.0.1; 0 picks a free one.
    pub port: u16,
    pub bookmark_interval: Duration,
    /// What runs pods (the simulated kubelet until the process runner).
    pub runtime: Arc<dyn crate::kubelet::PodRuntime>,
}

impl Config {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            state_dir: state_dir.to_path_buf(),
            port: 0,
            bookmark_interval: Duration::from_secs(5),
            runtime: Arc::new(crate::kubelet::Simulated),
        }
    }
}

/// A running kubesim.
#[derive(Debug)]
pub struct Running {
    pub address: SocketAddr,
    pub kubeconfig: PathBuf,
    pub admin_token: String,
    pub cluster: Arc<Cluster>,
    shutdown: watch::Sender<bool>,
}

impl Running {
    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("https://{}", self.address)
    }

    /// Asks every task to stop.
    pub fn stop(&self) {
        self.shutdown.send_replace(true);
    }

    /// Resolves once a stop was requested (signal or `/kubesim/shutdown`).
    pub async fn stopped(&self) {
        let mut rx = self.shutdown.subscribe();
        crate::shutdown::requested(&mut rx).await;
    }
}

fn seed(cluster: &Cluster, api_port: u16) -> anyhow::Result<()> {
    let opts = WriteOptions {
        field_manager: Some("kubesim".into()),
        ..Default::default()
    };
    let get = |g: &str, p: &str| {
        cluster
            .catalog
            .get(g, "v1", p)
            .with_context(|| format!("{p} not served"))
    };
    let ns = get("", "namespaces")?;
    for name in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        cluster.create(&ns, None, json!({"metadata": {"name": name}}), &opts)?;
    }
    let node = get("", "nodes")?;
    let now = crate::clock::now_rfc3339();
    let node_obj = json!({
        "metadata": {"name": "kubesim", "labels": {"kubernetes.io/hostname": "kubesim", "kubernetes.io/os": "linux", "node-role.kubernetes.io/control-plane": ""}},
        "spec": {"podCIDR": "10.244.0.0/16", "podCIDRs": ["10.244.0.0/16"]},
    });
    let created = cluster.create(&node, None, node_obj, &opts)?;
    let mut with_status = created.object;
    with_status["status"] = json!({
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "kubesim runs pods as processes", "lastHeartbeatTime": now, "lastTransitionTime": now}],
        "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": "kubesim"}],
        "nodeInfo": {"kubeletVersion": crate::discovery::KUBE_VERSION, "operatingSystem": "linux", "architecture": "amd64", "containerRuntimeVersion": "kubesim://0.1", "kernelVersion": "", "osImage": "kubesim", "kubeProxyVersion": "", "machineID": "", "systemUUID": "", "bootID": ""},
        "capacity": {"cpu": "2", "memory": "24Gi", "pods": "110"},
        "allocatable": {"cpu": "2", "memory": "24Gi", "pods": "110"},
    });
    cluster.update(&node, None, "kubesim", "status", with_status, &opts)?;
    let svc = get("", "services")?;
    cluster.create(&svc, Some("default"), json!({
        "metadata": {"name": "kubernetes", "labels": {"component": "apiserver", "provider": "kubernetes"}},
        "spec": {"clusterIP": KUBERNETES_SERVICE_IP, "ports": [{"name": "https", "port": 443, "targetPort": 6443, "protocol": "TCP"}]},
    }), &opts)?;
    // The API server behind the `kubernetes` Service, as clients expect.
    let ep = get("", "endpoints")?;
    cluster.create(
        &ep,
        Some("default"),
        json!({
            "metadata": {"name": "kubernetes", "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
            "subsets": [{"addresses": [{"ip": "127.0.0.1"}], "ports": [{"name": "https", "port": api_port, "protocol": "TCP"}]}],
        }),
        &opts,
    )?;
    let slices = cluster
        .catalog
        .get("discovery.k8s.io", "v1", "endpointslices")
        .context("endpointslices not served")?;
    cluster.create(
        &slices,
        Some("default"),
        json!({
            "metadata": {"name": "kubernetes", "labels": {"kubernetes.io/service-name": "kubernetes"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": true}}],
            "ports": [{"name": "https", "port": api_port, "protocol": "TCP"}],
        }),
        &opts,
    )?;
    Ok(())
}

/// Starts kubesim on the current Tokio runtime and writes the kubeconfig.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    let files = StateFiles::new(&config.state_dir);
    std::fs::create_dir_all(&files.dir).with_context(|| format!("creating state dir {}", files.dir.display()))?;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", config.port))
        .await
        .with_context(|| {
            format!(
                "binding 127.0.0.1:{} (is another kubesim running? try `kubesim down` or another --port)",
                config.port
            )
        })?;
    let address = listener.local_addr()?;
    let identity = ServingIdentity::generate()?;
    let tls = identity.server_config()?;
    let admin_token = pki::random_token();
    let cluster = Cluster::new();
    // Published as kube-root-ca.crt in every namespace (seed creates them).
    let _ = cluster.root_ca.set(identity.ca_pem.clone());
    seed(&cluster, address.port())?;
    let (shutdown, _) = watch::channel(false);
    let server = Arc::new(ApiServer {
        cluster: cluster.clone(),
        settings: ServerSettings {
            admin_token: admin_token.clone(),
            bookmark_interval: config.bookmark_interval,
            address: address.to_string(),
        },
        shutdown: shutdown.clone(),
        runtime: config.runtime.clone(),
    });
    tokio::spawn(server.serve(listener, tls));
    tokio::spawn(controllers::run(
        cluster.clone(),
        config.runtime.clone(),
        shutdown.subscribe(),
    ));
    let kubeconfig = pki::write_kubeconfig(&files, &identity, &format!("https://{address}"), &admin_token)?;
    info!(%address, kubeconfig = %kubeconfig.display(), "kubesim is serving");
    Ok(Running {
        address,
        kubeconfig,
        admin_token,
        cluster,
        shutdown,
    })
}
