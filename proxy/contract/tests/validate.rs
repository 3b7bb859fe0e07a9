//! Semantic validation: the shipped example is valid, and each kind of
//! inconsistency is reported with its field path.

use trellis_contract::{
    AuthorizationPolicy, AuthzAction, AuthzCondition, AuthzRule, AuthzSource, LbPolicy, PemSource, ProxyConfig,
    RouteAction, StringMatch, UpstreamTls, ValidationErrors,
};

const EXAMPLE: &str = include_str!("../../examples/sidecar.yaml");

fn example() -> ProxyConfig {
    ProxyConfig::parse(EXAMPLE).expect("example parses")
}

fn errors(cfg: &ProxyConfig) -> ValidationErrors {
    cfg.validate().expect_err("config should be rejected")
}

/// Assert that exactly the given path is reported, with a message containing `needle`.
fn assert_single(cfg: &ProxyConfig, path: &str, needle: &str) {
    let errs = errors(cfg);
    assert_eq!(errs.errors.len(), 1, "{errs}");
    assert_eq!(errs.errors[0].path, path, "{errs}");
    assert!(errs.errors[0].message.contains(needle), "{errs}");
}

fn forward(cfg: &mut ProxyConfig, route: usize) -> &mut trellis_contract::ForwardAction {
    match &mut cfg.listeners[0].virtual_hosts[0].routes[route].action {
        RouteAction::Forward(f) => f,
        other => panic!("route {route} is not a forward: {other:?}"),
    }
}

#[test]
fn example_config_is_valid_and_carries_provenance() {
    let cfg = example();
    cfg.validate().unwrap();
    let route = &cfg.listeners[0].virtual_hosts[0].routes[1];
    assert_eq!(route.provenance.kind, "VirtualService");
    assert_eq!(route.provenance.name, "payment");
    assert_eq!(route.provenance.rule_index, Some(1));
    assert!(matches!(
        cfg.clusters[1].load_balancer.policy,
        LbPolicy::RingHash {
            minimum_ring_size: 1024
        }
    ));
}

#[test]
fn example_survives_json_round_trip() {
    let cfg = example();
    let again = ProxyConfig::parse(&cfg.to_json()).unwrap();
    assert_eq!(cfg, again);
}

#[test]
fn route_to_unknown_cluster_is_rejected() {
    let mut cfg = example();
    forward(&mut cfg, 0).clusters[0].cluster = "nope".into();
    assert_single(
        &cfg,
        "listeners[0].virtualHosts[0].routes[0].action.forward.clusters[0].cluster",
        "unknown cluster \"nope\"",
    );
}

#[test]
fn weights_must_sum_to_100() {
    let mut cfg = example();
    forward(&mut cfg, 1).clusters[1].weight = 20;
    assert_single(
        &cfg,
        "listeners[0].virtualHosts[0].routes[1].action.forward.clusters",
        "sum to 110",
    );
}

#[test]
fn bad_regex_is_rejected_with_its_path() {
    let mut cfg = example();
    cfg.listeners[0].virtual_hosts[0].routes[1].matches[0].uri = Some(StringMatch::Regex("/pay(".into()));
    assert_single(
        &cfg,
        "listeners[0].virtualHosts[0].routes[1].match[0].uri.regex",
        "invalid regex",
    );
}

#[test]
fn mirror_to_unknown_cluster_and_bad_percentage() {
    let mut cfg = example();
    forward(&mut cfg, 1).mirrors.push(trellis_contract::Mirror {
        cluster: "shadow".into(),
        percentage: 140.0,
    });
    let errs = errors(&cfg);
    let paths: Vec<_> = errs.errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "listeners[0].virtualHosts[0].routes[1].action.forward.mirrors[0].cluster",
            "listeners[0].virtualHosts[0].routes[1].action.forward.mirrors[0].percentage",
        ]
    );
}

#[test]
fn wrong_api_version_and_empty_version() {
    let mut cfg = example();
    cfg.api_version = "proxy.trellis.dev/v9".into();
    cfg.version = " ".into();
    let errs = errors(&cfg);
    assert_eq!(errs.errors[0].path, "apiVersion");
    assert_eq!(errs.errors[1].path, "version");
    assert!(errs.to_string().contains("2 errors"), "{errs}");
}

#[test]
fn duplicate_names_and_addresses() {
    let mut cfg = example();
    let l = cfg.listeners[1].clone();
    cfg.listeners.push(l);
    let c = cfg.clusters[0].clone();
    cfg.clusters.push(c);
    let errs = errors(&cfg);
    let paths: Vec<_> = errs.errors.iter().map(|e| e.path.as_str()).collect();
    assert!(paths.contains(&"clusters[4].name"), "{errs}");
    assert!(paths.contains(&"listeners[2].name"), "{errs}");
    assert!(paths.contains(&"listeners[2].address"), "{errs}");
}

