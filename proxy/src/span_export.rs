//! The span exporter: drains the runtime's [`crate::spans::SpanSink`] in
//! batches and sends them to the configured collector as OTLP/HTTP JSON
//! (`POST /v1/traces`), over plain HTTP or TLS (`https://`: the collector's
//! certificate verified against `collectorCa` or the system's roots, and its
//! name against the host). The collector is read from the configuration in
//! force at each flush.

use crate::runtime::Runtime;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// Spans per export request, at most.
const BATCH: usize = 512;
/// Export at least this often when spans are waiting.
const FLUSH_EVERY: Duration = Duration::from_millis(500);
/// Give up on a collector request after this long.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// Run the exporter until the runtime is gone. The collector endpoint and
/// service name are read from the configuration at each flush.
pub async fn export_loop(rt: Weak<Runtime>) {
    let Some(mut rx) = rt.upgrade().and_then(|r| r.spans.take_queue()) else {
        return;
    };
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let first = rx.recv().await;
        let Some(first) = first else { return };
        batch.push(first);
        let deadline = tokio::time::Instant::now() + FLUSH_EVERY;
        while batch.len() < BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(s)) => batch.push(s),
                Ok(None) => return,
                Err(_) => break,
            }
        }
        let Some(rt) = rt.upgrade() else { return };
        let snap = rt.snapshot();
        let tracing_cfg = snap.config.telemetry.tracing.clone();
        let tls = snap.collector_tls.clone();
        let n = batch.len() as u64;
        match tracing_cfg.and_then(|t| t.otlp_endpoint.map(|e| (e, t.service_name))) {
            Some((endpoint, service)) => {
                let service = service.unwrap_or_else(|| {
                    if snap.config.node.workload.is_empty() {
                        "trellis-proxy".to_string()
                    } else {
                        snap.config.node.workload.clone()
                    }
                });
                let body = crate::spans::otlp_json(&service, &batch).to_string();
                match tokio::time::timeout(EXPORT_TIMEOUT, post(&endpoint, tls, body)).await {
                    Ok(Ok(())) => {
                        rt.spans.count_exported(n);
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(%endpoint, error = %e, "span export failed");
                        rt.spans.count_dropped(n);
                    }
                    Err(_) => {
                        tracing::debug!(%endpoint, "span export timed out");
                        rt.spans.count_dropped(n);
                    }
                }
            }
            None => {
                rt.spans.count_dropped(n);
            }
        }
        batch.clear();
    }
}

/// POST one batch; `tls` is the snapshot's collector TLS (for `https://`).
async fn post(endpoint: &str, tls: Option<Arc<rustls::ClientConfig>>, body: String) -> Result<(), String> {
    let uri: http::Uri = format!("{}/v1/traces", endpoint.trim_end_matches('/'))
        .parse()
        .map_err(|e| format!("bad endpoint: {e}"))?;
    let authority = uri.authority().ok_or("endpoint has no host")?.clone();
    let (tls, default_port) = match (uri.scheme_str(), tls) {
        (Some("http"), _) => (None, 80),
        (Some("https"), Some(cfg)) => (Some(cfg), 443),
        (Some("https"), None) => return Err("no TLS settings for the https:// collector".into()),
        (other, _) => {
            return Err(format!(
                "unsupported collector scheme {other:?}; use http:// or https://"
            ));
        }
    };
    let port = authority.port_u16().unwrap_or(default_port);
    let tcp = tokio::net::TcpStream::connect((authority.host(), port))
        .await
        .map_err(|e| e.to_string())?;
    let stream = match tls {
        None => crate::stream::MaybeTls::Plain(tcp),
        Some(cfg) => {
            // The collector's certificate must name the endpoint's host.
            let name = rustls::pki_types::ServerName::try_from(authority.host().trim_matches(['[', ']']).to_string())
                .map_err(|e| format!("collector host {:?}: {e}", authority.host()))?;
            let tls = tokio_rustls::TlsConnector::from(cfg)
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS to the collector failed: {e}"))?;
            crate::stream::MaybeTls::Tls(Box::new(tls))
        }
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = http::Request::post(uri.path())
        .header(http::header::HOST, authority.as_str())
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let _ = resp.into_body().collect().await;
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("collector answered {status}"))
    }
}

/// Start the exporter for a runtime; it ends when the runtime is dropped.
pub fn spawn(rt: &Arc<Runtime>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(export_loop(Arc::downgrade(rt)))
}
