//! The catalogue of served resources: built-in kinds plus those added by
//! CustomResourceDefinitions. Every other module asks this catalogue how a
//! URL maps to a kind, whether it is namespaced and which subresources exist.

use std::collections::BTreeMap;
use std::sync::RwLock;

use serde_json::Value;

/// How the `scale` subresource maps onto an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScalePaths {
    /// JSON path (dotted, e.g. `.spec.replicas`) of the desired replicas.
    pub spec_replicas: String,
    /// JSON path of the observed replicas.
    pub status_replicas: String,
    /// JSON path of the label selector string, if any.
    pub label_selector: Option<String>,
}

/// One printer column for Table responses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrinterColumn {
    pub name: String,
    /// OpenAPI type: string, integer, number, boolean, date.
    pub type_: String,
    /// Simple JSONPath (`.spec.replicas`).
    pub json_path: String,
    pub priority: i64,
    pub description: String,
}

/// One served resource (one group/version/resource).
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceType {
    pub group: String,
    pub version: String,
    pub kind: String,
    /// Lower-case plural, the URL segment.
    pub plural: String,
    pub singular: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    pub status: bool,
    pub scale: Option<ScalePaths>,
    /// Verbs advertised in discovery.
    pub verbs: Vec<&'static str>,
    /// Printer columns after NAME (AGE is always appended).
    pub columns: Vec<PrinterColumn>,
    /// For CRDs: the structural schema of this version.
    pub schema: Option<Value>,
    /// Whether this version is the storage version (CRDs).
    pub storage: bool,
}

const ALL_VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

impl ResourceType {
    /// `group/version`, or just `version` for the core group.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The storage key prefix shared by all versions of a resource.
    pub fn group_resource(&self) -> String {
        // events.k8s.io/v1 Events are another view of core/v1 Events, as
        // upstream: one storage, converted on the way in and out.
        if self.group == "events.k8s.io" && self.plural == "events" {
            return "/events".to_string();
        }
        format!("{}/{}", self.group, self.plural)
    }

    /// Whether this is the events.k8s.io view of core Events.
    pub fn is_events_v1(&self) -> bool {
        self.group == "events.k8s.io" && self.plural == "events"
    }

    /// Whether only `create` is served (TokenReview and friends).
    pub fn create_only(&self) -> bool {
        self.verbs == ["create"]
    }
}

fn column(name: &str, type_: &str, path: &str, priority: i64) -> PrinterColumn {
    PrinterColumn {
        name: name.to_string(),
        type_: type_.to_string(),
        json_path: path.to_string(),
        priority,
        description: String::new(),
    }
}

struct Builtin {
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    namespaced: bool,
    short: &'static [&'static str],
    status: bool,
    scale: bool,
    create_only: bool,
}

const fn b(
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    namespaced: bool,
    short: &'static [&'static str],
) -> Builtin {
    Builtin {
        group,
        version,
        kind,
        plural,
        namespaced,
        short,
        status: false,
        scale: false,
        create_only: false,
    }
}

const fn with_status(mut x: Builtin) -> Builtin {
    x.status = true;
    x
}

const fn with_scale(mut x: Builtin) -> Builtin {
    x.scale = true;
    x
}

const fn create_only(mut x: Builtin) -> Builtin {
    x.create_only = true;
    x
}

