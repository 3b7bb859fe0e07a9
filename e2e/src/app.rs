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
    /// What runs pods: [`crate::kubelet::Simulated`] (default) or
    /// [`crate::runner::ProcessRuntime`] ([`Config::with_processes`]).
    pub runtime: Arc<dyn crate::kubelet::PodRuntime>,
    /// Whether to set up the pod network (network namespaces, bridge,
    /// Service DNAT, DNS; needs root). Without it, process pods share
    /// kubesim's own network namespace.
    pub pod_network: bool,
    /// The Kubernetes version `/version` reports ([`crate::discovery::KUBE_VERSION`] by
    /// default): another one lets a test see what a client does with an older cluster. Only
    /// the number changes; kubesim serves the same API either way.
    pub kubernetes_version: String,
}

impl Config {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            state_dir: state_dir.to_path_buf(),
            port: 0,
            bookmark_interval: Duration::from_secs(5),
            runtime: Arc::new(crate::kubelet::Simulated),
            pod_network: false,
            kubernetes_version: crate::discovery::KUBE_VERSION.to_string(),
        }
    }

    /// Pods run as processes ([`crate::runner::ProcessRuntime`]) with the
    /// pod network.
    pub fn with_processes(state_dir: &Path, runner: crate::runner::RunnerConfig) -> Self {
        Self {
            runtime: Arc::new(crate::runner::ProcessRuntime::new(runner)),
            pod_network: true,
            ..Self::new(state_dir)
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
    /// The pod network, if kubesim set one up.
    pub network: Option<Arc<crate::network::PodNetwork>>,
    runtime: Arc<dyn crate::kubelet::PodRuntime>,
    shutdown: watch::Sender<bool>,
}

impl Running {
    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("https://{}", self.address)
    }

    /// Asks every task to stop, stops every pod process (blocking, a few
    /// seconds at most) and removes the pod network.
    pub fn stop(&self) {
        self.shutdown.send_replace(true);
        self.runtime.shutdown();
        if let Some(net) = &self.network {
            net.teardown();
        }
    }

    /// Resolves once a stop was requested (signal or `/kubesim/shutdown`).
    pub async fn stopped(&self) {
        let mut rx = self.shutdown.subscribe();
        crate::shutdown::requested(&mut rx).await;
    }
}

/// The objects every cluster has. With the pod network, the `kubernetes`
/// Service leads to the API server's listener in the node namespace
/// (10.244.0.1:6443) and `kube-system/kube-dns` (10.96.0.10, port 53 UDP
/// and TCP) to the cluster DNS; without it, to the loopback listener.
fn seed(cluster: &Cluster, api_port: u16, pod_network: bool) -> anyhow::Result<()> {
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
    let (api_ip, api_port) = if pod_network {
        (crate::network::NODE_IP.to_string(), crate::network::NODE_API_PORT)
    } else {
        ("127.0.0.1".to_string(), api_port)
    };
    let ep = get("", "endpoints")?;
    cluster.create(
        &ep,
        Some("default"),
        json!({
            "metadata": {"name": "kubernetes", "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
            "subsets": [{"addresses": [{"ip": api_ip}], "ports": [{"name": "https", "port": api_port, "protocol": "TCP"}]}],
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
            "endpoints": [{"addresses": [api_ip], "conditions": {"ready": true}}],
            "ports": [{"name": "https", "port": api_port, "protocol": "TCP"}],
        }),
        &opts,
    )?;
    if pod_network {
        let dns = crate::network::DNS_IP.to_string();
        let ports =
            json!([{"name": "dns", "port": 53, "protocol": "UDP"}, {"name": "dns-tcp", "port": 53, "protocol": "TCP"}]);
        cluster.create(
            &svc,
            Some("kube-system"),
            json!({
                "metadata": {"name": "kube-dns", "labels": {"k8s-app": "kube-dns", "kubernetes.io/name": "CoreDNS"}},
                "spec": {"clusterIP": dns, "ports": ports},
            }),
            &opts,
        )?;
        cluster.create(
            &ep,
            Some("kube-system"),
            json!({
                "metadata": {"name": "kube-dns", "labels": {"k8s-app": "kube-dns"}},
                "subsets": [{"addresses": [{"ip": dns}], "ports": ports}],
            }),
            &opts,
        )?;
        cluster.create(
            &slices,
            Some("kube-system"),
            json!({
                "metadata": {"name": "kube-dns", "labels": {"kubernetes.io/service-name": "kube-dns"}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": [dns], "conditions": {"ready": true}}],
                "ports": ports,
            }),
            &opts,
        )?;
    }
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
    seed(&cluster, address.port(), config.pod_network)?;
    let network = if config.pod_network {
        let net = crate::network::PodNetwork::setup(&config.state_dir)?;
        let _ = cluster.node_netns.set(net.node_netns_path());
        net.start(cluster.clone()).map_err(anyhow::Error::msg)?;
        Some(net)
    } else {
        None
    };
    config.runtime.bind(&crate::kubelet::RuntimeContext {
        cluster: cluster.clone(),
        api_address: address,
        network: network.clone(),
        state_dir: config.state_dir.clone(),
    });
    let (shutdown, _) = watch::channel(false);
    let server = Arc::new(ApiServer {
        cluster: cluster.clone(),
        settings: ServerSettings {
            admin_token: admin_token.clone(),
            bookmark_interval: config.bookmark_interval,
            address: address.to_string(),
            kubernetes_version: config.kubernetes_version.clone(),
        },
        shutdown: shutdown.clone(),
        runtime: config.runtime.clone(),
    });
    if let Some(net) = &network {
        // The same API server for pods: 10.244.0.1:6443 in the node
        // namespace, behind the `kubernetes` Service (10.96.0.1:443).
        let addr = SocketAddr::from((crate::network::NODE_IP, crate::network::NODE_API_PORT));
        let l = crate::network::netns::tcp_listener(&net.node_netns_path(), addr)
            .with_context(|| format!("binding {addr} in {}", net.node_netns()))?;
        tokio::spawn(server.clone().serve(tokio::net::TcpListener::from_std(l)?, tls.clone()));
    }
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
        network,
        runtime: config.runtime.clone(),
        shutdown,
    })
}
