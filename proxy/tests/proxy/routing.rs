//! Routing through a real proxy: splits, matches, rewrites, redirects,
//! direct responses, header mutations, h2c, load balancers.

use crate::support::*;
use serde_json::json;

#[tokio::test]
async fn weighted_split_follows_weights() {
    let v1 = Upstream::start("v1").await;
    let v2 = Upstream::start("v2").await;
    let route = json!({
        "action": {"forward": {"clusters": [
            {"cluster": "v1", "weight": 80},
            {"cluster": "v2", "weight": 20},
        ]}},
        "provenance": provenance(),
    });
    let proxy = Proxy::start(outbound_config(
        "1",
        vec![route],
        vec![cluster("v1", &[&v1]), cluster("v2", &[&v2])],
    ))
    .await;
    let addr = proxy.addr("outbound").await;
    let mut replies = Vec::new();
    for _ in 0..400 {
        replies.push(get(addr, "payment", "/").await);
    }
    let t = tally(&replies);
    assert!(replies.iter().all(|r| r.status == 200));
    // 80/20 over 400: expect 320 ± 40 (more than 4 sigma).
    assert!((280..=360).contains(&t["v1"]), "{t:?}");
    assert_eq!(t["v1"] + t["v2"], 400);
}

#[tokio::test]
async fn match_kinds_select_routes() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let routes = vec![
        json!({"match": [{"headers": [{"name": "x-canary", "match": {"exact": "true"}}]}],
               "action": {"forward": {"clusters": [{"cluster": "b"}]}}, "provenance": provenance()}),
        json!({"match": [{"queryParams": [{"name": "user", "match": {"exact": "bob"}}]}],
               "action": {"forward": {"clusters": [{"cluster": "b"}]}}, "provenance": provenance()}),
        json!({"match": [{"method": {"exact": "DELETE"}}],
               "action": {"directResponse": {"status": 405, "body": "no deletes"}}, "provenance": provenance()}),
        json!({"match": [{"uri": {"regex": "/items/[0-9]+"}}],
               "action": {"forward": {"clusters": [{"cluster": "b"}]}}, "provenance": provenance()}),
        json!({"match": [{"uri": {"prefix": "/API"}, "ignoreUriCase": true}],
               "action": {"forward": {"clusters": [{"cluster": "b"}]}}, "provenance": provenance()}),
        forward_route("a"),
    ];
    let proxy = Proxy::start(outbound_config(
        "1",
        routes,
        vec![cluster("a", &[&a]), cluster("b", &[&b])],
    ))
    .await;
    let addr = proxy.addr("outbound").await;
    assert_eq!(get(addr, "svc", "/x").await.server(), "a");
    assert_eq!(
        send(addr, "GET", "svc", "/x", &[("x-canary", "true")]).await.server(),
        "b"
    );
    assert_eq!(get(addr, "svc", "/x?user=bob").await.server(), "b");
    assert_eq!(get(addr, "svc", "/x?user=alice").await.server(), "a");
    let del = send(addr, "DELETE", "svc", "/x", &[]).await;
    assert_eq!((del.status.as_u16(), del.body.as_str()), (405, "no deletes"));
    assert_eq!(get(addr, "svc", "/items/42").await.server(), "b");
    assert_eq!(get(addr, "svc", "/items/x42").await.server(), "a");
    assert_eq!(get(addr, "svc", "/api/v1").await.server(), "b");
}

#[tokio::test]
async fn virtual_hosts_by_authority_and_no_route() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let cfg = json!({
        "version": "1",
        "listeners": [{
            "name": "outbound", "address": "127.0.0.1:0", "direction": "outbound", "protocol": "http",
            "virtualHosts": [
                {"name": "a", "domains": ["a.test", "a.test:8080"], "routes": [forward_route("a")]},
                {"name": "b", "domains": ["*.b.test"], "routes": [forward_route("b")]},
            ],
        }],
        "clusters": [cluster("a", &[&a]), cluster("b", &[&b])],
    });
    let proxy = Proxy::start(cfg).await;
    let addr = proxy.addr("outbound").await;
    assert_eq!(get(addr, "a.test", "/").await.server(), "a");
    assert_eq!(get(addr, "A.TEST:8080", "/").await.server(), "a");
    assert_eq!(get(addr, "x.b.test", "/").await.server(), "b");
    let nr = get(addr, "c.test", "/").await;
    assert_eq!(nr.status, 404);
    assert_eq!(nr.body, "no route\n");
}

