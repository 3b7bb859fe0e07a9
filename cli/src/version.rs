//! `meshctl version`: meshctl's own version, and the operator's and proxies' versions found in
//! the cluster, with the skew between them.

use std::collections::BTreeMap;
use std::io::Write;

use k8s_openapi::api::core::v1::PodSpec;
use serde::Serialize;
use serde_json::Value;
use trellis_api::mesh::SYSTEM_NAMESPACE;
use trellis_manifests::install::OPERATOR_NAME;
use trellis_manifests::sidecar::{ProxyRole, proxy_in};

use crate::cluster::{Cluster, ClusterArgs, ClusterError};
use crate::output::{self, Format, Terminal};
use crate::{EXIT_CLUSTER, EXIT_OK};

/// `meshctl version` options.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  meshctl version              # meshctl, the operator and the proxies in the cluster
  meshctl version --client     # meshctl only, no cluster needed
  meshctl version -o json

Exit status: 0, or 3 when the cluster cannot be reached (the client version is still printed).")]
pub struct Args {
    /// Only meshctl's own version.
    #[arg(long)]
    pub client: bool,
    /// Output: table, json or yaml.
    #[arg(short = 'o', long, value_enum, default_value_t)]
    pub output: Format,
}

/// Versions, as reported.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Versions {
    /// meshctl's version.
    pub client: String,
    /// The API groups' version meshctl speaks.
    pub api: String,
    /// What the cluster runs; absent with `--client`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<Server>,
}

/// What the cluster runs.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Server {
    /// The Kubernetes version.
    pub kubernetes: String,
    /// The operator's version (its image's tag), if installed.
    pub operator: Option<String>,
    /// Proxies per version.
    pub proxies: Vec<ProxyVersion>,
    /// Every version skew, in words (empty: none).
    pub skew: Vec<String>,
}

/// Proxies running one version.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ProxyVersion {
    /// The version (image tag).
    pub version: String,
    /// How many pods run it.
    pub pods: usize,
}

/// The tag of an image reference (`latest` when it has none).
pub fn image_version(image: &str) -> String {
    let without_digest = image.split('@').next().unwrap_or(image);
    let last = without_digest.rsplit('/').next().unwrap_or(without_digest);
    last.split_once(':').map_or("latest", |(_, t)| t).to_string()
}

/// The Trellis proxy of a pod (as JSON), its role and image: the container the manifests'
/// one rule names ([`trellis_manifests::sidecar::proxy_in`], as the operator tells its
/// proxies), whatever image it runs (a mirror may rename it).
pub fn proxy(pod: &Value) -> Option<(ProxyRole, String)> {
    let spec: PodSpec = serde_json::from_value(pod["spec"].clone()).ok()?;
    let (role, container) = proxy_in(&spec)?;
    Some((role, container.image.clone()?))
}

/// The proxy image of a pod (sidecar or gateway), if it has one ([`proxy`]).
pub fn proxy_image(pod: &Value) -> Option<String> {
    proxy(pod).map(|(_, image)| image)
}

/// How many proxies run each version among `pods` (JSON). A pod being deleted or finished is
/// leaving the data plane and counts for no version, as the operator's `DataPlaneUpToDate`
/// and `kubectl rollout status` count them: a rollout's old pods, terminating, are no skew.
pub fn proxies_by_version(pods: &[Value]) -> BTreeMap<String, usize> {
    let mut by_version: BTreeMap<String, usize> = BTreeMap::new();
    let leaving = |p: &Value| {
        !p["metadata"]["deletionTimestamp"].is_null()
            || matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))
    };
    for image in pods.iter().filter(|p| !leaving(p)).filter_map(proxy_image) {
        *by_version.entry(image_version(&image)).or_insert(0) += 1;
    }
    by_version
}

/// The operator's image, if it is installed.
pub async fn operator_image(cluster: &Cluster) -> Result<Option<String>, ClusterError> {
    let d = serde_json::json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": OPERATOR_NAME, "namespace": SYSTEM_NAMESPACE}});
    Ok(cluster.get(&d).await?.and_then(|d| {
        d["spec"]["template"]["spec"]["containers"][0]["image"]
            .as_str()
            .map(str::to_string)
    }))
}

/// The server side of `meshctl version`.
pub async fn server(cluster: &Cluster) -> Result<Server, ClusterError> {
    let kubernetes = cluster.version().await?;
    let operator = operator_image(cluster).await?.map(|i| image_version(&i));
    let by_version = proxies_by_version(&cluster.list("v1", "Pod", None, None).await?);
    let client = env!("CARGO_PKG_VERSION");
    let mut skew = Vec::new();
    if let Some(op) = &operator
        && op != client
    {
        skew.push(format!(
            "meshctl {client} and the operator {op} differ: use meshctl {op}, or `meshctl upgrade` to move the cluster to {client}"
        ));
    }
    if let Some(op) = &operator {
        for (v, n) in by_version.iter().filter(|(v, _)| *v != op) {
            skew.push(format!(
                "{n} pod(s) run proxy {v}, not the operator's {op}: the operator's rollout moves them, or restart them"
            ));
        }
    }
    Ok(Server {
        kubernetes,
        operator,
        proxies: by_version
            .into_iter()
            .map(|(version, pods)| ProxyVersion { version, pods })
            .collect(),
        skew,
    })
}

