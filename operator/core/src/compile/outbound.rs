//! Outbound traffic: the sidecar's outbound listener (every Service the proxy can see, with
//! the VirtualServices bound to the mesh) and a gateway's listeners (its Gateway servers, with
//! the VirtualServices bound to them).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use trellis_api::mesh::{MeshSpec, OutboundTrafficMode};
use trellis_api::networking::{Gateway, RouteDestination, Server, ServerTlsMode as ApiTlsMode, VirtualService};
use trellis_contract::{
    CertificateRef, Cluster, HttpLimits, Listener, ListenerDirection, ListenerProtocol, PathNormalization, PemSource,
    Provenance, Redirect, Route, RouteAction, ServerTls, ServerTlsMode, SniTls, TcpRoute, TcpWeightedCluster, Unrouted,
    VirtualHost,
};

use super::route::{ClusterRef, RouteScope, applies_to_gateway, compile_http, destination, forward_to};
use super::{
    Code, Ctx, DNS_DOMAIN, Dropped, OUTBOUND_PORT, cluster, host_covers, host_matches, resolve_host, resource,
    service_entry, visible,
};
use crate::registry::{Protocol, Service, ServicePort, selects};

/// The VirtualServices that apply to `host` for the scope (`mesh` or a gateway), in merge
/// order: exact hosts before wildcards, then oldest first, then by namespace/name.
pub(super) fn virtual_services_for<'a>(ctx: &Ctx<'a>, host: &str, gateway: &str) -> Vec<&'a VirtualService> {
    let viewer = ctx.proxy.key.namespace.as_str();
    let mut out: Vec<(bool, &VirtualService)> = Vec::new();
    for vs in &ctx.snapshot.virtual_services {
        let ns = vs.metadata.namespace.as_deref().unwrap_or("default");
        if gateway == "mesh" && !visible(vs.spec.export_to.as_deref(), ns, viewer) {
            continue;
        }
        let named = |g: &Option<Vec<String>>| g.as_ref().is_some_and(|g| applies_to_gateway(g, ns, gateway));
        if !applies_to_gateway(vs.spec.gateways.as_deref().unwrap_or_default(), ns, gateway)
            && !vs
                .spec
                .http
                .iter()
                .flatten()
                .any(|r| r.matches.iter().flatten().any(|m| named(&m.gateways)))
            && !vs
                .spec
                .tcp
                .iter()
                .flatten()
                .any(|r| r.matches.iter().flatten().any(|m| named(&m.gateways)))
            && !vs
                .spec
                .tls
                .iter()
                .flatten()
                .any(|r| r.matches.iter().any(|m| named(&m.gateways)))
        {
            continue;
        }
        let mut best: Option<bool> = None;
        for h in vs.spec.hosts.iter().flatten() {
            if !host_covers(h, ns, host) {
                continue;
            }
            if h.starts_with('*') {
                best = best.or(Some(true));
            } else {
                best = Some(false);
            }
        }
        if let Some(wildcard) = best {
            out.push((wildcard, vs));
        }
    }
    out.sort_by_key(|(wildcard, vs)| {
        (
            *wildcard,
            vs.metadata.creation_timestamp.as_ref().map(|t| t.0),
            vs.metadata.namespace.clone(),
            vs.metadata.name.clone(),
        )
    });
    out.into_iter().map(|(_, vs)| vs).collect()
}

/// Merge the HTTP rules of several VirtualServices for one virtual host, Istio-style: in
/// order, until a catch-all; rules after a catch-all are unreachable and reported.
pub(super) fn merged_routes(
    ctx: &mut Ctx<'_>,
    vss: &[&VirtualService],
    host: &str,
    scope: &RouteScope<'_>,
    refs: &mut Vec<ClusterRef>,
) -> Vec<Route> {
    let mut routes = Vec::new();
    let mut shadowed_by: Option<String> = None;
    for vs in vss {
        let res = resource("VirtualService", &vs.metadata);
        if let Some(winner) = &shadowed_by {
            if vs.spec.http.as_ref().is_some_and(|h| !h.is_empty()) {
                ctx.diag(
                    Code::VirtualServiceShadowed,
                    &res,
                    format!("its HTTP rules for {host} are never used: {winner} has a catch-all rule (no match) for the same host that comes first; add matches to that rule or merge the two VirtualServices"),
                );
            }
            continue;
        }
        let (r, catch_all) = compile_http(ctx, vs, scope, refs);
        routes.extend(r);
        if catch_all {
            shadowed_by = Some(res);
        }
    }
    routes
}

