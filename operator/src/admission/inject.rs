//! The sidecar injector: a pod being created gets the one sidecar template
//! (`trellis_manifests::sidecar::inject`), returned as a JSON patch.
//!
//! Who is injected: pods in namespaces labelled `trellis.dev/inject=enabled`, and pods labelled
//! so in namespaces that say neither; `disabled` on the pod or its namespace, and the system
//! namespaces, are left alone. The webhook configuration's selectors already say this to the
//! API server; [`decide`] checks it again, so a configuration with broader selectors (edited
//! by hand, or rewritten by a bundle manager) meshes nothing it should not.
//!
//! The image: the pod's `trellis.dev/proxy-image` annotation (the rollout sets it per
//! workload), else the Mesh's `spec.versions.proxy` as the last valid Mesh says it (an invalid
//! Mesh changes neither the image nor the trust domain), else the operator's default. What was
//! injected is recorded on the pod (see `trellis_manifests::sidecar`).
//!
//! Pods that cannot be meshed get a reason: `hostNetwork` pods are admitted unmeshed, with a
//! warning and the label [`SKIPPED_LABEL`] (the only change the patch makes to them), from
//! which [`super::skipped`] publishes an event once the pod exists — the webhook itself has no
//! side effect (`sideEffects: None`); a container running as the proxy's UID, a container
//! named like the sidecar that Trellis did not inject, and bad annotations are denied with the
//! fix. Idempotent: a pod already injected (a reinvocation, or a copy of a meshed pod) is
//! admitted unchanged. Pods of Deployments, StatefulSets, DaemonSets and Jobs arrive alike,
//! often with `generateName` and no name.
//!
//! The pods of one scale-up are identical at admission: [`memo`] decides the first and answers
//! the others from it (the typed pod, the template and the JSON patch cost a fifth of a
//! millisecond; comparing a pod's JSON with a remembered one a few microseconds).

pub mod memo;
mod patch;

pub use patch::Patch;

use std::collections::BTreeMap;
use std::sync::{PoisonError, RwLock};

use k8s_openapi::api::core::v1::{PodSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, Operation};
use serde::Deserialize as _;
use serde_json::Value;
use trellis_manifests::sidecar::{self, INJECT_DISABLED, INJECT_ENABLED, INJECT_LABEL, InjectError, Settings};

use crate::index::Index;
use crate::settings::Settings as MeshSettings;

/// The label the injector puts on a pod it admits without a sidecar, its value saying why
/// ([`SKIPPED_HOST_NETWORK`]); `kubectl get pods -l trellis.dev/injection-skipped` lists them.
pub const SKIPPED_LABEL: &str = "trellis.dev/injection-skipped";
/// The value of [`SKIPPED_LABEL`] on a `hostNetwork` pod.
pub const SKIPPED_HOST_NETWORK: &str = "hostNetwork";

/// What the injector does with one pod.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Mesh it with this patch.
    Inject {
        /// The JSON patch to the pod.
        patch: json_patch::Patch,
        /// The proxy image injected.
        image: String,
    },
    /// Admit it unchanged; why (for the log).
    Unchanged(String),
    /// Admit it unmeshed, telling the user why (a warning, and [`SKIPPED_LABEL`] that the
    /// event is published from).
    Skip {
        /// Why.
        why: String,
        /// The JSON patch adding [`SKIPPED_LABEL`] (empty when the pod already has it).
        patch: json_patch::Patch,
    },
    /// Refuse it, saying how to fix it.
    Deny(String),
}

/// A [`Decision`] as the webhook answers it: its patch serialized (what [`memo::Memo`] keeps).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Mesh it with this JSON patch.
    Inject {
        /// The JSON patch.
        patch: Patch,
        /// The proxy image injected.
        image: String,
    },
    /// Admit it unchanged; why (for the log).
    Unchanged(String),
    /// Admit it unmeshed, with a warning saying why.
    Skip {
        /// Why.
        why: String,
        /// The JSON patch adding [`SKIPPED_LABEL`]; `None` when the pod has it.
        patch: Option<Patch>,
    },
    /// Refuse it.
    Deny {
        /// Why, and how to fix it.
        why: String,
        /// The HTTP status code the API server reports.
        code: u16,
    },
}

