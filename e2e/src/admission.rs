//! Admission webhooks: mutating webhooks, then validating webhooks, per
//! their configurations (rules, namespaceSelector, objectSelector,
//! failurePolicy, timeoutSeconds, sideEffects), called over HTTPS with the
//! `caBundle` verified and real `admission.k8s.io/v1` AdmissionReview
//! bodies. JSON patches from mutating webhooks are applied.
//!
//! # Caveats
//! - `matchConditions`, `reinvocationPolicy: IfNeeded` and `matchPolicy:
//!   Equivalent` are not evaluated (rules match exactly as written).
//! - A `service` client config is reached through the Service's ready
//!   endpoints (the API server has no ClusterIP routing of its own).
//! - Calls block the calling thread inside `block_in_place`, so writes that
//!   need webhooks must run on a multi-threaded Tokio runtime.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use serde_json::{Value, json};
use tracing::{debug, warn};

use crate::cluster::Cluster;
use crate::pki::{base64_decode, base64_encode};
use crate::resources::ResourceType;
use crate::selector::LabelSelector;
use crate::status::ApiError;

/// What is being admitted.
#[derive(Debug, Clone)]
pub struct Attributes<'a> {
    pub rt: &'a ResourceType,
    pub subresource: &'a str,
    /// CREATE, UPDATE or DELETE.
    pub operation: &'static str,
    pub namespace: Option<&'a str>,
    pub name: &'a str,
    pub dry_run: bool,
}

#[derive(Debug, Clone)]
struct Hook {
    name: String,
    config: Value,
}

fn webhooks(cluster: &Cluster, kind_plural: &str) -> Vec<Hook> {
    let Some(rt) = cluster.catalog.get("admissionregistration.k8s.io", "v1", kind_plural) else {
        return Vec::new();
    };
    let (configs, _) = cluster.store.list(&rt.group_resource(), None);
    configs
        .iter()
        .flat_map(|c| c["webhooks"].as_array().cloned().unwrap_or_default())
        .map(|w| Hook {
            name: w["name"].as_str().unwrap_or_default().to_string(),
            config: w,
        })
        .collect()
}

fn list_matches(list: &Value, value: &str) -> bool {
    list.as_array()
        .is_some_and(|a| a.iter().any(|x| x == "*" || x == value))
}

fn rule_matches(rule: &Value, attrs: &Attributes<'_>) -> bool {
    let resource = if attrs.subresource.is_empty() {
        attrs.rt.plural.clone()
    } else {
        format!("{}/{}", attrs.rt.plural, attrs.subresource)
    };
    let resource_ok = rule["resources"].as_array().is_some_and(|rs| {
        rs.iter().filter_map(Value::as_str).any(|r| {
            r == resource
                || (r == "*" && attrs.subresource.is_empty())
                || r == "*/*"
                || r.strip_prefix("*/").is_some_and(|sub| sub == attrs.subresource)
                || r.strip_suffix("/*")
                    .is_some_and(|res| res == attrs.rt.plural && !attrs.subresource.is_empty())
        })
    });
    let scope_ok = match rule["scope"].as_str().unwrap_or("*") {
        "Cluster" => !attrs.rt.namespaced,
        "Namespaced" => attrs.rt.namespaced,
        _ => true,
    };
    list_matches(&rule["operations"], attrs.operation)
        && list_matches(&rule["apiGroups"], &attrs.rt.group)
        && list_matches(&rule["apiVersions"], &attrs.rt.version)
        && resource_ok
        && scope_ok
}

fn selector_matches(sel: Option<&Value>, labels: Option<&Value>) -> bool {
    match sel {
        None | Some(Value::Null) => true,
        Some(s) => LabelSelector::from_object(s).matches_labels(labels),
    }
}

