//! A gateway proxy's listeners: one per port of the Gateway servers that select it, as
//! Istio builds them.
//!
//! - HTTP servers, and HTTPS servers that terminate TLS (SIMPLE, MUTUAL, OPTIONAL_MUTUAL,
//!   ISTIO_MUTUAL), with the HTTP rules of the VirtualServices bound to them.
//! - TCP servers (and MONGO, REDIS, ...) and TLS servers that terminate TLS, with the first
//!   `tcp` rule of the bound VirtualServices whose hosts meet the server's; terminated
//!   servers sharing a port are told apart by the SNI the client sent.
//! - PASSTHROUGH servers (TLS or HTTPS): the `tls` rules of the bound VirtualServices route
//!   by the ClientHello's SNI — names the server's `hosts` accept —, untouched; then their
//!   `tcp` rules take the server's other names (where Istio ignores them).
//! - AUTO_PASSTHROUGH servers: every Service (and DestinationRule subset) the server's
//!   hosts cover, by Istio's SNI `outbound_.PORT_.SUBSET_.HOST`, to the endpoints as they
//!   are: the client's mesh mTLS is terminated by the destination's proxy.
//!
//! Passthrough and terminating servers may share a port: the SNI decides before any
//! termination. Plaintext HTTP, plaintext TCP and TLS cannot.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use trellis_api::networking::{Gateway, Server, ServerTlsMode as ApiTlsMode, VirtualService};
use trellis_contract::{
    Cluster, HttpLimits, Listener, ListenerDirection, ListenerProtocol, PathNormalization, Provenance, Redirect, Route,
    RouteAction, RuleSection, SniTls, TcpRoute, TcpWeightedCluster, Unrouted, VirtualHost,
};

use super::outbound::{L4Scope, route_to, rule_provenance, weighted_destinations};
use super::route::{ClusterRef, RouteScope};
use super::virtual_services::{bound, merged_routes, virtual_services_for};
use super::{Code, Ctx, cluster, host_matches, resource};
use crate::registry::selects;

mod passthrough;
mod tls;

use passthrough::{auto_passthrough, tls_rules};
use tls::{server_tls, terminate};

/// The gateways whose selector matches the proxy, oldest first.
fn gateways_for<'a>(ctx: &Ctx<'a>) -> Vec<&'a Gateway> {
    let mut out: Vec<&Gateway> = ctx
        .snapshot
        .gateways
        .iter()
        .filter(|g| g.spec.selector.as_ref().is_none_or(|s| selects(s, &ctx.proxy.labels)))
        .collect();
    out.sort_by_key(|g| {
        (
            g.metadata.creation_timestamp.as_ref().map(|t| t.0),
            g.metadata.namespace.clone(),
            g.metadata.name.clone(),
        )
    });
    out
}

/// How a server carries its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Carriage {
    /// HTTP, plaintext or with TLS terminated.
    Http,
    /// Opaque TCP, plaintext or with TLS terminated.
    Tcp,
    /// TLS passed through by the SNI of `tls` rules.
    Passthrough,
    /// TLS passed through by Istio's `outbound_.PORT_.SUBSET_.HOST` SNI.
    AutoPassthrough,
}

fn carriage(server: &Server, proto: &str) -> Carriage {
    let mode = server.tls.as_ref().map(|t| t.effective_mode());
    match (proto, mode) {
        ("HTTPS" | "TLS", Some(ApiTlsMode::Passthrough)) => Carriage::Passthrough,
        ("HTTPS" | "TLS", Some(ApiTlsMode::AutoPassthrough)) => Carriage::AutoPassthrough,
        ("HTTP" | "HTTPS" | "HTTP2" | "GRPC" | "GRPC-WEB", _) => Carriage::Http,
        _ => Carriage::Tcp,
    }
}

/// What a port carries: one kind per port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PortKind {
    PlainHttp,
    PlainTcp,
    Tls,
}

/// A port being built.
pub(super) struct PortState {
    kind: PortKind,
    listener: Listener,
    /// TLS settings chosen by SNI (several terminating servers).
    sni: Vec<SniTls>,
    /// Routes by SNI taken before any other (`tls` rules, AUTO_PASSTHROUGH).
    sni_routes: Vec<TcpRoute>,
    /// The other TCP routes, in server order.
    tail_routes: Vec<TcpRoute>,
    /// Server names passed through, each by its first route.
    passed: BTreeSet<String>,
    /// Whether an HTTP(S) server is on the port.
    http: bool,
}

