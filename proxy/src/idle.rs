//! Idle timeouts. [`IdleIo`]: a connection with no bytes read or written for
//! its timeout fails its next read with `TimedOut`, which closes it (opaque TCP
//! and upgraded streams: `limits.tcpIdleTimeoutMs` / `limits.streamIdleTimeoutMs`).
//! A downstream HTTP connection's waits — for each request head, and between
//! requests, the admin API's too — are [`crate::downstream_waits`]'.
//! [`StreamActivity`] and [`IdleBody`]: one HTTP stream's last activity in either
//! direction, and a body that fails when the stream has been idle for
//! `limits.streamIdleTimeoutMs`. [`ConnTimer`]: the timer a downstream connection
//! lends to the request it carries while that request waits for its response.

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// The last time bytes moved on one HTTP stream, in either direction.
#[derive(Debug)]
pub struct StreamActivity {
    start: Instant,
    /// Milliseconds after `start` of the last activity.
    last_ms: AtomicU64,
}

impl Default for StreamActivity {
    fn default() -> Self {
        Self {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }
}

impl StreamActivity {
    /// Record activity now.
    pub fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// When the stream times out if nothing moves before.
    pub fn deadline(&self, timeout: Duration) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed)) + timeout
    }

    /// Wait until the stream has been idle for `timeout` (for ever when `None`).
    pub async fn idle(&self, timeout: Option<Duration>) {
        let Some(t) = timeout else {
            return std::future::pending().await;
        };
        loop {
            let due = self.deadline(t);
            if due <= Instant::now() {
                return;
            }
            tokio::time::sleep_until(due).await;
        }
    }
}

/// The error an idle stream's body fails with.
#[derive(Debug, thiserror::Error)]
#[error("stream idle timeout: no bytes in either direction for {0:?}")]
pub struct StreamIdle(pub Duration);

/// A body that records activity on its stream's [`StreamActivity`] (when the
/// stream's other direction shares one) or on its own clock, and, with a
/// timeout, fails with [`StreamIdle`] once the stream has been idle that long.
/// The timer is only allocated the first time the body waits for data.
pub struct IdleBody<B> {
    inner: B,
    activity: Option<std::sync::Arc<StreamActivity>>,
    /// Last activity when no [`StreamActivity`] is shared.
    last: Instant,
    timeout: Option<Duration>,
    timer: Option<Pin<Box<Sleep>>>,
}

impl<B> std::fmt::Debug for IdleBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdleBody")
            .field("activity", &self.activity)
            .field("last", &self.last)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl<B> IdleBody<B> {
    /// Wrap `inner`; its creation counts as activity. `activity` is shared
    /// with the stream's other direction (`None`: this body's own clock);
    /// `timeout` of `None` only records activity.
    pub fn new(inner: B, activity: Option<std::sync::Arc<StreamActivity>>, timeout: Option<Duration>) -> Self {
        if let Some(a) = &activity {
            a.touch();
        }
        Self {
            inner,
            activity,
            last: Instant::now(),
            timeout: timeout.filter(|t| !t.is_zero()),
            timer: None,
        }
    }

    fn touch(&mut self) {
        match &self.activity {
            Some(a) => a.touch(),
            // Nobody else reads the clock: only keep it when it matters.
            None if self.timeout.is_some() => self.last = Instant::now(),
            None => {}
        }
    }

    fn deadline(&self, timeout: Duration) -> Instant {
        match &self.activity {
            Some(a) => a.deadline(timeout),
            None => self.last + timeout,
        }
    }
}

