//! Telemetry of one request: what the pipeline found out about it (flags,
//! cluster, endpoint, span, route), its Istio metric labels, its span, and
//! the metrics recorded when its response body ends.

use super::ConnContext;
use crate::metrics::{Peer, RequestLabels};
use crate::runtime::Runtime;
use crate::snapshot::Snapshot;
use crate::upstream::{Body, BoxError, ClusterRuntime};
use bytes::Bytes;
use http::{Response, StatusCode};
use hyper::body::{Frame, SizeHint};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};
use trellis_contract::ListenerDirection;

/// Per-request outcome details for metrics and logs.
pub(super) struct RequestOutcome {
    pub(super) flags: &'static str,
    pub(super) cluster: Option<Arc<ClusterRuntime>>,
    pub(super) endpoint: Option<usize>,
    pub(super) span: Option<crate::trace::SpanContext>,
    pub(super) route: Option<Arc<crate::routing::CompiledRoute>>,
}

/// The Istio labels of a request ([`crate::labels`]), from what the pipeline
/// found out and the response head (a trailers-only gRPC answer, and the
/// proxy's own, carry `grpc-status` there; trailers amend it later:
/// [`ObservedBody`]).
pub(super) fn labels(
    snap: &Snapshot,
    conn: &ConnContext,
    out: &RequestOutcome,
    source_meta: Option<Arc<Peer>>,
    resp: &Response<Body>,
    grpc: bool,
) -> RequestLabels {
    let seen = crate::labels::Observed {
        direction: conn.direction,
        peer_identity: conn.peer_identity.as_deref(),
        cluster: out.cluster.as_deref(),
        endpoint: out.endpoint,
        flags: out.flags,
    };
    let grpc_status = grpc.then(|| crate::labels::grpc_status(resp.headers())).flatten();
    crate::labels::request(snap, &seen, source_meta, resp.status(), grpc, grpc_status)
}

/// Records the span of a sampled request hop ([`crate::spans::finish`]),
/// with the attributes its metric labels carry.
pub(super) fn record_span(
    rt: &Runtime,
    conn: &ConnContext,
    out: &mut RequestOutcome,
    facts: &crate::spans::RequestFacts,
    labels: &RequestLabels,
    status: StatusCode,
    started_at: Option<SystemTime>,
) {
    let Some(ctx) = out.span.take().filter(|c| c.sampled) else {
        return;
    };
    let hop = crate::spans::Hop {
        server: conn.direction == ListenerDirection::Inbound,
        client: conn.peer,
        tls: conn.tls,
        upstream: out
            .cluster
            .as_ref()
            .zip(out.endpoint)
            .and_then(|(c, i)| c.endpoints.get(i))
            .map(|e| e.addr),
        cluster: out.cluster.as_ref().map(|c| c.spec.name.as_str()),
        route: out.route.as_ref().map(|r| r.name.as_str()),
        status: status.as_u16(),
    };
    let started = started_at.unwrap_or_else(SystemTime::now);
    rt.spans.record(crate::spans::finish(ctx, facts, &hop, labels, started));
}

/// A request's metrics, recorded once its response body ends.
pub(super) struct Pending {
    pub(super) rt: Arc<Runtime>,
    /// The connection, whose last series the request's likely shares.
    pub(super) conn: Arc<ConnContext>,
    pub(super) labels: RequestLabels,
    pub(super) start: Instant,
    pub(super) req_bytes: u64,
    /// In flight on its connection until then.
    pub(super) _request: crate::downstream_waits::InRequest,
}

impl Pending {
    fn record(self, resp_bytes: u64) {
        let ms = self.start.elapsed().as_secs_f64() * 1000.0;
        self.rt
            .metrics
            .record_request_on(&self.conn.request_series, self.labels, ms, self.req_bytes, resp_bytes);
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
                } else if let (Some(trailers), Some(done)) = (frame.trailers_ref(), this.done.as_mut())
                    && done.labels.grpc
                    && let Some(status) = crate::labels::grpc_status(trailers)
                {
                    done.labels.grpc_status = Some(status);
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
