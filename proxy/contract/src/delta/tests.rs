//! The deltas' tests: applying each kind of change and its errors, computing deltas, and the JSON.

use super::*;
use crate::ProxyConfig;
use serde_json::json;

fn cluster(name: &str, port: u16) -> Cluster {
    serde_json::from_value(json!({"name": name, "endpoints": [{"address": "10.0.0.1", "port": port}]})).unwrap()
}

fn dns(host: &str, ip: &str) -> DnsEntry {
    DnsEntry {
        hostname: host.into(),
        aliases: vec![],
        addresses: vec![ip.into()],
    }
}

fn vhost(name: &str, cluster: &str) -> VirtualHost {
    serde_json::from_value(json!({
        "name": name,
        "domains": [name],
        "routes": [{
            "action": {"forward": {"clusters": [{"cluster": cluster}]}},
            "provenance": {"kind": "Service", "namespace": "shop", "name": name}
        }]
    }))
    .unwrap()
}

fn listener(name: &str, vhosts: &[&str]) -> Listener {
    serde_json::from_value(json!({
        "name": name,
        "address": "0.0.0.0:15001",
        "direction": "outbound",
        "virtualHosts": vhosts.iter().map(|v| vhost(v, "c")).collect::<Vec<_>>(),
    }))
    .unwrap()
}

fn base() -> ProxyConfig {
    let mut cfg = ProxyConfig::empty("v1");
    cfg.listeners = vec![listener("outbound", &["a", "c"]), listener("inbound", &["local"])];
    cfg.clusters = vec![cluster("a", 1), cluster("c", 3)];
    cfg.dns.entries = vec![dns("a.shop", "10.1.0.1"), dns("c.shop", "10.1.0.3")];
    cfg
}

fn names<T: Named>(list: &[T]) -> Vec<&str> {
    list.iter().map(Named::key).collect()
}

#[test]
fn an_empty_delta_only_changes_the_version() {
    let out = ConfigDelta::new("v1", "v2").apply(&base()).unwrap();
    assert_eq!(
        out,
        ProxyConfig {
            version: "v2".into(),
            ..base()
        }
    );
}

#[test]
fn a_delta_for_another_version_asks_for_a_full_snapshot() {
    let err = ConfigDelta::new("v0", "v2").apply(&base()).unwrap_err();
    assert_eq!(
        err,
        DeltaError::Base {
            expected: "v0".into(),
            found: "v1".into()
        }
    );
    assert!(err.to_string().contains("a full snapshot is needed"), "{err}");
}

#[test]
fn top_level_fields_are_replaced_when_present() {
    let mut d = ConfigDelta::new("v1", "v2");
    d.api_version = Some("proxy.trellis.dev/v1alpha2".into());
    d.mode = Some(ProxyMode::Gateway);
    d.node = Some(NodeInfo {
        workload: "web".into(),
        ..NodeInfo::default()
    });
    d.identity = Some(IdentityConfig {
        spiffe_id: Some("spiffe://cluster.local/ns/shop/sa/web".into()),
        ..IdentityConfig::default()
    });
    d.inbound = Some(serde_json::from_value(json!({"mtls": {"mode": "STRICT"}})).unwrap());
    d.telemetry = Some(serde_json::from_value(json!({"accessLog": {"enabled": true}})).unwrap());
    d.drain_timeout_ms = Some(1_000);
    d.dns_upstreams = Some(vec!["10.96.0.10:53".into()]);
    let out = d.apply(&base()).unwrap();
    assert_eq!(out.api_version, "proxy.trellis.dev/v1alpha2");
    assert_eq!(out.mode, ProxyMode::Gateway);
    assert_eq!(out.node.workload, "web");
    assert_eq!(
        out.identity.spiffe_id.as_deref(),
        Some("spiffe://cluster.local/ns/shop/sa/web")
    );
    assert_eq!(out.inbound, d.inbound.clone().unwrap());
    assert_eq!(out.telemetry, d.telemetry.clone().unwrap());
    assert_eq!(out.drain_timeout_ms, 1_000);
    assert_eq!(out.dns.upstreams, ["10.96.0.10:53"]);
    // Everything else is the base's.
    assert_eq!(out.listeners, base().listeners);
    assert_eq!(out.clusters, base().clusters);
    assert_eq!(out.dns.entries, base().dns.entries);
}

