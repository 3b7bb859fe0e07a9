//! The one set of Trellis install manifests.
//!
//! [`install::objects`] is the truth about what an installation consists of: the CRDs, the
//! `trellis-system` namespace, the operator's ServiceAccount, RBAC, Deployment and Service, and
//! the default `Mesh`. [`profile`] adds what a profile chooses (the ingress gateway, Mesh
//! settings); `meshctl install` renders that; [`olm::bundle`] renders the same objects
//! into an OperatorHub bundle (`olm/bundle/`); the end-to-end suite applies it.

pub mod demo;
pub mod install;
pub mod olm;
pub mod profile;
pub mod sidecar;

/// Render objects as one multi-document YAML stream.
pub fn to_yaml(objects: &[serde_json::Value]) -> String {
    let mut out = String::new();
    for o in objects {
        out.push_str("---\n");
        out.push_str(&serde_yaml_ng::to_string(o).expect("JSON values always serialize to YAML"));
    }
    out
}
