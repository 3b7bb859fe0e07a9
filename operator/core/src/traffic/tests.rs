//! The view from reports, with exact figures.

use pretty_assertions::assert_eq;
use trellis_contract::signals::{Counts, EdgeSignals, MAX_EDGES, Report, Reporter};

use super::*;

const GATEWAY: (&str, &str) = ("trellis-system", "trellis-ingressgateway");
const WEB_SVC: &str = "web.shop.svc.cluster.local";
const PAYMENT_SVC: &str = "payment.shop.svc.cluster.local";

/// `requests`, `failures` and `mtls`, with the durations in buckets (index, count).
fn counts(requests: u64, failures: u64, mtls: u64, buckets: &[(usize, u64)]) -> Counts {
    Counts::in_buckets(requests, failures, mtls, buckets)
}

fn edge(reporter: Reporter, peer: (&str, &str), service: &str, counts: Counts) -> EdgeSignals {
    EdgeSignals {
        reporter,
        peer_namespace: peer.0.into(),
        peer_workload: peer.1.into(),
        service: service.into(),
        counts,
    }
}

fn sidecar(ns: &str, name: &str) -> Reporting {
    Reporting {
        workload: WorkloadRef::new(ns, name),
        gateway: false,
    }
}

fn report(edges: Vec<EdgeSignals>) -> Report {
    Report { edges }
}

/// The shop's traffic of one slot (Unix time 1000–1009): 30 requests gateway → web (5
/// failing), web → payment v1 18 and v2 2 (one of them plaintext).
fn shop() -> Store {
    let mut store = Store::default();
    record_shop(&mut store);
    store
}

fn record_shop(store: &mut Store) {
    let web = sidecar("shop", "web");
    let served = |n: u64, failures: u64, bucket: usize| {
        edge(
            Reporter::Destination,
            GATEWAY,
            WEB_SVC,
            counts(n, failures, n, &[(bucket, n)]),
        )
    };
    // 20 in (1, 5] ms, then 5 failing in (10, 25] ms; its client side is not the view's.
    let outbound = edge(
        Reporter::Source,
        ("shop", "payment-v1"),
        PAYMENT_SVC,
        counts(20, 0, 0, &[(3, 20)]),
    );
    assert_eq!(store.record(1000, &web, &report(vec![served(20, 0, 2), outbound])), 0);
    assert_eq!(store.record(1004, &web, &report(vec![served(5, 5, 4)])), 0);
    let payment = |mtls: u64, n: u64| {
        edge(
            Reporter::Destination,
            ("shop", "web"),
            PAYMENT_SVC,
            counts(n, 0, mtls, &[(3, n)]),
        )
    };
    store.record(1005, &sidecar("shop", "payment-v1"), &report(vec![payment(18, 18)]));
    store.record(1006, &sidecar("shop", "payment-v2"), &report(vec![payment(1, 2)]));
    // The gateway: the 25 requests it took from outside, 5 answered 500 (in (25, 50] ms).
    let gateway = Reporting {
        workload: WorkloadRef::new(GATEWAY.0, GATEWAY.1),
        gateway: true,
    };
    let forwarded = edge(Reporter::Source, ("shop", "web"), WEB_SVC, counts(25, 5, 0, &[(5, 25)]));
    store.record(1007, &gateway, &report(vec![forwarded]));
    // A later, quiet report from web: 5 more in (1, 5] ms.
    store.record(1009, &web, &report(vec![served(5, 0, 2)]));
}

fn close(a: Option<f64>, b: f64) -> bool {
    a.is_some_and(|a| (a - b).abs() < 1e-9)
}