/// A gateway proxy's listeners: one per port of the Gateway servers that select it.
pub(crate) fn gateway_listeners(ctx: &mut Ctx<'_>, clusters: &mut BTreeMap<String, Cluster>) -> Vec<Listener> {
    let mut ports: BTreeMap<u16, PortState> = BTreeMap::new();
    let mut refs = Vec::new();
    let mut auto: Vec<Cluster> = Vec::new();
    for gw in gateways_for(ctx) {
        let gw_ns = gw.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        let gw_name = format!("{gw_ns}/{}", gw.metadata.name.as_deref().unwrap_or_default());
        let res = resource("Gateway", &gw.metadata);
        for server in &gw.spec.servers {
            let Ok(listen_port) = u16::try_from(server.port.target_port.unwrap_or(server.port.number)) else {
                continue;
            };
            let proto = server.port.protocol.to_ascii_uppercase();
            let how = carriage(server, &proto);
            let tls = match how {
                Carriage::Passthrough | Carriage::AutoPassthrough => None,
                Carriage::Http | Carriage::Tcp => match server_tls(ctx, &res, server, &proto) {
                    Ok(t) => t,
                    Err(()) => continue,
                },
            };
            let kind = match (how, &tls) {
                (Carriage::Http, None) => PortKind::PlainHttp,
                (Carriage::Tcp, None) => PortKind::PlainTcp,
                _ => PortKind::Tls,
            };
            let port = ports.entry(listen_port).or_insert_with(|| PortState {
                kind,
                listener: listener_shell(listen_port, kind),
                sni: Vec::new(),
                sni_routes: Vec::new(),
                tail_routes: Vec::new(),
                passed: BTreeSet::new(),
                http: false,
            });
            if port.kind != kind {
                ctx.diag(
                    Code::GatewayPortProtocolConflict,
                    &res,
                    format!("port {listen_port}: plaintext HTTP, plaintext TCP and TLS servers cannot share a port; server port {} ({proto}) is dropped", server.port.number),
                );
                continue;
            }
            port.http |= how == Carriage::Http;
            if let Some(tls) = &tls {
                terminate(ctx, &res, server, &gw_ns, listen_port, tls, port);
            }
            let server_port = u16::try_from(server.port.number).unwrap_or(0);
            let site = Site {
                gw_name: &gw_name,
                gw_ns: &gw_ns,
                server,
                server_port,
                ip: ctx.proxy.ip.as_deref().and_then(|ip| ip.parse().ok()),
            };
            match how {
                Carriage::Http => http_hosts(ctx, gw, &site, &proto, &mut port.listener, &mut refs),
                Carriage::Tcp => {
                    // Terminated servers sharing a port are told apart by SNI; one serving
                    // every name takes clients that send none too.
                    let names = site.names();
                    let sni_hosts = match &tls {
                        Some(_) if !names.iter().any(|n| n == "*") => names,
                        _ => Vec::new(),
                    };
                    port.tail_routes
                        .extend(tcp_rule(ctx, &site, sni_hosts, false, &mut refs));
                }
                Carriage::Passthrough => {
                    for mut r in tls_rules(ctx, &site, &mut refs) {
                        let taken: Vec<String> = r
                            .sni_hosts
                            .iter()
                            .filter(|h| port.passed.contains(*h))
                            .cloned()
                            .collect();
                        r.sni_hosts.retain(|h| port.passed.insert(h.clone()));
                        if !taken.is_empty()
                            && let Some(p) = &r.provenance
                        {
                            ctx.diag(
                                Code::VirtualServiceUnreachableRule,
                                format!("VirtualService {}/{}", p.namespace, p.name),
                                format!("spec.tls[{}]: SNI {} on gateway port {listen_port} is already routed by an earlier rule; this rule does not take it there", p.rule_index.unwrap_or(0), taken.join(", ")),
                            );
                        }
                        if !r.sni_hosts.is_empty() {
                            port.sni_routes.push(r);
                        }
                    }
                    port.tail_routes
                        .extend(tcp_rule(ctx, &site, site.names(), true, &mut refs));
                }
                Carriage::AutoPassthrough => {
                    for (r, c) in auto_passthrough(ctx, &site) {
                        if port.passed.insert(r.sni_hosts[0].clone()) {
                            port.sni_routes.push(r);
                            auto.push(c);
                        }
                    }
                }
            }
        }
    }
    let listeners = ports.into_values().map(finish).collect();
    let mut seen = BTreeSet::new();
    for r in refs {
        if seen.insert(r.name()) {
            let c = cluster::build(ctx, &r);
            clusters.insert(r.name(), c);
        }
    }
    for c in auto {
        clusters.insert(c.name.clone(), c);
    }
    listeners
}

