//! ServiceAccounts: a pod's account admitted and its token volume mounted, and what every new
//! namespace gets (its `default` account and the `kube-root-ca.crt` ConfigMap).

use serde_json::{Value, json};

use super::{Cluster, WriteOptions, meta_str, random_suffix};
use crate::status::ApiError;

impl Cluster {
    /// The ServiceAccount admission plugin: the pod's account must exist,
    /// and unless automounting is off, the pod gets the
    /// `kube-api-access-*` projected volume (token, CA, namespace) mounted
    /// at `/var/run/secrets/kubernetes.io/serviceaccount` in every
    /// container.
    pub(super) fn admit_service_account(&self, ns: &str, name: &str, pod: &mut Value) -> Result<(), ApiError> {
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

    /// A new namespace's defaults, as kube-controller-manager makes them: its
    /// `kube-root-ca.crt` ConfigMap and its `default` ServiceAccount.
    pub(super) fn ensure_namespace_defaults(&self, ns: &Value) {
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
}
