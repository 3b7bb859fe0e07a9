//! What `meshctl proxy-config` shows of a proxy's `/config_dump`: its listeners, routes,
//! clusters, endpoints and certificate, each as rows with istioctl's columns plus where each
//! came from (the VirtualService rule, Gateway or Service the route was compiled from), filtered
//! as asked. Pure functions of the dump, so `-f config_dump.json` works offline.

use serde::Serialize;
use serde_json::Value;
use trellis_contract::{ListenerDirection, RouteAction, UpstreamTls};

use super::dump::{Dump, Filter};
use crate::config_text::{cluster_parts, describe_action, describe_match, describe_provenance};

fn direction_name(d: ListenerDirection) -> &'static str {
    match d {
        ListenerDirection::Outbound => "outbound",
        ListenerDirection::Inbound => "inbound",
        ListenerDirection::Gateway => "gateway",
    }
}

/// A contract enum as the dump spells it (`ROUND_ROBIN`, `ringHash`, `healthy`).
fn wire_name<T: Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(Value::String(s)) => s,
        Ok(Value::Object(m)) => m.keys().next().cloned().unwrap_or_default(),
        _ => "?".into(),
    }
}

/// The port of `host:port`, if it has one.
fn port_of(address: &str) -> Option<u16> {
    address.rsplit_once(':').and_then(|(_, p)| p.parse().ok())
}

/// One listener.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct ListenerRow {
    pub name: String,
    pub address: String,
    pub port: Option<u16>,
    pub direction: &'static str,
    pub protocol: String,
    pub tls: String,
    /// Virtual hosts (HTTP) or TCP routes' clusters.
    pub destination: String,
    /// The resource that decided what the listener routes (a Sidecar), or `-`.
    pub from: String,
}

/// Every listener `filter` keeps.
pub fn listeners(dump: &Dump, filter: &Filter) -> Vec<ListenerRow> {
    dump.config
        .listeners
        .iter()
        .filter(|l| filter.direction_ok(direction_name(l.direction)) && filter.name_ok(&l.name))
        .filter(|l| filter.port_ok(port_of(&l.address)))
        .map(|l| ListenerRow {
            name: l.name.clone(),
            address: l.address.clone(),
            port: port_of(&l.address),
            direction: direction_name(l.direction),
            protocol: wire_name(&l.protocol),
            tls: listener_tls(l),
            destination: {
                let mut parts = Vec::new();
                if !l.virtual_hosts.is_empty() {
                    parts.push(format!("{} virtual hosts (routes)", l.virtual_hosts.len()));
                }
                let mut clusters: Vec<&str> = Vec::new();
                for (c, _) in l.tcp_routes.iter().flat_map(|r| r.destinations()) {
                    if !clusters.contains(&c) {
                        clusters.push(c);
                    }
                }
                if !clusters.is_empty() {
                    parts.push(clusters.join(", "));
                }
                parts.join("; ")
            },
            from: l.scope.as_ref().map_or_else(|| "-".into(), describe_provenance),
        })
        .collect()
}

/// A listener's TLS: the mode it terminates (`SNI` when servers are chosen by name),
/// `+passthrough` when some names pass through untouched, `passthrough` alone when it
/// terminates none; `-` for plaintext.
fn listener_tls(l: &trellis_contract::Listener) -> String {
    let by_sni = l.tcp_routes.iter().any(|r| !r.sni_hosts.is_empty());
    let terminated = match &l.tls {
        Some(t) if l.sni_tls.is_empty() => Some(wire_name(&t.mode)),
        _ if !l.sni_tls.is_empty() => Some("SNI".to_string()),
        _ => None,
    };
    let passthrough = match terminated {
        Some(_) => l.tcp_routes.iter().any(|r| r.passthrough && !r.sni_hosts.is_empty()),
        None => by_sni,
    };
    match (terminated, passthrough) {
        (Some(t), true) => format!("{t}+passthrough"),
        (Some(t), false) => t,
        (None, true) => "passthrough".into(),
        (None, false) => "-".into(),
    }
}

/// One route.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct RouteRow {
    pub listener: String,
    pub virtual_host: String,
    pub domains: Vec<String>,
    pub name: String,
    #[serde(rename = "match")]
    pub matches: String,
    pub destination: String,
    /// The resource (and rule) it was compiled from.
    pub from: String,
}

