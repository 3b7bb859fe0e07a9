//! Turning compiled configuration into the bytes pushed to proxies, sharing the work between
//! proxies and between changes:
//! - a sidecar's [`SharedOutbound`] (the bulk of its configuration: every visible service) is
//!   kept as serialized pieces — one per virtual host, TCP route, cluster and DNS entry —
//!   compiled once per [`OutboundKey`](crate::compile::OutboundKey) and, after a change,
//!   rebuilt from the previous one by recompiling only the pieces the change touched
//!   ([`Changes`]); unchanged pieces are shared, not copied;
//! - a proxy's [`OwnPart`] (node, identity, inbound, telemetry; a gateway's everything) is
//!   compiled per proxy and reused while its inputs are unchanged;
//! - a proxy is sent its whole configuration ([`Rendered::full`]) when it holds nothing the
//!   operator knows, otherwise a delta against the version it holds ([`Rendered::delta`]):
//!   the pieces that differ, so a one-VirtualService change costs kilobytes, not megabytes.
//!
//! # Guarantees
//! - [`Rendered::full`] deserializes to exactly what [`crate::compile::compile`] gives (with
//!   the version set), and applying [`Rendered::delta`] to the base's full configuration gives
//!   the new full configuration (tests below and in `tests/push.rs`).
//! - The version is a hash of the content (own part, shared pieces, renewal request), so
//!   identical content has the same version on every replica and after restarts.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use trellis_contract::{IdentityConfig, InboundPolicy, NodeInfo, ProxyConfig, ProxyMode, Telemetry};

use crate::compile::{Changes, ClusterRef, CompileError, DNS_DOMAIN, OutboundParts};
use crate::registry::ObjectKey;
use crate::snapshot::Snapshot;

type Digest = [u8; 32];

/// One serialized part of a configuration and its SHA-256.
#[derive(Debug)]
struct Piece {
    json: Box<RawValue>,
    digest: Digest,
}

impl Piece {
    fn of<T: Serialize>(value: &T) -> Arc<Piece> {
        let json = to_raw(value);
        Arc::new(Piece {
            digest: sha256(json.get().as_bytes()),
            json,
        })
    }
}

fn sha256(bytes: &[u8]) -> Digest {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref());
    out
}

/// What one Service port contributes, and the clusters it references.
#[derive(Debug, Clone)]
struct PortPiece {
    vhost: Option<(String, Arc<Piece>)>,
    tcp_routes: Vec<Arc<Piece>>,
    refs: Arc<[ClusterRef]>,
}

/// A sidecar's shared part (see the module docs), serialized piece by piece.
#[derive(Debug)]
pub struct SharedOutbound {
    /// The outbound listener without `virtualHosts` and `tcpRoutes` (a JSON object).
    header: Arc<Piece>,
    ports: BTreeMap<(ObjectKey, u16), PortPiece>,
    vhosts: BTreeMap<String, Arc<Piece>>,
    tcp_routes: Vec<Arc<Piece>>,
    clusters: BTreeMap<String, Arc<Piece>>,
    dns: BTreeMap<String, Arc<Piece>>,
    digest: Digest,
}

impl SharedOutbound {
    /// Compile the shared part of the sidecar in `pod`.
    pub fn compile(snapshot: &Snapshot, pod: &ObjectKey) -> Result<Self, CompileError> {
        Self::build(snapshot, pod, None)
    }

    /// The shared part after a change: pieces `changes` did not touch are taken from `self`
    /// (compiled for a pod with the same key from the snapshot before the change).
    pub fn update(&self, snapshot: &Snapshot, pod: &ObjectKey, changes: &Changes) -> Result<Self, CompileError> {
        Self::build(snapshot, pod, Some((self, changes)))
    }

