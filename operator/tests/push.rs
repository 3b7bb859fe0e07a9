//! The push service over real gRPC on loopback: subscribe, receive, ACK and NACK; a change
//! reaches the proxies it affects and only those; a reconnect that is current gets nothing.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use support::until;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::Streaming;
use trellis_operator::push::{Options, PushService};
use trellis_operator::snapshot::Snapshot as MeshSnapshot;
use trellis_push::v1::config_push_client::ConfigPushClient;
use trellis_push::v1::config_push_server::ConfigPushServer;
use trellis_push::{Hello, ProxyMessage, Snapshot};

fn shop() -> String {
    std::fs::read_to_string(format!("{}/tests/fixtures/shop.yaml", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

struct Server {
    addr: SocketAddr,
    service: PushService,
    mesh: Arc<RwLock<MeshSnapshot>>,
    changed: watch::Sender<u64>,
}

async fn server() -> Server {
    server_with(Options {
        debounce: Duration::from_millis(20),
        ..Options::default()
    })
    .await
}

async fn server_with(options: Options) -> Server {
    let mesh = Arc::new(RwLock::new(MeshSnapshot::from_yaml(&shop()).unwrap()));
    let (changed, rx) = watch::channel(0);
    let service = PushService::new(mesh.clone(), rx, options);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let svc = ConfigPushServer::new(service.clone());
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    Server {
        addr,
        service,
        mesh,
        changed,
    }
}

struct Proxy {
    to_server: mpsc::Sender<ProxyMessage>,
    from_server: Streaming<Snapshot>,
    chunks: trellis_push::Reassembly,
    /// Messages received, and the largest payload of one.
    messages: usize,
    largest: usize,
}

async fn subscribe(addr: SocketAddr, ns: &str, pod: &str, role: &str, current: &str) -> Proxy {
    subscribe_with(addr, ns, pod, role, current, false).await
}

async fn subscribe_with(addr: SocketAddr, ns: &str, pod: &str, role: &str, current: &str, deltas: bool) -> Proxy {
    let mut client = ConfigPushClient::connect(format!("http://{addr}")).await.unwrap();
    let (to_server, rx) = mpsc::channel(8);
    to_server
        .send(ProxyMessage::hello(Hello {
            namespace: ns.into(),
            pod: pod.into(),
            role: role.into(),
            proxy_version: "test".into(),
            current_version: current.into(),
            accepts_delta: deltas,
            accepts_chunks: deltas,
            certificate_json: Vec::new(),
        }))
        .await
        .unwrap();
    let from_server = client.subscribe(ReceiverStream::new(rx)).await.unwrap().into_inner();
    Proxy {
        to_server,
        from_server,
        chunks: Default::default(),
        messages: 0,
        largest: 0,
    }
}

impl Proxy {
    /// The next snapshot (put together from its chunks).
    async fn next(&mut self) -> Option<Snapshot> {
        loop {
            let message = match tokio::time::timeout(Duration::from_secs(5), self.from_server.message()).await {
                Ok(r) => r.unwrap()?,
                Err(_) => return None,
            };
            self.messages += 1;
            self.largest = self.largest.max(message.config_json.len() + message.delta_json.len());
            if let Some(whole) = self.chunks.push(message).unwrap() {
                return Some(whole);
            }
        }
    }

    /// Nothing arrives within `d`.
    async fn quiet_for(&mut self, d: Duration) -> bool {
        tokio::time::timeout(d, self.from_server.message()).await.is_err()
    }
}

#[tokio::test]
async fn subscribe_ack_and_push_on_change_only_to_affected_proxies() {
    let s = server().await;
    let mut web = subscribe(s.addr, "shop", "web-5d8f-abcde", "sidecar", "").await;
    let mut gw = subscribe(s.addr, "trellis-system", "ingress-1", "gateway", "").await;

    let first = web.next().await.expect("a first snapshot");
    let config = first.config().unwrap();
    config.validate().expect("the proxy accepts it");
    assert_eq!(config.version, first.version);
    web.to_server.send(ProxyMessage::ack(&first.version)).await.unwrap();
    let gw_first = gw.next().await.expect("the gateway's snapshot");
    gw.to_server.send(ProxyMessage::ack(&gw_first.version)).await.unwrap();
    until("web acked", 2, || {
        s.service
            .sync_state()
            .iter()
            .any(|p| p.proxy == "shop/web-5d8f-abcde" && p.acked.as_deref() == Some(first.version.as_str()))
    })
    .await;

    // Change the ingress VirtualService: only the gateway is affected.
    {
        let mut m = s.mesh.write().unwrap();
        let vs = m
            .virtual_services
            .iter_mut()
            .find(|v| v.metadata.name.as_deref() == Some("shop-ingress"))
            .unwrap();
        vs.spec.http.as_mut().unwrap()[0].timeout = Some("20s".into());
    }
    s.changed.send_replace(1);
    let gw_second = gw.next().await.expect("the gateway gets the change");
    assert_ne!(gw_second.version, gw_first.version);
    assert!(
        web.quiet_for(Duration::from_millis(400)).await,
        "web is not affected and gets nothing"
    );

    // Change payment's split: every sidecar sees payment.
    payment_timeout(&s, "4s", 2);
    let second = web.next().await.expect("web gets the change");
    assert_ne!(second.version, first.version);
    assert!(second.config().unwrap().to_json().contains("\"timeoutMs\": 4000"));

    // A NACK is recorded with its error.
    web.to_server
        .send(ProxyMessage::nack(&second.version, "route 3: bad regex"))
        .await
        .unwrap();
    until("web nacked", 2, || {
        s.service.sync_state().iter().any(|p| {
            p.proxy == "shop/web-5d8f-abcde" && p.nacked.as_ref().is_some_and(|n| n.error == "route 3: bad regex")
        })
    })
    .await;

    // The certificate the proxy reports serving is kept with its state.
    let served = trellis_contract::certificate::ServedCertificate {
        root_fingerprint: "0f".repeat(32),
        serial: "01:02:03".into(),
        not_before_unix: 1_800_000_000,
        not_after_unix: 1_800_086_400,
        spiffe_id: "spiffe://cluster.local/ns/shop/sa/web".into(),
    };
    web.to_server.send(ProxyMessage::certificate(&served)).await.unwrap();
    until("web's certificate recorded", 2, || {
        s.service
            .sync_state()
            .iter()
            .any(|p| p.proxy == "shop/web-5d8f-abcde" && p.certificate.as_ref() == Some(&served))
    })
    .await;

    // Disconnect: the state goes with the subscription (the pod may be gone for good).
    drop(web);
    until("web's state dropped", 2, || {
        !s.service.sync_state().iter().any(|p| p.proxy == "shop/web-5d8f-abcde")
    })
    .await;

    // A reconnect announcing the current version is not sent it again.
    let mut again = subscribe(s.addr, "shop", "web-5d8f-abcde", "sidecar", &second.version).await;
    assert!(again.quiet_for(Duration::from_millis(400)).await);
    // A reconnect with an old version gets the current one.
    let mut stale = subscribe(s.addr, "shop", "web-5d8f-abcde", "sidecar", &first.version).await;
    assert_eq!(stale.next().await.unwrap().version, second.version);
}

#[tokio::test]
async fn versions_are_content_hashes() {
    let mesh = MeshSnapshot::from_yaml(&shop()).unwrap();
    let pod = trellis_operator::registry::ObjectKey::new("shop", "web-5d8f-abcde");
    let a = trellis_operator::compile::compile(&mesh, &pod, trellis_operator::compile::Role::Sidecar, "x").unwrap();
    let b = trellis_operator::compile::compile(&mesh, &pod, trellis_operator::compile::Role::Sidecar, "y").unwrap();
    // The version the push gives each config (sidecar: own part and shared part).
    let version = |c: trellis_contract::ProxyConfig| {
        let shared = trellis_operator::push::SharedOutbound::compile(&mesh, &pod).unwrap();
        let own = trellis_operator::push::OwnPart::new(c);
        trellis_operator::push::Rendered::new(Arc::new(own), Some(Arc::new(shared)), "").version
    };
    let va = version(a.config);
    assert_eq!(va, version(b.config), "the version field itself does not count");
    assert_eq!(va.len(), 16);
}

#[tokio::test]
async fn a_subscription_must_start_with_hello() {
    let s = server().await;
    let mut client = ConfigPushClient::connect(format!("http://{}", s.addr)).await.unwrap();
    let (tx, rx) = mpsc::channel(1);
    tx.send(ProxyMessage::ack("v1")).await.unwrap();
    let err = client.subscribe(ReceiverStream::new(rx)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("Hello"), "{}", err.message());
}

/// What the push sends a sidecar (its own part with the shared outbound spliced in, both
/// serialized separately) is exactly the configuration the compiler gives it.
#[test]
fn spliced_configs_equal_the_compiled_ones() {
    use trellis_contract::ProxyConfig;
    use trellis_operator::compile::{Role, compile, compile_workload};
    use trellis_operator::push::{OwnPart, Rendered, SharedOutbound};

    let mesh = MeshSnapshot::from_yaml(&shop()).unwrap();
    let pod = trellis_operator::registry::ObjectKey::new("shop", "web-5d8f-abcde");
    let own = Arc::new(OwnPart::new(
        compile_workload(&mesh, &pod, Role::Sidecar, "").unwrap().config,
    ));
    let shared = Arc::new(SharedOutbound::compile(&mesh, &pod).unwrap());
    let rendered = Rendered::new(own.clone(), Some(shared.clone()), "");
    let version = rendered.version.clone();
    let pushed: ProxyConfig = serde_json::from_slice(&rendered.full()).unwrap();
    let whole = compile(&mesh, &pod, Role::Sidecar, &version).unwrap().config;
    assert_eq!(pushed.version, version);
    assert!(whole.clusters.len() > 3 && !whole.dns.entries.is_empty());
    assert_eq!(pushed, whole);
    pushed.validate().expect("the proxy accepts it");

    // The version follows the content: the same again, another with a renewal request.
    assert_eq!(Rendered::new(own.clone(), Some(shared.clone()), "").version, version);
    assert_ne!(Rendered::new(own, Some(shared), "abc").version, version);
    // A gateway has no shared part: its JSON is its whole configuration.
    let gw = trellis_operator::registry::ObjectKey::new("trellis-system", "ingress-1");
    let own = Arc::new(OwnPart::new(
        compile_workload(&mesh, &gw, Role::Gateway, "").unwrap().config,
    ));
    let rendered = Rendered::new(own, None, "");
    let pushed: ProxyConfig = serde_json::from_slice(&rendered.full()).unwrap();
    assert_eq!(
        pushed,
        compile(&mesh, &gw, Role::Gateway, &rendered.version).unwrap().config
    );
}

/// Set the timeout of payment's split rule.
fn payment_timeout(s: &Server, timeout: &str, generation: u64) {
    {
        let mut m = s.mesh.write().unwrap();
        let vs = m
            .virtual_services
            .iter_mut()
            .find(|v| v.metadata.name.as_deref() == Some("payment"))
            .unwrap();
        vs.spec.http.as_mut().unwrap()[1].timeout = Some(timeout.into());
    }
    s.changed.send_replace(generation);
}

#[tokio::test]
async fn proxies_that_accept_deltas_get_deltas_against_what_they_acked() {
    use trellis_contract::ConfigDelta;
    use trellis_operator::compile::{Role, compile};

    let s = server_with(Options {
        debounce: Duration::from_millis(20),
        chunk_bytes: 1024,
        ..Options::default()
    })
    .await;
    let pod = trellis_operator::registry::ObjectKey::new("shop", "web-5d8f-abcde");
    let mut web = subscribe_with(s.addr, "shop", "web-5d8f-abcde", "sidecar", "", true).await;
    let first = web.next().await.expect("a first, whole snapshot");
    assert!(first.base_version.is_empty() && first.delta_json.is_empty());
    // It came in chunks of at most 1 KiB.
    assert_eq!(web.messages, first.config_json.len().div_ceil(1024));
    assert!(web.messages > 3 && web.largest == 1024);
    let held = first.config().unwrap();

    // Not answered yet: one version in flight, so a change waits for the answer.
    payment_timeout(&s, "4s", 1);
    assert!(
        web.quiet_for(Duration::from_millis(400)).await,
        "nothing before the ACK"
    );
    web.to_server.send(ProxyMessage::ack(&first.version)).await.unwrap();
    let second = web.next().await.expect("the change, as a delta");
    assert_eq!(second.base_version, first.version);
    assert!(second.config_json.is_empty());
    let delta: ConfigDelta = serde_json::from_slice(&second.delta_json).unwrap();
    let applied = delta.apply(&held).unwrap();
    let mesh = s.mesh.read().unwrap().clone();
    let expected = compile(&mesh, &pod, Role::Sidecar, &second.version).unwrap().config;
    assert_eq!(applied, expected);
    assert!(
        second.delta_json.len() * 5 < first.config_json.len(),
        "a one-rule change is a small delta ({} vs {} bytes)",
        second.delta_json.len(),
        first.config_json.len()
    );

    // NACKed: the proxy keeps the first; the next change goes whole (the delta may have been
    // the problem), then deltas again against it.
    web.to_server
        .send(ProxyMessage::nack(&second.version, "rejected for the test"))
        .await
        .unwrap();
    payment_timeout(&s, "5s", 2);
    let third = web.next().await.expect("the next change");
    assert!(third.base_version.is_empty(), "whole after a NACK");
    let held = third.config().unwrap();
    assert!(held.to_json().contains("\"timeoutMs\": 5000"));
    web.to_server.send(ProxyMessage::ack(&third.version)).await.unwrap();
    payment_timeout(&s, "6s", 3);
    let fourth = web.next().await.expect("the next change");
    assert_eq!(
        fourth.base_version, third.version,
        "a delta against the ACKed whole config"
    );
    let applied = serde_json::from_slice::<ConfigDelta>(&fourth.delta_json)
        .unwrap()
        .apply(&held)
        .unwrap();
    assert!(applied.to_json().contains("\"timeoutMs\": 6000"));
    let metrics = s.service.metrics();
    assert_eq!((metrics.pushes.get(), metrics.delta_pushes.get()), (4, 2));
}

/// A proxy that NACKs a version and ACKs it later — it applied it again once what refused it
/// had passed (a listener's port in use) — is in sync: its NACK is cleared (no finding reads
/// it as rejecting its config), and the next change goes as a delta against that version.
#[tokio::test]
async fn a_version_acked_after_its_nack_is_in_sync_and_the_base_of_the_next_delta() {
    use trellis_contract::ConfigDelta;

    let s = server().await;
    let mut web = subscribe_with(s.addr, "shop", "web-5d8f-abcde", "sidecar", "", true).await;
    let web_state = || {
        s.service
            .sync_state()
            .into_iter()
            .find(|p| p.proxy == "shop/web-5d8f-abcde")
            .expect("web is subscribed")
    };
    let first = web.next().await.expect("a first snapshot");
    web.to_server.send(ProxyMessage::ack(&first.version)).await.unwrap();
    payment_timeout(&s, "4s", 1);
    let second = web.next().await.expect("the change");
    let held = first.config().unwrap();
    let held = match second.base_version.is_empty() {
        true => second.config().unwrap(),
        false => serde_json::from_slice::<ConfigDelta>(&second.delta_json)
            .unwrap()
            .apply(&held)
            .unwrap(),
    };
    web.to_server
        .send(ProxyMessage::nack(
            &second.version,
            "cannot bind listener inbound on 0.0.0.0:15006: Address already in use",
        ))
        .await
        .unwrap();
    until("the NACK recorded", 2, || {
        web_state().nacked.is_some_and(|n| n.version == second.version)
    })
    .await;
    let findings = trellis_core::analysis::proxies(&s.service.sync_state(), None);
    assert_eq!(findings.len(), 1, "{findings:?}");
    assert_eq!(findings[0].code.to_string(), "TRL0107");

    // The proxy's retry applied it: the ACK of the same version.
    web.to_server.send(ProxyMessage::ack(&second.version)).await.unwrap();
    until("in sync", 2, || {
        let p = web_state();
        p.acked.as_deref() == Some(second.version.as_str()) && p.nacked.is_none()
    })
    .await;
    let findings = trellis_core::analysis::proxies(&s.service.sync_state(), None);
    assert!(findings.is_empty(), "{findings:?}");
    assert!(
        web.quiet_for(Duration::from_millis(300)).await,
        "the version it applied is not sent again"
    );

    payment_timeout(&s, "5s", 2);
    let third = web.next().await.expect("the next change");
    assert_eq!(
        third.base_version, second.version,
        "a delta against the version applied on the retry"
    );
    let applied = serde_json::from_slice::<ConfigDelta>(&third.delta_json)
        .unwrap()
        .apply(&held)
        .unwrap();
    assert!(applied.to_json().contains("\"timeoutMs\": 5000"));
}

/// Another replica over `s`'s snapshot, counting its proxies' golden signals: its address and
/// traffic view.
async fn replica_with_traffic(s: &Server) -> (SocketAddr, Arc<trellis_operator::traffic::Traffic>) {
    let traffic = Arc::new(trellis_operator::traffic::Traffic::default());
    let service =
        PushService::new(s.mesh.clone(), s.changed.subscribe(), Options::default()).with_traffic(traffic.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ConfigPushServer::new(service))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    (addr, traffic)
}

#[tokio::test]
async fn golden_signals_count_for_the_subscribed_pods_workload() {
    use trellis_contract::signals::{Counts, EdgeSignals, Report, Reporter};
    use trellis_core::traffic::WorkloadRef;

    let s = server().await;
    let (addr, traffic) = replica_with_traffic(&s).await;
    let counts =
        |requests: u64, failures: u64, mtls: u64| Counts::in_buckets(requests, failures, mtls, &[(3, requests)]);
    let report = |reporter, peer: (&str, &str), service: &str, c: Counts| Report {
        edges: vec![EdgeSignals {
            reporter,
            peer_namespace: peer.0.into(),
            peer_workload: peer.1.into(),
            service: service.into(),
            counts: c,
        }],
    };
    let web = subscribe(addr, "shop", "web-5d8f-abcde", "sidecar", "").await;
    let gw = subscribe(addr, "trellis-system", "ingress-1", "gateway", "").await;
    let served = report(
        Reporter::Destination,
        ("trellis-system", "ingress-1"),
        "web.shop.svc.cluster.local",
        counts(7, 2, 7),
    );
    web.to_server.send(ProxyMessage::signals(&served)).await.unwrap();
    // web's client side is not the view's: not counted.
    let outbound = report(
        Reporter::Source,
        ("shop", "db"),
        "db.shop.svc.cluster.local",
        counts(4, 0, 0),
    );
    web.to_server.send(ProxyMessage::signals(&outbound)).await.unwrap();
    let took = report(
        Reporter::Source,
        ("shop", "web"),
        "web.shop.svc.cluster.local",
        counts(7, 2, 0),
    );
    gw.to_server.send(ProxyMessage::signals(&took)).await.unwrap();
    until("both reports counted", 5, || traffic.view(60).edges.len() == 2).await;
    let view = traffic.view(60);
    let web_edge = view
        .edges
        .iter()
        .find(|e| e.destination == WorkloadRef::new("shop", "web"))
        .expect("web's edge, named by the registry's workload");
    assert_eq!(web_edge.source, WorkloadRef::new("trellis-system", "ingress-1"));
    assert_eq!(web_edge.counts, counts(7, 2, 7));
    let gw_edge = view
        .edges
        .iter()
        .find(|e| e.destination == WorkloadRef::new("trellis-system", "ingress-1"))
        .expect("the gateway's edge");
    assert_eq!(
        (gw_edge.source.clone(), gw_edge.counts.requests),
        (WorkloadRef::default(), 7)
    );
}

#[tokio::test]
async fn a_stopping_replica_hands_its_proxies_over_and_the_next_counts_their_reports_when_first_sent() {
    use trellis_contract::signals::{Counts, EdgeSignals, Report};

    let a = server().await;
    let mut web = subscribe(a.addr, "shop", "web-5d8f-abcde", "sidecar", "").await;
    assert!(web.next().await.is_some(), "the first config");
    a.service.shutdown();
    let end = loop {
        match tokio::time::timeout(Duration::from_secs(5), web.from_server.message())
            .await
            .expect("the subscription ends in time")
        {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the subscription ended without a handover"),
            Err(status) => break status,
        }
    };
    assert!(trellis_push::is_handover(&end), "{end:?}");

    // The proxy subscribes to the other replica and sends its reports again: one first sent
    // now, one 120 s ago (out of the last minute, in the last five).
    let (b, traffic) = replica_with_traffic(&a).await;
    let web = subscribe(b, "shop", "web-5d8f-abcde", "sidecar", "").await;
    let served = |requests: u64| Report {
        edges: vec![EdgeSignals {
            peer_namespace: "trellis-system".into(),
            peer_workload: "ingress-1".into(),
            service: "web.shop.svc.cluster.local".into(),
            counts: Counts::in_buckets(requests, 0, requests, &[(2, requests)]),
            ..EdgeSignals::default()
        }],
    };
    for (requests, age) in [(5, 120), (7, 0)] {
        web.to_server
            .send(ProxyMessage::signals_aged(&served(requests), age))
            .await
            .unwrap();
    }
    let requests = |window: u64| {
        traffic
            .view(window)
            .edges
            .iter()
            .map(|e| e.counts.requests)
            .sum::<u64>()
    };
    until("both reports counted", 5, || requests(300) == 12).await;
    assert_eq!(requests(60), 7, "the report first sent 120 s ago counts then, not now");
}
