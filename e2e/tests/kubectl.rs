//! The real `kubectl` against kubesim: apply with default validation, get
//! (tables and YAML), describe, label, every patch type, server-side apply,
//! finalizers, namespaces and CRDs.

use anyhow::Result;
use trellis_e2e::harness::TestCluster;

const WEB: &str = include_str!("fixtures/web.yaml");
const WIDGET_CRD: &str = include_str!("fixtures/widget-crd.yaml");

fn lines_with(out: &str, word: &str) -> Vec<String> {
    out.lines().filter(|l| l.contains(word)).map(str::to_string).collect()
}

#[test]
fn apply_get_and_reapply_with_strategic_merge() -> Result<()> {
    let k = TestCluster::start()?;
    let out = k.kubectl_ok(&["apply", "-f", "-"], Some(WEB))?;
    assert!(out.contains("namespace/shop created"), "{out}");
    assert!(out.contains("deployment.apps/web created"), "{out}");
    assert!(out.contains("service/web created"), "{out}");

    let table = k.kubectl_ok(&["get", "deploy,svc,cm", "-n", "shop"], None)?;
    assert!(table.contains("READY") && table.contains("UP-TO-DATE"), "{table}");
    let svc = lines_with(&table, "service/web");
    assert_eq!(svc.len(), 1, "{table}");
    assert!(
        svc[0].contains("ClusterIP") && svc[0].contains("10.96.") && svc[0].contains("80/TCP"),
        "{table}"
    );
    assert!(lines_with(&table, "configmap/settings")[0].contains(" 1 "), "{table}");

    // Change the image and replicas; kubectl sends a strategic merge patch.
    let changed = WEB
        .replace("trellis-testapp:1", "trellis-testapp:2")
        .replace("replicas: 2", "replicas: 3");
    let out = k.kubectl_ok(&["apply", "-f", "-"], Some(&changed))?;
    assert!(out.contains("deployment.apps/web configured"), "{out}");
    assert!(out.contains("configmap/settings unchanged"), "{out}");
    let got = k.kubectl_ok(
        &[
            "get",
            "deploy",
            "web",
            "-n",
            "shop",
            "-o",
            "jsonpath={.spec.replicas} {.spec.template.spec.containers[*].image} {.metadata.generation}",
        ],
        None,
    )?;
    assert_eq!(got, "3 trellis-testapp:2 trellis-proxy:1 2");

    // Dropping the sidecar from the manifest removes it (three-way merge).
    let one = changed.replace("      - name: sidecar\n        image: trellis-proxy:1\n", "");
    k.kubectl_ok(&["apply", "-f", "-"], Some(&one))?;
    let names = k.kubectl_ok(
        &[
            "get",
            "deploy",
            "web",
            "-n",
            "shop",
            "-o",
            "jsonpath={.spec.template.spec.containers[*].name}",
        ],
        None,
    )?;
    assert_eq!(names, "app");

    let yaml = k.kubectl_ok(&["get", "svc", "web", "-n", "shop", "-o", "yaml"], None)?;
    assert!(
        yaml.contains("kind: Service") && yaml.contains("clusterIP: 10.96.") && yaml.contains("targetPort: 8080"),
        "{yaml}"
    );
    assert!(yaml.contains("resourceVersion:") && yaml.contains("uid:"), "{yaml}");
    Ok(())
}