impl Answer {
    /// `decision`, its patch serialized.
    pub fn of(decision: Decision) -> Answer {
        let serialized = |patch: &json_patch::Patch| {
            serde_json::to_vec(patch)
                .and_then(Patch::new)
                .map_err(|e| Answer::Deny {
                    why: format!("the injection patch does not serialize: {e}"),
                    code: 500,
                })
        };
        match decision {
            Decision::Inject { patch, image } => match serialized(&patch) {
                Ok(patch) => Answer::Inject { patch, image },
                Err(denied) => denied,
            },
            Decision::Unchanged(why) => Answer::Unchanged(why),
            Decision::Skip { why, patch } if patch.0.is_empty() => Answer::Skip { why, patch: None },
            Decision::Skip { why, patch } => match serialized(&patch) {
                Ok(patch) => Answer::Skip {
                    why,
                    patch: Some(patch),
                },
                Err(denied) => denied,
            },
            Decision::Deny(why) => Answer::Deny { why, code: 400 },
        }
    }
}

/// The sidecar settings in force: `defaults` with the proxy image and the trust domain (a new
/// pod asks for its first certificate in it) of the Mesh's settings `mesh` — the last valid
/// Mesh's, as this replica follows them ([`crate::index::settings::follow`]).
pub fn settings(defaults: &Settings, mesh: &MeshSettings) -> Settings {
    let mut settings = defaults.clone();
    settings.trust_domain.clone_from(&mesh.trust_domain);
    settings.proxy_image.clone_from(&mesh.proxy_image);
    settings
}

fn label(labels: Option<&BTreeMap<String, String>>) -> Option<&str> {
    labels.and_then(|l| l.get(INJECT_LABEL)).map(String::as_str)
}

/// Decide for `pod` (the request's object) in `namespace`, whose labels are known when the
/// index has seen the namespace. `system` are the namespaces never injected.
pub fn decide(
    pod: &Value,
    namespace: &str,
    namespace_labels: Option<&BTreeMap<String, String>>,
    system: &[&str],
    settings: &Settings,
) -> Decision {
    // why: the typed parts are read from the review's JSON in place (no copy of the pod), and
    // the template is injected in place: the patch is the difference between its JSON before
    // and after, so nothing the typed pod does not hold is ever touched.
    let mut template = PodTemplateSpec {
        metadata: pod.get("metadata").and_then(|m| ObjectMeta::deserialize(m).ok()),
        spec: match pod.get("spec").map(PodSpec::deserialize) {
            Some(Ok(spec)) => Some(spec),
            Some(Err(e)) => return Decision::Deny(format!("the pod's spec does not parse: {e}")),
            None => return Decision::Deny("the pod has no spec".into()),
        },
    };
    let pod_label = label(template.metadata.as_ref().and_then(|m| m.labels.as_ref()));
    let namespace_label = label(namespace_labels);
    if system.contains(&namespace) {
        return Decision::Unchanged(format!("namespace {namespace} is never injected"));
    }
    if pod_label == Some(INJECT_DISABLED) || namespace_label == Some(INJECT_DISABLED) {
        return Decision::Unchanged(format!("{INJECT_LABEL}={INJECT_DISABLED}"));
    }
    // Unknown namespace labels (the index has not seen it yet): the API server matched the
    // webhook's namespace selector.
    let selected =
        pod_label == Some(INJECT_ENABLED) || namespace_labels.is_none() || namespace_label == Some(INJECT_ENABLED);
    if !selected {
        return Decision::Unchanged(format!(
            "neither the pod nor namespace {namespace} is labelled {INJECT_LABEL}={INJECT_ENABLED}"
        ));
    }
    if sidecar::is_injected(&template) {
        return Decision::Unchanged("already injected".into());
    }
    let json = |t: &PodTemplateSpec| serde_json::to_value(t).unwrap_or(Value::Null);
    let before = json(&template);
    // `inject` changes the template only when it succeeds (an absent metadata aside, which it
    // makes empty: the label below needs it anyway).
    match sidecar::inject(&mut template, settings) {
        Ok(()) => {}
        Err(InjectError::HostNetwork) => {
            template
                .metadata
                .get_or_insert_default()
                .labels
                .get_or_insert_default()
                .insert(SKIPPED_LABEL.into(), SKIPPED_HOST_NETWORK.into());
            return Decision::Skip {
                why: InjectError::HostNetwork.to_string(),
                patch: json_patch::diff(&before, &json(&template)),
            };
        }
        Err(e) => return Decision::Deny(e.to_string()),
    }
    let patch = json_patch::diff(&before, &json(&template));
    let image = template
        .metadata
        .as_ref()
        .and_then(|m| m.annotations.as_ref())
        .and_then(|a| a.get(sidecar::PROXY_IMAGE_ANNOTATION))
        .cloned()
        .unwrap_or_else(|| settings.proxy_image.clone());
    Decision::Inject { patch, image }
}

