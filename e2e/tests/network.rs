//! The pod network (issue 5, section 3): namespaces, bridge, Service DNAT,
//! cluster DNS, iptables capture inside a pod, the API server from a pod,
//! LoadBalancers, cleanup. Needs root; skipped otherwise (a recorded skip,
//! a failure under CI: see `trellis_skip`).

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use trellis_e2e::network::{self, PodNetwork, netns};

const NEEDS_ROOT: &str = "the pod network needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN)";

/// `None` (a recorded skip) when not root.
fn network(dir: &Path) -> Option<Arc<PodNetwork>> {
    if !network::available() {
        trellis_skip::skip(NEEDS_ROOT);
        return None;
    }
    Some(PodNetwork::setup(dir).expect("pod network setup"))
}

fn pod_ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, 0, last)
}

/// A blocking TCP server in a pod namespace that answers every connection
/// with `reply` and closes; returns its port.
fn serve_in(path: &Path, addr: SocketAddr, reply: &'static str) {
    let listener = netns::tcp_listener(path, addr).expect("listener in pod");
    listener.set_nonblocking(false).unwrap();
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let _ = s.write_all(reply.as_bytes());
        }
    });
}

/// Connects from inside `path` to `addr` and reads everything.
fn fetch_from(path: &Path, addr: SocketAddr) -> std::io::Result<String> {
    netns::run_in(path, move || {
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })
}

#[test]
fn pods_reach_each_other_and_detach_removes_the_namespace() {
    let dir = tempfile::tempdir().unwrap();
    let Some(net) = network(dir.path()) else { return };
    let a = net
        .attach("aaaaaaaa-1111-4000-8000-000000000001", "default", pod_ip(2))
        .unwrap();
    let b = net
        .attach("bbbbbbbb-2222-4000-8000-000000000002", "team", pod_ip(3))
        .unwrap();
    assert!(a.path.exists() && b.path.exists());
    assert_eq!(
        std::fs::read_to_string(&b.resolv_conf).unwrap(),
        "nameserver 10.96.0.10\nsearch team.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n"
    );
    // Idempotent.
    assert_eq!(
        net.attach("aaaaaaaa-1111-4000-8000-000000000001", "default", pod_ip(2))
            .unwrap(),
        a
    );
    serve_in(&a.path, SocketAddr::from((pod_ip(2), 8080)), "hello from a");
    assert_eq!(
        fetch_from(&b.path, SocketAddr::from((pod_ip(2), 8080))).unwrap(),
        "hello from a"
    );
    // eth0 carries the address; the default route points at the bridge.
    let routes = netns::ip_in(&b.name, &["route"]).unwrap();
    assert!(routes.contains("default via 10.244.0.1"), "{routes}");

    net.detach("bbbbbbbb-2222-4000-8000-000000000002");
    assert!(!b.path.exists());
    assert!(!b.resolv_conf.exists());
    net.teardown();
    assert!(!a.path.exists());
    assert!(!net.node_netns_path().exists());
    let prefix = format!("ksim-{}-", net.id());
    assert!(netns::list().iter().all(|n| !n.starts_with(&prefix)));
}

/// A kubesim with the pod network and simulated pods (addresses and
/// readiness come from the simulated kubelet; the tests give the pods their
/// namespaces and servers themselves, so no process runner is involved).
struct Sim {
    running: trellis_e2e::app::Running,
    rt: tokio::runtime::Runtime,
    dir: tempfile::TempDir,
}

