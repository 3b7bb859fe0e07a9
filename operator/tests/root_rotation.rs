//! Root rotation in the running operator, with a real `trellis-proxy` in mesh mode (the
//! `trellis-push` client): annotating the CA Secret starts it; the new root reaches the proxy's
//! trust bundle (ACKed), issuing switches, the proxy renews at once, the old root leaves the
//! bundle, the Secret and the `trellis-ca-root` ConfigMaps end with the new root only, and
//! `/debug/ca` shows each phase, fingerprints and no keys. The subscription survives it all.
//!
//! With two replicas (each serving push and certificates, one leading): a proxy subscribed to
//! the leader renews through the other replica, and another proxy lives on the other replica,
//! which sees the leader's proxies a minute late; the old root is trusted by each replica until
//! both proxies serve a leaf of the new one (the follower enters only the phases the leader
//! records, never one its own view allows), and there is one rotation. A replica that cannot be asked holds the rotation (said in the
//! Mesh's status), and a root asked for meanwhile is queued — never written over the root being
//! rotated to — and rotated to afterwards. A root
//! put in the CA Secret while no replica leads waits for the next leader: a follower never
//! takes it for a rotation.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::time::Duration;

use support::rotation::{
    assert_held_by_a_proxy_away, assert_the_rotation_ends_through, pem_fingerprints, phases, subscribed, trust_monitor,
    trusted,
};
use support::{
    ca_condition, ca_secret_field, cluster_with_web, free_port, http_get, mesh_proxy, operator_client, operator_config,
    published_roots, secret_yaml, until, until_async, web_pods, web_proxy,
};
use trellis_operator::app;
use trellis_operator::ca::{CaStatus, SigningCert};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn annotating_the_ca_secret_rotates_the_root_without_dropping_the_proxy() {
    support::show_logs();
    let (cluster, pod) = cluster_with_web();
    let port = free_port();
    let op = app::start(operator_config(port, 3600), cluster.client().await.unwrap())
        .await
        .expect("the operator starts");
    let old_fp = pem_fingerprints(&op.root_pem)[0].clone();
    let dir = tempfile::tempdir().unwrap();
    let cfg = web_proxy(&cluster, dir.path(), port, &pod, &op.root_pem);
    let (proxy, control) = mesh_proxy(cfg).await;
    until("the proxy is configured", 20, || proxy.runtime().is_ready()).await;
    let status = || async {
        let (code, body) = http_get(op.admin_addr, "/debug/ca").await;
        assert_eq!(code, 200);
        assert!(!body.contains("PRIVATE KEY"), "{body}");
        serde_json::from_str::<CaStatus>(&body).unwrap()
    };
    let before = status().await;
    assert_eq!(before.phase, "Stable");
    assert_eq!(before.roots.len(), 1);
    assert_eq!(before.roots[0].fingerprint, old_fp);
    assert!(before.roots[0].issuing && before.roots[0].trusted);
    assert_eq!(trusted(&proxy), std::slice::from_ref(&old_fp));
    let leaf = |p: &trellis_proxy::App| p.runtime().snapshot().identity.as_ref().unwrap().cert.chain[0].to_vec();
    let first_leaf = leaf(&proxy);

    // Ask for a new self-signed root.
    support::ask_for_a_new_root(&cluster);

    // The rotation runs to the end on the proxy's ACKs and its reissued leaf.
    for _ in 0..300 {
        let s = status().await;
        if s.transitions.iter().filter(|t| t.phase == "Stable").count() == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let after = status().await;
    let phases: Vec<&str> = after.transitions.iter().map(|t| t.phase.as_str()).collect();
    assert_eq!(
        phases,
        ["Stable", "Distributing", "Reissuing", "Retiring", "Stable"],
        "{after:?}"
    );
    assert_eq!(after.roots.len(), 1);
    let new_fp = after.roots[0].fingerprint.clone();
    assert_ne!(new_fp, old_fp);

    // The proxy trusts only the new root, holds a leaf from it, and never rejected a config.
    until("the proxy's bundle holds only the new root", 5, || {
        trusted(&proxy) == [new_fp.clone()]
    })
    .await;
    assert_ne!(
        leaf(&proxy),
        first_leaf,
        "the proxy renewed its leaf during the rotation"
    );
    assert_eq!(after.leaves_by_root.get(&new_fp), Some(&1), "{after:?}");
    assert!(
        proxy.runtime().last_rejection().is_none(),
        "{:?}",
        proxy.runtime().last_rejection()
    );
    let sync = op.push.sync_state();
    let me = sync.iter().find(|p| p.proxy.ends_with(&pod)).unwrap();
    assert!(me.connected && me.sent == me.acked, "{me:?}");
    assert_eq!(me.acked_roots, std::slice::from_ref(&new_fp));

    // The Secret holds the new root and no previous one; the ConfigMaps follow.
    let data = ca_secret_field(&cluster, ".data");
    assert!(!data.contains("previous-ca"), "{data}");
    let annotations = ca_secret_field(&cluster, ".metadata.annotations");
    assert!(!annotations.contains("rotate-root"), "{annotations}");
    let stored = app::load_or_create_root(&cluster.client().await.unwrap(), "trellis-system", "cluster.local")
        .await
        .unwrap();
    assert_eq!(stored.fingerprint(), new_fp);
    until("the trellis-ca-root ConfigMap holds the new root", 10, || {
        pem_fingerprints(&published_roots(&cluster, "shop")) == [new_fp.clone()]
    })
    .await;
    control.abort();
    op.stop();
}

/// The operator's Service as proxies dial it: each new connection (a subscription, or a
/// certificate request) goes to the replica whose push port `to` holds at the time.
async fn service(to: Arc<AtomicU16>) -> u16 {
    cuttable_service(to).await.0
}

/// [`service`], and a switch that cuts every connection it relays at once (bump the number it
/// holds), as the death of the replica they reach cuts them.
async fn cuttable_service(to: Arc<AtomicU16>) -> (u16, tokio::sync::watch::Sender<u64>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (cut, cuts) = tokio::sync::watch::channel(0u64);
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let target = to.load(Ordering::SeqCst);
            let mut cuts = cuts.clone();
            cuts.borrow_and_update();
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await {
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        Ok(()) = cuts.changed() => {}
                    }
                }
            });
        }
    });
    (port, cut)
}

