//! kube-proxy (iptables mode) for the node namespace: Service ClusterIP:port
//! → ready endpoints, spread at random, rewritten with one atomic
//! `iptables-restore` of the whole `nat` and `filter` tables of the node
//! namespace whenever Services or EndpointSlices change.
//!
//! Rules (`nat`): `PREROUTING` (traffic from pods) and `OUTPUT` (sockets in
//! the node namespace: LoadBalancer proxying) jump to `KUBESIM-SERVICES`,
//! which matches `-d ClusterIP -p proto --dport port` into one `KSVC-…`
//! chain per Service port; it picks a `KSEP-…` chain with `statistic`
//! probabilities 1/n, 1/(n-1), … 1, and that DNATs to the endpoint. A pod
//! reaching itself through its Service (hairpin) is marked and masqueraded.
//! A Service port without ready endpoints is rejected in `filter`
//! (`KUBESIM-REJECT`), as kube-proxy does, instead of timing out.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;
use tracing::{debug, warn};

use super::PodNetwork;
use super::netns;
use crate::cluster::Cluster;

/// One Service port and where it leads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRule {
    /// `namespace/name:portname` (for comments and chain names).
    pub id: String,
    pub cluster_ip: Ipv4Addr,
    pub port: u16,
    /// `tcp`, `udp` or `sctp`.
    pub protocol: String,
    /// Ready endpoints: (address, target port).
    pub endpoints: Vec<(Ipv4Addr, u16)>,
}

/// FNV-1a, 64 bits: stable chain-name hashes.
fn hash(s: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016X}")
}

/// Keeps comment text to characters iptables-restore takes unquoted.
fn comment(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "/:._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The `iptables-restore` input for `rules` (both tables, complete). With
/// `masquerade_all`, every connection through a Service is masqueraded.
pub fn render(rules: &[ServiceRule], masquerade_all: bool) -> String {
    let mut filter = String::from(
        "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:KUBESIM-REJECT - [0:0]\n\
         -A INPUT -m conntrack --ctstate NEW -j KUBESIM-REJECT\n\
         -A FORWARD -m conntrack --ctstate NEW -j KUBESIM-REJECT\n\
         -A OUTPUT -m conntrack --ctstate NEW -j KUBESIM-REJECT\n",
    );
    let mut chains = String::new();
    let mut body = String::new();
    for r in rules {
        let c = comment(&r.id);
        if r.endpoints.is_empty() {
            let _ = writeln!(
                filter,
                "-A KUBESIM-REJECT -d {}/32 -p {} -m {} --dport {} -m comment --comment {c}:no-endpoints -j REJECT --reject-with icmp-port-unreachable",
                r.cluster_ip, r.protocol, r.protocol, r.port
            );
            continue;
        }
        let svc_chain = format!("KSVC-{}", hash(&format!("{}/{}", r.id, r.protocol)));
        let _ = writeln!(chains, ":{svc_chain} - [0:0]");
        let _ = writeln!(
            body,
            "-A KUBESIM-SERVICES -d {}/32 -p {} -m {} --dport {} -m comment --comment {c} -j {svc_chain}",
            r.cluster_ip, r.protocol, r.protocol, r.port
        );
        if masquerade_all {
            let _ = writeln!(body, "-A {svc_chain} -j KUBESIM-MARK-MASQ");
        }
        let n = r.endpoints.len();
        for (i, (ip, port)) in r.endpoints.iter().enumerate() {
            let ep_chain = format!("KSEP-{}", hash(&format!("{}/{}/{ip}:{port}", r.id, r.protocol)));
            let _ = writeln!(chains, ":{ep_chain} - [0:0]");
            if i + 1 < n {
                let p = 1.0 / (n - i) as f64;
                let _ = writeln!(
                    body,
                    "-A {svc_chain} -m statistic --mode random --probability {p:.10} -j {ep_chain}"
                );
            } else {
                let _ = writeln!(body, "-A {svc_chain} -j {ep_chain}");
            }
            let _ = writeln!(body, "-A {ep_chain} -s {ip}/32 -j KUBESIM-MARK-MASQ");
            let _ = writeln!(
                body,
                "-A {ep_chain} -p {} -m {} -j DNAT --to-destination {ip}:{port}",
                r.protocol, r.protocol
            );
        }
    }
    filter.push_str("COMMIT\n");
    format!(
        "{filter}*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n\
         :KUBESIM-SERVICES - [0:0]\n:KUBESIM-MARK-MASQ - [0:0]\n:KUBESIM-POSTROUTING - [0:0]\n{chains}\
         -A PREROUTING -j KUBESIM-SERVICES\n-A OUTPUT -j KUBESIM-SERVICES\n-A POSTROUTING -j KUBESIM-POSTROUTING\n\
         -A KUBESIM-MARK-MASQ -j MARK --or-mark 0x4000\n\
         -A KUBESIM-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n\
         -A KUBESIM-POSTROUTING -j MARK --xor-mark 0x4000\n\
         -A KUBESIM-POSTROUTING -j MASQUERADE\n{body}COMMIT\n"
    )
}

/// Loads `rules` (from [`render`]) into the namespace `netns`, atomically.
pub fn apply(netns: &str, rules: &str) -> Result<(), String> {
    netns::exec_in(netns, "iptables-restore", &["-w", "5"], Some(rules)).map(|_| ())
}

fn slice_port(slice: &Value, name: &str, protocol: &str) -> Option<u16> {
    slice
        .get("ports")
        .and_then(Value::as_array)?
        .iter()
        .find(|p| {
            p.get("name").and_then(Value::as_str).unwrap_or_default() == name
                && p.get("protocol").and_then(Value::as_str).unwrap_or("TCP") == protocol
        })
        .and_then(|p| p.get("port")?.as_u64())
        .and_then(|p| u16::try_from(p).ok())
}

/// The rules for the cluster's Services and EndpointSlices now.
pub fn rules_from(cluster: &Cluster) -> Vec<ServiceRule> {
    let (services, _) = cluster.store.list("/services", None);
    let (slices, _) = cluster.store.list("discovery.k8s.io/endpointslices", None);
    let mut by_service: BTreeMap<(String, String), Vec<&Value>> = BTreeMap::new();
    for s in &slices {
        let ns = s
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if let Some(svc) = s
            .pointer("/metadata/labels/kubernetes.io~1service-name")
            .and_then(Value::as_str)
        {
            by_service.entry((ns.to_string(), svc.to_string())).or_default().push(s);
        }
    }
    let mut rules = Vec::new();
    for svc in &services {
        let ns = svc
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let name = svc
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let Some(ip) = svc
            .pointer("/spec/clusterIP")
            .and_then(Value::as_str)
            .and_then(|s| s.parse::<Ipv4Addr>().ok())
        else {
            continue; // headless ("None") or ExternalName
        };
        let slices = by_service.get(&(ns.to_string(), name.to_string()));
        for p in svc
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let Some(port) = p
                .get("port")
                .and_then(Value::as_u64)
                .and_then(|p| u16::try_from(p).ok())
            else {
                continue;
            };
            let pname = p.get("name").and_then(Value::as_str).unwrap_or_default();
            let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
            let mut endpoints = Vec::new();
            for s in slices.into_iter().flatten() {
                let Some(target) = slice_port(s, pname, proto) else {
                    continue;
                };
                for e in s.get("endpoints").and_then(Value::as_array).into_iter().flatten() {
                    let ready = e.pointer("/conditions/ready").and_then(Value::as_bool) != Some(false);
                    let addr = e
                        .pointer("/addresses/0")
                        .and_then(Value::as_str)
                        .and_then(|a| a.parse::<Ipv4Addr>().ok());
                    if let (true, Some(a)) = (ready, addr)
                        && !endpoints.contains(&(a, target))
                    {
                        endpoints.push((a, target));
                    }
                }
            }
            rules.push(ServiceRule {
                id: format!("{ns}/{name}:{pname}"),
                cluster_ip: ip,
                port,
                protocol: proto.to_ascii_lowercase(),
                endpoints,
            });
        }
    }
    rules
}

