//! Uploads answered before they are read — by an HTTP/2 upstream, as nginx's `return` does and
//! RFC 9113 §8.1 allows, or by the proxy itself (a direct response) — to a client over HTTP/2
//! that then finishes them: the client's connection keeps serving. The proxy reads the rest of each body
//! (`request_body::DrainOnDrop`) instead of resetting its stream: reset, the client's late
//! DATA frames land on streams the HTTP/2 library has already forgotten once more than 50
//! resets are recent, each answered with a reset of its own that counts towards the
//! connection's bound on locally caused resets, and at the bound the connection was closed
//! with GOAWAY, failing every request on it (measured: 0.5 % 503s on the mTLS HTTP/2 chain of
//! `proxy/bench` under POST load).

use crate::http2::{GOAWAY, HEADERS, RST_STREAM, SETTINGS, frame};
use crate::support::*;
use serde_json::json;
use std::collections::BTreeSet;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const DATA: u8 = 0x0;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

/// One frame with its stream (`http2::read_frame` leaves it out): (type, flags, stream, payload); `None` on EOF or after 5 s.
async fn read_frame(s: &mut TcpStream) -> Option<(u8, u8, u32, Vec<u8>)> {
    let mut head = [0u8; 9];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut head))
        .await
        .ok()?
        .ok()?;
    let len = (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
    let stream = u32::from_be_bytes([head[5] & 0x7f, head[6], head[7], head[8]]);
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).await.ok()?;
    Some((head[3], head[4], stream, payload))
}

/// An h2c upstream answering every request at once, its body unread (hyper then resets the
/// request's stream with NO_ERROR, as nginx does).
async fn early_answering_upstream() -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req: http::Request<hyper::body::Incoming>| async {
                    Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
                        bytes::Bytes::from_static(b"early"),
                    )))
                });
                let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn uploads_answered_early_leave_the_clients_connection_serving() {
    let up = early_answering_upstream().await;
    let proxy = Proxy::start(outbound_config(
        "1",
        vec![forward_route("c")],
        vec![json!({"name": "c", "protocol": "http2", "endpoints": [{"address": "127.0.0.1", "port": up.port()}]})],
    ))
    .await;
    uploads_answered_before_their_bodies(proxy.addr("outbound").await).await;
}

#[tokio::test]
async fn uploads_the_proxy_answers_itself_leave_the_clients_connection_serving() {
    // A route answering without an upstream (as a redirect, a denial or a JWT refusal does).
    let proxy = Proxy::start(outbound_config(
        "1",
        vec![json!({"action": {"directResponse": {"status": 200, "body": "here"}}, "provenance": provenance()})],
        vec![],
    ))
    .await;
    uploads_answered_before_their_bodies(proxy.addr("outbound").await).await;
}

/// Ten rounds of 60 uploads to `addr` over one HTTP/2 connection, each answered whole before
/// its body is sent, then the bodies; then a GET. Nothing reset, no GOAWAY, the GET answered 200.
async fn uploads_answered_before_their_bodies(addr: std::net::SocketAddr) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
    s.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
    // HPACK: :method POST (static 3), :scheme http (6), :path / (4), :authority "svc" (literal).
    let post = [0x83, 0x86, 0x84, 0x01, 0x03, b's', b'v', b'c'];
    let mut next = 1u32;
    let mut resets = Vec::new();
    // Ten rounds of 60 uploads: each answered whole, then its body sent and ended.
    for round in 0..10 {
        let ids: Vec<u32> = (0..60).map(|i| next + 2 * i).collect();
        next += 120;
        let heads: Vec<u8> = ids
            .iter()
            .flat_map(|id| frame(HEADERS, END_HEADERS, *id, &post))
            .collect();
        s.write_all(&heads).await.unwrap();
        let mut answered = BTreeSet::new();
        while answered.len() < ids.len() {
            let Some((kind, flags, stream, payload)) = read_frame(&mut s).await else {
                panic!(
                    "round {round}: {} of 60 answered, then nothing (resets {resets:?})",
                    answered.len()
                );
            };
            match kind {
                GOAWAY => panic!(
                    "round {round}: GOAWAY {:?} from the proxy (resets before it: {})",
                    String::from_utf8_lossy(&payload[8..]),
                    resets.len()
                ),
                RST_STREAM => resets.push((
                    stream,
                    u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]),
                )),
                HEADERS | DATA if flags & END_STREAM != 0 => {
                    answered.insert(stream);
                }
                _ => {}
            }
        }
        let bodies: Vec<u8> = ids
            .iter()
            .flat_map(|id| frame(DATA, END_STREAM, *id, b"hello"))
            .collect();
        s.write_all(&bodies).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The connection still serves: a GET on it is answered 200.
    let get = [0x82, 0x86, 0x84, 0x01, 0x03, b's', b'v', b'c'];
    s.write_all(&frame(HEADERS, END_HEADERS | END_STREAM, next, &get))
        .await
        .unwrap();
    let status = loop {
        match read_frame(&mut s).await {
            Some((HEADERS, _, stream, payload)) if stream == next => break payload.first().copied(),
            Some((GOAWAY, _, _, payload)) => panic!("GOAWAY {:?}", String::from_utf8_lossy(&payload[8..])),
            Some((RST_STREAM, _, stream, payload)) => resets.push((
                stream,
                u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]),
            )),
            Some(_) => continue,
            None => break None,
        }
    };
    // HPACK static index 8: `:status 200`.
    assert_eq!(status, Some(0x88), "the GET after the uploads is answered 200");
    assert!(resets.is_empty(), "no upload's stream was reset: {resets:?}");
}
