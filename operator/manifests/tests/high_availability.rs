//! The operator is installed highly available: two replicas that never go down together for
//! a voluntary disruption, spread over nodes, each able to join the leader election.

use serde_json::Value;
use trellis_manifests::install::{self, OPERATOR_NAME, Options};

fn object<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == OPERATOR_NAME)
        .unwrap_or_else(|| panic!("the install has no {kind} {OPERATOR_NAME}"))
}

#[test]
fn two_replicas_a_disruption_budget_and_anti_affinity() {
    let objects = install::objects(&Options::default());
    let deployment = object(&objects, "Deployment");
    let spec = &deployment["spec"];
    assert_eq!(spec["replicas"], 2);
    // An upgrade never drops below two serving replicas; the election keeps one leader.
    assert_eq!(spec["strategy"]["rollingUpdate"]["maxUnavailable"], 0);

    let selector = &spec["selector"]["matchLabels"];
    let pdb = object(&objects, "PodDisruptionBudget");
    assert_eq!(pdb["apiVersion"], "policy/v1");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    assert_eq!(
        &pdb["spec"]["selector"]["matchLabels"], selector,
        "the budget covers the operator's pods"
    );

    let term =
        &spec["template"]["spec"]["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0];
    assert_eq!(term["podAffinityTerm"]["topologyKey"], "kubernetes.io/hostname");
    assert_eq!(&term["podAffinityTerm"]["labelSelector"]["matchLabels"], selector);
}

#[test]
fn every_replica_can_join_the_leader_election() {
    let objects = install::objects(&Options::default());
    let deployment = object(&objects, "Deployment");
    let env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .expect("the operator has env");
    let pod_name = env
        .iter()
        .find(|e| e["name"] == "POD_NAME")
        .expect("POD_NAME is the replica's identity in the election");
    assert_eq!(pod_name["valueFrom"]["fieldRef"]["fieldPath"], "metadata.name");

    // The election's Lease, in the operator's own namespace only: created when missing, then
    // read and renewed (server-side apply) by name.
    let leases: Vec<_> = install::namespace_rules()
        .into_iter()
        .filter(|r| r.resources.as_ref().is_some_and(|rs| rs.iter().any(|r| r == "leases")))
        .collect();
    for verb in ["get", "create", "patch"] {
        let rule = leases
            .iter()
            .find(|r| r.verbs.iter().any(|v| v == verb))
            .unwrap_or_else(|| panic!("leases need {verb}"));
        assert_eq!(
            rule.api_groups.as_deref(),
            Some(&["coordination.k8s.io".to_string()][..])
        );
        if verb != "create" {
            assert_eq!(
                rule.resource_names.as_deref(),
                Some(&[install::LEADER_LEASE.to_string()][..])
            );
        }
    }
    assert!(
        !install::cluster_rules()
            .iter()
            .any(|r| r.resources.as_ref().is_some_and(|rs| rs.iter().any(|r| r == "leases"))),
        "no Lease outside the operator's namespace"
    );
}
