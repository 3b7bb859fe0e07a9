//! Proxy rollout: when the Mesh's proxy image changes, every meshed Deployment, StatefulSet and
//! DaemonSet is brought to it in health-gated waves, and a failing wave is rolled back.
//!
//! - [`plan`]: the pure planner (workloads, pods, proxies, policy, last status, time in; the
//!   next status and the pod-template assignments out).
//! - [`control_plane`]: the control plane first: the rollout holds while the operator's own
//!   Deployment rolls, so a proxy moving to a new operator replica fails no wave.
//! - [`gateway`]: a gateway's proxy is a container of its own, not an injected sidecar: its
//!   image is read from, and assigned to, that container.
//! - [`workloads`]: the watched Deployments, StatefulSets, DaemonSets and disruption budgets,
//!   and the assignment patch (`trellis.dev/proxy-image` plus `kubectl rollout restart`'s
//!   annotation on the pod template).
//!
//! The Mesh reconciler runs the plan (only the leader reconciles): it writes the rollout status
//! first, then the assignments, then the events, so a leader that dies in between leaves a
//! status its successor finishes (see [`plan`]'s guarantees).

pub mod control_plane;
pub mod gateway;
pub mod plan;
pub mod workloads;
