//! Inbound traffic of a sidecar: the listener that hands traffic from other proxies to the
//! app on localhost (its ports: [`ingress`]), and the policy it enforces — the PeerAuthentication mode (workload >
//! namespace > mesh, port-level on top), the RequestAuthentications (JWT issuers) and the
//! AuthorizationPolicies that select the workload.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use trellis_api::security::{
    self as api, AuthzAction as ApiAction, KeySource, MtlsMode as ApiMode, PeerAuthentication,
};
use trellis_contract::{
    self as c, AuthorizationPolicy, AuthzAction, AuthzCondition, AuthzOperation, AuthzRule, AuthzSource, Cluster,
    ConnectionPool, Endpoint, HealthStatus, HttpLimits, InboundPolicy, LbPolicy, Listener, ListenerDirection,
    ListenerProtocol, LoadBalancer, MtlsMode, MtlsPolicy, PathNormalization, RouteMatch, SpiffeId, TcpRoute,
    UpstreamProtocol, UpstreamTls, VirtualHost,
};

mod ingress;

use super::cluster::apply_pool;
use super::route::forward_to;
use super::{Code, Ctx, Dropped, INBOUND_PORT, Role, resource};
use crate::registry::{Protocol, selects};
use crate::snapshot::FetchedJwks;

/// The inbound listener, its local clusters, and the inbound policy.
pub(crate) fn sidecar(ctx: &mut Ctx<'_>) -> (Listener, Vec<Cluster>, InboundPolicy) {
    let mut routes = Vec::new();
    let mut tcp_routes = Vec::new();
    let mut clusters = Vec::new();
    for (port, app) in ingress::app_ports(ctx) {
        let protocol = app.protocol;
        let cluster = format!("inbound|{port}||");
        let mut c = Cluster {
            name: cluster.clone(),
            service: app.service,
            subset: None,
            protocol: match protocol {
                Protocol::Http => UpstreamProtocol::Http1,
                Protocol::Http2 => UpstreamProtocol::Http2,
                Protocol::Tcp | Protocol::Tls => UpstreamProtocol::Tcp,
                Protocol::Auto => UpstreamProtocol::UseDownstream,
            },
            load_balancer: LoadBalancer {
                policy: LbPolicy::RoundRobin,
                hash_key: None,
            },
            connect_timeout_ms: 10_000,
            connection_pool: ConnectionPool::default(),
            outlier_detection: None,
            panic_threshold_percent: 0.0,
            tls: UpstreamTls::Disable,
            discovery: trellis_contract::Discovery::Static,
            endpoints: vec![Endpoint {
                address: app.address,
                port: app.port,
                weight: 1,
                labels: BTreeMap::new(),
                health: HealthStatus::Healthy,
                identity: None,
            }],
            provenance: None,
        };
        if let Some(pool) = &app.pool {
            apply_pool(&pool.settings, &mut c);
            // `meshctl proxy-config clusters` says where the pool came from.
            c.provenance = Some(pool.source.clone());
        }
        clusters.push(c);
        if protocol.is_http() || protocol == Protocol::Auto {
            routes.push(forward_to(
                format!("inbound|{port}"),
                vec![RouteMatch {
                    port: Some(port),
                    ..RouteMatch::default()
                }],
                cluster.clone(),
                app.provenance.clone(),
            ));
        }
        if !protocol.is_http() {
            tcp_routes.push(TcpRoute {
                destination_port: Some(port),
                destination_cidrs: Vec::new(),
                sni_hosts: Vec::new(),
                passthrough: false,
                cluster,
                weighted_clusters: Vec::new(),
                provenance: Some(app.provenance),
            });
        }
    }
    let listener = Listener {
        name: "inbound".into(),
        address: format!("0.0.0.0:{INBOUND_PORT}"),
        direction: ListenerDirection::Inbound,
        protocol: ListenerProtocol::Auto,
        transparent: true,
        tls: None,
        sni_tls: Vec::new(),
        virtual_hosts: vec![VirtualHost {
            name: "inbound".into(),
            domains: vec!["*".into()],
            routes,
        }],
        tcp_routes,
        limits: HttpLimits::default(),
        path_normalization: PathNormalization::default(),
        unrouted: trellis_contract::Unrouted::NotFound,
        scope: None,
    };
    let policy = InboundPolicy {
        mtls: mtls(ctx),
        authorization: authorization(ctx, Role::Sidecar),
        jwt: request_authentication(ctx, Role::Sidecar),
    };
    (listener, clusters, policy)
}