fn hook_applies(
    cluster: &Cluster,
    hook: &Hook,
    attrs: &Attributes<'_>,
    object: Option<&Value>,
    old: Option<&Value>,
) -> bool {
    if !hook.config["rules"]
        .as_array()
        .is_some_and(|rules| rules.iter().any(|r| rule_matches(r, attrs)))
    {
        return false;
    }
    let ns_sel = hook.config.get("namespaceSelector");
    let ns_ok = if attrs.rt.kind == "Namespace" && attrs.rt.group.is_empty() {
        selector_matches(ns_sel, object.or(old).and_then(|o| o.pointer("/metadata/labels")))
    } else if let Some(ns) = attrs.namespace.filter(|_| attrs.rt.namespaced) {
        let ns_obj = cluster
            .catalog
            .get("", "v1", "namespaces")
            .and_then(|rt| cluster.store.get(&Cluster::key(&rt, None, ns)));
        selector_matches(ns_sel, ns_obj.as_ref().and_then(|o| o.pointer("/metadata/labels")))
    } else {
        true
    };
    let obj_sel = hook.config.get("objectSelector");
    let obj_ok = [object, old]
        .into_iter()
        .flatten()
        .any(|o| selector_matches(obj_sel, o.pointer("/metadata/labels")))
        || (object.is_none() && old.is_none());
    ns_ok && obj_ok
}

/// Webhook configurations are never themselves subject to webhooks.
fn exempt(rt: &ResourceType) -> bool {
    rt.group == "admissionregistration.k8s.io"
}

fn review(attrs: &Attributes<'_>, object: Option<&Value>, old: Option<&Value>) -> (String, Value) {
    let uid = uuid::Uuid::new_v4().to_string();
    let gvk = json!({"group": attrs.rt.group, "version": attrs.rt.version, "kind": attrs.rt.kind});
    let gvr = json!({"group": attrs.rt.group, "version": attrs.rt.version, "resource": attrs.rt.plural});
    let mut request = json!({
        "uid": uid,
        "kind": gvk, "resource": gvr, "requestKind": gvk, "requestResource": gvr,
        "name": attrs.name,
        "operation": attrs.operation,
        "userInfo": {"username": "kubesim-admin", "groups": ["system:masters", "system:authenticated"]},
        "object": object.cloned().unwrap_or(Value::Null),
        "oldObject": old.cloned().unwrap_or(Value::Null),
        "dryRun": attrs.dry_run,
        "options": match attrs.operation {
            "CREATE" => json!({"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"}),
            "UPDATE" => json!({"kind": "UpdateOptions", "apiVersion": "meta.k8s.io/v1"}),
            _ => json!({"kind": "DeleteOptions", "apiVersion": "meta.k8s.io/v1"}),
        },
    });
    if let Some(ns) = attrs.namespace.filter(|_| attrs.rt.namespaced) {
        request["namespace"] = json!(ns);
    }
    if !attrs.subresource.is_empty() {
        request["subResource"] = json!(attrs.subresource);
    }
    (
        uid,
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}),
    )
}

/// Where a webhook is reached: `(host, port, path, tls server name)`.
fn endpoint(cluster: &Cluster, cfg: &Value) -> Result<(String, u16, String, String), String> {
    if let Some(url) = cfg.get("url").and_then(Value::as_str) {
        let rest = url
            .strip_prefix("https://")
            .ok_or_else(|| format!("webhook URL {url:?} must use https"))?;
        let (authority, path) = rest
            .split_once('/')
            .map(|(a, p)| (a, format!("/{p}")))
            .unwrap_or((rest, "/".to_string()));
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.parse().map_err(|_| format!("bad port in {url:?}"))?),
            None => (authority.to_string(), 443),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
        return Ok((host.clone(), port, path, host));
    }
    let svc = cfg.get("service").ok_or("webhook clientConfig needs url or service")?;
    let (ns, name) = (
        svc["namespace"].as_str().unwrap_or_default(),
        svc["name"].as_str().unwrap_or_default(),
    );
    let port = svc["port"].as_i64().unwrap_or(443);
    let path = svc["path"].as_str().unwrap_or("/").to_string();
    let ep_rt = cluster
        .catalog
        .get("", "v1", "endpoints")
        .ok_or("endpoints not served")?;
    let svc_rt = cluster.catalog.get("", "v1", "services").ok_or("services not served")?;
    let service = cluster
        .store
        .get(&Cluster::key(&svc_rt, Some(ns), name))
        .ok_or_else(|| format!("service \"{ns}/{name}\" not found"))?;
    let eps = cluster
        .store
        .get(&Cluster::key(&ep_rt, Some(ns), name))
        .ok_or_else(|| format!("no endpoints for service \"{ns}/{name}\""))?;
    let svc_port = service["spec"]["ports"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["port"].as_i64() == Some(port)))
        .cloned();
    for subset in eps["subsets"].as_array().into_iter().flatten() {
        let Some(ip) = subset.pointer("/addresses/0/ip").and_then(Value::as_str) else {
            continue;
        };
        let target = subset["ports"].as_array().and_then(|ps| {
            ps.iter()
                .find(|p| {
                    svc_port
                        .as_ref()
                        .is_some_and(|sp| sp.get("name").is_some_and(|n| *n == p["name"]))
                })
                .or(ps.first())
        });
        if let Some(tp) = target.and_then(|p| p["port"].as_i64()) {
            return Ok((
                ip.to_string(),
                u16::try_from(tp).map_err(|_| "bad port")?,
                path,
                format!("{name}.{ns}.svc"),
            ));
        }
    }
    Err(format!("no ready endpoints for service \"{ns}/{name}\""))
}

