//! A cluster's circuit breakers through a real proxy, as Istio's `connectionPool` sets
//! them: `http2MaxRequests` (active requests; the overflow answered 503 `UO` at once and
//! never charged to the endpoint) and `maxRetries` (retries in flight; a retry past it is
//! not made and the answer it would have replaced is returned), or in its place the
//! `retryBudget` (Envoy's: a share of the requests, at least a minimum).

use crate::support::*;
use serde_json::json;

/// The value of the series `name{...cluster="c"...}` in `/metrics`, if any.
fn counter(metrics: &str, name: &str) -> Option<u64> {
    metrics
        .lines()
        .find(|l| l.starts_with(&format!("{name}{{")) && l.contains("cluster=\"c\""))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
}

/// `n` GETs of `path` at once.
async fn concurrently(addr: std::net::SocketAddr, n: usize, path: &'static str) -> Vec<Reply> {
    let tasks: Vec<_> = (0..n)
        .map(|_| tokio::spawn(async move { get(addr, "svc", path).await }))
        .collect();
    let mut replies = Vec::new();
    for t in tasks {
        replies.push(t.await.unwrap());
    }
    replies
}

#[tokio::test]
async fn max_requests_answers_the_overflow_503_uo_and_leaves_the_endpoint_healthy() {
    let slow = Upstream::start("slow").await;
    let mut c = cluster("c", &[&slow]);
    c["connectionPool"] = json!({"maxRequests": 2});
    // One 5xx would eject the endpoint, were overflows charged to it.
    c["outlierDetection"] = json!({"consecutive5xx": 1, "baseEjectionTimeMs": 60000, "maxEjectionPercent": 100.0});
    let proxy = Proxy::start(outbound_config("1", vec![forward_route("c")], vec![c])).await;
    let addr = proxy.addr("outbound").await;

    let replies = concurrently(addr, 5, "/delay/600").await;
    let mut codes: Vec<u16> = replies.iter().map(|r| r.status.as_u16()).collect();
    codes.sort_unstable();
    assert_eq!(codes, vec![200, 200, 503, 503, 503], "two active, three refused");
    for r in replies.iter().filter(|r| r.status == 503) {
        assert_eq!(r.body, "upstream overflow\n");
    }
    assert_eq!(slow.hits(), 2, "the refused requests never reached the endpoint");

    let m = get(proxy.admin(), "admin", "/metrics").await.body;
    assert_eq!(counter(&m, "trellis_proxy_upstream_rq_overflow_total"), Some(3), "{m}");
    assert!(
        m.lines().any(|l| l.starts_with("istio_requests_total{")
            && l.contains("response_flags=\"UO\"")
            && l.ends_with(" 3")),
        "{m}"
    );
    let dump = get(proxy.admin(), "admin", "/config_dump").await.body;
    assert!(dump.contains("\"ejected\": false"), "{dump}");
    assert!(!dump.contains("\"ejected\": true"), "{dump}");
    // The places are given back: two at once pass again.
    let replies = concurrently(addr, 2, "/delay/10").await;
    assert!(replies.iter().all(|r| r.status == 200), "{replies:?}");
}

/// Four requests at once to a cluster with `pool`, whose one endpoint answers each 503 after
/// 400 ms, on a route that retries twice; each gets the upstream's own answer. When one retry
/// is in flight at a time, four first tries answer together, one request keeps the retry for
/// its second retry, and the three others return their first answer: 4 + 2 tries, 3 retries
/// refused.
async fn four_retrying_at_once(pool: serde_json::Value) -> (Proxy, Upstream, std::net::SocketAddr) {
    let bad = Upstream::failing("bad", 503).await;
    let mut c = cluster("c", &[&bad]);
    c["connectionPool"] = pool;
    let route = json!({
        "action": {"forward": {"clusters": [{"cluster": "c"}],
                   "retries": {"attempts": 2, "retryOn": ["5xx"], "backoffBaseMs": 1}}},
        "provenance": provenance(),
    });
    let proxy = Proxy::start(outbound_config("1", vec![route], vec![c])).await;
    let addr = proxy.addr("outbound").await;
    let replies = concurrently(addr, 4, "/delay/400").await;
    for r in &replies {
        assert_eq!(r.status, 503);
        assert_eq!(r.body, "bad /delay/400", "the upstream's own answer, not the proxy's");
    }
    (proxy, bad, addr)
}

/// Exactly one retry in flight at a time: see [`four_retrying_at_once`].
async fn one_retry_at_a_time(proxy: &Proxy, bad: &Upstream) {
    assert_eq!(bad.hits(), 4 + 2, "4 tries, then 2 retries of one request");
    let m = get(proxy.admin(), "admin", "/metrics").await.body;
    assert_eq!(
        counter(&m, "trellis_proxy_upstream_retry_overflow_total"),
        Some(3),
        "{m}"
    );
}

#[tokio::test]
async fn max_retries_bounds_retries_in_flight_and_returns_the_answer_not_retried() {
    let (proxy, bad, addr) = four_retrying_at_once(json!({"maxRetries": 1})).await;
    one_retry_at_a_time(&proxy, &bad).await;

    // The retry was given back: a request alone retries as its route says.
    let before = bad.hits();
    assert_eq!(get(addr, "svc", "/delay/10").await.status, 503);
    assert_eq!(bad.hits() - before, 3, "1 try + 2 retries");
}

#[tokio::test]
async fn a_retry_budget_replaces_max_retries() {
    // maxRetries would let every retry through; the budget (0 % of the requests, at least 1)
    // lets one at a time.
    let pool = json!({"maxRetries": 10, "retryBudget": {"budgetBasisPoints": 0, "minRetryConcurrency": 1}});
    let (proxy, bad, _) = four_retrying_at_once(pool).await;
    one_retry_at_a_time(&proxy, &bad).await;
}
