//! The config compiler: one pure function from a [`Snapshot`] to the configuration of one
//! proxy, in the contract the proxy consumes.
//!
//! # Guarantees
//! - Pure and deterministic: the same snapshot and proxy give the same bytes (inputs are
//!   ordered by key; resources by creation time, then namespace and name).
//! - Every route records its provenance: the VirtualService and rule index that produced it.
//! - Problems that do not stop compilation (conflicting VirtualServices, unknown hosts,
//!   features the proxy lacks) come back as [`Diagnostic`]s, never silently.
//!
//! # Caveats
//! - Endpoints come from the Services' EndpointSlices, read as Istio reads them (ready ones,
//!   with the metadata of the pods they name; see [`crate::registry`]).

mod changes;
mod cluster;
mod diagnose;
mod dropped;
mod gateway;
mod inbound;
mod outbound;
pub(crate) mod policy;
mod route;
mod scope;
mod service_entry;
mod virtual_services;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use trellis_contract::{
    CertificateRef, Cluster, DnsConfig, DnsEntry, IdentityConfig, Listener, NodeInfo, OtlpProtocol, PemSource,
    ProxyConfig, ProxyMode, Telemetry, Tracing,
};

pub use changes::{Changes, changes};
pub use cluster::destination_rule_for;
pub use diagnose::diagnose;
pub use dropped::Dropped;
pub use outbound::PortRoutes;
pub use route::ClusterRef;
pub(crate) use route::applies_to_gateway;

pub use crate::code::Code;
use crate::code::Level;
pub(crate) use crate::registry::visible;
use crate::registry::{ObjectKey, Service, ServicePort, Workload};
use crate::snapshot::Snapshot;

/// The cluster DNS domain services resolve under.
pub const DNS_DOMAIN: &str = "cluster.local";
/// The sidecar's outbound listener port.
pub const OUTBOUND_PORT: u16 = 15001;
/// The sidecar's inbound listener port.
pub const INBOUND_PORT: u16 = 15006;
/// Where a proxy keeps the workload certificate it obtained from the mesh CA (its key never
/// leaves the proxy, so the pushed config only points at it).
pub const WORKLOAD_CERT_CHAIN: &str = "/var/run/trellis/identity/cert-chain.pem";
/// The workload certificate's private key, written by the proxy itself.
pub const WORKLOAD_KEY: &str = "/var/run/trellis/identity/key.pem";
/// The mesh trust bundle (one or more roots) the proxy holds.
pub const TRUST_BUNDLE: &str = "/var/run/trellis/identity/root-certs.pem";

/// What kind of proxy is being compiled for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Beside a workload.
    Sidecar,
    /// An ingress gateway.
    Gateway,
}

/// How bad a diagnostic is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Configuration was dropped or cannot work as written.
    Error,
    /// Configuration works, but probably not as intended.
    Warning,
}

/// Something the compiler noticed about the inputs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct Diagnostic {
    /// Error or warning: the code's level (the compiler uses no Info codes).
    pub severity: Severity,
    /// The problem's code in the one list ([`crate::code`]), as `meshctl analyze` and the
    /// operator's status conditions report it.
    pub code: Code,
    /// The resource, e.g. `VirtualService shop/payment`.
    pub resource: String,
    /// What happened and how to fix it.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{sev}: {}: {}", self.resource, self.message)
    }
}

/// The result of compiling one proxy's configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Compiled {
    /// The configuration to push.
    pub config: ProxyConfig,
    /// What the compiler noticed, sorted.
    pub diagnostics: Vec<Diagnostic>,
}

/// Why a configuration could not be compiled at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    /// The proxy's pod is not in the registry.
    #[error("pod {0} is not known to the registry; is it running, and in a namespace the operator watches?")]
    UnknownPod(ObjectKey),
}

/// Shared state of one compilation.
pub(crate) struct Ctx<'a> {
    pub(crate) snapshot: &'a Snapshot,
    pub(crate) proxy: &'a Workload,
    /// What the proxy can reach (its Sidecar's); everything for gateways and analysis.
    pub(crate) scope: scope::Scope,
    pub(crate) trust_domain: String,
    /// The trust domain with its aliases (the Mesh's and, during a change, the previous one).
    pub(crate) trust_domains: trellis_contract::TrustDomains,
    pub(crate) diagnostics: Vec<Diagnostic>,
}