#[test]
fn listeners_are_replaced_in_place_appended_and_removed() {
    let mut d = ConfigDelta::new("v1", "v2");
    let mut outbound = listener("outbound", &["z"]);
    outbound.address = "0.0.0.0:15002".into();
    d.listeners = vec![listener("gateway", &[]), outbound.clone()];
    let out = d.apply(&base()).unwrap();
    assert_eq!(names(&out.listeners), ["outbound", "inbound", "gateway"]);
    assert_eq!(out.listeners[0], outbound);

    let mut d = ConfigDelta::new("v1", "v2");
    d.removed_listeners = vec!["outbound".into()];
    let out = d.apply(&base()).unwrap();
    assert_eq!(names(&out.listeners), ["inbound"]);
}

#[test]
fn removing_an_absent_listener_is_an_error() {
    let mut d = ConfigDelta::new("v1", "v2");
    d.removed_listeners = vec!["gateway".into()];
    let err = d.apply(&base()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "delta v1→v2 removes listener \"gateway\" which version v1 does not have"
    );
}

#[test]
fn listener_order_reorders_and_must_be_a_permutation() {
    let mut d = ConfigDelta::new("v1", "v2");
    d.listeners = vec![listener("gateway", &[])];
    d.listener_order = Some(vec!["gateway".into(), "inbound".into(), "outbound".into()]);
    let out = d.apply(&base()).unwrap();
    assert_eq!(names(&out.listeners), ["gateway", "inbound", "outbound"]);

    for bad in [
        vec!["inbound"],
        vec!["inbound", "outbound", "gateway"],
        vec!["inbound", "gateway"],
    ] {
        let mut d = ConfigDelta::new("v1", "v2");
        d.listener_order = Some(bad.iter().map(|s| s.to_string()).collect());
        let err = d.apply(&base()).unwrap_err();
        assert!(matches!(err, DeltaError::ListenerOrder { .. }), "{bad:?}: {err}");
        assert!(err.to_string().contains("must name each of them once"), "{err}");
    }
}

#[test]
fn patches_remove_then_insert_virtual_hosts_sorted_and_replace_in_place() {
    let mut d = ConfigDelta::new("v1", "v2");
    let replaced = vhost("c", "other");
    d.listener_patches = vec![ListenerPatch {
        name: "outbound".into(),
        virtual_hosts: vec![vhost("d", "c"), replaced.clone(), vhost("b", "c"), vhost("0", "c")],
        removed_virtual_hosts: vec!["a".into()],
        tcp_routes: None,
    }];
    let out = d.apply(&base()).unwrap();
    let outbound = &out.listeners[0];
    assert_eq!(names(&outbound.virtual_hosts), ["0", "b", "c", "d"]);
    assert_eq!(outbound.virtual_hosts[2], replaced);
    assert_eq!(out.listeners[1], base().listeners[1], "other listeners untouched");
    // Fields other than the routing tables stay.
    assert_eq!(outbound.address, base().listeners[0].address);
}

#[test]
fn patches_replace_tcp_routes_only_when_present() {
    let mut b = base();
    b.listeners[0].tcp_routes = serde_json::from_value(json!([{"cluster": "a"}])).unwrap();
    let mut d = ConfigDelta::new("v1", "v2");
    d.listener_patches = vec![ListenerPatch {
        name: "outbound".into(),
        virtual_hosts: vec![vhost("b", "c")],
        ..ListenerPatch::default()
    }];
    assert_eq!(d.apply(&b).unwrap().listeners[0].tcp_routes, b.listeners[0].tcp_routes);
    let routes: Vec<TcpRoute> = serde_json::from_value(json!([{"cluster": "c", "destinationPort": 5432}])).unwrap();
    d.listener_patches[0].tcp_routes = Some(routes.clone());
    assert_eq!(d.apply(&b).unwrap().listeners[0].tcp_routes, routes);
    d.listener_patches[0].tcp_routes = Some(vec![]);
    assert!(d.apply(&b).unwrap().listeners[0].tcp_routes.is_empty());
}