/// What failed a rotation under a killed leader (the lifecycle test, 32 requests of 763 failed
/// with `BadSignature`): a proxy whose subscription broke keeps serving the trust bundle and
/// the leaf it had, for as long as it takes to subscribe again. The operator does not hear from
/// it meanwhile, but its pod exists: the rotation holds — the old root issues and stays trusted
/// — however long it is away (the operator forgot it after 10 s, and knew none of the proxies
/// it saw before the rotation began), and ends once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_cut_off_from_the_operator_holds_the_rotation_until_it_is_back() {
    support::show_logs();
    let (cluster, _) = cluster_with_web();
    // web's pod meshed, as the injector meshes it (a container `trellis-proxy`), and Ready: its
    // sidecar runs configured, whether or not the operator ever saw it subscribe (it may be cut
    // off before the operator looks, as a replica started after it subscribed never saw it).
    let sidecar = serde_json::json!({"spec": {"template": {"spec": {"containers": [
        {"name": "app", "image": "busybox:1.36", "imagePullPolicy": "IfNotPresent", "command": ["sleep", "3600"]},
        {"name": "trellis-proxy", "image": "busybox:1.36", "imagePullPolicy": "IfNotPresent", "command": ["sleep", "3600"]},
    ]}}}});
    cluster
        .kubectl_ok(
            &[
                "-n",
                "shop",
                "patch",
                "deployment",
                "web",
                "--type=merge",
                "-p",
                &sidecar.to_string(),
            ],
            None,
        )
        .unwrap();
    let pod = support::rolled_out_pod(&cluster, "web").await;
    let push = free_port();
    let op = app::start(operator_config(push, 3600), operator_client(&cluster).await)
        .await
        .expect("the operator starts");
    until("the operator leads", 30, || op.leadership.is_leader()).await;
    let old_fp = pem_fingerprints(&op.root_pem)[0].clone();
    let to = Arc::new(AtomicU16::new(push));
    let (svc, cut) = cuttable_service(to.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = web_proxy(&cluster, dir.path(), svc, &pod, &op.root_pem);
    let served = cfg.served.clone();
    let (proxy, control) = mesh_proxy(cfg).await;
    until("the proxy is configured", 30, || {
        proxy.runtime().is_ready() && subscribed(&op, &pod)
    })
    .await;
    assert_eq!(trusted(&proxy), std::slice::from_ref(&old_fp));
    let (watching, monitor) = trust_monitor([("op", op.roots.clone())], [("web", served.clone())], &old_fp);

    // The proxy's connections cut, and every new one refused: it keeps its configuration and
    // its leaf, and cannot subscribe again.
    to.store(free_port(), Ordering::SeqCst);
    cut.send_modify(|n| *n += 1);
    until("the operator sees the proxy go", 30, || !subscribed(&op, &pod)).await;
    assert!(proxy.runtime().is_ready(), "the proxy keeps serving");

    // A rotation asked for meanwhile waits for it, longer than the operator once remembered an
    // absent proxy: the old root issues and stays trusted.
    support::ask_for_a_new_root(&cluster);
    until("the rotation starts", 30, || {
        op.roots.phase() != trellis_operator::ca::Phase::Stable
    })
    .await;
    tokio::time::sleep(trellis_operator::peers::STALE + Duration::from_secs(3)).await;
    assert_held_by_a_proxy_away(&op, &pod, &old_fp);
    assert_eq!(
        trusted(&proxy),
        std::slice::from_ref(&old_fp),
        "the proxy heard nothing"
    );

    // Back: it subscribes again, and the rotation runs to its end through it.
    to.store(push, Ordering::SeqCst);
    assert_the_rotation_ends_through(&op, (watching, monitor), &proxy, &served, &old_fp).await;
    control.abort();
    op.stop();
}