#[test]
fn label_patch_describe_and_selectors() -> Result<()> {
    let k = TestCluster::start()?;
    k.kubectl_ok(&["apply", "-f", "-"], Some(WEB))?;
    k.kubectl_ok(&["label", "cm", "settings", "-n", "shop", "tier=backend"], None)?;
    let sel = k.kubectl_ok(&["get", "cm", "-n", "shop", "-l", "tier=backend", "-o", "name"], None)?;
    assert_eq!(sel.trim(), "configmap/settings");
    let none = k.kubectl_ok(
        &["get", "cm", "-n", "shop", "-l", "tier in (frontend)", "-o", "name"],
        None,
    )?;
    assert!(none.trim().is_empty(), "{none}");

    k.kubectl_ok(
        &[
            "patch",
            "cm",
            "settings",
            "-n",
            "shop",
            "--type=merge",
            "-p",
            r#"{"data":{"a":"1"}}"#,
        ],
        None,
    )?;
    k.kubectl_ok(
        &[
            "patch",
            "cm",
            "settings",
            "-n",
            "shop",
            "--type=json",
            "-p",
            r#"[{"op":"add","path":"/data/b","value":"2"},{"op":"remove","path":"/data/level"}]"#,
        ],
        None,
    )?;
    k.kubectl_ok(
        &[
            "patch",
            "deploy",
            "web",
            "-n",
            "shop",
            "-p",
            r#"{"spec":{"template":{"spec":{"containers":[{"name":"sidecar","image":"trellis-proxy:9"}]}}}}"#,
        ],
        None,
    )?;
    let data = k.kubectl_ok(&["get", "cm", "settings", "-n", "shop", "-o", "jsonpath={.data}"], None)?;
    assert_eq!(data, r#"{"a":"1","b":"2"}"#);
    let images = k.kubectl_ok(
        &[
            "get",
            "deploy",
            "web",
            "-n",
            "shop",
            "-o",
            "jsonpath={.spec.template.spec.containers[*].image}",
        ],
        None,
    )?;
    assert_eq!(images, "trellis-testapp:1 trellis-proxy:9");

    // A JSON patch that cannot apply is an error kubectl reports.
    let bad = k.kubectl(
        &[
            "patch",
            "cm",
            "settings",
            "-n",
            "shop",
            "--type=json",
            "-p",
            r#"[{"op":"remove","path":"/data/zzz"}]"#,
        ],
        None,
    )?;
    assert!(!bad.status.success());

    let described = k.kubectl_ok(&["describe", "deploy", "web", "-n", "shop"], None)?;
    assert!(
        described.contains("Name:") && described.contains("web") && described.contains("trellis-proxy:9"),
        "{described}"
    );
    let described = k.kubectl_ok(&["describe", "svc", "web", "-n", "shop"], None)?;
    assert!(described.contains("IP:") && described.contains("10.96."), "{described}");

    let resources = k.kubectl_ok(&["api-resources"], None)?;
    assert!(
        resources.contains("deployments") && resources.contains("customresourcedefinitions"),
        "{resources}"
    );
    let version = k.kubectl_ok(&["version"], None)?;
    assert!(version.contains("Server Version: v1.33.0"), "{version}");
    Ok(())
}

#[test]
fn server_side_apply_owns_fields_and_reports_conflicts() -> Result<()> {
    let k = TestCluster::start()?;
    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ssa\n  labels: {team: a}\ndata:\n  mode: one\n";
    let out = k.kubectl_ok(&["apply", "--server-side", "-f", "-"], Some(cm))?;
    assert!(out.contains("serverside-applied"), "{out}");
    let other = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ssa\ndata:\n  mode: two\n";
    let clash = k.kubectl(
        &["apply", "--server-side", "--field-manager=ops", "-f", "-"],
        Some(other),
    )?;
    assert!(!clash.status.success());
    let err = String::from_utf8_lossy(&clash.stderr);
    assert!(
        err.contains("conflict with \"kubectl\"") && err.contains(".data.mode"),
        "{err}"
    );
    k.kubectl_ok(
        &[
            "apply",
            "--server-side",
            "--field-manager=ops",
            "--force-conflicts",
            "-f",
            "-",
        ],
        Some(other),
    )?;
    let got = k.kubectl_ok(
        &[
            "get",
            "cm",
            "ssa",
            "-o",
            "jsonpath={.data.mode} {.metadata.labels.team}",
        ],
        None,
    )?;
    assert_eq!(got, "two a");
    let yaml = k.kubectl_ok(&["get", "cm", "ssa", "-o", "yaml", "--show-managed-fields"], None)?;
    assert!(
        yaml.contains("manager: ops") && yaml.contains("operation: Apply"),
        "{yaml}"
    );

    // The first manager drops its label: the field goes away.
    let fewer = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ssa\n";
    k.kubectl_ok(&["apply", "--server-side", "-f", "-"], Some(fewer))?;
    let labels = k.kubectl_ok(&["get", "cm", "ssa", "-o", "jsonpath={.metadata.labels}"], None)?;
    assert!(labels.is_empty(), "{labels}");
    Ok(())
}

#[test]
fn finalizers_hold_deletion_and_namespaces_terminate() -> Result<()> {
    let k = TestCluster::start()?;
    let held = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: held\n  finalizers: [example.com/hold]\n";
    k.kubectl_ok(&["apply", "-f", "-"], Some(held))?;
    let out = k.kubectl_ok(&["delete", "cm", "held", "--wait=false"], None)?;
    assert!(out.contains("deleted"), "{out}");
    let ts = k.kubectl_ok(
        &["get", "cm", "held", "-o", "jsonpath={.metadata.deletionTimestamp}"],
        None,
    )?;
    assert!(ts.ends_with('Z'), "{ts}");
    k.kubectl_ok(
        &[
            "patch",
            "cm",
            "held",
            "--type=json",
            "-p",
            r#"[{"op":"remove","path":"/metadata/finalizers"}]"#,
        ],
        None,
    )?;
    let gone = k.kubectl(&["get", "cm", "held"], None)?;
    assert!(String::from_utf8_lossy(&gone.stderr).contains("configmaps \"held\" not found"));

    k.kubectl_ok(&["apply", "-f", "-"], Some(WEB))?;
    // kubectl waits until the namespace and everything in it is gone.
    let out = k.kubectl_ok(&["delete", "namespace", "shop", "--timeout=20s"], None)?;
    assert!(out.contains("namespace \"shop\" deleted"), "{out}");
    let ns = k.kubectl_ok(&["get", "ns", "-o", "name"], None)?;
    assert!(!ns.contains("shop"), "{ns}");
    let left = k.kubectl_ok(&["get", "cm", "-A", "-o", "name"], None)?;
    assert!(!left.contains("settings"), "{left}");
    Ok(())
}

#[test]
fn custom_resources_are_served_validated_and_printed() -> Result<()> {
    let k = TestCluster::start()?;
    k.kubectl_ok(&["apply", "-f", "-"], Some(WIDGET_CRD))?;
    k.kubectl_ok(
        &[
            "wait",
            "--for=condition=Established",
            "crd/widgets.example.com",
            "--timeout=10s",
        ],
        None,
    )?;
    let w = "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: w1\nspec:\n  color: red\n";
    let out = k.kubectl_ok(&["apply", "-f", "-"], Some(w))?;
    assert!(out.contains("widget.example.com/w1 created"), "{out}");
    let table = k.kubectl_ok(&["get", "wd"], None)?;
    let header = table.lines().next().unwrap_or_default();
    assert!(
        header.contains("COLOR") && header.contains("REPLICAS") && header.contains("AGE"),
        "{table}"
    );
    let row = lines_with(&table, "w1");
    assert!(
        row[0].contains("red") && row[0].contains(" 1 "),
        "defaulted replicas: {table}"
    );

    // Schema violations and unknown fields are rejected with the field path.
    let bad = "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: w2\nspec:\n  color: green\n  replicas: 9\n";
    let out = k.kubectl(&["apply", "-f", "-"], Some(bad))?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("spec.color") && err.contains("spec.replicas"),
        "{err}"
    );
    let unknown =
        "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: w3\nspec:\n  color: red\n  shape: round\n";
    let out = k.kubectl(&["apply", "-f", "-"], Some(unknown))?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("unknown field \"spec.shape\""),
        "{err}"
    );

    // CEL rules (x-kubernetes-validations) apply too.
    let cel = "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: w4\nspec:\n  color: red\n  replicas: 4\n";
    let out = k.kubectl(&["apply", "-f", "-"], Some(cel))?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("only blue widgets scale past 3"),
        "{err}"
    );

    // Status subresource and scale.
    k.kubectl_ok(
        &[
            "patch",
            "widget",
            "w1",
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"phase":"Ready","replicas":1}}"#,
        ],
        None,
    )?;
    k.kubectl_ok(&["scale", "widget", "w1", "--replicas=3"], None)?;
    let got = k.kubectl_ok(
        &["get", "widget", "w1", "-o", "jsonpath={.status.phase} {.spec.replicas}"],
        None,
    )?;
    assert_eq!(got, "Ready 3");
    // Status written through the main resource is ignored.
    k.kubectl_ok(
        &[
            "patch",
            "widget",
            "w1",
            "--type=merge",
            "-p",
            r#"{"status":{"phase":"Broken"}}"#,
        ],
        None,
    )?;
    let phase = k.kubectl_ok(&["get", "widget", "w1", "-o", "jsonpath={.status.phase}"], None)?;
    assert_eq!(phase, "Ready");

    // Deleting the CRD removes the resource and its objects.
    k.kubectl_ok(&["delete", "crd", "widgets.example.com"], None)?;
    let out = k.kubectl(&["get", "widgets.example.com"], None)?;
    assert!(!out.status.success());
    Ok(())
}

