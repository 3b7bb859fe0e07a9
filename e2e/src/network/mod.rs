//! The pod network of kubesim (issue 5, section 3): network namespaces, a
//! bridge, kube-proxy style DNAT rules, cluster DNS and LoadBalancer
//! listeners, all inside namespaces this kubesim instance created.
//!
//! # Layout (one kubesim instance, id `ID` = 8 hex digits)
//! - Node namespace `ksim-ID-node` (like a kind node container): bridge
//!   [`BRIDGE`] with [`NODE_IP`]/16, the cluster DNS address [`DNS_IP`] on
//!   `lo`, `ip_forward` and `bridge-nf-call-iptables` on, the Service rules
//!   (chain `KUBESIM-SERVICES` in `nat`, see [`proxy`]), the DNS server
//!   ([`dns`]) and a second API server listener on [`NODE_IP`]:[`NODE_API_PORT`].
//! - Per pod: namespace `ksim-ID-<12 chars of the pod uid>` with `lo` up and
//!   `eth0` (pod IP/16, default route via [`NODE_IP`]), the other end of the
//!   veth pair on the bridge; `/etc/netns/<name>/resolv.conf` with the
//!   cluster DNS (so `ip netns exec <name> …` sees it as `/etc/resolv.conf`).
//! - LoadBalancer Services: listeners on `127.X.Y.1:<port>` in the host
//!   namespace (X, Y random per instance), proxied to the ClusterIP from a
//!   socket in the node namespace ([`lb`]).
//!
//! # Guarantees
//! - The host namespace's interfaces, routes and iptables are never changed:
//!   parallel kubesim instances cannot collide.
//! - [`PodNetwork::teardown`] (also run on drop) removes every namespace and
//!   file the instance created. An instance that died is cleaned up by the
//!   next [`PodNetwork::setup`] or [`cleanup_leftovers`] (`kubesim up`/`down`):
//!   each instance records its pid in `/run/kubesim/ID.pid` before creating
//!   anything, and namespaces `ksim-ID-*` whose pid is dead are deleted.
//! - Everything needs root (`CAP_NET_ADMIN` and `CAP_SYS_ADMIN`); without it
//!   [`PodNetwork::setup`] fails with [`NetworkError::NotRoot`] and kubesim
//!   runs with the simulated runtime as before.

pub mod dns;
pub mod lb;
pub mod netns;
pub mod proxy;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::cluster::Cluster;

/// The bridge in the node namespace.
pub const BRIDGE: &str = "ksim0";
/// The node's address on the bridge: pods' default gateway.
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
/// The pod range's prefix length (10.244.0.0/16).
pub const POD_PREFIX_LEN: u8 = 16;
/// The cluster DNS address (the `kube-dns` Service in `kube-system`).
pub const DNS_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// The `kubernetes` Service address.
pub const KUBERNETES_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);
/// Port of the API server listener inside the node namespace.
pub const NODE_API_PORT: u16 = 6443;
/// The Service range.
pub const SERVICE_CIDR: &str = "10.96.0.0/16";
/// The cluster domain.
pub const CLUSTER_DOMAIN: &str = "cluster.local";
/// Where instances record themselves (`ID.pid`: `PID STARTTIME LBIP`).
pub const REGISTRY_DIR: &str = "/run/kubesim";
/// Prefix of every namespace kubesim creates.
pub const NETNS_PREFIX: &str = "ksim-";

/// Why the network could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error(
        "the kubesim pod network needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN): run as root or use the simulated runtime"
    )]
    NotRoot,
    #[error("setting up the pod network: {0}")]
    Setup(String),
}