/// Acknowledges every configuration without applying it.
struct Acknowledges;

#[tonic::async_trait]
impl trellis_push::client::ConfigSink for Acknowledges {
    fn current_version(&self) -> Option<String> {
        None
    }

    async fn apply(&self, _config: trellis_contract::ProxyConfig) -> Result<(), trellis_push::client::Refusal> {
        Ok(())
    }
}

/// A second proxy as the operator sees one, where one in-process `trellis-proxy` already holds
/// the mesh's ports: the proxies' own client (`trellis_push::client`) obtaining its certificate
/// and renewing it when asked, reporting each as served, and acknowledging every configuration.
async fn acknowledging_proxy(cfg: trellis_push::client::ClientConfig) -> Vec<tokio::task::JoinHandle<()>> {
    use trellis_push::client;
    let (issued_tx, mut issued) = tokio::sync::watch::channel::<Option<client::Issued>>(None);
    let identity = tokio::spawn(client::run_identity(cfg.clone(), issued_tx));
    let served = cfg.served.clone();
    let report = move |issued: &Option<client::Issued>| {
        if let Some(r) = issued.as_ref().and_then(client::Issued::report) {
            served.set(r);
        }
    };
    while issued.borrow_and_update().is_none() {
        issued.changed().await.unwrap();
    }
    report(&issued.borrow());
    let push = tokio::spawn(client::run_push(cfg, Arc::new(Acknowledges)));
    let reporting = tokio::spawn(async move {
        while issued.changed().await.is_ok() {
            report(&issued.borrow_and_update());
        }
    });
    vec![identity, push, reporting]
}

