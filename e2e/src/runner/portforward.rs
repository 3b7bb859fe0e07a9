//! `kubectl port-forward` over WebSocket: the API server's `pods/{name}/portforward` endpoint
//! with the `v4.channel.k8s.io` framing that kube-rs and kubectl (≥ 1.31) speak. One port per
//! request: the connection is opened to `127.0.0.1:PORT` inside the pod's network namespace (so
//! ports a pod serves on localhost only, as a sidecar's admin API, are reachable), and bytes are
//! relayed both ways.
//!
//! Framing: every binary message starts with a channel byte; port `i` has data channel `2i`
//! and error channel `2i+1`; the first message on each carries the port (two bytes, little
//! endian). A connection that fails is reported on the error channel as text.

use http::Response;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::mpsc;

use super::exec::{choose_protocol, failure, find_pod, handshake_response, is_websocket, read_frame, write_frame};

/// `/api/v1/namespaces/{ns}/pods/{name}/portforward` → (ns, name).
pub fn portforward_path(path: &str) -> Option<(String, String)> {
    let rest = path.strip_prefix("/api/v1/namespaces/")?;
    match rest.split('/').collect::<Vec<_>>().as_slice() {
        [ns, "pods", name, "portforward"] => Some(((*ns).to_string(), (*name).to_string())),
        _ => None,
    }
}

/// The ports asked for (`ports=15000`, repeated or comma-separated).
pub fn parse_ports(query: Option<&str>) -> Result<Vec<u16>, String> {
    let mut ports = Vec::new();
    for kv in query.unwrap_or_default().split('&') {
        if let Some(v) = kv.strip_prefix("ports=") {
            for p in crate::apiserver::percent_decode(v).split(',') {
                let port = p
                    .trim()
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| format!("invalid port {p:?}"))?;
                ports.push(port);
            }
        }
    }
    if ports.is_empty() {
        return Err("at least one port must be given (ports=PORT)".into());
    }
    Ok(ports)
}

/// Handles `pods/{name}/portforward` (the request is already authenticated).
pub fn handle(
    server: &crate::apiserver::ApiServer,
    mut req: http::Request<hyper::body::Incoming>,
    ns: &str,
    name: &str,
) -> Response<crate::apiserver::Body> {
    let fail = failure;
    let pod = match find_pod(server, ns, name) {
        Ok(p) => p,
        Err((code, message)) => return fail(code, &message),
    };
    let ports = match parse_ports(req.uri().query()) {
        Ok(p) => p,
        Err(e) => return fail(400, &e),
    };
    if ports.len() != 1 {
        return fail(400, "kubesim forwards one port per connection");
    }
    if !is_websocket(req.headers()) {
        return fail(
            400,
            "kubesim serves port-forward over WebSocket (v4.channel.k8s.io) only, not SPDY",
        );
    }
    let Some(protocol) = choose_protocol(req.headers()) else {
        return fail(
            400,
            "no supported WebSocket subprotocol offered (want v4.channel.k8s.io)",
        );
    };
    let netns = match server.runtime.netns(&pod) {
        Ok(p) => p,
        Err(e) => return fail(400, &e),
    };
    let Some(resp) = handshake_response::<crate::apiserver::Body>(req.headers(), protocol) else {
        return fail(400, "bad WebSocket handshake");
    };
    let port = ports[0];
    let pod_name = name.to_string();
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        if let Ok(upgraded) = upgrade.await {
            let target = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            let connected = tokio::task::spawn_blocking(move || {
                crate::network::netns::run_in(&netns, move || {
                    let s = std::net::TcpStream::connect_timeout(&target, std::time::Duration::from_secs(5))?;
                    s.set_nonblocking(true)?;
                    Ok(s)
                })
            })
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))
            .and_then(|r| r)
            .and_then(tokio::net::TcpStream::from_std)
            .map_err(|e| format!("error forwarding port {port} to pod {pod_name}: {e}"));
            serve(hyper_util::rt::TokioIo::new(upgraded), port, connected).await;
        }
    });
    resp
}

/// Relays between the WebSocket `io` and the pod's port.
async fn serve<IO>(io: IO, port: u16, connected: Result<tokio::net::TcpStream, String>)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(io);
    let (tx, mut rx) = mpsc::channel::<(u8, Vec<u8>)>(64);
    let writer = tokio::spawn(async move {
        while let Some((opcode, payload)) = rx.recv().await {
            if write_frame(&mut wr, opcode, &payload).await.is_err() || opcode == 8 {
                let _ = wr.shutdown().await;
                return;
            }
        }
    });
    let frame = |ch: u8, b: &[u8]| {
        let mut v = Vec::with_capacity(b.len() + 1);
        v.push(ch);
        v.extend_from_slice(b);
        (2u8, v)
    };
    let [lo, hi] = port.to_le_bytes();
    let _ = tx.send(frame(0, &[lo, hi])).await;
    let _ = tx.send(frame(1, &[lo, hi])).await;
    let tcp = match connected {
        Ok(tcp) => tcp,
        Err(e) => {
            let _ = tx.send(frame(1, e.as_bytes())).await;
            let _ = tx.send((8, vec![0x03, 0xe8])).await;
            drop(tx);
            let _ = writer.await;
            return;
        }
    };
    let (mut tcp_rd, mut tcp_wr) = tcp.into_split();
    // The pod's bytes to the client, then a close.
    let from_pod = {
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 32 * 1024];
            while let Ok(n) = tcp_rd.read(&mut buf).await {
                if n == 0 || tx.send(frame(0, &buf[..n])).await.is_err() {
                    break;
                }
            }
            let _ = tx.send((8, vec![0x03, 0xe8])).await;
        })
    };
    // The client's bytes to the pod, until it closes.
    let ping = tx.clone();
    let to_pod = tokio::spawn(async move {
        while let Ok((opcode, payload)) = read_frame(&mut rd).await {
            match opcode {
                8 => break,
                9 => {
                    let _ = ping.send((10, payload)).await;
                }
                0..=2 => {
                    if let Some((0, data)) = payload.split_first()
                        && tcp_wr.write_all(data).await.is_err()
                    {
                        break;
                    }
                }
                _ => {}
            }
        }
        let _ = tcp_wr.shutdown().await;
    });
    drop(tx);
    let _ = from_pod.await;
    to_pod.abort();
    let _ = writer.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_ports() {
        assert_eq!(
            portforward_path("/api/v1/namespaces/shop/pods/web-1/portforward"),
            Some(("shop".into(), "web-1".into()))
        );
        assert_eq!(portforward_path("/api/v1/namespaces/shop/pods/web-1/exec"), None);
        assert_eq!(parse_ports(Some("ports=15000")), Ok(vec![15000]));
        assert_eq!(parse_ports(Some("ports=80%2C443")), Ok(vec![80, 443]));
        assert!(parse_ports(Some("ports=0")).is_err());
        assert!(parse_ports(None).is_err());
    }
}
