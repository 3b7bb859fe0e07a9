//! Per-kind defaulting and validation of built-in kinds, the part of each
//! kind's "strategy" the API server applies on create and update.

use serde_json::{Map, Value, json};

use crate::pki::base64_encode;

/// The Service ClusterIP range (kind's and kubeadm's default).
pub const SERVICE_CIDR_PREFIX: [u8; 2] = [10, 96];

/// The address of the `kubernetes` Service.
pub const KUBERNETES_SERVICE_IP: &str = "10.96.0.1";

/// The object at `v[key]`, created (or replacing a non-object) if needed.
fn ensure<'a>(v: &'a mut Value, key: &str) -> &'a mut Value {
    if !v.get(key).is_some_and(Value::is_object) {
        v[key] = json!({});
    }
    &mut v[key]
}

/// `v[key]` as a map, created if needed.
fn obj_mut<'a>(v: &'a mut Value, key: &str) -> &'a mut Map<String, Value> {
    let child = ensure(v, key);
    if !child.is_object() {
        *child = json!({});
    }
    child.as_object_mut().expect("ensured to be an object")
}

fn default_field(m: &mut Map<String, Value>, key: &str, value: Value) {
    if m.get(key).is_none_or(Value::is_null) {
        m.insert(key.to_string(), value);
    }
}

/// Defaults of a pod spec (also used for templates).
pub fn default_pod_spec(spec: &mut Value) {
    let Some(m) = spec.as_object_mut() else {
        return;
    };
    default_field(m, "restartPolicy", json!("Always"));
    default_field(m, "dnsPolicy", json!("ClusterFirst"));
    default_field(m, "schedulerName", json!("default-scheduler"));
    default_field(m, "terminationGracePeriodSeconds", json!(30));
    default_field(m, "securityContext", json!({}));
    let sa = m
        .get("serviceAccountName")
        .or(m.get("serviceAccount"))
        .cloned()
        .unwrap_or(json!("default"));
    m.insert("serviceAccountName".into(), sa.clone());
    m.insert("serviceAccount".into(), sa);
    for list in ["initContainers", "containers"] {
        for c in m.get_mut(list).and_then(Value::as_array_mut).into_iter().flatten() {
            let Some(c) = c.as_object_mut() else { continue };
            let image = c.get("image").and_then(Value::as_str).unwrap_or_default();
            let tag_latest = !image.rsplit('/').next().unwrap_or(image).contains(':') || image.ends_with(":latest");
            default_field(
                c,
                "imagePullPolicy",
                json!(if tag_latest { "Always" } else { "IfNotPresent" }),
            );
            default_field(c, "terminationMessagePath", json!("/dev/termination-log"));
            default_field(c, "terminationMessagePolicy", json!("File"));
            default_field(c, "resources", json!({}));
            for p in c.get_mut("ports").and_then(Value::as_array_mut).into_iter().flatten() {
                if let Some(p) = p.as_object_mut() {
                    default_field(p, "protocol", json!("TCP"));
                }
            }
        }
    }
}