#[test]
fn patch_errors_name_the_listener_and_virtual_host() {
    let patch = |name: &str, removed: &[&str]| ListenerPatch {
        name: name.into(),
        removed_virtual_hosts: removed.iter().map(|s| s.to_string()).collect(),
        ..ListenerPatch::default()
    };
    let mut d = ConfigDelta::new("v1", "v2");
    d.listener_patches = vec![patch("gateway", &[])];
    assert_eq!(
        d.apply(&base()).unwrap_err().to_string(),
        "delta v1→v2 patches listener \"gateway\" which version v1 does not have (a new listener is sent whole)"
    );

    d.listener_patches = vec![patch("outbound", &["b"])];
    assert_eq!(
        d.apply(&base()).unwrap_err().to_string(),
        "delta v1→v2 removes virtual host \"b\" of listener \"outbound\" which version v1 does not have"
    );

    d.listener_patches = vec![patch("outbound", &[])];
    d.listeners = vec![listener("outbound", &[])];
    assert!(matches!(
        d.apply(&base()).unwrap_err(),
        DeltaError::PatchConflict { listener, .. } if listener == "outbound"
    ));
    d.listeners.clear();
    d.removed_listeners = vec!["outbound".into()];
    assert!(matches!(
        d.apply(&base()).unwrap_err(),
        DeltaError::PatchConflict { .. }
    ));
}

#[test]
fn clusters_are_removed_then_upserted_sorted() {
    let mut d = ConfigDelta::new("v1", "v2");
    d.removed_clusters = vec!["a".into()];
    d.clusters = vec![cluster("d", 4), cluster("c", 33), cluster("b", 2)];
    let out = d.apply(&base()).unwrap();
    assert_eq!(names(&out.clusters), ["b", "c", "d"]);
    assert_eq!(out.clusters[1], cluster("c", 33));

    let mut d = ConfigDelta::new("v2", "v3");
    d.removed_clusters = vec!["x".into()];
    let mut b = base();
    b.version = "v2".into();
    assert_eq!(
        d.apply(&b).unwrap_err().to_string(),
        "delta v2→v3 removes cluster \"x\" which version v2 does not have"
    );
}

#[test]
fn a_cluster_removed_and_added_again_is_replaced() {
    let mut d = ConfigDelta::new("v1", "v2");
    d.removed_clusters = vec!["c".into()];
    d.clusters = vec![cluster("c", 9)];
    assert_eq!(d.apply(&base()).unwrap().clusters, [cluster("a", 1), cluster("c", 9)]);
}

#[test]
fn dns_entries_are_removed_then_upserted_sorted_by_hostname() {
    let mut d = ConfigDelta::new("v1", "v2");
    d.removed_dns_entries = vec!["c.shop".into()];
    d.dns_entries = vec![dns("b.shop", "10.1.0.2"), dns("a.shop", "10.1.0.9")];
    let out = d.apply(&base()).unwrap();
    assert_eq!(out.dns.entries, [dns("a.shop", "10.1.0.9"), dns("b.shop", "10.1.0.2")]);

    d.removed_dns_entries = vec!["x.shop".into()];
    assert_eq!(
        d.apply(&base()).unwrap_err().to_string(),
        "delta v1→v2 removes DNS entry \"x.shop\" which version v1 does not have"
    );
}

