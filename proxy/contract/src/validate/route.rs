//! HTTP routes: matches, forwarding (weights, retries, timeouts, mirrors), header changes,
//! fault injection and CORS.

use std::collections::HashSet;

use crate::route::{
    CorsPolicy, FaultInjection, ForwardAction, HeaderMutation, Route, RouteAction, RouteMatch, StringMatch,
};
use crate::syntax::{HeaderDirection, is_header_name, is_header_value, is_tchar, route_may_change};

use super::{MAX_RETRY_ATTEMPTS, Validator, unknown_cluster};

impl Validator {
    pub(super) fn route(&mut self, path: &str, r: &Route, clusters: &HashSet<&str>) {
        if r.provenance.kind.is_empty() || r.provenance.name.is_empty() {
            self.err(
                format!("{path}.provenance"),
                "kind and name of the producing resource are required",
            );
        }
        for (i, m) in r.matches.iter().enumerate() {
            self.route_match(&format!("{path}.match[{i}]"), m);
        }
        match &r.action {
            RouteAction::Forward(f) => self.forward(&format!("{path}.action.forward"), f, clusters),
            RouteAction::Redirect(rd) => {
                if let Some(code) = rd.response_code
                    && ![301, 302, 303, 307, 308].contains(&code)
                {
                    self.err(
                        format!("{path}.action.redirect.responseCode"),
                        format!("{code} is not a redirect code (301, 302, 303, 307, 308)"),
                    );
                }
                if let Some(s) = &rd.scheme
                    && s != "http"
                    && s != "https"
                {
                    self.err(
                        format!("{path}.action.redirect.scheme"),
                        format!("{s:?} must be http or https"),
                    );
                }
                if let Some(u) = &rd.uri
                    && !u.starts_with('/')
                {
                    self.err(format!("{path}.action.redirect.uri"), "must start with '/'");
                }
                if let Some(pr) = &rd.prefix_rewrite {
                    if !pr.starts_with('/') {
                        self.err(format!("{path}.action.redirect.prefixRewrite"), "must start with '/'");
                    }
                    if rd.uri.is_some() {
                        self.err(
                            format!("{path}.action.redirect.prefixRewrite"),
                            "uri and prefixRewrite are mutually exclusive; keep one",
                        );
                    }
                }
            }
            RouteAction::DirectResponse(d) => {
                if !(200..=599).contains(&d.status) {
                    self.err(
                        format!("{path}.action.directResponse.status"),
                        format!("{} is not a final HTTP status (200-599)", d.status),
                    );
                }
            }
        }
        self.headers(
            &format!("{path}.requestHeaders"),
            &r.request_headers,
            HeaderDirection::Request,
        );
        self.headers(
            &format!("{path}.responseHeaders"),
            &r.response_headers,
            HeaderDirection::Response,
        );
        if let Some(f) = &r.fault {
            self.fault(&format!("{path}.fault"), f);
        }
        if let Some(c) = &r.cors {
            self.cors(&format!("{path}.cors"), c);
        }
    }

    fn route_match(&mut self, path: &str, m: &RouteMatch) {
        if let Some(u) = &m.uri {
            self.string_match(&format!("{path}.uri"), u);
            if let StringMatch::Exact(s) | StringMatch::Prefix(s) = u
                && !s.starts_with('/')
            {
                self.err(format!("{path}.uri"), format!("{s:?} must start with '/'"));
            }
        }
        if let Some(x) = &m.method {
            self.string_match(&format!("{path}.method"), x);
        }
        if let Some(x) = &m.authority {
            self.string_match(&format!("{path}.authority"), x);
        }
        for (i, h) in m.headers.iter().enumerate() {
            if !is_header_name(&h.name) {
                self.err(
                    format!("{path}.headers[{i}].name"),
                    format!("{:?} is not a valid header name", h.name),
                );
            }
            if let Some(v) = &h.value {
                self.string_match(&format!("{path}.headers[{i}].match"), v);
            }
        }
        for (i, q) in m.query_params.iter().enumerate() {
            if q.name.is_empty() {
                self.err(format!("{path}.queryParams[{i}].name"), "must not be empty");
            }
            if let Some(v) = &q.value {
                self.string_match(&format!("{path}.queryParams[{i}].match"), v);
            }
        }
        if m.port == Some(0) {
            self.err(format!("{path}.port"), "must be 1-65535");
        }
    }

    pub(super) fn string_match(&mut self, path: &str, m: &StringMatch) {
        if let StringMatch::Regex(re) = m
            && let Err(e) = regex::Regex::new(re)
        {
            self.err(format!("{path}.regex"), format!("invalid regex: {e}"));
        }
    }

