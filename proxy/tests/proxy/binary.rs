//! The `trellis-proxy` binary itself: `--config` loading, reload on change,
//! NACK of a bad file, `/logging`, drain on SIGTERM, and its settings from the
//! environment (the app's probes; a bad value stops it at start).

use crate::support::*;
use serde_json::json;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn wait_for(mut ok: impl AsyncFnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if ok().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

/// How `child` exits, within 10 s.
async fn exited(child: &mut Child, when: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(Instant::now() < deadline, "the proxy did not exit {when}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn status(addr: SocketAddr, path: &str) -> Option<u16> {
    let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .ok()?;
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header("host", "svc")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .ok()?;
    Some(sender.send_request(req).await.ok()?.status().as_u16())
}

#[tokio::test]
async fn binary_loads_reloads_rejects_and_drains() {
    let app = Upstream::start("app").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.yaml");
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let stats: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let health: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = |version: &str, routes: Vec<serde_json::Value>| {
        let mut c = outbound_config(version, routes, vec![cluster("app", &[&app])]);
        c["listeners"][0]["address"] = json!(listen.to_string());
        c["drainTimeoutMs"] = json!(2000);
        // YAML is accepted as well as JSON; write YAML to exercise that path.
        serde_yaml_ng::to_string(&c).unwrap()
    };
    std::fs::write(&path, config("1", vec![forward_route("app")])).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_trellis-proxy"))
        .args(["run", "--config"])
        .arg(&path)
        .args(["--admin-addr", &admin.to_string(), "--stats-addr", &stats.to_string()])
        .args([
            "--health-addr",
            &health.to_string(),
            "--dns-addr",
            "off",
            "--config-poll-ms",
            "100",
        ])
        .env("TRELLIS_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn trellis-proxy");
    let mut child = Running(child);
    wait_for(async || status(health, "/ready").await == Some(200), "ready").await;
    assert_eq!(status(listen, "/").await, Some(200));
    assert_eq!(status(stats, "/metrics").await, Some(200));

    // An invalid file is NACKed; traffic keeps flowing on the last good config.
    std::fs::write(&path, config("2", vec![forward_route("missing")])).unwrap();
    wait_for(
        async || {
            get(admin, "admin", "/config_dump")
                .await
                .body
                .contains("\"lastRejected\": {")
        },
        "rejection recorded",
    )
    .await;
    assert_eq!(status(listen, "/").await, Some(200));

    // So is a file that does not parse, with the version it declares.
    std::fs::write(&path, "version: 2b\nlisteners: 3\n").unwrap();
    let rejected = async || {
        let dump: serde_json::Value = serde_json::from_str(&get(admin, "admin", "/config_dump").await.body).unwrap();
        dump["lastRejected"].clone()
    };
    wait_for(async || rejected().await["version"] == "2b", "parse error recorded").await;
    let error = rejected().await["error"].as_str().unwrap().to_string();
    assert!(error.contains("proxy.yaml") && error.contains("listeners"), "{error}");
    assert_eq!(status(listen, "/").await, Some(200));

    // A valid change applies, and the rejection is history.
    let teapot = json!({"action": {"directResponse": {"status": 418}}, "provenance": provenance()});
    std::fs::write(&path, config("3", vec![teapot])).unwrap();
    wait_for(async || status(listen, "/").await == Some(418), "reload").await;
    assert_eq!(rejected().await, serde_json::Value::Null);

    // The log level can be changed at run time.
    let r = send(admin, "POST", "admin", "/logging?level=debug", &[]).await;
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "debug\n"));
    // A filter that does not parse is refused with the parser's reason; the one in force stays.
    let r = send(admin, "POST", "admin", "/logging?level=kube=loud", &[]).await;
    let reason = tracing_subscriber::EnvFilter::try_new("kube=loud").unwrap_err();
    assert_eq!(
        (r.status.as_u16(), r.body.as_str()),
        (400, format!("invalid level: {reason}\n").as_str())
    );
    let r = send(admin, "GET", "admin", "/logging", &[]).await;
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "debug\n"));

    // SIGTERM drains and exits cleanly.
    let pid = child.0.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let exit = exited(&mut child.0, "after SIGTERM").await;
    assert!(exit.success(), "{exit:?}");
}

