//! A compiled configuration: the contract validated and turned into run-time
//! structures (route tables, clusters with pools and balancers, authorization,
//! TLS configs). Requests load one snapshot and use it to the end, so a swap
//! never disturbs requests in flight.

use crate::authz::{Authorizer, AuthzError};
use crate::identity::{TlsError, WorkloadIdentity};
use crate::metrics::Peer;
use crate::routing::{RouteTable, RoutingError};
use crate::upstream::{ClusterError, ClusterRuntime};
use ipnet::IpNet;
use rustls::ServerConfig;
// why: every request looks its listener and its cluster up by name; foldhash (randomly seeded)
// hashes a name in a fraction of SipHash's instructions, and the names are the config's.
use foldhash::{HashMap, HashMapExt};
use std::net::SocketAddr;
use std::sync::Arc;
use trellis_contract::{
    Cluster, Discovery, Listener, ListenerDirection, ListenerProtocol, MtlsMode, ProxyConfig, Route, Unrouted,
    UpstreamProtocol, UpstreamTls, ValidationErrors, VirtualHost,
};

/// Why a config was rejected; the last good config stays in force.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The contract validator rejected it.
    #[error(transparent)]
    Invalid(#[from] ValidationErrors),
    /// TLS material could not be loaded.
    #[error("config {version:?}: {source}")]
    Tls {
        /// Config version.
        version: String,
        /// Cause.
        #[source]
        source: Box<TlsError>,
    },
    /// A cluster could not be built.
    #[error("config {version:?}: {source}")]
    Cluster {
        /// Config version.
        version: String,
        /// Cause.
        #[source]
        source: Box<ClusterError>,
    },
    /// Routes could not be compiled.
    #[error("config {version:?}: {source}")]
    Routing {
        /// Config version.
        version: String,
        /// Cause.
        #[source]
        source: RoutingError,
    },
    /// JWT providers could not be compiled.
    #[error("config {version:?}: {source}")]
    Authn {
        /// Config version.
        version: String,
        /// Cause.
        #[source]
        source: crate::jwt::AuthnError,
    },
    /// Authorization policies could not be compiled.
    #[error("config {version:?}: {source}")]
    Authz {
        /// Config version.
        version: String,
        /// Cause.
        #[source]
        source: AuthzError,
    },
}

/// A listener at run time.
#[derive(Debug)]
pub struct ListenerRuntime {
    /// The config.
    pub spec: Listener,
    /// HTTP routes.
    pub routes: RouteTable,
    /// Gateway TLS, by SNI.
    pub tls: Option<Arc<crate::sni::TlsServers>>,
    /// TCP routes, in order.
    pub tcp_routes: Vec<TcpRouteRuntime>,
    /// Where HTTP requests no virtual host takes go (`unrouted: passthrough`): a route to
    /// [`PASSTHROUGH_CLUSTER`] for any host.
    pub passthrough: Option<RouteTable>,
}

/// The cluster of traffic an outbound listener passes through (`unrouted: passthrough`):
/// each connection to the address it was sent to, plaintext as sent (Istio's name).
pub const PASSTHROUGH_CLUSTER: &str = "PassthroughCluster";

/// The passthrough cluster's definition.
fn passthrough_cluster() -> Cluster {
    Cluster {
        name: PASSTHROUGH_CLUSTER.into(),
        service: None,
        subset: None,
        protocol: UpstreamProtocol::UseDownstream,
        load_balancer: Default::default(),
        connect_timeout_ms: 10_000,
        connection_pool: Default::default(),
        outlier_detection: None,
        panic_threshold_percent: 0.0,
        tls: UpstreamTls::Disable,
        discovery: Discovery::OriginalDestination,
        endpoints: Vec::new(),
        provenance: None,
    }
}

