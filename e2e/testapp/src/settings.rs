//! What the test app is and does: its identity in the shop, where it
//! forwards, which headers it propagates, and how it misbehaves.

use std::net::SocketAddr;
use std::time::Duration;

use http::HeaderName;
use serde::{Deserialize, Serialize};

/// Trace context headers every well-behaved mesh app propagates (Istio
/// asks apps to forward these so a trace spans all hops).
pub const TRACE_HEADERS: &[&str] = &[
    "traceparent",
    "tracestate",
    "baggage",
    "x-request-id",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "b3",
];

/// The whole configuration of one test app.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The service this app plays (`web`, `payment`, ...), reported in every answer.
    pub service: String,
    /// The version label (`v1`, `v2`), reported in every answer.
    pub version: String,
    /// The pod name (downward API), reported in every answer.
    pub pod: String,
    /// The pod namespace (downward API), reported in every answer.
    pub namespace: String,
    /// HTTP/1.1 + h2c + gRPC listener.
    pub http_addr: SocketAddr,
    /// Optional opaque TCP echo listener.
    pub tcp_addr: Option<SocketAddr>,
    /// Optional HTTPS listener (the same routes, over TLS).
    pub https: Option<crate::tls::HttpsSettings>,
    /// Requests whose path starts with a prefix are answered by calling the target.
    pub forwards: Vec<Forward>,
    /// Extra request headers copied onto forwarded calls (besides [`TRACE_HEADERS`]).
    pub propagate: Vec<HeaderName>,
    /// How it misbehaves at start; changeable at run time (`/admin/behaviour`).
    pub behaviour: Behaviour,
    /// Deadline of one forwarded call.
    pub call_timeout: Duration,
    /// Paths answered with a file's content (a key set from a mounted ConfigMap, say).
    pub files: Vec<ServedFile>,
}

impl Settings {
    /// A plain echo app on `http_addr`, no forwards, well behaved.
    pub fn echo(service: &str, http_addr: SocketAddr) -> Self {
        Self {
            service: service.into(),
            version: "v1".into(),
            pod: String::new(),
            namespace: "default".into(),
            http_addr,
            tcp_addr: None,
            https: None,
            forwards: Vec::new(),
            propagate: vec![HeaderName::from_static("x-canary")],
            behaviour: Behaviour::default(),
            call_timeout: Duration::from_secs(10),
            files: Vec::new(),
        }
    }
}

/// `PREFIX=URL`: a request for `PREFIX/rest` is answered by `GET URL/rest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    pub prefix: String,
    pub target: String,
}

impl std::str::FromStr for Forward {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (prefix, target) = s
            .split_once('=')
            .ok_or_else(|| format!("forward `{s}` must be PREFIX=URL, e.g. /api=http://payment:8080/pay"))?;
        if !prefix.starts_with('/') {
            return Err(format!("forward `{s}`: the prefix must start with `/`, e.g. /api"));
        }
        if !(target.starts_with("http://")) || target.parse::<http::Uri>().is_err() {
            return Err(format!(
                "forward `{s}`: the target must be an http:// URL (plaintext: the sidecar adds mTLS), e.g. http://payment:8080/pay"
            ));
        }
        Ok(Self {
            prefix: prefix.trim_end_matches('/').to_string(),
            target: target.trim_end_matches('/').to_string(),
        })
    }
}

/// `PATH=FILE`: `GET PATH` is answered with FILE's content, read at each request (so a
/// mounted ConfigMap's updates are served), `application/json` when FILE ends in `.json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedFile {
    pub path: String,
    pub file: std::path::PathBuf,
}

impl std::str::FromStr for ServedFile {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (path, file) = s
            .split_once('=')
            .ok_or_else(|| format!("file `{s}` must be PATH=FILE, e.g. /jwks.json=/srv/keys/jwks.json"))?;
        if !path.starts_with('/') {
            return Err(format!("file `{s}`: the path must start with `/`, e.g. /jwks.json"));
        }
        if file.is_empty() {
            return Err(format!("file `{s}`: name the file to serve, e.g. /srv/keys/jwks.json"));
        }
        Ok(Self {
            path: path.to_string(),
            file: file.into(),
        })
    }
}

