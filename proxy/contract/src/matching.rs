//! Request matching: the one implementation of how a [`RouteMatch`] decides whether a request
//! takes a route, shared by `trellis-proxy` (which routes by it) and `meshctl routes` (which
//! explains by it), so the explanation cannot disagree with the proxy. Pure: no HTTP types,
//! no I/O; the caller supplies the request's parts and a [`Headers`] view of its headers.
//!
//! # Guarantees
//! - A route's matches are alternatives (OR); the conditions of one match all hold (AND), in
//!   the order port, method, authority, uri, headers, query parameters; a route without matches
//!   takes every request.
//! - A failed match says which condition failed ([`Mismatch`]), so `meshctl` can say why.
//! - Regexes are anchored (they match the whole value), as Envoy's `safe_regex` does.
//!
//! # Caveats
//! - Header values are compared joined with `,` when a header appears several times, as Envoy
//!   does; a value that is not UTF-8 counts as absent for value conditions.

use std::borrow::Cow;

use regex::Regex;

use crate::{RouteMatch, StringMatch};

/// A [`StringMatch`] ready to evaluate (regexes compiled and anchored).
#[derive(Clone, Debug)]
pub enum Matcher {
    /// Equal.
    Exact(String),
    /// Starts with.
    Prefix(String),
    /// Ends with.
    Suffix(String),
    /// Whole-value regex.
    Regex(Regex),
}

/// A regex in the config did not compile (validation should have caught it).
#[derive(Debug, thiserror::Error)]
#[error("invalid regex {pattern:?}: {source}")]
pub struct MatcherError {
    pattern: String,
    #[source]
    source: regex::Error,
}

impl MatcherError {
    /// Wrap a regex error for `pattern`.
    pub fn from_regex(pattern: &str, source: regex::Error) -> Self {
        Self {
            pattern: pattern.to_string(),
            source,
        }
    }
}

impl Matcher {
    /// Compile; `ignore_case` lowers exact/prefix/suffix operands (callers lower
    /// the value too) and makes regexes case-insensitive.
    pub fn compile(m: &StringMatch, ignore_case: bool) -> Result<Self, MatcherError> {
        let fold = |s: &String| {
            if ignore_case { s.to_ascii_lowercase() } else { s.clone() }
        };
        Ok(match m {
            StringMatch::Exact(s) => Self::Exact(fold(s)),
            StringMatch::Prefix(s) => Self::Prefix(fold(s)),
            StringMatch::Suffix(s) => Self::Suffix(fold(s)),
            StringMatch::Regex(p) => {
                let anchored = if ignore_case {
                    format!("(?i)^(?:{p})$")
                } else {
                    format!("^(?:{p})$")
                };
                Self::Regex(Regex::new(&anchored).map_err(|source| MatcherError::from_regex(p, source))?)
            }
        })
    }

    /// Compile a list.
    pub fn compile_all(ms: &[StringMatch]) -> Result<Vec<Self>, MatcherError> {
        ms.iter().map(|m| Self::compile(m, false)).collect()
    }

    /// Does `value` match?
    pub fn matches(&self, value: &str) -> bool {
        match self {
            Self::Exact(s) => value == s,
            Self::Prefix(s) => value.starts_with(s.as_str()),
            Self::Suffix(s) => value.ends_with(s.as_str()),
            Self::Regex(r) => r.is_match(value),
        }
    }

    /// The length of the matched prefix when this is a prefix matcher.
    pub fn prefix_len(&self) -> Option<usize> {
        match self {
            Self::Prefix(s) => Some(s.len()),
            _ => None,
        }
    }
}

/// True if any matcher matches (false for an empty list).
pub fn any_match(ms: &[Matcher], value: &str) -> bool {
    ms.iter().any(|m| m.matches(value))
}

