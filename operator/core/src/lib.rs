//! The kube-free core of the Trellis control plane (as linkerd2's policy-controller keeps its
//! `core`): plain data in, proxy configuration out. The operator feeds it from kube-runtime
//! watchers; `meshctl` feeds it from objects it lists or reads from files. No Kubernetes
//! client, no gRPC, no certificate authority.
//!
//! - [`analysis`]: every problem in a set of objects, with a code, the object, file and line.
//! - [`code`]: the one list of finding codes (Istio's where Istio reports the same problem).
//! - [`dashboard`]: what the operator's web dashboard draws (graph, service pages, proxies).
//! - [`registry`]: the cluster's services and workloads as plain data.
//! - [`snapshot`]: everything one compilation reads, from the live index or from YAML.
//! - [`compile`]: the pure compiler from a snapshot to one proxy's configuration.
//! - [`routes`]: the effective routes of a service with their provenance (what `meshctl
//!   routes` prints and the operator's dashboard shows).
//! - [`traffic`]: the mesh-wide traffic view from the proxies' golden-signal reports.

pub mod analysis;
pub mod code;
pub mod compile;
pub mod dashboard;
pub mod registry;
pub mod routes;
pub mod snapshot;
pub mod traffic;
