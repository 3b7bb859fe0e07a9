//! The admission webhooks as the API server meets them.
//!
//! - In process, over HTTPS (HTTP/1.1 and HTTP/2): real AdmissionReview bodies answered,
//!   malformed, oversized and misdirected ones refused clearly, the certificate reissued
//!   without dropping an open connection.
//! - Against kubesim with `kubectl`: the operator creates the webhook configurations missing
//!   at start and keeps their `caBundle` current (repairing it after a re-apply), an invalid VirtualService is denied with the
//!   validator's message, a doubtful one is accepted with a warning kubectl prints, dry runs
//!   get the same answers, a plain Deployment in a labelled namespace gets meshed pods, a
//!   hostNetwork pod is admitted with a warning and an event, and a pod running as the
//!   proxy's UID is denied with the fix.

mod support;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use serde_json::{Value, json};
use support::{cluster_with_web, operator_config, until};
use trellis_manifests::install::{self, webhooks};
use trellis_operator::admission::server::{Webhooks, serve};
use trellis_operator::app;
use trellis_operator::ca::{MeshRoots, SigningCert, SystemClock};
use trellis_operator::index::Index;
use trellis_operator::serving::{ClientAuth, Identity, ServingTls};

fn review(kind: (&str, &str, &str), resource: &str, namespace: &str, object: Value) -> Value {
    let (group, version, kind) = kind;
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "b7f1c5d6-0000-4000-8000-000000000001",
            "kind": {"group": group, "version": version, "kind": kind},
            "resource": {"group": group, "version": version, "resource": resource},
            "requestKind": {"group": group, "version": version, "kind": kind},
            "requestResource": {"group": group, "version": version, "resource": resource},
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": object,
            "oldObject": null,
            "dryRun": false,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"},
        }
    })
}

fn pod_review() -> Value {
    review(
        ("", "v1", "Pod"),
        "pods",
        "shop",
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"generateName": "web-5d9f-", "namespace": "shop", "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "web", "image": "app:1"}]},
        }),
    )
}

fn bad_vs_review() -> Value {
    review(
        ("networking.trellis.dev", "v1alpha1", "VirtualService"),
        "virtualservices",
        "shop",
        json!({
            "apiVersion": "networking.trellis.dev/v1alpha1", "kind": "VirtualService",
            "metadata": {"name": "payment", "namespace": "shop"},
            "spec": {"hosts": ["payment"], "http": [{"route": [
                {"destination": {"host": "payment", "subset": "v1"}, "weight": 90},
                {"destination": {"host": "payment", "subset": "v2"}, "weight": 20},
            ]}]},
        }),
    )
}

/// A TLS client trusting `root_pem`, speaking `alpn`.
fn connector(root_pem: &str, alpn: &[u8]) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut root_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![alpn.to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(tls))
}

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

async fn connect(addr: std::net::SocketAddr, root_pem: &str, alpn: &[u8]) -> Tls {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    // As the API server (Go) does: without it the request head waits for the server's delayed
    // ACK of the handshake, and the timing tests would measure that.
    tcp.set_nodelay(true).unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    connector(root_pem, alpn).connect(name, tcp).await.unwrap()
}

async fn http1(tls: Tls) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

