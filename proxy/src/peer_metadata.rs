//! Peer metadata exchange: how a destination proxy learns which workload sent
//! a request (Istio's metadata exchange, as one request header).
//!
//! The sending proxy (outbound and gateway roles) adds [`HEADER`] to requests
//! it sends over mesh mTLS, carrying its own workload's name, namespace, `app`,
//! `version`, canonical service and revision, and cluster — the values of its
//! own `source_*` metric labels. Opaque TCP carries the same value in a
//! preamble ([`crate::peer_exchange`]). The
//! receiving proxy believes the header only on a connection whose client
//! certificate it verified, and only when the claimed namespace equals the
//! namespace of the verified SPIFFE identity: identity beats claims. Every
//! proxy strips the header before a request reaches an application, and an
//! application cannot forge it: the outbound side removes any copy the local
//! app sent before adding its own.
//!
//! Encoding: `w=<workload>;n=<namespace>;a=<app>;v=<version>;s=<canonical
//! service>;r=<canonical revision>;c=<cluster>`, each value percent-encoded
//! outside `[A-Za-z0-9._~-]`; empty values are left out; unknown keys are
//! ignored so newer senders can add fields.

use crate::metrics::Peer;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};
use trellis_contract::SpiffeId;

/// The request header that carries the sending workload's metadata.
pub const HEADER: HeaderName = HeaderName::from_static("x-trellis-peer-metadata");

/// Longest value accepted; real values are well under 600 bytes
/// (Kubernetes names ≤ 253, label values ≤ 63).
pub const MAX_LEN: usize = 1024;

/// The header value announcing `node` (this proxy's own workload), or
/// `None` when the node has no namespace (then a receiver could never verify
/// it, so nothing is sent).
pub fn encode(node: &Peer) -> Option<HeaderValue> {
    if node.namespace.is_empty() {
        return None;
    }
    let mut out = String::new();
    for (key, value) in [
        ('w', &node.workload),
        ('n', &node.namespace),
        ('a', &node.app),
        ('v', &node.version),
        ('s', &node.canonical_service),
        ('r', &node.canonical_revision),
        ('c', &node.cluster),
    ] {
        if value.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push(';');
        }
        out.push(key);
        out.push('=');
        for b in value.bytes() {
            if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'-') {
                out.push(char::from(b));
            } else {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    HeaderValue::from_str(&out).ok()
}

/// The source workload a request's metadata names, when it may be believed:
/// exactly one well-formed [`HEADER`], sent over a connection whose verified
/// identity is `principal`, whose namespace it matches. `None` otherwise (the
/// labels then stay `unknown`).
pub fn verified_source(headers: &HeaderMap, principal: &str) -> Option<Peer> {
    verified(only_value(headers, principal)?.as_bytes(), principal)
}

/// The one [`HEADER`] of a request; `None` when there is none or several.
fn only_value<'h>(headers: &'h HeaderMap, principal: &str) -> Option<&'h HeaderValue> {
    let mut values = headers.get_all(&HEADER).iter();
    let value = values.next()?;
    if values.next().is_some() {
        tracing::debug!(%principal, "several peer metadata headers; ignored");
        return None;
    }
    Some(value)
}

/// The peer metadata one connection's requests carried first, and the source it named:
/// a client's proxy sends the same value on every request of a connection.
pub type FirstSource = OnceLock<(HeaderValue, Option<Arc<Peer>>)>;

/// [`verified_source`] of a request on a connection whose verified identity is `principal`
/// (the same for every request it carries), decoded only when its value is not the one the
/// connection sent first (`first`). why: decoding it (and the label set made of it) cost
/// each inbound request a dozen allocations.
pub fn verified_source_on(first: &FirstSource, headers: &HeaderMap, principal: &str) -> Option<Arc<Peer>> {
    let value = only_value(headers, principal)?;
    if let Some((seen, peer)) = first.get()
        && seen == value
    {
        return peer.clone();
    }
    let peer = verified(value.as_bytes(), principal).map(Arc::new);
    let _ = first.set((value.clone(), peer.clone()));
    peer
}

/// The workload a metadata value names, when its namespace is the one of
/// the verified identity `principal`; `None` otherwise.
pub fn verified(value: &[u8], principal: &str) -> Option<Peer> {
    let id = SpiffeId::parse(principal).ok()?;
    let identity_ns = id.namespace()?;
    let peer = decode(value)?;
    if peer.namespace != identity_ns {
        tracing::debug!(
            %principal,
            claimed = %peer.namespace,
            "peer metadata namespace disagrees with the verified identity; ignored"
        );
        return None;
    }
    Some(Peer {
        principal: principal.to_string(),
        ..peer
    })
}

