//! Incremental configuration: a [`ConfigDelta`] turns the [`ProxyConfig`] of one version
//! into the next, so a change to one VirtualService does not re-send a whole config to
//! every proxy.
//!
//! A delta names the version it applies to (`baseVersion`) and the version it produces
//! (`version`). It carries only what changed: top-level fields that are replaced whole,
//! listeners sent whole or patched (virtual hosts upserted or removed, TCP routes
//! replaced), clusters and DNS entries upserted or removed by name, and the listeners'
//! order when it changes.
//!
//! # Guarantees
//! - [`ConfigDelta::apply`] is pure and all-or-nothing: it returns a new config or an
//!   error naming what did not fit (wrong base, a removal of something absent, a name
//!   listed twice, a patch of a listener that is also replaced); it never panics.
//! - New virtual hosts, clusters and DNS entries are inserted before the first existing
//!   one whose name is greater, so lists the operator keeps sorted stay sorted; new
//!   listeners are appended (their order is set by `listenerOrder`).
//! - [`ConfigDelta::between`] only returns a delta that reproduces the new config
//!   exactly (it checks by applying it).
//!
//! # Caveats
//! - A delta applies to one exact version: a proxy that holds another (or none) needs a
//!   full snapshot.
//! - The result is not validated: the proxy runs [`ProxyConfig::validate`] on it as on a
//!   full snapshot.

use std::collections::{HashMap, HashSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{
    Cluster, DnsEntry, IdentityConfig, InboundPolicy, Listener, NodeInfo, ProxyConfig, ProxyMode, TcpRoute, Telemetry,
    VirtualHost,
};

/// The changes from the config of version `base_version` to the config of version
/// `version`. Every optional field is omitted from JSON when absent or empty.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigDelta {
    /// The version this delta applies to.
    pub base_version: String,
    /// The version it produces.
    pub version: String,
    /// Replaces `apiVersion` when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// Replaces `mode` when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<ProxyMode>,
    /// Replaces `node` when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeInfo>,
    /// Replaces `identity` when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<IdentityConfig>,
    /// Replaces `inbound` when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbound: Option<InboundPolicy>,
    /// Replaces `telemetry` when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub telemetry: Option<Telemetry>,
    /// Replaces `drainTimeoutMs` when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_timeout_ms: Option<u64>,
    /// Whole listeners, added or replaced by name: a listener of the same name is replaced
    /// in place, a new one is appended.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub listeners: Vec<Listener>,
    /// Changes to the routing tables of listeners that are otherwise unchanged.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub listener_patches: Vec<ListenerPatch>,
    /// Names of listeners to remove.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed_listeners: Vec<String>,
    /// Every listener's name in order after applying; present when the order or the set of
    /// listeners changes beyond what appending new ones gives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listener_order: Option<Vec<String>>,
    /// Clusters added or replaced by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clusters: Vec<Cluster>,
    /// Names of clusters to remove.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed_clusters: Vec<String>,
    /// DNS entries added or replaced by hostname.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_entries: Vec<DnsEntry>,
    /// Hostnames of DNS entries to remove.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed_dns_entries: Vec<String>,
    /// Replaces `dns.upstreams` when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_upstreams: Option<Vec<String>>,
}

/// Changes to one listener's routing tables; its other fields stay as they are.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListenerPatch {
    /// The listener's name.
    pub name: String,
    /// Virtual hosts added or replaced by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub virtual_hosts: Vec<VirtualHost>,
    /// Names of virtual hosts to remove.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed_virtual_hosts: Vec<String>,
    /// Replaces the TCP routes (all of them) when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_routes: Option<Vec<TcpRoute>>,
}

/// The kind of named object a delta adds, replaces or removes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeltaObject {
    /// A listener (by name).
    Listener,
    /// A virtual host of a listener (by name).
    VirtualHost,
    /// A cluster (by name).
    Cluster,
    /// A DNS entry (by hostname).
    DnsEntry,
}

impl fmt::Display for DeltaObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DeltaObject::Listener => "listener",
            DeltaObject::VirtualHost => "virtual host",
            DeltaObject::Cluster => "cluster",
            DeltaObject::DnsEntry => "DNS entry",
        })
    }
}

