//! Create (POST): the new object's metadata, name and namespace checked, defaults, admission,
//! schema and managed fields, then stored; and what a write of a CRD or a Namespace sets off.

use serde_json::{Value, json};

use super::{Cluster, WriteOptions, Written, map_store, meta_str, random_suffix};
use crate::admission;
use crate::clock;
use crate::crd;
use crate::defaults;
use crate::patch;
use crate::resources::ResourceType;
use crate::status::ApiError;

impl Cluster {
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
    pub(super) fn after_write(&self, rt: &ResourceType, obj: &Value) {
        if rt.kind == "CustomResourceDefinition" && rt.group == "apiextensions.k8s.io" {
            crd::register(&self.catalog, obj);
        }
        if rt.kind == "Namespace" && rt.group.is_empty() {
            self.ensure_namespace_defaults(obj);
        }
    }
}
