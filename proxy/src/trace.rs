//! Trace context propagation: W3C `traceparent`/`tracestate` and B3. Each hop
//! gets a new span id whose parent is the incoming span. The caller's
//! sampling decision is kept (the `traceparent` flags, `x-b3-sampled`, or
//! B3's debug flag); a request without a context — or a B3 one that leaves
//! the decision to the receiver, with no `x-b3-sampled` — is sampled at the
//! configured rate.
//!
//! The next hop's reader decides the formats written ([`Reader`]): an application gets both,
//! another Trellis proxy across mesh mTLS only `traceparent`, which it always prefers and from
//! which it writes B3 for its own application.

use http::{HeaderMap, HeaderName, HeaderValue};

const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const B3_TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
const B3_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
const B3_PARENT_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
const B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
const B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// A trace or span id of `N` lower-case hex digits, kept on the stack (made for every request;
/// a `String` only when a sampled span is exported).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct HexId<const N: usize>([u8; N]);

impl<const N: usize> HexId<N> {
    /// The digits.
    pub fn as_str(&self) -> &str {
        // Only ASCII hex digits are ever stored.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// A random id (never all zeros: invalid in both W3C and B3). why: one random number per
    /// id, not one per digit. `N` is at most 32 (128 bits).
    fn random() -> Self {
        loop {
            let mut bits = fastrand::u128(..);
            let mut id = [0u8; N];
            for digit in &mut id {
                *digit = HEX[(bits & 15) as usize];
                bits >>= 4;
            }
            if id.iter().any(|b| *b != b'0') {
                return Self(id);
            }
        }
    }

    /// `s` lower-cased, right-aligned and zero-padded to `N` digits, if it is at most `N` hex
    /// digits (either case).
    fn parse_padded(s: &str) -> Option<Self> {
        let s = s.as_bytes();
        if s.len() > N || !s.iter().all(u8::is_ascii_hexdigit) {
            return None;
        }
        let mut id = [b'0'; N];
        for (slot, b) in id[N - s.len()..].iter_mut().zip(s) {
            *slot = b.to_ascii_lowercase();
        }
        Some(Self(id))
    }
}

impl<const N: usize> std::fmt::Debug for HexId<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<const N: usize> std::fmt::Display for HexId<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The context of this hop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpanContext {
    /// The trace.
    pub trace_id: HexId<32>,
    /// This hop's span.
    pub span_id: HexId<16>,
    /// The incoming span, if any.
    pub parent_id: Option<HexId<16>>,
    /// Sampled flag.
    pub sampled: bool,
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Lower-case hex digits only (W3C: "lowercase hex").
fn is_lower_hex(s: &[u8]) -> bool {
    s.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// `version-traceid-spanid-flags`, then the end or a `-` before what a later version adds.
/// why: checked by position over the bytes, not split into strings (this runs for every mesh
/// request the inbound proxy receives).
fn parse_traceparent(v: &str) -> Option<(HexId<32>, HexId<16>, Option<bool>)> {
    let v = v.trim().as_bytes();
    if v.len() < 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' || v.get(55).is_some_and(|b| *b != b'-') {
        return None;
    }
    let (ver, trace, span, flags) = (&v[..2], &v[3..35], &v[36..52], &v[53..55]);
    if !is_lower_hex(ver) || ver == b"ff" || !is_lower_hex(trace) || !is_lower_hex(span) || !is_lower_hex(flags) {
        return None;
    }
    if trace.iter().all(|b| *b == b'0') || span.iter().all(|b| *b == b'0') {
        return None;
    }
    // The sampled flag is the low bit of the last digit's value.
    let last = flags[1];
    let sampled = (if last <= b'9' { last - b'0' } else { last - b'a' + 10 }) & 1 == 1;
    Some((
        HexId(trace.try_into().ok()?),
        HexId(span.try_into().ok()?),
        Some(sampled),
    ))
}

/// A B3 context: a 16- or 32-digit trace id (either case; a short one is zero-padded), a
/// 16-digit span id, and the sampling decision (`None`: the receiver's).
fn parse_b3(headers: &HeaderMap) -> Option<(HexId<32>, HexId<16>, Option<bool>)> {
    let trace = headers.get(&B3_TRACE_ID)?.to_str().ok()?;
    let span = headers.get(&B3_SPAN_ID)?.to_str().ok()?;
    if !matches!(trace.len(), 16 | 32) || span.len() != 16 {
        return None;
    }
    let (trace, span) = (HexId::parse_padded(trace)?, HexId::parse_padded(span)?);
    // Debug (`x-b3-flags: 1`) means sampled; no `x-b3-sampled` defers to the receiver.
    let debug = headers.get(&B3_FLAGS).is_some_and(|v| v.as_bytes() == b"1");
    let sampled = headers
        .get(&B3_SAMPLED)
        .map(|v| v.as_bytes() == b"1" || v.as_bytes() == b"true")
        .or(debug.then_some(true));
    Some((trace, span, sampled))
}

/// A new sampling decision at `percent` (0–100).
fn sample(percent: f64) -> bool {
    fastrand::f64() * 100.0 < percent
}

/// Who reads the propagation headers of a request the proxy sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reader {
    /// Another Trellis proxy, across mesh mTLS: it continues the trace from `traceparent` (which
    /// it prefers to B3) and writes both formats for its own application, so B3 is not sent
    /// (why: three header names fewer for the receiving proxy to parse on every request).
    MeshProxy,
    /// An application, or anything else outside the mesh: `traceparent` and B3.
    Application,
}

/// Continue or start a trace and rewrite the propagation headers for the
/// next hop, in the formats its `reader` reads.
pub fn propagate(headers: &mut HeaderMap, sampling_percent: f64, reader: Reader) -> SpanContext {
    let incoming = headers
        .get(&TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_traceparent)
        .or_else(|| parse_b3(headers));
    let ctx = match incoming {
        Some((trace_id, parent, sampled)) => SpanContext {
            trace_id,
            span_id: HexId::random(),
            parent_id: Some(parent),
            sampled: sampled.unwrap_or_else(|| sample(sampling_percent)),
        },
        None => {
            headers.remove(&TRACESTATE);
            SpanContext {
                trace_id: HexId::random(),
                span_id: HexId::random(),
                parent_id: None,
                sampled: sample(sampling_percent),
            }
        }
    };
    write(headers, &ctx, reader);
    ctx
}

/// Write `ctx` as this hop's propagation headers for `reader` (a request's copy that goes to
/// another reader, a mirror, is rewritten with it).
pub fn write(headers: &mut HeaderMap, ctx: &SpanContext, reader: Reader) {
    // why: the values are written into one buffer and shared from it, not each copied into
    // an allocation of its own (this runs for every request).
    let mut values = bytes::BytesMut::with_capacity(55 + 32 + 16 + 16);
    values.extend_from_slice(b"00-");
    values.extend_from_slice(&ctx.trace_id.0);
    values.extend_from_slice(b"-");
    values.extend_from_slice(&ctx.span_id.0);
    values.extend_from_slice(if ctx.sampled { b"-01" } else { b"-00" });
    let traceparent = values.len();
    if reader == Reader::Application {
        values.extend_from_slice(&ctx.trace_id.0);
        values.extend_from_slice(&ctx.span_id.0);
        if let Some(p) = &ctx.parent_id {
            values.extend_from_slice(&p.0);
        }
    }
    let values = values.freeze();
    let mut set = |k: HeaderName, range: std::ops::Range<usize>| {
        if let Ok(v) = HeaderValue::from_maybe_shared(values.slice(range)) {
            headers.insert(k, v);
        }
    };
    set(TRACEPARENT, 0..traceparent);
    if reader == Reader::MeshProxy {
        // The caller's own B3 headers would name its span, not this hop's: the next proxy
        // writes them anew. why: one look at each name, not a removal for each B3 name.
        if headers.keys().any(is_b3) {
            for name in [B3_TRACE_ID, B3_SPAN_ID, B3_PARENT_SPAN_ID, B3_SAMPLED] {
                headers.remove(name);
            }
        }
        return;
    }
    let (trace, span) = (traceparent + 32, traceparent + 48);
    set(B3_TRACE_ID, traceparent..trace);
    set(B3_SPAN_ID, trace..span);
    match ctx.parent_id {
        Some(_) => set(B3_PARENT_SPAN_ID, span..span + 16),
        None => {
            headers.remove(&B3_PARENT_SPAN_ID);
        }
    }
    headers.insert(
        B3_SAMPLED,
        HeaderValue::from_static(if ctx.sampled { "1" } else { "0" }),
    );
}

/// One of the B3 headers this proxy writes.
fn is_b3(name: &HeaderName) -> bool {
    [&B3_TRACE_ID, &B3_SPAN_ID, &B3_PARENT_SPAN_ID, &B3_SAMPLED].contains(&name)
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
        let ctx = propagate(&mut h, 0.0, Reader::Application);
        assert_eq!(ctx.trace_id.as_str(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(ctx.parent_id.as_ref().map(HexId::as_str), Some("00f067aa0ba902b7"));
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
        let ctx = propagate(&mut h, 100.0, Reader::Application);
        assert_eq!(ctx.trace_id.as_str(), "0000000000000000463ac35c9f6413ad");
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
        assert!(!propagate(&mut b3(&[]), 0.0, Reader::Application).sampled);
        assert!(propagate(&mut b3(&[]), 100.0, Reader::Application).sampled);
        assert!(propagate(&mut b3(&[("x-b3-sampled", "1")]), 0.0, Reader::Application).sampled);
        assert!(propagate(&mut b3(&[("x-b3-flags", "1")]), 0.0, Reader::Application).sampled);
        // The caller's decision wins over the rate, both ways.
        let mut h = HeaderMap::new();
        h.insert(
            "traceparent",
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"),
        );
        assert!(!propagate(&mut h, 100.0, Reader::Application).sampled);
        assert_eq!(h.get("x-b3-sampled").unwrap(), "0");
    }

    #[test]
    fn starts_trace_and_rejects_invalid() {
        let mut h = HeaderMap::new();
        h.insert(
            "traceparent",
            HeaderValue::from_static("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
        );
        let ctx = propagate(&mut h, 100.0, Reader::Application);
        assert!(ctx.parent_id.is_none());
        assert!(ctx.sampled);
        assert!(is_lower_hex(ctx.trace_id.as_str().as_bytes()) && ctx.trace_id.as_str().len() == 32);
        let id = request_id();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"), "{id}");
        assert_eq!(id.matches('-').count(), 4);
        assert!(id.replace('-', "").bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(request_id_header().unwrap(), request_id_header().unwrap());
    }

    #[test]
    fn a_mesh_proxy_gets_traceparent_alone() {
        // The caller's B3 context is continued, and its B3 headers do not travel on.
        let mut h = HeaderMap::new();
        h.insert("x-b3-traceid", HeaderValue::from_static("463ac35c9f6413ad"));
        h.insert("x-b3-spanid", HeaderValue::from_static("a2fb4a1d1a96d312"));
        h.insert("x-b3-sampled", HeaderValue::from_static("1"));
        h.insert("x-b3-flags", HeaderValue::from_static("1"));
        let ctx = propagate(&mut h, 0.0, Reader::MeshProxy);
        assert_eq!(ctx.trace_id.as_str(), "0000000000000000463ac35c9f6413ad");
        assert_eq!(ctx.parent_id.as_ref().map(HexId::as_str), Some("a2fb4a1d1a96d312"));
        let tp = format!("00-0000000000000000463ac35c9f6413ad-{}-01", ctx.span_id);
        assert_eq!(h.get("traceparent").unwrap(), tp.as_str());
        for b3 in ["x-b3-traceid", "x-b3-spanid", "x-b3-parentspanid", "x-b3-sampled"] {
            assert!(h.get(b3).is_none(), "{b3} sent to a mesh proxy");
        }
        assert_eq!(h.get("x-b3-flags").unwrap(), "1", "not a header this proxy writes");

        // The receiving proxy continues the same trace and writes B3 for its application.
        let next = propagate(&mut h, 0.0, Reader::Application);
        assert_eq!(next.trace_id, ctx.trace_id);
        assert_eq!(next.parent_id, Some(ctx.span_id));
        assert!(next.sampled);
        assert_eq!(h.get("x-b3-traceid").unwrap(), ctx.trace_id.as_str());
        assert_eq!(h.get("x-b3-parentspanid").unwrap(), ctx.span_id.as_str());
        assert_eq!(h.get("x-b3-spanid").unwrap(), next.span_id.as_str());
        assert_eq!(h.get("x-b3-sampled").unwrap(), "1");
    }

    #[test]
    fn traceparent_fields_are_checked_by_position() {
        let parse = |v: &str| parse_traceparent(v).map(|(t, s, f)| (t.to_string(), s.to_string(), f));
        let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
        let span = "00f067aa0ba902b7";
        assert_eq!(
            parse(&format!(" 00-{trace}-{span}-01 ")),
            Some((trace.into(), span.into(), Some(true)))
        );
        // A later version may add fields after a `-`.
        assert_eq!(
            parse(&format!("01-{trace}-{span}-0b-extra")),
            Some((trace.into(), span.into(), Some(true)))
        );
        for flags in ["00", "02", "0a", "fe"] {
            assert_eq!(
                parse(&format!("00-{trace}-{span}-{flags}")).unwrap().2,
                Some(false),
                "{flags}"
            );
        }
        for flags in ["01", "03", "09", "0f", "ff"] {
            assert_eq!(
                parse(&format!("00-{trace}-{span}-{flags}")).unwrap().2,
                Some(true),
                "{flags}"
            );
        }
        for bad in [
            format!("ff-{trace}-{span}-01"),
            format!("00-{}-{span}-01", trace.to_uppercase()),
            format!("00-{trace}-{span}-011"),
            format!("00-{trace}-{span}-1"),
            format!("00-{trace}-{span}01"),
            format!("00-{trace}x-{span}-01"),
            format!("00-{}-{span}-01", "0".repeat(32)),
            format!("00-{trace}-{}-01", "0".repeat(16)),
            format!("0-0{trace}-{span}-01"),
            format!("00-{trace}-{span}-0g"),
            String::new(),
        ] {
            assert_eq!(parse(&bad), None, "{bad}");
        }
    }
}
