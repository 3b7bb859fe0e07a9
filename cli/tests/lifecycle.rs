//! `meshctl check`, `upgrade` and `uninstall` as a user runs them: the binary against a
//! cluster (kubesim, or upstream Kubernetes with `TRELLIS_E2E_CLUSTER=upstream`) with the
//! operator running as a pod, from `check --pre` on an empty cluster to a purge that leaves
//! nothing behind; each check failing once where the cluster can be made to fail it (the pure
//! verdicts are tested one by one in `check::verdicts` and `check::data_plane`).

mod support;

use std::process::Output;
use std::time::Duration;

use support::{Target, check, meshctl_at, rollout, status_of, text, unreachable_kubeconfig, until_healthy};

const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The older release installed first: the tag every test bed provides for it (kubesim ignores
/// tags; upstream's node has the images under it too).
const OLD: &str = trellis_e2e::upstream::OLDER_RELEASE_TAG;

/// `--set` of component `name`'s image at the older release.
fn old_image(name: &str) -> String {
    format!("versions.{name}=ghcr.io/trellis-mesh/trellis-{name}:{OLD}")
}

fn meshctl(cluster: &Target, args: &[&str]) -> Output {
    meshctl_at(cluster.kubeconfig(), args)
}

fn exists(cluster: &Target, args: &[&str]) -> bool {
    let mut all = vec!["get"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-o", "name", "--ignore-not-found"]);
    !cluster.kubectl_ok(&all, None).unwrap().trim().is_empty()
}

#[test]
fn check_upgrade_uninstall_and_purge_leave_nothing_behind() {
    let Some(cluster) = support::cluster() else {
        return;
    };

    // Before installing: the cluster can take Trellis, and `check` says nothing is installed.
    let pre = meshctl(&cluster, &["check", "--pre"]);
    let (stdout, stderr) = text(&pre);
    assert_eq!(pre.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("✔ you may install Trellis: 12 permissions granted"),
        "{stdout}"
    );
    assert!(stdout.contains("✔ the Kubernetes version is supported"), "{stdout}");
    let (code, checks) = check(&cluster);
    assert_eq!(code, 1);
    assert_eq!(status_of(&checks, "CRDs")["status"], "failed");
    assert_eq!(
        status_of(&checks, "CRDs")["hint"],
        "run `meshctl install` (it applies the CRDs and waits until they are Established)"
    );

    // An older installation, with a setting of the user's.
    let install = meshctl(
        &cluster,
        &[
            "install",
            "--wait=false",
            "--set",
            &old_image("operator"),
            "--set",
            &old_image("proxy"),
            "--set",
            "defaultMtlsMode=STRICT",
        ],
    );
    assert!(install.status.success(), "{}", text(&install).1);
    rollout(&cluster, "trellis-operator");
    rollout(&cluster, "trellis-ingressgateway");
    let checks = until_healthy(&cluster);
    let skew = status_of(&checks, "one version");
    assert_eq!(skew["status"], "warning", "{skew}");
    assert!(skew["detail"].as_str().unwrap().contains(OLD), "{skew}");
    for name in [
        "operator is ready",
        "validating webhook",
        "sidecar injector",
        "mesh root",
        "connected",
        "applied",
    ] {
        assert_eq!(status_of(&checks, name)["status"], "ok", "{name}: {checks:#?}");
    }
    cluster
        .kubectl_ok(
            &["apply", "-f", "-"],
            Some(
                "apiVersion: networking.trellis.dev/v1alpha1\nkind: VirtualService\nmetadata: {name: users, namespace: default}\n\
                 spec: {hosts: [users], http: [{route: [{destination: {host: users}}]}]}\n",
            ),
        )
        .unwrap();

    // A missing webhook configuration fails its check, with the fix.
    cluster
        .kubectl_ok(&["delete", "validatingwebhookconfiguration", "trellis-validator"], None)
        .unwrap();
    let (code, checks) = check(&cluster);
    assert_eq!(code, 1);
    let validator = status_of(&checks, "validating webhook");
    assert_eq!(validator["status"], "failed");
    assert!(
        validator["detail"].as_str().unwrap().contains("does not exist"),
        "{validator}"
    );
    assert!(
        validator["hint"].as_str().unwrap().contains("meshctl install"),
        "{validator}"
    );

    // Upgrade: without a terminal and --yes, it shows the diff and changes nothing.
    let refused = meshctl(&cluster, &["upgrade"]);
    let (diff, stderr) = text(&refused);
    assert_eq!(refused.status.code(), Some(5), "{stderr}");
    assert!(stderr.contains("pass --yes"), "{stderr}");
    assert!(
        diff.contains(&format!("-        image: ghcr.io/trellis-mesh/trellis-operator:{OLD}"))
            && diff.contains(&format!(
                "+        image: ghcr.io/trellis-mesh/trellis-operator:{VERSION}"
            )),
        "{diff}"
    );
    assert!(
        diff.contains("--- ValidatingWebhookConfiguration trellis-validator (created)"),
        "{diff}"
    );
    // The gateway keeps its proxy image: the Mesh names the new one, and the operator's
    // rollout, not meshctl, brings the gateway to it.
    assert!(
        diff.contains(&format!("+    proxy: ghcr.io/trellis-mesh/trellis-proxy:{VERSION}"))
            && !diff.contains("--- Deployment trellis-system/trellis-ingressgateway"),
        "{diff}"
    );
    let image = |name: &str| {
        cluster
            .kubectl_ok(
                &[
                    "get",
                    "deployment",
                    name,
                    "-n",
                    "trellis-system",
                    "-o",
                    "jsonpath={.spec.template.spec.containers[0].image}",
                ],
                None,
            )
            .unwrap()
    };
    assert!(
        image("trellis-operator").ends_with(&format!(":{OLD}")),
        "nothing was applied"
    );
    // --yes applies it, keeping the user's settings; a second upgrade has nothing to do.
    let upgrade = meshctl(&cluster, &["upgrade", "--yes", "--wait=false"]);
    assert!(upgrade.status.success(), "{}", text(&upgrade).1);
    assert!(text(&upgrade).0.contains("Trellis upgraded"), "{}", text(&upgrade).0);
    assert!(image("trellis-operator").ends_with(&format!(":{VERSION}")));
    cluster
        .wait_for(
            "the operator's rollout to bring the gateway to the new proxy",
            Duration::from_secs(180),
            || {
                Ok(image("trellis-ingressgateway")
                    .ends_with(&format!(":{VERSION}"))
                    .then_some(()))
            },
        )
        .unwrap();
    let mode = cluster
        .kubectl_ok(
            &["get", "mesh", "default", "-o", "jsonpath={.spec.defaultMtlsMode}"],
            None,
        )
        .unwrap();
    assert_eq!(mode, "STRICT", "the installed settings are kept");
    assert!(exists(
        &cluster,
        &["validatingwebhookconfiguration", "trellis-validator"]
    ));
    rollout(&cluster, "trellis-operator");
    rollout(&cluster, "trellis-ingressgateway");
    let again = meshctl(&cluster, &["upgrade", "--yes", "--wait=false"]);
    assert!(text(&again).0.contains("Nothing to upgrade"), "{}", text(&again).0);
    let checks = until_healthy(&cluster);
    assert_eq!(status_of(&checks, "one version")["status"], "ok", "{checks:#?}");

    // The operator down: its check, the webhooks and the CA all fail, each with a hint.
    cluster
        .kubectl_ok(
            &[
                "scale",
                "deployment",
                "trellis-operator",
                "-n",
                "trellis-system",
                "--replicas=0",
            ],
            None,
        )
        .unwrap();
    cluster
        .wait_for("the operator's pod to be gone", Duration::from_secs(60), || {
            let pods = cluster.kubectl_ok(
                &[
                    "get",
                    "pods",
                    "-n",
                    "trellis-system",
                    "-l",
                    "app=trellis-operator",
                    "-o",
                    "name",
                ],
                None,
            )?;
            Ok(pods.trim().is_empty().then_some(()))
        })
        .unwrap();
    let (code, checks) = check(&cluster);
    assert_eq!(code, 1);
    for (name, hint) in [
        ("operator is ready", "re-run `meshctl install`"),
        ("validating webhook", "the operator keeps the caBundle current"),
        ("sidecar injector", "re-run `meshctl install`"),
        ("mesh root", "the operator must be running"),
    ] {
        let c = status_of(&checks, name);
        assert_eq!(c["status"], "failed", "{c}");
        assert!(c["hint"].as_str().unwrap_or_default().contains(hint), "{c}");
    }
    assert!(
        status_of(&checks, "operator is ready")["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("scaled to 0 replicas"),
        "{checks:#?}"
    );

    // Uninstall: refused without --yes, then the control plane goes and the rest stays.
    let refused = meshctl(&cluster, &["uninstall"]);
    assert_eq!(refused.status.code(), Some(5), "{}", text(&refused).1);
    assert!(
        text(&refused)
            .1
            .contains("Kept: the Trellis CRDs and objects (1 Mesh, 1 VirtualService)"),
        "{}",
        text(&refused).1
    );
    assert!(exists(
        &cluster,
        &["deployment", "trellis-operator", "-n", "trellis-system"]
    ));
    let uninstall = meshctl(&cluster, &["uninstall", "--yes"]);
    assert!(uninstall.status.success(), "{}", text(&uninstall).1);
    for gone in [
        vec![
            "deployment,service,serviceaccount,role,rolebinding",
            "-n",
            "trellis-system",
            "-l",
            "app.kubernetes.io/part-of=trellis",
        ],
        vec![
            "clusterrole,clusterrolebinding",
            "-l",
            "app.kubernetes.io/part-of=trellis",
        ],
        vec![
            "validatingwebhookconfiguration,mutatingwebhookconfiguration",
            "-l",
            "app.kubernetes.io/part-of=trellis",
        ],
    ] {
        assert!(!exists(&cluster, &gone), "left behind: {gone:?}");
    }
    assert!(exists(&cluster, &["crd", "virtualservices.networking.trellis.dev"]));
    assert!(exists(&cluster, &["virtualservice", "users", "-n", "default"]));
    assert!(exists(&cluster, &["mesh", "default"]));
    assert!(
        exists(&cluster, &["secret", "trellis-ca", "-n", "trellis-system"]),
        "the mesh CA is kept"
    );

    // Purge: nothing of Trellis is left.
    let purge = meshctl(&cluster, &["uninstall", "--purge", "--yes"]);
    assert!(purge.status.success(), "{}", text(&purge).1);
    let crds = cluster.kubectl_ok(&["get", "crd", "-o", "name"], None).unwrap();
    assert!(!crds.contains("trellis.dev"), "{crds}");
    assert!(!exists(&cluster, &["namespace", "trellis-system"]));
    let configmaps = cluster
        .kubectl_ok(&["get", "configmap", "-A", "-o", "name"], None)
        .unwrap();
    assert!(!configmaps.contains("trellis-ca-root"), "{configmaps}");
    assert!(!exists(
        &cluster,
        &[
            "clusterrole,clusterrolebinding",
            "-l",
            "app.kubernetes.io/part-of=trellis"
        ]
    ));
}

#[test]
fn an_unreachable_cluster_fails_the_first_check_and_stops_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = unreachable_kubeconfig(dir.path());
    let run = |args: &[&str]| meshctl_at(&kubeconfig, args);
    let out = run(&["check"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stdout.contains(
            "✘ can reach the Kubernetes API server: cannot reach the Kubernetes API server at https://127.0.0.1:9"
        ),
        "{stdout}"
    );
    assert!(stdout.contains("hint: start the cluster"), "{stdout}");
    assert!(stdout.contains("1 of 1 checks failed"), "{stdout}");
    for args in [vec!["uninstall", "--yes"], vec!["upgrade", "--yes"]] {
        let out = run(&args);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {}", text(&out).1);
        assert!(!text(&out).1.contains("panicked"));
    }
    // A malformed -f for upgrade is a usage error before any request.
    let bad = dir.path().join("mesh.yaml");
    std::fs::write(&bad, "kind: [\n").unwrap();
    let out = run(&["upgrade", "-f", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out).1);
}
