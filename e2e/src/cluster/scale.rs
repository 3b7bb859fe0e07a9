//! The `scale` subresource: an object's replicas read and written as an autoscaling/v1 Scale.

use serde_json::{Value, json};

use super::{Cluster, WriteOptions};
use crate::resources::ResourceType;
use crate::status::ApiError;
use crate::store::object_rv;

impl Cluster {
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
