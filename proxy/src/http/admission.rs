//! Admission: the request-head checks a hardened edge proxy makes beyond
//! hyper's own (limits, framing, Host), and where a request is going (its
//! authority, host and port).

use crate::request_body::DrainOnDrop;
use crate::snapshot::ListenerRuntime;
use http::header;
use http::{Method, Request, StatusCode, Version};
use hyper::body::Body as _;
use std::borrow::Cow;
use trellis_contract::ListenerDirection;

/// The request head checks a hardened edge proxy makes, beyond hyper's own.
pub(super) fn check_head(
    req: &Request<DrainOnDrop>,
    listener: &ListenerRuntime,
) -> Result<(), (StatusCode, &'static str)> {
    let limits = &listener.spec.limits;
    let target_len = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if target_len > limits.max_uri_bytes as usize {
        return Err((StatusCode::URI_TOO_LONG, "request target too long\n"));
    }
    let headers = req.headers();
    if headers.len() > limits.max_request_headers as usize {
        return Err((
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "too many request headers\n",
        ));
    }
    let size: usize = headers.iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum();
    if size > limits.max_request_header_bytes as usize {
        return Err((
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "request headers too large\n",
        ));
    }
    if headers.contains_key(header::TRANSFER_ENCODING) && headers.contains_key(header::CONTENT_LENGTH) {
        return Err((StatusCode::BAD_REQUEST, "both Content-Length and Transfer-Encoding\n"));
    }
    let hosts = headers.get_all(header::HOST).iter().count();
    if hosts > 1 {
        return Err((StatusCode::BAD_REQUEST, "duplicate Host header\n"));
    }
    if req.version() == Version::HTTP_11 && hosts == 0 {
        return Err((StatusCode::BAD_REQUEST, "missing Host header\n"));
    }
    if req.version() == Version::HTTP_2
        && let (Some(a), Some(h)) = (req.uri().authority(), headers.get(header::HOST))
        && a.as_str().as_bytes() != h.as_bytes()
    {
        return Err((StatusCode::BAD_REQUEST, ":authority and Host disagree\n"));
    }
    // why: a tunnel is explicit proxying, which only an outbound listener does (HTTPS_PROXY);
    // inbound and at a gateway it would be a way past the routes to anywhere.
    if req.method() == Method::CONNECT && listener.spec.direction != ListenerDirection::Outbound {
        return Err((
            StatusCode::METHOD_NOT_ALLOWED,
            "CONNECT is served on outbound listeners only (explicit proxying)\n",
        ));
    }
    if let Some(max) = limits.max_request_body_bytes
        && req.body().size_hint().lower() > max
    {
        return Err((StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n"));
    }
    Ok(())
}

/// The authority of a request: the URI's (HTTP/2, absolute-form) or Host.
pub(super) fn authority(req: &Request<DrainOnDrop>) -> Option<String> {
    req.uri().authority().map(|a| a.as_str().to_string()).or_else(|| {
        req.headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_string)
    })
}

/// The host (lower case) and port of an authority; the host borrowed when it is lower case
/// already, as nearly every client sends it.
pub(super) fn split_host_port(authority: &str) -> (Cow<'_, str>, Option<u16>) {
    if let Some(rest) = authority.strip_prefix('[') {
        // IPv6 literal.
        if let Some((h, p)) = rest.split_once(']') {
            let bracketed = &authority[..h.len() + 2];
            return (bracketed.into(), p.strip_prefix(':').and_then(|p| p.parse().ok()));
        }
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h, p.parse().ok()),
        _ => (authority, None),
    };
    let host = match host.bytes().any(|b| b.is_ascii_uppercase()) {
        true => Cow::Owned(host.to_ascii_lowercase()),
        false => Cow::Borrowed(host),
    };
    (host, port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_port_of_an_authority() {
        assert_eq!(split_host_port("Example.COM:8080"), ("example.com".into(), Some(8080)));
        assert_eq!(split_host_port("[::1]:80"), ("[::1]".into(), Some(80)));
        assert_eq!(split_host_port("svc"), ("svc".into(), None));
        assert!(matches!(
            split_host_port("svc.ns:80"),
            (Cow::Borrowed("svc.ns"), Some(80))
        ));
        assert!(matches!(split_host_port("[::1]"), (Cow::Borrowed("[::1]"), None)));
    }
}
