//! Starting and stopping one upstream cluster (see the module above for the
//! layout): the components as child processes in the node's namespace and
//! the instance's cgroup, each logging to `STATE/logs/<name>.log`; a Tokio
//! runtime for the API calls the start makes and the LoadBalancer
//! controller.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, ServiceAccount};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use tokio::sync::watch;
use tracing::info;

use super::config::{self, Addresses};
use super::images::{self, ImageSpec};
use super::instance::{self, Record};
use super::layout::Layout;
use super::pki::{self, PkiFiles, PkiSpec};
use super::prereqs::{self, Found};
use super::{CLUSTER_DOMAIN, KUBERNETES_IP, NODE_NAME, addons};
use crate::runner::images::{BinDirs, SUITE_PROXY_TAGS, TRELLIS_PROGRAMS, VARIANTS};

/// How to start a cluster.
#[derive(Debug, Clone)]
pub struct Options {
    /// Configuration, credentials, logs and the node's runtime state.
    pub state_dir: PathBuf,
    /// The upstream components (`e2e/upstream/build.sh`'s output).
    pub upstream_bin: PathBuf,
    /// Where the project's programs are (as for kubesim's image mapping).
    pub bin_dirs: BinDirs,
    /// Remove the whole state directory on stop (a test's temporary one);
    /// otherwise logs, credentials and configuration stay.
    pub ephemeral: bool,
}

impl Options {
    /// The defaults: components from [`prereqs::default_upstream_bin`],
    /// programs from kubesim's bin dirs.
    pub fn new(state_dir: &Path) -> Self {
        Self {
            state_dir: state_dir.to_path_buf(),
            upstream_bin: prereqs::default_upstream_bin(),
            bin_dirs: BinDirs::resolve(None),
            ephemeral: false,
        }
    }
}

/// One running component.
#[derive(Debug)]
struct Component {
    name: &'static str,
    child: Child,
}

/// A running upstream cluster; stopped (and everything it made removed) on
/// [`Cluster::stop`] or drop.
pub struct Cluster {
    record: Record,
    layout: Layout,
    /// Where the programs of kubesim's image mapping are ([`Cluster::import_mapped`]).
    bin_dirs: BinDirs,
    kubeconfig: PathBuf,
    components: Vec<Component>,
    cgroup_procs: PathBuf,
    rt: Option<tokio::runtime::Runtime>,
    client: Option<kube::Client>,
    stop: watch::Sender<bool>,
    stopped: bool,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("record", &self.record)
            .field("components", &self.components)
            .field("stopped", &self.stopped)
            .finish_non_exhaustive()
    }
}

/// The tag the project's images get: the workspace version, which the
/// install manifests name.
pub const PROJECT_IMAGE_TAG: &str = env!("CARGO_PKG_VERSION");

/// A second tag the project's images get: the "older release" the CLI's
/// upgrade test installs and then upgrades (`cli/tests/lifecycle.rs`). It is
/// the same program: what an upgrade changes in the cluster is the image
/// name. kubesim ignores tags; on a real cluster, push the images under this
/// tag too (`e2e/README.md`).
pub const OLDER_RELEASE_TAG: &str = "0.0.9";

/// How long the node and its add-ons get to become ready (a loaded 2-core
/// machine).
const READY: Duration = Duration::from_secs(180);

impl Cluster {
    /// Starts a cluster and waits until it is usable: the node Ready,
    /// CoreDNS available, the `default` ServiceAccount created.
    pub fn start(opts: &Options) -> anyhow::Result<Self> {
        let found = prereqs::check(&opts.upstream_bin, &opts.bin_dirs)?;
        let swept = instance::sweep_dead();
        if !swept.is_empty() {
            info!(?swept, "removed upstream clusters whose owner died");
        }
        std::fs::create_dir_all(&opts.state_dir).with_context(|| format!("creating {}", opts.state_dir.display()))?;
        let state_dir = opts
            .state_dir
            .canonicalize()
            .with_context(|| format!("resolving {}", opts.state_dir.display()))?;
        let record = instance::register(&state_dir, opts.ephemeral)?;
        let layout = record.layout();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("upstream")
            .enable_all()
            .build()?;
        let (stop, _) = watch::channel(false);
        let mut cluster = Cluster {
            kubeconfig: PkiFiles::new(&state_dir).kubeconfig("admin"),
            record,
            layout,
            bin_dirs: opts.bin_dirs.clone(),
            components: Vec::new(),
            cgroup_procs: PathBuf::new(),
            rt: Some(rt),
            client: None,
            stop,
            stopped: false,
        };
        let started = Instant::now();
        // On failure, dropping `cluster` removes everything made so far.
        cluster
            .boot(opts, &found)
            .map_err(|e| e.context(format!("starting the upstream cluster\n{}", cluster.log_tails(25))))?;
        info!(elapsed = ?started.elapsed(), kubeconfig = %cluster.kubeconfig.display(), "upstream cluster is ready");
        Ok(cluster)
    }

