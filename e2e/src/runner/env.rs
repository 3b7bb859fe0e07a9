//! A container's environment, as the kubelet builds it: Service link
//! variables, `envFrom`, then `env` (with `valueFrom` and `$(VAR)`
//! expansion), plus the image defaults (`PATH`, `HOSTNAME`, `HOME`).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde_json::Value;

use crate::cluster::Cluster;

/// Looks up a namespaced core/v1 object.
pub fn get_core(cluster: &Cluster, plural: &str, ns: &str, name: &str) -> Option<Value> {
    let rt = cluster.catalog.get("", "v1", plural)?;
    cluster.store.get(&Cluster::key(&rt, Some(ns), name))
}

/// The data of a ConfigMap (`data` and `binaryData`) or Secret (`data`,
/// decoded), or `None` when it does not exist.
pub fn object_data(cluster: &Cluster, kind: Source, ns: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
    let obj = get_core(cluster, kind.plural(), ns, name)?;
    let mut out = BTreeMap::new();
    match kind {
        Source::ConfigMap => {
            for (k, v) in obj["data"].as_object().into_iter().flatten() {
                out.insert(k.clone(), v.as_str().unwrap_or_default().as_bytes().to_vec());
            }
            for (k, v) in obj["binaryData"].as_object().into_iter().flatten() {
                out.insert(
                    k.clone(),
                    crate::pki::base64_decode(v.as_str().unwrap_or_default()).unwrap_or_default(),
                );
            }
        }
        Source::Secret => {
            for (k, v) in obj["data"].as_object().into_iter().flatten() {
                out.insert(
                    k.clone(),
                    crate::pki::base64_decode(v.as_str().unwrap_or_default()).unwrap_or_default(),
                );
            }
            for (k, v) in obj["stringData"].as_object().into_iter().flatten() {
                out.insert(k.clone(), v.as_str().unwrap_or_default().as_bytes().to_vec());
            }
        }
    }
    Some(out)
}

/// ConfigMap or Secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    ConfigMap,
    Secret,
}

impl Source {
    fn plural(self) -> &'static str {
        match self {
            Source::ConfigMap => "configmaps",
            Source::Secret => "secrets",
        }
    }
    fn kind(self) -> &'static str {
        match self {
            Source::ConfigMap => "configmap",
            Source::Secret => "secret",
        }
    }
}

/// A `fieldRef` of the downward API.
pub fn field_ref(pod: &Value, path: &str, ip: &str) -> Result<String, String> {
    let s = |p: &str| pod.pointer(p).and_then(Value::as_str).unwrap_or_default().to_string();
    if let Some(rest) = path
        .strip_prefix("metadata.labels['")
        .or_else(|| path.strip_prefix("metadata.labels[\""))
    {
        let key = rest.trim_end_matches("']").trim_end_matches("\"]");
        return Ok(pod["metadata"]["labels"][key].as_str().unwrap_or_default().to_string());
    }
    if let Some(rest) = path
        .strip_prefix("metadata.annotations['")
        .or_else(|| path.strip_prefix("metadata.annotations[\""))
    {
        let key = rest.trim_end_matches("']").trim_end_matches("\"]");
        return Ok(pod["metadata"]["annotations"][key]
            .as_str()
            .unwrap_or_default()
            .to_string());
    }
    let map_text = |m: &Value| {
        m.as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| format!("{k}={}", json_quote(v.as_str().unwrap_or_default())))
            .collect::<Vec<_>>()
            .join("\n")
    };
    Ok(match path {
        "metadata.name" => s("/metadata/name"),
        "metadata.namespace" => s("/metadata/namespace"),
        "metadata.uid" => s("/metadata/uid"),
        "metadata.labels" => map_text(&pod["metadata"]["labels"]),
        "metadata.annotations" => map_text(&pod["metadata"]["annotations"]),
        "spec.nodeName" => {
            let n = s("/spec/nodeName");
            if n.is_empty() {
                crate::kubelet::NODE_NAME.to_string()
            } else {
                n
            }
        }
        "spec.serviceAccountName" => {
            let n = s("/spec/serviceAccountName");
            if n.is_empty() { "default".to_string() } else { n }
        }
        "status.podIP" | "status.podIPs" => ip.to_string(),
        "status.hostIP" | "status.hostIPs" => "127.0.0.1".to_string(),
        other => return Err(format!("unsupported fieldRef fieldPath {other:?}")),
    })
}

fn json_quote(s: &str) -> String {
    Value::String(s.to_string()).to_string()
}

