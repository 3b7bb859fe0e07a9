//! One instance's footprint on the machine, and removing it: the node's
//! network namespace and its link to the host, the instance's cgroups, the
//! record in the registry — and the sweep that removes all of it (and every
//! process and mount of the instance) when it stops or after it died.
//!
//! # Layout (instance id `ID`, index `I` in 0..=255)
//! - Network namespace `kup-ID` (the node, like a kind node container):
//!   `eth0` with `198.18.I.2/30` (the node address: API server, kubelet,
//!   LoadBalancer traffic), default route via the host; containerd, the
//!   kubelet, kube-proxy, the control plane and every pod's bridge live in
//!   it, so the host's interfaces and iptables are never touched.
//! - Host link `kupID` with `198.18.I.1/30`, and a route for the
//!   LoadBalancer pool `198.18.I.128/25` via the node (198.18.0.0/15 is the
//!   range RFC 2544 reserves for test networks).
//! - Cgroup `/trellis-upstream-ID` in every hierarchy: the kubelet's
//!   `cgroupRoot` (pods below `kubepods`), the components in `system`; so
//!   every process of the instance, containerd's shims included, is found
//!   in one tree.
//! - Record `/run/kubesim/upstream/ID.json` (owner pid and start time,
//!   index, state directory), written before anything else is created.
//!
//! # Guarantees
//! - [`sweep`] kills every process in the instance's cgroups, unmounts
//!   everything under its state directory, deletes the namespace (the link
//!   and route go with it), removes the cgroups and the record. It runs on
//!   stop, and for every instance whose owner died on the next start or
//!   `kubesim down` ([`sweep_dead`]).
//! - Instances on one machine never share an address, a namespace, a
//!   cgroup or a file; kubesim's own instances (`ksim-*`, 127.X.Y.1) are
//!   never touched.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::config::Addresses;
use super::layout::Layout;
use crate::network::netns;

/// Where instances are recorded.
pub const REGISTRY_DIR: &str = "/run/kubesim/upstream";
/// Prefix of the node namespaces.
pub const NETNS_PREFIX: &str = "kup-";

/// The record of one instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    pub id: String,
    pub index: u8,
    /// The owning process (pid and start time: pids are reused).
    pub pid: u32,
    pub start_time: u64,
    pub state_dir: PathBuf,
    /// The state directory belongs to the instance (a test's temporary
    /// directory): removed with it, logs included.
    #[serde(default)]
    pub ephemeral: bool,
}

impl Record {
    pub fn netns(&self) -> String {
        format!("{NETNS_PREFIX}{}", self.id)
    }
    pub fn host_link(&self) -> String {
        format!("kup{}", self.id)
    }
    pub fn layout(&self) -> Layout {
        Layout::new(&self.state_dir, &self.id)
    }
    pub fn addresses(&self) -> Addresses {
        addresses(self.index)
    }
    fn file(&self) -> PathBuf {
        record_file(&self.id)
    }
    /// Whether the owner still runs: same pid and start time, and not a
    /// zombie (an owner killed while its parent is gone may never be reaped).
    fn alive(&self) -> bool {
        let zombie = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
            .ok()
            .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with('Z')))
            .unwrap_or(true);
        !zombie && crate::runner::process::start_time(self.pid) == Some(self.start_time)
    }
}

/// The node namespace's bind mount (what `nsenter --net=` takes).
pub fn netns_path(record: &Record) -> PathBuf {
    netns::netns_path(&record.netns())
}

/// The addresses of instance index `i`.
pub fn addresses(i: u8) -> Addresses {
    Addresses {
        host_ip: Ipv4Addr::new(198, 18, i, 1),
        node_ip: Ipv4Addr::new(198, 18, i, 2),
        lb_first: Ipv4Addr::new(198, 18, i, 128),
        lb_last: Ipv4Addr::new(198, 18, i, 254),
    }
}

fn record_file(id: &str) -> PathBuf {
    Path::new(REGISTRY_DIR).join(format!("{id}.json"))
}

/// Every recorded instance.
pub fn records() -> Vec<Record> {
    std::fs::read_dir(REGISTRY_DIR)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|s| serde_json::from_str(&s).ok())
        .collect()
}

