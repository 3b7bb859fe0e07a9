//! A change of the Mesh's trust domain under traffic, end to end (issue 11): the meshed shop
//! (operator-injected sidecars, STRICT mutual TLS, AuthorizationPolicies naming workloads by
//! principal) keeps answering every request while `spec.trustDomain` moves from `cluster.local`
//! to `prod.example` and back.
//!
//! What is proven, each a named step:
//! - policies written with the old domain's principals keep matching through the change (the
//!   previous domain is an alias): an ALLOW on db for payment's `cluster.local` principal (shown
//!   in force first: another principal gets 403) keeps every request 200, and the demo's DENY
//!   of db's admin paths for that principal keeps every admin request 403;
//! - a meshed pod whose proxy ran and stopped (it served a certificate in the old domain; killed
//!   by its liveness probe, it cannot restart: the ConfigMap its environment names was deleted)
//!   keeps the previous domain an alias: `CertificateAuthorityReady` says `TrustDomainChanging`
//!   with the count of proxies still on it (0 once they renewed) and names the pod and the fix,
//!   `status.certificateAuthority.previousTrustDomains` names the domain, every proxy's
//!   configuration aliases it; deleting the pod finishes the change (the caveat
//!   `operator/src/mesh/trust_domain.rs` documents, and its fix) while a meshed pod whose proxy
//!   never ran (its image cannot be pulled: it holds no certificate) is there throughout and is
//!   not named;
//! - every proxy serves a certificate in the new domain (the operator's `/debug/syncz`, and each
//!   proxy's own `/config_dump` through `meshctl proxy-config all`); every hop's client
//!   certificate names it (XFCC); the condition is back to `RootValid`, the events
//!   `TrustDomainChangeStarted`/`Finished` were published once each, and no proxy aliases the
//!   old domain any more;
//! - back to `cluster.local` with `prod.example` in `spec.trustDomainAliases`: an ALLOW on
//!   payment for web's `prod.example` principal keeps matching during and after the change, and
//!   the proxies keep `prod.example` as an alias at the end.
//!
//! On kubesim (default), upstream Kubernetes (`TRELLIS_E2E_CLUSTER=upstream`) or the cluster
//! `TRELLIS_E2E_KUBECONFIG` names (see `trellis_e2e::suite`). Needs the workspace's binaries
//! built (`cargo build --bins`: the proxy, operator and test app, and `meshctl`).

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use serde_json::{Value, json};
use trellis_e2e::runner::images::BinDirs;
use trellis_e2e::suite::mesh::{self, condition, observed};
use trellis_e2e::suite::{Http, Target, steps, sync, wait_for};
use trellis_manifests::{demo, install, sidecar};

const TEST: &str = "trust domain";
const OLD: &str = "cluster.local";
const NEW: &str = "prod.example";
/// How long a change may take to show (proxies renew at once; the leader looks every 15 s).
const CHANGE: Duration = Duration::from_secs(90);

fn step<T>(t: &Target, name: &str, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    mesh::step(t, TEST, name, f)
}

/// An AuthorizationPolicy `name` on the shop's `app` allowing one principal.
fn allow(name: &str, app: &str, principal: &str) -> String {
    json!({
        "apiVersion": "security.trellis.dev/v1alpha1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": demo::NAMESPACE},
        "spec": {
            "selector": {"matchLabels": {"app": app}},
            "action": "ALLOW",
            "rules": [{"from": [{"source": {"principals": [principal]}}]}],
        },
    })
    .to_string()
}

/// Applies an ALLOW policy on `app` for another principal first and waits for a 403 through
/// the gateway (the policy is in force: a principal that does not match is refused), then for
/// `principal` and waits for a 200.
fn allow_in_force(t: &Target, http: &Http, api: &str, name: &str, app: &str, principal: &str) -> anyhow::Result<()> {
    let (domain, _) = principal.split_once('/').context("a principal has a trust domain")?;
    t.apply(&allow(name, app, &format!("{domain}/ns/{}/sa/nobody", demo::NAMESPACE)))?;
    wait_for(
        &format!("a 403 once only `nobody` may reach {app}"),
        Duration::from_secs(30),
        || Ok(http.get(api, &[]).ok().filter(|a| a.status == 403)),
    )?;
    t.apply(&allow(name, app, principal))?;
    wait_for(
        &format!("a 200 once {principal} may reach {app}"),
        Duration::from_secs(30),
        || Ok(http.get(api, &[]).ok().filter(|a| a.status == 200)),
    )?;
    Ok(())
}

