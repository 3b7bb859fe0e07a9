//! Which VirtualServices apply to a host, bound to the mesh or to a gateway, in Istio's merge
//! order, and their HTTP rules merged for one virtual host: what a sidecar's outbound routes
//! ([`super::outbound`]) and a gateway's ([`super::gateway`]) are made of.

use trellis_api::networking::VirtualService;
use trellis_contract::Route;

use super::route::{ClusterRef, RouteScope, applies_to_gateway, compile_http};
use super::{Code, Ctx, host_covers, resource, visible};

/// Whether a VirtualService of `ns` is bound to `gateway` (`mesh` or `ns/name`): by its
/// `gateways`, or by the `gateways` of one of its matches.
pub(super) fn bound(vs: &VirtualService, ns: &str, gateway: &str) -> bool {
    let named = |g: &Option<Vec<String>>| g.as_ref().is_some_and(|g| applies_to_gateway(g, ns, gateway));
    let spec = &vs.spec;
    applies_to_gateway(spec.gateways.as_deref().unwrap_or_default(), ns, gateway)
        || spec
            .http
            .iter()
            .flatten()
            .any(|r| r.matches.iter().flatten().any(|m| named(&m.gateways)))
        || spec
            .tcp
            .iter()
            .flatten()
            .any(|r| r.matches.iter().flatten().any(|m| named(&m.gateways)))
        || spec
            .tls
            .iter()
            .flatten()
            .any(|r| r.matches.iter().any(|m| named(&m.gateways)))
}

/// The VirtualServices that apply to `host` for the scope (`mesh` or a gateway), in merge
/// order: exact hosts before wildcards, then oldest first, then by namespace/name.
pub(super) fn virtual_services_for<'a>(ctx: &Ctx<'a>, host: &str, gateway: &str) -> Vec<&'a VirtualService> {
    let viewer = ctx.proxy.key.namespace.as_str();
    let mut out: Vec<(bool, &VirtualService)> = Vec::new();
    for vs in &ctx.snapshot.virtual_services {
        let ns = vs.metadata.namespace.as_deref().unwrap_or("default");
        if gateway == "mesh"
            && (!visible(vs.spec.export_to.as_deref(), ns, viewer) || !ctx.scope.virtual_service(ns, host))
        {
            continue;
        }
        if !bound(vs, ns, gateway) {
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
