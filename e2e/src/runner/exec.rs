//! `kubectl exec` over WebSocket: the `v5.channel.k8s.io` (and `v4`)
//! subprotocols of the API server's `pods/{name}/exec` endpoint.
//!
//! Every binary message starts with a channel byte: 0 stdin, 1 stdout,
//! 2 stderr, 3 the final `Status` (exit code), 4 terminal resize (ignored),
//! and in v5 255 = "close this channel" (the client closes stdin with
//! `[255, 0]`). A TTY is not emulated: `-t` runs the command with pipes.

use std::process::Stdio;

use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode, header};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::mpsc;

/// The subprotocols served, best first.
pub const PROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];

/// What the exec request asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecRequest {
    pub container: Option<String>,
    pub command: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// Parses the query (`command` repeats).
pub fn parse_query(query: Option<&str>) -> ExecRequest {
    let mut r = ExecRequest::default();
    for kv in query.unwrap_or_default().split('&').filter(|kv| !kv.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        let v = crate::apiserver::percent_decode(v);
        let on = v == "true" || v == "1";
        match crate::apiserver::percent_decode(k).as_str() {
            "command" => r.command.push(v),
            "container" => r.container = Some(v),
            "stdin" => r.stdin = on,
            "stdout" => r.stdout = on,
            "stderr" => r.stderr = on,
            "tty" => r.tty = on,
            _ => {}
        }
    }
    r
}

/// Whether a request asks for a WebSocket upgrade.
pub fn is_websocket(headers: &HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// The subprotocol to use, if the client offers one we serve.
pub fn choose_protocol(headers: &HeaderMap) -> Option<&'static str> {
    let offered: Vec<String> = headers
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|p| p.trim().to_string()))
        .collect();
    PROTOCOLS.into_iter().find(|p| offered.iter().any(|o| o == p))
}

/// The `101 Switching Protocols` answer to a WebSocket handshake.
pub fn handshake_response<B: Default>(headers: &HeaderMap, protocol: &str) -> Option<Response<B>> {
    let key = headers.get("sec-websocket-key")?.to_str().ok()?;
    let digest = ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        format!("{key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11").as_bytes(),
    );
    let accept = crate::pki::base64_encode(digest.as_ref());
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::UPGRADE, "websocket")
        .header(header::CONNECTION, "Upgrade")
        .header("Sec-WebSocket-Accept", accept)
        .header("Sec-WebSocket-Protocol", protocol)
        .body(B::default())
        .ok()
}

/// Writes one unmasked server frame.
pub(crate) async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, opcode: u8, payload: &[u8]) -> std::io::Result<()> {
    let mut head = vec![0x80 | opcode];
    let n = payload.len();
    if n < 126 {
        head.push(n as u8);
    } else if n <= 0xffff {
        head.push(126);
        head.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        head.push(127);
        head.extend_from_slice(&(n as u64).to_be_bytes());
    }
    w.write_all(&head).await?;
    w.write_all(payload).await?;
    w.flush().await
}

/// Reads one (client, masked) frame: opcode and payload; fragments are
/// returned as they come (continuation frames carry opcode 0).
pub(crate) async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<(u8, Vec<u8>)> {
    let mut h = [0u8; 2];
    r.read_exact(&mut h).await?;
    let opcode = h[0] & 0x0f;
    let masked = h[1] & 0x80 != 0;
    let mut len = u64::from(h[1] & 0x7f);
    if len == 126 {
        let mut b = [0u8; 2];
        r.read_exact(&mut b).await?;
        len = u64::from(u16::from_be_bytes(b));
    } else if len == 127 {
        let mut b = [0u8; 8];
        r.read_exact(&mut b).await?;
        len = u64::from_be_bytes(b);
    }
    if len > 16 * 1024 * 1024 {
        return Err(std::io::Error::other("frame too large"));
    }
    let mut mask = [0u8; 4];
    if masked {
        r.read_exact(&mut mask).await?;
    }
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload).await?;
    if masked {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
    }
    Ok((opcode, payload))
}

