//! A cluster's connection pool and outlier detection in the contract: the fields added for
//! Istio's `connectionPool` and `outlierDetection` are optional — a config written before
//! them parses and means what it meant, and they are left out of the JSON while unset — and
//! a zero where a limit or a period must be positive is refused with its path.

use trellis_contract::{ConnectionPool, Http2Keepalive, OutlierDetection, ProxyConfig, TcpKeepalive};

const EXAMPLE: &str = include_str!("../../examples/sidecar.yaml");

fn example() -> ProxyConfig {
    ProxyConfig::parse(EXAMPLE).expect("example parses")
}

#[test]
fn a_pool_and_outlier_detection_written_before_the_new_fields_parse_as_before() {
    let pool: ConnectionPool = serde_json::from_value(serde_json::json!({
        "maxConnections": 10, "maxPendingRequests": 5, "maxRequestsPerConnection": 0,
        "idleTimeoutMs": 1000, "maxIdlePerEndpoint": 4,
    }))
    .expect("an old pool parses");
    assert_eq!(
        pool,
        ConnectionPool {
            max_connections: 10,
            max_pending_requests: 5,
            idle_timeout_ms: 1000,
            max_idle_per_endpoint: 4,
            ..ConnectionPool::default()
        }
    );
    assert_eq!(
        (pool.max_requests, pool.max_retries, pool.tcp_keepalive),
        (None, None, None)
    );
    let od: OutlierDetection = serde_json::from_value(serde_json::json!({
        "consecutive5xx": 3, "consecutiveGatewayErrors": 0, "baseEjectionTimeMs": 1000, "maxEjectionPercent": 50.0,
    }))
    .expect("an old outlier detection parses");
    assert_eq!((od.interval_ms, od.split_external_local_origin_errors), (10_000, false));
    // Unset, the new fields are not written: configs do not grow for what they do not say.
    let json = serde_json::to_string(&ConnectionPool::default()).unwrap();
    for field in [
        "maxRequests",
        "maxRetries",
        "maxConcurrentStreams",
        "maxConnectionDurationMs",
        "tcpIdleTimeoutMs",
        "tcpMaxConnectionDurationMs",
        "tcpKeepalive",
        "maxTcpConnections",
        "http2Keepalive",
    ] {
        assert!(!json.contains(&format!("\"{field}\"")), "{field} in {json}");
    }
}

#[test]
fn zero_limits_and_periods_are_refused_with_their_path() {
    let mut cfg = example();
    cfg.clusters[0].connection_pool = ConnectionPool {
        max_requests: Some(0),
        max_concurrent_streams: Some(0),
        max_connection_duration_ms: Some(0),
        tcp_idle_timeout_ms: Some(0),
        tcp_max_connection_duration_ms: Some(0),
        max_tcp_connections: Some(0),
        tcp_keepalive: Some(TcpKeepalive {
            time_secs: Some(0),
            interval_secs: Some(0),
            probes: Some(0),
        }),
        http2_keepalive: Some(Http2Keepalive {
            interval_ms: 0,
            timeout_ms: 0,
        }),
        ..ConnectionPool::default()
    };
    cfg.clusters[0].outlier_detection = Some(OutlierDetection {
        interval_ms: 0,
        ..OutlierDetection::default()
    });
    let errs = cfg.validate().expect_err("zeros are refused");
    let paths: Vec<&str> = errs.errors.iter().map(|e| e.path.as_str()).collect();
    for field in [
        "connectionPool.maxRequests",
        "connectionPool.maxConcurrentStreams",
        "connectionPool.maxConnectionDurationMs",
        "connectionPool.tcpIdleTimeoutMs",
        "connectionPool.tcpMaxConnectionDurationMs",
        "connectionPool.maxTcpConnections",
        "connectionPool.tcpKeepalive.timeSecs",
        "connectionPool.tcpKeepalive.intervalSecs",
        "connectionPool.tcpKeepalive.probes",
        "connectionPool.http2Keepalive.intervalMs",
        "connectionPool.http2Keepalive.timeoutMs",
        "outlierDetection.intervalMs",
    ] {
        assert!(paths.iter().any(|p| p.ends_with(field)), "{field} not in {errs}");
    }
    // Unset means no limit: valid.
    let mut cfg = example();
    cfg.clusters[0].connection_pool = ConnectionPool::default();
    cfg.validate().expect("no limit is valid");
}

#[test]
fn a_retry_budget_over_100_percent_is_refused_with_its_path() {
    let budget = |bp: u32| {
        let mut cfg = example();
        cfg.clusters[0].connection_pool.retry_budget = Some(trellis_contract::RetryBudget {
            budget_basis_points: bp,
            min_retry_concurrency: 3,
        });
        cfg.validate()
    };
    let errs = budget(10_001).expect_err("over 100 %");
    assert!(
        errs.errors
            .iter()
            .any(|e| e.path.ends_with("connectionPool.retryBudget.budgetBasisPoints")),
        "{errs}"
    );
    budget(10_000).expect("100 % is valid");
    budget(0).expect("0 % (the minimum only) is valid");
}