    fn build(snapshot: &Snapshot, pod: &ObjectKey, prev: Option<(&Self, &Changes)>) -> Result<Self, CompileError> {
        let mut parts = OutboundParts::new(snapshot, pod)?;
        let prev = prev.filter(|(_, c)| !c.all_outbound);

        let mut ports = BTreeMap::new();
        for svc in snapshot.registry.services.values() {
            let fqdn = svc.fqdn(DNS_DOMAIN);
            // The ports the sidecar's scope (its Sidecar) routes.
            for p in &parts.service_ports(svc) {
                let key = (svc.key.clone(), p.port);
                let reused = prev.and_then(|(old, changes)| {
                    let piece = old.ports.get(&key)?;
                    let destinations = piece.refs.iter().map(|r| r.host.as_str());
                    (!changes.routes_changed(&fqdn, destinations)).then(|| piece.clone())
                });
                let piece = reused.unwrap_or_else(|| {
                    let routes = parts.port_routes(svc, p);
                    PortPiece {
                        vhost: routes.virtual_host.map(|v| (v.name.clone(), Piece::of(&v))),
                        tcp_routes: routes.tcp_routes.iter().map(Piece::of).collect(),
                        refs: routes.refs.into(),
                    }
                });
                ports.insert(key, piece);
            }
        }

        // ServiceEntries: compiled afresh whenever the shared part is rebuilt (they are few, and
        // read pods, VirtualServices, DestinationRules and Services as well).
        let entries: Vec<PortPiece> = parts
            .entry_routes()
            .into_iter()
            .map(|routes| PortPiece {
                vhost: routes.virtual_host.map(|v| (v.name.clone(), Piece::of(&v))),
                tcp_routes: routes.tcp_routes.iter().map(Piece::of).collect(),
                refs: routes.refs.into(),
            })
            .collect();

        let vhosts = ports.values().chain(&entries).filter_map(|p| p.vhost.clone()).collect();
        let tcp_routes = ports
            .values()
            .chain(&entries)
            .flat_map(|p| p.tcp_routes.iter().cloned())
            .collect();
        let mut clusters: BTreeMap<String, Arc<Piece>> = BTreeMap::new();
        for r in ports.values().chain(&entries).flat_map(|p| p.refs.iter()) {
            let name = r.name();
            if clusters.contains_key(&name) {
                continue;
            }
            // The clusters of hosts that are no Service's (ServiceEntries') are rebuilt too.
            let service = snapshot.registry.service_by_host(&r.host, DNS_DOMAIN).is_some();
            let reused = prev.filter(|_| service).and_then(|(old, changes)| {
                let c = old.clusters.get(&name)?;
                (!changes.cluster_changed(&r.host)).then(|| c.clone())
            });
            let piece = reused.unwrap_or_else(|| Piece::of(&parts.cluster(r)));
            clusters.insert(name, piece);
        }
        let dns = match prev {
            Some((old, changes)) if !changes.dns => old.dns.clone(),
            _ => snapshot
                .registry
                .services
                .values()
                .filter_map(|svc| parts.dns_entry(svc))
                .chain(parts.entry_dns())
                .map(|e| (e.hostname.clone(), Piece::of(&e)))
                .collect(),
        };
        let header = match prev {
            Some((old, _)) => old.header.clone(),
            None => {
                let mut shell = serde_json::to_value(parts.shell()).unwrap_or(Value::Null);
                if let Value::Object(m) = &mut shell {
                    m.remove("virtualHosts");
                    m.remove("tcpRoutes");
                }
                Piece::of(&shell)
            }
        };
        let mut shared = SharedOutbound {
            header,
            ports,
            vhosts,
            tcp_routes,
            clusters,
            dns,
            digest: [0; 32],
        };
        shared.digest = shared.compute_digest();
        Ok(shared)
    }

