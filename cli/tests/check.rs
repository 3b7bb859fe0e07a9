//! `meshctl check` failing each check once on a live cluster — the binary as a user runs it,
//! against kubesim, or upstream Kubernetes with `TRELLIS_E2E_CLUSTER=upstream` — with the ✘
//! and the hint, and, where the hint names a fix a user can follow, passing again once it is
//! followed:
//! - the sidecar injector unreachable (its configuration names a Service that does not
//!   exist): fixed by re-running `meshctl install`;
//! - the operator's rollout stuck (an image that does not exist): fixed by putting the image
//!   back;
//! - the mesh root valid for less than 60 days (a short-lived root plugged through the Mesh's
//!   `spec.ca.secretRef`): the hint names that Secret; fixed by putting a new root in it;
//! - a proxy serving a certificate from the previous root, holding a root rotation (the gateway
//!   unable to store its renewed certificate while the operator rotates to a new root: the
//!   operator keeps the old root trusted while the gateway reports serving a leaf of it): the
//!   check names the pod and the rotation's phase; fixed by restarting it, after which the
//!   rotation ends. (A proxy on a root no longer trusted cannot be provoked this way any more —
//!   the operator retires a root only once every connected proxy reports a leaf of the new
//!   one —; its verdict is in `check::certificates`.)
//! - an unsupported Kubernetes version (kubesim reporting v1.27.3; upstream reports what it
//!   is, so that test runs on kubesim only);
//! - `check --pre` as a user without rights (a ServiceAccount's token, no RBAC): only where
//!   RBAC is enforced — upstream Kubernetes; kubesim allows every request, and there the test
//!   records a skip (CI's kubesim run leaves it out, its upstream run runs it).
//!
//! Elsewhere: the API server unreachable, the CRDs missing, a webhook configuration missing
//! and the operator scaled to zero in `lifecycle.rs`; a proxy that rejects its configuration,
//! one that does not acknowledge it and one not connected in `analyze_mesh.rs`; every verdict
//! alone in `check::verdicts` and `check::data_plane`.

mod support;

use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use support::{Target, check, meshctl_at, rollout, status_of, text, until_healthy};
use trellis_manifests::install::webhooks::INJECTOR;

/// Provocations whose check did not fail as expected: each is checked even when an earlier
/// one was not, and the test fails at the end listing all of them.
#[derive(Debug, Default)]
struct Misses(Vec<String>);

impl Misses {
    /// Polls `meshctl check` until check `name` has `status` with `detail` and `hint` in its
    /// text, for up to `timeout`; a miss is recorded with the last checks seen.
    fn expect(
        &mut self,
        cluster: &Target,
        what: &str,
        name: &str,
        status: &str,
        (detail, hint): (&str, &str),
        timeout: Duration,
    ) -> Option<Value> {
        let found = cluster.wait_for(what, timeout, || {
            let (code, checks) = check(cluster);
            let c = status_of(&checks, name).clone();
            let matches = c["status"] == status
                && c["detail"].as_str().unwrap_or_default().contains(detail)
                && (hint.is_empty() || c["hint"].as_str().unwrap_or_default().contains(hint))
                && (status != "failed" || code == 1);
            Ok(matches.then_some(c))
        });
        match found {
            Ok(c) => {
                eprintln!("[check] {what}: {c}");
                Some(c)
            }
            Err(e) => {
                let last = status_of(&check(cluster).1, name).clone();
                let miss =
                    format!("{what}: {e}; wanted {name:?} {status} with {detail:?} and hint {hint:?}, last: {last}");
                eprintln!("[check] MISSED {miss}");
                self.0.push(miss);
                None
            }
        }
    }
}

/// A self-signed CA certificate (ECDSA P-256) valid from a day ago for `days` more, and its
/// key, both PEM: what a user plugs into the mesh.
fn root(days: u64) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("meshctl check test root ({days} days)"),
    );
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(1));
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let day = Duration::from_secs(86_400);
    let now = SystemTime::now();
    params.not_before = time::OffsetDateTime::from(now - day);
    params.not_after = time::OffsetDateTime::from(now + day * u32::try_from(days).unwrap());
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// Secret `security/corp-ca` holding a root valid for `days`.
fn plug_root(cluster: &Target, days: u64) {
    let (cert, key) = root(days);
    let secret = json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "corp-ca", "namespace": "security"},
        "stringData": {"ca.crt": cert, "ca.key": key}});
    cluster.apply(&secret.to_string()).unwrap();
}