#[test]
fn bad_domains_are_rejected() {
    let mut cfg = example();
    let domains = &mut cfg.listeners[0].virtual_hosts[0].domains;
    domains.push("pay*ment".into());
    domains.push("payment:0".into());
    domains.push("PAYMENT".into()); // duplicate of `payment`, case-insensitively
    let errs = errors(&cfg);
    let paths: Vec<_> = errs.errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "listeners[0].virtualHosts[0].domains[6]",
            "listeners[0].virtualHosts[0].domains[7]",
            "listeners[0].virtualHosts[0].domains[8]",
        ],
        "{errs}"
    );
}

#[test]
fn wildcard_domains_are_accepted() {
    let mut cfg = example();
    cfg.listeners[0].virtual_hosts[0].domains.extend([
        "*.example.com".to_string(),
        "*:8080".to_string(),
        "10.0.0.1:80".to_string(),
    ]);
    cfg.validate().unwrap();
}

#[test]
fn mesh_tls_requires_identity_material() {
    let mut cfg = example();
    cfg.identity.certificate = None;
    assert_single(&cfg, "identity.certificate", "required for mesh mTLS");
}

#[test]
fn mesh_cluster_needs_expected_identity_for_every_endpoint() {
    let mut cfg = example();
    cfg.clusters[1].tls = UpstreamTls::Mesh {
        expected_identities: vec![],
        sni: None,
    };
    assert_single(&cfg, "clusters[1].tls.mesh.expectedIdentities", "peer identity");
}

#[test]
fn bad_spiffe_identity_is_rejected() {
    let mut cfg = example();
    cfg.clusters[0].endpoints[0].identity = Some("spiffe://cluster.local/ns//sa/x".into());
    assert_single(&cfg, "clusters[0].endpoints[0].identity", "invalid path");
}

#[test]
fn maglev_table_must_be_prime_and_hash_key_needs_hash_policy() {
    let mut cfg = example();
    cfg.clusters[1].load_balancer.policy = LbPolicy::Maglev { table_size: 65536 };
    assert_single(
        &cfg,
        "clusters[1].loadBalancer.policy.maglev.tableSize",
        "must be a prime",
    );
    let mut cfg = example();
    cfg.clusters[1].load_balancer.policy = LbPolicy::Random;
    assert_single(&cfg, "clusters[1].loadBalancer.hashKey", "only used by ringHash");
}

#[test]
fn endpoint_address_and_weight_are_checked() {
    let mut cfg = example();
    cfg.clusters[0].endpoints[0].address = "payment-0".into();
    cfg.clusters[0].endpoints[0].weight = 0;
    let errs = errors(&cfg);
    let paths: Vec<_> = errs.errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        ["clusters[0].endpoints[0].address", "clusters[0].endpoints[0].weight"]
    );
}

#[test]
fn retries_and_timeouts_are_bounded() {
    let mut cfg = example();
    let f = forward(&mut cfg, 1);
    let r = f.retries.as_mut().unwrap();
    r.attempts = 50;
    r.retry_on.push(trellis_contract::RetryOn::RetriableStatusCodes);
    f.timeout_ms = Some(0);
    let errs = errors(&cfg);
    let paths: Vec<_> = errs.errors.iter().map(|e| e.path.as_str()).collect();
    let base = "listeners[0].virtualHosts[0].routes[1].action.forward";
    assert_eq!(
        paths,
        [
            format!("{base}.timeoutMs"),
            format!("{base}.retries.attempts"),
            format!("{base}.retries.retriableStatusCodes"),
        ]
    );
}

#[test]
fn header_mutations_may_not_touch_hop_headers() {
    let mut cfg = example();
    let route = &mut cfg.listeners[0].virtual_hosts[0].routes[1];
    route
        .request_headers
        .set
        .insert("Transfer-Encoding".into(), "chunked".into());
    route.response_headers.remove.push("bad header".into());
    let errs = errors(&cfg);
    let paths: Vec<_> = errs.errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "listeners[0].virtualHosts[0].routes[1].requestHeaders.set",
            "listeners[0].virtualHosts[0].routes[1].responseHeaders.remove",
        ]
    );
}