/// Why a delta cannot be applied. Every variant but [`DeltaError::Base`] means the delta
/// itself is inconsistent with its base (a control-plane bug); either way the proxy keeps
/// its config and needs a full snapshot.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DeltaError {
    /// The config is not the version the delta applies to.
    #[error(
        "the delta applies to version {expected} but the current config is version {found}: a full snapshot is needed"
    )]
    Base {
        /// The delta's `baseVersion`.
        expected: String,
        /// The version held.
        found: String,
    },
    /// The delta removes something the base does not have.
    #[error(
        "delta {base}→{version} removes {object} {name:?}{} which version {base} does not have",
        of_listener(listener)
    )]
    NotInBase {
        /// The delta's `baseVersion`.
        base: String,
        /// The delta's `version`.
        version: String,
        /// What kind of object.
        object: DeltaObject,
        /// Its name.
        name: String,
        /// The listener, for a virtual host.
        listener: Option<String>,
    },
    /// The delta patches a listener the base does not have.
    #[error(
        "delta {base}→{version} patches listener {listener:?} which version {base} does not have (a new listener is sent whole)"
    )]
    PatchedListenerMissing {
        /// The delta's `baseVersion`.
        base: String,
        /// The delta's `version`.
        version: String,
        /// The listener.
        listener: String,
    },
    /// The delta both patches a listener and replaces or removes it.
    #[error(
        "delta {base}→{version} patches listener {listener:?} and also replaces or removes it; a listener is either patched or sent whole"
    )]
    PatchConflict {
        /// The delta's `baseVersion`.
        base: String,
        /// The delta's `version`.
        version: String,
        /// The listener.
        listener: String,
    },
    /// A name appears twice in one list of the delta.
    #[error("delta {base}→{version} names {name:?} twice in {field}")]
    Duplicate {
        /// The delta's `baseVersion`.
        base: String,
        /// The delta's `version`.
        version: String,
        /// The list, as a JSON path, e.g. `clusters` or `listenerPatches[outbound].virtualHosts`.
        field: String,
        /// The repeated name.
        name: String,
    },
    /// `listenerOrder` does not name each resulting listener exactly once.
    #[error(
        "delta {base}→{version} orders the listeners as {order:?}, but applying it leaves the listeners {listeners:?}; listenerOrder must name each of them once"
    )]
    ListenerOrder {
        /// The delta's `baseVersion`.
        base: String,
        /// The delta's `version`.
        version: String,
        /// The delta's `listenerOrder`.
        order: Vec<String>,
        /// The listeners after applying everything else.
        listeners: Vec<String>,
    },
}

fn of_listener(listener: &Option<String>) -> String {
    match listener {
        Some(l) => format!(" of listener {l:?}"),
        None => String::new(),
    }
}

/// Objects kept in lists and addressed by a unique name.
trait Named: Clone + PartialEq {
    fn key(&self) -> &str;
}

impl Named for Listener {
    fn key(&self) -> &str {
        &self.name
    }
}

impl Named for VirtualHost {
    fn key(&self) -> &str {
        &self.name
    }
}

impl Named for Cluster {
    fn key(&self) -> &str {
        &self.name
    }
}

impl Named for DnsEntry {
    fn key(&self) -> &str {
        &self.hostname
    }
}

/// Where an upserted object that is not in the list yet goes.
#[derive(Clone, Copy)]
enum NewGoes {
    /// At the end.
    Last,
    /// Before the first object whose name is greater.
    Sorted,
}

/// Builds the errors of one delta.
struct Errors<'a> {
    base: &'a str,
    version: &'a str,
}

impl Errors<'_> {
    fn not_in_base(&self, object: DeltaObject, name: &str, listener: Option<&str>) -> DeltaError {
        DeltaError::NotInBase {
            base: self.base.to_string(),
            version: self.version.to_string(),
            object,
            name: name.to_string(),
            listener: listener.map(str::to_string),
        }
    }

    /// Fails when a name repeats in `names`.
    fn unique<'n>(
        &self,
        field: &dyn Fn() -> String,
        names: impl IntoIterator<Item = &'n str>,
    ) -> Result<(), DeltaError> {
        let mut seen = HashSet::new();
        for name in names {
            if !seen.insert(name) {
                return Err(DeltaError::Duplicate {
                    base: self.base.to_string(),
                    version: self.version.to_string(),
                    field: field(),
                    name: name.to_string(),
                });
            }
        }
        Ok(())
    }

    fn patch_conflict(&self, listener: &str) -> DeltaError {
        DeltaError::PatchConflict {
            base: self.base.to_string(),
            version: self.version.to_string(),
            listener: listener.to_string(),
        }
    }

    fn patched_listener_missing(&self, listener: &str) -> DeltaError {
        DeltaError::PatchedListenerMissing {
            base: self.base.to_string(),
            version: self.version.to_string(),
            listener: listener.to_string(),
        }
    }
}

/// Remove the objects named in `names`; every one must be present.
fn remove<T: Named>(
    list: &mut Vec<T>,
    names: &[String],
    object: DeltaObject,
    listener: Option<&str>,
    errors: &Errors<'_>,
) -> Result<(), DeltaError> {
    if names.is_empty() {
        return Ok(());
    }
    let present: HashSet<&str> = list.iter().map(Named::key).collect();
    if let Some(missing) = names.iter().find(|n| !present.contains(n.as_str())) {
        return Err(errors.not_in_base(object, missing, listener));
    }
    let doomed: HashSet<&str> = names.iter().map(String::as_str).collect();
    list.retain(|item| !doomed.contains(item.key()));
    Ok(())
}

/// Replace each of `items` in place by name, or add it where `new_goes` says.
fn upsert<T: Named>(list: &mut Vec<T>, items: &[T], new_goes: NewGoes) {
    if items.is_empty() {
        return;
    }
    let positions: Vec<Option<usize>> = {
        // Reversed so that the first of several equal names wins, as a linear search would.
        let index: HashMap<&str, usize> = list.iter().enumerate().rev().map(|(i, item)| (item.key(), i)).collect();
        items.iter().map(|item| index.get(item.key()).copied()).collect()
    };
    // In-place replacements first: insertions would shift the positions found above.
    let mut added = Vec::new();
    for (item, position) in items.iter().zip(positions) {
        match position.and_then(|i| list.get_mut(i)) {
            Some(slot) => *slot = item.clone(),
            None => added.push(item),
        }
    }
    for item in added {
        let at = match new_goes {
            NewGoes::Last => list.len(),
            NewGoes::Sorted => list
                .iter()
                .position(|existing| existing.key() > item.key())
                .unwrap_or(list.len()),
        };
        list.insert(at, item.clone());
    }
}

