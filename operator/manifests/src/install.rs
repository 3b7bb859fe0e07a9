//! What a Trellis installation consists of.

pub mod webhooks;

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, Namespace,
    ObjectFieldSelector, PodAffinityTerm, PodAntiAffinity, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, SeccompProfile, SecurityContext, Service, ServiceAccount, ServicePort, ServiceSpec,
    WeightedPodAffinityTerm,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;
use serde_json::Value;
use trellis_api::mesh::SYSTEM_NAMESPACE;

/// The operator's name: Deployment, ServiceAccount, ClusterRole, Role, Service.
pub const OPERATOR_NAME: &str = "trellis-operator";
/// Config push and certificate signing (gRPC over mTLS); Istio's xDS port.
pub const PUSH_PORT: i32 = 15012;
/// Admin: `/metrics`, `/ready`, `/live`, sync state.
pub const ADMIN_PORT: i32 = 15014;
/// Admission webhooks (HTTPS).
pub const WEBHOOK_PORT: i32 = 15017;
/// The image registry Trellis releases are published to.
pub const IMAGE_REPOSITORY: &str = "ghcr.io/trellis-mesh";
/// Operator replicas: one leads (reconciles, rotates roots, drives rollouts), every one serves
/// config push, certificate signing and webhooks, so losing one pod loses none of those.
pub const OPERATOR_REPLICAS: i32 = 2;
/// The operator container's name in its Deployment.
pub const OPERATOR_CONTAINER: &str = "operator";
/// The variable telling the operator its own image (the Mesh's `spec.versions.operator` is
/// compared with it: the operator upgrades itself to the image the Mesh names).
pub const OPERATOR_IMAGE_ENV: &str = "TRELLIS_OPERATOR_IMAGE";
/// The variable the operator reads its own namespace from (set from the pod's
/// `metadata.namespace`): its CA Secret, Lease, Service and webhooks' service reference follow it.
pub const NAMESPACE_ENV: &str = "POD_NAMESPACE";
/// The log filter of both binaries, the operator and the proxy (`tracing` EnvFilter syntax).
pub const LOG_ENV: &str = "TRELLIS_LOG";
/// glibc malloc arenas for the operator (`MALLOC_ARENA_MAX`). By default glibc makes up to
/// eight per core, each keeping its freed memory; the operator's allocations are many small,
/// long-lived pieces shared across threads, and two arenas hold about 35 MiB less at 1000
/// proxies (measured with the convergence benchmark, `operator/benches/README.md`).
pub const OPERATOR_MALLOC_ARENAS: &str = "2";

/// What can be chosen at install time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Namespace of the control plane.
    pub namespace: String,
    /// Image of `trellis-operator`.
    pub operator_image: String,
    /// Image of `trellis-proxy` (sidecars and gateways).
    pub proxy_image: String,
    /// The operator's log filter ([`LOG_ENV`]: EnvFilter syntax).
    pub log_level: String,
}

impl Default for Options {
    fn default() -> Self {
        let version = env!("CARGO_PKG_VERSION");
        Options {
            namespace: SYSTEM_NAMESPACE.to_string(),
            operator_image: format!("{IMAGE_REPOSITORY}/trellis-operator:{version}"),
            proxy_image: format!("{IMAGE_REPOSITORY}/trellis-proxy:{version}"),
            log_level: "info".to_string(),
        }
    }
}

/// Labels on every installed object.
pub fn common_labels() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/part-of".to_string(), "trellis".to_string()),
        (
            "app.kubernetes.io/version".to_string(),
            env!("CARGO_PKG_VERSION").to_string(),
        ),
    ])
}

fn operator_labels() -> BTreeMap<String, String> {
    BTreeMap::from([("app".to_string(), OPERATOR_NAME.to_string())])
}

fn meta(name: &str, namespace: Option<&str>, extra: BTreeMap<String, String>) -> ObjectMeta {
    let mut labels = common_labels();
    labels.extend(extra);
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: namespace.map(str::to_string),
        labels: Some(labels),
        ..ObjectMeta::default()
    }
}