/// Runs `meshctl version`.
pub async fn run(
    args: &Args,
    cluster_args: &ClusterArgs,
    terminal: Terminal,
    out: &mut dyn Write,
) -> anyhow::Result<u8> {
    let mut versions = Versions {
        client: env!("CARGO_PKG_VERSION").to_string(),
        api: trellis_api::document::VERSION.to_string(),
        server: None,
    };
    let mut code = EXIT_OK;
    if !args.client {
        let found = match Cluster::connect(cluster_args).await {
            Ok(c) => server(&c).await,
            Err(e) => Err(e),
        };
        match found {
            Ok(s) => versions.server = Some(s),
            Err(e) => {
                eprintln!("meshctl: the cluster's versions are unavailable: {e}");
                code = EXIT_CLUSTER;
            }
        }
    }
    if args.output != Format::Table {
        output::write_data(out, args.output, &versions)?;
        return Ok(code);
    }
    writeln!(out, "meshctl {} (API {})", versions.client, versions.api)?;
    if let Some(s) = &versions.server {
        writeln!(out, "Kubernetes {}", s.kubernetes)?;
        match &s.operator {
            Some(v) => writeln!(out, "operator {v}")?,
            None => writeln!(out, "operator: not installed (`meshctl install`)")?,
        }
        if s.proxies.is_empty() {
            writeln!(out, "proxies: none")?;
        } else {
            let mut t = output::table(["Proxy version", "Pods"]);
            for p in &s.proxies {
                t.add_row([p.version.clone(), p.pods.to_string()]);
            }
            writeln!(out, "{t}")?;
        }
        for skew in &s.skew {
            writeln!(out, "{} version skew: {skew}", terminal.warn())?;
        }
    }
    Ok(code)
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use trellis_manifests::sidecar::{PROXY_CONTAINER, ROLE_ENV};

    use super::*;

    #[test]
    fn versions_come_from_image_tags() {
        assert_eq!(image_version("ghcr.io/trellis-mesh/trellis-proxy:0.1.0"), "0.1.0");
        assert_eq!(image_version("localhost:5000/trellis-proxy"), "latest");
        assert_eq!(image_version("r/trellis-proxy:1.2@sha256:abc"), "1.2");
        let pod = json!({"spec": {"initContainers": [{"name": "trellis-init", "image": "x/trellis-proxy:0.1.0"},
            {"name": PROXY_CONTAINER, "image": "x/trellis-proxy:0.2.0"}], "containers": [{"name": "app", "image": "app:1"}]}});
        // The capture init container runs the proxy image too: the sidecar's is the one that counts.
        assert_eq!(proxy_image(&pod).as_deref(), Some("x/trellis-proxy:0.2.0"));
        let gateway = json!({"spec": {"containers": [{"name": "gateway", "image": "ghcr.io/trellis-mesh/trellis-proxy:0.3.0",
                                                      "env": [{"name": ROLE_ENV, "value": "gateway"}]}]}});
        assert_eq!(
            proxy(&gateway),
            Some((
                ProxyRole::Gateway,
                "ghcr.io/trellis-mesh/trellis-proxy:0.3.0".to_string()
            ))
        );
        // Told by container and role, not by image: a mirrored proxy image counts, and a user's
        // container that runs the proxy image under another name does not.
        let mirrored = json!({"spec": {"containers": [{"name": "app", "image": "app:1"},
            {"name": PROXY_CONTAINER, "image": "mirror.example/mesh/sidecar:0.2.0"}]}});
        assert_eq!(
            proxy(&mirrored),
            Some((ProxyRole::Sidecar, "mirror.example/mesh/sidecar:0.2.0".to_string()))
        );
        let lookalike =
            json!({"spec": {"containers": [{"name": "tools", "image": "ghcr.io/trellis-mesh/trellis-proxy:0.3.0"}]}});
        assert_eq!(proxy(&lookalike), None);
        assert_eq!(
            proxy_image(&json!({"spec": {"containers": [{"name": "app", "image": "nginx"}]}})),
            None
        );
    }

    #[test]
    fn pods_leaving_the_data_plane_are_no_version_skew() {
        let pod = |image: &str, metadata: Value, status: Value| {
            json!({"metadata": metadata, "status": status,
                   "spec": {"containers": [{"name": "app", "image": "app:1"}, {"name": PROXY_CONTAINER, "image": image}]}})
        };
        let running = json!({"phase": "Running"});
        let pods = [
            pod("r/trellis-proxy:0.2.0", json!({"name": "web-new"}), running.clone()),
            // A rollout's old pod, terminating, and a finished Job's pod.
            pod(
                "r/trellis-proxy:0.1.0",
                json!({"name": "web-old", "deletionTimestamp": "2026-12-06T12:00:00Z"}),
                running,
            ),
            pod(
                "r/trellis-proxy:0.1.0",
                json!({"name": "migrate"}),
                json!({"phase": "Succeeded"}),
            ),
        ];
        assert_eq!(proxies_by_version(&pods), BTreeMap::from([("0.2.0".to_string(), 1)]));
    }
}