/// The network namespace of one pod, as [`PodNetwork::attach`] made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodNetns {
    /// The name for `ip netns exec NAME …` / `ip -n NAME …`.
    pub name: String,
    /// `/run/netns/NAME`: what `setns(2)` / `nsenter --net=PATH` take.
    pub path: PathBuf,
    /// `/etc/netns/NAME/resolv.conf`: `nameserver 10.96.0.10`, the pod's
    /// search path and `ndots:5`. `ip netns exec` binds it over
    /// `/etc/resolv.conf`; a runner that does not use `ip netns exec` should
    /// bind-mount it itself.
    pub resolv_conf: PathBuf,
    /// The pod's address on `eth0`.
    pub ip: Ipv4Addr,
}

/// The pod network of one kubesim instance; share it as `Arc<PodNetwork>`.
///
/// Lifecycle: [`PodNetwork::setup`] (namespaces, bridge, base rules) →
/// [`PodNetwork::start`] (Service rules, DNS, LoadBalancers; needs a Tokio
/// runtime and the cluster) → [`PodNetwork::attach`]/[`PodNetwork::detach`]
/// per pod, from any thread → [`PodNetwork::teardown`] (idempotent; also on
/// drop).
#[derive(Debug)]
pub struct PodNetwork {
    id: String,
    node_ns: String,
    state_dir: PathBuf,
    lb_ip: Ipv4Addr,
    /// pod uid → its namespace.
    pods: Mutex<BTreeMap<String, PodNetns>>,
    torn_down: AtomicBool,
    /// Masquerade all Service traffic (no br_netfilter on this kernel).
    masquerade_all: AtomicBool,
    stop: watch::Sender<bool>,
}

/// Whether this process has the capabilities the network needs.
fn has_caps() -> bool {
    // CAP_NET_ADMIN = 12, CAP_SYS_ADMIN = 21 in the effective set.
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << 12) != 0 && caps & (1 << 21) != 0)
}

/// Whether the pod network can be set up by this process (root or the
/// capabilities): what tests check before they skip.
pub fn available() -> bool {
    has_caps()
}

/// `PID STARTTIME` of this process, as recorded in the registry.
fn process_identity(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may hold spaces) start after ") ".
    let rest = stat.rsplit_once(") ")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); starttime is field 22.
    if fields.first() == Some(&"Z") {
        return None;
    }
    Some(format!("{pid} {}", fields.get(19)?))
}

fn registry_file(id: &str) -> PathBuf {
    Path::new(REGISTRY_DIR).join(format!("{id}.pid"))
}

/// Whether the instance `id` is alive: its recorded process still runs
/// (same pid and start time).
fn instance_alive(id: &str) -> bool {
    let Ok(recorded) = std::fs::read_to_string(registry_file(id)) else {
        return false;
    };
    let fields: Vec<&str> = recorded.split_whitespace().collect();
    let (Some(pid), Some(start)) = (fields.first(), fields.get(1)) else {
        return false;
    };
    pid.parse::<u32>()
        .ok()
        .and_then(process_identity)
        .is_some_and(|now| now == format!("{pid} {start}"))
}

/// The LoadBalancer addresses other instances recorded (third field of
/// their registry files).
fn load_balancer_ips_in_use() -> Vec<Ipv4Addr> {
    std::fs::read_dir(REGISTRY_DIR)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|r| r.split_whitespace().nth(2)?.parse().ok())
        .collect()
}

