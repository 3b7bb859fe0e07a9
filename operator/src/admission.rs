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
//! - [`certificate`]: keeps the server's certificate current (renewal, a new root once the
//!   `caBundle` trusts it, a trust domain change).
//!
//! The decisions are plain functions of an `AdmissionReview` body and plain data (see
//! [`review`]); what the webhook configurations look like is in
//! `trellis_manifests::install::webhooks`.

pub mod ca_bundle;
pub mod certificate;
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
    // why: an AdmissionReview as the API server sends it is decoded in one pass, its request
    // straight into its fields; any body that pass does not take whole (not JSON, another
    // version, a malformed object) is decoded again by `explained`, which says why.
    match serde_json::from_slice::<Envelope>(body) {
        Ok(envelope) => envelope.review().map_or_else(|| explained(body), Ok),
        Err(_) => explained(body),
    }
}

/// An AdmissionReview body decoded in one pass: what [`explained`] accepts, field for field
/// (the request's fields are `AdmissionRequest`'s, with the same defaults), the objects kept
/// as JSON.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope {
    api_version: Option<Value>,
    kind: Option<Value>,
    request: Option<Request>,
    // why: decoding an `AdmissionReview` reads its response too: a body with one that does
    // not decode is refused, here as there.
    #[serde(default)]
    #[allow(dead_code)]
    response: Option<AdmissionResponse>,
}

/// `AdmissionRequest`'s fields, with the objects as JSON.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Request {
    uid: String,
    kind: kube::core::GroupVersionKind,
    resource: kube::core::GroupVersionResource,
    #[serde(default)]
    sub_resource: Option<String>,
    #[serde(default)]
    request_kind: Option<kube::core::GroupVersionKind>,
    #[serde(default)]
    request_resource: Option<kube::core::GroupVersionResource>,
    #[serde(default)]
    request_sub_resource: Option<String>,
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    operation: kube::core::admission::Operation,
    user_info: k8s_openapi::api::authentication::v1::UserInfo,
    object: Option<Value>,
    old_object: Option<Value>,
    #[serde(default)]
    dry_run: bool,
    #[serde(default)]
    options: Option<k8s_openapi::apimachinery::pkg::runtime::RawExtension>,
}

impl Envelope {
    /// The review, when [`explained`] would decode the same one; `None` when it would refuse
    /// the body (and say why).
    fn review(self) -> Option<Review> {
        let is = |v: &Option<Value>, want: &str| v.as_ref().and_then(Value::as_str) == Some(want);
        if !is(&self.api_version, kube::core::admission::META_API_VERSION_V1)
            || !is(&self.kind, kube::core::admission::META_KIND)
        {
            return None;
        }
        let r = self.request?;
        for o in [&r.object, &r.old_object].into_iter().flatten() {
            well_formed(o).ok()?;
        }
        let request = AdmissionRequest {
            types: kube::core::TypeMeta {
                api_version: kube::core::admission::META_API_VERSION_V1.to_string(),
                kind: kube::core::admission::META_KIND.to_string(),
            },
            uid: r.uid,
            kind: r.kind,
            resource: r.resource,
            sub_resource: r.sub_resource,
            request_kind: r.request_kind,
            request_resource: r.request_resource,
            request_sub_resource: r.request_sub_resource,
            name: r.name,
            namespace: r.namespace,
            operation: r.operation,
            user_info: r.user_info,
            object: None,
            old_object: None,
            dry_run: r.dry_run,
            options: r.options,
        };
        Some(Review {
            object: with_namespace(r.object, &request),
            request,
        })
    }
}

/// `object` (none when null), with the request's namespace when it names none.
fn with_namespace(object: Option<Value>, request: &AdmissionRequest<DynamicObject>) -> Option<Value> {
    object.filter(|o| !o.is_null()).map(|mut o| {
        if let (Some(ns), Some(meta)) = (&request.namespace, o.get_mut("metadata").and_then(Value::as_object_mut))
            && !meta.contains_key("namespace")
        {
            meta.insert("namespace".into(), Value::String(ns.clone()));
        }
        o
    })
}

