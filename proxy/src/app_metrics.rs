//! The app's own Prometheus metrics, merged into the proxy's (Istio's
//! "metrics merging"): the sidecar injector points the pod's
//! `prometheus.io/*` annotations at the proxy's stats port and hands the
//! app's original ones to the proxy as JSON (`{"scrape":…,"path":…,"port":…}`,
//! Istio's shape, in `TRELLIS_PROMETHEUS_ANNOTATIONS`). On each scrape of
//! `/stats/prometheus` (or `/metrics`) the proxy fetches the app's metrics on
//! localhost and serves them after its own, so one scrape gets both and the
//! app's port needs no exception from STRICT mTLS.
//!
//! As in Istio: the app's metrics come last (an OpenMetrics answer ends with
//! `# EOF`) and set the answer's content type; a failing app never costs the
//! proxy's own metrics (the failure is counted in
//! `trellis_proxy_app_scrape_failures_total` and logged); Prometheus' scrape
//! timeout header bounds the fetch. Bounded: the app's answer is cut off at
//! [`MAX_BYTES`].

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use serde::Deserialize;

/// Largest app metrics answer merged.
pub const MAX_BYTES: usize = 16 << 20;
/// The fetch's bound when Prometheus sends no scrape timeout.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the app serves its metrics (on localhost).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppMetrics {
    /// Port on localhost.
    pub port: u16,
    /// Path, with its leading `/`.
    pub path: String,
}

/// A bad `TRELLIS_PROMETHEUS_ANNOTATIONS`.
#[derive(Debug, thiserror::Error)]
pub enum AppMetricsError {
    /// Not Istio's JSON shape.
    #[error("TRELLIS_PROMETHEUS_ANNOTATIONS is not {{\"scrape\":…,\"path\":…,\"port\":…}} JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// Not a port.
    #[error(
        "TRELLIS_PROMETHEUS_ANNOTATIONS: port {0:?} is not a port number (the pod's prometheus.io/port annotation)"
    )]
    Port(String),
    /// The proxy's own port: scraping it would loop.
    #[error(
        "TRELLIS_PROMETHEUS_ANNOTATIONS: port {0} is the proxy's own stats port, which would scrape itself; remove the pod's prometheus.io/port={0} annotation or the sidecar's environment entry"
    )]
    Loop(u16),
}

#[derive(Debug, Deserialize)]
struct Annotations {
    #[serde(default)]
    scrape: String,
    #[serde(default)]
    path: String,
    #[serde(default)]
    port: String,
}

impl AppMetrics {
    /// Reads the app's annotations; `None` when the app asked not to be
    /// scraped (`scrape: "false"`). Port 80 and path `/metrics` when left
    /// out, as Istio reads them. `stats_port` is the proxy's own.
    pub fn from_annotations(json: &str, stats_port: u16) -> Result<Option<Self>, AppMetricsError> {
        let a: Annotations = serde_json::from_str(json)?;
        if a.scrape == "false" {
            return Ok(None);
        }
        let port = if a.port.is_empty() {
            80
        } else {
            a.port
                .trim()
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or(AppMetricsError::Port(a.port.clone()))?
        };
        if port == stats_port {
            return Err(AppMetricsError::Loop(port));
        }
        let path = match a.path.trim() {
            "" => "/metrics".to_string(),
            p if p.starts_with('/') => p.to_string(),
            p => format!("/{p}"),
        };
        Ok(Some(Self { port, path }))
    }

    /// Fetches the app's metrics: its content type and body. `accept` and
    /// `timeout` come from Prometheus' scrape request.
    pub async fn scrape(
        &self,
        accept: Option<&http::HeaderValue>,
        timeout: Option<Duration>,
    ) -> Result<(Option<http::HeaderValue>, Bytes), String> {
        let timeout = timeout.unwrap_or(DEFAULT_TIMEOUT);
        let fetch = async {
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .map_err(|e| format!("connecting to the app on port {}: {e}", self.port))?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            let mut req = http::Request::get(self.path.as_str())
                .header(http::header::HOST, format!("127.0.0.1:{}", self.port))
                .body(Empty::<Bytes>::new())
                .map_err(|e| e.to_string())?;
            if let Some(a) = accept {
                req.headers_mut().insert(http::header::ACCEPT, a.clone());
            }
            let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
            if !resp.status().is_success() {
                return Err(format!("the app answered {} on {}", resp.status(), self.path));
            }
            let content_type = resp.headers().get(http::header::CONTENT_TYPE).cloned();
            let body = Limited::new(resp.into_body(), MAX_BYTES)
                .collect()
                .await
                .map_err(|e| format!("reading the app's metrics (at most {MAX_BYTES} bytes): {e}"))?
                .to_bytes();
            Ok((content_type, body))
        };
        tokio::time::timeout(timeout, fetch)
            .await
            .map_err(|_| format!("the app's metrics took longer than {timeout:?}"))?
    }
}

/// Prometheus' scrape timeout header (seconds, e.g. `9.5`).
pub fn scrape_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    headers
        .get("x-prometheus-scrape-timeout-seconds")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .map(Duration::from_secs_f64)
}

/// The content type of a merged answer: the app's when it is OpenMetrics
/// (its `# EOF` ends the whole answer), else Prometheus' text format.
pub fn merged_content_type(app: Option<&http::HeaderValue>) -> http::HeaderValue {
    match app {
        Some(ct) if ct.as_bytes().starts_with(b"application/openmetrics-text") => ct.clone(),
        _ => http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotations_are_read_as_istio_reads_them() {
        let m = AppMetrics::from_annotations(r#"{"scrape":"true","path":"","port":"9090"}"#, 15020)
            .unwrap()
            .unwrap();
        assert_eq!((m.port, m.path.as_str()), (9090, "/metrics"));
        let m = AppMetrics::from_annotations(r#"{"scrape":"true","path":"stats","port":""}"#, 15020)
            .unwrap()
            .unwrap();
        assert_eq!((m.port, m.path.as_str()), (80, "/stats"));
        assert!(
            AppMetrics::from_annotations(r#"{"scrape":"false","port":"9090"}"#, 15020)
                .unwrap()
                .is_none()
        );
        let loops = AppMetrics::from_annotations(r#"{"port":"15020"}"#, 15020).unwrap_err();
        assert!(loops.to_string().contains("scrape itself"), "{loops}");
        assert!(matches!(
            AppMetrics::from_annotations(r#"{"port":"http"}"#, 15020),
            Err(AppMetricsError::Port(_))
        ));
        assert!(matches!(
            AppMetrics::from_annotations("port=9090", 15020),
            Err(AppMetricsError::Json(_))
        ));
    }

    #[test]
    fn timeouts_and_content_types() {
        let mut h = http::HeaderMap::new();
        assert_eq!(scrape_timeout(&h), None);
        h.insert(
            "x-prometheus-scrape-timeout-seconds",
            http::HeaderValue::from_static("1.5"),
        );
        assert_eq!(scrape_timeout(&h), Some(Duration::from_millis(1500)));
        let om = http::HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8");
        assert_eq!(merged_content_type(Some(&om)), om);
        assert_eq!(
            merged_content_type(Some(&http::HeaderValue::from_static("text/plain"))),
            "text/plain; version=0.0.4; charset=utf-8"
        );
        assert_eq!(merged_content_type(None), "text/plain; version=0.0.4; charset=utf-8");
    }
}
