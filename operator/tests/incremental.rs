//! Incremental compilation and delta pushes against full compiles, over random meshes and
//! random sequences of changes: after every change, for every sidecar,
//! - the shared part rebuilt from the previous one with [`changes`] equals a fresh compile;
//! - an own part the [`Changes`] say is untouched really is unchanged;
//! - the whole pushed config equals `compile()`, and the delta from the previous version,
//!   applied by the proxy's `ConfigDelta`, gives exactly the new config.

use std::collections::BTreeMap;
use std::sync::Arc;

use trellis_contract::{ConfigDelta, ProxyConfig};
use trellis_operator::compile::{Role, changes, compile, compile_workload, outbound_key, source_label_keys};
use trellis_operator::push::{OwnPart, Rendered, SharedDiffs, SharedOutbound};
use trellis_operator::registry::ObjectKey;
use trellis_operator::snapshot::Snapshot;

/// A small random mesh, kept as a model and rendered to YAML.
#[derive(Clone)]
struct Model {
    services: BTreeMap<(usize, usize), Svc>,
    pods: BTreeMap<(usize, usize), Pod>,
    virtual_services: BTreeMap<(usize, usize), String>,
    destination_rules: BTreeMap<(usize, usize), String>,
    /// `kubernetes.io/tls` Secrets `client-cert` by namespace: their content's generation.
    secrets: BTreeMap<usize, u8>,
    peer_auth: Option<&'static str>,
    trust_domain: &'static str,
}

#[derive(Clone)]
struct Svc {
    ip: u8,
    ports: Vec<(u16, &'static str)>,
}

#[derive(Clone)]
struct Pod {
    app: usize,
    version: &'static str,
    ready: bool,
    meshed: bool,
    ip: u16,
    role: &'static str,
}

const NAMESPACES: usize = 3;
const PORT_NAMES: [&str; 4] = ["http", "grpc", "tcp-db", "web"];

impl Model {
    fn random(rng: &mut fastrand::Rng) -> Model {
        let mut m = Model {
            services: BTreeMap::new(),
            pods: BTreeMap::new(),
            virtual_services: BTreeMap::new(),
            destination_rules: BTreeMap::new(),
            secrets: BTreeMap::from([(0, 0)]),
            peer_auth: None,
            trust_domain: "cluster.local",
        };
        for _ in 0..8 {
            m.add_service(rng);
        }
        for _ in 0..14 {
            m.add_pod(rng);
        }
        for _ in 0..4 {
            m.set_virtual_service(rng);
            m.set_destination_rule(rng);
        }
        m
    }

    fn add_service(&mut self, rng: &mut fastrand::Rng) {
        let key = (rng.usize(..NAMESPACES), rng.usize(..6));
        let ports = (0..rng.usize(1..3))
            .map(|i| {
                (
                    80 + i as u16 * 1000 + rng.u16(..3),
                    PORT_NAMES[rng.usize(..PORT_NAMES.len())],
                )
            })
            .collect::<BTreeMap<_, _>>()
            .into_iter()
            .collect();
        self.services.insert(
            key,
            Svc {
                ip: rng.u8(1..250),
                ports,
            },
        );
    }

    fn add_pod(&mut self, rng: &mut fastrand::Rng) {
        let key = (rng.usize(..NAMESPACES), rng.usize(..10));
        self.pods.insert(
            key,
            Pod {
                app: rng.usize(..6),
                version: if rng.bool() { "v1" } else { "v2" },
                ready: rng.u8(..4) > 0,
                meshed: rng.u8(..5) > 0,
                ip: rng.u16(1..60000),
                role: if rng.bool() { "client" } else { "batch" },
            },
        );
    }

    fn host(rng: &mut fastrand::Rng, ns: usize) -> String {
        match rng.u8(..6) {
            0 => format!(
                "svc-{}.ns-{}.svc.cluster.local",
                rng.usize(..6),
                rng.usize(..NAMESPACES)
            ),
            1 => "*.svc.cluster.local".into(),
            2 => format!("svc-{}.ns-{ns}.svc.cluster.local", rng.usize(..6)),
            _ => format!("svc-{}", rng.usize(..6)),
        }
    }

