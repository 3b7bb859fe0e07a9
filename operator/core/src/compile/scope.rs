//! A sidecar's reach (Istio's `SidecarScope`): which Sidecar applies to a proxy, and which
//! Services, ServiceEntries and VirtualServices its outbound listener, clusters and DNS table
//! hold — so a proxy receives what it can reach, not the whole mesh.
//!
//! - The Sidecar that applies: the oldest of the proxy's namespace whose `workloadSelector`
//!   selects the pod, else the oldest of its namespace without a selector, else the oldest of
//!   the root namespace without a selector (the mesh default), else none (every host the
//!   proxy can see, as without Sidecars). `meshctl analyze` reports the ambiguous cases
//!   (IST0110, IST0111).
//! - An egress host `namespace/dnsName` imports the Services and ServiceEntries declared in
//!   that namespace (`*` any, `.` the proxy's, `~` none) whose host the dnsName covers, and the
//!   mesh VirtualServices of that namespace for them; the destinations of imported
//!   VirtualServices are imported too (Istio's rule: a route works whatever the hosts say).
//! - A listener with a `port` takes that port: hosts are routed on it only if it imports them,
//!   with its protocol; the listener without a port takes the ports no other names.
//! - `outboundTrafficPolicy` replaces the Mesh's for the proxies of the Sidecar.
//!
//! The outbound listener records the Sidecar that scoped it (`Listener::scope`).

use std::collections::BTreeSet;

use trellis_api::mesh::OutboundTrafficMode;
use trellis_api::networking::{Sidecar, VirtualService};
use trellis_contract::{Provenance, Unrouted};

use super::{host_matches, resolve_host};
use crate::registry::{ObjectKey, Protocol, Workload, selects};
use crate::snapshot::Snapshot;

/// The namespaces an egress host imports from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Namespaces {
    /// `*`.
    Any,
    /// A name (`.` resolved to the proxy's namespace).
    Named(String),
    /// `~`: none.
    None,
}

impl Namespaces {
    fn contains(&self, ns: &str) -> bool {
        match self {
            Namespaces::Any => true,
            Namespaces::Named(n) => n == ns,
            Namespaces::None => false,
        }
    }
}

/// One egress listener of the applying Sidecar.
#[derive(Debug, Clone)]
struct Egress {
    /// The port it takes and the protocol it gives it; `None`: the catch-all.
    port: Option<(u16, Protocol)>,
    hosts: Vec<(Namespaces, String)>,
}

impl Egress {
    fn imports(&self, namespace: &str, host: &str) -> bool {
        self.hosts
            .iter()
            .any(|(ns, name)| ns.contains(namespace) && (name == "*" || host_matches(name, host)))
    }
}

/// What a sidecar can reach, from the Sidecar that applies to it (see the module docs).
#[derive(Debug, Clone, Default)]
pub(crate) struct Scope {
    /// The applying Sidecar, `namespace/name`.
    sidecar: Option<ObjectKey>,
    /// Its egress listeners; none: every host.
    egress: Vec<Egress>,
    /// The hosts imported as destinations of imported VirtualServices.
    destinations: BTreeSet<String>,
    /// Its `outboundTrafficPolicy.mode`, if it sets one.
    mode: Option<OutboundTrafficMode>,
}

/// The Sidecar that applies to `proxy`, by Istio's precedence (see the module docs).
pub(crate) fn applying<'a>(snapshot: &'a Snapshot, proxy: &Workload) -> Option<&'a Sidecar> {
    let ns = proxy.key.namespace.as_str();
    let mut candidates: Vec<&Sidecar> = snapshot.sidecars.iter().collect();
    candidates.sort_by_key(|s| {
        (
            s.metadata.creation_timestamp.as_ref().map(|t| t.0),
            s.metadata.namespace.clone(),
            s.metadata.name.clone(),
        )
    });
    let in_ns = |s: &&Sidecar, n: &str| s.metadata.namespace.as_deref().unwrap_or("default") == n;
    let selector = |s: &Sidecar| {
        s.spec
            .workload_selector
            .as_ref()
            .and_then(|w| w.labels.as_ref())
            .filter(|l| !l.is_empty())
            .cloned()
    };
    candidates
        .iter()
        .find(|s| in_ns(s, ns) && selector(s).is_some_and(|l| selects(&l, &proxy.labels)))
        .or_else(|| candidates.iter().find(|s| in_ns(s, ns) && selector(s).is_none()))
        .or_else(|| {
            candidates
                .iter()
                .find(|s| in_ns(s, &snapshot.root_namespace) && selector(s).is_none())
        })
        .copied()
}