#[test]
fn kubesim_up_and_down() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let bin = env!("CARGO_BIN_EXE_kubesim");
    let up = std::process::Command::new(bin)
        .args(["up", "--state-dir"])
        .arg(dir.path())
        .output()?;
    assert!(up.status.success(), "{}", String::from_utf8_lossy(&up.stderr));
    let stdout = String::from_utf8_lossy(&up.stdout);
    let kubeconfig = dir.path().join("kubeconfig");
    assert!(
        stdout.contains(&format!("export KUBECONFIG={}", kubeconfig.display())),
        "{stdout}"
    );
    let again = std::process::Command::new(bin)
        .args(["up", "--state-dir"])
        .arg(dir.path())
        .output()?;
    assert!(!again.status.success() && String::from_utf8_lossy(&again.stderr).contains("already running"));
    let ns = std::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .arg("--cache-dir")
        .arg(dir.path().join("cache"))
        .args(["get", "ns", "default", "-o", "name"])
        .output()?;
    assert_eq!(
        String::from_utf8_lossy(&ns.stdout).trim(),
        "namespace/default",
        "{}",
        String::from_utf8_lossy(&ns.stderr)
    );
    let down = std::process::Command::new(bin)
        .args(["down", "--state-dir"])
        .arg(dir.path())
        .output()?;
    assert!(down.status.success() && String::from_utf8_lossy(&down.stdout).contains("kubesim stopped"));
    assert!(!kubeconfig.exists() && !dir.path().join("kubesim.pid").exists());
    let again = std::process::Command::new(bin)
        .args(["down", "--state-dir"])
        .arg(dir.path())
        .output()?;
    assert!(again.status.success() && String::from_utf8_lossy(&again.stdout).contains("was not running"));
    Ok(())
}