/// Records a new instance owned by this process, with a fresh id and the
/// lowest free index; fails when 256 instances are alive.
pub fn register(state_dir: &Path, ephemeral: bool) -> anyhow::Result<Record> {
    std::fs::create_dir_all(REGISTRY_DIR).map_err(|e| anyhow::anyhow!("creating {REGISTRY_DIR}: {e}"))?;
    // Instances starting at the same time must not pick the same index.
    let lock_path = Path::new(REGISTRY_DIR).join(".lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| anyhow::anyhow!("opening {}: {e}", lock_path.display()))?;
    lock.lock()
        .map_err(|e| anyhow::anyhow!("locking {}: {e}", lock_path.display()))?;
    let used: Vec<u8> = records().iter().map(|r| r.index).collect();
    let index = (0..=255u8)
        .find(|i| !used.contains(i))
        .ok_or_else(|| anyhow::anyhow!("256 upstream clusters are recorded in {REGISTRY_DIR}; stop some"))?;
    let pid = std::process::id();
    let start_time = crate::runner::process::start_time(pid)
        .ok_or_else(|| anyhow::anyhow!("reading this process's start time from /proc"))?;
    let id = loop {
        let candidate = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
        if !record_file(&candidate).exists() && !netns::exists(&format!("{NETNS_PREFIX}{candidate}")) {
            break candidate;
        }
    };
    let record = Record {
        id,
        index,
        pid,
        start_time,
        state_dir: state_dir.to_path_buf(),
        ephemeral,
    };
    std::fs::write(record.file(), serde_json::to_string_pretty(&record)?)
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", record.file().display()))?;
    Ok(record)
}

/// Creates the node namespace, its link to the host, the addresses and
/// routes, and the sysctls a node needs (forwarding, bridged traffic
/// through iptables).
pub fn create_network(record: &Record) -> Result<(), String> {
    let ns = record.netns();
    let link = record.host_link();
    let a = record.addresses();
    netns::run("ip", &["netns", "add", &ns])?;
    netns::run(
        "ip",
        &[
            "link", "add", &link, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ],
    )?;
    netns::run("ip", &["addr", "add", &format!("{}/30", a.host_ip), "dev", &link])?;
    netns::run("ip", &["link", "set", &link, "up"])?;
    netns::ip_in(&ns, &["link", "set", "lo", "up"])?;
    netns::ip_in(&ns, &["addr", "add", &format!("{}/30", a.node_ip), "dev", "eth0"])?;
    netns::ip_in(&ns, &["link", "set", "eth0", "up"])?;
    netns::ip_in(&ns, &["route", "add", "default", "via", &a.host_ip.to_string()])?;
    let pool = format!("{}/25", a.lb_first);
    netns::run(
        "ip",
        &["route", "add", &pool, "via", &a.node_ip.to_string(), "dev", &link],
    )?;
    for sysctl in [
        "net.ipv4.ip_forward=1",
        "net.bridge.bridge-nf-call-iptables=1",
        "net.ipv4.conf.all.route_localnet=1",
    ] {
        netns::exec_in(&ns, "sysctl", &["-qw", sysctl], None)?;
    }
    Ok(())
}

/// The cgroup hierarchies mounted on this machine (cgroup v1 controllers,
/// named hierarchies and the unified cgroup2 tree).
pub fn cgroup_mounts() -> Vec<PathBuf> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    info.lines()
        .filter_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let fstype = after.split_whitespace().next()?;
            let point = before.split(' ').nth(4)?;
            (fstype == "cgroup" || fstype == "cgroup2").then(|| PathBuf::from(unescape(point)))
        })
        .collect()
}

/// The hierarchy that holds every process of an instance: the `pids`
/// controller's on cgroup v1, the unified tree on cgroup v2.
pub fn tracking_hierarchy() -> Option<PathBuf> {
    let mounts = cgroup_mounts();
    mounts
        .iter()
        .find(|m| m.ends_with("pids"))
        .or_else(|| mounts.iter().find(|m| m == &Path::new("/sys/fs/cgroup")))
        .cloned()
}