#[tokio::test]
async fn rewrites_and_header_mutations_reach_upstream_and_client() {
    let a = Upstream::start("a").await;
    let route = json!({
        "match": [{"uri": {"prefix": "/api/"}}],
        "action": {"forward": {
            "clusters": [{"cluster": "a", "requestHeaders": {"set": {"x-dest": "a"}}, "responseHeaders": {"add": {"x-dest-resp": "a"}}}],
            "rewrite": {"uriPrefix": "/v2/", "authority": "backend.internal"},
        }},
        "requestHeaders": {"set": {"x-route": "api"}, "remove": ["x-secret"]},
        "responseHeaders": {"set": {"x-served-by": "trellis"}, "remove": ["x-server"]},
        "provenance": provenance(),
    });
    let proxy = Proxy::start(outbound_config("1", vec![route], vec![cluster("a", &[&a])])).await;
    let addr = proxy.addr("outbound").await;
    let r = send(addr, "GET", "svc", "/api/users?id=1", &[("x-secret", "s")]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers.get("x-served-by").unwrap(), "trellis");
    assert_eq!(r.headers.get("x-dest-resp").unwrap(), "a");
    assert!(r.headers.get("x-server").is_none());
    let seen = a.last_seen();
    assert_eq!(seen.path, "/v2/users?id=1");
    assert_eq!(seen.headers.get("host").unwrap(), "backend.internal");
    assert_eq!(seen.headers.get("x-route").unwrap(), "api");
    assert_eq!(seen.headers.get("x-dest").unwrap(), "a");
    assert!(seen.headers.get("x-secret").is_none());
    // Trace context and request id are added.
    assert!(seen.headers.get("traceparent").is_some());
    assert!(seen.headers.get("x-request-id").is_some());
}

#[tokio::test]
async fn regex_rewrite() {
    let a = Upstream::start("a").await;
    let route = json!({
        "action": {"forward": {"clusters": [{"cluster": "a"}],
            "rewrite": {"uriRegex": {"pattern": "^/users/([0-9]+)$", "substitution": "/u/$1/profile"}}}},
        "provenance": provenance(),
    });
    let proxy = Proxy::start(outbound_config("1", vec![route], vec![cluster("a", &[&a])])).await;
    let addr = proxy.addr("outbound").await;
    get(addr, "svc", "/users/7").await;
    assert_eq!(a.last_seen().path, "/u/7/profile");
}

#[tokio::test]
async fn redirect_and_direct_response() {
    let routes = vec![
        json!({"match": [{"uri": {"exact": "/old"}}],
               "action": {"redirect": {"uri": "/new", "scheme": "https", "responseCode": 308}}, "provenance": provenance()}),
        json!({"match": [{"uri": {"exact": "/moved"}}],
               "action": {"redirect": {"authority": "other.test"}}, "provenance": provenance()}),
        json!({"match": [{"uri": {"exact": "/pinned"}}],
               "action": {"redirect": {"uri": "/landing?from=pinned"}}, "provenance": provenance()}),
        json!({"action": {"directResponse": {"status": 503, "body": "maintenance\n"}}, "provenance": provenance()}),
    ];
    let proxy = Proxy::start(outbound_config("1", routes, vec![])).await;
    let addr = proxy.addr("outbound").await;
    let r = get(addr, "svc.test", "/old").await;
    assert_eq!(r.status, 308);
    assert_eq!(r.headers.get("location").unwrap(), "https://svc.test/new");
    // As Envoy's path_redirect (Istio's `uri`): the request's query kept, unless `uri` has one.
    let r = get(addr, "svc.test", "/old?q=1").await;
    assert_eq!(r.headers.get("location").unwrap(), "https://svc.test/new?q=1");
    let r = get(addr, "svc.test", "/pinned?q=1").await;
    assert_eq!(
        r.headers.get("location").unwrap(),
        "http://svc.test/landing?from=pinned"
    );
    let r = get(addr, "svc.test:8080", "/moved?q=1").await;
    assert_eq!(r.status, 301);
    assert_eq!(r.headers.get("location").unwrap(), "http://other.test:8080/moved?q=1");
    let r = get(addr, "svc.test", "/x").await;
    assert_eq!((r.status.as_u16(), r.body.as_str()), (503, "maintenance\n"));
}

