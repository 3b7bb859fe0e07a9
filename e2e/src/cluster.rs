//! The REST semantics of the API server over the [`Store`]: what create,
//! update, patch, delete, list and watch mean for an object (metadata,
//! preconditions, subresources, finalizers, field managers, defaults and
//! schema validation). The HTTP layer in `apiserver` only parses requests
//! and calls in here; controllers call in here too.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde_json::{Value, json};

use crate::admission;
use crate::clock;
use crate::crd;
use crate::defaults;
use crate::patch::{self, PatchKind};
use crate::resources::{Catalog, ResourceType};
use crate::selector::{FieldSelector, LabelSelector};
use crate::status::ApiError;
use crate::store::{ObjectKey, Store, StoreError, WatchStart, object_rv};

/// Options common to writes.
#[derive(Debug, Clone, Default)]
pub struct WriteOptions {
    pub dry_run: bool,
    pub field_manager: Option<String>,
    /// `Strict`, `Warn` or `Ignore` (`fieldValidation=`).
    pub field_validation: Option<String>,
    pub force: bool,
}

/// Options of a delete.
#[derive(Debug, Clone, Default)]
pub struct DeleteOptions {
    pub dry_run: bool,
    /// `Background` (default), `Foreground` or `Orphan`.
    pub propagation: Option<String>,
    pub precondition_uid: Option<String>,
    pub precondition_rv: Option<String>,
    /// `gracePeriodSeconds`; for Pods on a node, `None` means the pod's
    /// `terminationGracePeriodSeconds` and `0` deletes at once.
    pub grace_period_seconds: Option<i64>,
}

/// Options of a list.
#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    pub label_selector: Option<String>,
    pub field_selector: Option<String>,
    pub limit: Option<usize>,
    pub continue_token: Option<String>,
}

/// A write's result and any warnings for the `Warning` header.
#[derive(Debug, Clone)]
pub struct Written {
    pub object: Value,
    pub warnings: Vec<String>,
    /// True when a create happened (201 rather than 200).
    pub created: bool,
}

/// The cluster state: the resource catalogue and the object store.
#[derive(Debug, Default)]
pub struct Cluster {
    pub catalog: Catalog,
    pub store: Store,
    /// Signs and verifies ServiceAccount tokens.
    pub tokens: crate::serviceaccounts::TokenIssuer,
    /// The cluster CA (PEM), published in every namespace as the
    /// `kube-root-ca.crt` ConfigMap.
    pub root_ca: std::sync::OnceLock<String>,
    /// The pod network's node namespace (`/run/netns/ksim-ID-node`), when
    /// kubesim has one: the API server reaches pods (webhook Services)
    /// from there, as a real API server reaches the pod network.
    pub node_netns: std::sync::OnceLock<std::path::PathBuf>,
}

fn map_store(rt: &ResourceType, name: &str, e: StoreError) -> ApiError {
    match e {
        StoreError::NotFound => ApiError::not_found(rt, name),
        StoreError::AlreadyExists => ApiError::already_exists(rt, name),
        StoreError::Conflict => ApiError::conflict(rt, name),
        StoreError::Gone { requested, oldest } => {
            ApiError::gone(format!("too old resource version: {requested} ({oldest})"))
        }
    }
}

/// The random suffix alphabet of generateName (no vowels, no look-alikes).
const NAME_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

fn random_suffix(n: usize) -> String {
    let bytes = uuid::Uuid::new_v4().into_bytes();
    bytes
        .iter()
        .take(n)
        .map(|b| NAME_ALPHABET[usize::from(*b) % NAME_ALPHABET.len()] as char)
        .collect()
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")?.get(field)?.as_str()
}

/// Everything but metadata and status: a change here bumps `generation`.
fn spec_part(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
        m.remove("apiVersion");
        m.remove("kind");
    }
    v
}

fn finalizers(obj: &Value) -> Vec<String> {
    obj.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|f| f.as_str().map(str::to_string))
        .collect()
}

impl Cluster {
    /// A cluster with the `default` namespace, for unit tests.
    #[cfg(test)]
    pub(crate) fn with_default_namespace() -> Arc<Self> {
        let c = Self::new();
        let ns = c.catalog.get("", "v1", "namespaces").expect("namespaces are built in");
        c.create(
            &ns,
            None,
            json!({"metadata": {"name": "default"}}),
            &WriteOptions::default(),
        )
        .expect("the default namespace is created");
        c
    }

    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The storage key of an object.
    pub fn key(rt: &ResourceType, namespace: Option<&str>, name: &str) -> ObjectKey {
        ObjectKey {
            group_resource: rt.group_resource(),
            namespace: if rt.namespaced {
                namespace.unwrap_or("default").to_string()
            } else {
                String::new()
            },
            name: name.to_string(),
        }
    }

    /// Presents a stored object in the requested version.
    /// Presents a stored object in the requested version (and, for
    /// events.k8s.io, the requested shape).
    pub fn present(rt: &ResourceType, obj: Value) -> Value {
        let mut obj = if rt.is_events_v1() {
            crate::events::to_events_v1(&obj)
        } else {
            obj
        };
        if let Some(m) = obj.as_object_mut() {
            m.insert("apiVersion".into(), json!(rt.api_version()));
            m.insert("kind".into(), json!(rt.kind));
        }
        obj
    }

    /// The stored form of an object written through `rt`.
    fn to_storage(rt: &ResourceType, obj: Value) -> Value {
        if rt.is_events_v1() {
            crate::events::to_core(&obj)
        } else {
            obj
        }
    }

    fn check_namespace(&self, rt: &ResourceType, ns: Option<&str>, creating: bool) -> Result<(), ApiError> {
        if !rt.namespaced {
            return Ok(());
        }
        let ns = ns.unwrap_or("default");
        let ns_rt = self
            .catalog
            .get("", "v1", "namespaces")
            .ok_or_else(|| ApiError::internal("namespaces not served"))?;
        let Some(nsobj) = self.store.get(&Self::key(&ns_rt, None, ns)) else {
            return Err(ApiError::namespace_not_found(ns));
        };
        if creating && nsobj.pointer("/metadata/deletionTimestamp").is_some() {
            return Err(ApiError::forbidden(format!(
                "unable to create new content in namespace {ns} because it is being terminated"
            )));
        }
        Ok(())
    }