    fn set_virtual_service(&mut self, rng: &mut fastrand::Rng) {
        let (ns, name) = (rng.usize(..NAMESPACES), rng.usize(..4));
        let host = Self::host(rng, ns);
        let dest = format!("svc-{}", rng.usize(..6));
        let other = format!(
            "svc-{}.ns-{}.svc.cluster.local",
            rng.usize(..6),
            rng.usize(..NAMESPACES)
        );
        let source = if rng.u8(..4) == 0 {
            "      sourceLabels: {role: client}\n"
        } else {
            ""
        };
        let export = match rng.u8(..4) {
            0 => "  exportTo: [\".\"]\n",
            _ => "",
        };
        let yaml = format!(
            "apiVersion: networking.trellis.dev/v1alpha1\nkind: VirtualService\nmetadata: {{name: vs-{name}, namespace: ns-{ns}}}\nspec:\n  hosts: [\"{host}\"]\n{export}  http:\n  - match:\n    - headers: {{x-canary: {{exact: \"true\"}}}}\n{source}    route: [{{destination: {{host: {dest}, subset: v2}}}}]\n  - route:\n    - {{destination: {{host: {dest}, subset: v1}}, weight: {w}}}\n    - {{destination: {{host: {other}}}, weight: {rest}}}\n    timeout: {t}s\n  tcp:\n  - route: [{{destination: {{host: {dest}}}}}]\n",
            w = rng.u8(..=100),
            rest = 0,
            t = rng.u8(1..9),
        );
        // Weights must add up to 100.
        let yaml = fix_weights(&yaml);
        self.virtual_services.insert((ns, name), yaml);
    }

    fn set_destination_rule(&mut self, rng: &mut fastrand::Rng) {
        let (ns, name) = (rng.usize(..NAMESPACES), rng.usize(..4));
        let host = Self::host(rng, ns);
        let lb = ["ROUND_ROBIN", "LEAST_REQUEST", "RANDOM"][rng.usize(..3)];
        let tls = match rng.u8(..6) {
            0 => "    tls: {mode: DISABLE}\n",
            1 => "    tls: {mode: MUTUAL, credentialName: client-cert}\n",
            2 => "    tls: {mode: SIMPLE, credentialName: client-cert, sni: db.example.com}\n",
            3 => "    portLevelSettings: [{port: {number: 1080}, tls: {mode: MUTUAL, credentialName: client-cert}}]\n",
            _ => "",
        };
        // A pool is on the inbound clusters of the host's pods too (their own parts).
        let pool = match rng.u8(..3) {
            0 => format!("    connectionPool: {{tcp: {{maxConnections: {}}}}}\n", rng.u32(1..100)),
            _ => String::new(),
        };
        let yaml = format!(
            "apiVersion: networking.trellis.dev/v1alpha1\nkind: DestinationRule\nmetadata: {{name: dr-{name}, namespace: ns-{ns}}}\nspec:\n  host: \"{host}\"\n  trafficPolicy:\n    loadBalancer: {{simple: {lb}}}\n{tls}{pool}  subsets:\n  - {{name: v1, labels: {{version: v1}}}}\n  - {{name: v2, labels: {{version: v2}}}}\n"
        );
        self.destination_rules.insert((ns, name), yaml);
    }