/// [`review`] step by step: each way a body can fail to be a review is said.
fn explained(body: &[u8]) -> Result<Review, (Option<String>, BadReview)> {
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
    Ok(Review {
        object: with_namespace(object, &request),
        request,
    })
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

/// A webhook's answer before it is written: the response, and the JSON patch it carries, as the
/// injector keeps it (the response's own `patch` is then empty).
#[derive(Debug, Clone)]
pub struct Reply {
    /// The response.
    pub response: AdmissionResponse,
    /// Its patch.
    pub patch: Option<inject::Patch>,
}

impl From<AdmissionResponse> for Reply {
    fn from(response: AdmissionResponse) -> Reply {
        Reply { response, patch: None }
    }
}

impl Reply {
    /// The response, its patch in it.
    pub fn into_response(self) -> AdmissionResponse {
        let mut response = self.response;
        if let Some(patch) = self.patch {
            response.patch = Some(patch.to_vec());
        }
        response
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

    /// The review as JSON (its request's type meta included), to compare two decodings.
    fn decoded(r: &Review) -> Value {
        json!({"types": serde_json::to_value(&r.request.types).unwrap(),
               "request": serde_json::to_value(&r.request).unwrap(), "object": r.object})
    }

    #[test]
    fn the_one_pass_decoding_gives_the_step_by_step_review_or_leaves_the_body_to_it() {
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"generateName": "web-", "labels": {"app": "web"}},
                         "spec": {"containers": [{"name": "web", "image": "app:1"}]}});
        let mut bodies = vec![
            fixtures::review(("", "v1", "Pod"), "pods", Some("shop"), pod.clone()),
            fixtures::review(("", "v1", "Pod"), "pods", None, pod.clone()),
            fixtures::review(
                ("networking.trellis.dev", "v1alpha1", "VirtualService"),
                "virtualservices",
                Some("shop"),
                json!({"apiVersion": "networking.trellis.dev/v1alpha1", "kind": "VirtualService",
                       "metadata": {"name": "vs", "namespace": "other"}, "spec": {"hosts": ["a"]}}),
            ),
        ];
        let mut update = bodies[0].clone();
        update["request"]["operation"] = json!("UPDATE");
        update["request"]["oldObject"] = pod.clone();
        update["request"]["dryRun"] = json!(true);
        update["request"]["subResource"] = json!("status");
        update["request"]["userInfo"]["extra"] = json!({"scopes": ["a"]});
        let mut delete = bodies[0].clone();
        delete["request"]["operation"] = json!("DELETE");
        delete["request"]["object"] = Value::Null;
        let mut bare = bodies[0].clone();
        for optional in [
            "requestKind",
            "requestResource",
            "name",
            "namespace",
            "options",
            "dryRun",
            "oldObject",
        ] {
            bare["request"].as_object_mut().unwrap().remove(optional);
        }
        bodies.extend([update, delete, bare]);
        for body in bodies {
            let bytes = body.to_string().into_bytes();
            let fast = serde_json::from_slice::<Envelope>(&bytes)
                .ok()
                .and_then(Envelope::review);
            let fast = fast.unwrap_or_else(|| panic!("not decoded in one pass: {body}"));
            let explained = explained(&bytes).unwrap();
            assert_eq!(decoded(&fast), decoded(&explained), "{body}");
            assert_eq!(decoded(&review(&bytes).unwrap()), decoded(&explained));
        }

        // Bodies the step-by-step decoding refuses are all left to it.
        let mut refused: Vec<Value> = vec![
            json!({"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview", "request": {"uid": "u1"}}),
            json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}),
            json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": "u2", "operation": 7}}),
        ];
        for (field, object) in [
            ("object", json!("a pod")),
            ("object", json!({"metadata": {"labels": 5}})),
            ("oldObject", json!([1])),
        ] {
            let mut body = fixtures::review(("", "v1", "Pod"), "pods", Some("shop"), pod.clone());
            body["request"][field] = object;
            refused.push(body);
        }
        let mut answered = fixtures::review(("", "v1", "Pod"), "pods", Some("shop"), pod.clone());
        answered["response"] = json!({"uid": 1});
        refused.push(answered);
        for body in refused {
            let bytes = body.to_string().into_bytes();
            assert!(explained(&bytes).is_err(), "{body}");
            let fast = serde_json::from_slice::<Envelope>(&bytes)
                .ok()
                .and_then(Envelope::review);
            assert!(fast.is_none(), "decoded in one pass: {body}");
            assert_eq!(review(&bytes).unwrap_err(), explained(&bytes).unwrap_err());
        }
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