    fn compute_digest(&self) -> Digest {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(&self.header.digest);
        for (tag, pieces) in [
            (b'v', self.vhosts.values().collect::<Vec<_>>()),
            (b't', self.tcp_routes.iter().collect()),
            (b'c', self.clusters.values().collect()),
            (b'd', self.dns.values().collect()),
        ] {
            ctx.update(&[tag]);
            ctx.update(&(pieces.len() as u64).to_be_bytes());
            for p in pieces {
                ctx.update(&p.digest);
            }
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        out
    }

    /// Bytes of JSON held (shared with earlier versions where pieces did not change).
    pub fn len(&self) -> usize {
        let pieces = self.vhosts.values().chain(&self.tcp_routes);
        let pieces = pieces.chain(self.clusters.values()).chain(self.dns.values());
        pieces.map(|p| p.json.get().len()).sum::<usize>() + self.header.json.get().len()
    }

    /// Whether nothing is held (never, for a compiled outbound).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The whole outbound listener.
    fn listener_json(&self) -> String {
        let mut out = String::with_capacity(self.len());
        self.write_listener(&mut out);
        out
    }

    /// Append the whole outbound listener to `out`.
    fn write_listener(&self, out: &mut String) {
        let header = self.header.json.get();
        let body = header.strip_suffix('}').unwrap_or("{");
        out.push_str(body);
        if body.len() > 1 {
            out.push(',');
        }
        out.push_str("\"virtualHosts\":");
        join(out, self.vhosts.values().map(|p| p.json.get()));
        out.push_str(",\"tcpRoutes\":");
        join(out, self.tcp_routes.iter().map(|p| p.json.get()));
        out.push('}');
    }
}

impl PartialEq for SharedOutbound {
    fn eq(&self, other: &Self) -> bool {
        self.digest == other.digest
    }
}

/// `[a,b,...]` of JSON texts.
fn join<'a>(out: &mut String, items: impl Iterator<Item = &'a str>) {
    out.push('[');
    for (i, item) in items.enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(item);
    }
    out.push(']');
}

/// What a proxy's configuration has of its own: everything for a gateway; for a sidecar its
/// node, identity, inbound listener, clusters and policy, telemetry.
#[derive(Debug)]
pub struct OwnPart {
    config: ProxyConfig,
    digest: Digest,
}

impl OwnPart {
    /// Wrap a compiled own part ([`crate::compile::compile_workload`]; its version is ignored).
    pub fn new(mut config: ProxyConfig) -> Self {
        config.version = String::new();
        let digest = sha256(&serde_json::to_vec(&config).unwrap_or_default());
        OwnPart { config, digest }
    }
}

/// One version of one proxy's configuration: what is sent, and what the proxy then holds.
#[derive(Debug, Clone)]
pub struct Rendered {
    /// The content hash.
    pub version: String,
    own: Arc<OwnPart>,
    shared: Option<Arc<SharedOutbound>>,
}

impl Rendered {
    /// A proxy's configuration from its own part, a sidecar's shared part, and the root the
    /// proxy is asked to renew from (`renew`, empty if none; it changes the version so the
    /// request reaches the proxy).
    pub fn new(own: Arc<OwnPart>, shared: Option<Arc<SharedOutbound>>, renew: &str) -> Self {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(&own.digest);
        if let Some(s) = &shared {
            ctx.update(&s.digest);
        }
        ctx.update(renew.as_bytes());
        let version = ctx.finish().as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect();
        Rendered { version, own, shared }
    }

