//! OTLP, the OpenTelemetry protocol, as the span exporter speaks it: one
//! export request per batch, encoded as protobuf (OTLP/gRPC and
//! OTLP/HTTP `application/x-protobuf`) or as OTLP/JSON (ids in hex, enums
//! as numbers, 64-bit integers as strings, as the OTLP JSON mapping says).
//! The protobuf messages are compiled from `proto/trellis/otlp/v1/otlp.proto`
//! (OTLP's field numbers) with protox, like the push API: no `protoc`.

use serde_json::{Value, json};

use crate::spans::{AttrValue, Span};

/// The generated OTLP messages.
#[allow(missing_docs, clippy::doc_markdown)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/trellis.otlp.v1.rs"));
}

/// The gRPC method spans are exported with.
pub const GRPC_EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
/// The OTLP/HTTP path spans are exported to (appended to a bare endpoint).
pub const HTTP_TRACES_PATH: &str = "/v1/traces";
/// The instrumentation scope named on every span.
const SCOPE: &str = "trellis-proxy";

/// Who exports: the resource attributes of every span in a batch.
pub type Resource = Vec<(&'static str, AttrValue)>;

/// W3C trace flags of an exported span: sampled, and (bits 8 and 9) its
/// parent, when it has one, is remote — another process, the caller or the app.
fn flags(span: &Span) -> u32 {
    if span.parent_id.is_some() { 0x301 } else { 0x101 }
}

fn status_code(span: &Span) -> i32 {
    if span.error { 2 } else { 0 }
}

/// The OTLP/JSON document of a batch.
pub fn json(resource: &Resource, spans: &[Span]) -> Value {
    let attrs = |list: &[(&'static str, AttrValue)]| -> Vec<Value> {
        list.iter()
            .map(|(k, v)| {
                let value = match v {
                    AttrValue::Str(s) => json!({"stringValue": s}),
                    AttrValue::Int(i) => json!({"intValue": i.to_string()}),
                    AttrValue::Bool(b) => json!({"boolValue": b}),
                };
                json!({"key": k, "value": value})
            })
            .collect()
    };
    let spans: Vec<Value> = spans
        .iter()
        .map(|s| {
            json!({
                "traceId": s.trace_id,
                "spanId": s.span_id,
                "parentSpanId": s.parent_id.clone().unwrap_or_default(),
                "flags": flags(s),
                "name": s.name,
                // SPAN_KIND_SERVER = 2, SPAN_KIND_CLIENT = 3
                "kind": if s.server { 2 } else { 3 },
                "startTimeUnixNano": nanos(s.start).to_string(),
                "endTimeUnixNano": nanos(s.end).to_string(),
                "attributes": attrs(&s.attributes),
                "status": {"code": status_code(s)},
            })
        })
        .collect();
    json!({"resourceSpans": [{
        "resource": {"attributes": attrs(resource)},
        "scopeSpans": [{"scope": {"name": SCOPE, "version": env!("CARGO_PKG_VERSION")}, "spans": spans}],
    }]})
}

/// The protobuf export request of a batch.
pub fn request(resource: &Resource, spans: &[Span]) -> pb::ExportTraceServiceRequest {
    let attrs = |list: &[(&'static str, AttrValue)]| -> Vec<pb::KeyValue> {
        list.iter()
            .map(|(k, v)| pb::KeyValue {
                key: (*k).to_string(),
                value: Some(pb::AnyValue {
                    value: Some(match v {
                        AttrValue::Str(s) => pb::any_value::Value::StringValue(s.clone()),
                        AttrValue::Int(i) => pb::any_value::Value::IntValue(*i),
                        AttrValue::Bool(b) => pb::any_value::Value::BoolValue(*b),
                    }),
                }),
            })
            .collect()
    };
    let spans = spans
        .iter()
        .map(|s| pb::Span {
            trace_id: unhex(&s.trace_id),
            span_id: unhex(&s.span_id),
            trace_state: String::new(),
            parent_span_id: s.parent_id.as_deref().map(unhex).unwrap_or_default(),
            name: s.name.clone(),
            kind: if s.server {
                pb::span::SpanKind::Server as i32
            } else {
                pb::span::SpanKind::Client as i32
            },
            start_time_unix_nano: nanos(s.start),
            end_time_unix_nano: nanos(s.end),
            attributes: attrs(&s.attributes),
            status: Some(pb::Status {
                message: String::new(),
                code: status_code(s),
            }),
            flags: flags(s),
        })
        .collect();
    pb::ExportTraceServiceRequest {
        resource_spans: vec![pb::ResourceSpans {
            resource: Some(pb::Resource {
                attributes: attrs(resource),
            }),
            scope_spans: vec![pb::ScopeSpans {
                scope: Some(pb::InstrumentationScope {
                    name: SCOPE.into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                }),
                spans,
            }],
        }],
    }
}

fn nanos(t: std::time::SystemTime) -> u64 {
    let n = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// Hex ids (from trace context headers, already validated) as bytes.
fn unhex(s: &str) -> Vec<u8> {
    s.as_bytes()
        .chunks(2)
        .filter_map(|pair| std::str::from_utf8(pair).ok())
        .filter_map(|pair| u8::from_str_radix(pair, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;
    use std::time::{Duration, SystemTime};

    fn span() -> Span {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1);
        Span {
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
            span_id: "00f067aa0ba902b7".into(),
            parent_id: Some("a3ce929d0e0e4736".into()),
            name: "payment".into(),
            server: false,
            start: t,
            end: t + Duration::from_millis(2),
            error: true,
            attributes: vec![
                ("http.response.status_code", AttrValue::Int(503)),
                ("trellis.upstream_cluster", AttrValue::Str("payment".into())),
            ],
        }
    }

    fn resource() -> Resource {
        vec![("service.name", AttrValue::Str("web.shop".into()))]
    }

    #[test]
    fn json_follows_the_otlp_json_mapping() {
        let doc = json(&resource(), &[span()]);
        let s = &doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert_eq!(s["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(s["parentSpanId"], "a3ce929d0e0e4736");
        assert_eq!(s["kind"], 3);
        assert_eq!(s["startTimeUnixNano"], "1000000000");
        assert_eq!(s["endTimeUnixNano"], "1002000000");
        assert_eq!(s["status"]["code"], 2);
        assert_eq!(s["flags"], 0x301);
        assert_eq!(s["attributes"][0]["value"]["intValue"], "503");
        assert_eq!(
            doc["resourceSpans"][0]["resource"]["attributes"][0]["value"]["stringValue"],
            "web.shop"
        );
    }

    #[test]
    fn protobuf_carries_ids_as_bytes_and_round_trips() {
        let req = request(&resource(), &[span()]);
        let bytes = req.encode_to_vec();
        let back = pb::ExportTraceServiceRequest::decode(bytes.as_slice()).unwrap();
        assert_eq!(back, req);
        let s = &back.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(s.trace_id.len(), 16);
        assert_eq!(s.trace_id[0], 0x4b);
        assert_eq!(s.span_id, vec![0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]);
        assert_eq!(s.parent_span_id.len(), 8);
        assert_eq!(s.kind, pb::span::SpanKind::Client as i32);
        assert_eq!(s.end_time_unix_nano - s.start_time_unix_nano, 2_000_000);
        assert_eq!(s.status.as_ref().unwrap().code, 2);
        // Field 1 of the request holds the resource spans, as OTLP's ExportTraceServiceRequest.
        assert_eq!(bytes[0], (1 << 3) | 2);
    }
}