async fn call(cluster: &Cluster, cfg: &Value, body: Value, timeout: Duration) -> Result<Value, String> {
    let (host, port, path, server_name) = endpoint(cluster, cfg)?;
    let ca = cfg
        .get("caBundle")
        .and_then(Value::as_str)
        .ok_or("clientConfig.caBundle is required")?;
    let pem = base64_decode(ca).ok_or("caBundle is not base64")?;
    let mut roots = rustls::RootCertStore::empty();
    for der in pem_certs(&String::from_utf8_lossy(&pem)) {
        roots
            .add(rustls::pki_types::CertificateDer::from(der))
            .map_err(|e| format!("caBundle: {e}"))?;
    }
    if roots.is_empty() {
        return Err("caBundle holds no certificate".into());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let name = rustls::pki_types::ServerName::try_from(server_name.clone())
        .map_err(|e| format!("server name {server_name:?}: {e}"))?;
    let fut = async {
        // Service references lead to pods: through the pod network if any.
        let via_pod_network = cfg
            .get("url")
            .is_none()
            .then(|| cluster.node_netns.get())
            .flatten()
            .zip(host.parse::<std::net::IpAddr>().ok());
        let tcp = match via_pod_network {
            Some((netns, ip)) => crate::network::netns::connect(netns, std::net::SocketAddr::new(ip, port)).await,
            None => tokio::net::TcpStream::connect((host.as_str(), port)).await,
        }
        .map_err(|e| format!("connecting to {host}:{port}: {e}"))?;
        // why: as the API server (Go sets TCP_NODELAY on every connection): with Nagle on, the
        // request head would wait for the server's delayed ACK of the handshake (~40 ms a call).
        tcp.set_nodelay(true)
            .map_err(|e| format!("TCP_NODELAY on the connection to {host}:{port}: {e}"))?;
        let stream = connector
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS to {host}:{port}: {e}"))?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(error = %e, "webhook connection ended");
            }
        });
        let req = http::Request::post(path.as_str())
            .header(http::header::HOST, format!("{server_name}:{port}"))
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::ACCEPT, "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| e.to_string())?;
        let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        if !status.is_success() {
            return Err(format!("the server responded with {status}"));
        }
        serde_json::from_slice::<Value>(&bytes).map_err(|e| format!("decoding AdmissionReview: {e}"))
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| format!("context deadline exceeded after {}s", timeout.as_secs()))?
}

/// The DER bodies of every PEM certificate in `pem`.
fn pem_certs(pem: &str) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut cur: Option<String> = None;
    for line in pem.lines() {
        if line.starts_with("-----BEGIN CERTIFICATE") {
            cur = Some(String::new());
        } else if line.starts_with("-----END CERTIFICATE") {
            if let Some(body) = cur.take().and_then(|b| base64_decode(&b)) {
                out.push(body);
            }
        } else if let Some(b) = cur.as_mut() {
            b.push_str(line.trim());
        }
    }
    out
}

