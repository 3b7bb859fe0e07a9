//! The committed OLM bundle is what the install manifests generate, and it is consistent.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::Value;
use trellis_api::validation::{Outcome, validate};
use trellis_manifests::install::{self, Options};
use trellis_manifests::olm;

fn olm_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../olm")
}

#[test]
fn committed_bundle_matches_the_manifests() {
    let mut expected = BTreeSet::new();
    for f in olm::bundle(&Options::default()) {
        let committed = std::fs::read_to_string(olm_dir().join(&f.path)).unwrap_or_default();
        assert!(
            committed == f.content,
            "olm/{} is out of date; regenerate with `cargo run -p trellis-manifests -- olm`",
            f.path
        );
        expected.insert(f.path);
    }
    let mut on_disk = BTreeSet::new();
    let mut stack = vec![olm_dir()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                on_disk.insert(p.strip_prefix(olm_dir()).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    assert_eq!(on_disk, expected, "olm/ holds files the generator does not produce");
}

#[test]
fn csv_installs_exactly_what_meshctl_install_does() {
    let opts = Options::default();
    let csv = olm::cluster_service_version(&opts);
    let strategy = &csv["spec"]["install"]["spec"];
    assert_eq!(
        strategy["deployments"][0]["spec"],
        serde_json::to_value(install::deployment_spec(&opts)).unwrap()
    );
    assert_eq!(
        strategy["clusterPermissions"][0]["rules"],
        serde_json::to_value(install::cluster_rules()).unwrap()
    );
    assert_eq!(
        strategy["clusterPermissions"][0]["serviceAccountName"],
        install::OPERATOR_NAME
    );
    // The writes kept to the operator's namespace stay there in the bundle too (OLM's
    // `permissions` become a Role in the install namespace).
    assert_eq!(
        strategy["permissions"][0]["rules"],
        serde_json::to_value(install::namespace_rules()).unwrap()
    );
    assert_eq!(strategy["permissions"][0]["serviceAccountName"], install::OPERATOR_NAME);
    let objects = install::objects(&opts);
    let sa = objects.iter().find(|o| o["kind"] == "ServiceAccount").unwrap();
    assert_eq!(sa["metadata"]["name"], install::OPERATOR_NAME);
}

#[test]
fn csv_owns_every_crd_and_its_examples_are_valid() {
    let opts = Options::default();
    let csv = olm::cluster_service_version(&opts);
    let owned: BTreeSet<String> = csv["spec"]["customresourcedefinitions"]["owned"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect();
    let crds: BTreeSet<String> = trellis_api::crd::all()
        .iter()
        .map(|c| c.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(owned, crds);
    let examples: Vec<Value> =
        serde_json::from_str(csv["metadata"]["annotations"]["alm-examples"].as_str().unwrap()).unwrap();
    assert!(!examples.is_empty());
    for e in examples {
        match validate(&e) {
            Outcome::Validated { findings, .. } => assert!(findings.is_empty(), "{findings:?}"),
            Outcome::Skipped(why) => panic!("{why}"),
        }
    }
    assert!(olm::annotations().contains("operators.operatorframework.io.bundle.package.v1: trellis-operator"));
    assert!(olm::dockerfile().contains("LABEL operators.operatorframework.io.bundle.mediatype.v1=registry+v1"));
}

#[test]
fn install_objects_are_ordered_and_valid() {
    let opts = Options {
        namespace: "mesh-system".into(),
        ..Options::default()
    };
    let objects = install::objects(&opts);
    let kinds: Vec<&str> = objects.iter().map(|o| o["kind"].as_str().unwrap()).collect();
    let first_non_crd = kinds.iter().position(|k| *k != "CustomResourceDefinition").unwrap();
    assert_eq!(
        first_non_crd,
        trellis_api::crd::all().len(),
        "CRDs come first, all of them: {kinds:?}"
    );
    assert_eq!(kinds[first_non_crd], "Namespace");
    // The default Mesh, then the webhooks (failure policy Fail: before the operator serves
    // them they would refuse the Mesh).
    assert_eq!(
        kinds[kinds.len() - 3..],
        ["Mesh", "ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"]
    );
    for o in &objects[objects.len() - 2..] {
        for w in o["webhooks"].as_array().unwrap() {
            assert_eq!(w["clientConfig"]["service"]["namespace"], "mesh-system", "{w}");
            assert!(w["clientConfig"]["caBundle"].is_null(), "the operator fills it in: {w}");
        }
    }
    for o in &objects {
        assert!(o["apiVersion"].is_string() && o["metadata"]["name"].is_string(), "{o}");
        if let Some(ns) = o["metadata"]["namespace"].as_str() {
            assert_eq!(ns, "mesh-system");
        }
        if let Outcome::Validated { findings, .. } = validate(o) {
            assert!(findings.is_empty(), "{findings:?}");
        }
    }
    let dep = objects.iter().find(|o| o["kind"] == "Deployment").unwrap();
    let c = &dep["spec"]["template"]["spec"]["containers"][0];
    // The namespace comes from the pod's own (the downward API), never from an argument.
    assert!(c["args"].is_null(), "{c}");
    let from_pod = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == install::NAMESPACE_ENV)
        .unwrap();
    assert_eq!(from_pod["valueFrom"]["fieldRef"]["fieldPath"], "metadata.namespace");
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    // The malloc tuning the convergence benchmark measures the operator with.
    let arenas = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "MALLOC_ARENA_MAX");
    assert_eq!(arenas.unwrap()["value"], install::OPERATOR_MALLOC_ARENAS);
    // The log filter is in the variable the proxy reads too; none in RUST_LOG.
    let log = |name: &str| c["env"].as_array().unwrap().iter().find(|e| e["name"] == name).cloned();
    assert_eq!(log(install::LOG_ENV).unwrap()["value"], Options::default().log_level);
    assert_eq!(log("RUST_LOG"), None);
    let yaml = trellis_manifests::to_yaml(&objects);
    assert_eq!(yaml.matches("\n---\n").count() + 1, objects.len());
}

#[test]
fn under_olm_the_operator_takes_its_namespace_from_the_downward_api() {
    let csv = olm::cluster_service_version(&Options::default());
    // What OLM installs names no namespace: the Deployment, the Role from `permissions` and its
    // binding go where the OperatorGroup says; only the suggestion shown to a person names one.
    let install = serde_json::to_string(&csv["spec"]["install"]).unwrap();
    assert!(!install.contains("trellis-system"), "{install}");
    assert_eq!(
        csv["metadata"]["annotations"]["operators.operatorframework.io/suggested-namespace"],
        "trellis-system"
    );
    let container = &csv["spec"]["install"]["spec"]["deployments"][0]["spec"]["template"]["spec"]["containers"][0];
    assert!(
        container["args"]
            .as_array()
            .is_none_or(|a| !a.iter().any(|x| x == "--namespace")),
        "a --namespace argument would override the pod's own namespace: {container}"
    );
    let from_pod = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == install::NAMESPACE_ENV)
        .expect("the namespace variable");
    assert_eq!(from_pod["valueFrom"]["fieldRef"]["fieldPath"], "metadata.namespace");
    // The same Deployment as `meshctl install` creates.
    assert_eq!(
        csv["spec"]["install"]["spec"]["deployments"][0]["spec"]["template"]["spec"],
        serde_json::to_value(install::pod_spec(&Options::default())).unwrap()
    );
}
