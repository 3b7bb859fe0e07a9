//! `meshctl check [--pre]`, as `linkerd check`: is this cluster able to take Trellis (`--pre`),
//! and is the installed mesh healthy — each check ✔, ‼ (a warning) or ✘ with a hint naming the
//! fix; exit status 0 when nothing failed, 1 otherwise.
//!
//! Facts are read from the cluster ([`gather`]: the API server, SelfSubjectAccessReviews, the
//! CRDs, the operator's Deployment and its admin API — `/ready` and `/debug/ca` through the
//! API server's service proxy, every running replica's own proxies (`/debug/syncz?scope=local`,
//! with the certificate each proxy serves) through its pod proxy —, server-side dry runs that go through both admission
//! webhooks, the pods); every verdict is a pure function of them ([`evaluate`]), tested without
//! a cluster.

pub mod certificates;
pub mod data_plane;
pub mod verdicts;

use std::io::Write;

use serde::Serialize;
use serde_json::{Value, json};
use trellis_api::mesh::SYSTEM_NAMESPACE;
use trellis_manifests::install::webhooks::{INJECTOR, VALIDATOR};
use trellis_manifests::install::{ADMIN_PORT, OPERATOR_NAME, Options};

use crate::cluster::{Cluster, ClusterArgs, ClusterError};
use crate::output::{self, Format, Terminal};
use crate::{EXIT_INVALID, EXIT_OK};
use crate::{operator_admin, version};

/// `meshctl check` options.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  meshctl check --pre        # before installing: API server, Kubernetes version, permissions
  meshctl check              # after installing: CRDs, operator, webhooks, CA, proxies, skew
  meshctl check -o json      # for scripts: every check with its status and hint

Exit status: 0 when no check failed (warnings allowed), 1 when one did.")]
pub struct Args {
    /// Only what installing needs: the API server, its version, and the permissions to install.
    #[arg(long)]
    pub pre: bool,
    /// Output: table (people), json or yaml (scripts).
    #[arg(short = 'o', long, value_enum, default_value_t)]
    pub output: Format,
}

/// A check's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Passed.
    Ok,
    /// Works, but should be looked at (does not fail `meshctl check`).
    Warning,
    /// Failed.
    Failed,
}

/// One check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// The group it belongs to.
    pub group: &'static str,
    /// What is checked, as a statement (`the operator is ready`).
    pub name: &'static str,
    /// The outcome.
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// How to fix it (absent when it passed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl Check {
    /// A passed check.
    pub fn ok(group: &'static str, name: &'static str, detail: impl Into<String>) -> Check {
        Check {
            group,
            name,
            status: Status::Ok,
            detail: detail.into(),
            hint: None,
        }
    }

    /// A failed check with its fix.
    pub fn failed(
        group: &'static str,
        name: &'static str,
        detail: impl Into<String>,
        hint: impl Into<String>,
    ) -> Check {
        Check {
            group,
            name,
            status: Status::Failed,
            detail: detail.into(),
            hint: Some(hint.into()),
        }
    }

    /// A warning with its fix.
    pub fn warning(
        group: &'static str,
        name: &'static str,
        detail: impl Into<String>,
        hint: impl Into<String>,
    ) -> Check {
        Check {
            status: Status::Warning,
            ..Check::failed(group, name, detail, hint)
        }
    }
}

/// A permission installing needs: (verb, API group, resource, namespace).
pub type Permission = (&'static str, &'static str, &'static str, Option<&'static str>);

