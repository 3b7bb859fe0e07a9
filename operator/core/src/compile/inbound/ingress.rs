//! The application's ports on a sidecar's inbound side (Istio's inbound listeners): the
//! target ports of the Services that select the pod, then the ingress listeners of the
//! Sidecar that applies to it (Istio's `IstioIngressListener`), and the connection pool of
//! each.
//!
//! - Without a Sidecar, or one without `ingress`: each Service target port `N` is handed to
//!   `127.0.0.1:N`, with the protocol its Service port declares (the first Service by
//!   namespace and name, as Istio's inbound clusters name their first service).
//! - An ingress listener for port `N` replaces what the Services say of `N`, or adds `N` when
//!   no Service names it: traffic arriving for `N` goes to its `defaultEndpoint`
//!   (`127.0.0.1:PORT` or `[::1]:PORT`; without one, `127.0.0.1:N`), with its protocol. Ports
//!   it does not name keep the Services' (in Istio they still reach the application, through
//!   the inbound passthrough chain).
//! - The pool ([`inbound_pools`]): the ingress listener's `connectionPool`, else the
//!   Sidecar's `inboundConnectionPool`, else the DestinationRule of the port's Service, on the
//!   cluster of the port (Istio's precedence).

use std::collections::BTreeMap;

use trellis_api::networking::{ConnectionPoolSettings, Sidecar};
use trellis_contract::{Provenance, RuleSection};

use super::super::cluster::destination_rule;
use super::super::outbound::service_provenance;
use super::super::policy::{self, InForce};
use super::super::{Ctx, DNS_DOMAIN, scope};
use crate::registry::{Protocol, TargetPort, selects};

/// One port of the application, as the inbound listener hands it traffic.
#[derive(Debug, Clone, PartialEq)]
pub(in crate::compile) struct AppPort {
    /// How the port's traffic is handled.
    pub(in crate::compile) protocol: Protocol,
    /// The application's address: `127.0.0.1` or `::1`.
    pub(in crate::compile) address: String,
    /// The application's port.
    pub(in crate::compile) port: u16,
    /// The FQDN of the Service that names the port, if one does.
    pub(in crate::compile) service: Option<String>,
    /// The port a DestinationRule's `portLevelSettings` are matched against (Istio's
    /// `ServicePort` of the inbound cluster): the Service's port, or an ingress listener's own.
    pub(in crate::compile) service_port: u16,
    /// The Service or the Sidecar ingress listener that decided it.
    pub(in crate::compile) provenance: Provenance,
    /// Its connection pool, if the Sidecar or a DestinationRule gives one.
    pub(in crate::compile) pool: Option<InboundPool>,
}

/// The connection pool of an application's port, and the resource it comes from.
#[derive(Debug, Clone, PartialEq)]
pub(in crate::compile) struct InboundPool {
    /// The settings, as written.
    pub(in crate::compile) settings: ConnectionPoolSettings,
    /// The Sidecar (its ingress listener, or its `inboundConnectionPool`) or the
    /// DestinationRule that gives them.
    pub(in crate::compile) source: Provenance,
}

/// The application's ports by the port traffic arrives for (see the module docs).
pub(in crate::compile) fn app_ports(ctx: &Ctx<'_>) -> BTreeMap<u16, AppPort> {
    let mut ports: BTreeMap<u16, AppPort> = BTreeMap::new();
    for svc in ctx.snapshot.registry.services.values() {
        let selected = svc.key.namespace == ctx.proxy.key.namespace
            && svc.selector.as_ref().is_some_and(|s| selects(s, &ctx.proxy.labels));
        if !selected {
            continue;
        }
        for p in &svc.ports {
            let target = match &p.target_port {
                TargetPort::Number(n) => Some(*n),
                TargetPort::Named(n) => ctx.proxy.named_ports.get(n).copied(),
            };
            if let Some(t) = target {
                ports.entry(t).or_insert_with(|| AppPort {
                    protocol: p.protocol,
                    address: "127.0.0.1".into(),
                    port: t,
                    service: Some(format!("{}.{}.svc.{DNS_DOMAIN}", svc.key.name, svc.key.namespace)),
                    service_port: p.port,
                    provenance: service_provenance(svc),
                    pool: None,
                });
            }
        }
    }
    let sidecar = scope::applying(ctx.snapshot, ctx.proxy);
    if let Some(sidecar) = sidecar {
        ingress_listeners(sidecar, &mut ports);
    }
    inbound_pools(ctx, sidecar, &mut ports);
    ports
}

/// The ingress listeners of the Sidecar that applies (see the module docs).
fn ingress_listeners(sidecar: &Sidecar, ports: &mut BTreeMap<u16, AppPort>) {
    for (i, l) in sidecar.spec.ingress.iter().flatten().enumerate() {
        // Port 0 (a unix socket) and ports past 65535 never pass the validator.
        let Ok(number) = u16::try_from(l.port.number) else {
            continue;
        };
        let Some(number) = std::num::NonZeroU16::new(number).map(u16::from) else {
            continue;
        };
        let (address, port) = default_endpoint(l.default_endpoint.as_deref(), number);
        let service = ports.get(&number).and_then(|p| p.service.clone());
        let provenance = Provenance {
            kind: "Sidecar".into(),
            namespace: sidecar.metadata.namespace.clone().unwrap_or_default(),
            name: sidecar.metadata.name.clone().unwrap_or_default(),
            rule_index: Some(i as u32),
            section: Some(RuleSection::Ingress),
            parts: Vec::new(),
        };
        ports.insert(
            number,
            AppPort {
                protocol: Protocol::detect(l.port.protocol.as_deref(), l.port.name.as_deref()),
                address,
                port,
                service,
                service_port: number,
                pool: l.connection_pool.clone().map(|settings| InboundPool {
                    settings,
                    source: provenance.clone(),
                }),
                provenance,
            },
        );
    }
}

