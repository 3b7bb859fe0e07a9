//! Upstream Kubernetes on this machine: the real control plane (etcd,
//! kube-apiserver with Node+RBAC authorization and the standard admission
//! plugins, kube-controller-manager, kube-scheduler) and a real node
//! (containerd with runc and the CNI bridge, the kubelet, kube-proxy in
//! iptables mode, CoreDNS), built from Go modules by `e2e/upstream/build.sh`
//! (Kubernetes v1.33.13, etcd v3.5.21, CoreDNS v1.12.0), with container
//! images built locally from the project's programs. `kubesim up --upstream`
//! starts one; the end-to-end suite runs on one with
//! `TRELLIS_E2E_CLUSTER=upstream` (see `crate::suite`).
//!
//! Like kubesim, this knows nothing of Trellis beyond the image names of
//! kubesim's image mapping (`crate::runner::images`).
//!
//! # Layout
//! The node is a network namespace of its own, like a kind node container
//! (see [`instance`] for the addresses, cgroups and registry): every
//! component runs in it, so the API server reaches pod and Service IPs
//! (webhooks served by pods) and kube-proxy's rules never touch the host.
//! The host reaches the API server at `https://198.18.I.2:6443` and
//! LoadBalancer Services at addresses from `198.18.I.128/25` ([`addons`]).
//! Inside the node: Services `10.96.0.0/12` (the `kubernetes` Service at
//! 10.96.0.1, cluster DNS at 10.96.0.10), pods `10.244.0.0/16` on the bridge
//! `cni0` (gateway 10.244.0.1), domain `cluster.local`.
//!
//! # Start and stop
//! [`cluster::Cluster::start`] checks the machine ([`prereqs`]), removes
//! what dead instances left ([`instance::sweep_dead`]), generates the PKI
//! ([`pki`]) and configuration ([`config`]), starts etcd, the API server,
//! the controller-manager and the scheduler, containerd, imports the images
//! ([`images`]), starts the kubelet and kube-proxy, installs CoreDNS and
//! the LoadBalancer controller, and waits until the node is Ready, DNS
//! answers and the `default` ServiceAccount exists. Stopping (also on
//! drop, and for a crashed owner at the next start or `kubesim down`)
//! kills every process in the instance's cgroups, unmounts everything under
//! its state directory and deletes its namespace, link and cgroups.

pub mod addons;
pub mod cluster;
pub mod config;
pub mod images;
pub mod instance;
pub mod layout;
pub mod pki;
pub mod prereqs;

use std::net::Ipv4Addr;

pub use cluster::{Cluster, OLDER_RELEASE_TAG, Options};

/// The Service range.
pub const SERVICE_CIDR: &str = "10.96.0.0/12";
/// The `kubernetes` Service's ClusterIP (the first of the range).
pub const KUBERNETES_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);
/// The cluster DNS ClusterIP (`kube-system/kube-dns`).
pub const DNS_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// The pod range.
pub const POD_CIDR: &str = "10.244.0.0/16";
/// The node's address on the pod bridge: every pod's gateway.
pub const POD_GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
/// The cluster domain.
pub const CLUSTER_DOMAIN: &str = "cluster.local";
/// The node's name.
pub const NODE_NAME: &str = "upstream-node";
/// The Kubernetes release `e2e/upstream/go.mod` pins.
pub const KUBERNETES_VERSION: &str = "v1.33.13";