/// What `meshctl install` creates, as SelfSubjectAccessReviews ask for it.
pub const INSTALL_PERMISSIONS: [Permission; 12] = [
    ("create", "apiextensions.k8s.io", "customresourcedefinitions", None),
    ("create", "", "namespaces", None),
    ("create", "rbac.authorization.k8s.io", "clusterroles", None),
    ("create", "rbac.authorization.k8s.io", "clusterrolebindings", None),
    (
        "create",
        "admissionregistration.k8s.io",
        "validatingwebhookconfigurations",
        None,
    ),
    (
        "create",
        "admissionregistration.k8s.io",
        "mutatingwebhookconfigurations",
        None,
    ),
    ("create", "apps", "deployments", Some(SYSTEM_NAMESPACE)),
    ("create", "", "services", Some(SYSTEM_NAMESPACE)),
    ("create", "", "serviceaccounts", Some(SYSTEM_NAMESPACE)),
    ("create", "rbac.authorization.k8s.io", "roles", Some(SYSTEM_NAMESPACE)),
    (
        "create",
        "rbac.authorization.k8s.io",
        "rolebindings",
        Some(SYSTEM_NAMESPACE),
    ),
    ("create", "mesh.trellis.dev", "meshes", None),
];

/// An object read from the cluster: the live object (`None` when it does not exist), or why it
/// could not be read.
pub type Lookup = Result<Option<Value>, String>;

/// A webhook: its configuration, and the API server's answer to a dry run that calls it.
pub type Webhook = (Lookup, Result<Value, String>);

/// Everything read from the cluster; each field is what its request answered, or why it failed.
#[derive(Debug, Default)]
pub struct Facts {
    /// The API server's version.
    pub kubernetes: Option<Result<String, String>>,
    /// Each install permission, allowed or not (or why it could not be asked).
    pub permissions: Vec<(Permission, Result<bool, String>)>,
    /// Each Trellis CRD by name: the live object, if any.
    pub crds: Vec<(String, Lookup)>,
    /// The operator's Deployment.
    pub operator: Option<Lookup>,
    /// The operator's admin `/ready`.
    pub operator_ready: Option<Result<String, String>>,
    /// The validating webhook configuration, and a dry-run write through it.
    pub validator: Option<Webhook>,
    /// The mutating webhook configuration, and a dry-run pod creation through it.
    pub injector: Option<Webhook>,
    /// The operator's `/debug/ca`.
    pub ca: Option<Result<Value, String>>,
    /// The Mesh `default` (its CA settings name a plugged root's Secret).
    pub mesh: Option<Lookup>,
    /// The sync state of every proxy subscribed to a running operator replica (each replica's
    /// `/debug/syncz?scope=local`, merged), as JSON.
    pub syncz: Option<Result<Value, String>>,
    /// Every running pod with a proxy (`namespace/name`), with its proxy's role.
    pub proxies: Option<Result<data_plane::RunningProxies, String>>,
    /// The versions in the cluster.
    pub versions: Option<Result<version::Server, String>>,
}

/// The operator's admin API path `path`, through the API server's service proxy.
pub fn admin_path(path: &str) -> String {
    format!("/api/v1/namespaces/{SYSTEM_NAMESPACE}/services/{OPERATOR_NAME}:{ADMIN_PORT}/proxy{path}")
}

fn text<T>(r: Result<T, ClusterError>) -> Result<T, String> {
    r.map_err(|e| e.to_string())
}

async fn json_at(cluster: &Cluster, path: &str) -> Result<Value, String> {
    let body = text(cluster.get_text(path).await)?;
    serde_json::from_str(&body).map_err(|e| format!("{path} did not answer JSON: {e}"))
}

fn object(api_version: &str, kind: &str, ns: Option<&str>, name: &str) -> Value {
    let mut o = json!({"apiVersion": api_version, "kind": kind, "metadata": {"name": name}});
    if let Some(ns) = ns {
        o["metadata"]["namespace"] = json!(ns);
    }
    o
}

/// A write the validating webhook is called for, and a pod the injector is called for; both
/// only dry runs (nothing is stored), in the `default` namespace.
fn webhook_probes() -> (Value, Value) {
    let write = json!({"apiVersion": "security.trellis.dev/v1alpha1", "kind": "PeerAuthentication",
        "metadata": {"name": "meshctl-check", "namespace": "default"}, "spec": {"mtls": {"mode": "PERMISSIVE"}}});
    let pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "meshctl-check", "namespace": "default",
            "labels": {trellis_api::mesh::INJECTION_LABEL: trellis_api::mesh::INJECTION_ENABLED}},
        "spec": {"containers": [{"name": "app", "image": "meshctl-check"}]}});
    (write, pod)
}

