//! First light: the seeds' whole traffic flow, end to end, with real
//! processes, real sockets, real iptables capture and real mTLS.
//!
//! gateway → web → payment (v1/v2) → db, on kubesim (default) or on the
//! cluster named by `TRELLIS_E2E_KUBECONFIG` (see `trellis_e2e::suite`).
//! The install and the shop are expensive, so one test walks through every
//! check in order, each a named step that says what failed.
//!
//! Needs the workspace's binaries (`trellis-proxy`, `trellis-operator`,
//! `trellis-testapp`) built: `cargo build --bins` (CI's
//! `cargo nextest run --workspace` builds them).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use serde_json::Value;
use trellis_e2e::suite::{Answer, Http, Target, failures, prometheus_samples, steps, wait_for};
use trellis_manifests::demo;

const TRUST: &str = "spiffe://cluster.local";

fn step<T>(t: &Target, name: &str, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    let started = Instant::now();
    eprintln!("[first light] {name} ...");
    let out = f().map_err(|e| {
        eprintln!("[first light] {name}: FAILED: {e:#}\n{}", t.diagnose());
        e
    });
    let out = out.with_context(|| format!("step `{name}` failed"))?;
    eprintln!("[first light] {name}: ok in {:.1?}", started.elapsed());
    Ok(out)
}

fn identity(sa: &str) -> String {
    format!("{TRUST}/ns/{}/sa/{sa}", demo::NAMESPACE)
}

fn payment_version(answer: &Answer) -> anyhow::Result<String> {
    let hops = answer.hops()?;
    hops.iter()
        .find(|h| h["service"] == "payment")
        .and_then(|h| h["version"].as_str())
        .map(str::to_string)
        .with_context(|| format!("no payment hop in {}", String::from_utf8_lossy(&answer.body)))
}

fn count_versions(answers: &[Result<Answer, String>]) -> anyhow::Result<BTreeMap<String, usize>> {
    let mut counts = BTreeMap::new();
    for a in answers {
        let a = a.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?;
        ensure!(
            a.status == 200,
            "status {}: {}",
            a.status,
            String::from_utf8_lossy(&a.body)
        );
        *counts.entry(payment_version(a)?).or_insert(0) += 1;
    }
    Ok(counts)
}