    /// One random change.
    fn mutate(&mut self, rng: &mut fastrand::Rng) {
        match rng.u8(..14) {
            0..=2 => self.set_virtual_service(rng),
            3 => {
                let k = *self
                    .virtual_services
                    .keys()
                    .nth(rng.usize(..self.virtual_services.len().max(1)))
                    .unwrap_or(&(0, 0));
                self.virtual_services.remove(&k);
            }
            4 | 5 => self.set_destination_rule(rng),
            6 => {
                let k = *self
                    .destination_rules
                    .keys()
                    .nth(rng.usize(..self.destination_rules.len().max(1)))
                    .unwrap_or(&(0, 0));
                self.destination_rules.remove(&k);
            }
            7 => self.add_service(rng),
            8 => {
                let k = *self
                    .services
                    .keys()
                    .nth(rng.usize(..self.services.len().max(1)))
                    .unwrap_or(&(0, 0));
                self.services.remove(&k);
            }
            9 | 10 => self.add_pod(rng),
            11 => {
                let i = rng.usize(..self.pods.len().max(1));
                if let Some(p) = self.pods.values_mut().nth(i) {
                    match rng.u8(..4) {
                        0 => p.ready = !p.ready,
                        1 => p.version = if p.version == "v1" { "v2" } else { "v1" },
                        2 => p.role = if p.role == "client" { "batch" } else { "client" },
                        _ => p.ip = rng.u16(1..60000),
                    }
                }
            }
            12 => {
                let k = *self
                    .pods
                    .keys()
                    .nth(rng.usize(..self.pods.len().max(1)))
                    .unwrap_or(&(0, 0));
                self.pods.remove(&k);
            }
            _ => match rng.u8(..5) {
                3 => {
                    // A client certificate Secret appears, is rotated or goes away.
                    let ns = rng.usize(..NAMESPACES);
                    match self.secrets.get(&ns) {
                        Some(_) if rng.bool() => {
                            self.secrets.remove(&ns);
                        }
                        generation => {
                            self.secrets.insert(ns, generation.map_or(0, |g| g.wrapping_add(1)));
                        }
                    }
                }
                0 => self.peer_auth = [None, Some("STRICT"), Some("PERMISSIVE")][rng.usize(..3)],
                1 => self.trust_domain = ["cluster.local", "example.org"][rng.usize(..2)],
                _ => {}
            },
        }
    }

    fn yaml(&self) -> String {
        let mut y = String::new();
        for n in 0..NAMESPACES {
            y.push_str(&format!(
                "---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: ns-{n}}}\n"
            ));
        }
        for ((ns, s), svc) in &self.services {
            let ports: Vec<String> = svc
                .ports
                .iter()
                .map(|(p, name)| format!("{{name: {name}, port: {p}, targetPort: {}}}", p + 8000))
                .collect();
            y.push_str(&format!(
                "---\napiVersion: v1\nkind: Service\nmetadata: {{name: svc-{s}, namespace: ns-{ns}}}\nspec:\n  clusterIP: 10.96.{ns}.{}\n  selector: {{app: svc-{s}}}\n  ports: [{}]\n",
                svc.ip,
                ports.join(", ")
            ));
        }
        for ((ns, p), pod) in &self.pods {
            let init = if pod.meshed {
                "  initContainers: [{name: trellis-proxy, image: trellis-proxy, restartPolicy: Always}]\n"
            } else {
                ""
            };
            y.push_str(&format!(
                "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: pod-{p}, namespace: ns-{ns}, labels: {{app: svc-{}, version: {}, role: {}}}}}\nspec:\n  serviceAccountName: sa-{}\n{init}  containers: [{{name: app, image: app}}]\nstatus: {{podIP: 10.244.{}.{}, phase: Running, conditions: [{{type: Ready, status: \"{}\"}}]}}\n",
                pod.app,
                pod.version,
                pod.role,
                pod.app,
                pod.ip / 250,
                pod.ip % 250 + 1,
                if pod.ready { "True" } else { "False" }
            ));
        }
        for v in self.virtual_services.values().chain(self.destination_rules.values()) {
            y.push_str("---\n");
            y.push_str(v);
        }
        for (ns, generation) in &self.secrets {
            y.push_str(&format!(
                "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: client-cert, namespace: ns-{ns}}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: \"-----BEGIN CERTIFICATE-----\\nleaf{generation}\\n-----END CERTIFICATE-----\\n\"\n  tls.key: \"-----BEGIN PRIVATE KEY-----\\nkey{generation}\\n-----END PRIVATE KEY-----\\n\"\n  ca.crt: \"-----BEGIN CERTIFICATE-----\\nca{generation}\\n-----END CERTIFICATE-----\\n\"\n"
            ));
        }
        if let Some(mode) = self.peer_auth {
            y.push_str(&format!(
                "---\napiVersion: security.trellis.dev/v1alpha1\nkind: PeerAuthentication\nmetadata: {{name: default, namespace: ns-0}}\nspec: {{mtls: {{mode: {mode}}}}}\n"
            ));
        }
        y.push_str(&format!(
            "---\napiVersion: mesh.trellis.dev/v1alpha1\nkind: Mesh\nmetadata: {{name: default}}\nspec: {{trustDomain: {}}}\n",
            self.trust_domain
        ));
        y
    }
}

fn fix_weights(yaml: &str) -> String {
    let w: u32 = yaml
        .split("weight: ")
        .nth(1)
        .and_then(|s| s.split('}').next())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100);
    yaml.replacen("weight: 0}", &format!("weight: {}}}", 100 - w), 1)
}