    /// The whole configuration as JSON.
    pub fn full(&self) -> Vec<u8> {
        let mut map = match serde_json::to_value(&self.own.config) {
            Ok(Value::Object(m)) => m,
            _ => Map::new(),
        };
        map.insert("version".into(), Value::String(self.version.clone()));
        let Some(shared) = &self.shared else {
            return serde_json::to_vec(&map).unwrap_or_default();
        };
        map.remove("listeners");
        map.remove("clusters");
        map.remove("dns");
        // The proxy's own listeners and clusters, serialized once.
        let own = &self.own.config;
        let own_listeners: Vec<String> = own.listeners.iter().map(to_string).collect();
        let own_clusters: Vec<(&str, String)> = own.clusters.iter().map(|c| (c.name.as_str(), to_string(c))).collect();
        let mut out = serde_json::to_string(&map).unwrap_or_else(|_| "{}".into());
        // Sized up front: growing by doubling would briefly take twice the megabytes.
        let own_bytes: usize = own_listeners
            .iter()
            .chain(own_clusters.iter().map(|(_, j)| j))
            .map(String::len)
            .sum();
        out.reserve(shared.len() + own_bytes + 256);
        out.pop();
        if out.len() > 1 {
            out.push(',');
        }
        out.push_str("\"listeners\":[");
        shared.write_listener(&mut out);
        for l in &own_listeners {
            out.push(',');
            out.push_str(l);
        }
        out.push_str("],\"clusters\":");
        // Own clusters win a name clash, as in `Outbound::merge_into`.
        let mut merged: BTreeMap<&str, &str> = shared
            .clusters
            .iter()
            .map(|(n, c)| (n.as_str(), c.json.get()))
            .collect();
        for (name, json) in &own_clusters {
            merged.insert(name, json);
        }
        join(&mut out, merged.into_values());
        out.push_str(",\"dns\":{\"entries\":");
        join(&mut out, shared.dns.values().map(|p| p.json.get()));
        out.push_str(",\"upstreams\":[]}}");
        out.into_bytes()
    }

    /// The delta that turns `base` (which the proxy holds) into this version, as JSON
    /// (`trellis_contract::ConfigDelta`), or `None` when only a full configuration will do
    /// (the proxy changed role, or an own and a shared part share a name).
    pub fn delta(&self, base: &Rendered, diffs: &SharedDiffs) -> Option<Vec<u8>> {
        let (o, n) = (&base.own.config, &self.own.config);
        let shared = match (&base.shared, &self.shared) {
            (Some(a), Some(b)) => Some((a, b, diffs.between(a, b))),
            (None, None) => None,
            _ => return None,
        };
        if let Some((a, b, _)) = &shared {
            let own_names = o.clusters.iter().chain(&n.clusters).map(|c| c.name.as_str());
            if own_names
                .clone()
                .any(|c| a.clusters.contains_key(c) || b.clusters.contains_key(c))
                || o.listeners.iter().chain(&n.listeners).any(|l| l.name == "outbound")
            {
                return None;
            }
        }
        let mut d = DeltaOut {
            base_version: &base.version,
            version: &self.version,
            api_version: (o.api_version != n.api_version).then_some(n.api_version.as_str()),
            mode: (o.mode != n.mode).then_some(&n.mode),
            node: (o.node != n.node).then_some(&n.node),
            identity: (o.identity != n.identity).then_some(&n.identity),
            inbound: (o.inbound != n.inbound).then_some(&n.inbound),
            telemetry: (o.telemetry != n.telemetry).then_some(&n.telemetry),
            drain_timeout_ms: (o.drain_timeout_ms != n.drain_timeout_ms).then_some(n.drain_timeout_ms),
            ..DeltaOut::default()
        };

        // Own listeners and clusters, by name.
        let (owned_listeners, removed_listeners) = by_name(&o.listeners, &n.listeners, |l| &l.name);
        let (owned_clusters, removed_clusters) = by_name(&o.clusters, &n.clusters, |c| &c.name);
        d.listeners = owned_listeners.iter().map(AsRef::as_ref).collect();
        d.removed_listeners = removed_listeners;
        d.clusters = owned_clusters.iter().map(AsRef::as_ref).collect();
        d.removed_clusters = removed_clusters;

        // The shared part's pieces that differ.
        let whole_listener;
        if let Some((_, _, diff)) = &shared {
            match &diff.listener {
                ListenerDiff::Same => {}
                ListenerDiff::Whole(l) => {
                    whole_listener = l.clone();
                    d.listeners.insert(0, &whole_listener);
                }
                ListenerDiff::Patch {
                    upserts,
                    removed,
                    tcp_routes,
                } => d.listener_patches.push(PatchOut {
                    name: "outbound",
                    virtual_hosts: upserts.iter().map(|p| p.json.as_ref()).collect(),
                    removed_virtual_hosts: removed.iter().map(String::as_str).collect(),
                    tcp_routes: tcp_routes.as_ref().map(|t| t.iter().map(|p| p.json.as_ref()).collect()),
                }),
            }
            d.clusters.extend(diff.clusters.0.iter().map(|p| p.json.as_ref()));
            d.removed_clusters.extend(diff.clusters.1.iter().map(String::as_str));
            d.dns_entries = diff.dns.0.iter().map(|p| p.json.as_ref()).collect();
            d.removed_dns_entries = diff.dns.1.iter().map(String::as_str).collect();
        }
        let (old_order, new_order) = (listener_order(o, shared.is_some()), listener_order(n, shared.is_some()));
        if old_order != new_order {
            d.listener_order = Some(new_order);
        }
        serde_json::to_vec(&d).ok()
    }
}

