//! Clusters: a destination (host, port, subset) with its endpoints and the DestinationRule
//! policy that applies to it.

use std::collections::BTreeMap;

use trellis_api::networking::{
    self as api, ClientTlsMode, ConnectionPoolSettings, DestinationRule, H2UpgradePolicy, SimpleLb, TrafficPolicy,
};
use trellis_contract::{
    CertificateRef, Cluster, ConnectionPool, Discovery, Endpoint, HashKey, HealthStatus, Http2Keepalive, LbPolicy,
    LoadBalancer, OriginateTls, OutlierDetection, PemSource, Provenance, RetryBudget, TcpKeepalive, UpstreamProtocol,
    UpstreamTls,
};

use super::policy::{self, InForce};
use super::route::{ClusterRef, millis, parse_duration};
use super::{Code, Ctx, DNS_DOMAIN, Dropped, host_covers, resource, service_entry, visible};
use crate::registry::{ObjectKey, Protocol, selects};
use crate::snapshot::Snapshot;

/// The DestinationRule that applies to `host` for the proxy ([`destination_rule_for`] its
/// namespace).
pub(crate) fn destination_rule<'a>(ctx: &Ctx<'a>, host: &str) -> Option<&'a DestinationRule> {
    destination_rule_for(ctx.snapshot, &ctx.proxy.key.namespace, host)
}

/// The DestinationRule that applies to `host` for a proxy in namespace `viewer`: visible to
/// that namespace; one in the proxy's own namespace beats one in the host's namespace, which
/// beats others; an exact host beats a wildcard; then the oldest.
pub fn destination_rule_for<'a>(snapshot: &'a Snapshot, viewer: &str, host: &str) -> Option<&'a DestinationRule> {
    let host_ns = host
        .strip_suffix(&format!(".svc.{DNS_DOMAIN}"))
        .and_then(|h| h.split_once('.'))
        .map(|(_, ns)| ns);
    snapshot
        .destination_rules
        .iter()
        .filter(|dr| {
            let ns = dr.metadata.namespace.as_deref().unwrap_or("default");
            visible(dr.spec.export_to.as_deref(), ns, viewer) && host_covers(&dr.spec.host, ns, host)
        })
        .min_by_key(|dr| {
            let ns = dr.metadata.namespace.as_deref().unwrap_or("default");
            let rank = if ns == viewer {
                0
            } else if Some(ns) == host_ns {
                1
            } else {
                2
            };
            let wildcard = dr.spec.host.starts_with('*');
            (
                rank,
                wildcard,
                dr.metadata.creation_timestamp.as_ref().map(|t| t.0),
                ns.to_string(),
                dr.metadata.name.clone(),
            )
        })
}