impl Ctx<'_> {
    pub(crate) fn diag(&mut self, code: Code, resource: impl Into<String>, message: impl Into<String>) {
        let severity = match code.level() {
            Level::Error => Severity::Error,
            Level::Warning | Level::Info => Severity::Warning,
        };
        let d = Diagnostic {
            severity,
            code,
            resource: resource.into(),
            message: message.into(),
        };
        if !self.diagnostics.contains(&d) {
            self.diagnostics.push(d);
        }
    }

    /// A construct dropped or ignored instead of compiled (see [`Dropped`]); `message` names
    /// its field and what happens instead.
    pub(crate) fn dropped(&mut self, what: Dropped, resource: impl Into<String>, message: impl Into<String>) {
        let message = message.into();
        debug_assert!(message.contains(what.field()), "{message:?} must name {}", what.field());
        self.diag(what.code(), resource, message);
    }
}

/// Every host the snapshot's ServiceEntries declare (resolved as Istio resolves them), in
/// whichever namespace they are visible: the hosts besides the Services' that exist.
pub fn entry_hosts(snapshot: &Snapshot) -> Vec<String> {
    service_entry::all_hosts(snapshot)
}

/// Compile the configuration of the proxy in `pod`.
pub fn compile(snapshot: &Snapshot, pod: &ObjectKey, role: Role, version: &str) -> Result<Compiled, CompileError> {
    let mut compiled = compile_workload(snapshot, pod, role, version)?;
    if role == Role::Sidecar {
        let outbound = compile_outbound(snapshot, pod)?;
        outbound.merge_into(&mut compiled);
    }
    Ok(compiled)
}

/// What decides a sidecar's outbound configuration besides the snapshot: its namespace
/// (visibility, `exportTo`, short names, DestinationRule lookup), the Sidecar that applies to
/// it (what it can reach) and the labels that some VirtualService's `sourceLabels` look at. Proxies with the same key get the same
/// [`Outbound`], so it is compiled and serialized once per key, not once per proxy.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OutboundKey {
    /// The proxy's namespace.
    pub namespace: String,
    /// The proxy's values of the label keys `sourceLabels` matches use.
    pub labels: BTreeMap<String, String>,
    /// The Sidecar that applies to the proxy, if any.
    pub sidecar: Option<ObjectKey>,
}

/// The label keys any VirtualService's `sourceLabels` (HTTP, TLS or TCP) looks at.
pub fn source_label_keys(snapshot: &Snapshot) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    for vs in &snapshot.virtual_services {
        let spec = &vs.spec;
        let http = spec.http.iter().flatten().flat_map(|r| r.matches.iter().flatten());
        let tls = spec.tls.iter().flatten().flat_map(|r| r.matches.iter());
        let tcp = spec.tcp.iter().flatten().flat_map(|r| r.matches.iter().flatten());
        for labels in http
            .filter_map(|m| m.source_labels.as_ref())
            .chain(tls.filter_map(|m| m.source_labels.as_ref()))
            .chain(tcp.filter_map(|m| m.source_labels.as_ref()))
        {
            keys.extend(labels.keys().cloned());
        }
    }
    keys
}

