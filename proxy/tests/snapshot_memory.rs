//! The heap a proxy's compiled configuration holds (issue 14: a proxy holding the scoped config
//! of a 1000-service mesh stays under 30 MiB of RSS). Counted by dhat's allocator, which sees
//! every allocation of this test binary (its own binary: the counting slows every allocation).
//!
//! The config has the shape of the convergence benchmark's with a Sidecar per namespace
//! (`operator/benches/README.md`): 200 mesh services of 10 endpoints, 20 of them with two
//! subsets of 5, a virtual host per service with its 5 domains, and the DNS table.

use serde_json::{Value, json};
use trellis_contract::ProxyConfig;
use trellis_proxy::snapshot::Snapshot;

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

const SERVICES: usize = 200;
const PODS: usize = 10;
const WITH_SUBSETS: usize = 20;

/// The heap a [`Snapshot`] of [`sidecar_config`] may hold, in KiB. Measured 2026-12-06 with this
/// test: 11 620 KiB before the mesh client configs shared their certificate and sized their
/// session caches for one server name; 8 075 KiB after; 4 855 KiB once each cluster's
/// definition was kept once (not in the config, the cluster and each endpoint).
const BUDGET_KIB: usize = 5_200;

fn spiffe(ns: usize, svc: usize) -> String {
    format!("spiffe://cluster.local/ns/ns-{ns}/sa/svc-{svc}")
}

fn cluster(name: String, host: &str, subset: Option<&str>, ns: usize, svc: usize, pods: &[usize]) -> Value {
    let endpoints: Vec<Value> = pods
        .iter()
        .map(|p| {
            json!({
                "address": format!("10.{}.{}.{}", svc / 250, svc % 250, p + 1), "port": 8080,
                "labels": {"app": format!("svc-{svc}"), "namespace": format!("ns-{ns}"),
                           "version": if p % 2 == 0 { "v1" } else { "v2" }, "workload": format!("svc-{svc}-{p}")},
                "identity": spiffe(ns, svc),
            })
        })
        .collect();
    json!({
        "name": name, "service": host, "subset": subset, "protocol": "http1",
        "loadBalancer": {"policy": "leastRequest"}, "panicThresholdPercent": 50.0,
        "tls": {"mesh": {"expectedIdentities": [spiffe(ns, svc)]}},
        "endpoints": endpoints,
        "provenance": {"kind": "Service", "namespace": format!("ns-{ns}"), "name": format!("svc-{svc}")},
    })
}

/// A sidecar's config holding [`SERVICES`] services, with an inline workload identity.
fn sidecar_config(cert_pem: &str, key_pem: &str, root_pem: &str) -> ProxyConfig {
    let (mut clusters, mut vhosts, mut dns) = (Vec::new(), Vec::new(), Vec::new());
    for svc in 0..SERVICES {
        let ns = svc % 2;
        let short = format!("svc-{svc}");
        let host = format!("{short}.ns-{ns}.svc.cluster.local");
        let all: Vec<usize> = (0..PODS).collect();
        let main = format!("outbound|80||{host}");
        clusters.push(cluster(main.clone(), &host, None, ns, svc, &all));
        if svc < WITH_SUBSETS {
            for (subset, parity) in [("v1", 0), ("v2", 1)] {
                let pods: Vec<usize> = all.iter().copied().filter(|p| p % 2 == parity).collect();
                clusters.push(cluster(
                    format!("outbound|80|{subset}|{host}"),
                    &host,
                    Some(subset),
                    ns,
                    svc,
                    &pods,
                ));
            }
        }
        let vip = format!("10.96.{}.{}", svc / 250, svc % 250 + 1);
        let domains = [
            &short,
            &format!("{short}.ns-{ns}"),
            &format!("{short}.ns-{ns}.svc"),
            &host,
            &vip,
        ];
        vhosts.push(json!({
            "name": format!("{host}:80"),
            "domains": domains.iter().map(|d| format!("{d}:80")).collect::<Vec<_>>(),
            "routes": [{"name": "default", "action": {"forward": {"clusters": [{"cluster": main}]}},
                        "provenance": {"kind": "Service", "namespace": format!("ns-{ns}"), "name": short}}],
        }));
        dns.push(json!({"hostname": host, "aliases": &domains[..3], "addresses": [vip]}));
    }
    serde_json::from_value(json!({
        "version": "memory",
        "node": {"workload": "svc-0", "namespace": "ns-0", "app": "svc-0", "version": "v1"},
        "identity": {
            "trustDomain": "cluster.local", "spiffeId": spiffe(0, 0),
            "certificate": {"inline": {"certChainPem": cert_pem, "privateKeyPem": key_pem}},
            "trustBundle": {"inline": root_pem},
        },
        "listeners": [{
            "name": "outbound", "address": "127.0.0.1:0", "direction": "outbound", "protocol": "http",
            "virtualHosts": vhosts,
        }],
        "clusters": clusters,
        "dns": {"entries": dns},
    }))
    .expect("the generated config parses")
}

/// A root and a leaf for `spiffe://cluster.local/ns/ns-0/sa/svc-0`: (leaf, key, root) PEM.
fn identity() -> (String, String, String) {
    let mut root = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    root.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    root.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    let root_key = rcgen::KeyPair::generate().unwrap();
    let root_cert = root.self_signed(&root_key).unwrap();
    let issuer = rcgen::Issuer::new(root, root_key);
    let mut leaf = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    leaf.subject_alt_names = vec![rcgen::SanType::URI(spiffe(0, 0).as_str().try_into().unwrap())];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    (cert.pem(), key.serialize_pem(), root_cert.pem())
}

#[test]
fn a_sidecar_holding_200_services_stays_within_its_heap_budget() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let (cert, key, root) = identity();
    let before = dhat::HeapStats::get().curr_bytes;
    let snapshot = Snapshot::build(sidecar_config(&cert, &key, &root), None).expect("the config applies");
    let held_kib = (dhat::HeapStats::get().curr_bytes - before) / 1024;
    assert_eq!(snapshot.clusters.len(), SERVICES + 2 * WITH_SUBSETS);
    eprintln!("a snapshot of {SERVICES} services holds {held_kib} KiB of heap (budget {BUDGET_KIB} KiB)");
    assert!(
        held_kib <= BUDGET_KIB,
        "a snapshot of {SERVICES} services holds {held_kib} KiB of heap, over its budget of {BUDGET_KIB} KiB"
    );
}