/// Read every fact `meshctl check` (or `--pre`) needs. Stops after the API server when it
/// cannot be reached: nothing else can be known then.
pub async fn gather(cluster: Result<Cluster, ClusterError>, pre: bool) -> Facts {
    let mut facts = Facts::default();
    let cluster = match cluster {
        Ok(c) => c,
        Err(e) => {
            facts.kubernetes = Some(Err(e.to_string()));
            return facts;
        }
    };
    let kubernetes = text(cluster.version().await);
    let reachable = kubernetes.is_ok();
    facts.kubernetes = Some(kubernetes);
    if !reachable {
        return facts;
    }
    if pre {
        for p @ (verb, group, resource, namespace) in INSTALL_PERMISSIONS {
            let mut attributes = json!({"verb": verb, "group": group, "resource": resource});
            if let Some(ns) = namespace {
                attributes["namespace"] = json!(ns);
            }
            let review = json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                "metadata": {}, "spec": {"resourceAttributes": attributes}});
            let answer = text(cluster.create(&review, false).await).map(|r| r["status"]["allowed"] == true);
            facts.permissions.push((p, answer));
        }
        return facts;
    }
    for crd in trellis_manifests::install::objects(&Options::default())
        .into_iter()
        .filter(|o| o["kind"] == "CustomResourceDefinition")
    {
        let name = crd["metadata"]["name"].as_str().unwrap_or_default().to_string();
        facts.crds.push((name, text(cluster.get(&crd).await)));
    }
    let deployment = object("apps/v1", "Deployment", Some(SYSTEM_NAMESPACE), OPERATOR_NAME);
    facts.operator = Some(text(cluster.get(&deployment).await));
    facts.operator_ready = Some(text(cluster.get_text(&admin_path("/ready")).await));
    let (write, pod) = webhook_probes();
    let admission = "admissionregistration.k8s.io/v1";
    let validator = object(admission, "ValidatingWebhookConfiguration", None, VALIDATOR);
    facts.validator = Some((
        text(cluster.get(&validator).await),
        text(cluster.create(&write, true).await),
    ));
    let injector = object(admission, "MutatingWebhookConfiguration", None, INJECTOR);
    facts.injector = Some((
        text(cluster.get(&injector).await),
        text(cluster.create(&pod, true).await),
    ));
    facts.ca = Some(json_at(&cluster, &admin_path("/debug/ca")).await);
    let mesh = object("mesh.trellis.dev/v1alpha1", "Mesh", None, trellis_api::mesh::MESH_NAME);
    facts.mesh = Some(text(cluster.get(&mesh).await));
    facts.syncz = Some(sync_states(&cluster).await);
    facts.proxies = Some(text(cluster.list("v1", "Pod", None, None).await).map(|pods| {
        pods.iter()
            .filter(|p| p["status"]["phase"] == "Running" && p["metadata"]["deletionTimestamp"].is_null())
            .filter_map(|p| {
                let (role, _) = version::proxy(p)?;
                let key = format!(
                    "{}/{}",
                    p["metadata"]["namespace"].as_str().unwrap_or_default(),
                    p["metadata"]["name"].as_str().unwrap_or_default()
                );
                Some((key, role))
            })
            .collect()
    }));
    facts.versions = Some(text(version::server(&cluster).await));
    facts
}

/// The sync state of every proxy subscribed to a running operator replica, as JSON; an error
/// when no replica runs or one does not answer (its proxies would be missing).
async fn sync_states(cluster: &Cluster) -> Result<Value, String> {
    let running = operator_admin::running_replicas(cluster)
        .await
        .map_err(|e| format!("{e:#}"))?;
    if running.is_empty() {
        return Err(format!(
            "no running {OPERATOR_NAME} pod in namespace {SYSTEM_NAMESPACE} to ask for its proxies"
        ));
    }
    let (states, errors) = operator_admin::sync_states(cluster, running).await;
    if !errors.is_empty() {
        return Err(format!(
            "the operator's sync state is incomplete: {}",
            errors.join("; ")
        ));
    }
    serde_json::to_value(states).map_err(|e| e.to_string())
}