/// A Kubernetes object as JSON with `apiVersion` and `kind` first.
pub fn to_value<T: Serialize + k8s_openapi::Resource>(o: &T) -> Value {
    let mut v = serde_json::to_value(o).expect("Kubernetes objects always serialize");
    // k8s-openapi serializes type meta through its Resource impl; make it explicit and first.
    if let Value::Object(map) = &mut v {
        let mut ordered = serde_json::Map::new();
        ordered.insert("apiVersion".into(), Value::String(T::API_VERSION.to_string()));
        ordered.insert("kind".into(), Value::String(T::KIND.to_string()));
        for (k, val) in std::mem::take(map) {
            if k != "apiVersion" && k != "kind" {
                ordered.insert(k, val);
            }
        }
        *map = ordered;
    }
    v
}

/// Every object of an installation, in the order they must be applied: CRDs, namespace,
/// identity and RBAC, the operator, its Service, the default Mesh, then the admission webhooks
/// (last: their failure policy is `Fail`, and the operator that serves them and fills in their
/// `caBundle` starts only now — applied earlier, they would refuse the default Mesh).
pub fn objects(opts: &Options) -> Vec<Value> {
    let mut out: Vec<Value> = trellis_api::crd::all().iter().map(to_value).collect();
    out.push(to_value(&namespace(opts)));
    out.push(to_value(&service_account(opts)));
    out.push(to_value(&cluster_role()));
    out.push(to_value(&cluster_role_binding(opts)));
    out.push(to_value(&role(opts)));
    out.push(to_value(&role_binding(opts)));
    out.push(to_value(&deployment(opts)));
    out.push(to_value(&disruption_budget(opts)));
    out.push(to_value(&service(opts)));
    out.push(default_mesh(opts));
    out.push(to_value(&webhooks::validating_webhook_configuration(opts)));
    out.push(to_value(&webhooks::mutating_webhook_configuration(opts)));
    out
}

/// The control plane's namespace.
pub fn namespace(opts: &Options) -> Namespace {
    Namespace {
        metadata: meta(&opts.namespace, None, BTreeMap::new()),
        ..Namespace::default()
    }
}

/// The operator's identity.
pub fn service_account(opts: &Options) -> ServiceAccount {
    ServiceAccount {
        metadata: meta(OPERATOR_NAME, Some(&opts.namespace), operator_labels()),
        ..ServiceAccount::default()
    }
}

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> PolicyRule {
    let s = |v: &[&str]| Some(v.iter().map(|s| s.to_string()).collect());
    PolicyRule {
        api_groups: s(groups),
        resources: s(resources),
        verbs: verbs.iter().map(|s| s.to_string()).collect(),
        ..PolicyRule::default()
    }
}

const READ: &[&str] = &["get", "list", "watch"];

/// `rule` restricted to the objects named `names`. RBAC matches a name on get, patch, update
/// and delete; on list and watch when the request selects `metadata.name=<name>` (the API server
/// reads that field selector as the request's name); and on create only when the create comes
/// from a server-side apply or an update (a POST names its object in the body, which RBAC does
/// not see).
fn named(names: &[&str], groups: &[&str], resources: &[&str], verbs: &[&str]) -> PolicyRule {
    PolicyRule {
        resource_names: Some(names.iter().map(|s| s.to_string()).collect()),
        ..rule(groups, resources, verbs)
    }
}

/// The name of the trust ConfigMap published to every namespace.
pub const ROOT_CONFIGMAP: &str = trellis_api::mesh::ROOT_CONFIGMAP;
/// The Secret holding the mesh root, in the control plane's namespace.
pub const CA_SECRET: &str = "trellis-ca";
/// The Lease the operator's replicas elect their leader on, in the control plane's namespace.
pub const LEADER_LEASE: &str = OPERATOR_NAME;

