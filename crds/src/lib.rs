//! The Trellis mesh API.
//!
//! - [`networking`], [`security`], [`mesh`]: the CRD types, with Istio-compatible field names.
//! - [`crd`]: the CustomResourceDefinitions generated from those types (rendered to `crds/*.yaml`).
//! - [`validation`]: the one validator, shared by the admission webhook, `meshctl validate` and
//!   `meshctl analyze`.
//! - [`document`]: reading multi-document YAML/JSON with line numbers, and mapping Istio
//!   apiVersions to Trellis kinds.

pub mod crd;
pub mod document;
pub mod duration;
pub mod mesh;
pub mod networking;
pub mod schema;
pub mod security;
pub mod status;
pub mod validation;
