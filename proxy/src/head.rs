//! HTTP/1 framing guard: hyper is lenient where an edge proxy must not be
//! (it accepts bare-LF line endings and silently resolves Content-Length plus
//! Transfer-Encoding in favour of chunked), so the raw bytes of each request
//! head are checked here before hyper parses them. The [`Scanner`] follows
//! message framing (Content-Length and chunked bodies) to find every head on
//! a keep-alive connection; [`GuardedIo`] feeds it what the connection reads.
//! A verdict names the request (its sequence number on the connection); the
//! request handler answers that request with 400 and closes the connection.
//! A request asking for an upgrade (an `Upgrade` header, `CONNECT`) does not end
//! the guard: its framing is followed as any other's until the handler says the
//! connection really switched protocols ([`Verdicts::switched`]: a 101 sent, a
//! `CONNECT` tunnel established), since an upgrade answered otherwise leaves the
//! connection HTTP/1, kept alive for the next request.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Why a request head is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// Both framing headers: a request-smuggling vector.
    #[error("both Content-Length and Transfer-Encoding")]
    ContentLengthAndTransferEncoding,
    /// A line ended in LF without CR.
    #[error("bare LF line ending in request head")]
    BareLf,
    /// Several Transfer-Encoding headers, or one not ending in chunked.
    #[error("invalid Transfer-Encoding")]
    BadTransferEncoding,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Head,
    Body(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkCrlf(u8),
    Trailers,
    /// Not HTTP/1 framing any more (HTTP/2, a protocol switched to, or after a verdict).
    Opaque,
}

/// Bound on buffered head/line bytes; beyond it hyper's own limits apply.
const MAX_LINE_BUFFER: usize = 128 * 1024;

/// Incremental HTTP/1 request framing scanner.
#[derive(Debug)]
pub struct Scanner {
    state: State,
    buf: Vec<u8>,
    seq: u64,
    /// A head asked for an upgrade: whether the connection switched is to be asked
    /// ([`Verdicts::switched`]) at each read from then on.
    upgrade_asked: bool,
}

impl Default for Scanner {
    fn default() -> Self {
        Self::new()
    }
}

impl Scanner {
    /// A scanner at the start of a connection.
    pub fn new() -> Self {
        Self {
            state: State::Head,
            buf: Vec::new(),
            seq: 0,
            upgrade_asked: false,
        }
    }

    /// How many request heads have ended so far, and whether the next one has begun (some of
    /// its bytes read, not yet its blank line). Empty lines before a head do not begin it; once
    /// the connection is no HTTP/1 any more (HTTP/2, a protocol switched to) no head begins.
    pub fn heads(&self) -> (u64, bool) {
        (self.seq, self.state == State::Head && !self.buf.is_empty())
    }

    /// The connection switched protocols (a 101 sent, a `CONNECT` tunnel established): what
    /// follows is no HTTP/1 any more.
    pub fn switched(&mut self) {
        self.state = State::Opaque;
        self.buf = Vec::new();
    }

