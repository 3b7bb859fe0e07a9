//! What `meshctl routes` reports, computed from a [`Snapshot`] by the one compiler: for each
//! port of a service, the rules a proxy would run for it (its outbound part, compiled for the
//! `--from` workload, or for any workload of the service's namespace), each with the resource
//! and rule it came from ([`super::rules`]); each destination's cluster with the
//! DestinationRule whose policy it got, its endpoints and the inbound policy (mutual TLS mode,
//! AuthorizationPolicies) of their proxies, and their authorization verdict on the request (or
//! connection) from the source ([`super::destinations`], [`super::verdict`], by the proxy's own
//! evaluator); and, for a concrete request, the rule that takes it and why every rule before
//! it did not ([`super::explain`], by the proxy's own matcher,
//! [`trellis_contract::matching`]).

use std::collections::BTreeMap;

use crate::compile::{self, ClusterRef, DNS_DOMAIN, OutboundParts, Role};
use crate::registry::{ObjectKey, Service, Workload};
use crate::snapshot::Snapshot;
use anyhow::Context;
use serde::Serialize;
use trellis_contract::{Listener, Unrouted};

use super::destinations::{Destination, Inbound, destination};
use super::explain::{RequestReport, explain};
use super::request::RequestSpec;
use super::rules::{RouteReport, TcpRouteReport, protocol_name, route_clusters, route_reports, tcp_report};
use super::verdict::{Attempt, Sender};

/// The name of the stand-in proxy when no `--from` workload is given.
const ANY_WORKLOAD: &str = "meshctl-routes";

/// Everything `meshctl routes` reports.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// The service, `name.namespace`.
    pub service: String,
    /// The proxy the routes were compiled for (`namespace/pod`, or any workload of a namespace).
    pub from: String,
    /// One entry per port of the service.
    pub ports: Vec<PortReport>,
    /// What the compiler noticed while compiling these routes (dropped rules, missing subsets).
    pub diagnostics: Vec<String>,
}

/// The routes of one port.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PortReport {
    /// The port.
    pub port: u16,
    /// `http`, `http2`, `tcp`, `tls` or `auto` (sniffed: HTTP rules and a TCP route).
    pub protocol: String,
    /// The HTTP rules in force, in the order the proxy tries them.
    pub routes: Vec<RouteReport>,
    /// The TCP (and TLS by SNI) routes, for non-HTTP ports.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tcp_routes: Vec<TcpRouteReport>,
    /// The destinations the routes send to.
    pub destinations: Vec<Destination>,
    /// The request explained, when one was given (ports with HTTP rules).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request: Option<RequestReport>,
    /// Why the proxy holds no route for the port, and what it does with the traffic instead:
    /// the Sidecar that applies to it does not import the service on the port, or the Service
    /// is not exported to its namespace. The report then has no routes: the proxy has none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_held: Option<String>,
}

/// Find the service `name[.namespace]` (or its FQDN), in `default_ns` when not qualified.
pub fn find_service<'a>(snapshot: &'a Snapshot, target: &str, default_ns: &str) -> anyhow::Result<&'a Service> {
    let target = target
        .strip_suffix(&format!(".svc.{DNS_DOMAIN}"))
        .or_else(|| target.strip_suffix(".svc"))
        .unwrap_or(target);
    let (name, ns) = target.split_once('.').unwrap_or((target, default_ns));
    snapshot
        .registry
        .services
        .get(&ObjectKey::new(ns, name))
        .with_context(|| {
            let known: Vec<&str> = snapshot
                .registry
                .services
                .keys()
                .filter(|k| k.namespace == ns)
                .map(|k| k.name.as_str())
                .collect();
            format!(
                "no Service {ns}/{name}; Services in namespace {ns}: {}",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            )
        })
}

