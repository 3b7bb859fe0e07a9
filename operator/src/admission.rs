//! The admission webhooks the operator serves on port 15017 (every replica serves them):
//!
//! - [`validate`]: every Trellis kind through the one validator (`trellis_api::validation`);
//!   errors deny with object, field path and fix, warnings — and cross-object problems the
//!   validator cannot see alone, checked against the operator's index — become admission
//!   warnings that `kubectl` prints.
//! - [`inject`]: pods get the one sidecar template (`trellis_manifests::sidecar::inject`) as a
//!   JSON patch; skipped and refused pods get a reason.
//! - [`server`]: the HTTPS server (certificate from the mesh CA, reissued in place), body
//!   limits, routing, and the time of every answer; its only I/O. Answering has no side
//!   effect (`sideEffects: None`).
//! - [`skipped`]: the events about pods the injector skipped, published by the leader once
//!   the pods exist (from the label the injector's patch gives them).
//! - [`ca_bundle`]: keeps the `caBundle` of the webhook configurations equal to the mesh trust
//!   bundle.
//!
//! The decisions are plain functions of an `AdmissionReview` body and plain data (see
//! [`review`]); what the webhook configurations look like is in
//! `trellis_manifests::install::webhooks`.

pub mod ca_bundle;
pub mod inject;
pub mod server;
pub mod skipped;
pub mod validate;

use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use serde_json::Value;

/// The largest AdmissionReview body read.
// why: the API server takes request bodies up to 3 MiB and an UPDATE review carries the object
// twice (object and oldObject) plus metadata: 7 MiB holds any review a real API server sends,
// and bounds what a caller can make the operator buffer.
pub const MAX_BODY_BYTES: usize = 7 * 1024 * 1024;

/// A body that is not an AdmissionReview the webhook can answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadReview {
    /// Not JSON at all.
    #[error("the body is not JSON: {0}; send an admission.k8s.io/v1 AdmissionReview")]
    NotJson(String),
    /// JSON, but not an AdmissionReview with a request.
    #[error("the body is not an admission.k8s.io/v1 AdmissionReview with a request: {0}")]
    NotAReview(String),
}

/// A decoded review, or why it could not be (with the request's uid when the body had one, so
/// the answer is still a denial the API server matches to its request).
pub fn review(body: &[u8]) -> Result<AdmissionRequest<DynamicObject>, (Option<String>, BadReview)> {
    let value: Value = serde_json::from_slice(body).map_err(|e| (None, BadReview::NotJson(e.to_string())))?;
    let uid = value
        .pointer("/request/uid")
        .and_then(Value::as_str)
        .map(str::to_string);
    if value.get("apiVersion").and_then(Value::as_str) != Some("admission.k8s.io/v1")
        || value.get("kind").and_then(Value::as_str) != Some("AdmissionReview")
    {
        return Err((
            uid,
            BadReview::NotAReview(format!(
                "apiVersion {} kind {}; the webhook speaks admission.k8s.io/v1 only (admissionReviewVersions: [v1])",
                value.get("apiVersion").unwrap_or(&Value::Null),
                value.get("kind").unwrap_or(&Value::Null)
            )),
        ));
    }
    let review: AdmissionReview<DynamicObject> =
        serde_json::from_value(value).map_err(|e| (uid.clone(), BadReview::NotAReview(e.to_string())))?;
    review
        .try_into()
        .map_err(|_| (uid, BadReview::NotAReview("it has no request".into())))
}

/// The response to a body [`review`] refused: a denial carrying the request's uid when there
/// was one.
pub fn refusal(uid: Option<String>, why: &BadReview) -> AdmissionResponse {
    let mut response = AdmissionResponse::invalid(why);
    if let Some(uid) = uid {
        response.uid = uid;
    }
    response
}

/// A denial, its message as `kubectl` shows it after `denied the request: `, with the HTTP
/// status code the API server reports (the default 403 is `Forbidden`).
pub fn deny(request: &AdmissionRequest<DynamicObject>, message: impl ToString, code: u16) -> AdmissionResponse {
    let mut response = AdmissionResponse::from(request).deny(message);
    response.result.code = code;
    response
}

/// The object of a request as JSON, with the request's namespace filled in when the object
/// does not say (the API server fills it in only after admission).
pub fn object_json(request: &AdmissionRequest<DynamicObject>) -> Option<Value> {
    let object = request.object.as_ref()?;
    let mut value = serde_json::to_value(object).ok()?;
    if let (Some(ns), Some(meta)) = (
        &request.namespace,
        value.get_mut("metadata").and_then(Value::as_object_mut),
    ) && !meta.contains_key("namespace")
    {
        meta.insert("namespace".into(), Value::String(ns.clone()));
    }
    Some(value)
}

#[cfg(test)]
pub(crate) mod fixtures {
    //! AdmissionReview bodies as the API server sends them.

    use serde_json::{Value, json};

    /// A review of `operation` on `object` (of `group/version/kind`, resource `resource`).
    pub fn review(kind: (&str, &str, &str), resource: &str, namespace: Option<&str>, object: Value) -> Value {
        let (group, version, kind) = kind;
        let mut request = json!({
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": group, "version": version, "kind": kind},
            "resource": {"group": group, "version": version, "resource": resource},
            "requestKind": {"group": group, "version": version, "kind": kind},
            "requestResource": {"group": group, "version": version, "resource": resource},
            "name": object.pointer("/metadata/name").cloned().unwrap_or(json!("")),
            "operation": "CREATE",
            "userInfo": {"username": "admin", "groups": ["system:authenticated"]},
            "object": object,
            "oldObject": null,
            "dryRun": false,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"},
        });
        if let Some(ns) = namespace {
            request["namespace"] = json!(ns);
        }
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request})
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn malformed_bodies_are_explained_and_keep_the_uid_when_there_is_one() {
        let (uid, why) = review(b"{not json").unwrap_err();
        assert_eq!(uid, None);
        assert!(why.to_string().contains("not JSON"), "{why}");

        let (uid, why) = review(
            br#"{"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview", "request": {"uid": "u1"}}"#,
        )
        .unwrap_err();
        assert_eq!(uid.as_deref(), Some("u1"));
        assert!(why.to_string().contains("admission.k8s.io/v1 only"), "{why}");

        let (uid, why) = review(br#"{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": "u2", "operation": 7}}"#)
            .unwrap_err();
        assert_eq!(uid.as_deref(), Some("u2"));
        assert!(matches!(why, BadReview::NotAReview(_)));
        let denied = refusal(uid, &why);
        assert!(!denied.allowed);
        assert_eq!(denied.uid, "u2");

        let (_, why) = review(br#"{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}"#).unwrap_err();
        assert!(why.to_string().contains("no request"), "{why}");
    }

    #[test]
    fn objects_get_the_request_namespace() {
        let body = fixtures::review(
            ("networking.trellis.dev", "v1alpha1", "VirtualService"),
            "virtualservices",
            Some("shop"),
            json!({"apiVersion": "networking.trellis.dev/v1alpha1", "kind": "VirtualService", "metadata": {"name": "vs"}, "spec": {}}),
        );
        let request = review(body.to_string().as_bytes()).unwrap();
        assert_eq!(object_json(&request).unwrap()["metadata"]["namespace"], "shop");
    }
}
