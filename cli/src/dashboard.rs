//! `meshctl dashboard`: the operator's web dashboard (the live service graph, a page per
//! service, the proxies' sync state) on a local port, as `kubectl port-forward` and
//! `linkerd viz dashboard` do: each connection to the local port is forwarded to the admin
//! port (15014) of a running operator replica through the API server's `pods/portforward`
//! (WebSocket; Kubernetes ≥ 1.31 and kubesim), under the caller's own RBAC (`create
//! pods/portforward` in trellis-system). The page and its JSON come from that replica, which
//! asks its peers for their proxies' traffic.
//!
//! # Caveats
//! - When the replica goes away (a rollout), the next connection picks another running one.
//! - The browser is opened only when one can be (`$BROWSER`, or `xdg-open` with a display, or
//!   `open` on macOS) and `--no-browser` is not given; the URL is printed either way.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use tokio::net::{TcpListener, TcpStream};
use trellis_api::mesh::SYSTEM_NAMESPACE;
use trellis_manifests::install::{ADMIN_PORT, OPERATOR_NAME};

use crate::EXIT_OK;
use crate::cluster::{Cluster, ClusterArgs};
use crate::operator_admin::running_replicas;

/// The dashboard's path on the operator's admin port.
pub const PATH: &str = "/dashboard/";
/// The operator's admin port, as the port-forward takes it.
const PORT: u16 = {
    assert!(ADMIN_PORT > 0 && ADMIN_PORT <= u16::MAX as i32);
    ADMIN_PORT as u16
};

/// `meshctl dashboard` options.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  meshctl dashboard                          # forward a local port to the operator, open the browser
  meshctl dashboard --port 8080 --no-browser # a fixed port; print the URL only (e.g. over SSH)

Stop it with Ctrl-C. Needs `create pods/portforward` in trellis-system (as kubectl port-forward).")]
pub struct Args {
    /// The local port to listen on (0: any free port).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// The local address to listen on.
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    pub address: IpAddr,
    /// Do not open a browser; print the URL only.
    #[arg(long)]
    pub no_browser: bool,
}

/// The operator replica connections are forwarded to, replaced when it goes away.
#[derive(Clone)]
struct Target {
    cluster: Arc<Cluster>,
    pod: Arc<Mutex<String>>,
}

impl Target {
    async fn pick(cluster: &Cluster) -> anyhow::Result<String> {
        let mut running = running_replicas(cluster).await?;
        running.sort();
        running.into_iter().next().with_context(|| {
            format!(
                "no running {OPERATOR_NAME} pod in namespace {SYSTEM_NAMESPACE}: is Trellis installed? (meshctl check)"
            )
        })
    }

