//! HTTP/2 defences seen on the wire with a raw frame client: the advertised
//! stream limit, keepalive pings, and the rapid-reset defence (CVE-2023-44487).

use crate::support::*;
use serde_json::json;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub(crate) const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
pub(crate) const GOAWAY: u8 = 0x7;
pub(crate) const HEADERS: u8 = 0x1;
pub(crate) const RST_STREAM: u8 = 0x3;

/// One HTTP/2 frame, as bytes.
pub(crate) fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// Read one frame: (type, flags, payload); `None` on EOF or after 5 s.
async fn read_frame(s: &mut TcpStream) -> Option<(u8, u8, Vec<u8>)> {
    let mut head = [0u8; 9];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut head))
        .await
        .ok()?
        .ok()?;
    let len = (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).await.ok()?;
    Some((head[3], head[4], payload))
}

/// Connect with prior knowledge; returns the stream and the server's SETTINGS.
async fn connect(addr: std::net::SocketAddr) -> (TcpStream, Vec<(u16, u32)>) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
    s.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
    loop {
        let (kind, flags, payload) = read_frame(&mut s).await.expect("server SETTINGS");
        if kind == SETTINGS && flags & 0x1 == 0 {
            let settings = payload
                .chunks(6)
                .map(|c| {
                    (
                        u16::from_be_bytes([c[0], c[1]]),
                        u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
                    )
                })
                .collect();
            s.write_all(&frame(SETTINGS, 0x1, 0, &[])).await.unwrap();
            return (s, settings);
        }
    }
}

#[tokio::test]
async fn server_advertises_100_streams_and_sends_keepalive_pings() {
    let (_a, _p, addr) = proxy_with_limits(json!({"http2KeepaliveIntervalMs": 200})).await;
    let (mut s, settings) = connect(addr).await;
    // SETTINGS_MAX_CONCURRENT_STREAMS (0x3).
    assert!(settings.contains(&(0x3, 100)), "{settings:?}");
    // An idle connection gets a PING within the interval (plus slack).
    let ping = loop {
        match read_frame(&mut s).await {
            Some((PING, flags, payload)) if flags & 0x1 == 0 => break Some(payload),
            Some(_) => continue,
            None => break None,
        }
    };
    assert_eq!(ping.map(|p| p.len()), Some(8), "a keepalive PING");
}

#[tokio::test]
async fn rapid_reset_gets_goaway_enhance_your_calm() {
    let (_a, _p, addr) = proxy_with_limits(json!({})).await;
    let (mut s, _) = connect(addr).await;
    // HPACK: :method GET, :scheme http, :path /, :authority "svc" (literal, not indexed).
    let block = [0x82, 0x86, 0x84, 0x01, 0x03, b's', b'v', b'c'];
    let mut burst = Vec::new();
    for i in 0..200u32 {
        let id = 2 * i + 1;
        burst.extend(frame(HEADERS, 0x5, id, &block)); // END_STREAM | END_HEADERS
        burst.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes())); // CANCEL
    }
    let _ = s.write_all(&burst).await;
    let goaway = loop {
        match read_frame(&mut s).await {
            Some((GOAWAY, _, payload)) => {
                break Some(u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]));
            }
            Some(_) => continue,
            None => break None,
        }
    };
    assert_eq!(goaway, Some(0xb), "GOAWAY with ENHANCE_YOUR_CALM");
}
