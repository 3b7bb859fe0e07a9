//! Startup, readiness and liveness probes (`httpGet`, `tcpSocket`, `exec`,
//! `grpc` is reported as unsupported), run from inside the pod's network
//! namespace with the probe's timing fields honoured.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::process::{self, ExecTarget};

/// What a container instance's probes found; read by the pod worker.
#[derive(Debug, Default)]
pub struct ProbeFlags {
    /// The startup probe succeeded (or there is none).
    pub started: AtomicBool,
    /// The readiness probe's verdict (the container counts as ready only
    /// once started).
    pub ready: AtomicBool,
    /// A liveness or startup probe failed `failureThreshold` times: the
    /// container must be restarted.
    pub kill: AtomicBool,
    /// Why `kill` was set.
    pub kill_reason: std::sync::Mutex<String>,
    /// Failed probe attempts so far, and the last one's message (for the
    /// kubelet's `Unhealthy` events).
    pub failures: std::sync::atomic::AtomicU64,
    pub last_failure: std::sync::Mutex<String>,
}

impl ProbeFlags {
    fn failed(&self, kind: &str, e: &str) {
        *self
            .last_failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = format!("{kind} probe failed: {e}");
        self.failures.fetch_add(1, Ordering::SeqCst);
    }
}

/// Where probes go.
#[derive(Debug, Clone)]
pub struct ProbeTarget {
    pub ip: String,
    pub netns: Option<PathBuf>,
    pub exec: ExecTarget,
    /// The container's `ports` (for named ports).
    pub ports: Value,
}

/// A probe's timing, with Kubernetes' defaults.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

impl Timing {
    pub fn of(p: &Value) -> Self {
        let secs = |f: &str, d: u64| Duration::from_secs(p[f].as_u64().unwrap_or(d));
        Self {
            initial_delay: secs("initialDelaySeconds", 0),
            period: secs("periodSeconds", 10).max(Duration::from_secs(1)),
            timeout: secs("timeoutSeconds", 1).max(Duration::from_secs(1)),
            success_threshold: p["successThreshold"].as_u64().unwrap_or(1).max(1) as u32,
            failure_threshold: p["failureThreshold"].as_u64().unwrap_or(3).max(1) as u32,
        }
    }
}

fn resolve_port(port: &Value, ports: &Value) -> Result<u16, String> {
    if let Some(n) = port.as_u64() {
        return u16::try_from(n).map_err(|_| format!("bad port {n}"));
    }
    let name = port.as_str().unwrap_or_default();
    if let Ok(n) = name.parse::<u16>() {
        return Ok(n);
    }
    ports
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == name)
        .and_then(|p| p["containerPort"].as_u64())
        .and_then(|n| u16::try_from(n).ok())
        .ok_or_else(|| format!("port name {name:?} not found in the container's ports"))
}

async fn connect(t: &ProbeTarget, host: &str, port: u16) -> Result<tokio::net::TcpStream, String> {
    let ip: std::net::IpAddr = host
        .parse()
        .or_else(|_| {
            if host == "localhost" {
                Ok("127.0.0.1".parse().unwrap_or(std::net::Ipv4Addr::LOCALHOST.into()))
            } else {
                Err(())
            }
        })
        .map_err(|_| format!("probe host {host:?} is not an IP address"))?;
    let addr = std::net::SocketAddr::new(ip, port);
    let r = match &t.netns {
        Some(ns) => crate::network::netns::connect(ns, addr).await,
        None => tokio::net::TcpStream::connect(addr).await,
    };
    r.map_err(|e| format!("dial tcp {addr}: {e}"))
}

/// Accepts any server certificate (HTTPS probes skip verification, as the
/// kubelet does).
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

async fn http_get(t: &ProbeTarget, spec: &Value) -> Result<(), String> {
    let port = resolve_port(&spec["port"], &t.ports)?;
    let host = spec["host"]
        .as_str()
        .filter(|h| !h.is_empty())
        .unwrap_or(&t.ip)
        .to_string();
    let path = spec["path"].as_str().filter(|p| !p.is_empty()).unwrap_or("/");
    let mut req = format!("GET {path} HTTP/1.1\r\n");
    let mut has_host = false;
    let mut headers = String::new();
    for h in spec["httpHeaders"].as_array().into_iter().flatten() {
        let n = h["name"].as_str().unwrap_or_default();
        has_host |= n.eq_ignore_ascii_case("host");
        headers.push_str(&format!("{n}: {}\r\n", h["value"].as_str().unwrap_or_default()));
    }
    if !has_host {
        req.push_str(&format!("Host: {host}:{port}\r\n"));
    }
    req.push_str("User-Agent: kube-probe/1.32\r\nAccept: */*\r\nConnection: close\r\n");
    req.push_str(&headers);
    req.push_str("\r\n");
    let tcp = connect(t, &host, port).await?;
    let mut buf = Vec::new();
    if spec["scheme"].as_str() == Some("HTTPS") {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
            .with_no_client_auth();
        let name =
            rustls::pki_types::ServerName::try_from(host.clone()).map_err(|e| format!("server name {host}: {e}"))?;
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake: {e}"))?;
        tls.write_all(req.as_bytes()).await.map_err(|e| e.to_string())?;
        read_head(&mut tls, &mut buf).await?;
    } else {
        let mut tcp = tcp;
        tcp.write_all(req.as_bytes()).await.map_err(|e| e.to_string())?;
        read_head(&mut tcp, &mut buf).await?;
    }
    let head = String::from_utf8_lossy(&buf);
    let code: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("malformed HTTP response {:?}", head.lines().next().unwrap_or_default()))?;
    if (200..400).contains(&code) {
        Ok(())
    } else {
        Err(format!("HTTP probe failed with statuscode: {code}"))
    }
}