fn service_domains(svc: &Service, port: u16, viewer_ns: &str) -> Vec<String> {
    let (name, ns) = (&svc.key.name, &svc.key.namespace);
    let mut hosts = Vec::new();
    if ns == viewer_ns {
        hosts.push(name.clone());
    }
    hosts.push(format!("{name}.{ns}"));
    hosts.push(format!("{name}.{ns}.svc"));
    hosts.push(svc.fqdn(DNS_DOMAIN));
    if let Some(ip) = &svc.cluster_ip {
        hosts.push(ip.clone());
    }
    hosts.into_iter().map(|h| format!("{h}:{port}")).collect()
}

fn default_route(svc: &Service, cref: &ClusterRef) -> Route {
    let provenance = Provenance {
        kind: "Service".into(),
        namespace: svc.key.namespace.clone(),
        name: svc.key.name.clone(),
        rule_index: None,
    };
    forward_to("default".into(), Vec::new(), cref.name(), provenance)
}

/// What one port of a Service contributes to a sidecar's outbound listener: its virtual host
/// (HTTP or undetected protocols), its TCP route (other protocols, with a cluster IP), and the
/// clusters they reference. The unit the push recompiles when that Service, its
/// VirtualServices or its destinations change.
#[derive(Debug, Clone, PartialEq)]
pub struct PortRoutes {
    /// The virtual host, named `<fqdn>:<port>`.
    pub virtual_host: Option<VirtualHost>,
    /// The TCP routes: the TLS routes by SNI of its VirtualServices' `tls` rules, then the
    /// TCP route.
    pub tcp_routes: Vec<TcpRoute>,
    /// Every cluster the routes reference (the port's default cluster first).
    pub refs: Vec<ClusterRef>,
}

/// The outbound routes of port `p` of `svc`.
pub(crate) fn port_routes(ctx: &mut Ctx<'_>, svc: &Service, p: &ServicePort) -> PortRoutes {
    let viewer = ctx.proxy.key.namespace.clone();
    let fqdn = svc.fqdn(DNS_DOMAIN);
    let default = ClusterRef {
        host: fqdn.clone(),
        port: p.port,
        subset: None,
    };
    let mut refs = vec![default.clone()];
    let mut virtual_host = None;
    let mut tcp_routes = Vec::new();
    if p.protocol.is_http() || p.protocol == Protocol::Auto {
        let vss = virtual_services_for(ctx, &fqdn, "mesh");
        let scope = RouteScope {
            gateway: "mesh",
            port: p.port,
        };
        let routes = if vss.is_empty() {
            vec![default_route(svc, &default)]
        } else {
            merged_routes(ctx, &vss, &fqdn, &scope, &mut refs)
        };
        virtual_host = Some(VirtualHost {
            name: format!("{fqdn}:{}", p.port),
            domains: service_domains(svc, p.port, &viewer),
            routes,
        });
    }
    if !p.protocol.is_http()
        && let Some(ip) = &svc.cluster_ip
    {
        let target = L4Target {
            fqdn: &fqdn,
            ip: ip.parse().ok(),
            cidrs: vec![host_cidr(ip)],
            port: p.port,
        };
        tcp_routes = tls_routes(ctx, &target, &mut refs);
        let provenance = Provenance {
            kind: "Service".into(),
            namespace: svc.key.namespace.clone(),
            name: svc.key.name.clone(),
            rule_index: None,
        };
        tcp_routes.push(tcp_destination(ctx, &target, &default, provenance, &mut refs));
    }
    PortRoutes {
        virtual_host,
        tcp_routes,
        refs,
    }
}

