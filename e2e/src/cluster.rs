//! The REST semantics of the API server over the [`Store`]: what create,
//! update, patch, delete, list and watch mean for an object (metadata,
//! preconditions, subresources, finalizers, field managers, defaults and
//! schema validation). The HTTP layer in `apiserver` only parses requests
//! and calls in here; controllers call in here too.
//!
//! Reads, lists and watches are here; writes in `create`, `update` (and patch), `delete` and
//! `scale`; what the API server fills in, in `services` (cluster IPs, node ports) and `accounts`
//! (ServiceAccounts).

use std::sync::Arc;

use serde_json::{Value, json};

use crate::crd;
use crate::patch;
use crate::resources::{Catalog, ResourceType};
use crate::selector::{FieldSelector, LabelSelector};
use crate::status::ApiError;
use crate::store::{ObjectKey, Store, StoreError, WatchStart};

mod accounts;
mod create;
mod delete;
mod scale;
mod services;
mod update;

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
    pub(super) fn to_storage(rt: &ResourceType, obj: Value) -> Value {
        if rt.is_events_v1() {
            crate::events::to_core(&obj)
        } else {
            obj
        }
    }

    pub(super) fn check_namespace(&self, rt: &ResourceType, ns: Option<&str>, creating: bool) -> Result<(), ApiError> {
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

    /// Schema validation, defaults and pruning for custom resources; kind
    /// defaults for built-ins run in create/update.
    pub(super) fn validate_custom(
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
    pub(super) fn lists(rt: &ResourceType) -> patch::Lists<'_> {
        match &rt.schema {
            Some(schema) => patch::Lists::Schema(Some(schema)),
            None => patch::Lists::Builtin,
        }
    }

    pub(super) fn manager(opts: &WriteOptions, default: &str) -> String {
        opts.field_manager.clone().unwrap_or_else(|| default.to_string())
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
mod tests;
