//! `meta.k8s.io/v1` Table responses, the server-side printing that
//! `kubectl get` asks for.

use serde_json::{Value, json};

use crate::clock;
use crate::resources::{PrinterColumn, ResourceType};

/// Evaluates the simple JSONPath subset printer columns use:
/// `.a.b`, `.a[0].b`, `.a['x.y']`, and a filter on a list,
/// `.conditions[?(@.type=="Ready")].status`, which takes the first element
/// that matches (a printer column shows the first result, as upstream).
pub fn json_path<'a>(obj: &'a Value, path: &str) -> Option<&'a Value> {
    let path = path.trim().trim_start_matches('{').trim_end_matches('}');
    let mut cur = obj;
    let mut rest = path.trim_start_matches('$');
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            if end > 0 {
                cur = cur.get(&r[..end])?;
            }
            rest = &r[end..];
        } else if let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']')?;
            if let Some(filter) = r[..end].strip_prefix("?(").and_then(|f| f.strip_suffix(')')) {
                let (field, want) = filter.split_once("==")?;
                let field = field.trim().strip_prefix('@')?;
                let want = want.trim().trim_matches(|c| c == '\'' || c == '"');
                cur = cur.as_array()?.iter().find(|item| {
                    json_path(item, field).is_some_and(|v| match v {
                        Value::String(s) => s == want,
                        // true, 3: the literal read as JSON
                        other => serde_json::from_str::<Value>(want).is_ok_and(|w| w == *other),
                    })
                })?;
                rest = &r[end + 1..];
                continue;
            }
            let idx = r[..end].trim_matches(|c| c == '\'' || c == '"');
            cur = match idx.parse::<usize>() {
                Ok(i) => cur.get(i)?,
                Err(_) => cur.get(idx)?,
            };
            rest = &r[end + 1..];
        } else {
            return None;
        }
    }
    Some(cur)
}

fn count(v: Option<&Value>) -> i64 {
    match v {
        Some(Value::Object(m)) => m.len() as i64,
        Some(Value::Array(a)) => a.len() as i64,
        _ => 0,
    }
}

fn int(obj: &Value, ptr: &str) -> i64 {
    obj.pointer(ptr).and_then(Value::as_i64).unwrap_or(0)
}