/// A request's headers, as matching reads them. Names are given in lower case.
pub trait Headers {
    /// Whether the header is present (with any value).
    fn contains(&self, name: &str) -> bool;
    /// Its values joined with `,` (none: absent, or a value is not UTF-8).
    fn joined(&self, name: &str) -> Option<Cow<'_, str>>;
}

/// The parts of a request routing looks at.
#[derive(Clone, Copy)]
pub struct Request<'a> {
    /// Method.
    pub method: &'a str,
    /// Normalized path, without the query.
    pub path: &'a str,
    /// Raw query string.
    pub query: Option<&'a str>,
    /// Host without port, lower case.
    pub host: &'a str,
    /// Destination port (host header port, else the connection's).
    pub port: u16,
    /// Headers.
    pub headers: &'a dyn Headers,
}

impl std::fmt::Debug for Request<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("method", &self.method)
            .field("path", &self.path)
            .field("query", &self.query)
            .field("host", &self.host)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

/// The condition of a match that a request failed (the first one, in evaluation order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mismatch {
    /// The destination port.
    Port,
    /// The method.
    Method,
    /// The authority.
    Authority,
    /// The path.
    Uri,
    /// The header condition at this index of [`RouteMatch::headers`].
    Header(usize),
    /// The query parameter condition at this index of [`RouteMatch::query_params`].
    QueryParam(usize),
}

/// A match's regex did not compile: the field (`uri`, `headers[0]`, …) and why.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {source}")]
pub struct MatchError {
    /// The field of the match, relative to it.
    pub field: String,
    /// Cause.
    #[source]
    pub source: MatcherError,
}

/// A [`RouteMatch`] ready to evaluate.
#[derive(Debug, Clone)]
pub struct CompiledRouteMatch {
    uri: Option<Matcher>,
    ignore_uri_case: bool,
    method: Option<Matcher>,
    authority: Option<Matcher>,
    /// `(lower-case name, value condition, invert)`.
    headers: Vec<(String, Option<Matcher>, bool)>,
    query: Vec<(String, Option<Matcher>)>,
    port: Option<u16>,
}

impl CompiledRouteMatch {
    /// Compile a match.
    pub fn compile(m: &RouteMatch) -> Result<Self, MatchError> {
        let cm = |field: String, sm: &StringMatch, ic: bool| {
            Matcher::compile(sm, ic).map_err(|source| MatchError { field, source })
        };
        let mut headers = Vec::with_capacity(m.headers.len());
        for (i, h) in m.headers.iter().enumerate() {
            let value = h
                .value
                .as_ref()
                .map(|v| cm(format!("headers[{i}]"), v, false))
                .transpose()?;
            headers.push((h.name.to_ascii_lowercase(), value, h.invert));
        }
        let mut query = Vec::with_capacity(m.query_params.len());
        for (i, q) in m.query_params.iter().enumerate() {
            let value = q
                .value
                .as_ref()
                .map(|v| cm(format!("queryParams[{i}]"), v, false))
                .transpose()?;
            query.push((q.name.clone(), value));
        }
        Ok(Self {
            uri: m
                .uri
                .as_ref()
                .map(|u| cm("uri".into(), u, m.ignore_uri_case))
                .transpose()?,
            ignore_uri_case: m.ignore_uri_case,
            method: m.method.as_ref().map(|x| cm("method".into(), x, false)).transpose()?,
            authority: m
                .authority
                .as_ref()
                .map(|x| cm("authority".into(), x, false))
                .transpose()?,
            headers,
            query,
            port: m.port,
        })
    }

