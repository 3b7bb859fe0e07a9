use trellis_contract::signals::Counts;

use super::*;
use crate::analysis::Nacked;
use crate::traffic::{Edge, Point};

fn edge(source: (&str, &str), destination: (&str, &str), service: &str, requests: u64, failures: u64) -> Edge {
    Edge {
        source: WorkloadRef::new(source.0, source.1),
        destination: WorkloadRef::new(destination.0, destination.1),
        service: service.to_string(),
        counts: Counts::in_buckets(
            requests,
            failures,
            if source.0.is_empty() { 0 } else { requests },
            &[(3, requests)],
        ),
    }
}

/// The shop: outside → gateway → web → payment-v1/v2 → db, web failing 1 in 10.
fn shop() -> View {
    View::merge([View {
        window_seconds: 60,
        edges: vec![
            edge(("", ""), ("shop", "shop-gateway"), "", 600, 60),
            edge(
                ("shop", "shop-gateway"),
                ("shop", "web"),
                "web.shop.svc.cluster.local",
                600,
                60,
            ),
            edge(
                ("shop", "web"),
                ("shop", "payment-v1"),
                "payment.shop.svc.cluster.local",
                486,
                0,
            ),
            edge(
                ("shop", "web"),
                ("shop", "payment-v2"),
                "payment.shop.svc.cluster.local",
                54,
                2,
            ),
            edge(
                ("shop", "payment-v1"),
                ("shop", "db"),
                "db.shop.svc.cluster.local",
                486,
                0,
            ),
            edge(
                ("shop", "payment-v2"),
                ("shop", "db"),
                "db.shop.svc.cluster.local",
                52,
                0,
            ),
        ],
        truncated: 0,
    }])
    .unwrap()
}

#[test]
fn the_graph_has_a_column_per_call_depth_and_edges_with_their_figures_and_health() {
    let graph = Graph::of(&shop(), vec!["trellis-operator-b".into()]);
    let columns: Vec<(usize, &str)> = graph.nodes.iter().map(|n| (n.depth, n.id.as_str())).collect();
    assert_eq!(
        columns,
        [
            (0, OUTSIDE),
            (1, "shop/shop-gateway"),
            (2, "shop/web"),
            (3, "shop/payment-v1"),
            (3, "shop/payment-v2"),
            (4, "shop/db"),
        ]
    );
    let web = graph.edges.iter().find(|e| e.destination == "shop/web").unwrap();
    assert_eq!(web.source, "shop/shop-gateway");
    assert_eq!(web.stat.rps, 10.0);
    assert_eq!(web.stat.success_rate, Some(0.9));
    assert_eq!(web.stat.mtls_share, Some(1.0));
    assert!(web.stat.p50_ms.is_some() && web.stat.p99_ms.is_some());
    assert_eq!(web.health, Health::Failing);
    let v2 = graph.edges.iter().find(|e| e.destination == "shop/payment-v2").unwrap();
    assert_eq!((v2.stat.success_rate, v2.health), (Some(52.0 / 54.0), Health::Degraded));
    let db = graph.nodes.iter().find(|n| n.id == "shop/db").unwrap();
    assert_eq!((db.served.requests, db.health), (538, Health::Healthy));
    let outside = graph.edges.iter().find(|e| e.source == OUTSIDE).unwrap();
    assert_eq!(outside.stat.mtls_share, Some(0.0));
    assert_eq!(graph.missing_replicas, ["trellis-operator-b"]);
    // The JSON the page reads: flattened figures, camelCase.
    let json = serde_json::to_value(&graph).unwrap();
    let web = json["edges"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["destination"] == "shop/web")
        .unwrap();
    assert_eq!((&web["successRate"], &web["health"]), (&0.9.into(), &"failing".into()));
    assert_eq!(json["nodes"][0]["health"], "idle");
    assert_eq!(json["windowSeconds"], 60);
}

