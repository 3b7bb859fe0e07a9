//! What each component is told: the command lines of etcd and the control
//! plane, and the configuration files of containerd, the CNI network, the
//! kubelet and kube-proxy. Pure functions of a [`Layout`] and an
//! [`Addresses`], so they can be checked without starting anything.

use std::net::Ipv4Addr;
use std::path::Path;

use super::layout::Layout;
use super::{CLUSTER_DOMAIN, DNS_IP, NODE_NAME, POD_CIDR, POD_GATEWAY, SERVICE_CIDR};
use super::{images, pki::PkiFiles};

/// The addresses of one instance (see [`super::instance`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addresses {
    /// The host's end of the link to the node.
    pub host_ip: Ipv4Addr,
    /// The node's address: the API server, the kubelet and LoadBalancer
    /// traffic arrive here.
    pub node_ip: Ipv4Addr,
    /// The LoadBalancer pool (`first..=last`), routed from the host to the node.
    pub lb_first: Ipv4Addr,
    pub lb_last: Ipv4Addr,
}

/// The API server's port on the node address.
pub const API_PORT: u16 = 6443;

/// `https://NODE_IP:6443`.
pub fn server_url(addr: &Addresses) -> String {
    format!("https://{}:{API_PORT}", addr.node_ip)
}

fn p(path: &Path) -> String {
    path.display().to_string()
}

/// etcd: one member, plain HTTP on the node namespace's loopback (nothing
/// outside the node reaches it). `--unsafe-no-fsync`: a test cluster's data
/// does not outlive it, and fsyncs on a busy CI disk stall every write.
pub fn etcd_args(layout: &Layout) -> Vec<String> {
    [
        "--name=node",
        &format!("--data-dir={}", p(&layout.etcd_data())),
        "--listen-client-urls=http://127.0.0.1:2379",
        "--advertise-client-urls=http://127.0.0.1:2379",
        "--listen-peer-urls=http://127.0.0.1:2380",
        "--initial-advertise-peer-urls=http://127.0.0.1:2380",
        "--initial-cluster=node=http://127.0.0.1:2380",
        "--listen-metrics-urls=http://127.0.0.1:2381",
        "--unsafe-no-fsync",
        "--snapshot-count=10000",
        "--log-level=warn",
    ]
    .into_iter()
    .map(str::to_string)
    .collect()
}

/// The admission plugins: upstream's defaults (which include
/// MutatingAdmissionWebhook and ValidatingAdmissionWebhook) plus
/// NodeRestriction, as kubeadm enables them; named explicitly so the list
/// in force is visible here.
pub const ADMISSION_PLUGINS: &str = "NamespaceLifecycle,LimitRanger,ServiceAccount,TaintNodesByCondition,PodSecurity,Priority,DefaultTolerationSeconds,DefaultStorageClass,StorageObjectInUseProtection,PersistentVolumeClaimResize,RuntimeClass,CertificateApproval,CertificateSigning,ClusterTrustBundleAttest,CertificateSubjectRestriction,DefaultIngressClass,MutatingAdmissionWebhook,ValidatingAdmissionPolicy,ValidatingAdmissionWebhook,ResourceQuota,NodeRestriction";

/// kube-apiserver: RBAC and Node authorization, the admission plugins
/// above, x509 client certificates, ServiceAccount tokens signed with the
/// generated key.
pub fn apiserver_args(layout: &Layout, addr: &Addresses) -> Vec<String> {
    let pki = PkiFiles::new(&layout.state_dir);
    vec![
        "--etcd-servers=http://127.0.0.1:2379".into(),
        format!("--advertise-address={}", addr.node_ip),
        "--bind-address=0.0.0.0".into(),
        format!("--secure-port={API_PORT}"),
        format!("--service-cluster-ip-range={SERVICE_CIDR}"),
        "--service-node-port-range=30000-32767".into(),
        "--authorization-mode=Node,RBAC".into(),
        format!("--enable-admission-plugins={ADMISSION_PLUGINS}"),
        "--allow-privileged=true".into(),
        format!("--client-ca-file={}", p(&pki.ca_cert())),
        format!("--tls-cert-file={}", p(&pki.cert("apiserver"))),
        format!("--tls-private-key-file={}", p(&pki.key("apiserver"))),
        format!(
            "--kubelet-client-certificate={}",
            p(&pki.cert("apiserver-kubelet-client"))
        ),
        format!("--kubelet-client-key={}", p(&pki.key("apiserver-kubelet-client"))),
        format!("--kubelet-certificate-authority={}", p(&pki.ca_cert())),
        "--kubelet-preferred-address-types=InternalIP".into(),
        format!("--service-account-issuer=https://kubernetes.default.svc.{CLUSTER_DOMAIN}"),
        format!("--service-account-key-file={}", p(&pki.service_account_pub())),
        format!("--service-account-signing-key-file={}", p(&pki.service_account_key())),
        // The aggregation layer's front proxy (as kubeadm sets it up), so
        // components find `requestheader-client-ca-file` in
        // kube-system/extension-apiserver-authentication.
        format!("--requestheader-client-ca-file={}", p(&pki.front_proxy_ca())),
        "--requestheader-allowed-names=front-proxy-client".into(),
        "--requestheader-extra-headers-prefix=X-Remote-Extra-".into(),
        "--requestheader-group-headers=X-Remote-Group".into(),
        "--requestheader-username-headers=X-Remote-User".into(),
        format!("--proxy-client-cert-file={}", p(&pki.cert("front-proxy-client"))),
        format!("--proxy-client-key-file={}", p(&pki.key("front-proxy-client"))),
        "--enable-bootstrap-token-auth=false".into(),
        "--anonymous-auth=false".into(),
        "--profiling=false".into(),
        "--event-ttl=1h".into(),
        "--v=1".into(),
    ]
}