/// The answer to one injection request, from `memo` when it decided the same pod before; its
/// patch, if any, in the response's `patch`.
pub fn respond(
    review: &super::Review,
    index: &RwLock<Index>,
    (defaults, mesh): (&Settings, &MeshSettings),
    memo: &memo::Memo,
) -> AdmissionResponse {
    reply(review, index, (defaults, mesh), memo).into_response()
}

/// The answer to one injection request, from `memo` when it decided the same pod before, its
/// patch as the memo keeps it (what the server writes).
///
/// `defaults` are the sidecar's settings where `mesh`, the Mesh's valid settings, say nothing.
/// The index is read only for the namespace's labels, not held while deciding: a reader
/// holding it keeps the index's writer waiting, and every review after it.
pub fn reply(
    review: &super::Review,
    index: &RwLock<Index>,
    (defaults, mesh): (&Settings, &MeshSettings),
    memo: &memo::Memo,
) -> super::Reply {
    let request = &review.request;
    if !request.kind.group.is_empty() || request.kind.kind != "Pod" {
        let why = format!(
            "webhook {} injects pods only, not {} {}: fix the webhook configuration's rules",
            trellis_manifests::install::webhooks::NAMESPACE_INJECTION_WEBHOOK,
            request.kind.group,
            request.kind.kind
        );
        return super::deny(request, why, 400).into();
    }
    if request.operation != Operation::Create {
        return AdmissionResponse::from(request).into();
    }
    let Some(pod) = &review.object else {
        return super::deny(request, "the CREATE request carries no pod", 400).into();
    };
    let namespace = request.namespace.clone().unwrap_or_else(|| "default".into());
    let namespace_labels = index
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .namespace_labels(&namespace)
        .cloned();
    let settings = settings(defaults, mesh);
    let system = [defaults.control_plane_namespace.as_str(), "kube-system"];
    let who = format!(
        "pod {namespace}/{}",
        pod.pointer("/metadata/name")
            .and_then(Value::as_str)
            .map(str::to_string)
            .or_else(|| pod
                .pointer("/metadata/generateName")
                .and_then(Value::as_str)
                .map(|g| format!("{g}*")))
            .unwrap_or_else(|| "<no name>".into())
    );
    let answer = memo.answer(pod, &namespace, namespace_labels.as_ref(), &system, &settings);
    match answer.as_ref() {
        Answer::Inject { patch, image } => {
            tracing::debug!(%who, %image, dry_run = request.dry_run, "injecting the sidecar");
            patched(request, AdmissionResponse::from(request), patch)
        }
        Answer::Unchanged(why) => {
            tracing::debug!(%who, %why, "admitted without injection");
            AdmissionResponse::from(request).into()
        }
        Answer::Skip { why, patch } => {
            tracing::info!(%who, %why, dry_run = request.dry_run, "sidecar injection skipped");
            let mut response = AdmissionResponse::from(request);
            response.warnings = Some(vec![format!("{who} was admitted without a Trellis sidecar: {why}")]);
            match patch {
                Some(patch) => patched(request, response, patch),
                None => response.into(),
            }
        }
        Answer::Deny { why, code } => {
            tracing::info!(%who, %why, "sidecar injection refused");
            super::deny(request, format!("{who}: {why}"), *code).into()
        }
    }
}

