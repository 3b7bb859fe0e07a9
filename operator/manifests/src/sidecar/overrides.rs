//! Per-pod overrides of the sidecar, from the pod's annotations: the knobs Istio users reach
//! for, under Trellis names (Istio's in brackets).
//!
//! | annotation | what | (Istio) |
//! |---|---|---|
//! | `trellis.dev/proxy-image` | the proxy image for this pod (the rollout sets it per workload) | `sidecar.istio.io/proxyImage` |
//! | `sidecar.trellis.dev/proxyCPU`, `proxyMemory` | the proxy's requests | same names |
//! | `sidecar.trellis.dev/proxyCPULimit`, `proxyMemoryLimit` | the proxy's limits | same names |
//! | `sidecar.trellis.dev/logLevel` | the proxy's log level | `sidecar.istio.io/logLevel` |
//! | `sidecar.trellis.dev/concurrency` | proxy worker threads | `proxy.istio.io/config: concurrency` |
//! | `sidecar.trellis.dev/captureDNS` | `"false"`: leave DNS alone (default: captured) | `ISTIO_META_DNS_CAPTURE` |
//! | `sidecar.trellis.dev/rewriteAppHTTPProbers` | `"false"`: keep the app's probes as written | same name |
//! | `sidecar.trellis.dev/mergeMetrics` | `"false"`: leave the pod's `prometheus.io/*` annotations to the app (default: Prometheus scrapes the proxy, which merges the app's metrics; [`super::scrape`]) | `prometheus.istio.io/merge-metrics` |
//! | `traffic.trellis.dev/includeInboundPorts` | `*` or the inbound ports to capture | `traffic.sidecar.istio.io/…` |
//! | `traffic.trellis.dev/excludeInboundPorts` | inbound ports never captured | same |
//! | `traffic.trellis.dev/includeOutboundPorts` | outbound ports always captured | same |
//! | `traffic.trellis.dev/excludeOutboundPorts` | outbound ports never captured | same |
//! | `traffic.trellis.dev/includeOutboundIPRanges` | `*` or the destinations to capture | same |
//! | `traffic.trellis.dev/excludeOutboundIPRanges` | destinations never captured | same |
//!
//! Any other annotation under `sidecar.trellis.dev/` or `traffic.trellis.dev/` is an error
//! that lists these: nothing a user writes is silently ignored.

use std::collections::BTreeMap;

use super::InjectError;

/// The pod annotation naming the proxy image (Istio's `sidecar.istio.io/proxyImage`).
pub const PROXY_IMAGE: &str = super::PROXY_IMAGE_ANNOTATION;
/// The proxy's CPU request.
pub const PROXY_CPU: &str = "sidecar.trellis.dev/proxyCPU";
/// The proxy's memory request.
pub const PROXY_MEMORY: &str = "sidecar.trellis.dev/proxyMemory";
/// The proxy's CPU limit.
pub const PROXY_CPU_LIMIT: &str = "sidecar.trellis.dev/proxyCPULimit";
/// The proxy's memory limit.
pub const PROXY_MEMORY_LIMIT: &str = "sidecar.trellis.dev/proxyMemoryLimit";
/// The proxy's log level.
pub const LOG_LEVEL: &str = "sidecar.trellis.dev/logLevel";
/// The proxy's worker threads.
pub const CONCURRENCY: &str = "sidecar.trellis.dev/concurrency";
/// Whether DNS is captured.
pub const CAPTURE_DNS: &str = "sidecar.trellis.dev/captureDNS";
/// Whether the app's HTTP/TCP probes are rewritten behind the proxy's health port.
pub const REWRITE_PROBES: &str = "sidecar.trellis.dev/rewriteAppHTTPProbers";
/// Whether Prometheus scrapes the proxy, which merges the app's own metrics.
pub const MERGE_METRICS: &str = "sidecar.trellis.dev/mergeMetrics";
/// Inbound ports to capture.
pub const INCLUDE_INBOUND_PORTS: &str = "traffic.trellis.dev/includeInboundPorts";
/// Inbound ports never captured.
pub const EXCLUDE_INBOUND_PORTS: &str = "traffic.trellis.dev/excludeInboundPorts";
/// Outbound ports always captured.
pub const INCLUDE_OUTBOUND_PORTS: &str = "traffic.trellis.dev/includeOutboundPorts";
/// Outbound ports never captured.
pub const EXCLUDE_OUTBOUND_PORTS: &str = "traffic.trellis.dev/excludeOutboundPorts";
/// Outbound destinations to capture.
pub const INCLUDE_OUTBOUND_CIDRS: &str = "traffic.trellis.dev/includeOutboundIPRanges";
/// Outbound destinations never captured.
pub const EXCLUDE_OUTBOUND_CIDRS: &str = "traffic.trellis.dev/excludeOutboundIPRanges";