#[test]
fn edges_are_counted_by_the_serving_side_with_exact_figures() {
    let view = shop().view(1009, 60);
    assert_eq!(view.window_seconds, 60);
    assert_eq!(view.truncated, 0);
    let rows = view.edge_rows();
    let names: Vec<String> = rows
        .iter()
        .map(|r| format!("{} -> {} ({})", r.source, r.destination, r.service))
        .collect();
    assert_eq!(
        names,
        [
            "unknown -> trellis-system/trellis-ingressgateway ()",
            "shop/web -> shop/payment-v1 (payment.shop.svc.cluster.local)",
            "shop/web -> shop/payment-v2 (payment.shop.svc.cluster.local)",
            "trellis-system/trellis-ingressgateway -> shop/web (web.shop.svc.cluster.local)",
        ]
    );
    let web = &rows[3].stat;
    assert_eq!((web.requests, web.failures, web.mtls), (30, 5, 30));
    assert_eq!(web.rps, 0.5);
    assert_eq!(web.success_rate, Some(25.0 / 30.0));
    assert_eq!(web.mtls_share, Some(1.0));
    // p50: rank 15 of the 25 in (1, 5]: 1 + 4 × 15/25.
    assert!(close(web.p50_ms, 3.4), "{:?}", web.p50_ms);
    // p99: rank 29.7, 4.7 into the 5 in (10, 25]: 10 + 15 × 4.7/5.
    assert!(close(web.p99_ms, 24.1), "{:?}", web.p99_ms);
    let v2 = &rows[2].stat;
    assert_eq!((v2.requests, v2.mtls, v2.mtls_share), (2, 1, Some(0.5)));
    let outside = &rows[0].stat;
    assert_eq!(
        (outside.requests, outside.failures, outside.mtls_share),
        (25, 5, Some(0.0))
    );
    assert_eq!(outside.success_rate, Some(0.8));
    // (25, 50]: p50 at rank 12.5 of 25.
    assert!(close(outside.p50_ms, 37.5), "{:?}", outside.p50_ms);
}

#[test]
fn workloads_services_and_namespaces_sum_their_edges() {
    let view = shop().view(1009, 60);
    let brief = |rows: Vec<Row>| -> Vec<(String, String, u64, u64, u64)> {
        rows.into_iter()
            .map(|r| (r.namespace, r.name, r.stat.requests, r.stat.failures, r.stat.mtls))
            .collect()
    };
    let s = |a: &str, b: &str, r, f, m| (a.to_string(), b.to_string(), r, f, m);
    assert_eq!(
        brief(view.workloads()),
        [
            s("shop", "payment-v1", 18, 0, 18),
            s("shop", "payment-v2", 2, 0, 1),
            s("shop", "web", 30, 5, 30),
            s("trellis-system", "trellis-ingressgateway", 25, 5, 0),
        ]
    );
    assert_eq!(
        brief(view.services()),
        [s("shop", "payment", 20, 0, 19), s("shop", "web", 30, 5, 30)],
        "a gateway's requests from outside have no service"
    );
    let namespaces = view.namespaces();
    assert_eq!(
        brief(namespaces.clone()),
        [
            s("shop", "shop", 50, 5, 49),
            s("trellis-system", "trellis-system", 25, 5, 0)
        ]
    );
    assert_eq!(namespaces[0].stat.success_rate, Some(0.9));
    assert_eq!(namespaces[0].stat.mtls_share, Some(0.98));
    assert_eq!(namespaces[0].stat.rps, 50.0 / 60.0);
}

#[test]
fn windows_take_whole_recent_slots_and_old_slots_go() {
    let mut store = Store::default();
    let web = sidecar("shop", "web");
    let old = edge(
        Reporter::Destination,
        GATEWAY,
        WEB_SVC,
        counts(100, 0, 100, &[(2, 100)]),
    );
    store.record(900, &web, &report(vec![old.clone()]));
    record_shop(&mut store);
    let web_requests = |v: &View| {
        v.workloads()
            .iter()
            .find(|r| r.name == "web")
            .map_or(0, |r| r.stat.requests)
    };
    // 60 s at 1009: slots 95..=100; 300 s: slots 71..=100, slot 90 in.
    assert_eq!(web_requests(&store.view(1009, 60)), 30);
    assert_eq!(web_requests(&store.view(1009, 300)), 130);
    assert_eq!(store.view(1009, 300).edges[3].counts.requests, 130);
    // 10 s at 1015 (slot 101): nothing yet; a window is rounded up to whole slots.
    assert!(store.view(1015, 10).edges.is_empty());
    assert_eq!(store.view(1009, 15).window_seconds, 20);
    // Five minutes on, every slot of before is gone.
    store.record(1300, &web, &report(vec![old]));
    assert_eq!(web_requests(&store.view(1300, 300)), 100);
    assert_eq!(store.slots.len(), 1);
}