/// The sidecar's outbound listener with no virtual hosts or TCP routes yet: traffic its routes
/// do not take passes through (`outboundTrafficPolicy: ALLOW_ANY`, the default) or is refused
/// (`REGISTRY_ONLY`).
pub(crate) fn outbound_shell(mesh: &MeshSpec) -> Listener {
    let unrouted = match mesh.outbound_traffic_policy.as_ref().and_then(|p| p.mode) {
        None | Some(OutboundTrafficMode::AllowAny) => Unrouted::Passthrough,
        Some(OutboundTrafficMode::RegistryOnly) => Unrouted::BlackHole,
    };
    Listener {
        name: "outbound".into(),
        address: format!("0.0.0.0:{OUTBOUND_PORT}"),
        direction: ListenerDirection::Outbound,
        protocol: ListenerProtocol::Auto,
        transparent: true,
        tls: None,
        sni_tls: Vec::new(),
        virtual_hosts: Vec::new(),
        tcp_routes: Vec::new(),
        limits: HttpLimits::default(),
        path_normalization: PathNormalization::default(),
        unrouted,
    }
}

/// The sidecar's outbound listener (virtual hosts sorted by name, TCP routes in Service and
/// port order, then the ServiceEntries' in host and port order); fills `clusters` with
/// everything its routes reference.
pub(crate) fn listener(ctx: &mut Ctx<'_>, clusters: &mut BTreeMap<String, Cluster>) -> Listener {
    let mut listener = outbound_shell(&ctx.snapshot.mesh);
    let mut refs: Vec<ClusterRef> = Vec::new();
    // The snapshot outlives the context's borrow, so services are read in place, not cloned.
    let snapshot = ctx.snapshot;
    for svc in snapshot.registry.services.values() {
        for p in &svc.ports {
            let routes = port_routes(ctx, svc, p);
            listener.virtual_hosts.extend(routes.virtual_host);
            listener.tcp_routes.extend(routes.tcp_routes);
            refs.extend(routes.refs);
        }
    }
    for routes in service_entry::routes(ctx) {
        listener.virtual_hosts.extend(routes.virtual_host);
        listener.tcp_routes.extend(routes.tcp_routes);
        refs.extend(routes.refs);
    }
    listener.virtual_hosts.sort_by(|a, b| a.name.cmp(&b.name));
    unused_hosts(ctx);
    for r in refs {
        let name = r.name();
        clusters.entry(name).or_insert_with(|| cluster::build(ctx, &r));
    }
    listener
}

pub(super) fn host_cidr(ip: &str) -> String {
    if ip.contains(':') {
        format!("{ip}/128")
    } else {
        format!("{ip}/32")
    }
}

/// The destination opaque TCP routes are built for: a host's port, at its addresses.
pub(super) struct L4Target<'t> {
    /// The host (a Service's FQDN or a ServiceEntry's host).
    pub(super) fqdn: &'t str,
    /// The address `destinationSubnets` are decided against.
    pub(super) ip: Option<IpAddr>,
    /// The destination addresses the routes match (none: any).
    pub(super) cidrs: Vec<String>,
    /// The destination port.
    pub(super) port: u16,
}

/// The L4 conditions of a TCP match, or of a TLS match besides `sniHosts`.
struct L4<'m> {
    gateways: Option<&'m [String]>,
    port: Option<u32>,
    source_labels: Option<&'m BTreeMap<String, String>>,
    source_namespace: Option<&'m String>,
    destination_subnets: Option<&'m [String]>,
}

/// The connections a service port's routes see: this proxy's, to the Service's cluster IP
/// and `port`. Every L4 match field is decided against it at compile time: `port`,
/// `destinationSubnets` (against the cluster IP, the only destination such a route sees),
/// `sourceLabels`/`sourceNamespace` (this proxy's, part of the outbound key) and `gateways`
/// (a match's replace the VirtualService's; `mesh`).
struct L4Scope {
    ip: Option<IpAddr>,
    port: u16,
    vs_gateways: Vec<String>,
    vs_namespace: String,
    /// The VirtualService, as diagnostics name it.
    resource: String,
}

