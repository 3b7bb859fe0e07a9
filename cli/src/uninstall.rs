//! `meshctl uninstall`: remove the control plane — the webhook configurations first (so no pod
//! creation waits on a webhook that is going away), then the gateways, then the operator
//! and its RBAC — and keep the CRDs, the user's Trellis objects (the Mesh included) and the
//! mesh CA (`trellis-system` and its Secret, so a re-install keeps the root every running proxy
//! trusts). `--purge` removes those too: every Trellis object, the CRDs, the `trellis-system`
//! namespace and the `trellis-ca-root` ConfigMaps. It first lists what is meshed and what happens
//! to it, and asks — or, without a terminal, refuses unless `--yes`.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Value, json};
use trellis_api::mesh::{INJECTION_ENABLED, INJECTION_LABEL, MESH_NAME, ROOT_CONFIGMAP, SYSTEM_NAMESPACE};
use trellis_core::snapshot::InputKind;
use trellis_manifests::install::Options;
use trellis_manifests::profile::{self, Profile};

use crate::cluster::{Cluster, ClusterArgs, describe};
use crate::output::{self, Format, Terminal};
use crate::progress::Progress;
use crate::{EXIT_OK, NotConfirmed, TimedOut, version};

/// `meshctl uninstall` options.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  meshctl uninstall                  # lists what is meshed, asks, removes the control plane
  meshctl uninstall --yes            # for scripts (without a terminal, --yes is required)
  meshctl uninstall --purge --yes    # also every Trellis object, the CRDs and the mesh CA

Kept without --purge: the CRDs, your VirtualServices, DestinationRules, Gateways,
PeerAuthentications, AuthorizationPolicies and the Mesh, and the mesh CA (namespace
trellis-system and its Secret), so `meshctl install` brings the same mesh back.

Exit status: 0 removed, 3 cluster unreachable or a request refused, 4 not gone within
--timeout, 5 not confirmed.")]
pub struct Args {
    /// Also remove every Trellis object, the CRDs, the trellis-system namespace (the mesh CA) and
    /// the trellis-ca-root ConfigMaps.
    #[arg(long)]
    pub purge: bool,
    /// Do not ask (needed without a terminal).
    #[arg(short = 'y', long)]
    pub yes: bool,
    /// How long to wait for what was deleted to be gone.
    #[arg(long, default_value = "3m", value_parser = crate::install::parse_duration)]
    pub timeout: Duration,
    /// Output: table (people), json or yaml (scripts: the report only).
    #[arg(short = 'o', long, value_enum, default_value_t)]
    pub output: Format,
}

/// What is meshed now, and what becomes of it.
#[derive(Debug, Default, Serialize)]
pub struct Impact {
    /// Pods with a proxy, by namespace.
    pub meshed_pods: BTreeMap<String, usize>,
    /// Namespaces labelled for injection.
    pub injected_namespaces: Vec<String>,
    /// Trellis objects by kind (the Mesh included).
    pub trellis_objects: BTreeMap<String, usize>,
}

/// What was removed.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Whether `--purge` was given.
    pub purge: bool,
    /// What was meshed.
    pub impact: Impact,
    /// Every object deleted (`Kind namespace/name`).
    pub deleted: Vec<String>,
}

/// The control plane's objects, in the order they are removed: webhook configurations, the
/// gateways, then the rest of the installation (never the CRDs, the Mesh or the namespace).
/// Those of the profile with the most (`demo`: both gateways): an object that is not there is
/// not deleted.
pub fn control_plane() -> Vec<Value> {
    let opts = Options::default();
    let mut objects: Vec<Value> = profile::objects(Profile::Demo, json!({}), &opts)
        .into_iter()
        .filter(|o| {
            !matches!(
                o["kind"].as_str(),
                Some("CustomResourceDefinition" | "Mesh" | "Namespace")
            )
        })
        .collect();
    let rank = |o: &Value| match o["kind"].as_str() {
        Some("ValidatingWebhookConfiguration" | "MutatingWebhookConfiguration") => 0,
        _ if o["metadata"]["name"] == profile::GATEWAY || o["metadata"]["name"] == profile::EGRESS_GATEWAY => 1,
        _ => 2,
    };
    objects.sort_by_key(rank);
    objects
}