/// Every verdict on `facts`, at `now` (seconds since the epoch), in the order shown.
pub fn evaluate(facts: &Facts, now: u64) -> Vec<Check> {
    let mut checks = Vec::new();
    let Some(kubernetes) = &facts.kubernetes else {
        return checks;
    };
    checks.push(verdicts::reachable(kubernetes));
    let Ok(version) = kubernetes else {
        return checks;
    };
    checks.push(verdicts::kubernetes_version(version));
    if !facts.permissions.is_empty() {
        checks.push(verdicts::permissions(&facts.permissions));
    }
    if !facts.crds.is_empty() {
        checks.push(verdicts::crds(&facts.crds));
    }
    if let Some(operator) = &facts.operator {
        checks.push(verdicts::operator(operator, facts.operator_ready.as_ref()));
    }
    let ca = facts.ca.as_ref();
    if let Some((config, dry_run)) = &facts.validator {
        checks.push(verdicts::validator(config, dry_run, ca));
    }
    if let Some((config, dry_run)) = &facts.injector {
        checks.push(verdicts::injector(config, dry_run, ca));
    }
    if let Some(ca) = ca {
        checks.push(verdicts::root_validity(ca, facts.mesh.as_ref(), now));
    }
    if let (Some(ca), Some(proxies), Some(syncz)) = (ca, &facts.proxies, &facts.syncz) {
        checks.push(certificates::proxy_certificates(ca, proxies, syncz, now));
    }
    if let (Some(proxies), Some(syncz)) = (&facts.proxies, &facts.syncz) {
        checks.push(data_plane::proxies_connected(proxies, syncz));
        checks.push(data_plane::proxies_in_sync(syncz));
    }
    if let Some(versions) = &facts.versions {
        checks.push(data_plane::skew(versions));
    }
    checks
}

/// The checks, for people: one line each under its group, hints under failures.
pub fn print(checks: &[Check], terminal: Terminal, out: &mut dyn Write) -> anyhow::Result<()> {
    let mut group = "";
    for c in checks {
        if c.group != group {
            if !group.is_empty() {
                writeln!(out)?;
            }
            group = c.group;
            writeln!(out, "{}\n{}", terminal.bold(group), "-".repeat(group.chars().count()))?;
        }
        let mark = match c.status {
            Status::Ok => terminal.ok(),
            Status::Warning => terminal.warn(),
            Status::Failed => terminal.fail(),
        };
        writeln!(out, "{mark} {}: {}", c.name, c.detail)?;
        if let Some(hint) = &c.hint {
            writeln!(out, "    hint: {hint}")?;
        }
    }
    let failed = checks.iter().filter(|c| c.status == Status::Failed).count();
    let warned = checks.iter().filter(|c| c.status == Status::Warning).count();
    writeln!(out)?;
    if failed == 0 {
        writeln!(
            out,
            "Status check results are {} ({} checks, {warned} warnings)",
            terminal.ok(),
            checks.len()
        )?;
    } else {
        writeln!(
            out,
            "Status check results are {} ({failed} of {} checks failed)",
            terminal.fail(),
            checks.len()
        )?;
    }
    Ok(())
}

/// Runs `meshctl check`.
pub async fn run(
    args: &Args,
    cluster_args: &ClusterArgs,
    terminal: Terminal,
    out: &mut dyn Write,
) -> anyhow::Result<u8> {
    let facts = gather(Cluster::connect(cluster_args).await, args.pre).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let checks = evaluate(&facts, now);
    match args.output {
        Format::Table => print(&checks, terminal, out)?,
        other => output::write_data(out, other, &checks)?,
    }
    Ok(if checks.iter().any(|c| c.status == Status::Failed) {
        EXIT_INVALID
    } else {
        EXIT_OK
    })
}