/// Days in a root check's detail (`the issuing root expires in 29 days`, `364 days left`).
fn days_in(c: &Value) -> u64 {
    c["detail"]
        .as_str()
        .unwrap_or_default()
        .split(' ')
        .find_map(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no day count in {c}"))
}

#[test]
fn each_check_fails_once_with_its_fix() {
    let Some(cluster) = support::cluster() else {
        return;
    };
    let install = meshctl_at(cluster.kubeconfig(), &["install"]);
    assert!(install.status.success(), "{}", text(&install).1);
    let checks = until_healthy(&cluster);
    for c in &checks {
        assert_eq!(c["status"], "ok", "a healthy mesh: {checks:#?}");
    }
    let mut misses = Misses::default();
    let slow = Duration::from_secs(90);

    // The injector unreachable: both its webhooks (pods of labelled namespaces, labelled pods)
    // name a Service that does not exist. The API server cannot call them, and their failure
    // policy (Fail) refuses the pod.
    let gone: Vec<Value> = (0..2)
        .map(|i| json!({"op": "replace", "path": format!("/webhooks/{i}/clientConfig/service/name"), "value": "trellis-operator-gone"}))
        .collect();
    cluster
        .kubectl_ok(
            &[
                "patch",
                "mutatingwebhookconfiguration",
                INJECTOR,
                "--type=json",
                "-p",
                &Value::Array(gone).to_string(),
            ],
            None,
        )
        .unwrap();
    misses.expect(
        &cluster,
        "the injector unreachable",
        "sidecar injector",
        "failed",
        (
            "a dry-run pod creation in namespace default was not admitted",
            "re-run `meshctl install`",
        ),
        slow,
    );
    // The hint's fix: meshctl install puts the configuration back.
    let again = meshctl_at(cluster.kubeconfig(), &["install"]);
    assert!(again.status.success(), "{}", text(&again).1);
    misses.expect(
        &cluster,
        "the injector after `meshctl install`",
        "sidecar injector",
        "ok",
        ("a dry-run pod got its sidecar", ""),
        slow,
    );

    // The operator's rollout stuck: a new pod template whose image does not exist. The old
    // replicas keep serving (one surge pod at a time), but the operator is not rolled out.
    let deployment = ["deployment", "trellis-operator", "-n", "trellis-system"];
    let set_image = |image: &str| {
        let patch = json!([{"op": "replace", "path": "/spec/template/spec/containers/0/image", "value": image}]);
        let mut args = vec!["patch"];
        args.extend_from_slice(&deployment);
        let patch = patch.to_string();
        args.extend_from_slice(&["--type=json", "-p", &patch]);
        cluster.kubectl_ok(&args, None).unwrap();
    };
    let mut get = vec!["get"];
    get.extend_from_slice(&deployment);
    get.extend_from_slice(&["-o", "jsonpath={.spec.template.spec.containers[0].image}"]);
    let image = cluster.kubectl_ok(&get, None).unwrap();
    set_image("ghcr.io/trellis-mesh/trellis-operator-missing:0.0.0");
    misses.expect(
        &cluster,
        "the operator's rollout stuck",
        "operator is ready",
        "failed",
        (
            "not rolled out: 1 of 2 replicas updated to the current pod template",
            "kubectl -n trellis-system rollout status deployment/trellis-operator",
        ),
        slow,
    );
    // The hint's fix: the rollout does not finish, so the image is put back.
    set_image(&image);
    rollout(&cluster, "trellis-operator");
    until_healthy(&cluster);

    // The CA, on one operator replica: each replica runs the root rotation from the
    // certificates it signed, so with one the replica that signs the gateway's renewal is the
    // one that rotates.
    let mut scale = vec!["scale"];
    scale.extend_from_slice(&deployment);
    scale.push("--replicas=1");
    cluster.kubectl_ok(&scale, None).unwrap();
    rollout(&cluster, "trellis-operator");
    until_healthy(&cluster);
    // A root valid for 30 more days, plugged through the Mesh: the operator rotates to it
    // (plugged roots are the user's to renew) and issues from it once every proxy trusts it;
    // the check says it expires, naming the Secret to renew it in.
    cluster.kubectl_ok(&["create", "namespace", "security"], None).unwrap();
    plug_root(&cluster, 30);
    cluster
        .kubectl_ok(
            &[
                "patch",
                "mesh",
                "default",
                "--type=merge",
                "-p",
                r#"{"spec": {"ca": {"mode": "Plugged", "secretRef": {"name": "corp-ca", "namespace": "security"}}}}"#,
            ],
            None,
        )
        .unwrap();
    if let Some(c) = misses.expect(
        &cluster,
        "a root valid for 30 days",
        "mesh root",
        "failed",
        (
            "the issuing root expires in",
            "plugged from Secret security/corp-ca (the Mesh's spec.ca.secretRef)",
        ),
        Duration::from_secs(120),
    ) {
        assert!((29..=30).contains(&days_in(&c)), "{c}");
    }
    // The gateway renewed from it during the rotation, and says so.
    misses.expect(
        &cluster,
        "the gateway's certificate from the 30-day root",
        "certificate comes from the current root",
        "ok",
        ("1 proxies, all with a certificate from root", ""),
        slow,
    );

    // A proxy holding a root rotation: the gateway cannot store a new certificate (its key file
    // cannot be written), so it keeps serving the one from the 30-day root while the operator,
    // which signs its renewals, rotates to a new root. Its subscription stays open throughout
    // and it reports the certificate it serves, so the operator keeps the 30-day root trusted
    // (whichever replica signed the renewals) and waits for it.
    let gateway = support::system_pod(&cluster, "trellis-ingressgateway");
    support::block_certificate_writes("trellis-system", &gateway).unwrap();
    // The root's fix: a new root in the plugged Secret, which the operator copies and
    // rotates to.
    plug_root(&cluster, 400);
    if let Some(c) = misses.expect(
        &cluster,
        "the renewed plugged root",
        "mesh root",
        "ok",
        ("days left", ""),
        Duration::from_secs(120),
    ) {
        assert!(days_in(&c) >= 399, "{c}");
    }
    misses.expect(
        &cluster,
        "a proxy certificate from the previous root, which the rotation waits for",
        "certificate comes from the current root",
        "warning",
        (
            &format!("1 of 1 proxies still serve a certificate from a previous root, trusted until the rotation ends — and it waits for them: trellis-system/{gateway} (from root "),
            "restart its pod",
        ),
        slow,
    );
    let waiting = status_of(&check(&cluster).1, "certificate comes from the current root").clone();
    assert!(
        waiting["detail"]
            .as_str()
            .is_some_and(|d| d.contains("root rotation phase Reissuing")),
        "the rotation waits in Reissuing: {waiting}"
    );
    // The hint's fix: its pod replaced, the new proxy gets a certificate from the current
    // root, the old pod's state goes with its subscription, and the rotation ends.
    cluster
        .kubectl_ok(
            &[
                "rollout",
                "restart",
                "deployment",
                "trellis-ingressgateway",
                "-n",
                "trellis-system",
            ],
            None,
        )
        .unwrap();
    rollout(&cluster, "trellis-ingressgateway");
    misses.expect(
        &cluster,
        "every proxy certificate from the current root again",
        "certificate comes from the current root",
        "ok",
        ("1 proxies, all with a certificate from root", ""),
        slow,
    );
    // meshctl install puts the operator's second replica back.
    let again = meshctl_at(cluster.kubeconfig(), &["install"]);
    assert!(again.status.success(), "{}", text(&again).1);
    until_healthy(&cluster);

    assert!(
        misses.0.is_empty(),
        "checks that did not fail (or recover) as they should:\n{}",
        misses.0.join("\n")
    );
}

/// kubesim reporting Kubernetes v1.27.3 (its `kubernetes_version` setting; upstream reports
/// the version it is): the version check fails, naming the version needed, and the others
/// still run.
#[test]
fn an_unsupported_kubernetes_version_fails_its_check() {
    let cluster = trellis_e2e::harness::TestCluster::start_reporting_version("v1.27.3").unwrap();
    for args in [vec!["check", "--pre"], vec!["check"]] {
        let out = meshctl_at(&cluster.kubeconfig, &args);
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stdout}{stderr}");
        assert!(
            stdout.contains(
                "✘ the Kubernetes version is supported: v1.27.3-kubesim is older than v1.29, the first with native \
                 sidecar containers on by default"
            ),
            "{stdout}"
        );
        assert!(
            stdout.contains("hint: upgrade the cluster to Kubernetes v1.29 or later"),
            "{stdout}"
        );
        assert!(
            stdout.contains("✔ can reach the Kubernetes API server: Kubernetes v1.27.3-kubesim"),
            "{stdout}"
        );
    }
    let pre = meshctl_at(&cluster.kubeconfig, &["check", "--pre"]);
    assert!(
        text(&pre).0.contains("✔ you may install Trellis"),
        "the permission check still runs: {}",
        text(&pre).0
    );
}