/// The meshed pods of the shop by name, with their ServiceAccount.
fn service_accounts(t: &Target) -> anyhow::Result<BTreeMap<String, String>> {
    let meshed = sync::meshed_pods(t, demo::NAMESPACE)?;
    let pods = t.get_json(&["pods", "-n", demo::NAMESPACE])?;
    let out: BTreeMap<String, String> = pods["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            let key = format!("{}/{}", demo::NAMESPACE, p["metadata"]["name"].as_str()?);
            let sa = p["spec"]["serviceAccountName"].as_str().unwrap_or("default");
            meshed.contains(&key).then(|| (key, sa.to_string()))
        })
        .collect();
    ensure!(
        out.len() == meshed.len() && out.len() >= 5,
        "expected the shop's five meshed pods (gateway, web, payment v1 and v2, db), found {out:?}"
    );
    Ok(out)
}

/// Every meshed pod's proxy is connected (the operator's `/debug/syncz`) and reports serving a
/// certificate for its ServiceAccount in `domain`; the error names the others.
fn all_serve(t: &Target, pods: &BTreeMap<String, String>, domain: &str) -> anyhow::Result<()> {
    let state = sync::syncz(t, None)?;
    let mut behind = Vec::new();
    for (pod, sa) in pods {
        let want = format!("spiffe://{domain}/ns/{}/sa/{sa}", demo::NAMESPACE);
        let entry = state
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["proxy"] == pod.as_str() && p["connected"] == true);
        match entry.map(|p| &p["certificate"]["spiffeId"]) {
            Some(id) if id == want.as_str() => {}
            Some(id) => behind.push(format!("{pod} serves {id}")),
            None => behind.push(format!("{pod} is not connected")),
        }
    }
    ensure!(
        behind.is_empty(),
        "not every proxy serves a certificate in {domain}: {}",
        behind.join(", ")
    );
    Ok(())
}

/// Why proxies may not have renewed into `domain`, for a failed wait: the certificate lines of
/// each meshed pod's proxy log (what it asked for, what it was given, what it refused) and the
/// operator replicas' lines about those pods (what each replica signed, in which domain).
fn renewal_logs(t: &Target, pods: &BTreeMap<String, String>, domain: &str) -> String {
    let about_certificates = |line: &&str| {
        ["certificate", "trust domain", "identity", "rejected", "reload"]
            .iter()
            .any(|w| line.contains(w))
    };
    let mut out = format!("--- why a proxy may not serve a certificate in {domain}\n");
    for pod in pods.keys() {
        let Some((ns, name)) = pod.split_once('/') else {
            continue;
        };
        let log = [sidecar::PROXY_CONTAINER, sidecar::GATEWAY_CONTAINER]
            .iter()
            .find_map(|c| t.kubectl_ok(&["logs", "-n", ns, name, "-c", c], None).ok())
            .unwrap_or_default();
        let lines: Vec<&str> = log.lines().filter(about_certificates).collect();
        out.push_str(&format!("--- {pod}'s proxy, certificate lines (last 12)\n"));
        for line in &lines[lines.len().saturating_sub(12)..] {
            out.push_str(&format!("{line}\n"));
        }
    }
    let system = install::Options::default().namespace;
    for op in t.pod_names(&system, "app=trellis-operator").unwrap_or_default() {
        let log = t.kubectl_ok(&["logs", "-n", &system, &op], None).unwrap_or_default();
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| {
                pods.keys()
                    .any(|p| p.split_once('/').is_some_and(|(_, n)| l.contains(n)))
                    || l.contains("trust domain")
            })
            .collect();
        out.push_str(&format!(
            "--- operator {op}, lines about the shop's proxies or the trust domain (last 30)\n"
        ));
        for line in &lines[lines.len().saturating_sub(30)..] {
            out.push_str(&format!("{line}\n"));
        }
    }
    out
}