#[test]
fn a_cycle_nothing_enters_starts_at_its_first_node_and_an_empty_view_is_an_empty_graph() {
    let view = View::merge([View {
        window_seconds: 10,
        edges: vec![
            edge(("a", "x"), ("a", "y"), "y.a.svc.cluster.local", 1, 0),
            edge(("a", "y"), ("a", "x"), "x.a.svc.cluster.local", 1, 0),
            edge(("a", "y"), ("a", "y"), "y.a.svc.cluster.local", 1, 0),
        ],
        truncated: 0,
    }])
    .unwrap();
    let graph = Graph::of(&view, Vec::new());
    let depths: Vec<(&str, usize)> = graph.nodes.iter().map(|n| (n.id.as_str(), n.depth)).collect();
    assert_eq!(depths, [("a/x", 0), ("a/y", 1)]);
    let empty = Graph::of(&View::default(), Vec::new());
    assert!(empty.nodes.is_empty() && empty.edges.is_empty());
}

#[test]
fn a_service_page_has_a_point_per_slot_and_the_edges_into_it() {
    let payment = "payment.shop.svc.cluster.local";
    let slot = |start_unix, edges| Point { start_unix, edges };
    let a = Series {
        slot_seconds: 10,
        points: vec![
            slot(100, vec![edge(("shop", "web"), ("shop", "payment-v1"), payment, 20, 0)]),
            slot(110, vec![]),
        ],
    };
    let b = Series {
        slot_seconds: 10,
        points: vec![slot(
            110,
            vec![edge(("shop", "web"), ("shop", "payment-v2"), payment, 10, 5)],
        )],
    };
    let page = ServicePage::of(
        "payment.shop".into(),
        &Series::merge([a, b]),
        Err("service payment.shop: not in the registry".into()),
        Vec::new(),
    );
    let points: Vec<(u64, f64, Option<f64>)> = page
        .series
        .iter()
        .map(|p| (p.start_unix, p.stat.rps, p.stat.success_rate))
        .collect();
    assert_eq!(points, [(100, 2.0, Some(1.0)), (110, 1.0, Some(0.5))]);
    assert_eq!(page.edges.len(), 2);
    assert_eq!(page.edges[1].stat.rps, 0.5, "10 requests over the 20 s of the series");
    let json = serde_json::to_value(&page).unwrap();
    assert_eq!(json["routesError"], "service payment.shop: not in the registry");
    assert!(json.get("routes").is_none());
    assert_eq!(json["series"][1]["startUnix"], 110);
}

#[test]
fn proxies_show_their_sync_state_and_version_skew() {
    let state = |proxy: &str, connected, sent: &str, acked: &str, version: &str| ProxySync {
        proxy: proxy.into(),
        role: "sidecar".into(),
        connected,
        sent: Some(sent.into()),
        acked: Some(acked.into()),
        proxy_version: version.into(),
        ..ProxySync::default()
    };
    let mut rejected = state("shop/web-2", true, "v3", "v2", "0.1.0");
    rejected.nacked = Some(Nacked {
        version: "v3".into(),
        error: "bad regex".into(),
    });
    let states = [
        state("shop/web-1", true, "v3", "v3", "0.1.0"),
        rejected,
        state("shop/db-0", true, "v3", "v2", "0.0.9"),
        state("shop/payment-0", false, "v3", "v3", "0.1.0"),
    ];
    let p = Proxies::of(&states, "0.1.0");
    let rows: Vec<(&str, &str, bool)> = p
        .proxies
        .iter()
        .map(|r| (r.proxy.as_str(), r.sync.as_str(), r.skew))
        .collect();
    assert_eq!(
        rows,
        [
            ("shop/db-0", "pending", true),
            ("shop/payment-0", "disconnected", false),
            ("shop/web-1", "synced", false),
            ("shop/web-2", "rejected", false),
        ]
    );
    assert_eq!(p.versions, BTreeMap::from([("0.0.9".into(), 1), ("0.1.0".into(), 3)]));
    assert!(p.findings.iter().any(|f| f.contains("bad regex")), "{:#?}", p.findings);
    assert!(p.findings.iter().any(|f| f.contains("0.0.9")), "{:#?}", p.findings);
}