    /// Feed bytes read from the client; returns verdicts `(request seq, error)`. Bytes after a
    /// head asking for an upgrade are followed as HTTP/1 until [`Scanner::switched`]: a verdict
    /// found in bytes that turn out to be the switched-to protocol's names a request that is
    /// never made.
    pub fn feed(&mut self, mut data: &[u8]) -> Vec<(u64, HeadError)> {
        let mut verdicts = Vec::new();
        while !data.is_empty() {
            match self.state.clone() {
                State::Opaque => return verdicts,
                State::Head => {
                    // Empty lines before a request line are tolerated (RFC 9112 §2.2).
                    if self.buf.is_empty() && (data[0] == b'\r' || data[0] == b'\n') {
                        data = &data[1..];
                        continue;
                    }
                    // why: a head that arrives in one read (nearly all) is checked where it
                    // lies, in the pass that finds its end; a split one is put together in
                    // `buf`, kept for reuse, and checked once its end has come.
                    let found = match self.buf.is_empty() {
                        true => scan_head(data),
                        false => None,
                    };
                    let (used, done) = match &found {
                        Some((used, _)) => (*used, true),
                        None if self.buf.is_empty() => (data.len(), false),
                        None => head_end(&self.buf, data),
                    };
                    let (taken, rest) = data.split_at(used);
                    data = rest;
                    if self.buf.len() + used > MAX_LINE_BUFFER {
                        self.buf = Vec::new();
                        self.state = State::Opaque;
                        continue;
                    }
                    if !done {
                        self.buf.extend_from_slice(taken);
                        continue;
                    }
                    let checked = match found {
                        Some((_, checked)) => checked,
                        None => {
                            self.buf.extend_from_slice(taken);
                            let checked =
                                scan_head(&self.buf).map_or(Ok((State::Opaque, false)), |(_, checked)| checked);
                            self.buf.clear();
                            checked
                        }
                    };
                    let seq = self.seq;
                    self.seq += 1;
                    match checked {
                        Ok((next, upgrade)) => {
                            self.state = next;
                            self.upgrade_asked |= upgrade;
                        }
                        Err(e) => {
                            verdicts.push((seq, e));
                            self.state = State::Opaque;
                        }
                    }
                }
                State::Body(n) => {
                    let k = (n as usize).min(data.len());
                    data = &data[k..];
                    let left = n - k as u64;
                    self.state = if left == 0 { State::Head } else { State::Body(left) };
                }
                State::ChunkSize => {
                    let (used, line) = take_line(&mut self.buf, data);
                    data = &data[used..];
                    if self.buf.len() > 1024 {
                        self.state = State::Opaque;
                        continue;
                    }
                    if let Some(line) = line {
                        let size_part = line.split(|b| *b == b';').next().unwrap_or(&[]);
                        let size = std::str::from_utf8(size_part)
                            .ok()
                            .map(str::trim)
                            .and_then(|s| u64::from_str_radix(s, 16).ok());
                        self.state = match size {
                            Some(0) => State::Trailers,
                            Some(n) => State::ChunkData(n),
                            // Invalid framing: hyper rejects it; stop following.
                            None => State::Opaque,
                        };
                    }
                }
                State::ChunkData(n) => {
                    let k = (n as usize).min(data.len());
                    data = &data[k..];
                    let left = n - k as u64;
                    self.state = if left == 0 {
                        State::ChunkCrlf(0)
                    } else {
                        State::ChunkData(left)
                    };
                }
                State::ChunkCrlf(seen) => {
                    let expected = if seen == 0 { b'\r' } else { b'\n' };
                    if data[0] != expected {
                        self.state = State::Opaque;
                        continue;
                    }
                    data = &data[1..];
                    self.state = if seen == 0 {
                        State::ChunkCrlf(1)
                    } else {
                        State::ChunkSize
                    };
                }
                State::Trailers => {
                    let (used, line) = take_line(&mut self.buf, data);
                    data = &data[used..];
                    if self.buf.len() > MAX_LINE_BUFFER {
                        self.state = State::Opaque;
                        continue;
                    }
                    if let Some(line) = line
                        && line.is_empty()
                    {
                        self.state = State::Head;
                    }
                }
            }
        }
        verdicts
    }
}

/// How much of `data` belongs to the head begun in `before`: `(bytes up to and including the
/// blank line that ends it, true)`, or `(all of data, false)` while it goes on. A head ends at
/// an LF preceded by LF or by CR LF.
fn head_end(before: &[u8], data: &[u8]) -> (usize, bool) {
    // The byte `back` places before data[i], looking into `before` at the start of data.
    let byte_before = |i: usize, back: usize| match i.checked_sub(back) {
        Some(j) => Some(data[j]),
        None => before.len().checked_sub(back - i).map(|j| before[j]),
    };
    for i in memchr::memchr_iter(b'\n', data) {
        let blank = match byte_before(i, 1) {
            Some(b'\n') => true,
            Some(b'\r') => byte_before(i, 2) == Some(b'\n'),
            _ => false,
        };
        if blank {
            return (i + 1, true);
        }
    }
    (data.len(), false)
}

/// Take one line (without its CRLF/LF) once complete.
fn take_line(buf: &mut Vec<u8>, data: &[u8]) -> (usize, Option<Vec<u8>>) {
    for (i, b) in data.iter().enumerate() {
        if *b == b'\n' {
            let mut line = std::mem::take(buf);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            return (i + 1, Some(line));
        }
        buf.push(*b);
    }
    (data.len(), None)
}

/// A head's verdict: how the body that follows is framed and whether it asks for an upgrade,
/// or why it is refused.
type Checked = Result<(State, bool), HeadError>;

/// The HTTP/2 connection preface's first line: not HTTP/1 framing.
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

/// The head that starts `data`, in one pass over its lines: `Some((its length up to and
/// including the blank line that ends it, how its body is framed and whether it asks for an
/// upgrade, or why it is refused))`, or
/// `None` while it goes on past `data`. A head ends at an LF preceded by LF or by CR LF, as
/// [`head_end`] finds it; a bare LF refuses it, once it has ended (so the verdict is the same
/// however the head was split across reads).
///
/// why: the lines are found with memchr (the LFs) and each line's name is compared with the
/// framing headers' as bytes (their lengths differ from most names'), with no UTF-8 decoding:
/// finding the end, looking for bare LFs, splitting the lines and decoding each as a string,
/// pass after pass, cost about 9k instructions for the head of a mesh request (trace, request
/// id and peer metadata headers) on the inbound proxy.
fn scan_head(data: &[u8]) -> Option<(usize, Checked)> {
    let mut framing = Framing::default();
    let mut bare_lf = false;
    let mut start = 0;
    for lf in memchr::memchr_iter(b'\n', data) {
        let raw = &data[start..lf];
        let line = raw.strip_suffix(b"\r").unwrap_or_else(|| {
            bare_lf = true;
            raw
        });
        if line.is_empty() {
            let checked = if data.starts_with(HTTP2_PREFACE) {
                Ok((State::Opaque, false))
            } else if bare_lf {
                Err(HeadError::BareLf)
            } else {
                framing.verdict().map(|next| (next, framing.upgrade))
            };
            return Some((lf + 1, checked));
        }
        match (start, bare_lf) {
            (_, true) => {}
            (0, false) => framing.request_line(line),
            (_, false) => framing.header(line),
        }
        start = lf + 1;
    }
    None
}