impl Sim {
    fn start() -> Option<Self> {
        if !network::available() {
            trellis_skip::skip(NEEDS_ROOT);
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let mut config = trellis_e2e::app::Config::new(dir.path());
        config.pod_network = true;
        let running = rt
            .block_on(trellis_e2e::app::start(config))
            .expect("kubesim with the pod network");
        Some(Self { running, rt, dir })
    }

    fn net(&self) -> &Arc<PodNetwork> {
        self.running.network.as_ref().expect("pod network")
    }

    fn cluster(&self) -> &trellis_e2e::cluster::Cluster {
        &self.running.cluster
    }

    fn create(&self, plural: &str, ns: Option<&str>, obj: serde_json::Value) -> serde_json::Value {
        let rt = self.cluster().catalog.get("", "v1", plural).unwrap();
        self.cluster()
            .create(&rt, ns, obj, &trellis_e2e::cluster::WriteOptions::default())
            .unwrap()
            .object
    }

    fn get(&self, plural: &str, ns: &str, name: &str) -> Option<serde_json::Value> {
        let rt = self.cluster().catalog.get("", "v1", plural).unwrap();
        self.cluster().get(&rt, Some(ns), name).ok()
    }

    /// Creates a Ready web pod (named port `http` = 8080), gives it its
    /// namespace and a server on 8080 answering its name.
    fn web_pod(&self, ns: &str, name: &'static str) -> network::PodNetns {
        self.create(
            "pods",
            Some(ns),
            serde_json::json!({
                "metadata": {"name": name, "labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "web", "ports": [{"name": "http", "containerPort": 8080}]}]},
            }),
        );
        let pod = wait("pod address", || {
            self.get("pods", ns, name)
                .filter(|p| p.pointer("/status/podIP").is_some())
        });
        let ip: Ipv4Addr = pod["status"]["podIP"].as_str().unwrap().parse().unwrap();
        let uid = pod["metadata"]["uid"].as_str().unwrap();
        let netns = self.net().attach(uid, ns, ip).unwrap();
        serve_in(&netns.path, SocketAddr::from((ip, 8080)), name);
        netns
    }

    /// A pod namespace for a client (no pod object), address 10.244.200.N.
    fn client(&self, ns: &str, n: u8) -> network::PodNetns {
        self.net()
            .attach(
                &format!("c1e470{n:02}-0000-4000-8000-000000000000"),
                ns,
                Ipv4Addr::new(10, 244, 200, n),
            )
            .unwrap()
    }

    fn cluster_ip(&self, ns: &str, svc: &str) -> Ipv4Addr {
        self.get("services", ns, svc).unwrap()["spec"]["clusterIP"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.running.stop();
        let _ = self.dir.path();
    }
}

/// Polls `f` (every 50 ms, 10 s at most).
fn wait<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The replies of `n` connections from `path` to `addr`.
fn replies(path: &Path, addr: SocketAddr, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| fetch_from(path, addr).unwrap_or_else(|e| format!("error: {e}")))
        .collect()
}

fn web_service(sim: &Sim, ns: &str, extra: serde_json::Value) -> Ipv4Addr {
    let mut spec =
        serde_json::json!({"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]});
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        s.extend(e.clone());
    }
    sim.create(
        "services",
        Some(ns),
        serde_json::json!({"metadata": {"name": "web"}, "spec": spec}),
    );
    sim.cluster_ip(ns, "web")
}

#[test]
fn cluster_ips_spread_follow_endpoints_and_hairpin() {
    let Some(sim) = Sim::start() else { return };
    let ns = "default";
    let w1 = sim.web_pod(ns, "web-1");
    let _w2 = sim.web_pod(ns, "web-2");
    let ip = web_service(&sim, ns, serde_json::json!({}));
    let client = sim.client(ns, 1);
    let addr = SocketAddr::from((ip, 80));
    // Both endpoints answer through the ClusterIP (named targetPort).
    wait("both endpoints behind the ClusterIP", || {
        let got = replies(&client.path, addr, 12);
        (got.contains(&"web-1".to_string()) && got.contains(&"web-2".to_string())).then_some(())
    });
    // Scale down: web-2 goes, only web-1 answers.
    let pods = sim.cluster().catalog.get("", "v1", "pods").unwrap();
    let now = trellis_e2e::cluster::DeleteOptions {
        grace_period_seconds: Some(0),
        ..Default::default()
    };
    sim.cluster().delete(&pods, Some(ns), "web-2", &now).unwrap();
    wait("only web-1 behind the ClusterIP", || {
        replies(&client.path, addr, 8)
            .iter()
            .all(|r| r == "web-1")
            .then_some(())
    });
    // Hairpin: web-1 reaches itself through its Service.
    assert_eq!(fetch_from(&w1.path, addr).unwrap(), "web-1");
    // No endpoints: refused at once, not a timeout.
    sim.cluster().delete(&pods, Some(ns), "web-1", &now).unwrap();
    wait("a refusal without endpoints", || {
        let started = std::time::Instant::now();
        let r = fetch_from(&client.path, addr);
        if std::env::var_os("KSIM_DEBUG").is_some() {
            eprintln!(
                "{r:?} {}",
                netns::exec_in(sim.net().node_netns(), "iptables-save", &[], None).unwrap()
            );
        }
        let e = r.err()?;
        (e.kind() == std::io::ErrorKind::ConnectionRefused && started.elapsed() < Duration::from_secs(1)).then_some(())
    });
}

/// `getent ahostsv4 NAME` inside the pod namespace (its resolv.conf bound
/// over /etc/resolv.conf by `ip netns exec`): the first address.
fn resolve(pod: &network::PodNetns, name: &str) -> Option<String> {
    let out = netns::exec_in(&pod.name, "getent", &["ahostsv4", name], None).ok()?;
    out.split_whitespace().next().map(str::to_string)
}

#[test]
fn dns_names_redirect_in_a_pod_and_the_api_server_from_a_pod() {
    let Some(sim) = Sim::start() else { return };
    let ns = "team";
    sim.create("namespaces", None, serde_json::json!({"metadata": {"name": ns}}));
    sim.web_pod(ns, "web-1");
    let ip = web_service(&sim, ns, serde_json::json!({}));
    let client = sim.client(ns, 2);
    let other = sim.client("default", 3);
    let want = Some(ip.to_string());
    for name in ["web", "web.team", "web.team.svc", "web.team.svc.cluster.local"] {
        assert_eq!(resolve(&client, name), want, "{name} from team");
    }
    assert_eq!(resolve(&other, "web.team"), want, "web.team from default");
    assert_eq!(resolve(&other, "web"), None, "web does not exist in default");
    assert_eq!(resolve(&client, "kubernetes.default"), Some("10.96.0.1".into()));
    assert_eq!(
        resolve(&client, "10-244-0-9.team.pod.cluster.local"),
        Some("10.244.0.9".into())
    );
    // Headless: the ready pod addresses.
    sim.create(
        "services",
        Some(ns),
        serde_json::json!({"metadata": {"name": "web-headless"}, "spec": {"clusterIP": "None", "selector": {"app": "web"}, "ports": [{"port": 8080}]}}),
    );
    let pod_ip = sim.get("pods", ns, "web-1").unwrap()["status"]["podIP"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(wait("headless endpoints", || resolve(&client, "web-headless")), pod_ip);

    // ExternalName into the cluster: CNAME plus the target's address.
    sim.create(
        "services",
        Some(ns),
        serde_json::json!({"metadata": {"name": "alias"}, "spec": {"type": "ExternalName", "externalName": "web.team.svc.cluster.local"}}),
    );
    assert_eq!(resolve(&client, "alias"), want, "ExternalName");

    // The API server through the `kubernetes` Service, verified with the CA
    // and its Service name (as kube-rs in a pod does).
    let ca = sim.dir.path().join("ca.crt");
    let ca = ca.to_str().unwrap();
    let auth = format!("Authorization: Bearer {}", sim.running.admin_token);
    for url in ["https://10.96.0.1/version", "https://kubernetes.default.svc/version"] {
        let args = ["-sS", "--max-time", "5", "--cacert", ca, "-H", &auth, url];
        let out = netns::exec_in(&client.name, "curl", &args, None).unwrap_or_else(|e| panic!("{url}: {e}"));
        assert!(out.contains("gitVersion"), "{url}: {out}");
    }
    assert_eq!(sim.net().api_server_for_pods(), SocketAddr::from(([10, 96, 0, 1], 443)));
    // kube-rs (rustls) from inside the pod: the in-cluster address with the
    // cluster CA and a token, as `Config::infer()` builds it in a pod.
    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://{}\n    certificate-authority-data: {}\ncontexts:\n- name: c\n  context: {{cluster: c, user: u}}\ncurrent-context: c\nusers:\n- name: u\n  user: {{token: {}}}\n",
        sim.net().api_server_for_pods(),
        trellis_e2e::pki::base64_encode(std::fs::read(sim.dir.path().join("ca.crt")).unwrap().as_slice()),
        sim.running.admin_token,
    );
    let version = netns::run_in(&client.path, move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        rt.block_on(async move {
            let kc = kube::config::Kubeconfig::from_yaml(&kubeconfig).map_err(std::io::Error::other)?;
            let config = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(std::io::Error::other)?;
            let client = kube::Client::try_from(config).map_err(std::io::Error::other)?;
            client.apiserver_version().await.map_err(std::io::Error::other)
        })
    })
    .expect("kube-rs from a pod");
    assert!(!version.git_version.is_empty());

    // DNS over TCP, and names outside the cluster go to the host's resolver
    // (an answer of some kind, never silence).
    let answer = dns_exchange(&client.path, "web.team.svc.cluster.local", true);
    assert_eq!(answer[3] & 0xf, 0, "NOERROR");
    assert_eq!(answer[answer.len() - 4..], ip.octets());
    let nx = dns_exchange(&client.path, "nope.team.svc.cluster.local", false);
    assert_eq!(nx[3] & 0xf, 3, "NXDOMAIN");
    let external = dns_exchange(&client.path, "kubesim-test.invalid", false);
    assert!(matches!(external[3] & 0xf, 0 | 2 | 3), "{external:?}");

    // iptables capture inside a pod namespace (as a sidecar's init does):
    // the connection to ClusterIP:80 lands on the pod's own 15001.
    serve_in(&client.path, SocketAddr::from(([0, 0, 0, 0], 15001)), "captured");
    netns::exec_in(
        &client.name,
        "iptables",
        &[
            "-w",
            "-t",
            "nat",
            "-A",
            "OUTPUT",
            "-p",
            "tcp",
            "--dport",
            "80",
            "-j",
            "REDIRECT",
            "--to-ports",
            "15001",
        ],
        None,
    )
    .unwrap();
    assert_eq!(
        fetch_from(&client.path, SocketAddr::from((ip, 80))).unwrap(),
        "captured"
    );
    // Other pods are not affected.
    assert_eq!(fetch_from(&other.path, SocketAddr::from((ip, 80))).unwrap(), "web-1");
}

/// One DNS query for `name` (type A) to 10.96.0.10 from inside `path`, over
/// TCP or UDP; the raw answer.
fn dns_exchange(path: &Path, name: &str, tcp: bool) -> Vec<u8> {
    let mut q = vec![0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    let server = SocketAddr::from(([10, 96, 0, 10], 53));
    netns::run_in(path, move || {
        let mut buf = vec![0u8; 1024];
        if tcp {
            let mut s = std::net::TcpStream::connect_timeout(&server, Duration::from_secs(3))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(&(q.len() as u16).to_be_bytes())?;
            s.write_all(&q)?;
            let mut len = [0u8; 2];
            s.read_exact(&mut len)?;
            buf.truncate(usize::from(u16::from_be_bytes(len)));
            s.read_exact(&mut buf)?;
        } else {
            let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.send_to(&q, server)?;
            let (n, _) = s.recv_from(&mut buf)?;
            buf.truncate(n);
        }
        Ok(buf)
    })
    .expect("a DNS answer")
}

/// A CA and a serving certificate for `names` (PEM: ca, cert, key).
fn webhook_identity(names: &[&str]) -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|n| (*n).to_string()).collect();
    let leaf = CertificateParams::new(names).unwrap().signed_by(&key, &issuer).unwrap();
    (ca.pem(), leaf.pem(), key.serialize_pem())
}

/// A validating webhook served by a pod: the API server reaches it through
/// the pod network (Service reference → endpoint in a pod namespace).
#[test]
fn webhooks_served_by_pods_are_called_through_the_pod_network() {
    let Some(sim) = Sim::start() else { return };
    sim.create(
        "pods",
        Some("default"),
        serde_json::json!({"metadata": {"name": "hook", "labels": {"app": "hook"}}, "spec": {"containers": [{"name": "hook", "image": "hook"}]}}),
    );
    let pod = wait("pod address", || {
        sim.get("pods", "default", "hook")
            .filter(|p| p.pointer("/status/podIP").is_some())
    });
    let ip: Ipv4Addr = pod["status"]["podIP"].as_str().unwrap().parse().unwrap();
    let netns = sim
        .net()
        .attach(pod["metadata"]["uid"].as_str().unwrap(), "default", ip)
        .unwrap();
    sim.create(
        "services",
        Some("default"),
        serde_json::json!({"metadata": {"name": "hook"}, "spec": {"selector": {"app": "hook"}, "ports": [{"port": 443, "targetPort": 8443}]}}),
    );
    let (ca, cert, key) = webhook_identity(&["hook.default.svc"]);
    let identity = trellis_e2e::pki::ServingIdentity {
        ca_pem: ca.clone(),
        cert_pem: cert,
        key_pem: key,
    };
    let tls = Arc::new(identity.server_config().unwrap());
    let listener = netns::tcp_listener(&netns.path, SocketAddr::from((ip, 8443))).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let acceptor = tokio_rustls::TlsAcceptor::from(tls);
            while let Ok((tcp, _)) = listener.accept().await {
                let Ok(stream) = acceptor.accept(tcp).await else { continue };
                let svc = hyper::service::service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                    use http_body_util::BodyExt as _;
                    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                    let review: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                    let out = serde_json::json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": {
                        "uid": review["request"]["uid"], "allowed": false,
                        "status": {"code": 403, "message": "denied by a pod in the pod network"}}});
                    Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(bytes::Bytes::from(out.to_string()))))
                });
                tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(stream), svc));
            }
        });
    });
    wait("endpoints of the webhook service", || {
        sim.get("endpoints", "default", "hook")
            .filter(|e| e.pointer("/subsets/0/addresses/0/ip").is_some())
    });
    let vwc = sim
        .cluster()
        .catalog
        .get("admissionregistration.k8s.io", "v1", "validatingwebhookconfigurations")
        .unwrap();
    sim.cluster()
        .create(
            &vwc,
            None,
            serde_json::json!({
                "metadata": {"name": "deny"},
                "webhooks": [{
                    "name": "deny.trellis.dev", "admissionReviewVersions": ["v1"], "sideEffects": "None", "failurePolicy": "Fail", "timeoutSeconds": 5,
                    "clientConfig": {"service": {"namespace": "default", "name": "hook", "port": 443}, "caBundle": trellis_e2e::pki::base64_encode(ca.as_bytes())},
                    "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["configmaps"]}],
                    "objectSelector": {"matchLabels": {"check": "yes"}}
                }]
            }),
            &trellis_e2e::cluster::WriteOptions::default(),
        )
        .unwrap();
    // Webhooks are called from the API server's runtime, as for requests.
    let cluster = sim.running.cluster.clone();
    let err = sim
        .rt
        .block_on(sim.rt.spawn(async move {
            let cm = cluster.catalog.get("", "v1", "configmaps").unwrap();
            cluster.create(
                &cm,
                Some("default"),
                serde_json::json!({"metadata": {"name": "c", "labels": {"check": "yes"}}}),
                &trellis_e2e::cluster::WriteOptions::default(),
            )
        }))
        .unwrap()
        .unwrap_err();
    assert!(
        err.message.contains("denied by a pod in the pod network"),
        "{}",
        err.message
    );
}

