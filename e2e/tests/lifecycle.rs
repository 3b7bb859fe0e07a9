//! The mesh lifecycle, end to end: the Mesh reconciled Ready, proxy rollouts in health-gated
//! waves under traffic (the shop's ingress gateway, which the traffic crosses, rolled in its
//! wave like the sidecars), a broken proxy release rolled back after its first wave, and the
//! leader killed in the middle of a rollout and in the middle of a root rotation (`leader`).
//!
//! On kubesim (default) or the cluster named by `TRELLIS_E2E_KUBECONFIG` (see
//! `trellis_e2e::suite`): the test speaks only the Kubernetes API (kubectl) and real traffic
//! through the shop's gateway. One cluster for the whole binary (install and shop are
//! expensive), so one test walks through every step in order, each named.
//!
//! The broken release is the image `ghcr.io/trellis-mesh/trellis-proxy-unready`: the proxy
//! with its health port moved away from where the pods' probes look, so its pods never turn
//! Ready (kubesim maps it, `e2e/README.md` "Images"; another test bed provides the same image).
//!
//! StatefulSets and DaemonSets are rolled too where the API server serves them (upstream
//! Kubernetes); kubesim has no controllers for them, and the test says so in its output.
//!
//! Needs the workspace's binaries built: `cargo build --bins`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use serde_json::{Value, json};
use trellis_e2e::suite::mesh::{self, condition};
use trellis_e2e::suite::{Http, Target, steps, wait_for};
use trellis_manifests::demo;

const SYSTEM: &str = trellis_api::mesh::SYSTEM_NAMESPACE;
const PROXY_REPO: &str = "ghcr.io/trellis-mesh/trellis-proxy";
const UNREADY_REPO: &str = "ghcr.io/trellis-mesh/trellis-proxy-unready";
const PROXY_IMAGE_ANNOTATION: &str = trellis_api::mesh::PROXY_IMAGE_ANNOTATION;
/// How long a whole rollout of the shop may take on a loaded 2-core machine.
const ROLLOUT: Duration = Duration::from_secs(300);

#[path = "lifecycle/admission.rs"]
mod admission;
#[path = "lifecycle/leader.rs"]
mod leader;

fn step<T>(t: &Target, name: &str, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    mesh::step(t, "lifecycle", name, f)
}

/// A workload the rollout should bring along: `Kind/name` in the shop.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Workload {
    kind: &'static str,
    name: String,
}

impl Workload {
    fn resource(&self) -> String {
        format!("{}/{}", self.kind.to_ascii_lowercase(), self.name)
    }

    fn get(&self, t: &Target) -> anyhow::Result<Value> {
        t.get_json(&["-n", demo::NAMESPACE, &self.resource()])
    }

    /// `metadata.generation`: one more per pod-template change (one restart).
    fn generation(&self, t: &Target) -> anyhow::Result<i64> {
        self.get(t)?["metadata"]["generation"]
            .as_i64()
            .with_context(|| format!("{} has no generation", self.resource()))
    }

    /// The proxy image its pod template is assigned: the injector's annotation, or the
    /// gateway's proxy container's image.
    fn assigned(&self, t: &Target) -> anyhow::Result<Option<String>> {
        let template = &self.get(t)?["spec"]["template"];
        let assigned = if self.name == demo::GATEWAY {
            gateway_proxy(&template["spec"]).and_then(|c| c["image"].as_str())
        } else {
            template["metadata"]["annotations"][PROXY_IMAGE_ANNOTATION].as_str()
        };
        Ok(assigned.map(str::to_string))
    }

    fn status_name(&self) -> String {
        format!("{} {}/{}", self.kind, demo::NAMESPACE, self.name)
    }
}

/// The gateway proxy container of a pod spec.
fn gateway_proxy(spec: &Value) -> Option<&Value> {
    spec["containers"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == trellis_manifests::sidecar::GATEWAY_CONTAINER)
}

