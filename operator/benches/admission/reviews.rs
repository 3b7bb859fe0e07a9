//! The AdmissionReview bodies the benchmark sends, as the API server sends them, and the
//! index the webhooks answer from.

use serde_json::{Value, json};
use trellis_operator::index::{Change, Index, Object};
use trellis_operator::snapshot::InputKind;

/// A pod of the one template a ReplicaSet creates (its uid differs from every other pod's).
pub fn pod_review(i: usize) -> Vec<u8> {
    pod_review_value(i).to_string().into_bytes()
}

/// A pod of a template of its own (its `version` label differs from every other pod's), so the
/// injector's memo never answers it.
pub fn distinct_pod_review(i: usize) -> Vec<u8> {
    let mut review = pod_review_value(i);
    review["request"]["object"]["metadata"]["labels"]["version"] = json!(format!("v{i}"));
    review.to_string().into_bytes()
}

fn pod_review_value(i: usize) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": format!("00000000-0000-4000-8000-{i:012}"),
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "shop", "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"generateName": "web-7d4b9c-", "namespace": "shop",
                             "labels": {"app": "web", "version": "v1", "pod-template-hash": "7d4b9c"},
                             "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d4b9c",
                                                  "uid": "3f1f2c1e-0000-4000-8000-000000000000", "controller": true, "blockOwnerDeletion": true}]},
                "spec": {
                    "serviceAccountName": "web",
                    "containers": [{"name": "web", "image": "ghcr.io/trellis-mesh/trellis-testapp:0.1.0",
                                    "env": [{"name": "TESTAPP_SERVICE", "value": "web"}],
                                    "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                                    "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 1},
                                    "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}],
                    "restartPolicy": "Always", "dnsPolicy": "ClusterFirst", "terminationGracePeriodSeconds": 30,
                },
            },
            "oldObject": null, "dryRun": false,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"},
        }
    })
}

/// The demo's payment VirtualService, applied.
pub fn vs_review(i: usize) -> Vec<u8> {
    let routing = trellis_api::document::parse_documents(trellis_manifests::demo::ROUTING);
    let vs = routing
        .iter()
        .filter_map(|d| d.content.clone().ok())
        .find(|o| o["kind"] == "VirtualService" && o["metadata"]["name"] == "payment")
        .unwrap_or(Value::Null);
    json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": format!("00000000-0000-4000-9000-{i:012}"),
            "kind": {"group": "networking.trellis.dev", "version": "v1alpha1", "kind": "VirtualService"},
            "resource": {"group": "networking.trellis.dev", "version": "v1alpha1", "resource": "virtualservices"},
            "namespace": "shop", "operation": "CREATE", "userInfo": {"username": "admin"},
            "object": vs, "oldObject": null, "dryRun": false,
        }
    })
    .to_string()
    .into_bytes()
}

/// A synced index with the demo namespace labelled for injection and its Gateway.
pub fn index() -> Index {
    let mut index = Index::default();
    for kind in InputKind::ALL {
        index.apply(Change::Relisted {
            kind,
            seen: Default::default(),
        });
    }
    let ns: k8s_openapi::api::core::v1::Namespace =
        serde_json::from_value(json!({"metadata": {"name": "shop", "labels": {"trellis.dev/inject": "enabled"}}}))
            .unwrap_or_default();
    index.apply(Change::Applied(Object::Namespace(Box::new(ns))));
    index
}
