//! The framing guard's scanner, verdicts and switch, byte by byte.

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
fn http2_and_switched_protocols_stop_scanning() {
    assert!(scan(&[b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", b"GET / HTTP/1.1\nX\n\n"]).is_empty());
    for asked in [
        &b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n"[..],
        &b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n"[..],
    ] {
        let mut s = Scanner::new();
        assert!(s.feed(asked).is_empty());
        s.switched();
        assert!(
            s.feed(b"GET / HTTP/1.1\nX\n\n").is_empty(),
            "no HTTP/1 after the switch"
        );
        assert_eq!(s.heads(), (1, false));
    }
}

/// An upgrade answered without switching (no route, denied, refused upstream) leaves the
/// connection HTTP/1: the next head is guarded as any.
#[test]
fn an_upgrade_not_granted_leaves_the_guard_on() {
    let mut s = Scanner::new();
    assert!(
        s.feed(b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nContent-Length: 2\r\n\r\nab")
            .is_empty()
    );
    assert!(s.upgrade_asked);
    assert_eq!(
        s.feed(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"),
        vec![(1, HeadError::ContentLengthAndTransferEncoding)]
    );
    let mut s = Scanner::new();
    s.feed(b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\nGET / HT");
    assert_eq!(s.heads(), (1, true), "the head after a CONNECT not granted is timed");
}

#[tokio::test]
async fn the_guard_stops_at_the_read_after_the_handler_says_the_connection_switched() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut client, server) = tokio::io::duplex(1024);
    let verdicts = Arc::new(Verdicts::default());
    let mut io = GuardedIo::new(server, Arc::clone(&verdicts));
    let mut buf = [0u8; 1024];
    for (bytes, switched) in [
        (&b"GET / HTTP/1.1\r\nUpgrade: x\r\n\r\n"[..], true),
        (b"GET / HTTP/1.1\nHost: a\n\n", false),
    ] {
        client.write_all(bytes).await.unwrap();
        io.read_exact(&mut buf[..bytes.len()]).await.unwrap();
        if switched {
            verdicts.switched();
        }
    }
    assert_eq!(io.heads(), (1, false));
    assert!(verdicts.bad.lock().unwrap().is_empty());
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

/// Each head followed by the body its framing says, then a probe request with a bare LF: the
/// probe's verdict (request 1) shows the scanner followed the framing to its head. The
/// verdicts are the same whether the bytes come in one read or split at any point (a head in
/// one read is checked where it lies, a split one once put together).
#[test]
fn a_head_gives_the_same_verdict_whole_or_split_anywhere() {
    const PROBE: &[u8] = b"GET /probe HTTP/1.1\nHost: a\r\n\r\n";
    // The verdict expected for the bytes: a request's sequence number and its error.
    type Verdict = Option<(u64, HeadError)>;
    let followed = Some((1, HeadError::BareLf));
    let cases: &[(&[u8], Verdict)] = &[
        (b"GET / HTTP/1.1\r\nHost: a\r\nTraceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\nX-Request-Id: 4bf92f35-77b3-4da6-a3ce-929b0e0e4736\r\n\r\n", followed),
        (b"POST / HTTP/1.1\r\nHost: a\r\ncontent-LENGTH :  3 \r\n\r\nabc", followed),
        (b"POST / HTTP/1.1\r\nContent-Length: 9\r\nContent-Length: 3\r\n\r\nabc", followed),
        (b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n", followed),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\nTRANSFER-ENCODING: Chunked\r\n\r\n1\r\na\r\n0\r\n\r\n", followed),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n", Some((0, HeadError::BadTransferEncoding))),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length : 1\r\n\r\n", Some((0, HeadError::ContentLengthAndTransferEncoding))),
        (b"POST / HTTP/1.1\r\nContent-Length: 3\r\nHost: a\n\r\nabc", Some((0, HeadError::BareLf))),
        (b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\nabc", Some((0, HeadError::BareLf))),
        (b"POST / HTTP/1.1\r\nContent-Length: +3x\r\n\r\nabc", None),
        (b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", followed),
        (b"GET / HTTP/1.1\r\nhost: a\r\nupgrade: websocket\r\n\r\n", followed),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", None),
    ];
    for (head, expected) in cases {
        let bytes = [*head, PROBE].concat();
        let shown = String::from_utf8_lossy(head);
        assert_eq!(scan(&[&bytes]), expected.iter().copied().collect::<Vec<_>>(), "{shown}");
        for at in 1..bytes.len() {
            let (a, b) = bytes.split_at(at);
            assert_eq!(scan(&[a, b]), scan(&[&bytes]), "{shown} split at {at}");
        }
    }
    // A head that has not ended has no verdict yet, bare LF or not, whole or split.
    let unfinished = b"GET / HTTP/1.1\nHost: a\r\n";
    assert_eq!(scan(&[unfinished]), vec![]);
    for at in 1..unfinished.len() {
        let (a, b) = unfinished.split_at(at);
        assert_eq!(scan(&[a, b]), vec![], "split at {at}");
    }
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
    assert_eq!(s.heads(), (3, true), "an upgrade not yet granted leaves HTTP/1");
    s.switched();
    assert_eq!(s.heads(), (3, false), "after a switch nothing is a head");
}

#[test]
fn verdicts_are_matched_to_requests_in_order() {
    let v = Verdicts::default();
    v.bad.lock().unwrap().push_back((1, HeadError::BareLf));
    assert_eq!(v.next_request(), None);
    assert_eq!(v.next_request(), Some(HeadError::BareLf));
}