#[test]
fn direct_response_and_redirect_codes_are_checked() {
    let mut cfg = example();
    cfg.listeners[0].virtual_hosts[0].routes[2].action =
        RouteAction::DirectResponse(trellis_contract::DirectResponse { status: 99, body: None });
    cfg.listeners[0].virtual_hosts[0].routes[0].action = RouteAction::Redirect(trellis_contract::Redirect {
        response_code: Some(200),
        ..Default::default()
    });
    let errs = errors(&cfg);
    let paths: Vec<_> = errs.errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "listeners[0].virtualHosts[0].routes[0].action.redirect.responseCode",
            "listeners[0].virtualHosts[0].routes[2].action.directResponse.status",
        ]
    );
}

#[test]
fn provenance_is_required() {
    let mut cfg = example();
    cfg.listeners[0].virtual_hosts[0].routes[0].provenance.kind.clear();
    assert_single(
        &cfg,
        "listeners[0].virtualHosts[0].routes[0].provenance",
        "kind and name",
    );
}

#[test]
fn authorization_matchers_are_checked() {
    let mut cfg = example();
    cfg.inbound.authorization.push(AuthorizationPolicy {
        name: "deny".into(),
        namespace: "shop".into(),
        action: AuthzAction::Deny,
        rules: vec![AuthzRule {
            from: vec![AuthzSource {
                ip_blocks: vec!["10.0.0.0/33".into()],
                ..Default::default()
            }],
            to: vec![],
            when: vec![AuthzCondition {
                key: "request.auth.nonsense".into(),
                values: vec![StringMatch::Regex("(".into())],
                not_values: vec![],
            }],
        }],
    });
    let errs = errors(&cfg);
    let paths: Vec<_> = errs.errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "inbound.authorization[1].rules[0].from[0].ipBlocks[0]",
            "inbound.authorization[1].rules[0].when[0].key",
            "inbound.authorization[1].rules[0].when[0].values[0].regex",
        ]
    );
}

#[test]
fn tcp_routes_and_dns_entries_are_checked() {
    let mut cfg = example();
    cfg.listeners[0].tcp_routes[0].cluster = "gone".into();
    cfg.listeners[0].tcp_routes[0].destination_cidrs.push("10.0.0.0".into());
    cfg.dns.entries[0].addresses.push("ten".into());
    let errs = errors(&cfg);
    let paths: Vec<_> = errs.errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "listeners[0].tcpRoutes[0].cluster",
            "listeners[0].tcpRoutes[0].destinationCidrs[0]",
            "dns.entries[0].addresses[1]",
        ]
    );
}

#[test]
fn config_with_many_problems_lists_them_all() {
    let mut cfg = example();
    cfg.version.clear();
    forward(&mut cfg, 0).clusters[0].cluster = "a".into();
    forward(&mut cfg, 1).clusters[0].cluster = "b".into();
    let errs = errors(&cfg);
    assert_eq!(errs.errors.len(), 3, "{errs}");
    let text = errs.to_string();
    assert!(text.starts_with("proxy config \"\" is invalid (3 errors)"), "{text}");
}

#[test]
fn sni_tls_entries_are_checked() {
    let cert = serde_json::json!({"files": {"certChainFile": "/etc/tls/a.crt", "privateKeyFile": "/etc/tls/a.key"}});
    let cfg: ProxyConfig = serde_json::from_value(serde_json::json!({
        "version": "1",
        "mode": "gateway",
        "listeners": [{
            "name": "gw", "address": "0.0.0.0:443", "direction": "gateway", "protocol": "http",
            "sniTls": [
                {"serverNames": ["shop.example.com", "*.api.example.com"], "tls": {"mode": "simple", "certificate": cert}},
                {"serverNames": ["SHOP.example.com", "a.*.example.com", "x.example.com:443"], "tls": {"mode": "mutual", "certificate": cert}},
                {"serverNames": [], "tls": {"mode": "simple", "certificate": cert}},
            ],
        }],
    }))
    .unwrap();
    let errs = errors(&cfg);
    let paths: Vec<&str> = errs.errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "listeners[0].sniTls[1].tls.clientCa",
            "listeners[0].sniTls[1].serverNames[0]",
            "listeners[0].sniTls[1].serverNames[1]",
            "listeners[0].sniTls[1].serverNames[2]",
            "listeners[0].sniTls[2].serverNames",
        ],
        "{errs}"
    );
    assert!(
        errs.errors[1]
            .message
            .contains("already served by listeners[0].sniTls[0]"),
        "{errs}"
    );
    // Without sniTls the JSON of a listener is unchanged (older proxies, golden files).
    let mut ok = cfg.clone();
    ok.listeners[0].sni_tls.clear();
    assert!(!ok.to_json().contains("sniTls"));
}

