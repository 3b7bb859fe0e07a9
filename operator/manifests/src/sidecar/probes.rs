//! The app's HTTP and TCP probes moved behind the proxy's health port, as Istio rewrites them
//! (so the kubelet's plaintext probes get past STRICT mTLS), the originals kept for the proxy to run.

use k8s_openapi::api::core::v1::{Container, ContainerPort, HTTPGetAction};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{Map, Value, json};

use super::{HEALTH_PORT, InjectError};

/// Moves each app container's HTTP/TCP probes behind the proxy's health
/// port; returns the originals keyed by their new path.
pub(super) fn rewrite_probes(containers: &mut [Container]) -> Result<Map<String, Value>, InjectError> {
    let mut originals = Map::new();
    for c in containers.iter_mut() {
        let ports = c.ports.clone().unwrap_or_default();
        for (kind, probe) in [
            ("readyz", &mut c.readiness_probe),
            ("livez", &mut c.liveness_probe),
            ("startupz", &mut c.startup_probe),
        ] {
            let Some(p) = probe.as_mut() else { continue };
            let target = if let Some(get) = &p.http_get {
                if get.scheme.as_deref().is_some_and(|s| !s.eq_ignore_ascii_case("HTTP")) {
                    // The proxy runs HTTP and TCP probes only: under STRICT mTLS, exclude an
                    // HTTPS probe's port with traffic.trellis.dev/excludeInboundPorts.
                    continue;
                }
                json!({
                    "httpGet": {
                        "path": get.path.clone().unwrap_or_else(|| "/".into()),
                        "port": resolve_port(&c.name, &get.port, &ports)?,
                        "scheme": get.scheme.clone().unwrap_or_else(|| "HTTP".into()),
                        "httpHeaders": get.http_headers.iter().flatten()
                            .map(|h| json!({"name": h.name, "value": h.value})).collect::<Vec<_>>(),
                    },
                    "timeoutSeconds": p.timeout_seconds.unwrap_or(1),
                })
            } else if let Some(tcp) = &p.tcp_socket {
                json!({
                    "tcpSocket": {"port": resolve_port(&c.name, &tcp.port, &ports)?},
                    "timeoutSeconds": p.timeout_seconds.unwrap_or(1),
                })
            } else {
                // exec and gRPC probes run where they are.
                continue;
            };
            let path = format!("/app-health/{}/{kind}", c.name);
            originals.insert(path.clone(), target);
            p.tcp_socket = None;
            p.http_get = Some(HTTPGetAction {
                path: Some(path),
                port: IntOrString::Int(i32::from(HEALTH_PORT)),
                scheme: Some("HTTP".into()),
                ..HTTPGetAction::default()
            });
        }
    }
    Ok(originals)
}

pub(super) fn resolve_port(container: &str, port: &IntOrString, ports: &[ContainerPort]) -> Result<i32, InjectError> {
    match port {
        IntOrString::Int(n) => Ok(*n),
        IntOrString::String(name) => ports
            .iter()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .map(|p| p.container_port)
            .ok_or_else(|| InjectError::ProbePort {
                container: container.into(),
                port: name.clone(),
            }),
    }
}
