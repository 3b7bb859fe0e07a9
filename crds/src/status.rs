//! Status shared by the traffic and security kinds.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::KubeSchema;
use serde::{Deserialize, Serialize};
use serde_with::skip_serializing_none;

/// Status written by the control plane on configuration resources: whether it was accepted
/// and distributed, and the validator's findings.
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ConfigStatus {
    /// Standard conditions (`Accepted`, `Reconciled`).
    pub conditions: Option<Vec<Condition>>,
    /// The `metadata.generation` the status describes.
    pub observed_generation: Option<i64>,
    /// Validation findings (warnings for an accepted resource).
    pub validation_messages: Option<Vec<StatusMessage>>,
}

/// One finding recorded in a status (Istio's `validationMessages` entry: its `type` carries
/// the analysis code `meshctl analyze` reports).
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub struct StatusMessage {
    /// The finding's code and name, e.g. `IST0101` `ReferencedResourceNotFound`.
    #[serde(rename = "type")]
    pub type_: Option<MessageType>,
    /// `Error` or `Warning`.
    pub level: String,
    /// Field path, e.g. `spec.http[0].route[1].weight`.
    pub field: Option<String>,
    /// What is wrong and what is allowed.
    pub message: String,
}

/// The code of a finding, as Istio's analysis messages carry it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub struct MessageType {
    /// `IST0101`, `TRL0101`: `meshctl analyze --explain CODE` explains it.
    pub code: String,
    /// `ReferencedResourceNotFound`.
    pub name: String,
}