/// `response` with the JSON patch `patch`.
fn patched(request: &AdmissionRequest<DynamicObject>, response: AdmissionResponse, patch: &Patch) -> super::Reply {
    // why: kube sets the patch type only with a patch to serialize; the reply carries the patch
    // itself (kept by the memo), not kube's copy of the empty one given for the type.
    match response.with_patch(json_patch::Patch(Vec::new())) {
        Ok(mut response) => {
            response.patch = None;
            super::Reply {
                response,
                patch: Some(patch.clone()),
            }
        }
        Err(e) => super::deny(request, format!("the injection patch does not serialize: {e}"), 500).into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::fixtures;
    use serde_json::json;
    use trellis_manifests::install::Options;
    use trellis_manifests::sidecar::{INIT_CONTAINER, PROXY_CONTAINER, PROXY_UID, PROXY_VERSION_LABEL};

    const SYSTEM: [&str; 2] = ["trellis-system", "kube-system"];

    fn defaults() -> Settings {
        Settings::new(&Options::default())
    }

    /// The Mesh's settings with `defaults()`' image where the Mesh (`spec`; `None`: no Mesh)
    /// names none.
    fn mesh(spec: Option<Value>) -> MeshSettings {
        let defaults = crate::settings::Defaults {
            proxy_image: defaults().proxy_image,
            ..Default::default()
        };
        let spec = spec.map(|s| serde_json::from_value(s).unwrap());
        MeshSettings::in_force(spec.as_ref(), &defaults)
    }

    fn pod(labels: Value, extra_spec: Value) -> Value {
        let mut spec = json!({
            "serviceAccountName": "web",
            "containers": [{"name": "web", "image": "app:1", "ports": [{"name": "http", "containerPort": 8080}],
                            "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}}}],
        });
        if let (Some(s), Some(extra)) = (spec.as_object_mut(), extra_spec.as_object()) {
            s.extend(extra.clone());
        }
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"generateName": "web-7d4b9c-", "namespace": "shop", "labels": labels,
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d4b9c", "uid": "rs-uid", "controller": true}]},
            "spec": spec,
        })
    }

    fn ns(value: &str) -> BTreeMap<String, String> {
        BTreeMap::from([(INJECT_LABEL.to_string(), value.to_string())])
    }

    fn patched(pod: &Value, decision: Decision) -> Value {
        let Decision::Inject { patch, .. } = decision else {
            panic!("not injected: {decision:?}");
        };
        let mut out = pod.clone();
        json_patch::patch(&mut out, &patch).unwrap();
        out
    }

    #[test]
    fn pods_in_labelled_namespaces_are_meshed_by_a_patch_that_keeps_everything_else() {
        let p = pod(
            json!({"app": "web"}),
            json!({"tolerations": [{"key": "k", "operator": "Exists"}]}),
        );
        let out = patched(&p, decide(&p, "shop", Some(&ns("enabled")), &SYSTEM, &defaults()));
        let init: Vec<_> = out["spec"]["initContainers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(init, [INIT_CONTAINER, PROXY_CONTAINER]);
        assert_eq!(out["metadata"]["generateName"], "web-7d4b9c-");
        assert_eq!(out["metadata"]["ownerReferences"][0]["name"], "web-7d4b9c");
        assert_eq!(out["spec"]["tolerations"][0]["key"], "k");
        assert_eq!(
            out["spec"]["containers"][0]["readinessProbe"]["httpGet"]["path"],
            "/app-health/web/readyz"
        );
        assert_eq!(
            out["metadata"]["labels"][PROXY_VERSION_LABEL],
            env!("CARGO_PKG_VERSION")
        );
        // Reinvocation: the injected pod is left as it is.
        assert_eq!(
            decide(&out, "shop", Some(&ns("enabled")), &SYSTEM, &defaults()),
            Decision::Unchanged("already injected".into())
        );
    }

    #[test]
    fn pods_of_statefulsets_daemonsets_and_jobs_are_meshed() {
        for (kind, api_version, name, generate_name, restart) in [
            ("StatefulSet", "apps/v1", Some("db-0"), None, "Always"),
            ("DaemonSet", "apps/v1", None, Some("agent-"), "Always"),
            ("Job", "batch/v1", None, Some("migrate-"), "Never"),
        ] {
            let mut p = pod(json!({"app": "x"}), json!({"restartPolicy": restart}));
            let meta = p["metadata"].as_object_mut().unwrap();
            meta.remove("generateName");
            if let Some(n) = name {
                meta.insert("name".into(), json!(n));
            }
            if let Some(g) = generate_name {
                meta.insert("generateName".into(), json!(g));
            }
            meta.insert(
                "ownerReferences".into(),
                json!([{"apiVersion": api_version, "kind": kind, "name": "owner", "uid": "u", "controller": true}]),
            );
            let out = patched(&p, decide(&p, "shop", Some(&ns("enabled")), &SYSTEM, &defaults()));
            // A native sidecar (restartPolicy Always on an init container) ends after the
            // main containers, so a Job's pod still completes.
            assert_eq!(out["spec"]["initContainers"][1]["restartPolicy"], "Always", "{kind}");
            assert_eq!(out["spec"]["restartPolicy"], restart, "{kind}");
        }
    }

    #[test]
    fn labels_on_pods_and_namespaces_select_and_opt_out() {
        let plain = pod(json!({"app": "web"}), json!({}));
        let enabled = pod(json!({"app": "web", INJECT_LABEL: "enabled"}), json!({}));
        let disabled = pod(json!({"app": "web", INJECT_LABEL: "disabled"}), json!({}));
        let d = defaults();
        assert!(matches!(
            decide(&enabled, "plain", Some(&BTreeMap::new()), &SYSTEM, &d),
            Decision::Inject { .. }
        ));
        assert!(matches!(
            decide(&plain, "plain", Some(&BTreeMap::new()), &SYSTEM, &d),
            Decision::Unchanged(_)
        ));
        assert!(matches!(
            decide(&disabled, "shop", Some(&ns("enabled")), &SYSTEM, &d),
            Decision::Unchanged(_)
        ));
        assert!(matches!(
            decide(&enabled, "off", Some(&ns("disabled")), &SYSTEM, &d),
            Decision::Unchanged(_)
        ));
        assert!(matches!(
            decide(&enabled, "kube-system", None, &SYSTEM, &d),
            Decision::Unchanged(_)
        ));
        // A namespace the index has not seen yet: the API server's selector matched it.
        assert!(matches!(
            decide(&plain, "new", None, &SYSTEM, &d),
            Decision::Inject { .. }
        ));
    }

    #[test]
    fn the_image_comes_from_the_pod_then_the_mesh_then_the_default() {
        let from_mesh = settings(
            &defaults(),
            &mesh(Some(json!({"versions": {"proxy": "mesh.example/trellis-proxy:0.3.0"}}))),
        );
        let p = pod(json!({}), json!({}));
        let Decision::Inject { image, .. } = decide(&p, "shop", None, &SYSTEM, &from_mesh) else {
            panic!()
        };
        assert_eq!(image, "mesh.example/trellis-proxy:0.3.0");
        let mut pinned = p.clone();
        pinned["metadata"]["annotations"] = json!({"trellis.dev/proxy-image": "pinned/trellis-proxy:0.2.9"});
        let out = patched(&pinned, decide(&pinned, "shop", None, &SYSTEM, &from_mesh));
        assert_eq!(out["spec"]["initContainers"][1]["image"], "pinned/trellis-proxy:0.2.9");
        assert_eq!(out["metadata"]["labels"][PROXY_VERSION_LABEL], "0.2.9");
        assert_eq!(settings(&defaults(), &mesh(None)).proxy_image, defaults().proxy_image);
        assert_eq!(
            settings(&defaults(), &mesh(Some(json!({"trustDomain": "new.example"})))).trust_domain,
            "new.example",
            "a pod meshed after a trust domain change asks for its first certificate in the new one"
        );
    }

    #[test]
    fn host_network_is_skipped_and_the_proxy_uid_is_denied_with_the_fix() {
        let host = pod(json!({}), json!({"hostNetwork": true}));
        let Decision::Skip { why, patch } = decide(&host, "shop", None, &SYSTEM, &defaults()) else {
            panic!()
        };
        assert!(why.contains("hostNetwork"), "{why}");
        // The patch only labels the pod: no sidecar, nothing else changed.
        let mut marked = host.clone();
        json_patch::patch(&mut marked, &patch).unwrap();
        let mut expected = host.clone();
        expected["metadata"]["labels"] = json!({SKIPPED_LABEL: SKIPPED_HOST_NETWORK});
        assert_eq!(marked, expected);
        // Decided again (a reinvocation): nothing more to change.
        let Decision::Skip { patch, .. } = decide(&marked, "shop", None, &SYSTEM, &defaults()) else {
            panic!()
        };
        assert!(patch.0.is_empty(), "{patch:?}");
        let uid = pod(json!({}), json!({"securityContext": {"runAsUser": PROXY_UID}}));
        let Decision::Deny(why) = decide(&uid, "shop", None, &SYSTEM, &defaults()) else {
            panic!()
        };
        assert!(why.contains("1337") && why.contains("runAsUser"), "{why}");
        let mut foreign = pod(json!({}), json!({}));
        foreign["spec"]["containers"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": PROXY_CONTAINER, "image": "someone/else"}));
        let Decision::Deny(why) = decide(&foreign, "shop", None, &SYSTEM, &defaults()) else {
            panic!()
        };
        assert!(why.contains("did not inject"), "{why}");
    }

    fn request(object: Value, dry_run: bool) -> crate::admission::Review {
        let mut body = fixtures::review(("", "v1", "Pod"), "pods", Some("shop"), object);
        body["request"]["dryRun"] = json!(dry_run);
        crate::admission::review(body.to_string().as_bytes()).unwrap()
    }

    /// The answer of a fresh injector (nothing remembered) with an empty index.
    fn answer(review: &crate::admission::Review) -> AdmissionResponse {
        respond(
            review,
            &RwLock::new(Index::default()),
            (&defaults(), &mesh(None)),
            &memo::Memo::default(),
        )
    }

    #[test]
    fn skipped_pods_get_a_warning_and_the_label_alike_on_dry_runs() {
        let host = pod(json!({}), json!({"hostNetwork": true}));
        for dry_run in [false, true] {
            let response = answer(&request(host.clone(), dry_run));
            assert!(response.allowed, "{response:?}");
            assert!(response.warnings.as_ref().unwrap()[0].contains("pod shop/web-7d4b9c-*"));
            let patch: Value = serde_json::from_slice(response.patch.as_ref().unwrap()).unwrap();
            assert_eq!(patch[0]["op"], "add", "{patch}");
            assert_eq!(patch.as_array().unwrap().len(), 1, "only the label: {patch}");
            let path = format!("/metadata/labels/{}", SKIPPED_LABEL.replace('/', "~1"));
            assert_eq!(patch[0]["path"], path, "{patch}");
            assert_eq!(patch[0]["value"], SKIPPED_HOST_NETWORK, "{patch}");
        }
        // A dry run is answered like the real thing.
        let dry = answer(&request(pod(json!({}), json!({})), true));
        assert!(dry.allowed && dry.patch.is_some());
    }

    #[test]
    fn a_mesh_or_namespace_change_reaches_pods_answered_before() {
        use crate::index::{Change, Object};
        let (index, memo) = (RwLock::new(Index::default()), memo::Memo::default());
        let review = request(pod(json!({}), json!({})), false);
        let patch_of =
            |r: &AdmissionResponse| String::from_utf8_lossy(r.patch.as_deref().unwrap_or_default()).into_owned();
        let settings = mesh(None);
        let first = respond(&review, &index, (&defaults(), &settings), &memo);
        assert!(
            patch_of(&first).contains(&defaults().proxy_image),
            "{}",
            patch_of(&first)
        );
        assert_eq!(
            patch_of(&respond(&review, &index, (&defaults(), &settings), &memo)),
            patch_of(&first)
        );
        assert_eq!(memo.counts(), (1, 1), "the same pod again is remembered");

        let settings = mesh(Some(json!({"versions": {"proxy": "mesh.example/trellis-proxy:0.3.0"}})));
        let upgraded = respond(&review, &index, (&defaults(), &settings), &memo);
        assert!(
            patch_of(&upgraded).contains("mesh.example/trellis-proxy:0.3.0")
                && !patch_of(&upgraded).contains(&defaults().proxy_image),
            "{}",
            patch_of(&upgraded)
        );

        let namespace: k8s_openapi::api::core::v1::Namespace =
            serde_json::from_value(json!({"metadata": {"name": "shop", "labels": {INJECT_LABEL: INJECT_DISABLED}}}))
                .unwrap();
        index
            .write()
            .unwrap()
            .apply(Change::Applied(Object::Namespace(Box::new(namespace))));
        let opted_out = respond(&review, &index, (&defaults(), &settings), &memo);
        assert!(opted_out.allowed && opted_out.patch.is_none(), "{opted_out:?}");
    }

    #[test]
    fn bad_annotations_and_other_kinds_are_denied_clearly() {
        let mut p = pod(json!({}), json!({}));
        p["metadata"]["annotations"] = json!({"sidecar.trellis.dev/proxyCPU": "lots"});
        let response = answer(&request(p, false));
        assert!(!response.allowed);
        assert!(
            response.result.message.contains("sidecar.trellis.dev/proxyCPU"),
            "{}",
            response.result.message
        );

        let body = fixtures::review(
            ("apps", "v1", "Deployment"),
            "deployments",
            Some("shop"),
            json!({"metadata": {"name": "d"}}),
        );
        let req = crate::admission::review(body.to_string().as_bytes()).unwrap();
        let response = answer(&req);
        assert!(!response.allowed && response.result.message.contains("injects pods only"));
    }
}
