//! Low-level helpers: running `ip`/`iptables` with checked exit codes, and
//! running code (creating sockets) inside another network namespace.
//!
//! # Why a thread per entry
//! `setns(2)` changes the namespace of the calling thread only. A socket
//! keeps the namespace it was created in, so a short-lived thread enters the
//! namespace, creates the socket and hands it back; no Tokio worker thread
//! ever changes namespace.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;

/// Where `ip netns add` puts its namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// Where `ip netns exec NAME` finds files to bind over `/etc`.
pub const ETC_NETNS_DIR: &str = "/etc/netns";

/// The bind-mount path of a named namespace.
pub fn netns_path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// Runs `program args…`; `Err` carries the command line and its stderr.
pub fn run(program: &str, args: &[&str]) -> Result<String, String> {
    run_with_input(program, args, None)
}

/// Like [`run`], with `input` on stdin (for `iptables-restore`).
pub fn run_with_input(program: &str, args: &[&str], input: Option<&str>) -> Result<String, String> {
    use std::io::Write as _;
    let line = || format!("{program} {}", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{}: {e}", line()))?;
    if let (Some(data), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(data.as_bytes())
            .map_err(|e| format!("{}: writing stdin: {e}", line()))?;
    }
    let out = child.wait_with_output().map_err(|e| format!("{}: {e}", line()))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{}` failed ({}): {}",
            line(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// `ip -n NETNS args…`.
pub fn ip_in(netns: &str, args: &[&str]) -> Result<String, String> {
    let mut all = vec!["-n", netns];
    all.extend_from_slice(args);
    run("ip", &all)
}

/// `ip netns exec NETNS program args…` (stdin optional).
pub fn exec_in(netns: &str, program: &str, args: &[&str], input: Option<&str>) -> Result<String, String> {
    let mut all = vec!["netns", "exec", netns, program];
    all.extend_from_slice(args);
    run_with_input("ip", &all, input)
}

/// Whether a named namespace exists.
pub fn exists(name: &str) -> bool {
    netns_path(name).exists()
}

/// Deletes a named namespace (and `/etc/netns/NAME`); a missing one is fine.
pub fn delete(name: &str) -> Result<(), String> {
    let _ = std::fs::remove_dir_all(Path::new(ETC_NETNS_DIR).join(name));
    if !exists(name) {
        return Ok(());
    }
    match run("ip", &["netns", "del", name]) {
        Ok(_) => Ok(()),
        Err(_) if !exists(name) => Ok(()),
        Err(e) => Err(e),
    }
}

/// The names under `/run/netns`.
pub fn list() -> Vec<String> {
    std::fs::read_dir(NETNS_DIR)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .collect()
}

/// Runs `f` on a fresh thread that has entered the network namespace at
/// `path` (e.g. `/run/netns/NAME` or [`super::PodNetns::path`]); sockets
/// `f` creates belong to that namespace for their whole life.
pub fn run_in<R, F>(path: &Path, f: F) -> io::Result<R>
where
    R: Send + 'static,
    F: FnOnce() -> io::Result<R> + Send + 'static,
{
    let path = path.to_path_buf();
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("kubesim-netns".into())
        .spawn(move || {
            let r = (|| {
                let file = std::fs::File::open(&path)
                    .map_err(|e| io::Error::new(e.kind(), format!("opening {}: {e}", path.display())))?;
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| io::Error::other(format!("entering {}: {e}", path.display())))?;
                f()
            })();
            let _ = tx.send(r);
        })?;
    rx.recv()
        .map_err(|_| io::Error::other("the namespace thread panicked"))?
}

/// A TCP listener bound to `addr` inside the namespace at `path`, ready for
/// `tokio::net::TcpListener::from_std` (non-blocking, `SO_REUSEADDR`).
pub fn tcp_listener(path: &Path, addr: std::net::SocketAddr) -> io::Result<std::net::TcpListener> {
    run_in(path, move || {
        let s = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        s.set_reuse_address(true)?;
        s.bind(&addr.into())?;
        s.listen(1024)?;
        s.set_nonblocking(true)?;
        Ok(s.into())
    })
}

/// A UDP socket bound to `addr` inside the namespace at `path`
/// (non-blocking, for `tokio::net::UdpSocket::from_std`).
pub fn udp_socket(path: &Path, addr: std::net::SocketAddr) -> io::Result<std::net::UdpSocket> {
    run_in(path, move || {
        let s = std::net::UdpSocket::bind(addr)?;
        s.set_nonblocking(true)?;
        Ok(s)
    })
}

/// An unconnected non-blocking TCP socket created inside the namespace at
/// `path`, to `connect` with Tokio (`tokio::net::TcpSocket::from_std_stream`).
pub fn tcp_socket(path: &Path) -> io::Result<std::net::TcpStream> {
    run_in(path, || {
        let s = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        s.set_nonblocking(true)?;
        Ok(s.into())
    })
}

/// Connects to `addr` from inside the namespace at `path` (Tokio stream).
pub async fn connect(path: &Path, addr: std::net::SocketAddr) -> io::Result<tokio::net::TcpStream> {
    let std_sock = tcp_socket(path)?;
    let sock = tokio::net::TcpSocket::from_std_stream(std_sock);
    sock.connect(addr).await
}