/// A contract value as JSON text (plain data: serializing cannot fail).
fn to_string<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// A contract value as raw JSON (plain data: serializing cannot fail).
fn to_raw<T: Serialize>(value: &T) -> Box<RawValue> {
    serde_json::value::to_raw_value(value).unwrap_or_else(|_| Box::<RawValue>::default())
}

/// Listener names in order: the shared outbound listener first, then the proxy's own.
fn listener_order(c: &ProxyConfig, shared: bool) -> Vec<&str> {
    shared
        .then_some("outbound")
        .into_iter()
        .chain(c.listeners.iter().map(|l| l.name.as_str()))
        .collect()
}

/// The items of `new` that `old` lacks or has otherwise (as raw JSON), and the names only
/// `old` has.
fn by_name<'a, T: PartialEq + Serialize>(
    old: &'a [T],
    new: &'a [T],
    name: impl Fn(&T) -> &String,
) -> (Vec<Box<RawValue>>, Vec<&'a str>) {
    let upserts = new
        .iter()
        .filter(|n| old.iter().find(|o| name(o) == name(n)) != Some(*n))
        .map(to_raw)
        .collect();
    let kept: BTreeSet<&String> = new.iter().map(&name).collect();
    let removed = old
        .iter()
        .map(&name)
        .filter(|n| !kept.contains(n))
        .map(String::as_str)
        .collect();
    (upserts, removed)
}

/// `trellis_contract::ConfigDelta` on the wire, with pre-serialized pieces.
#[derive(Serialize, Default)]
#[serde(rename_all = "camelCase")]
struct DeltaOut<'a> {
    base_version: &'a str,
    version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    api_version: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mode: Option<&'a ProxyMode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    node: Option<&'a NodeInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    identity: Option<&'a IdentityConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    inbound: Option<&'a InboundPolicy>,
    #[serde(skip_serializing_if = "Option::is_none")]
    telemetry: Option<&'a Telemetry>,
    #[serde(skip_serializing_if = "Option::is_none")]
    drain_timeout_ms: Option<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    listeners: Vec<&'a RawValue>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    listener_patches: Vec<PatchOut<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    removed_listeners: Vec<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    listener_order: Option<Vec<&'a str>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    clusters: Vec<&'a RawValue>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    removed_clusters: Vec<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    dns_entries: Vec<&'a RawValue>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    removed_dns_entries: Vec<&'a str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PatchOut<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    virtual_hosts: Vec<&'a RawValue>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    removed_virtual_hosts: Vec<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tcp_routes: Option<Vec<&'a RawValue>>,
}

/// How the outbound listener differs between two shared parts.
#[derive(Debug)]
enum ListenerDiff {
    Same,
    /// Send it whole (its own settings changed).
    Whole(Box<RawValue>),
    Patch {
        upserts: Vec<Arc<Piece>>,
        removed: Vec<String>,
        tcp_routes: Option<Vec<Arc<Piece>>>,
    },
}

