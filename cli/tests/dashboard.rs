//! The operator's web dashboard in a real browser, as a user opens it: the shop of the
//! end-to-end suite (gateway → web → payment v1/v2 → db, all mutual TLS) under traffic,
//! `meshctl dashboard --no-browser` forwarding a local port to an operator replica, and
//! headless Chromium driven over WebDriver (chromedriver, W3C protocol over HTTP) loading the
//! page. The graph must show the gateway → web → payment → db edges with non-zero rates and
//! mutual TLS (read from the DOM the page's script drew); a service's page its golden signals
//! and routes with provenance; the proxies' page their sync state. Screenshots are kept under
//! the target directory (the paths are printed). Then Ctrl-C stops meshctl cleanly.
//!
//! Needs Debian's `chromium` and `chromium-driver` (a missing browser is a run-time skip, a
//! failure under CI). Runs on kubesim, or on upstream Kubernetes with
//! `TRELLIS_E2E_CLUSTER=upstream` (it speaks only the Kubernetes API, its port-forward and the
//! gateway's load balancer).

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use base64::Engine as _;
use serde_json::{Value, json};
use support::{Target, cluster};
use trellis_e2e::suite::{Http, steps, wait_for};
use trellis_manifests::demo;

/// Where Debian installs the browser and its WebDriver.
const CHROMIUM: &str = "chromium";
const CHROMEDRIVER: &str = "chromedriver";
const INSTALL: &str = "apt-get install -y chromium chromium-driver";

/// A child process killed when dropped.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A headless Chromium session over WebDriver.
struct Browser {
    http: Http,
    base: String,
    driver: Reaped,
    /// The browser's own profile directory: every Chromium process of this
    /// session names it on its command line, which is how `drop` finds them.
    profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver on a free port and a headless Chromium session.
    fn start(http: &Http) -> anyhow::Result<Browser> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {CHROMEDRIVER} ({INSTALL})"))?;
        let driver = Reaped(driver);
        let base = format!("http://127.0.0.1:{port}");
        wait_for("chromedriver to listen", Duration::from_secs(20), || {
            match http.get(&format!("{base}/status"), &[]) {
                Ok(a) if a.json()?["value"]["ready"] == true => Ok(Some(())),
                _ => {
                    std::thread::sleep(Duration::from_millis(200));
                    bail!("not ready")
                }
            }
        })?;
        let binary = trellis_skip::find_in(&std::env::var_os("PATH").unwrap_or_default(), CHROMIUM)
            .with_context(|| format!("{CHROMIUM} is not on PATH ({INSTALL})"))?;
        let profile = tempfile::Builder::new()
            .prefix("trellis-dashboard-chromium-")
            .tempdir()?;
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": binary,
                // Root in a container: no sandbox; no GPU; a fixed size for the screenshot.
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1500,900", "--no-first-run", "--no-default-browser-check",
                         format!("--user-data-dir={}", profile.path().display())],
            },
        }}});
        let mut browser = Browser {
            http: http.clone(),
            base,
            driver,
            profile,
        };
        let session = browser.call(http::Method::POST, "/session", &capabilities)?;
        let id = session["sessionId"]
            .as_str()
            .with_context(|| format!("no session id: {session}"))?;
        browser.base = format!("{}/session/{id}", browser.base);
        Ok(browser)
    }

    /// One WebDriver command; its `value`.
    fn call(&self, method: http::Method, path: &str, body: &Value) -> anyhow::Result<Value> {
        let body = if method == http::Method::GET {
            String::new()
        } else {
            body.to_string()
        };
        let answer = self.http.request(
            method,
            &format!("{}{path}", self.base),
            &[("content-type", "application/json")],
            &body,
        )?;
        let value = answer.json()?["value"].take();
        ensure!(answer.status == 200, "WebDriver {path}: {} {value}", answer.status);
        Ok(value)
    }

    fn open(&self, url: &str) -> anyhow::Result<()> {
        self.call(http::Method::POST, "/url", &json!({"url": url})).map(drop)
    }

    /// The value of `script` (a function body) run in the page.
    fn run(&self, script: &str) -> anyhow::Result<Value> {
        self.call(
            http::Method::POST,
            "/execute/sync",
            &json!({"script": script, "args": []}),
        )
    }

    /// Saves a PNG of the window as `name` under the target directory; its path.
    fn screenshot(&self, name: &str) -> anyhow::Result<PathBuf> {
        let png = self.call(http::Method::GET, "/screenshot", &Value::Null)?;
        let png = base64::engine::general_purpose::STANDARD.decode(png.as_str().context("no screenshot")?)?;
        ensure!(png.starts_with(b"\x89PNG"), "not a PNG");
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(name);
        std::fs::write(&path, png)?;
        eprintln!("screenshot: {}", path.display());
        Ok(path)
    }

    /// Waits until the page's script drew `view` (the body's `data-view`), then runs `script`
    /// until `check` accepts its value.
    fn wait_for_view<T>(
        &self,
        what: &str,
        view: &str,
        script: &str,
        check: impl Fn(&Value) -> anyhow::Result<Option<T>>,
    ) -> anyhow::Result<T> {
        wait_for(what, Duration::from_secs(90), || {
            let drawn = self.run("return document.body.dataset.view || document.getElementById('main').textContent")?;
            let (found, seen) = if drawn == view {
                let v = self.run(script)?;
                (check(&v)?, v)
            } else {
                (None, drawn)
            };
            match found {
                Some(t) => Ok(Some(t)),
                None => {
                    std::thread::sleep(Duration::from_millis(500));
                    bail!("the page shows {seen}")
                }
            }
        })
    }
}