/// kube-controller-manager: every default controller, each with its own
/// ServiceAccount's credentials (so the controllers are subject to RBAC as
/// upstream ships them), Node CIDR allocation from the pod range.
pub fn controller_manager_args(layout: &Layout) -> Vec<String> {
    let pki = PkiFiles::new(&layout.state_dir);
    let kubeconfig = p(&pki.kubeconfig("controller-manager"));
    vec![
        format!("--kubeconfig={kubeconfig}"),
        format!("--authentication-kubeconfig={kubeconfig}"),
        format!("--authorization-kubeconfig={kubeconfig}"),
        "--use-service-account-credentials=true".into(),
        format!("--service-account-private-key-file={}", p(&pki.service_account_key())),
        format!("--root-ca-file={}", p(&pki.ca_cert())),
        format!("--cluster-signing-cert-file={}", p(&pki.ca_cert())),
        format!("--cluster-signing-key-file={}", p(&pki.ca_key())),
        "--allocate-node-cidrs=true".into(),
        format!("--cluster-cidr={POD_CIDR}"),
        format!("--service-cluster-ip-range={SERVICE_CIDR}"),
        "--leader-elect=false".into(),
        "--bind-address=127.0.0.1".into(),
        "--controllers=*".into(),
        "--profiling=false".into(),
        "--v=1".into(),
    ]
}

/// kube-scheduler with its own identity.
pub fn scheduler_args(layout: &Layout) -> Vec<String> {
    let pki = PkiFiles::new(&layout.state_dir);
    let kubeconfig = p(&pki.kubeconfig("scheduler"));
    vec![
        format!("--kubeconfig={kubeconfig}"),
        format!("--authentication-kubeconfig={kubeconfig}"),
        format!("--authorization-kubeconfig={kubeconfig}"),
        "--leader-elect=false".into(),
        "--bind-address=127.0.0.1".into(),
        "--profiling=false".into(),
        "--v=1".into(),
    ]
}

/// containerd's configuration: everything (content, snapshots, state, the
/// pods' network namespaces, runc's state) under the instance's directory,
/// its own socket, the cgroupfs driver, overlayfs, the locally built pause
/// image as the sandbox image, the instance's CNI configuration with the
/// host's plugins.
///
/// `restrict_oom_score_adj`: without CAP_SYS_RESOURCE (some sandboxes drop
/// it from every process's bounding set) no process may lower its OOM
/// score, and runc fails to start the pause container (-998) with
/// "failed to update /proc/self/oom_score_adj: Permission denied"; then
/// containerd clamps scores to its own, as it does for rootless setups.
pub fn containerd_config(layout: &Layout, cni_bin_dir: &Path, restrict_oom_score_adj: bool) -> String {
    format!(
        r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{socket}.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  disable_apparmor = true
  restrict_oom_score_adj = {restrict_oom_score_adj}
  tolerate_missing_hugetlb_controller = true
  disable_hugetlb_controller = true
  max_container_log_line_size = 16384

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{runc_root}"

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni_bin}"
    conf_dir = "{cni_conf}"
    max_conf_num = 1
"#,
        root = p(&layout.containerd_root()),
        state = p(&layout.containerd_state()),
        socket = p(&layout.containerd_socket()),
        opt = p(&layout.containerd_root().join("opt")),
        pause = images::PAUSE_IMAGE,
        runc_root = p(&layout.containerd_state().join("runc")),
        cni_bin = p(cni_bin_dir),
        cni_conf = p(&layout.cni_conf_dir()),
    )
}