/// Build the cluster for a reference.
pub(crate) fn build(ctx: &mut Ctx<'_>, cref: &ClusterRef) -> Cluster {
    let registry = &ctx.snapshot.registry;
    // A Service not exported to the proxy's namespace has no endpoints there (Istio's proxy
    // has no cluster for it): requests get 503.
    let svc = registry
        .service_by_host(&cref.host, DNS_DOMAIN)
        .filter(|s| s.visible_from(&ctx.proxy.key.namespace));
    let port = svc.and_then(|s| s.ports.iter().find(|p| p.port == cref.port));
    let dr = destination_rule(ctx, &cref.host);
    let dr_res = dr.map(|d| resource("DestinationRule", &d.metadata));

    // Subset: its labels (its policy: `policy::in_force`).
    let mut subset_labels = None;
    let mut subset_missing = false;
    if let Some(name) = &cref.subset {
        match dr.and_then(|d| d.spec.subsets.iter().flatten().find(|s| &s.name == name)) {
            Some(s) => {
                subset_labels = Some(s.labels.clone().unwrap_or_default());
            }
            None => {
                let hint = match &dr_res {
                    Some(r) => format!("{r} defines no subset {name:?}"),
                    None => format!("no DestinationRule defines subsets for {}", cref.host),
                };
                ctx.diag(
                    Code::ReferencedResourceNotFound,
                    format!("host {}", cref.host),
                    format!("subset {name:?} is referenced but {hint}; requests to it get 503 (no healthy upstream)"),
                );
                subset_missing = true;
            }
        }
    }
    let InForce { policy, parts } = dr
        .map(|d| policy::in_force(&d.spec, cref.subset.as_deref(), cref.port))
        .unwrap_or_default();

    // Endpoints: the addresses the Service's slices list (ready ones), narrowed to the subset.
    let mut endpoints = Vec::new();
    let mut identities = Vec::new();
    // Each endpoint's service account identity, meshed or not (explicit ISTIO_MUTUAL).
    let mut accounts = Vec::new();
    let mut all_meshed = true;
    if let (Some(svc), Some(port)) = (svc, port) {
        for e in registry.endpoints(svc, port) {
            let labels = e.workload.map(|w| &w.labels);
            if subset_missing
                || subset_labels
                    .as_ref()
                    .is_some_and(|l| !labels.is_some_and(|labels| selects(l, labels)))
            {
                continue;
            }
            let account = e.workload.map(|w| w.spiffe_id(&ctx.trust_domain).to_string());
            let identity = e.workload.filter(|w| w.meshed).and(account.clone());
            match &identity {
                Some(id) if !identities.contains(id) => identities.push(id.clone()),
                Some(_) => {}
                // Any endpoint without a proxy (ready or not: readiness changes faster than
                // configs; not one shutting down) makes the cluster plaintext.
                None if !e.terminating => all_meshed = false,
                None => {}
            }
            if !e.ready {
                continue;
            }
            accounts.push(account.unwrap_or_default());
            endpoints.push(Endpoint {
                address: e.address,
                port: e.port,
                weight: 1,
                labels: telemetry_labels(e.workload, &svc.key.namespace),
                health: HealthStatus::Healthy,
                identity,
            });
        }
    }
    // An ExternalName Service: its name, resolved by the proxy on the Service's port.
    let external = svc.and_then(|s| s.external_name.as_ref()).filter(|_| port.is_some());
    // It has no labels: only a subset without labels selects it.
    if let Some(name) = external
        && !subset_missing
        && subset_labels.as_ref().is_none_or(BTreeMap::is_empty)
    {
        endpoints.push(Endpoint {
            address: name.clone(),
            port: cref.port,
            weight: 1,
            labels: BTreeMap::from([("namespace".to_string(), cref_namespace(&cref.host))]),
            health: HealthStatus::Healthy,
            identity: None,
        });
        accounts.push(String::new());
    }
    // A ServiceEntry's host: its endpoints, protocol and location.
    let entry = match svc {
        Some(_) => None,
        None => service_entry::find(ctx.snapshot, &ctx.proxy.key.namespace, &cref.host)
            .and_then(|e| service_entry::endpoints(ctx, &e, cref.port, subset_labels.as_ref())),
    };
    let mut discovery = if external.is_some() {
        Discovery::Dns
    } else {
        Discovery::Static
    };
    let mut entry_identities = None;
    let mut entry_protocol = None;
    if let Some(found) = entry {
        discovery = found.discovery;
        endpoints = found.endpoints;
        accounts = found.accounts.iter().map(|a| a.clone().unwrap_or_default()).collect();
        entry_identities = found.mesh_identities;
        entry_protocol = Some(found.protocol);
        if subset_missing {
            endpoints.clear();
            accounts.clear();
        }
    }
    identities.sort();

    let protocol = match port.map(|p| p.protocol).or(entry_protocol) {
        Some(Protocol::Http2) => UpstreamProtocol::Http2,
        Some(Protocol::Http) => UpstreamProtocol::Http1,
        Some(Protocol::Tcp | Protocol::Tls) => UpstreamProtocol::Tcp,
        Some(Protocol::Auto) | None => UpstreamProtocol::UseDownstream,
    };
    let mut cluster = Cluster {
        name: cref.name(),
        service: Some(cref.host.clone()),
        subset: cref.subset.clone(),
        protocol,
        load_balancer: LoadBalancer {
            policy: LbPolicy::LeastRequest,
            hash_key: None,
        },
        connect_timeout_ms: 10_000,
        connection_pool: ConnectionPool::default(),
        outlier_detection: None,
        panic_threshold_percent: 50.0,
        tls: UpstreamTls::Disable,
        discovery,
        endpoints,
        provenance: dr.map(|d| Provenance {
            kind: "DestinationRule".into(),
            namespace: d.metadata.namespace.clone().unwrap_or_else(|| "default".into()),
            name: d.metadata.name.clone().unwrap_or_default(),
            rule_index: None,
            section: None,
            parts,
        }),
    };
    let res = dr_res.unwrap_or_else(|| format!("host {}", cref.host));
    apply_policy(ctx, &res, &policy, &mut cluster);
    // Proxied TCP: the rule's own pool, whatever the port or subset (Istio's TCP proxy).
    tcp_proxy(
        dr.and_then(|d| d.spec.traffic_policy.as_ref())
            .and_then(|p| p.connection_pool.as_ref()),
        &mut cluster,
    );

    // TLS: the rule's mode, or automatic mutual TLS to meshed endpoints.
    let tls = policy.tls.as_ref();
    cluster.tls = match tls.and_then(|t| t.mode.map(|m| (t, m))) {
        Some((_, ClientTlsMode::Disable)) => UpstreamTls::Disable,
        Some((t, ClientTlsMode::IstioMutual | ClientTlsMode::MeshMutual)) => {
            // Explicit mesh mTLS: the peers are who the rule names, else the endpoints'
            // service accounts, whether or not a proxy was seen on them (Istio's SANs).
            let sans = t.subject_alt_names.clone().unwrap_or_default();
            let expected = if sans.is_empty() {
                for (e, id) in cluster.endpoints.iter_mut().zip(&accounts) {
                    // A ServiceEntry endpoint without a serviceAccount has none.
                    e.identity = (!id.is_empty()).then(|| id.clone());
                }
                let mut all: Vec<String> = accounts.iter().filter(|a| !a.is_empty()).cloned().collect();
                all.sort();
                all.dedup();
                all
            } else {
                for e in &mut cluster.endpoints {
                    e.identity = None;
                }
                sans
            };
            UpstreamTls::Mesh {
                expected_identities: expected,
                sni: t.sni.clone(),
            }
        }
        Some((t, ClientTlsMode::Simple | ClientTlsMode::Mutual)) => match originate(ctx, &res, &cref.host, t) {
            Some(o) => UpstreamTls::Originate(Box::new(o)),
            None => {
                // Fail closed: without its credential nothing is sent at all.
                cluster.endpoints.clear();
                UpstreamTls::Disable
            }
        },
        // Every endpoint (ready or not, not shutting down) has a proxy, or none is known yet.
        None if svc.is_some() && external.is_none() && all_meshed => UpstreamTls::Mesh {
            expected_identities: identities,
            sni: None,
        },
        // A MESH_INTERNAL ServiceEntry: mutual TLS to the identities it names.
        None if entry_identities.is_some() => UpstreamTls::Mesh {
            expected_identities: entry_identities.unwrap_or_default(),
            sni: None,
        },
        None => UpstreamTls::Disable,
    };
    cluster
}