#[test]
fn a_name_twice_in_one_list_is_an_error() {
    type Edit = Box<dyn Fn(&mut ConfigDelta)>;
    let cases: Vec<(Edit, &str)> = vec![
        (
            Box::new(|d| d.listeners = vec![listener("x", &[]), listener("x", &[])]),
            "listeners",
        ),
        (
            Box::new(|d| d.removed_listeners = vec!["inbound".into(), "inbound".into()]),
            "removedListeners",
        ),
        (
            Box::new(|d| d.listener_order = Some(vec!["inbound".into(), "inbound".into()])),
            "listenerOrder",
        ),
        (
            Box::new(|d| {
                d.listener_patches = vec![
                    ListenerPatch {
                        name: "inbound".into(),
                        ..ListenerPatch::default()
                    };
                    2
                ]
            }),
            "listenerPatches",
        ),
        (
            Box::new(|d| {
                d.listener_patches = vec![ListenerPatch {
                    name: "outbound".into(),
                    virtual_hosts: vec![vhost("b", "c"), vhost("b", "c")],
                    ..ListenerPatch::default()
                }]
            }),
            "listenerPatches[outbound].virtualHosts",
        ),
        (
            Box::new(|d| {
                d.listener_patches = vec![ListenerPatch {
                    name: "outbound".into(),
                    removed_virtual_hosts: vec!["a".into(), "a".into()],
                    ..ListenerPatch::default()
                }]
            }),
            "listenerPatches[outbound].removedVirtualHosts",
        ),
        (
            Box::new(|d| d.clusters = vec![cluster("b", 1), cluster("b", 2)]),
            "clusters",
        ),
        (
            Box::new(|d| d.removed_clusters = vec!["a".into(), "a".into()]),
            "removedClusters",
        ),
        (
            Box::new(|d| d.dns_entries = vec![dns("b", "10.0.0.1"), dns("b", "10.0.0.2")]),
            "dnsEntries",
        ),
        (
            Box::new(|d| d.removed_dns_entries = vec!["a.shop".into(), "a.shop".into()]),
            "removedDnsEntries",
        ),
    ];
    for (set, field) in cases {
        let mut d = ConfigDelta::new("v1", "v2");
        set(&mut d);
        let err = d.apply(&base()).unwrap_err();
        assert!(
            matches!(&err, DeltaError::Duplicate { field: f, .. } if f == field),
            "{field}: {err}"
        );
        assert!(err.to_string().contains(&format!("twice in {field}")), "{err}");
    }
}

#[test]
fn the_base_is_never_modified_and_errors_leave_nothing_half_applied() {
    let b = base();
    let mut d = ConfigDelta::new("v1", "v2");
    d.clusters = vec![cluster("b", 2)];
    d.removed_dns_entries = vec!["missing".into()];
    assert!(d.apply(&b).is_err());
    assert_eq!(b, base());
}

#[test]
fn between_patches_listeners_whose_shell_is_unchanged() {
    let old = base();
    let mut new = base();
    new.version = "v2".into();
    new.listeners[0].virtual_hosts = vec![vhost("a", "other"), vhost("b", "c")];
    new.listeners[1].address = "0.0.0.0:15007".into();
    let d = ConfigDelta::between(&old, &new).unwrap();
    assert_eq!(d.listener_patches.len(), 1);
    let p = &d.listener_patches[0];
    assert_eq!(p.name, "outbound");
    assert_eq!(names(&p.virtual_hosts), ["a", "b"]);
    assert_eq!(p.removed_virtual_hosts, ["c"]);
    assert_eq!(p.tcp_routes, None);
    assert_eq!(
        names(&d.listeners),
        ["inbound"],
        "a changed address sends the listener whole"
    );
    assert!(d.clusters.is_empty() && d.removed_clusters.is_empty());
    assert_eq!(d.listener_order, None);
    assert_eq!(d.apply(&old).unwrap(), new);
}

#[test]
fn between_sends_unpatchable_vhost_orders_whole_and_gives_up_on_unsorted_clusters() {
    let old = base();
    let mut new = base();
    new.version = "v2".into();
    // "b" after "c": sorted insertion cannot produce this, the listener goes whole.
    new.listeners[0].virtual_hosts.push(vhost("b", "c"));
    let d = ConfigDelta::between(&old, &new).unwrap();
    assert!(d.listener_patches.is_empty());
    assert_eq!(names(&d.listeners), ["outbound"]);
    assert_eq!(d.apply(&old).unwrap(), new);

    let mut new = base();
    new.version = "v2".into();
    new.clusters.push(cluster("b", 2));
    assert_eq!(ConfigDelta::between(&old, &new), None);
}