/// Replica `name` of a two-replica operator, on its own push and admin ports, asking the other
/// replica (`peer`: name, admin port) for its proxies.
fn replica(name: &str, push: u16, admin: u16, peer: (&str, u16)) -> app::Config {
    app::Config {
        pod_name: Some(name.into()),
        admin_addr: format!("127.0.0.1:{admin}").parse().unwrap(),
        peers: vec![(peer.0.to_string(), format!("http://127.0.0.1:{}", peer.1))],
        ..operator_config(push, 3600)
    }
}

/// Whether replica `r` has read from `peer` that it holds `pod`'s subscription.
fn seen_on_peer(r: &app::App, peer: &str, pod: &str) -> bool {
    r.peers.read().unwrap().get(peer).is_some_and(|a| {
        a.proxies
            .as_ref()
            .is_ok_and(|p| p.iter().any(|s| s.proxy == format!("shop/{pod}")))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_replicas_the_old_root_stays_until_every_proxy_on_either_serves_the_new_one() {
    support::show_logs();
    let (cluster, _) = cluster_with_web();
    cluster
        .kubectl_ok(&["-n", "shop", "scale", "deployment/web", "--replicas=2"], None)
        .unwrap();
    cluster
        .kubectl_ok(
            &["-n", "shop", "rollout", "status", "deployment/web", "--timeout=120s"],
            None,
        )
        .unwrap();
    let pods = web_pods(&cluster);
    assert_eq!(pods.len(), 2, "{pods:?}");

    // Replica a leads; b follows, and sees a's proxies a minute late (its view of a is what a
    // answered before p subscribed): a follower's own view may lack a proxy — one that has just
    // connected elsewhere —, so it must never be what the follower advances on.
    let (push_a, push_b, admin_a, admin_b) = (free_port(), free_port(), free_port(), free_port());
    let a = app::start(
        replica("trellis-operator-a", push_a, admin_a, ("trellis-operator-b", admin_b)),
        operator_client(&cluster).await,
    )
    .await
    .expect("replica a starts");
    until("replica a leads", 30, || a.leadership.is_leader()).await;
    let (late_a, relay) = late_view(admin_a, Duration::from_secs(60)).await;
    let b = app::start(
        replica("trellis-operator-b", push_b, admin_b, ("trellis-operator-a", late_a)),
        operator_client(&cluster).await,
    )
    .await
    .expect("replica b starts");
    assert!(!b.leadership.is_leader());
    let old_fp = pem_fingerprints(&a.root_pem)[0].clone();
    assert_eq!(pem_fingerprints(&b.root_pem), std::slice::from_ref(&old_fp));

    // p subscribes to a; q to b, and from then on every new connection — every certificate
    // request — reaches b: p renews through the replica that does not lead.
    let to = Arc::new(AtomicU16::new(push_a));
    let svc = service(to.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let proxy_dir = |name: &str| {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        d
    };
    let cfg_p = web_proxy(&cluster, &proxy_dir("p"), svc, &pods[0], &a.root_pem);
    let served_p = cfg_p.served.clone();
    let (p, control_p) = mesh_proxy(cfg_p).await;
    until("p is configured by a", 30, || {
        p.runtime().is_ready() && subscribed(&a, &pods[0])
    })
    .await;
    to.store(push_b, Ordering::SeqCst);
    let cfg_q = web_proxy(&cluster, &proxy_dir("q"), svc, &pods[1], &a.root_pem);
    let served_q = cfg_q.served.clone();
    let control_q = acknowledging_proxy(cfg_q).await;
    until("q is configured by b", 30, || {
        b.push
            .sync_state()
            .iter()
            .any(|s| s.proxy.ends_with(&pods[1]) && s.acked.is_some() && s.acked == s.sent)
            && subscribed(&b, &pods[1])
    })
    .await;
    until("a has read b's proxy, and b an answer of a without p", 30, || {
        seen_on_peer(&a, "trellis-operator-b", &pods[1])
            && b.peers.read().unwrap().contains_key("trellis-operator-a")
            && !seen_on_peer(&b, "trellis-operator-a", &pods[0])
    })
    .await;
    let issued = |r: &app::App| r.push.metrics().certificates_issued.get();
    assert_eq!((issued(&a), issued(&b)), (1, 1), "p signed by a, q by b");

    // Throughout: no replica stops trusting the old root while a proxy serves a leaf of it.
    let (watching, monitor) = trust_monitor(
        [("a", a.roots.clone()), ("b", b.roots.clone())],
        [("p", served_p.clone()), ("q", served_q.clone())],
        &old_fp,
    );

    support::ask_for_a_new_root(&cluster);
    let finished = |r: &app::App| phases(r).iter().filter(|p| *p == "Stable").count() >= 2;
    until_async("both replicas finish the rotation", 120, || async {
        finished(&a) && finished(&b)
    })
    .await;
    watching.store(false, Ordering::SeqCst);
    let violations = monitor.await.unwrap();
    assert!(violations.is_empty(), "{violations:#?}");

    // One rotation, on both, in order; both proxies serve a leaf of the new root, and p got its
    // renewal from b (a signed only p's first leaf).
    let new_fp = a.roots.status().roots[0].fingerprint.clone();
    assert_ne!(new_fp, old_fp);
    for r in [&a, &b] {
        assert_eq!(
            phases(r),
            ["Stable", "Distributing", "Reissuing", "Retiring", "Stable"],
            "{:?}",
            r.roots.status()
        );
        let status = r.roots.status();
        assert_eq!(status.roots.len(), 1);
        assert_eq!(status.roots[0].fingerprint, new_fp);
    }
    for (proxy, served) in [("p", &served_p), ("q", &served_q)] {
        assert_eq!(
            served.get().map(|c| c.root_fingerprint),
            Some(new_fp.clone()),
            "proxy {proxy} serves a leaf of the new root"
        );
    }
    assert_eq!(issued(&a), 1, "p's renewal went through b");
    assert!(issued(&b) >= 3, "q's first leaf and both renewals: {}", issued(&b));
    assert_eq!(
        a.roots.status().leaves_by_root,
        [(new_fp.clone(), 2)].into(),
        "the leader saw both proxies serve the new root"
    );

    // No second rotation: a while later, both are still stable on the one new root, which the
    // Secret holds with nothing previous, queued or in progress.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for r in [&a, &b] {
        assert_eq!(phases(r).len(), 5, "{:?}", r.roots.status());
    }
    let data = ca_secret_field(&cluster, ".data");
    assert!(!data.contains("previous-ca") && !data.contains("queued-ca"), "{data}");
    let stored = app::load_or_create_root(&cluster.client().await.unwrap(), "trellis-system", "cluster.local")
        .await
        .unwrap();
    assert_eq!(stored.fingerprint(), new_fp);
    control_p.abort();
    for task in control_q {
        task.abort();
    }
    for task in relay {
        task.abort();
    }
    b.stop();
    a.stop();
}

/// An HTTP server on `listener` answering every request with `200` and the JSON `answer()`
/// gives.
fn answering(
    listener: tokio::net::TcpListener,
    answer: impl Fn() -> String + Send + Sync + 'static,
) -> tokio::task::JoinHandle<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let answer = Arc::new(answer);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let body = answer();
            tokio::spawn(async move {
                let mut request = [0u8; 4096];
                let _ = s.read(&mut request).await;
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(format!("{head}{body}").as_bytes()).await;
            });
        }
    })
}