fn mode(m: ApiMode) -> Option<MtlsMode> {
    match m {
        ApiMode::Unset => None,
        ApiMode::Disable => Some(MtlsMode::Disable),
        ApiMode::Permissive => Some(MtlsMode::Permissive),
        ApiMode::Strict => Some(MtlsMode::Strict),
    }
}

/// The oldest policy first, then by name (Istio's tie-break).
fn oldest(mut v: Vec<&PeerAuthentication>) -> Option<&PeerAuthentication> {
    v.sort_by_key(|p| {
        (
            p.metadata.creation_timestamp.as_ref().map(|t| t.0),
            p.metadata.name.clone(),
        )
    });
    v.into_iter().next()
}

/// mTLS mode by precedence: workload policy > namespace policy > mesh policy (root
/// namespace) > Mesh default > PERMISSIVE; UNSET inherits; port-level modes of the workload
/// policy on top.
pub(crate) fn mtls(ctx: &mut Ctx<'_>) -> MtlsPolicy {
    let pod_ns = ctx.proxy.key.namespace.clone();
    let pas = &ctx.snapshot.peer_authentications;
    let in_ns = |ns: &str| -> Vec<&PeerAuthentication> {
        pas.iter()
            .filter(|p| p.metadata.namespace.as_deref() == Some(ns))
            .collect()
    };
    let has_selector = |p: &&PeerAuthentication| {
        p.spec
            .selector
            .as_ref()
            .and_then(|s| s.match_labels.as_ref())
            .is_some_and(|l| !l.is_empty())
    };
    let workload_pas: Vec<&PeerAuthentication> = in_ns(&pod_ns)
        .into_iter()
        .filter(has_selector)
        .filter(|p| {
            p.spec
                .selector
                .as_ref()
                .and_then(|s| s.match_labels.as_ref())
                .is_some_and(|l| selects(l, &ctx.proxy.labels))
        })
        .collect();
    if workload_pas.len() > 1 {
        let names: Vec<String> = workload_pas
            .iter()
            .map(|p| resource("PeerAuthentication", &p.metadata))
            .collect();
        ctx.diag(
            Code::ConflictingPeerAuthentications,
            names[0].clone(),
            format!(
                "several PeerAuthentications select pod {}: {}; the oldest applies",
                ctx.proxy.key,
                names.join(", ")
            ),
        );
    }
    let workload = oldest(workload_pas);
    let namespace = oldest(in_ns(&pod_ns).into_iter().filter(|p| !has_selector(p)).collect());
    let mesh = oldest(
        in_ns(&ctx.snapshot.root_namespace)
            .into_iter()
            .filter(|p| !has_selector(p))
            .collect(),
    );
    let chain = [workload, namespace, mesh];
    let from_policies = chain
        .iter()
        .flatten()
        .find_map(|p| p.spec.mtls.as_ref().and_then(|m| m.mode).and_then(mode));
    let mesh_default = ctx.snapshot.mesh.default_mtls_mode.and_then(mode);
    let base = from_policies.or(mesh_default).unwrap_or(MtlsMode::Permissive);
    let mut port_modes = BTreeMap::new();
    if let Some(w) = workload {
        for (port, m) in w.spec.port_level_mtls.iter().flatten() {
            if let (Ok(p), Some(mode)) = (port.parse::<u16>(), m.mode.and_then(mode)) {
                port_modes.insert(p, mode);
            }
        }
    }
    MtlsPolicy { mode: base, port_modes }
}