    /// The admin kubeconfig (user `kubernetes-admin` in `system:masters`).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The state directory.
    pub fn state_dir(&self) -> &Path {
        &self.record.state_dir
    }

    /// The instance's addresses.
    pub fn addresses(&self) -> Addresses {
        self.record.addresses()
    }

    /// The last `lines` lines of every component's log, for a failure report.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for name in [
            "etcd",
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
            "containerd",
            "kubelet",
            "kube-proxy",
        ] {
            let Ok(text) = std::fs::read_to_string(self.layout.log(name)) else {
                continue;
            };
            let all: Vec<&str> = text.lines().collect();
            out.push_str(&format!(
                "--- {} (last {lines} lines)\n",
                self.layout.log(name).display()
            ));
            for l in &all[all.len().saturating_sub(lines)..] {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    fn boot(&mut self, opts: &Options, found: &Found) -> anyhow::Result<()> {
        let forward_dns = self.prepare(found)?;
        let bin = |name: &str| opts.upstream_bin.join(name);
        self.start_control_plane(&bin)?;
        self.start_node(&bin, opts, found)?;
        for object in addons::coredns_objects(forward_dns) {
            self.apply(object)?;
        }
        let addr = self.record.addresses();
        let pool = addons::Pool::new(addr.lb_first, addr.lb_last);
        let (client, stop) = (self.client()?, self.stop.subscribe());
        self.runtime()?.spawn(addons::load_balancers(client, pool, stop));
        self.wait_usable()
    }

    /// Directories, cgroups, the node's network, credentials and
    /// configuration files; returns whether the node has resolvers for
    /// CoreDNS to forward to.
    fn prepare(&mut self, found: &Found) -> anyhow::Result<bool> {
        let layout = self.layout.clone();
        let addr = self.record.addresses();
        for dir in [
            layout.logs_dir(),
            layout.config_dir(),
            layout.images_dir(),
            layout.cni_conf_dir(),
            layout.cni_ipam_dir(),
            layout.kubelet_root(),
            layout.pod_logs_dir(),
            layout.static_pods_dir(),
        ] {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        self.cgroup_procs = instance::create_cgroups(&layout).map_err(|e| anyhow!("creating the cgroups: {e}"))?;
        instance::create_network(&self.record).map_err(|e| anyhow!("creating the node's network: {e}"))?;
        let server = config::server_url(&addr);
        pki::generate(
            &PkiFiles::new(&layout.state_dir),
            &PkiSpec {
                server: &server,
                node_name: NODE_NAME,
                node_ip: addr.node_ip,
                kubernetes_ip: KUBERNETES_IP,
                domain: CLUSTER_DOMAIN,
            },
        )?;
        let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        let resolv = config::node_resolv_conf(&host_resolv);
        for (path, text) in [
            (
                layout.containerd_config(),
                config::containerd_config(&layout, &found.cni_bin_dir, !config::may_lower_oom_scores()),
            ),
            (
                layout.cni_conf_dir().join("10-trellis-upstream.conflist"),
                config::cni_conflist(&layout),
            ),
            (layout.kubelet_config(), config::kubelet_config(&layout, &addr)),
            (layout.kube_proxy_config(), config::kube_proxy_config(&layout)),
            (layout.resolv_conf(), resolv.clone()),
        ] {
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(!resolv.is_empty())
    }

    /// etcd and the API server (waiting until it is ready), the
    /// controller-manager and the scheduler.
    fn start_control_plane(&mut self, bin: &dyn Fn(&str) -> PathBuf) -> anyhow::Result<()> {
        let layout = self.layout.clone();
        let t = Instant::now();
        self.spawn("etcd", &bin("etcd"), &config::etcd_args(&layout))?;
        let netns = instance::netns_path(&self.record);
        self.wait("etcd to accept connections", Duration::from_secs(30), |_| {
            let netns = netns.clone();
            Ok(crate::network::netns::run_in(&netns, || {
                std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], 2379).into(), Duration::from_millis(500))
            })
            .ok()
            .map(|_| ()))
        })?;
        self.spawn(
            "kube-apiserver",
            &bin("kube-apiserver"),
            &config::apiserver_args(&layout, &self.record.addresses()),
        )?;
        self.connect()?;
        self.wait("the API server to be ready (/readyz)", Duration::from_secs(120), |c| {
            let client = c.client()?;
            let request = http::Request::get("/readyz").body(Vec::new())?;
            Ok(c.block_on(client.request_text(request))
                .ok()
                .filter(|r| r.trim() == "ok")
                .map(|_| ()))
        })?;
        info!(elapsed = ?t.elapsed(), "control plane: etcd and the API server are ready");
        self.spawn(
            "kube-controller-manager",
            &bin("kube-controller-manager"),
            &config::controller_manager_args(&layout),
        )?;
        self.spawn(
            "kube-scheduler",
            &bin("kube-scheduler"),
            &config::scheduler_args(&layout),
        )
    }

    /// containerd (waiting until it serves), the images, the kubelet and
    /// kube-proxy.
    fn start_node(&mut self, bin: &dyn Fn(&str) -> PathBuf, opts: &Options, found: &Found) -> anyhow::Result<()> {
        let layout = self.layout.clone();
        let containerd = images::which("containerd").context("containerd is not installed")?;
        self.spawn(
            "containerd",
            &containerd,
            &["--config".to_string(), layout.containerd_config().display().to_string()],
        )?;
        let socket = layout.containerd_socket();
        let ctr = found.ctr.clone();
        self.wait("containerd to serve", Duration::from_secs(30), |_| {
            let ok = socket.exists()
                && Command::new(&ctr)
                    .arg("--address")
                    .arg(&socket)
                    .arg("version")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
            Ok(ok.then_some(()))
        })?;
        let t = Instant::now();
        self.import_images(opts, found)?;
        info!(elapsed = ?t.elapsed(), "images built and imported");
        self.spawn(
            "kubelet",
            &bin("kubelet"),
            &config::kubelet_args(&layout, &self.record.addresses()),
        )?;
        self.spawn(
            "kube-proxy",
            &bin("kube-proxy"),
            &[format!("--config={}", layout.kube_proxy_config().display())],
        )
    }

    /// Waits until pods can run and resolve names: the node Ready, the
    /// `default` ServiceAccount created, CoreDNS available.
    fn wait_usable(&mut self) -> anyhow::Result<()> {
        self.wait(&format!("node {NODE_NAME} to be Ready"), READY, |c| {
            let nodes: Api<Node> = Api::all(c.client()?);
            let node = c.block_on(nodes.get_opt(NODE_NAME))?;
            let ready = node
                .and_then(|n| n.status)
                .and_then(|s| s.conditions)
                .into_iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            Ok(ready.then_some(()))
        })?;
        self.wait("the default ServiceAccount", READY, |c| {
            let accounts: Api<ServiceAccount> = Api::namespaced(c.client()?, "default");
            Ok(c.block_on(accounts.get_opt("default"))?.map(|_| ()))
        })?;
        self.wait("CoreDNS to be available", READY, |c| {
            let deployments: Api<Deployment> = Api::namespaced(c.client()?, "kube-system");
            let available = c
                .block_on(deployments.get_opt("coredns"))?
                .and_then(|d| d.status)
                .and_then(|s| s.available_replicas)
                .unwrap_or(0);
            Ok((available > 0).then_some(()))
        })
    }

    /// Builds every image and imports it into the node's containerd.
    fn import_images(&self, opts: &Options, found: &Found) -> anyhow::Result<()> {
        let mut specs = Vec::new();
        let programs = TRELLIS_PROGRAMS
            .iter()
            .map(|(repo, program)| (*repo, *program, &[][..]))
            .chain(VARIANTS);
        for (repo, program, env) in programs {
            let path = found
                .programs
                .iter()
                .find(|(p, _)| p == program)
                .map(|(_, path)| path.clone())
                .with_context(|| format!("{program} was not found"))?;
            let mut spec = if program == "trellis-proxy" {
                // The proxy's releases the suite rolls to are this same image under more tags.
                let names = [PROJECT_IMAGE_TAG, OLDER_RELEASE_TAG]
                    .into_iter()
                    .chain(SUITE_PROXY_TAGS)
                    .map(|tag| format!("{repo}:{tag}"))
                    .collect();
                images::proxy_image(names, &path)?
            } else {
                let names = vec![
                    format!("{repo}:{PROJECT_IMAGE_TAG}"),
                    format!("{repo}:{OLDER_RELEASE_TAG}"),
                ];
                ImageSpec::program(names, &path, &format!("/usr/local/bin/{program}"))
            };
            spec.env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            specs.push(spec);
        }
        specs.push(ImageSpec::program(
            vec![images::PAUSE_IMAGE.into()],
            &opts.upstream_bin.join("pause"),
            "/pause",
        ));
        specs.push(ImageSpec::program(
            vec![images::COREDNS_IMAGE.into()],
            &opts.upstream_bin.join("coredns"),
            "/coredns",
        ));
        specs.push(images::tools_image());
        images::build_and_import(
            specs,
            &self.layout.images_dir(),
            &found.ctr,
            &self.layout.containerd_socket(),
        )
    }

    /// Builds the images of kubesim's image mapping that `names` stand for
    /// ([`images::mapped`]: e.g. Prometheus and Jaeger, as
    /// `e2e/observability/build.sh` builds them) and imports them into the
    /// node under those names, where the kubelet finds them as it finds the
    /// project's (`imagePullPolicy: IfNotPresent`, the default for a tag
    /// other than `latest`). What a user does by pushing images to a
    /// registry the cluster pulls from; the node has none.
    pub fn import_mapped(&self, names: &[&str]) -> anyhow::Result<()> {
        let specs = names
            .iter()
            .map(|name| images::mapped(name, &self.bin_dirs))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let ctr = images::which("ctr").context("ctr is not installed (apt-get install containerd)")?;
        images::build_and_import(specs, &self.layout.images_dir(), &ctr, &self.layout.containerd_socket())
    }

    /// Starts `program` in the node's namespace and the instance's cgroup,
    /// its output appended to its log.
    fn spawn(&mut self, name: &'static str, program: &Path, args: &[String]) -> anyhow::Result<()> {
        use std::os::unix::process::CommandExt as _;
        let log_path = self.layout.log(name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let path = std::env::var("PATH").unwrap_or_default();
        let child = Command::new("sh")
            // Join the cgroup, then become (nsenter execs) the component in
            // the node's network namespace: the pid stays the same.
            .arg("-c")
            .arg(r#"echo $$ > "$0" || exit 125; exec "$@""#)
            .arg(&self.cgroup_procs)
            .arg("nsenter")
            .arg(format!("--net={}", instance::netns_path(&self.record).display()))
            .arg("--")
            .arg(program)
            .args(args)
            .env(
                "PATH",
                format!("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:{path}"),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        info!(component = name, pid = child.id(), "started");
        self.components.push(Component { name, child });
        Ok(())
    }

    /// Polls `f` every 250 ms until it returns `Some`; fails after `timeout`,
    /// or as soon as a component exits, naming it.
    fn wait<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut(&Self) -> anyhow::Result<Option<T>>,
    ) -> anyhow::Result<T> {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        loop {
            for c in &mut self.components {
                if let Some(status) = c.child.try_wait()? {
                    bail!(
                        "{} exited ({status}) while waiting for {what}; see {}",
                        c.name,
                        self.layout.log(c.name).display()
                    );
                }
            }
            match f(self) {
                Ok(Some(v)) => return Ok(v),
                Ok(None) => {}
                Err(e) => last = format!(" (last error: {e:#})"),
            }
            if Instant::now() > deadline {
                bail!("timed out after {timeout:?} waiting for {what}{last}");
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn runtime(&self) -> anyhow::Result<&tokio::runtime::Runtime> {
        self.rt.as_ref().context("the cluster is stopped")
    }

    fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        match &self.rt {
            Some(rt) => rt.block_on(f),
            None => futures::executor::block_on(f),
        }
    }

    fn client(&self) -> anyhow::Result<kube::Client> {
        self.client.clone().context("no API client yet")
    }

    /// A kube-rs client with the admin credentials.
    fn connect(&mut self) -> anyhow::Result<()> {
        let kubeconfig = kube::config::Kubeconfig::read_from(&self.kubeconfig)?;
        let client = self.runtime()?.block_on(async {
            let config =
                kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default()).await?;
            anyhow::Ok(kube::Client::try_from(config)?)
        })?;
        self.client = Some(client);
        Ok(())
    }

    /// Server-side applies one object (field manager `trellis-upstream`).
    fn apply(&self, object: serde_json::Value) -> anyhow::Result<()> {
        let api_version = object["apiVersion"].as_str().unwrap_or_default();
        let kind = object["kind"].as_str().unwrap_or_default().to_string();
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let resource = ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(group, version, &kind),
            &format!("{}s", kind.to_lowercase()),
        );
        let name = object["metadata"]["name"].as_str().unwrap_or_default().to_string();
        let client = self.client()?;
        let api: Api<DynamicObject> = match object["metadata"]["namespace"].as_str() {
            Some(ns) => Api::namespaced_with(client, ns, &resource),
            None => Api::all_with(client, &resource),
        };
        let params = PatchParams::apply("trellis-upstream").force();
        self.block_on(api.patch(&name, &params, &Patch::Apply(&object)))
            .with_context(|| format!("applying {kind} {name}"))?;
        Ok(())
    }

    /// Stops everything and removes what the instance made (logs stay).
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        self.stop.send_replace(true);
        self.client = None;
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(1));
        }
        instance::sweep(&self.record);
        for c in &mut self.components {
            let _ = c.child.kill();
            let _ = c.child.wait();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}