    /// `Ok(matched uri prefix length)` when the request matches, else the first condition it
    /// failed.
    pub fn check(&self, req: &Request<'_>) -> Result<Option<usize>, Mismatch> {
        if self.port.is_some_and(|p| p != req.port) {
            return Err(Mismatch::Port);
        }
        if let Some(m) = &self.method
            && !m.matches(req.method)
        {
            return Err(Mismatch::Method);
        }
        if let Some(m) = &self.authority
            && !m.matches(req.host)
        {
            return Err(Mismatch::Authority);
        }
        let mut prefix = None;
        if let Some(m) = &self.uri {
            let ok = if self.ignore_uri_case && !matches!(m, Matcher::Regex(_)) {
                m.matches(&req.path.to_ascii_lowercase())
            } else {
                m.matches(req.path)
            };
            if !ok {
                return Err(Mismatch::Uri);
            }
            prefix = m.prefix_len();
        }
        for (i, (name, value, invert)) in self.headers.iter().enumerate() {
            let ok = match value {
                None => req.headers.contains(name),
                Some(m) => req.headers.joined(name).is_some_and(|v| m.matches(&v)),
            };
            if ok == *invert {
                return Err(Mismatch::Header(i));
            }
        }
        if !self.query.is_empty() {
            let params = parse_query(req.query.unwrap_or(""));
            for (i, (name, value)) in self.query.iter().enumerate() {
                let ok = match (params.iter().find(|(k, _)| k == name), value) {
                    (None, _) => false,
                    (Some(_), None) => true,
                    (Some((_, v)), Some(m)) => m.matches(v),
                };
                if !ok {
                    return Err(Mismatch::QueryParam(i));
                }
            }
        }
        Ok(prefix)
    }
}

/// Whether a route with these (alternative) matches takes the request: `Ok(matched uri
/// prefix length)` for the first alternative that matches (a route without matches takes
/// every request), else why each alternative failed, in order.
pub fn first_match(matches: &[CompiledRouteMatch], req: &Request<'_>) -> Result<Option<usize>, Vec<Mismatch>> {
    if matches.is_empty() {
        return Ok(None);
    }
    let mut why = Vec::with_capacity(matches.len());
    for m in matches {
        match m.check(req) {
            Ok(prefix) => return Ok(prefix),
            Err(e) => why.push(e),
        }
    }
    Err(why)
}