/// Annotations the injector itself writes (read back, never an error).
const RECORDS: [&str; 1] = [super::INJECTED_ANNOTATION];

/// Every annotation the sidecar template reads.
pub const KNOWN: [&str; 16] = [
    PROXY_IMAGE,
    PROXY_CPU,
    PROXY_MEMORY,
    PROXY_CPU_LIMIT,
    PROXY_MEMORY_LIMIT,
    LOG_LEVEL,
    CONCURRENCY,
    CAPTURE_DNS,
    REWRITE_PROBES,
    MERGE_METRICS,
    INCLUDE_INBOUND_PORTS,
    EXCLUDE_INBOUND_PORTS,
    INCLUDE_OUTBOUND_PORTS,
    EXCLUDE_OUTBOUND_PORTS,
    INCLUDE_OUTBOUND_CIDRS,
    EXCLUDE_OUTBOUND_CIDRS,
];

/// What a pod's annotations change in its sidecar.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// The proxy image.
    pub proxy_image: Option<String>,
    /// Requests and limits: `(resource, quantity)` for `requests` and `limits`.
    pub requests: BTreeMap<String, String>,
    /// Limits.
    pub limits: BTreeMap<String, String>,
    /// `TRELLIS_LOG`.
    pub log_level: Option<String>,
    /// `TRELLIS_WORKERS`.
    pub concurrency: Option<u16>,
    /// `Some(false)`: DNS is not captured.
    pub capture_dns: Option<bool>,
    /// `Some(false)`: the app's probes are kept as written.
    pub rewrite_probes: Option<bool>,
    /// `Some(false)`: the pod's Prometheus annotations are left to the app.
    pub merge_metrics: Option<bool>,
    /// `Some(list)`: only these inbound ports are captured (`*` is `None`).
    pub include_inbound_ports: Option<Vec<u16>>,
    /// Inbound ports never captured.
    pub exclude_inbound_ports: Vec<u16>,
    /// Outbound ports always captured.
    pub include_outbound_ports: Vec<u16>,
    /// Outbound ports never captured.
    pub exclude_outbound_ports: Vec<u16>,
    /// `Some(list)`: only these destinations are captured (`*` is `None`).
    pub include_outbound_cidrs: Option<Vec<String>>,
    /// Destinations never captured.
    pub exclude_outbound_cidrs: Vec<String>,
}

fn bad(annotation: &str, value: &str, expected: &'static str) -> InjectError {
    InjectError::Annotation {
        annotation: annotation.into(),
        value: value.into(),
        expected,
    }
}

const PORTS: &str = "a comma-separated list of ports (1-65535), e.g. \"9090,9091\"";
const CIDRS: &str = "a comma-separated list of CIDRs, e.g. \"10.0.0.0/8,192.168.0.0/16\"";

fn port(p: &str) -> Option<u16> {
    p.parse::<u16>().ok().filter(|n| *n != 0)
}

fn cidr(c: &str) -> Option<String> {
    let (ip, len) = c.split_once('/')?;
    let ip = ip.parse::<std::net::IpAddr>().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    len.parse::<u8>().ok().filter(|l| *l <= max).map(|_| c.to_string())
}

/// A comma-separated list, each item parsed by `parse`; any bad item rejects the whole value.
fn list<T>(
    key: &str,
    value: &str,
    expected: &'static str,
    parse: impl Fn(&str) -> Option<T>,
) -> Result<Vec<T>, InjectError> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|item| parse(item).ok_or_else(|| bad(key, value, expected)))
        .collect()
}

/// `*` or a list.
fn include<T>(
    key: &str,
    value: &str,
    expected: &'static str,
    parse: impl Fn(&str) -> Option<T>,
) -> Result<Option<Vec<T>>, InjectError> {
    if value.trim() == "*" {
        return Ok(None);
    }
    list(key, value, expected, parse).map(Some)
}

fn boolean(key: &str, value: &str) -> Result<bool, InjectError> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(bad(key, value, "\"true\" or \"false\"")),
    }
}

