//! Events recorded by kubesim's controllers (core/v1 `Event`), so
//! `kubectl describe` and `kubectl get events` tell what happened.

use serde_json::{Value, json};
use tracing::debug;

use crate::clock;
use crate::cluster::{Cluster, WriteOptions};

/// Records a Normal event about `obj` (which must carry apiVersion/kind or
/// be given them).
pub fn normal(
    cluster: &Cluster,
    obj: &Value,
    api_version: &str,
    kind: &str,
    reason: &str,
    message: &str,
    component: &str,
) {
    let Some(rt) = cluster.catalog.get("", "v1", "events") else {
        return;
    };
    let meta = |f: &str| obj.pointer(&format!("/metadata/{f}")).cloned().unwrap_or(Value::Null);
    let ns = obj
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("default")
        .to_string();
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let now = clock::now_rfc3339();
    let event = json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": format!("{name}.{}", &uuid::Uuid::new_v4().simple().to_string()[..16]), "namespace": ns},
        "involvedObject": {"apiVersion": api_version, "kind": kind, "name": name, "namespace": meta("namespace"), "uid": meta("uid"), "resourceVersion": meta("resourceVersion")},
        "reason": reason,
        "message": message,
        "source": {"component": component},
        "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        "type": "Normal",
        "reportingComponent": component,
        "reportingInstance": "kubesim",
    });
    let opts = WriteOptions {
        field_manager: Some(component.to_string()),
        ..Default::default()
    };
    if let Err(e) = cluster.create(&rt, Some(&ns), event, &opts) {
        debug!(%ns, %name, %reason, error = %e, "event not recorded");
    }
}
