//! The Trellis control plane (the seeds' istiod).
//!
//! - [`registry`]: the cluster's services and workloads as plain data.
//! - [`snapshot`]: everything one compilation reads, from the live index or from YAML.
//! - [`compile`]: the pure compiler from a snapshot to one proxy's configuration.
//! - [`index`]: the live index, fed by kube-runtime watchers.
//! - [`jwks`]: the key sets of RequestAuthentications' `jwksUri`, fetched, cached and
//!   refreshed for the index (proxies never fetch).
//! - [`push`]: the gRPC config push service and per-proxy sync state.
//! - [`trust`]: the mesh root published to every namespace.
//! - [`app`], [`admin`], [`metrics`]: the running operator, its admin API and its metrics.
//! - [`ca`]: the mesh certificate authority and root rotation.
//! - [`serving`]: the operator's own serving certificates, reissued in place.
//! - [`admission`]: the admission webhooks (validation and sidecar injection) and their
//!   `caBundle`.
//! - [`leader`]: the leader election; only the leader reconciles and rotates.
//! - [`mesh`]: the Mesh reconciler: settings, status, events, finalizer.
//! - [`events`]: Kubernetes Events, one per distinct occurrence, repeats as its series.
//! - [`dataplane`]: the meshed pods, their proxy images, owners and health.
//! - [`rollout`]: proxy rollouts in health-gated waves, rolled back when a wave fails.
//! - [`peers`]: the other replicas' proxies, so the leader sees every proxy.
//! - [`traffic`]: the proxies' golden signals, summed into the mesh-wide traffic view.
//! - [`admin::dashboard`]: the web dashboard on the admin port (service graph, services, proxies).
//!
//! [`registry`], [`snapshot`] and [`compile`] live in the kube-free `trellis-core` crate and are
//! re-exported here under their old paths.

pub mod admin;
pub mod admission;
pub mod app;
pub mod ca;
pub mod dataplane;
pub mod diagnostics;
pub mod events;
pub mod index;
pub mod jwks;
pub mod leader;
pub mod mesh;
pub mod metrics;
pub mod peers;
pub mod push;
pub mod rollout;
pub mod serving;
pub mod settings;
pub mod traffic;
pub mod trust;
pub mod trust_domain;

pub use trellis_core::{compile, registry, snapshot};

/// The field manager of everything the operator applies with server-side apply (the Mesh's
/// status, the root ConfigMaps, diagnostics' statuses); the leader election's Lease is
/// `<FIELD_MANAGER>-<identity>`.
pub const FIELD_MANAGER: &str = "trellis-operator";
