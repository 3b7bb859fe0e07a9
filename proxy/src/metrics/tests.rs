use super::*;

/// Istio's label set of `istio_requests_total` (its `istio_stats` filter's tags).
const ISTIO_REQUEST_LABELS: [&str; 25] = [
    "reporter",
    "source_workload",
    "source_canonical_service",
    "source_canonical_revision",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_cluster",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_service",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_service_name",
    "destination_service_namespace",
    "destination_cluster",
    "request_protocol",
    "response_code",
    "grpc_response_status",
    "response_flags",
    "connection_security_policy",
];

fn web() -> Peer {
    Peer {
        workload: "web".into(),
        namespace: "shop".into(),
        principal: "spiffe://cluster.local/ns/shop/sa/web".into(),
        app: "web".into(),
        version: "v1".into(),
        canonical_service: "web".into(),
        canonical_revision: "v1".into(),
        cluster: "Kubernetes".into(),
    }
}

/// The label names and values of the first sample of `name` in `text`.
fn labels_of(text: &str, name: &str) -> Vec<(String, String)> {
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("{name}{{")))
        .unwrap_or_else(|| panic!("no {name} in {text}"));
    let inner = &line[name.len() + 1..line.rfind('}').unwrap()];
    inner
        .split("\",")
        .map(|kv| {
            let (k, v) = kv.split_once("=\"").unwrap();
            (k.to_string(), v.trim_end_matches('"').to_string())
        })
        .collect()
}

#[test]
fn requests_carry_istio_names_labels_and_buckets() {
    let m = Metrics::default();
    let labels = RequestLabels {
        conn: ConnLabels {
            reporter: Reporter::Source,
            source: Arc::new(web()),
            destination: Arc::default(),
            destination_service: "payment.shop.svc.cluster.local".into(),
            response_flags: "-",
            security: Security::Unknown,
        },
        grpc: false,
        response_code: 200,
        grpc_status: None,
    };
    m.record_request(labels.clone(), 3.0, 10, 1024);
    m.record_request(labels, 7.0, 10, 1024);
    let text = m.render();
    let got = labels_of(&text, "istio_requests_total");
    let names: Vec<&str> = got.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, ISTIO_REQUEST_LABELS);
    let get = |k: &str| got.iter().find(|(n, _)| n == k).unwrap().1.as_str();
    assert_eq!(get("reporter"), "source");
    assert_eq!(get("source_workload"), "web");
    assert_eq!(get("source_principal"), "spiffe://cluster.local/ns/shop/sa/web");
    assert_eq!(get("destination_workload"), "unknown");
    assert_eq!(get("destination_canonical_revision"), "latest");
    assert_eq!(get("destination_service_name"), "payment");
    assert_eq!(get("grpc_response_status"), "");
    assert_eq!(get("connection_security_policy"), "unknown");
    assert!(text.contains("connection_security_policy=\"unknown\"} 2"), "{text}");
    assert!(text.contains("istio_request_duration_milliseconds_bucket{"));
    assert!(text.contains("le=\"5\"} 1"));
    assert!(text.contains("le=\"10\"} 2"), "buckets are cumulative: {text}");
    assert!(text.contains("istio_request_duration_milliseconds_sum{"));
    // Sizes use the same (Envoy default) buckets as durations, as in Istio.
    assert!(
        text.lines()
            .any(|l| l.starts_with("istio_response_bytes_bucket{") && l.contains("le=\"3600000\"} 2"))
    );
    assert!(text.contains("istio_response_bytes_count{"));
    assert!(!text.contains("trellis_requests_total"));
}

/// A peer's hash covers its workload and namespace only: peers that differ in another label
/// are still series of their own, and equal ones in different allocations (each
/// connection decodes its client's) one series.
#[test]
fn peers_that_differ_in_any_label_are_series_of_their_own() {
    let m = Metrics::default();
    let from = |version: &str| RequestLabels {
        conn: ConnLabels {
            source: Arc::new(Peer {
                version: version.into(),
                ..web()
            }),
            ..ConnLabels::default()
        },
        response_code: 200,
        ..RequestLabels::default()
    };
    m.record_request(from("v1"), 1.0, 0, 0);
    m.record_request(from("v2"), 1.0, 0, 0);
    m.record_request(from("v1"), 1.0, 0, 0);
    assert_eq!(m.requests.lock().unwrap().len(), 2);
    assert_eq!(m.requests_where(|l| l.conn.source.version == "v1"), 2);
    assert_eq!(m.requests_where(|l| l.conn.source.version == "v2"), 1);
}