impl L4Scope {
    fn of(vs: &VirtualService, target: &L4Target<'_>) -> Self {
        Self {
            ip: target.ip,
            port: target.port,
            vs_gateways: vs.spec.gateways.clone().unwrap_or_default(),
            vs_namespace: vs.metadata.namespace.clone().unwrap_or_else(|| "default".into()),
            resource: resource("VirtualService", &vs.metadata),
        }
    }

    fn applies(&self, ctx: &Ctx<'_>, m: &L4<'_>) -> bool {
        applies_to_gateway(m.gateways.unwrap_or(&self.vs_gateways), &self.vs_namespace, "mesh")
            && m.port.is_none_or(|p| p == u32::from(self.port))
            && m.source_labels.is_none_or(|sl| selects(sl, &ctx.proxy.labels))
            && m.source_namespace.is_none_or(|sn| *sn == ctx.proxy.key.namespace)
            && m.destination_subnets.is_none_or(|subnets| {
                subnets.is_empty() || self.ip.is_some_and(|ip| subnets.iter().any(|s| subnet_contains(s, ip)))
            })
    }
}

/// A rule's destinations with their weights (Istio's: one destination, or none weighted,
/// takes everything), each added to `refs`.
fn weighted_destinations(
    ctx: &mut Ctx<'_>,
    res: &str,
    ns: &str,
    port: u16,
    dests: &[RouteDestination],
    refs: &mut Vec<ClusterRef>,
) -> Vec<TcpWeightedCluster> {
    let total: u32 = dests.iter().map(|d| d.weight.unwrap_or(0).max(0) as u32).sum();
    let mut clusters = Vec::new();
    for d in dests {
        let cref = destination(ctx, res, &d.destination, ns, port);
        let weight = if dests.len() == 1 || total == 0 {
            100
        } else {
            d.weight.unwrap_or(0).max(0) as u32
        };
        clusters.push(TcpWeightedCluster {
            cluster: cref.name(),
            weight,
        });
        refs.push(cref);
    }
    clusters
}

/// A route to these clusters: `cluster` for one, `weightedClusters` for several.
pub(super) fn tcp_route(
    port: u16,
    cidrs: Vec<String>,
    sni_hosts: Vec<String>,
    clusters: Vec<TcpWeightedCluster>,
    provenance: Provenance,
) -> TcpRoute {
    let (cluster, weighted_clusters) = match <[TcpWeightedCluster; 1]>::try_from(clusters) {
        Ok([only]) => (only.cluster, Vec::new()),
        Err(several) => (String::new(), several),
    };
    TcpRoute {
        destination_port: Some(port),
        destination_cidrs: cidrs,
        sni_hosts,
        passthrough: false,
        cluster,
        weighted_clusters,
        provenance: Some(provenance),
    }
}

fn rule_provenance(vs: &VirtualService, ns: &str, index: usize) -> Provenance {
    Provenance {
        kind: "VirtualService".into(),
        namespace: ns.to_string(),
        name: vs.metadata.name.clone().unwrap_or_default(),
        rule_index: Some(index as u32),
    }
}

/// TLS passed through by SNI on a service port: each `tls` rule of the VirtualServices for
/// the host with a match that applies here (its L4 fields as for TCP) routes the connections
/// whose ClientHello names one of the matches' `sniHosts`, in order, before the port's TCP
/// route.
pub(super) fn tls_routes(ctx: &mut Ctx<'_>, target: &L4Target<'_>, refs: &mut Vec<ClusterRef>) -> Vec<TcpRoute> {
    let port = target.port;
    let mut out = Vec::new();
    for vs in virtual_services_for(ctx, target.fqdn, "mesh") {
        let scope = L4Scope::of(vs, target);
        let (ns, res) = (&scope.vs_namespace, &scope.resource);
        for (i, rule) in vs.spec.tls.iter().flatten().enumerate() {
            let Some(dests) = rule.route.as_deref().filter(|d| !d.is_empty()) else {
                continue;
            };
            let mut sni_hosts: Vec<String> = Vec::new();
            for m in &rule.matches {
                let l4 = L4 {
                    gateways: m.gateways.as_deref(),
                    port: m.port,
                    source_labels: m.source_labels.as_ref(),
                    source_namespace: m.source_namespace.as_ref(),
                    destination_subnets: m.destination_subnets.as_deref(),
                };
                if scope.applies(ctx, &l4) {
                    for h in &m.sni_hosts {
                        let h = h.to_ascii_lowercase();
                        if !sni_hosts.contains(&h) {
                            sni_hosts.push(h);
                        }
                    }
                }
            }
            if sni_hosts.is_empty() {
                continue;
            }
            let clusters = weighted_destinations(ctx, res, ns, port, dests, refs);
            out.push(tcp_route(
                port,
                target.cidrs.clone(),
                sni_hosts,
                clusters,
                rule_provenance(vs, ns, i),
            ));
        }
    }
    out
}

