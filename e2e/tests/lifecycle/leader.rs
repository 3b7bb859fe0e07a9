//! The leader killed under traffic (issue 11 §4): another replica leads within 15 s, no
//! request fails in the data plane, no second root rotation, no rollout wave repeated — once
//! in the middle of a rollout, once in the middle of a root rotation.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use trellis_e2e::suite::{Http, Target, mesh, steps, sync, wait_for};
use trellis_manifests::demo;
use trellis_manifests::install::{CA_SECRET, OPERATOR_NAME};

use super::{PROXY_REPO, SYSTEM, Workload, roll};

/// How soon another replica must lead once the leader is killed (issue 11 §4).
const TAKEOVER: Duration = Duration::from_secs(15);
/// The annotation asking the operator for a new self-signed root.
const ROTATE_ANNOTATION: &str = "trellis.dev/rotate-root";
/// The phase of a root rotation the leader recorded in the CA Secret (absent while
/// `previous-ca.crt` is there: `Distributing`).
const PHASE_ANNOTATION: &str = "trellis.dev/root-rotation-phase";
/// A rotation's phases, in the only order the leader may record them.
const PHASES: [&str; 4] = ["Distributing", "Reissuing", "Retiring", "Stable"];
/// How long each half of a root rotation of the shop may take on a loaded 2-core machine (each
/// phase waits for every proxy, and for each replica's report of its proxies).
const ROTATION: Duration = Duration::from_secs(180);
/// How long the CA Secret must stay as the rotation left it: a new leader reads the Secret
/// within 2 s of leading and starts a rotation within a watch event of a request.
const QUIET: Duration = Duration::from_secs(8);

/// The holder of the operator's Lease.
fn leader(t: &Target) -> anyhow::Result<Option<String>> {
    let lease = t.get_json(&["lease", "-n", SYSTEM, OPERATOR_NAME])?;
    Ok(lease["spec"]["holderIdentity"]
        .as_str()
        .filter(|h| !h.is_empty())
        .map(str::to_string))
}

/// What the CA Secret records: the root the mesh moves to or issues from (`ca.crt`) and the
/// rotation's phase (`Stable` when none is recorded), plus whether a root is queued.
#[derive(Debug, Clone, PartialEq)]
struct Recorded {
    root: String,
    phase: String,
    queued: bool,
}

impl Recorded {
    fn read(t: &Target) -> anyhow::Result<Recorded> {
        let secret = t.get_json(&["secret", "-n", SYSTEM, CA_SECRET])?;
        let data = &secret["data"];
        let root = data["ca.crt"]
            .as_str()
            .with_context(|| format!("Secret {SYSTEM}/{CA_SECRET} has no ca.crt"))?
            .to_string();
        let phase = if data["previous-ca.crt"].is_null() {
            "Stable"
        } else {
            secret["metadata"]["annotations"][PHASE_ANNOTATION]
                .as_str()
                .unwrap_or("Distributing")
        };
        Ok(Recorded {
            root,
            phase: phase.to_string(),
            queued: !data["queued-ca.crt"].is_null(),
        })
    }

    /// A short name for messages: the phase and a piece of the root (base64 of its PEM, where
    /// the serial number is: every root has its own).
    fn short(&self) -> String {
        let piece = self.root.get(80..92).unwrap_or(&self.root);
        format!(
            "{} root …{piece}…{}",
            self.phase,
            if self.queued { " (a root queued)" } else { "" }
        )
    }
}

/// Kills the replica holding the Lease (its pod deleted at once, no grace) and waits for
/// another to hold it. Returns the killed replica, the new leader and how long it took.
fn kill_the_leader(t: &Target, when: &str) -> anyhow::Result<(String, String, Duration)> {
    let holder = leader(t)?.context("no operator leads")?;
    t.kubectl_ok(
        &["delete", "pod", "-n", SYSTEM, &holder, "--grace-period=0", "--force"],
        None,
    )?;
    let at = Instant::now();
    eprintln!("[lifecycle]   killed the leader {holder} {when}");
    let new = wait_for("another replica to lead", TAKEOVER + Duration::from_secs(30), || {
        Ok(leader(t)?.filter(|h| *h != holder))
    })?;
    let took = at.elapsed();
    eprintln!("[lifecycle]   {new} leads {took:.1?} after the kill");
    ensure!(new != holder, "the killed replica {holder} still leads");
    ensure!(
        took <= TAKEOVER,
        "{new} took {took:.1?} to lead, more than {TAKEOVER:?}"
    );
    Ok((holder, new, took))
}