#[test]
fn first_light() -> anyhow::Result<()> {
    let Some(t) = Target::acquire()? else {
        eprintln!("skipping first light: kubesim needs root to run pods (or set TRELLIS_E2E_KUBECONFIG)");
        return Ok(());
    };
    let http = Http::new()?;
    step(&t, "install: CRDs with kubectl, the operator Deployment", || {
        steps::install(&t)
    })?;
    step(&t, "deploy the shop (meshed pods, gateway, routing)", || {
        steps::deploy_shop(&t)
    })?;
    let gw = step(&t, "the gateway's load balancer address", || {
        steps::load_balancer(&t, demo::NAMESPACE, demo::GATEWAY)
    })?;
    let api = format!("{gw}/api/hello");
    step(
        &t,
        "the first request crosses gateway → web → payment → db",
        || {
            wait_for("a 200 from /api through the gateway", Duration::from_secs(60), || {
                Ok(http.get(&api, &[]).ok().filter(|a| a.status == 200))
            })
        },
    )?;

    step(&t, "every hop is mTLS with the expected SPIFFE identities", || {
        let answer = http.get(&api, &[])?;
        let hops = answer.hops()?;
        let services: Vec<_> = hops.iter().map(|h| h["service"].as_str().unwrap_or("?")).collect();
        ensure!(services == ["web", "payment", "db"], "hops {services:?}");
        for (hop, (me, caller)) in hops
            .iter()
            .zip([("web", demo::GATEWAY), ("payment", "web"), ("db", "payment")])
        {
            let xfcc = hop["clientCert"].as_str().unwrap_or_default();
            ensure!(
                xfcc.contains(&format!("By={}", identity(me))) && xfcc.contains(&format!("URI={}", identity(caller))),
                "{me} saw x-forwarded-client-cert {xfcc:?}; expected By={} and URI={}",
                identity(me),
                identity(caller)
            );
        }
        Ok(())
    })?;

    step(&t, "web → payment splits 90/10 (±5 %) over 1000 requests", || {
        let answers = http.many(&api, &[], 1000, 4);
        let counts = count_versions(&answers)?;
        let v2 = counts.get("v2").copied().unwrap_or(0);
        ensure!((50..=150).contains(&v2), "v2 got {v2} of 1000: {counts:?}");
        eprintln!("[first light]   versions over 1000 requests: {counts:?}");
        Ok(())
    })?;

    step(&t, "x-canary: true always reaches v2", || {
        let answers = http.many(&api, &[("x-canary", "true")], 100, 4);
        let counts = count_versions(&answers)?;
        ensure!(counts.keys().collect::<Vec<_>>() == ["v2"], "{counts:?}");
        Ok(())
    })?;

    step(&t, "a failing payment instance is retried to success", || {
        let mut faulty = demo::apps()
            .into_iter()
            .find(|a| a.name == "payment-v1")
            .context("no payment-v1 in the demo")?;
        faulty.name = "payment-v1-faulty".into();
        faulty.fail_status = Some(503);
        let deployment = demo::app_deployment(&faulty);
        t.apply(&serde_json::to_string(&deployment)?)?;
        steps::rollout(&t, demo::NAMESPACE, &faulty.name)?;
        // Give the proxies a moment to learn the new endpoint, then every request must succeed.
        std::thread::sleep(Duration::from_secs(2));
        let answers = http.many(&api, &[], 200, 4);
        let failed = failures(&answers);
        let faulty_pod = t
            .pod_names(demo::NAMESPACE, "app=payment,version=v1")?
            .into_iter()
            .find(|p| p.starts_with(&faulty.name))
            .context("the faulty pod is gone")?;
        let inbound = t.raw(&format!(
            "/api/v1/namespaces/{}/pods/{faulty_pod}:15020/proxy/metrics",
            demo::NAMESPACE
        ))?;
        t.kubectl_ok(
            &[
                "delete",
                "deployment",
                "-n",
                demo::NAMESPACE,
                &faulty.name,
                "--wait=false",
            ],
            None,
        )?;
        let failed_there: f64 = prometheus_samples(&inbound)
            .iter()
            .filter(|s| s.name == "trellis_requests_total" && s.labels.get("response_code").is_some_and(|c| c == "503"))
            .map(|s| s.value)
            .sum();
        ensure!(
            failed_there > 0.0,
            "the faulty instance answered no 503s, so nothing was retried:\n{inbound}"
        );
        eprintln!("[first light]   the faulty instance failed {failed_there} requests; all were retried elsewhere");
        ensure!(
            failed.is_empty(),
            "{} of 200 failed despite retries: {:?}",
            failed.len(),
            &failed[..failed.len().min(3)]
        );
        Ok(())
    })?;

    step(&t, "the route timeout (500 ms on /pay/slow) is honoured", || {
        let started = Instant::now();
        let answer = http.get(&format!("{gw}/api/slow?delay@payment=3000"), &[])?;
        let took = started.elapsed();
        ensure!(
            answer.status == 504,
            "status {} after {took:?}: {}",
            answer.status,
            String::from_utf8_lossy(&answer.body)
        );
        ensure!(took < Duration::from_millis(2500), "the timeout took {took:?}");
        Ok(())
    })?;

    step(&t, "the injected abort (30 % on /pay/flaky) shows its rate", || {
        let answers = http.many(&format!("{gw}/api/flaky"), &[], 400, 4);
        let aborted = answers.iter().flatten().filter(|a| a.status == 500).count();
        let ok = answers.iter().flatten().filter(|a| a.status == 200).count();
        ensure!(
            aborted + ok == 400,
            "other answers: {:?}",
            failures(&answers).iter().take(3).collect::<Vec<_>>()
        );
        ensure!(
            (80..=160).contains(&aborted),
            "{aborted} of 400 aborted, expected about 120"
        );
        Ok(())
    })?;

    step(
        &t,
        "AuthorizationPolicy: payment → db /db/admin is 403, other paths work",
        || {
            let denied = http.get(&format!("{gw}/api/admin/users"), &[])?;
            ensure!(
                denied.status == 403,
                "status {}: {}",
                denied.status,
                String::from_utf8_lossy(&denied.body)
            );
            let allowed = http.get(&format!("{gw}/api/records"), &[])?;
            ensure!(allowed.status == 200, "status {}", allowed.status);
            Ok(())
        },
    )?;

    step(
        &t,
        "STRICT: plaintext from outside the mesh to a pod's inbound port is refused",
        || {
            let client = steps::load_balancer(&t, demo::OUTSIDE_NAMESPACE, demo::CLIENT)?;
            let pod = t
                .pod_names(demo::NAMESPACE, "app=payment,version=v1")?
                .into_iter()
                .next()
                .context("no payment v1 pod")?;
            let ip = t.get_json(&["pod", "-n", demo::NAMESPACE, &pod])?["status"]["podIP"]
                .as_str()
                .map(str::to_string)
                .context("payment pod has no IP")?;
            for target in [
                format!("http://{ip}:8080/pay"),
                "http://payment.shop.svc.cluster.local:8080/pay".to_string(),
            ] {
                let answer = http.get(&format!("{client}/call?url={target}"), &[])?;
                let echo = answer.json()?;
                ensure!(
                    echo["upstream"]["status"] == 0 || echo["upstream"]["status"].as_u64().is_some_and(|s| s >= 400),
                    "plaintext to {target} was answered: {echo}"
                );
            }
            Ok(())
        },
    )?;

    step(
        &t,
        "each proxy's /metrics counts requests by source, destination and code",
        || {
            let metrics = |pod: &str| {
                t.raw(&format!(
                    "/api/v1/namespaces/{}/pods/{pod}:15020/proxy/metrics",
                    demo::NAMESPACE
                ))
            };
            let web = t
                .pod_names(demo::NAMESPACE, "app=web")?
                .into_iter()
                .next()
                .context("no web pod")?;
            let db = t
                .pod_names(demo::NAMESPACE, "app=db")?
                .into_iter()
                .next()
                .context("no db pod")?;
            let has = |text: &str, want: &[(&str, &str)]| {
                prometheus_samples(text).iter().any(|s| {
                    s.name == "trellis_requests_total"
                        && s.value > 0.0
                        && want.iter().all(|(k, v)| s.labels.get(*k).is_some_and(|l| l == v))
                })
            };
            let web_metrics = metrics(&web)?;
            ensure!(
                has(
                    &web_metrics,
                    &[
                        ("reporter", "destination"),
                        ("source_principal", &identity(demo::GATEWAY)),
                        ("source_workload", demo::GATEWAY),
                        ("destination_workload", "web"),
                        ("response_code", "200")
                    ]
                ),
                "web's proxy has no inbound series from the gateway:\n{web_metrics}"
            );
            ensure!(
                has(
                    &web_metrics,
                    &[
                        ("reporter", "source"),
                        ("source_workload", "web"),
                        ("destination_service_name", "payment"),
                        ("response_code", "200")
                    ]
                ) || has(
                    &web_metrics,
                    &[
                        ("reporter", "source"),
                        ("source_workload", "web"),
                        ("destination_service", "payment.shop.svc.cluster.local"),
                        ("response_code", "200")
                    ]
                ),
                "web's proxy has no outbound series to payment:\n{web_metrics}"
            );
            let db_metrics = metrics(&db)?;
            ensure!(
                has(
                    &db_metrics,
                    &[
                        ("reporter", "destination"),
                        ("source_workload", "payment-v1"),
                        ("destination_workload", "db"),
                        ("response_code", "403")
                    ]
                ) || has(
                    &db_metrics,
                    &[
                        ("reporter", "destination"),
                        ("source_principal", &identity("payment")),
                        ("response_code", "403")
                    ]
                ),
                "db's proxy did not count the denied requests:\n{db_metrics}"
            );
            Ok(())
        },
    )?;

    step(
        &t,
        "a traceparent sent at the gateway reaches db, and the spans reach the collector",
        || {
            let trace_id = format!("{:032x}", fastrand::u128(1..));
            let traceparent = format!("00-{trace_id}-{:016x}-01", fastrand::u64(1..));
            let answer = http.get(&api, &[("traceparent", &traceparent)])?;
            let hops = answer.hops()?;
            let at_db = hops
                .last()
                .and_then(|h| h["headers"]["traceparent"].as_str())
                .unwrap_or_default();
            ensure!(
                at_db.contains(&trace_id),
                "db saw traceparent {at_db:?}, sent {traceparent}"
            );
            let collector = steps::load_balancer(&t, demo::COLLECTOR_NAMESPACE, demo::COLLECTOR)?;
            let services = wait_for("spans of the trace at the collector", Duration::from_secs(30), || {
                let exports = http.get(&format!("{collector}/v1/traces"), &[])?.json()?;
                let mut services = std::collections::BTreeSet::new();
                for export in exports["exports"].as_array().into_iter().flatten() {
                    for rs in export["resourceSpans"].as_array().into_iter().flatten() {
                        let service = rs["resource"]["attributes"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .find(|a| a["key"] == "service.name")
                            .and_then(|a| a["value"]["stringValue"].as_str())
                            .unwrap_or("?")
                            .to_string();
                        for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                            for span in ss["spans"].as_array().into_iter().flatten() {
                                if span["traceId"] == trace_id.as_str() {
                                    services.insert(service.clone());
                                }
                            }
                        }
                    }
                }
                Ok((services.len() >= 4).then_some(services))
            })?;
            eprintln!("[first light]   spans of {trace_id} from {services:?}");
            Ok(())
        },
    )?;

    step(
        &t,
        "the split changed to 0/100 with kubectl apply: within 2 s, no failed request",
        || {
            let load = http.background(&api, Vec::new());
            std::thread::sleep(Duration::from_millis(500));
            let changed_at = Instant::now();
            let routing = demo::ROUTING
                .replace("subset: v1\n          weight: 90", "subset: v1\n          weight: 0")
                .replace("subset: v2\n          weight: 10", "subset: v2\n          weight: 100");
            ensure!(
                routing != demo::ROUTING,
                "the demo routing no longer has the 90/10 split this step edits"
            );
            t.apply(&routing)?;
            std::thread::sleep(Duration::from_millis(3000));
            let log = load.finish();
            let failed = failures(log.iter().map(|(_, a)| a));
            ensure!(
                failed.is_empty(),
                "{} failed during the change: {:?}",
                failed.len(),
                &failed[..failed.len().min(3)]
            );
            let late_v1 = log
                .iter()
                .filter(|(at, _)| *at > changed_at + Duration::from_secs(2))
                .filter(|(_, a)| a.as_ref().is_ok_and(|a| payment_version(a).is_ok_and(|v| v == "v1")))
                .count();
            ensure!(
                late_v1 == 0,
                "{late_v1} requests still reached v1 more than 2 s after the change"
            );
            t.apply(demo::ROUTING)?;
            Ok(())
        },
    )?;

    step(
        &t,
        "a config valid to the schema but not to the proxies is NACKed; traffic keeps flowing",
        || {
            let syncz = || -> anyhow::Result<Value> {
                Ok(serde_json::from_str(&t.raw(&format!(
                    "/api/v1/namespaces/{}/services/{}:http-admin/proxy/debug/syncz",
                    trellis_api::mesh::SYSTEM_NAMESPACE,
                    trellis_manifests::install::OPERATOR_NAME
                ))?)?)
            };
            let apply_mesh = |mesh: &Value| {
                t.kubectl_ok(
                    &["apply", "--server-side", "--force-conflicts", "-f", "-"],
                    Some(&serde_json::to_string(mesh)?),
                )
            };
            // The validating webhook refuses this Mesh: a config reaches the proxies only if it
            // got past validation (written while validation was off, or by another version of
            // the validator), so validation is off for this step.
            let validator = trellis_manifests::install::webhooks::VALIDATOR;
            t.kubectl_ok(&["delete", "validatingwebhookconfiguration", validator], None)?;
            let load = http.background(&api, Vec::new());
            let mut bad = demo::mesh_tracing();
            bad["spec"]["telemetry"]["tracing"]["otlpEndpoint"] = "collector.observability:4318".into();
            apply_mesh(&bad)?;
            let nacked = wait_for("a proxy to NACK the config", Duration::from_secs(20), || {
                let state = syncz()?;
                Ok(state.as_array().into_iter().flatten().find_map(|p| {
                    p["nacked"]["error"]
                        .as_str()
                        .filter(|e| e.contains("otlpEndpoint"))
                        .map(|e| format!("{}: {e}", p["proxy"]))
                }))
            })?;
            eprintln!("[first light]   NACKed: {nacked}");
            std::thread::sleep(Duration::from_secs(1));
            let log = load.finish();
            let failed = failures(log.iter().map(|(_, a)| a));
            ensure!(
                !log.is_empty() && failed.is_empty(),
                "{} of {} failed: {:?}",
                failed.len(),
                log.len(),
                &failed[..failed.len().min(3)]
            );
            apply_mesh(&demo::mesh_tracing())?;
            let options = trellis_manifests::install::Options::default();
            t.apply(&trellis_manifests::to_yaml(&[trellis_manifests::install::to_value(
                &trellis_manifests::install::webhooks::validating_webhook_configuration(&options),
            )]))?;
            wait_for(
                "every proxy to ACK the repaired config",
                Duration::from_secs(20),
                || {
                    let state = syncz()?;
                    Ok(state
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter(|p| p["connected"] == true)
                        .all(|p| p["acked"] == p["sent"])
                        .then_some(()))
                },
            )
        },
    )?;

    step(&t, "the operator pod deleted mid-traffic: no failed request", || {
        let load = http.background(&api, Vec::new());
        std::thread::sleep(Duration::from_millis(300));
        t.kubectl_ok(
            &[
                "delete",
                "pod",
                "-n",
                trellis_api::mesh::SYSTEM_NAMESPACE,
                "-l",
                "app=trellis-operator",
                "--wait=false",
            ],
            None,
        )?;
        steps::rollout(
            &t,
            trellis_api::mesh::SYSTEM_NAMESPACE,
            trellis_manifests::install::OPERATOR_NAME,
        )?;
        std::thread::sleep(Duration::from_secs(2));
        let log = load.finish();
        let failed = failures(log.iter().map(|(_, a)| a));
        ensure!(!log.is_empty(), "no requests were sent");
        if !failed.is_empty() {
            // What the proxies on the path did meanwhile (config pushes, reconnects).
            for (app, container) in [("trellis-ingressgateway", "trellis-proxy"), ("web", "trellis-proxy")] {
                let selector = format!("app={app}");
                let logs = t.kubectl_ok(
                    &[
                        "logs",
                        "-n",
                        demo::NAMESPACE,
                        "-l",
                        &selector,
                        "-c",
                        container,
                        "--tail=40",
                    ],
                    None,
                );
                eprintln!("--- {app} [{container}]\n{}", logs.unwrap_or_else(|e| e.to_string()));
            }
            bail!(
                "{} of {} failed while the operator restarted: {:?}",
                failed.len(),
                log.len(),
                &failed[..failed.len().min(3)]
            );
        }
        Ok(())
    })?;
    Ok(())
}
