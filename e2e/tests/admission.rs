//! Admission webhooks called by kubesim over HTTPS: a mutating webhook
//! injects a label into pods of labelled namespaces (including pods the
//! ReplicaSet controller creates), a validating webhook denies objects and
//! deletions with a message kubectl shows, and failurePolicy decides what
//! an unreachable webhook means.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use anyhow::{Context as _, Result};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use serde_json::{Value, json};
use trellis_e2e::admission::encode_patch;
use trellis_e2e::harness::{TestCluster, kubectl_command_at};
use trellis_e2e::pki::{ServingIdentity, base64_encode};

fn respond(review: &Value, path: &str) -> Value {
    let req = &review["request"];
    let uid = req["uid"].clone();
    let labels = |o: &Value| o.pointer("/metadata/labels").cloned().unwrap_or(json!({}));
    let mut response = json!({"uid": uid, "allowed": true});
    match path {
        "/mutate" if req["kind"]["kind"] == "Pod" => {
            let ops = if req.pointer("/object/metadata/labels").is_some() {
                json!([{"op": "add", "path": "/metadata/labels/trellis.dev~1injected", "value": "true"}])
            } else {
                json!([{"op": "add", "path": "/metadata/labels", "value": {"trellis.dev/injected": "true"}}])
            };
            response["patch"] = json!(encode_patch(&ops));
            response["patchType"] = json!("JSONPatch");
        }
        "/validate" => {
            if labels(&req["object"])["deny"] == "true" {
                response["allowed"] = json!(false);
                response["status"] = json!({"code": 403, "message": "configmaps labelled deny=true are refused"});
            }
            if req["operation"] == "DELETE" && labels(&req["oldObject"])["protect"] == "true" {
                response["allowed"] = json!(false);
                response["status"] = json!({"message": "this configmap is protected"});
            }
        }
        _ => {}
    }
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response})
}

/// The kubeconfig and state directory of the cluster the webhook writes to.
static CLUSTER: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();

/// A DELETE of a ConfigMap labelled `touch-on-delete=true` that nobody has
/// touched yet: the webhook annotates it while the deletion waits, so the
/// object changes between the API server's read and its write.
fn to_touch_before_delete(review: &Value, path: &str) -> Option<String> {
    let req = &review["request"];
    let old = &req["oldObject"];
    (path == "/validate"
        && req["operation"] == "DELETE"
        && old.pointer("/metadata/labels/touch-on-delete") == Some(&json!("true"))
        && old.pointer("/metadata/annotations/touched").is_none())
    .then(|| req["name"].as_str().map(str::to_string))
    .flatten()
}

fn touch(name: &str) {
    let Some((kubeconfig, state)) = CLUSTER.get() else {
        return;
    };
    let _ = kubectl_command_at(kubeconfig, state)
        .args(["annotate", "cm", name, "touched=yes"])
        .output();
}

/// Serves `/mutate` and `/validate` over HTTPS on a free loopback port, on
/// its own thread; returns the address.
fn start_webhook(identity: &ServingIdentity) -> Result<SocketAddr> {
    let tls = Arc::new(identity.server_config()?);
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    std_listener.set_nonblocking(true)?;
    let addr = std_listener.local_addr()?;
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
            return;
        };
        rt.block_on(async move {
            let Ok(listener) = tokio::net::TcpListener::from_std(std_listener) else {
                return;
            };
            let acceptor = tokio_rustls::TlsAcceptor::from(tls);
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(tcp).await else { return };
                    let svc = hyper::service::service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                        let path = req.uri().path().to_string();
                        let body = req
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let review: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                        if let Some(name) = to_touch_before_delete(&review, &path) {
                            let _ = tokio::task::spawn_blocking(move || touch(&name)).await;
                        }
                        let out = respond(&review, &path).to_string();
                        Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(out))))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
    });
    Ok(addr)
}