/// Runs an async webhook call from the synchronous write path.
fn block_on<F: std::future::Future>(fut: F) -> Result<F::Output, String> {
    let handle =
        tokio::runtime::Handle::try_current().map_err(|_| "admission webhooks need a Tokio runtime".to_string())?;
    if handle.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
        return Err("admission webhooks need a multi-threaded Tokio runtime".into());
    }
    Ok(tokio::task::block_in_place(|| handle.block_on(fut)))
}

fn denial(name: &str, response: &Value) -> ApiError {
    let status = &response["status"];
    let code = status["code"]
        .as_u64()
        .and_then(|c| u16::try_from(c).ok())
        .filter(|c| *c >= 400)
        .unwrap_or(400);
    let denied = format!("admission webhook \"{name}\" denied the request");
    let message = match (status["message"].as_str(), status["reason"].as_str()) {
        (Some(m), _) if !m.is_empty() => format!("{denied}: {m}"),
        (_, Some(r)) if !r.is_empty() => format!("{denied}: {r}"),
        _ => format!("{denied} without explanation"),
    };
    ApiError {
        code,
        reason: "Forbidden",
        message,
        details: None,
    }
    .with_reason(code)
}

impl ApiError {
    fn with_reason(mut self, code: u16) -> Self {
        self.reason = match code {
            400 => "BadRequest",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "NotFound",
            409 => "Conflict",
            422 => "Invalid",
            _ => "InternalError",
        };
        self
    }
}

/// Calls every matching webhook of one kind; `mutating` ones may return
/// JSON patches, applied in order to `object`.
fn run(
    cluster: &Cluster,
    kind_plural: &str,
    mutating: bool,
    attrs: &Attributes<'_>,
    object: &mut Option<Value>,
    old: Option<&Value>,
) -> Result<Vec<String>, ApiError> {
    if exempt(attrs.rt) {
        return Ok(Vec::new());
    }
    let hooks: Vec<Hook> = webhooks(cluster, kind_plural)
        .into_iter()
        .filter(|h| hook_applies(cluster, h, attrs, object.as_ref(), old))
        .collect();
    let mut warnings = Vec::new();
    for hook in hooks {
        let fail_open = hook.config["failurePolicy"].as_str() == Some("Ignore");
        let side_effects = hook.config["sideEffects"].as_str().unwrap_or("Unknown");
        if attrs.dry_run && !matches!(side_effects, "None" | "NoneOnDryRun") {
            return Err(ApiError::bad_request(format!(
                "admission webhook \"{}\" does not support dry run",
                hook.name
            )));
        }
        let timeout = Duration::from_secs(hook.config["timeoutSeconds"].as_u64().unwrap_or(10).clamp(1, 30));
        let (uid, body) = review(attrs, object.as_ref(), old);
        let result = block_on(call(cluster, &hook.config["clientConfig"], body, timeout)).and_then(|r| r);
        let reply = match result {
            Ok(r) => r,
            Err(e) if fail_open => {
                warn!(webhook = %hook.name, error = %e, "webhook failed; failurePolicy Ignore");
                continue;
            }
            Err(e) => {
                return Err(ApiError::internal(format!(
                    "Internal error occurred: failed calling webhook \"{}\": {e}",
                    hook.name
                )));
            }
        };
        let response = &reply["response"];
        if response["uid"].as_str() != Some(uid.as_str()) {
            let e = format!("expected response.uid {uid:?}, got {:?}", response["uid"]);
            if fail_open {
                continue;
            }
            return Err(ApiError::internal(format!(
                "Internal error occurred: failed calling webhook \"{}\": {e}",
                hook.name
            )));
        }
        warnings.extend(
            response["warnings"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|w| w.as_str().map(str::to_string)),
        );
        if response["allowed"] != json!(true) {
            return Err(denial(&hook.name, response));
        }
        if mutating
            && let Some(p) = response["patch"].as_str()
            && let Some(obj) = object.as_mut()
        {
            let raw = base64_decode(p).ok_or_else(|| {
                ApiError::internal(format!("webhook \"{}\" returned a patch that is not base64", hook.name))
            })?;
            let ops: Value = serde_json::from_slice(&raw)
                .map_err(|e| ApiError::internal(format!("webhook \"{}\" returned an invalid patch: {e}", hook.name)))?;
            *obj = crate::patch::json_patch(obj, &ops)
                .map_err(|e| ApiError::internal(format!("webhook \"{}\" patch does not apply: {e}", hook.name)))?;
        }
    }
    Ok(warnings)
}

