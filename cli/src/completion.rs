//! Shell completion, including the names of what is in the cluster: pods with a proxy
//! (`proxy-config`), services (`routes`), namespaces (`-n`), and analysis codes (`analyze
//! --explain`, `-S`). The shell asks meshctl itself at each TAB (clap_complete's dynamic
//! completion: `COMPLETE=bash meshctl -- meshctl WORDS…`, registered by `meshctl completion
//! SHELL` or `source <(COMPLETE=bash meshctl)`); the candidates are computed by pure functions
//! over a [`Lister`], and the cluster is read by [`KubeLister`].
//!
//! # Guarantees
//! - Completion never hangs and never prints into the shell: the cluster is given
//!   [`LIST_TIMEOUT`] in all, and any failure (no kubeconfig, an unreachable or refusing API
//!   server, a timeout) gives no candidates and prints nothing.
//! - The cluster completed from is the one the command line names (`--kubeconfig`,
//!   `--context`), and names are completed in the namespace `-n` names; without `-n`, pods
//!   and services are offered as `NAME.NAMESPACE` from every namespace.
//!
//! # Caveats
//! - clap_complete's dynamic completion is marked unstable by its authors: the shell code it
//!   registers must come from the same meshctl that answers it, so register it anew on shell
//!   start (`source <(meshctl completion bash)` in `.bashrc`), as clap_complete recommends.

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap_complete::CompletionCandidate;
use clap_complete::env::Shells;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ListParams};
use trellis_core::code::Code;

use crate::cluster::{Cluster, ClusterArgs};
use crate::version::proxy_image;

/// The environment variable that makes meshctl answer a completion request (clap_complete's
/// default).
pub const COMPLETE_VAR: &str = "COMPLETE";

/// How long completion waits for the cluster in all (connecting and listing): a TAB must
/// answer at once, with what it has.
pub const LIST_TIMEOUT: Duration = Duration::from_secs(2);

/// What completion lists from the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listed {
    /// Pods running a Trellis proxy (sidecar or gateway).
    ProxyPods,
    /// Services.
    Services,
    /// Namespaces.
    Namespaces,
}

/// An object's name, and its namespace (empty for Namespaces).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Named {
    /// The namespace (empty when cluster-scoped).
    pub namespace: String,
    /// The name.
    pub name: String,
}

/// Lists names from the cluster; any failure is an empty list (completion stays silent).
pub trait Lister {
    /// The objects of `what`, in `namespace` (all namespaces when `None`).
    fn list(&self, what: Listed, namespace: Option<&str>) -> Vec<Named>;
}

/// What the words typed so far say about where to complete from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    /// `--kubeconfig FILE`.
    pub kubeconfig: Option<PathBuf>,
    /// `--context NAME`.
    pub context: Option<String>,
    /// `-n NS` / `--namespace NS`.
    pub namespace: Option<String>,
}

impl Scope {
    /// The scope of a command line (`meshctl --kubeconfig K proxy-config routes -n shop we`);
    /// the word being completed counts too (a value missing after a flag is none).
    pub fn from_words(words: &[OsString]) -> Scope {
        let words: Vec<&str> = words.iter().filter_map(|w| w.to_str()).collect();
        let mut scope = Scope::default();
        let mut i = 0;
        while i < words.len() {
            let word = words[i];
            let next = words.get(i + 1).copied().filter(|v| !v.is_empty());
            let (flag, inline) = match word.split_once('=') {
                Some((f, v)) if f.starts_with('-') => (f, Some(v)),
                _ => (word, None),
            };
            // `-nshop` is `-n shop`.
            let (flag, inline) = match (flag.strip_prefix("-n"), inline) {
                (Some(rest), None) if !flag.starts_with("--") && !rest.is_empty() => ("-n", Some(rest)),
                _ => (flag, inline),
            };
            let slot = match flag {
                "--kubeconfig" => Some(0),
                "--context" => Some(1),
                "-n" | "--namespace" => Some(2),
                _ => None,
            };
            if let Some(slot) = slot {
                let value = match inline {
                    Some(v) => Some(v),
                    None => {
                        i += 1;
                        next
                    }
                };
                if let Some(v) = value.filter(|v| !v.is_empty()) {
                    match slot {
                        0 => scope.kubeconfig = Some(PathBuf::from(v)),
                        1 => scope.context = Some(v.to_string()),
                        _ => scope.namespace = Some(v.to_string()),
                    }
                }
            }
            i += 1;
        }
        scope
    }