impl Drop for Browser {
    /// Ends the session, stops chromedriver, and then stops whatever Chromium
    /// process of this session outlived them: killing chromedriver leaves
    /// its browser running (seen: one headless Chromium left per run).
    fn drop(&mut self) {
        let _ = self.call(http::Method::DELETE, "", &Value::Null);
        let _ = self.driver.0.kill();
        let _ = self.driver.0.wait();
        let marker = format!("--user-data-dir={}", self.profile.path().display());
        let _ = Command::new("pkill").args(["-KILL", "-f", "--", &marker]).status();
    }
}

/// The graph's edges as the page drew them.
const EDGES: &str = "return Array.from(document.querySelectorAll('svg.graph g.edge')).map(e => ({
    source: e.dataset.source, destination: e.dataset.destination, service: e.dataset.service,
    rps: Number(e.dataset.rps), mtls: e.dataset.mtlsShare, label: e.querySelector('text').textContent,
    health: e.getAttribute('class') }))";

/// The edge of `edges` from a workload named `from*` to one named `to*` in the shop.
fn edge<'a>(edges: &'a [Value], from: &str, to: &str) -> Option<&'a Value> {
    let named = |v: &Value, prefix: &str| {
        v.as_str()
            .and_then(|id| id.strip_prefix(&format!("{}/", demo::NAMESPACE)))
            .is_some_and(|n| n.starts_with(prefix))
    };
    edges
        .iter()
        .find(|e| named(&e["source"], from) && named(&e["destination"], to) && e["rps"].as_f64() > Some(0.0))
}