    fn current(&self) -> String {
        self.pod
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// A stream to the current replica's admin port; on failure, to another running replica.
    async fn connect(&self) -> anyhow::Result<impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + use<>> {
        let pods: Api<Pod> = Api::namespaced(self.cluster.client().clone(), SYSTEM_NAMESPACE);
        let mut pod = self.current();
        let mut forward = match pods.portforward(&pod, &[PORT]).await {
            Ok(f) => f,
            Err(first) => {
                let other = Self::pick(&self.cluster)
                    .await
                    .with_context(|| format!("forwarding to pod {pod}: {first}"))?;
                *self.pod.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = other.clone();
                pod = other;
                pods.portforward(&pod, &[PORT]).await.map_err(|e| {
                    anyhow::Error::from(self.cluster.error(
                        format!("forwarding port {ADMIN_PORT} of pod {SYSTEM_NAMESPACE}/{pod} (needs create pods/portforward)"),
                        e,
                    ))
                })?
            }
        };
        let stream = forward
            .take_stream(PORT)
            .with_context(|| format!("the port-forward to pod {SYSTEM_NAMESPACE}/{pod} gave no stream"))?;
        // The forward's own task ends with the stream.
        tokio::spawn(async move {
            let _ = forward.join().await;
        });
        Ok(stream)
    }
}

async fn forward(target: Target, mut local: TcpStream) {
    match target.connect().await {
        Ok(mut remote) => {
            let _ = tokio::io::copy_bidirectional(&mut local, &mut remote).await;
        }
        Err(e) => eprintln!("meshctl dashboard: {e:#}"),
    }
}

/// The command that opens `url` in a browser here, if one can be opened; `env` reads the
/// environment.
fn browser_command(url: &str, env: impl Fn(&str) -> Option<std::ffi::OsString>) -> Option<std::process::Command> {
    let command = |program: &str| {
        let mut c = std::process::Command::new(program);
        c.arg(url)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        c
    };
    if let Some(b) = env("BROWSER").filter(|b| !b.is_empty()) {
        return Some(command(&b.to_string_lossy()));
    }
    if cfg!(target_os = "macos") {
        return Some(command("open"));
    }
    let display = ["DISPLAY", "WAYLAND_DISPLAY"]
        .iter()
        .any(|v| env(v).is_some_and(|d| !d.is_empty()));
    display.then(|| command("xdg-open"))
}

/// Run `meshctl dashboard` until Ctrl-C.
pub async fn run(args: &Args, cluster_args: &ClusterArgs, out: &mut dyn std::io::Write) -> anyhow::Result<u8> {
    let cluster = Cluster::connect(cluster_args).await?;
    let pod = Target::pick(&cluster).await?;
    let target = Target {
        cluster: Arc::new(cluster),
        pod: Arc::new(Mutex::new(pod.clone())),
    };
    // Fail now, not at the first page load, when the port-forward is refused.
    drop(target.connect().await?);
    let listener = TcpListener::bind(SocketAddr::new(args.address, args.port))
        .await
        .with_context(|| {
            format!(
                "listening on {}:{} (--port picks another port)",
                args.address, args.port
            )
        })?;
    let local = listener.local_addr()?;
    let host = match local.ip() {
        IpAddr::V6(ip) => format!("[{ip}]"),
        IpAddr::V4(ip) => ip.to_string(),
    };
    let url = format!("http://{host}:{}{PATH}", local.port());
    writeln!(
        out,
        "Trellis dashboard: {url}\n(forwarded to operator pod {SYSTEM_NAMESPACE}/{pod} port {ADMIN_PORT}; Ctrl-C to stop)"
    )?;
    out.flush()?;
    if !args.no_browser {
        match browser_command(&url, |v: &str| std::env::var_os(v)).map(|mut c| c.spawn()) {
            Some(Ok(_)) => {}
            Some(Err(e)) => writeln!(out, "could not open a browser ({e}); open {url}")?,
            None => writeln!(out, "no browser to open here (no display); open {url}")?,
        }
        out.flush()?;
    }
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            stop = &mut ctrl_c => {
                if let Err(e) = stop {
                    bail!("waiting for Ctrl-C: {e}");
                }
                writeln!(out, "stopped")?;
                return Ok(EXIT_OK);
            }
            accepted = listener.accept() => match accepted {
                Ok((conn, _)) => {
                    tokio::spawn(forward(target.clone(), conn));
                }
                Err(e) => eprintln!("meshctl dashboard: accepting a connection: {e}"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::{OsStr, OsString};

    use super::*;

    #[test]
    fn a_browser_is_opened_only_when_one_can_be() {
        let url = "http://127.0.0.1:1/dashboard/";
        let program = |vars: &[(&str, &str)]| {
            let vars: Vec<(String, OsString)> = vars.iter().map(|(k, v)| ((*k).to_string(), (*v).into())).collect();
            browser_command(url, move |name: &str| {
                vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
            })
            .map(|c| c.get_program().to_owned())
        };
        assert_eq!(
            program(&[("BROWSER", "firefox")]).as_deref(),
            Some(OsStr::new("firefox"))
        );
        if !cfg!(target_os = "macos") {
            assert_eq!(program(&[]), None, "no display, no browser");
            assert_eq!(program(&[("DISPLAY", "")]), None);
            assert_eq!(program(&[("DISPLAY", ":0")]).as_deref(), Some(OsStr::new("xdg-open")));
        }
    }
}
