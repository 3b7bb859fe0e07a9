//! HTTP routing: a listener's virtual hosts compiled for lookup by authority
//! and port, routes compiled for matching, and the pure request rewrites
//! (path/authority rewrite, header mutations) routes apply.

use http::{HeaderMap, HeaderName, HeaderValue};
use std::borrow::Cow;
// why: every request looks its host up here; foldhash (randomly seeded) hashes it in a fraction
// of SipHash's instructions, and the keys are the config's domains, never a client's.
use foldhash::HashMap;
use std::sync::Arc;
pub use trellis_contract::matching::parse_query;
use trellis_contract::matching::{self, CompiledRouteMatch, Matcher, MatcherError};
use trellis_contract::{CorsPolicy, HeaderMutation, Provenance, Redirect, Route, RouteAction, RouteMatch, VirtualHost};

/// Errors compiling a routing table (the contract validator prevents them).
#[derive(Debug, thiserror::Error)]
pub enum RoutingError {
    /// A regex failed to compile.
    #[error("{path}: {source}")]
    Matcher {
        /// Field path.
        path: String,
        /// Cause.
        #[source]
        source: MatcherError,
    },
    /// A header name or value is not valid HTTP.
    #[error("{path}: invalid header {name:?}")]
    Header {
        /// Field path.
        path: String,
        /// The header.
        name: String,
    },
}

/// A listener's compiled virtual hosts.
#[derive(Debug, Default)]
pub struct RouteTable {
    vhosts: Vec<CompiledVirtualHost>,
    /// Host → `(port, vhost)` entries (port-specific first when looked up).
    exact: HashMap<String, Vec<(Option<u16>, usize)>>,
    /// `(".example.com", port, vhost)`, longest suffix first.
    suffixes: Vec<(String, Option<u16>, usize)>,
    any: HashMap<Option<u16>, usize>,
}

/// One compiled virtual host.
#[derive(Debug)]
pub struct CompiledVirtualHost {
    /// Name from the config.
    pub name: String,
    /// Routes in order.
    pub routes: Vec<Arc<CompiledRoute>>,
}

/// A compiled route.
#[derive(Debug)]
pub struct CompiledRoute {
    /// Name from the config, or `<vhost>/<index>`.
    pub name: String,
    /// The config this was compiled from (actions are read from here).
    pub spec: Route,
    matches: Vec<CompiledRouteMatch>,
    /// Compiled request header mutation.
    pub request_headers: HeaderOps,
    /// Compiled response header mutation.
    pub response_headers: HeaderOps,
    /// Per-destination header mutations, parallel to the forward clusters.
    pub cluster_headers: Vec<(HeaderOps, HeaderOps)>,
    /// Compiled path regex rewrite.
    pub rewrite_regex: Option<(regex::Regex, String)>,
    /// Compiled CORS.
    pub cors: Option<CompiledCors>,
}

/// The parts of a request routing looks at.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
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
    pub headers: &'a HeaderMap,
}

/// The route chosen for a request, with what the match decided.
#[derive(Debug, Clone)]
pub struct RouteHit {
    /// The route.
    pub route: Arc<CompiledRoute>,
    /// Length of the matched uri prefix, for prefix rewrites.
    pub matched_prefix: Option<usize>,
}