/// The route of passed-through HTTP: any host, to [`PASSTHROUGH_CLUSTER`].
fn passthrough_routes() -> Result<RouteTable, RoutingError> {
    let route: Route = serde_json::from_value(serde_json::json!({
        "name": "allow_any",
        "action": {"forward": {"clusters": [{"cluster": PASSTHROUGH_CLUSTER}]}},
        "provenance": {"kind": "Mesh", "namespace": "", "name": "outboundTrafficPolicy"},
    }))
    .expect("the passthrough route is well-formed");
    RouteTable::compile(
        "passthrough",
        &[VirtualHost {
            name: PASSTHROUGH_CLUSTER.into(),
            domains: vec!["*".into()],
            routes: vec![route],
        }],
    )
}

impl TcpRouteRuntime {
    fn matches_destination(&self, dst: SocketAddr) -> bool {
        self.port.is_none_or(|p| p == dst.port())
            && (self.cidrs.is_empty() || self.cidrs.iter().any(|c| c.contains(&dst.ip())))
    }
}

/// A TCP route at run time.
#[derive(Debug)]
pub struct TcpRouteRuntime {
    /// The original destination port it matches (any when `None`).
    pub port: Option<u16>,
    /// The original destination addresses it matches (any when empty).
    pub cidrs: Vec<IpNet>,
    /// The TLS server names it matches (any connection when empty).
    pub sni_hosts: Vec<String>,
    /// On a listener that terminates TLS: taken before termination (see
    /// [`trellis_contract::TcpRoute::passthrough`]).
    pub passthrough: bool,
    /// Its clusters and their weights.
    pub clusters: Vec<(String, u32)>,
}

impl ListenerRuntime {
    /// Whether route `r` can take a connection: on a listener that terminates TLS, the
    /// passthrough routes before termination and the others after; elsewhere every route.
    fn eligible(&self, r: &TcpRouteRuntime, terminated: bool) -> bool {
        self.tls.is_none() || r.passthrough != terminated
    }

    /// Whether an HTTP route can take a request to destination port `port`: one with a match
    /// on that port or on none.
    fn routes_http_on(&self, port: u16) -> bool {
        self.spec
            .virtual_hosts
            .iter()
            .flat_map(|v| &v.routes)
            .any(|r| r.matches.is_empty() || r.matches.iter().any(|m| m.port.is_none_or(|p| p == port)))
    }

    /// The protocol a connection to `dst` on this inbound listener is taken in without reading
    /// its first bytes, as the config declares it per port: opaque TCP where only TCP routes take
    /// the port, HTTP where only HTTP routes do (Istio's protocol selection: a Service port named
    /// `tcp-*` or with `appProtocol: tcp` is TCP, one named `http-*` or `grpc-*` is HTTP); `None`
    /// where both do — a port the Service leaves to detection — or neither does. `terminated`:
    /// see [`Self::tcp_cluster`].
    pub fn declared_protocol(&self, dst: SocketAddr, terminated: bool) -> Option<ListenerProtocol> {
        let http = self.routes_http_on(dst.port());
        let tcp = self.tcp_route(dst, None, terminated).is_some();
        match (http, tcp) {
            (true, false) => Some(ListenerProtocol::Http),
            (false, true) => Some(ListenerProtocol::Tcp),
            _ => None,
        }
    }

    /// Whether any TCP route can take a connection (`terminated`: see [`Self::tcp_cluster`]).
    pub fn has_tcp_routes(&self, terminated: bool) -> bool {
        self.tcp_routes.iter().any(|r| self.eligible(r, terminated))
    }

    /// Whether a TCP route for `dst` matches on the TLS server name, so the
    /// ClientHello must be read first: before a listener that terminates TLS does so
    /// (`terminated` false), or for connections it does not terminate.
    pub fn routes_by_sni(&self, dst: SocketAddr, terminated: bool) -> bool {
        self.tcp_routes
            .iter()
            .any(|r| !r.sni_hosts.is_empty() && self.eligible(r, terminated) && r.matches_destination(dst))
    }

