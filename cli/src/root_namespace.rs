//! The root namespace meshctl compiles and analyzes with, as the operator's own snapshots
//! have it: the namespace the operator runs in (`Snapshot::root_namespace`, Istio's
//! `meshConfig.rootNamespace`), found among a cluster's listed objects.

use serde_json::Value;
use trellis_api::mesh::SYSTEM_NAMESPACE;
use trellis_manifests::install::OPERATOR_NAME;

/// The namespace the cluster's operator runs in, from the cluster's Pods among `objects` (as
/// listed, with `kind`): the namespace of the pods labelled `app=trellis-operator` — under OLM,
/// the OperatorGroup's —, running ones first; else `trellis-system`, where `meshctl install`
/// puts it. The operator takes its own namespace as the root namespace (where policies apply
/// mesh-wide: `Snapshot::root_namespace`), so meshctl compiles and analyzes with this one.
pub fn operator_namespace<'a>(objects: impl IntoIterator<Item = &'a Value>) -> String {
    let mut found: Option<(bool, String)> = None;
    for o in objects {
        if o["kind"] != "Pod" || o.pointer("/metadata/labels/app").and_then(Value::as_str) != Some(OPERATOR_NAME) {
            continue;
        }
        let Some(ns) = o.pointer("/metadata/namespace").and_then(Value::as_str) else {
            continue;
        };
        let running = o.pointer("/status/phase").and_then(Value::as_str) == Some("Running");
        if found.as_ref().is_none_or(|(r, _)| running && !r) {
            found = Some((running, ns.to_string()));
        }
    }
    found.map_or_else(|| SYSTEM_NAMESPACE.to_string(), |(_, ns)| ns)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_operator_namespace_is_where_its_pods_run() {
        let pod = |ns: &str, app: &str, phase: &str| {
            json!({"kind": "Pod", "metadata": {"name": "p", "namespace": ns, "labels": {"app": app}},
                   "status": {"phase": phase}})
        };
        assert_eq!(operator_namespace(&[]), "trellis-system");
        let objects = [
            pod("shop", "web", "Running"),
            pod("old", OPERATOR_NAME, "Failed"),
            pod("operators", OPERATOR_NAME, "Running"),
        ];
        assert_eq!(operator_namespace(&objects), "operators");
        assert_eq!(
            operator_namespace(&objects[..2]),
            "old",
            "a pod that is not running still says where"
        );
        let not_a_pod = json!({"kind": "Service", "metadata": {"namespace": "x", "labels": {"app": OPERATOR_NAME}}});
        assert_eq!(operator_namespace([&not_a_pod]), "trellis-system");
    }
}
