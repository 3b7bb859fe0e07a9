//! Update (PUT) and patch (merge, JSON, strategic, server-side apply): immutable fields carried,
//! spec and status apart, generation bumped, deletions finalized; conflicts retried.

use serde_json::{Value, json};

use super::{Cluster, WriteOptions, Written, finalizers, map_store, meta_str, spec_part};
use crate::admission;
use crate::clock;
use crate::crd;
use crate::defaults;
use crate::patch::{self, PatchKind};
use crate::resources::ResourceType;
use crate::status::ApiError;
use crate::store::{ObjectKey, object_rv};

impl Cluster {
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
    pub(super) fn write_update(
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
}