#[tokio::test]
async fn silent_connections_cannot_starve_the_probes() {
    // A small descriptor limit, as container runtimes often give (soft 1024), here 256 so
    // the test needs few connections: flooding the traffic listener with connections that
    // send nothing used to exhaust the descriptors, and then every accept failed — the
    // health port's too, so /ready timed out and the kubelet restarted a healthy proxy.
    let app = Upstream::start("app").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.json");
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let health: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut c = outbound_config("1", vec![forward_route("app")], vec![cluster("app", &[&app])]);
    c["listeners"][0]["address"] = json!(listen.to_string());
    c["listeners"][0]["limits"] = json!({"headerReadTimeoutMs": 1500});
    std::fs::write(&path, c.to_string()).unwrap();
    let child = Command::new("sh")
        .arg("-c")
        .arg("ulimit -n 256 && exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_trellis-proxy"))
        .args(["run", "--config"])
        .arg(&path)
        .args(["--admin-addr", &admin.to_string(), "--health-addr", &health.to_string()])
        .args([
            "--stats-addr",
            &format!("127.0.0.1:{}", free_port()),
            "--dns-addr",
            "off",
        ])
        .env("TRELLIS_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn trellis-proxy");
    let _child = Running(child);
    wait_for(async || status(health, "/ready").await == Some(200), "ready").await;
    let dump: serde_json::Value = serde_json::from_str(&get(admin, "admin", "/config_dump").await.body).unwrap();
    // The default budget comes from the descriptor limit: (256 - 128) / 2.
    assert_eq!(
        dump["downstreamConnections"]["limit"], 64,
        "{}",
        dump["downstreamConnections"]
    );

    let mut flood = Vec::new();
    for _ in 0..400 {
        flood.push(tokio::net::TcpStream::connect(listen).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..3 {
        let probe = tokio::time::timeout(Duration::from_secs(2), status(health, "/ready")).await;
        assert_eq!(probe, Ok(Some(200)), "the health port must answer during the flood");
    }
    // The flood is closed — over the budget at once, the rest by the header read timeout —
    // and traffic flows again.
    wait_for(
        async || tokio::time::timeout(Duration::from_millis(500), status(listen, "/")).await == Ok(Some(200)),
        "traffic after the flood",
    )
    .await;
    drop(flood);
}

/// `trellis-proxy run` on a valid configuration file and free ports, with `env` added, its
/// output discarded; and its health port.
fn proxy_with_env(dir: &std::path::Path, app: &Upstream, env: &[(&str, &str)]) -> (Command, SocketAddr) {
    let path = dir.join("proxy.json");
    let mut c = outbound_config("1", vec![forward_route("app")], vec![cluster("app", &[app])]);
    c["listeners"][0]["address"] = json!(format!("127.0.0.1:{}", free_port()));
    std::fs::write(&path, c.to_string()).unwrap();
    let health: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_trellis-proxy"));
    cmd.args(["run", "--config"])
        .arg(&path)
        .args(["--admin-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--stats-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--health-addr", &health.to_string(), "--dns-addr", "off"])
        .env("TRELLIS_LOG", "warn")
        // anyhow appends a backtrace to the error when these ask for one.
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    (cmd, health)
}

#[tokio::test]
async fn a_bad_setting_in_the_environment_stops_the_proxy_at_start_with_the_fix() {
    let app = Upstream::start("app").await;
    let dir = tempfile::tempdir().unwrap();
    let bad_filter = tracing_subscriber::EnvFilter::try_new("info,kube=loud").unwrap_err();
    let bad_filter = format!(
        "--log / TRELLIS_LOG \"info,kube=loud\" is not a log filter ({bad_filter}); write EnvFilter directives \
         such as `info` or `warn,trellis_proxy=debug`, or unset it for `info`"
    );
    let cases = [
        ("TRELLIS_LOG", "info,kube=loud", bad_filter.as_str()),
        (
            "TRELLIS_WORKERS",
            "two",
            "TRELLIS_WORKERS=\"two\": not a number of worker threads; set a whole number ≥ 1, or unset it for one",
        ),
        (
            "TRELLIS_WORKERS",
            "0",
            "TRELLIS_WORKERS=\"0\": not a number of worker threads; set a whole number ≥ 1, or unset it for one",
        ),
        (
            "TRELLIS_APP_PROBES",
            "{\"/app-health/web/readyz\":{}}",
            "TRELLIS_APP_PROBES=\"{\\\"/app-health/web/readyz\\\":{}}\": `/app-health/web/readyz` must have exactly \
             one of httpGet or tcpSocket; the sidecar injector writes it from the pod's probes: re-create the pod to \
             have it written again, or unset it to run no app probes",
        ),
    ];
    for (name, value, message) in cases {
        let (mut cmd, _) = proxy_with_env(dir.path(), &app, &[(name, value)]);
        let child = cmd.stderr(Stdio::piped()).spawn().expect("spawn trellis-proxy");
        let mut child = Running(child);
        let exit = exited(&mut child.0, &format!("with {name}={value}")).await;
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.0.stderr.take().unwrap(), &mut stderr).unwrap();
        assert!(!exit.success(), "{name}={value}: {exit:?}");
        assert_eq!(stderr.trim_end(), format!("Error: {message}"), "{name}={value}");
    }
}

#[tokio::test]
async fn the_health_port_runs_the_apps_probes_from_the_environment() {
    let app = Upstream::start("app").await;
    let dir = tempfile::tempdir().unwrap();
    let closed = free_port();
    let probes = json!({
        "/app-health/web/readyz": {"httpGet": {"path": "/", "port": app.addr.port()}},
        "/app-health/web/livez": {"tcpSocket": {"port": closed}},
    })
    .to_string();
    let (mut cmd, health) = proxy_with_env(
        dir.path(),
        &app,
        &[("TRELLIS_WORKERS", "2"), ("TRELLIS_APP_PROBES", &probes)],
    );
    let _child = Running(cmd.spawn().expect("spawn trellis-proxy"));
    wait_for(async || status(health, "/ready").await == Some(200), "ready").await;
    assert_eq!(status(health, "/app-health/web/readyz").await, Some(200));
    assert_eq!(status(health, "/app-health/web/livez").await, Some(503));
    assert_eq!(status(health, "/app-health/other/readyz").await, Some(404));
}