/// Apply a patch to its listener's routing tables.
fn patch_listener(listener: &mut Listener, patch: &ListenerPatch, errors: &Errors<'_>) -> Result<(), DeltaError> {
    remove(
        &mut listener.virtual_hosts,
        &patch.removed_virtual_hosts,
        DeltaObject::VirtualHost,
        Some(&patch.name),
        errors,
    )?;
    upsert(&mut listener.virtual_hosts, &patch.virtual_hosts, NewGoes::Sorted);
    if let Some(routes) = &patch.tcp_routes {
        listener.tcp_routes = routes.clone();
    }
    Ok(())
}

impl ConfigDelta {
    /// An empty delta from `base_version` to `version` (applying it only changes the version).
    pub fn new(base_version: impl Into<String>, version: impl Into<String>) -> Self {
        ConfigDelta {
            base_version: base_version.into(),
            version: version.into(),
            ..ConfigDelta::default()
        }
    }

    /// The config this delta produces from `base`.
    ///
    /// In order: `base.version` must equal `baseVersion`; present top-level fields replace
    /// the base's; `removedListeners` are removed; `listeners` replace listeners of the same
    /// name in place or are appended; `listenerPatches` remove, then upsert (sorted)
    /// virtual hosts and replace TCP routes of listeners neither replaced nor removed here;
    /// `listenerOrder` reorders the listeners; clusters and DNS entries are removed, then
    /// upserted (sorted); `dnsUpstreams` replaces the upstreams; the version becomes
    /// `version`.
    ///
    /// # Errors
    /// [`DeltaError::Base`] when `base` is another version; the other variants when the
    /// delta does not fit its base (see [`DeltaError`]). `base` is never modified.
    pub fn apply(&self, base: &ProxyConfig) -> Result<ProxyConfig, DeltaError> {
        if base.version != self.base_version {
            return Err(DeltaError::Base {
                expected: self.base_version.clone(),
                found: base.version.clone(),
            });
        }
        let errors = Errors {
            base: &self.base_version,
            version: &self.version,
        };
        self.check_unique(&errors)?;

        let mut config = base.clone();
        if let Some(api_version) = &self.api_version {
            config.api_version = api_version.clone();
        }
        if let Some(mode) = self.mode {
            config.mode = mode;
        }
        if let Some(node) = &self.node {
            config.node = node.clone();
        }
        if let Some(identity) = &self.identity {
            config.identity = identity.clone();
        }
        if let Some(inbound) = &self.inbound {
            config.inbound = inbound.clone();
        }
        if let Some(telemetry) = &self.telemetry {
            config.telemetry = telemetry.clone();
        }
        if let Some(drain) = self.drain_timeout_ms {
            config.drain_timeout_ms = drain;
        }

        remove(
            &mut config.listeners,
            &self.removed_listeners,
            DeltaObject::Listener,
            None,
            &errors,
        )?;
        upsert(&mut config.listeners, &self.listeners, NewGoes::Last);
        for patch in &self.listener_patches {
            let name = patch.name.as_str();
            if self.removed_listeners.iter().any(|r| r == name) || self.listeners.iter().any(|l| l.name == name) {
                return Err(errors.patch_conflict(name));
            }
            let listener = config
                .listeners
                .iter_mut()
                .find(|l| l.name == name)
                .ok_or_else(|| errors.patched_listener_missing(name))?;
            patch_listener(listener, patch, &errors)?;
        }
        if let Some(order) = &self.listener_order {
            config.listeners = self.reorder(std::mem::take(&mut config.listeners), order)?;
        }

        remove(
            &mut config.clusters,
            &self.removed_clusters,
            DeltaObject::Cluster,
            None,
            &errors,
        )?;
        upsert(&mut config.clusters, &self.clusters, NewGoes::Sorted);
        remove(
            &mut config.dns.entries,
            &self.removed_dns_entries,
            DeltaObject::DnsEntry,
            None,
            &errors,
        )?;
        upsert(&mut config.dns.entries, &self.dns_entries, NewGoes::Sorted);
        if let Some(upstreams) = &self.dns_upstreams {
            config.dns.upstreams = upstreams.clone();
        }

        config.version = self.version.clone();
        Ok(config)
    }

    /// No name may appear twice in one list.
    fn check_unique(&self, errors: &Errors<'_>) -> Result<(), DeltaError> {
        let names = |list: &'static str| move || list.to_string();
        errors.unique(&names("listeners"), self.listeners.iter().map(|l| l.name.as_str()))?;
        errors.unique(
            &names("listenerPatches"),
            self.listener_patches.iter().map(|p| p.name.as_str()),
        )?;
        errors.unique(
            &names("removedListeners"),
            self.removed_listeners.iter().map(String::as_str),
        )?;
        if let Some(order) = &self.listener_order {
            errors.unique(&names("listenerOrder"), order.iter().map(String::as_str))?;
        }
        for patch in &self.listener_patches {
            errors.unique(
                &|| format!("listenerPatches[{}].virtualHosts", patch.name),
                patch.virtual_hosts.iter().map(|v| v.name.as_str()),
            )?;
            errors.unique(
                &|| format!("listenerPatches[{}].removedVirtualHosts", patch.name),
                patch.removed_virtual_hosts.iter().map(String::as_str),
            )?;
        }
        errors.unique(&names("clusters"), self.clusters.iter().map(|c| c.name.as_str()))?;
        errors.unique(
            &names("removedClusters"),
            self.removed_clusters.iter().map(String::as_str),
        )?;
        errors.unique(
            &names("dnsEntries"),
            self.dns_entries.iter().map(|e| e.hostname.as_str()),
        )?;
        errors.unique(
            &names("removedDnsEntries"),
            self.removed_dns_entries.iter().map(String::as_str),
        )
    }

