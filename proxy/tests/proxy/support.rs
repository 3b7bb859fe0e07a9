//! Test support: loopback upstream servers, a client, PKI with rcgen, and
//! starting the proxy in process.

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use trellis_contract::ProxyConfig;
use trellis_proxy::{App, AppConfig};

/// What an upstream test server saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub headers: HeaderMap,
    pub version: http::Version,
    /// `:authority` or Host.
    pub authority: String,
    /// Request body.
    pub body: String,
}

/// A loopback HTTP server (h1 and h2c) that answers by path:
/// `/status/<code>` returns that code, `/delay/<ms>` sleeps first; every
/// response carries `x-server: <name>` and the body `<name> <path>`.
pub struct Upstream {
    pub name: String,
    pub addr: SocketAddr,
    pub hits: Arc<AtomicU64>,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    pub async fn start(name: &str) -> Self {
        Self::start_with(name, None).await
    }

    /// Like `start`, but every response has this status.
    pub async fn failing(name: &str, status: u16) -> Self {
        Self::start_with(name, Some(status)).await
    }

    async fn start_with(name: &str, fixed_status: Option<u16>) -> Self {
        Self::serve(name, fixed_status, TcpListener::bind("127.0.0.1:0").await.unwrap())
    }

    /// Like `start`, on `listener` (e.g. bound to another loopback address).
    pub fn on(name: &str, listener: TcpListener) -> Self {
        Self::serve(name, None, listener)
    }

    fn serve(name: &str, fixed_status: Option<u16>, listener: TcpListener) -> Self {
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicU64::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (n, h, s) = (name.to_string(), Arc::clone(&hits), Arc::clone(&seen));
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (n, h, s) = (n.clone(), Arc::clone(&h), Arc::clone(&s));
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (n, h, s) = (n.clone(), Arc::clone(&h), Arc::clone(&s));
                        async move {
                            h.fetch_add(1, Ordering::SeqCst);
                            let path = req.uri().path().to_string();
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
                            s.lock().unwrap().push(Seen {
                                path: parts
                                    .uri
                                    .path_and_query()
                                    .map(|p| p.as_str().to_string())
                                    .unwrap_or_default(),
                                headers: parts.headers.clone(),
                                version: parts.version,
                                authority: parts
                                    .uri
                                    .authority()
                                    .map(|a| a.to_string())
                                    .or_else(|| {
                                        parts
                                            .headers
                                            .get("host")
                                            .and_then(|h| h.to_str().ok())
                                            .map(str::to_string)
                                    })
                                    .unwrap_or_default(),
                                body: String::from_utf8_lossy(&body).into_owned(),
                            });
                            let mut status = fixed_status.unwrap_or(200);
                            if let Some(code) = path.strip_prefix("/status/") {
                                status = code.parse().unwrap_or(500);
                            }
                            if let Some(ms) = path.strip_prefix("/delay/") {
                                let ms: u64 = ms.parse().unwrap_or(0);
                                tokio::time::sleep(Duration::from_millis(ms)).await;
                            }
                            let text = if body.is_empty() {
                                format!("{n} {path}")
                            } else {
                                format!("{n} {path} {}", String::from_utf8_lossy(&body))
                            };
                            let resp = http::Response::builder()
                                .status(status)
                                .header("x-server", n.as_str())
                                .body(Full::new(Bytes::from(text)))
                                .unwrap();
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        Self {
            name: name.to_string(),
            addr,
            hits,
            seen,
            task,
        }
    }

    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }

    pub fn last_seen(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("upstream saw a request")
    }

    /// Endpoint JSON for this server.
    pub fn endpoint(&self) -> Value {
        serde_json::json!({"address": "127.0.0.1", "port": self.addr.port(), "labels": {"app": self.name, "version": self.name}})
    }
}

/// A response, collected.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn server(&self) -> &str {
        self.headers.get("x-server").and_then(|v| v.to_str().ok()).unwrap_or("")
    }
}

/// Send one HTTP/1.1 request on a fresh connection.
pub async fn send(addr: SocketAddr, method: &str, host: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    send_body(addr, method, host, path, headers, Bytes::new()).await
}

pub async fn get(addr: SocketAddr, host: &str, path: &str) -> Reply {
    send(addr, "GET", host, path, &[]).await
}