#[test]
fn the_dashboard_shows_the_shop_live_in_a_real_browser() {
    if !trellis_skip::have(CHROMIUM) || !trellis_skip::have(CHROMEDRIVER) {
        trellis_skip::skip(&format!(
            "headless Chromium and chromedriver are needed (Debian: {INSTALL})"
        ));
        return;
    }
    let Some(cluster) = cluster() else {
        return;
    };
    let t: &Target = &cluster;
    let step = |name: &str, f: &mut dyn FnMut() -> anyhow::Result<()>| steps::step(t, "dashboard", name, f).unwrap();
    step("install", &mut || steps::install(t));
    step("the shop", &mut || steps::deploy_shop(t));
    let ns = demo::NAMESPACE;
    let http = Http::new().unwrap();

    // The shop under traffic for the whole test: a request every 100 ms through the gateway.
    let gateway = steps::load_balancer(t, ns, demo::GATEWAY).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let (stop, http) = (stop.clone(), http.clone());
        let url = format!("{gateway}/api/hello?status@db=201");
        std::thread::spawn(move || {
            let mut answered = 0u64;
            while !stop.load(Ordering::Relaxed) {
                answered += u64::from(http.get(&url, &[]).is_ok_and(|a| a.status == 200));
                std::thread::sleep(Duration::from_millis(100));
            }
            answered
        })
    };

    // meshctl dashboard, as a user runs it.
    let mut meshctl = Reaped(
        Command::new(env!("CARGO_BIN_EXE_meshctl"))
            .arg("--kubeconfig")
            .arg(t.kubeconfig())
            .args(["dashboard", "--no-browser", "--port", "0"])
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut stdout = BufReader::new(meshctl.0.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    let url = first
        .trim()
        .strip_prefix("Trellis dashboard: ")
        .unwrap_or_else(|| panic!("meshctl dashboard printed {first:?}"))
        .to_string();
    assert!(
        url.starts_with("http://127.0.0.1:") && url.ends_with("/dashboard/"),
        "{url}"
    );

    // The page is served with a strict Content-Security-Policy.
    let page = http.get(&url, &[]).unwrap();
    assert_eq!(page.status, 200);
    let csp = page.headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("default-src 'self'") && csp.contains("script-src 'self'"),
        "{csp}"
    );

    let browser = Browser::start(&http).unwrap();
    browser.open(&url).unwrap();
    let edges = browser
        .wait_for_view(
            "the graph's gateway → web → payment → db edges",
            "graph",
            EDGES,
            |v| {
                let edges = v.as_array().cloned().unwrap_or_default();
                let chain = [(demo::GATEWAY, "web"), ("web", "payment"), ("payment", "db")];
                Ok(chain
                    .iter()
                    .all(|(from, to)| edge(&edges, from, to).is_some())
                    .then_some(edges))
            },
        )
        .unwrap();
    let shot = browser.screenshot("graph.png").unwrap();
    eprintln!("the graph's edges: {:#}", Value::from(edges.clone()));
    for (from, to) in [(demo::GATEWAY, "web"), ("web", "payment"), ("payment", "db")] {
        let e = edge(&edges, from, to).unwrap();
        assert_eq!(e["mtls"], "1", "mutual TLS on {from} → {to}: {e:#}");
        assert!(e["label"].as_str().unwrap().contains("· mTLS"), "{e:#}");
        assert!(e["label"].as_str().unwrap().contains("rps"), "{e:#}");
        assert!(e["health"].as_str().unwrap().starts_with("edge "), "{e:#}");
    }
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000, "an empty screenshot");

    // A service's page: golden signals over time, the edges into it, routes with provenance.
    browser.open(&format!("{url}#/service/payment.{ns}")).unwrap();
    let page = browser
        .wait_for_view(
            "payment's page",
            "service",
            "return { text: document.getElementById('main').textContent, charts: document.querySelectorAll('.chart polyline').length }",
            |v| Ok(v["text"].as_str().is_some_and(|t| t.contains(&format!("VirtualService {ns}/"))).then(|| v.clone())),
        )
        .unwrap();
    browser.screenshot("service-payment.png").unwrap();
    let text = page["text"].as_str().unwrap();
    assert_eq!(page["charts"], 3, "{page:#}");
    assert!(text.contains(&format!("Service payment.{ns}")), "{text}");
    assert!(text.contains(&format!("{ns}/web")), "the edge from web: {text}");
    assert!(
        text.contains(&format!("outbound|8080|v1|payment.{ns}.svc.cluster.local")),
        "{text}"
    );

    // The proxies' sync state and versions.
    browser.open(&format!("{url}#/proxies")).unwrap();
    let proxies = browser
        .wait_for_view(
            "the proxies' page",
            "proxies",
            "return Array.from(document.querySelectorAll('#main tr')).map(r => r.textContent)",
            |v| {
                let rows: Vec<String> = v
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|r| r.as_str().map(str::to_string))
                    .collect();
                Ok(rows.iter().any(|r| r.starts_with(&format!("{ns}/db"))).then_some(rows))
            },
        )
        .unwrap();
    browser.screenshot("proxies.png").unwrap();
    for r in proxies.iter().filter(|r| r.starts_with(&format!("{ns}/"))) {
        assert!(r.contains("synced"), "every shop proxy in sync: {proxies:#?}");
    }
    drop(browser);

    // Ctrl-C stops meshctl dashboard cleanly.
    stop.store(true, Ordering::Relaxed);
    let answered = traffic.join().unwrap();
    assert!(answered > 0, "the shop answered none of the background requests");
    let pid = meshctl.0.id().to_string();
    assert!(Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
    let status = meshctl.0.wait().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    assert!(status.success(), "meshctl dashboard on SIGINT: {status}, {rest}");
    assert!(rest.contains("stopped"), "{rest}");
}
