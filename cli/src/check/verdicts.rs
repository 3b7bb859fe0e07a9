//! The verdict of each `meshctl check` on the API server, the installation and the CA: a pure
//! function of what the cluster answered, with a hint that names the fix when it fails (the data
//! plane's: [`super::data_plane`]).

use base64::Engine as _;
use serde_json::Value;
use trellis_manifests::install::OPERATOR_REPLICAS;
use trellis_manifests::sidecar::PROXY_CONTAINER;

use super::{Check, Lookup, Permission};

const API: &str = "kubernetes-api";
const INSTALL: &str = "trellis-install";
const IDENTITY: &str = "trellis-identity";

/// The oldest Kubernetes Trellis runs on: native sidecars (init containers that keep running)
/// are on by default from 1.29.
pub const MIN_KUBERNETES: (u32, u32) = (1, 29);

/// How long the mesh root must still be valid.
pub const ROOT_VALIDITY_DAYS: u64 = 60;

/// The API server answered (or why not).
pub fn reachable(version: &Result<String, String>) -> Check {
    let name = "can reach the Kubernetes API server";
    match version {
        Ok(v) => Check::ok(API, name, format!("Kubernetes {v}")),
        Err(e) => Check::failed(
            API,
            name,
            e.clone(),
            "start the cluster, or point meshctl at it with --kubeconfig FILE, KUBECONFIG or --context NAME",
        ),
    }
}

/// `v1.33.0-kubesim` → (1, 33).
pub fn parse_version(v: &str) -> Option<(u32, u32)> {
    let mut parts = v.trim_start_matches('v').split('.');
    let major = parts.next()?.parse().ok()?;
    let minor: String = parts.next()?.chars().take_while(char::is_ascii_digit).collect();
    Some((major, minor.parse().ok()?))
}

/// The API server's version is one Trellis supports.
pub fn kubernetes_version(version: &str) -> Check {
    let name = "the Kubernetes version is supported";
    let (major, minor) = MIN_KUBERNETES;
    match parse_version(version) {
        Some(v) if v >= MIN_KUBERNETES => Check::ok(API, name, format!("{version} (at least v{major}.{minor})")),
        Some(_) => Check::failed(
            API,
            name,
            format!("{version} is older than v{major}.{minor}, the first with native sidecar containers on by default"),
            format!("upgrade the cluster to Kubernetes v{major}.{minor} or later"),
        ),
        None => Check::warning(
            API,
            name,
            format!("the API server reports the version {version:?}, which meshctl cannot read"),
            format!("make sure the cluster runs Kubernetes v{major}.{minor} or later"),
        ),
    }
}

/// Every permission installing needs is granted.
pub fn permissions(answers: &[(Permission, Result<bool, String>)]) -> Check {
    let name = "you may install Trellis";
    let describe = |(verb, group, resource, ns): &Permission| {
        let what = if group.is_empty() {
            resource.to_string()
        } else {
            format!("{resource}.{group}")
        };
        match ns {
            Some(ns) => format!("{verb} {what} in {ns}"),
            None => format!("{verb} {what}"),
        }
    };
    let denied: Vec<String> = answers
        .iter()
        .filter(|(_, a)| a != &Ok(true))
        .map(|(p, a)| match a {
            Err(e) => format!("{} (could not ask: {e})", describe(p)),
            _ => describe(p),
        })
        .collect();
    if denied.is_empty() {
        Check::ok(INSTALL, name, format!("{} permissions granted", answers.len()))
    } else {
        Check::failed(
            INSTALL,
            name,
            format!("not allowed to {}", denied.join(", ")),
            "install as a cluster administrator (the cluster-admin ClusterRole), or ask one to grant these",
        )
    }
}

/// The status of `kind` in `o`'s conditions is True.
fn condition_true(o: &Value, kind: &str) -> bool {
    o["status"]["conditions"]
        .as_array()
        .is_some_and(|cs| cs.iter().any(|c| c["type"] == kind && c["status"] == "True"))
}

/// Every Trellis CRD exists and is Established.
pub fn crds(live: &[(String, Lookup)]) -> Check {
    let name = "the Trellis CRDs are established";
    let mut problems = Vec::new();
    for (crd, state) in live {
        match state {
            Ok(Some(o)) if condition_true(o, "Established") => {}
            Ok(Some(_)) => problems.push(format!("{crd} is not Established")),
            Ok(None) => problems.push(format!("{crd} is missing")),
            Err(e) => problems.push(format!("{crd}: {e}")),
        }
    }
    if problems.is_empty() {
        Check::ok(INSTALL, name, format!("{} CRDs", live.len()))
    } else {
        Check::failed(
            INSTALL,
            name,
            problems.join("; "),
            "run `meshctl install` (it applies the CRDs and waits until they are Established)",
        )
    }
}

