//! Routing arbitrary requests through a table with every match kind never
//! panics, and a catch-all route always matches.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use trellis_proxy::routing::{RequestView, RouteTable};

fn table() -> &'static RouteTable {
    static TABLE: OnceLock<RouteTable> = OnceLock::new();
    TABLE.get_or_init(|| {
        let vhosts: Vec<trellis_contract::VirtualHost> = serde_json::from_value(serde_json::json!([
            {"name": "a", "domains": ["a.test", "a.test:8080", "*.b.test"], "routes": [
                {"match": [{"uri": {"regex": "/items/[0-9]+"}, "method": {"exact": "GET"}}],
                 "action": {"directResponse": {"status": 200}}, "provenance": {"kind": "K", "namespace": "n", "name": "r"}},
                {"match": [{"headers": [{"name": "x-canary", "match": {"prefix": "t"}, "invert": true}],
                            "queryParams": [{"name": "u", "match": {"suffix": "x"}}]}],
                 "action": {"directResponse": {"status": 201}}, "provenance": {"kind": "K", "namespace": "n", "name": "r"}},
                {"match": [{"uri": {"prefix": "/API"}, "ignoreUriCase": true, "port": 8080}],
                 "action": {"directResponse": {"status": 202}}, "provenance": {"kind": "K", "namespace": "n", "name": "r"}},
                {"action": {"directResponse": {"status": 204}}, "provenance": {"kind": "K", "namespace": "n", "name": "r"}}
            ]},
            {"name": "any", "domains": ["*"], "routes": [
                {"action": {"directResponse": {"status": 404}}, "provenance": {"kind": "K", "namespace": "n", "name": "r"}}
            ]}
        ]))
        .expect("fixture parses");
        RouteTable::compile("fuzz", &vhosts).expect("fixture compiles")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut parts = text.splitn(5, '\n');
    let method = parts.next().unwrap_or("");
    let host = parts.next().unwrap_or("");
    let target = parts.next().unwrap_or("");
    let header = parts.next().unwrap_or("");
    let port = parts.next().and_then(|p| p.parse().ok()).unwrap_or(80);
    let mut headers = http::HeaderMap::new();
    if let Ok(v) = http::HeaderValue::from_str(header) {
        headers.insert("x-canary", v);
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let view = RequestView {
        method,
        path,
        query,
        host,
        port,
        headers: &headers,
    };
    // The `*` virtual host and the catch-all routes guarantee a match.
    assert!(table().route(&view).is_some());
});
