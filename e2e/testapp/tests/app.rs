//! The test app over real sockets: echo (HTTP/1.1 and h2c), forwards with
//! header propagation, failures and delays on demand, gRPC echo with
//! trailers, TCP echo, HTTPS with the handshake reported.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use trellis_testapp::{Behaviour, Running, Settings};

async fn app(service: &str) -> Running {
    let mut s = Settings::echo(service, "127.0.0.1:0".parse().unwrap());
    s.pod = format!("{service}-1");
    s.tcp_addr = Some("127.0.0.1:0".parse().unwrap());
    trellis_testapp::start(s).await.unwrap()
}

async fn get(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    req: Request<Full<Bytes>>,
) -> (u16, http::HeaderMap, Bytes, Option<http::HeaderMap>) {
    let response = client.request(req).await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let collected = response.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    (status, headers, collected.to_bytes(), trailers)
}

fn http1() -> Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

#[tokio::test]
async fn echoes_requests_over_http1_and_h2c() {
    let web = app("web").await;
    let url = format!("http://{}/hello?x=1", web.http_addr);
    let req = Request::get(&url)
        .header(
            "x-forwarded-client-cert",
            "By=spiffe://cluster.local/ns/shop/sa/web;URI=spiffe://cluster.local/ns/shop/sa/gateway",
        )
        .header("x-canary", "true")
        .body(Full::default())
        .unwrap();
    let (status, headers, body, _) = get(&http1(), req).await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-served-by"], "web-1");
    assert_eq!(headers["x-version"], "v1");
    let echo: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(echo["service"], "web");
    assert_eq!(echo["path"], "/hello");
    assert_eq!(echo["query"], "x=1");
    assert_eq!(echo["httpVersion"], "HTTP/1.1");
    assert_eq!(echo["headers"]["x-canary"], "true");
    assert!(
        echo["clientCert"]
            .as_str()
            .unwrap()
            .contains("URI=spiffe://cluster.local/ns/shop/sa/gateway")
    );

    let h2 = Client::builder(TokioExecutor::new()).http2_only(true).build_http();
    let (status, _, body, _) = get(&h2, Request::get(&url).body(Full::default()).unwrap()).await;
    assert_eq!(status, 200);
    let echo: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(echo["httpVersion"], "HTTP/2.0");
    assert!(echo["clientCert"].is_null());
}