fn configs(addr: SocketAddr, ca: &str) -> String {
    let url = |p: &str| format!("https://127.0.0.1:{}{p}", addr.port());
    let docs = [
        json!({
            "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": "inject"},
            "webhooks": [{
                "name": "inject.trellis.dev", "admissionReviewVersions": ["v1"], "sideEffects": "None", "failurePolicy": "Fail",
                "clientConfig": {"url": url("/mutate"), "caBundle": ca},
                "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
                "namespaceSelector": {"matchLabels": {"trellis.dev/inject": "enabled"}}
            }]
        }),
        json!({
            "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": "guard"},
            "webhooks": [
                {
                    "name": "guard.trellis.dev", "admissionReviewVersions": ["v1"], "sideEffects": "None",
                    "clientConfig": {"url": url("/validate"), "caBundle": ca},
                    "rules": [{"operations": ["CREATE", "UPDATE", "DELETE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["configmaps"]}]
                },
                {
                    "name": "unreachable-ignored.trellis.dev", "admissionReviewVersions": ["v1"], "sideEffects": "None", "failurePolicy": "Ignore", "timeoutSeconds": 2,
                    "clientConfig": {"url": "https://127.0.0.1:1/validate", "caBundle": ca},
                    "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["configmaps"]}]
                },
                {
                    "name": "unreachable-fatal.trellis.dev", "admissionReviewVersions": ["v1"], "sideEffects": "None", "failurePolicy": "Fail", "timeoutSeconds": 2,
                    "clientConfig": {"url": "https://127.0.0.1:1/validate", "caBundle": ca},
                    "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["secrets"]}]
                }
            ]
        }),
    ];
    docs.iter()
        .map(|d| serde_json::to_string(d).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n---\n")
}

const MESH_APP: &str = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: mesh\n  labels: {trellis.dev/inject: enabled}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: app\n  namespace: mesh\nspec:\n  replicas: 2\n  selector: {matchLabels: {app: app}}\n  template:\n    metadata: {labels: {app: app}}\n    spec:\n      containers: [{name: app, image: trellis-testapp:1}]\n";

#[test]
fn webhooks_mutate_deny_and_follow_failure_policy() -> Result<()> {
    let webhook_identity = ServingIdentity::generate()?;
    let addr = start_webhook(&webhook_identity)?;
    let k = TestCluster::start()?;
    let _ = CLUSTER.set((k.kubeconfig.clone(), k.state_dir().to_path_buf()));
    let out = k.kubectl_ok(
        &["apply", "-f", "-"],
        Some(&configs(addr, &base64_encode(webhook_identity.ca_pem.as_bytes()))),
    )?;
    assert!(
        out.contains("mutatingwebhookconfiguration.admissionregistration.k8s.io/inject created"),
        "{out}"
    );

    // Pods the ReplicaSet controller creates in a labelled namespace are mutated.
    k.kubectl_ok(&["apply", "-f", "-"], Some(MESH_APP))?;
    k.kubectl_ok(
        &["rollout", "status", "deploy/app", "-n", "mesh", "--timeout=20s"],
        None,
    )?;
    let injected = k.kubectl_ok(
        &[
            "get",
            "pods",
            "-n",
            "mesh",
            "-l",
            "trellis.dev/injected=true",
            "-o",
            "name",
        ],
        None,
    )?;
    assert_eq!(injected.lines().count(), 2, "{injected}");
    // Pods elsewhere are not.
    let plain = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: plain\nspec:\n  containers: [{name: a, image: trellis-testapp:1}]\n";
    k.kubectl_ok(&["apply", "-f", "-"], Some(plain))?;
    let labels = k.kubectl_ok(&["get", "pod", "plain", "-o", "jsonpath={.metadata.labels}"], None)?;
    assert!(!labels.contains("injected"), "{labels}");

    // A denial reaches kubectl with the webhook's message; the unreachable
    // webhook with failurePolicy Ignore does not block.
    let denied = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: bad\n  labels: {deny: \"true\"}\n";
    let out = k.kubectl(&["apply", "-f", "-"], Some(denied))?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "denied object was created");
    assert!(
        err.contains(
            "admission webhook \"guard.trellis.dev\" denied the request: configmaps labelled deny=true are refused"
        ),
        "{err}"
    );
    let fine = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: fine\n  labels: {protect: \"true\"}\n";
    k.kubectl_ok(&["apply", "-f", "-"], Some(fine))?;
    let out = k.kubectl(&["delete", "cm", "fine"], None)?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("this configmap is protected"),
        "{err}"
    );
    k.kubectl_ok(&["get", "cm", "fine"], None)
        .context("protected configmap still exists")?;

    // An object changed by another writer between the API server's read and
    // its write is still deleted (the server reads again and retries, as
    // upstream's guaranteed update does); only a caller's precondition
    // makes that a conflict.
    let touched =
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: touched\n  labels: {touch-on-delete: \"true\"}\n";
    k.kubectl_ok(&["apply", "-f", "-"], Some(touched))?;
    k.kubectl_ok(&["delete", "cm", "touched"], None)
        .context("deleting an object another writer changed meanwhile")?;
    let out = k.kubectl(&["get", "cm", "touched"], None)?;
    assert!(!out.status.success(), "the touched configmap was not deleted");

    // With failurePolicy Fail, an unreachable webhook blocks the request.
    let secret = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: s\nstringData: {k: v}\n";
    let out = k.kubectl(&["apply", "-f", "-"], Some(secret))?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("failed calling webhook \"unreachable-fatal.trellis.dev\""),
        "{err}"
    );
    Ok(())
}