#[test]
fn between_orders_listeners_when_needed() {
    let old = base();
    let mut new = base();
    new.version = "v2".into();
    new.listeners.reverse();
    let d = ConfigDelta::between(&old, &new).unwrap();
    assert_eq!(d.listener_order, Some(vec!["inbound".into(), "outbound".into()]));
    assert!(d.listeners.is_empty() && d.listener_patches.is_empty());
    assert_eq!(d.apply(&old).unwrap(), new);
}

#[test]
fn json_omits_what_is_absent_and_uses_the_contract_names() {
    let d = ConfigDelta::new("v1", "v2");
    assert_eq!(
        serde_json::to_value(&d).unwrap(),
        json!({"baseVersion": "v1", "version": "v2"})
    );
    let p = ListenerPatch {
        name: "outbound".into(),
        ..ListenerPatch::default()
    };
    assert_eq!(serde_json::to_value(&p).unwrap(), json!({"name": "outbound"}));
    assert!(serde_json::from_value::<ConfigDelta>(json!({"version": "v2"})).is_err());
    assert!(serde_json::from_value::<ConfigDelta>(json!({"baseVersion": "v1"})).is_err());
}

#[test]
fn json_round_trip_pins_every_field_name() {
    let mut d = ConfigDelta::new("v1", "v2");
    d.api_version = Some(crate::API_VERSION.into());
    d.mode = Some(ProxyMode::Sidecar);
    d.node = Some(NodeInfo::default());
    d.identity = Some(IdentityConfig::default());
    d.inbound = Some(InboundPolicy::default());
    d.telemetry = Some(Telemetry::default());
    d.drain_timeout_ms = Some(5);
    d.listeners = vec![listener("l", &[])];
    d.listener_patches = vec![ListenerPatch {
        name: "outbound".into(),
        virtual_hosts: vec![vhost("v", "c")],
        removed_virtual_hosts: vec!["w".into()],
        tcp_routes: Some(vec![]),
    }];
    d.removed_listeners = vec!["r".into()];
    d.listener_order = Some(vec!["l".into()]);
    d.clusters = vec![cluster("c", 1)];
    d.removed_clusters = vec!["x".into()];
    d.dns_entries = vec![dns("h", "10.0.0.1")];
    d.removed_dns_entries = vec!["g".into()];
    d.dns_upstreams = Some(vec![]);
    let value = serde_json::to_value(&d).unwrap();
    let keys: Vec<&str> = value.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "baseVersion",
            "version",
            "apiVersion",
            "mode",
            "node",
            "identity",
            "inbound",
            "telemetry",
            "drainTimeoutMs",
            "listeners",
            "listenerPatches",
            "removedListeners",
            "listenerOrder",
            "clusters",
            "removedClusters",
            "dnsEntries",
            "removedDnsEntries",
            "dnsUpstreams"
        ]
    );
    let patch_keys: Vec<&str> = value["listenerPatches"][0]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(patch_keys, ["name", "virtualHosts", "removedVirtualHosts", "tcpRoutes"]);
    // Present-but-empty Options survive (they mean "replace with nothing").
    assert_eq!(value["dnsUpstreams"], json!([]));
    assert_eq!(value["listenerPatches"][0]["tcpRoutes"], json!([]));
    let back: ConfigDelta = serde_json::from_value(value).unwrap();
    assert_eq!(back, d);
}

#[test]
fn garbage_is_rejected_without_panicking() {
    for text in [
        "",
        "{}",
        "[]",
        "null",
        r#"{"baseVersion": 1, "version": "v2"}"#,
        r#"{"baseVersion": "v1", "version": "v2", "listeners": {}}"#,
        r#"{"baseVersion": "v1", "version": "v2", "listenerPatches": [{}]}"#,
    ] {
        assert!(serde_json::from_str::<ConfigDelta>(text).is_err(), "{text}");
    }
}