    /// The first TCP route that takes a connection to `dst` (with the server name of its
    /// ClientHello, if read; `None` for a client that has sent none).
    pub fn tcp_route(&self, dst: SocketAddr, sni: Option<&str>, terminated: bool) -> Option<&TcpRouteRuntime> {
        self.tcp_routes.iter().find(|r| {
            self.eligible(r, terminated)
                && r.matches_destination(dst)
                && (r.sni_hosts.is_empty()
                    || sni.is_some_and(|n| r.sni_hosts.iter().any(|h| crate::client_hello::host_matches(h, n))))
        })
    }

    /// The cluster for a new connection to an original destination (with the server name of
    /// its ClientHello, if read; `terminated` once this listener terminated its TLS): the
    /// first TCP route that matches it, and one of its clusters by weight.
    pub fn tcp_cluster(&self, dst: SocketAddr, sni: Option<&str>, terminated: bool) -> Option<&str> {
        let clusters = &self.tcp_route(dst, sni, terminated)?.clusters;
        if let [(only, _)] = clusters.as_slice() {
            return Some(only);
        }
        // Validation guarantees the weights sum to 100.
        let total: u32 = clusters.iter().map(|(_, w)| w).sum();
        let mut roll = fastrand::u32(..total.max(1));
        for (cluster, weight) in clusters {
            if roll < *weight {
                return Some(cluster);
            }
            roll -= weight;
        }
        None
    }
}

/// A compiled, immutable configuration.
#[derive(Debug)]
pub struct Snapshot {
    /// The source config without its clusters, which are most of a sidecar's config (every
    /// visible service's endpoints): each cluster's definition is kept once, in its runtime
    /// ([`ClusterRuntime::spec`]). [`Snapshot::config`] puts the whole config back together.
    pub settings: Arc<ProxyConfig>,
    /// Listeners by name.
    pub listeners: HashMap<String, Arc<ListenerRuntime>>,
    /// Clusters by name.
    pub clusters: HashMap<String, Arc<ClusterRuntime>>,
    /// The config's clusters in its order (without [`PASSTHROUGH_CLUSTER`]).
    cluster_order: Vec<Arc<ClusterRuntime>>,
    /// Inbound authorization.
    pub authorizer: Authorizer,
    /// Inbound end-user (JWT) authentication.
    pub authenticator: crate::jwt::Authenticator,
    /// Workload identity, when configured.
    pub identity: Option<WorkloadIdentity>,
    /// Inbound mesh mTLS server config.
    pub inbound_tls: Option<Arc<ServerConfig>>,
    /// This proxy's workload, as metric labels (shared by every request's labels).
    pub node: Arc<Peer>,
    /// The same without the principal: what a plaintext upstream learns of it.
    pub node_plaintext: Arc<Peer>,
    /// This proxy's workload as a peer metadata header value, sent on mesh
    /// mTLS requests (precomputed: no per-request formatting).
    pub peer_metadata: Option<http::HeaderValue>,
    /// Names the DNS proxy answers.
    pub dns: crate::dns_table::DnsTable,
    /// TLS to an `https://` OTLP collector.
    pub collector_tls: Option<Arc<rustls::ClientConfig>>,
}

impl Snapshot {
    /// The whole config in force, as applied (a copy: `/config_dump`, re-applying it).
    pub fn config(&self) -> ProxyConfig {
        ProxyConfig {
            clusters: self.cluster_order.iter().map(|c| c.spec.clone()).collect(),
            ..ProxyConfig::clone(&self.settings)
        }
    }

    /// Whether the config needs a workload identity to serve: a mesh cluster, or an inbound
    /// listener with mutual TLS.
    pub fn needs_identity(&self) -> bool {
        self.cluster_order
            .iter()
            .any(|c| matches!(c.spec.tls, UpstreamTls::Mesh { .. }))
            || (self
                .settings
                .listeners
                .iter()
                .any(|l| l.direction == ListenerDirection::Inbound)
                && self.settings.inbound.mtls.mode != MtlsMode::Disable)
    }

