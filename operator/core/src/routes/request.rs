//! The request `meshctl routes --request` explains: `METHOD PATH[?QUERY] [-H name:value]...`,
//! parsed strictly (a clear error for anything it cannot read, nothing ignored), and read by
//! the proxy's matcher through [`Headers`].

use std::borrow::Cow;

use anyhow::bail;
use serde::Serialize;
use trellis_contract::matching::Headers;

/// Longest `--request` accepted (a request line and headers, not a body).
const MAX_LEN: usize = 16 * 1024;

/// A request to explain.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RequestSpec {
    /// Method (upper case).
    pub method: String,
    /// Path, without the query.
    pub path: String,
    /// Query string, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// Headers (names lower case), in order.
    pub headers: Vec<(String, String)>,
}

const FORM: &str = "write it as 'GET /path?query -H name:value'";

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.!#$%&'*+^`|~".contains(&b))
}

impl RequestSpec {
    /// Parse `GET /api/pay?x=1 -H x-canary:true -H 'user: bob'`; a header value runs up to the
    /// next `-H` (it may contain spaces).
    pub fn parse(s: &str) -> anyhow::Result<RequestSpec> {
        if s.len() > MAX_LEN {
            bail!("--request is {} bytes long; at most {MAX_LEN} are accepted", s.len());
        }
        let mut words = s.split_whitespace().peekable();
        let Some(method) = words.next() else {
            bail!("--request is empty; {FORM}");
        };
        if !is_token(method) {
            bail!("--request {s:?}: {method:?} is not an HTTP method; {FORM}");
        }
        let Some(target) = words.next() else {
            bail!("--request {s:?} has no path; {FORM}");
        };
        if !target.starts_with('/') {
            bail!("--request {s:?}: the path {target:?} must start with /; {FORM}");
        }
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p.to_string(), Some(q.to_string())),
            None => (target.to_string(), None),
        };
        let mut headers = Vec::new();
        while let Some(w) = words.next() {
            if w != "-H" {
                bail!("--request {s:?}: unexpected {w:?}; headers are given as -H name:value");
            }
            let mut header = String::new();
            while let Some(next) = words.next_if(|n| *n != "-H") {
                if !header.is_empty() {
                    header.push(' ');
                }
                header.push_str(next);
            }
            let Some((name, value)) = header.split_once(':') else {
                bail!("--request {s:?}: header {header:?} is not name:value");
            };
            let name = name.trim().to_ascii_lowercase();
            if !is_token(&name) {
                bail!("--request {s:?}: {name:?} is not a header name");
            }
            headers.push((name, value.trim().to_string()));
        }
        Ok(RequestSpec {
            method: method.to_ascii_uppercase(),
            path,
            query,
            headers,
        })
    }

    /// The request line as given, for messages: `GET /pay -H x-canary:true`.
    pub fn line(&self) -> String {
        let mut s = format!("{} {}", self.method, self.path);
        if let Some(q) = &self.query {
            s.push('?');
            s.push_str(q);
        }
        for (k, v) in &self.headers {
            s.push_str(&format!(" -H {k}:{v}"));
        }
        s
    }
}

impl Headers for RequestSpec {
    fn contains(&self, name: &str) -> bool {
        self.headers.iter().any(|(k, _)| k == name)
    }

    fn joined(&self, name: &str) -> Option<Cow<'_, str>> {
        let values: Vec<&str> = self
            .headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect();
        match values.as_slice() {
            [] => None,
            [one] => Some(Cow::Borrowed(one)),
            many => Some(Cow::Owned(many.join(","))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_method_path_query_and_headers() {
        let r = RequestSpec::parse("get /api/pay?x=1&y=2 -H X-Canary:true -H user: bob smith -H a:1").unwrap();
        assert_eq!(r.method, "GET");
        assert_eq!(r.path, "/api/pay");
        assert_eq!(r.query.as_deref(), Some("x=1&y=2"));
        assert_eq!(
            r.headers,
            [
                ("x-canary".to_string(), "true".to_string()),
                ("user".into(), "bob smith".into()),
                ("a".into(), "1".into())
            ]
        );
        assert_eq!(
            r.line(),
            "GET /api/pay?x=1&y=2 -H x-canary:true -H user:bob smith -H a:1"
        );
        let twice = RequestSpec::parse("GET / -H a:1 -H a:2").unwrap();
        assert_eq!(twice.joined("a").as_deref(), Some("1,2"));
        assert!(twice.contains("a") && !twice.contains("b"));
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        let err = |s: &str| RequestSpec::parse(s).unwrap_err().to_string();
        assert!(err("").contains("is empty"));
        assert!(err("GET").contains("has no path"));
        assert!(err("GET pay").contains("must start with /"));
        assert!(err("GET /pay x-canary:true").contains("unexpected \"x-canary:true\""));
        assert!(err("GET /pay -H x-canary").contains("is not name:value"));
        assert!(err("GET /pay -H bad name:1").contains("is not a header name"));
        assert!(err("G(T /").contains("is not an HTTP method"));
        assert!(err(&format!("GET /{}", "a".repeat(MAX_LEN))).contains("at most"));
    }
}