/// The operator's Deployment has rolled out and its admin API says it is ready.
pub fn operator(deployment: &Lookup, ready: Option<&Result<String, String>>) -> Check {
    let name = "the operator is ready";
    let logs = "`kubectl -n trellis-system logs deployment/trellis-operator` says why";
    match deployment {
        Err(e) => Check::failed(
            INSTALL,
            name,
            e.clone(),
            "check your access to the trellis-system namespace",
        ),
        Ok(None) => Check::failed(
            INSTALL,
            name,
            "Deployment trellis-system/trellis-operator does not exist",
            "run `meshctl install`",
        ),
        Ok(Some(d)) if !crate::install::deployment_ready(d) => Check::failed(
            INSTALL,
            name,
            format!(
                "not rolled out: {} of {} replicas updated to the current pod template, {} available",
                d["status"]["updatedReplicas"].as_i64().unwrap_or(0),
                d["spec"]["replicas"].as_i64().unwrap_or(1),
                d["status"]["availableReplicas"].as_i64().unwrap_or(0),
            ),
            format!(
                "wait for the rollout (`kubectl -n trellis-system rollout status deployment/trellis-operator`); {logs}"
            ),
        ),
        Ok(Some(d)) => match ready {
            Some(Ok(_)) => Check::ok(INSTALL, name, "rolled out, and its /ready answers"),
            Some(Err(e)) if d["spec"]["replicas"] == 0 => Check::failed(
                INSTALL,
                name,
                format!("the Deployment is scaled to 0 replicas, so nothing answers its admin /ready: {e}"),
                format!(
                    "scale it up again: re-run `meshctl install` (or `kubectl -n trellis-system scale \
                     deployment/trellis-operator --replicas={OPERATOR_REPLICAS}`)"
                ),
            ),
            Some(Err(e)) => Check::failed(
                INSTALL,
                name,
                format!("rolled out, but its admin /ready does not answer ready: {e}"),
                format!("the operator has not synced its view of the cluster yet, or cannot; {logs}"),
            ),
            None => Check::ok(INSTALL, name, "rolled out"),
        },
    }
}

/// The SHA-256 fingerprints (hex) of the PEM certificates in a webhook's base64 `caBundle`.
pub fn bundle_fingerprints(ca_bundle: &str) -> Result<Vec<String>, String> {
    let pem = base64::engine::general_purpose::STANDARD
        .decode(ca_bundle.trim())
        .map_err(|e| format!("the caBundle is not base64: {e}"))?;
    let pem = String::from_utf8(pem).map_err(|_| "the caBundle is not PEM text".to_string())?;
    let mut out = Vec::new();
    let mut body: Option<String> = None;
    for line in pem.lines().map(str::trim) {
        if line == "-----BEGIN CERTIFICATE-----" {
            body = Some(String::new());
        } else if line == "-----END CERTIFICATE-----" {
            let b64 = body.take().ok_or("the caBundle has an END line without BEGIN")?;
            let der = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| format!("a caBundle certificate is not base64: {e}"))?;
            let digest = ring::digest::digest(&ring::digest::SHA256, &der);
            out.push(digest.as_ref().iter().map(|b| format!("{b:02x}")).collect());
        } else if let Some(b) = body.as_mut() {
            b.push_str(line);
        }
    }
    if out.is_empty() {
        return Err("the caBundle holds no certificate".into());
    }
    Ok(out)
}

/// The fingerprint of the root that issues certificates now, from `/debug/ca`.
fn issuing_root(ca: &Value) -> Option<&str> {
    ca["roots"]
        .as_array()?
        .iter()
        .find(|r| r["issuing"] == true)
        .and_then(|r| r["fingerprint"].as_str())
}