fn sidecars(s: &Snapshot) -> Vec<ObjectKey> {
    s.registry.workloads.keys().cloned().collect()
}

fn full(s: &Snapshot, pod: &ObjectKey, version: &str) -> ProxyConfig {
    compile(s, pod, Role::Sidecar, version).unwrap().config
}

#[test]
fn incremental_parts_and_deltas_equal_full_compiles() {
    let seeds: Vec<u64> = match std::env::var("TRELLIS_SEED") {
        Ok(s) => vec![s.parse().unwrap()],
        Err(_) => (1..=12).collect(),
    };
    let (mut deltas, mut reused_own, mut updated) = (0, 0, 0);
    for seed in seeds {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut model = Model::random(&mut rng);
        let mut old = Snapshot::from_yaml(&model.yaml()).unwrap();
        // What the operator holds per sidecar: its shared part and rendered config.
        let diffs = SharedDiffs::default();
        let mut shared_by_pod: BTreeMap<ObjectKey, Arc<SharedOutbound>> = BTreeMap::new();
        let mut held: BTreeMap<ObjectKey, (Rendered, ProxyConfig)> = BTreeMap::new();
        for pod in sidecars(&old) {
            let shared = Arc::new(SharedOutbound::compile(&old, &pod).unwrap());
            let own = Arc::new(OwnPart::new(
                compile_workload(&old, &pod, Role::Sidecar, "").unwrap().config,
            ));
            let r = Rendered::new(own, Some(shared.clone()), "");
            let config = full(&old, &pod, &r.version);
            shared_by_pod.insert(pod.clone(), shared);
            held.insert(pod, (r, config));
        }
        for step in 0..25 {
            model.mutate(&mut rng);
            let new = Snapshot::from_yaml(&model.yaml()).unwrap();
            let c = changes(&old, &new);
            let ctx = format!("seed {seed} step {step} (rerun with TRELLIS_SEED={seed})");
            let keys_old = source_label_keys(&old);
            let keys_new = source_label_keys(&new);
            for pod in sidecars(&new) {
                let fresh = SharedOutbound::compile(&new, &pod).unwrap();
                // The incremental path needs the previous part of the same sharing key.
                let prev = shared_by_pod.get(&pod).filter(|_| {
                    old.registry.workloads.contains_key(&pod)
                        && outbound_key(&old, &pod, &keys_old).ok() == outbound_key(&new, &pod, &keys_new).ok()
                });
                let shared = match prev {
                    Some(p) => {
                        updated += 1;
                        let u = p.update(&new, &pod, &c).unwrap();
                        assert!(
                            u == fresh,
                            "{ctx}: incremental shared part of {pod} differs from a fresh compile"
                        );
                        Arc::new(u)
                    }
                    None => Arc::new(fresh),
                };
                let own_new = compile_workload(&new, &pod, Role::Sidecar, "").unwrap().config;
                if old.registry.workloads.contains_key(&pod) && !c.own_changed(&pod) {
                    reused_own += 1;
                    let own_old = compile_workload(&old, &pod, Role::Sidecar, "").unwrap().config;
                    assert_eq!(
                        own_old, own_new,
                        "{ctx}: own part of {pod} changed but Changes said not"
                    );
                }
                let r = Rendered::new(Arc::new(OwnPart::new(own_new)), Some(shared.clone()), "");
                let expected = full(&new, &pod, &r.version);
                let whole: ProxyConfig = serde_json::from_slice(&r.full()).unwrap();
                assert_eq!(whole, expected, "{ctx}: whole config of {pod}");
                if let Some((base, base_config)) = held.get(&pod)
                    && base.version != r.version
                {
                    let json = r.delta(base, &diffs).expect("sidecar to sidecar always has a delta");
                    let delta: ConfigDelta = serde_json::from_slice(&json)
                        .unwrap_or_else(|e| panic!("{ctx}: delta of {pod} does not parse: {e}"));
                    let applied = delta
                        .apply(base_config)
                        .unwrap_or_else(|e| panic!("{ctx}: delta of {pod} does not apply: {e}"));
                    assert_eq!(applied, expected, "{ctx}: delta of {pod}");
                    assert!(
                        json.len() <= r.full().len() + 64,
                        "{ctx}: a delta is never much bigger than the whole"
                    );
                    deltas += 1;
                }
                shared_by_pod.insert(pod.clone(), shared);
                held.insert(pod, (r, expected));
            }
            held.retain(|k, _| new.registry.workloads.contains_key(k));
            shared_by_pod.retain(|k, _| new.registry.workloads.contains_key(k));
            old = new;
        }
    }
    // The random changes exercised every path.
    assert!(deltas > 200, "only {deltas} deltas checked");
    assert!(reused_own > 200, "only {reused_own} reused own parts checked");
    assert!(updated > 500, "only {updated} incremental updates checked");
}