/// An operator replica's admin API that answers, on `port`, that it holds no proxies.
async fn replica_without_proxies(port: u16) -> tokio::task::JoinHandle<()> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    answering(listener, || "[]".to_string())
}

/// The own proxies of the replica whose admin API is on `admin`, as another replica sees them
/// `delay` late: a relay that asks the replica every 100 ms and answers with the newest of its
/// answers at least `delay` old (its first until then). Its port, and the tasks to abort.
async fn late_view(admin: u16, delay: Duration) -> (u16, [tokio::task::JoinHandle<()>; 2]) {
    let answers = Arc::new(std::sync::Mutex::new(std::collections::VecDeque::new()));
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], admin));
    let (code, first) = http_get(addr, "/debug/syncz?scope=local").await;
    assert_eq!(code, 200, "{first}");
    answers.lock().unwrap().push_back((std::time::Instant::now(), first));
    let asking = tokio::spawn({
        let answers = answers.clone();
        async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let (code, body) = http_get(addr, "/debug/syncz?scope=local").await;
                let mut answers = answers.lock().unwrap();
                if code == 200 {
                    answers.push_back((std::time::Instant::now(), body));
                }
                while answers.get(1).is_some_and(|(at, _)| at.elapsed() >= delay) {
                    answers.pop_front();
                }
            }
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let serving = answering(listener, move || {
        answers
            .lock()
            .unwrap()
            .front()
            .map(|(_, body)| body.clone())
            .unwrap_or_default()
    });
    (port, [asking, serving])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_cannot_be_asked_holds_the_rotation_and_a_root_asked_for_meanwhile_is_queued() {
    support::show_logs();
    let (cluster, _) = cluster_with_web();
    let in_ca_crt = roots_in_ca_crt(&cluster).await;
    let year = Duration::from_secs(365 * 86400);
    let first = SigningCert::self_signed_root("cluster.local", year, std::time::SystemTime::now()).unwrap();
    support::plug_corp_root(&cluster, &first);
    // The other replica listens nowhere yet: its proxies are unknown.
    let other = free_port();
    let config = app::Config {
        peers: vec![("trellis-operator-b".into(), format!("http://127.0.0.1:{other}"))],
        ..operator_config(free_port(), 3600)
    };
    let op = app::start(config, operator_client(&cluster).await)
        .await
        .expect("the operator starts");
    let issuing = |op: &app::App| {
        op.roots
            .status()
            .roots
            .into_iter()
            .find(|r| r.issuing)
            .map(|r| r.fingerprint)
    };
    let own = issuing(&op).expect("an issuing root");

    // The plugged root is rotated to, but no phase advances while b cannot be asked: the old
    // root keeps issuing, and the Mesh says why.
    until_async("the Mesh says the rotation waits on replica b", 60, || async {
        let (_, message) = ca_condition(&cluster);
        message.contains("root rotation Distributing") && message.contains("trellis-operator-b (")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(op.roots.status().phase, "Distributing");
    assert_eq!(issuing(&op), Some(own.clone()), "the old root still issues");

    // The plugged root replaced meanwhile: queued, not dropped, and said on the Mesh.
    let second = SigningCert::self_signed_root("cluster.local", year, std::time::SystemTime::now()).unwrap();
    cluster
        .kubectl_ok(
            &["apply", "-f", "-"],
            Some(&secret_yaml("security", "corp-ca", &second)),
        )
        .unwrap();
    let queued_short: String = second.fingerprint().chars().take(16).collect();
    until_async("the Mesh says the replaced root is queued", 60, || async {
        ca_condition(&cluster)
            .1
            .contains(&format!("root {queued_short} is queued"))
    })
    .await;
    assert_eq!(op.roots.status().queued_root.as_deref(), Some(second.fingerprint()));
    let stored = app::load_or_create_root(&cluster.client().await.unwrap(), "trellis-system", "cluster.local")
        .await
        .unwrap();
    assert_eq!(
        stored.fingerprint(),
        first.fingerprint(),
        "the root being rotated to stays in ca.crt"
    );

    // b answers (no proxies): the rotation ends, then the queued one runs.
    let b = replica_without_proxies(other).await;
    until_async("the queued root issues", 60, || async {
        issuing(&op).as_deref() == Some(second.fingerprint()) && op.roots.status().phase == "Stable"
    })
    .await;
    let status = op.roots.status();
    let phases: Vec<&str> = status.transitions.iter().map(|t| t.phase.as_str()).collect();
    assert_eq!(
        phases,
        [
            "Stable",
            "Distributing",
            "Reissuing",
            "Retiring",
            "Stable",
            "Distributing",
            "Reissuing",
            "Retiring",
            "Stable"
        ],
        "the first rotation, then the queued one: {status:?}"
    );
    assert_eq!(status.queued_root, None);
    let data = ca_secret_field(&cluster, ".data");
    assert!(!data.contains("queued-ca") && !data.contains("previous-ca"), "{data}");
    // The replaced root went to the queue, never over the root being rotated to: ca.crt held
    // the operator's own root, the first plugged one, then (its rotation over) the second.
    assert_eq!(
        in_ca_crt.0.in_order(),
        [own, first.fingerprint().to_string(), second.fingerprint().to_string()]
    );
    in_ca_crt.1.abort();
    b.abort();
    op.stop();
}

/// Every root `ca.crt` of the CA Secret holds from now on, from a watch on it: one entry per
/// change, in the order of the Secret's versions (`resourceVersion`, as the watch may deliver
/// two close writes out of order).
async fn roots_in_ca_crt(cluster: &support::Target) -> (RootsSeen, tokio::task::JoinHandle<()>) {
    use futures::StreamExt as _;
    use k8s_openapi::api::core::v1::Secret;
    use kube::runtime::watcher;
    let secrets: kube::Api<Secret> = kube::Api::namespaced(cluster.client().await.unwrap(), "trellis-system");
    let config = watcher::Config::default().fields("metadata.name=trellis-ca");
    let seen = RootsSeen::default();
    let watching = tokio::spawn({
        let seen = seen.clone();
        async move {
            let mut events = std::pin::pin!(watcher::watcher(secrets, config));
            while let Some(event) = events.next().await {
                let (Ok(watcher::Event::Apply(s)) | Ok(watcher::Event::InitApply(s))) = event else {
                    continue;
                };
                let version = s
                    .metadata
                    .resource_version
                    .as_deref()
                    .and_then(|v| v.parse::<u64>().ok());
                let pem = s.data.as_ref().and_then(|d| d.get("ca.crt"));
                if let (Some(version), Some(pem)) = (version, pem) {
                    let root = pem_fingerprints(&String::from_utf8_lossy(&pem.0))[0].clone();
                    seen.0.lock().unwrap().insert(version, root);
                }
            }
        }
    });
    (seen, watching)
}

/// The roots `ca.crt` held, by the Secret's version.
#[derive(Clone, Default)]
struct RootsSeen(Arc<std::sync::Mutex<std::collections::BTreeMap<u64, String>>>);

impl RootsSeen {
    /// The roots in order, each once per stretch of versions that held it.
    fn in_order(&self) -> Vec<String> {
        let mut roots: Vec<String> = self.0.lock().unwrap().values().cloned().collect();
        roots.dedup();
        roots
    }
}

/// A Lease `trellis-operator` held by a replica that is gone, renewed every second until the
/// flag returned is cleared; it then expires by itself ([`trellis_operator::leader::LEASE_SECONDS`]).
async fn lease_of_a_gone_replica(cluster: &support::Target) -> Arc<AtomicBool> {
    use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
    use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
    use trellis_operator::leader::{LEASE_NAME, LEASE_SECONDS};
    let leases: kube::Api<Lease> = kube::Api::namespaced(cluster.client().await.unwrap(), "trellis-system");
    let lease = Lease {
        metadata: ObjectMeta {
            name: Some(LEASE_NAME.into()),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some("trellis-operator-gone".into()),
            lease_duration_seconds: Some(i32::try_from(LEASE_SECONDS).unwrap()),
            renew_time: Some(MicroTime(k8s_openapi::jiff::Timestamp::now())),
            ..LeaseSpec::default()
        }),
    };
    leases.create(&PostParams::default(), &lease).await.unwrap();
    let renewing = Arc::new(AtomicBool::new(true));
    tokio::spawn({
        let renewing = renewing.clone();
        async move {
            while renewing.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
                let patch = serde_json::json!({"spec": {"renewTime": now}});
                let _ = leases
                    .patch(LEASE_NAME, &PatchParams::default(), &Patch::Merge(&patch))
                    .await;
            }
        }
    });
    renewing
}

/// What `meshctl check`'s test met on upstream Kubernetes: the leader copied a plugged root into
/// the CA Secret and was scaled away before it recorded the rotation; the replica left, a
/// follower, read the copy as a rotation that had ended and retired the old root under the
/// gateway, which served a leaf of it. A `ca.*` put in the Secret while no replica leads is the
/// next leader's to answer: until then the follower keeps trusting and issuing from the old root;
/// once it leads, it rotates, waiting for its proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_put_in_the_ca_secret_while_no_replica_leads_waits_for_the_next_leader() {
    support::show_logs();
    use base64::Engine as _;
    let (cluster, pod) = cluster_with_web();
    let renewing = lease_of_a_gone_replica(&cluster).await;
    let port = free_port();
    let op = app::start(operator_config(port, 3600), operator_client(&cluster).await)
        .await
        .expect("the operator starts");
    let old_fp = pem_fingerprints(&op.root_pem)[0].clone();
    let dir = tempfile::tempdir().unwrap();
    let cfg = web_proxy(&cluster, dir.path(), port, &pod, &op.root_pem);
    let served = cfg.served.clone();
    let (proxy, control) = mesh_proxy(cfg).await;
    until("the proxy is configured", 20, || {
        proxy.runtime().is_ready() && subscribed(&op, &pod)
    })
    .await;
    let (watching, monitor) = trust_monitor([("op", op.roots.clone())], [("web", served.clone())], &old_fp);

    // ca.* replaced while no replica leads, as the leader's copy of a plugged root writes it.
    let new = SigningCert::self_signed_root(
        "cluster.local",
        Duration::from_secs(365 * 86400),
        std::time::SystemTime::now(),
    )
    .unwrap();
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let patch = serde_json::json!({"data": {"ca.crt": b64(new.cert_pem()), "ca.key": b64(&new.key_pem())}});
    cluster
        .kubectl_ok(
            &[
                "-n",
                "trellis-system",
                "patch",
                "secret",
                "trellis-ca",
                "--type=merge",
                "-p",
                &patch.to_string(),
            ],
            None,
        )
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!op.leadership.is_leader(), "the gone replica's lease still holds");
    assert_eq!(phases(&op), ["Stable"], "left to the leader: {:?}", op.roots.status());
    assert_eq!(op.roots.bundle().borrow().fingerprints, std::slice::from_ref(&old_fp));

    // The gone replica's lease expires: this replica leads, answers the request and rotates.
    renewing.store(false, Ordering::SeqCst);
    until("the replica leads", 30, || op.leadership.is_leader()).await;
    until("the rotation to the root put in the Secret ends", 60, || {
        phases(&op).iter().filter(|p| *p == "Stable").count() >= 2
    })
    .await;
    watching.store(false, Ordering::SeqCst);
    let violations = monitor.await.unwrap();
    assert!(violations.is_empty(), "{violations:#?}");
    let status = op.roots.status();
    assert_eq!(
        phases(&op),
        ["Stable", "Distributing", "Reissuing", "Retiring", "Stable"],
        "{status:?}"
    );
    assert_eq!(status.roots.len(), 1);
    assert_eq!(status.roots[0].fingerprint, new.fingerprint());
    assert_eq!(
        served.get().map(|c| c.root_fingerprint).as_deref(),
        Some(new.fingerprint())
    );
    assert!(
        ca_secret_field(&cluster, ".metadata.annotations").contains(new.fingerprint()),
        "the Secret records the new root"
    );
    control.abort();
    op.stop();
}
