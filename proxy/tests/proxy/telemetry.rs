//! Trace propagation and span export to an OTLP collector.

use crate::support::*;
use serde_json::json;
use std::time::{Duration, Instant};

#[tokio::test]
async fn spans_reach_the_collector_with_the_callers_trace() {
    let app = Upstream::start("app").await;
    let collector = Upstream::start("collector").await;
    let mut cfg = outbound_config("1", vec![forward_route("app")], vec![cluster("app", &[&app])]);
    cfg["telemetry"] = json!({"tracing": {"samplingPercent": 0.0, "otlpEndpoint": format!("http://{}", collector.addr), "serviceName": "web"}});
    let proxy = Proxy::start(cfg).await;
    let addr = proxy.addr("outbound").await;
    let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    assert_eq!(
        send(addr, "GET", "svc", "/traced", &[("traceparent", incoming)])
            .await
            .status,
        200
    );
    // Unsampled requests (rate 0, no incoming context) produce no spans.
    assert_eq!(get(addr, "svc", "/untraced").await.status, 200);
    let forwarded = app.seen.lock().unwrap()[0]
        .headers
        .get("traceparent")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        forwarded.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{forwarded}"
    );
    let hop_span = forwarded.split('-').nth(2).unwrap().to_string();
    assert_ne!(hop_span, "00f067aa0ba902b7", "a new span per hop");

    let deadline = Instant::now() + Duration::from_secs(5);
    while collector.hits() == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let export = collector.last_seen();
    assert_eq!(export.path, "/v1/traces");
    let doc: serde_json::Value = serde_json::from_str(&export.body).unwrap();
    let spans = doc["resourceSpans"][0]["scopeSpans"][0]["spans"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(spans.len(), 1, "{doc}");
    assert_eq!(spans[0]["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(spans[0]["parentSpanId"], "00f067aa0ba902b7");
    assert_eq!(spans[0]["spanId"], hop_span.as_str());
    assert_eq!(
        doc["resourceSpans"][0]["resource"]["attributes"][0]["value"]["stringValue"],
        "web"
    );
}