/// TLS originated to `host` as a DestinationRule's SIMPLE or MUTUAL settings say: the
/// server verified against `caCertificates` (a file on the proxy), the `ca.crt` of
/// `credentialName`, or the system's roots, by `subjectAltNames` or the SNI (`sni`, else the
/// host), and against the revocation list `caCrl` (a file) or the Secret's `ca.crl`; MUTUAL
/// presents `clientCertificate`/`privateKey` (files on the proxy) or the
/// `credentialName` Secret's `tls.crt`/`tls.key` — a `kubernetes.io/tls` Secret in the
/// client proxy's namespace, as Istio reads it. `None` (with a diagnostic) when that Secret
/// does not exist.
fn originate(ctx: &mut Ctx<'_>, res: &str, host: &str, t: &api::ClientTlsSettings) -> Option<OriginateTls> {
    let mutual = t.mode == Some(ClientTlsMode::Mutual);
    let mut o = OriginateTls {
        sni: t.sni.clone().unwrap_or_else(|| host.to_string()),
        ca: t.ca_certificates.clone().map(PemSource::File),
        crl: t.ca_crl.clone().map(PemSource::File),
        subject_alt_names: t.subject_alt_names.clone().unwrap_or_default(),
        insecure_skip_verify: t.insecure_skip_verify == Some(true),
        client_certificate: None,
    };
    if let Some(name) = &t.credential_name {
        let key = ObjectKey::new(ctx.proxy.key.namespace.clone(), name.clone());
        let Some(c) = ctx.snapshot.registry.credentials.get(&key) else {
            ctx.diag(
                Code::ReferencedResourceNotFound,
                res,
                format!(
                    "tls.credentialName {name:?}: no TLS Secret {key} (type kubernetes.io/tls, with tls.crt and tls.key) in the client's namespace; connections to {host} fail until it exists"
                ),
            );
            return None;
        };
        // The validator refuses caCertificates and caCrl beside credentialName.
        if o.ca.is_none() {
            o.ca = c.ca_pem.clone().map(PemSource::Inline);
        }
        if o.crl.is_none() {
            o.crl = c.crl_pem.clone().map(PemSource::Inline);
        }
        if mutual {
            o.client_certificate = Some(CertificateRef::Inline {
                cert_chain_pem: c.cert_chain_pem.clone(),
                private_key_pem: c.private_key_pem.clone(),
            });
        }
    } else if mutual {
        // The validator requires both files without a credentialName.
        let (Some(cert), Some(key)) = (&t.client_certificate, &t.private_key) else {
            ctx.diag(
                Code::ReferencedResourceNotFound,
                res,
                format!("tls mode MUTUAL needs credentialName, or clientCertificate and privateKey; connections to {host} fail"),
            );
            return None;
        };
        o.client_certificate = Some(CertificateRef::Files {
            cert_chain_file: cert.clone(),
            private_key_file: key.clone(),
        });
    }
    if o.insecure_skip_verify {
        // Nothing is verified: the validator refuses caCertificates, caCrl and
        // subjectAltNames with it, and a credentialName's ca.crt and ca.crl are not used.
        o.ca = None;
        o.crl = None;
        o.subject_alt_names.clear();
    }
    Some(o)
}