/// The repository's own CRDs and shop examples, applied as an operator
/// would: kubesim must serve them and enforce their CEL rules.
#[test]
fn trellis_crds_and_shop_examples_apply() -> Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let crds = root.join("crds");
    let mut crd_files: Vec<_> = std::fs::read_dir(&crds)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    crd_files.sort();
    assert!(!crd_files.is_empty(), "no CRD YAML in {}", crds.display());
    let k = TestCluster::start()?;
    for f in &crd_files {
        let path = f.to_string_lossy();
        let out = k.kubectl_ok(&["apply", "-f", &path], None)?;
        assert!(out.contains("created"), "{out}");
    }
    let shop = root.join("examples/shop");
    if shop.is_dir() {
        k.kubectl_ok(&["create", "namespace", "shop", "--dry-run=client", "-o", "yaml"], None)
            .and_then(|ns| k.kubectl_ok(&["apply", "-f", "-"], Some(&ns)))?;
        let out = k.kubectl_ok(&["apply", "-n", "shop", "-f", &shop.to_string_lossy()], None)?;
        assert!(out.contains("created"), "{out}");
    }
    let bad = "apiVersion: networking.trellis.dev/v1alpha1\nkind: VirtualService\nmetadata:\n  name: bad\nspec:\n  hosts: [web]\n  http:\n  - match:\n    - uri: {exact: /a, prefix: /b}\n    route:\n    - destination: {host: web}\n";
    let out = k.kubectl(&["apply", "-f", "-"], Some(bad))?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("set only one of exact, prefix or regex"),
        "{err}"
    );
    Ok(())
}

