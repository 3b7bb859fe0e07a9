//! HTTP/1 framing guard: hyper is lenient where an edge proxy must not be
//! (it accepts bare-LF line endings and silently resolves Content-Length plus
//! Transfer-Encoding in favour of chunked), so the raw bytes of each request
//! head are checked here before hyper parses them. The [`Scanner`] follows
//! message framing (Content-Length and chunked bodies) to find every head on
//! a keep-alive connection; [`GuardedIo`] feeds it what the connection reads.
//! A verdict names the request (its sequence number on the connection); the
//! request handler answers that request with 400 and closes the connection.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::pin::Pin;
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
    /// Not HTTP/1 framing any more (HTTP/2, upgrade, or after a verdict).
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
        }
    }

    /// How many request heads have ended so far, and whether the next one has begun (some of
    /// its bytes read, not yet its blank line). Empty lines before a head do not begin it; once
    /// the connection is no HTTP/1 any more (HTTP/2, an upgrade) no head begins.
    pub fn heads(&self) -> (u64, bool) {
        (self.seq, self.state == State::Head && !self.buf.is_empty())
    }

    /// Feed bytes read from the client; returns verdicts `(request seq, error)`.
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
                    let (used, done) = head_end(&self.buf, data);
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
                    // why: a head that arrives in one read (nearly all) is checked where it
                    // lies, not copied; a split one is put together in `buf`, kept for reuse.
                    let checked = match self.buf.is_empty() {
                        true => check_head(taken),
                        false => {
                            self.buf.extend_from_slice(taken);
                            let checked = check_head(&self.buf);
                            self.buf.clear();
                            checked
                        }
                    };
                    let seq = self.seq;
                    self.seq += 1;
                    match checked {
                        Ok(next) => self.state = next,
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
    for (i, b) in data.iter().enumerate() {
        if *b != b'\n' {
            continue;
        }
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

/// Check one complete head and decide how its body is framed.
fn check_head(head: &[u8]) -> Result<State, HeadError> {
    if head.starts_with(b"PRI * HTTP/2.0") {
        return Ok(State::Opaque);
    }
    for (i, b) in head.iter().enumerate() {
        if *b == b'\n' && (i == 0 || head[i - 1] != b'\r') {
            return Err(HeadError::BareLf);
        }
    }
    // The lines between the LFs (each one, checked above, ends a CRLF), decoded one at a time:
    // for the ASCII nearly every head is that costs a check, where decoding the whole head
    // and searching it for CRLFs cost about 4k instructions for a mesh request's head.
    let mut lines = head.split(|b| *b == b'\n').map(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        match std::str::from_utf8(line) {
            Ok(text) => Cow::Borrowed(text),
            Err(_) => String::from_utf8_lossy(line),
        }
    });
    let request_line = lines.next().unwrap_or_default();
    let method = request_line.split(' ').next().unwrap_or("");
    let mut content_length: Option<u64> = None;
    let mut has_cl = false;
    let mut te: Vec<String> = Vec::new();
    let mut upgrade = method == "CONNECT";
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim();
        if name.eq_ignore_ascii_case("content-length") {
            has_cl = true;
            content_length = value.trim().parse().ok();
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            te.push(value.trim().to_ascii_lowercase());
        } else if name.eq_ignore_ascii_case("upgrade") {
            upgrade = true;
        }
    }
    if has_cl && !te.is_empty() {
        return Err(HeadError::ContentLengthAndTransferEncoding);
    }
    if upgrade {
        return Ok(State::Opaque);
    }
    if !te.is_empty() {
        let joined = te.join(",");
        let last = joined.rsplit(',').next().unwrap_or("").trim();
        if last != "chunked" || joined.matches("chunked").count() > 1 {
            return Err(HeadError::BadTransferEncoding);
        }
        return Ok(State::ChunkSize);
    }
    Ok(match content_length {
        Some(0) => State::Head,
        Some(n) => State::Body(n),
        // An unparsable Content-Length is rejected by hyper.
        None if has_cl => State::Opaque,
        None => State::Head,
    })
}

/// Verdicts shared between the guarded connection and its request handler.
#[derive(Debug, Default)]
pub struct Verdicts {
    bad: Mutex<VecDeque<(u64, HeadError)>>,
    next_request: Mutex<u64>,
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
mod tests {
    use super::*;

    fn scan(chunks: &[&[u8]]) -> Vec<(u64, HeadError)> {
        let mut s = Scanner::new();
        chunks.iter().flat_map(|c| s.feed(c)).collect()
    }

