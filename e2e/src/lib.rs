//! kubesim: a local Kubernetes API server for tests and demos, which the
//! real `kubectl` and kube-rs clients use unchanged.
//!
//! Layers, from the edge in: [`apiserver`] (HTTPS, auth, routing, watch
//! streams) → [`cluster`] (REST semantics) → [`store`] (objects, versions,
//! history). Around them: [`resources`] (what is served), [`discovery`],
//! [`table`], [`patch`], [`selector`], [`defaults`], [`crd`],
//! [`controllers`], [`pki`], and [`app`]/[`harness`] to run it all.

pub mod admission;
pub mod apiserver;
pub mod app;
pub mod clock;
pub mod cluster;
pub mod commands;
pub mod controllers;
pub mod crd;
pub mod defaults;
pub mod discovery;
pub mod endpoints;
pub mod events;
pub mod harness;
pub mod kubelet;
pub mod network;
pub mod openapi_builtin;
pub mod patch;
pub mod pki;
pub mod podproxy;
pub mod protobuf;
pub mod resources;
pub mod runner;
pub mod selector;
pub mod serviceaccounts;
pub mod shutdown;
pub mod status;
pub mod store;
pub mod suite;
pub mod table;
pub mod upstream;
pub mod workloads;