/// The sharing key of the sidecar in `pod`, given the snapshot's [`source_label_keys`].
pub fn outbound_key(
    snapshot: &Snapshot,
    pod: &ObjectKey,
    source_label_keys: &BTreeSet<String>,
) -> Result<OutboundKey, CompileError> {
    let proxy = snapshot
        .registry
        .workloads
        .get(pod)
        .ok_or_else(|| CompileError::UnknownPod(pod.clone()))?;
    Ok(OutboundKey {
        namespace: proxy.key.namespace.clone(),
        labels: proxy
            .labels
            .iter()
            .filter(|(k, _)| source_label_keys.contains(*k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        sidecar: scope::applying(snapshot, proxy).map(|s| {
            ObjectKey::new(
                s.metadata.namespace.as_deref().unwrap_or("default"),
                s.metadata.name.as_deref().unwrap_or_default(),
            )
        }),
    })
}

/// The part of a sidecar's configuration shared by every proxy with the same
/// [`OutboundKey`]: the outbound listener, the clusters it references, and DNS.
#[derive(Debug, Clone, PartialEq)]
pub struct Outbound {
    /// The `outbound` listener.
    pub listener: Listener,
    /// The clusters its routes reference, sorted by name.
    pub clusters: Vec<Cluster>,
    /// The names the DNS proxy answers.
    pub dns: DnsConfig,
    /// What the compiler noticed while building it.
    pub diagnostics: Vec<Diagnostic>,
}

impl Outbound {
    /// Add the shared part to a sidecar's own part ([`compile_workload`]): the outbound
    /// listener first, clusters merged in name order, DNS, diagnostics sorted.
    pub fn merge_into(&self, compiled: &mut Compiled) {
        let config = &mut compiled.config;
        config.listeners.insert(0, self.listener.clone());
        let mut clusters: BTreeMap<String, Cluster> =
            self.clusters.iter().map(|c| (c.name.clone(), c.clone())).collect();
        for c in std::mem::take(&mut config.clusters) {
            clusters.insert(c.name.clone(), c);
        }
        config.clusters = clusters.into_values().collect();
        config.dns = self.dns.clone();
        for d in &self.diagnostics {
            if !compiled.diagnostics.contains(d) {
                compiled.diagnostics.push(d.clone());
            }
        }
        compiled.diagnostics.sort();
    }
}

/// Compile the shared part of the configuration of the sidecar in `pod` (see [`Outbound`]).
pub fn compile_outbound(snapshot: &Snapshot, pod: &ObjectKey) -> Result<Outbound, CompileError> {
    let mut ctx = Ctx::new(snapshot, pod)?;
    let mut clusters: BTreeMap<String, Cluster> = BTreeMap::new();
    let listener = outbound::listener(&mut ctx, &mut clusters);
    let dns = dns(&ctx);
    let mut diagnostics = ctx.diagnostics;
    diagnostics.sort();
    Ok(Outbound {
        listener,
        clusters: clusters.into_values().collect(),
        dns,
        diagnostics,
    })
}

/// Compiles a sidecar's [`Outbound`] one part at a time, so the push can reuse the parts a
/// change did not touch ([`Changes`]); [`compile_outbound`] is the same parts put together.
pub struct OutboundParts<'a> {
    ctx: Ctx<'a>,
}

impl fmt::Debug for OutboundParts<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutboundParts")
            .field("proxy", &self.ctx.proxy.key)
            .finish_non_exhaustive()
    }
}

impl<'a> OutboundParts<'a> {
    /// Parts for the sidecar in `pod` (its namespace and `sourceLabels`-relevant labels).
    pub fn new(snapshot: &'a Snapshot, pod: &ObjectKey) -> Result<Self, CompileError> {
        Ok(OutboundParts {
            ctx: Ctx::new(snapshot, pod)?,
        })
    }

    /// The ports of `svc` the sidecar routes (its Sidecar's egress hosts), each with the
    /// protocol it is routed as (the egress listener's, where it names the port).
    pub fn service_ports(&self, svc: &Service) -> Vec<ServicePort> {
        scoped_ports(&self.ctx, svc)
    }

    /// The virtual host and TCP route of one Service port, and the clusters they reference.
    pub fn port_routes(&mut self, svc: &Service, port: &ServicePort) -> PortRoutes {
        outbound::port_routes(&mut self.ctx, svc, port)
    }

    /// The cluster a route references.
    pub fn cluster(&mut self, r: &ClusterRef) -> Cluster {
        cluster::build(&mut self.ctx, r)
    }

    /// The DNS entry of a Service (none without a cluster IP, or out of the sidecar's scope).
    pub fn dns_entry(&self, svc: &Service) -> Option<DnsEntry> {
        scoped_dns_entry(&self.ctx, svc)
    }

    /// What the compiler noticed while building the parts asked for so far.
    pub fn diagnostics(&self) -> &[Diagnostic] {
        &self.ctx.diagnostics
    }

    /// The virtual hosts and TCP routes of every ServiceEntry host visible to the sidecar, and
    /// the clusters they reference.
    pub fn entry_routes(&mut self) -> Vec<PortRoutes> {
        outbound::entry_routes(&mut self.ctx)
    }

    /// The DNS entries of the ServiceEntry hosts visible to the sidecar (names with addresses).
    pub fn entry_dns(&self) -> Vec<DnsEntry> {
        service_entry::dns_entries(&self.ctx)
    }

    /// The outbound listener without virtual hosts and TCP routes, under the mesh's
    /// `outboundTrafficPolicy`.
    pub fn shell(&self) -> Listener {
        outbound::outbound_shell(&self.ctx)
    }
}