/// Read what is meshed.
pub async fn impact(cluster: &Cluster) -> anyhow::Result<Impact> {
    let mut impact = Impact::default();
    for pod in cluster.list("v1", "Pod", None, None).await? {
        if pod["metadata"]["namespace"] != SYSTEM_NAMESPACE && version::proxy_image(&pod).is_some() {
            let ns = pod["metadata"]["namespace"].as_str().unwrap_or_default().to_string();
            *impact.meshed_pods.entry(ns).or_insert(0) += 1;
        }
    }
    let selector = format!("{INJECTION_LABEL}={INJECTION_ENABLED}");
    impact.injected_namespaces = cluster
        .list("v1", "Namespace", Some(&selector), None)
        .await?
        .iter()
        .filter_map(|n| n["metadata"]["name"].as_str().map(str::to_string))
        .collect();
    for kind in trellis_kinds() {
        let n = cluster.list(&kind.api_version(), kind.kind(), None, None).await?.len();
        if n > 0 {
            impact.trellis_objects.insert(kind.kind().to_string(), n);
        }
    }
    Ok(impact)
}

/// The Trellis kinds (the Mesh and every kind users write).
fn trellis_kinds() -> impl Iterator<Item = InputKind> {
    InputKind::ALL
        .into_iter()
        .filter(|k| matches!(k, InputKind::Trellis(_)))
}

/// What happens, in sentences.
pub fn explain(impact: &Impact, purge: bool) -> Vec<String> {
    let mut lines = vec![format!(
        "Removes the control plane: the admission webhooks, the ingress gateway ({SYSTEM_NAMESPACE}/{}), the egress gateway if \
         installed ({SYSTEM_NAMESPACE}/{}), the operator and its RBAC.",
        profile::GATEWAY,
        profile::EGRESS_GATEWAY
    )];
    if impact.meshed_pods.is_empty() {
        lines.push("No pod is meshed.".into());
    } else {
        let pods: Vec<String> = impact
            .meshed_pods
            .iter()
            .map(|(ns, n)| format!("{n} in {ns}"))
            .collect();
        lines.push(format!(
            "Meshed pods ({}) keep their sidecar and its last configuration until restarted, but get no updates and \
             no new certificates: their mTLS fails when their certificates expire. Restart them unmeshed first: \
             `kubectl label namespace NS {INJECTION_LABEL}-` then `kubectl rollout restart deployment -n NS`.",
            pods.join(", ")
        ));
    }
    if !impact.injected_namespaces.is_empty() {
        lines.push(format!(
            "Namespaces labelled for injection ({}): new pods start without a sidecar once the injector is gone.",
            impact.injected_namespaces.join(", ")
        ));
    }
    let objects: Vec<String> = impact.trellis_objects.iter().map(|(k, n)| format!("{n} {k}")).collect();
    if purge {
        lines.push(format!(
            "--purge: deletes every Trellis object ({}), the Trellis CRDs, namespace {SYSTEM_NAMESPACE} with the mesh \
             CA (a re-install creates a new root) and the {ROOT_CONFIGMAP} ConfigMaps.",
            if objects.is_empty() {
                "none".to_string()
            } else {
                objects.join(", ")
            }
        ));
    } else {
        lines.push(format!(
            "Kept: the Trellis CRDs and objects ({}), and namespace {SYSTEM_NAMESPACE} with the mesh CA, so \
             `meshctl install` brings the same mesh back. --purge removes them too.",
            if objects.is_empty() {
                "none".to_string()
            } else {
                objects.join(", ")
            }
        ));
    }
    lines
}

/// Ask on the terminal; `Ok(())` when confirmed, [`NotConfirmed`] otherwise (and always without a
/// terminal).
pub fn confirm(question: &str, terminal: Terminal, stdin: &mut dyn std::io::Read) -> anyhow::Result<()> {
    if !terminal.interactive {
        return Err(NotConfirmed(format!(
            "{question}: not confirmed; there is no terminal to ask on: pass --yes to proceed (nothing was changed)"
        ))
        .into());
    }
    eprint!("{question} [y/N] ");
    let mut answer = String::new();
    std::io::BufReader::new(stdin).read_line(&mut answer)?;
    if matches!(answer.trim(), "y" | "Y" | "yes" | "Yes") {
        Ok(())
    } else {
        Err(NotConfirmed(format!("{question}: declined; nothing was changed")).into())
    }
}

