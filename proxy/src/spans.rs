//! Spans: one per proxied request hop (sampled ones), queued for export in a
//! bounded [`SpanSink`] that drops when full, so recording never blocks a
//! request; and their OTLP/JSON form. The span exporter sends them.

use serde_json::{Value, json};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

/// Spans waiting for export, at most.
const QUEUE: usize = 4096;

/// One finished span.
#[derive(Debug, Clone)]
pub struct Span {
    /// 32 hex digits.
    pub trace_id: String,
    /// 16 hex digits.
    pub span_id: String,
    /// Parent span, if any.
    pub parent_id: Option<String>,
    /// Operation name.
    pub name: String,
    /// Server (inbound) or client (outbound, gateway).
    pub server: bool,
    /// Start.
    pub start: SystemTime,
    /// End.
    pub end: SystemTime,
    /// HTTP status.
    pub status: u16,
    /// Extra attributes.
    pub attributes: Vec<(&'static str, String)>,
}

/// Where request handlers put spans.
#[derive(Debug)]
pub struct SpanSink {
    tx: mpsc::Sender<Span>,
    rx: std::sync::Mutex<Option<mpsc::Receiver<Span>>>,
    dropped: AtomicU64,
    exported: AtomicU64,
}

impl Default for SpanSink {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        Self {
            tx,
            rx: std::sync::Mutex::new(Some(rx)),
            dropped: AtomicU64::new(0),
            exported: AtomicU64::new(0),
        }
    }
}

impl SpanSink {
    /// Queue a span; drops it when the queue is full.
    pub fn record(&self, span: Span) {
        if self.tx.try_send(span).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Spans exported so far.
    pub fn exported(&self) -> u64 {
        self.exported.load(Ordering::Relaxed)
    }

    /// Spans dropped so far (queue full or collector failing).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// The receiving end of the queue, for the one exporter; `None` once taken.
    pub fn take_queue(&self) -> Option<mpsc::Receiver<Span>> {
        self.rx.lock().expect("span lock").take()
    }

    /// Count spans the collector took.
    pub fn count_exported(&self, n: u64) {
        self.exported.fetch_add(n, Ordering::Relaxed);
    }

    /// Count spans lost on the way (collector failing or not configured).
    pub fn count_dropped(&self, n: u64) {
        self.dropped.fetch_add(n, Ordering::Relaxed);
    }
}

fn nanos(t: SystemTime) -> String {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos().to_string()
}

/// The OTLP/JSON document for a batch.
pub fn otlp_json(service: &str, spans: &[Span]) -> Value {
    let spans: Vec<Value> = spans
        .iter()
        .map(|s| {
            let mut attrs: Vec<Value> =
                vec![json!({"key": "http.status_code", "value": {"intValue": s.status.to_string()}})];
            attrs.extend(
                s.attributes
                    .iter()
                    .map(|(k, v)| json!({"key": k, "value": {"stringValue": v}})),
            );
            json!({
                "traceId": s.trace_id,
                "spanId": s.span_id,
                "parentSpanId": s.parent_id.clone().unwrap_or_default(),
                "name": s.name,
                // SPAN_KIND_SERVER = 2, SPAN_KIND_CLIENT = 3
                "kind": if s.server { 2 } else { 3 },
                "startTimeUnixNano": nanos(s.start),
                "endTimeUnixNano": nanos(s.end),
                "attributes": attrs,
                // STATUS_CODE_ERROR = 2 for 5xx, else UNSET
                "status": {"code": if s.status >= 500 { 2 } else { 0 }},
            })
        })
        .collect();
    json!({"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]},
        "scopeSpans": [{"scope": {"name": "trellis-proxy"}, "spans": spans}],
    }]})
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn otlp_json_shape() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1);
        let doc = otlp_json(
            "web",
            &[Span {
                trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
                span_id: "00f067aa0ba902b7".into(),
                parent_id: None,
                name: "payment/*".into(),
                server: false,
                start: t,
                end: t + Duration::from_millis(2),
                status: 503,
                attributes: vec![("upstream_cluster", "payment".into())],
            }],
        );
        let span = &doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert_eq!(span["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(span["kind"], 3);
        assert_eq!(span["startTimeUnixNano"], "1000000000");
        assert_eq!(span["endTimeUnixNano"], "1002000000");
        assert_eq!(span["status"]["code"], 2);
        assert_eq!(
            doc["resourceSpans"][0]["resource"]["attributes"][0]["value"]["stringValue"],
            "web"
        );
    }
}