/// Whether this process may lower OOM scores (CAP_SYS_RESOURCE in its
/// bounding set, as root normally has).
pub fn may_lower_oom_scores() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("CapBnd:"))?;
            u64::from_str_radix(line.split_whitespace().nth(1)?, 16).ok()
        })
        .is_some_and(|caps| caps & (1 << 24) != 0)
}

/// The pod network: a bridge `cni0` in the node namespace with the node as
/// every pod's gateway, addresses from the pod range (host-local, its
/// allocations under the instance's directory), hairpin so a pod reaches
/// itself through its Service, and portmap for `hostPort`s.
pub fn cni_conflist(layout: &Layout) -> String {
    let config = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "trellis-upstream",
        "plugins": [
            {
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": true,
                "ipMasq": true,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": POD_CIDR, "gateway": POD_GATEWAY.to_string()}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": p(&layout.cni_ipam_dir()),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": true}},
        ],
    });
    format!("{config:#}\n")
}

/// The kubelet's configuration: the cgroupfs driver under the instance's
/// own cgroup root (so two instances, or a crashed one, never share
/// cgroups), webhook authentication and authorization (the API server's
/// client certificate is a cluster admin), cluster DNS at the usual
/// ClusterIP, no swap check, and no disk-pressure eviction or image garbage
/// collection (the locally imported images cannot be pulled again).
pub fn kubelet_config(layout: &Layout, addr: &Addresses) -> String {
    let pki = PkiFiles::new(&layout.state_dir);
    let config = serde_json::json!({
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": addr.node_ip.to_string(),
        "port": 10250,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": 10248,
        "authentication": {
            "anonymous": {"enabled": false},
            "webhook": {"enabled": true},
            "x509": {"clientCAFile": p(&pki.ca_cert())},
        },
        "authorization": {"mode": "Webhook"},
        "tlsCertFile": p(&pki.cert("kubelet-serving")),
        "tlsPrivateKeyFile": p(&pki.key("kubelet-serving")),
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": layout.cgroup_root(),
        "cgroupsPerQOS": true,
        "containerRuntimeEndpoint": format!("unix://{}", p(&layout.containerd_socket())),
        "clusterDNS": [DNS_IP.to_string()],
        "clusterDomain": CLUSTER_DOMAIN,
        "resolvConf": p(&layout.resolv_conf()),
        "podLogsDir": p(&layout.pod_logs_dir()),
        "failSwapOn": false,
        "protectKernelDefaults": false,
        "makeIPTablesUtilChains": true,
        "serializeImagePulls": false,
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {"memory.available": "50Mi", "nodefs.available": "0%", "imagefs.available": "0%", "nodefs.inodesFree": "0%"},
        "maxPods": 110,
        "syncFrequency": "10s",
        "fileCheckFrequency": "10s",
        "nodeStatusReportFrequency": "10s",
        "shutdownGracePeriod": "0s",
        "containerLogMaxSize": "10Mi",
        "staticPodPath": p(&layout.static_pods_dir()),
    });
    format!("{config:#}\n")
}

/// The kubelet's command line (the rest is in its configuration file).
pub fn kubelet_args(layout: &Layout, addr: &Addresses) -> Vec<String> {
    let pki = PkiFiles::new(&layout.state_dir);
    vec![
        format!("--config={}", p(&layout.kubelet_config())),
        format!("--kubeconfig={}", p(&pki.kubeconfig("kubelet"))),
        format!("--root-dir={}", p(&layout.kubelet_root())),
        format!("--node-ip={}", addr.node_ip),
        format!("--hostname-override={NODE_NAME}"),
        "--v=1".into(),
    ]
}

/// kube-proxy in iptables mode, in the node namespace. Conntrack settings
/// are left as the kernel has them (they are host-wide, not per node).
pub fn kube_proxy_config(layout: &Layout) -> String {
    let pki = PkiFiles::new(&layout.state_dir);
    let config = serde_json::json!({
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": p(&pki.kubeconfig("kube-proxy"))},
        "mode": "iptables",
        "clusterCIDR": POD_CIDR,
        "hostnameOverride": NODE_NAME,
        "bindAddress": "0.0.0.0",
        "healthzBindAddress": "127.0.0.1:10256",
        "metricsBindAddress": "127.0.0.1:10249",
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
        "iptables": {"minSyncPeriod": "0s", "syncPeriod": "30s"},
    });
    format!("{config:#}\n")
}

