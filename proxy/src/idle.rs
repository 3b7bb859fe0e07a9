//! Downstream idle timeout: a connection with no bytes read or written for
//! `limits.idleTimeoutMs` fails its next read with `TimedOut`, which closes it.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// An I/O wrapper enforcing an idle timeout (`None` disables it).
#[derive(Debug)]
pub struct IdleIo<S> {
    inner: S,
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
        Self {
            inner,
            timeout,
            last_activity: Instant::now(),
            deadline: Box::pin(tokio::time::sleep(first)),
        }
    }

    fn touch(&mut self) {
        if self.timeout.is_some() {
            self.last_activity = Instant::now();
        }
    }

    /// True when the connection has been idle for the whole timeout; re-arms
    /// the timer (registering the waker) otherwise.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(t) = self.timeout else { return false };
        while self.deadline.as_mut().poll(cx).is_ready() {
            let due = self.last_activity + t;
            if due <= Instant::now() {
                return true;
            }
            self.deadline.as_mut().reset(due);
        }
        false
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for IdleIo<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                this.touch();
                Poll::Ready(r)
            }
            Poll::Pending => {
                if this.expired(cx) {
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "downstream connection idle timeout",
                    )));
                }
                Poll::Pending
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for IdleIo<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.touch();
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
