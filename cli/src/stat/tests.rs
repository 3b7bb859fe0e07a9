//! Selection, ordering and figures of `meshctl stat` and `meshctl top`, from a known view.

use pretty_assertions::assert_eq;
use trellis_contract::signals::Counts;
use trellis_core::traffic::{DEFAULT_WINDOW_SECONDS, Edge, WorkloadRef};

use super::*;

fn edge(source: (&str, &str), destination: (&str, &str), service: &str, requests: u64, failures: u64) -> Edge {
    Edge {
        source: WorkloadRef::new(source.0, source.1),
        destination: WorkloadRef::new(destination.0, destination.1),
        service: service.into(),
        counts: Counts::in_buckets(requests, failures, requests, &[(2, requests)]),
    }
}

/// gateway → web 30 (5 failing), web → payment-v1 18, web → payment-v2 2, ops/cron → web 6.
fn view() -> View {
    View {
        window_seconds: 60,
        edges: vec![
            edge(("", ""), ("trellis-system", "gw"), "", 30, 5),
            edge(("ops", "cron"), ("shop", "web"), "web.shop.svc.cluster.local", 6, 0),
            edge(
                ("shop", "web"),
                ("shop", "payment-v1"),
                "payment.shop.svc.cluster.local",
                18,
                0,
            ),
            edge(
                ("shop", "web"),
                ("shop", "payment-v2"),
                "payment.shop.svc.cluster.local",
                2,
                0,
            ),
            edge(
                ("trellis-system", "gw"),
                ("shop", "web"),
                "web.shop.svc.cluster.local",
                30,
                5,
            ),
        ],
        truncated: 0,
    }
}

fn names(rows: &[Row]) -> Vec<String> {
    rows.iter()
        .map(|r| format!("{}/{} {}", r.namespace, r.name, r.stat.requests))
        .collect()
}

fn edge_names(edges: &[EdgeRow]) -> Vec<String> {
    edges
        .iter()
        .map(|e| format!("{} -> {} {}", e.source, e.destination, e.stat.requests))
        .collect()
}

#[test]
fn stat_selects_rows_and_the_edges_into_them() {
    let v = view();
    let deploys = select(&v, Resource::Deploy, None, Some("shop"));
    assert_eq!(
        names(&deploys.rows),
        ["shop/payment-v1 18", "shop/payment-v2 2", "shop/web 36"]
    );
    assert_eq!(deploys.edges.len(), 4);
    let web = select(&v, Resource::Deploy, Some("web"), Some("shop"));
    assert_eq!(names(&web.rows), ["shop/web 36"]);
    assert_eq!(
        edge_names(&web.edges),
        ["ops/cron -> shop/web 6", "trellis-system/gw -> shop/web 30"]
    );
    assert_eq!(web.rows[0].stat.success_rate, Some(31.0 / 36.0));
    let svc = select(&v, Resource::Svc, Some("payment"), Some("shop"));
    assert_eq!(names(&svc.rows), ["shop/payment 20"]);
    assert_eq!(
        edge_names(&svc.edges),
        ["shop/web -> shop/payment-v1 18", "shop/web -> shop/payment-v2 2"]
    );
    let ns = select(&v, Resource::Ns, None, None);
    assert_eq!(names(&ns.rows), ["shop/shop 56", "trellis-system/trellis-system 30"]);
    assert_eq!(ns.resource, "ns");
    assert!(select(&v, Resource::Deploy, None, Some("default")).rows.is_empty());
    let json = serde_json::to_value(&web).unwrap();
    assert_eq!(json["rows"][0]["requests"], 36);
    assert_eq!(json["edges"][1]["source"]["name"], "gw");
    assert_eq!(json["edges"][1]["mtlsShare"], 1.0);
    assert_eq!(json["windowSeconds"], 60);
}

#[test]
fn top_ranks_edges_by_requests_within_a_namespace() {
    let v = view();
    assert_eq!(
        edge_names(&top(&v, None, 3).edges),
        [
            "unknown -> trellis-system/gw 30",
            "trellis-system/gw -> shop/web 30",
            "shop/web -> shop/payment-v1 18"
        ]
    );
    assert_eq!(
        edge_names(&top(&v, Some("ops"), 20).edges),
        ["ops/cron -> shop/web 6"],
        "an edge out of the namespace counts"
    );
}

#[test]
fn figures_and_windows_read_as_people_expect() {
    let stat = Stat {
        requests: 30,
        failures: 5,
        mtls: 30,
        rps: 0.5,
        success_rate: Some(25.0 / 30.0),
        p50_ms: Some(3.4),
        p99_ms: Some(24.1),
        mtls_share: Some(1.0),
    };
    assert_eq!(figures(&stat), ["83.33%", "0.50", "3.4ms", "24.1ms", "100.00%", "30"]);
    assert_eq!(figures(&Stat::default()), ["-", "0.00", "-", "-", "-", "0"]);
    assert_eq!(parse_window("1m"), Ok(DEFAULT_WINDOW_SECONDS));
    assert_eq!(parse_window("30s"), Ok(30));
    assert_eq!(parse_window("300"), Ok(300));
    assert!(parse_window("6m").unwrap_err().contains("up to 300s"));
    assert!(parse_window("15s").unwrap_err().contains("multiple of 10s"));
    assert!(parse_window("soon").unwrap_err().contains("not a window"));
    assert_eq!(window_text(60), "1m");
    assert_eq!(window_text(30), "30s");
}