/// A Kubernetes quantity (`100m`, `0.5`, `128Mi`, `1e3`).
fn quantity(q: &str) -> bool {
    let digits_end = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(digits_end);
    let number_ok = !number.is_empty()
        && number.chars().filter(|c| *c == '.').count() <= 1
        && number.trim_start_matches('+').chars().any(|c| c.is_ascii_digit());
    let suffix_ok = matches!(
        suffix,
        "" | "m" | "k" | "M" | "G" | "T" | "P" | "E" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei"
    ) || suffix
        .strip_prefix(['e', 'E'])
        .is_some_and(|e| !e.is_empty() && e.trim_start_matches(['+', '-']).chars().all(|c| c.is_ascii_digit()));
    number_ok && suffix_ok
}

/// The image reference rules the Mesh validator applies too: non-empty, no whitespace.
fn image(i: &str) -> bool {
    !i.is_empty() && !i.chars().any(|c| c.is_whitespace() || c.is_control())
}

impl Overrides {
    /// Read a pod's annotations.
    ///
    /// # Errors
    /// An [`InjectError::Annotation`] naming the first bad value and what is allowed, or
    /// [`InjectError::UnknownAnnotation`] for a key under the sidecar prefixes that the
    /// template does not read.
    pub fn from_annotations(annotations: &BTreeMap<String, String>) -> Result<Self, InjectError> {
        let mut o = Overrides::default();
        for (key, value) in annotations {
            let v = value.trim();
            match key.as_str() {
                PROXY_IMAGE => {
                    if !image(v) {
                        return Err(bad(
                            key,
                            value,
                            "an image reference, e.g. ghcr.io/trellis-mesh/trellis-proxy:0.1.0",
                        ));
                    }
                    o.proxy_image = Some(v.to_string());
                }
                PROXY_CPU | PROXY_MEMORY | PROXY_CPU_LIMIT | PROXY_MEMORY_LIMIT => {
                    if !quantity(v) {
                        return Err(bad(
                            key,
                            value,
                            "a Kubernetes quantity, e.g. \"100m\" for CPU or \"128Mi\" for memory",
                        ));
                    }
                    let (map, resource) = match key.as_str() {
                        PROXY_CPU => (&mut o.requests, "cpu"),
                        PROXY_MEMORY => (&mut o.requests, "memory"),
                        PROXY_CPU_LIMIT => (&mut o.limits, "cpu"),
                        _ => (&mut o.limits, "memory"),
                    };
                    map.insert(resource.to_string(), v.to_string());
                }
                LOG_LEVEL => {
                    let level = match v {
                        "trace" | "debug" | "info" | "error" | "off" => v,
                        "warn" | "warning" => "warn",
                        "critical" => "error",
                        _ => {
                            return Err(bad(
                                key,
                                value,
                                "one of trace, debug, info, warning, error, critical, off",
                            ));
                        }
                    };
                    o.log_level = Some(level.to_string());
                }
                CONCURRENCY => {
                    let n = v
                        .parse::<u16>()
                        .ok()
                        .filter(|n| (1..=64).contains(n))
                        .ok_or_else(|| bad(key, value, "a number of worker threads from 1 to 64"))?;
                    o.concurrency = Some(n);
                }
                CAPTURE_DNS => o.capture_dns = Some(boolean(key, v)?),
                REWRITE_PROBES => o.rewrite_probes = Some(boolean(key, v)?),
                MERGE_METRICS => o.merge_metrics = Some(boolean(key, v)?),
                INCLUDE_INBOUND_PORTS => {
                    o.include_inbound_ports = include(
                        key,
                        value,
                        "`*` or a comma-separated list of ports, e.g. \"8080,9090\"",
                        port,
                    )?
                }
                EXCLUDE_INBOUND_PORTS => o.exclude_inbound_ports = list(key, value, PORTS, port)?,
                INCLUDE_OUTBOUND_PORTS => o.include_outbound_ports = list(key, value, PORTS, port)?,
                EXCLUDE_OUTBOUND_PORTS => o.exclude_outbound_ports = list(key, value, PORTS, port)?,
                INCLUDE_OUTBOUND_CIDRS => {
                    o.include_outbound_cidrs = include(
                        key,
                        value,
                        "`*` or a comma-separated list of CIDRs, e.g. \"10.0.0.0/8\"",
                        cidr,
                    )?
                }
                EXCLUDE_OUTBOUND_CIDRS => o.exclude_outbound_cidrs = list(key, value, CIDRS, cidr)?,
                k if RECORDS.contains(&k) => {}
                k if k.starts_with("sidecar.trellis.dev/") || k.starts_with("traffic.trellis.dev/") => {
                    return Err(InjectError::UnknownAnnotation(k.to_string()));
                }
                _ => {}
            }
        }
        Ok(o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> Result<Overrides, InjectError> {
        Overrides::from_annotations(&pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    #[test]
    fn every_knob_is_read() {
        let o = parse(&[
            (PROXY_IMAGE, "registry.local/trellis-proxy:0.2.0"),
            (PROXY_CPU, "250m"),
            (PROXY_MEMORY, "64Mi"),
            (PROXY_CPU_LIMIT, "1"),
            (PROXY_MEMORY_LIMIT, "0.5Gi"),
            (LOG_LEVEL, "warning"),
            (CONCURRENCY, "2"),
            (CAPTURE_DNS, "false"),
            (REWRITE_PROBES, "false"),
            (INCLUDE_INBOUND_PORTS, "8080, 9090"),
            (EXCLUDE_INBOUND_PORTS, "22"),
            (INCLUDE_OUTBOUND_PORTS, "443"),
            (EXCLUDE_OUTBOUND_PORTS, "5432"),
            (INCLUDE_OUTBOUND_CIDRS, "10.0.0.0/8"),
            (EXCLUDE_OUTBOUND_CIDRS, "10.96.0.0/12,fd00::/8"),
            ("app.kubernetes.io/name", "not ours"),
        ])
        .unwrap();
        assert_eq!(o.proxy_image.as_deref(), Some("registry.local/trellis-proxy:0.2.0"));
        assert_eq!(o.requests["cpu"], "250m");
        assert_eq!(o.requests["memory"], "64Mi");
        assert_eq!(o.limits["cpu"], "1");
        assert_eq!(o.limits["memory"], "0.5Gi");
        assert_eq!(o.log_level.as_deref(), Some("warn"));
        assert_eq!(o.concurrency, Some(2));
        assert_eq!((o.capture_dns, o.rewrite_probes), (Some(false), Some(false)));
        assert_eq!(o.include_inbound_ports, Some(vec![8080, 9090]));
        assert_eq!(o.exclude_inbound_ports, [22]);
        assert_eq!(o.include_outbound_ports, [443]);
        assert_eq!(o.exclude_outbound_ports, [5432]);
        assert_eq!(o.include_outbound_cidrs, Some(vec!["10.0.0.0/8".to_string()]));
        assert_eq!(o.exclude_outbound_cidrs, ["10.96.0.0/12", "fd00::/8"]);
        assert_eq!(
            parse(&[(INCLUDE_INBOUND_PORTS, "*")]).unwrap().include_inbound_ports,
            None
        );
    }

    #[test]
    fn bad_values_name_the_annotation_and_what_is_allowed() {
        for (key, value, expect) in [
            (PROXY_CPU, "lots", "quantity"),
            (PROXY_MEMORY_LIMIT, "12XB", "quantity"),
            (LOG_LEVEL, "verbose", "warning"),
            (CONCURRENCY, "0", "1 to 64"),
            (CAPTURE_DNS, "no", "\"true\" or \"false\""),
            (EXCLUDE_INBOUND_PORTS, "22,ssh", "ports"),
            (INCLUDE_OUTBOUND_CIDRS, "10.0.0.0/40", "CIDRs"),
            (PROXY_IMAGE, "my image", "image reference"),
        ] {
            let err = parse(&[(key, value)]).unwrap_err().to_string();
            assert!(
                err.contains(key) && err.contains(value) && err.contains(expect),
                "{err}"
            );
        }
    }

    #[test]
    fn unknown_sidecar_annotations_are_refused_with_the_known_ones() {
        let err = parse(&[("sidecar.trellis.dev/proxyCpu", "100m")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("sidecar.trellis.dev/proxyCpu") && err.contains(PROXY_CPU),
            "{err}"
        );
        // What the injector writes itself is read back without complaint.
        assert!(parse(&[(super::super::INJECTED_ANNOTATION, "0.1.0")]).is_ok());
    }

    #[test]
    fn quantities() {
        for q in ["100m", "1", "0.5", "128Mi", "1Gi", "1e3", "2E-1", "+1"] {
            assert!(quantity(q), "{q}");
        }
        for q in ["", "m", "1.2.3", "1XB", "Mi", "1e", "-"] {
            assert!(!quantity(q), "{q}");
        }
    }
}