/// Parse a header value; `None` when malformed (bad escapes, non-UTF-8,
/// duplicate keys, too long, no namespace).
fn decode(raw: &[u8]) -> Option<Peer> {
    if raw.len() > MAX_LEN {
        return None;
    }
    let text = std::str::from_utf8(raw).ok()?;
    let mut peer = Peer::default();
    for field in text.split(';') {
        let (key, value) = field.split_once('=')?;
        let slot = match key {
            "w" => &mut peer.workload,
            "n" => &mut peer.namespace,
            "a" => &mut peer.app,
            "v" => &mut peer.version,
            "s" => &mut peer.canonical_service,
            "r" => &mut peer.canonical_revision,
            "c" => &mut peer.cluster,
            _ => continue,
        };
        if !slot.is_empty() {
            return None;
        }
        *slot = unescape(value)?;
    }
    (!peer.namespace.is_empty()).then_some(peer)
}

fn unescape(value: &str) -> Option<String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'-') => {
                out.push(b);
                i += 1;
            }
            _ => return None,
        }
    }
    let s = String::from_utf8(out).ok()?;
    // Control characters have no business in a metric label.
    (!s.chars().any(char::is_control)).then_some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";

    fn node(workload: &str, namespace: &str, app: &str, version: &str) -> Peer {
        Peer {
            workload: workload.into(),
            namespace: namespace.into(),
            app: app.into(),
            version: version.into(),
            ..Default::default()
        }
    }

    fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(HEADER, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn a_connections_source_is_decoded_once_and_a_new_value_anew() {
        let first = FirstSource::default();
        let web = headers("w=web;n=shop;a=web");
        let a = verified_source_on(&first, &web, WEB).expect("verified");
        let b = verified_source_on(&first, &web, WEB).expect("verified");
        assert!(Arc::ptr_eq(&a, &b), "the second request reuses the first one's source");
        assert_eq!(a.workload, "web");
        // Another value on the same connection is decoded, and believed or not, on its own.
        let other = verified_source_on(&first, &headers("w=web2;n=shop"), WEB).expect("verified");
        assert_eq!(other.workload, "web2");
        assert!(verified_source_on(&first, &headers("w=admin;n=kube-system"), WEB).is_none());
        assert!(verified_source_on(&first, &HeaderMap::new(), WEB).is_none());
        assert!(Arc::ptr_eq(&verified_source_on(&first, &web, WEB).unwrap(), &a));
    }

    #[test]
    fn round_trips_and_takes_the_verified_principal() {
        let v = encode(&Peer {
            canonical_service: "web".into(),
            canonical_revision: "v1".into(),
            cluster: "Kubernetes".into(),
            ..node("web", "shop", "web", "v1")
        })
        .unwrap();
        assert_eq!(v, "w=web;n=shop;a=web;v=v1;s=web;r=v1;c=Kubernetes");
        let mut h = HeaderMap::new();
        h.insert(HEADER, v);
        let p = verified_source(&h, WEB).unwrap();
        assert_eq!(
            (
                p.workload.as_str(),
                p.namespace.as_str(),
                p.app.as_str(),
                p.version.as_str()
            ),
            ("web", "shop", "web", "v1")
        );
        assert_eq!(
            (
                p.canonical_service.as_str(),
                p.canonical_revision.as_str(),
                p.cluster.as_str()
            ),
            ("web", "v1", "Kubernetes")
        );
        assert_eq!(p.principal, WEB);
    }

    #[test]
    fn unusual_characters_are_escaped_and_empty_fields_left_out() {
        let v = encode(&node("we b;=%", "shop", "", "v1")).unwrap();
        assert_eq!(v, "w=we%20b%3B%3D%25;n=shop;v=v1");
        let p = verified_source(&headers(v.to_str().unwrap()), WEB).unwrap();
        assert_eq!(p.workload, "we b;=%");
        assert_eq!(p.app, "");
        assert!(encode(&node("web", "", "web", "v1")).is_none());
    }

    #[test]
    fn namespace_must_match_the_identity() {
        assert!(verified_source(&headers("w=admin;n=kube-system"), WEB).is_none());
        assert!(verified_source(&headers("w=web;a=web"), WEB).is_none());
        assert!(verified_source(&headers("w=web;n=shop"), "spiffe://cluster.local/sa/web").is_none());
        assert!(verified_source(&headers("w=web;n=shop"), "not a spiffe id").is_none());
    }

    #[test]
    fn malformed_values_are_ignored() {
        for bad in [
            "w=web;n=shop;n=shop",
            "w=web;n=shop;garbage",
            "w=w%2;n=shop",
            "w=w%zz;n=shop",
            "w=a b;n=shop",
            "w=%0A;n=shop",
            "w=%FF;n=shop",
        ] {
            assert!(verified_source(&headers(bad), WEB).is_none(), "{bad}");
        }
        let long = format!("w={};n=shop", "x".repeat(MAX_LEN));
        assert!(verified_source(&headers(&long), WEB).is_none());
        let mut two = headers("w=web;n=shop");
        two.append(HEADER, HeaderValue::from_static("w=db;n=shop"));
        assert!(verified_source(&two, WEB).is_none());
        // Unknown keys are for newer senders.
        assert!(verified_source(&headers("w=web;n=shop;x=1"), WEB).is_some());
    }
}
