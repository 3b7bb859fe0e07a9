//! `meshctl stat` and `meshctl top` on a live mesh, as a user runs them: the shop of the
//! end-to-end suite (gateway → web → payment v1/v2 → db, all mutual TLS) takes a known number
//! of requests through its gateway, some failing at web, and the binary — reaching the
//! operator's traffic view through the API server's pod proxy — must show exactly those
//! requests on each edge, their success rate and their mTLS share. Runs on kubesim, or on
//! upstream Kubernetes with `TRELLIS_E2E_CLUSTER=upstream` (it speaks only the Kubernetes API
//! and the gateway's load balancer).

mod support;

use std::time::Duration;

use anyhow::{bail, ensure};
use serde_json::Value;
use support::{Target, meshctl_at, text};
use trellis_e2e::suite::{Http, steps, wait_for};
use trellis_manifests::demo;

/// Requests that succeed end to end (db answers 201).
const OK: u64 = 20;
/// Requests web's app fails with a 500 (it calls nothing further).
const FAILED: u64 = 5;

/// `meshctl ARGS -o json`, parsed; the command must succeed.
fn json(cluster: &Target, args: &[&str]) -> anyhow::Result<Value> {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    let out = meshctl_at(cluster.kubeconfig(), &all);
    let (stdout, stderr) = text(&out);
    ensure!(out.status.success(), "meshctl {all:?}: {stderr}\n{stdout}");
    Ok(serde_json::from_str(&stdout)?)
}

/// The sum of `field` over `items` matching `pick`.
fn sum(items: &Value, field: &str, pick: impl Fn(&Value) -> bool) -> u64 {
    items
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| pick(i))
        .filter_map(|i| i[field].as_u64())
        .sum()
}

fn named(v: &Value, ns: &str, name: &str) -> bool {
    v["namespace"] == ns && v["name"] == name
}

fn sends(requests: &Http, url: &str, n: u64, status: u16) -> anyhow::Result<()> {
    let answers = requests.many(url, &[], n as usize, 4);
    let bad: Vec<String> = answers
        .iter()
        .filter(|a| !a.as_ref().is_ok_and(|a| a.status == status))
        .map(|a| format!("{:?}", a.as_ref().map(|a| a.status)))
        .collect();
    ensure!(
        answers.len() as u64 == n && bad.is_empty(),
        "expected {n} answers {status}, got {bad:?}"
    );
    Ok(())
}

