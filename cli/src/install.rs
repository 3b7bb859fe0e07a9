//! `meshctl install`: render the one manifest set (`trellis-manifests`) for a profile and the
//! user's Mesh settings, and apply it by server-side apply with meshctl's field manager — CRDs
//! first, waited for until Established, then the control plane and the Mesh — then wait until the operator, the
//! gateway and the Mesh are Ready. A second run with the same input changes nothing and says
//! so. `--dry-run` prints exactly what would be applied, without a cluster.
//!
//! An installed gateway (ingress or egress) keeps the proxy image it runs ([`objects_for`]): the
//! operator's rollout moves it to the Mesh's proxy version, as it moves the sidecars.
//!
//! [`objects_for`], [`apply`] and [`wait_ready`] are shared with `meshctl upgrade`.

pub mod values;

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;
use trellis_api::mesh::{MESH_NAME, conditions};
use trellis_manifests::profile::Profile;

use crate::cluster::{Cluster, ClusterArgs, ClusterError, Outcome, describe};
use crate::output::{self, Format, Terminal};
use crate::progress::Progress;
use crate::{EXIT_OK, TimedOut};
use values::Values;

/// The Mesh and its overrides (shared by install and upgrade).
#[derive(Debug, Clone, clap::Args)]
pub struct ValuesArgs {
    /// The profile: default (control plane and ingress gateway), minimal (no gateway), demo
    /// (ingress and egress gateways, every request traced).
    #[arg(long, default_value = "default", value_parser = parse_profile)]
    pub profile: Profile,
    /// A Mesh (kind: Mesh, name: default) whose spec overrides the profile's. Repeatable; later
    /// files win.
    #[arg(short = 'f', long = "filename", value_name = "MESH.yaml")]
    pub files: Vec<PathBuf>,
    /// Set a field of the Mesh's spec, after the files: PATH=VALUE with a dotted path and
    /// list indexes (telemetry.tracing.sampling=100, rollout.healthGates[0]=PodsReady); the
    /// value is YAML; null removes the field. Repeatable.
    #[arg(long = "set", value_name = "PATH=VALUE")]
    pub set: Vec<String>,
}

pub fn parse_profile(s: &str) -> Result<Profile, String> {
    Profile::from_name(s).ok_or_else(|| {
        let names: Vec<&str> = Profile::ALL.iter().map(|p| p.name()).collect();
        format!("unknown profile {s:?}; the profiles are {}", names.join(", "))
    })
}

impl ValuesArgs {
    /// Read the files and resolve the values (no cluster needed).
    pub fn resolve(&self) -> anyhow::Result<Values> {
        Ok(values::resolve(self.profile, &read_files(&self.files)?, &self.set)?)
    }
}

/// The `-f` files as (name, text).
pub fn read_files(files: &[PathBuf]) -> Result<Vec<(String, String)>, values::ValuesError> {
    files
        .iter()
        .map(|f| {
            std::fs::read_to_string(f)
                .map(|text| (f.display().to_string(), text))
                .map_err(|e| values::ValuesError::Read {
                    file: f.display().to_string(),
                    message: e.to_string(),
                })
        })
        .collect()
}

/// Waiting for readiness (shared by install and upgrade).
#[derive(Debug, Clone, clap::Args)]
pub struct WaitArgs {
    /// Wait until the operator, the gateway and the Mesh are Ready (--wait=false to return
    /// once everything is applied).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub wait: bool,
    /// How long to wait for readiness (and for the CRDs to be Established), e.g. 90s, 5m.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// A duration such as `90s`, `5m` or `1h30m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    trellis_api::duration::parse(s)
}

/// `meshctl install` options.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  meshctl install                                   # the default profile, waits until Ready
  meshctl install --profile demo                    # ingress and egress gateways, tracing
  meshctl install -f mesh.yaml --set defaultMtlsMode=STRICT
  meshctl install --dry-run > trellis.yaml          # what would be applied; no cluster needed
  meshctl install --wait=false -o json              # for scripts

Exit status: 0 installed (or nothing to change), 1 invalid Mesh settings (nothing applied),
2 usage or unreadable files, 3 cluster unreachable or a request refused, 4 not Ready in time.")]
pub struct Args {
    #[command(flatten)]
    pub values: ValuesArgs,
    /// Print exactly what would be applied (YAML, or a JSON List with -o json), in order,
    /// without contacting a cluster.
    #[arg(long)]
    pub dry_run: bool,
    /// Output: table (people), json or yaml (scripts: only the data on stdout).
    #[arg(short = 'o', long, value_enum, default_value_t)]
    pub output: Format,
    #[command(flatten)]
    pub wait: WaitArgs,
}