/// How the app misbehaves: a share of requests answered with an error
/// status (gRPC: `UNAVAILABLE`), and a delay before every answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Behaviour {
    /// The status of failed answers (e.g. 503); `None` never fails.
    #[serde(default)]
    pub fail_status: Option<u16>,
    /// The share of requests that fail, 0.0..=1.0 (default 1.0 once a status is set).
    #[serde(default)]
    pub fail_rate: Option<f64>,
    /// Delay before every answer, in milliseconds.
    #[serde(default)]
    pub delay_ms: u64,
}

impl Behaviour {
    /// Checks the values are usable, naming the field and the fix.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(status) = self.fail_status
            && !(200..=599).contains(&status)
        {
            return Err(format!(
                "failStatus {status} is not an HTTP status: use 200..=599, e.g. 503"
            ));
        }
        if let Some(rate) = self.fail_rate
            && !(0.0..=1.0).contains(&rate)
        {
            return Err(format!("failRate {rate} is not a share: use 0.0..=1.0"));
        }
        if self.delay_ms > 600_000 {
            return Err(format!(
                "delayMs {} is over 10 minutes: use at most 600000",
                self.delay_ms
            ));
        }
        Ok(())
    }

    /// Whether this request should fail, and with which status.
    pub fn roll(&self) -> Option<u16> {
        let status = self.fail_status?;
        let rate = self.fail_rate.unwrap_or(1.0);
        (fastrand::f64() < rate).then_some(status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards_parse_and_explain_mistakes() {
        let f: Forward = "/api/=http://payment:8080/pay/".parse().unwrap();
        assert_eq!(f.prefix, "/api");
        assert_eq!(f.target, "http://payment:8080/pay");
        assert!("/api".parse::<Forward>().unwrap_err().contains("PREFIX=URL"));
        assert!(
            "api=http://x"
                .parse::<Forward>()
                .unwrap_err()
                .contains("start with `/`")
        );
        assert!("/api=https://x".parse::<Forward>().unwrap_err().contains("http:// URL"));
    }

    #[test]
    fn served_files_parse_and_explain_mistakes() {
        let f: ServedFile = "/jwks.json=/srv/keys/jwks.json".parse().unwrap();
        assert_eq!(
            (f.path.as_str(), f.file.to_str()),
            ("/jwks.json", Some("/srv/keys/jwks.json"))
        );
        assert!("/jwks.json".parse::<ServedFile>().unwrap_err().contains("PATH=FILE"));
        assert!("jwks=/f".parse::<ServedFile>().unwrap_err().contains("start with `/`"));
        assert!("/jwks=".parse::<ServedFile>().unwrap_err().contains("name the file"));
    }

    #[test]
    fn behaviour_validation_names_the_field() {
        assert!(Behaviour::default().validate().is_ok());
        let bad = Behaviour {
            fail_status: Some(42),
            ..Default::default()
        };
        assert!(bad.validate().unwrap_err().contains("failStatus 42"));
        let bad = Behaviour {
            fail_status: Some(503),
            fail_rate: Some(2.0),
            ..Default::default()
        };
        assert!(bad.validate().unwrap_err().contains("failRate 2"));
    }

    #[test]
    fn roll_follows_the_rate() {
        let always = Behaviour {
            fail_status: Some(503),
            ..Default::default()
        };
        assert_eq!(always.roll(), Some(503));
        let never = Behaviour {
            fail_status: Some(503),
            fail_rate: Some(0.0),
            ..Default::default()
        };
        assert_eq!(never.roll(), None);
        assert_eq!(Behaviour::default().roll(), None);
        let half = Behaviour {
            fail_status: Some(500),
            fail_rate: Some(0.5),
            ..Default::default()
        };
        let failed = (0..2000).filter(|_| half.roll().is_some()).count();
        assert!((800..1200).contains(&failed), "{failed} of 2000 failed at rate 0.5");
    }
}