    /// The words of the command line being completed: what follows `--` in this process's
    /// arguments (`meshctl -- meshctl WORDS…`, as clap_complete calls it).
    pub fn from_process() -> Scope {
        let args: Vec<OsString> = std::env::args_os().collect();
        let words = match args.iter().position(|a| a == "--") {
            Some(i) => &args[i + 1..],
            None => &args[..],
        };
        Scope::from_words(words)
    }
}

/// Candidates for `POD[.NAMESPACE]`: pods with a proxy in `-n`'s namespace by name, or
/// without `-n` every such pod as `NAME.NAMESPACE`; those starting with `current`.
pub fn pods(lister: &dyn Lister, scope: &Scope, current: &str) -> Vec<String> {
    qualified(lister, Listed::ProxyPods, scope, current)
}

/// Candidates for `SERVICE[.NAMESPACE]`, as [`pods`] completes pods.
pub fn services(lister: &dyn Lister, scope: &Scope, current: &str) -> Vec<String> {
    qualified(lister, Listed::Services, scope, current)
}

/// Candidates for a namespace: the cluster's namespaces starting with `current`.
pub fn namespaces(lister: &dyn Lister, current: &str) -> Vec<String> {
    let names: BTreeSet<String> = lister
        .list(Listed::Namespaces, None)
        .into_iter()
        .map(|n| n.name)
        .filter(|n| n.starts_with(current))
        .collect();
    names.into_iter().collect()
}

fn qualified(lister: &dyn Lister, what: Listed, scope: &Scope, current: &str) -> Vec<String> {
    let names: BTreeSet<String> = match &scope.namespace {
        Some(ns) => lister
            .list(what, Some(ns))
            .into_iter()
            .filter(|n| &n.namespace == ns)
            .map(|n| n.name)
            .collect(),
        None => lister
            .list(what, None)
            .into_iter()
            .map(|n| format!("{}.{}", n.name, n.namespace))
            .collect(),
    };
    names.into_iter().filter(|n| n.starts_with(current)).collect()
}

/// Candidates for an analysis code (`--explain`): every code whose id starts with `current`
/// (any case), with its name as help.
pub fn codes(current: &str) -> Vec<(String, String)> {
    let current = current.to_ascii_uppercase();
    Code::ALL
        .iter()
        .map(|c| c.definition())
        .filter(|d| d.id.starts_with(&current))
        .map(|d| (d.id.to_string(), d.name.to_string()))
        .collect()
}

/// Candidates for `-S CODE=Kind ns/name`: `CODE=` for each code starting with `current`;
/// after the `=` nothing (the object is a glob the user writes).
pub fn suppressions(current: &str) -> Vec<(String, String)> {
    if current.contains('=') {
        return Vec::new();
    }
    codes(current)
        .into_iter()
        .map(|(id, name)| (format!("{id}="), name))
        .collect()
}

/// Lists from the cluster the command line names, within [`LIST_TIMEOUT`].
#[derive(Debug, Clone)]
pub struct KubeLister {
    cluster: ClusterArgs,
}

impl KubeLister {
    /// A lister for the cluster of `scope`.
    pub fn new(scope: &Scope) -> KubeLister {
        KubeLister {
            cluster: ClusterArgs {
                kubeconfig: scope.kubeconfig.clone(),
                context: scope.context.clone(),
            },
        }
    }

    async fn fetch(&self, what: Listed, namespace: Option<&str>) -> anyhow::Result<Vec<Named>> {
        let cluster = Cluster::connect(&self.cluster).await?;
        let client = cluster.client().clone();
        let params = ListParams::default();
        let named = |meta: &ObjectMeta| Named {
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
        };
        Ok(match what {
            Listed::Namespaces => Api::<Namespace>::all(client)
                .list_metadata(&params)
                .await?
                .items
                .iter()
                .map(|n| named(&n.metadata))
                .collect(),
            Listed::Services => {
                let api: Api<Service> = match namespace {
                    Some(ns) => Api::namespaced(client, ns),
                    None => Api::all(client),
                };
                api.list_metadata(&params)
                    .await?
                    .items
                    .iter()
                    .map(|s| named(&s.metadata))
                    .collect()
            }
            Listed::ProxyPods => {
                let api: Api<Pod> = match namespace {
                    Some(ns) => Api::namespaced(client, ns),
                    None => Api::all(client),
                };
                api.list(&params)
                    .await?
                    .items
                    .iter()
                    .filter(|p| serde_json::to_value(p).is_ok_and(|v| proxy_image(&v).is_some()))
                    .map(|p| named(&p.metadata))
                    .collect()
            }
        })
    }
}