/// kubectl's typed-client commands send protobuf bodies.
#[test]
fn create_commands_tokens_and_token_reviews() -> Result<()> {
    let k = TestCluster::start()?;
    k.kubectl_ok(&["create", "namespace", "team"], None)?;
    k.kubectl_ok(
        &[
            "create",
            "configmap",
            "c1",
            "-n",
            "team",
            "--from-literal=a=1",
            "--from-literal=b=2",
        ],
        None,
    )?;
    k.kubectl_ok(
        &[
            "create",
            "secret",
            "generic",
            "s1",
            "-n",
            "team",
            "--from-literal=password=hunter2",
        ],
        None,
    )?;
    k.kubectl_ok(&["create", "serviceaccount", "robot", "-n", "team"], None)?;
    assert_eq!(
        k.kubectl_ok(&["get", "cm", "c1", "-n", "team", "-o", "jsonpath={.data}"], None)?,
        r#"{"a":"1","b":"2"}"#
    );
    assert_eq!(
        k.kubectl_ok(
            &["get", "secret", "s1", "-n", "team", "-o", "jsonpath={.data.password}"],
            None
        )?,
        "aHVudGVyMg=="
    );
    let labels = k.kubectl_ok(&["get", "ns", "team", "-o", "jsonpath={.metadata.labels}"], None)?;
    assert!(labels.contains("kubernetes.io/metadata.name"), "{labels}");

    let token = k.kubectl_ok(
        &[
            "create",
            "token",
            "robot",
            "-n",
            "team",
            "--audience=trellis",
            "--duration=1h",
        ],
        None,
    )?;
    let review = format!(
        r#"{{"apiVersion":"authentication.k8s.io/v1","kind":"TokenReview","spec":{{"token":"{}","audiences":["trellis"]}}}}"#,
        token.trim()
    );
    let out = k.kubectl_ok(
        &[
            "create",
            "-f",
            "-",
            "-o",
            "jsonpath={.status.authenticated} {.status.user.username}",
        ],
        Some(&review),
    )?;
    assert_eq!(out, "true system:serviceaccount:team:robot");

    assert_eq!(k.kubectl_ok(&["auth", "can-i", "create", "pods"], None)?.trim(), "yes");
    // An access review is not stored: as upstream, its metadata must be empty.
    let review = |metadata: &str| {
        format!(
            r#"{{"apiVersion":"authorization.k8s.io/v1","kind":"SelfSubjectAccessReview","metadata":{metadata},"spec":{{"resourceAttributes":{{"verb":"get","resource":"pods"}}}}}}"#
        )
    };
    let named = k.kubectl(&["create", "-f", "-"], Some(&review(r#"{"name":"x"}"#)))?;
    let err = String::from_utf8_lossy(&named.stderr);
    assert!(!named.status.success() && err.contains("must be empty"), "{err}");
    let out = k.kubectl_ok(
        &["create", "-f", "-", "-o", "jsonpath={.status.allowed}"],
        Some(&review("{}")),
    )?;
    assert_eq!(out, "true");
    assert!(k.kubectl_ok(&["auth", "whoami"], None)?.contains("kubesim-admin"));
    k.kubectl_ok(&["run", "solo", "--image=trellis-testapp:1", "--restart=Never"], None)?;
    let out = k.kubectl(&["logs", "solo"], None)?;
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not run containers"));

    // Kinds without protobuf support are refused with a way forward.
    let out = k.kubectl(&["create", "deployment", "d", "--image=trellis-testapp:1"], None)?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--dry-run=client -o yaml | kubectl apply -f -"),
        "{err}"
    );
    Ok(())
}

#[test]
fn built_in_kinds_are_validated_and_explained() -> Result<()> {
    let k = TestCluster::start()?;
    let typo = WEB.replace("replicas: 2", "replicas: 2\n  replicaz: 3");
    let out = k.kubectl(&["apply", "-f", "-"], Some(&typo))?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("strict decoding error: unknown field \"spec.replicaz\""),
        "{err}"
    );
    // With validation off the unknown field is dropped, as upstream does.
    k.kubectl_ok(&["apply", "--validate=false", "-f", "-"], Some(&typo))?;
    let spec = k.kubectl_ok(&["get", "deploy", "web", "-n", "shop", "-o", "jsonpath={.spec}"], None)?;
    assert!(!spec.contains("replicaz"), "{spec}");

    let nameless =
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n  - image: trellis-testapp:1\n";
    let out = k.kubectl(&["apply", "-f", "-"], Some(nameless))?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("The Pod \"p\" is invalid: spec.containers[0].name: Required value"),
        "{err}"
    );

    let explained = k.kubectl_ok(&["explain", "deployment.spec.replicas"], None)?;
    assert!(explained.contains("FIELD: replicas <integer>"), "{explained}");
    Ok(())
}

/// `kubectl get -w` streams Table rows from a watch.
#[test]
fn get_watch_streams_table_rows() -> Result<()> {
    use std::io::BufRead as _;
    let k = TestCluster::start()?;
    let mut child = k
        .kubectl_command()
        .args(["get", "configmaps", "-w", "--output-watch-events"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(|l| l.ok()) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    k.kubectl_ok(
        &["apply", "-f", "-"],
        Some("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: watched\ndata: {a: b}\n"),
    )?;
    k.kubectl_ok(&["label", "cm", "watched", "seen=yes"], None)?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut lines = Vec::new();
    while std::time::Instant::now() < deadline
        && !lines
            .iter()
            .any(|l: &String| l.starts_with("MODIFIED") && l.contains("watched"))
    {
        if let Ok(line) = rx.recv_timeout(std::time::Duration::from_millis(200)) {
            lines.push(line);
        }
    }
    // Ending the watch is this test's job; an already-exited kubectl is fine.
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        lines
            .first()
            .is_some_and(|h| h.contains("EVENT") && h.contains("NAME") && h.contains("DATA")),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("ADDED") && l.contains("watched")),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("MODIFIED") && l.contains("watched")),
        "{lines:?}"
    );
    Ok(())
}
