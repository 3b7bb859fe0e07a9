//! DNS entries the proxy's DNS server answers from its configuration.

use serde::{Deserialize, Serialize};

/// The DNS proxy's table.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DnsConfig {
    /// Names and their addresses.
    pub entries: Vec<DnsEntry>,
    /// Upstream resolvers (`ip:port`) for names not in `entries`; empty = the
    /// system resolvers from `/etc/resolv.conf`.
    pub upstreams: Vec<String>,
}

/// One service's names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DnsEntry {
    /// Fully qualified name, e.g. `payment.shop.svc.cluster.local`.
    pub hostname: String,
    /// Other names that resolve the same, e.g. `payment` and `payment.shop` for
    /// clients in `shop` (the operator decides, per the proxy's namespace).
    #[serde(default)]
    pub aliases: Vec<String>,
    /// IPv4 and IPv6 addresses.
    pub addresses: Vec<String>,
}