    fn allocate_cluster_ip(&self) -> Option<String> {
        let svc = self.catalog.get("", "v1", "services")?;
        let (items, _) = self.store.list(&svc.group_resource(), None);
        let used: BTreeSet<String> = items
            .iter()
            .filter_map(|s| s.pointer("/spec/clusterIP").and_then(Value::as_str).map(str::to_string))
            .collect();
        let [a, b] = defaults::SERVICE_CIDR_PREFIX;
        // .0.1 is the kubernetes Service and .0.10 the cluster DNS.
        (2u32..65534)
            .filter(|i| *i != 10)
            .map(|i| format!("{a}.{b}.{}.{}", i / 256, i % 256))
            .find(|ip| !used.contains(ip))
    }

    /// Gives every port of a NodePort or LoadBalancer Service a `nodePort`
    /// (30000-32767, unused, kept from `old` for the same port), as the
    /// API server does. kubesim does not serve node ports; LoadBalancers
    /// are served by the pod network.
    fn allocate_node_ports(&self, obj: &mut Value, old: Option<&Value>) {
        if !matches!(
            obj.pointer("/spec/type").and_then(Value::as_str),
            Some("NodePort" | "LoadBalancer")
        ) {
            return;
        }
        let Some(svc) = self.catalog.get("", "v1", "services") else {
            return;
        };
        let (items, _) = self.store.list(&svc.group_resource(), None);
        let mut used: BTreeSet<i64> = items
            .iter()
            .flat_map(|s| {
                s.pointer("/spec/ports")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default()
            })
            .filter_map(|p| p.get("nodePort").and_then(Value::as_i64))
            .collect();
        let previous = |port: &Value| -> Option<i64> {
            old?.pointer("/spec/ports")?
                .as_array()?
                .iter()
                .find(|p| p.get("port") == port.get("port") && p.get("protocol") == port.get("protocol"))?
                .get("nodePort")?
                .as_i64()
        };
        let start = i64::from(uuid::Uuid::new_v4().as_bytes()[0]) * 10;
        for p in obj
            .pointer_mut("/spec/ports")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            if p.get("nodePort").and_then(Value::as_i64).is_some() {
                continue;
            }
            let port = previous(p).or_else(|| {
                (0..2768)
                    .map(|i| 30000 + (start + i) % 2768)
                    .find(|n| !used.contains(n))
            });
            if let (Some(n), Some(m)) = (port, p.as_object_mut()) {
                used.insert(n);
                m.insert("nodePort".into(), Value::from(n));
            }
        }
    }

    /// Schema validation, defaults and pruning for custom resources; kind
    /// defaults for built-ins run in create/update.
    fn validate_custom(
        &self,
        rt: &ResourceType,
        name: &str,
        obj: &mut Value,
        old: Option<&Value>,
        opts: &WriteOptions,
    ) -> Result<Vec<String>, ApiError> {
        let outcome = match &rt.schema {
            Some(schema) => crd::validate(schema, obj, old),
            None => match crate::openapi_builtin::schema(&rt.group, &rt.kind) {
                Some(schema) => crd::validate_builtin(schema, obj),
                None => return Ok(Vec::new()),
            },
        };
        if !outcome.errors.is_empty() {
            return Err(ApiError::invalid(rt, name, &outcome.errors));
        }
        let mut warnings = Vec::new();
        if !outcome.unknown.is_empty() {
            let mode = opts.field_validation.as_deref().unwrap_or("Warn");
            match mode {
                "Strict" => {
                    return Err(ApiError::bad_request(format!(
                        "{} in version \"{}\" cannot be handled as a {}: strict decoding error: {}",
                        if rt.group.is_empty() {
                            rt.kind.clone()
                        } else {
                            format!("{}.{}", rt.kind, rt.group)
                        },
                        rt.version,
                        rt.kind,
                        outcome
                            .unknown
                            .iter()
                            .map(|f| format!("unknown field \"{f}\""))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                }
                "Warn" => warnings.extend(outcome.unknown.iter().map(|f| format!("unknown field \"{f}\""))),
                _ => {}
            }
        }
        Ok(warnings)
    }

    /// List semantics for field management: CRD schemas, or the
    /// built-in merge-key table.
    fn lists(rt: &ResourceType) -> patch::Lists<'_> {
        match &rt.schema {
            Some(schema) => patch::Lists::Schema(Some(schema)),
            None => patch::Lists::Builtin,
        }
    }

    fn manager(opts: &WriteOptions, default: &str) -> String {
        opts.field_manager.clone().unwrap_or_else(|| default.to_string())
    }

    /// Creates an object (POST).
    pub fn create(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        body: Value,
        opts: &WriteOptions,
    ) -> Result<Written, ApiError> {
        let mut obj = body;
        if !obj.is_object() {
            return Err(ApiError::bad_request("the body of the request must be an object"));
        }
        if let Some(av) = obj.get("apiVersion").and_then(Value::as_str)
            && av != rt.api_version()
        {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({av}) does not match the expected API version ({})",
                rt.api_version()
            )));
        }
        obj = Self::present(rt, obj);
        if !obj.get("metadata").is_some_and(Value::is_object) {
            obj["metadata"] = json!({});
        }
        let name = match (meta_str(&obj, "name"), meta_str(&obj, "generateName")) {
            (Some(n), _) if !n.is_empty() => n.to_string(),
            (_, Some(g)) if !g.is_empty() => format!("{g}{}", random_suffix(5)),
            _ => {
                return Err(ApiError::invalid(
                    rt,
                    "",
                    &[(
                        "metadata.name".into(),
                        "Required value: name or generateName is required".into(),
                    )],
                ));
            }
        };
        defaults::validate_name(&rt.kind, &name)
            .map_err(|m| ApiError::invalid(rt, &name, &[("metadata.name".into(), m)]))?;
        if rt.namespaced {
            let url_ns = ns.unwrap_or("default");
            if let Some(body_ns) = meta_str(&obj, "namespace").filter(|n| !n.is_empty())
                && body_ns != url_ns
            {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            obj["metadata"]["namespace"] = json!(url_ns);
        } else if let Some(m) = obj["metadata"].as_object_mut() {
            m.remove("namespace");
        }
        self.check_namespace(rt, ns, true)?;
        let has_spec = obj.get("spec").is_some();
        {
            let m = obj["metadata"]
                .as_object_mut()
                .ok_or_else(|| ApiError::bad_request("metadata must be an object"))?;
            m.insert("name".into(), json!(name));
            m.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
            m.insert("creationTimestamp".into(), json!(clock::now_rfc3339()));
            if rt.schema.is_some()
                || has_spec
                || matches!(
                    rt.kind.as_str(),
                    "Deployment" | "ReplicaSet" | "Job" | "Pod" | "Service" | "Namespace" | "Node"
                )
            {
                m.insert("generation".into(), json!(1));
            } else {
                m.remove("generation");
            }
            for f in [
                "resourceVersion",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "selfLink",
            ] {
                m.remove(f);
            }
        }
        if rt.status
            && let Some(m) = obj.as_object_mut()
        {
            m.remove("status");
        }
        defaults::on_create(&rt.kind, &mut obj, &mut || self.allocate_cluster_ip())
            .map_err(|c| ApiError::invalid(rt, &name, &c))?;
        if rt.kind == "Service" && rt.group.is_empty() {
            self.allocate_node_ports(&mut obj, None);
        }
        if rt.kind == "Pod" && rt.group.is_empty() {
            self.admit_service_account(ns.unwrap_or("default"), &name, &mut obj)?;
        }
        let attrs = admission::Attributes {
            rt,
            subresource: "",
            operation: "CREATE",
            namespace: ns,
            name: &name,
            dry_run: opts.dry_run,
        };
        let (mutated, mut warnings) = admission::mutate(self, &attrs, obj, None)?;
        obj = mutated;
        warnings.extend(self.validate_custom(rt, &name, &mut obj, None, opts)?);
        if rt.kind == "CustomResourceDefinition" && rt.group == "apiextensions.k8s.io" {
            crd::prepare(&mut obj).map_err(|c| ApiError::invalid(rt, &name, &c))?;
        }
        if obj.pointer("/metadata/managedFields").is_none() {
            let entries = patch::record_update_with(None, &obj, &Self::manager(opts, "unknown"), "", Self::lists(rt));
            patch::write_managed(&mut obj, &entries, &rt.api_version(), &clock::now_rfc3339());
        }
        warnings.extend(admission::validate(self, &attrs, Some(&obj), None)?);
        let key = Self::key(rt, ns, &name);
        if opts.dry_run {
            if self.store.get(&key).is_some() {
                return Err(ApiError::already_exists(rt, &name));
            }
            return Ok(Written {
                object: obj,
                warnings,
                created: true,
            });
        }
        let stored = self
            .store
            .create(&key, Self::to_storage(rt, obj))
            .map_err(|e| map_store(rt, &name, e))?;
        self.after_write(rt, &stored);
        Ok(Written {
            object: Self::present(rt, stored),
            warnings,
            created: true,
        })
    }

    /// Side effects of writes on catalogue-shaping kinds.
    fn after_write(&self, rt: &ResourceType, obj: &Value) {
        if rt.kind == "CustomResourceDefinition" && rt.group == "apiextensions.k8s.io" {
            crd::register(&self.catalog, obj);
        }
        if rt.kind == "Namespace" && rt.group.is_empty() {
            self.ensure_namespace_defaults(obj);
        }
    }

    /// The `default` ServiceAccount of a new namespace.
    /// The ServiceAccount admission plugin: the pod's account must exist,
    /// and unless automounting is off, the pod gets the
    /// `kube-api-access-*` projected volume (token, CA, namespace) mounted
    /// at `/var/run/secrets/kubernetes.io/serviceaccount` in every
    /// container.
    fn admit_service_account(&self, ns: &str, name: &str, pod: &mut Value) -> Result<(), ApiError> {
        const MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
        let sa_name = pod
            .pointer("/spec/serviceAccountName")
            .and_then(Value::as_str)
            .unwrap_or("default")
            .to_string();
        let sa_rt = self
            .catalog
            .get("", "v1", "serviceaccounts")
            .ok_or_else(|| ApiError::internal("serviceaccounts not served"))?;
        let Some(sa) = self.store.get(&Self::key(&sa_rt, Some(ns), &sa_name)) else {
            return Err(ApiError::forbidden(format!(
                "pods \"{name}\" is forbidden: error looking up service account {ns}/{sa_name}: serviceaccount \"{sa_name}\" not found"
            )));
        };
        let automount = pod
            .pointer("/spec/automountServiceAccountToken")
            .or(sa.get("automountServiceAccountToken"))
            .and_then(Value::as_bool)
            .unwrap_or(true);
        let mounted = ["containers", "initContainers"].iter().any(|list| {
            pod.pointer(&format!("/spec/{list}"))
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .flat_map(|c| c["volumeMounts"].as_array().cloned().unwrap_or_default())
                .any(|m| m["mountPath"] == MOUNT)
        });
        if !automount || mounted {
            return Ok(());
        }
        let volume = format!("kube-api-access-{}", random_suffix(5));
        let spec = &mut pod["spec"];
        let projected = json!({
            "name": volume,
            "projected": {"defaultMode": 420, "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}
            ]}
        });
        match spec.get_mut("volumes").and_then(Value::as_array_mut) {
            Some(v) => v.push(projected),
            None => spec["volumes"] = json!([projected]),
        }
        for list in ["containers", "initContainers"] {
            for c in spec.get_mut(list).and_then(Value::as_array_mut).into_iter().flatten() {
                let mount = json!({"name": volume, "mountPath": MOUNT, "readOnly": true});
                match c.get_mut("volumeMounts").and_then(Value::as_array_mut) {
                    Some(m) => m.push(mount),
                    None => c["volumeMounts"] = json!([mount]),
                }
            }
        }
        Ok(())
    }

    fn ensure_namespace_defaults(&self, ns: &Value) {
        let Some(name) = meta_str(ns, "name") else { return };
        if ns.pointer("/metadata/deletionTimestamp").is_some() {
            return;
        }
        if let (Some(cm), Some(ca)) = (self.catalog.get("", "v1", "configmaps"), self.root_ca.get()) {
            let key = Self::key(&cm, Some(name), "kube-root-ca.crt");
            if self.store.get(&key).is_none() {
                let obj = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "kube-root-ca.crt", "namespace": name}, "data": {"ca.crt": ca}});
                // A concurrent creation is fine: the ConfigMap exists either way.
                let _ = self.create(
                    &cm,
                    Some(name),
                    obj,
                    &WriteOptions {
                        field_manager: Some("kubesim-root-ca-publisher".into()),
                        ..Default::default()
                    },
                );
            }
        }
        if let Some(sa) = self.catalog.get("", "v1", "serviceaccounts") {
            let key = Self::key(&sa, Some(name), "default");
            if self.store.get(&key).is_none() {
                let obj = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default", "namespace": name}});
                // A concurrent creation is fine: the account exists either way.
                let _ = self.create(
                    &sa,
                    Some(name),
                    obj,
                    &WriteOptions {
                        field_manager: Some("kubesim-serviceaccount-controller".into()),
                        ..Default::default()
                    },
                );
            }
        }
    }

    /// Reads one object.
    pub fn get(&self, rt: &ResourceType, ns: Option<&str>, name: &str) -> Result<Value, ApiError> {
        self.store
            .get(&Self::key(rt, ns, name))
            .map(|o| Self::present(rt, o))
            .ok_or_else(|| ApiError::not_found(rt, name))
    }

    /// Lists objects: selectors, then `limit`/`continue` pagination over
    /// the namespace/name order.
    pub fn list(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        opts: &ListOptions,
    ) -> Result<(Vec<Value>, Value), ApiError> {
        let labels = LabelSelector::parse(opts.label_selector.as_deref().unwrap_or_default())
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let fields = FieldSelector::parse(opts.field_selector.as_deref().unwrap_or_default())
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let ns_filter = if rt.namespaced { ns } else { None };
        let (items, rv) = self.store.list(&rt.group_resource(), ns_filter);
        let (start_after, list_rv) = match &opts.continue_token {
            Some(t) if !t.is_empty() => {
                let raw = crate::pki::base64_decode(t)
                    .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                    .ok_or_else(|| ApiError::bad_request("continue key is not valid"))?;
                (
                    raw["start"].as_str().map(str::to_string),
                    raw["rv"].as_u64().unwrap_or(rv),
                )
            }
            _ => (None, rv),
        };
        let mut matched: Vec<Value> = items
            .into_iter()
            .filter(|o| labels.matches(o) && fields.matches(o))
            .filter(|o| {
                start_after.as_ref().is_none_or(|s| {
                    let pos = format!(
                        "{}/{}",
                        meta_str(o, "namespace").unwrap_or_default(),
                        meta_str(o, "name").unwrap_or_default()
                    );
                    pos.as_str() > s.as_str()
                })
            })
            .map(|o| Self::present(rt, o))
            .collect();
        let mut meta = json!({"resourceVersion": list_rv.to_string()});
        if let Some(limit) = opts.limit.filter(|l| *l > 0)
            && matched.len() > limit
        {
            let remaining = matched.len() - limit;
            matched.truncate(limit);
            let last = &matched[limit - 1];
            let start = format!(
                "{}/{}",
                meta_str(last, "namespace").unwrap_or_default(),
                meta_str(last, "name").unwrap_or_default()
            );
            let token = crate::pki::base64_encode(json!({"rv": list_rv, "start": start}).to_string().as_bytes());
            meta["continue"] = json!(token);
            meta["remainingItemCount"] = json!(remaining);
        }
        Ok((matched, meta))
    }

    /// Replaces an object (PUT), on the main resource or `status`.
    pub fn update(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        subresource: &str,
        body: Value,
        opts: &WriteOptions,
    ) -> Result<Written, ApiError> {
        let key = Self::key(rt, ns, name);
        let current = self
            .store
            .get(&key)
            .map(|c| Self::present(rt, c))
            .ok_or_else(|| ApiError::not_found(rt, name))?;
        if let Some(body_name) = meta_str(&body, "name")
            && body_name != name
        {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        let expected = meta_str(&body, "resourceVersion")
            .filter(|s| !s.is_empty())
            .map(|s| s.parse::<u64>().unwrap_or(0));
        let manager = Self::manager(opts, "unknown");
        self.write_update(
            rt,
            &key,
            &current,
            body,
            subresource,
            expected,
            opts,
            Some(&manager),
            true,
        )
    }

    /// The shared tail of update and patch: carries immutable fields,
    /// splits spec and status, bumps generation, finalizes deletions.
    #[allow(clippy::too_many_arguments)]
    fn write_update(
        &self,
        rt: &ResourceType,
        key: &ObjectKey,
        current: &Value,
        body: Value,
        subresource: &str,
        expected: Option<u64>,
        opts: &WriteOptions,
        manager: Option<&str>,
        record: bool,
    ) -> Result<Written, ApiError> {
        let name = key.name.as_str();
        let mut new = if subresource == "status" {
            let mut n = current.clone();
            n["status"] = body.get("status").cloned().unwrap_or(Value::Null);
            if let (Some(mf), Some(m)) = (body.pointer("/metadata/managedFields"), n["metadata"].as_object_mut()) {
                m.insert("managedFields".into(), mf.clone());
            }
            n
        } else {
            let mut n = Self::present(rt, body);
            if rt.status {
                match current.get("status") {
                    Some(s) => n["status"] = s.clone(),
                    None => {
                        if let Some(m) = n.as_object_mut() {
                            m.remove("status");
                        }
                    }
                }
            }
            n
        };
        new = Self::present(rt, new);
        if !new.get("metadata").is_some_and(Value::is_object) {
            new["metadata"] = json!({});
        }
        for f in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "namespace",
            "name",
            "generation",
        ] {
            match current.pointer(&format!("/metadata/{f}")) {
                Some(v) => new["metadata"][f] = v.clone(),
                None => {
                    if let Some(m) = new["metadata"].as_object_mut() {
                        m.remove(f);
                    }
                }
            }
        }
        if subresource != "status" {
            defaults::on_update(&rt.kind, current, &mut new);
            if rt.kind == "Service" && rt.group.is_empty() {
                self.allocate_node_ports(&mut new, Some(current));
            }
        }
        let attrs = admission::Attributes {
            rt,
            subresource,
            operation: "UPDATE",
            namespace: (!key.namespace.is_empty()).then_some(key.namespace.as_str()),
            name,
            dry_run: opts.dry_run,
        };
        let (mutated, mut warnings) = admission::mutate(self, &attrs, new, Some(current))?;
        new = mutated;
        warnings.extend(self.validate_custom(rt, name, &mut new, Some(current), opts)?);
        if rt.kind == "CustomResourceDefinition" && rt.group == "apiextensions.k8s.io" && subresource != "status" {
            crd::prepare(&mut new).map_err(|c| ApiError::invalid(rt, name, &c))?;
        }
        // Like upstream, only kinds with a spec (and custom resources)
        // track generation.
        let tracks_generation = rt.schema.is_some() || new.get("spec").is_some();
        if tracks_generation && spec_part(&new) != spec_part(current) {
            let g = current
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            new["metadata"]["generation"] = json!(g + 1);
        }
        if record && let Some(manager) = manager {
            let mut without = new.clone();
            if let Some(m) = without["metadata"].as_object_mut() {
                m.remove("managedFields");
            }
            let entries = patch::record_update_with(Some(current), &without, manager, subresource, Self::lists(rt));
            patch::write_managed(&mut new, &entries, &rt.api_version(), &clock::now_rfc3339());
        }
        warnings.extend(admission::validate(self, &attrs, Some(&new), Some(current))?);
        if opts.dry_run {
            return Ok(Written {
                object: new,
                warnings,
                created: false,
            });
        }
        // Finalization: the last finalizer of a deleting object removed.
        let namespace_finalizers = rt.kind == "Namespace"
            && rt.group.is_empty()
            && new
                .pointer("/spec/finalizers")
                .and_then(Value::as_array)
                .is_some_and(|f| !f.is_empty());
        // A pod being terminated gracefully stays until its kubelet removes it.
        let pod_terminating = rt.kind == "Pod"
            && rt.group.is_empty()
            && new
                .pointer("/metadata/deletionGracePeriodSeconds")
                .and_then(Value::as_i64)
                .unwrap_or(0)
                > 0
            && new
                .pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .is_some_and(|n| !n.is_empty());
        if new.pointer("/metadata/deletionTimestamp").is_some()
            && finalizers(&new).is_empty()
            && !namespace_finalizers
            && !pod_terminating
        {
            let gone = self
                .store
                .delete(key, expected.or(Some(object_rv(current))))
                .map_err(|e| map_store(rt, name, e))?;
            self.after_delete(rt, &gone);
            return Ok(Written {
                object: Self::present(rt, new),
                warnings,
                created: false,
            });
        }
        let stored = self
            .store
            .update(key, Self::to_storage(rt, new), expected)
            .map_err(|e| map_store(rt, name, e))?;
        self.after_write(rt, &stored);
        Ok(Written {
            object: Self::present(rt, stored),
            warnings,
            created: false,
        })
    }

    /// Patches an object (PATCH) on the main resource or `status`. Apply
    /// patches create the object when it does not exist.
    #[allow(clippy::too_many_arguments)]
    pub fn patch(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        subresource: &str,
        kind: PatchKind,
        body: &[u8],
        opts: &WriteOptions,
    ) -> Result<Written, ApiError> {
        let patch_value: Value = match kind {
            PatchKind::Apply => serde_yaml_ng::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?,
            _ => {
                serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?
            }
        };
        if kind == PatchKind::Apply && opts.field_manager.as_deref().is_none_or(str::is_empty) {
            return Err(ApiError::bad_request(
                "PATCH, application/apply-patch+yaml, requires a fieldManager to be set",
            ));
        }
        let key = Self::key(rt, ns, name);
        // Retry when another writer slips in between read and write, unless
        // the patch itself carries a resourceVersion precondition.
        let user_rv = patch_value
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .map(|s| s.parse::<u64>().unwrap_or(0));
        for _ in 0..5 {
            let current = self.store.get(&key).map(|c| Self::present(rt, c));
            let result = match (kind, current) {
                (PatchKind::Apply, None) => {
                    if subresource == "status" {
                        return Err(ApiError::not_found(rt, name));
                    }
                    let manager = opts.field_manager.clone().unwrap_or_default();
                    let (mut obj, entries) =
                        patch::server_side_apply_with(None, &patch_value, &manager, "", opts.force, Self::lists(rt))
                            .map_err(|e| ApiError::apply_conflict(e.to_string()))?;
                    obj["metadata"]["name"] = json!(name);
                    patch::write_managed(&mut obj, &entries, &rt.api_version(), &clock::now_rfc3339());
                    return self.create(rt, ns, obj, opts);
                }
                (_, None) => return Err(ApiError::not_found(rt, name)),
                (PatchKind::Apply, Some(cur)) => {
                    let manager = opts.field_manager.clone().unwrap_or_default();
                    let (mut obj, entries) = patch::server_side_apply_with(
                        Some(&cur),
                        &patch_value,
                        &manager,
                        subresource,
                        opts.force,
                        Self::lists(rt),
                    )
                    .map_err(|e| ApiError::apply_conflict(e.to_string()))?;
                    patch::write_managed(&mut obj, &entries, &rt.api_version(), &clock::now_rfc3339());
                    self.write_update(
                        rt,
                        &key,
                        &cur,
                        obj,
                        subresource,
                        user_rv.or(Some(object_rv(&cur))),
                        opts,
                        None,
                        false,
                    )
                }
                (kind, Some(cur)) => {
                    let patched = match kind {
                        PatchKind::Merge => patch::merge_patch(&cur, &patch_value),
                        PatchKind::Json => patch::json_patch(&cur, &patch_value)
                            .map_err(|e| ApiError::new_unprocessable(e.to_string()))?,
                        PatchKind::Strategic => {
                            if rt.schema.is_some() {
                                return Err(ApiError::unsupported_media_type(
                                    "application/strategic-merge-patch+json is not supported for custom resources",
                                ));
                            }
                            patch::strategic_merge(&cur, &patch_value)
                                .map_err(|e| ApiError::bad_request(e.to_string()))?
                        }
                        PatchKind::Apply => unreachable!("handled above"),
                    };
                    let manager = Self::manager(opts, "unknown");
                    let expected = object_rv(&patched);
                    self.write_update(
                        rt,
                        &key,
                        &cur,
                        patched,
                        subresource,
                        Some(expected),
                        opts,
                        Some(&manager),
                        true,
                    )
                }
            };
            match result {
                Err(e)
                    if e.reason == "Conflict"
                        && e.code == 409
                        && user_rv.is_none()
                        && !e.message.starts_with("Apply failed") =>
                {
                    continue;
                }
                other => return other,
            }
        }
        Err(ApiError::conflict(rt, name))
    }

    /// Deletes an object: immediately, or by setting `deletionTimestamp`
    /// when finalizers (including `foregroundDeletion`/`orphan`) remain.
    pub fn delete(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        opts: &DeleteOptions,
    ) -> Result<Value, ApiError> {
        // Like the API server's guaranteed update: when another writer slips
        // in between our read and our write, read again and retry, unless the
        // caller asked for a precondition (then the conflict is theirs).
        let retry = opts.precondition_uid.is_none() && opts.precondition_rv.is_none();
        let mut attempt = 0;
        loop {
            match self.delete_once(rt, ns, name, opts) {
                Err(e) if retry && attempt < 5 && e.code == 409 && e.reason == "Conflict" => attempt += 1,
                other => return other,
            }
        }
    }

    fn delete_once(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        opts: &DeleteOptions,
    ) -> Result<Value, ApiError> {
        let key = Self::key(rt, ns, name);
        let current = self.store.get(&key).ok_or_else(|| ApiError::not_found(rt, name))?;
        if let Some(uid) = &opts.precondition_uid
            && meta_str(&current, "uid") != Some(uid.as_str())
        {
            return Err(ApiError::conflict(rt, name));
        }
        if let Some(rv) = &opts.precondition_rv
            && meta_str(&current, "resourceVersion") != Some(rv.as_str())
        {
            return Err(ApiError::conflict(rt, name));
        }
        let mut fins = finalizers(&current);
        match opts.propagation.as_deref() {
            Some("Foreground") if !fins.contains(&"foregroundDeletion".to_string()) => {
                fins.push("foregroundDeletion".into())
            }
            Some("Orphan") if !fins.contains(&"orphan".to_string()) => fins.push("orphan".into()),
            _ => {}
        }
        let attrs = admission::Attributes {
            rt,
            subresource: "",
            operation: "DELETE",
            namespace: ns,
            name,
            dry_run: opts.dry_run,
        };
        admission::validate(self, &attrs, None, Some(&current))?;
        let namespace_pending = rt.kind == "Namespace" && rt.group.is_empty();
        // A Pod on a node terminates gracefully: it is marked, the kubelet
        // stops it and then removes the object.
        let pod_on_node = rt.kind == "Pod"
            && rt.group.is_empty()
            && current
                .pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .is_some_and(|n| !n.is_empty());
        let grace = opts.grace_period_seconds.unwrap_or_else(|| {
            current
                .pointer("/spec/terminationGracePeriodSeconds")
                .and_then(Value::as_i64)
                .unwrap_or(30)
        });
        if pod_on_node && grace > 0 && fins.is_empty() && !opts.dry_run {
            if current.pointer("/metadata/deletionTimestamp").is_some() {
                return Ok(Self::present(rt, current));
            }
            let mut marked = current.clone();
            marked["metadata"]["deletionTimestamp"] = json!(clock::now_rfc3339());
            marked["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
            let stored = self
                .store
                .update(&key, marked, Some(object_rv(&current)))
                .map_err(|e| map_store(rt, name, e))?;
            return Ok(Self::present(rt, stored));
        }
        if opts.dry_run {
            return Ok(Self::present(rt, current));
        }
        if !fins.is_empty() || namespace_pending {
            if current.pointer("/metadata/deletionTimestamp").is_some() && fins == finalizers(&current) {
                return Ok(Self::present(rt, current));
            }
            let mut marked = current.clone();
            marked["metadata"]["finalizers"] = json!(fins);
            if marked.pointer("/metadata/deletionTimestamp").is_none() {
                marked["metadata"]["deletionTimestamp"] = json!(clock::now_rfc3339());
                marked["metadata"]["deletionGracePeriodSeconds"] = json!(0);
            }
            if fins.is_empty()
                && let Some(m) = marked["metadata"].as_object_mut()
            {
                m.remove("finalizers");
            }
            if namespace_pending {
                marked["status"]["phase"] = json!("Terminating");
            }
            let stored = self
                .store
                .update(&key, marked, Some(object_rv(&current)))
                .map_err(|e| map_store(rt, name, e))?;
            return Ok(Self::present(rt, stored));
        }
        let gone = self
            .store
            .delete(&key, Some(object_rv(&current)))
            .map_err(|e| map_store(rt, name, e))?;
        self.after_delete(rt, &gone);
        Ok(Self::present(rt, gone))
    }

    fn after_delete(&self, rt: &ResourceType, obj: &Value) {
        if rt.kind == "CustomResourceDefinition" && rt.group == "apiextensions.k8s.io" {
            crd::unregister(&self.catalog, &self.store, obj);
        }
    }

    /// Deletes every object a list with these options returns.
    pub fn delete_collection(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        list: &ListOptions,
        opts: &DeleteOptions,
    ) -> Result<Vec<Value>, ApiError> {
        let (items, _) = self.list(rt, ns, list)?;
        let mut out = Vec::new();
        for item in items {
            let name = meta_str(&item, "name").unwrap_or_default().to_string();
            let item_ns = meta_str(&item, "namespace").map(str::to_string);
            match self.delete(rt, item_ns.as_deref(), &name, opts) {
                Ok(v) => out.push(v),
                Err(e) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Opens a watch. `resource_version` follows the API: empty or `0`
    /// starts with the current state, anything else replays after it.
    pub fn watch(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        resource_version: Option<&str>,
        send_initial_events: bool,
    ) -> Result<crate::store::Subscription, ApiError> {
        let start = match resource_version {
            _ if send_initial_events => WatchStart::InitialState,
            None | Some("") | Some("0") => WatchStart::InitialState,
            Some(rv) => WatchStart::After(
                rv.parse()
                    .map_err(|_| ApiError::bad_request(format!("invalid resource version {rv:?}")))?,
            ),
        };
        let ns_filter = if rt.namespaced { ns } else { None };
        self.store
            .watch(&rt.group_resource(), ns_filter, start)
            .map_err(|e| map_store(rt, "", e))
    }

    /// The `scale` subresource view of an object.
    pub fn get_scale(&self, rt: &ResourceType, ns: Option<&str>, name: &str) -> Result<Value, ApiError> {
        let obj = self.get(rt, ns, name)?;
        Ok(Self::scale_of(rt, &obj))
    }

    fn scale_of(rt: &ResourceType, obj: &Value) -> Value {
        let paths = rt.scale.clone().unwrap_or_else(|| crate::resources::ScalePaths {
            spec_replicas: ".spec.replicas".into(),
            status_replicas: ".status.replicas".into(),
            label_selector: None,
        });
        let get = |p: &str| crate::table::json_path(obj, p).cloned();
        let mut selector = paths.label_selector.as_deref().and_then(get).unwrap_or(Value::Null);
        if selector.is_null()
            && let Some(ml) = obj.pointer("/spec/selector/matchLabels").and_then(Value::as_object)
        {
            selector = json!(
                ml.iter()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                    .collect::<Vec<_>>()
                    .join(",")
            );
        }
        let mut meta = json!({});
        for f in ["name", "namespace", "uid", "resourceVersion", "creationTimestamp"] {
            if let Some(v) = obj.pointer(&format!("/metadata/{f}")) {
                meta[f] = v.clone();
            }
        }
        json!({
            "kind": "Scale",
            "apiVersion": "autoscaling/v1",
            "metadata": meta,
            "spec": {"replicas": get(&paths.spec_replicas).unwrap_or(json!(0))},
            "status": {"replicas": get(&paths.status_replicas).unwrap_or(json!(0)), "selector": selector},
        })
    }

    /// Writes `spec.replicas` through the `scale` subresource (PUT or any
    /// patch applied to the Scale view).
    pub fn set_scale(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        scale_patch: impl Fn(&Value) -> Result<Value, ApiError>,
        opts: &WriteOptions,
    ) -> Result<Value, ApiError> {
        let key = Self::key(rt, ns, name);
        let current = self.store.get(&key).ok_or_else(|| ApiError::not_found(rt, name))?;
        let scale = scale_patch(&Self::scale_of(rt, &current))?;
        let replicas = scale
            .pointer("/spec/replicas")
            .and_then(Value::as_i64)
            .ok_or_else(|| ApiError::bad_request("spec.replicas must be an integer"))?;
        let expected = scale
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .and_then(|s| s.parse().ok());
        let path = rt
            .scale
            .as_ref()
            .map(|s| s.spec_replicas.clone())
            .unwrap_or_else(|| ".spec.replicas".into());
        let mut new = current.clone();
        let pointer = path.replace('.', "/");
        if let Some(slot) = new.pointer_mut(&pointer) {
            *slot = json!(replicas);
        } else {
            new["spec"]["replicas"] = json!(replicas);
        }
        let manager = Self::manager(opts, "unknown");
        let written = self.write_update(
            rt,
            &key,
            &current,
            new,
            "scale",
            expected.or(Some(object_rv(&current))),
            opts,
            Some(&manager),
            true,
        )?;
        Ok(Self::scale_of(rt, &written.object))
    }
}

impl ApiError {
    /// 422 for a patch that cannot be applied.
    pub fn new_unprocessable(message: String) -> Self {
        ApiError {
            code: 422,
            reason: "Invalid",
            message,
            details: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster() -> (Arc<Cluster>, ResourceType, ResourceType) {
        let c = Cluster::with_default_namespace();
        let ns = c.catalog.get("", "v1", "namespaces").unwrap();
        let cm = c.catalog.get("", "v1", "configmaps").unwrap();
        (c, ns, cm)
    }

    #[test]
    fn create_fills_metadata_and_generate_name() {
        let (c, _, cm) = cluster();
        let w = c
            .create(
                &cm,
                Some("default"),
                json!({"metadata": {"generateName": "cfg-"}, "data": {"a": "1"}}),
                &WriteOptions::default(),
            )
            .unwrap();
        let m = &w.object["metadata"];
        assert!(m["name"].as_str().unwrap().starts_with("cfg-") && m["name"].as_str().unwrap().len() == 9);
        assert!(m["uid"].is_string() && m["creationTimestamp"].is_string() && m["resourceVersion"].is_string());
        assert!(m.get("generation").is_none(), "ConfigMaps have no generation");
        assert_eq!(w.object["kind"], "ConfigMap");
        let err = c
            .create(
                &cm,
                Some("nope"),
                json!({"metadata": {"name": "x"}}),
                &WriteOptions::default(),
            )
            .unwrap_err();
        assert_eq!(err.code, 404);
        // The namespace got its default ServiceAccount.
        let sa = c.catalog.get("", "v1", "serviceaccounts").unwrap();
        assert!(c.get(&sa, Some("default"), "default").is_ok());
    }

    #[test]
    fn update_conflicts_on_stale_versions_and_bumps_generation_on_spec_changes() {
        let (c, _, _) = cluster();
        let cm = c.catalog.get("", "v1", "services").unwrap();
        let w = c
            .create(
                &cm,
                Some("default"),
                json!({"metadata": {"name": "a"}, "spec": {"ports": [{"port": 1}]}}),
                &WriteOptions::default(),
            )
            .unwrap();
        assert_eq!(w.object["metadata"]["generation"], 1);
        let mut body = w.object.clone();
        body["spec"]["ports"][0]["port"] = json!(2);
        let u = c
            .update(&cm, Some("default"), "a", "", body.clone(), &WriteOptions::default())
            .unwrap();
        assert_eq!(u.object["metadata"]["generation"], 2);
        let err = c
            .update(&cm, Some("default"), "a", "", body, &WriteOptions::default())
            .unwrap_err();
        assert_eq!(err.code, 409);
        let mut labels_only = u.object.clone();
        labels_only["metadata"]["labels"] = json!({"x": "y"});
        let u2 = c
            .update(&cm, Some("default"), "a", "", labels_only, &WriteOptions::default())
            .unwrap();
        assert_eq!(u2.object["metadata"]["generation"], 2);
    }

    #[test]
    fn status_is_only_written_through_the_subresource() {
        let c = Cluster::with_default_namespace();
        let d = c.catalog.get("apps", "v1", "deployments").unwrap();
        let dep = json!({"metadata": {"name": "web"}, "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "a", "image": "x"}]}}}, "status": {"replicas": 9}});
        let w = c.create(&d, Some("default"), dep, &WriteOptions::default()).unwrap();
        assert!(w.object["status"].get("replicas").is_none());
        let mut body = w.object.clone();
        body["status"] = json!({"replicas": 3});
        let s = c
            .update(
                &d,
                Some("default"),
                "web",
                "status",
                body.clone(),
                &WriteOptions::default(),
            )
            .unwrap();
        assert_eq!(s.object["status"]["replicas"], 3);
        body["metadata"]["resourceVersion"] = s.object["metadata"]["resourceVersion"].clone();
        body["status"] = json!({"replicas": 7});
        let m = c
            .update(&d, Some("default"), "web", "", body, &WriteOptions::default())
            .unwrap();
        assert_eq!(m.object["status"]["replicas"], 3);
        // Scale subresource.
        let scale = c
            .set_scale(
                &d,
                Some("default"),
                "web",
                |s| {
                    let mut s = s.clone();
                    s["spec"]["replicas"] = json!(4);
                    Ok(s)
                },
                &WriteOptions::default(),
            )
            .unwrap();
        assert_eq!(scale["spec"]["replicas"], 4);
        assert_eq!(scale["status"]["selector"], "app=web");
    }

    #[test]
    fn pods_get_their_service_account_volume_and_namespaces_the_root_ca() {
        let c = Cluster::new();
        c.root_ca.set("-----BEGIN CERTIFICATE-----\n".into()).unwrap();
        let ns = c.catalog.get("", "v1", "namespaces").unwrap();
        c.create(
            &ns,
            None,
            json!({"metadata": {"name": "app"}}),
            &WriteOptions::default(),
        )
        .unwrap();
        let cm = c.catalog.get("", "v1", "configmaps").unwrap();
        assert!(c.get(&cm, Some("app"), "kube-root-ca.crt").is_ok());
        let pods = c.catalog.get("", "v1", "pods").unwrap();
        let pod = |name: &str, extra: Value| {
            let mut p = json!({"metadata": {"name": name}, "spec": {"containers": [{"name": "a", "image": "x"}], "initContainers": [{"name": "i", "image": "x"}]}});
            json_patch::merge(&mut p, &extra);
            p
        };
        let made = c
            .create(&pods, Some("app"), pod("p", json!({})), &WriteOptions::default())
            .unwrap()
            .object;
        let vol = made["spec"]["volumes"][0]["name"].as_str().unwrap();
        assert!(vol.starts_with("kube-api-access-"));
        for list in ["containers", "initContainers"] {
            let m = &made["spec"][list][0]["volumeMounts"][0];
            assert_eq!(
                (m["name"].as_str(), m["mountPath"].as_str()),
                (Some(vol), Some("/var/run/secrets/kubernetes.io/serviceaccount"))
            );
        }
        let off = c
            .create(
                &pods,
                Some("app"),
                pod("q", json!({"spec": {"automountServiceAccountToken": false}})),
                &WriteOptions::default(),
            )
            .unwrap()
            .object;
        assert!(off["spec"].get("volumes").is_none());
        let err = c
            .create(
                &pods,
                Some("app"),
                pod("r", json!({"spec": {"serviceAccountName": "ghost"}})),
                &WriteOptions::default(),
            )
            .unwrap_err();
        assert_eq!(err.code, 403);
        assert!(
            err.message.contains("serviceaccount \"ghost\" not found"),
            "{}",
            err.message
        );
    }

    #[test]
    fn finalizers_hold_deletion_until_removed() {
        let (c, _, cm) = cluster();
        c.create(
            &cm,
            Some("default"),
            json!({"metadata": {"name": "f", "finalizers": ["example.com/hold"]}}),
            &WriteOptions::default(),
        )
        .unwrap();
        let marked = c.delete(&cm, Some("default"), "f", &DeleteOptions::default()).unwrap();
        assert!(marked["metadata"]["deletionTimestamp"].is_string());
        assert!(c.get(&cm, Some("default"), "f").is_ok());
        let patch = br#"{"metadata":{"finalizers":null}}"#;
        c.patch(
            &cm,
            Some("default"),
            "f",
            "",
            PatchKind::Merge,
            patch,
            &WriteOptions::default(),
        )
        .unwrap();
        assert_eq!(c.get(&cm, Some("default"), "f").unwrap_err().code, 404);
    }

    #[test]
    fn list_paginates_and_filters() {
        let (c, _, cm) = cluster();
        for i in 0..5 {
            c.create(
                &cm,
                Some("default"),
                json!({"metadata": {"name": format!("c{i}"), "labels": {"even": (i % 2 == 0).to_string()}}}),
                &WriteOptions::default(),
            )
            .unwrap();
        }
        let (page, meta) = c
            .list(
                &cm,
                Some("default"),
                &ListOptions {
                    limit: Some(2),
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(page.len(), 2);
        assert_eq!(meta["remainingItemCount"], 3);
        let (rest, meta2) = c
            .list(
                &cm,
                Some("default"),
                &ListOptions {
                    continue_token: meta["continue"].as_str().map(str::to_string),
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(rest.len(), 3);
        assert!(meta2.get("continue").is_none());
        let (even, _) = c
            .list(
                &cm,
                None,
                &ListOptions {
                    label_selector: Some("even=true".into()),
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(even.len(), 3);
    }

    #[test]
    fn server_side_apply_creates_then_conflicts() {
        let (c, _, cm) = cluster();
        let opts = WriteOptions {
            field_manager: Some("a".into()),
            ..Default::default()
        };
        let w = c
            .patch(
                &cm,
                Some("default"),
                "ssa",
                "",
                PatchKind::Apply,
                b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ssa\ndata:\n  k: one\n",
                &opts,
            )
            .unwrap();
        assert!(w.created);
        let other = WriteOptions {
            field_manager: Some("b".into()),
            ..Default::default()
        };
        let err = c
            .patch(
                &cm,
                Some("default"),
                "ssa",
                "",
                PatchKind::Apply,
                b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ssa\ndata:\n  k: two\n",
                &other,
            )
            .unwrap_err();
        assert_eq!(err.code, 409);
        let forced = WriteOptions { force: true, ..other };
        let w = c
            .patch(
                &cm,
                Some("default"),
                "ssa",
                "",
                PatchKind::Apply,
                b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ssa\ndata:\n  k: two\n",
                &forced,
            )
            .unwrap();
        assert_eq!(w.object["data"]["k"], "two");
    }
}