#[test]
fn stat_and_top_show_the_exact_requests_of_each_edge() {
    let Some(cluster) = support::cluster() else {
        return;
    };
    let t = &cluster;
    let step = |name: &str, f: &mut dyn FnMut() -> anyhow::Result<()>| steps::step(t, "stat", name, f).unwrap();
    step("install", &mut || steps::install(t));
    step("the shop", &mut || steps::deploy_shop(t));
    let ns = demo::NAMESPACE;
    step("the known traffic through the gateway", &mut || {
        let gw = steps::load_balancer(t, ns, demo::GATEWAY)?;
        let api = format!("{gw}/api/hello");
        let http = Http::new()?;
        sends(&http, &format!("{api}?status@db=201"), OK, 200)?;
        sends(&http, &format!("{api}?status@web=500"), FAILED, 500)
    });
    let total = OK + FAILED;
    let mut stat = Value::Null;
    step(
        "meshctl stat shows every request once the proxies reported",
        &mut || {
            stat = wait_for(
                "the proxies' reports of the traffic (every 10 s)",
                Duration::from_secs(60),
                || {
                    let s = json(t, &["stat", "deploy", "-n", ns, "-t", "5m"])?;
                    let web = sum(&s["rows"], "requests", |r| named(r, ns, "web"));
                    let payment = sum(&s["rows"], "requests", |r| {
                        r["namespace"] == ns && r["name"].as_str().is_some_and(|n| n.starts_with("payment"))
                    });
                    let db = sum(&s["rows"], "requests", |r| named(r, ns, "db"));
                    if (web, payment, db) == (total, OK, OK) {
                        Ok(Some(s))
                    } else if web > total || payment > OK || db > OK {
                        bail!("more requests than sent: web {web}, payment {payment}, db {db}: {s:#}")
                    } else {
                        std::thread::sleep(Duration::from_secs(1));
                        bail!("web {web} of {total}, payment {payment} of {OK}, db {db} of {OK} so far")
                    }
                },
            )?;
            Ok(())
        },
    );
    let edges = &stat["edges"];
    let gateway = (ns, demo::GATEWAY);
    let into = |dest: &str| {
        edges
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| {
                e["destination"]["namespace"] == ns
                    && e["destination"]["name"].as_str().is_some_and(|n| n.starts_with(dest))
            })
            .collect::<Vec<_>>()
    };
    // gateway → web: every request, the failing ones failed, all over mutual TLS.
    let web = into("web");
    assert_eq!(web.len(), 1, "one edge into web: {web:#?}");
    assert!(named(&web[0]["source"], gateway.0, gateway.1), "{:#}", web[0]);
    assert_eq!(web[0]["service"], format!("web.{ns}.svc.cluster.local"));
    assert_eq!(
        (web[0]["requests"].as_u64(), web[0]["failures"].as_u64()),
        (Some(total), Some(FAILED))
    );
    assert_eq!(web[0]["successRate"].as_f64(), Some(OK as f64 / total as f64));
    assert_eq!(web[0]["mtlsShare"].as_f64(), Some(1.0));
    assert_eq!(web[0]["mtls"].as_u64(), Some(total));
    // web → payment v1/v2 (the 90/10 split) and payment → db: the successful requests only.
    for (dest, client) in [("payment", "web"), ("db", "payment")] {
        let edges = into(dest);
        assert!(!edges.is_empty(), "no edge into {dest}: {stat:#}");
        for e in &edges {
            assert!(
                e["source"]["namespace"] == ns && e["source"]["name"].as_str().is_some_and(|n| n.starts_with(client)),
                "{e:#}"
            );
            assert_eq!(e["failures"].as_u64(), Some(0), "{e:#}");
            assert_eq!(e["mtlsShare"].as_f64(), Some(1.0), "{e:#}");
            assert_eq!(e["successRate"].as_f64(), Some(1.0), "{e:#}");
        }
        let requests: u64 = edges.iter().filter_map(|e| e["requests"].as_u64()).sum();
        assert_eq!(requests, OK, "{dest}: {edges:#?}");
    }
    // The gateway served what it took from outside the mesh: none over mutual TLS.
    let gw = stat["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| named(r, gateway.0, gateway.1))
        .cloned();
    let gw = gw.unwrap_or_else(|| panic!("no gateway row: {stat:#}"));
    assert_eq!(
        (gw["requests"].as_u64(), gw["failures"].as_u64()),
        (Some(total), Some(FAILED))
    );
    assert_eq!(gw["mtlsShare"].as_f64(), Some(0.0));
    assert_eq!(stat["windowSeconds"], 300);

    // One service, and the edges into it.
    let svc = json(t, &["stat", "svc", "payment", "-n", ns, "-t", "5m"]).unwrap();
    assert_eq!(svc["rows"].as_array().map(Vec::len), Some(1), "{svc:#}");
    assert_eq!(svc["rows"][0]["requests"].as_u64(), Some(OK));
    assert_eq!(sum(&svc["edges"], "requests", |_| true), OK);
    // top: the busiest edges first, the gateway → web edge (or the gateway's own) on top.
    let top = json(t, &["top", "-A", "-t", "5m", "--limit", "3"]).unwrap();
    let top_edges = top["edges"].as_array().unwrap();
    assert_eq!(top_edges.len(), 3, "{top:#}");
    assert_eq!(top_edges[0]["requests"].as_u64(), Some(total), "{top:#}");
    assert!(
        top_edges
            .windows(2)
            .all(|w| w[0]["requests"].as_u64() >= w[1]["requests"].as_u64())
    );
    // The table, for people.
    let out = meshctl_at(t.kubeconfig(), &["stat", "deploy", "web", "-n", ns, "-t", "5m"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    eprintln!("meshctl stat deploy web -n {ns} -t 5m:\n{stdout}");
    let row = stdout
        .lines()
        .find(|l| l.contains(" web "))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(
        row.contains("80.00%") && row.contains("100.00%") && row.contains(&format!(" {total} ")),
        "{stdout}"
    );
    assert!(stdout.contains(&format!("{ns}/{}", demo::GATEWAY)), "{stdout}");
}
