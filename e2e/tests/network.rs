//! The pod network (issue 5, section 3): namespaces, bridge, Service DNAT,
//! cluster DNS, iptables capture inside a pod, the API server from a pod,
//! LoadBalancers, cleanup. Needs root; skipped otherwise.

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use trellis_e2e::network::{self, PodNetwork, netns};

/// `None` (and a message) when not root.
fn network(dir: &Path) -> Option<Arc<PodNetwork>> {
    if !network::available() {
        eprintln!("skipping: needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN)");
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
