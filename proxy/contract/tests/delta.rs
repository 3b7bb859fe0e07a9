//! Randomized checks of `ConfigDelta`: for thousands of pairs of configs (clusters, DNS
//! entries and virtual hosts kept sorted, as the operator writes them), the delta
//! `between` finds reproduces the new config exactly, also after a JSON round trip; it is
//! refused by a config of another version or one lacking something it removes; and
//! unrelated deltas applied to unrelated configs fail cleanly instead of panicking.

use fastrand::Rng;
use std::sync::LazyLock;

use serde_json::json;
use trellis_contract::{
    Cluster, ConfigDelta, DeltaError, DnsEntry, Endpoint, Listener, ListenerDirection, ListenerProtocol, ProxyConfig,
    ProxyMode, Route, RouteAction, StringMatch, TcpRoute, UpstreamProtocol, VirtualHost,
};

const CASES: u64 = 3_000;

fn pick<'a, T>(rng: &mut Rng, from: &'a [T]) -> &'a T {
    &from[rng.usize(..from.len())]
}

// Templates parsed once and varied field by field: building every object through JSON
// would make generation, not the code under test, the cost of these tests.
static ROUTE: LazyLock<Route> = LazyLock::new(|| {
    serde_json::from_value(json!({
        "match": [{"uri": {"prefix": "/"}}],
        "action": {"forward": {"clusters": [{"cluster": "c"}]}},
        "provenance": {"kind": "VirtualService", "namespace": "shop", "name": "vs"},
    }))
    .unwrap()
});
static CLUSTER: LazyLock<Cluster> = LazyLock::new(|| {
    serde_json::from_value(json!({"name": "c", "endpoints": [{"address": "10.0.0.1", "port": 8080}]})).unwrap()
});
static LISTENER: LazyLock<Listener> = LazyLock::new(|| {
    serde_json::from_value(json!({"name": "l", "address": "0.0.0.0:15001", "direction": "outbound"})).unwrap()
});

fn cluster(rng: &mut Rng, name: &str) -> Cluster {
    let mut c = CLUSTER.clone();
    c.name = name.into();
    c.protocol = *pick(
        rng,
        &[UpstreamProtocol::Http1, UpstreamProtocol::Http2, UpstreamProtocol::Tcp],
    );
    c.connect_timeout_ms = rng.u64(1..4) * 1000;
    let endpoint = c.endpoints[0].clone();
    c.endpoints = (0..rng.usize(0..3))
        .map(|i| Endpoint {
            address: format!("10.0.{}.{i}", rng.u8(..)),
            ..endpoint.clone()
        })
        .collect();
    c
}

fn vhost(rng: &mut Rng, name: &str) -> VirtualHost {
    let routes = (0..rng.usize(1..3))
        .map(|i| {
            let mut r = ROUTE.clone();
            r.matches[0].uri = Some(StringMatch::Prefix(format!("/{}", rng.u8(..4))));
            if let RouteAction::Forward(f) = &mut r.action {
                f.clusters[0].cluster = format!("c{}", rng.u8(..20));
                f.timeout_ms = Some(rng.u64(..3) * 1000);
            }
            r.provenance.name = name.into();
            r.provenance.rule_index = Some(i as u32);
            r
        })
        .collect();
    VirtualHost {
        name: name.into(),
        domains: vec![name.into()],
        routes,
    }
}

/// Each of `names` (sorted) is kept with probability `density`.
fn subset<'a>(rng: &mut Rng, names: &[&'a str], density: f64) -> Vec<&'a str> {
    names.iter().copied().filter(|_| rng.f64() < density).collect()
}

const LISTENERS: &[&str] = &["gateway-443", "gateway-80", "inbound", "outbound"];
const HOSTS: &[&str] = &["a:80", "b:80", "c:8080", "d:80", "e:9090", "f:80", "g:80", "h:80"];
const CLUSTERS: &[&str] = &[
    "c00", "c01", "c02", "c03", "c04", "c05", "c06", "c07", "c08", "c09", "c10", "c11", "c12", "c13", "c14", "c15",
];
const NAMES: &[&str] = &["a.shop", "b.shop", "c.shop", "d.shop", "e.shop", "f.shop", "g.shop"];

