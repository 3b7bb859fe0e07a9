//! Services, pods and namespaces: port names the protocol cannot be read from (`IST0118`),
//! exportTo annotations with values that are no namespace (`IST0125`),
//! gateway ports their Service does not expose (`IST0162`), namespaces not injected
//! (`IST0102`), pods without the proxy where injection is on (`IST0103`), and applications
//! running as the proxy's UID (`IST0144`).

use trellis_api::mesh::{INJECTION_DISABLED, INJECTION_ENABLED, INJECTION_LABEL};
use trellis_api::validation::export_to_problems;

use super::{Facts, PROXY_UID, Raw, key_of};
use crate::code::Code;
use crate::registry::{EXPORT_TO_ANNOTATION, ISTIO_EXPORT_TO_ANNOTATION, ObjectKey, Protocol, TargetPort, selects};
use crate::snapshot::InputKind;

/// Namespaces of the platform, not of applications: never expected in the mesh.
const KUBERNETES: &[&str] = &["kube-system", "kube-public", "kube-node-lease"];

/// Whether `namespace` is Kubernetes' own or the control plane's (the snapshot's root
/// namespace, where the operator runs).
fn system(f: &Facts<'_>, namespace: &str) -> bool {
    KUBERNETES.contains(&namespace) || namespace == f.snapshot.root_namespace
}

pub(super) fn check(f: &Facts<'_>, out: &mut Vec<Raw>) {
    ports(f, out);
    export_to(f, out);
    gateway_ports(f, out);
    injection(f, out);
}

fn ports(f: &Facts<'_>, out: &mut Vec<Raw>) {
    for svc in f.snapshot.registry.services.values() {
        if system(f, &svc.key.namespace) {
            continue;
        }
        for (i, p) in svc.ports.iter().enumerate() {
            if p.protocol != Protocol::Auto {
                continue;
            }
            let target = match &p.target_port {
                TargetPort::Number(n) => n.to_string(),
                TargetPort::Named(n) => n.clone(),
            };
            out.push(Raw::new(
                Code::PortNameIsNotUnderNamingConvention,
                "Service",
                svc.key.clone(),
                format!("spec.ports[{i}]"),
                format!("Port name {} (port: {}, targetPort: {target}) doesn't follow the naming convention of Trellis port: the proxy sniffs the protocol. Name it <protocol>[-suffix] (http, http2, grpc, tcp, tls, https) or set appProtocol", p.name.as_deref().unwrap_or("(none)"), p.port),
            ));
        }
    }
}

/// A Service's exportTo annotation, checked by the rules of a resource's `exportTo` (the one
/// validator's). An entry that is no namespace matches none, so the Service is hidden from
/// the namespaces the user meant.
fn export_to(f: &Facts<'_>, out: &mut Vec<Raw>) {
    for svc in f.snapshot.registry.services.values() {
        for (i, why) in export_to_problems(&svc.export_to) {
            out.push(Raw::new(
                Code::InvalidAnnotation,
                "Service",
                svc.key.clone(),
                format!("metadata.annotations[{}]", svc.export_to_annotation),
                format!(
                    "{}: {:?}: entry {} {:?}: {why}",
                    svc.export_to_annotation,
                    svc.export_to.join(","),
                    i + 1,
                    svc.export_to[i]
                ),
            ));
        }
        if let Some(istio) = &svc.ignored_istio_export_to {
            out.push(Raw::new(
                Code::InvalidAnnotation,
                "Service",
                svc.key.clone(),
                format!("metadata.annotations[{ISTIO_EXPORT_TO_ANNOTATION}]"),
                format!(
                    "{ISTIO_EXPORT_TO_ANNOTATION}: {istio:?} is ignored: {EXPORT_TO_ANNOTATION}: {:?} is set too and wins. Remove one of them, or give both the same value",
                    svc.export_to.join(","),
                ),
            ));
        }
    }
}