/// What the operator may do in every namespace, and why (each rule's comment names the feature
/// that needs it). Nothing here writes a Secret: every write the operator makes to Secrets or
/// Leases is in [`namespace_rules`], in its own namespace only.
pub fn cluster_rules() -> Vec<PolicyRule> {
    vec![
        // Service registry: what the compiler reads; pods also for the data plane status
        // (proxy image per pod) and the rollout's health gates; namespaces for injection labels.
        rule(&[""], &["namespaces", "services", "pods"], READ),
        // Where Services are served (their EndpointSlices, several per Service, hand-made ones
        // of Services without a selector too): watched, read-only.
        rule(&["discovery.k8s.io"], &["endpointslices"], &["list", "watch"]),
        // The mesh root published to every namespace (trellis-ca-root) for proxies' first start:
        // applied server-side, which creates it by name; the Mesh's finalizer lists them by name
        // and deletes them. No other ConfigMap is read or written.
        named(
            &[ROOT_CONFIGMAP],
            &[""],
            &["configmaps"],
            &["get", "list", "create", "patch", "delete"],
        ),
        // TLS credentials that Gateways and DestinationRules name in credentialName (their
        // namespaces are the users'), and the plugged root Secret spec.ca.secretRef names (any
        // namespace): watched, read-only. Writes go to the CA Secret alone (namespace_rules).
        rule(&[""], &["secrets"], &["list", "watch"]),
        // Events on the Mesh's transitions (conditions, rollout waves), and on pods the sidecar
        // injector skips (hostNetwork).
        rule(&["", "events.k8s.io"], &["events"], &["create", "patch"]),
        // Workload identity: verify the ServiceAccount tokens in certificate requests.
        rule(&["authentication.k8s.io"], &["tokenreviews"], &["create"]),
        // The mesh configuration, and its status (compiler diagnostics as validationMessages).
        rule(&["networking.trellis.dev", "security.trellis.dev"], &["*"], READ),
        rule(
            &["networking.trellis.dev", "security.trellis.dev"],
            &["*/status"],
            &["get", "update", "patch"],
        ),
        // The Mesh reconciler: its spec (the finalizer is in metadata), status and finalizer.
        rule(
            &["mesh.trellis.dev"],
            &["meshes"],
            &["get", "list", "watch", "update", "patch"],
        ),
        rule(
            &["mesh.trellis.dev"],
            &["meshes/status", "meshes/finalizers"],
            &["get", "update", "patch"],
        ),
        // Admission webhooks: watch Trellis' own two configurations (by name), keep their
        // caBundle current, and delete them when the Mesh is deleted (its finalizer); no read or
        // write of anyone else's...
        named(
            &[webhooks::VALIDATOR, webhooks::INJECTOR],
            &["admissionregistration.k8s.io"],
            &["mutatingwebhookconfigurations", "validatingwebhookconfigurations"],
            &["get", "list", "watch", "patch", "delete"],
        ),
        // ...and create them when missing at start: the OLM bundle cannot carry them (create
        // cannot be narrowed to names; the operator creates only these two).
        rule(
            &["admissionregistration.k8s.io"],
            &["mutatingwebhookconfigurations", "validatingwebhookconfigurations"],
            &["create"],
        ),
        // Proxy rollout: restart meshed workloads wave by wave (a pod-template annotation, as
        // `kubectl rollout restart` does); the operator's own Deployment when the Mesh names
        // another operator image. ReplicaSets are not touched.
        rule(
            &["apps"],
            &["deployments", "statefulsets", "daemonsets"],
            &["get", "list", "watch", "patch"],
        ),
        // Proxy rollout: a workload whose PodDisruptionBudget allows no disruption now waits.
        rule(&["policy"], &["poddisruptionbudgets"], READ),
    ]
}

/// What the operator may do in its own namespace only, and why: every write it makes to a
/// Secret or a Lease.
pub fn namespace_rules() -> Vec<PolicyRule> {
    vec![
        // The CA Secret: created with a self-signed root on first start (and again if it is
        // deleted); a create cannot be narrowed to a name, so it is allowed in this namespace.
        rule(&[""], &["secrets"], &["create"]),
        // ...then read and patched by name: root rotations, a plugged root copied in.
        named(&[CA_SECRET], &[""], &["secrets"], &["get", "patch"]),
        // Leader election on the Lease trellis-operator (kube-lease-manager reads it, creates it
        // when missing, renews and releases it by server-side apply).
        rule(&["coordination.k8s.io"], &["leases"], &["create"]),
        named(
            &[LEADER_LEASE],
            &["coordination.k8s.io"],
            &["leases"],
            &["get", "patch"],
        ),
    ]
}

