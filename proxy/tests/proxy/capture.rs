//! Transparent capture in network namespaces this test creates: the
//! `trellis-proxy init` rules redirect a client's connection to a service
//! address into the proxy, which recovers the original destination
//! (`SO_ORIGINAL_DST`) and routes on its port. Needs root, `ip`,
//! `iptables`, `curl` and `python3`; skipped otherwise (a recorded skip, a
//! failure under CI).

use serde_json::json;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn run(args: &[&str]) -> Output {
    let out = Command::new(args[0]).args(&args[1..]).output().expect("spawn");
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Namespaces, links and processes to clean up.
struct Lab {
    client_ns: String,
    server_ns: String,
    children: Vec<Child>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in [&self.client_ns, &self.server_ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

#[tokio::test]
async fn captured_connection_is_routed_by_original_destination() {
    let missing: Vec<&str> = ["ip", "iptables", "curl", "python3"]
        .into_iter()
        .filter(|tool| !trellis_skip::have(tool))
        .collect();
    if !trellis_skip::is_root() || !missing.is_empty() {
        trellis_skip::skip(&format!(
            "needs root (is root: {}) and ip, iptables, curl, python3 (missing: {missing:?}; Debian: iproute2 iptables curl python3)",
            trellis_skip::is_root()
        ));
        return;
    }
    let id = std::process::id();
    let mut lab = Lab {
        client_ns: format!("trellis-c-{id}"),
        server_ns: format!("trellis-s-{id}"),
        children: Vec::new(),
    };
    let (c, s) = (lab.client_ns.clone(), lab.server_ns.clone());
    let (veth_c, veth_s) = (format!("tc{id}"), format!("ts{id}"));
    run(&["ip", "netns", "add", &c]);
    run(&["ip", "netns", "add", &s]);
    run(&[
        "ip", "link", "add", &veth_c, "netns", &c, "type", "veth", "peer", "name", &veth_s, "netns", &s,
    ]);
    for (ns, dev, addr) in [(&c, &veth_c, "10.200.0.1/24"), (&s, &veth_s, "10.200.0.2/24")] {
        run(&["ip", "netns", "exec", ns, "ip", "addr", "add", addr, "dev", dev]);
        run(&["ip", "netns", "exec", ns, "ip", "link", "set", dev, "up"]);
        run(&["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"]);
    }

    // The app server listens on 9090 only; nothing listens on 8080.
    let www = tempfile::tempdir().unwrap();
    std::fs::write(www.path().join("index.html"), "hello from the server namespace\n").unwrap();
    lab.children.push(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &s,
                "python3",
                "-m",
                "http.server",
                "9090",
                "--bind",
                "10.200.0.2",
            ])
            .current_dir(www.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );

    // Capture rules: the proxy runs as root here, the client as uid 1000. DNS capture is
    // the default: no flag asks for it.
    let bin = env!("CARGO_BIN_EXE_trellis-proxy");
    run(&["ip", "netns", "exec", &c, bin, "init", "--proxy-uid", "0"]);

    let cfg = json!({
        "version": "capture-1",
        "listeners": [{
            "name": "outbound", "address": "0.0.0.0:15001", "direction": "outbound",
            "protocol": "auto", "transparent": true,
            "virtualHosts": [{"name": "all", "domains": ["*"], "routes": [
                {"match": [{"port": 8080}], "action": {"forward": {"clusters": [{"cluster": "svc"}]}},
                 "provenance": {"kind": "Service", "namespace": "test", "name": "svc"}},
                {"action": {"directResponse": {"status": 404, "body": "original destination port not routed\n"}},
                 "provenance": {"kind": "Service", "namespace": "test", "name": "fallback"}},
            ]}],
        }],
        "clusters": [{"name": "svc", "endpoints": [{"address": "10.200.0.2", "port": 9090}]}],
        "dns": {"entries": [{"hostname": "payment.shop.svc.cluster.local", "addresses": ["10.96.0.20"]}]},
    });
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.json");
    std::fs::write(&path, cfg.to_string()).unwrap();
    lab.children.push(
        Command::new("ip")
            .args(["netns", "exec", &c, bin, "run", "--config"])
            .arg(&path)
            .args([
                "--dns-addr",
                "127.0.0.1:15053",
                "--stats-addr",
                "127.0.0.1:15020",
                "--health-addr",
                "127.0.0.1:15021",
            ])
            .env("TRELLIS_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );

    let curl = |url: &str| {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &c,
                "setpriv",
                "--reuid",
                "1000",
                "--regid",
                "1000",
                "--clear-groups",
            ])
            .args(["curl", "-s", "-m", "5", "-w", "\n%{http_code}", url])
            .output()
            .unwrap()
    };
    // Wait for the proxy and the server.
    let deadline = Instant::now() + Duration::from_secs(15);
    let out = loop {
        let out = curl("http://10.200.0.2:8080/index.html");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.ends_with("200") || Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(out.contains("hello from the server namespace"), "{out}");
    assert!(out.ends_with("200"), "{out}");
    // Another original port reaches the proxy too, and is routed differently.
    let other = String::from_utf8_lossy(&curl("http://10.200.0.2:8081/").stdout).into_owned();
    assert!(other.ends_with("404"), "{other}");
    assert!(other.contains("original destination port not routed"), "{other}");
    // The proxy's own upstream traffic was not captured (no loop): the server saw it.
    let metrics = Command::new("ip")
        .args([
            "netns",
            "exec",
            &c,
            "curl",
            "-s",
            "-m",
            "5",
            "http://127.0.0.1:15020/metrics",
        ])
        .output()
        .unwrap();
    let metrics = String::from_utf8_lossy(&metrics.stdout);
    assert!(metrics.contains("response_code=\"200\""), "{metrics}");

    // DNS to any server's port 53, over UDP and over TCP, is redirected to the
    // proxy's DNS port and answered from its configuration (nothing listens on
    // 10.200.0.2:53).
    // The client runs as uid 1000, which may not reach a python3 under root's home.
    let python = if std::path::Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    };
    let dig = |transport: &str| {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &c,
                "setpriv",
                "--reuid",
                "1000",
                "--regid",
                "1000",
                "--clear-groups",
            ])
            .args([
                python,
                "-c",
                DNS_CLIENT,
                transport,
                "10.200.0.2",
                "payment.shop.svc.cluster.local",
            ])
            .output()
            .unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    assert_eq!(dig("udp").trim(), "10.96.0.20");
    assert_eq!(dig("tcp").trim(), "10.96.0.20");
}

/// A one-question A lookup over UDP or TCP; prints the first answer's address.
const DNS_CLIENT: &str = r#"
import socket, struct, sys
transport, server, name = sys.argv[1], sys.argv[2], sys.argv[3]
q = struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
q += b"".join(bytes([len(l)]) + l.encode() for l in name.split(".")) + b"\0" + struct.pack(">HH", 1, 1)
if transport == "udp":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(5)
    s.sendto(q, (server, 53)); r = s.recv(4096)
else:
    s = socket.create_connection((server, 53), timeout=5)
    s.sendall(struct.pack(">H", len(q)) + q)
    n = struct.unpack(">H", s.recv(2))[0]; r = b""
    while len(r) < n: r += s.recv(n - len(r))
assert r[:2] == q[:2] and struct.unpack(">H", r[6:8])[0] >= 1, r
print(socket.inet_ntoa(r[-4:]))
"#;