/// Istio's `redirect.prefixRewrite`, as Envoy's redirect `prefix_rewrite`: the prefix the route
/// matched swapped for the new one, the rest of the path and the query kept; a route without a
/// uri prefix matched `/`.
#[tokio::test]
async fn redirect_with_prefix_rewrite_keeps_the_rest_of_the_path_and_the_query() {
    let routes = vec![
        json!({"match": [{"uri": {"prefix": "/old"}}],
               "action": {"redirect": {"prefixRewrite": "/new"}}, "provenance": provenance()}),
        json!({"match": [{"headers": [{"name": "x-move", "match": {"exact": "yes"}}]}],
               "action": {"redirect": {"prefixRewrite": "/moved/", "authority": "other.test"}}, "provenance": provenance()}),
    ];
    let proxy = Proxy::start(outbound_config("1", routes, vec![])).await;
    let addr = proxy.addr("outbound").await;
    let r = get(addr, "svc.test", "/old/a?q=1").await;
    assert_eq!(r.status, 301);
    assert_eq!(r.headers.get("location").unwrap(), "http://svc.test/new/a?q=1");
    let r = get(addr, "svc.test", "/old").await;
    assert_eq!(r.headers.get("location").unwrap(), "http://svc.test/new");
    let r = send(addr, "GET", "svc.test", "/a/b?x=2", &[("x-move", "yes")]).await;
    assert_eq!(r.headers.get("location").unwrap(), "http://other.test/moved/a/b?x=2");
}

#[tokio::test]
async fn h2c_downstream_to_http1_upstream() {
    let a = Upstream::start("a").await;
    let proxy = Proxy::start(outbound_config(
        "1",
        vec![forward_route("a")],
        vec![cluster("a", &[&a])],
    ))
    .await;
    let addr = proxy.addr("outbound").await;
    let r = send_h2(addr, "svc", "/h2").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "a /h2");
    assert_eq!(a.last_seen().headers.get("host").unwrap(), "svc");
}

#[tokio::test]
async fn http2_upstream_cluster() {
    let a = Upstream::start("a").await;
    let mut c = cluster("a", &[&a]);
    c["protocol"] = json!("http2");
    let proxy = Proxy::start(outbound_config("1", vec![forward_route("a")], vec![c])).await;
    let addr = proxy.addr("outbound").await;
    for _ in 0..3 {
        let r = get(addr, "svc:9000", "/x").await;
        assert_eq!(r.status, 200);
    }
    // The authority travels as :authority over HTTP/2.
    let seen = a.last_seen();
    assert_eq!(seen.version, http::Version::HTTP_2);
    assert_eq!(seen.authority, "svc:9000");
}

#[tokio::test]
async fn round_robin_spreads_evenly() {
    let ups = [
        Upstream::start("e0").await,
        Upstream::start("e1").await,
        Upstream::start("e2").await,
    ];
    let proxy = Proxy::start(outbound_config(
        "1",
        vec![forward_route("c")],
        vec![cluster("c", &[&ups[0], &ups[1], &ups[2]])],
    ))
    .await;
    let addr = proxy.addr("outbound").await;
    for _ in 0..30 {
        assert_eq!(get(addr, "svc", "/").await.status, 200);
    }
    for u in &ups {
        assert_eq!(u.hits(), 10, "{}", u.name);
    }
}