fn apply_policy(ctx: &mut Ctx<'_>, res: &str, p: &TrafficPolicy, c: &mut Cluster) {
    if let Some(lb) = &p.load_balancer {
        if let Some(simple) = lb.simple {
            c.load_balancer.policy = match simple {
                SimpleLb::RoundRobin => LbPolicy::RoundRobin,
                SimpleLb::Random => LbPolicy::Random,
                SimpleLb::LeastRequest | SimpleLb::LeastConn | SimpleLb::Unspecified => LbPolicy::LeastRequest,
                SimpleLb::Passthrough => {
                    ctx.dropped(
                        Dropped::LoadBalancerPassthrough,
                        res,
                        "loadBalancer.simple PASSTHROUGH is not supported by trellis-proxy yet; LEAST_REQUEST is used",
                    );
                    LbPolicy::LeastRequest
                }
            };
        }
        if let Some(ch) = &lb.consistent_hash {
            c.load_balancer.policy = match &ch.maglev {
                Some(m) => LbPolicy::Maglev {
                    table_size: m.table_size.unwrap_or(65_537) as u32,
                },
                None => LbPolicy::RingHash {
                    minimum_ring_size: ch.ring_hash.as_ref().and_then(|r| r.minimum_ring_size).unwrap_or(1024) as u32,
                },
            };
            c.load_balancer.hash_key = if let Some(h) = &ch.http_header_name {
                Some(HashKey::Header(h.clone()))
            } else if let Some(cookie) = &ch.http_cookie {
                if cookie.ttl.is_some() {
                    ctx.dropped(
                        Dropped::SessionCookieTtl,
                        res,
                        "consistentHash.httpCookie.ttl: trellis-proxy does not generate session cookies yet; requests without the cookie are spread by hash of nothing",
                    );
                }
                Some(HashKey::Cookie {
                    name: cookie.name.clone(),
                    path: cookie.path.clone(),
                })
            } else if ch.use_source_ip == Some(true) {
                Some(HashKey::SourceIp)
            } else {
                ch.http_query_parameter_name.clone().map(HashKey::QueryParam)
            };
        }
        if lb.warmup.is_some() || lb.warmup_duration_secs.is_some() {
            ctx.dropped(
                Dropped::LoadBalancerWarmup,
                res,
                "loadBalancer.warmup is not implemented by trellis-proxy yet; new endpoints get full traffic at once",
            );
        }
    }
    if let Some(pool) = &p.connection_pool {
        // Before `useClientProtocol`, which overrides it (Istio's order).
        if pool.http.as_ref().and_then(|h| h.h2_upgrade_policy) == Some(H2UpgradePolicy::Upgrade)
            && c.protocol == UpstreamProtocol::Http1
        {
            c.protocol = UpstreamProtocol::Http2;
        }
        apply_pool(pool, c);
    }
    if let Some(b) = &p.retry_budget {
        // Istio's defaults: 20 %, at least 3 (a minimum of 0 reads as unset).
        c.connection_pool.retry_budget = Some(RetryBudget {
            budget_basis_points: (b.percent.unwrap_or(20.0).clamp(0.0, 100.0) * 100.0).round() as u32,
            min_retry_concurrency: b.min_retry_concurrency.filter(|&n| n > 0).unwrap_or(3),
        });
    }
    if let Some(od) = &p.outlier_detection {
        let defaults = OutlierDetection::default();
        c.outlier_detection = Some(OutlierDetection {
            consecutive_5xx: od.consecutive_5xx_errors.unwrap_or(defaults.consecutive_5xx),
            consecutive_gateway_errors: od.consecutive_gateway_errors.unwrap_or(0),
            base_ejection_time_ms: od
                .base_ejection_time
                .as_deref()
                .and_then(millis)
                .unwrap_or(defaults.base_ejection_time_ms),
            max_ejection_percent: od.max_ejection_percent.map_or(defaults.max_ejection_percent, f64::from),
            interval_ms: od.interval.as_deref().and_then(millis).unwrap_or(defaults.interval_ms),
            split_external_local_origin_errors: od.split_external_local_origin_errors == Some(true),
            // Istio reads 0 as unset: Envoy's default applies.
            consecutive_local_origin_failures: od
                .consecutive_local_origin_failures
                .filter(|&n| n > 0)
                .unwrap_or(defaults.consecutive_local_origin_failures),
        });
        if let Some(min) = od.min_health_percent {
            c.panic_threshold_percent = f64::from(min);
        }
    }
}

