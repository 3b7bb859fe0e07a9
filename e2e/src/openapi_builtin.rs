//! OpenAPI schemas of the built-in kinds, generated from `k8s-openapi`
//! (which mirrors the upstream OpenAPI document), with every subschema
//! inlined. They drive unknown-field detection (`fieldValidation`),
//! required fields and type checks for built-in objects, and the schemas
//! in `/openapi/v3` (so `kubectl explain` works).

use std::collections::BTreeMap;
use std::sync::OnceLock;

use k8s_openapi::api::{admissionregistration, apps, batch, coordination, core, discovery, events, rbac};
use schemars::JsonSchema;
use serde_json::Value;

fn inline<T: JsonSchema>() -> Value {
    let mut generator = schemars::generate::SchemaSettings::openapi3()
        .with(|s| s.inline_subschemas = true)
        .into_generator();
    serde_json::to_value(generator.root_schema_for::<T>()).unwrap_or(Value::Null)
}

type Table = BTreeMap<(&'static str, &'static str), Value>;

fn table() -> &'static Table {
    static TABLE: OnceLock<Table> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t = Table::new();
        t.insert(("", "Namespace"), inline::<core::v1::Namespace>());
        t.insert(("", "Node"), inline::<core::v1::Node>());
        t.insert(("", "Pod"), inline::<core::v1::Pod>());
        t.insert(("", "Service"), inline::<core::v1::Service>());
        t.insert(("", "Endpoints"), inline::<core::v1::Endpoints>());
        t.insert(("", "ConfigMap"), inline::<core::v1::ConfigMap>());
        t.insert(("", "Secret"), inline::<core::v1::Secret>());
        t.insert(("", "ServiceAccount"), inline::<core::v1::ServiceAccount>());
        t.insert(("", "Event"), inline::<core::v1::Event>());
        t.insert(("apps", "Deployment"), inline::<apps::v1::Deployment>());
        t.insert(("apps", "ReplicaSet"), inline::<apps::v1::ReplicaSet>());
        t.insert(("batch", "Job"), inline::<batch::v1::Job>());
        t.insert(
            ("discovery.k8s.io", "EndpointSlice"),
            inline::<discovery::v1::EndpointSlice>(),
        );
        t.insert(("events.k8s.io", "Event"), inline::<events::v1::Event>());
        t.insert(("coordination.k8s.io", "Lease"), inline::<coordination::v1::Lease>());
        t.insert(
            ("admissionregistration.k8s.io", "MutatingWebhookConfiguration"),
            inline::<admissionregistration::v1::MutatingWebhookConfiguration>(),
        );
        t.insert(
            ("admissionregistration.k8s.io", "ValidatingWebhookConfiguration"),
            inline::<admissionregistration::v1::ValidatingWebhookConfiguration>(),
        );
        t.insert(("rbac.authorization.k8s.io", "Role"), inline::<rbac::v1::Role>());
        t.insert(
            ("rbac.authorization.k8s.io", "RoleBinding"),
            inline::<rbac::v1::RoleBinding>(),
        );
        t.insert(
            ("rbac.authorization.k8s.io", "ClusterRole"),
            inline::<rbac::v1::ClusterRole>(),
        );
        t.insert(
            ("rbac.authorization.k8s.io", "ClusterRoleBinding"),
            inline::<rbac::v1::ClusterRoleBinding>(),
        );
        t
    })
}

/// The schema of a built-in kind, if kubesim validates it.
///
/// Caveat: CustomResourceDefinition (recursive schema) and the review
/// kinds are not validated.
pub fn schema(group: &str, kind: &str) -> Option<&'static Value> {
    table()
        .iter()
        .find(|((g, k), v)| *g == group && *k == kind && v.is_object())
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemas_are_inlined_and_describe_fields() {
        let d = schema("apps", "Deployment").unwrap();
        let containers = d.pointer(
            "/properties/spec/properties/template/properties/spec/properties/containers/items/properties/image",
        );
        assert_eq!(containers.and_then(|i| i["type"].as_str()), Some("string"));
        assert!(!d.to_string().contains("$ref"), "subschemas are inlined");
        assert!(schema("apiextensions.k8s.io", "CustomResourceDefinition").is_none());
    }
}
