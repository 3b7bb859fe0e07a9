//! `trellis-testapp`: see the library's documentation.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use http::HeaderName;
use trellis_testapp::{Behaviour, Forward, HttpsSettings, ServedFile, Settings};

/// The Trellis test workload: echo, forward, fail and slow down on demand.
#[derive(Debug, Parser)]
#[command(name = "trellis-testapp", version)]
struct Cli {
    /// The service this app plays (reported in every answer).
    #[arg(long, env = "TESTAPP_SERVICE", default_value = "testapp")]
    service: String,
    /// Its version label (reported in every answer).
    #[arg(long = "app-version", env = "TESTAPP_VERSION", default_value = "v1")]
    app_version: String,
    /// The pod name (downward API).
    #[arg(long, env = "POD_NAME", default_value = "")]
    pod: String,
    /// The pod namespace (downward API).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    namespace: String,
    /// HTTP/1.1 + h2c + gRPC listener.
    #[arg(long, env = "TESTAPP_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    http_addr: SocketAddr,
    /// Opaque TCP echo listener (off unless set).
    #[arg(long, env = "TESTAPP_TCP_ADDR")]
    tcp_addr: Option<SocketAddr>,
    /// HTTPS listener: the same routes over TLS (off unless set; needs --tls-cert and --tls-key).
    #[arg(long, env = "TESTAPP_HTTPS_ADDR", requires_all = ["tls_cert", "tls_key"])]
    https_addr: Option<SocketAddr>,
    /// The HTTPS listener's certificate chain (PEM file).
    #[arg(long, env = "TESTAPP_TLS_CERT", requires = "https_addr")]
    tls_cert: Option<std::path::PathBuf>,
    /// The HTTPS listener's private key (PEM file).
    #[arg(long, env = "TESTAPP_TLS_KEY", requires = "https_addr")]
    tls_key: Option<std::path::PathBuf>,
    /// PREFIX=URL: answer requests under PREFIX by calling URL (comma separated).
    #[arg(long = "forward", env = "TESTAPP_FORWARD", value_delimiter = ',')]
    forwards: Vec<Forward>,
    /// PATH=FILE: answer `GET PATH` with FILE's content, read at each request (comma separated).
    #[arg(long = "file", env = "TESTAPP_FILES", value_delimiter = ',')]
    files: Vec<ServedFile>,
    /// Request headers copied onto calls besides the trace headers (comma separated).
    #[arg(long, env = "TESTAPP_PROPAGATE", value_delimiter = ',', default_value = "x-canary")]
    propagate: Vec<HeaderName>,
    /// Fail requests with this status (e.g. 503).
    #[arg(long, env = "TESTAPP_FAIL_STATUS")]
    fail_status: Option<u16>,
    /// The share of requests that fail (0.0..=1.0; default 1.0 once --fail-status is set).
    #[arg(long, env = "TESTAPP_FAIL_RATE")]
    fail_rate: Option<f64>,
    /// Delay every answer by this many milliseconds.
    #[arg(long, env = "TESTAPP_DELAY_MS", default_value_t = 0)]
    delay_ms: u64,
    /// Deadline of a forwarded call, in milliseconds.
    #[arg(long, env = "TESTAPP_CALL_TIMEOUT_MS", default_value_t = 10_000)]
    call_timeout_ms: u64,
    /// After SIGTERM, keep serving this many milliseconds before stopping. On Kubernetes the
    /// kubelet signals a deleted pod while its removal from the EndpointSlices still travels to
    /// the callers' proxies; an app that stops at once refuses the requests still sent to it.
    #[arg(long, env = "TESTAPP_DRAIN_MS", default_value_t = 3_000)]
    drain_ms: u64,
    /// Log filter (EnvFilter syntax).
    #[arg(long, env = "TESTAPP_LOG", default_value = "info")]
    log: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&cli.log)?)
        .init();
    let settings = Settings {
        service: cli.service,
        version: cli.app_version,
        pod: cli.pod,
        namespace: cli.namespace,
        http_addr: cli.http_addr,
        tcp_addr: cli.tcp_addr,
        https: match (cli.https_addr, cli.tls_cert, cli.tls_key) {
            (Some(addr), Some(cert_file), Some(key_file)) => Some(HttpsSettings {
                addr,
                cert_file,
                key_file,
            }),
            // clap refuses one without the others.
            _ => None,
        },
        forwards: cli.forwards,
        propagate: cli.propagate,
        behaviour: Behaviour {
            fail_status: cli.fail_status,
            fail_rate: cli.fail_rate,
            delay_ms: cli.delay_ms,
        },
        call_timeout: Duration::from_millis(cli.call_timeout_ms),
        files: cli.files,
    };
    let running = trellis_testapp::start(settings).await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {
            tracing::info!(drain_ms = cli.drain_ms, "SIGTERM: serving on while callers learn this pod is going");
            tokio::time::sleep(Duration::from_millis(cli.drain_ms)).await;
        }
        _ = tokio::signal::ctrl_c() => {}
    }
    running.stop();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
        let cli =
            Cli::try_parse_from(["trellis-testapp", "--app-version", "v2", "--forward", "/a=http://x:1/b"]).unwrap();
        assert_eq!(cli.app_version, "v2");
        assert_eq!(cli.forwards.len(), 1);
        let err = Cli::try_parse_from(["trellis-testapp", "--https-addr", "0.0.0.0:8443"]).unwrap_err();
        assert!(err.to_string().contains("--tls-cert"), "{err}");
    }
}