/// Mutating admission: returns the (possibly patched) object and warnings.
pub fn mutate(
    cluster: &Cluster,
    attrs: &Attributes<'_>,
    object: Value,
    old: Option<&Value>,
) -> Result<(Value, Vec<String>), ApiError> {
    let mut obj = Some(object);
    let warnings = run(cluster, "mutatingwebhookconfigurations", true, attrs, &mut obj, old)?;
    Ok((obj.unwrap_or(Value::Null), warnings))
}

/// Validating admission.
pub fn validate(
    cluster: &Cluster,
    attrs: &Attributes<'_>,
    object: Option<&Value>,
    old: Option<&Value>,
) -> Result<Vec<String>, ApiError> {
    let mut obj = object.cloned();
    run(cluster, "validatingwebhookconfigurations", false, attrs, &mut obj, old)
}

/// Encodes a JSON patch the way webhooks send it (tests and the test app).
pub fn encode_patch(ops: &Value) -> String {
    base64_encode(ops.to_string().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::Catalog;

    #[test]
    fn rules_match_operations_groups_resources_and_scope() {
        let c = Catalog::new();
        let pods = c.get("", "v1", "pods").unwrap();
        let attrs = Attributes {
            rt: &pods,
            subresource: "",
            operation: "CREATE",
            namespace: Some("a"),
            name: "p",
            dry_run: false,
        };
        let rule = json!({"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]});
        assert!(rule_matches(&rule, &attrs));
        assert!(!rule_matches(
            &json!({"operations": ["UPDATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}),
            &attrs
        ));
        assert!(rule_matches(
            &json!({"operations": ["*"], "apiGroups": ["*"], "apiVersions": ["*"], "resources": ["*"], "scope": "Namespaced"}),
            &attrs
        ));
        assert!(!rule_matches(
            &json!({"operations": ["*"], "apiGroups": ["*"], "apiVersions": ["*"], "resources": ["*"], "scope": "Cluster"}),
            &attrs
        ));
        let status = Attributes {
            subresource: "status",
            ..attrs.clone()
        };
        assert!(!rule_matches(&rule, &status));
        assert!(rule_matches(
            &json!({"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods/status"]}),
            &status
        ));
        assert!(rule_matches(
            &json!({"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["*/*"]}),
            &status
        ));
    }

    #[test]
    fn denials_name_the_webhook() {
        let e = denial(
            "deny.example.com",
            &json!({"allowed": false, "status": {"message": "no", "code": 403}}),
        );
        assert_eq!(
            (e.code, e.message.as_str()),
            (403, "admission webhook \"deny.example.com\" denied the request: no")
        );
        let e = denial("x", &json!({"allowed": false}));
        assert_eq!(
            (e.code, e.message.as_str()),
            (400, "admission webhook \"x\" denied the request without explanation")
        );
    }

    #[test]
    fn review_bodies_are_admission_v1() {
        let c = Catalog::new();
        let pods = c.get("", "v1", "pods").unwrap();
        let attrs = Attributes {
            rt: &pods,
            subresource: "",
            operation: "CREATE",
            namespace: Some("a"),
            name: "p",
            dry_run: false,
        };
        let (uid, body) = review(&attrs, Some(&json!({"metadata": {"name": "p"}})), None);
        assert_eq!(body["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(body["request"]["uid"], uid);
        assert_eq!(body["request"]["resource"]["resource"], "pods");
        assert_eq!(body["request"]["namespace"], "a");
        assert!(body["request"]["oldObject"].is_null());
    }

    #[test]
    fn pem_bundles_split_into_certificates() {
        let id = crate::pki::ServingIdentity::generate().unwrap();
        let bundle = format!("{}{}", id.ca_pem, id.cert_pem);
        assert_eq!(pem_certs(&bundle).len(), 2);
    }
}
