//! TLS passed through by SNI: a PASSTHROUGH server's `tls` rules, for the names its hosts
//! accept, and AUTO_PASSTHROUGH's routes to every Service and subset its hosts cover.

use trellis_contract::{Cluster, Provenance, RuleSection, TcpRoute, TcpWeightedCluster, UpstreamProtocol, UpstreamTls};

use super::{Site, gateway_route, server_hosts};
use crate::compile::outbound::{L4, L4Scope, rule_provenance, weighted_destinations};
use crate::compile::route::ClusterRef;
use crate::compile::{Ctx, DNS_DOMAIN, cluster, destination_rule_for, host_matches};

impl Site<'_> {
    /// A `tls` rule's SNI names this server accepts: each name its hosts cover, or the
    /// server's own narrower name under a wildcard.
    fn accepted(&self, vs_ns: &str, sni: &str) -> Vec<String> {
        let sni = sni.to_ascii_lowercase();
        let mut out = Vec::new();
        for (only, h) in server_hosts(self.server, self.gw_ns) {
            if only.as_deref().is_some_and(|o| o != vs_ns) {
                continue;
            }
            let h = h.to_ascii_lowercase();
            let name = if h == "*" || host_matches(&h, &sni) {
                sni.clone()
            } else if sni.starts_with('*') && host_matches(&sni, &h) {
                h
            } else {
                continue;
            };
            if !out.contains(&name) {
                out.push(name);
            }
        }
        out
    }
}

/// The `tls` rules that apply to a PASSTHROUGH server, each for the SNI names of its
/// applying matches that the server accepts.
pub(super) fn tls_rules(ctx: &mut Ctx<'_>, site: &Site<'_>, refs: &mut Vec<ClusterRef>) -> Vec<TcpRoute> {
    let mut out = Vec::new();
    for vs in site.virtual_services(ctx) {
        let scope = L4Scope::of(vs, site.ip, site.server_port, site.gw_name);
        for (i, rule) in vs.spec.tls.iter().flatten().enumerate() {
            let Some(dests) = rule.route.as_deref().filter(|d| !d.is_empty()) else {
                continue;
            };
            let mut names: Vec<String> = Vec::new();
            for m in rule.matches.iter().filter(|m| scope.applies(ctx, &L4::tls(m))) {
                for sni in &m.sni_hosts {
                    for n in site.accepted(&scope.vs_namespace, sni) {
                        if !names.contains(&n) {
                            names.push(n);
                        }
                    }
                }
            }
            if names.is_empty() {
                continue;
            }
            let (ns, res) = (&scope.vs_namespace, &scope.resource);
            let clusters = weighted_destinations(ctx, res, ns, site.server_port, dests, refs);
            out.push(gateway_route(
                names,
                true,
                clusters,
                rule_provenance(vs, ns, RuleSection::Tls, i),
            ));
        }
    }
    out
}

/// AUTO_PASSTHROUGH: for every port of every Service the server's hosts cover, and every
/// subset of its DestinationRule, a route for the SNI `outbound_.PORT_.SUBSET_.HOST` (the
/// subset empty for none: `outbound_.8080_._.web.shop.svc.cluster.local`) to a cluster of that name: the service's (subset's) endpoints,
/// connected to as they are, so the client's mesh mTLS reaches the destination's proxy.
pub(super) fn auto_passthrough(ctx: &mut Ctx<'_>, site: &Site<'_>) -> Vec<(TcpRoute, Cluster)> {
    let hosts = server_hosts(site.server, site.gw_ns);
    let viewer = ctx.proxy.key.namespace.clone();
    let snapshot = ctx.snapshot;
    let mut out = Vec::new();
    for svc in snapshot.registry.services.values() {
        if !svc.visible_from(&viewer) {
            continue;
        }
        let fqdn = svc.fqdn(DNS_DOMAIN);
        let covered = hosts.iter().any(|(only, h)| {
            only.as_deref().is_none_or(|o| o == svc.key.namespace) && host_matches(&h.to_ascii_lowercase(), &fqdn)
        });
        if !covered {
            continue;
        }
        let subsets: Vec<Option<String>> = std::iter::once(None)
            .chain(
                destination_rule_for(snapshot, &viewer, &fqdn)
                    .into_iter()
                    .flat_map(|dr| dr.spec.subsets.iter().flatten().map(|s| Some(s.name.clone()))),
            )
            .collect();
        for p in &svc.ports {
            for subset in &subsets {
                let cref = ClusterRef {
                    host: fqdn.clone(),
                    port: p.port,
                    subset: subset.clone(),
                };
                let name = format!(
                    "outbound_.{}_.{}_.{fqdn}",
                    p.port,
                    subset.as_deref().unwrap_or_default()
                );
                let mut c = cluster::build(ctx, &cref);
                c.name = name.clone();
                c.protocol = UpstreamProtocol::Tcp;
                c.tls = UpstreamTls::Disable;
                let provenance = Provenance {
                    kind: "Gateway".into(),
                    namespace: site.gw_ns.to_string(),
                    name: site.gw_name.rsplit('/').next().unwrap_or_default().to_string(),
                    rule_index: None,
                    section: None,
                    parts: Vec::new(),
                };
                let route = gateway_route(
                    vec![name.clone()],
                    true,
                    vec![TcpWeightedCluster {
                        cluster: name,
                        weight: 100,
                    }],
                    provenance,
                );
                out.push((route, c));
            }
        }
    }
    out
}
