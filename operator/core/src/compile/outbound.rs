//! Outbound traffic: the sidecar's outbound listener (every Service the proxy can see, with
//! the VirtualServices bound to the mesh ([`super::virtual_services`]), then every ServiceEntry
//! host visible to it ([`super::service_entry`])), and the L4 matches a gateway's listeners
//! ([`super::gateway`]) compile as well.

use std::collections::BTreeMap;
use std::net::IpAddr;

use trellis_api::mesh::OutboundTrafficMode;

use trellis_api::networking::{
    L4MatchAttributes, Resolution, RouteDestination, ServicePort as EntryPort, TlsMatchAttributes, VirtualService,
};
use trellis_contract::{
    Cluster, HttpLimits, Listener, ListenerDirection, ListenerProtocol, PathNormalization, Provenance, Route,
    RuleSection, TcpRoute, TcpWeightedCluster, VirtualHost,
};

use super::route::{ClusterRef, RouteScope, applies_to_gateway, destination, forward_to};
use super::service_entry::{self, EntryHost};
use super::virtual_services::{merged_routes, virtual_services_for};
use super::{Code, Ctx, DNS_DOMAIN, Dropped, OUTBOUND_PORT, cluster, host_matches, resolve_host, resource};
use crate::registry::{Protocol, Service, ServicePort, selects};

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
    forward_to("default".into(), Vec::new(), cref.name(), service_provenance(svc))
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
        tcp_routes.push(tcp_destination(
            ctx,
            &target,
            &default,
            service_provenance(svc),
            &mut refs,
        ));
    }
    PortRoutes {
        virtual_host,
        tcp_routes,
        refs,
    }
}

/// The sidecar's outbound listener with no virtual hosts or TCP routes yet: traffic its routes
/// do not take passes through (`outboundTrafficPolicy: ALLOW_ANY`, the default) or is refused
/// (`REGISTRY_ONLY`), as the proxy's Sidecar says, else the Mesh; it names the Sidecar that
/// scoped it.
pub(crate) fn outbound_shell(ctx: &Ctx<'_>) -> Listener {
    let mesh = ctx.snapshot.mesh.outbound_traffic_policy.as_ref().and_then(|p| p.mode);
    let unrouted = ctx.scope.unrouted(mesh);
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
        scope: ctx.scope.provenance(),
    }
}

/// Reports the Mesh's `outboundTrafficPolicy.mode: ALLOW_ANY_DYNAMIC_DNS`, which the validator
/// refuses and [`outbound_shell`] compiles as `ALLOW_ANY`.
pub(crate) fn report_mesh_mode(ctx: &mut Ctx<'_>) {
    let mode = ctx.snapshot.mesh.outbound_traffic_policy.as_ref().and_then(|p| p.mode);
    if mode == Some(OutboundTrafficMode::AllowAnyDynamicDns) {
        ctx.dropped(
            Dropped::AllowAnyDynamicDns,
            "Mesh default",
            "outboundTrafficPolicy.mode ALLOW_ANY_DYNAMIC_DNS is not supported by Trellis yet; compiled as ALLOW_ANY",
        );
    }
}