impl RouteTable {
    /// Compile the virtual hosts of a listener (`path` prefixes error paths).
    pub fn compile(path: &str, vhosts: &[VirtualHost]) -> Result<Self, RoutingError> {
        let mut table = Self::default();
        for (vi, vh) in vhosts.iter().enumerate() {
            let vpath = format!("{path}.virtualHosts[{vi}]");
            let mut routes = Vec::with_capacity(vh.routes.len());
            for (ri, r) in vh.routes.iter().enumerate() {
                routes.push(Arc::new(CompiledRoute::compile(
                    &format!("{vpath}.routes[{ri}]"),
                    &vh.name,
                    ri,
                    r,
                )?));
            }
            table.vhosts.push(CompiledVirtualHost {
                name: vh.name.clone(),
                routes,
            });
            for d in &vh.domains {
                let d = d.to_ascii_lowercase();
                let (host, port) = split_domain(&d);
                if host == "*" {
                    table.any.entry(port).or_insert(vi);
                } else if let Some(suffix) = host.strip_prefix('*') {
                    table.suffixes.push((suffix.to_string(), port, vi));
                } else {
                    let entries = table.exact.entry(host.to_string()).or_default();
                    if !entries.iter().any(|(p, _)| *p == port) {
                        entries.push((port, vi));
                    }
                }
            }
        }
        // Longest suffix first; port-specific before port-less at equal length.
        table
            .suffixes
            .sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(b.1.is_some().cmp(&a.1.is_some())));
        Ok(table)
    }

    /// Find the virtual host for a host (no port, lower case) and port.
    /// Whether a virtual host names this address exactly (a Service's cluster IP and port,
    /// or the IP alone): the client dialled a destination this table routes HTTP for.
    /// Wildcard and catch-all domains do not count.
    pub fn names_address(&self, addr: std::net::SocketAddr) -> bool {
        let port = addr.port();
        match addr.ip() {
            std::net::IpAddr::V4(ip) => self
                .exact
                .get(ip.to_string().as_str())
                .is_some_and(|entries| entries.iter().any(|(p, _)| p.is_none_or(|p| p == port))),
            // IPv6 domains are kept whole (`[ip]:port` or `[ip]`), see `split_domain`.
            std::net::IpAddr::V6(ip) => {
                self.exact.contains_key(format!("[{ip}]:{port}").as_str())
                    || self.exact.contains_key(format!("[{ip}]").as_str())
            }
        }
    }

    pub fn virtual_host(&self, host: &str, port: u16) -> Option<&CompiledVirtualHost> {
        let exact = self.exact.get(host).and_then(|entries| {
            entries
                .iter()
                .find(|(p, _)| *p == Some(port))
                .or_else(|| entries.iter().find(|(p, _)| p.is_none()))
                .map(|(_, i)| *i)
        });
        let idx = exact
            .or_else(|| {
                self.suffixes
                    .iter()
                    .find(|(suffix, p, _)| {
                        host.len() > suffix.len() && host.ends_with(suffix.as_str()) && p.is_none_or(|p| p == port)
                    })
                    .map(|(_, _, i)| *i)
            })
            .or_else(|| self.any.get(&Some(port)).or_else(|| self.any.get(&None)).copied())?;
        self.vhosts.get(idx)
    }

    /// Route a request: virtual host by authority, then the first matching route.
    pub fn route(&self, req: &RequestView<'_>) -> Option<RouteHit> {
        let vh = self.virtual_host(req.host, req.port)?;
        vh.routes.iter().find_map(|r| {
            r.matches(req).map(|matched_prefix| RouteHit {
                route: Arc::clone(r),
                matched_prefix,
            })
        })
    }
}

fn split_domain(d: &str) -> (&str, Option<u16>) {
    match d.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => match p.parse() {
            Ok(port) => (h, Some(port)),
            Err(_) => (d, None),
        },
        _ => (d, None),
    }
}

impl CompiledRoute {
    fn compile(path: &str, vhost: &str, index: usize, r: &Route) -> Result<Self, RoutingError> {
        let mut matches = Vec::with_capacity(r.matches.len());
        for (i, m) in r.matches.iter().enumerate() {
            matches.push(compile_match(&format!("{path}.match[{i}]"), m)?);
        }
        let mut cluster_headers = Vec::new();
        let mut rewrite_regex = None;
        if let RouteAction::Forward(f) = &r.action {
            for (i, wc) in f.clusters.iter().enumerate() {
                let p = format!("{path}.action.forward.clusters[{i}]");
                cluster_headers.push((
                    HeaderOps::compile(&format!("{p}.requestHeaders"), &wc.request_headers)?,
                    HeaderOps::compile(&format!("{p}.responseHeaders"), &wc.response_headers)?,
                ));
            }
            if let Some(rr) = f.rewrite.as_ref().and_then(|rw| rw.uri_regex.as_ref()) {
                let re = regex::Regex::new(&rr.pattern).map_err(|source| RoutingError::Matcher {
                    path: format!("{path}.action.forward.rewrite.uriRegex"),
                    source: MatcherError::from_regex(&rr.pattern, source),
                })?;
                rewrite_regex = Some((re, rr.substitution.clone()));
            }
        }
        let cors = r
            .cors
            .as_ref()
            .map(|c| CompiledCors::compile(&format!("{path}.cors"), c))
            .transpose()?;
        Ok(Self {
            name: r.name.clone().unwrap_or_else(|| format!("{vhost}/{index}")),
            spec: r.clone(),
            matches,
            request_headers: HeaderOps::compile(&format!("{path}.requestHeaders"), &r.request_headers)?,
            response_headers: HeaderOps::compile(&format!("{path}.responseHeaders"), &r.response_headers)?,
            cluster_headers,
            rewrite_regex,
            cors,
        })
    }