impl<B> Body for IdleBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(r) => {
                this.touch();
                Poll::Ready(r.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let Some(t) = this.timeout else { return Poll::Pending };
                loop {
                    let due = this.deadline(t);
                    if due <= Instant::now() {
                        return Poll::Ready(Some(Err(Box::new(StreamIdle(t)))));
                    }
                    let timer = this
                        .timer
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
                    if timer.deadline() != due {
                        timer.as_mut().reset(due);
                    }
                    if timer.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The timer of one downstream connection, lent to one wait at a time: a request's wait for
/// its response head (the stream idle timeout, or the route's timeout when nearer:
/// [`ConnTimer::within`]), one request after another. why: a timer made for each wait is put
/// into tokio's timer wheel and taken out again, under the timer driver's lock, every time; a
/// kept one is only moved, and moving it later — the next wait's deadline — takes no lock at
/// all. A wait that finds it lent (HTTP/2 streams waiting at once) uses a timer of its own.
/// Clones share the one timer.
#[derive(Debug, Clone, Default)]
pub struct ConnTimer {
    slot: std::sync::Arc<std::sync::Mutex<Lendable>>,
}

#[derive(Debug, Default)]
enum Lendable {
    /// No wait has needed it yet.
    #[default]
    Unmade,
    /// Made, and free to lend.
    Free(Pin<Box<Sleep>>),
    /// A wait holds it.
    Lent,
}

impl ConnTimer {
    /// A deadline at `at`, on this timer when it is free once the deadline is first waited for.
    pub fn deadline(&self, at: Instant) -> Deadline {
        Deadline {
            timer: self.clone(),
            at,
            sleep: None,
            lent: false,
        }
    }

    /// `fut`'s output, or `None` when `at` passes first.
    pub async fn within<F: Future>(&self, at: Instant, fut: F) -> Option<F::Output> {
        let mut fut = std::pin::pin!(fut);
        let mut deadline = self.deadline(at);
        std::future::poll_fn(|cx| {
            if let Poll::Ready(v) = fut.as_mut().poll(cx) {
                return Poll::Ready(Some(v));
            }
            Pin::new(&mut deadline).poll(cx).map(|()| None)
        })
        .await
    }

    /// The timer set for `at` (`None`: lent out).
    fn lend(&self, at: Instant) -> Option<Pin<Box<Sleep>>> {
        let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
        let mut sleep = match std::mem::replace(&mut *slot, Lendable::Lent) {
            Lendable::Unmade => return Some(Box::pin(tokio::time::sleep_until(at))),
            Lendable::Free(sleep) => sleep,
            Lendable::Lent => return None,
        };
        if sleep.deadline() != at {
            sleep.as_mut().reset(at);
        }
        Some(sleep)
    }

    fn give_back(&self, sleep: Pin<Box<Sleep>>) {
        *self.slot.lock().unwrap_or_else(|e| e.into_inner()) = Lendable::Free(sleep);
    }
}

/// A deadline ([`ConnTimer::deadline`]): ready once it has passed.
#[derive(Debug)]
pub struct Deadline {
    timer: ConnTimer,
    at: Instant,
    /// Taken when first waited for.
    sleep: Option<Pin<Box<Sleep>>>,
    /// Whether `sleep` is the connection's (given back on drop).
    lent: bool,
}

impl Future for Deadline {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let sleep = match &mut this.sleep {
            Some(sleep) => sleep,
            unset => {
                let lent = this.timer.lend(this.at);
                this.lent = lent.is_some();
                unset.insert(lent.unwrap_or_else(|| Box::pin(tokio::time::sleep_until(this.at))))
            }
        };
        loop {
            match sleep.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(()) if Instant::now() >= this.at => return Poll::Ready(()),
                // Fired for an earlier deadline than this one (not as set; kept safe).
                Poll::Ready(()) => sleep.as_mut().reset(this.at),
            }
        }
    }
}

impl Drop for Deadline {
    fn drop(&mut self) {
        if let (Some(sleep), true) = (self.sleep.take(), self.lent) {
            self.timer.give_back(sleep);
        }
    }
}

/// The deadlines of an I/O stream ([`TimedIo`]): told of the bytes it moves, asked while it
/// waits to read.
pub trait Deadlines<S> {
    /// After a read that brought `n` bytes (`inner` as the read left it).
    fn read(&mut self, inner: &S, n: usize);
    /// After a write that took bytes.
    fn wrote(&mut self) {}
    /// While the stream waits to read: the deadline that has passed, or `None` (the waker then
    /// registered for the next one).
    fn expired(&mut self, cx: &mut Context<'_>) -> Option<&'static str>;
}

/// An I/O stream whose next read fails with `TimedOut` once one of its [`Deadlines`] has
/// passed, which closes it.
#[derive(Debug)]
pub struct TimedIo<S, D> {
    inner: S,
    deadlines: D,
}

impl<S, D: Deadlines<S>> TimedIo<S, D> {
    /// `inner` under `deadlines`.
    pub fn wrap(inner: S, deadlines: D) -> Self {
        Self { inner, deadlines }
    }
}

impl<S: AsyncRead + Unpin, D: Deadlines<S> + Unpin> AsyncRead for TimedIo<S, D> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                let n = buf.filled().len() - before;
                if n > 0 {
                    this.deadlines.read(&this.inner, n);
                }
                Poll::Ready(r)
            }
            Poll::Pending => match this.deadlines.expired(cx) {
                Some(why) => Poll::Ready(Err(std::io::Error::new(std::io::ErrorKind::TimedOut, why))),
                None => Poll::Pending,
            },
        }
    }
}