/// The leader killed during wave 2 of a rollout in waves of 1, under traffic.
pub fn killed_mid_rollout(t: &Target, http: &Http, api: &str, workloads: &[Workload]) -> anyhow::Result<()> {
    let target = format!("{PROXY_REPO}:lifecycle-b");
    let before = Recorded::read(t)?;
    ensure!(
        before.phase == "Stable",
        "a root rotation is recorded before the test: {}",
        before.short()
    );
    let mut killed = false;
    roll(t, http, api, workloads, &target, 1, |seen| {
        // Kill the leader while wave 2's workload restarts (the status already records it).
        if !killed && seen.wave == 2 && seen.phase == "Progressing" {
            kill_the_leader(t, "during wave 2")?;
            killed = true;
        }
        Ok(())
    })?;
    ensure!(killed, "the rollout finished before wave 2 could be caught");
    let after = Recorded::read(t)?;
    ensure!(
        after == before,
        "the mesh root changed or a rotation started when the leader changed: {} before, {} after",
        before.short(),
        after.short()
    );
    let m = mesh::get(t)?;
    let phase = &m["status"]["certificateAuthority"]["rotationPhase"];
    ensure!(phase == "Stable", "the CA is in rotation phase {phase}");
    Ok(())
}

/// The leader killed in the middle of a root rotation, under traffic: the replica that takes
/// over ends that rotation — its phases recorded forward only, to the one root asked for — and
/// starts no other. The rotation is held in Distributing (every proxy NACKs the configurations
/// carrying the new root: [`sync::reject_the_shop`], as in first light; each proxy keeps its
/// previous configuration, so traffic flows) until the new leader leads, then let go.
pub fn killed_mid_rotation(t: &Target, http: &Http, api: &str) -> anyhow::Result<()> {
    // Both replicas up: the one killed in the rollout is replaced and Ready.
    steps::rollout(t, SYSTEM, OPERATOR_NAME)?;
    let before = Recorded::read(t)?;
    ensure!(
        before.phase == "Stable" && !before.queued,
        "a root rotation is recorded before the test: {}",
        before.short()
    );
    let affected = sync::meshed_pods(t, demo::NAMESPACE)?;
    wait_for(
        "every proxy in sync before the rotation",
        Duration::from_secs(60),
        || sync::in_sync(&sync::syncz(t, None)?, &affected).map(Some),
    )?;
    let load = http.background(api, Vec::new());
    let mut seen = vec![before.clone()];
    let result = hold_kill_and_release(t, &affected, &mut seen);
    let sent = load.finish_without_failure("the root rotation with its leader killed");
    let took = result.with_context(|| {
        let states: Vec<String> = seen.iter().map(Recorded::short).collect();
        format!("the CA Secret recorded {states:?}")
    })?;
    let sent = sent?;
    one_rotation(&seen)?;
    let m = wait_for(
        "the Mesh's status to show the rotation ended",
        Duration::from_secs(60),
        || {
            let m = mesh::get(t)?;
            Ok((m["status"]["certificateAuthority"]["rotationPhase"] == "Stable").then_some(m))
        },
    )?;
    let ca = mesh::condition(&m, "CertificateAuthorityReady").context("CertificateAuthorityReady")?;
    ensure!(ca["status"] == "True", "CertificateAuthorityReady: {ca}");
    eprintln!(
        "[lifecycle]   one root rotation, the leader killed in Distributing and replaced in {took:.1?}: {}; {sent} requests, none failed",
        seen.iter().map(|r| r.phase.as_str()).collect::<Vec<_>>().join(" → ")
    );
    Ok(())
}