/// Compile what is the proxy's own: node, identity, telemetry and, for a sidecar, its inbound
/// listener, clusters and policy (a gateway's whole configuration). A sidecar's
/// [`Outbound`] is added by [`Outbound::merge_into`].
pub fn compile_workload(
    snapshot: &Snapshot,
    pod: &ObjectKey,
    role: Role,
    version: &str,
) -> Result<Compiled, CompileError> {
    let mut ctx = Ctx::new(snapshot, pod)?;
    let proxy = ctx.proxy;
    let mut config = ProxyConfig::empty(version);
    config.mode = match role {
        Role::Sidecar => ProxyMode::Sidecar,
        Role::Gateway => ProxyMode::Gateway,
    };
    config.node = node_info(proxy);
    config.identity = IdentityConfig {
        trust_domain: ctx.trust_domain.clone(),
        trust_domain_aliases: ctx.trust_domains.aliases().to_vec(),
        spiffe_id: Some(proxy.spiffe_id(&ctx.trust_domain).to_string()),
        certificate: Some(CertificateRef::Files {
            cert_chain_file: WORKLOAD_CERT_CHAIN.into(),
            private_key_file: WORKLOAD_KEY.into(),
        }),
        trust_bundle: Some(if snapshot.trust_bundle.is_empty() {
            PemSource::File(TRUST_BUNDLE.into())
        } else {
            PemSource::Inline(snapshot.trust_bundle.concat())
        }),
    };
    let mut clusters: BTreeMap<String, Cluster> = BTreeMap::new();
    match role {
        Role::Sidecar => {
            let (listener, inbound_clusters, policy) = inbound::sidecar(&mut ctx);
            config.listeners.push(listener);
            clusters.extend(inbound_clusters.into_iter().map(|c| (c.name.clone(), c)));
            config.inbound = policy;
        }
        Role::Gateway => {
            config.listeners = gateway::gateway_listeners(&mut ctx, &mut clusters);
            // Istio applies AuthorizationPolicies at gateways too (mTLS stays the listeners').
            config.inbound.authorization = inbound::authorization(&mut ctx, Role::Gateway);
            config.inbound.jwt = inbound::request_authentication(&mut ctx, Role::Gateway);
        }
    }
    config.clusters = clusters.into_values().collect();
    config.telemetry = telemetry(&ctx);
    let mut diagnostics = ctx.diagnostics;
    diagnostics.sort();
    Ok(Compiled { config, diagnostics })
}

impl<'a> Ctx<'a> {
    fn new(snapshot: &'a Snapshot, pod: &ObjectKey) -> Result<Self, CompileError> {
        let proxy = snapshot
            .registry
            .workloads
            .get(pod)
            .ok_or_else(|| CompileError::UnknownPod(pod.clone()))?;
        let mut ctx = Ctx::of(snapshot, proxy);
        ctx.scope = scope::Scope::of(snapshot, proxy);
        Ok(ctx)
    }

    /// The context of compiling `proxy`'s configuration from `snapshot`, as if no Sidecar
    /// applied to it (analysis compiles each resource where it applies).
    pub(crate) fn of(snapshot: &'a Snapshot, proxy: &'a Workload) -> Self {
        let trust_domains = snapshot.trust_domains();
        Ctx {
            snapshot,
            proxy,
            scope: scope::Scope::default(),
            trust_domain: trust_domains.domain().to_string(),
            trust_domains,
            diagnostics: Vec::new(),
        }
    }
}

fn node_info(w: &Workload) -> NodeInfo {
    let label = |k: &str| w.labels.get(k).cloned().unwrap_or_default();
    NodeInfo {
        id: format!("{}.{}", w.key.name, w.key.namespace),
        workload: workload_name(w),
        namespace: w.key.namespace.clone(),
        app: w
            .labels
            .get("app")
            .or_else(|| w.labels.get("app.kubernetes.io/name"))
            .cloned()
            .unwrap_or_default(),
        version: {
            let v = label("version");
            if v.is_empty() {
                label("app.kubernetes.io/version")
            } else {
                v
            }
        },
        service_account: w.service_account.clone(),
        cluster: "Kubernetes".into(),
        labels: w.labels.clone(),
    }
}

