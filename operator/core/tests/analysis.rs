//! Every analysis code provoked by a fixture (`tests/analysis/<CODE>*.yaml`, each analyzed on
//! top of the clean `base.yaml`): the findings are exactly the ones the fixture expects, on
//! the lines it names; the base shop and the repository's `examples/` are silent.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use trellis_api::document::parse_documents;
use trellis_api::validation::Validator;
use trellis_core::analysis::{Finding, Input, Object, Source, analyze};
use trellis_core::code::Code;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/analysis")
}

fn objects(path: &Path) -> Vec<Object> {
    let text = std::fs::read_to_string(path).unwrap();
    parse_documents(&text)
        .into_iter()
        .map(|d| Object {
            value: d.content.unwrap_or_else(|e| panic!("{}: {e}", path.display())),
            source: Some(Source {
                file: path.file_name().unwrap().to_string_lossy().into_owned(),
                line: d.line,
                text: d.text,
            }),
        })
        .collect()
}

fn run(paths: &[PathBuf]) -> Vec<Finding> {
    let input = Input {
        objects: paths.iter().flat_map(|p| objects(p)).collect(),
        complete: BTreeSet::new(),
        root_namespace: None,
    };
    analyze(&input, &Validator::new())
}

/// `# expect: CODE Kind ns/name[:LINE]` lines.
fn expectations(path: &Path) -> Vec<(String, String, Option<usize>)> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("# expect: "))
        .map(|e| {
            let (code, rest) = e.split_once(' ').unwrap();
            let (origin, line) = match rest.rsplit_once(':') {
                Some((o, l)) if l.chars().all(|c| c.is_ascii_digit()) => (o, Some(l.parse().unwrap())),
                _ => (rest, None),
            };
            (code.to_string(), origin.to_string(), line)
        })
        .collect()
}

/// A policy with a selector in the root namespace selects pods of every namespace; elsewhere,
/// of its own namespace only. The root namespace is the operator's (`Input::root_namespace`),
/// and, as Kubernetes' own, not expected to be meshed.
#[test]
fn a_policy_in_the_root_namespace_selects_pods_of_every_namespace() {
    let policy = "apiVersion: v1\nkind: Namespace\nmetadata: {name: operators}\n---\n\
                  apiVersion: security.trellis.dev/v1alpha1\nkind: PeerAuthentication\n\
                  metadata: {name: payment-strict, namespace: operators}\n\
                  spec: {selector: {matchLabels: {app: payment}}, mtls: {mode: STRICT}}\n";
    let mut objects = objects(&dir().join("base.yaml"));
    objects.extend(parse_documents(policy).into_iter().map(|d| Object {
        value: d.content.unwrap(),
        source: None,
    }));
    let codes = |root: Option<&str>| -> Vec<String> {
        let input = Input {
            objects: objects.clone(),
            complete: BTreeSet::new(),
            root_namespace: root.map(str::to_string),
        };
        analyze(&input, &Validator::new())
            .iter()
            .map(|f| format!("{} {}", f.code, f.origin))
            .collect()
    };
    // The operator in trellis-system: `operators` is an ordinary namespace, with no payment
    // pod, and not labelled for injection.
    assert_eq!(
        codes(None),
        [
            "IST0127 PeerAuthentication operators/payment-strict",
            "IST0102 Namespace operators"
        ]
    );
    // The operator in `operators` (OLM): the policy selects shop's payment pods, and the
    // control plane's namespace is not expected in the mesh.
    assert_eq!(codes(Some("operators")), Vec::<String>::new());
}

#[test]
fn the_base_shop_is_clean() {
    let f = run(&[dir().join("base.yaml")]);
    assert!(f.is_empty(), "{f:#?}");
}

#[test]
fn every_fixture_provokes_exactly_its_findings() {
    let mut provoked: BTreeSet<String> = BTreeSet::new();
    let mut fixtures: Vec<PathBuf> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap() != "base.yaml")
        .collect();
    fixtures.sort();
    let mut failures = Vec::new();
    for fixture in &fixtures {
        let name = fixture.file_name().unwrap().to_string_lossy().into_owned();
        let expected = expectations(fixture);
        assert!(!expected.is_empty(), "{name} expects nothing");
        let found = run(&[dir().join("base.yaml"), fixture.clone()]);
        let got: BTreeSet<(String, String)> = found.iter().map(|f| (f.code.to_string(), f.origin.clone())).collect();
        let want: BTreeSet<(String, String)> = expected.iter().map(|(c, o, _)| (c.clone(), o.clone())).collect();
        if got != want {
            failures.push(format!("{name}: expected {want:?}\n  found {found:#?}"));
            continue;
        }
        if found.len() != want.len() {
            failures.push(format!("{name}: one finding per problem, found {found:#?}"));
        }
        for (code, origin, line) in &expected {
            let f = found
                .iter()
                .find(|f| &f.code.to_string() == code && &f.origin == origin)
                .unwrap();
            if f.file.as_deref() != Some(name.as_str())
                && f.origin != "Gateway shop/shop-gateway"
                && f.origin != "VirtualService shop/payment"
                && f.origin != "VirtualService shop/web-gateway"
            {
                failures.push(format!("{name}: {code} {origin} placed in {:?}", f.file));
            }
            if let Some(line) = line
                && f.line != Some(*line)
            {
                failures.push(format!("{name}: {code} {origin} on line {:?}, expected {line}", f.line));
            }
            assert!(!f.message.is_empty());
            provoked.insert(code.clone());
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Every code analysis itself reports has a fixture (the proxy codes come from the
    // operator's sync state, tested with meshctl). The compiler's drop codes cannot be
    // provoked by valid objects — tests/dropped.rs proves the validator rejects every
    // construct they report — and analysis compiles only valid ones.
    // The key-set codes come from what the operator fetched (`Snapshot::jwks`), which files
    // do not have: compile::diagnose's unit test provokes them.
    let from_operator = [
        Code::ProxyConfigRejected,
        Code::ProxyVersionSkew,
        Code::ProxyNotSynced,
        Code::JwksUnavailable,
        Code::JwksStale,
    ];
    let unreachable = [Code::UnsupportedDropped, Code::UnsupportedIgnored];
    for c in Code::ALL
        .iter()
        .filter(|c| !from_operator.contains(c) && !unreachable.contains(c))
    {
        assert!(
            provoked.contains(c.id()),
            "no fixture provokes {c} ({})",
            c.definition().name
        );
    }
}

#[test]
fn the_examples_are_clean() {
    for sub in ["shop", "demo", "istio"] {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples").join(sub);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&root).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        let f = run(&files);
        assert!(f.is_empty(), "examples/{sub}: {f:#?}");
    }
}
