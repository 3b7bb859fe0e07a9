//! The validating webhook: every Trellis kind through the one validator, plus the
//! cross-object checks the validator cannot make alone (it sees one object; the operator's
//! index sees the cluster).
//!
//! - Errors deny, each line naming the object, the field path and what is allowed.
//! - Warnings are returned as admission warnings (`kubectl` prints them as `Warning: …`).
//! - Cross-object problems — a VirtualService bound to a Gateway that does not exist — are
//!   warnings, never denials: objects may be applied in any order.
//! - Dry runs get exactly the same answer (validation has no side effects).

use std::sync::{PoisonError, RwLock};

use kube::core::admission::AdmissionResponse;
use serde_json::Value;
use trellis_api::document::Kind;
use trellis_api::validation::{Finding, ObjectRef, Outcome, Severity, validate};

use crate::index::Index;

/// What the validator says about one object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Why the object is refused (every error, one per line), if it is.
    pub denial: Option<String>,
    /// Admission warnings.
    pub warnings: Vec<String>,
}

/// Validate `object` (the validator's findings, then the cross-object checks against `index`
/// when it has listed the cluster). The index is read only for the cross-object checks, not
/// held while validating: a reader holding it keeps the index's writer waiting, and every
/// review after it.
///
/// # Errors
/// The object is not a Trellis (or Istio) kind: why, for a denial.
pub fn verdict(object: &Value, index: &RwLock<Index>) -> Result<Verdict, String> {
    let (kind, findings) = match validate(object) {
        Outcome::Validated { kind, findings } => (kind, findings),
        Outcome::Skipped(why) => {
            return Err(format!(
                "{why}; webhook {} validates Trellis kinds only: fix the webhook configuration's rules",
                trellis_manifests::install::webhooks::VALIDATION_WEBHOOK
            ));
        }
    };
    let mut warnings: Vec<String> = findings
        .iter()
        .filter(|f| f.severity == Severity::Warning)
        .map(short)
        .collect();
    if kind == Kind::VirtualService {
        let index = index.read().unwrap_or_else(PoisonError::into_inner);
        if index.synced() {
            warnings.extend(cross_object(kind, object, &index).iter().map(short));
        }
    }
    let errors: Vec<String> = findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .map(short)
        .collect();
    Ok(Verdict {
        denial: (!errors.is_empty()).then(|| errors.join("\n")),
        warnings,
    })
}

/// A finding without its severity (the API server and kubectl say whether it is a warning or a
/// denial): `VirtualService shop/payment: spec.http[0].route: …`.
fn short(f: &Finding) -> String {
    if f.path.is_empty() {
        format!("{}: {}", f.object, f.message)
    } else {
        format!("{}: {}: {}", f.object, f.path, f.message)
    }
}

/// The Gateways a VirtualService is bound to, with the field each is named in.
fn gateway_references(object: &Value) -> Vec<(String, &str)> {
    fn names(v: Option<&Value>) -> Vec<&str> {
        v.and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect()
    }
    let mut out = Vec::new();
    for (i, g) in names(object.pointer("/spec/gateways")).into_iter().enumerate() {
        out.push((format!("spec.gateways[{i}]"), g));
    }
    for section in ["http", "tls", "tcp"] {
        let routes = object.pointer(&format!("/spec/{section}")).and_then(Value::as_array);
        for (r, route) in routes.into_iter().flatten().enumerate() {
            let matches = route.get("match").and_then(Value::as_array);
            for (m, matched) in matches.into_iter().flatten().enumerate() {
                for (i, g) in names(matched.get("gateways")).into_iter().enumerate() {
                    out.push((format!("spec.{section}[{r}].match[{m}].gateways[{i}]"), g));
                }
            }
        }
    }
    out
}

/// What this object refers to that the cluster lacks.
fn cross_object(kind: Kind, object: &Value, index: &Index) -> Vec<Finding> {
    if kind != Kind::VirtualService {
        return Vec::new();
    }
    let me = ObjectRef::of(object);
    let own_namespace = me.namespace.clone().unwrap_or_else(|| "default".into());
    gateway_references(object)
        .into_iter()
        .filter(|(_, g)| *g != "mesh")
        .filter_map(|(path, g)| {
            let (ns, name) = g.split_once('/').unwrap_or((own_namespace.as_str(), g));
            (!index.has_gateway(ns, name)).then(|| Finding {
                severity: Severity::Warning,
                object: me.clone(),
                path,
                message: format!(
                    "Gateway {ns}/{name} does not exist; the routes bound to it serve nothing until it does: create it, or name an existing Gateway (`<namespace>/<name>`, or `mesh` for sidecars)"
                ),
            })
        })
        .collect()
}