impl Lister for KubeLister {
    fn list(&self, what: Listed, namespace: Option<&str>) -> Vec<Named> {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
            return Vec::new();
        };
        // The timer is made inside the runtime (it needs its clock).
        match runtime.block_on(async { tokio::time::timeout(LIST_TIMEOUT, self.fetch(what, namespace)).await }) {
            Ok(Ok(names)) => names,
            // Silent: a TAB that cannot reach the cluster offers nothing.
            _ => Vec::new(),
        }
    }
}

fn candidates(values: Vec<String>) -> Vec<CompletionCandidate> {
    values.into_iter().map(CompletionCandidate::new).collect()
}

fn with_help(values: Vec<(String, String)>) -> Vec<CompletionCandidate> {
    values
        .into_iter()
        .map(|(v, help)| CompletionCandidate::new(v).help(Some(help.into())))
        .collect()
}

/// The completer of a `POD[.NAMESPACE]` argument (clap_complete calls it at a TAB).
pub fn complete_pods(current: &OsStr) -> Vec<CompletionCandidate> {
    let scope = Scope::from_process();
    candidates(pods(&KubeLister::new(&scope), &scope, &current.to_string_lossy()))
}

/// The completer of a `SERVICE[.NAMESPACE]` argument.
pub fn complete_services(current: &OsStr) -> Vec<CompletionCandidate> {
    let scope = Scope::from_process();
    candidates(services(&KubeLister::new(&scope), &scope, &current.to_string_lossy()))
}

/// The completer of a namespace argument.
pub fn complete_namespaces(current: &OsStr) -> Vec<CompletionCandidate> {
    let scope = Scope::from_process();
    candidates(namespaces(&KubeLister::new(&scope), &current.to_string_lossy()))
}

/// The completer of `--explain CODE`.
pub fn complete_codes(current: &OsStr) -> Vec<CompletionCandidate> {
    with_help(codes(&current.to_string_lossy()))
}

/// The completer of `-S CODE=Kind ns/name`.
pub fn complete_suppressions(current: &OsStr) -> Vec<CompletionCandidate> {
    with_help(suppressions(&current.to_string_lossy()))
}