/// What a proxy's own `/config_dump` says, through `meshctl proxy-config all -o json` (the
/// API server's port-forward to its admin port): the trust domain and aliases its
/// configuration names, and the SPIFFE ID of the certificate it serves.
fn proxy_identity(t: &Target, pod: &str) -> anyhow::Result<(String, Vec<String>, String)> {
    let meshctl = BinDirs::resolve(None)
        .find("meshctl")
        .context("meshctl is not built next to the test (cargo build --bins)")?;
    let (ns, name) = pod.split_once('/').context("namespace/pod")?;
    let out = Command::new(meshctl)
        .arg("--kubeconfig")
        .arg(t.kubeconfig())
        .args(["proxy-config", "all", &format!("{name}.{ns}"), "-o", "json"])
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()?;
    ensure!(
        out.status.success(),
        "meshctl proxy-config all {name}.{ns}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dump: Value = serde_json::from_slice(&out.stdout).context("meshctl's dump is not JSON")?;
    let identity = &dump["config"]["identity"];
    let aliases = identity["trustDomainAliases"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str().map(str::to_string))
        .collect();
    Ok((
        identity["trustDomain"].as_str().unwrap_or_default().to_string(),
        aliases,
        dump["workloadCertificate"]["spiffeId"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    ))
}

/// Waits until every meshed pod's proxy is configured for `domain` with exactly `aliases` and
/// serves a certificate in `domain`, as its own admin API says.
fn proxies_configured(
    t: &Target,
    pods: &BTreeMap<String, String>,
    domain: &str,
    aliases: &[&str],
) -> anyhow::Result<()> {
    for pod in pods.keys() {
        wait_for(
            &format!("{pod}'s proxy configured for {domain} with the aliases {aliases:?}"),
            Duration::from_secs(30),
            || {
                let (td, held, serves) = proxy_identity(t, pod)?;
                ensure!(
                    td == domain && held == aliases && serves.starts_with(&format!("spiffe://{domain}/")),
                    "its configuration names {td} with the aliases {held:?}; it serves {serves}"
                );
                Ok(Some(()))
            },
        )?;
    }
    Ok(())
}

/// `CertificateAuthorityReady` of `mesh` as (reason, message), once the status describes the
/// spec; the condition must be True (a trust domain change never makes the CA unready).
fn ca_reason(mesh: &Value) -> anyhow::Result<Option<(String, String)>> {
    if !observed(mesh) {
        return Ok(None);
    }
    let c = condition(mesh, "CertificateAuthorityReady").context("no CertificateAuthorityReady condition")?;
    ensure!(c["status"] == "True", "CertificateAuthorityReady is not True: {c}");
    Ok(Some((
        c["reason"].as_str().unwrap_or_default().to_string(),
        c["message"].as_str().unwrap_or_default().to_string(),
    )))
}

/// The trust domain and previous domains `status.certificateAuthority` records.
fn recorded(mesh: &Value) -> (String, Vec<String>) {
    let ca = &mesh["status"]["certificateAuthority"];
    (
        ca["trustDomain"].as_str().unwrap_or_default().to_string(),
        ca["previousTrustDomains"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|d| d.as_str().map(str::to_string))
            .collect(),
    )
}

/// The one event of `reason` whose note contains `about`; fails on none or several.
fn one_event(t: &Target, reason: &str, about: &str) -> anyhow::Result<String> {
    let events = mesh::events(t, reason)?;
    let matching: Vec<&(String, u64)> = events.iter().filter(|(note, _)| note.contains(about)).collect();
    match matching.as_slice() {
        [(note, 1)] => Ok(note.clone()),
        _ => bail!("expected one {reason} event about {about:?}, found {events:?}"),
    }
}

/// A meshed pod whose proxy never runs: the injector meshes it with a proxy image no test bed
/// has (a standalone pod: the rollout never restarts it). It holds no certificate.
fn unpulled_pod() -> String {
    let sa = json!({"apiVersion": "v1", "kind": "ServiceAccount",
                    "metadata": {"name": "unpulled", "namespace": demo::NAMESPACE}});
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "unpulled",
            "namespace": demo::NAMESPACE,
            "labels": {"app": "unpulled"},
            "annotations": {(trellis_api::mesh::PROXY_IMAGE_ANNOTATION): "ghcr.io/trellis-mesh/trellis-proxy-absent:trust-domain"},
        },
        "spec": {
            "serviceAccountName": "unpulled",
            "containers": [{"name": "unpulled", "image": demo::testapp_image()}],
        },
    });
    format!("{sa}\n---\n{pod}")
}

