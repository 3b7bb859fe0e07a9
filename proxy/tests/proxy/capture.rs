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
    /// The server's files and the proxy's config.
    www: tempfile::TempDir,
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

/// A client namespace and a server namespace joined by a veth pair, the server's
/// `python3 -m http.server` on 10.200.0.2:9090 (nothing on 8080), and `trellis-proxy init`'s
/// capture rules in the client namespace. `None` (a recorded skip) without root or the tools.
fn lab(tag: &str) -> Option<Lab> {
    let missing: Vec<&str> = ["ip", "iptables", "curl", "python3"]
        .into_iter()
        .filter(|tool| !trellis_skip::have(tool))
        .collect();
    if !trellis_skip::is_root() || !missing.is_empty() {
        trellis_skip::skip(&format!(
            "needs root (is root: {}) and ip, iptables, curl, python3 (missing: {missing:?}; Debian: iproute2 iptables curl python3)",
            trellis_skip::is_root()
        ));
        return None;
    }
    let id = format!("{tag}{}", std::process::id());
    let mut lab = Lab {
        client_ns: format!("trellis-c-{id}"),
        server_ns: format!("trellis-s-{id}"),
        children: Vec::new(),
        www: tempfile::tempdir().unwrap(),
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
    std::fs::write(lab.www.path().join("index.html"), "hello from the server namespace\n").unwrap();
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
            .current_dir(lab.www.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );

    // Capture rules: the proxy runs as root here, the client as uid 1000. DNS capture is
    // the default: no flag asks for it.
    run(&["ip", "netns", "exec", &c, PROXY, "init", "--proxy-uid", "0"]);
    Some(lab)
}

const PROXY: &str = env!("CARGO_BIN_EXE_trellis-proxy");

impl Lab {
    /// Run the proxy in the client namespace with `cfg`.
    fn proxy(&mut self, cfg: &serde_json::Value) {
        let path = self.www.path().join("proxy.json");
        std::fs::write(&path, cfg.to_string()).unwrap();
        self.children.push(
            Command::new("ip")
                .args(["netns", "exec", &self.client_ns, PROXY, "run", "--config"])
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
    }

    /// A command run in the client namespace as the app (uid 1000, captured).
    fn as_app(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.client_ns,
                "setpriv",
                "--reuid",
                "1000",
                "--regid",
                "1000",
                "--clear-groups",
            ])
            .args(args)
            .output()
            .unwrap()
    }

    /// `curl` as the app: the body, then the status code on the last line.
    fn curl(&self, extra: &[&str], url: &str) -> String {
        let mut args = vec!["curl", "-s", "-m", "5", "-w", "\n%{http_code}"];
        args.extend_from_slice(extra);
        args.push(url);
        String::from_utf8_lossy(&self.as_app(&args).stdout).into_owned()
    }

    /// `curl` as the app until it answers 200 (the proxy and the server starting), at most 15 s.
    async fn curl_until_ok(&self, extra: &[&str], url: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let text = self.curl(extra, url);
            if text.ends_with("200") || Instant::now() > deadline {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[tokio::test]
async fn captured_connection_is_routed_by_original_destination() {
    let Some(mut lab) = lab("") else { return };
    let c = lab.client_ns.clone();
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
    lab.proxy(&cfg);
    let out = lab.curl_until_ok(&[], "http://10.200.0.2:8080/index.html").await;
    assert!(out.contains("hello from the server namespace"), "{out}");
    assert!(out.ends_with("200"), "{out}");
    // Another original port reaches the proxy too, and is routed differently.
    let other = lab.curl(&[], "http://10.200.0.2:8081/");
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

/// Istio's `outboundTrafficPolicy: ALLOW_ANY` and ServiceEntry `resolution: NONE` on a real
/// capture: HTTP to a host no virtual host names, and opaque TCP no TCP route takes, go to the
/// address the app dialled (`unrouted: passthrough`); a virtual host whose cluster has
/// `originalDestination` discovery sends its requests there too, with its route's settings.
#[tokio::test]
async fn unrouted_traffic_passes_through_to_the_original_destination() {
    let Some(mut lab) = lab("p") else { return };
    let cfg = json!({
        "version": "passthrough-1",
        "listeners": [{
            "name": "outbound", "address": "0.0.0.0:15001", "direction": "outbound",
            "protocol": "auto", "transparent": true, "unrouted": "passthrough",
            "virtualHosts": [{"name": "entry", "domains": ["ext.test:9090"], "routes": [
                {"action": {"forward": {"clusters": [{"cluster": "outbound|9090||ext.test"}]}},
                 "responseHeaders": {"set": {"x-route": "service-entry"}},
                 "provenance": {"kind": "ServiceEntry", "namespace": "test", "name": "ext"}},
            ]}],
        }],
        "clusters": [{"name": "outbound|9090||ext.test", "service": "ext.test", "discovery": "originalDestination"}],
    });
    lab.proxy(&cfg);

    // No virtual host for 10.200.0.2:9090: passed through to where it was sent.
    let out = lab.curl_until_ok(&[], "http://10.200.0.2:9090/index.html").await;
    assert!(out.contains("hello from the server namespace"), "{out}");
    assert!(out.ends_with("200"), "{out}");

    // The entry's host: its route (and header), to the same original destination.
    let out = lab.curl(
        &["-i", "-H", "Host: ext.test:9090"],
        "http://10.200.0.2:9090/index.html",
    );
    assert!(out.ends_with("200"), "{out}");
    assert!(out.to_ascii_lowercase().contains("x-route: service-entry"), "{out}");

    // Opaque TCP (not HTTP): passed through byte for byte; the server's own answer comes back.
    // (The app runs as uid 1000, which may not reach a python3 under root's home.)
    let python = if std::path::Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    };
    let tcp = lab.as_app(&[
        python,
        "-c",
        "import socket; s = socket.create_connection(('10.200.0.2', 9090), timeout=5); \
         s.sendall(b'\\x00\\x01 / HTTP/1.0\\r\\n\\r\\n'); print(s.recv(200).decode(errors='replace'))",
    ]);
    let answer = String::from_utf8_lossy(&tcp.stdout);
    // The server's verdict on a method it does not know: it saw the bytes as they were sent.
    assert!(
        answer.contains("HTTP/1.0 501"),
        "{answer}{}",
        String::from_utf8_lossy(&tcp.stderr)
    );
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
