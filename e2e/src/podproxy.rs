//! The API server's proxy to pods and services
//! (`/api/v1/namespaces/{ns}/pods/{name}[:port]/proxy/{path}` and
//! `.../services/{[scheme:]name[:port]}/proxy/{path}`), as
//! `kubectl get --raw` and Prometheus federation use it: plain HTTP/1.1
//! to the pod (or the Service's ClusterIP) from the node's network
//! namespace, the answer relayed.
//!
//! # Guarantees
//! - The caller's `Authorization` header never reaches the pod.
//! - Answers are bounded (16 MiB) and the whole exchange has a deadline (30 s).
//! - A pod without an address, an unknown port name or a refused connection
//!   is a `503 ServiceUnavailable` naming the pod and port, as the real API
//!   server answers.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, Request, Response, header};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::Value;

use crate::cluster::Cluster;
use crate::status::ApiError;

/// Largest answer relayed.
const MAX_ANSWER: usize = 16 << 20;
/// Deadline of one proxied exchange.
const DEADLINE: Duration = Duration::from_secs(30);

/// What a proxy URL names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub namespace: String,
    /// `pods` or `services`.
    pub plural: String,
    pub name: String,
    /// A port number or name; `None` = the default.
    pub port: Option<String>,
    /// The path on the pod, always starting with `/`.
    pub path: String,
}

/// Parses a proxy URL path; `None` when it is not one.
pub fn target(path: &str) -> Option<Target> {
    let rest = path.strip_prefix("/api/v1/namespaces/")?;
    let mut parts = rest.splitn(4, '/');
    let namespace = parts.next()?.to_string();
    let plural = parts.next()?.to_string();
    if plural != "pods" && plural != "services" {
        return None;
    }
    let name_port = parts.next()?;
    let tail = parts.next()?;
    let path = match tail.strip_prefix("proxy") {
        Some("") => "/".to_string(),
        Some(p) if p.starts_with('/') => p.to_string(),
        _ => return None,
    };
    // `[scheme:]name[:port]`; only http is spoken.
    let fields: Vec<&str> = name_port.split(':').collect();
    let (name, port) = match fields.as_slice() {
        [name] => (*name, None),
        ["http", name] if plural == "services" => (*name, None),
        ["http", name, port] if plural == "services" => (*name, Some(*port)),
        [name, port] => (*name, Some(*port)),
        _ => return None,
    };
    Some(Target {
        namespace,
        plural,
        name: name.to_string(),
        port: port.filter(|p| !p.is_empty()).map(str::to_string),
        path,
    })
}

fn unavailable(message: String) -> ApiError {
    ApiError {
        code: 503,
        reason: "ServiceUnavailable",
        message,
        details: None,
    }
}

fn not_found(kind: &str, t: &Target) -> ApiError {
    ApiError {
        code: 404,
        reason: "NotFound",
        message: format!("{kind} \"{}\" not found", t.name),
        details: None,
    }
}

/// Where to connect for a target: the pod's IP and port, or the
/// Service's ClusterIP and port.
fn address(cluster: &Cluster, t: &Target) -> Result<SocketAddr, ApiError> {
    let object = crate::runner::env::get_core(cluster, &t.plural, &t.namespace, &t.name)
        .ok_or_else(|| not_found(&t.plural, t))?;
    if t.plural == "pods" {
        let ip: IpAddr = object["status"]["podIP"]
            .as_str()
            .and_then(|ip| ip.parse().ok())
            .ok_or_else(|| unavailable(format!("pod {}/{} has no IP address yet", t.namespace, t.name)))?;
        let port = match &t.port {
            None => 80,
            Some(p) => match p.parse::<u16>() {
                Ok(n) => n,
                Err(_) => named_container_port(&object, p).ok_or_else(|| {
                    unavailable(format!(
                        "pod {}/{} has no container port named {p:?}; use a number or one of its port names",
                        t.namespace, t.name
                    ))
                })?,
            },
        };
        Ok(SocketAddr::new(ip, port))
    } else {
        let ip: IpAddr = object["spec"]["clusterIP"]
            .as_str()
            .and_then(|ip| ip.parse().ok())
            .ok_or_else(|| {
                unavailable(format!(
                    "service {}/{} has no cluster IP (headless?)",
                    t.namespace, t.name
                ))
            })?;
        let ports = object["spec"]["ports"].as_array().cloned().unwrap_or_default();
        let port = match &t.port {
            None => ports.first().and_then(|p| p["port"].as_u64()),
            Some(p) => ports
                .iter()
                .find(|sp| {
                    sp["name"].as_str() == Some(p.as_str())
                        || sp["port"].as_u64().map(|n| n.to_string()).as_deref() == Some(p)
                })
                .and_then(|sp| sp["port"].as_u64()),
        }
        .and_then(|n| u16::try_from(n).ok())
        .ok_or_else(|| unavailable(format!("service {}/{} has no port {:?}", t.namespace, t.name, t.port)))?;
        Ok(SocketAddr::new(ip, port))
    }
}