/// A connection's requests go through its cache of the last series: what they count and
/// what the scrape shows are exactly what recording each in the registry gives, when the
/// labels repeat, change and come back, and from two connections into one series.
#[test]
fn a_connection_records_into_the_series_its_labels_name() {
    let labels = |code: u16| RequestLabels {
        conn: ConnLabels {
            source: Arc::new(web()),
            destination_service: "payment.shop.svc.cluster.local".into(),
            ..ConnLabels::default()
        },
        response_code: code,
        ..RequestLabels::default()
    };
    let requests = [
        (200, 3.0, 10, 1024),
        (200, 7.0, 0, 2048),
        (503, 0.4, 5, 0),
        (200, 30.0, 1, 1),
    ];
    let (cached, direct) = (Metrics::default(), Metrics::default());
    let (first, second) = (SeriesCache::default(), SeriesCache::default());
    for (i, (code, ms, req, resp)) in requests.into_iter().enumerate() {
        let conn = if i == 3 { &second } else { &first };
        cached.record_request_on(conn, labels(code), ms, req, resp);
        direct.record_request(labels(code), ms, req, resp);
    }
    assert_eq!(cached.requests_where(|l| l.response_code == 200), 3);
    assert_eq!(cached.requests_where(|l| l.response_code == 503), 1);
    assert_eq!(cached.requests.lock().unwrap().len(), 2);
    assert_eq!(cached.render(), direct.render());
    // Past the limit a cache holds no series for new labels: they are counted as overflow.
    let full = Metrics::default();
    full.series_overflow.store(0, Ordering::Relaxed);
    for i in 0..MAX_SERIES {
        full.requests
            .lock()
            .unwrap()
            .insert(labels(u16::try_from(i).unwrap() + 1000), SharedSeries::default());
    }
    full.record_request_on(&first, labels(200), 1.0, 0, 0);
    full.record_request_on(&first, labels(200), 1.0, 0, 0);
    assert_eq!(full.series_overflow.load(Ordering::Relaxed), 2);
    assert_eq!(full.requests_where(|l| l.response_code == 200), 0);
}

#[test]
fn series_stop_at_the_limit_and_the_rest_is_counted() {
    let m = Metrics::default();
    let labels = |code: u16| RequestLabels {
        conn: ConnLabels {
            source: Arc::new(web()),
            ..ConnLabels::default()
        },
        response_code: code,
        ..RequestLabels::default()
    };
    let conn = |n: usize| ConnLabels {
        destination_service: format!("s{n}.shop.svc.cluster.local").into(),
        ..ConnLabels::default()
    };
    for i in 0..MAX_SERIES {
        m.record_request(labels(u16::try_from(i % 60_000).unwrap()), 1.0, 0, 0);
        m.tcp_opened(conn(i));
    }
    // Past the limit: a new label set is not a series, an old one still counts.
    m.record_request(labels(60_001), 1.0, 0, 0);
    m.record_request(labels(7), 1.0, 0, 0);
    m.tcp_opened(conn(MAX_SERIES)).sent(5);
    m.tcp_opened(conn(3)).sent(5);
    assert_eq!(m.requests.lock().unwrap().len(), MAX_SERIES);
    assert_eq!(m.tcp.lock().unwrap().len(), MAX_SERIES);
    assert_eq!(m.requests_where(|l| l.response_code == 60_001), 0);
    assert_eq!(m.requests_where(|l| l.response_code == 7), 2);
    assert_eq!(m.series_overflow.load(Ordering::Relaxed), 2);
    // The count is exported (rendering is checked on a small registry: 10 000
    // series with their histograms make a large text).
    let small = Metrics::default();
    small.series_overflow.store(2, Ordering::Relaxed);
    assert!(
        small
            .render()
            .contains("trellis_proxy_metric_series_overflow_total 2\n")
    );
}

#[test]
fn grpc_and_tcp_series_have_their_labels() {
    let m = Metrics::default();
    let conn = ConnLabels {
        reporter: Reporter::Destination,
        source: Arc::new(web()),
        destination: Arc::new(Peer {
            workload: "db".into(),
            namespace: "shop".into(),
            ..Default::default()
        }),
        destination_service: "db.shop.svc.cluster.local".into(),
        response_flags: "-",
        security: Security::MutualTls,
    };
    m.record_request(
        RequestLabels {
            conn: conn.clone(),
            grpc: true,
            response_code: 200,
            grpc_status: Some(14),
        },
        1.0,
        5,
        5,
    );
    let series = m.tcp_opened(conn);
    series.received(13);
    series.sent(7);
    series.closed();
    let text = m.render();
    let http = labels_of(&text, "istio_requests_total");
    assert!(http.contains(&("request_protocol".into(), "grpc".into())));
    assert!(http.contains(&("grpc_response_status".into(), "14".into())));
    assert!(http.contains(&("connection_security_policy".into(), "mutual_tls".into())));
    assert!(http.contains(&("destination_service_namespace".into(), "shop".into())));
    let tcp = labels_of(&text, "istio_tcp_received_bytes_total");
    let names: Vec<&str> = tcp.iter().map(|(k, _)| k.as_str()).collect();
    let expected: Vec<&str> = ISTIO_REQUEST_LABELS
        .iter()
        .copied()
        .filter(|l| !matches!(*l, "response_code" | "grpc_response_status"))
        .collect();
    assert_eq!(names, expected);
    assert!(tcp.contains(&("request_protocol".into(), "tcp".into())));
    for (name, value) in [
        ("istio_tcp_connections_opened_total", 1),
        ("istio_tcp_connections_closed_total", 1),
        ("istio_tcp_received_bytes_total", 13),
        ("istio_tcp_sent_bytes_total", 7),
    ] {
        assert!(
            text.lines()
                .any(|l| l.starts_with(name) && l.ends_with(&format!(" {value}"))),
            "{name} {value}: {text}"
        );
    }
}