/// The operator's cluster-wide permissions.
pub fn cluster_role() -> ClusterRole {
    ClusterRole {
        metadata: meta(OPERATOR_NAME, None, operator_labels()),
        rules: Some(cluster_rules()),
        ..ClusterRole::default()
    }
}

fn operator_subject(opts: &Options) -> Subject {
    Subject {
        kind: "ServiceAccount".into(),
        name: OPERATOR_NAME.into(),
        namespace: Some(opts.namespace.clone()),
        ..Subject::default()
    }
}

/// Binds [`cluster_role`] to the operator's ServiceAccount.
pub fn cluster_role_binding(opts: &Options) -> ClusterRoleBinding {
    ClusterRoleBinding {
        metadata: meta(OPERATOR_NAME, None, operator_labels()),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "ClusterRole".into(),
            name: OPERATOR_NAME.into(),
        },
        subjects: Some(vec![operator_subject(opts)]),
    }
}

/// The operator's permissions in its own namespace ([`namespace_rules`]).
pub fn role(opts: &Options) -> Role {
    Role {
        metadata: meta(OPERATOR_NAME, Some(&opts.namespace), operator_labels()),
        rules: Some(namespace_rules()),
    }
}

/// Binds [`role`] to the operator's ServiceAccount.
pub fn role_binding(opts: &Options) -> RoleBinding {
    RoleBinding {
        metadata: meta(OPERATOR_NAME, Some(&opts.namespace), operator_labels()),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: OPERATOR_NAME.into(),
        },
        subjects: Some(vec![operator_subject(opts)]),
    }
}

pub(crate) fn env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

pub(crate) fn env_field(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn port(name: &str, n: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        container_port: n,
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    }
}

fn http_probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(ADMIN_PORT),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        ..Probe::default()
    }
}

/// A container that cannot escalate, write its root filesystem or use any capability.
pub(crate) fn restricted_security_context() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Capabilities::default()
        }),
        ..SecurityContext::default()
    }
}

/// The operator's pod template.
pub fn pod_spec(opts: &Options) -> PodSpec {
    let quantities = |cpu: &str, mem: &str| {
        BTreeMap::from([
            ("cpu".to_string(), Quantity(cpu.into())),
            ("memory".to_string(), Quantity(mem.into())),
        ])
    };
    PodSpec {
        service_account_name: Some(OPERATOR_NAME.into()),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(65532),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..SeccompProfile::default()
            }),
            ..PodSecurityContext::default()
        }),
        // Replicas on different nodes where there are several, so one node going down leaves
        // a serving replica (preferred, not required: a one-node cluster still runs both).
        affinity: Some(Affinity {
            pod_anti_affinity: Some(PodAntiAffinity {
                preferred_during_scheduling_ignored_during_execution: Some(vec![WeightedPodAffinityTerm {
                    weight: 100,
                    pod_affinity_term: PodAffinityTerm {
                        label_selector: Some(LabelSelector {
                            match_labels: Some(operator_labels()),
                            ..LabelSelector::default()
                        }),
                        topology_key: "kubernetes.io/hostname".into(),
                        ..PodAffinityTerm::default()
                    },
                }]),
                ..PodAntiAffinity::default()
            }),
            ..Affinity::default()
        }),
        containers: vec![Container {
            name: OPERATOR_CONTAINER.into(),
            image: Some(opts.operator_image.clone()),
            // No `--namespace`: the operator takes its namespace from POD_NAMESPACE (the
            // downward API below), so it runs wherever its Deployment is put — under OLM, the
            // OperatorGroup's namespace, which the bundle cannot know.
            env: Some(vec![
                env(LOG_ENV, &opts.log_level),
                env("TRELLIS_PROXY_IMAGE", &opts.proxy_image),
                env(OPERATOR_IMAGE_ENV, &opts.operator_image),
                env("MALLOC_ARENA_MAX", OPERATOR_MALLOC_ARENAS),
                env_field("POD_NAME", "metadata.name"),
                env_field(NAMESPACE_ENV, "metadata.namespace"),
            ]),
            ports: Some(vec![
                port("grpc-push", PUSH_PORT),
                port("http-admin", ADMIN_PORT),
                port("https-webhook", WEBHOOK_PORT),
            ]),
            readiness_probe: Some(http_probe("/ready", 5, 3)),
            liveness_probe: Some(http_probe("/live", 10, 6)),
            resources: Some(ResourceRequirements {
                requests: Some(quantities("100m", "128Mi")),
                limits: Some(BTreeMap::from([("memory".to_string(), Quantity("512Mi".into()))])),
                ..ResourceRequirements::default()
            }),
            security_context: Some(restricted_security_context()),
            ..Container::default()
        }],
        ..PodSpec::default()
    }
}