async fn post(
    send: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    method: &str,
    path: &str,
    body: Vec<u8>,
) -> (u16, Value) {
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    send.ready().await.unwrap();
    let resp = send.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

fn patch_of(answer: &Value) -> Value {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(answer["response"]["patch"].as_str().expect("a patch"))
        .unwrap();
    serde_json::from_slice(&raw).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_https_server_answers_real_reviews_refuses_bad_input_and_reissues_without_dropping() {
    rustls::crypto::ring::default_provider().install_default().ok();
    let root = SigningCert::self_signed_root(
        "cluster.local",
        Duration::from_secs(86400),
        std::time::SystemTime::now(),
    )
    .unwrap();
    let root_pem = root.cert_pem().to_string();
    let roots = MeshRoots::new(root, Duration::from_secs(3600), Arc::new(SystemClock));
    let tls = Arc::new(
        ServingTls::new(
            Identity {
                spiffe_id: "spiffe://cluster.local/ns/trellis-system/sa/trellis-operator".into(),
                dns_names: vec!["localhost".into()],
                ttl: Duration::from_secs(3600),
                client_auth: ClientAuth::None,
                alpn: vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            },
            &roots,
        )
        .unwrap(),
    );
    let metrics = Arc::new(trellis_operator::metrics::Metrics::default());
    let webhooks = Arc::new(Webhooks::new(
        Arc::new(std::sync::RwLock::new(Index::default())),
        trellis_manifests::sidecar::Settings::new(&install::Options::default()),
        metrics.clone(),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(serve(listener, tls.clone(), webhooks));

    let first = connect(addr, &root_pem, b"http/1.1").await;
    let first_cert = first.get_ref().1.peer_certificates().unwrap()[0].clone();
    let mut send = http1(first).await;

    // A pod: allowed with a JSON patch that adds the sidecar.
    let (status, answer) = post(
        &mut send,
        "POST",
        webhooks::INJECT_PATH,
        pod_review().to_string().into_bytes(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(answer["response"]["uid"], "b7f1c5d6-0000-4000-8000-000000000001");
    assert_eq!(answer["response"]["allowed"], true);
    assert_eq!(answer["response"]["patchType"], "JSONPatch");
    let patch = patch_of(&answer).to_string();
    assert!(
        patch.contains("trellis-proxy") && patch.contains("trellis-init"),
        "{patch}"
    );

    // An invalid VirtualService: denied, naming object, field and fix.
    let (status, answer) = post(
        &mut send,
        "POST",
        webhooks::VALIDATE_PATH,
        bad_vs_review().to_string().into_bytes(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(answer["response"]["allowed"], false);
    let message = answer["response"]["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("VirtualService shop/payment: spec.http[0].route") && message.contains("sum to 100"),
        "{message}"
    );

    // Malformed, misdirected and oversized bodies: clear refusals.
    let (status, answer) = post(&mut send, "POST", webhooks::VALIDATE_PATH, b"{\"kind\": ".to_vec()).await;
    assert_eq!(status, 400);
    assert_eq!(answer["response"]["allowed"], false);
    assert!(
        answer["response"]["status"]["message"]
            .as_str()
            .unwrap()
            .contains("not JSON")
    );
    let (status, answer) = post(&mut send, "POST", "/mutate", pod_review().to_string().into_bytes()).await;
    assert_eq!((status, &answer["response"]["allowed"]), (200, &json!(false)));
    assert!(
        answer["response"]["status"]["message"]
            .as_str()
            .unwrap()
            .contains("no webhook at /mutate")
    );
    let (status, _) = post(&mut send, "GET", webhooks::VALIDATE_PATH, Vec::new()).await;
    assert_eq!(status, 405);
    // Every answer so far is on /metrics, by webhook and outcome, and timed.
    assert_eq!(metrics.admissions("inject", "patched"), 1);
    assert_eq!(metrics.admissions("validate", "denied"), 1);
    assert_eq!(metrics.admissions("validate", "malformed"), 2);
    assert_eq!(metrics.admissions("other", "denied"), 1);
    let text = metrics.render("");
    assert!(
        text.contains("trellis_operator_admission_reviews_total{webhook=\"inject\",outcome=\"patched\"} 1")
            && text.contains("trellis_operator_admission_seconds_count{webhook=\"inject\"} 1")
            && text.contains("trellis_operator_admission_seconds_count{webhook=\"validate\"} 3"),
        "{text}"
    );
    // The time is the operator's from the request read to the answer written, not only the
    // decision: a body that arrives 80 ms after its headers is timed from the headers.
    let before = metrics.admission_seconds.inject.snapshot();
    let phases = &metrics.admission_phases;
    let phases_before = [&phases.queued, &phases.body, &phases.answer].map(|h| h.snapshot());
    let mut slow = connect(addr, &root_pem, b"http/1.1").await;
    let body = pod_review().to_string();
    let head = format!(
        "POST {} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        webhooks::INJECT_PATH,
        body.len()
    );
    tokio::io::AsyncWriteExt::write_all(&mut slow, head.as_bytes())
        .await
        .unwrap();
    tokio::io::AsyncWriteExt::flush(&mut slow).await.unwrap();
    tokio::time::sleep(Duration::from_millis(80)).await;
    tokio::io::AsyncWriteExt::write_all(&mut slow, body.as_bytes())
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::io::AsyncReadExt::read_to_end(&mut slow, &mut answer).await;
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
    let timed = metrics.admission_seconds.inject.snapshot().since(&before);
    assert_eq!(timed.count(), 1);
    assert_eq!(timed.at_most(0.05), 0, "timed from the headers: {timed:?}");
    // And where it went: the 80 ms in the body phase (the client's), not in the queue for a
    // worker nor in the answer.
    let [queued, body_read, answered] = [&phases.queued, &phases.body, &phases.answer].map(|h| h.snapshot());
    let [queued, body_read, answered] = [
        queued.since(&phases_before[0]),
        body_read.since(&phases_before[1]),
        answered.since(&phases_before[2]),
    ];
    assert_eq!((queued.count(), body_read.count(), answered.count()), (1, 1, 1));
    assert_eq!(body_read.at_most(0.05), 0, "the body's wait: {body_read:?}");
    assert_eq!(queued.at_most(0.05), 1, "no wait for a worker: {queued:?}");
    assert_eq!(answered.at_most(0.05), 1, "the answer: {answered:?}");
    let text = metrics.render("");
    assert!(
        text.contains("trellis_operator_admission_phase_seconds_count{phase=\"body\"}"),
        "{text}"
    );
    // (on a connection of its own: the server answers from the headers, reads none of the
    // body, and closes)
    let mut raw = connect(addr, &root_pem, b"http/1.1").await;
    let head = format!(
        "POST {} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        webhooks::INJECT_PATH,
        trellis_operator::admission::MAX_BODY_BYTES + 1
    );
    tokio::io::AsyncWriteExt::write_all(&mut raw, head.as_bytes())
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::io::AsyncReadExt::read_to_end(&mut raw, &mut answer).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("larger than"), "{answer}");

    // HTTP/2, as the API server usually speaks.
    let h2 = connect(addr, &root_pem, b"h2").await;
    assert_eq!(h2.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut send2, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), hyper_util::rt::TokioIo::new(h2))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::post(webhooks::VALIDATE_PATH)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(bad_vs_review().to_string())))
        .unwrap();
    let resp = send2.send_request(req).await.unwrap();
    let body: Value = serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["response"]["allowed"], false);

    // Reissue: the open connection keeps working; a new one gets the new certificate.
    tls.refresh(&roots).unwrap();
    let (status, answer) = post(
        &mut send,
        "POST",
        webhooks::INJECT_PATH,
        pod_review().to_string().into_bytes(),
    )
    .await;
    assert_eq!((status, &answer["response"]["allowed"]), (200, &json!(true)));
    let second = connect(addr, &root_pem, b"http/1.1").await;
    assert_ne!(second.get_ref().1.peer_certificates().unwrap()[0], first_cert);
    server.abort();
}

/// The install's webhook configurations, pointed at `addr` instead of the operator's Service.
fn configurations_at(addr: std::net::SocketAddr) -> String {
    let opts = install::Options::default();
    let mut objects = vec![
        install::to_value(&webhooks::validating_webhook_configuration(&opts)),
        install::to_value(&webhooks::mutating_webhook_configuration(&opts)),
    ];
    for o in &mut objects {
        for w in o["webhooks"].as_array_mut().unwrap() {
            let path = w["clientConfig"]["service"]["path"].as_str().unwrap().to_string();
            w["clientConfig"] = json!({"url": format!("https://localhost:{}{path}", addr.port())});
        }
    }
    trellis_manifests::to_yaml(&objects)
}

const BAD_VS: &str = r#"
apiVersion: networking.trellis.dev/v1alpha1
kind: VirtualService
metadata: {name: payment, namespace: meshed}
spec:
  hosts: [payment]
  http:
  - route:
    - {destination: {host: payment, subset: v1}, weight: 90}
    - {destination: {host: payment, subset: v2}, weight: 20}
"#;

const DOUBTFUL_VS: &str = r#"
apiVersion: networking.trellis.dev/v1alpha1
kind: VirtualService
metadata: {name: edge, namespace: meshed}
spec:
  hosts: ["*"]
  gateways: [no-such-gateway]
  http:
  - route: [{destination: {host: web}}]
"#;

const MESHED: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: meshed, labels: {trellis.dev/inject: enabled}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: api, namespace: meshed}
spec:
  replicas: 2
  selector: {matchLabels: {app: api}}
  template:
    metadata: {labels: {app: api}}
    spec:
      containers: [{name: api, image: test-app, ports: [{containerPort: 8080}]}]
"#;

const JOB: &str = r#"
apiVersion: batch/v1
kind: Job
metadata: {name: migrate, namespace: meshed}
spec:
  template:
    spec:
      restartPolicy: Never
      containers: [{name: migrate, image: test-app}]
"#;

const HOST_NETWORK_POD: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: node-agent, namespace: meshed}
spec:
  hostNetwork: true
  containers: [{name: agent, image: test-app}]
"#;

const PROXY_UID_POD: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: sneaky, namespace: meshed}
spec:
  securityContext: {runAsUser: 1337}
  containers: [{name: app, image: test-app}]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_is_answered_by_the_operators_webhooks() {
    let (cluster, _) = cluster_with_web();
    let client = cluster.client().await.unwrap();
    let config = app::Config {
        create_webhooks: true,
        ..operator_config(0, 3600)
    };
    let op = app::start(config, client).await.expect("the operator starts");
    let ca_bundle = |kind: &str, name: &str| {
        cluster
            .kubectl_ok(
                &["get", kind, name, "-o", "jsonpath={.webhooks[*].clientConfig.caBundle}"],
                None,
            )
            .unwrap_or_default()
    };
    let expected = base64::engine::general_purpose::STANDARD.encode(&op.root_pem);
    let current = || {
        ca_bundle("validatingwebhookconfiguration", webhooks::VALIDATOR) == expected
            && ca_bundle("mutatingwebhookconfiguration", webhooks::INJECTOR) == format!("{expected} {expected}")
    };
    // Missing at start (as under OLM): the operator creates both, trusting the mesh root.
    until("the operator to create both configurations", 20, current).await;
    let service = cluster
        .kubectl_ok(
            &[
                "get",
                "validatingwebhookconfiguration",
                webhooks::VALIDATOR,
                "-o",
                "jsonpath={.webhooks[0].clientConfig.service.name}",
            ],
            None,
        )
        .unwrap();
    assert_eq!(service, install::OPERATOR_NAME);
    // Replaced by the install's definitions (here pointed at this process), which carry no
    // caBundle: the operator fills it in again.
    cluster
        .kubectl_ok(&["replace", "-f", "-"], Some(&configurations_at(op.webhook_addr)))
        .unwrap();
    until("the repaired caBundle", 20, current).await;
    cluster.kubectl_ok(&["apply", "-f", "-"], Some(MESHED)).unwrap();
    support::until_async("the operator to be ready", 20, || async {
        support::http_get(op.admin_addr, "/ready").await.0 == 200
    })
    .await;

    // An invalid VirtualService: denied with the validator's message, dry run or not.
    for dry_run in [false, true] {
        let mut args = vec!["apply", "-f", "-"];
        if dry_run {
            args.push("--dry-run=server");
        }
        let out = cluster.kubectl(&args, Some(BAD_VS)).unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "dry run {dry_run}: accepted");
        assert!(
            stderr.contains("admission webhook \"validation.trellis.dev\" denied the request")
                && stderr.contains("VirtualService meshed/payment: spec.http[0].route")
                && stderr.contains("they must sum to 100"),
            "dry run {dry_run}: {stderr}"
        );
    }

    // A doubtful one: accepted, with the warning kubectl prints.
    let out = cluster.kubectl(&["apply", "-f", "-"], Some(DOUBTFUL_VS)).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "Warning: VirtualService meshed/edge: spec.gateways[0]: Gateway meshed/no-such-gateway does not exist"
        ),
        "{stderr}"
    );

    // A plain Deployment in the labelled namespace: meshed pods, with the version recorded.
    until("two meshed api pods", 30, || {
        let pods: Value = cluster
            .kubectl_ok(&["get", "pods", "-n", "meshed", "-l", "app=api", "-o", "json"], None)
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or(Value::Null);
        let items = pods["items"].as_array().cloned().unwrap_or_default();
        items.len() == 2
            && items.iter().all(|p| {
                let init: Vec<&str> = p["spec"]["initContainers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|c| c["name"].as_str())
                    .collect();
                init == ["trellis-init", "trellis-proxy"]
                    && p["metadata"]["labels"]["trellis.dev/proxy-version"] == env!("CARGO_PKG_VERSION")
            })
    })
    .await;
    // A Job's pod too.
    cluster.kubectl_ok(&["apply", "-f", "-"], Some(JOB)).unwrap();
    until("the Job's meshed pod", 30, || {
        cluster
            .kubectl_ok(
                &[
                    "get",
                    "pods",
                    "-n",
                    "meshed",
                    "-l",
                    "batch.kubernetes.io/job-name=migrate",
                    "-o",
                    "jsonpath={.items[*].spec.initContainers[*].name}",
                ],
                None,
            )
            .is_ok_and(|names| names.split_whitespace().collect::<Vec<_>>() == ["trellis-init", "trellis-proxy"])
    })
    .await;
    // The pods in the namespace without the label were left alone.
    let web = cluster
        .kubectl_ok(
            &[
                "get",
                "pods",
                "-n",
                "shop",
                "-o",
                "jsonpath={.items[*].spec.initContainers}",
            ],
            None,
        )
        .unwrap();
    assert!(web.trim().is_empty(), "{web}");

    // hostNetwork: admitted unmeshed, with a warning and an event saying why.
    let out = cluster.kubectl(&["apply", "-f", "-"], Some(HOST_NETWORK_POD)).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("Warning: pod meshed/node-agent was admitted without a Trellis sidecar")
            && stderr.contains("hostNetwork"),
        "{stderr}"
    );
    until("the SidecarInjectionSkipped event", 20, || {
        cluster
            .kubectl_ok(&["get", "events", "-n", "meshed"], None)
            .is_ok_and(|e| e.contains("SidecarInjectionSkipped"))
    })
    .await;

    // The proxy's UID: denied with the fix.
    let out = cluster.kubectl(&["apply", "-f", "-"], Some(PROXY_UID_POD)).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("runs as UID 1337") && stderr.contains("runAsUser"),
        "{stderr}"
    );
    op.stop();
}
