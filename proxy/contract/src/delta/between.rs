//! Computing the delta between two configs: what changed, listeners patched when only their
//! routing tables did, and checked by applying it.

use std::collections::{HashMap, HashSet};

use super::apply::{Errors, patch_listener};
use super::{ConfigDelta, ListenerPatch, Named};
use crate::{Listener, ProxyConfig};

impl ConfigDelta {
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
