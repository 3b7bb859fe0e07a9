//! The request body on its way from the client to the upstream, and whose
//! fault it is when it breaks. A body streamed upstream can fail on the
//! client's side — malformed chunked encoding, more bytes than
//! `maxRequestBodyBytes`, a client that hangs up or resets its stream — and the
//! upstream request then fails too. [`ClientBody`] records how the body ended
//! so the request path answers such a failure as the client's (400, 413, or
//! nothing to a client that is gone) and never counts it against the
//! endpoint's health: otherwise any client could get healthy endpoints ejected.
//! [`DrainOnDrop`]: an HTTP/2 body left unread (answered early) is read to its end.

mod drain;

pub use drain::DrainOnDrop;

use bytes::Bytes;
use http::StatusCode;
use hyper::body::{Body, Frame, SizeHint};
use std::error::Error as StdError;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};

/// Why the client's request body could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientFault {
    /// Invalid framing (chunk sizes, chunk endings): 400.
    Malformed,
    /// More bytes than the listener's `maxRequestBodyBytes`: 413.
    TooLarge,
    /// The client closed or reset the stream before the body ended, or let
    /// its connection go idle.
    Gone,
}

impl ClientFault {
    /// Classify an error from reading the request body (any layer: hyper's
    /// decoder, the length limit, the idle timeout).
    pub fn of(error: &(dyn StdError + 'static)) -> Self {
        let mut cause = Some(error);
        while let Some(e) = cause {
            if e.is::<http_body_util::LengthLimitError>() {
                return Self::TooLarge;
            }
            if let Some(io) = e.downcast_ref::<std::io::Error>()
                && matches!(
                    io.kind(),
                    std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput
                )
            {
                return Self::Malformed;
            }
            if e.downcast_ref::<hyper::Error>().is_some_and(hyper::Error::is_parse) {
                return Self::Malformed;
            }
            cause = e.source();
        }
        Self::Gone
    }

    /// The status answered to the client.
    pub fn status(self) -> StatusCode {
        match self {
            Self::Malformed | Self::Gone => StatusCode::BAD_REQUEST,
            Self::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        }
    }

    /// The response flag: a downstream protocol error, or Envoy's `DC`
    /// (downstream connection termination).
    pub fn flag(self) -> &'static str {
        match self {
            Self::Malformed | Self::TooLarge => "DPE",
            Self::Gone => "DC",
        }
    }

    /// The response body.
    pub fn message(self) -> &'static str {
        match self {
            Self::Malformed => "malformed request body\n",
            Self::TooLarge => "request body too large\n",
            Self::Gone => "the client closed the request before its body ended\n",
        }
    }
}

/// How far a streamed request body got, shared by the body (writer) and the
/// request path (reader).
#[derive(Debug, Default)]
pub struct BodyProgress(AtomicU8);

const STREAMING: u8 = 0;
const COMPLETE: u8 = 1;
const MALFORMED: u8 = 2;
const TOO_LARGE: u8 = 3;
const GONE: u8 = 4;

impl BodyProgress {
    /// The client's fault, if reading the body failed.
    pub fn fault(&self) -> Option<ClientFault> {
        match self.0.load(Ordering::Acquire) {
            MALFORMED => Some(ClientFault::Malformed),
            TOO_LARGE => Some(ClientFault::TooLarge),
            GONE => Some(ClientFault::Gone),
            _ => None,
        }
    }

    /// Has the whole body been read from the client?
    pub fn is_complete(&self) -> bool {
        self.0.load(Ordering::Acquire) == COMPLETE
    }

    fn set(&self, state: u8) {
        // The first ending wins: a body ends once.
        let _ = self
            .0
            .compare_exchange(STREAMING, state, Ordering::AcqRel, Ordering::Acquire);
    }
}

/// A request body that reports its ending — complete, or the client's fault —
/// to a shared [`BodyProgress`].
#[derive(Debug)]
pub struct ClientBody<B> {
    inner: B,
    progress: Arc<BodyProgress>,
}

impl<B> ClientBody<B> {
    /// Wrap `inner`, reporting to `progress`.
    pub fn new(inner: B, progress: Arc<BodyProgress>) -> Self {
        Self { inner, progress }
    }
}

impl<B> Body for ClientBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn StdError + Send + Sync>;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if this.inner.is_end_stream() {
                    this.progress.set(COMPLETE);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                let e: Self::Error = e.into();
                this.progress.set(match ClientFault::of(&*e) {
                    ClientFault::Malformed => MALFORMED,
                    ClientFault::TooLarge => TOO_LARGE,
                    ClientFault::Gone => GONE,
                });
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                this.progress.set(COMPLETE);
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full, Limited, StreamBody};

    type Boxed = Box<dyn StdError + Send + Sync>;

    fn read(body: impl Body<Data = Bytes, Error = Boxed> + Unpin) -> (Result<Bytes, Boxed>, Arc<BodyProgress>) {
        let progress = Arc::new(BodyProgress::default());
        let body = ClientBody::new(body, Arc::clone(&progress));
        let r = futures::executor::block_on(body.collect()).map(|c| c.to_bytes());
        (r, progress)
    }

    fn stream(frames: Vec<Result<&'static [u8], std::io::Error>>) -> impl Body<Data = Bytes, Error = Boxed> + Unpin {
        StreamBody::new(futures::stream::iter(frames.into_iter().map(|f| {
            f.map(|b| Frame::data(Bytes::from_static(b)))
                .map_err(|e| Box::new(e) as Boxed)
        })))
    }

    #[test]
    fn a_complete_body_is_no_fault() {
        let (r, progress) = read(stream(vec![Ok(b"ab"), Ok(b"cd")]));
        assert_eq!(r.unwrap(), "abcd");
        assert!(progress.is_complete());
        assert_eq!(progress.fault(), None);
    }

    #[test]
    fn a_body_over_the_limit_is_too_large() {
        let limited = Limited::new(Full::new(Bytes::from_static(b"0123456789")), 4);
        let (r, progress) = read(limited);
        assert!(r.is_err());
        assert_eq!(progress.fault(), Some(ClientFault::TooLarge));
        assert_eq!(ClientFault::TooLarge.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[test]
    fn bad_framing_is_malformed_and_a_cut_body_is_gone() {
        let bad = std::io::Error::new(std::io::ErrorKind::InvalidInput, "invalid chunk size line");
        let (_, progress) = read(stream(vec![Ok(b"ab"), Err(bad)]));
        assert_eq!(progress.fault(), Some(ClientFault::Malformed));
        assert!(!progress.is_complete());
        let eof = std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "unexpected EOF during chunk size line",
        );
        let (_, progress) = read(stream(vec![Ok(b"ab"), Err(eof)]));
        assert_eq!(progress.fault(), Some(ClientFault::Gone));
        assert_eq!(ClientFault::Gone.flag(), "DC");
    }

    #[test]
    fn the_first_ending_wins() {
        let progress = BodyProgress::default();
        progress.set(GONE);
        progress.set(COMPLETE);
        assert_eq!(progress.fault(), Some(ClientFault::Gone));
    }
}