pub async fn send_body(
    addr: SocketAddr,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Reply {
    let tcp = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await
        .expect("connect timeout")
        .expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(conn);
    let mut b = Request::builder().method(method).uri(path).header("host", host);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b.body(Full::new(body)).unwrap();
    collect(
        tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
            .await
            .expect("response timeout")
            .expect("response"),
    )
    .await
}

/// Send one HTTP/2 prior-knowledge (h2c) request.
pub async fn send_h2(addr: SocketAddr, authority: &str, path: &str) -> Reply {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .uri(format!("http://{authority}{path}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    collect(
        tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
            .await
            .expect("response timeout")
            .expect("response"),
    )
    .await
}

async fn collect(resp: http::Response<Incoming>) -> Reply {
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// Write raw bytes and read one response (head plus Content-Length body),
/// or until the peer closes or `timeout` passes (for malformed-request tests).
pub async fn raw(addr: SocketAddr, bytes: &[u8], timeout: Duration) -> String {
    use tokio::io::AsyncWriteExt;
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = tcp.write_all(bytes).await;
    read_reply(&mut tcp, timeout).await.0
}

/// Read one response (head plus Content-Length body) from `tcp`, or what arrives until the peer
/// closes or `timeout` passes; and whether the response came whole.
pub async fn read_reply(tcp: &mut tokio::net::TcpStream, timeout: Duration) -> (String, bool) {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return (String::from_utf8_lossy(&out).into_owned(), false),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
        let text = String::from_utf8_lossy(&out);
        if let Some(end) = text.find("\r\n\r\n") {
            let len = text[..end]
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if out.len() >= end + 4 + len {
                return (text.into_owned(), true);
            }
        }
    }
}

/// A proxy with one outbound listener under `limits`, forwarding everything to upstream `a`;
/// the upstream, the proxy and the listener's address.
pub async fn proxy_with_limits(limits: Value) -> (Upstream, Proxy, SocketAddr) {
    let a = Upstream::start("a").await;
    let mut cfg = outbound_config("1", vec![forward_route("a")], vec![cluster("a", &[&a])]);
    cfg["listeners"][0]["limits"] = limits;
    let proxy = Proxy::start(cfg).await;
    let addr = proxy.addr("outbound").await;
    (a, proxy, addr)
}

/// Send `ping` on `s` every 200 ms for `how_long`, each echoed back in time: the stream stays
/// open (an upgraded stream or tunnel to an echo server).
pub async fn echoes_for(s: &mut tokio::net::TcpStream, how_long: Duration) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let start = std::time::Instant::now();
    while start.elapsed() < how_long {
        s.write_all(b"ping").await.expect("the stream is open");
        let mut echo = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut echo))
            .await
            .expect("echoed in time")
            .unwrap_or_else(|e| panic!("closed {:?} into the stream: {e}", start.elapsed()));
        assert_eq!(&echo, b"ping");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A proxy running in process.
pub struct Proxy {
    pub app: App,
}

impl Proxy {
    pub async fn start(config: Value) -> Self {
        let app = App::start(AppConfig::admin_only("127.0.0.1:0".parse().unwrap()))
            .await
            .unwrap();
        let cfg: ProxyConfig = serde_json::from_value(config).expect("test config parses");
        app.apply(cfg).await.expect("test config applies");
        Self { app }
    }

    pub async fn addr(&self, listener: &str) -> SocketAddr {
        self.app.listener_addr(listener).await.expect("listener bound")
    }

    pub fn admin(&self) -> SocketAddr {
        self.app.admin_addr(trellis_proxy::admin::AdminRole::Admin).unwrap()
    }

    pub async fn apply(&self, config: Value) -> Result<(), trellis_proxy::ApplyError> {
        let cfg: ProxyConfig = serde_json::from_value(config).expect("test config parses");
        self.app.apply(cfg).await
    }
}

/// A raw HTTP/1.1 upstream that accepts an upgrade to `echo` (101 Switching Protocols) and
/// then echoes every byte; the cluster `name` over it.
pub async fn echo_upgrade_cluster(name: &str) -> Value {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if s.read_exact(&mut b).await.is_err() {
                        return;
                    }
                    head.push(b[0]);
                }
                if !String::from_utf8_lossy(&head)
                    .to_ascii_lowercase()
                    .contains("upgrade: echo")
                {
                    let _ = s
                        .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                        .await;
                    return;
                }
                let switched = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n";
                if s.write_all(switched).await.is_ok() {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                }
            });
        }
    });
    serde_json::json!({"name": name, "endpoints": [{"address": "127.0.0.1", "port": port}]})
}

/// A connection to `addr` upgraded to `echo` ([`echo_upgrade_cluster`] behind the route):
/// the request sent and the 101 read.
pub async fn upgraded_to_echo(addr: SocketAddr) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /chat HTTP/1.1\r\nHost: svc\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tokio::time::timeout(Duration::from_secs(3), s.read_exact(&mut b))
            .await
            .expect("the upgrade answered in time")
            .expect("the upgrade answered");
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s
}

