//! An HTTP/2 request body left unread — the upstream answered before the body ended, as a
//! server may (RFC 9113 §8.1), or the proxy answered itself (a redirect, a direct response, a
//! denial) — is read to its end and discarded instead of abandoned. Every request body the
//! proxy's HTTP server hands on is wrapped (`server.rs`), so whatever answers, it holds.
//!
//! why: abandoned, the body's stream is reset (`RST_STREAM(NO_ERROR)`), and the client's DATA
//! frames still in flight then arrive on a stream the HTTP/2 library has forgotten once more
//! than 50 resets are that recent; it answers each with a `STREAM_CLOSED` reset of its own,
//! which counts towards the connection's bound on locally caused resets (the defence against
//! "MadeYouReset", `limits` in `server.rs`) — and at the bound the whole connection is closed
//! with `GOAWAY(ENHANCE_YOUR_CALM)`, failing every other request on it (503s between two
//! sidecars when an app answers uploads early under load). Read to its end, the stream closes
//! as any other does. The read is bounded ([`DRAIN_BYTES`], [`DRAIN_TIME`]); past either the
//! body is dropped and reset as before.

use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

/// At most this much of an abandoned body is read (the default HTTP/2 stream window: what a
/// client may have sent before it hears of the early answer).
pub const DRAIN_BYTES: usize = 64 * 1024;

/// For at most this long.
pub const DRAIN_TIME: Duration = Duration::from_secs(1);

/// A client's request body that, dropped before its end, is drained on a task of its own when
/// it came over HTTP/2. (An HTTP/1 body left unread is hyper's: it reads the rest or closes the
/// connection, which no other request shares.)
#[derive(Debug)]
pub struct DrainOnDrop {
    inner: Option<Incoming>,
    http2: bool,
}

impl DrainOnDrop {
    /// Wrap a request's body; `http2`: the request came over HTTP/2.
    pub fn new(inner: Incoming, http2: bool) -> Self {
        Self {
            inner: Some(inner),
            http2,
        }
    }
}

impl Body for DrainOnDrop {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match self.inner.as_mut() {
            Some(b) => Pin::new(b).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.as_ref().map(Body::size_hint).unwrap_or_default()
    }
}

impl Drop for DrainOnDrop {
    fn drop(&mut self) {
        let Some(body) = self.inner.take() else { return };
        if !self.http2 || body.is_end_stream() {
            return;
        }
        // Outside a runtime (never on the request path) the body is simply dropped.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(drain(body));
        }
    }
}

/// Read `body` to its end, an error, [`DRAIN_BYTES`] or [`DRAIN_TIME`], whichever comes first.
async fn drain(mut body: Incoming) {
    let read = async {
        let mut bytes = 0usize;
        while let Some(Ok(frame)) = body.frame().await {
            bytes += frame.data_ref().map_or(0, |d| d.len());
            if bytes > DRAIN_BYTES {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME, read).await;
}