fn listener_shell(port: u16, kind: PortKind) -> Listener {
    Listener {
        name: format!("gateway-{port}"),
        address: format!("0.0.0.0:{port}"),
        direction: ListenerDirection::Gateway,
        protocol: match kind {
            PortKind::PlainHttp => ListenerProtocol::Http,
            PortKind::PlainTcp | PortKind::Tls => ListenerProtocol::Tcp,
        },
        transparent: false,
        tls: None,
        sni_tls: Vec::new(),
        virtual_hosts: Vec::new(),
        tcp_routes: Vec::new(),
        limits: HttpLimits::default(),
        path_normalization: PathNormalization::default(),
        unrouted: Unrouted::NotFound,
        scope: None,
    }
}

/// The port's listener: one TLS setting needs no SNI, several are chosen by SNI (the first
/// server's being the default for clients that match none); routes by SNI first. A TLS
/// port speaks HTTP, TCP, or both (then it tells them apart).
fn finish(mut p: PortState) -> Listener {
    if p.sni.len() > 1 {
        p.listener.sni_tls = p.sni;
    }
    let l = &mut p.listener;
    l.tcp_routes = p.sni_routes;
    l.tcp_routes.extend(p.tail_routes);
    if p.kind == PortKind::Tls {
        l.protocol = match (p.http, l.tcp_routes.is_empty()) {
            (true, false) => ListenerProtocol::Auto,
            (true, true) => ListenerProtocol::Http,
            (false, _) => ListenerProtocol::Tcp,
        };
    }
    p.listener
}

/// One server of one Gateway, as its rules are compiled.
pub(super) struct Site<'s> {
    gw_name: &'s str,
    gw_ns: &'s str,
    server: &'s Server,
    server_port: u16,
    /// The gateway pod's address: what `destinationSubnets` are matched against.
    ip: Option<IpAddr>,
}

impl Site<'_> {
    /// The server's host names, lowercase, without namespace.
    fn names(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for (_, h) in server_hosts(self.server, self.gw_ns) {
            let h = h.to_ascii_lowercase();
            if !out.contains(&h) {
                out.push(h);
            }
        }
        out
    }

    /// The VirtualServices bound to this gateway whose hosts meet the server's (in a
    /// namespace the server's host allows), oldest first: Istio's choice for TCP and TLS.
    fn virtual_services<'a>(&self, ctx: &Ctx<'a>) -> Vec<&'a VirtualService> {
        let hosts = server_hosts(self.server, self.gw_ns);
        let mut out: Vec<&VirtualService> = ctx
            .snapshot
            .virtual_services
            .iter()
            .filter(|vs| {
                let ns = vs.metadata.namespace.as_deref().unwrap_or("default");
                bound(vs, ns, self.gw_name)
                    && vs.spec.hosts.iter().flatten().any(|vh| {
                        hosts.iter().any(|(only, h)| {
                            only.as_deref().is_none_or(|o| o == ns) && (host_matches(h, vh) || host_matches(vh, h))
                        })
                    })
            })
            .collect();
        out.sort_by_key(|vs| {
            (
                vs.metadata.creation_timestamp.as_ref().map(|t| t.0),
                vs.metadata.namespace.clone(),
                vs.metadata.name.clone(),
            )
        });
        out
    }
}