#[test]
fn gateway_handshake_bounds_are_checked() {
    let cert = serde_json::json!({"files": {"certChainFile": "/etc/tls/a.crt", "privateKeyFile": "/etc/tls/a.key"}});
    let gateway = |tls: serde_json::Value| -> ProxyConfig {
        serde_json::from_value(serde_json::json!({
            "version": "1",
            "mode": "gateway",
            "listeners": [{
                "name": "gw", "address": "0.0.0.0:443", "direction": "gateway", "protocol": "http", "tls": tls,
            }],
        }))
        .unwrap()
    };
    let good = gateway(serde_json::json!({
        "mode": "mutual", "certificate": cert, "clientCa": {"file": "/etc/tls/ca.crt"},
        "clientSubjectAltNames": ["spiffe://partner.example/ns/a/sa/b", "client.example.com"],
        "minVersion": "tls1.2", "maxVersion": "tls1.3",
        "cipherSuites": ["ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-ECDSA-CHACHA20-POLY1305"],
    }));
    assert!(good.validate().is_ok(), "{:?}", good.validate());
    for (tls, path, needle) in [
        (
            serde_json::json!({"mode": "simple", "certificate": cert, "clientSubjectAltNames": ["a.example.com"]}),
            "listeners[0].tls.clientSubjectAltNames",
            "simple asks for no client certificate",
        ),
        (
            serde_json::json!({"mode": "simple", "certificate": cert, "minVersion": "tls1.3", "maxVersion": "tls1.2"}),
            "listeners[0].tls.minVersion",
            "above maxVersion",
        ),
        (
            serde_json::json!({"mode": "simple", "certificate": cert, "cipherSuites": ["AES128-SHA"]}),
            "listeners[0].tls.cipherSuites[0]",
            "not a TLS 1.2 cipher suite the proxy implements: ECDHE-ECDSA-AES128-GCM-SHA256",
        ),
        (
            serde_json::json!({"mode": "simple", "certificate": cert,
                               "cipherSuites": ["ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256"]}),
            "listeners[0].tls.cipherSuites[1]",
            "listed twice",
        ),
    ] {
        assert_single(&gateway(tls), path, needle);
    }
    // Versions are spelled as the contract spells them.
    let bad: Result<ProxyConfig, _> = serde_json::from_value(serde_json::json!({
        "version": "1", "mode": "gateway",
        "listeners": [{"name": "gw", "address": "0.0.0.0:443", "direction": "gateway", "protocol": "http",
                       "tls": {"mode": "simple", "certificate": cert, "minVersion": "TLSV1_3"}}],
    }));
    assert!(bad.unwrap_err().to_string().contains("tls1.3"));
}

#[test]
fn originated_tls_is_checked_field_by_field() {
    let originate = |o: trellis_contract::OriginateTls| UpstreamTls::Originate(Box::new(o));
    let good = trellis_contract::OriginateTls {
        sni: "db.example.com".into(),
        ..Default::default()
    };
    let mut cfg = example();
    cfg.clusters[1].tls = originate(good.clone());
    assert!(cfg.validate().is_ok(), "{:?}", cfg.validate());
    // An IP address is a server name too (no SNI is sent then).
    cfg.clusters[1].tls = originate(trellis_contract::OriginateTls {
        sni: "10.0.0.7".into(),
        ..good.clone()
    });
    assert!(cfg.validate().is_ok(), "{:?}", cfg.validate());

    for (tls, path, needle) in [
        (
            trellis_contract::OriginateTls {
                sni: "db example".into(),
                ..good.clone()
            },
            "clusters[1].tls.originate.sni",
            "not a DNS name or IP address",
        ),
        (
            trellis_contract::OriginateTls {
                subject_alt_names: vec!["a b".into()],
                ..good.clone()
            },
            "clusters[1].tls.originate.subjectAltNames[0]",
            "is not a name",
        ),
        (
            trellis_contract::OriginateTls {
                insecure_skip_verify: true,
                subject_alt_names: vec!["db.example.com".into()],
                ..good.clone()
            },
            "clusters[1].tls.originate.insecureSkipVerify",
            "nothing is verified",
        ),
        (
            trellis_contract::OriginateTls {
                insecure_skip_verify: true,
                crl: Some(PemSource::File("/etc/crl.pem".into())),
                ..good.clone()
            },
            "clusters[1].tls.originate.insecureSkipVerify",
            "nothing is verified",
        ),
        (
            trellis_contract::OriginateTls {
                crl: Some(PemSource::Inline(
                    "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
                )),
                ..good.clone()
            },
            "clusters[1].tls.originate.crl.inline",
            "no PEM certificate revocation list",
        ),
    ] {
        let mut cfg = example();
        cfg.clusters[1].tls = originate(tls);
        assert_single(&cfg, path, needle);
    }

    let mut cfg = example();
    cfg.clusters[1].tls = UpstreamTls::Mesh {
        expected_identities: vec!["spiffe://cluster.local/ns/egress/sa/gw".into()],
        sni: Some("-bad-".into()),
    };
    assert_single(&cfg, "clusters[1].tls.mesh.sni", "not a DNS name");
}

