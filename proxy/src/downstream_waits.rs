//! The two waits of a downstream HTTP connection, bounded as Envoy's HTTP connection manager
//! bounds them (and Istio keeps): a request head must arrive whole within
//! `limits.headerReadTimeoutMs` of its first byte (Envoy's `request_headers_timeout`; the first
//! request's from the start of the connection, so one that sends nothing is closed like one
//! whose head is slow), and a connection with no request in flight is closed after
//! `limits.idleTimeoutMs` (Envoy's `idle_timeout`): HTTP/1 between requests on a kept-alive
//! connection, HTTP/2 with no stream open — keepalive PINGs are no request.
//!
//! [`Waits`] are the deadlines of an [`HttpConnIo`]; the framing guard it wraps
//! ([`GuardedIo`]) says where request heads begin and end, and [`Requests`] counts the requests in flight: each from the
//! moment hyper hands it over until its response body ends, an upgraded stream or `CONNECT`
//! tunnel until it closes ([`InRequest`]). A request in flight has bounds of its own (the route
//! timeout, the stream idle timeout), so the connection's are not applied meanwhile.
//!
//! A connection idle for its timeout is shut down gracefully first: its server, told by
//! [`Requests::idle_timed_out`], calls hyper's `graceful_shutdown` (HTTP/1 closed, HTTP/2 sent
//! GOAWAY). why: an idle HTTP/2 connection merely closed is a reset to a client that raced a
//! request against the close; GOAWAY tells it the request was not taken, to be sent again on a
//! new connection. Its next read fails only if it is still open a tick later.

use crate::head::GuardedIo;
use crate::idle::{Deadlines, TimedIo};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::Context;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

/// The requests in flight on one downstream connection.
#[derive(Debug)]
pub struct Requests {
    start: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds after `start` when the last request ended.
    ended_ms: AtomicU64,
    /// Told when the idle timeout has passed: time to shut the connection down.
    idle: Notify,
}

impl Requests {
    /// None in flight yet: the connection is idle from now.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            start: Instant::now(),
            in_flight: AtomicUsize::new(0),
            ended_ms: AtomicU64::new(0),
            idle: Notify::new(),
        })
    }

    /// Ready once the connection has been idle for its timeout (told by its [`Waits`]).
    pub async fn idle_timed_out(&self) {
        self.idle.notified().await;
    }

    /// A request in flight until the guard is dropped.
    pub fn begin(self: &Arc<Self>) -> InRequest {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InRequest(Arc::clone(self))
    }

    /// Since when no request has been in flight (`None`: one is).
    fn idle_since(&self) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        Some(self.start + Duration::from_millis(self.ended_ms.load(Ordering::Relaxed)))
    }
}

/// One request in flight on its connection ([`Requests::begin`]).
#[derive(Debug)]
pub struct InRequest(Arc<Requests>);

impl Drop for InRequest {
    fn drop(&mut self) {
        let r = &self.0;
        let ms = u64::try_from(r.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        r.ended_ms.fetch_max(ms, Ordering::Relaxed);
        // Release: whoever sees no request in flight sees when the last one ended.
        r.in_flight.fetch_sub(1, Ordering::Release);
    }
}

/// Why a downstream connection was closed by its [`Waits`].
const HEAD_TIMED_OUT: &str = "request head not received within the header read timeout";
const IDLE: &str = "downstream connection idle timeout: no request in flight";

/// A downstream HTTP connection's I/O under its head and idle deadlines ([`Waits`]): once one
/// has passed, the next read fails with `TimedOut`, which closes the connection (hyper answers
/// nothing: there is no request to answer).
pub type HttpConnIo<S> = TimedIo<GuardedIo<S>, Waits>;

/// The deadlines of an [`HttpConnIo`].
#[derive(Debug)]
pub struct Waits {
    requests: Arc<Requests>,
    head_timeout: Option<Duration>,
    idle_timeout: Option<Duration>,
    /// When the head being read began (the connection's start for the first); `None` between
    /// heads.
    head_since: Option<Instant>,
    /// Heads the framing guard had seen end at the last read.
    heads: u64,
    /// The furthest ahead the timer is set: the shorter timeout. why: a head that begins, or a
    /// last request that ends, is then caught in time by the timer as it stands, which is only
    /// moved when it fires — never for each request or read (moving a timer earlier takes the
    /// timer driver's lock).
    tick: Duration,
    /// The idle timeout has passed and the connection was told to shut down.
    told_idle: bool,
    timer: Pin<Box<Sleep>>,
}

impl<S> HttpConnIo<S> {
    /// Deadlines for `inner` from now; a zero timeout disables its deadline.
    pub fn new(inner: GuardedIo<S>, requests: Arc<Requests>, head_timeout: Duration, idle_timeout: Duration) -> Self {
        let head_timeout = (!head_timeout.is_zero()).then_some(head_timeout);
        let idle_timeout = (!idle_timeout.is_zero()).then_some(idle_timeout);
        let tick = match (head_timeout, idle_timeout) {
            (Some(h), Some(i)) => h.min(i),
            (h, i) => h.or(i).unwrap_or(Duration::from_secs(86_400)),
        };
        let now = Instant::now();
        let waits = Waits {
            heads: inner.heads().0,
            requests,
            head_timeout,
            idle_timeout,
            head_since: Some(now),
            tick,
            told_idle: false,
            timer: Box::pin(tokio::time::sleep_until(now + tick)),
        };
        Self::wrap(inner, waits)
    }
}

impl Waits {
    /// When the connection is closed if nothing changes, and why.
    fn due(&self) -> Option<(Instant, &'static str)> {
        let idle_since = self.requests.idle_since()?;
        match (self.head_since, self.head_timeout) {
            (Some(since), Some(t)) => Some((since + t, HEAD_TIMED_OUT)),
            // Between heads, or no head deadline at all (the idle one bounds a head then).
            _ => self.idle_timeout.map(|t| (idle_since + t, IDLE)),
        }
    }
}

impl<S> Deadlines<GuardedIo<S>> for Waits {
    /// Follows the heads: one that ended stops its deadline, one that began starts its own.
    fn read(&mut self, inner: &GuardedIo<S>, _: usize) {
        let (ended, in_head) = inner.heads();
        if ended != self.heads {
            self.heads = ended;
            self.head_since = in_head.then(Instant::now);
        } else if in_head && self.head_since.is_none() {
            self.head_since = Some(Instant::now());
        }
    }

    /// Re-arms the timer (registering the waker) when it fired early.
    fn expired(&mut self, cx: &mut Context<'_>) -> Option<&'static str> {
        while self.timer.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            let next = match self.due() {
                // why: shut down gracefully first (HTTP/2: GOAWAY), then cut if still open.
                Some((at, IDLE)) if at <= now && !self.told_idle => {
                    self.told_idle = true;
                    self.requests.idle.notify_one();
                    now + self.tick
                }
                Some((at, why)) if at <= now => return Some(why),
                Some((at, _)) => at.min(now + self.tick),
                None => now + self.tick,
            };
            self.timer.as_mut().reset(next);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn idle_from_the_end_of_the_last_request_in_flight() {
        let requests = Requests::new();
        let start = requests.idle_since().expect("idle from the start");
        let (a, b) = (requests.begin(), requests.begin());
        assert_eq!(requests.idle_since(), None);
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(a);
        assert_eq!(requests.idle_since(), None, "one still in flight");
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(b);
        let since = requests.idle_since().expect("none in flight");
        assert!(since >= start + Duration::from_millis(40), "{:?}", since - start);
    }
}
