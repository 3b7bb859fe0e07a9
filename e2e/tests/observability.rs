//! The mesh's telemetry in the tools users look at it with (issue 15): a real
//! Prometheus discovering the shop's pods through its
//! Kubernetes service discovery and scraping them where the injector's
//! `prometheus.io/*` annotations point, answering the PromQL of Istio's
//! standard dashboards with the values the test's traffic implies; and a real
//! Jaeger receiving the proxies' spans over OTLP/gRPC, holding one request
//! through the shop as one trace with every hop parented to the previous one.
//!
//! Runs on kubesim (default), on the upstream test bed
//! (`TRELLIS_E2E_CLUSTER=upstream`: Prometheus and Jaeger imported into its
//! node as images, and RBAC enforced, so Prometheus discovers pods with its
//! least-privilege ClusterRole, checked with `kubectl auth can-i`) or on a
//! real cluster (`TRELLIS_E2E_KUBECONFIG`). Needs the workspace's binaries
//! (`cargo build --bins`) and Prometheus and Jaeger built by
//! `e2e/observability/build.sh` (see e2e/README.md).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail, ensure};
use trellis_e2e::suite::observability::{self, Jaeger, Prometheus, SCRAPE_INTERVAL};
use trellis_e2e::suite::{Answer, Http, Sample, Target, steps, sync, traces, wait_for};
use trellis_manifests::demo;

/// Requests that succeed end to end (db answers 201, so the db edge's series are this
/// traffic's alone).
const OK: usize = 100;
/// Of those, requests web's app holds for [`SLOW_MS`] before calling on.
const SLOW: usize = 20;
const SLOW_MS: u64 = 600;
/// Of those, requests in which web's app exchanges [`TCP_BYTES`] with db's TCP echo
/// (opaque TCP through both sidecars).
const TCP: usize = 10;
const TCP_BYTES: usize = 1000;
/// Requests web's app fails with a 500 (it calls nothing).
const FAILED: usize = 10;

