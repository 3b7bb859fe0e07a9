//! `trellis-testapp`: the workload of Trellis' end-to-end suite and demo.
//!
//! One small server that plays any service of the shop (`web`, `payment`,
//! `db`, ...): it echoes what it received as JSON (headers, and the
//! caller's verified identity from `x-forwarded-client-cert`), calls other
//! services (forward prefixes, `/call?url=`), propagates trace headers,
//! and fails or slows down on demand (query parameters, or
//! `/admin/behaviour` at run time). It speaks HTTP/1.1 and h2c on one port
//! (gRPC too: messages echoed with a `grpc-status` trailer) and,
//! optionally, opaque TCP echo on another and the same routes over TLS on a
//! third ([`tls`]: a server outside the mesh that a proxy originates TLS
//! to). See [`http`] for the routes.
//!
//! # Guarantees
//! - Never panics on input: bad requests get a 4xx answer saying what to send.
//! - Bodies are bounded (1 MiB in, 16 MiB `size=` out).
//! - [`start`] returns once every listener is bound, so `127.0.0.1:0`
//!   works in tests.

pub mod http;
pub mod settings;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, info};

pub use settings::{Behaviour, Forward, ServedFile, Settings, TRACE_HEADERS};
pub use tls::{HttpsSettings, TlsInfo};

/// A running app; stops when [`Running::stop`] is called or it is dropped.
#[derive(Debug)]
pub struct Running {
    /// The bound HTTP address.
    pub http_addr: SocketAddr,
    /// The bound TCP echo address, if configured.
    pub tcp_addr: Option<SocketAddr>,
    /// The bound HTTPS address, if configured.
    pub https_addr: Option<SocketAddr>,
    app: Arc<http::App>,
    stop: watch::Sender<bool>,
}

impl Running {
    /// Changes how the app misbehaves from now on.
    pub fn set_behaviour(&self, behaviour: Behaviour) {
        self.app.set_behaviour(behaviour);
    }

    /// Stops accepting; connections in progress finish on their own.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Binds the listeners and serves on the current Tokio runtime.
pub async fn start(settings: Settings) -> anyhow::Result<Running> {
    settings
        .behaviour
        .validate()
        .map_err(|e| anyhow::anyhow!("initial behaviour: {e}"))?;
    let http_listener = TcpListener::bind(settings.http_addr)
        .await
        .with_context(|| format!("binding the HTTP listener on {}", settings.http_addr))?;
    let http_addr = http_listener.local_addr()?;
    let tcp_listener = match settings.tcp_addr {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the TCP echo listener on {addr}"))?,
        ),
        None => None,
    };
    let tcp_addr = tcp_listener.as_ref().map(TcpListener::local_addr).transpose()?;
    let https = match &settings.https {
        Some(h) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls::server_config(h)?));
            let listener = TcpListener::bind(h.addr)
                .await
                .with_context(|| format!("binding the HTTPS listener on {}", h.addr))?;
            Some((listener, acceptor))
        }
        None => None,
    };
    let https_addr = https.as_ref().map(|(l, _)| l.local_addr()).transpose()?;
    info!(service = %settings.service, version = %settings.version, %http_addr, ?tcp_addr, ?https_addr, "testapp serving");
    let app = Arc::new(http::App::new(settings));
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(serve_http(http_listener, None, app.clone(), stopped.clone()));
    if let Some((listener, acceptor)) = https {
        tokio::spawn(serve_http(listener, Some(acceptor), app.clone(), stopped.clone()));
    }
    if let Some(listener) = tcp_listener {
        tokio::spawn(serve_tcp(listener, stopped));
    }
    Ok(Running {
        http_addr,
        tcp_addr,
        https_addr,
        app,
        stop,
    })
}

/// Accepts connections until stopped, handing each to `serve`.
async fn accept_loop<F, Fut>(listener: TcpListener, mut stopped: watch::Receiver<bool>, serve: F)
where
    F: Fn(tokio::net::TcpStream, std::net::SocketAddr) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        let accepted = tokio::select! {
            _ = stop_requested(&mut stopped) => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                tokio::spawn(serve(stream, peer));
            }
            Err(e) => {
                debug!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Serves HTTP on `listener`: in plaintext, or over TLS with `tls` (each answer then says what
/// the handshake carried).
async fn serve_http(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    app: Arc<http::App>,
    stopped: watch::Receiver<bool>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30));
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    accept_loop(listener, stopped, move |stream, peer| {
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let builder = builder.clone();
        let tls = tls.clone();
        async move {
            let Some(acceptor) = tls else {
                let service = service_fn(move |req| http::handle(app.clone(), peer, None, req));
                if let Err(e) = builder
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .await
                {
                    debug!(%peer, error = %e, "connection ended with an error");
                }
                return;
            };
            let stream = match acceptor.accept(stream).await {
                Ok(s) => s,
                Err(e) => {
                    info!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
            };
            let info = Arc::new(TlsInfo::of(stream.get_ref().1));
            let service = service_fn(move |req| http::handle(app.clone(), peer, Some(info.clone()), req));
            if let Err(e) = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .await
            {
                debug!(%peer, error = %e, "TLS connection ended with an error");
            }
        }
    })
    .await;
}

async fn serve_tcp(listener: TcpListener, stopped: watch::Receiver<bool>) {
    accept_loop(listener, stopped, |mut stream, peer| async move {
        let (mut reader, mut writer) = stream.split();
        if let Err(e) = tokio::io::copy(&mut reader, &mut writer).await {
            debug!(%peer, error = %e, "tcp echo ended with an error");
        }
    })
    .await;
}

async fn stop_requested(stopped: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not Send: drop it here.
    let _ = stopped.wait_for(|s| *s).await.map(|_| ());
}