/// Every route `filter` keeps, in the order the proxy tries them.
pub fn routes(dump: &Dump, filter: &Filter) -> Vec<RouteRow> {
    let mut rows = Vec::new();
    for l in dump
        .config
        .listeners
        .iter()
        .filter(|l| filter.direction_ok(direction_name(l.direction)))
        .filter(|l| filter.port_ok(port_of(&l.address)))
    {
        for vh in &l.virtual_hosts {
            if !(filter.fqdn.is_none() || vh.domains.iter().any(|d| filter.fqdn_ok(d))) {
                continue;
            }
            for r in &vh.routes {
                let name = r.name.clone().unwrap_or_default();
                if !(filter.name_ok(&vh.name) || filter.name_ok(&name)) {
                    continue;
                }
                rows.push(RouteRow {
                    listener: l.name.clone(),
                    virtual_host: vh.name.clone(),
                    domains: vh.domains.clone(),
                    name,
                    matches: describe_match(r),
                    destination: match (l.direction, &r.action) {
                        (ListenerDirection::Inbound, RouteAction::Forward(f)) if f.clusters.len() == 1 => {
                            app_address(dump, &f.clusters[0].cluster)
                        }
                        _ => describe_action(r),
                    },
                    from: describe_provenance(&r.provenance),
                });
            }
        }
        for t in &l.tcp_routes {
            if filter.fqdn.is_some() || filter.name.as_deref().is_some_and(|n| n != l.name) {
                continue;
            }
            rows.push(RouteRow {
                listener: l.name.clone(),
                virtual_host: "-".into(),
                domains: Vec::new(),
                name: String::new(),
                matches: {
                    let on = match (t.destination_port, t.sni_hosts.is_empty()) {
                        (Some(p), true) => format!("TCP port {p}"),
                        (None, true) => "TCP".into(),
                        (Some(p), false) => format!("TLS port {p} SNI {}", t.sni_hosts.join(",")),
                        (None, false) => format!("TLS SNI {}", t.sni_hosts.join(",")),
                    };
                    // On a listener that terminates TLS a route either passes it through
                    // or takes what was terminated.
                    match (&l.tls, t.passthrough) {
                        (None, _) => on,
                        (Some(_), true) => format!("{on} (passed through)"),
                        (Some(_), false) => format!("{on} (TLS terminated)"),
                    }
                },
                destination: match t.destinations().as_slice() {
                    [(only, _)] if l.direction == ListenerDirection::Inbound => app_address(dump, only),
                    [(only, _)] => only.to_string(),
                    several => several
                        .iter()
                        .map(|(c, w)| format!("{c} {w}%"))
                        .collect::<Vec<_>>()
                        .join(", "),
                },
                from: t
                    .provenance
                    .as_ref()
                    .map(describe_provenance)
                    .unwrap_or_else(|| "-".into()),
            });
        }
    }
    rows
}

/// Where an inbound route hands traffic: `app 127.0.0.1:9090`, the endpoint of its cluster (the
/// Service's target port, or a Sidecar ingress listener's `defaultEndpoint`).
fn app_address(dump: &Dump, cluster: &str) -> String {
    let endpoints: Vec<String> = dump
        .config
        .clusters
        .iter()
        .filter(|c| c.name == cluster)
        .flat_map(|c| &c.endpoints)
        .map(|e| match e.address.parse::<std::net::IpAddr>() {
            Ok(ip) => std::net::SocketAddr::new(ip, e.port).to_string(),
            Err(_) => format!("{}:{}", e.address, e.port),
        })
        .collect();
    match endpoints.is_empty() {
        true => format!("{cluster} (no such cluster)"),
        false => format!("app {}", endpoints.join(", ")),
    }
}

/// One cluster.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct ClusterRow {
    pub name: String,
    pub fqdn: String,
    pub port: Option<u16>,
    pub subset: String,
    pub direction: String,
    pub load_balancer: String,
    pub tls: String,
    pub endpoints: usize,
    /// The DestinationRule that shaped the cluster, with the parts of it in force for the
    /// cluster's port and subset (`DestinationRule ns/name trafficPolicy.portLevelSettings[0]`,
    /// `... trafficPolicy + subsets[1].trafficPolicy`) — an inbound cluster's pool may come
    /// from a Sidecar (`Sidecar ns/name`, `Sidecar ns/name ingress[0]`) —, or `-`.
    pub from: String,
}