/// Creates the instance's cgroup root in every hierarchy (the kubelet
/// requires it to exist) and `system` in the tracking one; returns the
/// `cgroup.procs` file components are moved into.
pub fn create_cgroups(layout: &Layout) -> Result<PathBuf, String> {
    let root = layout.cgroup_root();
    let rel = root.trim_start_matches('/');
    for mount in cgroup_mounts() {
        let dir = mount.join(rel);
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        // A new cpuset cgroup starts with no CPUs and memory nodes: inherit the parent's.
        for file in ["cpuset.cpus", "cpuset.mems"] {
            if let Ok(value) = std::fs::read_to_string(mount.join(file)) {
                std::fs::write(dir.join(file), value.trim())
                    .map_err(|e| format!("writing {}/{file}: {e}", dir.display()))?;
            }
        }
    }
    let tracking = tracking_hierarchy().ok_or("no cgroup hierarchy with the pids controller is mounted")?;
    let system = tracking.join(rel).join("system");
    std::fs::create_dir_all(&system).map_err(|e| format!("creating {}: {e}", system.display()))?;
    Ok(system.join("cgroup.procs"))
}

/// Pids of every process in the cgroup tree at `dir`.
fn pids_below(dir: &Path) -> Vec<u32> {
    let mut pids = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(procs) = std::fs::read_to_string(d.join("cgroup.procs")) {
            pids.extend(procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
        }
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            }
        }
    }
    pids
}

/// Kills every process in the instance's cgroups (SIGKILL, until none is
/// left or 10 s passed); returns how many were signalled.
pub fn kill_all(layout: &Layout) -> usize {
    let Some(tracking) = tracking_hierarchy() else { return 0 };
    let dir = tracking.join(layout.cgroup_root().trim_start_matches('/'));
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut killed = 0;
    loop {
        let pids = pids_below(&dir);
        if pids.is_empty() || Instant::now() > deadline {
            if !pids.is_empty() {
                warn!(?pids, "processes of the upstream cluster survived SIGKILL");
            }
            return killed;
        }
        for pid in pids.into_iter().filter(|p| *p > 1 && *p != std::process::id()) {
            if let Ok(pid) = i32::try_from(pid) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
                killed += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Removes the instance's cgroups in every hierarchy, deepest first.
fn remove_cgroups(layout: &Layout) {
    let rel = layout.cgroup_root();
    for mount in cgroup_mounts() {
        let root = mount.join(rel.trim_start_matches('/'));
        let mut dirs = Vec::new();
        let mut stack = vec![root];
        while let Some(d) = stack.pop() {
            if !d.is_dir() {
                continue;
            }
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(e.path());
                }
            }
            dirs.push(d);
        }
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for d in dirs {
            if let Err(e) = std::fs::remove_dir(&d) {
                warn!(cgroup = %d.display(), error = %e, "removing a cgroup failed");
            }
        }
    }
}

/// Undoes the octal escapes of `/proc/self/mountinfo` (`\040` for a space).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'\\')
            .then(|| bytes.get(i + 1..i + 4))
            .flatten()
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| u8::from_str_radix(d, 8).ok());
        match escaped {
            Some(v) => {
                out.push(v);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mount points at or under `dir`, deepest first.
pub fn mounts_under(dir: &Path, mountinfo: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(unescape))
        .map(PathBuf::from)
        .filter(|m| m.starts_with(dir))
        .collect();
    out.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    out.dedup();
    out
}

/// Unmounts (lazily) everything mounted under `dir`: the kubelet's volumes,
/// containers' root filesystems, the pods' network namespaces.
pub fn unmount_all(dir: &Path) {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    for _ in 0..3 {
        let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
            return;
        };
        let mounts = mounts_under(&dir, &info);
        if mounts.is_empty() {
            return;
        }
        for m in mounts {
            if let Err(e) = netns::run("umount", &["-l", &m.display().to_string()]) {
                warn!(mount = %m.display(), error = %e, "unmounting failed");
            }
        }
    }
}