#[test]
fn load_balancers_are_reachable_from_the_host() {
    let Some(sim) = Sim::start() else { return };
    sim.web_pod("default", "web-1");
    web_service(
        &sim,
        "default",
        serde_json::json!({"type": "LoadBalancer", "ports": [{"name": "http", "port": 8000, "targetPort": "http"}]}),
    );
    let lb = sim.net().load_balancer_ip();
    let svc = wait("load balancer status", || {
        sim.get("services", "default", "web")
            .filter(|s| s.pointer("/status/loadBalancer/ingress/0/ip").is_some())
    });
    assert_eq!(svc["status"]["loadBalancer"]["ingress"][0]["ip"], lb.to_string());
    let node_port = svc["spec"]["ports"][0]["nodePort"].as_i64().unwrap();
    assert!((30000..=32767).contains(&node_port), "{node_port}");
    let got = wait("an answer through the load balancer", || {
        let mut s = std::net::TcpStream::connect_timeout(&SocketAddr::from((lb, 8000)), Duration::from_secs(2)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        (!out.is_empty()).then_some(out)
    });
    assert_eq!(got, "web-1");
}

#[test]
fn stopping_kubesim_and_restarting_after_a_crash_remove_everything() {
    let Some(sim) = Sim::start() else { return };
    sim.web_pod("default", "web-1");
    let id = sim.net().id().to_string();
    let prefix = format!("ksim-{id}-");
    assert!(netns::list().iter().filter(|n| n.starts_with(&prefix)).count() >= 2);
    drop(sim);
    assert!(
        netns::list().iter().all(|n| !n.starts_with(&prefix)),
        "{:?}",
        netns::list()
    );
    assert!(!Path::new(&format!("/run/kubesim/{id}.pid")).exists());

    // A "crashed" instance: namespaces and a pid file whose process is gone.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let crashed = format!("{:08x}", std::process::id().wrapping_mul(2_654_435_761));
    std::fs::create_dir_all("/run/kubesim").unwrap();
    std::fs::write(format!("/run/kubesim/{crashed}.pid"), format!("{dead} 1\n")).unwrap();
    for suffix in ["node", "0123456789ab"] {
        netns::run("ip", &["netns", "add", &format!("ksim-{crashed}-{suffix}")]).unwrap();
    }
    std::fs::create_dir_all(format!("/etc/netns/ksim-{crashed}-0123456789ab")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let net = network(dir.path()).unwrap();
    let crashed_prefix = format!("ksim-{crashed}-");
    assert!(
        netns::list().iter().all(|n| !n.starts_with(&crashed_prefix)),
        "{:?}",
        netns::list()
    );
    assert!(!Path::new(&format!("/etc/netns/ksim-{crashed}-0123456789ab")).exists());
    assert!(!Path::new(&format!("/run/kubesim/{crashed}.pid")).exists());
    // The live instance is untouched by another cleanup.
    network::cleanup_leftovers();
    assert!(net.node_netns_path().exists());
}