/// The pieces that differ between two shared parts: computed once per pair, however many
/// proxies share it.
#[derive(Debug)]
pub struct SharedDiff {
    listener: ListenerDiff,
    clusters: (Vec<Arc<Piece>>, Vec<String>),
    dns: (Vec<Arc<Piece>>, Vec<String>),
}

impl SharedDiff {
    fn new(old: &SharedOutbound, new: &SharedOutbound) -> Self {
        let listener = if old.header.digest != new.header.digest {
            let json = RawValue::from_string(new.listener_json()).unwrap_or_else(|_| Box::<RawValue>::default());
            ListenerDiff::Whole(json)
        } else {
            let (upserts, removed) = map_diff(&old.vhosts, &new.vhosts, |p| p);
            let tcp_same = old.tcp_routes.len() == new.tcp_routes.len()
                && old
                    .tcp_routes
                    .iter()
                    .zip(&new.tcp_routes)
                    .all(|(a, b)| a.digest == b.digest);
            let tcp_routes = (!tcp_same).then(|| new.tcp_routes.clone());
            if upserts.is_empty() && removed.is_empty() && tcp_routes.is_none() {
                ListenerDiff::Same
            } else {
                ListenerDiff::Patch {
                    upserts,
                    removed,
                    tcp_routes,
                }
            }
        };
        SharedDiff {
            listener,
            clusters: map_diff(&old.clusters, &new.clusters, |p| p),
            dns: map_diff(&old.dns, &new.dns, |p| p),
        }
    }
}

/// Pieces of `new` that `old` lacks or has with other content, and names only `old` has.
fn map_diff<V>(
    old: &BTreeMap<String, V>,
    new: &BTreeMap<String, V>,
    piece: impl Fn(&V) -> &Arc<Piece>,
) -> (Vec<Arc<Piece>>, Vec<String>) {
    let mut upserts = Vec::new();
    let mut removed = Vec::new();
    let mut a = old.iter().peekable();
    let mut b = new.iter().peekable();
    loop {
        match (a.peek(), b.peek()) {
            (None, None) => break,
            (Some((k, _)), None) => {
                removed.push((*k).clone());
                a.next();
            }
            (None, Some((_, v))) => {
                upserts.push(piece(v).clone());
                b.next();
            }
            (Some((ka, va)), Some((kb, vb))) => match ka.cmp(kb) {
                std::cmp::Ordering::Less => {
                    removed.push((*ka).clone());
                    a.next();
                }
                std::cmp::Ordering::Greater => {
                    upserts.push(piece(vb).clone());
                    b.next();
                }
                std::cmp::Ordering::Equal => {
                    let (pa, pb) = (piece(va), piece(vb));
                    if !Arc::ptr_eq(pa, pb) && pa.digest != pb.digest {
                        upserts.push(pb.clone());
                    }
                    a.next();
                    b.next();
                }
            },
        }
    }
    (upserts, removed)
}

type DiffEntry = (Arc<SharedOutbound>, Arc<SharedOutbound>, Arc<SharedDiff>);

/// [`SharedDiff`]s computed so far, by pair of shared parts.
#[derive(Debug, Default)]
pub struct SharedDiffs(Mutex<HashMap<(usize, usize), DiffEntry>>);

impl SharedDiffs {
    fn between(&self, old: &Arc<SharedOutbound>, new: &Arc<SharedOutbound>) -> Arc<SharedDiff> {
        // The entry keeps both parts alive, so their addresses cannot be reused meanwhile.
        let key = (Arc::as_ptr(old) as usize, Arc::as_ptr(new) as usize);
        let mut map = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        map.entry(key)
            .or_insert_with(|| (old.clone(), new.clone(), Arc::new(SharedDiff::new(old, new))))
            .2
            .clone()
    }
}