/// Delete `objects` in order; the ones that existed.
async fn delete_all(cluster: &Cluster, objects: &[Value], progress: &mut Progress) -> anyhow::Result<Vec<Value>> {
    let mut deleted = Vec::new();
    for o in objects {
        progress.update(&describe(o));
        if cluster.delete(o).await? {
            deleted.push(o.clone());
        }
    }
    Ok(deleted)
}

/// Wait until every one of `objects` is gone.
async fn wait_gone(
    cluster: &Cluster,
    objects: &[Value],
    deadline: Instant,
    progress: &mut Progress,
) -> anyhow::Result<()> {
    for o in objects {
        progress.update(&describe(o));
        while cluster.get(o).await.map_err(anyhow::Error::from)?.is_some() {
            if Instant::now() >= deadline {
                return Err(TimedOut(format!(
                    "{} is still there; `kubectl describe` it to see what holds it (a finalizer?)",
                    describe(o)
                ))
                .into());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    Ok(())
}

/// Every Trellis object, the Mesh last.
async fn trellis_objects(cluster: &Cluster) -> anyhow::Result<Vec<Value>> {
    let mut all = Vec::new();
    for kind in trellis_kinds() {
        all.extend(cluster.list(&kind.api_version(), kind.kind(), None, None).await?);
    }
    all.sort_by_key(|o| o["kind"] == "Mesh");
    Ok(all.into_iter().map(|o| identity(&o)).collect())
}

/// Only what finds an object: apiVersion, kind, namespace, name.
fn identity(o: &Value) -> Value {
    let mut id = json!({"apiVersion": o["apiVersion"], "kind": o["kind"], "metadata": {"name": o["metadata"]["name"]}});
    if let Some(ns) = o["metadata"]["namespace"].as_str() {
        id["metadata"]["namespace"] = json!(ns);
    }
    id
}

/// The Mesh's finalizer is the operator's to run; once the operator is gone nothing will, so a
/// purge lifts it.
async fn release_mesh(cluster: &Cluster) -> anyhow::Result<()> {
    let mesh = json!({"apiVersion": format!("{}/{}", trellis_api::mesh::GROUP, trellis_api::document::VERSION),
        "kind": "Mesh", "metadata": {"name": MESH_NAME}});
    match cluster.get(&mesh).await {
        Ok(Some(live)) if live["metadata"]["finalizers"].as_array().is_some_and(|f| !f.is_empty()) => {
            cluster
                .merge_patch(&mesh, &json!({"metadata": {"finalizers": null}}))
                .await?;
            Ok(())
        }
        Ok(_) => Ok(()),
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// What `--purge` removes besides the control plane: every Trellis object, the CRDs, the
/// `trellis-ca-root` ConfigMaps and the namespace.
async fn purge_objects(cluster: &Cluster) -> anyhow::Result<Vec<Value>> {
    let mut objects = trellis_objects(cluster).await?;
    let configmaps = cluster
        .list("v1", "ConfigMap", Some("app.kubernetes.io/part-of=trellis"), None)
        .await?;
    objects.extend(
        configmaps
            .iter()
            .filter(|c| c["metadata"]["name"] == ROOT_CONFIGMAP)
            .map(identity),
    );
    objects.extend(
        trellis_manifests::install::objects(&Options::default())
            .into_iter()
            .filter(|o| matches!(o["kind"].as_str(), Some("CustomResourceDefinition" | "Namespace")))
            .map(|o| identity(&o)),
    );
    Ok(objects)
}

/// Runs `meshctl uninstall`.
pub async fn run(
    args: &Args,
    cluster_args: &ClusterArgs,
    terminal: Terminal,
    stdin: &mut dyn std::io::Read,
    out: &mut dyn Write,
) -> anyhow::Result<u8> {
    let cluster = Cluster::connect(cluster_args).await?;
    cluster.version().await?;
    let impact = impact(&cluster).await?;
    for line in explain(&impact, args.purge) {
        eprintln!("• {line}");
    }
    if !args.yes {
        let question = if args.purge {
            "Remove Trellis and everything it knows from this cluster?"
        } else {
            "Remove the Trellis control plane?"
        };
        confirm(question, terminal, stdin)?;
    }
    let deadline = Instant::now() + args.timeout;
    let mut progress = Progress::new(terminal, args.output != Format::Table);
    progress.begin("Removing the webhooks, the gateways and the operator");
    let mut deleted = delete_all(&cluster, &control_plane(), &mut progress).await?;
    progress.done(&format!("{} objects deleted", deleted.len()));
    progress.begin("Waiting until they are gone");
    wait_gone(&cluster, &deleted, deadline, &mut progress).await?;
    progress.done("");
    if args.purge {
        progress.begin("Purging the Trellis objects, the CRDs, the mesh CA and its ConfigMaps");
        let objects = purge_objects(&cluster).await?;
        let mut purged = Vec::new();
        for o in &objects {
            progress.update(&describe(o));
            if o["kind"] == "Mesh" {
                release_mesh(&cluster).await?;
            }
            if cluster.delete(o).await? {
                purged.push(o.clone());
            }
        }
        release_mesh(&cluster).await?;
        progress.done(&format!("{} objects deleted", purged.len()));
        progress.begin("Waiting until they are gone");
        wait_gone(&cluster, &purged, deadline, &mut progress).await?;
        progress.done("");
        deleted.extend(purged);
    }
    let report = Report {
        purge: args.purge,
        impact,
        deleted: deleted.iter().map(describe).collect(),
    };
    if args.output != Format::Table {
        output::write_data(out, args.output, &report)?;
        return Ok(EXIT_OK);
    }
    for d in &report.deleted {
        writeln!(out, "deleted {d}")?;
    }
    writeln!(
        out,
        "{} Trellis {} ({} objects deleted).",
        terminal.ok(),
        if args.purge {
            "and everything it knew are removed"
        } else {
            "control plane removed; the CRDs, your Trellis objects and the mesh CA are kept"
        },
        report.deleted.len()
    )?;
    Ok(EXIT_OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_webhooks_go_first_and_nothing_of_the_users_goes_without_purge() {
        let objects = control_plane();
        let kinds: Vec<&str> = objects.iter().map(|o| o["kind"].as_str().unwrap()).collect();
        assert!(
            kinds[0].ends_with("WebhookConfiguration") && kinds[1].ends_with("WebhookConfiguration"),
            "{kinds:?}"
        );
        assert!(
            !kinds
                .iter()
                .any(|k| matches!(*k, "CustomResourceDefinition" | "Mesh" | "Namespace"))
        );
        assert!(kinds.contains(&"ClusterRole") && kinds.contains(&"Deployment"));
        let gateway_at = objects
            .iter()
            .position(|o| o["metadata"]["name"] == profile::GATEWAY)
            .unwrap();
        let operator_at = objects
            .iter()
            .position(|o| o["kind"] == "Deployment" && o["metadata"]["name"] == "trellis-operator")
            .unwrap();
        assert!(gateway_at < operator_at, "the gateway goes before the operator");
        let egress_at = objects
            .iter()
            .position(|o| o["kind"] == "Deployment" && o["metadata"]["name"] == profile::EGRESS_GATEWAY)
            .expect("the demo profile's egress gateway is removed too");
        assert!(egress_at < operator_at, "the egress gateway goes before the operator");

        let impact = Impact {
            meshed_pods: BTreeMap::from([("shop".to_string(), 4)]),
            injected_namespaces: vec!["shop".into()],
            trellis_objects: BTreeMap::from([("VirtualService".to_string(), 2), ("Mesh".to_string(), 1)]),
        };
        let kept = explain(&impact, false).join("\n");
        assert!(kept.contains("4 in shop"), "{kept}");
        assert!(
            kept.contains("Kept: the Trellis CRDs and objects (1 Mesh, 2 VirtualService)"),
            "{kept}"
        );
        let purged = explain(&impact, true).join("\n");
        assert!(
            purged.contains("--purge: deletes every Trellis object (1 Mesh, 2 VirtualService)"),
            "{purged}"
        );
    }

    #[test]
    fn without_a_terminal_nothing_is_confirmed() {
        let e = confirm("Remove?", Terminal::none(), &mut std::io::empty()).unwrap_err();
        assert!(e.to_string().contains("pass --yes"), "{e}");
        assert_eq!(crate::exit_code(&e), crate::EXIT_NOT_CONFIRMED);
        let tty = Terminal {
            colour: false,
            interactive: true,
        };
        assert!(confirm("Remove?", tty, &mut "y\n".as_bytes()).is_ok());
        assert!(confirm("Remove?", tty, &mut "\n".as_bytes()).is_err());
    }
}