/// The final `Status` on channel 3.
fn exit_status(code: Option<i32>, error: Option<&str>) -> Vec<u8> {
    let v = match (code, error) {
        (_, Some(e)) => {
            json!({"metadata": {}, "status": "Failure", "message": e, "reason": "InternalError", "code": 500})
        }
        (Some(0), None) => json!({"metadata": {}, "status": "Success"}),
        (c, None) => {
            let c = c.unwrap_or(-1);
            json!({"metadata": {}, "status": "Failure",
                "message": format!("command terminated with non-zero exit code: error executing command [{c}], exit code {c}"),
                "reason": "NonZeroExitCode",
                "details": {"causes": [{"reason": "ExitCode", "message": c.to_string()}]}})
        }
    };
    v.to_string().into_bytes()
}

/// Runs `cmd` and bridges it to the WebSocket `io` until it exits.
pub async fn serve<IO>(io: IO, mut cmd: tokio::process::Command, req: ExecRequest)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(io);
    let (out_tx, mut out_rx) = mpsc::channel::<(u8, Vec<u8>)>(64);
    // The writer: every frame goes through here.
    let writer = tokio::spawn(async move {
        while let Some((opcode, payload)) = out_rx.recv().await {
            if write_frame(&mut wr, opcode, &payload).await.is_err() {
                return;
            }
            if opcode == 8 {
                let _ = wr.shutdown().await;
                return;
            }
        }
    });
    let data = |ch: u8, b: &[u8]| {
        let mut v = Vec::with_capacity(b.len() + 1);
        v.push(ch);
        v.extend_from_slice(b);
        (2u8, v)
    };
    cmd.stdin(if req.stdin { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let _ = out_tx.send(data(3, &exit_status(None, Some(&e.to_string())))).await;
            let _ = out_tx.send((8, vec![0x03, 0xe8])).await;
            let _ = writer.await;
            return;
        }
    };
    let mut stdin = child.stdin.take();
    let pump =
        |pipe: Option<Box<dyn AsyncRead + Unpin + Send>>, ch: u8, forward: bool, tx: mpsc::Sender<(u8, Vec<u8>)>| {
            tokio::spawn(async move {
                let Some(mut pipe) = pipe else { return };
                let mut buf = vec![0u8; 32 * 1024];
                loop {
                    match pipe.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if forward && tx.send(data(ch, &buf[..n])).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            })
        };
    let out = pump(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn AsyncRead + Unpin + Send>),
        1,
        req.stdout,
        out_tx.clone(),
    );
    let err = pump(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn AsyncRead + Unpin + Send>),
        if req.tty { 1 } else { 2 },
        req.stderr || req.tty,
        out_tx.clone(),
    );
    // The reader: stdin, close and ping from the client.
    let ping_tx = out_tx.clone();
    let reader = tokio::spawn(async move {
        loop {
            let Ok((opcode, payload)) = read_frame(&mut rd).await else {
                return false;
            };
            match opcode {
                8 => return false,
                9 => {
                    let _ = ping_tx.send((10, payload)).await;
                }
                0..=2 => match payload.split_first() {
                    Some((0, rest)) => {
                        if let Some(s) = stdin.as_mut()
                            && s.write_all(rest).await.is_err()
                        {
                            stdin = None;
                        }
                    }
                    Some((255, rest)) if rest.first() == Some(&0) => stdin = None,
                    _ => {}
                },
                _ => {}
            }
        }
    });
    let status = tokio::select! {
        s = child.wait() => s.ok(),
        gone = reader => {
            // The client went away: end the command.
            let _ = gone;
            let _ = child.start_kill();
            child.wait().await.ok()
        }
    };
    let _ = out.await;
    let _ = err.await;
    let code = status.and_then(|s| {
        use std::os::unix::process::ExitStatusExt as _;
        s.code().or_else(|| s.signal().map(|g| 128 + g))
    });
    let _ = out_tx.send(data(3, &exit_status(code, None))).await;
    let _ = out_tx.send((8, vec![0x03, 0xe8])).await;
    drop(out_tx);
    let _ = writer.await;
}

