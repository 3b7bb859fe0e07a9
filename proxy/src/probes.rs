//! The app's own probes, run by the proxy (Istio's probe rewrite).
//!
//! With STRICT mTLS the kubelet's plaintext probes to the app's port would
//! be refused by the inbound listener, so the injector rewrites each HTTP
//! or TCP probe of an app container to `GET /app-health/<container>/<kind>`
//! on the proxy's health port (never captured) and hands the originals to
//! the proxy in `TRELLIS_APP_PROBES`: a JSON object from those paths to
//! `{"httpGet": {"path", "port", "scheme", "httpHeaders"}, "timeoutSeconds"}`
//! or `{"tcpSocket": {"port"}, "timeoutSeconds"}`. The proxy runs the
//! original against the app on localhost and answers 200 or 503, as the
//! kubelet would judge it (HTTP 200–399 passes). The binary reads the
//! variable once, with its other settings ([`crate::settings`]): a malformed
//! value stops the proxy at start with the reason, as Istio's agent does.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use serde::Deserialize;

/// The environment variable the injector sets.
pub const ENV: &str = "TRELLIS_APP_PROBES";

/// What is wrong with the injector's JSON; the probe at fault named by its path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbesError {
    /// Not JSON, or not an object of probes.
    #[error("not a JSON object of probes: {0}")]
    NotAnObject(String),
    /// A key that is not a rewritten probe's path.
    #[error("key `{path}` must start with /app-health/")]
    Path { path: String },
    /// An HTTPS probe (the injector leaves those as written).
    #[error("`{path}` uses scheme {scheme}; only HTTP probes are rewritten (leave HTTPS probes unrewritten)")]
    Scheme { path: String, scheme: String },
    /// An `httpGet.path` that is not an absolute path.
    #[error("`{path}` has an invalid path `{target}`")]
    Target { path: String, target: String },
    /// A header name HTTP does not allow.
    #[error("`{path}` has an invalid header name `{name}`")]
    HeaderName { path: String, name: String },
    /// A header value HTTP does not allow.
    #[error("`{path}` has an invalid value for header `{name}`")]
    HeaderValue { path: String, name: String },
    /// Neither or both of `httpGet` and `tcpSocket`.
    #[error("`{path}` must have exactly one of httpGet or tcpSocket")]
    Kind { path: String },
}

/// One original probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppProbe {
    Http {
        port: u16,
        path: String,
        headers: Vec<(http::HeaderName, http::HeaderValue)>,
        timeout: Duration,
    },
    Tcp {
        port: u16,
        timeout: Duration,
    },
}

/// All of a pod's rewritten probes, by path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppProbes {
    by_path: BTreeMap<String, AppProbe>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawProbe {
    #[serde(default)]
    http_get: Option<RawHttpGet>,
    #[serde(default)]
    tcp_socket: Option<RawTcp>,
    #[serde(default = "one")]
    timeout_seconds: u64,
}