/// Parse a query string into decoded `(name, value)` pairs.
pub fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn hex(c: u8) -> Option<u8> {
    char::from(c).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{HeaderMatch, QueryParamMatch};

    struct H(Vec<(&'static str, &'static str)>);

    impl Headers for H {
        fn contains(&self, name: &str) -> bool {
            self.0.iter().any(|(k, _)| *k == name)
        }
        fn joined(&self, name: &str) -> Option<Cow<'_, str>> {
            let v: Vec<&str> = self.0.iter().filter(|(k, _)| *k == name).map(|(_, v)| *v).collect();
            (!v.is_empty()).then(|| Cow::Owned(v.join(",")))
        }
    }

    fn req<'a>(method: &'a str, path: &'a str, query: Option<&'a str>, headers: &'a H) -> Request<'a> {
        Request {
            method,
            path,
            query,
            host: "payment.shop.svc.cluster.local",
            port: 8080,
            headers,
        }
    }

    #[test]
    fn regex_is_anchored() {
        let m = Matcher::compile(&StringMatch::Regex("/a.*".into()), false).unwrap();
        assert!(m.matches("/abc"));
        assert!(!m.matches("x/abc"));
        let m = Matcher::compile(&StringMatch::Regex("b".into()), false).unwrap();
        assert!(!m.matches("abc"));
    }

    #[test]
    fn ignore_case_folds_operands() {
        let m = Matcher::compile(&StringMatch::Prefix("/API".into()), true).unwrap();
        assert!(m.matches("/api/x"));
        let m = Matcher::compile(&StringMatch::Regex("/API".into()), true).unwrap();
        assert!(m.matches("/api"));
    }

    #[test]
    fn suffix_and_exact() {
        assert!(Matcher::Suffix(".com".into()).matches("a.com"));
        assert!(!Matcher::Exact("a".into()).matches("ab"));
        assert!(!any_match(&[], "x"));
    }

    #[test]
    fn each_failed_condition_is_named() {
        let m = RouteMatch {
            port: Some(8080),
            method: Some(StringMatch::Exact("GET".into())),
            uri: Some(StringMatch::Prefix("/pay".into())),
            headers: vec![
                HeaderMatch {
                    name: "X-Canary".into(),
                    value: Some(StringMatch::Exact("true".into())),
                    invert: false,
                },
                HeaderMatch {
                    name: "x-debug".into(),
                    value: None,
                    invert: true,
                },
            ],
            query_params: vec![QueryParamMatch {
                name: "user".into(),
                value: Some(StringMatch::Regex("a.*".into())),
            }],
            ..Default::default()
        };
        let c = CompiledRouteMatch::compile(&m).unwrap();
        let canary = H(vec![("x-canary", "true")]);
        assert_eq!(c.check(&req("GET", "/pay/x", Some("user=ann"), &canary)), Ok(Some(4)));
        assert_eq!(c.check(&req("POST", "/pay", None, &canary)), Err(Mismatch::Method));
        assert_eq!(c.check(&req("GET", "/shop", None, &canary)), Err(Mismatch::Uri));
        let none = H(vec![]);
        assert_eq!(c.check(&req("GET", "/pay", None, &none)), Err(Mismatch::Header(0)));
        let debug = H(vec![("x-canary", "true"), ("x-debug", "1")]);
        assert_eq!(c.check(&req("GET", "/pay", None, &debug)), Err(Mismatch::Header(1)));
        assert_eq!(
            c.check(&req("GET", "/pay", Some("user=bob"), &canary)),
            Err(Mismatch::QueryParam(0))
        );
        let mut other_port = req("GET", "/pay", Some("user=ann"), &canary);
        other_port.port = 80;
        assert_eq!(c.check(&other_port), Err(Mismatch::Port));
    }

    #[test]
    fn alternatives_are_ored_and_no_match_takes_everything() {
        let get = CompiledRouteMatch::compile(&RouteMatch {
            method: Some(StringMatch::Exact("GET".into())),
            ..Default::default()
        })
        .unwrap();
        let exact = CompiledRouteMatch::compile(&RouteMatch {
            uri: Some(StringMatch::Exact("/a".into())),
            ..Default::default()
        })
        .unwrap();
        let h = H(vec![]);
        let both = [get, exact];
        assert_eq!(first_match(&both, &req("POST", "/a", None, &h)), Ok(None));
        assert_eq!(
            first_match(&both, &req("POST", "/b", None, &h)),
            Err(vec![Mismatch::Method, Mismatch::Uri])
        );
        assert_eq!(first_match(&[], &req("POST", "/b", None, &h)), Ok(None));
    }

    #[test]
    fn repeated_headers_are_joined() {
        let c = CompiledRouteMatch::compile(&RouteMatch {
            headers: vec![HeaderMatch {
                name: "x-a".into(),
                value: Some(StringMatch::Exact("1,2".into())),
                invert: false,
            }],
            ..Default::default()
        })
        .unwrap();
        let h = H(vec![("x-a", "1"), ("x-a", "2")]);
        assert_eq!(c.check(&req("GET", "/", None, &h)), Ok(None));
    }

    #[test]
    fn a_bad_regex_names_its_field() {
        let e = CompiledRouteMatch::compile(&RouteMatch {
            headers: vec![HeaderMatch {
                name: "x".into(),
                value: Some(StringMatch::Regex("(".into())),
                invert: false,
            }],
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(e.field, "headers[0]");
    }

    #[test]
    fn query_parsing_decodes() {
        assert_eq!(
            parse_query("a=1&b=x%20y&c&d=+"),
            vec![
                ("a".into(), "1".into()),
                ("b".into(), "x y".into()),
                ("c".into(), String::new()),
                ("d".into(), " ".into())
            ]
        );
        assert_eq!(parse_query("a=%zz%4"), vec![("a".into(), "%zz%4".into())]);
    }
}
