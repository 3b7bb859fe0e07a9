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
//! - The pool: the ingress listener's `connectionPool`, else the Sidecar's
//!   `inboundConnectionPool`, on the cluster of the port (Istio's precedence).

use std::collections::BTreeMap;

use trellis_api::networking::ConnectionPoolSettings;
use trellis_contract::{Provenance, RuleSection};

use super::super::outbound::service_provenance;
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
    /// The Service or the Sidecar ingress listener that decided it.
    pub(in crate::compile) provenance: Provenance,
    /// Its connection pool, if the Sidecar gives one.
    pub(in crate::compile) pool: Option<ConnectionPoolSettings>,
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
                    provenance: service_provenance(svc),
                    pool: None,
                });
            }
        }
    }
    let Some(sidecar) = scope::applying(ctx.snapshot, ctx.proxy) else {
        return ports;
    };
    let spec = &sidecar.spec;
    for (i, l) in spec.ingress.iter().flatten().enumerate() {
        // Port 0 (a unix socket) and ports past 65535 never pass the validator.
        let Ok(number) = u16::try_from(l.port.number) else {
            continue;
        };
        let Some(number) = std::num::NonZeroU16::new(number).map(u16::from) else {
            continue;
        };
        let (address, port) = default_endpoint(l.default_endpoint.as_deref(), number);
        let service = ports.get(&number).and_then(|p| p.service.clone());
        ports.insert(
            number,
            AppPort {
                protocol: Protocol::detect(l.port.protocol.as_deref(), l.port.name.as_deref()),
                address,
                port,
                service,
                provenance: Provenance {
                    kind: "Sidecar".into(),
                    namespace: sidecar.metadata.namespace.clone().unwrap_or_default(),
                    name: sidecar.metadata.name.clone().unwrap_or_default(),
                    rule_index: Some(i as u32),
                    section: Some(RuleSection::Ingress),
                },
                pool: l.connection_pool.clone(),
            },
        );
    }
    if let Some(pool) = &spec.inbound_connection_pool {
        for p in ports.values_mut().filter(|p| p.pool.is_none()) {
            p.pool = Some(pool.clone());
        }
    }
    ports
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