/// The pod `--from` names: `[namespace/]pod`, or a workload (its pods' `app` label or the
/// Deployment name their names start with), in `default_ns` unless qualified. A workload's
/// first pod stands for all: they share their outbound routes unless `sourceLabels` tell
/// them apart.
pub fn find_workload<'a>(snapshot: &'a Snapshot, from: &str, default_ns: &str) -> anyhow::Result<&'a Workload> {
    let (ns, name) = from.split_once('/').unwrap_or((default_ns, from));
    let workloads = &snapshot.registry.workloads;
    if let Some(w) = workloads.get(&ObjectKey::new(ns, name)) {
        return Ok(w);
    }
    let in_ns: Vec<&Workload> = workloads.values().filter(|w| w.key.namespace == ns).collect();
    in_ns
        .iter()
        .find(|w| {
            w.labels.get("app").map(String::as_str) == Some(name)
                || w.key.name.strip_prefix(name).is_some_and(|rest| rest.starts_with('-'))
        })
        .copied()
        .with_context(|| {
            let pods: Vec<&str> = in_ns.iter().map(|w| w.key.name.as_str()).collect();
            format!(
                "--from {from}: no pod or workload {name} in namespace {ns}; pods there: {}",
                if pods.is_empty() {
                    "none".to_string()
                } else {
                    pods.join(", ")
                }
            )
        })
}

/// Compile and explain the routes of `svc` for traffic from `from` (none: a workload of the
/// service's namespace without labels).
pub fn report(
    snapshot: &Snapshot,
    svc: &Service,
    from: Option<&ObjectKey>,
    request: Option<&RequestSpec>,
) -> anyhow::Result<Report> {
    // The compiler compiles for a pod: a stand-in when no workload is named.
    let owned;
    let (snapshot, pod) = match from {
        Some(key) => (snapshot, key.clone()),
        None => {
            let mut s = snapshot.clone();
            let key = ObjectKey::new(svc.key.namespace.clone(), ANY_WORKLOAD);
            s.registry.workloads.insert(
                key.clone(),
                Workload {
                    key: key.clone(),
                    ip: None,
                    labels: BTreeMap::new(),
                    service_account: "default".into(),
                    ready: true,
                    meshed: true,
                    named_ports: BTreeMap::new(),
                },
            );
            owned = s;
            (&owned, key)
        }
    };
    let mut parts = OutboundParts::new(snapshot, &pod)?;
    let mut inbound = Inbound::default();
    let sender = {
        let own = compile::compile_workload(snapshot, &pod, Role::Sidecar, "meshctl")?;
        let w = snapshot.registry.workloads.get(&pod);
        Sender::new(
            own.config.identity.spiffe_id,
            w.and_then(|w| w.ip.as_deref()),
            w.is_some_and(|w| w.meshed),
        )
    };
    let fqdn = svc.fqdn(DNS_DOMAIN);
    // The ports the proxy holds routes for (its Sidecar's and the Service's exportTo), each
    // with the protocol it is routed as: what the operator compiles for it.
    let held = parts.service_ports(svc);
    let mut ports = Vec::new();
    for declared in &svc.ports {
        let Some(p) = held.iter().find(|h| h.port == declared.port) else {
            ports.push(PortReport {
                port: declared.port,
                protocol: protocol_name(declared.protocol).to_string(),
                routes: Vec::new(),
                tcp_routes: Vec::new(),
                destinations: Vec::new(),
                request: None,
                not_held: Some(not_held(svc, declared.port, &pod, &parts.shell())),
            });
            continue;
        };
        let compiled = parts.port_routes(svc, p);
        let routes = compiled.virtual_host.as_ref().map(route_reports).unwrap_or_default();
        let mut used: Vec<String> = routes.iter().flat_map(|r| route_clusters(&r.route)).collect();
        used.extend(
            compiled
                .tcp_routes
                .iter()
                .flat_map(|t| t.destinations())
                .map(|(c, _)| c.to_string()),
        );
        let mut destinations = Vec::new();
        let mut refs: Vec<&ClusterRef> = Vec::new();
        for r in &compiled.refs {
            if used.contains(&r.name()) && !refs.contains(&r) {
                refs.push(r);
            }
        }
        // What the destinations' proxies are asked to let through: the request on an HTTP
        // port, the connection on a TCP one.
        let attempt = match (request, compiled.virtual_host.is_some()) {
            (Some(spec), true) => Some(Attempt::Request { spec, host: &fqdn }),
            (_, false) => Some(Attempt::Connection),
            (None, true) => None,
        };
        for r in refs {
            let cluster = parts.cluster(r);
            let asked = attempt.map(|a| (a, &sender));
            destinations.push(destination(snapshot, &cluster, &mut inbound, asked)?);
        }
        let explained = match request {
            Some(req) if compiled.virtual_host.is_some() => Some(explain(&routes, req, &fqdn, p.port)?),
            _ => None,
        };
        ports.push(PortReport {
            port: p.port,
            protocol: protocol_name(p.protocol).to_string(),
            routes,
            tcp_routes: compiled.tcp_routes.iter().map(tcp_report).collect(),
            destinations,
            request: explained,
            not_held: None,
        });
    }
    Ok(Report {
        service: format!("{}.{}", svc.key.name, svc.key.namespace),
        from: match from {
            Some(k) => k.to_string(),
            None => format!("any workload in {}", svc.key.namespace),
        },
        ports,
        diagnostics: parts.diagnostics().iter().map(ToString::to_string).collect(),
    })
}