/// Removes everything of the instance: its processes, mounts, network,
/// cgroups, runtime files (an ephemeral instance's whole state directory;
/// otherwise its logs, credentials and configuration stay) and its record.
/// No file is removed while anything is still mounted under the state
/// directory (a bind mount there could lead anywhere).
pub fn sweep(record: &Record) {
    let layout = record.layout();
    let killed = kill_all(&layout);
    unmount_all(&record.state_dir);
    let still_mounted = std::fs::read_to_string("/proc/self/mountinfo")
        .map(|info| mounts_under(&record.state_dir, &info))
        .unwrap_or_default();
    if let Err(e) = netns::delete(&record.netns()) {
        warn!(netns = %record.netns(), error = %e, "deleting the node namespace failed");
    }
    let link = record.host_link();
    if Path::new("/sys/class/net").join(&link).exists() {
        let _ = netns::run("ip", &["link", "del", &link]);
    }
    remove_cgroups(&layout);
    let dirs = if record.ephemeral {
        vec![record.state_dir.clone()]
    } else {
        vec![layout.node_dir(), layout.etcd_data(), layout.images_dir()]
    };
    if !still_mounted.is_empty() {
        warn!(mounts = ?still_mounted, "still mounted after unmounting: the instance's files are left in place");
    } else {
        for dir in dirs.iter().filter(|d| d.exists()) {
            if let Err(e) = std::fs::remove_dir_all(dir) {
                warn!(dir = %dir.display(), error = %e, "removing the instance's files failed");
            }
        }
    }
    let _ = std::fs::remove_file(record.file());
    info!(id = %record.id, killed, "upstream cluster removed");
}

/// Sweeps every recorded instance whose owner is gone; returns their ids.
pub fn sweep_dead() -> Vec<String> {
    let mut swept = Vec::new();
    for record in records() {
        if !record.alive() {
            sweep(&record);
            swept.push(record.id);
        }
    }
    swept
}

/// The live instance recorded for `state_dir`, if any.
pub fn live_for(state_dir: &Path) -> Option<Record> {
    records().into_iter().find(|r| r.state_dir == state_dir && r.alive())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_of_an_index_do_not_overlap_another() {
        let a = addresses(3);
        assert_eq!(a.node_ip, Ipv4Addr::new(198, 18, 3, 2));
        assert_eq!(a.host_ip, Ipv4Addr::new(198, 18, 3, 1));
        let b = addresses(4);
        assert_ne!(a.lb_first, b.lb_first);
        assert!(a.lb_first.octets()[3] >= 128, "the pool must not cover the /30 link");
    }

    #[test]
    fn mounts_under_a_directory_deepest_first() {
        let info = "\
36 35 98:0 / /mnt1 rw - ext4 /dev/root rw
40 36 0:5 / /s/node/kubelet rw shared:1 - ext4 /dev/vda rw
41 40 0:6 / /s/node/kubelet/pods/u/volumes/kubernetes.io~secret/t rw - tmpfs tmpfs rw
42 36 0:7 / /s2/x rw - tmpfs tmpfs rw
43 36 0:8 / /s/with\\040space rw - tmpfs tmpfs rw
";
        let got = mounts_under(Path::new("/s"), info);
        assert_eq!(
            got,
            vec![
                PathBuf::from("/s/node/kubelet/pods/u/volumes/kubernetes.io~secret/t"),
                PathBuf::from("/s/node/kubelet"),
                PathBuf::from("/s/with space"),
            ]
        );
    }

    #[test]
    fn records_round_trip() {
        let r = Record {
            id: "0123abcd".into(),
            index: 7,
            pid: 42,
            start_time: 99,
            state_dir: "/tmp/x".into(),
            ephemeral: false,
        };
        let s = serde_json::to_string(&r).unwrap();
        assert!(s.contains("\"stateDir\""), "{s}");
        assert_eq!(serde_json::from_str::<Record>(&s).unwrap(), r);
        assert_eq!(r.netns(), "kup-0123abcd");
        assert_eq!(r.host_link(), "kup0123abcd");
        assert!(r.host_link().len() <= 15, "interface names are at most 15 bytes");
    }
}