/// One applied object, as reported.
#[derive(Debug, Clone, Serialize)]
pub struct Applied {
    /// Kind.
    pub kind: String,
    /// Namespace, for namespaced objects.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
    /// What happened.
    pub result: Outcome,
}

/// The report of an install or upgrade.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The profile.
    pub profile: String,
    /// Whether anything changed.
    pub changed: bool,
    /// Every object, in the order applied.
    pub objects: Vec<Applied>,
    /// Whether readiness was waited for and reached.
    pub ready: bool,
}

/// The header of `--dry-run` output: what it is, and how to apply it with kubectl.
pub fn dry_run_header(values: &Values) -> String {
    format!(
        "# Trellis {version}, profile {profile}: what `meshctl install` applies, in order.\n\
         # meshctl applies the CRDs first and waits until they are Established before the rest.\n\
         # To apply this file with kubectl instead, apply it twice: the first pass creates\n\
         # everything but the Mesh, whose kind is served once its CRD is Established; the second\n\
         # needs the operator running (its webhook validates the Mesh).\n\
         #   kubectl apply --server-side --field-manager=meshctl -f trellis.yaml\n\
         #   kubectl wait --for=condition=Established crd/meshes.mesh.trellis.dev\n\
         #   kubectl -n trellis-system rollout status deployment/trellis-operator\n\
         #   kubectl apply --server-side --field-manager=meshctl -f trellis.yaml\n",
        version = env!("CARGO_PKG_VERSION"),
        profile = values.profile,
    )
}

/// Print what would be applied.
pub fn dry_run(values: &Values, format: Format, out: &mut dyn Write) -> anyhow::Result<()> {
    let objects = values.objects();
    match format {
        Format::Json => output::write_data(
            out,
            Format::Json,
            &serde_json::json!({"apiVersion": "v1", "kind": "List", "items": objects}),
        ),
        Format::Table | Format::Yaml => {
            out.write_all(dry_run_header(values).as_bytes())?;
            out.write_all(trellis_manifests::to_yaml(&objects).as_bytes())?;
            Ok(())
        }
    }
}

/// Runs `meshctl install`.
pub async fn run(
    args: &Args,
    cluster_args: &ClusterArgs,
    terminal: Terminal,
    out: &mut dyn Write,
) -> anyhow::Result<u8> {
    let values = args.values.resolve()?;
    for w in &values.warnings {
        eprintln!("{} {w}", terminal.warn());
    }
    if args.dry_run {
        dry_run(&values, args.output, out)?;
        return Ok(EXIT_OK);
    }
    let mut progress = Progress::new(terminal, false);
    progress.begin("Connecting to the cluster");
    let cluster = Cluster::connect(cluster_args).await?;
    let version = cluster.version().await?;
    progress.done(&format!("{} (Kubernetes {version})", cluster.server()));
    let objects = objects_for(&cluster, &values).await?;
    let applied = apply(&cluster, &objects, args.wait.timeout, &mut progress).await?;
    let ready = if args.wait.wait {
        wait_ready(&cluster, &objects, args.wait.timeout, &mut progress).await?;
        true
    } else {
        false
    };
    let report = Report {
        profile: values.profile.to_string(),
        changed: applied.iter().any(|a| a.result != Outcome::Unchanged),
        objects: applied,
        ready,
    };
    print_report(&report, "installed", args.output, terminal, out)?;
    Ok(EXIT_OK)
}

/// Print an install or upgrade report.
pub fn print_report(
    report: &Report,
    verb: &str,
    format: Format,
    terminal: Terminal,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    if format != Format::Table {
        return output::write_data(out, format, report);
    }
    let mut table = output::table(["Kind", "Namespace", "Name", "Result"]);
    for a in &report.objects {
        table.add_row([
            a.kind.clone(),
            a.namespace.clone().unwrap_or_default(),
            a.name.clone(),
            a.result.to_string(),
        ]);
    }
    writeln!(out, "{table}")?;
    let count = |o: Outcome| report.objects.iter().filter(|a| a.result == o).count();
    if report.changed {
        writeln!(
            out,
            "{} Trellis {verb} (profile {}): {} created, {} configured, {} unchanged.",
            terminal.ok(),
            report.profile,
            count(Outcome::Created),
            count(Outcome::Configured),
            count(Outcome::Unchanged)
        )?;
    } else {
        writeln!(
            out,
            "{} Nothing changed: the cluster already has this installation (profile {}, {} objects unchanged).",
            terminal.ok(),
            report.profile,
            report.objects.len()
        )?;
    }
    if !report.ready {
        writeln!(
            out,
            "Not waited for readiness (--wait=false): `meshctl check` tells when the mesh is Ready."
        )?;
    }
    Ok(())
}