/// The shop's meshed workloads: its Deployments, the gateway included (it is not injected: the
/// rollout sets its proxy container's image), plus the StatefulSet and DaemonSet this test
/// adds where served.
fn meshed_workloads(t: &Target, extra: &[Workload]) -> anyhow::Result<Vec<Workload>> {
    let deployments = t.get_json(&["deployments", "-n", demo::NAMESPACE])?;
    let mut out: Vec<Workload> = deployments["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d["metadata"]["name"].as_str())
        .map(|n| Workload {
            kind: "Deployment",
            name: n.to_string(),
        })
        .collect();
    out.extend_from_slice(extra);
    out.sort();
    ensure!(
        out.len() >= 5 && out.iter().any(|w| w.name == demo::GATEWAY),
        "expected the shop's four meshed Deployments and its gateway, found {out:?}"
    );
    Ok(out)
}

/// Whether the API server serves `plural` in `apps/v1`.
fn serves_apps(t: &Target, plural: &str) -> anyhow::Result<bool> {
    let resources = t.kubectl_ok(&["api-resources", "--api-group=apps", "-o", "name"], None)?;
    Ok(resources.lines().any(|l| l.split('.').next() == Some(plural)))
}

/// A meshed StatefulSet and DaemonSet of the test app, where the API server serves them.
fn other_workloads(t: &Target) -> anyhow::Result<Vec<Workload>> {
    let mut out = Vec::new();
    let template = json!({
        "metadata": {"labels": {"app": "ledger"}},
        "spec": {"containers": [{
            "name": "ledger",
            "image": demo::testapp_image(),
            "env": [{"name": "TESTAPP_SERVICE", "value": "ledger"}],
            "ports": [{"name": "http", "containerPort": 8080}],
            "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 2},
        }]},
    });
    for (kind, plural, name) in [
        ("StatefulSet", "statefulsets", "ledger"),
        ("DaemonSet", "daemonsets", "agent"),
    ] {
        if !serves_apps(t, plural)? {
            eprintln!(
                "[lifecycle]   the API server serves no {kind}s (kubesim has no controller for them): the rollout of a {kind} is covered on upstream Kubernetes only"
            );
            continue;
        }
        let mut tpl = template.clone();
        tpl["metadata"]["labels"]["app"] = json!(name);
        tpl["spec"]["containers"][0]["name"] = json!(name);
        let mut spec = json!({"selector": {"matchLabels": {"app": name}}, "template": tpl});
        if kind == "StatefulSet" {
            spec["serviceName"] = json!(name);
            spec["replicas"] = json!(1);
        }
        let object = json!({
            "apiVersion": "apps/v1",
            "kind": kind,
            "metadata": {"name": name, "namespace": demo::NAMESPACE},
            "spec": spec,
        });
        t.apply(&object.to_string())?;
        t.kubectl_ok(
            &[
                "rollout",
                "status",
                "-n",
                demo::NAMESPACE,
                &format!("{}/{name}", kind.to_ascii_lowercase()),
                &format!("--timeout={}s", steps::READY.as_secs()),
            ],
            None,
        )?;
        out.push(Workload {
            kind: if kind == "StatefulSet" {
                "StatefulSet"
            } else {
                "DaemonSet"
            },
            name: name.into(),
        });
    }
    Ok(out)
}

/// One look at `status.rollout`.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    wave: u64,
    phase: String,
    members: BTreeSet<String>,
}

impl Seen {
    fn of(rollout: &Value) -> Seen {
        Seen {
            wave: rollout["wave"].as_u64().unwrap_or(0),
            phase: rollout["phase"].as_str().unwrap_or_default().to_string(),
            members: rollout["waveWorkloads"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|w| {
                    let field = |f: &str| w[f].as_str().unwrap_or("?").to_string();
                    format!("{} {}/{}", field("kind"), field("namespace"), field("name"))
                })
                .collect(),
        }
    }
}