fn listener(rng: &mut Rng, name: &str) -> Listener {
    let mut l = LISTENER.clone();
    l.name = name.into();
    l.address = format!("0.0.0.0:{}", 15000 + rng.u16(..3));
    l.direction = *pick(
        rng,
        &[
            ListenerDirection::Outbound,
            ListenerDirection::Inbound,
            ListenerDirection::Gateway,
        ],
    );
    l.protocol = *pick(
        rng,
        &[ListenerProtocol::Http, ListenerProtocol::Tcp, ListenerProtocol::Auto],
    );
    l.virtual_hosts = subset(rng, HOSTS, 0.5).into_iter().map(|h| vhost(rng, h)).collect();
    l.tcp_routes = (0..rng.usize(0..2))
        .map(|_| TcpRoute {
            destination_port: Some(rng.u16(1..3)),
            destination_cidrs: vec![],
            sni_hosts: vec![],
            passthrough: false,
            cluster: pick(rng, CLUSTERS).to_string(),
            weighted_clusters: vec![],
            provenance: None,
        })
        .collect();
    l
}

fn config(rng: &mut Rng, version: &str) -> ProxyConfig {
    let mut cfg = ProxyConfig::empty(version);
    let mut listeners: Vec<&str> = subset(rng, LISTENERS, 0.6);
    rng.shuffle(&mut listeners);
    cfg.listeners = listeners.into_iter().map(|l| listener(rng, l)).collect();
    cfg.clusters = subset(rng, CLUSTERS, 0.5)
        .into_iter()
        .map(|c| cluster(rng, c))
        .collect();
    cfg.dns.entries = subset(rng, NAMES, 0.5)
        .into_iter()
        .map(|h| DnsEntry {
            hostname: h.into(),
            aliases: vec![],
            addresses: vec![format!("10.96.0.{}", rng.u8(..4))],
        })
        .collect();
    cfg.dns.upstreams = subset(rng, &["10.0.0.10:53", "10.0.0.11:53"], 0.5)
        .into_iter()
        .map(String::from)
        .collect();
    cfg.mode = *pick(rng, &[ProxyMode::Sidecar, ProxyMode::Gateway]);
    cfg.node.workload = pick(rng, &["web", "payment"]).to_string();
    cfg.identity.trust_domain = pick(rng, &["cluster.local", "example.org"]).to_string();
    cfg.telemetry.access_log.enabled = rng.bool();
    cfg.drain_timeout_ms = rng.u64(1..3) * 1000;
    cfg
}

/// A successor of `old`: each part kept with probability `keep`, else regenerated, so
/// most pairs differ in a few places (what a change of one resource does) and some in
/// many.
fn evolve(rng: &mut Rng, old: &ProxyConfig, version: &str) -> ProxyConfig {
    let keep = [0.5, 0.8, 0.95][rng.usize(..3)];
    let fresh = config(rng, version);
    let mut new = old.clone();
    new.version = version.into();
    let maybe = |rng: &mut Rng| rng.f64() > keep;
    if maybe(rng) {
        new.mode = fresh.mode;
    }
    if maybe(rng) {
        new.node = fresh.node.clone();
    }
    if maybe(rng) {
        new.identity = fresh.identity.clone();
    }
    if maybe(rng) {
        new.telemetry = fresh.telemetry.clone();
    }
    if maybe(rng) {
        new.drain_timeout_ms = fresh.drain_timeout_ms;
    }
    if maybe(rng) {
        new.dns.upstreams = fresh.dns.upstreams.clone();
    }
    // Sorted lists: merge name by name, each name either kept, or taken from `fresh`
    // (changed, added or removed).
    fn merge<T: Clone>(rng: &mut Rng, keep: f64, old: &[T], fresh: &[T], key: fn(&T) -> &str) -> Vec<T> {
        let mut names: Vec<&str> = old.iter().chain(fresh).map(key).collect();
        names.sort_unstable();
        names.dedup();
        names
            .into_iter()
            .filter_map(|n| {
                let from = if rng.f64() < keep { old } else { fresh };
                from.iter().find(|x| key(x) == n).cloned()
            })
            .collect()
    }
    new.clusters = merge(rng, keep, &old.clusters, &fresh.clusters, |c| &c.name);
    new.dns.entries = merge(rng, keep, &old.dns.entries, &fresh.dns.entries, |e| &e.hostname);
    // Listeners: each kept, patched (routing tables only), replaced, dropped or added.
    let mut listeners = Vec::new();
    for l in &old.listeners {
        match rng.usize(..10) {
            0 => {}
            1 => listeners.extend(fresh.listeners.iter().find(|f| f.name == l.name).cloned()),
            2..=4 => {
                let mut l = l.clone();
                let donor = listener(rng, &l.name);
                l.virtual_hosts = merge(rng, keep, &l.virtual_hosts, &donor.virtual_hosts, |v| &v.name);
                if rng.bool() {
                    l.tcp_routes = donor.tcp_routes.clone();
                }
                listeners.push(l);
            }
            _ => listeners.push(l.clone()),
        }
    }
    for f in &fresh.listeners {
        if !listeners.iter().any(|l| l.name == f.name) && !old.listeners.iter().any(|l| l.name == f.name) {
            listeners.push(f.clone());
        }
    }
    if rng.usize(..5) == 0 {
        rng.shuffle(&mut listeners);
    }
    new.listeners = listeners;
    new
}