/// What to apply to `cluster`: `values`' objects, with each installed gateway's proxy image
/// (the ingress and, in the demo profile, the egress gateway) kept as the operator's rollout
/// left it (`profile::keep_gateway_image`: the rollout, not meshctl, moves a gateway to the
/// Mesh's proxy version, in its health-gated waves).
pub async fn objects_for(cluster: &Cluster, values: &Values) -> anyhow::Result<Vec<Value>> {
    use trellis_manifests::profile::{EGRESS_GATEWAY, GATEWAY};
    let mut objects = values.objects();
    let gateways: Vec<Value> = objects
        .iter()
        .filter(|o| o["kind"] == "Deployment" && [GATEWAY, EGRESS_GATEWAY].iter().any(|g| o["metadata"]["name"] == *g))
        .cloned()
        .collect();
    for gateway in &gateways {
        if let Some(live) = cluster.get(gateway).await? {
            trellis_manifests::profile::keep_gateway_image(&mut objects, &live);
        }
    }
    Ok(objects)
}

/// Apply `objects` in order: the CRDs first, then — once they are Established — the rest.
pub async fn apply(
    cluster: &Cluster,
    objects: &[Value],
    timeout: Duration,
    progress: &mut Progress,
) -> anyhow::Result<Vec<Applied>> {
    let (crds, rest): (Vec<&Value>, Vec<&Value>) =
        objects.iter().partition(|o| o["kind"] == "CustomResourceDefinition");
    let mut applied = Vec::new();
    progress.begin(format!("Applying {} CRDs", crds.len()));
    for o in &crds {
        applied.push(apply_one(cluster, o).await?);
    }
    progress.done(&summary(&applied));
    progress.begin("Waiting for the CRDs to be Established");
    for crd in &crds {
        let name = crd["metadata"]["name"].as_str().unwrap_or_default();
        progress.update(name);
        wait_for(
            cluster,
            crd,
            timeout,
            |live| condition(live, "Established").is_some_and(|c| c.0),
            &|live| {
                format!(
                    "CRD {name} is not Established: {}",
                    condition_message(live, "Established")
                )
            },
        )
        .await?;
    }
    progress.done("");
    progress.begin(format!("Applying the control plane ({} objects)", rest.len()));
    let mut control_plane = Vec::new();
    for o in &rest {
        progress.update(&describe(o));
        control_plane.push(apply_one(cluster, o).await?);
    }
    progress.done(&summary(&control_plane));
    applied.extend(control_plane);
    Ok(applied)
}

fn summary(applied: &[Applied]) -> String {
    let n = |o: Outcome| applied.iter().filter(|a| a.result == o).count();
    format!(
        "{} created, {} configured, {} unchanged",
        n(Outcome::Created),
        n(Outcome::Configured),
        n(Outcome::Unchanged)
    )
}