/// The operator's Deployment: [`OPERATOR_REPLICAS`] replicas, rolled one surge pod at a time
/// with none unavailable, so the push API, certificate signing and the webhooks always have
/// two endpoints. Replicas old and new run side by side during an upgrade; the Lease elects
/// one leader among them ([`cluster_rules`]), so only one reconciles.
pub fn deployment_spec(opts: &Options) -> DeploymentSpec {
    DeploymentSpec {
        replicas: Some(OPERATOR_REPLICAS),
        selector: LabelSelector {
            match_labels: Some(operator_labels()),
            ..LabelSelector::default()
        },
        strategy: Some(DeploymentStrategy {
            type_: Some("RollingUpdate".into()),
            rolling_update: Some(RollingUpdateDeployment {
                max_surge: Some(IntOrString::Int(1)),
                max_unavailable: Some(IntOrString::Int(0)),
            }),
        }),
        template: PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some({
                    let mut l = common_labels();
                    l.extend(operator_labels());
                    l
                }),
                ..ObjectMeta::default()
            }),
            spec: Some(pod_spec(opts)),
        },
        ..DeploymentSpec::default()
    }
}

/// The operator's Deployment.
pub fn deployment(opts: &Options) -> Deployment {
    Deployment {
        metadata: meta(OPERATOR_NAME, Some(&opts.namespace), operator_labels()),
        spec: Some(deployment_spec(opts)),
        ..Deployment::default()
    }
}

/// Keeps one operator replica up through voluntary disruptions (node drains, cluster
/// upgrades): at most one of the two is evicted at a time.
pub fn disruption_budget(opts: &Options) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: meta(OPERATOR_NAME, Some(&opts.namespace), operator_labels()),
        spec: Some(PodDisruptionBudgetSpec {
            min_available: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(operator_labels()),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    }
}

/// The operator's Service: push, admin and webhook ports.
pub fn service(opts: &Options) -> Service {
    let sp = |name: &str, port: i32, target: i32, app: &str| ServicePort {
        name: Some(name.into()),
        port,
        target_port: Some(IntOrString::Int(target)),
        protocol: Some("TCP".into()),
        app_protocol: Some(app.into()),
        ..ServicePort::default()
    };
    Service {
        metadata: meta(OPERATOR_NAME, Some(&opts.namespace), operator_labels()),
        spec: Some(ServiceSpec {
            selector: Some(operator_labels()),
            ports: Some(vec![
                sp("grpc-push", PUSH_PORT, PUSH_PORT, "grpc"),
                sp("http-admin", ADMIN_PORT, ADMIN_PORT, "http"),
                sp("https-webhook", 443, WEBHOOK_PORT, "https"),
            ]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// The Mesh the operator reconciles, naming the installed versions.
pub fn default_mesh(opts: &Options) -> Value {
    serde_json::json!({
        "apiVersion": format!("{}/{}", trellis_api::mesh::GROUP, trellis_api::document::VERSION),
        "kind": "Mesh",
        "metadata": {"name": "default", "labels": common_labels()},
        "spec": {
            "versions": {"operator": opts.operator_image, "proxy": opts.proxy_image},
        }
    })
}
