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

/// One finding recorded in a status.
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct StatusMessage {
    /// `Error` or `Warning`.
    pub level: String,
    /// Field path, e.g. `spec.http[0].route[1].weight`.
    pub field: Option<String>,
    /// What is wrong and what is allowed.
    pub message: String,
}