/// The ConfigMap the held pod's proxy reads its environment from, and the pod whose proxy runs
/// while it exists.
const HELD: &str = "held";

/// A meshed pod whose proxy runs, then stops for good: meshed with the one sidecar template
/// (written into the pod, as `meshctl` did before the injector; the injector leaves it alone),
/// its proxy reads a variable from the ConfigMap `held` (a proxy can only be created while it
/// exists) and is killed by a liveness probe that fails 10 s after it started. Once the
/// ConfigMap is deleted, the proxy that ran cannot restart (`CreateContainerConfigError`) and
/// is no longer connected, while the certificate it obtained may still be in the pod.
fn held_pod() -> anyhow::Result<String> {
    let sa = json!({"apiVersion": "v1", "kind": "ServiceAccount",
                    "metadata": {"name": HELD, "namespace": demo::NAMESPACE}});
    let config = json!({"apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": HELD, "namespace": demo::NAMESPACE},
                        "data": {"held": "until deleted"}});
    let mut template: k8s_openapi::api::core::v1::PodTemplateSpec = serde_json::from_value(json!({
        "metadata": {"labels": {"app": HELD}},
        "spec": {
            "serviceAccountName": HELD,
            "containers": [{"name": HELD, "image": demo::testapp_image()}],
        },
    }))?;
    sidecar::inject(&mut template, &sidecar::Settings::new(&install::Options::default()))?;
    let mut pod = serde_json::to_value(&template)?;
    pod["apiVersion"] = json!("v1");
    pod["kind"] = json!("Pod");
    pod["metadata"]["name"] = json!(HELD);
    pod["metadata"]["namespace"] = json!(demo::NAMESPACE);
    pod["metadata"]["labels"][sidecar::INJECT_LABEL] = json!(sidecar::INJECT_DISABLED);
    let proxy = pod["spec"]["initContainers"]
        .as_array_mut()
        .and_then(|cs| cs.iter_mut().find(|c| c["name"] == sidecar::PROXY_CONTAINER))
        .context("the sidecar template has no proxy")?;
    proxy["env"]
        .as_array_mut()
        .context("the proxy has an environment")?
        .push(json!({"name": "HELD", "valueFrom": {"configMapKeyRef": {"name": HELD, "key": "held"}}}));
    proxy["livenessProbe"] = json!({
        "httpGet": {"path": "/fails-on-purpose", "port": sidecar::HEALTH_PORT},
        "initialDelaySeconds": 10, "periodSeconds": 1, "failureThreshold": 1,
    });
    Ok(format!("{sa}\n---\n{config}\n---\n{pod}"))
}

/// The held pod's proxy ran (the operator's `/debug/syncz` has its certificate in `OLD`), then,
/// its ConfigMap deleted, stopped for good: not running, the termination of the instance that
/// ran in its status (as its state, or its last state while it waits: upstream's kubelet says
/// `CreateContainerConfigError`, then backs off; kubesim says the first).
fn stop_the_held_proxy(t: &Target) -> anyhow::Result<()> {
    let held = format!("{}/{HELD}", demo::NAMESPACE);
    let id = format!("spiffe://{OLD}/ns/{}/sa/{HELD}", demo::NAMESPACE);
    wait_for(
        &format!("{held}'s proxy serving a certificate in {OLD}"),
        CHANGE,
        || {
            let state = sync::syncz(t, None)?;
            let served = state
                .as_array()
                .into_iter()
                .flatten()
                .any(|p| p["proxy"] == held.as_str() && p["certificate"]["spiffeId"] == id.as_str());
            Ok(served.then_some(()))
        },
    )?;
    t.kubectl_ok(&["delete", "configmap", HELD, "-n", demo::NAMESPACE], None)?;
    wait_for(
        &format!("{held}'s proxy stopped for good (it ran, and cannot restart)"),
        CHANGE,
        || {
            let pod = t.get_json(&["pod", HELD, "-n", demo::NAMESPACE])?;
            let stopped = pod["status"]["initContainerStatuses"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["name"] == sidecar::PROXY_CONTAINER)
                .is_some_and(|c| {
                    c["state"]["running"].is_null()
                        && (c["state"]["terminated"].is_object() || c["lastState"]["terminated"].is_object())
                });
            Ok(stopped.then_some(()))
        },
    )
}