#[test]
fn a_virtual_service_change_sends_only_its_virtual_host() {
    let mut rng = fastrand::Rng::with_seed(7);
    let mut model = Model::random(&mut rng);
    model.virtual_services.clear();
    model.services.insert(
        (0, 0),
        Svc {
            ip: 9,
            ports: vec![(80, "http")],
        },
    );
    model.pods.insert(
        (0, 0),
        Pod {
            app: 0,
            version: "v1",
            ready: true,
            meshed: true,
            ip: 77,
            role: "client",
        },
    );
    let old = Snapshot::from_yaml(&model.yaml()).unwrap();
    model.virtual_services.insert(
        (0, 0),
        "apiVersion: networking.trellis.dev/v1alpha1\nkind: VirtualService\nmetadata: {name: vs-0, namespace: ns-0}\nspec:\n  hosts: [svc-0]\n  http: [{route: [{destination: {host: svc-0}}], timeout: 2s}]\n".into(),
    );
    let new = Snapshot::from_yaml(&model.yaml()).unwrap();
    let pod = ObjectKey::new("ns-0", "pod-0");
    let c = changes(&old, &new);
    let own = Arc::new(OwnPart::new(
        compile_workload(&old, &pod, Role::Sidecar, "").unwrap().config,
    ));
    let before = Arc::new(SharedOutbound::compile(&old, &pod).unwrap());
    let after = Arc::new(before.update(&new, &pod, &c).unwrap());
    let (a, b) = (
        Rendered::new(own.clone(), Some(before), ""),
        Rendered::new(own, Some(after), ""),
    );
    let json = b.delta(&a, &SharedDiffs::default()).unwrap();
    let delta: serde_json::Value = serde_json::from_slice(&json).unwrap();
    let patch = &delta["listenerPatches"][0];
    assert_eq!(patch["name"], "outbound");
    assert_eq!(patch["virtualHosts"].as_array().unwrap().len(), 1, "{delta:#}");
    assert_eq!(patch["virtualHosts"][0]["name"], "svc-0.ns-0.svc.cluster.local:80");
    assert!(
        delta.get("clusters").is_none() && delta.get("dnsEntries").is_none(),
        "{delta:#}"
    );
    assert!(
        json.len() * 10 < b.full().len(),
        "delta {} bytes vs whole {}",
        json.len(),
        b.full().len()
    );
}