#[tokio::test]
async fn consistent_hash_pins_a_key_to_one_endpoint() {
    for policy in [
        json!({"ringHash": {"minimumRingSize": 256}}),
        json!({"maglev": {"tableSize": 251}}),
    ] {
        let ups = [
            Upstream::start("e0").await,
            Upstream::start("e1").await,
            Upstream::start("e2").await,
        ];
        let mut c = cluster("c", &[&ups[0], &ups[1], &ups[2]]);
        c["loadBalancer"] = json!({"policy": policy, "hashKey": {"header": "x-user"}});
        let proxy = Proxy::start(outbound_config("1", vec![forward_route("c")], vec![c])).await;
        let addr = proxy.addr("outbound").await;
        let mut by_user = std::collections::BTreeMap::new();
        // 20 keys over 3 endpoints: all on one endpoint by chance is 3 × (1/3)^20 (with 6 keys,
        // 1 in 250 runs failed so).
        for i in 0..60 {
            let user = format!("user-{}", i % 20);
            let r = send(addr, "GET", "svc", "/", &[("x-user", &user)]).await;
            let prev = by_user.insert(user.clone(), r.server().to_string());
            if let Some(prev) = prev {
                assert_eq!(prev, r.server(), "{policy}: {user} moved");
            }
        }
        let distinct: std::collections::BTreeSet<_> = by_user.values().collect();
        assert!(distinct.len() >= 2, "{policy}: keys should spread: {by_user:?}");
    }
}

#[tokio::test]
async fn least_request_and_random_serve_all_endpoints() {
    for policy in ["leastRequest", "random"] {
        let ups = [Upstream::start("e0").await, Upstream::start("e1").await];
        let mut c = cluster("c", &[&ups[0], &ups[1]]);
        c["loadBalancer"] = json!({"policy": policy});
        let proxy = Proxy::start(outbound_config("1", vec![forward_route("c")], vec![c])).await;
        let addr = proxy.addr("outbound").await;
        for _ in 0..40 {
            assert_eq!(get(addr, "svc", "/").await.status, 200);
        }
        assert!(
            ups.iter().all(|u| u.hits() > 5),
            "{policy}: {} {}",
            ups[0].hits(),
            ups[1].hits()
        );
    }
}

/// A CORS preflight for a POST from `origin`.
async fn preflight(addr: std::net::SocketAddr, origin: &str) -> Reply {
    send(
        addr,
        "OPTIONS",
        "svc",
        "/",
        &[("origin", origin), ("access-control-request-method", "POST")],
    )
    .await
}

#[tokio::test]
async fn cors_preflight_and_actual_request() {
    let a = Upstream::start("a").await;
    let route = json!({
        "action": {"forward": {"clusters": [{"cluster": "a"}]}},
        "cors": {"allowOrigins": [{"exact": "https://app.test"}], "allowMethods": ["GET", "POST"], "allowHeaders": ["x-token"], "maxAgeSeconds": 600, "exposeHeaders": ["x-server"]},
        "provenance": provenance(),
    });
    let proxy = Proxy::start(outbound_config("1", vec![route], vec![cluster("a", &[&a])])).await;
    let addr = proxy.addr("outbound").await;
    let pre = preflight(addr, "https://app.test").await;
    assert_eq!(pre.status, 200);
    assert_eq!(
        pre.headers.get("access-control-allow-origin").unwrap(),
        "https://app.test"
    );
    assert_eq!(pre.headers.get("access-control-allow-methods").unwrap(), "GET,POST");
    assert_eq!(pre.headers.get("access-control-max-age").unwrap(), "600");
    assert_eq!(a.hits(), 0, "preflight is answered by the proxy");
    let bad = preflight(addr, "https://evil.test").await;
    assert!(bad.headers.get("access-control-allow-origin").is_none());
    // Istio's default (`unmatchedPreflights` FORWARD): a preflight from an origin not allowed
    // goes on to the upstream.
    assert_eq!(bad.server(), "a");
    assert_eq!(a.hits(), 1, "an unmatched preflight is forwarded");
    let actual = send(addr, "GET", "svc", "/", &[("origin", "https://app.test")]).await;
    assert_eq!(
        actual.headers.get("access-control-allow-origin").unwrap(),
        "https://app.test"
    );
    assert_eq!(actual.headers.get("access-control-expose-headers").unwrap(), "x-server");
}