    #[test]
    fn clean_keep_alive_requests_pass() {
        let v = scan(&[
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhel",
            b"lo",
            b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nab\n\r\n0\r\nX-T: 1\r\n\r\n",
            b"GET /last HTTP/1.1\r\nHost: a\r\n\r\n",
        ]);
        assert!(v.is_empty(), "{v:?}");
    }

    #[test]
    fn bodies_containing_bare_lf_are_fine_but_heads_are_not() {
        assert!(scan(&[b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\na\nb"]).is_empty());
        assert_eq!(
            scan(&[b"GET / HTTP/1.1\nHost: a\r\n\r\n"]),
            vec![(0, HeadError::BareLf)]
        );
        assert_eq!(
            scan(&[b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", b"GET / HTTP/1.1\r\nHost: a\n\n"]),
            vec![(1, HeadError::BareLf)]
        );
    }

    #[test]
    fn cl_plus_te_in_either_order() {
        for head in [
            &b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            &b"POST / HTTP/1.1\r\nHost: a\r\ntransfer-encoding: chunked\r\ncontent-length: 4\r\n\r\n"[..],
        ] {
            assert_eq!(scan(&[head]), vec![(0, HeadError::ContentLengthAndTransferEncoding)]);
        }
    }

    #[test]
    fn smuggled_second_head_is_found_after_a_chunked_body() {
        let v = scan(&[
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"GET /x HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        ]);
        assert_eq!(v, vec![(1, HeadError::ContentLengthAndTransferEncoding)]);
    }

    #[test]
    fn bad_transfer_encoding() {
        assert_eq!(
            scan(&[b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"]),
            vec![(0, HeadError::BadTransferEncoding)]
        );
        assert_eq!(
            scan(&[b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"]),
            vec![(0, HeadError::BadTransferEncoding)]
        );
    }

    #[test]
    fn http2_and_upgrades_stop_scanning() {
        assert!(scan(&[b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", b"GET / HTTP/1.1\nX\n\n"]).is_empty());
        assert!(scan(&[b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n", b"\n\n\n"]).is_empty());
    }

    #[test]
    fn byte_at_a_time_feeding_is_equivalent() {
        let data = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\nGET / HTTP/1.1\nHost: a\r\n\r\n";
        let mut s = Scanner::new();
        let mut v = Vec::new();
        for b in data.iter() {
            v.extend(s.feed(std::slice::from_ref(b)));
        }
        assert_eq!(v, vec![(1, HeadError::BareLf)]);
    }

    #[test]
    fn a_head_split_across_reads_is_put_together_in_a_buffer_kept_for_the_next() {
        let mut s = Scanner::new();
        assert!(s.feed(b"GET / HTTP/1.1\r\nHo").is_empty());
        assert!(s.feed(b"st: a\r\n\r").is_empty());
        assert_eq!(
            s.feed(b"\nGET / HTTP/1.1\nHost: a\r\n\r\n"),
            vec![(1, HeadError::BareLf)]
        );
        let mut s = Scanner::new();
        assert!(s.feed(b"GET / HTTP/1.1\r\nHo").is_empty());
        assert!(s.feed(b"st: a\r\n\r\n").is_empty());
        assert!(
            s.buf.is_empty() && s.buf.capacity() > 0,
            "kept, not made again for every head"
        );
        // A head in one read is checked where it lies.
        assert!(s.feed(b"GET /2 HTTP/1.1\r\nHost: a\r\n\r\n").is_empty());
        assert!(s.buf.is_empty());
    }

    #[test]
    fn a_head_begins_at_its_first_byte_and_ends_at_its_blank_line() {
        let mut s = Scanner::new();
        assert_eq!(s.heads(), (0, false));
        s.feed(b"\r\n");
        assert_eq!(s.heads(), (0, false), "an empty line before a head does not begin it");
        s.feed(b"GET / HTTP/1.1\r\nHo");
        assert_eq!(s.heads(), (0, true));
        s.feed(b"st: a\r\n\r\nPOST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nab");
        assert_eq!(s.heads(), (2, false), "a body is no head");
        s.feed(b"cG");
        assert_eq!(s.heads(), (2, true), "the next head begins after the body");
        s.feed(b"ET / HTTP/1.1\r\nUpgrade: x\r\n\r\nGET");
        assert_eq!(s.heads(), (3, false), "after an upgrade nothing is a head");
    }

    #[test]
    fn verdicts_are_matched_to_requests_in_order() {
        let v = Verdicts::default();
        v.bad.lock().unwrap().push_back((1, HeadError::BareLf));
        assert_eq!(v.next_request(), None);
        assert_eq!(v.next_request(), Some(HeadError::BareLf));
    }
}