/// The STATUS column as kubectl prints it (`printPod`): init progress
/// (`Init:1/2`, `Init:Error`, `Init:CrashLoopBackOff`), then the last
/// container's waiting or terminated reason, else the phase.
fn pod_status(pod: &Value) -> String {
    if pod.pointer("/metadata/deletionTimestamp").is_some() {
        return "Terminating".to_string();
    }
    let statuses = |list: &str| -> Vec<Value> {
        pod.pointer(&format!("/status/{list}"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let mut reason = pod
        .pointer("/status/reason")
        .or_else(|| pod.pointer("/status/phase"))
        .and_then(Value::as_str)
        .unwrap_or("Pending")
        .to_string();
    let init_specs = pod.pointer("/spec/initContainers").and_then(Value::as_array);
    let n_init = init_specs.map_or(0, Vec::len);
    for (i, c) in statuses("initContainerStatuses").iter().enumerate() {
        let sidecar = init_specs
            .and_then(|s| s.iter().find(|s| s["name"] == c["name"]))
            .is_some_and(|s| s["restartPolicy"] == "Always");
        let term = &c["state"]["terminated"];
        if term["exitCode"] == 0 || (sidecar && c["started"] == true) {
            continue;
        }
        let waiting = c["state"]["waiting"]["reason"].as_str().unwrap_or_default();
        return if term.is_object() {
            match term["reason"].as_str().filter(|r| !r.is_empty()) {
                Some(r) => format!("Init:{r}"),
                None => format!("Init:ExitCode:{}", term["exitCode"]),
            }
        } else if !waiting.is_empty() && waiting != "PodInitializing" {
            format!("Init:{waiting}")
        } else {
            format!("Init:{i}/{n_init}")
        };
    }
    let mut running = false;
    for c in statuses("containerStatuses").iter().rev() {
        if let Some(r) = c.pointer("/state/waiting/reason").and_then(Value::as_str) {
            reason = r.to_string();
        } else if let Some(t) = c.pointer("/state/terminated").filter(|t| t.is_object()) {
            reason = match t["reason"].as_str().filter(|r| !r.is_empty()) {
                Some(r) => r.to_string(),
                None => format!("ExitCode:{}", t["exitCode"]),
            };
        } else if c["ready"] == true && c.pointer("/state/running").is_some() {
            running = true;
        }
    }
    if reason == "Completed" && running {
        reason = "Running".to_string();
    }
    reason
}

/// Computed cells for built-in kinds (the `@name` column paths).
fn computed(obj: &Value, name: &str) -> Value {
    match name {
        "@podReady" => {
            // Native sidecars (restartable init containers) count too.
            let sidecars: Vec<&str> = obj
                .pointer("/spec/initContainers")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter(|c| c["restartPolicy"] == "Always")
                .filter_map(|c| c["name"].as_str())
                .collect();
            let total = count(obj.pointer("/spec/containers")) + sidecars.len() as i64;
            let ready = obj
                .pointer("/status/containerStatuses")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .chain(
                    obj.pointer("/status/initContainerStatuses")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .filter(|c| c["name"].as_str().is_some_and(|n| sidecars.contains(&n))),
                )
                .filter(|c| c["ready"].as_bool() == Some(true))
                .count();
            json!(format!("{ready}/{total}"))
        }
        "@podStatus" => json!(pod_status(obj)),
        "@podRestarts" => {
            let n: i64 = obj
                .pointer("/status/containerStatuses")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|c| c["restartCount"].as_i64().unwrap_or(0))
                .sum();
            json!(n.to_string())
        }
        "@nodeStatus" => {
            let ready = obj
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            let status = if ready { "Ready" } else { "NotReady" };
            if obj.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
                json!(format!("{status},SchedulingDisabled"))
            } else {
                json!(status)
            }
        }
        "@serviceExternalIP" => {
            let ips: Vec<&str> = obj
                .pointer("/status/loadBalancer/ingress")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|i| i["ip"].as_str())
                .collect();
            json!(if ips.is_empty() {
                "<none>".to_string()
            } else {
                ips.join(",")
            })
        }
        "@servicePorts" => {
            let ports: Vec<String> = obj
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|p| {
                    let proto = p["protocol"].as_str().unwrap_or("TCP");
                    match p["nodePort"].as_i64() {
                        Some(np) => format!("{}:{np}/{proto}", p["port"]),
                        None => format!("{}/{proto}", p["port"]),
                    }
                })
                .collect();
            json!(if ports.is_empty() {
                "<none>".to_string()
            } else {
                ports.join(",")
            })
        }
        "@serviceSelector" => {
            let sel: Vec<String> = obj
                .pointer("/spec/selector")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect();
            json!(if sel.is_empty() {
                "<none>".to_string()
            } else {
                sel.join(",")
            })
        }
        "@endpoints" => {
            let mut all = Vec::new();
            for sub in obj.get("subsets").and_then(Value::as_array).into_iter().flatten() {
                for a in sub["addresses"].as_array().into_iter().flatten() {
                    for p in sub["ports"].as_array().into_iter().flatten() {
                        all.push(format!("{}:{}", a["ip"].as_str().unwrap_or_default(), p["port"]));
                    }
                }
            }
            json!(abbreviate(all))
        }
        "@slicePorts" => {
            let ports: Vec<String> = obj
                .get("ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|p| p["port"].as_i64().map(|n| n.to_string()))
                .collect();
            json!(if ports.is_empty() {
                "<unset>".to_string()
            } else {
                ports.join(",")
            })
        }
        "@sliceEndpoints" => {
            let ips: Vec<String> = obj
                .get("endpoints")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .flat_map(|e| e["addresses"].as_array().cloned().unwrap_or_default())
                .filter_map(|a| a.as_str().map(str::to_string))
                .collect();
            json!(abbreviate(ips))
        }
        "@jobStatus" => {
            let cond = |t: &str| {
                obj.pointer("/status/conditions")
                    .and_then(Value::as_array)
                    .is_some_and(|cs| cs.iter().any(|c| c["type"] == t && c["status"] == "True"))
            };
            json!(if cond("Complete") {
                "Complete"
            } else if cond("Failed") {
                "Failed"
            } else {
                "Running"
            })
        }
        "@jobDuration" => {
            let start = obj
                .pointer("/status/startTime")
                .and_then(Value::as_str)
                .and_then(clock::seconds_since);
            let end = obj
                .pointer("/status/completionTime")
                .and_then(Value::as_str)
                .and_then(clock::seconds_since);
            match (start, end) {
                (Some(s), Some(e)) => json!(clock::human_duration(s - e)),
                (Some(s), None) => json!(clock::human_duration(s)),
                _ => json!(""),
            }
        }
        "@eventLastSeen" => {
            let ts = obj
                .get("lastTimestamp")
                .or(obj.get("eventTime"))
                .and_then(Value::as_str);
            json!(
                ts.and_then(clock::seconds_since)
                    .map(clock::human_duration)
                    .unwrap_or_else(|| "<unknown>".into())
            )
        }
        "@eventObject" => {
            let o = &obj["involvedObject"];
            json!(format!(
                "{}/{}",
                o["kind"].as_str().unwrap_or_default().to_ascii_lowercase(),
                o["name"].as_str().unwrap_or_default()
            ))
        }
        "@dataCount" => json!(count(obj.get("data")) + count(obj.get("binaryData"))),
        "@secretsCount" => json!(count(obj.get("secrets"))),
        "@readyOfReplicas" => json!(format!(
            "{}/{}",
            int(obj, "/status/readyReplicas"),
            obj.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1)
        )),
        "@updatedReplicas" => json!(int(obj, "/status/updatedReplicas")),
        "@availableReplicas" => json!(int(obj, "/status/availableReplicas")),
        "@statusReplicas" => json!(int(obj, "/status/replicas")),
        "@readyReplicas" => json!(int(obj, "/status/readyReplicas")),
        "@jobCompletions" => json!(format!(
            "{}/{}",
            int(obj, "/status/succeeded"),
            obj.pointer("/spec/completions").and_then(Value::as_i64).unwrap_or(1)
        )),
        _ => Value::Null,
    }
}