/// The sidecar's outbound listener (virtual hosts sorted by name, TCP routes in Service and
/// port order, then the ServiceEntries' in host and port order); fills `clusters` with
/// everything its routes reference.
pub(crate) fn listener(ctx: &mut Ctx<'_>, clusters: &mut BTreeMap<String, Cluster>) -> Listener {
    let mut listener = outbound_shell(ctx);
    report_mesh_mode(ctx);
    let mut refs: Vec<ClusterRef> = Vec::new();
    // The snapshot outlives the context's borrow, so services are read in place, not cloned.
    let snapshot = ctx.snapshot;
    for svc in snapshot.registry.services.values() {
        for p in &super::scoped_ports(ctx, svc) {
            let routes = port_routes(ctx, svc, p);
            listener.virtual_hosts.extend(routes.virtual_host);
            listener.tcp_routes.extend(routes.tcp_routes);
            refs.extend(routes.refs);
        }
    }
    for routes in entry_routes(ctx) {
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

/// The outbound routes of every entry host and port visible to the proxy, with the
/// diagnostics of hosts left out.
pub(crate) fn entry_routes(ctx: &mut Ctx<'_>) -> Vec<PortRoutes> {
    let (hosts, notes) = service_entry::hosts(ctx.snapshot, &ctx.proxy.key.namespace);
    for (res, message) in notes {
        ctx.diag(Code::ServiceEntryHostConflict, res, message);
    }
    for e in &hosts {
        if e.entry.spec.resolution == Some(Resolution::DynamicDns) {
            ctx.dropped(
                Dropped::DynamicDnsResolution,
                e.resource(),
                format!("host {}: resolution DYNAMIC_DNS is not supported by Trellis yet; compiled as resolution NONE (connections go to the address the application dialled)", e.host),
            );
        }
    }
    let mut out = Vec::new();
    for e in &hosts {
        for p in e.ports() {
            let number = u16::try_from(p.number).unwrap_or(0);
            let Some(routed_as) = ctx.scope.port(e.namespace, &e.host, number) else {
                continue;
            };
            match routed_as {
                None => out.push(entry_port_routes(ctx, e, p)),
                Some(proto) => {
                    let p = EntryPort {
                        protocol: Some(egress_protocol_name(proto).to_string()),
                        ..p.clone()
                    };
                    out.push(entry_port_routes(ctx, e, &p));
                }
            }
        }
    }
    out
}

/// How a port's protocol is written, for a protocol the egress listener of a Sidecar gives it.
fn egress_protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Http => "HTTP",
        Protocol::Http2 => "HTTP2",
        Protocol::Tcp => "TCP",
        Protocol::Tls => "TLS",
        // Never given by an egress port (its protocol is required); read as detected.
        Protocol::Auto => "",
    }
}

/// The routes of one port of an entry host.
fn entry_port_routes(ctx: &mut Ctx<'_>, e: &EntryHost<'_>, p: &EntryPort) -> PortRoutes {
    let port = u16::try_from(p.number).unwrap_or(0);
    let proto = service_entry::protocol(p);
    let default = ClusterRef {
        host: e.host.clone(),
        port,
        subset: None,
    };
    let mut refs = vec![default.clone()];
    let mut virtual_host = None;
    let mut tcp_routes = Vec::new();
    if proto.is_http() || proto == Protocol::Auto {
        let vss = virtual_services_for(ctx, &e.host, "mesh");
        let routes = if vss.is_empty() {
            vec![forward_to("default".into(), Vec::new(), default.name(), e.provenance())]
        } else {
            let scope = RouteScope { gateway: "mesh", port };
            merged_routes(ctx, &vss, &e.host, &scope, &mut refs)
        };
        let mut domains = vec![format!("{}:{port}", e.host)];
        domains.extend(e.ips().iter().map(|ip| match ip {
            IpAddr::V6(v6) => format!("[{v6}]:{port}"),
            IpAddr::V4(v4) => format!("{v4}:{port}"),
        }));
        virtual_host = Some(VirtualHost {
            name: format!("{}:{port}", e.host),
            domains,
            routes,
        });
    }
    let cidrs = entry_cidrs(e);
    // Opaque TCP (and what an undetected port carries that is not HTTP): at the entry's
    // addresses, or without them at any address (Istio's 0.0.0.0:port listener).
    if !proto.is_http() {
        let target = L4Target {
            fqdn: &e.host,
            ip: e.ips().first().copied(),
            cidrs,
            port,
        };
        tcp_routes = tls_routes(ctx, &target, &mut refs);
        if proto == Protocol::Tls {
            // TLS is told apart by its server name: this host's connections, at any address.
            let clusters = vec![trellis_contract::TcpWeightedCluster {
                cluster: default.name(),
                weight: 100,
            }];
            let sni = vec![e.host.to_ascii_lowercase()];
            tcp_routes.push(tcp_route(port, target.cidrs.clone(), sni, clusters, e.provenance()));
        } else {
            tcp_routes.push(tcp_destination(ctx, &target, &default, e.provenance(), &mut refs));
        }
    }
    PortRoutes {
        virtual_host,
        tcp_routes,
        refs,
    }
}