/// The instance id of a namespace name `ksim-ID-…`.
fn instance_of(netns: &str) -> Option<&str> {
    let rest = netns.strip_prefix(NETNS_PREFIX)?;
    let (id, _) = rest.split_once('-')?;
    (id.len() == 8 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
}

/// Removes what dead kubesim instances left behind: namespaces `ksim-ID-*`,
/// `/etc/netns/ksim-ID-*` and `/run/kubesim/ID.pid` of every instance whose
/// process is gone. Returns the namespaces removed. Live instances (this
/// process's included) are left alone.
pub fn cleanup_leftovers() -> Vec<String> {
    let mut removed = Vec::new();
    let mut names: Vec<String> = netns::list();
    names.extend(
        std::fs::read_dir(netns::ETC_NETNS_DIR)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok()),
    );
    let mut dead: BTreeMap<String, bool> = BTreeMap::new();
    // Pid files without namespaces (a crash between recording and creating).
    for e in std::fs::read_dir(REGISTRY_DIR).into_iter().flatten().flatten() {
        if let Some(id) = e.file_name().to_str().and_then(|n| n.strip_suffix(".pid")) {
            dead.entry(id.to_string()).or_insert_with(|| !instance_alive(id));
        }
    }
    names.sort();
    names.dedup();
    // Pods first, the node namespace last (so a half-cleaned instance is
    // still recognisable by its node namespace).
    names.sort_by_key(|n| n.ends_with("-node"));
    for name in names {
        let Some(id) = instance_of(&name) else { continue };
        let is_dead = *dead.entry(id.to_string()).or_insert_with(|| !instance_alive(id));
        if !is_dead {
            continue;
        }
        match netns::delete(&name) {
            Ok(()) => removed.push(name),
            Err(e) => warn!(netns = %name, error = %e, "removing a leftover namespace failed"),
        }
    }
    for (id, is_dead) in dead {
        if is_dead {
            let _ = std::fs::remove_file(registry_file(&id));
        }
    }
    if !removed.is_empty() {
        info!(namespaces = ?removed, "removed the pod network of kubesim instances that died");
    }
    removed
}

/// A 12-character name part from a pod uid (hex digits and letters only).
fn short_uid(pod_uid: &str) -> String {
    let clean: String = pod_uid
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .take(12)
        .collect();
    if clean.is_empty() { "pod".to_string() } else { clean }
}

fn random_bytes() -> [u8; 16] {
    *uuid::Uuid::new_v4().as_bytes()
}

impl PodNetwork {
    /// Creates the node namespace of a new instance: bridge, DNS address,
    /// sysctls and the base iptables rules. Cleans up after dead instances
    /// first. Records the instance in `/run/kubesim/ID.pid` and
    /// `STATE_DIR/network.json`.
    ///
    /// Does not need a Tokio runtime; [`PodNetwork::start`] does.
    pub fn setup(state_dir: &Path) -> Result<Arc<Self>, NetworkError> {
        if !has_caps() {
            return Err(NetworkError::NotRoot);
        }
        cleanup_leftovers();
        let r = random_bytes();
        let id = (0..8)
            .map(|_| {
                let r = random_bytes();
                format!("{:02x}{:02x}{:02x}{:02x}", r[0], r[1], r[2], r[3])
            })
            .find(|id| !registry_file(id).exists() && !netns::exists(&format!("{NETNS_PREFIX}{id}-node")))
            .ok_or_else(|| NetworkError::Setup("no free instance id".into()))?;
        // 127.X.Y.1 with X, Y in 1..=254 (never 127.0.0.1), not one another
        // live instance recorded.
        let in_use = load_balancer_ips_in_use();
        let lb_ip = (0..32)
            .map(|_| {
                let r = random_bytes();
                Ipv4Addr::new(127, 1 + r[0] % 254, 1 + r[1] % 254, 1)
            })
            .find(|ip| !in_use.contains(ip))
            .unwrap_or(Ipv4Addr::new(127, 1 + r[4] % 254, 1 + r[5] % 254, 1));
        let node_ns = format!("{NETNS_PREFIX}{id}-node");
        let err = NetworkError::Setup;
        std::fs::create_dir_all(REGISTRY_DIR).map_err(|e| err(format!("creating {REGISTRY_DIR}: {e}")))?;
        let me = process_identity(std::process::id()).ok_or_else(|| err("reading /proc/self/stat".into()))?;
        std::fs::write(registry_file(&id), format!("{me} {lb_ip}\n"))
            .map_err(|e| err(format!("writing {}: {e}", registry_file(&id).display())))?;
        let (stop, _) = watch::channel(false);
        let net = Arc::new(Self {
            id,
            node_ns,
            state_dir: state_dir.to_path_buf(),
            lb_ip,
            pods: Mutex::new(BTreeMap::new()),
            torn_down: AtomicBool::new(false),
            masquerade_all: AtomicBool::new(false),
            stop,
        });
        // From here on, drop (teardown) undoes a partial setup.
        net.create_node().map_err(err)?;
        let record = serde_json::json!({
            "id": net.id, "nodeNetns": net.node_ns, "loadBalancerIP": net.lb_ip.to_string(),
            "pid": std::process::id(),
        });
        let _ = std::fs::create_dir_all(state_dir);
        let _ = std::fs::write(state_dir.join("network.json"), format!("{record:#}\n"));
        info!(id = %net.id, node = %net.node_ns, lb = %net.lb_ip, "pod network is up");
        Ok(net)
    }