/// The AuthorizationPolicies that apply to the workload: mesh-wide ones in the root
/// namespace, and those of its namespace, with no selector or a matching one, or targeting
/// (`targetRefs`) a Service that selects it or, for a gateway proxy, a Gateway that does.
pub(crate) fn authorization(ctx: &mut Ctx<'_>, role: Role) -> Vec<AuthorizationPolicy> {
    let snapshot = ctx.snapshot;
    let policies = applying(ctx, role, &snapshot.authorization_policies, |p| {
        (
            &p.metadata,
            &p.spec.selector,
            targets(&p.spec.target_ref, &p.spec.target_refs),
        )
    });
    let mut out = Vec::new();
    for p in policies {
        let res = resource("AuthorizationPolicy", &p.metadata);
        let action = match p.spec.action.unwrap_or(ApiAction::Allow) {
            ApiAction::Allow => AuthzAction::Allow,
            ApiAction::Deny => AuthzAction::Deny,
            ApiAction::Audit => AuthzAction::Audit,
            ApiAction::Custom => {
                ctx.dropped(
                    Dropped::CustomAction,
                    &res,
                    "action CUSTOM (external authorization) is not supported by Trellis yet; the policy is ignored",
                );
                continue;
            }
        };
        let rules = p.spec.rules.iter().flatten().map(|r| rule(ctx, r)).collect();
        out.push(AuthorizationPolicy {
            name: p.metadata.name.clone().unwrap_or_default(),
            namespace: p.metadata.namespace.clone().unwrap_or_default(),
            action,
            rules,
        });
    }
    out
}

/// The JWT issuers a workload accepts: every rule of the RequestAuthentications that apply to
/// it (mesh-wide ones in the root namespace, those of its namespace, by selector or
/// `targetRefs`), merged as Istio merges them. Keys are inline: the rule's `jwks`, or what the
/// operator fetched from its `jwksUri` — or, until a fetch succeeds, none (tokens of that
/// issuer are refused, never let through).
pub(crate) fn request_authentication(ctx: &mut Ctx<'_>, role: Role) -> Vec<c::JwtProvider> {
    let snapshot = ctx.snapshot;
    let policies = applying(ctx, role, &snapshot.request_authentications, |p| {
        (
            &p.metadata,
            &p.spec.selector,
            targets(&p.spec.target_ref, &p.spec.target_refs),
        )
    });
    let mut out = Vec::new();
    for p in policies {
        let res = resource("RequestAuthentication", &p.metadata);
        for (i, r) in p.spec.jwt_rules.iter().flatten().enumerate() {
            let source = KeySource::of(r);
            let (jwks, jwks_unavailable) = match (source, source.fetch_key()) {
                (KeySource::Inline(inline), _) => (inline.to_string(), None),
                (_, Some(key)) => {
                    // The proxies show this in /config_dump: never the URL's query.
                    let shown = trellis_api::security::jwks_uri_for_display(&key);
                    match ctx.snapshot.jwks.get(&key) {
                        Some(FetchedJwks::Keys(k)) => (k.clone(), None),
                        Some(FetchedJwks::Unavailable(why)) => (String::new(), Some(format!("{shown}: {why}"))),
                        None => (String::new(), Some(format!("{shown}: not fetched yet"))),
                    }
                }
                // The validator refuses a rule without keys; such a rule accepts no token.
                _ => (String::new(), Some("the rule names no key set".to_string())),
            };
            out.push(c::JwtProvider {
                source: format!("{res} jwtRules[{i}]"),
                issuer: r.issuer.clone(),
                audiences: r.audiences.clone().unwrap_or_default(),
                jwks,
                jwks_unavailable,
                from_headers: r
                    .from_headers
                    .iter()
                    .flatten()
                    .map(|h| c::JwtHeader {
                        name: h.name.clone(),
                        prefix: h.prefix.clone().unwrap_or_default(),
                    })
                    .collect(),
                from_params: r.from_params.clone().unwrap_or_default(),
                from_cookies: r.from_cookies.clone().unwrap_or_default(),
                forward_original_token: r.forward_original_token.unwrap_or(false),
                output_payload_to_header: r.output_payload_to_header.clone(),
                output_claim_to_headers: r
                    .output_claim_to_headers
                    .iter()
                    .flatten()
                    .map(|o| c::ClaimToHeader {
                        header: o.header.clone(),
                        claim: o.claim.clone(),
                    })
                    .collect(),
            });
        }
    }
    out
}

