//! Where an instance keeps its files: everything under its state directory
//! (so removing the directory removes the instance), and the name of its
//! cgroup root.

use std::path::{Path, PathBuf};

/// The files and directories of one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub state_dir: PathBuf,
    /// The instance id (8 hex digits).
    pub id: String,
}

impl Layout {
    pub fn new(state_dir: &Path, id: &str) -> Self {
        Self {
            state_dir: state_dir.to_path_buf(),
            id: id.to_string(),
        }
    }

    /// The node's runtime state: containerd, CNI, the kubelet. Removed
    /// when the instance stops.
    pub fn node_dir(&self) -> PathBuf {
        self.state_dir.join("node")
    }
    pub fn etcd_data(&self) -> PathBuf {
        self.state_dir.join("etcd")
    }
    pub fn logs_dir(&self) -> PathBuf {
        self.state_dir.join("logs")
    }
    /// A component's log (stdout and stderr).
    pub fn log(&self, component: &str) -> PathBuf {
        self.logs_dir().join(format!("{component}.log"))
    }
    pub fn images_dir(&self) -> PathBuf {
        self.state_dir.join("images")
    }
    pub fn config_dir(&self) -> PathBuf {
        self.state_dir.join("config")
    }
    pub fn containerd_root(&self) -> PathBuf {
        self.node_dir().join("containerd/root")
    }
    pub fn containerd_state(&self) -> PathBuf {
        self.node_dir().join("containerd/state")
    }
    pub fn containerd_socket(&self) -> PathBuf {
        self.node_dir().join("containerd/containerd.sock")
    }
    pub fn containerd_config(&self) -> PathBuf {
        self.config_dir().join("containerd.toml")
    }
    pub fn cni_conf_dir(&self) -> PathBuf {
        self.node_dir().join("cni/net.d")
    }
    pub fn cni_ipam_dir(&self) -> PathBuf {
        self.node_dir().join("cni/ipam")
    }
    pub fn kubelet_root(&self) -> PathBuf {
        self.node_dir().join("kubelet")
    }
    pub fn kubelet_config(&self) -> PathBuf {
        self.config_dir().join("kubelet.json")
    }
    pub fn kube_proxy_config(&self) -> PathBuf {
        self.config_dir().join("kube-proxy.json")
    }
    pub fn pod_logs_dir(&self) -> PathBuf {
        self.node_dir().join("pod-logs")
    }
    pub fn static_pods_dir(&self) -> PathBuf {
        self.node_dir().join("static-pods")
    }
    /// What pods with `dnsPolicy: Default` get as `/etc/resolv.conf`.
    pub fn resolv_conf(&self) -> PathBuf {
        self.config_dir().join("resolv.conf")
    }
    /// The instance's cgroup root (kubelet `cgroupRoot`; the components run
    /// in `<root>/system`), the same name in every hierarchy.
    pub fn cgroup_root(&self) -> String {
        format!("/trellis-upstream-{}", self.id)
    }
}