/// The workload (Deployment) name of a pod: its name without the ReplicaSet and pod hashes,
/// as Istio derives it.
pub fn workload_name(w: &Workload) -> String {
    let name = &w.key.name;
    if let Some(hash) = w.labels.get("pod-template-hash")
        && let Some(idx) = name.find(&format!("-{hash}-"))
    {
        return name[..idx].to_string();
    }
    name.clone()
}

/// Names the sidecar's DNS proxy answers: every Service with a cluster IP and every visible
/// ServiceEntry host with addresses that its scope imports, sorted by name.
fn dns(ctx: &Ctx<'_>) -> DnsConfig {
    let mut entries: Vec<DnsEntry> = ctx
        .snapshot
        .registry
        .services
        .values()
        .filter_map(|svc| scoped_dns_entry(ctx, svc))
        .collect();
    entries.extend(service_entry::dns_entries(ctx));
    entries.sort_by(|a, b| a.hostname.cmp(&b.hostname));
    DnsConfig {
        entries,
        upstreams: Vec::new(),
    }
}

/// The ports of `svc` the proxy's scope routes, with the protocol each is routed as: none
/// when the Service is not exported to the proxy's namespace.
pub(crate) fn scoped_ports(ctx: &Ctx<'_>, svc: &Service) -> Vec<ServicePort> {
    if !svc.visible_from(&ctx.proxy.key.namespace) {
        return Vec::new();
    }
    let fqdn = svc.fqdn(DNS_DOMAIN);
    svc.ports
        .iter()
        .filter_map(|p| {
            let protocol = ctx.scope.port(&svc.key.namespace, &fqdn, p.port)?;
            Some(ServicePort {
                protocol: protocol.unwrap_or(p.protocol),
                ..p.clone()
            })
        })
        .collect()
}

/// The DNS entry of a Service the proxy's scope imports.
fn scoped_dns_entry(ctx: &Ctx<'_>, svc: &Service) -> Option<DnsEntry> {
    if !svc.visible_from(&ctx.proxy.key.namespace) || !ctx.scope.host(&svc.key.namespace, &svc.fqdn(DNS_DOMAIN)) {
        return None;
    }
    dns_entry(svc, &ctx.proxy.key.namespace)
}

/// The DNS entry of a Service with a cluster IP, as a sidecar in `viewer_ns` sees it: its FQDN
/// with the aliases `name` (own namespace only), `name.ns` and `name.ns.svc`.
pub(crate) fn dns_entry(svc: &Service, viewer_ns: &str) -> Option<DnsEntry> {
    let ip = svc.cluster_ip.as_ref()?;
    let mut aliases = Vec::new();
    if svc.key.namespace == viewer_ns {
        aliases.push(svc.key.name.clone());
    }
    aliases.push(format!("{}.{}", svc.key.name, svc.key.namespace));
    aliases.push(format!("{}.{}.svc", svc.key.name, svc.key.namespace));
    Some(DnsEntry {
        hostname: svc.fqdn(DNS_DOMAIN),
        aliases,
        addresses: vec![ip.clone()],
    })
}

fn telemetry(ctx: &Ctx<'_>) -> Telemetry {
    let mut t = Telemetry::default();
    if let Some(tr) = ctx.snapshot.mesh.telemetry.as_ref().and_then(|t| t.tracing.as_ref()) {
        t.tracing = Some(Tracing {
            otlp_endpoint: tr.otlp_endpoint.clone(),
            protocol: match tr.protocol.unwrap_or_default() {
                trellis_api::mesh::OtlpProtocol::Grpc => OtlpProtocol::Grpc,
                trellis_api::mesh::OtlpProtocol::HttpProtobuf => OtlpProtocol::HttpProtobuf,
                trellis_api::mesh::OtlpProtocol::HttpJson => OtlpProtocol::HttpJson,
            },
            sampling_percent: tr.sampling.unwrap_or(1.0),
            service_name: Some(format!("{}.{}", workload_name(ctx.proxy), ctx.proxy.key.namespace)),
            collector_ca: None,
        });
    }
    t
}

/// `Kind namespace/name` of a resource, for diagnostics.
pub(crate) fn resource(kind: &str, meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    format!(
        "{kind} {}/{}",
        meta.namespace.as_deref().unwrap_or("default"),
        meta.name.as_deref().unwrap_or_default()
    )
}

