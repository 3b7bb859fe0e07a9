//! Request and response headers on their way through the proxy: the header
//! names it sets, hop-by-hop stripping, the shadow authority of mirrored
//! requests, cookies for hashing, and building the upstream request head.

use crate::upstream::Body;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Scheme};
use http::{Method, Request, Uri, Version};

// why: header names as constants, not strings: a `&str` name is parsed on
// every lookup, which showed up in the per-request instruction profile.
pub(super) const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

pub(super) const XFCC: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

pub(super) const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

pub(super) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Hop-by-hop headers never forwarded: the contract's one list, which also
/// says what a route may not change.
const HOP_HEADERS: [HeaderName; 7] = {
    let names = trellis_contract::syntax::HOP_BY_HOP_HEADERS;
    [
        HeaderName::from_static(names[0]),
        HeaderName::from_static(names[1]),
        HeaderName::from_static(names[2]),
        HeaderName::from_static(names[3]),
        HeaderName::from_static(names[4]),
        HeaderName::from_static(names[5]),
        HeaderName::from_static(names[6]),
    ]
};

pub(super) fn strip_hop_headers(h: &mut HeaderMap) {
    // why: most messages carry none of them, and one look at each name is far cheaper than a
    // lookup for each name of the list.
    if !h.keys().any(|k| HOP_HEADERS.contains(k)) {
        return;
    }
    // Headers named by Connection are hop-by-hop too.
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        h.remove(n);
    }
    let keep_trailers = h
        .get(header::TE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("trailers")));
    for n in &HOP_HEADERS {
        h.remove(n);
    }
    if keep_trailers {
        // gRPC needs `te: trailers` end to end.
        h.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

pub(super) fn shadow_authority(authority: &str) -> String {
    match authority.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => format!("{h}-shadow:{p}"),
        _ => format!("{authority}-shadow"),
    }
}

pub(super) fn cookie(h: &HeaderMap, name: &str) -> Option<String> {
    h.get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

pub(super) fn build_request(
    method: Method,
    mut headers: HeaderMap,
    authority: &str,
    path_and_query: &PathAndQuery,
    body: Body,
    h2: bool,
) -> Result<Request<Body>, http::Error> {
    // HTTP/1 sends origin-form with Host; HTTP/2 needs the authority in the URI.
    let uri: Uri = if h2 {
        Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(authority)
            .path_and_query(path_and_query.clone())
            .build()?
    } else {
        Uri::from(path_and_query.clone())
    };
    if h2 {
        headers.remove(header::HOST);
    }
    let mut req = Request::new(body);
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = if h2 { Version::HTTP_2 } else { Version::HTTP_11 };
    *req.headers_mut() = headers;
    Ok(req)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_headers_are_stripped_but_te_trailers_kept() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("close, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_headers(&mut h);
        assert!(h.get("x-secret").is_none());
        assert!(h.get(header::CONNECTION).is_none());
        assert!(h.get(header::UPGRADE).is_none());
        assert_eq!(h.get(header::TE).unwrap(), "trailers");
        assert!(h.get("x-keep").is_some());
    }

    #[test]
    fn shadow_authority_and_cookies() {
        assert_eq!(shadow_authority("payment:8080"), "payment-shadow:8080");
        assert_eq!(shadow_authority("payment"), "payment-shadow");
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("a=1; user=bob"));
        assert_eq!(cookie(&h, "user").as_deref(), Some("bob"));
    }
}