/// The route of opaque TCP to a service port: the first TCP rule of a VirtualService with a
/// match that applies here (see [`L4Scope`]), or no match, its destinations weighted; else
/// `default` (the service itself, with `provenance`).
pub(super) fn tcp_destination(
    ctx: &mut Ctx<'_>,
    target: &L4Target<'_>,
    default: &ClusterRef,
    provenance: Provenance,
    refs: &mut Vec<ClusterRef>,
) -> TcpRoute {
    let port = target.port;
    for vs in virtual_services_for(ctx, target.fqdn, "mesh") {
        let scope = L4Scope::of(vs, target);
        let (ns, res) = (&scope.vs_namespace, &scope.resource);
        for (i, rule) in vs.spec.tcp.iter().flatten().enumerate() {
            let applies = match rule.matches.as_deref() {
                None | Some([]) => applies_to_gateway(&scope.vs_gateways, ns, "mesh"),
                Some(ms) => ms.iter().any(|m| {
                    let l4 = L4 {
                        gateways: m.gateways.as_deref(),
                        port: m.port,
                        source_labels: m.source_labels.as_ref(),
                        source_namespace: m.source_namespace.as_ref(),
                        destination_subnets: m.destination_subnets.as_deref(),
                    };
                    scope.applies(ctx, &l4)
                }),
            };
            let Some(dests) = rule.route.as_deref().filter(|d| !d.is_empty() && applies) else {
                continue;
            };
            let clusters = weighted_destinations(ctx, res, ns, port, dests, refs);
            return tcp_route(
                port,
                target.cidrs.clone(),
                Vec::new(),
                clusters,
                rule_provenance(vs, ns, i),
            );
        }
    }
    let clusters = vec![TcpWeightedCluster {
        cluster: default.name(),
        weight: 100,
    }];
    tcp_route(port, target.cidrs.clone(), Vec::new(), clusters, provenance)
}

/// Whether `subnet` (an address or a CIDR, as Istio's `destinationSubnets` takes them) holds
/// `ip`. The validator has checked the syntax; anything unparsable holds nothing.
fn subnet_contains(subnet: &str, ip: IpAddr) -> bool {
    match subnet.parse::<ipnet::IpNet>() {
        Ok(net) => net.contains(&ip),
        Err(_) => subnet.parse::<IpAddr>().is_ok_and(|a| a == ip),
    }
}

/// Mesh-bound VirtualService hosts that match no Service are never used by sidecars.
pub(crate) fn unused_hosts(ctx: &mut Ctx<'_>) {
    let mut fqdns: Vec<String> = ctx
        .snapshot
        .registry
        .services
        .values()
        .map(|s| s.fqdn(DNS_DOMAIN))
        .collect();
    fqdns.extend(service_entry::all_hosts(ctx.snapshot));
    let mut notes = Vec::new();
    for vs in &ctx.snapshot.virtual_services {
        let ns = vs.metadata.namespace.as_deref().unwrap_or("default");
        if !applies_to_gateway(vs.spec.gateways.as_deref().unwrap_or_default(), ns, "mesh") {
            continue;
        }
        for h in vs.spec.hosts.iter().flatten() {
            let host = resolve_host(h, ns);
            if !fqdns.iter().any(|f| host_matches(&host, f)) {
                notes.push((
                    resource("VirtualService", &vs.metadata),
                    format!("host {host} matches no Service or ServiceEntry; sidecars ignore its rules until one names it (a ServiceEntry adds an external host)"),
                ));
            }
        }
    }
    for (res, msg) in notes {
        ctx.diag(Code::VirtualServiceHostNotFound, res, msg);
    }
}

