//! The DNS proxy: answers A/AAAA for mesh service names from the current
//! configuration (`dns.entries`, names and aliases chosen by the operator) and
//! forwards every other query, unchanged, to the upstream resolvers. It serves
//! UDP and TCP (RFC 7766: two-byte length prefix, several queries per
//! connection) on the same port, and forwards over the transport the query came
//! on, so truncated UDP answers can be retried over TCP end to end.
//! `trellis-proxy init` redirects the pod's UDP and TCP port 53 here (unless `--capture-dns false`).
//! The names and the message format are [`crate::dns_table`]'s, the upstream resolvers
//! [`crate::resolver`]'s.

use crate::dns_table::{RCODE_FORMERR, RCODE_SERVFAIL, error_response, parse_question, read_framed, write_framed};
use crate::resolver::{forward_tcp, forward_udp, upstreams};
use crate::runtime::Runtime;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;

/// How long to wait for an upstream resolver.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// A DNS client connection idle for this long is closed (RFC 7766 §6.2.3
/// recommends seconds, not minutes).
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Concurrent DNS-over-TCP client connections; more are closed at once.
const MAX_TCP_CONNECTIONS: usize = 256;

/// Which transport a query arrived on (and is forwarded over).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Udp,
    Tcp,
}

/// What to send back for `query`, or `None` to stay silent (not a DNS query).
async fn resolve(rt: &Runtime, query: &[u8], transport: Transport) -> Option<Vec<u8>> {
    let snap = rt.snapshot();
    if let Some(answer) = snap.dns.answer(query) {
        return Some(answer);
    }
    if parse_question(query).is_none() {
        return error_response(query, RCODE_FORMERR);
    }
    let ups = upstreams(&snap.settings.dns);
    drop(snap);
    let forwarded = match transport {
        Transport::Udp => forward_udp(query, &ups, UPSTREAM_TIMEOUT).await,
        Transport::Tcp => forward_tcp(query, &ups, UPSTREAM_TIMEOUT).await,
    };
    forwarded.or_else(|| error_response(query, RCODE_SERVFAIL))
}

/// Serve DNS on a bound UDP socket and TCP listener until the task is aborted.
pub async fn serve(rt: Arc<Runtime>, socket: UdpSocket, tcp: TcpListener) {
    tokio::join!(serve_udp(Arc::clone(&rt), socket), serve_tcp(rt, tcp));
}

async fn serve_udp(rt: Arc<Runtime>, socket: UdpSocket) {
    let socket = Arc::new(socket);
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let query = buf[..n].to_vec();
        // Local answers and errors at once; forwarding in its own task.
        let snap = rt.snapshot();
        if let Some(answer) = snap.dns.answer(&query) {
            let _ = socket.send_to(&answer, peer).await;
            continue;
        }
        let socket = Arc::clone(&socket);
        let rt = Arc::clone(&rt);
        tokio::spawn(async move {
            if let Some(r) = resolve(&rt, &query, Transport::Udp).await {
                let _ = socket.send_to(&r, peer).await;
            }
        });
    }
}

async fn serve_tcp(rt: Arc<Runtime>, listener: TcpListener) {
    let limit = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "DNS TCP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&limit).try_acquire_owned() else {
            tracing::warn!(%peer, "DNS TCP connection limit reached; closing");
            continue;
        };
        let rt = Arc::clone(&rt);
        tokio::spawn(async move {
            serve_tcp_connection(&rt, tcp).await;
            drop(permit);
        });
    }
}

/// Answer length-prefixed queries on one connection, in order, until the
/// client closes, sends garbage or stays idle for [`TCP_IDLE_TIMEOUT`].
async fn serve_tcp_connection(rt: &Runtime, mut tcp: TcpStream) {
    loop {
        let query = match tokio::time::timeout(TCP_IDLE_TIMEOUT, read_framed(&mut tcp)).await {
            Ok(Ok(q)) => q,
            Ok(Err(_)) | Err(_) => return,
        };
        let Some(answer) = resolve(rt, &query, Transport::Tcp).await else {
            return;
        };
        if write_framed(&mut tcp, &answer).await.is_err() {
            return;
        }
    }
}
