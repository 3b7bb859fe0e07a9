//! LoadBalancer Services, reachable from outside the pod network the way a
//! cloud load balancer (or MetalLB on kind) makes them: each kubesim
//! instance owns one loopback address `127.X.Y.1`
//! ([`PodNetwork::load_balancer_ip`]); for every TCP port of every Service
//! of type LoadBalancer it listens on `127.X.Y.1:<port>` in the host
//! namespace and proxies each connection to `ClusterIP:<port>` through a
//! socket created in the node namespace (so the Service rules pick the
//! endpoint). `status.loadBalancer.ingress` is set to `[{ip: 127.X.Y.1}]`.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use super::{PodNetwork, netns};
use crate::cluster::{Cluster, WriteOptions};

/// One listener: Service `ns/name`, port.
type Key = (String, String, u16);

/// The LoadBalancer Service ports now: key → ClusterIP target.
fn wanted(cluster: &Cluster) -> BTreeMap<Key, SocketAddr> {
    let (services, _) = cluster.store.list("/services", None);
    let mut out = BTreeMap::new();
    for s in &services {
        if s.pointer("/spec/type").and_then(Value::as_str) != Some("LoadBalancer")
            || s.pointer("/metadata/deletionTimestamp").is_some()
        {
            continue;
        }
        let Some(ip) = s
            .pointer("/spec/clusterIP")
            .and_then(Value::as_str)
            .and_then(|i| i.parse::<Ipv4Addr>().ok())
        else {
            continue;
        };
        let ns = s
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let name = s.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
        for p in s.pointer("/spec/ports").and_then(Value::as_array).into_iter().flatten() {
            if p.get("protocol").and_then(Value::as_str).unwrap_or("TCP") != "TCP" {
                continue;
            }
            if let Some(port) = p
                .get("port")
                .and_then(Value::as_u64)
                .and_then(|p| u16::try_from(p).ok())
            {
                out.insert((ns.to_string(), name.to_string(), port), SocketAddr::from((ip, port)));
            }
        }
    }
    out
}

/// Sets `status.loadBalancer.ingress` of every LoadBalancer Service.
fn publish_status(cluster: &Cluster, lb_ip: Ipv4Addr) {
    let Some(rt) = cluster.catalog.get("", "v1", "services") else {
        return;
    };
    let (services, _) = cluster.store.list("/services", None);
    let ingress = json!([{"ip": lb_ip.to_string(), "ipMode": "VIP"}]);
    for s in services {
        if s.pointer("/spec/type").and_then(Value::as_str) != Some("LoadBalancer")
            || s.pointer("/status/loadBalancer/ingress") == Some(&ingress)
        {
            continue;
        }
        let ns = s
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let name = s
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let mut next = s;
        next["status"] = json!({"loadBalancer": {"ingress": ingress}});
        let opts = WriteOptions {
            field_manager: Some("kubesim-service-lb-controller".into()),
            ..Default::default()
        };
        if let Err(e) = cluster.update(&rt, Some(&ns), &name, "status", next, &opts) {
            debug!(%ns, %name, error = %e, "load balancer status retried later");
        }
    }
}

async fn serve(listener: tokio::net::TcpListener, node: std::path::PathBuf, target: SocketAddr) {
    loop {
        let Ok((mut down, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let node = node.clone();
        tokio::spawn(async move {
            let up = tokio::time::timeout(Duration::from_secs(5), netns::connect(&node, target)).await;
            match up {
                Ok(Ok(mut up)) => {
                    let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                }
                Ok(Err(e)) => debug!(%peer, %target, error = %e, "load balancer upstream failed"),
                Err(_) => debug!(%peer, %target, "load balancer upstream timed out"),
            }
        });
    }
}

/// Keeps listeners and statuses in step with the Services until `stop`.
pub async fn run(net: Arc<PodNetwork>, cluster: Arc<Cluster>, mut stop: watch::Receiver<bool>) {
    let mut events = cluster.store.subscribe();
    let mut listeners: BTreeMap<Key, (SocketAddr, JoinHandle<()>)> = BTreeMap::new();
    let lb_ip = net.load_balancer_ip();
    loop {
        let want = wanted(&cluster);
        listeners.retain(|k, (target, task)| {
            let keep = want.get(k) == Some(target);
            if !keep {
                task.abort();
            }
            keep
        });
        for (k, target) in &want {
            if listeners.contains_key(k) {
                continue;
            }
            match tokio::net::TcpListener::bind((lb_ip, k.2)).await {
                Ok(l) => {
                    let task = tokio::spawn(serve(l, net.node_netns_path(), *target));
                    listeners.insert(k.clone(), (*target, task));
                }
                Err(e) => {
                    warn!(service = %format!("{}/{}", k.0, k.1), port = k.2, %lb_ip, error = %e, "load balancer listen failed; retrying")
                }
            }
        }
        publish_status(&cluster, lb_ip);
        let retry = tokio::time::sleep(Duration::from_secs(if listeners.len() == want.len() { 30 } else { 1 }));
        tokio::pin!(retry);
        loop {
            tokio::select! {
                ev = events.recv() => match ev {
                    Ok(ev) if ev.key.group_resource == "/services" => {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        while events.try_recv().is_ok() {}
                        break;
                    }
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => break,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
                () = &mut retry => break,
                () = crate::shutdown::requested(&mut stop) => {
                    for (_, (_, t)) in listeners { t.abort(); }
                    return;
                }
            }
        }
    }
}