/// Hold the rotation (every proxy NACKs), ask for a new root, kill the leader once the CA
/// Secret records the rotation, let the rotation go once another replica leads, and follow the
/// Secret until the rotation has ended and it stayed so for [`QUIET`]; every state the Secret
/// was seen in goes to `seen`. Returns how long the next leader took.
fn hold_kill_and_release(
    t: &Target,
    affected: &BTreeSet<String>,
    seen: &mut Vec<Recorded>,
) -> anyhow::Result<Duration> {
    let before = seen[0].clone();
    let look = |seen: &mut Vec<Recorded>| -> anyhow::Result<Recorded> {
        let now = Recorded::read(t)?;
        if seen.last() != Some(&now) {
            eprintln!("[lifecycle]   CA Secret: {}", now.short());
            seen.push(now.clone());
        }
        Ok(now)
    };
    sync::reject_the_shop(t)?;
    wait_for(
        "every proxy to NACK the held configuration",
        Duration::from_secs(30),
        || sync::all_nacked(&sync::syncz(t, None)?, affected, sync::REJECTED_BECAUSE).map(Some),
    )?;
    t.kubectl_ok(
        &[
            "annotate",
            "secret",
            "-n",
            SYSTEM,
            CA_SECRET,
            &format!("{ROTATE_ANNOTATION}=lifecycle-leader-killed"),
            "--overwrite",
        ],
        None,
    )?;
    wait_for("the leader to record the rotation", ROTATION, || {
        let now = look(seen)?;
        Ok((now.root != before.root).then_some(()))
    })?;
    let (_, _, took) = kill_the_leader(t, "in root rotation phase Distributing")?;
    let held = look(seen)?;
    ensure!(
        held.phase == "Distributing",
        "the rotation went on while every proxy NACKed the new root: {}",
        held.short()
    );
    // Let go: the objects the proxies reject deleted.
    sync::repair_the_shop(t)?;
    // The rotation ends, and the Secret stays as it left it.
    let deadline = Instant::now() + ROTATION;
    let mut quiet_since: Option<Instant> = None;
    loop {
        let count = seen.len();
        let now = look(seen)?;
        if now.phase == "Stable" && now.root != before.root {
            if seen.len() != count {
                quiet_since = Some(Instant::now());
            }
            if quiet_since.get_or_insert_with(Instant::now).elapsed() >= QUIET {
                return Ok(took);
            }
        } else {
            quiet_since = None;
        }
        if Instant::now() > deadline {
            bail!("the rotation did not end within {ROTATION:?} of being let go");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The states of the CA Secret make one rotation: from the first root to one new root, its
/// phases recorded forward only, ending Stable with nothing queued, nothing after.
fn one_rotation(seen: &[Recorded]) -> anyhow::Result<()> {
    let states: Vec<String> = seen.iter().map(Recorded::short).collect();
    let mut roots: Vec<&str> = Vec::new();
    for r in seen {
        if roots.last() != Some(&r.root.as_str()) {
            ensure!(
                !roots.contains(&r.root.as_str()),
                "ca.crt went back to a root it held before: {states:?}"
            );
            roots.push(&r.root);
        }
    }
    ensure!(
        roots.len() == 2,
        "expected one rotation (the root, then one new root), ca.crt held {} roots: {states:?}",
        roots.len()
    );
    let rank = |phase: &str| PHASES.iter().position(|p| *p == phase);
    let mut last = 0;
    for r in seen.iter().filter(|r| r.root == roots[1]) {
        let Some(n) = rank(&r.phase) else {
            bail!("unknown rotation phase {:?} in the CA Secret: {states:?}", r.phase);
        };
        ensure!(
            n >= last,
            "the rotation went back from {} to {}: a rotation started again: {states:?}",
            PHASES[last],
            r.phase
        );
        last = n;
        ensure!(!r.queued, "a root was queued during the rotation: {states:?}");
    }
    ensure!(
        seen.last().is_some_and(|r| r.phase == "Stable"),
        "the rotation did not end: {states:?}"
    );
    Ok(())
}