#[tokio::test]
async fn forwards_calls_and_propagates_trace_and_listed_headers() {
    let db = app("db").await;
    let mut s = Settings::echo("payment", "127.0.0.1:0".parse().unwrap());
    s.forwards = vec![format!("/pay=http://{}/query", db.http_addr).parse().unwrap()];
    let payment = trellis_testapp::start(s).await.unwrap();
    let req = Request::get(format!("http://{}/pay/42?k=v", payment.http_addr))
        .header("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        .header("x-canary", "true")
        .header("x-secret", "not propagated")
        .body(Full::default())
        .unwrap();
    let (status, _, body, _) = get(&http1(), req).await;
    assert_eq!(status, 200);
    let echo: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(echo["service"], "payment");
    let upstream = &echo["upstream"];
    assert_eq!(upstream["status"], 200);
    assert_eq!(upstream["url"], format!("http://{}/query/42?k=v", db.http_addr));
    let db_echo = &upstream["body"];
    assert_eq!(db_echo["service"], "db");
    assert_eq!(db_echo["path"], "/query/42");
    assert_eq!(
        db_echo["headers"]["traceparent"],
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    );
    assert_eq!(db_echo["headers"]["x-canary"], "true");
    assert!(db_echo["headers"].get("x-secret").is_none());

    // An upstream failure is passed on with its status; no answer is a 502.
    db.set_behaviour(Behaviour {
        fail_status: Some(503),
        ..Default::default()
    });
    let (status, _, _, _) = get(
        &http1(),
        Request::get(format!("http://{}/pay", payment.http_addr))
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(status, 503);
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut s = Settings::echo("payment", "127.0.0.1:0".parse().unwrap());
    s.forwards = vec![format!("/pay=http://{closed}/query").parse().unwrap()];
    let orphan = trellis_testapp::start(s).await.unwrap();
    let (status, _, body, _) = get(
        &http1(),
        Request::get(format!("http://{}/pay", orphan.http_addr))
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(status, 502);
    let echo: Value = serde_json::from_slice(&body).unwrap();
    assert!(echo["upstream"]["error"].as_str().unwrap().contains("calling http://"));
}

#[tokio::test]
async fn fails_and_slows_down_on_demand() {
    let a = app("payment").await;
    let client = http1();
    let base = format!("http://{}", a.http_addr);
    let (status, _, _, _) = get(
        &client,
        Request::get(format!("{base}/x?status=504"))
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(status, 504);
    let started = Instant::now();
    let (status, _, _, _) = get(
        &client,
        Request::get(format!("{base}/x?delay=150"))
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert!(started.elapsed() >= Duration::from_millis(150));
    let (status, _, body, _) = get(
        &client,
        Request::get(format!("{base}/x?size=1024"))
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!((status, body.len()), (200, 1024));
    let (status, _, body, _) = get(
        &client,
        Request::get(format!("{base}/x?status=abc"))
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("status=abc"));

    // At run time through the admin route: every request fails, probes don't.
    let put = |json: &str| {
        Request::put(format!("{base}/admin/behaviour"))
            .body(Full::new(Bytes::from(json.to_string())))
            .unwrap()
    };
    let (status, _, body, _) = get(&client, put(r#"{"failStatus":503,"failRate":2}"#)).await;
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("failRate"));
    let (status, _, body, _) = get(&client, put(r#"{"failStatus":503,"failRte":1}"#)).await;
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("failRte"));
    let (status, _, _, _) = get(&client, put(r#"{"failStatus":503}"#)).await;
    assert_eq!(status, 200);
    for _ in 0..5 {
        let (status, _, _, _) = get(
            &client,
            Request::get(format!("{base}/x")).body(Full::default()).unwrap(),
        )
        .await;
        assert_eq!(status, 503);
    }
    let (status, _, _, _) = get(
        &client,
        Request::get(format!("{base}/healthz")).body(Full::default()).unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    let (_, _, body, _) = get(
        &client,
        Request::get(format!("{base}/admin/behaviour"))
            .body(Full::default())
            .unwrap(),
    )
    .await;
    let b: Behaviour = serde_json::from_slice(&body).unwrap();
    assert_eq!(b.fail_status, Some(503));
}

#[tokio::test]
async fn serves_a_file_as_it_is_now() {
    let dir = std::env::temp_dir().join(format!("testapp-files-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let keys = dir.join("jwks.json");
    std::fs::write(&keys, r#"{"keys":[]}"#).unwrap();
    let mut s = Settings::echo("keys", "127.0.0.1:0".parse().unwrap());
    s.files = vec![
        format!("/jwks.json={}", keys.display()).parse().unwrap(),
        format!("/gone={}", dir.join("missing").display()).parse().unwrap(),
    ];
    let app = trellis_testapp::start(s).await.unwrap();
    let url = |p: &str| format!("http://{}{p}", app.http_addr);
    let (status, headers, body, _) =
        get(&http1(), Request::get(url("/jwks.json")).body(Full::default()).unwrap()).await;
    assert_eq!((status, &body[..]), (200, &br#"{"keys":[]}"#[..]));
    assert_eq!(headers["content-type"], "application/json");
    // Read at each request: a changed file (a ConfigMap update) is served at once.
    std::fs::write(&keys, r#"{"keys":[{"kid":"k"}]}"#).unwrap();
    let (_, _, body, _) = get(&http1(), Request::get(url("/jwks.json")).body(Full::default()).unwrap()).await;
    assert_eq!(&body[..], br#"{"keys":[{"kid":"k"}]}"#);
    let (status, _, body, _) = get(&http1(), Request::get(url("/gone")).body(Full::default()).unwrap()).await;
    assert_eq!(status, 404);
    assert!(String::from_utf8_lossy(&body).contains("cannot be read"), "{body:?}");
    // Any other path is still the echo.
    let (status, _, body, _) = get(&http1(), Request::get(url("/other")).body(Full::default()).unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(serde_json::from_slice::<Value>(&body).unwrap()["service"], "keys");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn echoes_grpc_messages_with_status_trailers() {
    let a = app("grpc").await;
    let h2 = Client::builder(TokioExecutor::new()).http2_only(true).build_http();
    let message = Bytes::from_static(b"\x00\x00\x00\x00\x05hello");
    let req = |path: &str| {
        Request::post(format!("http://{}{path}", a.http_addr))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(Full::new(message.clone()))
            .unwrap()
    };
    let (status, headers, body, trailers) = get(&h2, req("/echo.Echo/Say")).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/grpc");
    assert_eq!(body, message);
    assert_eq!(trailers.unwrap()["grpc-status"], "0");
    a.set_behaviour(Behaviour {
        fail_status: Some(503),
        ..Default::default()
    });
    let (_, _, body, trailers) = get(&h2, req("/echo.Echo/Say")).await;
    assert!(body.is_empty());
    assert_eq!(trailers.unwrap()["grpc-status"], "14");
}

#[tokio::test]
async fn echoes_opaque_tcp() {
    let a = app("tcp").await;
    let mut stream = tokio::net::TcpStream::connect(a.tcp_addr.unwrap()).await.unwrap();
    stream.write_all(b"ping\x00\xffpong").await.unwrap();
    let mut buf = [0u8; 10];
    stream.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping\x00\xffpong");
}

#[tokio::test]
async fn keeps_otlp_exports_as_a_trace_collector() {
    let a = app("collector").await;
    let client = http1();
    let url = format!("http://{}/v1/traces", a.http_addr);
    let export = r#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"0af7651916cd43dd8448eb211c80319c"}]}]}]}"#;
    let (status, _, _, _) = get(
        &client,
        Request::post(&url)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(export.as_bytes())))
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _, body, _) = get(
        &client,
        Request::post(&url)
            .body(Full::new(Bytes::from_static(b"\x0a\x01")))
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("OTLP/HTTP JSON"));
    let (_, _, body, _) = get(&client, Request::get(&url).body(Full::default()).unwrap()).await;
    let listed: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(listed["exports"].as_array().unwrap().len(), 1);
    assert_eq!(
        listed["exports"][0]["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["traceId"],
        "0af7651916cd43dd8448eb211c80319c"
    );
    // One trace's spans only: other traces' spans and exports without any are left out.
    let other = r#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"0af7651916cd43dd8448eb211c80319c"},{"traceId":"11111111111111111111111111111111"}]}]}]}"#;
    let (status, _, _, _) = get(
        &client,
        Request::post(&url)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(other.as_bytes())))
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    let one = format!("{url}?traceId=11111111111111111111111111111111");
    let (_, _, body, _) = get(&client, Request::get(&one).body(Full::default()).unwrap()).await;
    let listed: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        listed["exports"],
        serde_json::json!([{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"11111111111111111111111111111111"}]}]}]}])
    );
}

#[tokio::test]
async fn counts_its_requests_in_its_own_prometheus_metrics() {
    let a = app("db").await;
    let client = http1();
    let base = format!("http://{}", a.http_addr);
    let metrics = || Request::get(format!("{base}/metrics")).body(Full::default()).unwrap();
    let (status, headers, body, _) = get(&client, metrics()).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "text/plain; version=0.0.4");
    let text = String::from_utf8(body.to_vec()).unwrap();
    assert!(text.contains("# TYPE testapp_requests_total counter\n"), "{text}");
    assert!(
        text.contains("testapp_requests_total{service=\"db\",version=\"v1\"} 0\n"),
        "{text}"
    );
    for path in ["/db/a", "/db/b", "/healthz", "/db/c"] {
        get(
            &client,
            Request::get(format!("{base}{path}")).body(Full::default()).unwrap(),
        )
        .await;
    }
    // Three answered requests: probes and the metrics themselves do not count.
    let (_, _, body, _) = get(&client, metrics()).await;
    let text = String::from_utf8(body.to_vec()).unwrap();
    assert!(
        text.contains("testapp_requests_total{service=\"db\",version=\"v1\"} 3\n"),
        "{text}"
    );
}

#[tokio::test]
async fn exchanges_bytes_with_a_tcp_echo_on_request() {
    let db = app("db").await;
    let web = app("web").await;
    let client = http1();
    let echo_addr = db.tcp_addr.unwrap();
    let (status, _, body, _) = get(
        &client,
        Request::get(format!(
            "http://{}/api?tcp@web={echo_addr}&tcpbytes@web=3000",
            web.http_addr
        ))
        .body(Full::default())
        .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    let echo: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(echo["tcp"]["addr"], echo_addr.to_string());
    assert_eq!(echo["tcp"]["sent"], 3000);
    assert_eq!(echo["tcp"]["received"], 3000);
    assert!(echo["tcp"]["error"].is_null(), "{echo}");
    // Nothing listening: the exchange fails and says so; the request is still answered.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let nowhere = closed.local_addr().unwrap();
    drop(closed);
    let (status, _, body, _) = get(
        &client,
        Request::get(format!("http://{}/api?tcp={nowhere}", web.http_addr))
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    let echo: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(echo["tcp"]["sent"], 0);
    assert!(echo["tcp"]["error"].as_str().is_some(), "{echo}");
    // Too many bytes asked for: a clear 400.
    let (status, _, body, _) = get(
        &client,
        Request::get(format!(
            "http://{}/api?tcp={echo_addr}&tcpbytes=99999999",
            web.http_addr
        ))
        .body(Full::default())
        .unwrap(),
    )
    .await;
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("tcpbytes=99999999"));
}

/// The app with an HTTPS listener serving a certificate for `secure.example.com`, and that
/// certificate (PEM) for clients to trust.
async fn https_app(dir: &std::path::Path) -> (Running, String) {
    let certified = rcgen::generate_simple_self_signed(vec!["secure.example.com".to_string()]).unwrap();
    let cert_pem = certified.cert.pem();
    let cert_file = dir.join("tls.crt");
    let key_file = dir.join("tls.key");
    std::fs::write(&cert_file, &cert_pem).unwrap();
    std::fs::write(&key_file, certified.signing_key.serialize_pem()).unwrap();
    let mut s = Settings::echo("external", "127.0.0.1:0".parse().unwrap());
    s.https = Some(trellis_testapp::HttpsSettings {
        addr: "127.0.0.1:0".parse().unwrap(),
        cert_file,
        key_file,
    });
    (trellis_testapp::start(s).await.unwrap(), cert_pem)
}

/// `GET /hello` over TLS to `addr` asking for `server_name`, trusting `ca_pem`; the echo.
async fn get_over_tls(addr: std::net::SocketAddr, server_name: &str, ca_pem: &str) -> Value {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(server_name.to_string()).unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    let request = format!("GET /hello HTTP/1.1\r\nhost: {server_name}\r\nconnection: close\r\n\r\n");
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tls.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8(answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let (_, body) = answer.split_once("\r\n\r\n").unwrap();
    serde_json::from_str(body).unwrap()
}

#[tokio::test]
async fn the_https_listener_answers_over_tls_and_reports_the_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let (app, cert_pem) = https_app(dir.path()).await;
    let addr = app.https_addr.expect("the HTTPS listener is bound");
    let echo = get_over_tls(addr, "secure.example.com", &cert_pem).await;
    assert_eq!(echo["service"], "external");
    assert_eq!(echo["path"], "/hello");
    assert_eq!(echo["tls"]["sni"], "secure.example.com", "{echo}");
    assert_eq!(echo["tls"]["version"], "TLSv1_3", "{echo}");
    assert!(echo["tls"]["alpn"].is_null(), "the client offered no ALPN: {echo}");
    // The plaintext listener's answers carry no handshake.
    let plain: Value = serde_json::from_slice(
        &get(
            &http1(),
            Request::get(format!("http://{}/hello", app.http_addr))
                .body(Full::default())
                .unwrap(),
        )
        .await
        .2,
    )
    .unwrap();
    assert_eq!(plain["service"], "external");
    assert!(plain.get("tls").is_none(), "{plain}");
}

#[tokio::test]
async fn an_https_listener_without_its_key_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Settings::echo("external", "127.0.0.1:0".parse().unwrap());
    s.https = Some(trellis_testapp::HttpsSettings {
        addr: "127.0.0.1:0".parse().unwrap(),
        cert_file: dir.path().join("tls.crt"),
        key_file: dir.path().join("tls.key"),
    });
    let err = trellis_testapp::start(s).await.unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("tls.crt") && text.contains("TESTAPP_TLS_CERT"), "{text}");
}