/// The HTTP virtual hosts of an HTTP(S) server.
fn http_hosts(
    ctx: &mut Ctx<'_>,
    gw: &Gateway,
    site: &Site<'_>,
    proto: &str,
    listener: &mut Listener,
    refs: &mut Vec<ClusterRef>,
) {
    let server = site.server;
    // Every plaintext HTTP server redirects (HTTP, HTTP2, GRPC, GRPC-WEB, as Istio's
    // `require_tls`); an HTTPS server's clients are on TLS already.
    let redirect = server.tls.as_ref().is_some_and(|t| t.https_redirect == Some(true)) && proto != "HTTPS";
    let scope = RouteScope {
        gateway: site.gw_name,
        port: site.server_port,
    };
    for (only, host) in server_hosts(server, site.gw_ns) {
        let routes = if redirect {
            vec![https_redirect(gw, site.gw_ns)]
        } else {
            let vss: Vec<&VirtualService> = virtual_services_for(ctx, &host, site.gw_name)
                .into_iter()
                .filter(|vs| {
                    only.as_deref()
                        .is_none_or(|ns| vs.metadata.namespace.as_deref() == Some(ns))
                })
                .collect();
            merged_routes(ctx, &vss, &host, &scope, refs)
        };
        if routes.is_empty() {
            continue;
        }
        let name = format!("{host}:{}", server.port.number);
        if listener.virtual_hosts.iter().any(|v| v.name == name) {
            continue;
        }
        listener.virtual_hosts.push(VirtualHost {
            name,
            domains: vec![host.clone()],
            routes,
        });
    }
}

/// A route to `clusters` for the SNI `sni_hosts` (any connection when empty).
pub(super) fn gateway_route(
    sni_hosts: Vec<String>,
    passthrough: bool,
    clusters: Vec<TcpWeightedCluster>,
    p: Provenance,
) -> TcpRoute {
    TcpRoute {
        sni_hosts,
        passthrough,
        ..route_to(clusters, p)
    }
}

/// The first `tcp` rule that applies to the server (Istio's: one per server), as a route
/// for `sni_hosts`.
fn tcp_rule(
    ctx: &mut Ctx<'_>,
    site: &Site<'_>,
    sni_hosts: Vec<String>,
    passthrough: bool,
    refs: &mut Vec<ClusterRef>,
) -> Option<TcpRoute> {
    for vs in site.virtual_services(ctx) {
        let scope = L4Scope::of(vs, site.ip, site.server_port, site.gw_name);
        for (i, rule) in vs.spec.tcp.iter().flatten().enumerate() {
            let Some(dests) = rule.route.as_deref().filter(|d| !d.is_empty()) else {
                continue;
            };
            if !scope.rule_applies(ctx, rule.matches.as_deref()) {
                continue;
            }
            let (ns, res) = (&scope.vs_namespace, &scope.resource);
            let clusters = weighted_destinations(ctx, res, ns, site.server_port, dests, refs);
            return Some(gateway_route(
                sni_hosts,
                passthrough,
                clusters,
                rule_provenance(vs, ns, RuleSection::Tcp, i),
            ));
        }
    }
    None
}

/// A server's hosts as (namespace restriction, host pattern).
pub(super) fn server_hosts(server: &Server, gw_ns: &str) -> Vec<(Option<String>, String)> {
    server
        .hosts
        .iter()
        .map(|h| match h.split_once('/') {
            Some(("*", host)) => (None, host.to_string()),
            Some((".", host)) => (Some(gw_ns.to_string()), host.to_string()),
            Some((ns, host)) => (Some(ns.to_string()), host.to_string()),
            None => (None, h.clone()),
        })
        .collect()
}

fn https_redirect(gw: &Gateway, gw_ns: &str) -> Route {
    Route {
        name: Some("https-redirect".into()),
        matches: Vec::new(),
        action: RouteAction::Redirect(Redirect {
            scheme: Some("https".into()),
            response_code: Some(301),
            ..Redirect::default()
        }),
        request_headers: Default::default(),
        response_headers: Default::default(),
        fault: None,
        cors: None,
        provenance: Provenance {
            kind: "Gateway".into(),
            namespace: gw_ns.to_string(),
            name: gw.metadata.name.clone().unwrap_or_default(),
            rule_index: None,
            section: None,
            parts: Vec::new(),
        },
    }
}
