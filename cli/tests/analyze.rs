//! `meshctl analyze` run as a user runs it: the real binary on files, exit codes, formats,
//! thresholds, suppressions, and bad input.

use std::process::{Command, Output};

fn meshctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("meshctl runs")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn fixture(name: &str) -> String {
    format!("{}/../operator/core/tests/analysis/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn the_examples_are_clean_and_exit_0() {
    for dir in ["shop", "demo", "istio"] {
        let path = format!("{}/../examples/{dir}", env!("CARGO_MANIFEST_DIR"));
        let o = meshctl(&["analyze", "--use-kube=false", &path]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        assert!(text(&o).contains("No validation issues found"), "{}", text(&o));
    }
}

#[test]
fn findings_name_code_object_file_line_and_exit_1() {
    let (base, fixture) = (fixture("base.yaml"), fixture("IST0101-subset.yaml"));
    let o = meshctl(&["analyze", "--use-kube=false", &base, &fixture]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let expected = format!(
        "Error [IST0101] (VirtualService shop/to-subset {fixture}:13) Referenced host+subset in destinationrule not found"
    );
    assert!(out.contains(&expected), "{out}");
    assert!(out.contains("✘ 1 error(s), 0 warning(s), 0 info"), "{out}");
}

#[test]
fn json_is_an_array_of_findings_with_code_level_message_origin_file_line() {
    let o = meshctl(&[
        "analyze",
        "--use-kube=false",
        "-o",
        "json",
        &fixture("base.yaml"),
        &fixture("IST0145.yaml"),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("stdout is only JSON");
    let items = v.as_array().expect("an array");
    assert_eq!(items.len(), 2, "{v:#}");
    for i in items {
        assert_eq!(i["code"], "IST0145");
        assert_eq!(i["level"], "Error");
        assert!(i["message"].as_str().unwrap().contains("Conflict with gateways"));
        assert!(i["origin"].as_str().unwrap().starts_with("Gateway shop/"));
        assert!(i["file"].as_str().unwrap().ends_with(".yaml"));
        assert!(i["line"].as_u64().unwrap() > 0);
    }
    let y = meshctl(&[
        "analyze",
        "--use-kube=false",
        "-o",
        "yaml",
        &fixture("base.yaml"),
        &fixture("IST0145.yaml"),
    ]);
    let parsed: serde_json::Value = serde_yaml_ng::from_slice(&y.stdout).expect("stdout is only YAML");
    assert_eq!(parsed, v);
}

#[test]
fn thresholds_decide_what_is_printed_and_what_fails() {
    let files = [fixture("base.yaml"), fixture("IST0102.yaml"), fixture("IST0127.yaml")];
    let args = |extra: &[&str]| {
        let mut a = vec!["analyze", "--use-kube=false"];
        a.extend_from_slice(extra);
        a.extend(files.iter().map(String::as_str));
        meshctl(&a)
    };
    // An Info and a Warning: below the default failure threshold (Error).
    let o = args(&[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).contains("[IST0102]") && text(&o).contains("[IST0127]"),
        "{}",
        text(&o)
    );
    let o = args(&["--failure-threshold", "Warning"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let o = args(&["--output-threshold", "Warning"]);
    assert!(
        !text(&o).contains("[IST0102]") && text(&o).contains("[IST0127]"),
        "{}",
        text(&o)
    );
}

#[test]
fn suppressions_take_globs() {
    let files = [fixture("base.yaml"), fixture("IST0145.yaml")];
    let o = meshctl(&[
        "analyze",
        "--use-kube=false",
        "-S",
        "IST0145=Gateway shop/*",
        &files[0],
        &files[1],
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = meshctl(&[
        "analyze",
        "--use-kube=false",
        "-S",
        "IST0145=Gateway shop/rival",
        &files[0],
        &files[1],
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("Gateway shop/shop-gateway") && !text(&o).contains("(Gateway shop/rival"));
    let o = meshctl(&["analyze", "--use-kube=false", "-S", "IST0145", &files[0]]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("CODE=Kind namespace/name"), "{}", text(&o));
}

#[test]
fn namespace_narrows_the_report() {
    let files = [fixture("base.yaml"), fixture("IST0102.yaml"), fixture("IST0127.yaml")];
    let o = meshctl(&[
        "analyze",
        "--use-kube=false",
        "-n",
        "elsewhere",
        &files[1],
        &files[2],
        &files[0],
    ]);
    assert!(
        !text(&o).contains("[IST0102]") && !text(&o).contains("[IST0127]"),
        "{}",
        text(&o)
    );
    assert!(text(&o).contains("No validation issues found when analyzing namespace elsewhere"));
    // A Namespace's findings belong to its own report; the shop's PeerAuthentication does not.
    let o = meshctl(&[
        "analyze",
        "--use-kube=false",
        "-n",
        "plain",
        &files[1],
        &files[2],
        &files[0],
    ]);
    assert!(
        text(&o).contains("[IST0102] (Namespace plain") && !text(&o).contains("[IST0127]"),
        "{}",
        text(&o)
    );
    let o = meshctl(&[
        "analyze",
        "--use-kube=false",
        "-n",
        "shop",
        &files[1],
        &files[2],
        &files[0],
    ]);
    assert!(
        !text(&o).contains("[IST0102]") && text(&o).contains("[IST0127]"),
        "{}",
        text(&o)
    );
}

#[test]
fn list_and_explain() {
    let o = meshctl(&["analyze", "--list-analyzers"]);
    assert_eq!(o.status.code(), Some(0));
    let out = text(&o);
    for code in ["IST0101", "IST0174", "TRL0101", "TRL0109"] {
        assert!(out.contains(code), "{out}");
    }
    let o = meshctl(&["analyze", "--explain", "ist0173"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(
        text(&o).contains("DestinationRuleSubsetNotSelectPods (Error)"),
        "{}",
        text(&o)
    );
    let o = meshctl(&["analyze", "--explain", "IST9999"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}

#[test]
fn bad_input_exits_2_with_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "apiVersion: v1\nkind: Service\nmetadata:\n  name: a\n  name: b\n").unwrap();
    let o = meshctl(&["analyze", "--use-kube=false", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains(&format!("{}:5: ", bad.display())), "{}", text(&o));
    assert!(text(&o).contains("duplicate key"), "{}", text(&o));
    let o = meshctl(&["analyze", "--use-kube=false", "/no/such/file.yaml"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let o = meshctl(&["analyze", "--use-kube=false"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let o = meshctl(&[
        "analyze",
        "--use-kube=false",
        "--failure-threshold",
        "Fatal",
        bad.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}

/// A cluster (kubesim with pods simulated, or upstream Kubernetes with
/// `TRELLIS_E2E_CLUSTER=upstream`; no operator) with Trellis's CRDs and the clean base shop.
fn cluster_with_base_shop() -> trellis_e2e::suite::Target {
    let cluster = trellis_e2e::suite::Target::acquire_objects_only().expect("the cluster starts");
    let crds = format!("{}/../crds", env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<_> = std::fs::read_dir(&crds)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    for f in &files {
        cluster.kubectl_ok(&["apply", "-f", f.to_str().unwrap()], None).unwrap();
    }
    for crd in [
        "virtualservices.networking.trellis.dev",
        "gateways.networking.trellis.dev",
    ] {
        cluster
            .kubectl_ok(&["wait", "--for=condition=Established", &format!("crd/{crd}")], None)
            .unwrap();
    }
    // The pods' service accounts first: kubesim's admission checks them, as Kubernetes does.
    let mut accounts = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n".to_string();
    for sa in ["payment", "gateway"] {
        accounts.push_str(&format!(
            "---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: {sa}, namespace: shop}}\n"
        ));
    }
    cluster.apply(&accounts).unwrap();
    cluster
        .kubectl_ok(&["apply", "-f", &fixture("base.yaml")], None)
        .unwrap();
    cluster
}

fn analyze_live(cluster: &trellis_e2e::suite::Target, args: &[&str]) -> Output {
    let mut a = vec!["--kubeconfig", cluster.kubeconfig().to_str().unwrap(), "analyze"];
    a.extend_from_slice(args);
    meshctl(&a)
}

#[test]
fn the_live_cluster_alone_and_files_laid_over_it() {
    let cluster = cluster_with_base_shop();

    // The cluster alone: the base shop is clean. Without an operator, the proxy checks are
    // skipped, and stderr says so.
    let o = analyze_live(&cluster, &["-n", "shop"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("No validation issues found when analyzing namespace shop"),
        "{out}"
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("TRL0107-TRL0109) are skipped"),
        "{}",
        text(&o)
    );

    // A broken VirtualService in the cluster: found with its object, no file.
    cluster
        .kubectl_ok(&["apply", "-f", &fixture("IST0101-subset.yaml")], None)
        .unwrap();
    let o = analyze_live(&cluster, &["-n", "shop", "-o", "json"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("stdout is only JSON");
    let found: Vec<(&str, &str)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["code"].as_str().unwrap(), f["origin"].as_str().unwrap()))
        .collect();
    assert_eq!(found, [("IST0101", "VirtualService shop/to-subset")], "{v:#}");
    assert!(v[0].get("file").is_none_or(|f| f.is_null()), "{v:#}");

    // Findings are reported for namespace default unless -n or -A says otherwise.
    let o = analyze_live(&cluster, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(!text(&o).contains("[IST0101]"), "{}", text(&o));
    let o = analyze_live(&cluster, &["-A"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("Error [IST0101] (VirtualService shop/to-subset)"),
        "{}",
        text(&o)
    );

    // What-if: a file with the fixed VirtualService replaces the cluster's; the cluster's other
    // objects (the DestinationRule with subset v2) still count.
    let dir = tempfile::tempdir().unwrap();
    let fixed = dir.path().join("fixed.yaml");
    let broken = std::fs::read_to_string(fixture("IST0101-subset.yaml")).unwrap();
    std::fs::write(&fixed, broken.replace("subset: v9", "subset: v2")).unwrap();
    let o = analyze_live(&cluster, &["-n", "shop", fixed.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("No validation issues found"), "{}", text(&o));

    // ... and a file that would break what the cluster has is reported on its file and line:
    // the subset it names is defined by the cluster's DestinationRule, the Service port by the
    // cluster's Service.
    let new = dir.path().join("new.yaml");
    std::fs::write(
        &new,
        "apiVersion: networking.trellis.dev/v1alpha1\nkind: VirtualService\nmetadata: {name: new, namespace: shop}\n\
         spec:\n  hosts: [payment]\n  http:\n  - timeout: 1s\n    route: [{destination: {host: payment, subset: v1}}]\n",
    )
    .unwrap();
    let o = analyze_live(&cluster, &["-n", "shop", new.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    // Two mesh VirtualServices for payment: the cluster's and the file's.
    assert!(
        out.contains(&format!("[IST0109] (VirtualService shop/new {}:", new.display())),
        "{out}"
    );
    assert!(out.contains("[IST0109] (VirtualService shop/payment)"), "{out}");
    // The cluster's broken VirtualService is still there.
    assert!(out.contains("[IST0101] (VirtualService shop/to-subset)"), "{out}");
}

#[test]
fn an_unreachable_cluster_exits_2_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: \"https://127.0.0.1:9\"}}]\n\
         users: [{name: u, user: {token: t}}]\ncontexts: [{name: c, context: {cluster: c, user: u}}]\ncurrent-context: c\n",
    )
    .unwrap();
    let o = meshctl(&["--kubeconfig", kubeconfig.to_str().unwrap(), "analyze", "-A"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("reading the cluster") && err.contains("https://127.0.0.1:9"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}
