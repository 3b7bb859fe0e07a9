//! A DestinationRule's `connectionPool.http.http2KeepAlive` through a real proxy, seen from
//! an h2c upstream that answers one request and then goes deaf — it reads nothing more, so
//! the proxy's PINGs are never acknowledged: with a keepalive the proxy closes the connection
//! once a PING has gone unanswered for its timeout (Envoy's `connection_keepalive`), idle or
//! not, and the next request opens a new connection; without one the deaf connection stays.

use crate::support::*;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// What the upstream saw: connections accepted, and when its deaf connection was closed.
#[derive(Default)]
struct Seen {
    opened: AtomicU64,
    closed_at: Mutex<Option<Instant>>,
}

/// A socket that reads normally until `deaf` is set; then it hands its reader nothing more,
/// discarding what arrives (the PINGs) and noting when the peer closed it.
struct Deafened {
    tcp: TcpStream,
    deaf: Arc<AtomicBool>,
    seen: Arc<Seen>,
}

impl AsyncRead for Deafened {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        if !self.deaf.load(Ordering::SeqCst) {
            return Pin::new(&mut self.tcp).poll_read(cx, buf);
        }
        let mut scratch = [0u8; 1024];
        loop {
            let mut discard = ReadBuf::new(&mut scratch);
            match Pin::new(&mut self.tcp).poll_read(cx, &mut discard) {
                Poll::Ready(Ok(())) if !discard.filled().is_empty() => continue,
                Poll::Ready(_) => {
                    // EOF or reset: the proxy closed the connection.
                    self.seen.closed_at.lock().unwrap().get_or_insert_with(Instant::now);
                    return Poll::Pending;
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl AsyncWrite for Deafened {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// An h2c upstream whose first connection goes deaf once it has taken its first request (the
/// response is still written); later connections serve normally.
async fn deafening_upstream() -> (SocketAddr, Arc<Seen>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let upstream = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let first = upstream.opened.fetch_add(1, Ordering::SeqCst) == 0;
            let deaf = Arc::new(AtomicBool::new(false));
            let io = Deafened {
                tcp,
                deaf: Arc::clone(&deaf),
                seen: Arc::clone(&upstream),
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req: http::Request<hyper::body::Incoming>| {
                    // The request is whole (a GET ends with its headers): read nothing more.
                    if first {
                        deaf.store(true, Ordering::SeqCst);
                    }
                    async {
                        Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
                            bytes::Bytes::from_static(b"ok"),
                        )))
                    }
                });
                let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(io), svc)
                    .await;
            });
        }
    });
    (addr, seen)
}

/// An outbound config to the h2c upstream `up` with this connection pool.
fn config(up: SocketAddr, pool: Value) -> Value {
    outbound_config(
        "1",
        vec![forward_route("c")],
        vec![json!({"name": "c", "protocol": "http2", "connectionPool": pool,
                    "endpoints": [{"address": "127.0.0.1", "port": up.port()}]})],
    )
}

/// One request answered over a connection that then goes deaf, through a proxy with `pool`;
/// how long after the answer the proxy closed that connection, if it did within 4 s, and the
/// upstream's record.
async fn deaf_connection_closed_after(pool: Value) -> (Option<Duration>, Arc<Seen>, Proxy) {
    let (up, seen) = deafening_upstream().await;
    let proxy = Proxy::start(config(up, pool)).await;
    let addr = proxy.addr("outbound").await;
    assert_eq!(get(addr, "svc", "/").await.status, 200);
    let answered = Instant::now();
    assert_eq!(seen.opened.load(Ordering::SeqCst), 1);
    while answered.elapsed() < Duration::from_secs(4) && seen.closed_at.lock().unwrap().is_none() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let closed = seen.closed_at.lock().unwrap().map(|at| at.duration_since(answered));
    (closed, seen, proxy)
}

#[tokio::test]
async fn an_unanswered_http2_ping_closes_the_upstream_connection() {
    let pool = json!({"http2Keepalive": {"intervalMs": 1000, "timeoutMs": 1000}});
    let (closed, seen, proxy) = deaf_connection_closed_after(pool).await;
    let closed = closed.expect("the deaf connection closed within 4 s of its answer");
    // A PING a second after the last frame read, unanswered a second later.
    assert!(
        closed >= Duration::from_millis(1500),
        "closed {closed:?} after the answer, before a PING could go unanswered for 1 s"
    );
    // The connection left the pool with it: the next request is served on a new one.
    let addr = proxy.addr("outbound").await;
    let next = tokio::time::timeout(Duration::from_secs(3), get(addr, "svc", "/"))
        .await
        .expect("the next request answered in time");
    assert_eq!(next.status, 200);
    assert_eq!(
        seen.opened.load(Ordering::SeqCst),
        2,
        "the next request on a new connection"
    );
}

#[tokio::test]
async fn without_a_keepalive_an_idle_deaf_connection_stays_open() {
    let (closed, seen, _proxy) = deaf_connection_closed_after(json!({})).await;
    assert_eq!(closed, None, "closed without an http2Keepalive");
    assert_eq!(seen.opened.load(Ordering::SeqCst), 1);
}