/// `resolv.conf` for pods with `dnsPolicy: Default` (CoreDNS among them):
/// the host's non-loopback nameservers (a loopback resolver would be the
/// pod's own loopback), or none.
pub fn node_resolv_conf(host_resolv_conf: &str) -> String {
    let mut out = String::new();
    for line in host_resolv_conf.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        let Some(server) = words.next() else { continue };
        let loopback = server
            .parse::<std::net::IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(true);
        if !loopback {
            out.push_str(&format!("nameserver {server}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn layout() -> Layout {
        Layout::new(&PathBuf::from("/s"), "0123abcd")
    }

    fn addr() -> Addresses {
        Addresses {
            host_ip: Ipv4Addr::new(198, 18, 3, 1),
            node_ip: Ipv4Addr::new(198, 18, 3, 2),
            lb_first: Ipv4Addr::new(198, 18, 3, 128),
            lb_last: Ipv4Addr::new(198, 18, 3, 254),
        }
    }

    #[test]
    fn apiserver_enforces_rbac_and_runs_the_webhooks() {
        let args = apiserver_args(&layout(), &addr());
        assert!(args.contains(&"--authorization-mode=Node,RBAC".to_string()), "{args:?}");
        let plugins = args
            .iter()
            .find_map(|a| a.strip_prefix("--enable-admission-plugins="))
            .unwrap();
        for p in [
            "MutatingAdmissionWebhook",
            "ValidatingAdmissionWebhook",
            "ServiceAccount",
            "NodeRestriction",
        ] {
            assert!(plugins.split(',').any(|x| x == p), "{p} missing");
        }
        assert!(args.contains(&"--advertise-address=198.18.3.2".to_string()));
        assert!(args.contains(&"--anonymous-auth=false".to_string()));
    }

    #[test]
    fn kubelet_uses_cgroupfs_under_the_instance_root_and_cluster_dns() {
        let config: serde_json::Value = serde_json::from_str(&kubelet_config(&layout(), &addr())).unwrap();
        assert_eq!(config["cgroupDriver"], "cgroupfs");
        assert_eq!(config["cgroupRoot"], "/trellis-upstream-0123abcd");
        assert_eq!(config["clusterDNS"][0], "10.96.0.10");
        assert_eq!(config["failSwapOn"], false);
        assert_eq!(config["authorization"]["mode"], "Webhook");
        assert_eq!(
            config["containerRuntimeEndpoint"],
            "unix:///s/node/containerd/containerd.sock"
        );
    }

    #[test]
    fn containerd_keeps_everything_in_the_instance_dir() {
        let toml = containerd_config(&layout(), Path::new("/usr/lib/cni"), false);
        for want in [
            "root = \"/s/node/containerd/root\"",
            "address = \"/s/node/containerd/containerd.sock\"",
            "netns_mounts_under_state_dir = true",
            "SystemdCgroup = false",
            "snapshotter = \"overlayfs\"",
            "conf_dir = \"/s/node/cni/net.d\"",
            "bin_dir = \"/usr/lib/cni\"",
        ] {
            assert!(toml.contains(want), "{want} missing from\n{toml}");
        }
        assert!(toml.contains(&format!("sandbox_image = \"{}\"", images::PAUSE_IMAGE)));
        assert!(toml.contains("restrict_oom_score_adj = false"));
        let restricted = containerd_config(&layout(), Path::new("/usr/lib/cni"), true);
        assert!(restricted.contains("restrict_oom_score_adj = true"));
    }

    #[test]
    fn cni_allocates_from_the_pod_range_into_the_instance_dir() {
        let c: serde_json::Value = serde_json::from_str(&cni_conflist(&layout())).unwrap();
        let ipam = &c["plugins"][0]["ipam"];
        assert_eq!(ipam["ranges"][0][0]["subnet"], POD_CIDR);
        assert_eq!(ipam["dataDir"], "/s/node/cni/ipam");
        assert_eq!(c["plugins"][1]["type"], "portmap");
    }

    #[test]
    fn node_resolv_conf_drops_loopback_resolvers() {
        let host = "search example\nnameserver 127.0.0.53\nnameserver 10.255.255.53\nnameserver ::1\noptions edns0\n";
        assert_eq!(node_resolv_conf(host), "nameserver 10.255.255.53\n");
        assert_eq!(node_resolv_conf("nameserver 127.0.0.1\n"), "");
    }
}
