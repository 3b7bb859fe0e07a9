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

/// A `tracing` writer collecting output in memory.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn json_access_log_line_per_request() {
    let out = Captured::default();
    let writer = out.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_writer(move || writer.clone())
        .with_max_level(tracing::Level::INFO)
        .finish();
    // This test's runtime is single-threaded, so the handler logs on this thread.
    let _guard = tracing::subscriber::set_default(subscriber);
    let app = Upstream::start("app").await;
    let mut cfg = outbound_config("1", vec![forward_route("app")], vec![cluster("app", &[&app])]);
    cfg["telemetry"] = json!({"accessLog": {"enabled": true, "format": "json"}});
    let proxy = Proxy::start(cfg).await;
    assert_eq!(get(proxy.addr("outbound").await, "svc", "/logged").await.status, 200);
    let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("trellis::access"))
        .unwrap_or_else(|| panic!("no access log line in {text}"));
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(v["fields"]["path"], "/logged");
    assert_eq!(v["fields"]["status"], 200);
    assert_eq!(v["fields"]["upstream"], "app");
    assert_eq!(v["fields"]["flags"], "-");
}

/// A loopback OTLP collector over TLS with a certificate for `localhost`;
/// counts the export requests it receives.
async fn tls_collector(leaf: Leaf) -> (u16, std::sync::Arc<std::sync::atomic::AtomicU64>) {
    use std::sync::atomic::{AtomicU64, Ordering};
    let chain = rustls_pemfile::certs(&mut leaf.cert_pem.as_bytes())
        .map(|c| c.unwrap())
        .collect();
    let key = rustls_pemfile::private_key(&mut leaf.key_pem.as_bytes())
        .unwrap()
        .unwrap();
    let cfg =
        rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let exports = std::sync::Arc::new(AtomicU64::new(0));
    let seen = std::sync::Arc::clone(&exports);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, seen) = (acceptor.clone(), std::sync::Arc::clone(&seen));
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let seen = std::sync::Arc::clone(&seen);
                    async move {
                        use http_body_util::BodyExt;
                        let path = req.uri().path().to_string();
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
                        if path == "/v1/traces"
                            && doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["traceId"].is_string()
                        {
                            seen.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
                            bytes::Bytes::new(),
                        )))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (port, exports)
}