/// A `resourceFieldRef`: the container's limit (or request), else the
/// node's allocatable, divided by `divisor` and rounded up.
pub fn resource_field_ref(container: &Value, resource: &str, divisor: Option<&str>) -> Result<String, String> {
    let (section, name) = resource
        .split_once('.')
        .ok_or_else(|| format!("bad resource {resource:?}"))?;
    let value = container["resources"][section][name]
        .as_str()
        .map(str::to_string)
        .or_else(|| container["resources"][section][name].as_f64().map(|f| f.to_string()));
    let node_default = match name {
        "cpu" => "2",
        "memory" => "24Gi",
        _ => "0",
    };
    let raw = match value {
        Some(v) => v,
        None if section == "limits" => node_default.to_string(),
        None => "0".to_string(),
    };
    let q = quantity(&raw).ok_or_else(|| format!("bad quantity {raw:?}"))?;
    let d = divisor
        .map(quantity)
        .unwrap_or(Some(1.0))
        .filter(|d| *d > 0.0)
        .unwrap_or(1.0);
    Ok(format!("{}", (q / d).ceil() as i64))
}

/// A Kubernetes quantity as a number (`500m`, `1Gi`, `2`).
pub fn quantity(s: &str) -> Option<f64> {
    let s = s.trim();
    let suffixes: [(&str, f64); 13] = [
        ("Ki", 1024.0),
        ("Mi", 1024f64.powi(2)),
        ("Gi", 1024f64.powi(3)),
        ("Ti", 1024f64.powi(4)),
        ("Pi", 1024f64.powi(5)),
        ("Ei", 1024f64.powi(6)),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
    ];
    for (suf, mult) in suffixes {
        if let Some(n) = s.strip_suffix(suf) {
            return n.parse::<f64>().ok().map(|v| v * mult);
        }
    }
    s.parse().ok()
}