/// `a,b,c + N more...`, or `<none>`, as kubectl's printers shorten lists.
fn abbreviate(items: Vec<String>) -> String {
    match items.len() {
        0 => "<none>".to_string(),
        n if n > 3 => format!("{} + {} more...", items[..3].join(","), n - 3),
        _ => items.join(","),
    }
}

fn cell(obj: &Value, col: &PrinterColumn) -> Value {
    if col.json_path.starts_with('@') {
        return computed(obj, &col.json_path);
    }
    let Some(v) = json_path(obj, &col.json_path) else {
        return Value::Null;
    };
    match col.type_.as_str() {
        "date" => v
            .as_str()
            .and_then(clock::seconds_since)
            .map(|s| json!(clock::human_duration(s)))
            .unwrap_or(Value::Null),
        "integer" | "number" | "boolean" => v.clone(),
        _ => match v {
            Value::String(_) => v.clone(),
            Value::Null => Value::Null,
            other => json!(other.to_string()),
        },
    }
}

/// Whether the table ends with AGE (not when a column already shows the
/// creation time, and not for Events, which show LAST SEEN).
fn shows_age(rt: &ResourceType) -> bool {
    !rt.columns.iter().any(|c| c.json_path == ".metadata.creationTimestamp") && rt.kind != "Event"
}