/// Why the proxy in `pod` holds no route for `port` of `svc`, and what its outbound listener
/// (`shell`) does with the traffic instead.
fn not_held(svc: &Service, port: u16, pod: &ObjectKey, shell: &Listener) -> String {
    let fqdn = svc.fqdn(DNS_DOMAIN);
    let why = if !svc.visible_from(&pod.namespace) {
        format!(
            "Service {} is not exported to namespace {} ({}: {:?})",
            svc.key,
            pod.namespace,
            svc.export_to_annotation,
            svc.export_to.join(",")
        )
    } else {
        match &shell.scope {
            Some(p) => format!(
                "Sidecar {}/{} does not import {fqdn} on port {port}",
                p.namespace, p.name
            ),
            None => format!("the proxy's scope leaves {fqdn}:{port} out"),
        }
    };
    let instead = match shell.unrouted {
        Unrouted::Passthrough => {
            "its traffic is passed through to the address it was sent to (outboundTrafficPolicy ALLOW_ANY), outside these routes"
        }
        Unrouted::BlackHole => "its traffic is refused (outboundTrafficPolicy REGISTRY_ONLY: HTTP 502, TCP reset)",
        Unrouted::NotFound => "its traffic gets no route (HTTP 404, TCP closed)",
    };
    format!("the proxy holds no route for this port: {why}; {instead}")
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// payment (v1, v2 subsets; v2 canary by header, else 90/10), web calling it, a
    /// PeerAuthentication STRICT and an AuthorizationPolicy on payment, and a rule only web's
    /// proxy gets (`sourceLabels`).
    pub(crate) const SHOP: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: payment, namespace: shop}