fn gateway_ports(f: &Facts<'_>, out: &mut Vec<Raw>) {
    if !f.knows(InputKind::Pod) || !f.knows(InputKind::Service) {
        return;
    }
    let registry = &f.snapshot.registry;
    for gw in &f.snapshot.gateways {
        let key = key_of(&gw.metadata);
        let pods: Vec<&super::Pod> = f
            .pods
            .iter()
            .filter(|p| gw.spec.selector.as_ref().is_none_or(|s| selects(s, &p.labels)))
            .collect();
        // The pod ports the Services in front of the gateway pods forward to.
        let mut targets: Vec<u16> = Vec::new();
        let mut fronted = false;
        for svc in registry.services.values() {
            let Some(sel) = &svc.selector else { continue };
            for pod in pods
                .iter()
                .filter(|p| p.key.namespace == svc.key.namespace && selects(sel, &p.labels))
            {
                fronted = true;
                for sp in &svc.ports {
                    match &sp.target_port {
                        TargetPort::Number(n) => targets.push(*n),
                        TargetPort::Named(name) => {
                            if let Some(n) = registry.workloads.get(&pod.key).and_then(|w| w.named_ports.get(name)) {
                                targets.push(*n);
                            }
                        }
                    }
                }
            }
        }
        if !fronted {
            continue;
        }
        for (i, server) in gw.spec.servers.iter().enumerate() {
            let listen = server.port.target_port.unwrap_or(server.port.number);
            if !targets.iter().any(|t| u32::from(*t) == listen) {
                let selector: Vec<String> = gw
                    .spec
                    .selector
                    .iter()
                    .flatten()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                out.push(Raw::new(
                    Code::GatewayPortNotDefinedOnService,
                    "Gateway",
                    key.clone(),
                    format!("spec.servers[{i}].port"),
                    format!("The gateway is listening on a target port (port {listen}) that is not defined in the Service associated with its workload instances (Pod selector {}). If you need to access the gateway port through the gateway Service, it will not be available: add the port to that Service", selector.join(",")),
                ));
            }
        }
    }
}

fn injection(f: &Facts<'_>, out: &mut Vec<Raw>) {
    let namespaces = &f.snapshot.registry.namespaces;
    for (ns, labels) in namespaces {
        if system(f, ns) {
            continue;
        }
        if !matches!(
            labels.get(INJECTION_LABEL).map(String::as_str),
            Some(INJECTION_ENABLED | INJECTION_DISABLED)
        ) {
            out.push(Raw::new(
                Code::NamespaceNotInjected,
                "Namespace",
                ObjectKey::new("", ns.clone()),
                "metadata.labels",
                format!("The namespace is not enabled for Trellis injection. Run 'kubectl label namespace {ns} {INJECTION_LABEL}={INJECTION_ENABLED}' to enable it, or 'kubectl label namespace {ns} {INJECTION_LABEL}={INJECTION_DISABLED}' to explicitly mark it as not needing injection."),
            ));
        }
    }
    for pod in &f.pods {
        let ns_on = namespaces
            .get(&pod.key.namespace)
            .and_then(|l| l.get(INJECTION_LABEL))
            .is_some_and(|v| v == INJECTION_ENABLED);
        let pod_label = pod.labels.get(INJECTION_LABEL).map(String::as_str);
        let wanted = (ns_on && pod_label != Some(INJECTION_DISABLED)) || pod_label == Some(INJECTION_ENABLED);
        if wanted && !pod.meshed && !system(f, &pod.key.namespace) {
            out.push(Raw::new(
                Code::PodMissingProxy,
                "Pod",
                pod.key.clone(),
                "spec.containers",
                format!("The pod {} is missing the Trellis proxy although injection is on for it. This can often be resolved by restarting or redeploying the workload (kubectl rollout restart).", pod.key.name),
            ));
        }
        for c in &pod.uid_1337 {
            out.push(Raw::new(
                Code::InvalidApplicationUID,
                "Pod",
                pod.key.clone(),
                "spec",
                format!("User ID (UID) {PROXY_UID} is reserved for the sidecar proxy: container {c} runs as it, so its traffic bypasses the proxy. Run it as another user (securityContext.runAsUser)"),
            ));
        }
    }
}