/// Polls the Mesh until the rollout to `target` reaches `until` (a phase), recording every
/// distinct rollout state on the way; `during` runs on each look (e.g. to kill the leader).
fn follow_rollout(
    t: &Target,
    target: &str,
    until: &str,
    mut during: impl FnMut(&Seen) -> anyhow::Result<()>,
) -> anyhow::Result<Vec<Seen>> {
    let deadline = Instant::now() + ROLLOUT;
    let mut seen: Vec<Seen> = Vec::new();
    loop {
        let m = mesh::get(t)?;
        let r = &m["status"]["rollout"];
        if r["targetImage"] == target {
            let now = Seen::of(r);
            if seen.last() != Some(&now) {
                eprintln!(
                    "[lifecycle]   rollout: wave {} {} {:?}",
                    now.wave, now.phase, now.members
                );
                seen.push(now.clone());
            }
            during(&now)?;
            if now.phase == until {
                return Ok(seen);
            }
            if now.phase == "RolledBack" {
                bail!("the rollout to {target} was rolled back: {}", r["failure"]);
            }
        }
        if Instant::now() > deadline {
            bail!("the rollout to {target} did not reach {until} within {ROLLOUT:?}; seen {seen:?}");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Every wave from 1 to the last, in order, each at most `batch` workloads, together every
/// workload once.
fn check_waves(seen: &[Seen], workloads: &[Workload], batch: usize) -> anyhow::Result<()> {
    let mut waves: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    let mut last = 0;
    for s in seen.iter().filter(|s| s.wave > 0) {
        ensure!(s.wave >= last, "wave {} seen after wave {last}: {seen:?}", s.wave);
        last = s.wave;
        waves.entry(s.wave).or_default().extend(s.members.iter().cloned());
    }
    let numbers: Vec<u64> = waves.keys().copied().collect();
    let expected = workloads.len().div_ceil(batch);
    ensure!(
        numbers == (1..=expected as u64).collect::<Vec<_>>(),
        "expected waves 1..={expected} for {} workloads in batches of {batch}, saw {numbers:?}",
        workloads.len()
    );
    let mut all = BTreeSet::new();
    for (n, members) in &waves {
        ensure!(
            members.len() <= batch,
            "wave {n} restarted {} workloads, more than the batch of {batch}: {members:?}",
            members.len()
        );
        for m in members {
            ensure!(all.insert(m.clone()), "{m} was in two waves: {waves:?}");
        }
    }
    let want: BTreeSet<String> = workloads.iter().map(Workload::status_name).collect();
    ensure!(
        all == want,
        "the waves restarted {all:?}, the meshed workloads are {want:?}"
    );
    Ok(())
}

/// Every meshed pod of the shop runs `image` (the injected sidecar and the recorded
/// annotation; the gateway's proxy container), and is Ready.
fn pods_run(t: &Target, image: &str, workloads: usize) -> anyhow::Result<Option<()>> {
    let pods = t.get_json(&["pods", "-n", demo::NAMESPACE])?;
    let mut meshed = 0;
    for p in pods["items"].as_array().into_iter().flatten() {
        if !p["metadata"]["deletionTimestamp"].is_null() {
            return Ok(None); // a restart is still finishing
        }
        let proxy = ["initContainers", "containers"]
            .iter()
            .filter_map(|l| p["spec"][l].as_array())
            .flatten()
            .find(|c| c["name"] == "trellis-proxy");
        let runs = match (proxy, gateway_proxy(&p["spec"])) {
            (Some(sidecar), _) => {
                sidecar["image"] == image && p["metadata"]["annotations"][PROXY_IMAGE_ANNOTATION] == image
            }
            (None, Some(gateway)) => gateway["image"] == image,
            (None, None) => continue,
        };
        meshed += 1;
        if !runs || !trellis_e2e::harness::pod_ready(p) {
            return Ok(None);
        }
    }
    Ok((meshed >= workloads).then_some(()))
}

/// Whether an event note is about wave `n` ("wave 2: ...", "wave 2 (canaries): ...",
/// "wave 2 is healthy ...").
fn about_wave(note: &str, n: usize) -> bool {
    note.strip_prefix(&format!("wave {n}"))
        .is_some_and(|rest| rest.starts_with([':', ' ']))
}

#[test]
fn lifecycle() -> anyhow::Result<()> {
    // Without root (and no TRELLIS_E2E_KUBECONFIG) the skip is recorded; under CI it fails.
    let Some(t) = Target::acquire()? else { return Ok(()) };
    let http = Http::new()?;
    step(&t, "install: CRDs with kubectl, the operator Deployment", || {
        steps::install(&t)
    })?;
    step(&t, "deploy the shop (meshed pods, gateway, routing)", || {
        steps::deploy_shop(&t)
    })?;
    let gw = step(&t, "the gateway's load balancer address", || {
        steps::load_balancer(&t, demo::NAMESPACE, demo::GATEWAY)
    })?;
    let api = format!("{gw}/api/hello");
    step(&t, "traffic crosses gateway → web → payment → db", || {
        wait_for("a 200 from /api through the gateway", Duration::from_secs(60), || {
            Ok(http.get(&api, &[]).ok().filter(|a| a.status == 200))
        })
    })?;
    let extra = step(&t, "a meshed StatefulSet and DaemonSet, where served", || {
        other_workloads(&t)
    })?;
    let workloads = meshed_workloads(&t, &extra)?;

    step(
        &t,
        "kubectl get mesh: Ready, with every condition's reason and message in its columns",
        || mesh_is_ready(&t),
    )?;

    step(
        &t,
        "kubectl apply: an invalid VirtualService denied with the validator's message (dry run too), a doubtful one accepted with a warning",
        || admission::kubectl_meets_the_webhooks(&t),
    )?;

    step(
        &t,
        "a new proxy version rolls every meshed workload, the gateway the traffic crosses included, in waves of 2 under traffic, no failed request",
        || {
            let target = format!("{PROXY_REPO}:lifecycle-a");
            roll(&t, &http, &api, &workloads, &target, 2, |_| Ok(()))?;
            Ok(())
        },
    )?;

    step(
        &t,
        "a proxy version that never turns Ready stops after the first wave and is rolled back; status and events say why",
        || broken_release_rolls_back(&t, &http, &api, &workloads),
    )?;

    step(
        &t,
        "the leader killed mid-rollout: another replica leads within 15 s, no failed request, no root rotation, no wave repeated",
        || leader::killed_mid_rollout(&t, &http, &api, &workloads),
    )?;

    step(
        &t,
        "the leader killed mid root rotation: another replica leads within 15 s, no failed request, the rotation ends once (phases forward only, one new root, none after)",
        || leader::killed_mid_rotation(&t, &http, &api),
    )?;
    Ok(())
}

fn mesh_is_ready(t: &Target) -> anyhow::Result<()> {
    // Ready, and every proxy connected and in sync: the StatefulSet's and DaemonSet's pods
    // were created just before (upstream), and the columns are compared with the conditions
    // below, so the data plane must have settled first.
    let m = wait_for(
        "Mesh default Ready with its data plane up to date",
        steps::READY,
        || {
            let m = mesh::get(t)?;
            let ready = condition(&m, "Ready").is_some_and(|c| c["status"] == "True");
            let up_to_date = condition(&m, "DataPlaneUpToDate").is_some_and(|c| c["status"] == "True");
            let synced = m["status"]["observedGeneration"] == m["metadata"]["generation"];
            Ok((ready && up_to_date && synced).then_some(m))
        },
    )?;
    for type_ in [
        "Ready",
        "CertificateAuthorityReady",
        "WebhooksReady",
        "DataPlaneUpToDate",
        "RolloutProgressing",
        "Degraded",
    ] {
        let c = condition(&m, type_).with_context(|| format!("no {type_} condition: {}", m["status"]))?;
        ensure!(
            c["reason"].as_str().is_some_and(|r| !r.is_empty()) && c["message"].as_str().is_some_and(|r| !r.is_empty()),
            "{type_} has no reason or message: {c}"
        );
        ensure!(
            c["observedGeneration"] == m["metadata"]["generation"],
            "{type_} describes generation {}, the Mesh is at {}",
            c["observedGeneration"],
            m["metadata"]["generation"]
        );
    }
    let want = [
        ("CertificateAuthorityReady", "True"),
        ("WebhooksReady", "True"),
        ("Degraded", "False"),
    ];
    for (type_, status) in want {
        let c = condition(&m, type_).context(type_)?;
        ensure!(c["status"] == status, "{type_} is {}: {}", c["status"], c["message"]);
    }
    ensure!(
        m["status"]["certificateAuthority"]["rootExpires"].is_string(),
        "the root's expiry is not shown: {}",
        m["status"]["certificateAuthority"]
    );
    // What a person sees: the printer columns.
    let table = t.kubectl_ok(&["get", "mesh"], None)?;
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split_whitespace().collect();
    ensure!(
        header.starts_with(&["NAME", "READY", "CA", "WEBHOOKS", "DATA", "PLANE", "ROLLOUT"]),
        "kubectl get mesh columns: {table}"
    );
    let row: Vec<&str> = lines.next().unwrap_or_default().split_whitespace().collect();
    ensure!(
        row.starts_with(&["default", "True", "True", "True"]),
        "kubectl get mesh: {table}"
    );
    let data_plane = condition(&m, "DataPlaneUpToDate").context("DataPlaneUpToDate")?;
    ensure!(
        row.get(4) == data_plane["reason"].as_str().as_ref(),
        "the DATA PLANE column is not the condition's reason {}: {table}",
        data_plane["reason"]
    );
    let described = t.kubectl_ok(&["describe", "mesh", "default"], None)?;
    ensure!(
        described.contains("CertificateAuthorityReady") && described.contains("Events:"),
        "kubectl describe mesh: {described}"
    );
    eprintln!("[lifecycle]   {}", table.trim_end().replace('\n', "\n[lifecycle]   "));
    Ok(())
}

/// Rolls `workloads` to `target` in waves of `batch` under traffic through `api`; `during`
/// sees every rollout state. Checks the waves, that every workload restarted once, that every
/// meshed pod runs `target`, and that no request failed. Returns the rollout states seen.
fn roll(
    t: &Target,
    http: &Http,
    api: &str,
    workloads: &[Workload],
    target: &str,
    batch: usize,
    during: impl FnMut(&Seen) -> anyhow::Result<()>,
) -> anyhow::Result<Vec<Seen>> {
    let generations: BTreeMap<&Workload, i64> = workloads
        .iter()
        .map(|w| Ok((w, w.generation(t)?)))
        .collect::<anyhow::Result<_>>()?;
    let load = http.background(api, Vec::new());
    let result = (|| {
        mesh::patch_spec(
            t,
            json!({"versions": {"proxy": target}, "rollout": {"batchSize": batch, "pause": "3s", "progressDeadline": "4m"}}),
        )?;
        let seen = follow_rollout(t, target, "Complete", during)?;
        wait_for(&format!("every meshed pod on {target} and Ready"), ROLLOUT, || {
            pods_run(t, target, workloads.len())
        })?;
        Ok::<_, anyhow::Error>(seen)
    })();
    let sent = load.finish_without_failure(&format!("the rollout to {target}"));
    let seen = result?;
    let sent = sent?;
    check_waves(&seen, workloads, batch)?;
    for (w, before) in &generations {
        let after = w.generation(t)?;
        ensure!(
            after == before + 1,
            "{} was restarted {} times (generation {before} → {after}); once expected",
            w.resource(),
            after - before
        );
        ensure!(
            w.assigned(t)?.as_deref() == Some(target),
            "{} is not assigned {target}",
            w.resource()
        );
    }
    let m = wait_for("DataPlaneUpToDate after the rollout", Duration::from_secs(60), || {
        let m = mesh::get(t)?;
        Ok(condition(&m, "DataPlaneUpToDate")
            .is_some_and(|c| c["status"] == "True")
            .then_some(m))
    })?;
    let versions = &m["status"]["dataPlane"]["versions"];
    ensure!(
        versions
            .as_array()
            .into_iter()
            .flatten()
            .filter(|v| v["namespace"] == demo::NAMESPACE)
            .all(|v| v["image"] == target),
        "status.dataPlane.versions still shows another image in the shop: {versions}"
    );
    let started = mesh::events(t, "RolloutWaveStarted")?;
    let finished = mesh::events(t, "RolloutWaveFinished")?;
    for n in 1..=workloads.len().div_ceil(batch) {
        for (what, events) in [("started", &started), ("finished", &finished)] {
            let count: u64 = events
                .iter()
                .filter(|(note, _)| about_wave(note, n) && note.contains(target))
                .map(|(_, c)| c)
                .sum();
            ensure!(
                count == 1,
                "wave {n} onto {target} {what} {count} times (events: {events:?})"
            );
        }
    }
    eprintln!(
        "[lifecycle]   {} workloads on {target} in {} waves; {sent} requests, none failed",
        workloads.len(),
        workloads.len().div_ceil(batch)
    );
    Ok(seen)
}

fn broken_release_rolls_back(t: &Target, http: &Http, api: &str, workloads: &[Workload]) -> anyhow::Result<()> {
    let good = format!("{PROXY_REPO}:lifecycle-a");
    let broken = format!("{UNREADY_REPO}:lifecycle");
    let generations: BTreeMap<&Workload, i64> = workloads
        .iter()
        .map(|w| Ok((w, w.generation(t)?)))
        .collect::<anyhow::Result<_>>()?;
    let load = http.background(api, Vec::new());
    let result = (|| {
        mesh::patch_spec(
            t,
            json!({"versions": {"proxy": broken}, "rollout": {"batchSize": 2, "pause": "3s", "progressDeadline": "20s"}}),
        )?;
        let mut first_wave = BTreeSet::new();
        let seen = follow_rollout_until_rolled_back(t, &broken, &mut first_wave)?;
        ensure!(
            seen.iter().all(|s| s.wave <= 1),
            "a second wave started onto the broken image: {seen:?}"
        );
        Ok::<_, anyhow::Error>(first_wave)
    })();
    let first_wave = match result {
        Ok(w) => w,
        Err(e) => {
            let _ = load.finish();
            return Err(e);
        }
    };
    let m = mesh::get(t)?;
    let failure = &m["status"]["rollout"]["failure"];
    let failed = failure["workload"].as_str().unwrap_or_default();
    ensure!(
        first_wave.contains(failed),
        "the failure names {failed:?}, not a workload of wave 1 {first_wave:?}: {failure}"
    );
    ensure!(
        failure["reason"] == "ProgressDeadline" && failure["message"].as_str().is_some_and(|m| m.contains("Ready")),
        "the failure does not say the pods never turned Ready: {failure}"
    );
    let progressing = condition(&m, "RolloutProgressing").context("RolloutProgressing")?;
    ensure!(
        progressing["reason"] == "RolledBack"
            && progressing["message"].as_str().is_some_and(|msg| msg.contains(failed)),
        "RolloutProgressing does not say which workload failed: {progressing}"
    );
    let degraded = condition(&m, "Degraded").context("Degraded")?;
    ensure!(
        degraded["status"] == "True" && degraded["reason"] == "RolloutFailed",
        "Degraded: {degraded}"
    );
    let events = mesh::events(t, "RolloutRolledBack")?;
    ensure!(
        events
            .iter()
            .any(|(note, _)| note.contains(&broken) && note.contains(failed)),
        "no RolloutRolledBack event naming {failed}: {events:?}"
    );
    // The wave's workloads are back on the good image; the others were never touched.
    wait_for("every meshed pod back on the good image and Ready", ROLLOUT, || {
        pods_run(t, &good, workloads.len())
    })?;
    for (w, before) in &generations {
        let after = w.generation(t)?;
        let in_wave = first_wave.contains(&w.status_name());
        let want = if in_wave { before + 2 } else { *before };
        ensure!(
            after == want,
            "{} (in wave 1: {in_wave}) has generation {after}, expected {want} (assigned the broken image and back, or untouched)",
            w.resource()
        );
        ensure!(
            w.assigned(t)?.as_deref() == Some(good.as_str()),
            "{} is not assigned {good} again",
            w.resource()
        );
    }
    let sent = load.finish_without_failure("the broken rollout and its rollback")?;
    eprintln!(
        "[lifecycle]   rolled back {first_wave:?} after {failed} failed: {}; {sent} requests, none failed",
        failure["message"]
    );
    Ok(())
}

/// Follows the rollout to `broken` until it is rolled back, recording wave 1's workloads.
fn follow_rollout_until_rolled_back(
    t: &Target,
    broken: &str,
    first_wave: &mut BTreeSet<String>,
) -> anyhow::Result<Vec<Seen>> {
    let deadline = Instant::now() + ROLLOUT;
    let mut seen: Vec<Seen> = Vec::new();
    loop {
        let m = mesh::get(t)?;
        let r = &m["status"]["rollout"];
        if r["targetImage"] == broken {
            let now = Seen::of(r);
            if now.wave == 1 {
                first_wave.extend(now.members.iter().cloned());
            }
            if seen.last() != Some(&now) {
                eprintln!(
                    "[lifecycle]   rollout: wave {} {} {:?}",
                    now.wave, now.phase, now.members
                );
                seen.push(now.clone());
            }
            if now.phase == "RolledBack" {
                return Ok(seen);
            }
            ensure!(
                now.phase != "Complete",
                "the broken image was rolled out completely: {seen:?}"
            );
        }
        if Instant::now() > deadline {
            bail!("the rollout to {broken} was not rolled back within {ROLLOUT:?}; seen {seen:?}");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}
