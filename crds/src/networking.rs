//! `networking.trellis.dev/v1alpha1`: VirtualService ([`virtual_service`]), DestinationRule
//! ([`destination_rule`]), Gateway ([`gateway`]), ServiceEntry ([`service_entry`]) and Sidecar
//! ([`sidecar`]), each kind's types re-exported here.
//!
//! Field names, shapes and semantics follow Istio's `networking.istio.io/v1` API so that a
//! user's Istio YAML works by changing `apiVersion`. Fields Istio has and Trellis does not
//! implement yet are still declared here (so the API server keeps them instead of silently
//! pruning them) and are rejected by the validator and by CEL rules with a "not supported by
//! Trellis yet" error.

pub mod destination_rule;
pub mod gateway;
pub mod service_entry;
pub mod sidecar;
pub mod virtual_service;
pub use destination_rule::*;
pub use gateway::*;
pub use service_entry::{
    EntryWorkloadSelector, Location, Resolution, ServiceEntry, ServiceEntrySpec, ServicePort, WorkloadEntry,
};
pub use sidecar::{
    CaptureMode, EgressListener, IngressListener, Sidecar, SidecarPort, SidecarSpec, SidecarWorkloadSelector,
};
pub use virtual_service::*;

/// API group of the traffic kinds.
pub const GROUP: &str = "networking.trellis.dev";