/// The built-in kinds issue 5 asks for.
const BUILTINS: &[Builtin] = &[
    with_status(b("", "v1", "Namespace", "namespaces", false, &["ns"])),
    with_status(b("", "v1", "Node", "nodes", false, &["no"])),
    with_status(b("", "v1", "Pod", "pods", true, &["po"])),
    with_status(b("", "v1", "Service", "services", true, &["svc"])),
    b("", "v1", "Endpoints", "endpoints", true, &["ep"]),
    b("", "v1", "ConfigMap", "configmaps", true, &["cm"]),
    b("", "v1", "Secret", "secrets", true, &[]),
    b("", "v1", "ServiceAccount", "serviceaccounts", true, &["sa"]),
    b("", "v1", "Event", "events", true, &["ev"]),
    with_scale(with_status(b(
        "apps",
        "v1",
        "Deployment",
        "deployments",
        true,
        &["deploy"],
    ))),
    with_scale(with_status(b("apps", "v1", "ReplicaSet", "replicasets", true, &["rs"]))),
    with_status(b("batch", "v1", "Job", "jobs", true, &[])),
    b("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices", true, &[]),
    b("events.k8s.io", "v1", "Event", "events", true, &["ev"]),
    b("coordination.k8s.io", "v1", "Lease", "leases", true, &[]),
    // Stored and served (the operator's install has one); no disruption controller computes
    // their status, so evictions are never blocked.
    with_status(b(
        "policy",
        "v1",
        "PodDisruptionBudget",
        "poddisruptionbudgets",
        true,
        &["pdb"],
    )),
    with_status(b(
        "apiextensions.k8s.io",
        "v1",
        "CustomResourceDefinition",
        "customresourcedefinitions",
        false,
        &["crd", "crds"],
    )),
    b(
        "admissionregistration.k8s.io",
        "v1",
        "MutatingWebhookConfiguration",
        "mutatingwebhookconfigurations",
        false,
        &[],
    ),
    b(
        "admissionregistration.k8s.io",
        "v1",
        "ValidatingWebhookConfiguration",
        "validatingwebhookconfigurations",
        false,
        &[],
    ),
    create_only(b(
        "authentication.k8s.io",
        "v1",
        "TokenReview",
        "tokenreviews",
        false,
        &[],
    )),
    create_only(b(
        "authorization.k8s.io",
        "v1",
        "SubjectAccessReview",
        "subjectaccessreviews",
        false,
        &[],
    )),
    create_only(b(
        "authorization.k8s.io",
        "v1",
        "SelfSubjectAccessReview",
        "selfsubjectaccessreviews",
        false,
        &[],
    )),
    create_only(b(
        "authentication.k8s.io",
        "v1",
        "SelfSubjectReview",
        "selfsubjectreviews",
        false,
        &[],
    )),
    b("rbac.authorization.k8s.io", "v1", "Role", "roles", true, &[]),
    b(
        "rbac.authorization.k8s.io",
        "v1",
        "RoleBinding",
        "rolebindings",
        true,
        &[],
    ),
    b(
        "rbac.authorization.k8s.io",
        "v1",
        "ClusterRole",
        "clusterroles",
        false,
        &[],
    ),
    b(
        "rbac.authorization.k8s.io",
        "v1",
        "ClusterRoleBinding",
        "clusterrolebindings",
        false,
        &[],
    ),
];

fn builtin_columns(kind: &str) -> Vec<PrinterColumn> {
    match kind {
        "Namespace" => vec![column("Status", "string", ".status.phase", 0)],
        "Node" => vec![
            column("Status", "string", "@nodeStatus", 0),
            column("Version", "string", ".status.nodeInfo.kubeletVersion", 0),
        ],
        "Pod" => vec![
            column("Ready", "string", "@podReady", 0),
            column("Status", "string", "@podStatus", 0),
            column("Restarts", "string", "@podRestarts", 0),
            column("IP", "string", ".status.podIP", 1),
            column("Node", "string", ".spec.nodeName", 1),
        ],
        "Service" => vec![
            column("Type", "string", ".spec.type", 0),
            column("Cluster-IP", "string", ".spec.clusterIP", 0),
            column("External-IP", "string", "@serviceExternalIP", 0),
            column("Port(s)", "string", "@servicePorts", 0),
            column("Selector", "string", "@serviceSelector", 1),
        ],
        "ConfigMap" => vec![column("Data", "integer", "@dataCount", 0)],
        "Secret" => vec![
            column("Type", "string", ".type", 0),
            column("Data", "integer", "@dataCount", 0),
        ],
        "ServiceAccount" => vec![column("Secrets", "integer", "@secretsCount", 0)],
        "Deployment" => vec![
            column("Ready", "string", "@readyOfReplicas", 0),
            column("Up-to-date", "integer", "@updatedReplicas", 0),
            column("Available", "integer", "@availableReplicas", 0),
        ],
        "ReplicaSet" => vec![
            column("Desired", "integer", ".spec.replicas", 0),
            column("Current", "integer", "@statusReplicas", 0),
            column("Ready", "integer", "@readyReplicas", 0),
        ],
        "Job" => vec![
            column("Status", "string", "@jobStatus", 0),
            column("Completions", "string", "@jobCompletions", 0),
            column("Duration", "string", "@jobDuration", 0),
        ],
        "Lease" => vec![column("Holder", "string", ".spec.holderIdentity", 0)],
        "Endpoints" => vec![column("Endpoints", "string", "@endpoints", 0)],
        "Event" => vec![
            column("Last Seen", "string", "@eventLastSeen", 0),
            column("Type", "string", ".type", 0),
            column("Reason", "string", ".reason", 0),
            column("Object", "string", "@eventObject", 0),
            column("Message", "string", ".message", 0),
        ],
        "EndpointSlice" => vec![
            column("AddressType", "string", ".addressType", 0),
            column("Ports", "string", "@slicePorts", 0),
            column("Endpoints", "string", "@sliceEndpoints", 0),
        ],
        "CustomResourceDefinition" => vec![column("Created At", "date", ".metadata.creationTimestamp", 0)],
        _ => Vec::new(),
    }
}