/// `unmatchedPreflights: IGNORE`: the proxy answers a preflight from an origin not allowed
/// itself, without CORS headers, and the upstream never sees it.
#[tokio::test]
async fn cors_unmatched_preflight_ignored() {
    let a = Upstream::start("a").await;
    let route = json!({
        "action": {"forward": {"clusters": [{"cluster": "a"}]}},
        "cors": {"allowOrigins": [{"exact": "https://app.test"}], "allowMethods": ["GET"], "ignoreUnmatchedPreflights": true},
        "provenance": provenance(),
    });
    let proxy = Proxy::start(outbound_config("1", vec![route], vec![cluster("a", &[&a])])).await;
    let addr = proxy.addr("outbound").await;
    let bad = preflight(addr, "https://evil.test").await;
    assert_eq!(bad.status, 200);
    assert!(bad.headers.get("access-control-allow-origin").is_none());
    assert_eq!(a.hits(), 0, "an unmatched preflight is answered by the proxy");
}

#[tokio::test]
async fn path_is_normalized_before_routing() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let routes = vec![
        json!({"match": [{"uri": {"prefix": "/admin"}}], "action": {"forward": {"clusters": [{"cluster": "b"}]}}, "provenance": provenance()}),
        forward_route("a"),
    ];
    let proxy = Proxy::start(outbound_config(
        "1",
        routes,
        vec![cluster("a", &[&a]), cluster("b", &[&b])],
    ))
    .await;
    let addr = proxy.addr("outbound").await;
    assert_eq!(get(addr, "svc", "/public/../admin/x").await.server(), "b");
    assert_eq!(b.last_seen().path, "/admin/x");
    assert_eq!(get(addr, "svc", "//admin").await.server(), "b");
    assert_eq!(get(addr, "svc", "/%61dmin").await.server(), "b");
    assert_eq!(get(addr, "svc", "/admin%2Fx").await.status, 400);
}

#[tokio::test]
async fn websocket_style_upgrade_is_spliced() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // An upstream that accepts the upgrade and then echoes bytes.
    let c = echo_upgrade_cluster("ws").await;
    let proxy = Proxy::start(outbound_config("1", vec![forward_route("ws")], vec![c])).await;
    let addr = proxy.addr("outbound").await;
    let mut s = upgraded_to_echo(addr).await;
    s.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    tokio::time::timeout(std::time::Duration::from_secs(3), s.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"ping");
}

/// One request from a chosen loopback source address; returns `x-server`.
async fn from_source(addr: std::net::SocketAddr, source: std::net::IpAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(std::net::SocketAddr::new(source, 0)).unwrap();
    let mut s = sock.connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: svc\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out.lines()
        .find_map(|l| l.strip_prefix("x-server: "))
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn consistent_hash_on_cookie_query_parameter_and_source_ip() {
    let ups = [
        Upstream::start("e0").await,
        Upstream::start("e1").await,
        Upstream::start("e2").await,
    ];
    for key in [
        json!({"cookie": {"name": "session"}}),
        json!({"queryParam": "user"}),
        json!("sourceIp"),
    ] {
        let mut c = cluster("c", &[&ups[0], &ups[1], &ups[2]]);
        c["loadBalancer"] = json!({"policy": {"ringHash": {"minimumRingSize": 256}}, "hashKey": key});
        let proxy = Proxy::start(outbound_config("1", vec![forward_route("c")], vec![c])).await;
        let addr = proxy.addr("outbound").await;
        let mut by_key = std::collections::BTreeMap::new();
        for i in 0..48 {
            let k = i % 8;
            let server = match key.as_str() {
                // 127.0.0.0/8 is all loopback: each client gets its own source address.
                Some("sourceIp") => from_source(addr, std::net::IpAddr::from([127, 0, 0, 10 + k as u8])).await,
                _ if key.get("cookie").is_some() => {
                    let cookie = format!("theme=dark; session=s{k}");
                    send(addr, "GET", "svc", "/", &[("cookie", &cookie)])
                        .await
                        .server()
                        .to_string()
                }
                _ => get(addr, "svc", &format!("/?user=u{k}&x={i}"))
                    .await
                    .server()
                    .to_string(),
            };
            if let Some(prev) = by_key.insert(k, server.clone()) {
                assert_eq!(prev, server, "{key}: key {k} moved");
            }
        }
        let distinct: std::collections::BTreeSet<_> = by_key.values().collect();
        assert!(distinct.len() >= 2, "{key}: keys should spread: {by_key:?}");
    }
}
