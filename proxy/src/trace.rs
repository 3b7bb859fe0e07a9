//! Trace context propagation: W3C `traceparent`/`tracestate` and B3. Each hop
//! gets a new span id whose parent is the incoming span. The caller's
//! sampling decision is kept (the `traceparent` flags, `x-b3-sampled`, or
//! B3's debug flag); a request without a context — or a B3 one that leaves
//! the decision to the receiver, with no `x-b3-sampled` — is sampled at the
//! configured rate.

use http::{HeaderMap, HeaderName, HeaderValue};

const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const B3_TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
const B3_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
const B3_PARENT_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
const B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
const B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The context of this hop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpanContext {
    /// 32 hex digits.
    pub trace_id: String,
    /// This hop's span, 16 hex digits.
    pub span_id: String,
    /// The incoming span, if any.
    pub parent_id: Option<String>,
    /// Sampled flag.
    pub sampled: bool,
}

/// A random id of `bytes` bytes (at most 16) in lower-case hex. why: one random number per id,
/// not one per byte (ids are made for every request).
fn hex_id(bytes: usize) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    loop {
        let mut bits = fastrand::u128(..);
        let s: String = (0..bytes * 2)
            .map(|_| {
                let digit = HEX[(bits & 15) as usize];
                bits >>= 4;
                char::from(digit)
            })
            .collect();
        // All-zero ids are invalid in both W3C and B3.
        if s.bytes().any(|b| b != b'0') {
            return s;
        }
    }
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn parse_traceparent(v: &str) -> Option<(String, String, Option<bool>)> {
    let mut it = v.trim().split('-');
    let (ver, trace, span, flags) = (it.next()?, it.next()?, it.next()?, it.next()?);
    if !is_hex(ver, 2) || ver == "ff" || !is_hex(trace, 32) || !is_hex(span, 16) || !is_hex(flags, 2) {
        return None;
    }
    if trace.bytes().all(|b| b == b'0') || span.bytes().all(|b| b == b'0') {
        return None;
    }
    let sampled = u8::from_str_radix(flags, 16).ok()? & 1 == 1;
    Some((trace.to_string(), span.to_string(), Some(sampled)))
}

/// A new sampling decision at `percent` (0–100).
fn sample(percent: f64) -> bool {
    fastrand::f64() * 100.0 < percent
}

/// Continue or start a trace and rewrite the propagation headers for the
/// next hop.
pub fn propagate(headers: &mut HeaderMap, sampling_percent: f64) -> SpanContext {
    let incoming = headers
        .get(&TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_traceparent)
        .or_else(|| {
            let trace = headers.get(&B3_TRACE_ID)?.to_str().ok()?.to_ascii_lowercase();
            let span = headers.get(&B3_SPAN_ID)?.to_str().ok()?.to_ascii_lowercase();
            let trace = if is_hex(&trace, 16) {
                format!("{:0>32}", trace)
            } else {
                trace
            };
            if !is_hex(&trace, 32) || !is_hex(&span, 16) {
                return None;
            }
            // Debug (`x-b3-flags: 1`) means sampled; no `x-b3-sampled` defers to the receiver.
            let debug = headers.get(&B3_FLAGS).is_some_and(|v| v.as_bytes() == b"1");
            let sampled = headers
                .get(&B3_SAMPLED)
                .map(|v| v.as_bytes() == b"1" || v.as_bytes() == b"true")
                .or(debug.then_some(true));
            Some((trace, span, sampled))
        });
    let ctx = match incoming {
        Some((trace_id, parent, sampled)) => SpanContext {
            trace_id,
            span_id: hex_id(8),
            parent_id: Some(parent),
            sampled: sampled.unwrap_or_else(|| sample(sampling_percent)),
        },
        None => {
            headers.remove(&TRACESTATE);
            SpanContext {
                trace_id: hex_id(16),
                span_id: hex_id(8),
                parent_id: None,
                sampled: sample(sampling_percent),
            }
        }
    };
    // Built by hand on the stack, not formatted: this runs for every request.
    let mut traceparent = [0u8; 55];
    let parts = [
        "00-",
        &ctx.trace_id,
        "-",
        &ctx.span_id,
        if ctx.sampled { "-01" } else { "-00" },
    ];
    let mut len = 0;
    for part in parts {
        let end = (len + part.len()).min(traceparent.len());
        traceparent[len..end].copy_from_slice(&part.as_bytes()[..end - len]);
        len = end;
    }
    let set = |h: &mut HeaderMap, k: HeaderName, v: &[u8]| {
        if let Ok(v) = HeaderValue::from_bytes(v) {
            h.insert(k, v);
        }
    };
    set(headers, TRACEPARENT, &traceparent[..len]);
    set(headers, B3_TRACE_ID, ctx.trace_id.as_bytes());
    set(headers, B3_SPAN_ID, ctx.span_id.as_bytes());
    match &ctx.parent_id {
        Some(p) => set(headers, B3_PARENT_SPAN_ID, p.as_bytes()),
        None => {
            headers.remove(&B3_PARENT_SPAN_ID);
        }
    }
    headers.insert(
        B3_SAMPLED,
        HeaderValue::from_static(if ctx.sampled { "1" } else { "0" }),
    );
    ctx
}