    /// Validate and compile. Clusters whose definition (and the identity) did
    /// not change are reused from `previous`, keeping their pools and state.
    pub fn build(mut config: ProxyConfig, previous: Option<&Snapshot>) -> Result<Self, SnapshotError> {
        config.validate()?;
        let version = config.version.clone();
        let tls_err = |source| SnapshotError::Tls {
            version: version.clone(),
            source: Box::new(source),
        };
        let identity = WorkloadIdentity::load(&config.identity).map_err(tls_err)?;
        // why: identity files keep their paths when a certificate is rotated, so the loaded
        // material is compared too; clusters built with the old certificate are not reused.
        let identity_unchanged = previous.is_some_and(|p| {
            p.settings.identity == config.identity
                // The endpoints' metric labels name the cluster.
                && p.settings.node.cluster == config.node.cluster
                && match (&p.identity, &identity) {
                    (Some(a), Some(b)) => a.cert.chain == b.cert.chain && a.roots.roots == b.roots.roots,
                    (None, None) => true,
                    _ => false,
                }
        });

        let mut clusters = HashMap::new();
        let passes_through = config.listeners.iter().any(|l| l.unrouted == Unrouted::Passthrough);
        let passthrough = passes_through.then(passthrough_cluster);
        let upstreams = crate::resolver::upstreams(&config.dns);
        let resolvers_unchanged = previous.is_some_and(|p| p.settings.dns.upstreams == config.dns.upstreams);
        let listed = std::mem::take(&mut config.clusters);
        let mut cluster_order = Vec::with_capacity(listed.len());
        let from_config = listed.len();
        for (i, c) in listed.into_iter().chain(passthrough).enumerate() {
            let reused = previous
                .filter(|_| identity_unchanged && (c.discovery.is_static() || resolvers_unchanged))
                .and_then(|p| p.clusters.get(&c.name))
                .filter(|old| old.spec == c)
                .cloned();
            let name = c.name.clone();
            let rt = match reused {
                Some(rt) => rt,
                None => Arc::new(
                    ClusterRuntime::build_with(c, identity.as_ref(), &config.node.cluster, upstreams.clone()).map_err(
                        |source| SnapshotError::Cluster {
                            version: version.clone(),
                            source: Box::new(source),
                        },
                    )?,
                ),
            };
            if i < from_config {
                cluster_order.push(Arc::clone(&rt));
            }
            clusters.entry(name).or_insert(rt);
        }

        let mut listeners = HashMap::new();
        for (i, l) in config.listeners.iter().enumerate() {
            let routes = RouteTable::compile(&format!("listeners[{i}]"), &l.virtual_hosts).map_err(|source| {
                SnapshotError::Routing {
                    version: version.clone(),
                    source,
                }
            })?;
            let tls = crate::sni::TlsServers::build(l, identity.as_ref())
                .map_err(tls_err)?
                .map(Arc::new);
            let tcp_routes = l
                .tcp_routes
                .iter()
                .map(|t| TcpRouteRuntime {
                    port: t.destination_port,
                    cidrs: t.destination_cidrs.iter().filter_map(|c| c.parse().ok()).collect(),
                    sni_hosts: t.sni_hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
                    passthrough: t.passthrough,
                    clusters: t.destinations().into_iter().map(|(c, w)| (c.to_string(), w)).collect(),
                })
                .collect();
            let passthrough = match l.unrouted {
                Unrouted::Passthrough => Some(passthrough_routes().map_err(|source| SnapshotError::Routing {
                    version: version.clone(),
                    source,
                })?),
                _ => None,
            };
            listeners.insert(
                l.name.clone(),
                Arc::new(ListenerRuntime {
                    spec: l.clone(),
                    routes,
                    tls,
                    tcp_routes,
                    passthrough,
                }),
            );
        }

        let has_inbound = config
            .listeners
            .iter()
            .any(|l| l.direction == ListenerDirection::Inbound);
        let inbound_tls = match (&identity, has_inbound) {
            (Some(id), true) => Some(id.server_config().map_err(tls_err)?),
            _ => None,
        };
        let authorizer = Authorizer::compile(&config.inbound).map_err(|source| SnapshotError::Authz {
            version: version.clone(),
            source,
        })?;
        let authenticator =
            crate::jwt::Authenticator::compile(&config.inbound.jwt).map_err(|source| SnapshotError::Authn {
                version: version.clone(),
                source,
            })?;
        let node = Arc::new(Peer::of_node(
            &config.node,
            config.identity.spiffe_id.as_deref().unwrap_or_default(),
        ));
        let peer_metadata = crate::peer_metadata::encode(&node);
        let node_plaintext = Arc::new(Peer {
            principal: String::new(),
            ..Peer::clone(&node)
        });
        let dns = crate::dns_table::DnsTable::new(&config.dns);
        let collector_tls = match &config.telemetry.tracing {
            Some(t) if t.otlp_endpoint.as_deref().is_some_and(|e| e.starts_with("https://")) => {
                // Loading the system roots is not free: reuse them while the CA setting stands.
                let reused = previous
                    .filter(|p| {
                        p.settings.telemetry.tracing.as_ref().map(|pt| &pt.collector_ca) == Some(&t.collector_ca)
                            && !matches!(t.collector_ca, Some(trellis_contract::PemSource::File(_)))
                    })
                    .and_then(|p| p.collector_tls.clone());
                match reused {
                    Some(cfg) => Some(cfg),
                    None => Some(crate::identity::collector_client_config(t.collector_ca.as_ref()).map_err(tls_err)?),
                }
            }
            _ => None,
        };
        Ok(Self {
            collector_tls,
            dns,
            settings: Arc::new(config),
            listeners,
            clusters,
            cluster_order,
            authorizer,
            authenticator,
            identity,
            inbound_tls,
            node,
            node_plaintext,
            peer_metadata,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(version: &str, clusters: &[&str]) -> ProxyConfig {
        serde_json::from_value(serde_json::json!({
            "version": version,
            "listeners": [{
                "name": "outbound", "address": "127.0.0.1:0", "direction": "outbound", "protocol": "http",
                "transparent": true, "unrouted": "passthrough",
                "virtualHosts": [{"name": "a", "domains": ["a"], "routes": [{
                    "action": {"forward": {"clusters": [{"cluster": clusters[0]}]}},
                    "provenance": {"kind": "Service", "namespace": "ns", "name": "a"},
                }]}],
            }],
            "clusters": clusters.iter().map(|c| serde_json::json!({
                "name": c,
                "endpoints": [{"address": "10.0.0.1", "port": 80, "labels": {"app": c}}],
            })).collect::<Vec<_>>(),
        }))
        .unwrap()
    }

    #[test]
    fn the_config_is_given_back_whole_and_in_order_though_its_clusters_live_in_their_runtimes() {
        // Not in name order, with the passthrough cluster added to `clusters` only.
        let applied = config("v1", &["c", "a", "b"]);
        let snapshot = Snapshot::build(applied.clone(), None).unwrap();
        assert!(
            snapshot.settings.clusters.is_empty(),
            "the clusters are kept once, in their runtimes"
        );
        assert!(snapshot.clusters.contains_key(PASSTHROUGH_CLUSTER));
        assert_eq!(snapshot.config(), applied);

        // A cluster reused from the previous snapshot is given back too.
        let next = config("v2", &["a", "d"]);
        let second = Snapshot::build(next.clone(), Some(&snapshot)).unwrap();
        assert!(Arc::ptr_eq(&snapshot.clusters["a"], &second.clusters["a"]));
        assert_eq!(second.config(), next);
    }
}