    fn forward(&mut self, path: &str, f: &ForwardAction, clusters: &HashSet<&str>) {
        if f.clusters.is_empty() {
            self.err(format!("{path}.clusters"), "must list at least one cluster");
        }
        let mut total: u64 = 0;
        for (i, wc) in f.clusters.iter().enumerate() {
            if !clusters.contains(wc.cluster.as_str()) {
                self.err(format!("{path}.clusters[{i}].cluster"), unknown_cluster(&wc.cluster));
            }
            total += u64::from(wc.weight);
            self.headers(
                &format!("{path}.clusters[{i}].requestHeaders"),
                &wc.request_headers,
                HeaderDirection::Request,
            );
            self.headers(
                &format!("{path}.clusters[{i}].responseHeaders"),
                &wc.response_headers,
                HeaderDirection::Response,
            );
        }
        if !f.clusters.is_empty() && total != 100 {
            self.err(
                format!("{path}.clusters"),
                format!("weights sum to {total}, they must sum to 100"),
            );
        }
        if let Some(rw) = &f.rewrite {
            if let Some(p) = &rw.uri_prefix
                && !p.starts_with('/')
            {
                self.err(format!("{path}.rewrite.uriPrefix"), "must start with '/'");
            }
            if let Some(rr) = &rw.uri_regex
                && let Err(e) = regex::Regex::new(&rr.pattern)
            {
                self.err(
                    format!("{path}.rewrite.uriRegex.pattern"),
                    format!("invalid regex: {e}"),
                );
            }
            if rw.uri_prefix.is_some() && rw.uri_regex.is_some() {
                self.err(format!("{path}.rewrite"), "set uriPrefix or uriRegex, not both");
            }
            if let Some(a) = &rw.authority
                && (a.is_empty() || a.bytes().any(|b| b.is_ascii_whitespace() || b == b'/'))
            {
                self.err(
                    format!("{path}.rewrite.authority"),
                    format!("{a:?} is not an authority"),
                );
            }
        }
        if f.timeout_ms == Some(0) {
            self.err(format!("{path}.timeoutMs"), "must be positive (omit for no timeout)");
        }
        if let Some(r) = &f.retries {
            if r.attempts > MAX_RETRY_ATTEMPTS {
                self.err(
                    format!("{path}.retries.attempts"),
                    format!("{} is more than {MAX_RETRY_ATTEMPTS}", r.attempts),
                );
            }
            if r.per_try_timeout_ms == Some(0) {
                self.err(format!("{path}.retries.perTryTimeoutMs"), "must be positive");
            }
            if r.backoff_base_ms == 0 {
                self.err(format!("{path}.retries.backoffBaseMs"), "must be positive");
            }
            if let Some(max) = r.backoff_max_ms
                && max < r.backoff_base_ms
            {
                self.err(format!("{path}.retries.backoffMaxMs"), "must be at least backoffBaseMs");
            }
            if let Some(b) = r.budget_percent {
                self.percentage(&format!("{path}.retries.budgetPercent"), b);
            }
            if r.retry_on.contains(&crate::RetryOn::RetriableStatusCodes) && r.retriable_status_codes.is_empty() {
                self.err(
                    format!("{path}.retries.retriableStatusCodes"),
                    "retryOn includes retriable-status-codes but no codes are listed",
                );
            }
            for (i, code) in r.retriable_status_codes.iter().enumerate() {
                if !(100..=599).contains(code) {
                    self.err(
                        format!("{path}.retries.retriableStatusCodes[{i}]"),
                        format!("{code} is not an HTTP status"),
                    );
                }
            }
        }
        for (i, m) in f.mirrors.iter().enumerate() {
            if !clusters.contains(m.cluster.as_str()) {
                self.err(format!("{path}.mirrors[{i}].cluster"), unknown_cluster(&m.cluster));
            }
            self.percentage(&format!("{path}.mirrors[{i}].percentage"), m.percentage);
        }
    }

    fn headers(&mut self, path: &str, h: &HeaderMutation, direction: HeaderDirection) {
        for (field, names) in [
            ("set", h.set.keys().collect::<Vec<_>>()),
            ("add", h.add.keys().collect()),
            ("remove", h.remove.iter().collect()),
        ] {
            for name in names {
                if let Err(why) = route_may_change(name, direction) {
                    self.err(format!("{path}.{field}"), why.to_string());
                }
            }
        }
        for (field, map) in [("set", &h.set), ("add", &h.add)] {
            for (name, value) in map {
                if !is_header_value(value) {
                    self.err(format!("{path}.{field}[{name}]"), "value contains control characters");
                }
            }
        }
    }

    fn fault(&mut self, path: &str, f: &FaultInjection) {
        if let Some(d) = &f.delay {
            self.percentage(&format!("{path}.delay.percentage"), d.percentage);
        }
        if let Some(a) = &f.abort {
            self.percentage(&format!("{path}.abort.percentage"), a.percentage);
            if !(200..=599).contains(&a.http_status) {
                self.err(
                    format!("{path}.abort.httpStatus"),
                    format!("{} is not a final HTTP status", a.http_status),
                );
            }
        }
    }

    fn cors(&mut self, path: &str, c: &CorsPolicy) {
        for (i, o) in c.allow_origins.iter().enumerate() {
            self.string_match(&format!("{path}.allowOrigins[{i}]"), o);
        }
        for (i, h) in c.allow_headers.iter().chain(&c.expose_headers).enumerate() {
            if !is_header_name(h) {
                self.err(format!("{path}.headers[{i}]"), format!("{h:?} is not a header name"));
            }
        }
        for (i, m) in c.allow_methods.iter().enumerate() {
            if m.is_empty() || !m.bytes().all(is_tchar) {
                self.err(format!("{path}.allowMethods[{i}]"), format!("{m:?} is not a method"));
            }
        }
    }
}