async fn read_head<S: tokio::io::AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>) -> Result<(), String> {
    let mut chunk = [0u8; 1024];
    while !buf.windows(2).any(|w| w == b"\r\n") {
        let n = s.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > 16 * 1024 {
            break;
        }
    }
    Ok(())
}

/// Runs one probe attempt.
pub async fn run_once(t: &ProbeTarget, probe: &Value) -> Result<(), String> {
    let timing = Timing::of(probe);
    let attempt = async {
        if let Some(h) = probe.get("httpGet") {
            http_get(t, h).await
        } else if let Some(s) = probe.get("tcpSocket") {
            let port = resolve_port(&s["port"], &t.ports)?;
            let host = s["host"]
                .as_str()
                .filter(|h| !h.is_empty())
                .unwrap_or(&t.ip)
                .to_string();
            connect(t, &host, port).await.map(drop)
        } else if let Some(e) = probe.get("exec") {
            let argv: Vec<String> = e["command"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|a| a.as_str().map(str::to_string))
                .collect();
            let out = process::exec_command(&t.exec, &argv)
                .stdin(std::process::Stdio::null())
                .output()
                .await
                .map_err(|e| e.to_string())?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "command {argv:?} exited with {}: {}",
                    out.status.code().unwrap_or(-1),
                    String::from_utf8_lossy(&out.stdout).trim()
                ))
            }
        } else if probe.get("grpc").is_some() {
            Err("grpc probes are not supported by kubesim".into())
        } else {
            Err("probe has no handler".into())
        }
    };
    match tokio::time::timeout(timing.timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(format!("probe timed out after {:?}", timing.timeout)),
    }
}

/// Runs a container instance's probes until the task is aborted.
pub async fn run(container: Value, target: ProbeTarget, flags: Arc<ProbeFlags>) {
    let kill = |why: String| {
        *flags
            .kill_reason
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = why;
        flags.kill.store(true, Ordering::SeqCst);
    };
    // Wait until the set-up script has handed over to the program (its
    // environment is the container's then), so exec probes and hooks see the
    // container's mounts.
    for _ in 0..500 {
        if super::pod::read_environ(target.exec.pid)
            .iter()
            .any(|(k, _)| k == "HOSTNAME")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if let Some(h) = container.pointer("/lifecycle/postStart").filter(|h| h.is_object()) {
        let mut hook = h.clone();
        hook["timeoutSeconds"] = serde_json::json!(30);
        if let Err(e) = run_once(&target, &hook).await {
            kill(format!("PostStartHook failed: {e}"));
            return;
        }
    }
    if let Some(p) = container.get("startupProbe").filter(|p| p.is_object()) {
        let t = Timing::of(p);
        tokio::time::sleep(t.initial_delay).await;
        let mut failures = 0;
        loop {
            match run_once(&target, p).await {
                Ok(()) => break,
                Err(e) => {
                    failures += 1;
                    flags.failed("Startup", &e);
                    if failures >= t.failure_threshold {
                        kill(format!("Startup probe failed: {e}"));
                        return;
                    }
                }
            }
            tokio::time::sleep(t.period).await;
        }
    }
    flags.started.store(true, Ordering::SeqCst);
    let readiness = {
        let (target, flags) = (target.clone(), flags.clone());
        let probe = container.get("readinessProbe").filter(|p| p.is_object()).cloned();
        async move {
            let Some(p) = probe else {
                flags.ready.store(true, Ordering::SeqCst);
                return;
            };
            let t = Timing::of(&p);
            tokio::time::sleep(t.initial_delay).await;
            let (mut ok, mut bad) = (0u32, 0u32);
            loop {
                match run_once(&target, &p).await {
                    Ok(()) => {
                        ok += 1;
                        bad = 0;
                        if ok >= t.success_threshold {
                            flags.ready.store(true, Ordering::SeqCst);
                        }
                    }
                    Err(e) => {
                        flags.failed("Readiness", &e);
                        bad += 1;
                        ok = 0;
                        if bad >= t.failure_threshold {
                            flags.ready.store(false, Ordering::SeqCst);
                        }
                    }
                }
                tokio::time::sleep(t.period).await;
            }
        }
    };
    let liveness = {
        let probe = container.get("livenessProbe").filter(|p| p.is_object()).cloned();
        let target = target.clone();
        let flags = flags.clone();
        async move {
            let Some(p) = probe else { return };
            let t = Timing::of(&p);
            tokio::time::sleep(t.initial_delay).await;
            let mut bad = 0u32;
            loop {
                match run_once(&target, &p).await {
                    Ok(()) => bad = 0,
                    Err(e) => {
                        flags.failed("Liveness", &e);
                        bad += 1;
                        if bad >= t.failure_threshold {
                            kill(format!("Liveness probe failed: {e}"));
                            return;
                        }
                    }
                }
                tokio::time::sleep(t.period).await;
            }
        }
    };
    tokio::join!(readiness, liveness);
}