    /// The provenance of the route.
    pub fn provenance(&self) -> &Provenance {
        &self.spec.provenance
    }

    /// `Some(matched prefix length)` when the route matches (decided by the matcher
    /// `meshctl routes` explains with).
    fn matches(&self, req: &RequestView<'_>) -> Option<Option<usize>> {
        let headers = HttpHeaders(req.headers);
        let request = matching::Request {
            method: req.method,
            path: req.path,
            query: req.query,
            host: req.host,
            port: req.port,
            headers: &headers,
        };
        matching::first_match(&self.matches, &request).ok()
    }
}

/// A request's headers as the contract's matchers (routes, authorization) read them.
pub(crate) struct HttpHeaders<'a>(pub(crate) &'a HeaderMap);

impl matching::Headers for HttpHeaders<'_> {
    fn contains(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }

    fn joined(&self, name: &str) -> Option<Cow<'_, str>> {
        let mut values = self.0.get_all(name).iter();
        let first = values.next()?.to_str().ok()?;
        let mut out: Option<String> = None;
        for v in values {
            let o = out.get_or_insert_with(|| first.to_string());
            o.push(',');
            o.push_str(v.to_str().ok()?);
        }
        Some(out.map_or(Cow::Borrowed(first), Cow::Owned))
    }
}

fn compile_match(path: &str, m: &RouteMatch) -> Result<CompiledRouteMatch, RoutingError> {
    for (i, h) in m.headers.iter().enumerate() {
        HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| RoutingError::Header {
            path: format!("{path}.headers[{i}]"),
            name: h.name.clone(),
        })?;
    }
    CompiledRouteMatch::compile(m).map_err(|e| RoutingError::Matcher {
        path: format!("{path}.{}", e.field),
        source: e.source,
    })
}

/// Compiled header mutation: remove, then set, then add.
#[derive(Debug, Default, Clone)]
pub struct HeaderOps {
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

impl HeaderOps {
    /// Compile a contract mutation.
    pub fn compile(path: &str, m: &HeaderMutation) -> Result<Self, RoutingError> {
        let pair = |k: &String, v: &String| {
            Ok::<_, RoutingError>((
                HeaderName::from_bytes(k.as_bytes()).map_err(|_| RoutingError::Header {
                    path: path.to_string(),
                    name: k.clone(),
                })?,
                HeaderValue::from_str(v).map_err(|_| RoutingError::Header {
                    path: path.to_string(),
                    name: k.clone(),
                })?,
            ))
        };
        Ok(Self {
            set: m.set.iter().map(|(k, v)| pair(k, v)).collect::<Result<_, _>>()?,
            add: m.add.iter().map(|(k, v)| pair(k, v)).collect::<Result<_, _>>()?,
            remove: m
                .remove
                .iter()
                .map(|k| {
                    HeaderName::from_bytes(k.as_bytes()).map_err(|_| RoutingError::Header {
                        path: path.to_string(),
                        name: k.clone(),
                    })
                })
                .collect::<Result<_, _>>()?,
        })
    }