spec: {clusterIP: 10.96.0.10, selector: {app: payment}, ports: [{name: http, port: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: shop}
spec: {clusterIP: 10.96.0.11, selector: {app: db}, ports: [{name: tcp-db, port: 5432}]}
---
apiVersion: v1
kind: Pod
metadata: {name: payment-v1-a, namespace: shop, labels: {app: payment, version: v1}}
spec: {containers: [{name: app, image: app}, {name: trellis-proxy, image: proxy}]}
status: {podIP: 10.244.0.11, conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: payment-v2-b, namespace: shop, labels: {app: payment, version: v2}}
spec: {containers: [{name: app, image: app}, {name: trellis-proxy, image: proxy}]}
status: {podIP: 10.244.0.12, conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web-7f9-c, namespace: shop, labels: {app: web}}
spec: {containers: [{name: app, image: app}, {name: trellis-proxy, image: proxy}]}
status: {podIP: 10.244.0.13, conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: cli-1, namespace: other, labels: {app: cli}}
spec: {containers: [{name: app, image: app}, {name: trellis-proxy, image: proxy}]}
status: {podIP: 10.244.0.14, conditions: [{type: Ready, status: "True"}]}
---
apiVersion: networking.trellis.dev/v1alpha1
kind: VirtualService
metadata: {name: payment, namespace: shop}
spec:
  hosts: [payment]
  http:
  - name: web-only
    match: [{sourceLabels: {app: web}, uri: {prefix: /internal}}]
    route: [{destination: {host: payment, subset: v1}}]
  - name: canary
    match: [{headers: {x-canary: {exact: "true"}}}, {queryParams: {canary: {exact: "1"}}}]
    route: [{destination: {host: payment, subset: v2}}]
  - name: split
    route:
    - {destination: {host: payment, subset: v1}, weight: 90}
    - {destination: {host: payment, subset: v2}, weight: 10}
---
apiVersion: networking.trellis.dev/v1alpha1
kind: DestinationRule
metadata: {name: payment, namespace: shop}
spec:
  host: payment
  trafficPolicy: {loadBalancer: {simple: LEAST_REQUEST}}
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: security.trellis.dev/v1alpha1
kind: PeerAuthentication
metadata: {name: strict, namespace: shop}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: payment-callers, namespace: shop}
spec:
  selector: {matchLabels: {app: payment}}
  action: ALLOW
  rules: [{from: [{source: {namespaces: [shop]}}]}]
"#;

    pub(crate) fn shop() -> Snapshot {
        Snapshot::from_yaml(SHOP).unwrap()
    }

    pub(crate) fn payment_report(from: Option<&str>, request: Option<&str>) -> Report {
        let s = shop();
        let svc = find_service(&s, "payment.shop", "default").unwrap();
        let from = from.map(|f| find_workload(&s, f, "shop").unwrap().key.clone());
        let request = request.map(|r| RequestSpec::parse(r).unwrap());
        report(&s, svc, from.as_ref(), request.as_ref()).unwrap()
    }

    #[test]
    fn routes_in_order_with_their_origin() {
        let r = payment_report(Some("web"), None);
        assert_eq!(r.from, "shop/web-7f9-c");
        let port = &r.ports[0];
        assert_eq!((port.port, port.protocol.as_str()), (8080, "http"));
        let rows: Vec<(Option<&str>, &str, &str)> = port
            .routes
            .iter()
            .map(|r| (r.name.as_deref(), r.from.as_str(), r.action.as_str()))
            .collect();
        assert_eq!(
            rows,
            [
                (
                    Some("web-only"),
                    "VirtualService shop/payment http[0]",
                    "payment.shop:8080 v1 100%; 2 retries"
                ),
                (
                    Some("canary"),
                    "VirtualService shop/payment http[1]",
                    "payment.shop:8080 v2 100%; 2 retries"
                ),
                (
                    Some("split"),
                    "VirtualService shop/payment http[2]",
                    "payment.shop:8080 v1 90%, payment.shop:8080 v2 10%; 2 retries"
                ),
            ]
        );
        assert_eq!(
            port.routes[1].matches,
            ["header x-canary = \"true\"", "query canary = \"1\""]
        );
    }

    #[test]
    fn source_labels_decide_which_rules_a_workload_gets() {
        let any = payment_report(None, None);
        assert_eq!(any.from, "any workload in shop");
        let names: Vec<_> = any.ports[0].routes.iter().map(|r| r.name.as_deref()).collect();
        assert_eq!(names, [Some("canary"), Some("split")]);
    }

    #[test]
    fn tcp_ports_show_their_tcp_route() {
        let s = shop();
        let svc = find_service(&s, "db.shop.svc.cluster.local", "default").unwrap();
        let r = report(&s, svc, None, None).unwrap();
        let port = &r.ports[0];
        assert_eq!(port.protocol, "tcp");
        assert!(port.routes.is_empty());
        assert_eq!(port.tcp_routes.len(), 1);
        assert_eq!(port.tcp_routes[0].action, "db.shop:5432 100%");
        assert_eq!(port.destinations[0].cluster, "outbound|5432||db.shop.svc.cluster.local");
    }

    #[test]
    fn unknown_services_and_workloads_name_what_exists() {
        let s = shop();
        let e = find_service(&s, "pay.shop", "default").unwrap_err().to_string();
        assert_eq!(e, "no Service shop/pay; Services in namespace shop: db, payment");
        let e = find_workload(&s, "cart", "shop").unwrap_err().to_string();
        assert!(
            e.contains("no pod or workload cart in namespace shop; pods there: payment-v1-a"),
            "{e}"
        );
        assert_eq!(
            find_workload(&s, "shop/payment-v2-b", "x").unwrap().key.name,
            "payment-v2-b"
        );
    }
}