#[test]
fn a_trust_domain_change_under_traffic() -> anyhow::Result<()> {
    // Without root (and no TRELLIS_E2E_KUBECONFIG) the skip is recorded; under CI it fails.
    let Some(t) = Target::acquire()? else { return Ok(()) };
    let http = Http::new()?;
    step(&t, "install: CRDs with kubectl, the operator Deployment", || {
        steps::install(&t)
    })?;
    step(
        &t,
        "deploy the shop (meshed pods, gateway, routing, STRICT mTLS)",
        || steps::deploy_shop(&t),
    )?;
    let gw = step(&t, "the gateway's load balancer address", || {
        steps::load_balancer(&t, demo::NAMESPACE, demo::GATEWAY)
    })?;
    let api = format!("{gw}/api/hello");
    let admin = format!("{gw}/api/admin/users");
    step(&t, "traffic crosses gateway → web → payment → db", || {
        wait_for("a 200 from /api through the gateway", Duration::from_secs(60), || {
            Ok(http.get(&api, &[]).ok().filter(|a| a.status == 200))
        })
    })?;
    step(
        &t,
        "an ALLOW policy lets only payment reach db, by its cluster.local principal (another principal: 403)",
        || {
            allow_in_force(
                &t,
                &http,
                &api,
                "db-allow-payment",
                "db",
                &format!("{OLD}/ns/{}/sa/payment", demo::NAMESPACE),
            )
        },
    )?;
    let pods = step(
        &t,
        "the meshed pods, each proxy serving a certificate in cluster.local",
        || {
            let pods = service_accounts(&t)?;
            wait_for("every proxy on cluster.local", CHANGE, || {
                Ok(all_serve(&t, &pods, OLD).ok())
            })?;
            Ok(pods)
        },
    )?;
    step(
        &t,
        "a meshed pod whose proxy never ran (its image cannot be pulled), one whose proxy ran and stopped for good; the Mesh settles with them",
        || {
            // The data plane as the leader counts it: injected pods (the gateway runs its own proxy).
            let counts = |m: &Value| {
                let dp = &m["status"]["dataPlane"];
                (
                    dp["proxies"].as_u64().unwrap_or(0),
                    dp["connected"].as_u64().unwrap_or(0),
                )
            };
            let (proxies, connected) = wait_for("the Mesh counting every injected pod connected", CHANGE, || {
                let m = mesh::get(&t)?;
                let (proxies, connected) = counts(&m);
                Ok((observed(&m) && proxies >= 4 && connected == proxies).then_some((proxies, connected)))
            })?;
            t.apply(&unpulled_pod())?;
            t.apply(&held_pod()?)?;
            stop_the_held_proxy(&t)?;
            wait_for("the Mesh counting both pods' proxies, not connected", CHANGE, || {
                let m = mesh::get(&t)?;
                let counted = counts(&m) == (proxies + 2, connected);
                let reason = ca_reason(&m)?;
                Ok((counted && reason.as_ref().is_some_and(|(r, _)| r == "RootValid")).then_some(()))
            })
        },
    )?;

    let hello = http.background(&api, Vec::new());
    let denied = http.background(&admin, Vec::new());
    let changed = step(
        &t,
        "spec.trustDomain: prod.example under traffic: TrustDomainChanging while a proxy may still serve cluster.local, every proxy renewed into prod.example, cluster.local still an alias",
        || change_held_by_the_pod(&t, &pods),
    );
    let finished = changed.and_then(|()| {
        step(
            &t,
            "the held pod deleted: the change finishes with the never-run pod still there (RootValid, no previous domain, no alias, the events once)",
            || finish(&t, &pods),
        )
    });
    let sent = (
        hello.finish_without_failure("the change to prod.example"),
        // A 200 would be the DENY no longer matching payment, a 503 a refused handshake.
        denied.finish_expecting("the change to prod.example", "403", |a| a.status == 403),
    );
    finished?;
    let (sent, denied) = (sent.0?, sent.1?);
    eprintln!(
        "[{TEST}]   {sent} requests to /api/hello during the change, none failed; {denied} to /api/admin, each denied 403"
    );
    step(
        &t,
        "every hop's client certificate names the workload in prod.example",
        || {
            let answer = http.get(&api, &[])?;
            for (hop, (me, caller)) in
                answer
                    .hops()?
                    .iter()
                    .zip([("web", demo::GATEWAY), ("payment", "web"), ("db", "payment")])
            {
                let xfcc = hop["clientCert"].as_str().unwrap_or_default();
                let id = |sa: &str| format!("spiffe://{NEW}/ns/{}/sa/{sa}", demo::NAMESPACE);
                ensure!(
                    xfcc.contains(&format!("By={}", id(me))) && xfcc.contains(&format!("URI={}", id(caller))),
                    "{me} saw x-forwarded-client-cert {xfcc:?}; expected By={} and URI={}",
                    id(me),
                    id(caller)
                );
            }
            Ok(())
        },
    )?;

    step(
        &t,
        "back to cluster.local with prod.example in spec.trustDomainAliases, under traffic: web's prod.example principal keeps matching, and stays an alias",
        || back_with_a_kept_alias(&t, &http, &api, &pods),
    )?;
    Ok(())
}