/// What a request head's request line and framing headers say about its body.
#[derive(Debug, Default)]
struct Framing {
    /// A `CONNECT` request or an `Upgrade` header: the bytes after the head are not HTTP/1 if
    /// the upgrade is granted.
    upgrade: bool,
    /// The last Content-Length header's value (`Some(None)`: there, but not a number).
    content_length: Option<Option<u64>>,
    /// Transfer-Encoding headers seen.
    transfer_encodings: u32,
    /// How often `chunked` appears in them, in any case.
    chunked: usize,
    /// Whether the last coding of the last one is `chunked`.
    ends_chunked: bool,
}

impl Framing {
    fn request_line(&mut self, line: &[u8]) {
        let method = line.split(|b| *b == b' ').next().unwrap_or_default();
        self.upgrade |= method == b"CONNECT";
    }

    fn header(&mut self, line: &[u8]) {
        let Some(colon) = memchr::memchr(b':', line) else {
            return;
        };
        let name = line[..colon].trim_ascii();
        let value = line[colon + 1..].trim_ascii();
        if name.eq_ignore_ascii_case(b"content-length") {
            self.content_length = Some(std::str::from_utf8(value).ok().and_then(|v| v.parse().ok()));
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            self.transfer_encodings += 1;
            self.chunked += value.windows(7).filter(|w| w.eq_ignore_ascii_case(b"chunked")).count();
            let last = value.rsplit(|b| *b == b',').next().unwrap_or_default().trim_ascii();
            self.ends_chunked = last.eq_ignore_ascii_case(b"chunked");
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            self.upgrade = true;
        }
    }

    /// How the body that follows is framed, or why the head is refused. An upgrade's body too:
    /// hyper reads it so when the upgrade is not granted.
    fn verdict(&self) -> Result<State, HeadError> {
        let te = self.transfer_encodings > 0;
        if self.content_length.is_some() && te {
            return Err(HeadError::ContentLengthAndTransferEncoding);
        }
        if te {
            if !self.ends_chunked || self.chunked > 1 {
                return Err(HeadError::BadTransferEncoding);
            }
            return Ok(State::ChunkSize);
        }
        Ok(match self.content_length {
            None | Some(Some(0)) => State::Head,
            Some(Some(n)) => State::Body(n),
            // An unparsable Content-Length is rejected by hyper.
            Some(None) => State::Opaque,
        })
    }
}

/// Verdicts shared between the guarded connection and its request handler.
#[derive(Debug, Default)]
pub struct Verdicts {
    bad: Mutex<VecDeque<(u64, HeadError)>>,
    next_request: Mutex<u64>,
    /// The handler switched the connection to another protocol.
    switched: AtomicBool,
}

impl Verdicts {
    /// Called once per request, in order: the verdict for this request, if any.
    pub fn next_request(&self) -> Option<HeadError> {
        let mut n = self.next_request.lock().expect("verdict lock");
        let seq = *n;
        *n += 1;
        let bad = self.bad.lock().expect("verdict lock");
        bad.iter().find(|(s, _)| *s == seq).map(|(_, e)| *e)
    }

    /// The handler answered an upgrade with 101, or a `CONNECT` with 2xx: the connection
    /// switches protocols once that answer is sent, and its bytes are no HTTP/1 any more.
    /// Told before the answer is written, so the guard stops before the first byte of the
    /// switched-to protocol is read (which the client sends only after the answer).
    pub fn switched(&self) {
        self.switched.store(true, Ordering::Release);
    }
}

/// A connection whose reads are scanned by a [`Scanner`].
#[derive(Debug)]
pub struct GuardedIo<S> {
    inner: S,
    scanner: Scanner,
    verdicts: Arc<Verdicts>,
}

impl<S> GuardedIo<S> {
    /// Wrap a connection; the handler reads verdicts from `verdicts`.
    pub fn new(inner: S, verdicts: Arc<Verdicts>) -> Self {
        Self {
            inner,
            scanner: Scanner::new(),
            verdicts,
        }
    }
}

impl<S> GuardedIo<S> {
    /// [`Scanner::heads`] of what the connection has read so far.
    pub fn heads(&self) -> (u64, bool) {
        self.scanner.heads()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for GuardedIo<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        // why: asked only once a head has asked for an upgrade, not at every read.
        if this.scanner.upgrade_asked && this.verdicts.switched.load(Ordering::Acquire) {
            this.scanner.upgrade_asked = false;
            this.scanner.switched();
        }
        if let Poll::Ready(Ok(())) = &r
            && this.scanner.state != State::Opaque
        {
            let found = this.scanner.feed(&buf.filled()[before..]);
            if !found.is_empty() {
                this.verdicts.bad.lock().expect("verdict lock").extend(found);
            }
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for GuardedIo<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
