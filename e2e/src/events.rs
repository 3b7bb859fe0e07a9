//! Events: the ones kubesim's controllers record (core/v1 `Event`), so
//! `kubectl describe` and `kubectl get events` tell what happened, and the
//! conversion between the core/v1 and events.k8s.io/v1 views of the same
//! stored Events (kube-runtime's `Recorder` writes the latter).

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

/// Field renames between core/v1 (left) and events.k8s.io/v1 (right).
const RENAMES: &[(&str, &str)] = &[
    ("involvedObject", "regarding"),
    ("message", "note"),
    ("reportingComponent", "reportingController"),
    ("source", "deprecatedSource"),
    ("firstTimestamp", "deprecatedFirstTimestamp"),
    ("lastTimestamp", "deprecatedLastTimestamp"),
    ("count", "deprecatedCount"),
];

fn rename(obj: &Value, to_v1: bool) -> Value {
    let Some(m) = obj.as_object() else { return obj.clone() };
    let mut out = serde_json::Map::new();
    for (k, v) in m {
        let renamed = RENAMES
            .iter()
            .find_map(|(core, v1)| {
                if to_v1 {
                    (k == core).then_some(*v1)
                } else {
                    (k == v1).then_some(*core)
                }
            })
            .unwrap_or(k.as_str());
        if !v.is_null() {
            out.insert(renamed.to_string(), v.clone());
        }
    }
    Value::Object(out)
}

/// A stored (core/v1) Event in events.k8s.io/v1 form.
pub fn to_events_v1(core: &Value) -> Value {
    let mut v = rename(core, true);
    v["apiVersion"] = json!("events.k8s.io/v1");
    v["kind"] = json!("Event");
    v
}

/// An events.k8s.io/v1 Event in the stored core/v1 form.
pub fn to_core(v1: &Value) -> Value {
    let mut v = rename(v1, false);
    v["apiVersion"] = json!("v1");
    v["kind"] = json!("Event");
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_two_event_views_convert_both_ways() {
        let v1 = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e"}, "regarding": {"kind": "Pod", "name": "p"}, "note": "hello", "reason": "Started", "reportingController": "op", "eventTime": "2026-01-01T00:00:00.000000Z", "series": {"count": 2, "lastObservedTime": "2026-01-01T00:00:01.000000Z"}});
        let core = to_core(&v1);
        assert_eq!(core["involvedObject"]["name"], "p");
        assert_eq!(core["message"], "hello");
        assert_eq!(core["reportingComponent"], "op");
        assert_eq!(core["series"]["count"], 2);
        assert_eq!(to_events_v1(&core), v1);
    }
}