/// A random request id (UUID v4 format) for `x-request-id`.
pub fn request_id() -> String {
    String::from_utf8_lossy(&request_id_bytes()).into_owned()
}

/// [`request_id`] as a header value, built without formatting or a
/// temporary string (it is made for every request without one).
pub fn request_id_header() -> Option<HeaderValue> {
    HeaderValue::from_bytes(&request_id_bytes()).ok()
}

fn request_id_bytes() -> [u8; 36] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [b'-'; 36];
    let mut bits = fastrand::u128(..);
    for (i, slot) in out.iter_mut().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            continue;
        }
        let nibble = (bits & 15) as usize;
        bits >>= 4;
        *slot = match i {
            // Version 4, RFC 4122 variant (8, 9, a or b).
            14 => b'4',
            19 => HEX[8 | (nibble & 3)],
            _ => HEX[nibble],
        };
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continues_w3c_trace_with_new_span() {
        let mut h = HeaderMap::new();
        h.insert(
            "traceparent",
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        let ctx = propagate(&mut h, 0.0);
        assert_eq!(ctx.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(ctx.parent_id.as_deref(), Some("00f067aa0ba902b7"));
        assert!(ctx.sampled);
        let tp = h.get("traceparent").unwrap().to_str().unwrap();
        assert!(tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(!tp.contains("00f067aa0ba902b7"));
        assert_eq!(h.get("x-b3-parentspanid").unwrap(), "00f067aa0ba902b7");
    }

    #[test]
    fn continues_b3_trace() {
        let mut h = HeaderMap::new();
        h.insert("x-b3-traceid", HeaderValue::from_static("463ac35c9f6413ad"));
        h.insert("x-b3-spanid", HeaderValue::from_static("a2fb4a1d1a96d312"));
        h.insert("x-b3-sampled", HeaderValue::from_static("0"));
        let ctx = propagate(&mut h, 100.0);
        assert_eq!(ctx.trace_id, "0000000000000000463ac35c9f6413ad");
        assert!(!ctx.sampled);
    }

    #[test]
    fn b3_without_a_decision_is_sampled_at_the_configured_rate() {
        let b3 = |extra: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            h.insert("x-b3-traceid", HeaderValue::from_static("463ac35c9f6413ad"));
            h.insert("x-b3-spanid", HeaderValue::from_static("a2fb4a1d1a96d312"));
            for (k, v) in extra {
                h.insert(*k, HeaderValue::from_static(v));
            }
            h
        };
        assert!(!propagate(&mut b3(&[]), 0.0).sampled);
        assert!(propagate(&mut b3(&[]), 100.0).sampled);
        assert!(propagate(&mut b3(&[("x-b3-sampled", "1")]), 0.0).sampled);
        assert!(propagate(&mut b3(&[("x-b3-flags", "1")]), 0.0).sampled);
        // The caller's decision wins over the rate, both ways.
        let mut h = HeaderMap::new();
        h.insert(
            "traceparent",
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"),
        );
        assert!(!propagate(&mut h, 100.0).sampled);
        assert_eq!(h.get("x-b3-sampled").unwrap(), "0");
    }

    #[test]
    fn starts_trace_and_rejects_invalid() {
        let mut h = HeaderMap::new();
        h.insert(
            "traceparent",
            HeaderValue::from_static("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
        );
        let ctx = propagate(&mut h, 100.0);
        assert!(ctx.parent_id.is_none());
        assert!(ctx.sampled);
        assert!(is_hex(&ctx.trace_id, 32));
        let id = request_id();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"), "{id}");
        assert_eq!(id.matches('-').count(), 4);
        assert!(id.replace('-', "").bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(request_id_header().unwrap(), request_id_header().unwrap());
    }
}