    fn create_node(&self) -> Result<(), String> {
        let ns = self.node_ns.as_str();
        netns::run("ip", &["netns", "add", ns])?;
        let node_cidr = format!("{NODE_IP}/{POD_PREFIX_LEN}");
        let dns = format!("{DNS_IP}/32");
        netns::ip_in(ns, &["link", "set", "lo", "up"])?;
        netns::ip_in(ns, &["addr", "add", &dns, "dev", "lo"])?;
        netns::ip_in(ns, &["link", "add", BRIDGE, "type", "bridge"])?;
        netns::ip_in(ns, &["addr", "add", &node_cidr, "dev", BRIDGE])?;
        netns::ip_in(ns, &["link", "set", BRIDGE, "up"])?;
        // ClusterIPs are routed towards the pods, so sockets in the node
        // namespace (LoadBalancer proxying) can reach them; DNAT rewrites.
        netns::ip_in(ns, &["route", "add", SERVICE_CIDR, "dev", BRIDGE])?;
        netns::exec_in(ns, "sysctl", &["-qw", "net.ipv4.ip_forward=1"], None)?;
        // Why: a pod → ClusterIP → pod on the same bridge answers over the
        // bridge; without this its reply would skip the reverse NAT. Without
        // br_netfilter, all Service traffic is masqueraded instead (replies
        // then come back through the node), like kube-proxy's
        // --masquerade-all.
        let bridge_nf = || netns::exec_in(ns, "sysctl", &["-qw", "net.bridge.bridge-nf-call-iptables=1"], None);
        if bridge_nf().is_err() {
            let _ = netns::run("modprobe", &["br_netfilter"]);
            if let Err(e) = bridge_nf() {
                warn!(error = %e, "no br_netfilter: Service traffic is masqueraded (pods see the node as the client)");
                self.masquerade_all.store(true, Ordering::SeqCst);
            }
        }
        // Services without endpoints are refused with ICMP; unthrottled, so
        // every connection attempt is refused at once.
        netns::exec_in(ns, "sysctl", &["-qw", "net.ipv4.icmp_ratelimit=0"], None)?;
        proxy::apply(ns, &proxy::render(&[], self.masquerade_all()))?;
        Ok(())
    }

    /// Whether all Service traffic is masqueraded (the kernel has no
    /// br_netfilter; pods then see connections through Services come from
    /// 10.244.0.1).
    pub fn masquerade_all(&self) -> bool {
        self.masquerade_all.load(Ordering::SeqCst)
    }

    /// This instance's id (8 hex digits; namespaces are `ksim-ID-*`).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The node namespace's name (`ksim-ID-node`).
    pub fn node_netns(&self) -> &str {
        &self.node_ns
    }

    /// `/run/netns/ksim-ID-node`.
    pub fn node_netns_path(&self) -> PathBuf {
        netns::netns_path(&self.node_ns)
    }

    /// The host loopback address LoadBalancer Services listen on.
    pub fn load_balancer_ip(&self) -> Ipv4Addr {
        self.lb_ip
    }

    /// The state directory given to [`PodNetwork::setup`].
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// What pods get as `KUBERNETES_SERVICE_HOST`/`KUBERNETES_SERVICE_PORT`:
    /// the `kubernetes` Service, 10.96.0.1:443 (DNAT to the API server's
    /// listener at 10.244.0.1:6443 in the node namespace).
    pub fn api_server_for_pods(&self) -> SocketAddr {
        SocketAddr::from((KUBERNETES_IP, 443))
    }

