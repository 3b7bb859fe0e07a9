//! Schema helpers shared by the CRD types: CEL rules and hand-written sub-schemas.

use kube::core::cel::Rule;
use schemars::{Schema, SchemaGenerator, json_schema};

/// The message fragment every "accepted but not implemented" rejection carries, so users (and
/// tests) can recognise it whether it came from the API server's CEL rule or from the validator.
pub const NOT_SUPPORTED: &str = "is not supported by Trellis yet";

/// A CEL rule rejecting `field` (a property of the object the rule is attached to) with a
/// "not supported by Trellis yet" message naming the fix.
///
/// Why CEL as well as the Rust validator: the API server enforces CEL rules even where the
/// admission webhook is not installed, so such a field is never silently accepted.
pub fn unsupported(field: &str, fix: &str) -> Rule {
    Rule::new(format!("!has(self.{field})"))
        .field_path(format!(".{field}"))
        .message(format!("{field} {NOT_SUPPORTED}: {fix}").as_str())
}

/// Schema of a free-form object kept as-is by the API server (used for Istio fields Trellis
/// declares only to reject them, so they are not pruned before validation sees them).
pub fn preserve_unknown_object(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// Schema of a list of free-form objects kept as-is by the API server (an Istio list of
/// messages Trellis declares only to reject).
pub fn preserve_unknown_list(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "items": {
            "type": "object",
            "x-kubernetes-preserve-unknown-fields": true,
        },
    })
}