/// Every cluster `filter` keeps.
pub fn clusters(dump: &Dump, filter: &Filter) -> Vec<ClusterRow> {
    dump.config
        .clusters
        .iter()
        .filter_map(|c| {
            let (direction, port, subset, fqdn) = match cluster_parts(&c.name) {
                Some((d, p, s, h)) => (d.to_string(), Some(p), s.to_string(), h.to_string()),
                None => ("-".into(), None, String::new(), c.service.clone().unwrap_or_default()),
            };
            let keep = filter.fqdn_ok(&fqdn)
                && filter.port_ok(port)
                && filter.subset_ok(&subset)
                && filter.direction_ok(&direction)
                && filter.name_ok(&c.name);
            keep.then(|| ClusterRow {
                name: c.name.clone(),
                fqdn,
                port,
                subset,
                direction,
                load_balancer: wire_name(&c.load_balancer.policy),
                tls: match &c.tls {
                    UpstreamTls::Disable => "-".into(),
                    UpstreamTls::Mesh { .. } => "ISTIO_MUTUAL".into(),
                    other => wire_name(other),
                },
                endpoints: c.endpoints.len(),
                from: c.provenance.as_ref().map_or("-".into(), describe_provenance),
            })
        })
        .collect()
}

/// One endpoint.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct EndpointRow {
    pub endpoint: String,
    pub status: String,
    pub outlier_check: String,
    pub identity: String,
    pub cluster: String,
}

/// Every endpoint of the clusters `filter` keeps, with the health the proxy sees now.
pub fn endpoints(dump: &Dump, filter: &Filter) -> Vec<EndpointRow> {
    let kept: Vec<String> = clusters(dump, filter).into_iter().map(|c| c.name).collect();
    let status = dump.raw["clusterStatus"].as_array().cloned().unwrap_or_default();
    let mut rows = Vec::new();
    for c in dump.config.clusters.iter().filter(|c| kept.contains(&c.name)) {
        let live = status.iter().find(|s| s["name"] == c.name.as_str());
        for e in &c.endpoints {
            let address = format!("{}:{}", e.address, e.port);
            let now = live
                .and_then(|l| l["endpoints"].as_array())
                .and_then(|eps| eps.iter().find(|x| x["address"] == address.as_str()));
            rows.push(EndpointRow {
                endpoint: address.clone(),
                status: wire_name(&e.health),
                outlier_check: match now.map(|n| n["ejected"] == true) {
                    Some(true) => "EJECTED".into(),
                    Some(false) => "OK".into(),
                    None => "-".into(),
                },
                identity: e.identity.clone().unwrap_or_else(|| "-".into()),
                cluster: c.name.clone(),
            });
        }
    }
    rows
}

/// The proxy's certificate, by its metadata (the dump never holds key material).
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct SecretRow {
    /// The SPIFFE identity.
    pub identity: String,
    /// `leaf` or `intermediate`.
    pub certificate: String,
    pub serial: String,
    pub not_before: String,
    pub not_after: String,
    /// Who signed it (the issuing root's subject for a leaf).
    pub issuer: String,
}