#[test]
fn between_then_apply_reproduces_the_new_config() {
    let mut rng = Rng::with_seed(0x7e11);
    let (mut patches, mut whole, mut removals, mut reorders) = (0, 0, 0, 0);
    for case in 0..CASES {
        let old = config(&mut rng, &format!("v{case}"));
        let new = evolve(&mut rng, &old, &format!("v{case}'"));
        let delta = ConfigDelta::between(&old, &new)
            .unwrap_or_else(|| panic!("case {case}: no delta for sorted configs\nold: {old:#?}\nnew: {new:#?}"));
        assert_eq!(delta.apply(&old).as_ref(), Ok(&new), "case {case}: {delta:#?}");

        // What crosses the wire is JSON.
        let text = serde_json::to_string(&delta).unwrap();
        let parsed: ConfigDelta = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed.apply(&old).as_ref(), Ok(&new), "case {case} after JSON");

        // Another version is refused.
        let other = ProxyConfig {
            version: format!("v{case}-other"),
            ..old.clone()
        };
        assert!(
            matches!(delta.apply(&other), Err(DeltaError::Base { .. })),
            "case {case}"
        );

        // A base lacking something the delta removes is refused.
        let mut lacking = old.clone();
        if let Some(name) = delta.removed_clusters.first() {
            lacking.clusters.retain(|c| &c.name != name);
        } else if let Some(name) = delta.removed_dns_entries.first() {
            lacking.dns.entries.retain(|e| &e.hostname != name);
        } else if let Some(name) = delta.removed_listeners.first() {
            lacking.listeners.retain(|l| &l.name != name);
        } else if let Some((l, vh)) = delta
            .listener_patches
            .iter()
            .find_map(|p| Some((p.name.clone(), p.removed_virtual_hosts.first()?.clone())))
        {
            for listener in lacking.listeners.iter_mut().filter(|x| x.name == l) {
                listener.virtual_hosts.retain(|v| v.name != vh);
            }
        }
        if lacking != old {
            removals += 1;
            assert!(
                matches!(delta.apply(&lacking), Err(DeltaError::NotInBase { .. })),
                "case {case}: {:?}",
                delta.apply(&lacking)
            );
        }

        patches += delta.listener_patches.len();
        whole += delta.listeners.len();
        reorders += usize::from(delta.listener_order.is_some());
    }
    // The generator exercises every kind of change.
    assert!(
        patches > 500 && whole > 500 && removals > 500 && reorders > 100,
        "{patches} {whole} {removals} {reorders}"
    );
}

#[test]
fn between_never_returns_a_wrong_delta_for_unsorted_configs() {
    let mut rng = Rng::with_seed(42);
    let mut none = 0;
    for case in 0..CASES {
        let old = config(&mut rng, "old");
        let mut new = evolve(&mut rng, &old, "new");
        rng.shuffle(&mut new.clusters);
        rng.shuffle(&mut new.dns.entries);
        if let Some(l) = new.listeners.first_mut() {
            rng.shuffle(&mut l.virtual_hosts);
        }
        match ConfigDelta::between(&old, &new) {
            Some(delta) => assert_eq!(delta.apply(&old).as_ref(), Ok(&new), "case {case}"),
            None => none += 1,
        }
    }
    assert!(none > 0, "shuffled lists sometimes need a full config");
}

#[test]
fn unrelated_deltas_fail_cleanly() {
    let mut rng = Rng::with_seed(7);
    let (mut ok, mut refused) = (0, 0);
    for _ in 0..CASES {
        let a = config(&mut rng, "a");
        let b = evolve(&mut rng, &a, "b");
        let Some(delta) = ConfigDelta::between(&a, &b) else {
            continue;
        };
        // Some other config that claims to be version "a".
        let unrelated = config(&mut rng, "a");
        let c = evolve(&mut rng, &unrelated, "a");
        match delta.apply(&c) {
            Ok(out) => {
                ok += 1;
                assert_eq!(out.version, "b");
                assert_eq!(out.mode, delta.mode.unwrap_or(c.mode));
                assert!(matches!(out.mode, ProxyMode::Sidecar | ProxyMode::Gateway));
            }
            Err(e) => {
                refused += 1;
                assert!(e.to_string().starts_with("delta a→b "), "{e}");
            }
        }
    }
    assert!(ok > 0 && refused > 0, "{ok} {refused}");
}