/// `$(VAR)` expansion as Kubernetes does it: defined variables are
/// replaced, `$$` is a literal `$`, anything else stays as written.
pub fn expand(input: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(r) = after.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(r) = after.strip_prefix('(') {
            match r.find(')') {
                Some(end) => {
                    let name = &r[..end];
                    match vars.get(name) {
                        Some(v) => out.push_str(v),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &r[end + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = r;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The Docker-link style variables of the Services in `ns` (what
/// `enableServiceLinks` adds), plus the `kubernetes` Service's ones that
/// every pod gets, pointing at `api`.
pub fn service_links(cluster: &Cluster, ns: &str, links: bool, api: SocketAddr) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut add = |name: &str, ip: &str, ports: &[(String, i64, String)]| {
        let base = name.to_ascii_uppercase().replace('-', "_");
        let Some((_, first_port, first_proto)) = ports.first() else {
            return;
        };
        out.push((format!("{base}_SERVICE_HOST"), ip.to_string()));
        out.push((format!("{base}_SERVICE_PORT"), first_port.to_string()));
        for (pname, port, _) in ports {
            if !pname.is_empty() {
                out.push((
                    format!("{base}_SERVICE_PORT_{}", pname.to_ascii_uppercase().replace('-', "_")),
                    port.to_string(),
                ));
            }
        }
        let proto_lc = first_proto.to_ascii_lowercase();
        out.push((format!("{base}_PORT"), format!("{proto_lc}://{ip}:{first_port}")));
        for (_, port, proto) in ports {
            let p = format!("{base}_PORT_{port}_{}", proto.to_ascii_uppercase());
            let lc = proto.to_ascii_lowercase();
            out.push((p.clone(), format!("{lc}://{ip}:{port}")));
            out.push((format!("{p}_PROTO"), lc));
            out.push((format!("{p}_PORT"), port.to_string()));
            out.push((format!("{p}_ADDR"), ip.to_string()));
        }
    };
    if links && let Some(rt) = cluster.catalog.get("", "v1", "services") {
        let (svcs, _) = cluster.store.list(&rt.group_resource(), Some(ns));
        for s in svcs {
            let name = s["metadata"]["name"].as_str().unwrap_or_default();
            if ns == "default" && name == "kubernetes" {
                continue;
            }
            let ip = s["spec"]["clusterIP"].as_str().unwrap_or_default();
            if ip.is_empty() || ip == "None" {
                continue;
            }
            let ports: Vec<(String, i64, String)> = s["spec"]["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| {
                    (
                        p["name"].as_str().unwrap_or_default().to_string(),
                        p["port"].as_i64().unwrap_or(0),
                        p["protocol"].as_str().unwrap_or("TCP").to_string(),
                    )
                })
                .collect();
            add(name, ip, &ports);
        }
    }
    add(
        "kubernetes",
        &api.ip().to_string(),
        &[("https".into(), i64::from(api.port()), "TCP".into())],
    );
    out
}

/// Why a container's configuration cannot be built
/// (`CreateContainerConfigError`).
pub type ConfigError = String;

/// Builds the environment of `container` in `pod`.
pub fn container_env(
    cluster: &Cluster,
    pod: &Value,
    container: &Value,
    ip: &str,
    api: SocketAddr,
) -> Result<Vec<(String, String)>, ConfigError> {
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
    let links = pod["spec"]["enableServiceLinks"].as_bool().unwrap_or(true);
    let mut vars: Vec<(String, String)> = vec![
        (
            "PATH".into(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        ),
        (
            "HOSTNAME".into(),
            pod["spec"]["hostname"]
                .as_str()
                .filter(|h| !h.is_empty())
                .or_else(|| pod["metadata"]["name"].as_str())
                .unwrap_or_default()
                .to_string(),
        ),
        ("HOME".into(), "/root".into()),
    ];
    let set = |vars: &mut Vec<(String, String)>, k: String, v: String| {
        if let Some(e) = vars.iter_mut().find(|(n, _)| *n == k) {
            e.1 = v;
        } else {
            vars.push((k, v));
        }
    };
    for (k, v) in service_links(cluster, ns, links, api) {
        set(&mut vars, k, v);
    }
    for from in container["envFrom"].as_array().into_iter().flatten() {
        let prefix = from["prefix"].as_str().unwrap_or_default();
        let (src, r) = if from.get("configMapRef").is_some() {
            (Source::ConfigMap, &from["configMapRef"])
        } else {
            (Source::Secret, &from["secretRef"])
        };
        let name = r["name"].as_str().unwrap_or_default();
        match object_data(cluster, src, ns, name) {
            Some(data) => {
                for (k, v) in data {
                    set(
                        &mut vars,
                        format!("{prefix}{k}"),
                        String::from_utf8_lossy(&v).into_owned(),
                    );
                }
            }
            None if r["optional"].as_bool() == Some(true) => {}
            None => return Err(format!("{} \"{name}\" not found", src.kind())),
        }
    }
    for e in container["env"].as_array().into_iter().flatten() {
        let name = e["name"].as_str().unwrap_or_default().to_string();
        let value = if let Some(v) = e["value"].as_str() {
            let known: BTreeMap<String, String> = vars.iter().cloned().collect();
            expand(v, &known)
        } else if let Some(vf) = e.get("valueFrom") {
            if let Some(f) = vf.get("fieldRef") {
                field_ref(pod, f["fieldPath"].as_str().unwrap_or_default(), ip)?
            } else if let Some(r) = vf.get("resourceFieldRef") {
                resource_field_ref(
                    container,
                    r["resource"].as_str().unwrap_or_default(),
                    r["divisor"].as_str(),
                )?
            } else {
                let (src, r) = if vf.get("configMapKeyRef").is_some() {
                    (Source::ConfigMap, &vf["configMapKeyRef"])
                } else {
                    (Source::Secret, &vf["secretKeyRef"])
                };
                let obj = r["name"].as_str().unwrap_or_default();
                let key = r["key"].as_str().unwrap_or_default();
                let optional = r["optional"].as_bool() == Some(true);
                match object_data(cluster, src, ns, obj).map(|d| d.get(key).cloned()) {
                    Some(Some(v)) => String::from_utf8_lossy(&v).into_owned(),
                    _ if optional => continue,
                    Some(None) => return Err(format!("couldn't find key {key} in {} {ns}/{obj}", src.kind())),
                    None => return Err(format!("{} \"{obj}\" not found", src.kind())),
                }
            }
        } else {
            String::new()
        };
        set(&mut vars, name, value);
    }
    Ok(vars)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn expansion_follows_kubernetes() {
        let vars: BTreeMap<String, String> = [("A".to_string(), "x".to_string())].into();
        assert_eq!(expand("$(A)-$(B)-$$(A)-$-$(", &vars), "x-$(B)-$(A)-$-$(");
    }

    #[test]
    fn downward_fields_and_quantities() {
        let pod =
            json!({"metadata": {"name": "p", "namespace": "n", "uid": "u", "labels": {"app": "web"}}, "spec": {}});
        assert_eq!(field_ref(&pod, "metadata.labels['app']", "1.2.3.4").unwrap(), "web");
        assert_eq!(field_ref(&pod, "status.podIP", "1.2.3.4").unwrap(), "1.2.3.4");
        assert_eq!(field_ref(&pod, "spec.serviceAccountName", "").unwrap(), "default");
        assert_eq!(quantity("500m"), Some(0.5));
        assert_eq!(quantity("1Gi"), Some(1073741824.0));
        let c = json!({"resources": {"limits": {"memory": "64Mi"}}});
        assert_eq!(resource_field_ref(&c, "limits.memory", Some("1Mi")).unwrap(), "64");
        assert_eq!(resource_field_ref(&c, "limits.cpu", None).unwrap(), "2");
    }
}