    /// The listeners in `order`, which must name each of them exactly once.
    fn reorder(&self, listeners: Vec<Listener>, order: &[String]) -> Result<Vec<Listener>, DeltaError> {
        let position: HashMap<&str, usize> = order.iter().enumerate().map(|(i, n)| (n.as_str(), i)).collect();
        let mut slots: Vec<Option<Listener>> = vec![None; order.len()];
        let mut fits = listeners.len() == order.len();
        let names: Vec<String> = listeners.iter().map(|l| l.name.clone()).collect();
        for listener in listeners {
            match position.get(listener.name.as_str()).and_then(|&i| slots.get_mut(i)) {
                Some(slot @ None) => *slot = Some(listener),
                _ => fits = false,
            }
        }
        let ordered: Vec<Listener> = slots.into_iter().flatten().collect();
        if !fits || ordered.len() != order.len() {
            return Err(DeltaError::ListenerOrder {
                base: self.base_version.clone(),
                version: self.version.clone(),
                order: order.to_vec(),
                listeners: names,
            });
        }
        Ok(ordered)
    }

    /// A delta that turns `old` into `new`, or `None` when none can (then send `new` whole).
    ///
    /// Listeners whose fields other than `virtualHosts` and `tcpRoutes` are unchanged are
    /// patched; others are sent whole. `None` means the new config keeps clusters, DNS
    /// entries or virtual hosts in an order that sorted insertion cannot produce, or holds
    /// duplicate names.
    ///
    /// # Caveats
    /// It applies the delta to `old` and compares the result with `new` before returning
    /// it: the cost of a config clone and comparison.
    pub fn between(old: &ProxyConfig, new: &ProxyConfig) -> Option<ConfigDelta> {
        let mut delta = ConfigDelta::new(old.version.clone(), new.version.clone());
        fn changed<T: Clone + PartialEq>(old: &T, new: &T) -> Option<T> {
            (old != new).then(|| new.clone())
        }
        delta.api_version = changed(&old.api_version, &new.api_version);
        delta.mode = changed(&old.mode, &new.mode);
        delta.node = changed(&old.node, &new.node);
        delta.identity = changed(&old.identity, &new.identity);
        delta.inbound = changed(&old.inbound, &new.inbound);
        delta.telemetry = changed(&old.telemetry, &new.telemetry);
        delta.drain_timeout_ms = changed(&old.drain_timeout_ms, &new.drain_timeout_ms);

        let (removed, upserted) = diff(&old.listeners, &new.listeners);
        delta.removed_listeners = removed;
        let old_listeners = first_by_key(&old.listeners);
        for listener in upserted {
            match old_listeners
                .get(listener.name.as_str())
                .and_then(|old| patch_between(old, listener))
            {
                Some(patch) => delta.listener_patches.push(patch),
                None => delta.listeners.push(listener.clone()),
            }
        }
        // The order removal and appending give; listenerOrder only when `new` differs.
        let mut order: Vec<&str> = old
            .listeners
            .iter()
            .map(|l| l.name.as_str())
            .filter(|n| !delta.removed_listeners.iter().any(|r| r == n))
            .collect();
        for listener in &delta.listeners {
            if !order.contains(&listener.name.as_str()) {
                order.push(&listener.name);
            }
        }
        if !order.iter().copied().eq(new.listeners.iter().map(|l| l.name.as_str())) {
            delta.listener_order = Some(new.listeners.iter().map(|l| l.name.clone()).collect());
        }

        let (removed, upserted) = diff(&old.clusters, &new.clusters);
        delta.removed_clusters = removed;
        delta.clusters = upserted.into_iter().cloned().collect();
        let (removed, upserted) = diff(&old.dns.entries, &new.dns.entries);
        delta.removed_dns_entries = removed;
        delta.dns_entries = upserted.into_iter().cloned().collect();
        delta.dns_upstreams = changed(&old.dns.upstreams, &new.dns.upstreams);

        match delta.apply(old) {
            Ok(applied) if applied == *new => Some(delta),
            _ => None,
        }
    }
}

/// The first object of each name.
fn first_by_key<T: Named>(list: &[T]) -> HashMap<&str, &T> {
    let mut map = HashMap::with_capacity(list.len());
    for item in list {
        map.entry(item.key()).or_insert(item);
    }
    map
}

/// The names in `old` that `new` lacks (each once, in `old`'s order), and the objects of
/// `new` that `old` lacks or holds differently (in `new`'s order).
fn diff<'n, T: Named>(old: &[T], new: &'n [T]) -> (Vec<String>, Vec<&'n T>) {
    let old_by_key = first_by_key(old);
    let new_keys: HashSet<&str> = new.iter().map(Named::key).collect();
    let mut seen = HashSet::new();
    let removed = old
        .iter()
        .map(Named::key)
        .filter(|k| !new_keys.contains(k) && seen.insert(*k))
        .map(str::to_string)
        .collect();
    let upserted = new
        .iter()
        .filter(|item| old_by_key.get(item.key()).is_none_or(|o| *o != *item))
        .collect();
    (removed, upserted)
}