fn relevant(key: &crate::store::ObjectKey) -> bool {
    key.group_resource == "/services" || key.group_resource == "discovery.k8s.io/endpointslices"
}

/// Keeps the node namespace's rules in step with the cluster until `stop`.
pub async fn run(net: Arc<PodNetwork>, cluster: Arc<Cluster>, mut stop: watch::Receiver<bool>) {
    let mut events = cluster.store.subscribe();
    let mut applied = String::new();
    loop {
        let text = render(&rules_from(&cluster), net.masquerade_all());
        if text != applied {
            let ns = net.node_netns().to_string();
            let t = text.clone();
            match tokio::task::spawn_blocking(move || apply(&ns, &t)).await {
                Ok(Ok(())) => {
                    debug!("service rules updated");
                    applied = text;
                }
                Ok(Err(e)) => warn!(error = %e, "updating the service rules failed; retrying"),
                Err(e) => warn!(error = %e, "updating the service rules panicked"),
            }
        }
        // Wait for a relevant change (or a periodic resync).
        let deadline = tokio::time::sleep(Duration::from_secs(5));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                ev = events.recv() => match ev {
                    Ok(ev) if relevant(&ev.key) => {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        while events.try_recv().is_ok() {}
                        break;
                    }
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => break,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
                () = &mut deadline => break,
                () = crate::shutdown::requested(&mut stop) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_spread_hairpin_and_reject() {
        let rules = vec![
            ServiceRule {
                id: "default/web:http".into(),
                cluster_ip: Ipv4Addr::new(10, 96, 0, 5),
                port: 80,
                protocol: "tcp".into(),
                endpoints: vec![
                    (Ipv4Addr::new(10, 244, 0, 2), 8080),
                    (Ipv4Addr::new(10, 244, 0, 3), 8080),
                    (Ipv4Addr::new(10, 244, 0, 4), 8080),
                ],
            },
            ServiceRule {
                id: "default/empty:".into(),
                cluster_ip: Ipv4Addr::new(10, 96, 0, 6),
                port: 53,
                protocol: "udp".into(),
                endpoints: vec![],
            },
        ];
        let text = render(&rules, false);
        assert!(!text.contains("KUBESIM-MARK-MASQ\n-A KSVC"));
        assert!(render(&rules, true).contains("-j KUBESIM-MARK-MASQ\n-A KSVC"));
        assert!(text.contains("--probability 0.3333333333"), "{text}");
        assert!(text.contains("--probability 0.5000000000"), "{text}");
        assert_eq!(text.matches("DNAT --to-destination").count(), 3);
        assert!(text.contains("-s 10.244.0.2/32 -j KUBESIM-MARK-MASQ"));
        assert!(text.contains("-d 10.96.0.6/32 -p udp -m udp --dport 53"));
        assert!(text.contains("REJECT"));
        assert_eq!(text.matches("COMMIT").count(), 2);
    }
}