    /// The namespace name a pod uid gets.
    pub fn pod_netns_name(&self, pod_uid: &str) -> String {
        format!("{NETNS_PREFIX}{}-{}", self.id, short_uid(pod_uid))
    }

    /// Gives the pod `pod_uid` (in Kubernetes namespace `namespace`) its
    /// network namespace with address `ip` (from 10.244.0.0/16, not .0.0 or
    /// .0.1). Idempotent per uid and ip: attaching an attached pod returns
    /// the same namespace; with another ip it is recreated.
    ///
    /// Blocking (runs `ip`, ~10 ms); callable from any thread.
    pub fn attach(&self, pod_uid: &str, namespace: &str, ip: Ipv4Addr) -> Result<PodNetns, String> {
        if self.torn_down.load(Ordering::SeqCst) {
            return Err("the pod network is torn down".into());
        }
        let octets = ip.octets();
        if octets[0..2] != [10, 244] || ip == NODE_IP || octets[2..4] == [0, 0] {
            return Err(format!("{ip} is not a pod address (10.244.0.0/16, not .0.0 or .0.1)"));
        }
        let name = self.pod_netns_name(pod_uid);
        if let Some(existing) = self.lock_pods().get(pod_uid).cloned() {
            if existing.ip == ip && netns::exists(&existing.name) {
                return Ok(existing);
            }
            self.detach(pod_uid);
        }
        let pod = PodNetns {
            path: netns::netns_path(&name),
            resolv_conf: Path::new(netns::ETC_NETNS_DIR).join(&name).join("resolv.conf"),
            name: name.clone(),
            ip,
        };
        // Leftover of an earlier attempt with the same name.
        let _ = netns::delete(&name);
        if let Err(e) = self.create_pod(&pod, namespace) {
            let _ = netns::delete(&name);
            return Err(format!("attaching pod {pod_uid} ({ip}): {e}"));
        }
        self.lock_pods().insert(pod_uid.to_string(), pod.clone());
        debug!(pod = %pod_uid, netns = %name, %ip, "pod attached");
        Ok(pod)
    }

    fn create_pod(&self, pod: &PodNetns, namespace: &str) -> Result<(), String> {
        let name = pod.name.as_str();
        // Interface names have 15 bytes at most; unique within the node.
        let host_if = format!("v{}", &name[name.len().saturating_sub(12)..]);
        netns::run("ip", &["netns", "add", name])?;
        netns::ip_in(
            &self.node_ns,
            &[
                "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", name,
            ],
        )?;
        netns::ip_in(&self.node_ns, &["link", "set", &host_if, "master", BRIDGE])?;
        // Hairpin: a pod reaching itself through its Service.
        netns::ip_in(
            &self.node_ns,
            &["link", "set", &host_if, "type", "bridge_slave", "hairpin", "on"],
        )?;
        netns::ip_in(&self.node_ns, &["link", "set", &host_if, "up"])?;
        let addr = format!("{}/{POD_PREFIX_LEN}", pod.ip);
        netns::ip_in(name, &["link", "set", "lo", "up"])?;
        netns::ip_in(name, &["addr", "add", &addr, "dev", "eth0"])?;
        netns::ip_in(name, &["link", "set", "eth0", "up"])?;
        netns::ip_in(name, &["route", "add", "default", "via", &NODE_IP.to_string()])?;
        let dir = pod.resolv_conf.parent().unwrap_or(Path::new(netns::ETC_NETNS_DIR));
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        std::fs::write(&pod.resolv_conf, resolv_conf(namespace))
            .map_err(|e| format!("writing {}: {e}", pod.resolv_conf.display()))?;
        Ok(())
    }