/// The pool of each port, by Istio's precedence (`ClusterBuilder.buildInboundCluster`): the
/// ingress listener's `connectionPool` (set by [`ingress_listeners`]), else the Sidecar's
/// `inboundConnectionPool` (`SidecarScope.InboundConnectionPoolForPort`), else the
/// DestinationRule of the port's Service ([`destination_rule_pool`]). Istio sets circuit
/// breakers on the receiving side too, "so that the server has enough capacity (not the
/// defaults) to handle the increased traffic volume". A Sidecar's pool replaces the rule's
/// whole, not field by field, as Istio replaces the policy's `ConnectionPool`.
fn inbound_pools(ctx: &Ctx<'_>, sidecar: Option<&Sidecar>, ports: &mut BTreeMap<u16, AppPort>) {
    let sidecar_pool = sidecar.and_then(|s| {
        let settings = s.spec.inbound_connection_pool.clone()?;
        let source = Provenance {
            kind: "Sidecar".into(),
            namespace: s.metadata.namespace.clone().unwrap_or_default(),
            name: s.metadata.name.clone().unwrap_or_default(),
            rule_index: None,
            section: None,
            parts: Vec::new(),
        };
        Some(InboundPool { settings, source })
    });
    for p in ports.values_mut().filter(|p| p.pool.is_none()) {
        p.pool = sidecar_pool.clone().or_else(|| {
            let host = p.service.as_deref()?;
            destination_rule_pool(ctx, host, p.service_port)
        });
    }
}

/// The connection pool the DestinationRule of `host` gives the inbound cluster of its port
/// `service_port`, as Istio's `buildInboundCluster` finds it:
///
/// - the rule is the one that applies to the Service's hostname for the proxy (its own
///   namespace's first, then the Service's, then any other exported to it: the rule the
///   proxy's outbound clusters to the same host take). Istio skips rules with a
///   `workloadSelector` here (inbound settings belong on the Sidecar); Trellis refuses
///   `workloadSelector` on DestinationRules altogether. Istio looks the rule up in the
///   proxy's `SidecarScope`, whose index holds only the hosts the Sidecar's egress imports;
///   Trellis takes the rule for the Service whatever the egress hosts, as the intent of
///   Istio's code (the Service's own rule) says.
/// - its policy for `service_port` ([`policy::in_force`], the one resolution outbound clusters
///   take too, without a subset): a `portLevelSettings` entry for the port replaces the rule's
///   policy whole — an entry without `connectionPool` gives the port none (Istio's
///   `GetPortLevelTrafficPolicy`: "port level policies do not inherit") —, else the rule's
///   `trafficPolicy.connectionPool`. Only the pool: Istio applies no load balancer, outlier
///   detection or TLS to inbound clusters.
/// - subsets play no part (an inbound cluster serves every subset).
///
/// A port no Service names has no rule: Istio's placeholder hostname for it
/// (`<sidecar>.<namespace>`) is no Service a rule is written for.
fn destination_rule_pool(ctx: &Ctx<'_>, host: &str, service_port: u16) -> Option<InboundPool> {
    let dr = destination_rule(ctx, host)?;
    let InForce { policy, parts } = policy::in_force(&dr.spec, None, service_port);
    Some(InboundPool {
        settings: policy.connection_pool?,
        source: Provenance {
            kind: "DestinationRule".into(),
            namespace: dr.metadata.namespace.clone().unwrap_or_else(|| "default".into()),
            name: dr.metadata.name.clone().unwrap_or_default(),
            rule_index: None,
            section: None,
            parts,
        },
    })
}

/// The application's address and port from an ingress listener's `defaultEndpoint`
/// (`127.0.0.1:PORT`, `[::1]:PORT`); without one, `127.0.0.1` on the listener's port. The
/// validator refuses every other form; one that bypassed it keeps localhost.
fn default_endpoint(endpoint: Option<&str>, listener_port: u16) -> (String, u16) {
    let Some((host, port)) = endpoint.and_then(|e| e.rsplit_once(':')) else {
        return ("127.0.0.1".into(), listener_port);
    };
    let port = port.parse().ok().filter(|p| *p != 0).unwrap_or(listener_port);
    let address = if host == "[::1]" { "::1" } else { "127.0.0.1" };
    (address.into(), port)
}

#[cfg(test)]
mod tests {
    use super::default_endpoint;

    #[test]
    fn default_endpoints_are_localhost_ports() {
        assert_eq!(
            default_endpoint(Some("127.0.0.1:8080"), 9080),
            ("127.0.0.1".into(), 8080)
        );
        assert_eq!(default_endpoint(Some("[::1]:8081"), 9080), ("::1".into(), 8081));
        assert_eq!(default_endpoint(None, 9080), ("127.0.0.1".into(), 9080));
    }
}
