//! The operator's RBAC is least privilege: it writes no Secret outside its own namespace and
//! only its CA Secret there; the ConfigMaps and webhook configurations it writes are named;
//! its namespaced permissions are a Role bound in the control plane's namespace.
//! (That the operator works with exactly these is shown on upstream Kubernetes, where RBAC is
//! enforced: `operator/tests/api_server.rs`, `ca_lifecycle.rs`, `push_client.rs` run it with
//! them.)

use k8s_openapi::api::rbac::v1::PolicyRule;
use serde_json::Value;
use trellis_manifests::install::{self, OPERATOR_NAME, Options, webhooks};

/// Verbs that change objects.
const WRITES: &[&str] = &["create", "update", "patch", "delete", "deletecollection", "*"];

/// The rules that grant `verb` on `resource` of API `group` (wildcards included).
fn granting<'a>(rules: &'a [PolicyRule], group: &str, resource: &str, verb: &str) -> Vec<&'a PolicyRule> {
    let has = |list: &Option<Vec<String>>, wanted: &str| {
        list.as_ref().is_some_and(|l| l.iter().any(|x| x == wanted || x == "*"))
    };
    rules
        .iter()
        .filter(|r| has(&r.api_groups, group) && has(&r.resources, resource))
        .filter(|r| r.verbs.iter().any(|v| v == verb || v == "*"))
        .collect()
}

fn names(rule: &PolicyRule) -> Vec<&str> {
    rule.resource_names.iter().flatten().map(String::as_str).collect()
}

#[test]
fn no_secret_is_written_outside_the_operators_namespace() {
    let cluster = install::cluster_rules();
    for verb in WRITES.iter().chain(&["get"]) {
        assert!(
            granting(&cluster, "", "secrets", verb).is_empty(),
            "the ClusterRole grants {verb} on Secrets in every namespace"
        );
    }
    // The index and the plugged root still watch Secrets anywhere (credentialName, secretRef).
    for verb in ["list", "watch"] {
        assert_eq!(granting(&cluster, "", "secrets", verb).len(), 1, "{verb}");
    }
    // In its own namespace: create (a POST cannot be narrowed by name), and the rest on the CA
    // Secret alone.
    let own = install::namespace_rules();
    for verb in WRITES.iter().chain(&["get"]) {
        for rule in granting(&own, "", "secrets", verb) {
            if *verb == "create" && rule.resource_names.is_none() {
                continue;
            }
            assert_eq!(names(rule), [install::CA_SECRET], "{verb} on Secrets: {rule:?}");
        }
    }
    assert!(granting(&own, "", "secrets", "delete").is_empty());
    assert!(granting(&own, "", "secrets", "update").is_empty());
}

#[test]
fn configmaps_and_webhook_configurations_are_written_by_name() {
    let cluster = install::cluster_rules();
    for verb in WRITES.iter().chain(&["get", "list", "watch"]) {
        for rule in granting(&cluster, "", "configmaps", verb) {
            assert_eq!(names(rule), [install::ROOT_CONFIGMAP], "{verb} on ConfigMaps: {rule:?}");
        }
    }
    // Server-side apply creates the trust ConfigMap by name (RBAC sees the name then).
    assert!(!granting(&cluster, "", "configmaps", "create").is_empty());
    for resource in ["validatingwebhookconfigurations", "mutatingwebhookconfigurations"] {
        for verb in WRITES.iter().chain(&["get", "list", "watch"]) {
            for rule in granting(&cluster, "admissionregistration.k8s.io", resource, verb) {
                if *verb == "create" && rule.resource_names.is_none() {
                    continue;
                }
                assert_eq!(
                    names(rule),
                    [webhooks::VALIDATOR, webhooks::INJECTOR],
                    "{verb} on {resource}: {rule:?}"
                );
            }
        }
    }
    // Leases are the namespace's alone.
    assert!(granting(&cluster, "coordination.k8s.io", "leases", "get").is_empty());
    for rule in install::cluster_rules().iter().chain(&install::namespace_rules()) {
        assert!(!rule.verbs.iter().any(|v| v == "*"), "a wildcard verb: {rule:?}");
    }
}

#[test]
fn the_role_is_bound_in_the_control_planes_namespace() {
    let opts = Options {
        namespace: "mesh-system".into(),
        ..Options::default()
    };
    let objects = install::objects(&opts);
    let find = |kind: &str| -> &Value {
        objects
            .iter()
            .find(|o| o["kind"] == kind)
            .unwrap_or_else(|| panic!("the install has no {kind}"))
    };
    let role = find("Role");
    assert_eq!(role["metadata"]["namespace"], "mesh-system");
    assert_eq!(role["rules"], serde_json::to_value(install::namespace_rules()).unwrap());
    let binding = find("RoleBinding");
    assert_eq!(binding["metadata"]["namespace"], "mesh-system");
    assert_eq!(binding["roleRef"]["kind"], "Role");
    assert_eq!(binding["roleRef"]["name"], role["metadata"]["name"]);
    assert_eq!(binding["subjects"][0]["kind"], "ServiceAccount");
    assert_eq!(binding["subjects"][0]["name"], OPERATOR_NAME);
    assert_eq!(binding["subjects"][0]["namespace"], "mesh-system");
    // After the namespace it lives in, before the operator that needs it.
    let at = |kind: &str| objects.iter().position(|o| o["kind"] == kind).unwrap();
    assert!(at("Namespace") < at("Role") && at("RoleBinding") < at("Deployment"));
}