/// A connection pool's limits on a cluster (a DestinationRule's; on the cluster of the
/// application's port, a Sidecar's inbound pool or the port's Service's DestinationRule's:
/// `inbound::ingress`), as Istio's `applyConnectionPool` compiles them into
/// Envoy's circuit breakers, HTTP protocol options and upstream connection options — for both
/// directions. Not here: the HTTP/2 upgrade (outbound only, [`apply_policy`]) and the TCP
/// proxy's idle timeout and duration (outbound only, from the rule's own pool, [`tcp_proxy`]).
pub(super) fn apply_pool(pool: &ConnectionPoolSettings, c: &mut Cluster) {
    let p = &mut c.connection_pool;
    if let Some(tcp) = &pool.tcp {
        if let Some(n) = tcp.max_connections {
            p.max_connections = n.max(1) as u32;
            p.max_tcp_connections = Some(n.max(1) as u32);
        }
        if let Some(ms) = tcp.connect_timeout.as_deref().and_then(millis) {
            c.connect_timeout_ms = ms;
        }
        p.max_connection_duration_ms = tcp.max_connection_duration.as_deref().and_then(millis);
        // Istio: an HTTP connection without its own idle timeout takes the TCP one.
        if let Some(ms) = tcp.idle_timeout.as_deref().and_then(millis)
            && pool.http.as_ref().is_none_or(|h| h.idle_timeout.is_none())
        {
            p.idle_timeout_ms = ms;
        }
        if let Some(ka) = &tcp.tcp_keepalive {
            // Whole seconds, as Istio sets Envoy's keepalive (the validator wants 1 s or more).
            let secs = |d: &Option<String>| d.as_deref().and_then(parse_duration).map(|d| d.as_secs().max(1) as u32);
            p.tcp_keepalive = Some(TcpKeepalive {
                time_secs: secs(&ka.time),
                interval_secs: secs(&ka.interval),
                probes: ka.probes.filter(|&n| n > 0),
            });
        }
    }
    if let Some(http) = &pool.http {
        if let Some(n) = http.http1_max_pending_requests {
            p.max_pending_requests = n.max(1) as u32;
        }
        if let Some(n) = http.http2_max_requests {
            p.max_requests = Some(n.max(1) as u32);
        }
        // Istio reads 0 as unset (no limit); the validator warns about it.
        p.max_retries = http.max_retries.filter(|&n| n > 0).map(|n| n as u32);
        if let Some(n) = http.max_concurrent_streams {
            p.max_concurrent_streams = Some(n.max(1) as u32);
        }
        if let Some(n) = http.max_requests_per_connection {
            p.max_requests_per_connection = n.max(0) as u32;
        }
        if let Some(ms) = http.idle_timeout.as_deref().and_then(millis) {
            p.idle_timeout_ms = ms;
        }
        if http.use_client_protocol == Some(true) {
            c.protocol = UpstreamProtocol::UseDownstream;
        }
        // Both are required (the validator says so). On HTTP/2 clusters only, as Istio sets
        // Envoy's `connection_keepalive` (`applyConnectionPool`): on the HTTP/2 options of a
        // cluster that speaks HTTP/2 — its port's protocol, or `h2UpgradePolicy: UPGRADE` —, and
        // not on one that speaks the client's protocol (`useClientProtocol`, or a port of
        // unknown protocol), whose HTTP/2 options Istio builds without it.
        if c.protocol == UpstreamProtocol::Http2
            && let Some(ka) = &http.http2_keep_alive
            && let (Some(interval_ms), Some(timeout_ms)) = (
                ka.interval.as_deref().and_then(millis),
                ka.timeout.as_deref().and_then(millis),
            )
        {
            p.http2_keepalive = Some(Http2Keepalive {
                interval_ms: interval_ms.max(1),
                timeout_ms: timeout_ms.max(1),
            });
        }
    }
}