/// Apply one object. A Trellis object's write goes through the operator's validating webhook:
/// while the operator is starting (no ready endpoint yet) the API server refuses it, and the
/// apply is retried for up to a minute.
pub async fn apply_one(cluster: &Cluster, o: &Value) -> anyhow::Result<Applied> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let result = loop {
        match cluster.apply(o, false).await {
            Ok((_, result)) => break result,
            Err(ClusterError::Api { message, code: 500, .. })
                if message.contains("failed calling webhook") && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    Ok(Applied {
        kind: o["kind"].as_str().unwrap_or_default().to_string(),
        namespace: o["metadata"]["namespace"].as_str().map(str::to_string),
        name: o["metadata"]["name"].as_str().unwrap_or_default().to_string(),
        result,
    })
}

/// A condition's status (`True`) and reason.
fn condition(o: &Value, kind: &str) -> Option<(bool, String)> {
    o["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
        .map(|c| {
            (
                c["status"] == "True",
                c["reason"].as_str().unwrap_or_default().to_string(),
            )
        })
}

fn condition_message(o: &Value, kind: &str) -> String {
    o["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == kind))
        .map(|c| {
            format!(
                "{} ({})",
                c["reason"].as_str().unwrap_or("no reason"),
                c["message"].as_str().unwrap_or("no message")
            )
        })
        .unwrap_or_else(|| "no condition reported yet".into())
}

/// Poll `o` until `ready` holds; [`TimedOut`] with `why` of its last state after `timeout`.
async fn wait_for(
    cluster: &Cluster,
    o: &Value,
    timeout: Duration,
    ready: impl Fn(&Value) -> bool,
    why: &dyn Fn(&Value) -> String,
) -> anyhow::Result<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let live = cluster.get(o).await?;
        match &live {
            Some(l) if ready(l) => return Ok(l.clone()),
            _ if Instant::now() >= deadline => {
                let state = match &live {
                    Some(l) => why(l),
                    None => format!("{} does not exist", describe(o)),
                };
                return Err(TimedOut(format!("not ready after {timeout:?}: {state}")).into());
            }
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// Whether a Deployment has rolled out: its latest generation observed, every replica
/// updated and available.
pub fn deployment_ready(d: &Value) -> bool {
    let want = d["spec"]["replicas"].as_i64().unwrap_or(1);
    let n = |k: &str| d["status"][k].as_i64().unwrap_or(0);
    d["status"]["observedGeneration"].as_i64() >= d["metadata"]["generation"].as_i64()
        && n("updatedReplicas") >= want
        && n("availableReplicas") >= want
        && n("replicas") == want
}

/// Whether the Mesh says it is Ready for its latest generation.
pub fn mesh_ready(m: &Value) -> bool {
    m["status"]["observedGeneration"].as_i64() >= m["metadata"]["generation"].as_i64()
        && condition(m, conditions::READY).is_some_and(|c| c.0)
}

/// Wait until every Deployment of `objects` has rolled out and the Mesh is Ready.
pub async fn wait_ready(
    cluster: &Cluster,
    objects: &[Value],
    timeout: Duration,
    progress: &mut Progress,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    wait_rolled_out(cluster, objects, deadline, progress).await?;
    if let Some(mesh) = objects.iter().find(|o| o["kind"] == "Mesh") {
        progress.begin(format!("Waiting for Mesh {MESH_NAME} to be Ready"));
        let left = deadline.saturating_duration_since(Instant::now());
        let result = wait_for(cluster, mesh, left, mesh_ready, &|live| {
            format!(
                "Mesh {MESH_NAME} is not Ready: {}; `kubectl get mesh {MESH_NAME} -o yaml` shows every condition",
                condition_message(live, conditions::READY)
            )
        })
        .await;
        finish(progress, result)?;
    }
    Ok(())
}

/// Wait until every Deployment of `objects` has rolled out (by `deadline`), each a step of
/// `progress`; [`TimedOut`] names the one that did not and how to see why.
pub async fn wait_rolled_out(
    cluster: &Cluster,
    objects: &[Value],
    deadline: Instant,
    progress: &mut Progress,
) -> anyhow::Result<()> {
    for d in objects.iter().filter(|o| o["kind"] == "Deployment") {
        progress.begin(format!("Waiting for {} to roll out", describe(d)));
        let left = deadline.saturating_duration_since(Instant::now());
        let result = wait_for(cluster, d, left, deployment_ready, &|live| {
            format!(
                "{}: {} of {} replicas available ({}); `kubectl -n {} describe deployment {}` says why",
                describe(live),
                live["status"]["availableReplicas"].as_i64().unwrap_or(0),
                live["spec"]["replicas"].as_i64().unwrap_or(1),
                condition_message(live, "Available"),
                live["metadata"]["namespace"].as_str().unwrap_or_default(),
                live["metadata"]["name"].as_str().unwrap_or_default(),
            )
        })
        .await;
        finish(progress, result)?;
    }
    Ok(())
}

fn finish(progress: &mut Progress, result: anyhow::Result<Value>) -> anyhow::Result<()> {
    match result {
        Ok(_) => {
            progress.done("");
            Ok(())
        }
        Err(e) => {
            progress.failed("");
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn readiness_of_deployments_and_the_mesh() {
        let mut d = json!({"metadata": {"generation": 2}, "spec": {"replicas": 1},
            "status": {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 1}});
        assert!(!deployment_ready(&d), "an old generation observed");
        d["status"]["observedGeneration"] = json!(2);
        assert!(deployment_ready(&d));
        d["status"]["replicas"] = json!(2);
        assert!(!deployment_ready(&d), "an old replica still there");
        let mut m = json!({"metadata": {"generation": 3}, "status": {"observedGeneration": 3,
            "conditions": [{"type": "Ready", "status": "False", "reason": "WebhooksNotReady"}]}});
        assert!(!mesh_ready(&m));
        m["status"]["conditions"][0]["status"] = json!("True");
        assert!(mesh_ready(&m));
        m["metadata"]["generation"] = json!(4);
        assert!(!mesh_ready(&m), "Ready for an older spec");
    }

    #[test]
    fn dry_run_is_the_rendered_objects_with_how_to_apply_them() {
        let values = values::resolve(Profile::Minimal, &[], &[]).unwrap();
        let mut out = Vec::new();
        dry_run(&values, Format::Yaml, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("# Trellis "), "{text}");
        assert!(text.contains("kubectl wait --for=condition=Established crd/meshes.mesh.trellis.dev"));
        let docs = trellis_api::document::parse_documents(&text);
        assert_eq!(docs.len(), values.objects().len());
        let mut out = Vec::new();
        dry_run(&values, Format::Json, &mut out).unwrap();
        let list: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(list["kind"], "List");
        assert_eq!(list["items"].as_array().unwrap().len(), values.objects().len());
    }
}