/// The gateways (`ns/name`) whose selector matches the proxy.
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

/// A gateway proxy's listeners: one per port of the Gateway servers that select it.
pub(crate) fn gateway_listeners(ctx: &mut Ctx<'_>, clusters: &mut BTreeMap<String, Cluster>) -> Vec<Listener> {
    let mut by_port: BTreeMap<u16, Listener> = BTreeMap::new();
    let mut sni: BTreeMap<u16, Vec<SniTls>> = BTreeMap::new();
    let mut refs = Vec::new();
    for gw in gateways_for(ctx) {
        let gw_ns = gw.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        let gw_name = format!("{gw_ns}/{}", gw.metadata.name.as_deref().unwrap_or_default());
        let res = resource("Gateway", &gw.metadata);
        for server in &gw.spec.servers {
            let listen_port = server.port.target_port.unwrap_or(server.port.number);
            let Ok(listen_port) = u16::try_from(listen_port) else {
                continue;
            };
            let proto = server.port.protocol.to_ascii_uppercase();
            let http = matches!(proto.as_str(), "HTTP" | "HTTPS" | "HTTP2" | "GRPC" | "GRPC-WEB");
            let tls = match server_tls(ctx, &res, server, &proto) {
                Ok(t) => t,
                Err(()) => continue,
            };
            let listener = by_port.entry(listen_port).or_insert_with(|| Listener {
                name: format!("gateway-{listen_port}"),
                address: format!("0.0.0.0:{listen_port}"),
                direction: ListenerDirection::Gateway,
                protocol: if http {
                    ListenerProtocol::Http
                } else {
                    ListenerProtocol::Tcp
                },
                transparent: false,
                tls: tls.clone(),
                sni_tls: Vec::new(),
                virtual_hosts: Vec::new(),
                tcp_routes: Vec::new(),
                limits: HttpLimits::default(),
                path_normalization: PathNormalization::default(),
                unrouted: Unrouted::NotFound,
            });
            if listener.tls.is_some() != tls.is_some() {
                ctx.diag(
                    Code::GatewayPortProtocolConflict,
                    &res,
                    format!("port {listen_port}: a TLS server and a plaintext server cannot share a port; this server is dropped"),
                );
                continue;
            }
            if let Some(tls) = &tls {
                // TLS servers on one port are told apart by SNI.
                let entries = sni.entry(listen_port).or_default();
                for (_, host) in server_hosts(server, &gw_ns) {
                    let name = host.to_ascii_lowercase();
                    let served_by = entries.iter().find(|e| e.server_names.contains(&name));
                    match served_by {
                        Some(e) if e.tls == *tls => {}
                        Some(_) => ctx.diag(
                            Code::ConflictingGateways,
                            &res,
                            format!("port {listen_port}: host {name} is already served with other TLS settings by an earlier server; this server keeps its other hosts"),
                        ),
                        None => match entries.iter_mut().find(|e| e.tls == *tls) {
                            Some(e) => e.server_names.push(name),
                            None => entries.push(SniTls {
                                server_names: vec![name],
                                tls: tls.clone(),
                            }),
                        },
                    }
                }
            }
            let redirect = server.tls.as_ref().is_some_and(|t| t.https_redirect == Some(true)) && proto == "HTTP";
            let scope = RouteScope {
                gateway: &gw_name,
                port: u16::try_from(server.port.number).unwrap_or(0),
            };
            for host in server_hosts(server, &gw_ns) {
                if http {
                    let routes = if redirect {
                        vec![https_redirect(gw, &gw_ns)]
                    } else {
                        let vss = virtual_services_for(ctx, &host.1, &gw_name);
                        let vss: Vec<&VirtualService> = vss
                            .into_iter()
                            .filter(|vs| {
                                host.0
                                    .as_deref()
                                    .is_none_or(|ns| vs.metadata.namespace.as_deref() == Some(ns))
                            })
                            .collect();
                        merged_routes(ctx, &vss, &host.1, &scope, &mut refs)
                    };
                    if routes.is_empty() {
                        continue;
                    }
                    let name = format!("{}:{}", host.1, server.port.number);
                    if listener.virtual_hosts.iter().any(|v| v.name == name) {
                        continue;
                    }
                    listener.virtual_hosts.push(VirtualHost {
                        name,
                        domains: vec![host.1.clone()],
                        routes,
                    });
                }
            }
        }
    }
    // One TLS setting on a port needs no SNI; several are chosen by SNI, the
    // first server's being the default for clients that match none.
    for (port, entries) in sni {
        if entries.len() > 1
            && let Some(l) = by_port.get_mut(&port)
        {
            l.sni_tls = entries;
        }
    }
    let listeners: Vec<Listener> = by_port.into_values().collect();
    let mut seen = BTreeSet::new();
    for r in refs {
        if seen.insert(r.name()) {
            let c = cluster::build(ctx, &r);
            clusters.insert(r.name(), c);
        }
    }
    listeners
}

