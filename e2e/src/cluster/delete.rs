//! Delete: preconditions, propagation finalizers, graceful pod termination, namespaces held
//! until emptied, and delete of a collection.

use serde_json::{Value, json};

use super::{Cluster, DeleteOptions, ListOptions, finalizers, map_store, meta_str};
use crate::admission;
use crate::clock;
use crate::crd;
use crate::resources::ResourceType;
use crate::status::ApiError;
use crate::store::object_rv;

impl Cluster {
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

    pub(super) fn after_delete(&self, rt: &ResourceType, obj: &Value) {
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
}