/// The answer to one validation request.
pub fn respond(review: &super::Review, index: &RwLock<Index>) -> AdmissionResponse {
    let request = &review.request;
    let Some(object) = &review.object else {
        return super::deny(
            request,
            format!(
                "the {:?} request for {} carries no object to validate",
                request.operation, request.kind.kind
            ),
            400,
        );
    };
    match verdict(object, index) {
        Err(why) => super::deny(request, why, 400),
        Ok(Verdict { denial, warnings }) => {
            let mut response = match denial {
                Some(why) => super::deny(request, why, 422),
                None => AdmissionResponse::from(request),
            };
            if !warnings.is_empty() {
                response.warnings = Some(warnings);
            }
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::fixtures;
    use crate::index::Change;
    use crate::snapshot::InputKind;
    use serde_json::json;

    fn vs(gateways: Value, weights: (u32, u32)) -> Value {
        json!({
            "apiVersion": "networking.trellis.dev/v1alpha1",
            "kind": "VirtualService",
            "metadata": {"name": "payment", "namespace": "shop"},
            "spec": {
                "hosts": ["payment"],
                "gateways": gateways,
                "http": [{"route": [
                    {"destination": {"host": "payment", "subset": "v1"}, "weight": weights.0},
                    {"destination": {"host": "payment", "subset": "v2"}, "weight": weights.1},
                ]}],
            }
        })
    }

    fn synced_index() -> RwLock<Index> {
        RwLock::new(synced())
    }

    fn synced() -> Index {
        let mut index = Index::default();
        for kind in InputKind::ALL {
            index.apply(Change::Relisted {
                kind,
                seen: Default::default(),
            });
        }
        index
    }

    fn request(object: Value) -> crate::admission::Review {
        let body = fixtures::review(
            ("networking.trellis.dev", "v1alpha1", "VirtualService"),
            "virtualservices",
            Some("shop"),
            object,
        );
        crate::admission::review(body.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn errors_deny_with_object_field_and_fix() {
        let response = respond(&request(vs(json!(["mesh"]), (90, 20))), &synced_index());
        assert!(!response.allowed);
        assert_eq!(response.result.code, 422);
        let message = &response.result.message;
        assert!(
            message.starts_with("VirtualService shop/payment: spec.http[0].route")
                && message.contains("sum to 110")
                && message.contains("100"),
            "{message}"
        );
    }

    #[test]
    fn a_missing_gateway_is_a_warning_not_a_denial_and_only_once_the_index_is_synced() {
        let object = vs(json!(["mesh", "shop-gateway", "edge/public"]), (90, 10));
        let response = respond(&request(object.clone()), &synced_index());
        assert!(response.allowed, "{:?}", response.result);
        let warnings = response.warnings.unwrap_or_default();
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(
            warnings[0].contains("spec.gateways[1]")
                && warnings[0].contains("Gateway shop/shop-gateway does not exist")
        );
        assert!(warnings[1].contains("Gateway edge/public"));

        // Before the index has listed the cluster, it cannot tell what is missing: no warning.
        let unsynced = respond(&request(object), &RwLock::new(Index::default()));
        assert!(unsynced.allowed && unsynced.warnings.is_none());
    }

    #[test]
    fn an_existing_gateway_raises_nothing() {
        let mut index = synced();
        let gateway: trellis_api::networking::Gateway = serde_json::from_value(json!({
            "apiVersion": "networking.trellis.dev/v1alpha1", "kind": "Gateway",
            "metadata": {"name": "shop-gateway", "namespace": "shop"},
            "spec": {"selector": {"app": "gw"}, "servers": [{"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": ["*"]}]},
        }))
        .unwrap();
        index.apply(Change::Applied(crate::index::Object::Gateway(Box::new(gateway))));
        let response = respond(&request(vs(json!(["shop-gateway"]), (90, 10))), &RwLock::new(index));
        assert!(
            response.allowed && response.warnings.is_none(),
            "{:?}",
            response.warnings
        );
    }

    #[test]
    fn the_validators_own_warnings_are_admission_warnings() {
        let mesh = json!({
            "apiVersion": "mesh.trellis.dev/v1alpha1", "kind": "Mesh",
            "metadata": {"name": "other"}, "spec": {},
        });
        let body = fixtures::review(("mesh.trellis.dev", "v1alpha1", "Mesh"), "meshes", None, mesh);
        let request = crate::admission::review(body.to_string().as_bytes()).unwrap();
        let response = respond(&request, &synced_index());
        assert!(response.allowed);
        assert!(response.warnings.unwrap()[0].contains("reconciles the Mesh named \"default\""));
    }

    #[test]
    fn kinds_that_are_not_trellis_are_denied_saying_the_rules_are_wrong() {
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "namespace": "shop"}});
        let body = fixtures::review(("", "v1", "ConfigMap"), "configmaps", Some("shop"), cm);
        let request = crate::admission::review(body.to_string().as_bytes()).unwrap();
        let response = respond(&request, &synced_index());
        assert!(!response.allowed);
        assert!(
            response.result.message.contains("validates Trellis kinds only"),
            "{}",
            response.result.message
        );
    }
}
