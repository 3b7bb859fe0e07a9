//! `meshctl validate` run as a user runs it: the real binary, real files, exit codes.

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn meshctl(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("meshctl runs");
    let mut input = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn examples() -> String {
    format!("{}/../examples", env!("CARGO_MANIFEST_DIR"))
}

const BAD: &str = "\
apiVersion: networking.trellis.dev/v1alpha1
kind: VirtualService
metadata:
  name: payment
  namespace: shop
spec:
  hosts: [payment]
  http:
  - route:
    - destination: {host: payment, subset: v1}
      weight: 80
    - destination: {host: payment, subset: v2}
      weight: 10
";

#[test]
fn the_examples_are_valid() {
    let o = meshctl(&["validate", "-f", &examples()], None);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = text(&o);
    assert!(out.contains("0 invalid"), "{out}");
    assert!(!out.contains(": error:") && !out.contains(": warning:"), "{out}");
}

#[test]
fn an_invalid_document_exits_1_naming_file_line_object_and_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("vs.yaml");
    std::fs::write(
        &file,
        format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: x}}\n---\n{BAD}"),
    )
    .unwrap();
    let o = meshctl(&["validate", "-f", file.to_str().unwrap()], None);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let out = text(&o);
    let expected = format!(
        "{}:5: error: VirtualService shop/payment: spec.http[0].route[1].weight: the weights sum to 90; they must sum to 100",
        file.display()
    );
    assert!(out.contains(&expected), "{out}");
    assert!(
        out.contains(":1: ConfigMap x: skipped: v1 ConfigMap is a Kubernetes kind"),
        "{out}"
    );
}

#[test]
fn stdin_and_json_output() {
    let o = meshctl(&["validate", "-f", "-", "-o", "json"], Some(BAD));
    assert_eq!(o.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON report");
    let doc = &report["documents"][0];
    assert_eq!(doc["file"], "-");
    assert_eq!(doc["line"], 1);
    assert_eq!(doc["status"], "invalid");
    assert_eq!(doc["findings"][0]["severity"], "error");
    assert_eq!(doc["findings"][0]["path"], "spec.http[0].route[1].weight");
    assert_eq!(doc["findings"][0]["object"]["namespace"], "shop");
    assert_eq!(report["summary"]["invalid"], 1);
}

#[test]
fn warnings_alone_exit_0() {
    let doc = "apiVersion: networking.trellis.dev/v1alpha1\nkind: DestinationRule\nmetadata: {name: r, namespace: shop}\nspec:\n  host: reviews.shop\n";
    let o = meshctl(&["validate", "-f", "-"], Some(doc));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).contains("-:1: warning: DestinationRule shop/r: spec.host:"),
        "{}",
        text(&o)
    );
}

#[test]
fn istio_yaml_is_validated_as_trellis() {
    let doc = BAD.replace("networking.trellis.dev/v1alpha1", "networking.istio.io/v1beta1");
    let o = meshctl(&["validate", "-f", "-"], Some(&doc));
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("spec.http[0].route[1].weight"));
}

#[test]
fn unknown_trellis_kind_is_an_error() {
    let doc = "apiVersion: networking.trellis.dev/v1alpha1\nkind: WorkloadEntry\nmetadata: {name: x}\n";
    let o = meshctl(&["validate", "-f", "-"], Some(doc));
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("unknown kind \"WorkloadEntry\""), "{}", text(&o));
}

#[test]
fn malformed_yaml_reports_its_line_and_does_not_panic() {
    let doc = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\napiVersion: networking.trellis.dev/v1alpha1\nkind: VirtualService\nmetadata:\n  name: [unclosed\n";
    let o = meshctl(&["validate", "-f", "-"], Some(doc));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let out = text(&o);
    assert!(out.contains("-:9: error: not valid YAML or JSON"), "{out}");
    assert!(out.contains("at line 8 column 9"), "{out}");
    assert!(!out.contains("panicked"), "{out}");
}

#[test]
fn usage_and_io_errors_exit_2() {
    let o = meshctl(&["validate"], None);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let o = meshctl(&["validate", "-f", "/nonexistent/file.yaml"], None);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("cannot read /nonexistent/file.yaml"), "{}", text(&o));
    let o = meshctl(&["validate", "-f", "x.yaml", "-o", "xml"], None);
    assert_eq!(o.status.code(), Some(2));
    let o = meshctl(&["frobnicate"], None);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn help_version_and_completion() {
    let o = meshctl(&["--help"], None);
    assert_eq!(o.status.code(), Some(0));
    assert!(text(&o).contains("validate"));
    let o = meshctl(&["version", "--client"], None);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).starts_with(&format!("meshctl {}", env!("CARGO_PKG_VERSION"))));
    for shell in ["bash", "zsh", "fish"] {
        let o = meshctl(&["completion", shell], None);
        assert_eq!(o.status.code(), Some(0), "{shell}");
        assert!(String::from_utf8_lossy(&o.stdout).contains("meshctl"), "{shell}");
    }
}
