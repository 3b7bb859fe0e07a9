//! What an upstream cluster needs on the machine, checked before anything
//! is created: root, the kernel features a node uses, the host programs
//! (each missing one named with the Debian package that provides it), the
//! upstream components (`e2e/upstream/build.sh`) and the project's programs
//! (`cargo build --bins`). One error lists everything missing.

use std::path::{Path, PathBuf};

use super::images::which;
use crate::runner::images::{BinDirs, TRELLIS_PROGRAMS};

/// Host programs: (program, Debian package).
pub const HOST_PROGRAMS: [(&str, &str); 13] = [
    ("containerd", "containerd"),
    ("containerd-shim-runc-v2", "containerd"),
    ("ctr", "containerd"),
    ("runc", "runc"),
    ("iptables", "iptables"),
    ("iptables-restore", "iptables"),
    ("ip", "iproute2"),
    ("nsenter", "util-linux"),
    ("mount", "mount"),
    ("umount", "mount"),
    ("sysctl", "procps"),
    ("tar", "tar"),
    ("ldd", "libc-bin"),
];

/// The CNI plugins the network uses.
pub const CNI_PLUGINS: [&str; 4] = ["bridge", "host-local", "loopback", "portmap"];

/// The upstream programs `e2e/upstream/build.sh` builds.
pub const UPSTREAM_PROGRAMS: [&str; 8] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
    "kube-proxy",
    "coredns",
    "pause",
];

/// Where CNI plugins are installed by the usual packages.
pub const CNI_DIRS: [&str; 3] = ["/usr/lib/cni", "/opt/cni/bin", "/usr/libexec/cni"];

/// The default directory of the upstream components: `$TRELLIS_UPSTREAM/bin`,
/// else `/var/tmp/trellis-upstream/bin` (where `build.sh` puts them).
pub fn default_upstream_bin() -> PathBuf {
    std::env::var_os("TRELLIS_UPSTREAM")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/trellis-upstream"))
        .join("bin")
}

/// Where everything was found.
#[derive(Debug, Clone)]
pub struct Found {
    pub cni_bin_dir: PathBuf,
    pub ctr: PathBuf,
    /// Program name → path, for the project's images.
    pub programs: Vec<(String, PathBuf)>,
}

/// Checks everything; the error lists every missing piece with its fix.
pub fn check(upstream_bin: &Path, bin_dirs: &BinDirs) -> anyhow::Result<Found> {
    let mut missing = Vec::new();
    if !crate::network::available() {
        missing.push(
            "root (CAP_NET_ADMIN, CAP_SYS_ADMIN): the cluster creates a network namespace, cgroups and mounts; run as root"
                .to_string(),
        );
    }
    let filesystems = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if !filesystems.lines().any(|l| l.trim_end().ends_with("overlay")) {
        missing.push("the overlay filesystem in the kernel (containerd's snapshotter): modprobe overlay".into());
    }
    if !Path::new("/proc/sys/net/bridge").exists() {
        missing.push("br_netfilter in the kernel (bridged pod traffic through iptables): modprobe br_netfilter".into());
    }
    if super::instance::tracking_hierarchy().is_none() {
        missing.push(
            "a cgroup hierarchy with the pids controller (cgroup v1 `pids` or cgroup v2) mounted under /sys/fs/cgroup"
                .into(),
        );
    }
    let mut packages = Vec::new();
    for (program, package) in HOST_PROGRAMS {
        if which(program).is_none() {
            missing.push(format!("`{program}` (Debian package {package})"));
            packages.push(package);
        }
    }
    if which("kubectl").is_none() {
        missing.push("`kubectl` (see the README's set-up)".into());
    }
    let cni_bin_dir = CNI_DIRS
        .iter()
        .map(PathBuf::from)
        .find(|d| CNI_PLUGINS.iter().all(|p| d.join(p).is_file()));
    if cni_bin_dir.is_none() {
        missing.push(format!(
            "the CNI plugins {} in one of {} (Debian package containernetworking-plugins)",
            CNI_PLUGINS.join(", "),
            CNI_DIRS.join(", ")
        ));
        packages.push("containernetworking-plugins");
    }
    let absent: Vec<&str> = UPSTREAM_PROGRAMS
        .iter()
        .copied()
        .filter(|p| !upstream_bin.join(p).is_file())
        .collect();
    if !absent.is_empty() {
        missing.push(format!(
            "the upstream components {} in {}: run e2e/upstream/build.sh (needs Go 1.24+ and the Go module proxy; about 15 minutes the first time), or point TRELLIS_UPSTREAM at its directory",
            absent.join(", "),
            upstream_bin.display()
        ));
    }
    let mut programs = Vec::new();
    for (_, program) in TRELLIS_PROGRAMS {
        match bin_dirs.0.iter().map(|d| d.join(program)).find(|p| p.is_file()) {
            Some(path) => programs.push((program.to_string(), path)),
            None => missing.push(format!(
                "`{program}` in {}: run `cargo build --bins` (or pass --bin-dir)",
                bin_dirs
                    .0
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(" or ")
            )),
        }
    }
    if !missing.is_empty() {
        packages.sort();
        packages.dedup();
        let install = if packages.is_empty() {
            String::new()
        } else {
            format!("\ninstall the packages with: apt-get install -y {}", packages.join(" "))
        };
        anyhow::bail!(
            "an upstream cluster cannot start here; missing:\n  - {}{install}",
            missing.join("\n  - ")
        );
    }
    Ok(Found {
        cni_bin_dir: cni_bin_dir.unwrap_or_default(),
        ctr: which("ctr").unwrap_or_default(),
        programs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_components_and_programs_are_named_with_their_fix() {
        let empty = tempfile::tempdir().unwrap();
        let err = check(empty.path(), &BinDirs(vec![empty.path().to_path_buf()]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("kube-apiserver"), "{err}");
        assert!(err.contains("e2e/upstream/build.sh"), "{err}");
        assert!(err.contains("`trellis-proxy`"), "{err}");
        assert!(err.contains("cargo build --bins"), "{err}");
    }
}