/// An entry's addresses as CIDRs (routes of opaque TCP).
fn entry_cidrs(e: &EntryHost<'_>) -> Vec<String> {
    let addresses = e.entry.spec.addresses.iter().flatten();
    addresses
        .map(|a| if a.contains('/') { a.clone() } else { host_cidr(a) })
        .collect()
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
pub(super) struct L4<'m> {
    gateways: Option<&'m [String]>,
    port: Option<u32>,
    source_labels: Option<&'m BTreeMap<String, String>>,
    source_namespace: Option<&'m String>,
    destination_subnets: Option<&'m [String]>,
}

impl<'m> L4<'m> {
    pub(super) fn tcp(m: &'m L4MatchAttributes) -> Self {
        Self {
            gateways: m.gateways.as_deref(),
            port: m.port,
            source_labels: m.source_labels.as_ref(),
            source_namespace: m.source_namespace.as_ref(),
            destination_subnets: m.destination_subnets.as_deref(),
        }
    }

    pub(super) fn tls(m: &'m TlsMatchAttributes) -> Self {
        Self {
            gateways: m.gateways.as_deref(),
            port: m.port,
            source_labels: m.source_labels.as_ref(),
            source_namespace: m.source_namespace.as_ref(),
            destination_subnets: m.destination_subnets.as_deref(),
        }
    }
}

/// The connections a rule's L4 matches see: this proxy's, to address `ip` and `port`,
/// through `gateway` (`mesh` for a sidecar's service port — `ip` its cluster IP —, or a
/// Gateway's `ns/name` — `ip` the gateway pod's, `port` the server's). Every L4 match
/// field is decided against it at compile time: `port`, `destinationSubnets`,
/// `sourceLabels`/`sourceNamespace` (this proxy's: part of a sidecar's outbound key; a
/// gateway's own, as Istio matches them) and `gateways` (a match's replace the
/// VirtualService's).
pub(super) struct L4Scope {
    ip: Option<IpAddr>,
    port: u16,
    gateway: String,
    vs_gateways: Vec<String>,
    pub(super) vs_namespace: String,
    /// The VirtualService, as diagnostics name it.
    pub(super) resource: String,
}

impl L4Scope {
    pub(super) fn of(vs: &VirtualService, ip: Option<IpAddr>, port: u16, gateway: &str) -> Self {
        Self {
            ip,
            port,
            gateway: gateway.to_string(),
            vs_gateways: vs.spec.gateways.clone().unwrap_or_default(),
            vs_namespace: vs.metadata.namespace.clone().unwrap_or_else(|| "default".into()),
            resource: resource("VirtualService", &vs.metadata),
        }
    }

    pub(super) fn applies(&self, ctx: &Ctx<'_>, m: &L4<'_>) -> bool {
        applies_to_gateway(
            m.gateways.unwrap_or(&self.vs_gateways),
            &self.vs_namespace,
            &self.gateway,
        ) && m.port.is_none_or(|p| p == u32::from(self.port))
            && m.source_labels.is_none_or(|sl| selects(sl, &ctx.proxy.labels))
            && m.source_namespace.is_none_or(|sn| *sn == ctx.proxy.key.namespace)
            && m.destination_subnets.is_none_or(|subnets| {
                subnets.is_empty() || self.ip.is_some_and(|ip| subnets.iter().any(|s| subnet_contains(s, ip)))
            })
    }