/// A webhook configuration's problems: missing, a webhook without `caBundle`, or a `caBundle`
/// that does not trust the root the operator's serving certificate comes from.
fn configuration_problems(config: &Lookup, ca: Option<&Result<Value, String>>) -> Vec<String> {
    let config = match config {
        Err(e) => return vec![e.clone()],
        Ok(None) => return vec!["the configuration does not exist".into()],
        Ok(Some(c)) => c,
    };
    let kind = config["kind"].as_str().unwrap_or("webhook configuration");
    let issuing = ca.and_then(|c| c.as_ref().ok()).and_then(issuing_root);
    let mut problems = Vec::new();
    for w in config["webhooks"].as_array().into_iter().flatten() {
        let name = w["name"].as_str().unwrap_or("?");
        match w["clientConfig"]["caBundle"].as_str().map(bundle_fingerprints) {
            None => problems.push(format!("{kind} webhook {name} has no caBundle")),
            Some(Err(e)) => problems.push(format!("{kind} webhook {name}: {e}")),
            Some(Ok(fps)) => {
                if let Some(root) = issuing
                    && !fps.iter().any(|f| f == root)
                {
                    problems.push(format!(
                        "{kind} webhook {name}: its caBundle does not trust the mesh root {root}"
                    ));
                }
            }
        }
    }
    problems
}

/// The validating webhook is configured with the mesh root and answers the API server.
pub fn validator(config: &Lookup, dry_run: &Result<Value, String>, ca: Option<&Result<Value, String>>) -> Check {
    let name = "the validating webhook answers with a valid certificate";
    let mut problems = configuration_problems(config, ca);
    if let Err(e) = dry_run {
        problems.push(format!("a dry-run write of a PeerAuthentication was not admitted: {e}"));
    }
    if problems.is_empty() {
        Check::ok(
            INSTALL,
            name,
            "the API server called it for a dry-run write, over TLS it trusts",
        )
    } else {
        Check::failed(
            INSTALL,
            name,
            problems.join("; "),
            "the operator keeps the caBundle current while it runs: check `meshctl check`'s operator line, \
             or re-run `meshctl install` to restore the configuration",
        )
    }
}

/// The injector is configured with the mesh root and adds the sidecar to a dry-run pod.
pub fn injector(config: &Lookup, dry_run: &Result<Value, String>, ca: Option<&Result<Value, String>>) -> Check {
    let name = "the sidecar injector answers with a valid certificate";
    let mut problems = configuration_problems(config, ca);
    match dry_run {
        Err(e) => problems.push(format!(
            "a dry-run pod creation in namespace default was not admitted: {e}"
        )),
        Ok(pod) => {
            let injected = pod["spec"]["initContainers"]
                .as_array()
                .into_iter()
                .chain(pod["spec"]["containers"].as_array())
                .flatten()
                .any(|c| c["name"] == PROXY_CONTAINER);
            if !injected {
                problems.push(
                    "a dry-run pod labelled trellis.dev/inject=enabled in namespace default got no sidecar".into(),
                );
            }
        }
    }
    if problems.is_empty() {
        Check::ok(INSTALL, name, "a dry-run pod got its sidecar")
    } else {
        Check::failed(
            INSTALL,
            name,
            problems.join("; "),
            "re-run `meshctl install` to restore the configuration; if namespace default is labelled \
             trellis.dev/inject=disabled, that is why (remove the label to check injection)",
        )
    }
}

/// The Secret a plugged root comes from (`namespace/name`), when the Mesh `mesh` plugs one
/// (`spec.ca.mode: Plugged`); the namespace defaults to the control plane's.
pub fn plugged_secret(mesh: Option<&Lookup>) -> Option<String> {
    let ca = &mesh?.as_ref().ok()?.as_ref()?["spec"]["ca"];
    if ca["mode"] != "Plugged" {
        return None;
    }
    let name = ca["secretRef"]["name"].as_str()?;
    let namespace = ca["secretRef"]["namespace"]
        .as_str()
        .unwrap_or(trellis_api::mesh::SYSTEM_NAMESPACE);
    Some(format!("{namespace}/{name}"))
}