/// Resolve a host written in a resource of `namespace`: a short name becomes the FQDN of the
/// Service in that namespace; anything with a dot is taken as written (Istio's rule).
pub(crate) fn resolve_host(host: &str, namespace: &str) -> String {
    if host.contains('.') || host == "*" {
        host.to_string()
    } else {
        format!("{host}.{namespace}.svc.{DNS_DOMAIN}")
    }
}

/// Whether the host `pattern` written in a resource of `namespace` covers the concrete `host`:
/// `host_matches(&resolve_host(pattern, namespace), host)` without building the FQDN (this
/// runs for every pair of resources and hosts).
pub(crate) fn host_covers(pattern: &str, namespace: &str, host: &str) -> bool {
    if pattern.contains('.') || pattern == "*" {
        return host_matches(pattern, host);
    }
    host.strip_prefix(pattern)
        .and_then(|r| r.strip_prefix('.'))
        .and_then(|r| r.strip_prefix(namespace))
        .and_then(|r| r.strip_prefix(".svc."))
        == Some(DNS_DOMAIN)
}

/// Whether a (maybe wildcard) host pattern covers a concrete host.
pub(crate) fn host_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix('*') {
        Some(suffix) => host.ends_with(suffix),
        None => pattern == host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_resolve_like_istio() {
        assert_eq!(resolve_host("payment", "shop"), "payment.shop.svc.cluster.local");
        assert_eq!(resolve_host("payment.shop", "x"), "payment.shop");
        assert!(host_matches("*.example.com", "a.example.com"));
        assert!(!host_matches("*.example.com", "example.org"));
    }

    #[test]
    fn host_covers_is_resolve_then_match() {
        for (pattern, ns, host) in [
            ("payment", "shop", "payment.shop.svc.cluster.local"),
            ("payment", "other", "payment.shop.svc.cluster.local"),
            ("pay", "shop", "payment.shop.svc.cluster.local"),
            ("*.shop.svc.cluster.local", "x", "payment.shop.svc.cluster.local"),
            ("*", "x", "a.b"),
            ("payment.shop.svc.cluster.local", "x", "payment.shop.svc.cluster.local"),
            ("payment.shop", "x", "payment.shop.svc.cluster.local"),
        ] {
            assert_eq!(
                host_covers(pattern, ns, host),
                host_matches(&resolve_host(pattern, ns), host),
                "{pattern} in {ns} vs {host}"
            );
        }
    }

    /// Mesh-wide policies live in the root namespace the snapshot names (the operator's own,
    /// e.g. `operators` under OLM), not in a fixed `trellis-system`.
    #[test]
    fn mesh_wide_policies_are_those_of_the_snapshots_root_namespace() {
        let yaml = r#"
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: shop, labels: {app: web}}
spec: {containers: [{name: app, image: app}]}
status: {podIP: 10.244.0.5, conditions: [{type: Ready, status: "True"}]}
---
apiVersion: security.trellis.dev/v1alpha1
kind: PeerAuthentication
metadata: {name: default, namespace: operators}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: operators}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: [/admin]}}]}]
---
apiVersion: security.trellis.dev/v1alpha1
kind: PeerAuthentication
metadata: {name: default, namespace: trellis-system}
spec: {mtls: {mode: DISABLE}}
"#;
        let mut snapshot = Snapshot::from_yaml(yaml).unwrap();
        let web = ObjectKey::new("shop", "web-1");
        let inbound = |s: &Snapshot| compile(s, &web, Role::Sidecar, "v1").unwrap().config.inbound;
        // The default root namespace: the policies in `operators` are that namespace's only.
        assert_eq!(snapshot.root_namespace, "trellis-system");
        let default_root = inbound(&snapshot);
        assert_eq!(default_root.mtls.mode, trellis_contract::MtlsMode::Disable);
        assert!(
            default_root.authorization.is_empty(),
            "{:?}",
            default_root.authorization
        );
        // The operator runs in `operators`: its policies apply to every workload, and those of
        // `trellis-system` are an ordinary namespace's.
        snapshot.root_namespace = "operators".into();
        let operators_root = inbound(&snapshot);
        assert_eq!(operators_root.mtls.mode, trellis_contract::MtlsMode::Strict);
        let names: Vec<(&str, &str)> = operators_root
            .authorization
            .iter()
            .map(|p| (p.namespace.as_str(), p.name.as_str()))
            .collect();
        assert_eq!(names, [("operators", "deny-admin")]);
    }
}