fn change_held_by_the_pod(t: &Target, pods: &BTreeMap<String, String>) -> anyhow::Result<()> {
    mesh::patch_spec(t, json!({"trustDomain": NEW}))?;
    let message = wait_for(
        "CertificateAuthorityReady TrustDomainChanging with cluster.local recorded as the previous domain",
        CHANGE,
        || {
            let m = mesh::get(t)?;
            let Some((reason, message)) = ca_reason(&m)? else {
                return Ok(None);
            };
            let changing = reason == "TrustDomainChanging" && recorded(&m) == (NEW.into(), vec![OLD.into()]);
            Ok(changing.then_some(message))
        },
    )?;
    eprintln!("[{TEST}]   CertificateAuthorityReady: TrustDomainChanging: {message}");
    wait_for("every proxy serving a certificate in prod.example", CHANGE, || {
        Ok(all_serve(t, pods, NEW).ok())
    })
    .inspect_err(|_| eprintln!("{}", renewal_logs(t, pods, NEW)))?;
    // Every proxy renewed, but the held pod's proxy, which ran, is not connected: still
    // changing, with the count of proxies on the old domain (none) out of those connected, and
    // the pod that holds the change named with the fix (not the one whose proxy never ran).
    let want = format!(
        "0 of {} connected proxies still serve a certificate in {OLD}",
        pods.len()
    );
    let named = format!(
        "held by meshed pods whose proxy ran and is not connected (it may still serve a certificate in {OLD}): {}/{HELD} (bring its proxy back: its container status and log say why it is down; or delete the pod if it is not coming back)",
        demo::NAMESPACE
    );
    let message = wait_for(
        &format!("the condition to say {want:?} and name the held pod"),
        CHANGE,
        || {
            let m = mesh::get(t)?;
            let still = recorded(&m) == (NEW.into(), vec![OLD.into()]);
            ensure!(
                still,
                "the change finished while a meshed pod's proxy that ran is not connected: {}",
                m["status"]
            );
            Ok(ca_reason(&m)?
                .filter(|(r, msg)| r == "TrustDomainChanging" && msg.contains(&want) && msg.contains(&named))
                .map(|(_, msg)| msg))
        },
    )?;
    ensure!(
        !message.contains("unpulled"),
        "a pod whose proxy never ran holds no certificate, yet is named: {message}"
    );
    let note = one_event(t, "TrustDomainChangeStarted", &format!("from {OLD} to {NEW}"))?;
    eprintln!("[{TEST}]   event TrustDomainChangeStarted: {note}");
    ensure!(
        mesh::events(t, "TrustDomainChangeFinished")?.is_empty(),
        "the change was announced finished while a meshed pod's proxy is not connected"
    );
    proxies_configured(t, pods, NEW, &[OLD])
}