/// A kubeconfig in `dir` for `cluster`'s API server that authenticates as ServiceAccount
/// `default/name` by a token from the TokenRequest API.
fn kubeconfig_as(cluster: &Target, dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    let token = cluster
        .kubectl_ok(&["create", "token", name, "-n", "default", "--duration=1h"], None)
        .unwrap();
    let admin = cluster
        .kubectl_ok(
            &["config", "view", "--raw", "--minify", "--flatten", "-o", "json"],
            None,
        )
        .unwrap();
    let mut config: Value = serde_json::from_str(&admin).unwrap();
    config["users"] = json!([{"name": name, "user": {"token": token.trim()}}]);
    config["contexts"][0]["context"]["user"] = json!(name);
    let path = dir.join(format!("{name}.kubeconfig"));
    std::fs::write(&path, config.to_string()).unwrap();
    path
}

/// `check --pre` as a ServiceAccount without rights: every permission installing needs is
/// named as denied, with the hint; one granted by a ClusterRole is not named. Needs a cluster
/// that enforces RBAC (upstream Kubernetes: `TRELLIS_E2E_CLUSTER=upstream`, or a real one with
/// `TRELLIS_E2E_KUBECONFIG`); kubesim allows every request.
#[test]
fn check_pre_names_each_permission_a_user_lacks() {
    if std::env::var_os("TRELLIS_E2E_KUBECONFIG").is_none()
        && trellis_e2e::suite::Bed::from_env().unwrap() == trellis_e2e::suite::Bed::Kubesim
    {
        trellis_skip::skip(
            "kubesim does not enforce RBAC (it allows every request): run with TRELLIS_E2E_CLUSTER=upstream",
        );
        return;
    }
    let Some(cluster) = support::cluster() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    cluster
        .kubectl_ok(&["create", "serviceaccount", "nobody", "-n", "default"], None)
        .unwrap();
    let kubeconfig = kubeconfig_as(&cluster, dir.path(), "nobody");
    let out = meshctl_at(&kubeconfig, &["check", "--pre"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stdout.contains(
            "✘ you may install Trellis: not allowed to create customresourcedefinitions.apiextensions.k8s.io, \
             create namespaces, create clusterroles.rbac.authorization.k8s.io"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("create deployments.apps in trellis-system")
            && stdout.contains("create meshes.mesh.trellis.dev"),
        "{stdout}"
    );
    assert!(
        stdout.contains("hint: install as a cluster administrator (the cluster-admin ClusterRole)"),
        "{stdout}"
    );
    assert!(stdout.contains("✔ the Kubernetes version is supported"), "{stdout}");

    // One permission granted: it is no longer named, the others still are.
    cluster
        .kubectl_ok(
            &[
                "create",
                "clusterrole",
                "namespace-creator",
                "--verb=create",
                "--resource=namespaces",
            ],
            None,
        )
        .unwrap();
    cluster
        .kubectl_ok(
            &[
                "create",
                "clusterrolebinding",
                "nobody-creates-namespaces",
                "--clusterrole=namespace-creator",
                "--serviceaccount=default:nobody",
            ],
            None,
        )
        .unwrap();
    let stdout = cluster
        .wait_for("the granted permission to count", Duration::from_secs(30), || {
            let out = meshctl_at(&kubeconfig, &["check", "--pre"]);
            let stdout = text(&out).0;
            Ok((!stdout.contains("create namespaces")).then_some(stdout))
        })
        .unwrap();
    assert!(
        stdout.contains("✘ you may install Trellis: not allowed to create customresourcedefinitions"),
        "{stdout}"
    );
}
