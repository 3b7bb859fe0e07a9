//! Applying a delta to the config of its base version: all-or-nothing, names checked unique,
//! removals before upserts, new objects inserted in name order.

use std::collections::{HashMap, HashSet};

use super::{ConfigDelta, DeltaError, DeltaObject, ListenerPatch, Named};
use crate::{Listener, ProxyConfig};

/// Where an upserted object that is not in the list yet goes.
#[derive(Clone, Copy)]
enum NewGoes {
    /// At the end.
    Last,
    /// Before the first object whose name is greater.
    Sorted,
}

/// Builds the errors of one delta.
pub(super) struct Errors<'a> {
    pub(super) base: &'a str,
    pub(super) version: &'a str,
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
pub(super) fn patch_listener(
    listener: &mut Listener,
    patch: &ListenerPatch,
    errors: &Errors<'_>,
) -> Result<(), DeltaError> {
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
}