/// The column definitions of a resource: NAME, its own columns, AGE.
pub fn column_definitions(rt: &ResourceType) -> Vec<Value> {
    let def = |name: &str, type_: &str, format: &str, priority: i64, description: &str| json!({"name": name, "type": type_, "format": format, "description": description, "priority": priority});
    let mut cols = vec![def(
        "Name",
        "string",
        "name",
        // Events list by LAST SEEN; their name only shows with -o wide.
        if rt.kind == "Event" { 1 } else { 0 },
        "Name must be unique within a namespace.",
    )];
    for c in &rt.columns {
        let type_ = if c.type_ == "date" { "string" } else { &c.type_ };
        cols.push(def(&c.name, type_, "", c.priority, &c.description));
    }
    if shows_age(rt) {
        cols.push(def(
            "Age",
            "string",
            "",
            0,
            "CreationTimestamp is a timestamp representing the server time when this object was created.",
        ));
    }
    cols
}

/// One Table row.
pub fn row(rt: &ResourceType, obj: &Value, include_object: &str) -> Value {
    let mut cells = vec![obj.pointer("/metadata/name").cloned().unwrap_or(Value::Null)];
    cells.extend(rt.columns.iter().map(|c| cell(obj, c)));
    if shows_age(rt) {
        let age = obj
            .pointer("/metadata/creationTimestamp")
            .and_then(Value::as_str)
            .and_then(clock::seconds_since)
            .map(clock::human_duration)
            .unwrap_or_else(|| "<unknown>".to_string());
        cells.push(json!(age));
    }
    let object = match include_object {
        "None" => Value::Null,
        "Object" => obj.clone(),
        _ => json!({
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": obj.get("metadata").cloned().unwrap_or_else(|| json!({})),
        }),
    };
    json!({"cells": cells, "object": object})
}

/// A full Table for a list response.
pub fn table(rt: &ResourceType, objects: &[Value], list_meta: Value, include_object: &str) -> Value {
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta,
        "columnDefinitions": column_definitions(rt),
        "rows": objects.iter().map(|o| row(rt, o, include_object)).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::Catalog;

    #[test]
    fn json_paths_follow_fields_and_indices() {
        let v = json!({"a": {"b": [{"c": 1}], "x.y": "z"}});
        assert_eq!(json_path(&v, ".a.b[0].c"), Some(&json!(1)));
        assert_eq!(json_path(&v, ".a['x.y']"), Some(&json!("z")));
        assert_eq!(json_path(&v, ".a.q"), None);
        let mesh = json!({"status": {"conditions": [
            {"type": "Ready", "status": "True"},
            {"type": "CertificateAuthorityReady", "status": "False"}
        ]}});
        let column = |t: &str| json_path(&mesh, &format!(".status.conditions[?(@.type==\"{t}\")].status")).cloned();
        assert_eq!(column("Ready"), Some(json!("True")));
        assert_eq!(column("CertificateAuthorityReady"), Some(json!("False")));
        assert_eq!(column("WebhooksReady"), None, "no match: an empty cell");
    }

    #[test]
    fn pod_rows_show_readiness_and_status() {
        let rt = Catalog::new().get("", "v1", "pods").unwrap();
        let pod = json!({
            "metadata": {"name": "p", "creationTimestamp": clock::now_rfc3339()},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}]},
            "status": {"phase": "Running", "podIP": "10.244.0.5", "containerStatuses": [{"ready": true, "restartCount": 2}, {"ready": false, "restartCount": 0}]}
        });
        let t = table(&rt, &[pod], json!({}), "Metadata");
        let names: Vec<&str> = t["columnDefinitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["Name", "Ready", "Status", "Restarts", "IP", "Node", "Age"]);
        let cells = &t["rows"][0]["cells"];
        assert_eq!(cells[1], "1/2");
        assert_eq!(cells[2], "Running");
        assert_eq!(cells[3], "2");
        assert_eq!(cells[4], "10.244.0.5");
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
    }
}