/// Bytes for an error body.
pub fn error_body(message: &str) -> Bytes {
    Bytes::from(
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message, "code": 400})
            .to_string(),
    )
}

/// `/api/v1/namespaces/{ns}/pods/{name}/exec` → (ns, name).
pub fn exec_path(path: &str) -> Option<(String, String)> {
    let rest = path.strip_prefix("/api/v1/namespaces/")?;
    let segs: Vec<&str> = rest.split('/').collect();
    match segs.as_slice() {
        [ns, "pods", name, "exec"] => Some(((*ns).to_string(), (*name).to_string())),
        _ => None,
    }
}

/// An error answer: a JSON `Status` with `code` and `msg`.
pub(crate) fn failure(code: u16, msg: &str) -> Response<crate::apiserver::Body> {
    use http_body_util::BodyExt as _;
    Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, "application/json")
        .body(http_body_util::Full::new(error_body(msg)).boxed())
        .unwrap_or_else(|_| Response::new(http_body_util::Full::new(Bytes::new()).boxed()))
}

/// The pod `ns/name` a subresource request is for, or the status code and message to answer.
pub(crate) fn find_pod(
    server: &crate::apiserver::ApiServer,
    ns: &str,
    name: &str,
) -> Result<serde_json::Value, (u16, String)> {
    let Some(rt) = server.cluster.catalog.get("", "v1", "pods") else {
        return Err((404, "pods are not served".into()));
    };
    server.cluster.get(&rt, Some(ns), name).map_err(|e| (e.code, e.message))
}

/// Handles `pods/{name}/exec` (the request is already authenticated).
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
    let request = parse_query(req.uri().query());
    let containers: Vec<String> = pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(pod["spec"]["initContainers"].as_array().into_iter().flatten())
        .filter_map(|c| c["name"].as_str().map(str::to_string))
        .collect();
    let container = match &request.container {
        Some(c) if containers.contains(c) => c.clone(),
        Some(c) => return fail(400, &format!("container {c} is not valid for pod {name}")),
        None => match pod["spec"]["containers"][0]["name"].as_str() {
            Some(c) => c.to_string(),
            None => return fail(400, &format!("pod {name} has no containers")),
        },
    };
    if request.command.is_empty() {
        return fail(400, "you must specify at least 1 command");
    }
    if !is_websocket(req.headers()) {
        return fail(
            400,
            "kubesim serves exec over WebSocket (v5.channel.k8s.io/v4.channel.k8s.io) only, not SPDY",
        );
    }
    let Some(protocol) = choose_protocol(req.headers()) else {
        return fail(
            400,
            "no supported WebSocket subprotocol offered (want v5.channel.k8s.io or v4.channel.k8s.io)",
        );
    };
    let cmd = match server.runtime.exec(&pod, &container, &request.command) {
        Ok(c) => c,
        Err(e) => return fail(400, &e),
    };
    let Some(resp) = handshake_response::<crate::apiserver::Body>(req.headers(), protocol) else {
        return fail(400, "bad WebSocket handshake");
    };
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => serve(hyper_util::rt::TokioIo::new(upgraded), cmd, request).await,
            Err(e) => tracing::debug!(error = %e, "exec upgrade failed"),
        }
    });
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_and_statuses() {
        let r = parse_query(Some(
            "command=sh&command=-c&command=echo%20hi&container=c&stdout=true&stderr=true",
        ));
        assert_eq!(r.command, ["sh", "-c", "echo hi"]);
        assert_eq!(r.container.as_deref(), Some("c"));
        assert!(r.stdout && r.stderr && !r.stdin);
        let s: serde_json::Value = serde_json::from_slice(&exit_status(Some(3), None)).unwrap();
        assert_eq!(s["details"]["causes"][0]["message"], "3");
    }

    #[tokio::test]
    async fn frames_round_trip() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        write_frame(&mut a, 2, &[1, b'h', b'i']).await.unwrap();
        let (op, p) = read_frame(&mut b).await.unwrap();
        assert_eq!((op, p), (2, vec![1, b'h', b'i']));
    }
}