fn finish(t: &Target, pods: &BTreeMap<String, String>) -> anyhow::Result<()> {
    // The pod whose proxy never ran stays: it does not hold the change.
    t.kubectl_ok(&["delete", "pod", HELD, "-n", demo::NAMESPACE, "--wait=false"], None)?;
    let m = wait_for(
        "CertificateAuthorityReady RootValid, with no previous domain",
        CHANGE,
        || {
            let m = mesh::get(t)?;
            let done = recorded(&m) == (NEW.into(), Vec::new());
            Ok((done && ca_reason(&m)?.is_some_and(|(r, _)| r == "RootValid")).then_some(m))
        },
    )?;
    let note = one_event(t, "TrustDomainChangeFinished", &format!("{OLD} is no longer an alias"))?;
    eprintln!("[{TEST}]   event TrustDomainChangeFinished: {note}");
    one_event(t, "TrustDomainChangeStarted", &format!("from {OLD} to {NEW}"))?;
    ensure!(
        m["status"]["certificateAuthority"]["previousTrustDomains"].is_null(),
        "{}",
        m["status"]["certificateAuthority"]
    );
    ensure!(
        t.pod_names(demo::NAMESPACE, "app=unpulled")?.len() == 1,
        "the pod whose proxy never ran was there when the change finished"
    );
    t.kubectl_ok(
        &["delete", "pod", "unpulled", "-n", demo::NAMESPACE, "--wait=false"],
        None,
    )?;
    all_serve(t, pods, NEW)?;
    proxies_configured(t, pods, NEW, &[])?;
    wait_for("Mesh Ready", CHANGE, || {
        let m = mesh::get(t)?;
        Ok(condition(&m, "Ready")
            .is_some_and(|c| c["status"] == "True")
            .then_some(()))
    })
}

fn back_with_a_kept_alias(t: &Target, http: &Http, api: &str, pods: &BTreeMap<String, String>) -> anyhow::Result<()> {
    allow_in_force(
        t,
        http,
        api,
        "payment-allow-web",
        "payment",
        &format!("{NEW}/ns/{}/sa/web", demo::NAMESPACE),
    )?;
    let load = http.background(api, Vec::new());
    let result = (|| {
        mesh::patch_spec(t, json!({"trustDomain": OLD, "trustDomainAliases": [NEW]}))?;
        wait_for("every proxy serving a certificate in cluster.local", CHANGE, || {
            Ok(all_serve(t, pods, OLD).ok())
        })
        .inspect_err(|_| eprintln!("{}", renewal_logs(t, pods, OLD)))?;
        wait_for("the change to cluster.local finished", CHANGE, || {
            let m = mesh::get(t)?;
            let done = recorded(&m) == (OLD.into(), Vec::new());
            Ok((done && ca_reason(&m)?.is_some_and(|(r, _)| r == "RootValid")).then_some(()))
        })?;
        one_event(t, "TrustDomainChangeStarted", &format!("from {NEW} to {OLD}"))?;
        let note = one_event(t, "TrustDomainChangeFinished", &format!("{NEW} stays an alias"))?;
        eprintln!("[{TEST}]   event TrustDomainChangeFinished: {note}");
        proxies_configured(t, pods, OLD, &[NEW])
    })();
    let sent = load.finish_without_failure("the change back to cluster.local");
    result?;
    let sent = sent?;
    // After the change too: web is still allowed by its prod.example principal.
    let after = http.many(api, &[], 20, 2);
    let failed = trellis_e2e::suite::failures(&after);
    ensure!(failed.is_empty(), "after the change: {failed:?}");
    eprintln!(
        "[{TEST}]   {sent} requests during the change back, none failed; {} proxies on {OLD} with {NEW} kept as an alias",
        pods.len()
    );
    Ok(())
}