impl<S: AsyncWrite + Unpin, D: Deadlines<S> + Unpin> AsyncWrite for TimedIo<S, D> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.deadlines.wrote();
        }
        r
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// An I/O stream with an idle timeout (`None` disables it) ([`IdleClock`]).
pub type IdleIo<S> = TimedIo<S, IdleClock>;

/// The deadlines of an [`IdleIo`].
#[derive(Debug)]
pub struct IdleClock {
    timeout: Option<Duration>,
    /// Last read or write; the timer is only re-armed when it fires, so busy
    /// connections do not touch the timer wheel on every I/O.
    last_activity: Instant,
    deadline: Pin<Box<Sleep>>,
}

impl<S> IdleIo<S> {
    /// Wrap `inner`; `timeout` of `None` or zero disables the check.
    pub fn new(inner: S, timeout: Option<Duration>) -> Self {
        let timeout = timeout.filter(|t| !t.is_zero());
        let first = timeout.unwrap_or(Duration::from_secs(86_400));
        let clock = IdleClock {
            timeout,
            last_activity: Instant::now(),
            deadline: Box::pin(tokio::time::sleep(first)),
        };
        Self::wrap(inner, clock)
    }
}

impl IdleClock {
    fn touch(&mut self) {
        if self.timeout.is_some() {
            self.last_activity = Instant::now();
        }
    }

    /// When the connection times out if nothing more happens.
    fn due(&self) -> Option<Instant> {
        self.timeout.map(|t| self.last_activity + t)
    }
}

impl<S> Deadlines<S> for IdleClock {
    fn read(&mut self, _: &S, _: usize) {
        self.touch();
    }

    fn wrote(&mut self) {
        self.touch();
    }

    /// Re-arms the timer for the nearer deadline when it fired early.
    fn expired(&mut self, cx: &mut Context<'_>) -> Option<&'static str> {
        while self.deadline.as_mut().poll(cx).is_ready() {
            let due = self.due()?;
            if due <= Instant::now() {
                return Some("downstream connection idle timeout");
            }
            self.deadline.as_mut().reset(due);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lent_sleep(timer: &ConnTimer) -> Option<*const Sleep> {
        match &*timer.slot.lock().unwrap() {
            Lendable::Free(sleep) => Some(&**sleep as *const Sleep),
            _ => None,
        }
    }

    #[tokio::test]
    async fn a_connections_timer_serves_one_request_after_another() {
        let timer = ConnTimer::default();
        let start = Instant::now();
        let waited = timer.within(start + Duration::from_millis(50), std::future::pending::<()>());
        assert_eq!(waited.await, None);
        assert!(start.elapsed() >= Duration::from_millis(50), "{:?}", start.elapsed());
        let first = lent_sleep(&timer).expect("the timer is back with its connection");

        // A later deadline, and an answer before it.
        let answered = timer.within(Instant::now() + Duration::from_secs(5), async { 7 }).await;
        assert_eq!(answered, Some(7));
        // An earlier deadline than the one the timer was last set for.
        let again = Instant::now();
        let waited = timer.within(again + Duration::from_millis(30), std::future::pending::<()>());
        assert_eq!(waited.await, None);
        let took = again.elapsed();
        assert!(
            took >= Duration::from_millis(30) && took < Duration::from_secs(2),
            "{took:?}"
        );
        assert_eq!(lent_sleep(&timer), Some(first), "the same timer, reused");
    }

    #[tokio::test]
    async fn requests_waiting_at_once_each_keep_their_deadline() {
        let timer = ConnTimer::default();
        let start = Instant::now();
        let long = async {
            let r = timer
                .within(start + Duration::from_millis(300), std::future::pending::<()>())
                .await;
            (r, start.elapsed())
        };
        let short = async {
            // Started second: the connection's timer is lent to the first.
            tokio::task::yield_now().await;
            let r = timer
                .within(start + Duration::from_millis(50), std::future::pending::<()>())
                .await;
            (r, start.elapsed())
        };
        let ((long, long_took), (short, short_took)) = tokio::join!(long, short);
        assert_eq!((long, short), (None, None));
        assert!(
            short_took >= Duration::from_millis(50) && short_took < Duration::from_millis(300),
            "{short_took:?}"
        );
        assert!(long_took >= Duration::from_millis(300), "{long_took:?}");
        assert!(lent_sleep(&timer).is_some(), "back with its connection");
    }
}