/// `meshctl completion SHELL`: the shell code that asks this meshctl for completions at each
/// TAB (the same as `COMPLETE=SHELL meshctl` prints), calling meshctl by its full path.
pub fn registration(shell: clap_complete::Shell, out: &mut dyn Write) -> anyhow::Result<()> {
    let name = shell.to_string();
    let shells = Shells::builtins();
    let Some(completer) = shells.completer(&name) else {
        anyhow::bail!("no completion for shell {name}; use bash, elvish, fish, powershell or zsh");
    };
    let exe = std::env::current_exe().map_or_else(|_| "meshctl".to_string(), |p| p.to_string_lossy().into_owned());
    completer.write_registration(COMPLETE_VAR, "meshctl", "meshctl", &exe, out)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    /// A cluster of two namespaces, remembering what it was asked.
    #[derive(Default)]
    struct Fake {
        asked: RefCell<Vec<(Listed, Option<String>)>>,
    }

    fn named(namespace: &str, name: &str) -> Named {
        Named {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    impl Lister for Fake {
        fn list(&self, what: Listed, namespace: Option<&str>) -> Vec<Named> {
            self.asked.borrow_mut().push((what, namespace.map(str::to_string)));
            let all = match what {
                Listed::ProxyPods => vec![
                    named("shop", "web-5d9f8"),
                    named("shop", "payment-v1-77c"),
                    named("trellis-system", "trellis-ingressgateway-7c4b"),
                ],
                Listed::Services => vec![
                    named("shop", "web"),
                    named("shop", "payment"),
                    named("default", "kubernetes"),
                ],
                Listed::Namespaces => vec![named("", "default"), named("", "shop"), named("", "trellis-system")],
            };
            all.into_iter()
                .filter(|n| namespace.is_none_or(|ns| n.namespace == ns))
                .collect()
        }
    }

    /// A cluster that cannot be reached.
    struct Down;

    impl Lister for Down {
        fn list(&self, _: Listed, _: Option<&str>) -> Vec<Named> {
            Vec::new()
        }
    }

    fn words(s: &str) -> Vec<OsString> {
        s.split(' ').map(OsString::from).collect()
    }

    #[test]
    fn the_command_line_names_the_cluster_and_namespace() {
        let s = Scope::from_words(&words(
            "meshctl --kubeconfig /k/config --context=dev proxy-config routes -n shop we",
        ));
        assert_eq!(s.kubeconfig, Some(PathBuf::from("/k/config")));
        assert_eq!(s.context.as_deref(), Some("dev"));
        assert_eq!(s.namespace.as_deref(), Some("shop"));
        for line in [
            "meshctl routes --namespace shop pay",
            "meshctl routes --namespace=shop pay",
            "meshctl routes -nshop pay",
            "meshctl routes -n=shop pay",
        ] {
            assert_eq!(
                Scope::from_words(&words(line)).namespace.as_deref(),
                Some("shop"),
                "{line}"
            );
        }
        // The namespace being typed is not a namespace yet.
        assert_eq!(Scope::from_words(&words("meshctl routes -n ")).namespace, None);
        assert_eq!(Scope::from_words(&words("meshctl routes pay")), Scope::default());
    }

    #[test]
    fn pods_and_services_by_name_in_a_namespace_or_qualified_across_all() {
        let fake = Fake::default();
        let in_shop = Scope {
            namespace: Some("shop".into()),
            ..Scope::default()
        };
        assert_eq!(pods(&fake, &in_shop, "w"), ["web-5d9f8"]);
        assert_eq!(pods(&fake, &in_shop, ""), ["payment-v1-77c", "web-5d9f8"]);
        assert_eq!(
            fake.asked.borrow().last(),
            Some(&(Listed::ProxyPods, Some("shop".to_string()))),
            "only the namespace is listed"
        );
        let anywhere = Scope::default();
        assert_eq!(
            pods(&fake, &anywhere, ""),
            [
                "payment-v1-77c.shop",
                "trellis-ingressgateway-7c4b.trellis-system",
                "web-5d9f8.shop"
            ]
        );
        assert_eq!(
            pods(&fake, &anywhere, "trellis"),
            ["trellis-ingressgateway-7c4b.trellis-system"]
        );
        assert_eq!(services(&fake, &anywhere, "pay"), ["payment.shop"]);
        assert_eq!(services(&fake, &in_shop, ""), ["payment", "web"]);
        assert_eq!(namespaces(&fake, "tr"), ["trellis-system"]);
        assert_eq!(namespaces(&fake, ""), ["default", "shop", "trellis-system"]);
    }

    #[test]
    fn an_unreachable_cluster_offers_nothing() {
        assert!(pods(&Down, &Scope::default(), "").is_empty());
        assert!(services(&Down, &Scope::default(), "").is_empty());
        assert!(namespaces(&Down, "").is_empty());
    }

    #[test]
    fn the_kube_lister_gives_up_silently_and_quickly() {
        // An API server where nothing listens, and a kubeconfig that does not exist.
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: \"https://127.0.0.1:9\"}}]\n\
             users: [{name: u, user: {token: t}}]\ncontexts: [{name: c, context: {cluster: c, user: u}}]\ncurrent-context: c\n",
        )
        .unwrap();
        for path in [kubeconfig, dir.path().join("missing")] {
            let lister = KubeLister::new(&Scope {
                kubeconfig: Some(path.clone()),
                ..Scope::default()
            });
            assert!(lister.list(Listed::Namespaces, None).is_empty(), "{path:?}");
        }
    }

    #[test]
    fn codes_and_suppressions() {
        let explain = codes("ist010");
        assert!(
            explain
                .iter()
                .any(|(id, name)| id == "IST0101" && name == "ReferencedResourceNotFound")
        );
        assert!(explain.iter().all(|(id, _)| id.starts_with("IST010")));
        assert_eq!(codes("TRL0108").len(), 1);
        assert!(codes("XYZ").is_empty());
        let suppress = suppressions("TRL010");
        assert!(suppress.iter().any(|(v, _)| v == "TRL0107="), "{suppress:?}");
        assert!(suppress.iter().all(|(v, _)| v.ends_with('=')));
        assert!(suppressions("IST0102=Namespace ").is_empty());
    }

    #[test]
    fn every_shell_gets_a_registration_calling_meshctl() {
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
            clap_complete::Shell::Elvish,
            clap_complete::Shell::PowerShell,
        ] {
            let mut out = Vec::new();
            registration(shell, &mut out).unwrap();
            let script = String::from_utf8(out).unwrap();
            assert!(
                script.contains(COMPLETE_VAR) && script.contains("meshctl"),
                "{shell}: {script}"
            );
        }
    }
}
