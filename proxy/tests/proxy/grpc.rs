//! gRPC over HTTP/2: trailers cross the proxy both ways, metrics say grpc.

use crate::support::*;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use std::convert::Infallible;

/// An h2c server answering every request with a body and `grpc-status` trailers.
async fn grpc_server() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = l.accept().await else { continue };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                    let te = req.headers().get("te").cloned();
                    let _ = req.into_body().collect().await;
                    let mut trailers = http::HeaderMap::new();
                    trailers.insert("grpc-status", "0".parse().unwrap());
                    trailers.insert("grpc-message", "ok".parse().unwrap());
                    let frames = futures::stream::iter(vec![
                        Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"\x00\x00\x00\x00\x02hi"))),
                        Ok(Frame::trailers(trailers)),
                    ]);
                    let mut resp = http::Response::new(StreamBody::new(frames));
                    resp.headers_mut()
                        .insert("content-type", "application/grpc".parse().unwrap());
                    if let Some(te) = te {
                        resp.headers_mut().insert("x-saw-te", te);
                    }
                    Ok::<_, Infallible>(resp)
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    (addr, task)
}

#[tokio::test]
async fn grpc_trailers_cross_the_proxy() {
    let (grpc, _t) = grpc_server().await;
    let c = json!({"name": "grpc", "protocol": "http2", "service": "greeter.test.svc.cluster.local",
                   "endpoints": [{"address": "127.0.0.1", "port": grpc.port()}]});
    let proxy = Proxy::start(outbound_config("1", vec![forward_route("grpc")], vec![c])).await;
    let addr = proxy.addr("outbound").await;
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::post("http://greeter:50051/helloworld.Greeter/SayHello")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(b"\x00\x00\x00\x00\x00")))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers().get("x-saw-te").unwrap(), "trailers");
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers");
    assert_eq!(trailers.get("grpc-status").unwrap(), "0");
    assert_eq!(trailers.get("grpc-message").unwrap(), "ok");
    assert_eq!(&collected.to_bytes()[..], b"\x00\x00\x00\x00\x02hi");
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let m = get(proxy.admin(), "admin", "/metrics").await.body;
    assert!(m.contains("request_protocol=\"grpc\""), "{m}");
}

#[tokio::test]
async fn absolute_form_requests_route_by_their_authority() {
    // Explicit proxying (no capture): `GET http://host/path`.
    let a = Upstream::start("a").await;
    let cfg = json!({
        "version": "1",
        "listeners": [{
            "name": "outbound", "address": "127.0.0.1:0", "direction": "outbound", "protocol": "http",
            "virtualHosts": [{"name": "a", "domains": ["a.test"], "routes": [forward_route("a")]}],
        }],
        "clusters": [cluster("a", &[&a])],
    });
    let proxy = Proxy::start(cfg).await;
    let reply = raw(
        proxy.addr("outbound").await,
        b"GET http://a.test/x?y=1 HTTP/1.1\r\nHost: a.test\r\n\r\n",
        std::time::Duration::from_secs(3),
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert_eq!(a.last_seen().path, "/x?y=1");
    // A real client configured with the listener as its HTTP proxy (HTTP_PROXY / curl -x).
    if !trellis_skip::have("curl") {
        trellis_skip::skip("the curl -x part needs curl (Debian: apt-get install curl)");
        return;
    }
    let curl = tokio::process::Command::new("curl")
        .args(["-s", "-m", "5", "-w", " %{http_code}", "-x"])
        .arg(format!("http://{}", proxy.addr("outbound").await))
        .arg("http://a.test/via-proxy")
        .output()
        .await
        .expect("running curl");
    assert_eq!(String::from_utf8_lossy(&curl.stdout), "a /via-proxy 200");
    assert_eq!(a.last_seen().authority, "a.test");
}