fn named_container_port(pod: &Value, name: &str) -> Option<u16> {
    let containers = pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(pod["spec"]["initContainers"].as_array().into_iter().flatten());
    containers
        .flat_map(|c| c["ports"].as_array().into_iter().flatten())
        .find(|p| p["name"].as_str() == Some(name))
        .and_then(|p| p["containerPort"].as_u64())
        .and_then(|n| u16::try_from(n).ok())
}

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
    "trailer",
];

fn relayable(name: &HeaderName) -> bool {
    !HOP_BY_HOP.contains(&name.as_str()) && name != header::AUTHORIZATION && name != header::HOST
}

/// Relays one request to the target; the answer, or the API error.
pub async fn relay(cluster: &Cluster, req: Request<Incoming>, t: &Target) -> Result<Response<Bytes>, ApiError> {
    let addr = address(cluster, t)?;
    let what = format!("{} {}/{} port {}", t.plural, t.namespace, t.name, addr.port());
    let (parts, body) = req.into_parts();
    let body = Limited::new(body, MAX_ANSWER)
        .collect()
        .await
        .map_err(|e| ApiError::bad_request(format!("reading the request body: {e}")))?
        .to_bytes();
    let path_and_query = match parts.uri.query() {
        Some(q) => format!("{}?{q}", t.path),
        None => t.path.clone(),
    };
    let mut out = Request::builder()
        .method(parts.method.clone())
        .uri(path_and_query)
        .header(header::HOST, addr.to_string());
    for (name, value) in parts.headers.iter().filter(|(n, _)| relayable(n)) {
        out = out.header(name, value);
    }
    let out = out
        .body(Full::new(body))
        .map_err(|e| ApiError::bad_request(format!("cannot relay the request: {e}")))?;
    let exchange = async {
        let stream = match cluster.node_netns.get() {
            Some(node) => crate::network::netns::connect(node, addr).await,
            None => tokio::net::TcpStream::connect(addr).await,
        }
        .map_err(|e| unavailable(format!("error trying to reach {what}: {e}")))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unavailable(format!("error trying to reach {what}: {e}")))?;
        tokio::spawn(conn);
        let answer = sender
            .send_request(out)
            .await
            .map_err(|e| unavailable(format!("error trying to reach {what}: {e}")))?;
        let (parts, body) = answer.into_parts();
        let body = Limited::new(body, MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| unavailable(format!("reading the answer of {what}: {e}")))?
            .to_bytes();
        let mut response = Response::new(body);
        *response.status_mut() = parts.status;
        for (name, value) in parts.headers.iter().filter(|(n, _)| relayable(n)) {
            response.headers_mut().append(name, value.clone());
        }
        Ok(response)
    };
    tokio::time::timeout(DEADLINE, exchange)
        .await
        .map_err(|_| unavailable(format!("{what} did not answer within {DEADLINE:?}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pod_and_service_proxy_paths() {
        assert_eq!(
            target("/api/v1/namespaces/shop/pods/web-1:15020/proxy/metrics"),
            Some(Target {
                namespace: "shop".into(),
                plural: "pods".into(),
                name: "web-1".into(),
                port: Some("15020".into()),
                path: "/metrics".into(),
            })
        );
        let svc = target("/api/v1/namespaces/o/services/http:collector:4318/proxy").unwrap();
        assert_eq!(
            (svc.name.as_str(), svc.port.as_deref(), svc.path.as_str()),
            ("collector", Some("4318"), "/")
        );
        let default_port = target("/api/v1/namespaces/o/pods/p/proxy/").unwrap();
        assert_eq!((default_port.port, default_port.path.as_str()), (None, "/"));
        assert_eq!(target("/api/v1/namespaces/o/pods/p/log"), None);
        assert_eq!(target("/api/v1/namespaces/o/configmaps/p/proxy"), None);
        assert_eq!(target("/api/v1/namespaces/o/pods/https:p:1/proxy"), None);
        assert_eq!(target("/api/v1/namespaces/o/pods/p/proxyx"), None);
    }

    #[test]
    fn never_relays_credentials_or_hop_by_hop_headers() {
        assert!(!relayable(&header::AUTHORIZATION));
        assert!(!relayable(&HeaderName::from_static("connection")));
        assert!(relayable(&header::ACCEPT));
    }
}