fn one() -> u64 {
    1
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawHttpGet {
    #[serde(default)]
    path: Option<String>,
    port: u16,
    #[serde(default)]
    scheme: Option<String>,
    #[serde(default)]
    http_headers: Vec<RawHeader>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeader {
    name: String,
    value: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTcp {
    port: u16,
}

impl AppProbes {
    /// Parses the injector's JSON, naming the probe and field at fault.
    pub fn parse(json: &str) -> Result<Self, ProbesError> {
        let raw: BTreeMap<String, RawProbe> =
            serde_json::from_str(json).map_err(|e| ProbesError::NotAnObject(e.to_string()))?;
        let mut by_path = BTreeMap::new();
        for (path, probe) in raw {
            if !path.starts_with("/app-health/") {
                return Err(ProbesError::Path { path });
            }
            let timeout = Duration::from_secs(probe.timeout_seconds.clamp(1, 60));
            let parsed = match (probe.http_get, probe.tcp_socket) {
                (Some(get), None) => {
                    if let Some(scheme) = get.scheme.as_deref()
                        && !scheme.eq_ignore_ascii_case("HTTP")
                    {
                        return Err(ProbesError::Scheme {
                            scheme: scheme.to_string(),
                            path,
                        });
                    }
                    let target = get.path.unwrap_or_else(|| "/".into());
                    if !target.starts_with('/') || target.parse::<http::uri::PathAndQuery>().is_err() {
                        return Err(ProbesError::Target { path, target });
                    }
                    let headers = get
                        .http_headers
                        .into_iter()
                        .map(|h| {
                            let name =
                                http::HeaderName::try_from(h.name.as_str()).map_err(|_| ProbesError::HeaderName {
                                    path: path.clone(),
                                    name: h.name.clone(),
                                })?;
                            let value = http::HeaderValue::try_from(h.value.as_str()).map_err(|_| {
                                ProbesError::HeaderValue {
                                    path: path.clone(),
                                    name: h.name.clone(),
                                }
                            })?;
                            Ok((name, value))
                        })
                        .collect::<Result<_, ProbesError>>()?;
                    AppProbe::Http {
                        port: get.port,
                        path: target,
                        headers,
                        timeout,
                    }
                }
                (None, Some(tcp)) => AppProbe::Tcp {
                    port: tcp.port,
                    timeout,
                },
                _ => return Err(ProbesError::Kind { path }),
            };
            by_path.insert(path, parsed);
        }
        Ok(Self { by_path })
    }

    /// Whether `path` is a rewritten probe of this pod.
    pub fn get(&self, path: &str) -> Option<&AppProbe> {
        self.by_path.get(path)
    }
}

/// Answers `GET /app-health/...` on the health port from the pod's probes.
pub async fn answer(probes: &AppProbes, path: &str) -> (StatusCode, String) {
    match probes.get(path) {
        None => (StatusCode::NOT_FOUND, format!("no app probe is registered at {path}\n")),
        Some(probe) => match run(probe).await {
            Ok(()) => (StatusCode::OK, "ok\n".into()),
            Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
        },
    }
}

/// Runs one probe against the app on localhost.
pub async fn run(probe: &AppProbe) -> Result<(), String> {
    match probe {
        AppProbe::Tcp { port, timeout } => {
            tokio::time::timeout(*timeout, tokio::net::TcpStream::connect(("127.0.0.1", *port)))
                .await
                .map_err(|_| format!("tcp probe to port {port}: no connection within {timeout:?}"))?
                .map(|_| ())
                .map_err(|e| format!("tcp probe to port {port}: {e}"))
        }
        AppProbe::Http {
            port,
            path,
            headers,
            timeout,
        } => tokio::time::timeout(*timeout, http_get(*port, path, headers))
            .await
            .map_err(|_| format!("http probe GET {path} on port {port}: no answer within {timeout:?}"))?,
    }
}

async fn http_get(port: u16, path: &str, headers: &[(http::HeaderName, http::HeaderValue)]) -> Result<(), String> {
    let what = || format!("http probe GET {path} on port {port}");
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("{}: {e}", what()))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| format!("{}: {e}", what()))?;
    tokio::spawn(conn);
    let mut request = Request::get(path)
        .header(http::header::HOST, format!("127.0.0.1:{port}"))
        .header(http::header::USER_AGENT, "kube-probe/trellis")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("{}: {e}", what()))?;
    for (name, value) in headers {
        request.headers_mut().insert(name.clone(), value.clone());
    }
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("{}: {e}", what()))?;
    let status = response.status();
    if (200..400).contains(&status.as_u16()) {
        Ok(())
    } else {
        Err(format!("{}: status {status}", what()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_injectors_json_and_explains_bad_input() {
        let probes = AppProbes::parse(
            r#"{"/app-health/web/readyz":{"httpGet":{"path":"/healthz","port":8080,"scheme":"HTTP","httpHeaders":[{"name":"x-probe","value":"1"}]},"timeoutSeconds":2},
                "/app-health/web/livez":{"tcpSocket":{"port":8080}}}"#,
        )
        .unwrap();
        assert_eq!(
            probes.get("/app-health/web/livez"),
            Some(&AppProbe::Tcp {
                port: 8080,
                timeout: Duration::from_secs(1)
            })
        );
        match probes.get("/app-health/web/readyz").unwrap() {
            AppProbe::Http {
                port,
                path,
                headers,
                timeout,
            } => {
                assert_eq!(
                    (*port, path.as_str(), *timeout),
                    (8080, "/healthz", Duration::from_secs(2))
                );
                assert_eq!(headers.len(), 1);
            }
            other => panic!("{other:?}"),
        }
        let error = |json: &str| AppProbes::parse(json).unwrap_err().to_string();
        assert!(error("[]").contains("JSON object"));
        assert!(error(r#"{"/x":{"tcpSocket":{"port":1}}}"#).contains("/app-health/"));
        assert!(error(r#"{"/app-health/a/readyz":{"httpGet":{"port":1,"scheme":"HTTPS"}}}"#).contains("HTTPS"));
        assert!(error(r#"{"/app-health/a/readyz":{}}"#).contains("exactly one"));
    }

    #[tokio::test]
    async fn runs_http_and_tcp_probes_against_localhost() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                        let status = if req.uri().path() == "/healthz" && req.headers().contains_key("x-probe") {
                            200
                        } else {
                            500
                        };
                        Ok::<_, std::convert::Infallible>(
                            http::Response::builder()
                                .status(status)
                                .body(Empty::<Bytes>::new())
                                .unwrap(),
                        )
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        let header = vec![(
            http::HeaderName::from_static("x-probe"),
            http::HeaderValue::from_static("1"),
        )];
        let ok = AppProbe::Http {
            port,
            path: "/healthz".into(),
            headers: header.clone(),
            timeout: Duration::from_secs(1),
        };
        assert_eq!(run(&ok).await, Ok(()));
        let failing = AppProbe::Http {
            port,
            path: "/other".into(),
            headers: header,
            timeout: Duration::from_secs(1),
        };
        assert!(run(&failing).await.unwrap_err().contains("status 500"));
        assert_eq!(
            run(&AppProbe::Tcp {
                port,
                timeout: Duration::from_secs(1)
            })
            .await,
            Ok(())
        );
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        assert!(
            run(&AppProbe::Tcp {
                port: closed,
                timeout: Duration::from_secs(1)
            })
            .await
            .unwrap_err()
            .contains("tcp probe")
        );
    }
}