/// The TCP proxy's idle timeout and maximum connection duration, from the rule's top-level
/// `trafficPolicy.connectionPool.tcp` only, whatever the port or subset, as Istio sets Envoy's
/// `tcp_proxy` (`buildOutboundNetworkFiltersWithSingleDestination`); a port's or subset's pool
/// bounds its HTTP connections ([`apply_pool`]), and the validator says so.
fn tcp_proxy(rule_pool: Option<&ConnectionPoolSettings>, c: &mut Cluster) {
    let tcp = rule_pool.and_then(|p| p.tcp.as_ref());
    let ms = |d: Option<&String>| d.map(String::as_str).and_then(millis);
    c.connection_pool.tcp_idle_timeout_ms = ms(tcp.and_then(|t| t.idle_timeout.as_ref()));
    c.connection_pool.tcp_max_connection_duration_ms = ms(tcp.and_then(|t| t.max_connection_duration.as_ref()));
}

/// The endpoint labels proxies need for telemetry (destination workload, namespace, app and
/// version, and the labels Istio derives the canonical service and revision from); the rest of
/// a pod's labels would only bloat every config that references it. An endpoint without a pod
/// has its Service's namespace only.
fn telemetry_labels(w: Option<&crate::registry::Workload>, namespace: &str) -> BTreeMap<String, String> {
    const KEEP: &[&str] = &[
        "app",
        "version",
        "app.kubernetes.io/name",
        "app.kubernetes.io/version",
        "service.istio.io/canonical-name",
        "service.istio.io/canonical-revision",
    ];
    let Some(w) = w else {
        return BTreeMap::from([("namespace".to_string(), namespace.to_string())]);
    };
    let mut labels: BTreeMap<String, String> = w
        .labels
        .iter()
        .filter(|(k, _)| KEEP.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    labels.insert("workload".into(), super::workload_name(w));
    labels.insert("namespace".into(), w.key.namespace.clone());
    labels
}

/// The namespace of a Service's FQDN (`name.namespace.svc.<domain>`).
fn cref_namespace(host: &str) -> String {
    host.split('.').nth(1).unwrap_or_default().to_string()
}