fn step<T>(t: &Target, name: &str, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    steps::step(t, "observability", name, f)
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The query parameters of one kind of request, relative to `/api/hello`.
fn query(slow: bool, tcp: bool) -> String {
    let db = format!("db.{}.svc.cluster.local:{}", demo::NAMESPACE, demo::DB_TCP_PORT);
    let mut q = String::from("status@db=201");
    if slow {
        q.push_str(&format!("&delay@web={SLOW_MS}"));
    }
    if tcp {
        q.push_str(&format!("&tcp@web={db}&tcpbytes@web={TCP_BYTES}"));
    }
    q
}

/// Every answer must have `status`, and a TCP exchange asked for must have gone through.
fn all_answered(answers: &[Result<Answer, String>], status: u16, tcp: bool) -> anyhow::Result<()> {
    let bad: Vec<String> = answers
        .iter()
        .filter(|a| !a.as_ref().is_ok_and(|a| a.status == status))
        .map(|a| match a {
            Ok(a) => format!("{}: {}", a.status, String::from_utf8_lossy(&a.body)),
            Err(e) => e.clone(),
        })
        .collect();
    ensure!(
        bad.is_empty(),
        "{} of {} answers were not {status}: {:?}",
        bad.len(),
        answers.len(),
        &bad[..bad.len().min(3)]
    );
    if tcp {
        for a in answers.iter().flatten() {
            let exchange = &a.hops()?[0]["tcp"];
            ensure!(
                exchange["received"] == TCP_BYTES && exchange["error"].is_null(),
                "web's TCP exchange with db: {exchange}"
            );
        }
    }
    Ok(())
}

/// One request of each kind, so every series the measured traffic counts in exists before
/// its window starts (a counter born inside a window shows no increase in PromQL).
fn warm_up(http: &Http, api: &str) -> anyhow::Result<()> {
    for (slow, tcp) in [(false, false), (true, false), (false, true)] {
        let answer = http.get(&format!("{api}?{}", query(slow, tcp)), &[]);
        all_answered(&[answer.map_err(|e| format!("{e:#}"))], 200, tcp)?;
    }
    let answer = http.get(&format!("{api}?status@web=500"), &[]);
    all_answered(&[answer.map_err(|e| format!("{e:#}"))], 500, false)
}

/// Sends the measured traffic: [`OK`] requests ([`SLOW`] slow, [`TCP`] with a TCP
/// exchange, the rest plain) and [`FAILED`] failing ones.
fn traffic(http: &Http, api: &str) -> anyhow::Result<()> {
    let plain = OK - SLOW - TCP;
    for (n, slow, tcp) in [(plain, false, false), (SLOW, true, false), (TCP, false, true)] {
        let answers = http.many(&format!("{api}?{}", query(slow, tcp)), &[], n, 4);
        ensure!(answers.len() == n, "{} answers of {n}", answers.len());
        all_answered(&answers, 200, tcp)?;
    }
    let answers = http.many(&format!("{api}?status@web=500"), &[], FAILED, 4);
    all_answered(&answers, 500, false)
}

/// Waits until Prometheus holds a scrape of every shop pod taken after `after` (Unix
/// seconds): `timestamp(up)` is when each target was last scraped.
fn scraped_since(prometheus: &Prometheus, pods: usize, after: f64) -> anyhow::Result<()> {
    wait_for(
        "a scrape of every shop pod after the traffic",
        Duration::from_secs(30),
        || {
            let scraped = prometheus.query(&format!("timestamp(up{{namespace=\"{}\"}})", demo::NAMESPACE), None)?;
            let fresh = scraped.iter().filter(|s| s.value > after).count();
            if scraped.len() >= pods && fresh == scraped.len() {
                Ok(Some(()))
            } else {
                bail!(
                    "{fresh} of {} targets scraped since {after:.3}, {pods} pods",
                    scraped.len()
                )
            }
        },
    )
}

/// `sum by (BY) (EXPR) - sum by (BY) (EXPR offset WINDOW)`: what a counter expression
/// gained over the window ending at the evaluation time, exactly (no extrapolation).
fn gained(expr: &str, by: &str, window_ms: u64) -> String {
    format!("sum by ({by}) ({expr}) - sum by ({by}) ({expr} offset {window_ms}ms)")
}

/// A query's samples keyed by the values of `keys`, joined with ` → `.
fn by_labels(samples: &[Sample], keys: &[&str]) -> BTreeMap<String, f64> {
    samples
        .iter()
        .map(|s| {
            let key: Vec<&str> = keys
                .iter()
                .map(|k| s.labels.get(*k).map_or("", String::as_str))
                .collect();
            (key.join(" → "), s.value)
        })
        .collect()
}

/// The exact counts this traffic implies, each as (what, PromQL, by, expected per group).
fn expected_counts() -> Vec<(&'static str, String, &'static str, BTreeMap<String, f64>)> {
    let web_in = "istio_requests_total{reporter=\"destination\",destination_workload=\"web\"}".to_string();
    let db_in = "istio_requests_total{reporter=\"destination\",destination_workload=\"db\"}".to_string();
    let tcp = |name: &str, reporter: &str| {
        format!("{name}{{reporter=\"{reporter}\",source_workload=\"web\",destination_workload=\"db\"}}")
    };
    let bytes = (TCP * TCP_BYTES) as f64;
    let one = |k: &str, v: f64| BTreeMap::from([(k.to_string(), v)]);
    vec![
        (
            "requests into web by source, destination and code",
            web_in,
            "source_workload, destination_workload, response_code",
            BTreeMap::from([
                (format!("{} → web → 200", demo::GATEWAY), OK as f64),
                (format!("{} → web → 500", demo::GATEWAY), FAILED as f64),
            ]),
        ),
        (
            "requests into db by destination and code (from either payment version)",
            db_in,
            "destination_workload, response_code",
            one("db → 201", OK as f64),
        ),
        (
            "TCP bytes db received from web (db's report)",
            tcp("istio_tcp_received_bytes_total", "destination"),
            "source_workload, destination_workload",
            one("web → db", bytes),
        ),
        (
            "TCP bytes db sent to web (db's report)",
            tcp("istio_tcp_sent_bytes_total", "destination"),
            "source_workload, destination_workload",
            one("web → db", bytes),
        ),
        (
            "TCP bytes web sent to db (web's report)",
            tcp("istio_tcp_sent_bytes_total", "source"),
            "source_workload, destination_workload",
            one("web → db", bytes),
        ),
        (
            "TCP connections web → db opened (db's report)",
            tcp("istio_tcp_connections_opened_total", "destination"),
            "source_workload, destination_workload",
            one("web → db", TCP as f64),
        ),
        (
            "TCP connections web → db closed (db's report)",
            tcp("istio_tcp_connections_closed_total", "destination"),
            "source_workload, destination_workload",
            one("web → db", TCP as f64),
        ),
        (
            "db's own metric, merged by its proxy into what Prometheus scrapes",
            format!("testapp_requests_total{{namespace=\"{}\",app=\"db\"}}", demo::NAMESPACE),
            "app",
            one("db", OK as f64),
        ),
    ]
}

/// Evaluates every expected count at `at` over `window_ms`; the mismatches, described.
fn count_mismatches(prometheus: &Prometheus, at: f64, window_ms: u64) -> anyhow::Result<Vec<String>> {
    let mut wrong = Vec::new();
    for (what, expr, by, want) in expected_counts() {
        let keys: Vec<&str> = by.split(", ").collect();
        let got = by_labels(&prometheus.query(&gained(&expr, by, window_ms), Some(at))?, &keys);
        let got: BTreeMap<String, f64> = got.into_iter().filter(|(_, v)| *v != 0.0).collect();
        if got != want {
            let total = |promql: String| -> anyhow::Result<BTreeMap<String, f64>> {
                Ok(by_labels(&prometheus.query(&promql, Some(at))?, &keys))
            };
            wrong.push(format!(
                "{what}: gained {got:?}, expected {want:?} (at the end {:?}, at the start {:?})",
                total(format!("sum by ({by}) ({expr})"))?,
                total(format!("sum by ({by}) ({expr} offset {window_ms}ms)"))?
            ));
        }
    }
    Ok(wrong)
}

#[test]
fn prometheus_and_jaeger_see_the_shop() -> anyhow::Result<()> {
    // kubesim runs the tools' programs, the upstream test bed imports them as images: both
    // need them built.
    if std::env::var_os("TRELLIS_E2E_KUBECONFIG").is_none()
        && let Some(why) = observability::tools_missing()
    {
        trellis_skip::skip(&why);
        return Ok(());
    }
    let Some(t) = Target::acquire()? else { return Ok(()) };
    let http = Http::new()?;
    step(&t, "install Trellis", || steps::install(&t))?;
    step(&t, "deploy Prometheus and Jaeger (unmeshed, as a user does)", || {
        observability::deploy(&t)
    })?;
    if t.kubesim().is_some() {
        eprintln!(
            "[observability] Prometheus' least privilege is not checked on kubesim, which allows every request (TRELLIS_E2E_CLUSTER=upstream checks it)"
        );
    } else {
        step(
            &t,
            "Prometheus' ServiceAccount may list and watch pods cluster-wide and nothing else (kubectl auth can-i)",
            || {
                let wrong = observability::prometheus_privileges_wrong(&t)?;
                ensure!(wrong.is_empty(), "not least privilege: {}", wrong.join("; "));
                Ok(())
            },
        )?;
    }
    step(&t, "deploy the shop", || steps::deploy_shop(&t))?;
    step(
        &t,
        "the Mesh sends every proxy's spans to Jaeger over OTLP/gRPC",
        || {
            t.kubectl_ok(
                &["apply", "--server-side", "--force-conflicts", "-f", "-"],
                Some(&serde_json::to_string(&observability::mesh_tracing_to_jaeger("grpc"))?),
            )
            .map(|_| ())
        },
    )?;
    let gw = step(&t, "the gateway's load balancer address", || {
        steps::load_balancer(&t, demo::NAMESPACE, demo::GATEWAY)
    })?;
    let api = format!("{gw}/api/hello");
    let prometheus = Prometheus::new(&t, &http)?;
    let jaeger = Jaeger::new(&t, &http)?;

    let meshed = sync::meshed_pods(&t, demo::NAMESPACE)?;
    // `namespace/pod`: Prometheus' targets carry the two as separate labels.
    let pods: Vec<String> = meshed
        .iter()
        .filter_map(|p| p.rsplit_once('/').map(|(_, pod)| pod.to_string()))
        .collect();
    step(
        &t,
        "Prometheus discovers every meshed pod and scrapes it where its annotations point",
        || prometheus.wait_for_targets(demo::NAMESPACE, &pods, Duration::from_secs(90)),
    )?;

    let trace_id = format!("{:032x}", fastrand::u128(1..));
    let client_span = format!("{:016x}", fastrand::u64(1..));
    step(
        &t,
        "one request through the shop is one trace in Jaeger: gateway, web, payment and db, each span parented to the previous hop",
        || {
            // The Mesh change reaches the proxies within a second or so; until then they
            // export to the previous collector. Requests traced before Jaeger has the shop's
            // spans do not count: the proof is the first request after.
            wait_for("Jaeger receiving the shop's spans", Duration::from_secs(60), || {
                let answer = http.get(&api, &[])?;
                ensure!(answer.status == 200, "status {}", answer.status);
                let services = jaeger.services()?;
                let db = format!("db.{}", demo::NAMESPACE);
                Ok(services.contains(&db).then_some(()))
            })?;
            let traceparent = format!("00-{trace_id}-{client_span}-01");
            let answer = http.get(&api, &[("traceparent", &traceparent)])?;
            ensure!(answer.status == 200, "status {}", answer.status);
            let version = answer
                .hops()?
                .iter()
                .find(|h| h["service"] == "payment")
                .and_then(|h| h["version"].as_str())
                .map(str::to_string)
                .context("no payment hop in the answer")?;
            let expected = traces::shop_path(&version);
            let chain = wait_for("the trace in Jaeger's query API", Duration::from_secs(30), || {
                let found = jaeger.trace(&trace_id)?;
                let [trace] = found.as_slice() else {
                    bail!("{} traces with id {trace_id}", found.len());
                };
                let spans = observability::jaeger_spans(trace);
                traces::expect_path(&spans, &client_span, &expected).map(Some)
            })?;
            eprintln!("[observability]   trace {trace_id}: {}", traces::describe(chain.iter()));
            Ok(())
        },
    )?;

    step(
        &t,
        "warm-up: one request of each kind the measured traffic sends",
        || warm_up(&http, &api),
    )?;
    // The measured window starts once Prometheus holds the warm-up (so each counter's value
    // at `start` includes it), and its traffic only after every pod was scraped once more (so
    // the window holds a sample of every counter from before the traffic, and rate() sees the
    // whole increase).
    let warmed = now();
    step(&t, "Prometheus has scraped every pod since the warm-up", || {
        scraped_since(&prometheus, pods.len(), warmed)
    })?;
    let start = now();
    step(&t, "and once more since the window started", || {
        scraped_since(&prometheus, pods.len(), start)
    })?;
    step(
        &t,
        &format!(
            "traffic: {OK} requests through the shop ({SLOW} held {SLOW_MS} ms at web, {TCP} with {TCP_BYTES} bytes of opaque TCP web → db), {FAILED} failing at web"
        ),
        || traffic(&http, &api),
    )?;
    // The window ends once Prometheus holds exactly what the traffic implies, and lasts at
    // least 30 s, so the rates' extrapolation (below) stays small.
    let (end, window_ms) = step(
        &t,
        "Prometheus counts exactly the traffic: requests by source, destination and code, TCP bytes and connections, the app's merged metric",
        || {
            wait_for("the exact counts in Prometheus", Duration::from_secs(60), || {
                let at = now().max(start + 30.0);
                std::thread::sleep(Duration::from_secs_f64((at - now()).max(0.0)));
                let window_ms = ((at - start) * 1000.0) as u64;
                let wrong = count_mismatches(&prometheus, at, window_ms)?;
                if wrong.is_empty() {
                    Ok(Some((at, window_ms)))
                } else {
                    bail!("{}", wrong.join("; "))
                }
            })
        },
    )?;
    step(
        &t,
        "Istio's dashboard queries: request rate and success rate of web by source and destination",
        || dashboard_rates(&prometheus, end, window_ms),
    )?;
    step(
        &t,
        &format!("Istio's dashboard queries: P50 of web fast, P90 and P99 in the {SLOW_MS} ms requests' bucket"),
        || dashboard_latency(&prometheus, end, window_ms),
    )?;
    Ok(())
}

/// The workload dashboard's incoming request volume and success rate (non-5xx) of web, by
/// source and destination workload.
///
/// `rate()` extrapolates from the samples inside the window to its ends, by at most 1.1
/// average scrape intervals at each end (Prometheus' `extrapolatedRate`), and the window
/// holds a sample of every counter from before the traffic and one from after it: so
/// `rate × window` lies between the exact count and the count × window / (window − 2 × 1.1
/// intervals); the bound allows 3 intervals for scrapes delayed on a loaded machine. The success rate is a ratio of two rates over the same
/// target's samples: the extrapolation cancels, so it is exact.
fn dashboard_rates(prometheus: &Prometheus, at: f64, window_ms: u64) -> anyhow::Result<()> {
    let w = format!("{window_ms}ms");
    let by = "source_workload, destination_workload";
    let volume = prometheus.query(
        &format!(
            "round(sum by ({by}) (rate(istio_requests_total{{reporter=\"destination\",destination_workload=\"web\"}}[{w}])), 0.001)"
        ),
        Some(at),
    )?;
    let volume = by_labels(&volume, &["source_workload", "destination_workload"]);
    let edge = format!("{} → web", demo::GATEWAY);
    let rps = *volume
        .get(&edge)
        .with_context(|| format!("no request rate for {edge}: {volume:?}"))?;
    ensure!(volume.len() == 1, "one edge into web expected: {volume:?}");
    let window = window_ms as f64 / 1000.0;
    let count = (OK + FAILED) as f64;
    let (low, high) = (
        count / window - 0.001,
        count / (window - 3.0 * SCRAPE_INTERVAL.as_secs_f64()) + 0.001,
    );
    ensure!(
        (low..=high).contains(&rps),
        "{edge}: {rps} requests per second over {window:.1} s; {count} requests imply {low:.3}..={high:.3}"
    );
    let success = prometheus.query(
        &format!(
            "sum by ({by}) (rate(istio_requests_total{{reporter=\"destination\",destination_workload=\"web\",response_code!~\"5.*\"}}[{w}])) / sum by ({by}) (rate(istio_requests_total{{reporter=\"destination\",destination_workload=\"web\"}}[{w}]))"
        ),
        Some(at),
    )?;
    let success = by_labels(&success, &["source_workload", "destination_workload"]);
    let rate = *success
        .get(&edge)
        .with_context(|| format!("no success rate for {edge}: {success:?}"))?;
    let want = OK as f64 / count;
    ensure!(
        (rate - want).abs() < 1e-6,
        "{edge}: success rate {rate}, the traffic implies {want} ({OK} of {count})"
    );
    eprintln!("[observability]   {edge}: {rps} requests/s over {window:.1} s, success rate {rate:.4}");
    Ok(())
}

/// The dashboard's latency quantiles of web's incoming requests (`histogram_quantile` over
/// the rate of `istio_request_duration_milliseconds_bucket`, by source and destination).
/// [`SLOW`] of the requests waited [`SLOW_MS`] at web, so the 500 ms bucket holds exactly the
/// others' share, P50 lies at or below it, and P90 and P99 above it (in Envoy's buckets the
/// next bound is 1000 ms: 2500 allows for a loaded machine).
fn dashboard_latency(prometheus: &Prometheus, at: f64, window_ms: u64) -> anyhow::Result<()> {
    let w = format!("{window_ms}ms");
    let by = "source_workload, destination_workload";
    let buckets = format!(
        "rate(istio_request_duration_milliseconds_bucket{{reporter=\"destination\",destination_workload=\"web\"}}[{w}])"
    );
    let edge = format!("{} → web", demo::GATEWAY);
    let quantile = |q: f64| -> anyhow::Result<f64> {
        let samples = prometheus.query(
            &format!("histogram_quantile({q}, sum by ({by}, le) ({buckets}))"),
            Some(at),
        )?;
        by_labels(&samples, &["source_workload", "destination_workload"])
            .get(&edge)
            .copied()
            .with_context(|| format!("no P{} for {edge}", q * 100.0))
    };
    let (p50, p90, p99) = (quantile(0.5)?, quantile(0.9)?, quantile(0.99)?);
    eprintln!("[observability]   {edge}: P50 {p50:.1} ms, P90 {p90:.1} ms, P99 {p99:.1} ms");
    ensure!(
        p50 <= 500.0,
        "P50 {p50} ms: {} of {} requests were fast",
        OK - SLOW + FAILED,
        OK + FAILED
    );
    ensure!(
        p90 > 500.0 && p90 <= p99 && p99 <= 2500.0,
        "P90 {p90} ms, P99 {p99} ms: {SLOW} of {} requests took over {SLOW_MS} ms",
        OK + FAILED
    );
    let fast_share = prometheus.scalar(
        &format!(
            "sum(rate(istio_request_duration_milliseconds_bucket{{reporter=\"destination\",destination_workload=\"web\",le=~\"500(\\\\.0)?\"}}[{w}])) / sum(rate(istio_request_duration_milliseconds_count{{reporter=\"destination\",destination_workload=\"web\"}}[{w}]))"
        ),
        Some(at),
    )?;
    let want = (OK - SLOW + FAILED) as f64 / (OK + FAILED) as f64;
    ensure!(
        (fast_share - want).abs() < 1e-6,
        "{fast_share} of web's requests within 500 ms; the traffic implies {want}"
    );
    Ok(())
}