#[tokio::test]
async fn spans_are_exported_over_https_to_a_verified_collector() {
    use std::sync::atomic::Ordering;
    let pki = Pki::new();
    let (port, exports) = tls_collector(pki.dns_leaf("localhost")).await;
    let app = Upstream::start("app").await;
    let traced = |ca: String| {
        let mut cfg = outbound_config("1", vec![forward_route("app")], vec![cluster("app", &[&app])]);
        cfg["telemetry"] = json!({"tracing": {
            "samplingPercent": 100.0,
            "otlpEndpoint": format!("https://localhost:{port}"),
            "collectorCa": {"inline": ca},
        }});
        cfg
    };
    // Trusting the collector's CA: spans arrive.
    let proxy = Proxy::start(traced(pki.root_pem())).await;
    assert_eq!(get(proxy.addr("outbound").await, "svc", "/").await.status, 200);
    let deadline = Instant::now() + Duration::from_secs(5);
    // The exporter counts the batch once it has the collector's answer, after the collector
    // counted it.
    while (exports.load(Ordering::SeqCst) == 0 || proxy.app.runtime().spans.exported() == 0)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(exports.load(Ordering::SeqCst), 1, "one batch over TLS");
    assert_eq!(proxy.app.runtime().spans.exported(), 1);

    // Trusting another CA: the collector's certificate is refused, nothing is sent.
    let other = Pki::new();
    let proxy = Proxy::start(traced(other.root_pem())).await;
    assert_eq!(get(proxy.addr("outbound").await, "svc", "/").await.status, 200);
    let deadline = Instant::now() + Duration::from_secs(5);
    while proxy.app.runtime().spans.dropped() == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        proxy.app.runtime().spans.dropped(),
        1,
        "an unverified collector gets nothing"
    );
    assert_eq!(exports.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn collector_ca_needs_an_https_endpoint() {
    let pki = Pki::new();
    let app = Upstream::start("app").await;
    let proxy = Proxy::start(outbound_config(
        "1",
        vec![forward_route("app")],
        vec![cluster("app", &[&app])],
    ))
    .await;
    let mut cfg = outbound_config("2", vec![forward_route("app")], vec![cluster("app", &[&app])]);
    cfg["telemetry"] = json!({"tracing": {"samplingPercent": 1.0, "otlpEndpoint": "http://localhost:4318", "collectorCa": {"inline": pki.root_pem()}}});
    let err = proxy.apply(cfg).await.unwrap_err().to_string();
    assert!(
        err.contains("telemetry.tracing.collectorCa") && err.contains("https://"),
        "{err}"
    );
}

#[tokio::test]
async fn b3_context_is_continued_and_tracestate_kept_with_w3c() {
    let app = Upstream::start("app").await;
    let proxy = Proxy::start(outbound_config(
        "1",
        vec![forward_route("app")],
        vec![cluster("app", &[&app])],
    ))
    .await;
    let addr = proxy.addr("outbound").await;
    // B3 in (64-bit trace id): continued in both formats, with a new span.
    let b3 = [
        ("x-b3-traceid", "463ac35c9f6413ad"),
        ("x-b3-spanid", "a2fb4a1d1a96d312"),
        ("x-b3-sampled", "1"),
    ];
    assert_eq!(send(addr, "GET", "svc", "/b3", &b3).await.status, 200);
    let seen = app.last_seen();
    let h = |k: &str| seen.headers.get(k).unwrap().to_str().unwrap().to_string();
    assert_eq!(h("x-b3-traceid"), "0000000000000000463ac35c9f6413ad");
    assert_eq!(h("x-b3-parentspanid"), "a2fb4a1d1a96d312");
    assert_ne!(h("x-b3-spanid"), "a2fb4a1d1a96d312");
    assert_eq!(h("x-b3-sampled"), "1");
    assert_eq!(
        h("traceparent"),
        format!("00-0000000000000000463ac35c9f6413ad-{}-01", h("x-b3-spanid"))
    );
    // W3C in: tracestate travels with its traceparent.
    let w3c = [
        ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"),
        ("tracestate", "vendor=opaque"),
    ];
    assert_eq!(send(addr, "GET", "svc", "/w3c", &w3c).await.status, 200);
    let seen = app.last_seen();
    assert_eq!(seen.headers.get("tracestate").unwrap(), "vendor=opaque");
    assert!(
        seen.headers
            .get("traceparent")
            .unwrap()
            .to_str()
            .unwrap()
            .ends_with("-00"),
        "the unsampled flag is kept"
    );
    // A tracestate without a valid traceparent is dropped (it would describe another trace).
    let orphan = [("traceparent", "garbage"), ("tracestate", "vendor=opaque")];
    assert_eq!(send(addr, "GET", "svc", "/orphan", &orphan).await.status, 200);
    assert!(app.last_seen().headers.get("tracestate").is_none());
}

/// A minimal OTLP/gRPC collector (h2c): answers every `TraceService/Export`
/// with an empty response and `grpc-status: 0` in the trailers, and keeps
/// what it received (the path, the content type, the decoded request).
async fn grpc_collector() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<(String, String, trellis_proxy::otlp::pb::ExportTraceServiceRequest)>>>,
) {
    use http_body_util::BodyExt as _;
    use prost::Message as _;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = std::sync::Arc::clone(&got);
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let keep = std::sync::Arc::clone(&keep);
            let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let keep = std::sync::Arc::clone(&keep);
                async move {
                    let path = req.uri().path().to_string();
                    let content_type = req
                        .headers()
                        .get("content-type")
                        .map(|v| v.to_str().unwrap().to_string())
                        .unwrap_or_default();
                    let body = req.into_body().collect().await.unwrap().to_bytes();
                    assert_eq!(body[0], 0, "uncompressed gRPC message");
                    let len = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
                    assert_eq!(body.len(), 5 + len, "one length-prefixed message");
                    let request = trellis_proxy::otlp::pb::ExportTraceServiceRequest::decode(&body[5..]).unwrap();
                    keep.lock().unwrap().push((path, content_type, request));
                    let mut trailers = http::HeaderMap::new();
                    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                    let frames = vec![
                        Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(bytes::Bytes::from_static(&[
                            0, 0, 0, 0, 0,
                        ]))),
                        Ok(hyper::body::Frame::trailers(trailers)),
                    ];
                    let body = http_body_util::StreamBody::new(futures::stream::iter(frames));
                    let resp = http::Response::builder()
                        .header("content-type", "application/grpc")
                        .body(body)
                        .unwrap();
                    Ok::<_, std::convert::Infallible>(resp)
                }
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, got)
}