#[test]
fn a_report_sent_again_counts_in_the_slot_it_was_first_sent_in() {
    let mut store = Store::default();
    let web = sidecar("shop", "web");
    let served = |n: u64| {
        report(vec![edge(
            Reporter::Destination,
            GATEWAY,
            WEB_SVC,
            counts(n, 0, n, &[(2, n)]),
        )])
    };
    store.record(1009, &web, &served(1));
    // Sent again at 1009 after a replica stopped: first sent 50 s and 200 s before (slots 95
    // and 80, older than the slot already held), and 301 s before (out of every window).
    store.record_aged(1009, 50, &web, &served(10));
    store.record_aged(1009, 200, &web, &served(100));
    store.record_aged(1009, 301 + 9, &web, &served(1000));
    store.record_aged(1009, 50, &web, &served(20));
    let requests = |window: u64| {
        store
            .view(1009, window)
            .edges
            .iter()
            .map(|e| e.counts.requests)
            .sum::<u64>()
    };
    assert_eq!(requests(10), 1, "only the fresh report in the current slot");
    assert_eq!(
        requests(60),
        31,
        "slots 95..=100 hold the fresh one and the two 50 s old"
    );
    assert_eq!(requests(300), 131, "the 310 s old one is in no window");
    let slots: Vec<u64> = store.slots.iter().map(|(s, _)| *s).collect();
    assert_eq!(slots, [80, 95, 100], "oldest first, one per slot");
    let series = store.series(1009, 300, WEB_SVC);
    let at = |start: u64| {
        series
            .points
            .iter()
            .find(|p| p.start_unix == start)
            .map_or(0, |p| p.edges.iter().map(|e| e.counts.requests).sum::<u64>())
    };
    assert_eq!((at(800), at(950), at(1000)), (100, 30, 1));
}

#[test]
fn slots_and_views_are_bounded() {
    let mut store = Store::default();
    let web = sidecar("shop", "web");
    let many = |from: usize, requests: u64| {
        report(
            (from..from + MAX_EDGES)
                .map(|i| {
                    let client = format!("client-{i}");
                    edge(
                        Reporter::Destination,
                        ("shop", client.as_str()),
                        WEB_SVC,
                        counts(requests, 0, 0, &[(2, requests)]),
                    )
                })
                .collect(),
        )
    };
    let mut dropped = 0;
    for n in 0..5 {
        dropped += store.record(1000, &web, &many(n * MAX_EDGES, 1));
    }
    assert_eq!(dropped, 5 * MAX_EDGES - MAX_SERIES_PER_SLOT);
    assert_eq!(store.dropped(), dropped as u64);
    // A known edge still counts in a full slot.
    assert_eq!(store.record(1001, &web, &many(0, 1)), 0);
    // The next slot takes 1000 busier edges: the view keeps the busiest 4096.
    store.record(1010, &web, &many(10 * MAX_EDGES, 2));
    let view = store.view(1010, 60);
    assert_eq!(view.edges.len(), MAX_VIEW_EDGES);
    assert_eq!(view.truncated, MAX_SERIES_PER_SLOT + MAX_EDGES - MAX_VIEW_EDGES);
    assert_eq!(
        view.edges.iter().filter(|e| e.counts.requests == 2).count(),
        2 * MAX_EDGES
    );
}

#[test]
fn replicas_views_merge_into_the_meshs() {
    let a = shop().view(1009, 60);
    let mut other = Store::default();
    let late = edge(Reporter::Destination, GATEWAY, WEB_SVC, counts(10, 10, 0, &[(2, 10)]));
    other.record(1009, &sidecar("shop", "web"), &report(vec![late]));
    let merged = View::merge([a.clone(), other.view(1009, 60)]).unwrap();
    let web = merged.workloads().into_iter().find(|r| r.name == "web").unwrap();
    assert_eq!((web.stat.requests, web.stat.failures, web.stat.mtls), (40, 15, 30));
    assert_eq!(web.stat.success_rate, Some(0.625));
    assert_eq!(merged.edges.len(), a.edges.len());
    let err = View::merge([a, other.view(1009, 120)]).unwrap_err();
    assert!(err.contains("60s and 120s"), "{err}");
    // What the operator serves reads back as it was.
    let json = serde_json::to_string(&merged).unwrap();
    assert_eq!(serde_json::from_str::<View>(&json).unwrap(), merged);
}

#[test]
fn windows_asked_for_are_checked() {
    assert_eq!(check_window(60), Ok(()));
    assert_eq!(check_window(300), Ok(()));
    for bad in [0, 15, 310] {
        assert!(
            check_window(bad).unwrap_err().contains("multiple of 10s up to 300s"),
            "{bad}"
        );
    }
}
