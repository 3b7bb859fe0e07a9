//! Well-known ports and ids, in one place (Istio's values, so tooling and
//! habits carry over).

/// Outbound capture listener (iptables REDIRECT target for app traffic).
pub const OUTBOUND: u16 = 15001;
/// Inbound capture listener (iptables REDIRECT target for traffic to the app).
pub const INBOUND: u16 = 15006;
/// Admin API (`/config_dump`, `/logging`, ...), bound to localhost only.
pub const ADMIN: u16 = 15000;
/// Prometheus scrape port (`/metrics`).
pub const STATS: u16 = 15020;
/// Health port (`/ready`, `/live`) for kubelet probes.
pub const HEALTH: u16 = 15021;
/// DNS proxy.
pub const DNS: u16 = 15053;
/// UID the proxy runs as; its own traffic is excluded from capture.
pub const PROXY_UID: u32 = 1337;
