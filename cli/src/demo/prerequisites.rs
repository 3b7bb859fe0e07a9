//! What `meshctl demo` needs on this machine, checked before anything starts: root (kubesim
//! runs pods in network namespaces), the programs kubesim and the sidecars run, and the
//! binaries kubesim maps images to. Each missing one is named with how to install it; a
//! missing `kubectl` is only a warning (the demo speaks to the API itself; exploring afterwards
//! needs it).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

/// A program the demo's cluster runs, and the Debian package that has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Program {
    /// The command.
    pub name: &'static str,
    /// The Debian/Ubuntu package.
    pub package: &'static str,
    /// Who runs it.
    pub why: &'static str,
}

/// Every program kubesim's pods and the sidecars run.
pub const PROGRAMS: [Program; 8] = [
    Program {
        name: "ip",
        package: "iproute2",
        why: "kubesim's pod network (network namespaces, bridge, routes)",
    },
    Program {
        name: "iptables",
        package: "iptables",
        why: "the sidecars' traffic capture",
    },
    Program {
        name: "iptables-restore",
        package: "iptables",
        why: "Service DNAT and the capture rules",
    },
    Program {
        name: "nsenter",
        package: "util-linux",
        why: "starting pods in their namespaces",
    },
    Program {
        name: "unshare",
        package: "util-linux",
        why: "starting pods in their namespaces",
    },
    Program {
        name: "setpriv",
        package: "util-linux",
        why: "running containers as their user",
    },
    Program {
        name: "mount",
        package: "mount",
        why: "pod volumes",
    },
    Program {
        name: "sysctl",
        package: "procps",
        why: "the pod network's forwarding settings",
    },
];

/// The programs kubesim maps images to; they are built with it (`cargo build --bins`).
pub const IMAGE_BINARIES: [&str; 3] = ["trellis-operator", "trellis-proxy", "trellis-testapp"];

/// What is missing.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Missing {
    /// Not root.
    pub root: bool,
    /// Programs not on PATH.
    pub programs: Vec<Program>,
    /// Built binaries not found where kubesim looks.
    pub binaries: Vec<PathBuf>,
}

impl Missing {
    /// Nothing is missing.
    pub fn is_empty(&self) -> bool {
        !self.root && self.programs.is_empty() && self.binaries.is_empty()
    }

    /// The message naming each missing thing and its fix.
    pub fn explain(&self) -> String {
        let mut lines = vec!["meshctl demo cannot start on this machine:".to_string()];
        if self.root {
            lines.push(
                "  ✘ not root: kubesim runs pods as processes in network namespaces; run `sudo meshctl demo` (or as root)"
                    .into(),
            );
        }
        for p in &self.programs {
            lines.push(format!(
                "  ✘ {} is not on PATH (package {}): {}",
                p.name, p.package, p.why
            ));
        }
        for b in &self.binaries {
            lines.push(format!(
                "  ✘ {} is not built: kubesim runs it for the images; build the workspace with `cargo build --bins`",
                b.display()
            ));
        }
        if !self.programs.is_empty() {
            let mut packages: Vec<&str> = self.programs.iter().map(|p| p.package).collect();
            packages.dedup();
            lines.push(format!(
                "Install the missing programs (Debian, Ubuntu): sudo apt-get install -y {}",
                packages.join(" ")
            ));
        }
        lines.join("\n")
    }
}

/// The effective user id, from `/proc/self/status` (`None` when it cannot be read).
pub fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// `name` on `path` (a `PATH` value), if it is an executable file there.
pub fn find_program(name: &str, path: &OsStr) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    std::env::split_paths(path)
        .map(|dir| dir.join(name))
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// What is missing for a user `uid` with `path`, for a kubesim binary at `kubesim` (kubesim
/// finds the image binaries in its own directory or the one above).
pub fn missing(uid: Option<u32>, path: &OsStr, kubesim: &Path) -> Missing {
    let programs = PROGRAMS
        .iter()
        .filter(|p| find_program(p.name, path).is_none())
        .copied()
        .collect();
    let dir = kubesim.parent().unwrap_or(Path::new("."));
    let binaries = IMAGE_BINARIES
        .iter()
        .filter(|b| !dir.join(b).is_file() && !dir.parent().is_some_and(|up| up.join(b).is_file()))
        .map(|b| dir.join(b))
        .collect();
    Missing {
        root: uid != Some(0),
        programs,
        binaries,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_missing_program_is_named_with_its_package() {
        let empty = tempfile::tempdir().unwrap();
        let kubesim = empty.path().join("kubesim");
        let m = missing(Some(1000), empty.path().as_os_str(), &kubesim);
        assert!(m.root);
        assert_eq!(m.programs.len(), PROGRAMS.len());
        assert_eq!(m.binaries.len(), IMAGE_BINARIES.len());
        let text = m.explain();
        assert!(text.contains("run `sudo meshctl demo`"), "{text}");
        assert!(
            text.contains("iptables-restore is not on PATH (package iptables)"),
            "{text}"
        );
        assert!(
            text.contains("sudo apt-get install -y iproute2 iptables util-linux mount procps"),
            "{text}"
        );
        assert!(text.contains("cargo build --bins"), "{text}");

        // Everything present: nothing missing.
        let bin = tempfile::tempdir().unwrap();
        for p in PROGRAMS.iter().map(|p| p.name).chain(IMAGE_BINARIES) {
            let file = bin.path().join(p);
            std::fs::write(&file, "").unwrap();
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let m = missing(Some(0), bin.path().as_os_str(), &bin.path().join("kubesim"));
        assert!(m.is_empty(), "{m:?}");
        // A file that is not executable is not a program.
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(bin.path().join("ip"), std::fs::Permissions::from_mode(0o644)).unwrap();
        let m = missing(Some(0), bin.path().as_os_str(), &bin.path().join("kubesim"));
        assert_eq!(m.programs, [PROGRAMS[0]]);
    }

    #[test]
    fn the_effective_uid_is_read() {
        assert!(effective_uid().is_some());
    }
}