/// The policies among `all` (their metadata, selector and `targetRefs` by `parts`) that apply
/// to the proxy: mesh-wide ones in the root namespace and those of its namespace, by selector
/// or `targetRefs` ([`applies`]), in namespace and name order.
fn applying<'s, P>(
    ctx: &Ctx<'_>,
    role: Role,
    all: &'s [P],
    parts: impl Fn(
        &'s P,
    ) -> (
        &'s ObjectMeta,
        &'s Option<api::WorkloadSelector>,
        Vec<&'s api::PolicyTargetReference>,
    ),
) -> Vec<&'s P> {
    let pod_ns = ctx.proxy.key.namespace.as_str();
    let mut policies: Vec<&'s P> = all
        .iter()
        .filter(|p| {
            let (meta, selector, refs) = parts(*p);
            let ns = meta.namespace.as_deref().unwrap_or("default");
            (ns == pod_ns || ns == ctx.snapshot.root_namespace) && applies(ctx, role, meta, selector, &refs)
        })
        .collect();
    policies.sort_by_key(|p| {
        let meta = parts(*p).0;
        (meta.namespace.clone(), meta.name.clone())
    });
    policies
}

fn targets<'a>(
    one: &'a Option<api::PolicyTargetReference>,
    many: &'a Option<Vec<api::PolicyTargetReference>>,
) -> Vec<&'a api::PolicyTargetReference> {
    one.iter().chain(many.iter().flatten()).collect()
}

/// Whether a policy (its selector or its `targetRefs`) applies to the proxy.
fn applies(
    ctx: &Ctx<'_>,
    role: Role,
    meta: &ObjectMeta,
    selector: &Option<api::WorkloadSelector>,
    refs: &[&api::PolicyTargetReference],
) -> bool {
    if !refs.is_empty() {
        let ns = meta.namespace.as_deref().unwrap_or("default");
        // The caller keeps policies of the proxy's namespace and the root namespace.
        return refs.iter().any(|r| match r.kind.as_str() {
            // A Service selects pods of its own namespace only.
            "Service" => {
                ns == ctx.proxy.key.namespace
                    && ctx
                        .snapshot
                        .registry
                        .services
                        .get(&crate::registry::ObjectKey::new(ns, r.name.clone()))
                        .and_then(|s| s.selector.as_ref())
                        .is_some_and(|s| selects(s, &ctx.proxy.labels))
            }
            // The gateway proxies a Gateway of the policy's namespace selects.
            "Gateway" => {
                role == Role::Gateway
                    && ctx.snapshot.gateways.iter().any(|g| {
                        g.metadata.namespace.as_deref().unwrap_or("default") == ns
                            && g.metadata.name.as_deref() == Some(r.name.as_str())
                            && g.spec.selector.as_ref().is_none_or(|s| selects(s, &ctx.proxy.labels))
                    })
            }
            _ => false,
        });
    }
    selector
        .as_ref()
        .and_then(|s| s.match_labels.as_ref())
        .is_none_or(|l| selects(l, &ctx.proxy.labels))
}

/// An Istio principal as matches on the peer's SPIFFE ID: one per trust domain it stands for
/// (written in the trust domain, an alias of it, or `cluster.local`, it matches the same
/// workload in every one of them, as Istio's `trustDomainAliases` make it).
fn principals(ctx: &Ctx<'_>, p: &str) -> Vec<c::StringMatch> {
    ctx.trust_domains.principals(p).iter().map(|p| principal(p)).collect()
}

/// An Istio principal pattern as a match on the peer's SPIFFE ID.
fn principal(p: &str) -> c::StringMatch {
    let scheme = SpiffeId::SCHEME;
    if p == "*" {
        c::StringMatch::Prefix(scheme.into())
    } else if let Some(suffix) = p.strip_prefix('*') {
        c::StringMatch::Suffix(suffix.into())
    } else if let Some(prefix) = p.strip_suffix('*') {
        c::StringMatch::Prefix(format!("{scheme}{prefix}"))
    } else {
        c::StringMatch::Exact(format!("{scheme}{p}"))
    }
}