/// Applies the create-time defaults of a built-in kind. `allocate_ip` hands
/// out a free ClusterIP.
pub fn on_create(
    kind: &str,
    obj: &mut Value,
    allocate_ip: &mut dyn FnMut() -> Option<String>,
) -> Result<(), Vec<(String, String)>> {
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    match kind {
        "Namespace" => {
            let labels = obj_mut(ensure(obj, "metadata"), "labels");
            labels.insert("kubernetes.io/metadata.name".into(), json!(name));
            let spec = obj_mut(obj, "spec");
            default_field(spec, "finalizers", json!(["kubernetes"]));
            obj["status"] = json!({"phase": "Active"});
        }
        "Pod" => {
            default_pod_spec(ensure(obj, "spec"));
            obj["status"] = json!({"phase": "Pending", "qosClass": "BestEffort"});
        }
        "Deployment" => {
            let spec = obj_mut(obj, "spec");
            default_field(spec, "replicas", json!(1));
            default_field(spec, "revisionHistoryLimit", json!(10));
            default_field(spec, "progressDeadlineSeconds", json!(600));
            default_field(
                spec,
                "strategy",
                json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}}),
            );
            if let Some(tpl) = spec.get_mut("template") {
                default_pod_spec(ensure(tpl, "spec"));
            }
            obj["status"] = json!({});
            require(obj, "/spec/selector", "spec.selector")?;
        }
        "ReplicaSet" => {
            let spec = obj_mut(obj, "spec");
            default_field(spec, "replicas", json!(1));
            if let Some(tpl) = spec.get_mut("template") {
                default_pod_spec(ensure(tpl, "spec"));
            }
            obj["status"] = json!({"replicas": 0});
            require(obj, "/spec/selector", "spec.selector")?;
        }
        "Job" => {
            let uid = obj
                .pointer("/metadata/uid")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let spec = obj_mut(obj, "spec");
            default_field(spec, "completions", json!(1));
            default_field(spec, "parallelism", json!(1));
            default_field(spec, "backoffLimit", json!(6));
            default_field(spec, "completionMode", json!("NonIndexed"));
            if spec.get("manualSelector") != Some(&json!(true)) {
                spec.insert(
                    "selector".into(),
                    json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}),
                );
                if let Some(tpl) = spec.get_mut("template") {
                    let labels = obj_mut(ensure(tpl, "metadata"), "labels");
                    labels.insert("batch.kubernetes.io/controller-uid".into(), json!(uid));
                    labels.insert("batch.kubernetes.io/job-name".into(), json!(name));
                    labels.insert("job-name".into(), json!(name));
                    default_pod_spec(ensure(tpl, "spec"));
                }
            }
            obj["status"] = json!({});
        }
        "Service" => {
            let spec = obj_mut(obj, "spec");
            default_field(spec, "type", json!("ClusterIP"));
            default_field(spec, "sessionAffinity", json!("None"));
            default_field(spec, "internalTrafficPolicy", json!("Cluster"));
            for p in spec
                .get_mut("ports")
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                if let Some(p) = p.as_object_mut() {
                    default_field(p, "protocol", json!("TCP"));
                    if let Some(port) = p.get("port").cloned() {
                        default_field(p, "targetPort", port);
                    }
                }
            }
            let external = spec.get("type") == Some(&json!("ExternalName"));
            if !external {
                let ip = match spec.get("clusterIP").and_then(Value::as_str) {
                    Some(ip) if !ip.is_empty() => ip.to_string(),
                    _ => allocate_ip().ok_or_else(|| {
                        vec![(
                            "spec.clusterIP".to_string(),
                            "Internal error: the service IP range 10.96.0.0/16 is full".to_string(),
                        )]
                    })?,
                };
                spec.insert("clusterIP".into(), json!(ip));
                spec.insert("clusterIPs".into(), json!([ip]));
                if ip != "None" {
                    default_field(spec, "ipFamilies", json!(["IPv4"]));
                    default_field(spec, "ipFamilyPolicy", json!("SingleStack"));
                }
            }
            obj["status"] = json!({"loadBalancer": {}});
        }
        "Secret" => normalize_secret(obj),
        "CustomResourceDefinition" => {
            obj["status"] = json!({});
        }
        _ => {}
    }
    Ok(())
}

/// Update-time rules: immutable fields carried over from the old object.
pub fn on_update(kind: &str, old: &Value, new: &mut Value) {
    match kind {
        "Service" => {
            for f in ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"] {
                if new.pointer(&format!("/spec/{f}")).is_none_or(Value::is_null)
                    && let Some(v) = old.pointer(&format!("/spec/{f}"))
                {
                    obj_mut(new, "spec").insert(f.into(), v.clone());
                }
            }
            if let Some(ports) = new.pointer_mut("/spec/ports").and_then(Value::as_array_mut) {
                for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                    default_field(p, "protocol", json!("TCP"));
                    if let Some(port) = p.get("port").cloned() {
                        default_field(p, "targetPort", port);
                    }
                }
            }
        }
        "Namespace" => {
            if new.pointer("/spec/finalizers").is_none()
                && let Some(f) = old.pointer("/spec/finalizers")
            {
                obj_mut(new, "spec").insert("finalizers".into(), f.clone());
            }
            if let Some(l) = new.pointer_mut("/metadata/labels").and_then(Value::as_object_mut) {
                let name = old.pointer("/metadata/name").cloned().unwrap_or(Value::Null);
                l.insert("kubernetes.io/metadata.name".into(), name);
            }
        }
        "Deployment" | "ReplicaSet" | "Job" => {
            if let Some(tpl) = new.pointer_mut("/spec/template") {
                default_pod_spec(ensure(tpl, "spec"));
            }
            if kind == "Job" {
                for f in ["selector", "completions", "completionMode"] {
                    if let Some(v) = old.pointer(&format!("/spec/{f}")) {
                        obj_mut(new, "spec").insert(f.into(), v.clone());
                    }
                }
            }
        }
        "Pod" => {
            if let Some(spec) = new.get_mut("spec") {
                default_pod_spec(spec);
            }
        }
        "Secret" => normalize_secret(new),
        _ => {}
    }
}

