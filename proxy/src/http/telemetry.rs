//! Telemetry of one request: what the pipeline found out about it (flags,
//! cluster, endpoint, span, route), its Istio metric labels, and the metrics
//! recorded when its response body ends.

use super::ConnContext;
use crate::metrics::{ConnLabels, Peer, RequestLabels};
use crate::runtime::Runtime;
use crate::snapshot::Snapshot;
use crate::upstream::{Body, BoxError, ClusterRuntime};
use bytes::Bytes;
use http::StatusCode;
use hyper::body::{Frame, SizeHint};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;
use trellis_contract::{ListenerDirection, SpiffeId, UpstreamTls};

/// Per-request outcome details for metrics and logs.
pub(super) struct RequestOutcome {
    pub(super) flags: &'static str,
    pub(super) cluster: Option<Arc<ClusterRuntime>>,
    pub(super) endpoint: Option<usize>,
    pub(super) span: Option<crate::trace::SpanContext>,
    pub(super) route: Option<Arc<crate::routing::CompiledRoute>>,
}

pub(super) fn labels(
    snap: &Snapshot,
    conn: &ConnContext,
    out: &RequestOutcome,
    source_meta: Option<Peer>,
    status: StatusCode,
    grpc: bool,
) -> RequestLabels {
    let (reporter, source, destination, security) = match conn.direction {
        ListenerDirection::Inbound => {
            let source = source_meta.unwrap_or_else(|| {
                let principal = conn.peer_identity.clone().unwrap_or_default();
                let namespace = SpiffeId::parse(&principal)
                    .ok()
                    .and_then(|id| id.namespace().map(str::to_string))
                    .unwrap_or_default();
                Peer {
                    principal,
                    namespace,
                    ..Default::default()
                }
            });
            (
                "destination",
                Arc::new(source),
                Arc::clone(&snap.node),
                if conn.peer_identity.is_some() {
                    "mutual_tls"
                } else {
                    "none"
                },
            )
        }
        _ => (
            "source",
            Arc::clone(&snap.node),
            out.cluster
                .as_ref()
                .zip(out.endpoint)
                .and_then(|(c, i)| c.endpoints.get(i))
                .map(|e| Arc::clone(&e.peer))
                .unwrap_or_default(),
            match out.cluster.as_ref().map(|c| &c.spec.tls) {
                Some(UpstreamTls::Mesh { .. }) => "mutual_tls",
                _ => "none",
            },
        ),
    };
    RequestLabels {
        conn: ConnLabels {
            reporter,
            source,
            destination,
            destination_service: out
                .cluster
                .as_ref()
                .map(|c| Arc::clone(&c.service_label))
                .unwrap_or_default(),
            connection_security_policy: security,
        },
        request_protocol: if grpc { "grpc" } else { "http" },
        response_code: status.as_u16(),
        response_flags: out.flags,
    }
}

/// A request's metrics, recorded once its response body ends.
pub(super) struct Pending {
    pub(super) rt: Arc<Runtime>,
    pub(super) labels: RequestLabels,
    pub(super) start: Instant,
    pub(super) req_bytes: u64,
}

impl Pending {
    fn record(self, resp_bytes: u64) {
        let ms = self.start.elapsed().as_secs_f64() * 1000.0;
        self.rt
            .metrics
            .record_request(self.labels, ms, self.req_bytes, resp_bytes);
    }
}

/// A response body that counts bytes and reports when it ends or is dropped.
pub(super) struct ObservedBody {
    pub(super) inner: Body,
    pub(super) bytes: u64,
    pub(super) done: Option<Pending>,
}

impl hyper::body::Body for ObservedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.bytes += d.len() as u64;
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => {
                if let Some(done) = this.done.take() {
                    done.record(this.bytes);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ObservedBody {
    fn drop(&mut self) {
        if let Some(done) = self.done.take() {
            done.record(self.bytes);
        }
    }
}