impl From<&Builtin> for ResourceType {
    fn from(x: &Builtin) -> Self {
        let singular = x.kind.to_ascii_lowercase();
        let categories = if matches!(x.kind, "Pod" | "Service" | "Deployment" | "ReplicaSet" | "Job") {
            vec!["all".to_string()]
        } else {
            Vec::new()
        };
        ResourceType {
            group: x.group.to_string(),
            version: x.version.to_string(),
            kind: x.kind.to_string(),
            plural: x.plural.to_string(),
            singular,
            namespaced: x.namespaced,
            short_names: x.short.iter().map(|s| s.to_string()).collect(),
            categories,
            status: x.status,
            scale: x.scale.then(|| ScalePaths {
                spec_replicas: ".spec.replicas".to_string(),
                status_replicas: ".status.replicas".to_string(),
                label_selector: Some(".status.selector".to_string()),
            }),
            verbs: if x.create_only {
                vec!["create"]
            } else {
                ALL_VERBS.to_vec()
            },
            columns: builtin_columns(x.kind),
            schema: None,
            storage: true,
        }
    }
}

/// The live catalogue, shared by the server and the CRD controller.
#[derive(Debug)]
pub struct Catalog {
    /// Keyed by `(group, version, plural)`.
    inner: RwLock<BTreeMap<(String, String, String), ResourceType>>,
}

impl Default for Catalog {
    fn default() -> Self {
        Self::new()
    }
}

impl Catalog {
    /// A catalogue holding every built-in kind.
    pub fn new() -> Self {
        let map = BUILTINS
            .iter()
            .map(ResourceType::from)
            .map(|r| ((r.group.clone(), r.version.clone(), r.plural.clone()), r))
            .collect();
        Self {
            inner: RwLock::new(map),
        }
    }

    /// Looks up a served resource by its URL coordinates.
    pub fn get(&self, group: &str, version: &str, plural: &str) -> Option<ResourceType> {
        self.read()
            .get(&(group.to_string(), version.to_string(), plural.to_string()))
            .cloned()
    }

    /// Whether any resource of API group `group` is served (the core group
    /// always is).
    pub fn serves_group(&self, group: &str) -> bool {
        group.is_empty() || self.read().keys().any(|(g, _, _)| g == group)
    }

    /// Finds the resource serving `apiVersion` + `kind`.
    pub fn by_kind(&self, api_version: &str, kind: &str) -> Option<ResourceType> {
        let (group, version) = split_api_version(api_version);
        self.read()
            .values()
            .find(|r| r.group == group && r.version == version && r.kind == kind)
            .cloned()
    }

    /// The first version (in `(group, version, plural)` order) serving `group`/`plural`: one
    /// clone, where [`Catalog::all`] clones every resource with its schema (the garbage
    /// collector looks one up per object on every sweep).
    pub fn find_plural(&self, group: &str, plural: &str) -> Option<ResourceType> {
        self.read()
            .values()
            .find(|r| r.group == group && r.plural == plural)
            .cloned()
    }

    /// Every served resource, ordered by group, version, plural.
    pub fn all(&self) -> Vec<ResourceType> {
        self.read().values().cloned().collect()
    }

    /// Replaces every resource of `group`/`plural` (all versions) with
    /// `versions`; an empty list removes it.
    pub fn set_custom(&self, group: &str, plural: &str, versions: Vec<ResourceType>) {
        let mut map = self.inner.write().unwrap_or_else(|e| e.into_inner());
        map.retain(|(g, _, p), _| !(g == group && p == plural));
        for r in versions {
            map.insert((r.group.clone(), r.version.clone(), r.plural.clone()), r);
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<(String, String, String), ResourceType>> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }
}

/// Splits `apps/v1` into `("apps", "v1")` and `v1` into `("", "v1")`.
pub fn split_api_version(api_version: &str) -> (&str, &str) {
    match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalogue_maps_urls_and_kinds() {
        let c = Catalog::new();
        let deploy = c.get("apps", "v1", "deployments").unwrap();
        assert!(deploy.namespaced && deploy.status && deploy.scale.is_some());
        assert_eq!(deploy.api_version(), "apps/v1");
        let ns = c.by_kind("v1", "Namespace").unwrap();
        assert!(!ns.namespaced);
        assert_eq!(ns.short_names, ["ns"]);
        assert!(
            c.get("authentication.k8s.io", "v1", "tokenreviews")
                .unwrap()
                .create_only()
        );
        assert!(c.by_kind("v1", "Nope").is_none());
    }

    #[test]
    fn custom_resources_replace_all_versions() {
        let c = Catalog::new();
        let mut r = c.get("", "v1", "configmaps").unwrap();
        r.group = "example.com".into();
        r.plural = "widgets".into();
        let mut r2 = r.clone();
        r2.version = "v2".into();
        c.set_custom("example.com", "widgets", vec![r, r2]);
        assert!(c.get("example.com", "v2", "widgets").is_some());
        c.set_custom("example.com", "widgets", vec![]);
        assert!(c.get("example.com", "v1", "widgets").is_none());
    }
}