/// The workload certificate chain.
pub fn secrets(dump: &Dump) -> Vec<SecretRow> {
    let cert = &dump.raw["workloadCertificate"];
    let identity = cert["spiffeId"].as_str().unwrap_or("-").to_string();
    cert["chain"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(i, c)| SecretRow {
            identity: identity.clone(),
            certificate: if i == 0 { "leaf".into() } else { "intermediate".into() },
            serial: c["serial"].as_str().unwrap_or("-").to_string(),
            not_before: c["notBefore"].as_str().unwrap_or("-").to_string(),
            not_after: c["notAfter"].as_str().unwrap_or("-").to_string(),
            issuer: c["issuer"].as_str().unwrap_or("-").to_string(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use trellis_core::compile::Role;
    use trellis_core::registry::ObjectKey;

    use super::*;
    use crate::proxy_config::dump::fixtures::{PAYMENT, SHOP, dump_of, only, web_dump, web_dump_of};

    #[test]
    fn routes_in_the_order_tried_with_their_origin() {
        let dump = web_dump(Value::Null);
        let rows = routes(&dump, &only(|f| f.fqdn = Some(PAYMENT.into())));
        let seen: Vec<(&str, &str, &str, &str)> = rows
            .iter()
            .map(|r| {
                (
                    r.name.as_str(),
                    r.matches.as_str(),
                    r.destination.as_str(),
                    r.from.as_str(),
                )
            })
            .collect();
        assert_eq!(
            seen,
            [
                (
                    "canary",
                    "x-canary = true",
                    "payment v2:80 100%",
                    "VirtualService shop/payment http[0]"
                ),
                (
                    "split",
                    "any",
                    "payment v1:80 90%, payment v2:80 10%; timeout 2000 ms",
                    "VirtualService shop/payment http[1]"
                ),
            ]
        );
        assert!(
            rows.iter()
                .all(|r| r.listener == "outbound" && r.virtual_host == format!("{PAYMENT}:80"))
        );

        // The TCP route to db comes from its Service; inbound routes from web's own Service.
        let all = routes(&dump, &Filter::default());
        let tcp = all.iter().find(|r| r.matches == "TCP port 5432").unwrap();
        assert_eq!(
            (tcp.destination.as_str(), tcp.from.as_str()),
            ("outbound|5432||db.shop.svc.cluster.local", "Service shop/db")
        );
        let inbound = routes(&dump, &only(|f| f.direction = Some("inbound".into())));
        assert_eq!(inbound.len(), 1);
        assert_eq!(inbound[0].from, "Service shop/web");
        // A name keeps that route (or virtual host) only.
        let canary = routes(&dump, &only(|f| f.name = Some("canary".into())));
        assert_eq!(canary.len(), 1);
        assert_eq!(canary[0].name, "canary");
    }

    #[test]
    fn inbound_routes_show_the_port_and_the_applications_address() {
        let with_ingress = format!(
            "{SHOP}\n---\napiVersion: networking.trellis.dev/v1alpha1\nkind: Sidecar\nmetadata: {{name: web, namespace: shop}}\nspec:\n  workloadSelector: {{labels: {{app: web}}}}\n  ingress:\n  - port: {{number: 8080, protocol: HTTP, name: http}}\n    defaultEndpoint: 127.0.0.1:9090\n  - port: {{number: 7070, protocol: TCP, name: tcp-admin}}\n    defaultEndpoint: \"[::1]:7071\"\n"
        );
        let inbound_rows = |dump: &Dump| -> Vec<(String, String, String)> {
            routes(dump, &only(|f| f.direction = Some("inbound".into())))
                .into_iter()
                .map(|r| (r.matches, r.destination, r.from))
                .collect()
        };
        assert_eq!(
            inbound_rows(&web_dump(Value::Null)),
            [(
                "port 8080".to_string(),
                "app 127.0.0.1:8080".to_string(),
                "Service shop/web".to_string()
            )]
        );
        assert_eq!(
            inbound_rows(&web_dump_of(&with_ingress, Value::Null)),
            [
                (
                    "port 8080".to_string(),
                    "app 127.0.0.1:9090".to_string(),
                    "Sidecar shop/web ingress[0]".to_string()
                ),
                (
                    "TCP port 7070".to_string(),
                    "app [::1]:7071".to_string(),
                    "Sidecar shop/web ingress[1]".to_string()
                ),
            ]
        );
    }

    #[test]
    fn tcp_splits_and_tls_routes_by_sni_show_every_destination() {
        let yaml = format!(
            "{SHOP}\n---\napiVersion: networking.trellis.dev/v1alpha1\nkind: VirtualService\nmetadata: {{name: db-tcp, namespace: shop}}\nspec:\n  hosts: [db.shop.svc.cluster.local]\n  tls:\n  - match: [{{sniHosts: [db.shop.svc.cluster.local]}}]\n    route: [{{destination: {{host: payment, port: {{number: 80}}}}}}]\n  tcp:\n  - route: [{{destination: {{host: db}}, weight: 70}}, {{destination: {{host: payment, port: {{number: 80}}}}, weight: 30}}]\n"
        );
        let dump = web_dump_of(&yaml, Value::Null);
        let all = routes(&dump, &Filter::default());
        let tls = all.iter().find(|r| r.matches.starts_with("TLS")).unwrap();
        assert_eq!(
            (tls.matches.as_str(), tls.destination.as_str()),
            (
                "TLS port 5432 SNI db.shop.svc.cluster.local",
                "outbound|80||payment.shop.svc.cluster.local"
            )
        );
        let tcp = all.iter().find(|r| r.matches == "TCP port 5432").unwrap();
        assert_eq!(
            tcp.destination,
            "outbound|5432||db.shop.svc.cluster.local 70%, outbound|80||payment.shop.svc.cluster.local 30%"
        );
    }

    /// A gateway port with a terminated HTTPS host and a host passed through by SNI.

    #[test]
    fn gateway_listeners_say_what_they_pass_through_and_which_rule_routes_it() {
        let yaml = format!(
            "{SHOP}\n---\napiVersion: networking.trellis.dev/v1alpha1\nkind: Gateway\nmetadata: {{name: db-edge, namespace: shop}}\nspec:\n  selector: {{app: trellis-ingressgateway}}\n  servers:\n  - port: {{number: 443, name: tls-db, protocol: TLS, targetPort: 8443}}\n    hosts: [shop/db.example.com]\n    tls: {{mode: PASSTHROUGH}}\n---\napiVersion: networking.trellis.dev/v1alpha1\nkind: VirtualService\nmetadata: {{name: db-edge, namespace: shop}}\nspec:\n  hosts: [db.example.com]\n  gateways: [db-edge]\n  tls:\n  - match: [{{sniHosts: [db.example.com]}}]\n    route: [{{destination: {{host: db, port: {{number: 5432}}}}}}]\n"
        );
        let dump = dump_of(
            &yaml,
            ObjectKey::new("trellis-system", "ingress-1"),
            Role::Gateway,
            Value::Null,
        );
        let ls = listeners(&dump, &only(|f| f.port = Some(8443)));
        assert_eq!(
            (ls[0].tls.as_str(), ls[0].destination.as_str()),
            (
                "simple+passthrough",
                "1 virtual hosts (routes); outbound|5432||db.shop.svc.cluster.local"
            )
        );
        let rows = routes(&dump, &only(|f| f.port = Some(8443)));
        let tls = rows.iter().find(|r| r.virtual_host == "-").unwrap();
        assert_eq!(
            (tls.matches.as_str(), tls.from.as_str()),
            (
                "TLS SNI db.example.com (passed through)",
                "VirtualService shop/db-edge tls[0]"
            )
        );
    }

    #[test]
    fn listeners_and_clusters_by_port_subset_and_direction() {
        let dump = web_dump(Value::Null);
        let ls = listeners(&dump, &Filter::default());
        let seen: Vec<(&str, Option<u16>, &str)> = ls.iter().map(|l| (l.name.as_str(), l.port, l.direction)).collect();
        assert_eq!(
            seen,
            [
                ("outbound", Some(15001), "outbound"),
                ("inbound", Some(15006), "inbound")
            ]
        );
        // The outbound listener's HTTP and TCP routes both.
        assert_eq!(
            ls[0].destination,
            "3 virtual hosts (routes); outbound|5432||db.shop.svc.cluster.local"
        );
        assert_eq!(listeners(&dump, &only(|f| f.port = Some(15006))).len(), 1);
        assert_eq!((ls[0].from.as_str(), ls[1].from.as_str()), ("-", "-"));
        // A Sidecar that scopes the outbound listener is named, as a route names its rule.
        let scoped = format!(
            "{SHOP}\n---\napiVersion: networking.trellis.dev/v1alpha1\nkind: Sidecar\nmetadata: {{name: default, namespace: shop}}\nspec: {{egress: [{{hosts: [\"./*\"]}}]}}\n"
        );
        let ls = listeners(&web_dump_of(&scoped, Value::Null), &Filter::default());
        assert_eq!(
            (ls[0].from.as_str(), ls[1].from.as_str()),
            ("Sidecar shop/default", "-")
        );

        let v2 = clusters(&dump, &only(|f| f.subset = Some("v2".into())));
        assert_eq!(v2.len(), 1);
        let c = &v2[0];
        assert_eq!(
            (
                c.fqdn.as_str(),
                c.port,
                c.direction.as_str(),
                c.load_balancer.as_str(),
                c.tls.as_str(),
                c.endpoints
            ),
            (PAYMENT, Some(80), "outbound", "ringHash", "ISTIO_MUTUAL", 1)
        );
        // Where its settings came from, as routes name their rule: the parts of the rule in
        // force for its port and subset, in the order they were applied.
        assert_eq!(
            c.from,
            "DestinationRule shop/payment trafficPolicy + subsets[1].trafficPolicy"
        );
        let payment = clusters(&dump, &only(|f| f.fqdn = Some(PAYMENT.into())));
        assert_eq!(payment.len(), 3, "v1, v2 and the service's own: {payment:?}");
        let inbound = clusters(&dump, &only(|f| f.direction = Some("inbound".into())));
        assert_eq!(inbound.len(), 1);
        assert_eq!(
            (inbound[0].port, inbound[0].tls.as_str(), inbound[0].from.as_str()),
            (Some(8080), "-", "-")
        );
        // An inbound cluster names where its connection pool came from: its Service's
        // DestinationRule, or a Sidecar's inbound pool, which takes precedence.
        let rule = "apiVersion: networking.trellis.dev/v1alpha1\nkind: DestinationRule\nmetadata: {name: web, namespace: shop}\nspec: {host: web, trafficPolicy: {connectionPool: {tcp: {maxConnections: 10}}}}\n";
        let sidecar = "apiVersion: networking.trellis.dev/v1alpha1\nkind: Sidecar\nmetadata: {name: pools, namespace: shop}\nspec: {inboundConnectionPool: {http: {http1MaxPendingRequests: 5}}}\n";
        let inbound_from = |extra: &[&str]| {
            let yaml = format!("{SHOP}\n---\n{}", extra.join("---\n"));
            let dump = web_dump_of(&yaml, Value::Null);
            let rows = clusters(&dump, &only(|f| f.direction = Some("inbound".into())));
            rows.into_iter().map(|c| c.from).collect::<Vec<_>>()
        };
        assert_eq!(inbound_from(&[rule]), ["DestinationRule shop/web trafficPolicy"]);
        assert_eq!(inbound_from(&[rule, sidecar]), ["Sidecar shop/pools"]);
        // A port's entry replaces the rule's policy whole (as in Istio): it is named.
        let port_rule = "apiVersion: networking.trellis.dev/v1alpha1\nkind: DestinationRule\nmetadata: {name: web, namespace: shop}\nspec: {host: web, trafficPolicy: {connectionPool: {tcp: {maxConnections: 10}}, portLevelSettings: [{port: {number: 8080}, connectionPool: {tcp: {maxConnections: 5}}}]}}\n";
        assert_eq!(
            inbound_from(&[port_rule]),
            ["DestinationRule shop/web trafficPolicy.portLevelSettings[0]"]
        );
        assert!(
            clusters(&dump, &only(|f| f.port = Some(5432)))
                .iter()
                .all(|c| c.fqdn == "db.shop.svc.cluster.local")
        );
    }

    #[test]
    fn endpoints_with_health_and_the_outlier_state_the_proxy_sees() {
        let dump = web_dump(Value::Null);
        let rows = endpoints(&dump, &only(|f| f.subset = Some("v2".into())));
        let seen: Vec<(&str, &str, &str)> = rows
            .iter()
            .map(|r| (r.endpoint.as_str(), r.status.as_str(), r.outlier_check.as_str()))
            .collect();
        // Ready in the registry, ejected by the proxy's outlier detection; the not-ready pod
        // (10.244.0.23) is not an endpoint at all.
        assert_eq!(seen, [("10.244.0.22:9091", "healthy", "EJECTED")]);
        assert!(
            rows.iter()
                .all(|r| r.identity == "spiffe://cluster.local/ns/shop/sa/payment")
        );
        // A cluster the proxy reports no live state for.
        let v1 = endpoints(&dump, &only(|f| f.subset = Some("v1".into())));
        assert_eq!(v1[0].outlier_check, "-");
    }

    #[test]
    fn the_secret_is_the_certificate_metadata_only() {
        let dump = web_dump(Value::Null);
        let rows = secrets(&dump);
        assert_eq!(
            rows,
            [SecretRow {
                identity: "spiffe://cluster.local/ns/shop/sa/web".into(),
                certificate: "leaf".into(),
                serial: "1a:2b".into(),
                not_before: "Fri, 04 Dec 2026 20:00:00 +0000".into(),
                not_after: "Sat, 05 Dec 2026 20:00:00 +0000".into(),
                issuer: "O=Trellis, CN=Trellis Root CA".into(),
            }]
        );
        // A proxy without a certificate yet shows none.
        let mut bare = web_dump(Value::Null);
        bare.raw["workloadCertificate"] = Value::Null;
        assert!(secrets(&bare).is_empty());
    }
}
