//! Incremental configuration: a [`ConfigDelta`] turns the [`ProxyConfig`](crate::ProxyConfig) of
//! one version into the next, so a change to one VirtualService does not re-send a whole config
//! to every proxy.
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
//! - The result is not validated: the proxy runs
//!   [`ProxyConfig::validate`](crate::ProxyConfig::validate) on it as on a full snapshot.
//!
//! Applying a delta is `apply`'s, computing one `between`'s; the types and errors are here.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{
    Cluster, DnsEntry, IdentityConfig, InboundPolicy, Listener, NodeInfo, ProxyMode, TcpRoute, Telemetry, VirtualHost,
};

mod apply;
mod between;

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
impl ConfigDelta {
    /// An empty delta from `base_version` to `version` (applying it only changes the version).
    pub fn new(base_version: impl Into<String>, version: impl Into<String>) -> Self {
        ConfigDelta {
            base_version: base_version.into(),
            version: version.into(),
            ..ConfigDelta::default()
        }
    }
}

#[cfg(test)]
mod tests;