    /// Apply to a header map.
    pub fn apply(&self, h: &mut HeaderMap) {
        for n in &self.remove {
            h.remove(n);
        }
        for (n, v) in &self.set {
            h.insert(n.clone(), v.clone());
        }
        for (n, v) in &self.add {
            h.append(n.clone(), v.clone());
        }
    }
}

/// Compute the rewritten path for a prefix rewrite.
pub fn rewrite_prefix(path: &str, matched_prefix: Option<usize>, new_prefix: &str) -> String {
    match matched_prefix {
        Some(n) if n <= path.len() => {
            let rest = &path[n..];
            if new_prefix.ends_with('/') && rest.starts_with('/') {
                format!("{new_prefix}{}", &rest[1..])
            } else {
                format!("{new_prefix}{rest}")
            }
        }
        _ => new_prefix.to_string(),
    }
}

/// The path and query a redirect sends the client to: `uri` in place of the path, and of the
/// query too when it has one (as Envoy's `path_redirect`, which Istio's `uri` is: a query in it
/// overrides the request's, else the request's is kept); else the request's path with
/// `prefixRewrite` in place of the prefix the route matched — as Envoy's redirect
/// `prefix_rewrite`, a plain swap (`/` for `/foo` on `/foo/baz` gives `//baz`), a route without a
/// uri prefix match having matched `/` — and the query kept; else the path and query as they
/// came.
pub fn redirect_target(rd: &Redirect, path: &str, query: Option<&str>, matched_prefix: Option<usize>) -> String {
    let path = match (&rd.uri, &rd.prefix_rewrite) {
        (Some(u), _) if u.contains('?') => return u.clone(),
        (Some(u), _) => Cow::Borrowed(u.as_str()),
        (None, Some(new)) => {
            let rest = path.get(matched_prefix.unwrap_or(1)..).unwrap_or_default();
            Cow::Owned(format!("{new}{rest}"))
        }
        (None, None) => Cow::Borrowed(path),
    };
    match query {
        Some(q) => format!("{path}?{q}"),
        None => path.into_owned(),
    }
}

/// Compiled CORS policy.
#[derive(Debug)]
pub struct CompiledCors {
    origins: Vec<Matcher>,
    /// `Access-Control-Allow-Methods`.
    pub allow_methods: Option<HeaderValue>,
    /// `Access-Control-Allow-Headers`.
    pub allow_headers: Option<HeaderValue>,
    /// `Access-Control-Expose-Headers`.
    pub expose_headers: Option<HeaderValue>,
    /// `Access-Control-Max-Age`.
    pub max_age: Option<HeaderValue>,
    /// `Access-Control-Allow-Credentials: true`.
    pub allow_credentials: bool,
    /// Answer a preflight from an origin not allowed (Istio's `unmatchedPreflights: IGNORE`)
    /// instead of forwarding it.
    pub ignore_unmatched_preflights: bool,
}

impl CompiledCors {
    fn compile(path: &str, c: &CorsPolicy) -> Result<Self, RoutingError> {
        let join = |v: &[String]| {
            if v.is_empty() {
                Ok(None)
            } else {
                HeaderValue::from_str(&v.join(","))
                    .map(Some)
                    .map_err(|_| RoutingError::Header {
                        path: path.to_string(),
                        name: v.join(","),
                    })
            }
        };
        Ok(Self {
            origins: c
                .allow_origins
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    Matcher::compile(m, false).map_err(|source| RoutingError::Matcher {
                        path: format!("{path}.allowOrigins[{i}]"),
                        source,
                    })
                })
                .collect::<Result<_, _>>()?,
            allow_methods: join(&c.allow_methods)?,
            allow_headers: join(&c.allow_headers)?,
            expose_headers: join(&c.expose_headers)?,
            max_age: c.max_age_seconds.map(HeaderValue::from),
            allow_credentials: c.allow_credentials,
            ignore_unmatched_preflights: c.ignore_unmatched_preflights,
        })
    }

    /// Is this origin allowed?
    pub fn allows_origin(&self, origin: &str) -> bool {
        matching::any_match(&self.origins, origin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_contract::{DirectResponse, HeaderMatch, QueryParamMatch, StringMatch};

    fn route(name: &str, m: Vec<RouteMatch>) -> Route {
        Route {
            name: Some(name.into()),
            matches: m,
            action: RouteAction::DirectResponse(DirectResponse {
                status: 200,
                body: None,
            }),
            request_headers: HeaderMutation::default(),
            response_headers: HeaderMutation::default(),
            fault: None,
            cors: None,
            provenance: Provenance {
                kind: "VirtualService".into(),
                namespace: "ns".into(),
                name: "vs".into(),
                rule_index: Some(0),
                section: None,
                parts: Vec::new(),
            },
        }
    }

    fn vh(name: &str, domains: &[&str], routes: Vec<Route>) -> VirtualHost {
        VirtualHost {
            name: name.into(),
            domains: domains.iter().map(|d| d.to_string()).collect(),
            routes,
        }
    }

    fn view<'a>(method: &'a str, path: &'a str, host: &'a str, headers: &'a HeaderMap) -> RequestView<'a> {
        let (path, query) = match path.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path, None),
        };
        RequestView {
            method,
            path,
            query,
            host,
            port: 80,
            headers,
        }
    }

    #[test]
    fn host_precedence_exact_suffix_any_and_ports() {
        let all = vec![route("r", vec![])];
        let table = RouteTable::compile(
            "l",
            &[
                vh("exact", &["api.example.com"], all.clone()),
                vh("suffix", &["*.example.com"], all.clone()),
                vh("longer", &["*.api.example.com"], all.clone()),
                vh("port", &["svc:8080"], all.clone()),
                vh("any", &["*"], all.clone()),
            ],
        )
        .unwrap();
        let name = |h: &str, p: u16| table.virtual_host(h, p).map(|v| v.name.as_str());
        assert_eq!(name("api.example.com", 80), Some("exact"));
        assert_eq!(name("x.example.com", 80), Some("suffix"));
        assert_eq!(name("v1.api.example.com", 80), Some("longer"));
        assert_eq!(name("example.com", 80), Some("any"));
        assert_eq!(name("svc", 8080), Some("port"));
        assert_eq!(name("svc", 9090), Some("any"));
    }

    #[test]
    fn no_wildcard_means_no_match() {
        let table = RouteTable::compile("l", &[vh("a", &["a"], vec![route("r", vec![])])]).unwrap();
        assert!(table.virtual_host("b", 80).is_none());
    }

    #[test]
    fn first_matching_route_wins_with_all_match_kinds() {
        let headers_match = RouteMatch {
            headers: vec![HeaderMatch {
                name: "x-canary".into(),
                value: Some(StringMatch::Exact("true".into())),
                invert: false,
            }],
            ..Default::default()
        };
        let query_match = RouteMatch {
            query_params: vec![QueryParamMatch {
                name: "user".into(),
                value: Some(StringMatch::Regex("a.*".into())),
            }],
            ..Default::default()
        };
        let method_match = RouteMatch {
            method: Some(StringMatch::Exact("DELETE".into())),
            ..Default::default()
        };
        let case_match = RouteMatch {
            uri: Some(StringMatch::Prefix("/API".into())),
            ignore_uri_case: true,
            ..Default::default()
        };
        let exact = RouteMatch {
            uri: Some(StringMatch::Exact("/exact".into())),
            ..Default::default()
        };
        let absent = RouteMatch {
            headers: vec![HeaderMatch {
                name: "x-debug".into(),
                value: None,
                invert: true,
            }],
            uri: Some(StringMatch::Prefix("/nodebug".into())),
            ..Default::default()
        };
        let table = RouteTable::compile(
            "l",
            &[vh(
                "v",
                &["*"],
                vec![
                    route("canary", vec![headers_match]),
                    route("query", vec![query_match]),
                    route("delete", vec![method_match]),
                    route("api", vec![case_match]),
                    route("exact", vec![exact]),
                    route("nodebug", vec![absent]),
                ],
            )],
        )
        .unwrap();
        let mut h = HeaderMap::new();
        let pick = |m: &str, p: &str, h: &HeaderMap| table.route(&view(m, p, "x", h)).map(|hit| hit.route.name.clone());
        assert_eq!(pick("GET", "/exact", &h).as_deref(), Some("exact"));
        assert_eq!(pick("GET", "/exact/x", &h), None);
        assert_eq!(pick("GET", "/Api/v1", &h).as_deref(), Some("api"));
        assert_eq!(pick("DELETE", "/exact", &h).as_deref(), Some("delete"));
        assert_eq!(pick("GET", "/exact?user=alice", &h).as_deref(), Some("query"));
        assert_eq!(pick("GET", "/exact?user=bob", &h).as_deref(), Some("exact"));
        assert_eq!(pick("GET", "/nodebug", &h).as_deref(), Some("nodebug"));
        h.insert("x-debug", HeaderValue::from_static("1"));
        assert_eq!(pick("GET", "/nodebug", &h), None);
        h.insert("x-canary", HeaderValue::from_static("true"));
        assert_eq!(pick("GET", "/anything", &h).as_deref(), Some("canary"));
    }

    #[test]
    fn prefix_match_reports_length_for_rewrite() {
        let m = RouteMatch {
            uri: Some(StringMatch::Prefix("/api/".into())),
            ..Default::default()
        };
        let table = RouteTable::compile("l", &[vh("v", &["*"], vec![route("r", vec![m])])]).unwrap();
        let h = HeaderMap::new();
        let hit = table.route(&view("GET", "/api/users", "x", &h)).unwrap();
        assert_eq!(hit.matched_prefix, Some(5));
        assert_eq!(rewrite_prefix("/api/users", hit.matched_prefix, "/v2/"), "/v2/users");
        assert_eq!(rewrite_prefix("/api/users", Some(4), "/"), "/users");
        assert_eq!(rewrite_prefix("/exact", None, "/new"), "/new");
    }

    #[test]
    fn redirect_target_swaps_the_matched_prefix_as_envoy_does() {
        let rd = |uri: Option<&str>, prefix: Option<&str>| Redirect {
            uri: uri.map(str::to_string),
            prefix_rewrite: prefix.map(str::to_string),
            ..Redirect::default()
        };
        let swap = rd(None, Some("/bar"));
        assert_eq!(redirect_target(&swap, "/foo/baz", Some("q=1"), Some(4)), "/bar/baz?q=1");
        // Envoy's plain swap: "/" for "/foo" leaves the separator (Istio's proto says so).
        assert_eq!(
            redirect_target(&rd(None, Some("/")), "/foo/baz", None, Some(4)),
            "//baz"
        );
        // No uri prefix matched: "/" was.
        assert_eq!(redirect_target(&swap, "/a", None, None), "/bara");
        // Envoy's path_redirect: the request's query kept, unless the new path has one.
        assert_eq!(
            redirect_target(&rd(Some("/new"), None), "/foo", Some("q=1"), Some(4)),
            "/new?q=1"
        );
        assert_eq!(redirect_target(&rd(Some("/new"), None), "/foo", None, Some(4)), "/new");
        assert_eq!(
            redirect_target(&rd(Some("/new?v=2"), None), "/foo", Some("q=1"), Some(4)),
            "/new?v=2"
        );
        assert_eq!(
            redirect_target(&rd(None, None), "/foo", Some("q=1"), Some(4)),
            "/foo?q=1"
        );
    }

    #[test]
    fn header_ops_remove_set_add() {
        let mut m = HeaderMutation::default();
        m.remove.push("x-remove".into());
        m.set.insert("x-set".into(), "one".into());
        m.add.insert("x-add".into(), "two".into());
        let ops = HeaderOps::compile("p", &m).unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-remove", HeaderValue::from_static("gone"));
        h.insert("x-set", HeaderValue::from_static("old"));
        h.insert("x-add", HeaderValue::from_static("first"));
        ops.apply(&mut h);
        assert!(h.get("x-remove").is_none());
        assert_eq!(h.get("x-set").unwrap(), "one");
        assert_eq!(h.get_all("x-add").iter().count(), 2);
    }
}