fn normalize_secret(obj: &mut Value) {
    let Some(m) = obj.as_object_mut() else {
        return;
    };
    default_field(m, "type", json!("Opaque"));
    if let Some(Value::Object(sd)) = m.remove("stringData") {
        let data = m.entry("data").or_insert_with(|| json!({}));
        if let Some(d) = data.as_object_mut() {
            for (k, v) in sd {
                d.insert(k, json!(base64_encode(v.as_str().unwrap_or_default().as_bytes())));
            }
        }
    }
}

fn require(obj: &Value, pointer: &str, field: &str) -> Result<(), Vec<(String, String)>> {
    if obj.pointer(pointer).is_none_or(Value::is_null) {
        return Err(vec![(field.to_string(), "Required value".to_string())]);
    }
    Ok(())
}

/// Validates `metadata.name` as a DNS-1123 subdomain (or label for
/// namespaces and services).
pub fn validate_name(kind: &str, name: &str) -> Result<(), String> {
    let label = matches!(kind, "Namespace" | "Service");
    let max = if label { 63 } else { 253 };
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || (!label && b == b'.'));
    let ends_ok = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && name
            .bytes()
            .last()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if name.len() <= max && ok_chars && ends_ok {
        Ok(())
    } else if label {
        Err(format!(
            "Invalid value: \"{name}\": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character"
        ))
    } else {
        Err(format!(
            "Invalid value: \"{name}\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_ip() -> Option<String> {
        None
    }

    #[test]
    fn services_get_a_cluster_ip_and_port_defaults() {
        let mut svc = json!({"metadata": {"name": "web"}, "spec": {"ports": [{"port": 80}]}});
        on_create("Service", &mut svc, &mut || Some("10.96.0.10".to_string())).unwrap();
        assert_eq!(svc["spec"]["clusterIP"], "10.96.0.10");
        assert_eq!(svc["spec"]["type"], "ClusterIP");
        assert_eq!(svc["spec"]["ports"][0]["targetPort"], 80);
        assert_eq!(svc["spec"]["ports"][0]["protocol"], "TCP");

        let mut full = json!({"metadata": {"name": "x"}, "spec": {}});
        assert!(on_create("Service", &mut full, &mut no_ip).is_err());

        let mut updated = json!({"metadata": {"name": "web"}, "spec": {"ports": [{"port": 81}]}});
        on_update("Service", &svc, &mut updated);
        assert_eq!(updated["spec"]["clusterIP"], "10.96.0.10");
    }

    #[test]
    fn secrets_fold_string_data_into_data() {
        let mut s = json!({"metadata": {"name": "s"}, "stringData": {"k": "abc"}});
        on_create("Secret", &mut s, &mut no_ip).unwrap();
        assert_eq!(s["data"]["k"], "YWJj");
        assert_eq!(s["type"], "Opaque");
        assert!(s.get("stringData").is_none());
    }

    #[test]
    fn deployments_need_a_selector_and_get_defaults() {
        let mut d = json!({"metadata": {"name": "d"}, "spec": {"template": {"spec": {"containers": [{"name": "a", "image": "x:1"}]}}}});
        assert!(on_create("Deployment", &mut d, &mut no_ip).is_err());
        d["spec"]["selector"] = json!({"matchLabels": {"a": "b"}});
        on_create("Deployment", &mut d, &mut no_ip).unwrap();
        assert_eq!(d["spec"]["replicas"], 1);
        assert_eq!(
            d["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"],
            "IfNotPresent"
        );
    }

    #[test]
    fn names_are_dns_subdomains_or_labels() {
        assert!(validate_name("ConfigMap", "a.b-c").is_ok());
        assert!(validate_name("Namespace", "a.b").is_err());
        assert!(validate_name("Pod", "-a").is_err());
        assert!(validate_name("Pod", "A").is_err());
    }
}
