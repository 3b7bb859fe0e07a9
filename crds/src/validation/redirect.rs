//! A VirtualService route's `redirect`: Istio's checks (`validateHTTPRedirect`) — a target to
//! redirect to, one of `uri` or `prefixRewrite`, `prefixRewrite` only under prefix matches —
//! and Trellis's on the values (redirect codes, scheme, paths, authority).

use super::Findings;
use super::format::{authority, uri_path};
use crate::networking::{HttpRedirect, HttpRoute, StringMatch};

/// The redirect statuses the proxy answers with.
const REDIRECT_CODES: &[u32] = &[301, 302, 303, 307, 308];

/// The redirect `rd` of route `r`, at `p` (the route's path).
pub(super) fn redirect(p: &str, r: &HttpRoute, rd: &HttpRedirect, f: &mut Findings) {
    let rp = format!("{p}.redirect");
    let set = |s: &Option<String>| s.as_deref().is_some_and(|s| !s.is_empty());
    if !(set(&rd.uri)
        || set(&rd.prefix_rewrite)
        || set(&rd.authority)
        || set(&rd.scheme)
        || rd.port.is_some()
        || rd.derive_port.is_some())
    {
        f.error(
            &rp,
            "a redirect must change something: set uri, prefixRewrite, authority, scheme, port or derivePort",
        );
    }
    if let Some(code) = rd.redirect_code
        && !REDIRECT_CODES.contains(&code)
    {
        f.error(
            format!("{rp}.redirectCode"),
            format!("{code} is not a redirect status; use 301, 302, 303, 307 or 308"),
        );
    }
    if let Some(s) = &rd.scheme
        && s != "http"
        && s != "https"
    {
        f.error(
            format!("{rp}.scheme"),
            format!("{s:?} is not a scheme; use http or https"),
        );
    }
    if let Some(u) = &rd.uri {
        uri_path(&format!("{rp}.uri"), u, f);
    }
    // Istio reads an empty prefixRewrite as unset.
    if let Some(pr) = rd.prefix_rewrite.as_deref().filter(|p| !p.is_empty()) {
        prefix_rewrite(&rp, r, rd, pr, f);
    }
    if let Some(a) = &rd.authority {
        authority(&format!("{rp}.authority"), a, f);
    }
    if r.rewrite.is_some() {
        f.error(
            format!("{p}.rewrite"),
            "rewrite cannot be combined with redirect; put the new path in redirect.uri or redirect.prefixRewrite",
        );
    }
}

/// `prefixRewrite` replaces the prefix a request matched: Istio refuses it with `uri` and
/// under a match whose `uri` is not a prefix (exact or regex: nothing to replace).
fn prefix_rewrite(rp: &str, r: &HttpRoute, rd: &HttpRedirect, pr: &str, f: &mut Findings) {
    let path = format!("{rp}.prefixRewrite");
    if rd.uri.as_deref().is_some_and(|u| !u.is_empty()) {
        f.error(
            &path,
            "uri and prefixRewrite are mutually exclusive: uri replaces the whole path, prefixRewrite the matched prefix; keep one",
        );
    }
    uri_path(&path, pr, f);
    for (j, m) in r.matches.iter().flatten().enumerate() {
        let kind = match &m.uri {
            Some(StringMatch {
                prefix: None,
                exact: Some(_),
                ..
            }) => "an exact",
            Some(StringMatch {
                prefix: None,
                regex: Some(_),
                ..
            }) => "a regex",
            _ => continue,
        };
        f.error(
            &path,
            format!("replaces the matched prefix, but match[{j}].uri is {kind} match; match a uri prefix, or set redirect.uri to the whole new path"),
        );
    }
}