    /// Removes the pod's namespace (its veth goes with it). Unknown uids
    /// are ignored; errors are logged.
    pub fn detach(&self, pod_uid: &str) {
        let name = self
            .lock_pods()
            .remove(pod_uid)
            .map_or_else(|| self.pod_netns_name(pod_uid), |p| p.name);
        if let Err(e) = netns::delete(&name) {
            warn!(pod = %pod_uid, netns = %name, error = %e, "removing a pod namespace failed");
        }
    }

    /// The namespace of an attached pod.
    pub fn pod(&self, pod_uid: &str) -> Option<PodNetns> {
        self.lock_pods().get(pod_uid).cloned()
    }

    /// Starts the Service proxy, the cluster DNS and the LoadBalancer
    /// listeners for `cluster` (tasks on the current Tokio runtime; they end
    /// on [`PodNetwork::teardown`]).
    pub fn start(self: &Arc<Self>, cluster: Arc<Cluster>) -> Result<(), String> {
        dns::start(self, cluster.clone())?;
        tokio::spawn(proxy::run(self.clone(), cluster.clone(), self.stop.subscribe()));
        tokio::spawn(lb::run(self.clone(), cluster, self.stop.subscribe()));
        Ok(())
    }

    /// Removes everything: the tasks stop, pod namespaces, the node
    /// namespace (bridge, veths, iptables with it), `/etc/netns` entries and
    /// the registry file. Idempotent.
    pub fn teardown(&self) {
        if self.torn_down.swap(true, Ordering::SeqCst) {
            return;
        }
        self.stop.send_replace(true);
        let pods: Vec<PodNetns> = std::mem::take(&mut *self.lock_pods()).into_values().collect();
        for p in pods {
            if let Err(e) = netns::delete(&p.name) {
                warn!(netns = %p.name, error = %e, "removing a pod namespace failed");
            }
        }
        // Pod namespaces this process no longer tracks (should be none).
        let prefix = format!("{NETNS_PREFIX}{}-", self.id);
        for name in netns::list()
            .into_iter()
            .filter(|n| n.starts_with(&prefix) && *n != self.node_ns)
        {
            let _ = netns::delete(&name);
        }
        if let Err(e) = netns::delete(&self.node_ns) {
            warn!(netns = %self.node_ns, error = %e, "removing the node namespace failed");
        }
        let _ = std::fs::remove_file(registry_file(&self.id));
        let _ = std::fs::remove_file(self.state_dir.join("network.json"));
        info!(id = %self.id, "pod network removed");
    }

    fn lock_pods(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, PodNetns>> {
        self.pods.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for PodNetwork {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// A pod's `/etc/resolv.conf` (as the kubelet writes it for `ClusterFirst`).
pub fn resolv_conf(namespace: &str) -> String {
    format!(
        "nameserver {DNS_IP}\nsearch {namespace}.svc.{CLUSTER_DOMAIN} svc.{CLUSTER_DOMAIN} {CLUSTER_DOMAIN}\noptions ndots:5\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_instances() {
        assert_eq!(short_uid("0b5e6a1c-77d2-4f7e-9a51-9a1c2d3e4f50"), "0b5e6a1c77d2");
        assert_eq!(short_uid("--"), "pod");
        assert_eq!(instance_of("ksim-0123abcd-node"), Some("0123abcd"));
        assert_eq!(instance_of("ksim-0123abcd-0b5e6a1c77d2"), Some("0123abcd"));
        assert_eq!(instance_of("ksim-xyz-node"), None);
        assert_eq!(instance_of("other"), None);
    }

    #[test]
    fn resolv_conf_has_the_search_path() {
        assert_eq!(
            resolv_conf("team"),
            "nameserver 10.96.0.10\nsearch team.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n"
        );
    }

    #[test]
    fn this_process_is_alive_and_a_dead_pid_is_not() {
        let me = process_identity(std::process::id()).unwrap();
        assert!(me.starts_with(&format!("{} ", std::process::id())));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(process_identity(pid).is_none());
    }
}