/// A server's hosts as (namespace restriction, host pattern).
fn server_hosts(server: &Server, gw_ns: &str) -> Vec<(Option<String>, String)> {
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
        },
    }
}

/// TLS of a gateway server. `Err` when it cannot be served (the server is dropped, with a
/// diagnostic).
fn server_tls(ctx: &mut Ctx<'_>, res: &str, server: &Server, proto: &str) -> Result<Option<ServerTls>, ()> {
    let Some(tls) = &server.tls else { return Ok(None) };
    if proto != "HTTPS" && proto != "TLS" {
        return Ok(None);
    }
    let mode = match tls.mode.unwrap_or(ApiTlsMode::Simple) {
        ApiTlsMode::Simple => ServerTlsMode::Simple,
        ApiTlsMode::Mutual => ServerTlsMode::Mutual,
        other => {
            ctx.dropped(
                Dropped::GatewayTlsMode,
                res,
                format!(
                    "server port {}: tls.mode {other:?} is not supported by trellis-proxy yet; the server is dropped",
                    server.port.number
                ),
            );
            return Err(());
        }
    };
    let certificate = if let Some(name) = &tls.credential_name {
        let key = crate::registry::ObjectKey::new(ctx.proxy.key.namespace.clone(), name.clone());
        match ctx.snapshot.registry.credentials.get(&key) {
            Some(c) => CertificateRef::Inline {
                cert_chain_pem: c.cert_chain_pem.clone(),
                private_key_pem: c.private_key_pem.clone(),
            },
            None => {
                ctx.diag(
                    Code::ReferencedResourceNotFound,
                    res,
                    format!("credentialName {name:?}: no TLS Secret {key} (with tls.crt and tls.key) for the gateway pod's namespace; the server is dropped"),
                );
                return Err(());
            }
        }
    } else if let (Some(cert), Some(key)) = (&tls.server_certificate, &tls.private_key) {
        CertificateRef::Files {
            cert_chain_file: cert.clone(),
            private_key_file: key.clone(),
        }
    } else {
        return Err(());
    };
    let client_ca = match mode {
        ServerTlsMode::Mutual => tls.ca_certificates.clone().map(PemSource::File).or_else(|| {
            let key = crate::registry::ObjectKey::new(ctx.proxy.key.namespace.clone(), tls.credential_name.clone()?);
            ctx.snapshot
                .registry
                .credentials
                .get(&key)?
                .ca_pem
                .clone()
                .map(PemSource::Inline)
        }),
        _ => None,
    };
    Ok(Some(ServerTls {
        mode,
        certificate: Some(certificate),
        client_ca,
        alpn: vec!["h2".into(), "http/1.1".into()],
    }))
}