#[tokio::test]
async fn spans_are_exported_over_otlp_grpc_as_protobuf() {
    let app = Upstream::start("app").await;
    let (collector, got) = grpc_collector().await;
    let mut cfg = outbound_config("1", vec![forward_route("app")], vec![cluster("app", &[&app])]);
    cfg["telemetry"] = json!({"tracing": {
        "samplingPercent": 0.0,
        "otlpEndpoint": format!("http://{collector}"),
        "protocol": "grpc",
        "serviceName": "web",
    }});
    let proxy = Proxy::start(cfg).await;
    let addr = proxy.addr("outbound").await;
    let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    for path in ["/one", "/two?token=s3cret"] {
        let resp = send(addr, "GET", "svc", path, &[("traceparent", incoming)]).await;
        assert_eq!(resp.status, 200);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let spans = loop {
        let spans: Vec<_> = got
            .lock()
            .unwrap()
            .iter()
            .flat_map(|(_, _, r)| r.resource_spans.iter())
            .flat_map(|r| r.scope_spans.iter())
            .flat_map(|s| s.spans.iter().cloned())
            .collect();
        if spans.len() >= 2 || Instant::now() > deadline {
            break spans;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(spans.len(), 2, "both sampled hops are exported, once");
    let exports = got.lock().unwrap();
    for (path, content_type, _) in exports.iter() {
        assert_eq!(path, trellis_proxy::otlp::GRPC_EXPORT_PATH);
        assert_eq!(content_type, "application/grpc");
    }
    let resource = exports[0].2.resource_spans[0].resource.as_ref().unwrap();
    assert_eq!(
        string_attribute(&resource.attributes, "service.name").as_deref(),
        Some("web")
    );
    for span in &spans {
        assert_eq!(
            hex(&span.trace_id),
            "4bf92f3577b34da6a3ce929d0e0e4736",
            "ids travel as bytes"
        );
        assert_eq!(hex(&span.parent_span_id), "00f067aa0ba902b7");
        assert_eq!(span.span_id.len(), 8);
        assert_eq!(span.kind, 3, "an outbound hop is a client span");
        assert_eq!(
            string_attribute(&span.attributes, "http.request.method").as_deref(),
            Some("GET")
        );
    }
    let texts = format!("{spans:?}");
    assert!(texts.contains("token=REDACTED") && !texts.contains("s3cret"), "{texts}");
}

/// A string attribute of an OTLP attribute list.
fn string_attribute(attrs: &[trellis_proxy::otlp::pb::KeyValue], key: &str) -> Option<String> {
    match attrs.iter().find(|a| a.key == key)?.value.as_ref()?.value.as_ref()? {
        trellis_proxy::otlp::pb::any_value::Value::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