/// Istio's `*` prefix/suffix wildcard strings.
fn pattern(s: &str) -> c::StringMatch {
    if s == "*" {
        c::StringMatch::Prefix(String::new())
    } else if let Some(suffix) = s.strip_prefix('*') {
        c::StringMatch::Suffix(suffix.into())
    } else if let Some(prefix) = s.strip_suffix('*') {
        c::StringMatch::Prefix(prefix.into())
    } else {
        c::StringMatch::Exact(s.into())
    }
}

fn rule(ctx: &Ctx<'_>, r: &api::AuthzRule) -> AuthzRule {
    let list = |v: &Option<Vec<String>>| v.clone().unwrap_or_default();
    let from = r
        .from
        .iter()
        .flatten()
        .map(|f| {
            let s = &f.source;
            let widen = |v: &Option<Vec<String>>| list(v).iter().flat_map(|p| principals(ctx, p)).collect::<Vec<_>>();
            let mut principals = widen(&s.principals);
            let mut not_principals = widen(&s.not_principals);
            // serviceAccounts are principals in the policy's namespace unless qualified.
            let policy_ns = ctx.proxy.key.namespace.as_str();
            let sa = |v: &str| {
                let (ns, name) = v.split_once('/').unwrap_or((policy_ns, v));
                let id = SpiffeId::for_service_account(&ctx.trust_domain, ns, name);
                ctx.trust_domains
                    .variants(&id)
                    .into_iter()
                    .map(|id| c::StringMatch::Exact(id.to_string()))
            };
            principals.extend(list(&s.service_accounts).iter().flat_map(|v| sa(v)));
            not_principals.extend(list(&s.not_service_accounts).iter().flat_map(|v| sa(v)));
            AuthzSource {
                principals,
                not_principals,
                request_principals: list(&s.request_principals).iter().map(|p| pattern(p)).collect(),
                not_request_principals: list(&s.not_request_principals).iter().map(|p| pattern(p)).collect(),
                namespaces: list(&s.namespaces).iter().map(|n| pattern(n)).collect(),
                not_namespaces: list(&s.not_namespaces).iter().map(|n| pattern(n)).collect(),
                ip_blocks: list(&s.ip_blocks),
                not_ip_blocks: list(&s.not_ip_blocks),
                remote_ip_blocks: list(&s.remote_ip_blocks),
                not_remote_ip_blocks: list(&s.not_remote_ip_blocks),
            }
        })
        .collect();
    let to =
        r.to.iter()
            .flatten()
            .map(|t| {
                let o = &t.operation;
                let ports = |v: &Option<Vec<String>>| list(v).iter().filter_map(|p| p.parse().ok()).collect();
                let pats = |v: &Option<Vec<String>>| list(v).iter().map(|p| pattern(p)).collect();
                AuthzOperation {
                    hosts: pats(&o.hosts),
                    not_hosts: pats(&o.not_hosts),
                    ports: ports(&o.ports),
                    not_ports: ports(&o.not_ports),
                    methods: pats(&o.methods),
                    not_methods: pats(&o.not_methods),
                    paths: pats(&o.paths),
                    not_paths: pats(&o.not_paths),
                }
            })
            .collect();
    let when = r
        .when
        .iter()
        .flatten()
        .map(|w| {
            // Addresses are IPs or CIDRs, matched by containment, never patterns.
            let value = |v: &String| match w.key.as_str() {
                "source.ip" | "remote.ip" | "destination.ip" => vec![c::StringMatch::Exact(v.clone())],
                // A principal condition is a principal (matched on the SPIFFE ID, in every
                // trust domain it stands for).
                "source.principal" => principals(ctx, v),
                _ => vec![pattern(v)],
            };
            AuthzCondition {
                key: w.key.clone(),
                values: list(&w.values).iter().flat_map(value).collect(),
                not_values: list(&w.not_values).iter().flat_map(value).collect(),
            }
        })
        .collect();
    AuthzRule { from, to, when }
}