/// A patch turning `old` into `new` when only their routing tables differ and sorted
/// insertion reproduces `new`'s virtual hosts; `None` when the listener must be sent whole.
fn patch_between(old: &Listener, new: &Listener) -> Option<ListenerPatch> {
    // Destructured without `..`: a new Listener field must be considered here.
    let Listener {
        name,
        address,
        direction,
        protocol,
        transparent,
        tls,
        sni_tls,
        virtual_hosts: _,
        tcp_routes: _,
        limits,
        path_normalization,
        unrouted,
        scope,
    } = old;
    let same_shell = *name == new.name
        && *address == new.address
        && *direction == new.direction
        && *protocol == new.protocol
        && *transparent == new.transparent
        && *tls == new.tls
        && *sni_tls == new.sni_tls
        && *limits == new.limits
        && *path_normalization == new.path_normalization
        && *unrouted == new.unrouted
        && *scope == new.scope;
    if !same_shell {
        return None;
    }
    let (removed_virtual_hosts, upserted) = diff(&old.virtual_hosts, &new.virtual_hosts);
    let patch = ListenerPatch {
        name: new.name.clone(),
        virtual_hosts: upserted.into_iter().cloned().collect(),
        removed_virtual_hosts,
        tcp_routes: (old.tcp_routes != new.tcp_routes).then(|| new.tcp_routes.clone()),
    };
    let errors = Errors { base: "", version: "" };
    let mut patched = old.clone();
    match patch_listener(&mut patched, &patch, &errors) {
        Ok(()) if patched == *new => Some(patch),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cluster(name: &str, port: u16) -> Cluster {
        serde_json::from_value(json!({"name": name, "endpoints": [{"address": "10.0.0.1", "port": port}]})).unwrap()
    }

    fn dns(host: &str, ip: &str) -> DnsEntry {
        DnsEntry {
            hostname: host.into(),
            aliases: vec![],
            addresses: vec![ip.into()],
        }
    }

    fn vhost(name: &str, cluster: &str) -> VirtualHost {
        serde_json::from_value(json!({
            "name": name,
            "domains": [name],
            "routes": [{
                "action": {"forward": {"clusters": [{"cluster": cluster}]}},
                "provenance": {"kind": "Service", "namespace": "shop", "name": name}
            }]
        }))
        .unwrap()
    }

    fn listener(name: &str, vhosts: &[&str]) -> Listener {
        serde_json::from_value(json!({
            "name": name,
            "address": "0.0.0.0:15001",
            "direction": "outbound",
            "virtualHosts": vhosts.iter().map(|v| vhost(v, "c")).collect::<Vec<_>>(),
        }))
        .unwrap()
    }

    fn base() -> ProxyConfig {
        let mut cfg = ProxyConfig::empty("v1");
        cfg.listeners = vec![listener("outbound", &["a", "c"]), listener("inbound", &["local"])];
        cfg.clusters = vec![cluster("a", 1), cluster("c", 3)];
        cfg.dns.entries = vec![dns("a.shop", "10.1.0.1"), dns("c.shop", "10.1.0.3")];
        cfg
    }

    fn names<T: Named>(list: &[T]) -> Vec<&str> {
        list.iter().map(Named::key).collect()
    }

    #[test]
    fn an_empty_delta_only_changes_the_version() {
        let out = ConfigDelta::new("v1", "v2").apply(&base()).unwrap();
        assert_eq!(
            out,
            ProxyConfig {
                version: "v2".into(),
                ..base()
            }
        );
    }

    #[test]
    fn a_delta_for_another_version_asks_for_a_full_snapshot() {
        let err = ConfigDelta::new("v0", "v2").apply(&base()).unwrap_err();
        assert_eq!(
            err,
            DeltaError::Base {
                expected: "v0".into(),
                found: "v1".into()
            }
        );
        assert!(err.to_string().contains("a full snapshot is needed"), "{err}");
    }

    #[test]
    fn top_level_fields_are_replaced_when_present() {
        let mut d = ConfigDelta::new("v1", "v2");
        d.api_version = Some("proxy.trellis.dev/v1alpha2".into());
        d.mode = Some(ProxyMode::Gateway);
        d.node = Some(NodeInfo {
            workload: "web".into(),
            ..NodeInfo::default()
        });
        d.identity = Some(IdentityConfig {
            spiffe_id: Some("spiffe://cluster.local/ns/shop/sa/web".into()),
            ..IdentityConfig::default()
        });
        d.inbound = Some(serde_json::from_value(json!({"mtls": {"mode": "STRICT"}})).unwrap());
        d.telemetry = Some(serde_json::from_value(json!({"accessLog": {"enabled": true}})).unwrap());
        d.drain_timeout_ms = Some(1_000);
        d.dns_upstreams = Some(vec!["10.96.0.10:53".into()]);
        let out = d.apply(&base()).unwrap();
        assert_eq!(out.api_version, "proxy.trellis.dev/v1alpha2");
        assert_eq!(out.mode, ProxyMode::Gateway);
        assert_eq!(out.node.workload, "web");
        assert_eq!(
            out.identity.spiffe_id.as_deref(),
            Some("spiffe://cluster.local/ns/shop/sa/web")
        );
        assert_eq!(out.inbound, d.inbound.clone().unwrap());
        assert_eq!(out.telemetry, d.telemetry.clone().unwrap());
        assert_eq!(out.drain_timeout_ms, 1_000);
        assert_eq!(out.dns.upstreams, ["10.96.0.10:53"]);
        // Everything else is the base's.
        assert_eq!(out.listeners, base().listeners);
        assert_eq!(out.clusters, base().clusters);
        assert_eq!(out.dns.entries, base().dns.entries);
    }

    #[test]
    fn listeners_are_replaced_in_place_appended_and_removed() {
        let mut d = ConfigDelta::new("v1", "v2");
        let mut outbound = listener("outbound", &["z"]);
        outbound.address = "0.0.0.0:15002".into();
        d.listeners = vec![listener("gateway", &[]), outbound.clone()];
        let out = d.apply(&base()).unwrap();
        assert_eq!(names(&out.listeners), ["outbound", "inbound", "gateway"]);
        assert_eq!(out.listeners[0], outbound);

        let mut d = ConfigDelta::new("v1", "v2");
        d.removed_listeners = vec!["outbound".into()];
        let out = d.apply(&base()).unwrap();
        assert_eq!(names(&out.listeners), ["inbound"]);
    }

    #[test]
    fn removing_an_absent_listener_is_an_error() {
        let mut d = ConfigDelta::new("v1", "v2");
        d.removed_listeners = vec!["gateway".into()];
        let err = d.apply(&base()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "delta v1→v2 removes listener \"gateway\" which version v1 does not have"
        );
    }

    #[test]
    fn listener_order_reorders_and_must_be_a_permutation() {
        let mut d = ConfigDelta::new("v1", "v2");
        d.listeners = vec![listener("gateway", &[])];
        d.listener_order = Some(vec!["gateway".into(), "inbound".into(), "outbound".into()]);
        let out = d.apply(&base()).unwrap();
        assert_eq!(names(&out.listeners), ["gateway", "inbound", "outbound"]);

        for bad in [
            vec!["inbound"],
            vec!["inbound", "outbound", "gateway"],
            vec!["inbound", "gateway"],
        ] {
            let mut d = ConfigDelta::new("v1", "v2");
            d.listener_order = Some(bad.iter().map(|s| s.to_string()).collect());
            let err = d.apply(&base()).unwrap_err();
            assert!(matches!(err, DeltaError::ListenerOrder { .. }), "{bad:?}: {err}");
            assert!(err.to_string().contains("must name each of them once"), "{err}");
        }
    }

    #[test]
    fn patches_remove_then_insert_virtual_hosts_sorted_and_replace_in_place() {
        let mut d = ConfigDelta::new("v1", "v2");
        let replaced = vhost("c", "other");
        d.listener_patches = vec![ListenerPatch {
            name: "outbound".into(),
            virtual_hosts: vec![vhost("d", "c"), replaced.clone(), vhost("b", "c"), vhost("0", "c")],
            removed_virtual_hosts: vec!["a".into()],
            tcp_routes: None,
        }];
        let out = d.apply(&base()).unwrap();
        let outbound = &out.listeners[0];
        assert_eq!(names(&outbound.virtual_hosts), ["0", "b", "c", "d"]);
        assert_eq!(outbound.virtual_hosts[2], replaced);
        assert_eq!(out.listeners[1], base().listeners[1], "other listeners untouched");
        // Fields other than the routing tables stay.
        assert_eq!(outbound.address, base().listeners[0].address);
    }

    #[test]
    fn patches_replace_tcp_routes_only_when_present() {
        let mut b = base();
        b.listeners[0].tcp_routes = serde_json::from_value(json!([{"cluster": "a"}])).unwrap();
        let mut d = ConfigDelta::new("v1", "v2");
        d.listener_patches = vec![ListenerPatch {
            name: "outbound".into(),
            virtual_hosts: vec![vhost("b", "c")],
            ..ListenerPatch::default()
        }];
        assert_eq!(d.apply(&b).unwrap().listeners[0].tcp_routes, b.listeners[0].tcp_routes);
        let routes: Vec<TcpRoute> = serde_json::from_value(json!([{"cluster": "c", "destinationPort": 5432}])).unwrap();
        d.listener_patches[0].tcp_routes = Some(routes.clone());
        assert_eq!(d.apply(&b).unwrap().listeners[0].tcp_routes, routes);
        d.listener_patches[0].tcp_routes = Some(vec![]);
        assert!(d.apply(&b).unwrap().listeners[0].tcp_routes.is_empty());
    }

    #[test]
    fn patch_errors_name_the_listener_and_virtual_host() {
        let patch = |name: &str, removed: &[&str]| ListenerPatch {
            name: name.into(),
            removed_virtual_hosts: removed.iter().map(|s| s.to_string()).collect(),
            ..ListenerPatch::default()
        };
        let mut d = ConfigDelta::new("v1", "v2");
        d.listener_patches = vec![patch("gateway", &[])];
        assert_eq!(
            d.apply(&base()).unwrap_err().to_string(),
            "delta v1→v2 patches listener \"gateway\" which version v1 does not have (a new listener is sent whole)"
        );

        d.listener_patches = vec![patch("outbound", &["b"])];
        assert_eq!(
            d.apply(&base()).unwrap_err().to_string(),
            "delta v1→v2 removes virtual host \"b\" of listener \"outbound\" which version v1 does not have"
        );

        d.listener_patches = vec![patch("outbound", &[])];
        d.listeners = vec![listener("outbound", &[])];
        assert!(matches!(
            d.apply(&base()).unwrap_err(),
            DeltaError::PatchConflict { listener, .. } if listener == "outbound"
        ));
        d.listeners.clear();
        d.removed_listeners = vec!["outbound".into()];
        assert!(matches!(
            d.apply(&base()).unwrap_err(),
            DeltaError::PatchConflict { .. }
        ));
    }

    #[test]
    fn clusters_are_removed_then_upserted_sorted() {
        let mut d = ConfigDelta::new("v1", "v2");
        d.removed_clusters = vec!["a".into()];
        d.clusters = vec![cluster("d", 4), cluster("c", 33), cluster("b", 2)];
        let out = d.apply(&base()).unwrap();
        assert_eq!(names(&out.clusters), ["b", "c", "d"]);
        assert_eq!(out.clusters[1], cluster("c", 33));

        let mut d = ConfigDelta::new("v2", "v3");
        d.removed_clusters = vec!["x".into()];
        let mut b = base();
        b.version = "v2".into();
        assert_eq!(
            d.apply(&b).unwrap_err().to_string(),
            "delta v2→v3 removes cluster \"x\" which version v2 does not have"
        );
    }

    #[test]
    fn a_cluster_removed_and_added_again_is_replaced() {
        let mut d = ConfigDelta::new("v1", "v2");
        d.removed_clusters = vec!["c".into()];
        d.clusters = vec![cluster("c", 9)];
        assert_eq!(d.apply(&base()).unwrap().clusters, [cluster("a", 1), cluster("c", 9)]);
    }

    #[test]
    fn dns_entries_are_removed_then_upserted_sorted_by_hostname() {
        let mut d = ConfigDelta::new("v1", "v2");
        d.removed_dns_entries = vec!["c.shop".into()];
        d.dns_entries = vec![dns("b.shop", "10.1.0.2"), dns("a.shop", "10.1.0.9")];
        let out = d.apply(&base()).unwrap();
        assert_eq!(out.dns.entries, [dns("a.shop", "10.1.0.9"), dns("b.shop", "10.1.0.2")]);

        d.removed_dns_entries = vec!["x.shop".into()];
        assert_eq!(
            d.apply(&base()).unwrap_err().to_string(),
            "delta v1→v2 removes DNS entry \"x.shop\" which version v1 does not have"
        );
    }

    #[test]
    fn a_name_twice_in_one_list_is_an_error() {
        type Edit = Box<dyn Fn(&mut ConfigDelta)>;
        let cases: Vec<(Edit, &str)> = vec![
            (
                Box::new(|d| d.listeners = vec![listener("x", &[]), listener("x", &[])]),
                "listeners",
            ),
            (
                Box::new(|d| d.removed_listeners = vec!["inbound".into(), "inbound".into()]),
                "removedListeners",
            ),
            (
                Box::new(|d| d.listener_order = Some(vec!["inbound".into(), "inbound".into()])),
                "listenerOrder",
            ),
            (
                Box::new(|d| {
                    d.listener_patches = vec![
                        ListenerPatch {
                            name: "inbound".into(),
                            ..ListenerPatch::default()
                        };
                        2
                    ]
                }),
                "listenerPatches",
            ),
            (
                Box::new(|d| {
                    d.listener_patches = vec![ListenerPatch {
                        name: "outbound".into(),
                        virtual_hosts: vec![vhost("b", "c"), vhost("b", "c")],
                        ..ListenerPatch::default()
                    }]
                }),
                "listenerPatches[outbound].virtualHosts",
            ),
            (
                Box::new(|d| {
                    d.listener_patches = vec![ListenerPatch {
                        name: "outbound".into(),
                        removed_virtual_hosts: vec!["a".into(), "a".into()],
                        ..ListenerPatch::default()
                    }]
                }),
                "listenerPatches[outbound].removedVirtualHosts",
            ),
            (
                Box::new(|d| d.clusters = vec![cluster("b", 1), cluster("b", 2)]),
                "clusters",
            ),
            (
                Box::new(|d| d.removed_clusters = vec!["a".into(), "a".into()]),
                "removedClusters",
            ),
            (
                Box::new(|d| d.dns_entries = vec![dns("b", "10.0.0.1"), dns("b", "10.0.0.2")]),
                "dnsEntries",
            ),
            (
                Box::new(|d| d.removed_dns_entries = vec!["a.shop".into(), "a.shop".into()]),
                "removedDnsEntries",
            ),
        ];
        for (set, field) in cases {
            let mut d = ConfigDelta::new("v1", "v2");
            set(&mut d);
            let err = d.apply(&base()).unwrap_err();
            assert!(
                matches!(&err, DeltaError::Duplicate { field: f, .. } if f == field),
                "{field}: {err}"
            );
            assert!(err.to_string().contains(&format!("twice in {field}")), "{err}");
        }
    }

    #[test]
    fn the_base_is_never_modified_and_errors_leave_nothing_half_applied() {
        let b = base();
        let mut d = ConfigDelta::new("v1", "v2");
        d.clusters = vec![cluster("b", 2)];
        d.removed_dns_entries = vec!["missing".into()];
        assert!(d.apply(&b).is_err());
        assert_eq!(b, base());
    }

    #[test]
    fn between_patches_listeners_whose_shell_is_unchanged() {
        let old = base();
        let mut new = base();
        new.version = "v2".into();
        new.listeners[0].virtual_hosts = vec![vhost("a", "other"), vhost("b", "c")];
        new.listeners[1].address = "0.0.0.0:15007".into();
        let d = ConfigDelta::between(&old, &new).unwrap();
        assert_eq!(d.listener_patches.len(), 1);
        let p = &d.listener_patches[0];
        assert_eq!(p.name, "outbound");
        assert_eq!(names(&p.virtual_hosts), ["a", "b"]);
        assert_eq!(p.removed_virtual_hosts, ["c"]);
        assert_eq!(p.tcp_routes, None);
        assert_eq!(
            names(&d.listeners),
            ["inbound"],
            "a changed address sends the listener whole"
        );
        assert!(d.clusters.is_empty() && d.removed_clusters.is_empty());
        assert_eq!(d.listener_order, None);
        assert_eq!(d.apply(&old).unwrap(), new);
    }

    #[test]
    fn between_sends_unpatchable_vhost_orders_whole_and_gives_up_on_unsorted_clusters() {
        let old = base();
        let mut new = base();
        new.version = "v2".into();
        // "b" after "c": sorted insertion cannot produce this, the listener goes whole.
        new.listeners[0].virtual_hosts.push(vhost("b", "c"));
        let d = ConfigDelta::between(&old, &new).unwrap();
        assert!(d.listener_patches.is_empty());
        assert_eq!(names(&d.listeners), ["outbound"]);
        assert_eq!(d.apply(&old).unwrap(), new);

        let mut new = base();
        new.version = "v2".into();
        new.clusters.push(cluster("b", 2));
        assert_eq!(ConfigDelta::between(&old, &new), None);
    }

    #[test]
    fn between_orders_listeners_when_needed() {
        let old = base();
        let mut new = base();
        new.version = "v2".into();
        new.listeners.reverse();
        let d = ConfigDelta::between(&old, &new).unwrap();
        assert_eq!(d.listener_order, Some(vec!["inbound".into(), "outbound".into()]));
        assert!(d.listeners.is_empty() && d.listener_patches.is_empty());
        assert_eq!(d.apply(&old).unwrap(), new);
    }

    #[test]
    fn json_omits_what_is_absent_and_uses_the_contract_names() {
        let d = ConfigDelta::new("v1", "v2");
        assert_eq!(
            serde_json::to_value(&d).unwrap(),
            json!({"baseVersion": "v1", "version": "v2"})
        );
        let p = ListenerPatch {
            name: "outbound".into(),
            ..ListenerPatch::default()
        };
        assert_eq!(serde_json::to_value(&p).unwrap(), json!({"name": "outbound"}));
        assert!(serde_json::from_value::<ConfigDelta>(json!({"version": "v2"})).is_err());
        assert!(serde_json::from_value::<ConfigDelta>(json!({"baseVersion": "v1"})).is_err());
    }

    #[test]
    fn json_round_trip_pins_every_field_name() {
        let mut d = ConfigDelta::new("v1", "v2");
        d.api_version = Some(crate::API_VERSION.into());
        d.mode = Some(ProxyMode::Sidecar);
        d.node = Some(NodeInfo::default());
        d.identity = Some(IdentityConfig::default());
        d.inbound = Some(InboundPolicy::default());
        d.telemetry = Some(Telemetry::default());
        d.drain_timeout_ms = Some(5);
        d.listeners = vec![listener("l", &[])];
        d.listener_patches = vec![ListenerPatch {
            name: "outbound".into(),
            virtual_hosts: vec![vhost("v", "c")],
            removed_virtual_hosts: vec!["w".into()],
            tcp_routes: Some(vec![]),
        }];
        d.removed_listeners = vec!["r".into()];
        d.listener_order = Some(vec!["l".into()]);
        d.clusters = vec![cluster("c", 1)];
        d.removed_clusters = vec!["x".into()];
        d.dns_entries = vec![dns("h", "10.0.0.1")];
        d.removed_dns_entries = vec!["g".into()];
        d.dns_upstreams = Some(vec![]);
        let value = serde_json::to_value(&d).unwrap();
        let keys: Vec<&str> = value.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "baseVersion",
                "version",
                "apiVersion",
                "mode",
                "node",
                "identity",
                "inbound",
                "telemetry",
                "drainTimeoutMs",
                "listeners",
                "listenerPatches",
                "removedListeners",
                "listenerOrder",
                "clusters",
                "removedClusters",
                "dnsEntries",
                "removedDnsEntries",
                "dnsUpstreams"
            ]
        );
        let patch_keys: Vec<&str> = value["listenerPatches"][0]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(patch_keys, ["name", "virtualHosts", "removedVirtualHosts", "tcpRoutes"]);
        // Present-but-empty Options survive (they mean "replace with nothing").
        assert_eq!(value["dnsUpstreams"], json!([]));
        assert_eq!(value["listenerPatches"][0]["tcpRoutes"], json!([]));
        let back: ConfigDelta = serde_json::from_value(value).unwrap();
        assert_eq!(back, d);
    }

    #[test]
    fn garbage_is_rejected_without_panicking() {
        for text in [
            "",
            "{}",
            "[]",
            "null",
            r#"{"baseVersion": 1, "version": "v2"}"#,
            r#"{"baseVersion": "v1", "version": "v2", "listeners": {}}"#,
            r#"{"baseVersion": "v1", "version": "v2", "listenerPatches": [{}]}"#,
        ] {
            assert!(serde_json::from_str::<ConfigDelta>(text).is_err(), "{text}");
        }
    }
}
