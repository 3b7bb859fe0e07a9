//! Turning compiled configuration into the bytes pushed to one proxy, sharing the work between
//! proxies: a sidecar's [`Outbound`] (the bulk of its configuration: every visible service) is
//! serialized once per [`OutboundKey`](crate::compile::OutboundKey) and spliced into each
//! proxy's JSON next to its own part, and its digest enters each proxy's version.
//!
//! # Guarantees
//! - The JSON of [`render`] deserializes to the same configuration [`crate::compile::compile`]
//!   gives (listeners, clusters and DNS of the shared part included), with the version set.
//! - The version is a hash of the content (the proxy's own part, the shared part and the
//!   renewal request), so identical content has the same version on every replica.

use serde_json::Value;
use trellis_contract::ProxyConfig;

use crate::compile::Outbound;

/// A sidecar's shared part, serialized once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedOutbound {
    /// The outbound listener (one JSON object).
    listener: Vec<u8>,
    /// Its clusters (JSON objects separated by commas, no brackets; empty if none).
    clusters: Vec<u8>,
    /// The DNS table (one JSON object).
    dns: Vec<u8>,
    /// SHA-256 of the three.
    digest: Vec<u8>,
}

impl SharedOutbound {
    /// Serialize `outbound`.
    pub fn new(outbound: &Outbound) -> Self {
        let listener = to_vec(&outbound.listener);
        let mut clusters = Vec::new();
        for (i, c) in outbound.clusters.iter().enumerate() {
            if i > 0 {
                clusters.push(b',');
            }
            clusters.extend(to_vec(c));
        }
        let dns = to_vec(&outbound.dns);
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        for part in [&listener, &clusters, &dns] {
            ctx.update(&(part.len() as u64).to_be_bytes());
            ctx.update(part);
        }
        SharedOutbound {
            listener,
            clusters,
            dns,
            digest: ctx.finish().as_ref().to_vec(),
        }
    }

    /// Bytes held.
    pub fn len(&self) -> usize {
        self.listener.len() + self.clusters.len() + self.dns.len()
    }

    /// Whether nothing is held (never, for a compiled outbound).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn to_vec<T: serde::Serialize>(v: &T) -> Vec<u8> {
    // Contract types are plain data: serializing them cannot fail.
    serde_json::to_vec(v).unwrap_or_default()
}

/// The version and JSON of a proxy's configuration: its own part `own` (from
/// [`crate::compile::compile_workload`]; its version is ignored), the sidecar's `shared` part
/// if any, and the root the proxy is asked to renew from (`renew`, empty if none).
pub fn render(own: &ProxyConfig, shared: Option<&SharedOutbound>, renew: &str) -> (String, Vec<u8>) {
    let mut value = serde_json::to_value(own).unwrap_or(Value::Null);
    let Value::Object(map) = &mut value else {
        return (String::new(), Vec::new());
    };
    map.insert("version".into(), Value::String(String::new()));
    let own_bytes = to_vec(&*map);
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(&(own_bytes.len() as u64).to_be_bytes());
    ctx.update(&own_bytes);
    if let Some(s) = shared {
        ctx.update(&s.digest);
    }
    ctx.update(renew.as_bytes());
    let version: String = ctx.finish().as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect();
    map.insert("version".into(), Value::String(version.clone()));
    let Some(shared) = shared else {
        return (version, to_vec(&*map));
    };

    let listeners = map.remove("listeners");
    let clusters = map.remove("clusters");
    map.remove("dns");
    let mut out = Vec::with_capacity(own_bytes.len() + shared.len() + 64);
    out.push(b'{');
    for (k, v) in map.iter() {
        out.extend(to_vec(k));
        out.push(b':');
        out.extend(to_vec(v));
        out.push(b',');
    }
    out.extend_from_slice(b"\"listeners\":[");
    out.extend_from_slice(&shared.listener);
    for l in listeners.iter().filter_map(Value::as_array).flatten() {
        out.push(b',');
        out.extend(to_vec(l));
    }
    out.extend_from_slice(b"],\"clusters\":[");
    let mut first = true;
    for c in clusters.iter().filter_map(Value::as_array).flatten() {
        if !first {
            out.push(b',');
        }
        first = false;
        out.extend(to_vec(c));
    }
    if !shared.clusters.is_empty() {
        if !first {
            out.push(b',');
        }
        out.extend_from_slice(&shared.clusters);
    }
    out.extend_from_slice(b"],\"dns\":");
    out.extend_from_slice(&shared.dns);
    out.push(b'}');
    (version, out)
}