impl Scope {
    /// The scope of `proxy` (a sidecar) in `snapshot`.
    pub(crate) fn of(snapshot: &Snapshot, proxy: &Workload) -> Scope {
        let Some(sidecar) = applying(snapshot, proxy) else {
            return Scope::default();
        };
        let own = proxy.key.namespace.as_str();
        let egress = sidecar
            .spec
            .egress
            .iter()
            .flatten()
            .map(|l| Egress {
                port: l.port.as_ref().and_then(|p| {
                    let number = u16::try_from(p.number).ok()?;
                    Some((number, Protocol::detect(p.protocol.as_deref(), p.name.as_deref())))
                }),
                hosts: l
                    .hosts
                    .iter()
                    .filter_map(|h| h.split_once('/'))
                    .map(|(ns, name)| {
                        let ns = match ns {
                            "*" => Namespaces::Any,
                            "~" => Namespaces::None,
                            "." => Namespaces::Named(own.to_string()),
                            n => Namespaces::Named(n.to_string()),
                        };
                        (ns, name.to_ascii_lowercase())
                    })
                    .collect(),
            })
            .collect();
        let mut scope = Scope {
            sidecar: Some(ObjectKey::new(
                sidecar.metadata.namespace.as_deref().unwrap_or("default"),
                sidecar.metadata.name.as_deref().unwrap_or_default(),
            )),
            egress,
            destinations: BTreeSet::new(),
            mode: sidecar.spec.outbound_traffic_policy.as_ref().and_then(|p| p.mode),
        };
        if !scope.egress.is_empty() {
            for vs in &snapshot.virtual_services {
                let vs_ns = vs.metadata.namespace.as_deref().unwrap_or("default");
                let imported = vs
                    .spec
                    .hosts
                    .iter()
                    .flatten()
                    .any(|h| scope.imports_virtual_service_host(vs_ns, &resolve_host(h, vs_ns)));
                if imported {
                    scope.destinations.extend(destinations(vs, vs_ns));
                }
            }
        }
        scope
    }

    /// Where the outbound listener's scope came from (`None` without a Sidecar).
    pub(crate) fn provenance(&self) -> Option<Provenance> {
        self.sidecar.as_ref().map(|k| Provenance {
            kind: "Sidecar".into(),
            namespace: k.namespace.clone(),
            name: k.name.clone(),
            rule_index: None,
            section: None,
            parts: Vec::new(),
        })
    }

    /// What the outbound listener does with traffic no route takes: the Sidecar's
    /// `outboundTrafficPolicy`, else the Mesh's.
    pub(crate) fn unrouted(&self, mesh: Option<OutboundTrafficMode>) -> Unrouted {
        match self.mode.or(mesh) {
            // ALLOW_ANY_DYNAMIC_DNS is refused by the validator; compiled as ALLOW_ANY and
            // reported by `outbound::report_mesh_mode`.
            None | Some(OutboundTrafficMode::AllowAny | OutboundTrafficMode::AllowAnyDynamicDns) => {
                Unrouted::Passthrough
            }
            Some(OutboundTrafficMode::RegistryOnly) => Unrouted::BlackHole,
        }
    }

    /// The listener that takes `port`: the one naming it, else the catch-all.
    fn listener(&self, port: u16) -> Option<&Egress> {
        let named = self.egress.iter().find(|l| l.port.is_some_and(|(p, _)| p == port));
        named.or_else(|| self.egress.iter().find(|l| l.port.is_none()))
    }

    /// Whether `host` (declared in `namespace`) is routed on `port`, and with which protocol:
    /// `Some(None)` as declared, `Some(Some(p))` as the egress listener's port says, `None`
    /// not at all.
    pub(crate) fn port(&self, namespace: &str, host: &str, port: u16) -> Option<Option<Protocol>> {
        if self.egress.is_empty() {
            return Some(None);
        }
        let listener = self.listener(port)?;
        let imported = listener.imports(namespace, host) || self.destinations.contains(host);
        imported.then(|| listener.port.map(|(_, protocol)| protocol))
    }

    /// Whether `host` (declared in `namespace`) is imported on any port: its DNS entry.
    pub(crate) fn host(&self, namespace: &str, host: &str) -> bool {
        self.egress.is_empty()
            || self.destinations.contains(host)
            || self.egress.iter().any(|l| l.imports(namespace, host))
    }

    /// Whether a mesh VirtualService of `namespace` applies to `host` for this proxy.
    pub(crate) fn virtual_service(&self, namespace: &str, host: &str) -> bool {
        self.egress.is_empty() || self.imports_virtual_service_host(namespace, host)
    }

    fn imports_virtual_service_host(&self, namespace: &str, host: &str) -> bool {
        self.egress.iter().any(|l| {
            l.hosts.iter().any(|(ns, name)| {
                ns.contains(namespace) && (name == "*" || host_matches(name, host) || host_matches(host, name))
            })
        })
    }
}

/// The hosts a VirtualService of `ns` routes to (its destinations, as FQDNs).
fn destinations(vs: &VirtualService, ns: &str) -> Vec<String> {
    let spec = &vs.spec;
    let http = spec.http.iter().flatten().flat_map(|r| r.route.iter().flatten());
    let http = http.map(|d| &d.destination);
    let mirror = spec.http.iter().flatten().filter_map(|r| r.mirror.as_ref());
    let mirrors = spec.http.iter().flatten().flat_map(|r| r.mirrors.iter().flatten());
    let tcp = spec.tcp.iter().flatten().flat_map(|r| r.route.iter().flatten());
    let tls = spec.tls.iter().flatten().flat_map(|r| r.route.iter().flatten());
    http.chain(mirror)
        .chain(mirrors.map(|m| &m.destination))
        .chain(tcp.map(|d| &d.destination))
        .chain(tls.map(|d| &d.destination))
        .map(|d| resolve_host(&d.host, ns))
        .collect()
}