    /// Whether a `tcp` rule applies: one of its matches does, or it has none and the
    /// VirtualService is bound here.
    pub(super) fn rule_applies(&self, ctx: &Ctx<'_>, matches: Option<&[L4MatchAttributes]>) -> bool {
        match matches {
            None | Some([]) => applies_to_gateway(&self.vs_gateways, &self.vs_namespace, &self.gateway),
            Some(ms) => ms.iter().any(|m| self.applies(ctx, &L4::tcp(m))),
        }
    }
}

/// A rule's destinations with their weights (Istio's: one destination, or none weighted,
/// takes everything), each added to `refs`.
pub(super) fn weighted_destinations(
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

/// A route to these clusters (`cluster` for one, `weightedClusters` for several) for any
/// connection.
pub(super) fn route_to(clusters: Vec<TcpWeightedCluster>, provenance: Provenance) -> TcpRoute {
    let (cluster, weighted_clusters) = match <[TcpWeightedCluster; 1]>::try_from(clusters) {
        Ok([only]) => (only.cluster, Vec::new()),
        Err(several) => (String::new(), several),
    };
    TcpRoute {
        destination_port: None,
        destination_cidrs: Vec::new(),
        sni_hosts: Vec::new(),
        passthrough: false,
        cluster,
        weighted_clusters,
        provenance: Some(provenance),
    }
}

/// A route to these clusters for connections to `port` at `cidrs` (with one of `sni_hosts`).
pub(super) fn tcp_route(
    port: u16,
    cidrs: Vec<String>,
    sni_hosts: Vec<String>,
    clusters: Vec<TcpWeightedCluster>,
    provenance: Provenance,
) -> TcpRoute {
    TcpRoute {
        destination_port: Some(port),
        destination_cidrs: cidrs,
        sni_hosts,
        ..route_to(clusters, provenance)
    }
}

/// Where a route no rule made came from: the Service itself.
pub(super) fn service_provenance(svc: &Service) -> Provenance {
    Provenance {
        kind: "Service".into(),
        namespace: svc.key.namespace.clone(),
        name: svc.key.name.clone(),
        rule_index: None,
        section: None,
        parts: Vec::new(),
    }
}

/// Where a route came from: rule `index` of the VirtualService's `section` rules.
pub(super) fn rule_provenance(vs: &VirtualService, ns: &str, section: RuleSection, index: usize) -> Provenance {
    Provenance {
        kind: "VirtualService".into(),
        namespace: ns.to_string(),
        name: vs.metadata.name.clone().unwrap_or_default(),
        rule_index: Some(index as u32),
        section: Some(section),
        parts: Vec::new(),
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
        let scope = L4Scope::of(vs, target.ip, target.port, "mesh");
        let (ns, res) = (&scope.vs_namespace, &scope.resource);
        for (i, rule) in vs.spec.tls.iter().flatten().enumerate() {
            let Some(dests) = rule.route.as_deref().filter(|d| !d.is_empty()) else {
                continue;
            };
            let mut sni_hosts: Vec<String> = Vec::new();
            for m in &rule.matches {
                if scope.applies(ctx, &L4::tls(m)) {
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
                rule_provenance(vs, ns, RuleSection::Tls, i),
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
        let scope = L4Scope::of(vs, target.ip, target.port, "mesh");
        let (ns, res) = (&scope.vs_namespace, &scope.resource);
        for (i, rule) in vs.spec.tcp.iter().flatten().enumerate() {
            let applies = scope.rule_applies(ctx, rule.matches.as_deref());
            let Some(dests) = rule.route.as_deref().filter(|d| !d.is_empty() && applies) else {
                continue;
            };
            let clusters = weighted_destinations(ctx, res, ns, port, dests, refs);
            return tcp_route(
                port,
                target.cidrs.clone(),
                Vec::new(),
                clusters,
                rule_provenance(vs, ns, RuleSection::Tcp, i),
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