#[test]
fn tcp_routes_name_one_cluster_or_weighted_clusters_summing_to_100() {
    let weighted = |pairs: &[(&str, u32)]| {
        pairs
            .iter()
            .map(|(c, w)| trellis_contract::TcpWeightedCluster {
                cluster: c.to_string(),
                weight: *w,
            })
            .collect::<Vec<_>>()
    };
    let (db, v1) = (
        "outbound|5432||db.shop.svc.cluster.local",
        "outbound|8080|v1|payment.shop.svc.cluster.local",
    );
    let mut cfg = example();
    cfg.listeners[0].tcp_routes[0].cluster.clear();
    cfg.listeners[0].tcp_routes[0].weighted_clusters = weighted(&[(db, 60), (v1, 40)]);
    assert!(cfg.validate().is_ok(), "{:?}", cfg.validate());

    for (cluster, pairs, path, needle) in [
        (
            "",
            weighted(&[(db, 60), (v1, 30)]),
            "listeners[0].tcpRoutes[0].weightedClusters",
            "sum to 90",
        ),
        (
            "",
            weighted(&[(db, 60), ("nope", 40)]),
            "listeners[0].tcpRoutes[0].weightedClusters[1].cluster",
            "nope",
        ),
        (
            db,
            weighted(&[(db, 100)]),
            "listeners[0].tcpRoutes[0].weightedClusters",
            "not both",
        ),
        (
            "",
            vec![],
            "listeners[0].tcpRoutes[0].cluster",
            "needs cluster or weightedClusters",
        ),
    ] {
        let mut cfg = example();
        cfg.listeners[0].tcp_routes[0].cluster = cluster.to_string();
        cfg.listeners[0].tcp_routes[0].weighted_clusters = pairs;
        assert_single(&cfg, path, needle);
    }
}

#[test]
fn sni_hosts_are_names_wildcards_or_star() {
    let mut cfg = example();
    cfg.listeners[0].tcp_routes[0].sni_hosts = vec!["db.example.com".into(), "*.example.org".into(), "*".into()];
    assert!(cfg.validate().is_ok(), "{:?}", cfg.validate());
    cfg.listeners[0].tcp_routes[0].sni_hosts = vec!["db.example.com".into(), "a b".into()];
    assert_single(
        &cfg,
        "listeners[0].tcpRoutes[0].sniHosts[1]",
        "not a DNS name, *.suffix or *",
    );
}

#[test]
fn jwt_providers_are_checked() {
    let provider = |patch: serde_json::Value| -> trellis_contract::JwtProvider {
        let mut p = serde_json::json!({
            "source": "RequestAuthentication shop/jwt/jwtRules[0]", "issuer": "https://issuer.example",
            "jwks": r#"{"keys":[{"kty":"RSA","n":"AQAB","e":"AQAB"}]}"#,
        });
        for (k, v) in patch.as_object().unwrap() {
            p[k] = v.clone();
        }
        serde_json::from_value(p).unwrap()
    };
    let mut cfg = example();
    cfg.inbound.jwt = vec![provider(serde_json::json!({}))];
    cfg.validate().unwrap();
    cfg.inbound.jwt = vec![provider(serde_json::json!({"jwks": "{\"keys\": []}"}))];
    assert_single(&cfg, "inbound.jwt[0].jwks", "no usable key");
    // Unavailable keys are carried as such (the proxy refuses every token of the issuer).
    cfg.inbound.jwt = vec![provider(
        serde_json::json!({"jwks": "", "jwksUnavailable": "fetch failed"}),
    )];
    cfg.validate().unwrap();
    cfg.inbound.jwt = vec![provider(
        serde_json::json!({"outputPayloadToHeader": "transfer-encoding"}),
    )];
    assert_single(&cfg, "inbound.jwt[0].outputPayloadToHeader", "managed by the proxy");
    cfg.inbound.jwt = vec![provider(serde_json::json!({"issuer": ""}))];
    assert_single(&cfg, "inbound.jwt[0].issuer", "must not be empty");
}