/// The issuing mesh root is valid for more than [`ROOT_VALIDITY_DAYS`]. `mesh` is the Mesh
/// `default`: a root it plugs is the user's to renew, and the hint names its Secret.
pub fn root_validity(ca: &Result<Value, String>, mesh: Option<&Lookup>, now: u64) -> Check {
    let name = "the mesh root certificate is valid for 60 days or more";
    let ca = match ca {
        Ok(ca) => ca,
        Err(e) => {
            return Check::failed(
                IDENTITY,
                name,
                format!("the operator's /debug/ca did not answer: {e}"),
                "the operator must be running: see the operator line",
            );
        }
    };
    let root = ca["roots"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["issuing"] == true);
    let Some(not_after) = root.and_then(|r| r["notAfterUnix"].as_u64()) else {
        return Check::failed(
            IDENTITY,
            name,
            "the operator reports no issuing root",
            "see the operator's log (`kubectl -n trellis-system logs deployment/trellis-operator`)",
        );
    };
    let days = not_after.saturating_sub(now) / 86_400;
    if days > ROOT_VALIDITY_DAYS {
        return Check::ok(IDENTITY, name, format!("{days} days left"));
    }
    let hint = match plugged_secret(mesh) {
        Some(secret) => format!(
            "the root is plugged from Secret {secret} (the Mesh's spec.ca.secretRef) and is yours to renew: put a \
             new root in its ca.crt and ca.key; the operator copies it and rotates to it with no restart"
        ),
        None => "rotate the root: annotate Secret trellis-system/trellis-ca with trellis.dev/rotate-root=true \
                 (or plug in a new root); the operator distributes it before it signs with it"
            .to_string(),
    };
    Check::failed(IDENTITY, name, format!("the issuing root expires in {days} days"), hint)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::check::Status;

    fn pem_bundle(ders: &[&[u8]]) -> String {
        let engine = base64::engine::general_purpose::STANDARD;
        let pem: String = ders
            .iter()
            .map(|d| {
                format!(
                    "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
                    engine.encode(d)
                )
            })
            .collect();
        engine.encode(pem)
    }

    fn sha(der: &[u8]) -> String {
        ring::digest::digest(&ring::digest::SHA256, der)
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    const DAY: u64 = 86_400;

    fn ca(issuing: &str, not_after: u64, leaves: Value) -> Result<Value, String> {
        Ok(json!({"phase": "Stable", "progress": "", "leavesByRoot": leaves,
            "roots": [{"fingerprint": issuing, "issuing": true, "trusted": true, "notAfterUnix": not_after}]}))
    }

    #[test]
    fn the_api_server_and_its_version() {
        assert_eq!(reachable(&Ok("v1.33.0".into())).status, Status::Ok);
        let down = reachable(&Err(
            "cannot reach the Kubernetes API server at https://127.0.0.1:9".into()
        ));
        assert_eq!(down.status, Status::Failed);
        assert!(down.hint.unwrap().contains("--kubeconfig"));
        assert_eq!(parse_version("v1.33.0-kubesim"), Some((1, 33)));
        assert_eq!(parse_version("v1.30+"), Some((1, 30)));
        assert_eq!(kubernetes_version("v1.33.0-kubesim").status, Status::Ok);
        let old = kubernetes_version("v1.27.3");
        assert_eq!(old.status, Status::Failed);
        assert!(old.hint.unwrap().contains("v1.29 or later"));
        assert_eq!(kubernetes_version("nightly").status, Status::Warning);
    }

    #[test]
    fn a_denied_permission_is_named() {
        let granted = crate::check::INSTALL_PERMISSIONS.map(|p| (p, Ok(true)));
        assert_eq!(permissions(&granted).status, Status::Ok);
        let mut denied = granted.to_vec();
        denied[2].1 = Ok(false);
        denied[6].1 = Err("forbidden".into());
        let c = permissions(&denied);
        assert_eq!(c.status, Status::Failed);
        assert!(
            c.detail.contains("create clusterroles.rbac.authorization.k8s.io"),
            "{}",
            c.detail
        );
        assert!(
            c.detail
                .contains("create deployments.apps in trellis-system (could not ask: forbidden)")
        );
        assert!(c.hint.unwrap().contains("cluster-admin"));
    }

    #[test]
    fn crds_and_the_operator() {
        let established = json!({"status": {"conditions": [{"type": "Established", "status": "True"}]}});
        let c = crds(&[("a".into(), Ok(Some(established.clone()))), ("b".into(), Ok(None))]);
        assert_eq!(c.status, Status::Failed);
        assert_eq!(c.detail, "b is missing");
        assert_eq!(crds(&[("a".into(), Ok(Some(established)))]).status, Status::Ok);

        let rolled = json!({"metadata": {"generation": 1}, "spec": {"replicas": 1}, "status": {"observedGeneration": 1,
            "replicas": 1, "updatedReplicas": 1, "availableReplicas": 1}});
        assert_eq!(
            operator(&Ok(Some(rolled.clone())), Some(&Ok("ready".into()))).status,
            Status::Ok
        );
        let not_ready = operator(&Ok(Some(rolled)), Some(&Err("HTTP 503".into())));
        assert_eq!(not_ready.status, Status::Failed);
        assert!(not_ready.hint.unwrap().contains("logs deployment/trellis-operator"));
        let scaled_down =
            json!({"metadata": {"generation": 2}, "spec": {"replicas": 0}, "status": {"observedGeneration": 2}});
        let stuck = json!({"metadata": {"generation": 3}, "spec": {"replicas": 2}, "status": {"observedGeneration": 3,
            "replicas": 3, "updatedReplicas": 1, "availableReplicas": 2}});
        let c = operator(&Ok(Some(stuck)), Some(&Ok("ready".into())));
        assert_eq!(c.status, Status::Failed);
        assert_eq!(
            c.detail,
            "not rolled out: 1 of 2 replicas updated to the current pod template, 2 available"
        );
        assert!(c.hint.unwrap().contains("rollout status"));
        let c = operator(&Ok(Some(scaled_down.clone())), None);
        assert_eq!(c.status, Status::Ok, "zero of zero is rolled out; /ready then decides");
        let down = operator(&Ok(Some(scaled_down)), Some(&Err("no endpoints available".into())));
        assert_eq!(down.status, Status::Failed);
        assert!(down.detail.contains("scaled to 0 replicas"), "{}", down.detail);
        assert!(down.hint.unwrap().contains("meshctl install"));
        assert_eq!(operator(&Ok(None), None).hint.as_deref(), Some("run `meshctl install`"));
    }

    #[test]
    fn webhooks_need_a_ca_bundle_trusting_the_mesh_root_and_must_answer() {
        let root = b"root-der";
        let ca = ca(&sha(root), 0, json!({}));
        let config = |bundle: &str| {
            Ok(Some(json!({"kind": "ValidatingWebhookConfiguration",
                "webhooks": [{"name": "validation.trellis.dev", "clientConfig": {"caBundle": bundle}}]})))
        };
        let good = config(&pem_bundle(&[b"old-root", root]));
        assert_eq!(validator(&good, &Ok(json!({})), Some(&ca)).status, Status::Ok);
        let stale = validator(&config(&pem_bundle(&[b"old-root"])), &Ok(json!({})), Some(&ca));
        assert_eq!(stale.status, Status::Failed);
        assert!(
            stale.detail.contains("does not trust the mesh root"),
            "{}",
            stale.detail
        );
        let garbage = validator(&config("%%%"), &Ok(json!({})), Some(&ca));
        assert!(garbage.detail.contains("not base64"), "{}", garbage.detail);
        let refused = validator(
            &good,
            &Err(
                "failed calling webhook \"validation.trellis.dev\": x509: certificate signed by unknown authority"
                    .into(),
            ),
            Some(&ca),
        );
        assert_eq!(refused.status, Status::Failed);
        assert!(refused.detail.contains("x509"));
        assert_eq!(validator(&Ok(None), &Ok(json!({})), Some(&ca)).status, Status::Failed);

        let pod =
            |containers: Value| Ok(json!({"spec": {"initContainers": containers, "containers": [{"name": "app"}]}}));
        let injected = pod(json!([{"name": "trellis-init"}, {"name": PROXY_CONTAINER}]));
        assert_eq!(injector(&good, &injected, Some(&ca)).status, Status::Ok);
        let plain = injector(&good, &pod(json!([])), Some(&ca));
        assert_eq!(plain.status, Status::Failed);
        assert!(plain.detail.contains("got no sidecar"));
    }

    #[test]
    fn the_root_must_outlive_sixty_days() {
        let now = 1_000 * DAY;
        assert_eq!(
            root_validity(&ca("r", now + 400 * DAY, json!({})), None, now).status,
            Status::Ok
        );
        let soon = root_validity(&ca("r", now + 30 * DAY, json!({})), None, now);
        assert_eq!(soon.status, Status::Failed);
        assert!(soon.detail.contains("expires in 30 days"));
        assert!(soon.hint.unwrap().contains("trellis.dev/rotate-root"));
        assert_eq!(root_validity(&Err("503".into()), None, now).status, Status::Failed);
        // A plugged root is the user's to renew: the hint names its Secret, not the annotation.
        let plugged = |ns: Value| {
            Ok(Some(
                json!({"spec": {"ca": {"mode": "Plugged", "secretRef": {"name": "corp-ca", "namespace": ns}}}}),
            ))
        };
        let hint = root_validity(
            &ca("r", now + 30 * DAY, json!({})),
            Some(&plugged(json!("security"))),
            now,
        )
        .hint
        .unwrap();
        assert!(hint.contains("Secret security/corp-ca"), "{hint}");
        assert!(!hint.contains("rotate-root"), "{hint}");
        assert_eq!(
            plugged_secret(Some(&plugged(Value::Null))).as_deref(),
            Some("trellis-system/corp-ca")
        );
        let self_signed = Ok(Some(json!({"spec": {"ca": {"mode": "SelfSigned"}}})));
        assert_eq!(plugged_secret(Some(&self_signed)), None);
    }
}
