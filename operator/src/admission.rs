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

/// A decoded review: the request, and the object under admission as the API server sent it.
///
/// The object stays JSON: the decisions read it as JSON (the validator) or as the typed parts
/// they need (the injector), so it is never converted to another representation and back.
#[derive(Debug, Clone)]
pub struct Review {
    /// The request. Its `object` and `old_object` are always `None`: the object is in
    /// [`Review::object`], and no webhook reads the old one.
    pub request: AdmissionRequest<DynamicObject>,
    /// The object (`request.object`), with the request's namespace filled in when the object
    /// does not say (the API server fills it in only after admission); `None` when the request
    /// carries none (a DELETE).
    pub object: Option<Value>,
}

/// A decoded review, or why it could not be (with the request's uid when the body had one, so
/// the answer is still a denial the API server matches to its request).
pub fn review(body: &[u8]) -> Result<Review, (Option<String>, BadReview)> {
    let mut value: Value = serde_json::from_slice(body).map_err(|e| (None, BadReview::NotJson(e.to_string())))?;
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
    // why: the objects are taken out before the request is decoded, so they are neither
    // copied into a DynamicObject nor serialized back for the decision (the injector's pod
    // was converted JSON -> DynamicObject -> JSON on every review).
    let (object, old_object) = match value.get_mut("request").and_then(Value::as_object_mut) {
        Some(request) => (request.remove("object"), request.remove("oldObject")),
        None => (None, None),
    };
    for (field, o) in [("object", &object), ("oldObject", &old_object)] {
        if let Some(o) = o {
            well_formed(o).map_err(|e| (uid.clone(), BadReview::NotAReview(format!("request.{field}: {e}"))))?;
        }
    }
    let review: AdmissionReview<DynamicObject> =
        serde_json::from_value(value).map_err(|e| (uid.clone(), BadReview::NotAReview(e.to_string())))?;
    let request: AdmissionRequest<DynamicObject> = review
        .try_into()
        .map_err(|_| (uid, BadReview::NotAReview("it has no request".into())))?;
    let object = object.filter(|o| !o.is_null()).map(|mut o| {
        if let (Some(ns), Some(meta)) = (&request.namespace, o.get_mut("metadata").and_then(Value::as_object_mut))
            && !meta.contains_key("namespace")
        {
            meta.insert("namespace".into(), Value::String(ns.clone()));
        }
        o
    });
    Ok(Review { request, object })
}

/// Whether `object` is what the API server sends as an object under admission: null, or a
/// mapping whose `metadata` (when there is one) is object metadata — what decoding it as a
/// `DynamicObject` required.
fn well_formed(object: &Value) -> Result<(), String> {
    use serde::Deserialize as _;
    match object {
        Value::Null => Ok(()),
        Value::Object(map) => match map.get("metadata") {
            None => Ok(()),
            Some(meta) => k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta::deserialize(meta)
                .map(drop)
                .map_err(|e| format!("metadata: {e}")),
        },
        _ => Err("not a mapping; an object under admission is a Kubernetes object".into()),
    }
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

        // Objects that are not Kubernetes objects: refused as decoding them used to refuse them.
        for (object, says) in [
            (json!("a pod"), "request.object: not a mapping"),
            (json!({"metadata": {"labels": 5}}), "request.object: metadata: "),
            (json!({"metadata": null}), "request.object: metadata: "),
        ] {
            let body = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                "request": {"uid": "u3", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                            "resource": {"group": "", "version": "v1", "resource": "pods"},
                            "operation": "CREATE", "userInfo": {}, "object": object}});
            let (uid, why) = review(body.to_string().as_bytes()).unwrap_err();
            assert_eq!(uid.as_deref(), Some("u3"));
            assert!(why.to_string().contains(says), "{why}");
        }
        let mut old = fixtures::review(
            ("", "v1", "Pod"),
            "pods",
            Some("shop"),
            json!({"metadata": {"name": "p"}}),
        );
        old["request"]["oldObject"] = json!([1]);
        let (_, why) = review(old.to_string().as_bytes()).unwrap_err();
        assert!(why.to_string().contains("request.oldObject: not a mapping"), "{why}");
    }

    #[test]
    fn objects_get_the_request_namespace() {
        let body = fixtures::review(
            ("networking.trellis.dev", "v1alpha1", "VirtualService"),
            "virtualservices",
            Some("shop"),
            json!({"apiVersion": "networking.trellis.dev/v1alpha1", "kind": "VirtualService", "metadata": {"name": "vs"}, "spec": {}}),
        );
        let review = review(body.to_string().as_bytes()).unwrap();
        assert_eq!(review.object.unwrap()["metadata"]["namespace"], "shop");
        assert!(review.request.object.is_none() && review.request.old_object.is_none());
    }
}