pub fn provenance() -> Value {
    serde_json::json!({"kind": "VirtualService", "namespace": "test", "name": "vs", "ruleIndex": 0})
}

/// A route forwarding to one cluster, matching everything.
pub fn forward_route(cluster: &str) -> Value {
    serde_json::json!({"action": {"forward": {"clusters": [{"cluster": cluster}]}}, "provenance": provenance()})
}

/// A cluster over these upstreams.
pub fn cluster(name: &str, upstreams: &[&Upstream]) -> Value {
    serde_json::json!({
        "name": name,
        "service": format!("{name}.test.svc.cluster.local"),
        "endpoints": upstreams.iter().map(|u| u.endpoint()).collect::<Vec<_>>(),
    })
}

/// A one-listener outbound config with these routes and clusters.
pub fn outbound_config(version: &str, routes: Vec<Value>, clusters: Vec<Value>) -> Value {
    serde_json::json!({
        "version": version,
        "node": {"workload": "client", "namespace": "test", "app": "client", "version": "v1"},
        "listeners": [{
            "name": "outbound",
            "address": "127.0.0.1:0",
            "direction": "outbound",
            "protocol": "http",
            "virtualHosts": [{"name": "svc", "domains": ["*"], "routes": routes}],
        }],
        "clusters": clusters,
    })
}

/// A test CA minting SPIFFE leaf certificates.
pub struct Pki {
    ca_cert: rcgen::Certificate,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

/// PEM material of one workload.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Leaf {
    /// The certificate chain, DER.
    pub fn chain(&self) -> Vec<rustls::pki_types::CertificateDer<'static>> {
        rustls_pemfile::certs(&mut self.cert_pem.as_bytes())
            .map(|c| c.unwrap())
            .collect()
    }

    /// The private key, DER.
    pub fn key(&self) -> rustls::pki_types::PrivateKeyDer<'static> {
        rustls_pemfile::private_key(&mut self.key_pem.as_bytes())
            .unwrap()
            .unwrap()
    }
}

/// `pem` written to a file in a temporary directory (for curl's `--cacert`), kept while the
/// directory lives.
pub fn pem_file(pem: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ca.pem");
    std::fs::write(&path, pem).unwrap();
    (dir, path)
}

/// A rustls client trusting `root_pem`, presenting `client` when given.
pub fn tls_client(root_pem: &str, client: Option<&Leaf>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut root_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    Arc::new(match client {
        Some(leaf) => builder.with_client_auth_cert(leaf.chain(), leaf.key()).unwrap(),
        None => builder.with_no_client_auth(),
    })
}

impl Pki {
    pub fn new() -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "trellis test root");
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca_cert = params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(params, ca_key);
        Self { ca_cert, issuer }
    }

    pub fn root_pem(&self) -> String {
        self.ca_cert.pem()
    }

    /// The CA, to sign leaves of a test's own shape.
    pub fn issuer(&self) -> &rcgen::Issuer<'static, rcgen::KeyPair> {
        &self.issuer
    }

    /// A certificate revocation list (PEM) of this CA, valid until 2099, revoking the
    /// certificates with these serial numbers.
    pub fn crl(&self, revoked: &[u64]) -> String {
        rcgen::CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2024, 1, 1),
            next_update: rcgen::date_time_ymd(2099, 1, 1),
            crl_number: rcgen::SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|&serial| rcgen::RevokedCertParams {
                    serial_number: rcgen::SerialNumber::from(serial),
                    revocation_time: rcgen::date_time_ymd(2024, 1, 1),
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        }
        .signed_by(&self.issuer)
        .unwrap()
        .pem()
        .unwrap()
    }

    /// A leaf with exactly one URI SAN.
    pub fn leaf(&self, spiffe: &str) -> Leaf {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = vec![rcgen::SanType::URI(rcgen::string::Ia5String::try_from(spiffe).unwrap())];
        params.is_ca = rcgen::IsCa::ExplicitNoCa;
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// A leaf for a DNS name (gateway server certificates).
    pub fn dns_leaf(&self, name: &str) -> Leaf {
        let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
        params.is_ca = rcgen::IsCa::ExplicitNoCa;
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// The `identity` section for a workload.
    pub fn identity(&self, spiffe: &str) -> Value {
        let leaf = self.leaf(spiffe);
        serde_json::json!({
            "trustDomain": "cluster.local",
            "spiffeId": spiffe,
            "certificate": {"inline": {"certChainPem": leaf.cert_pem, "privateKeyPem": leaf.key_pem}},
            "trustBundle": {"inline": self.root_pem()},
        })
    }
}

/// Count responses by `x-server`.
pub fn tally(replies: &[Reply]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for r in replies {
        *m.entry(r.server().to_string()).or_insert(0) += 1;
    }
    m
}
