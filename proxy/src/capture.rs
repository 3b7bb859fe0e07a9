//! Transparent capture: the iptables rules `trellis-proxy init` installs in
//! the pod's network namespace (the injected init container runs it), in the
//! shape Istio uses so operators recognise them. Inbound TCP is redirected to
//! the inbound port, outbound TCP to the outbound port; the proxy's own UID,
//! localhost, the proxy's own ports and configured ports/CIDRs are excluded.
//! Capture can be narrowed to listed inbound ports or outbound CIDRs (Istio's
//! `includeInboundPorts` / `includeOutboundIPRanges`), and listed outbound
//! ports are captured whatever their destination (`includeOutboundPorts`).
//! DNS (UDP and TCP 53) is redirected to the DNS proxy unless turned off.
//!
//! The rules are a pure function of [`CaptureConfig`]; [`install`] runs them.

use crate::ports;
use ipnet::IpNet;
use std::process::Command;

/// What to capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureConfig {
    /// UID whose traffic is never captured (the proxy's).
    pub proxy_uid: u32,
    /// Outbound listener port.
    pub outbound_port: u16,
    /// Inbound listener port.
    pub inbound_port: u16,
    /// Inbound destination ports left alone (the proxy's own ports are always
    /// excluded).
    pub exclude_inbound_ports: Vec<u16>,
    /// Outbound destination ports left alone.
    pub exclude_outbound_ports: Vec<u16>,
    /// Outbound destinations left alone.
    pub exclude_outbound_cidrs: Vec<IpNet>,
    /// Only these inbound ports are captured (`None`: every port).
    pub include_inbound_ports: Option<Vec<u16>>,
    /// Outbound ports captured whatever the destination (even an excluded CIDR).
    pub include_outbound_ports: Vec<u16>,
    /// Only these outbound destinations are captured (`None`: every destination).
    pub include_outbound_cidrs: Option<Vec<IpNet>>,
    /// Redirect DNS to this port, if set.
    pub dns_port: Option<u16>,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        Self {
            proxy_uid: ports::PROXY_UID,
            outbound_port: ports::OUTBOUND,
            inbound_port: ports::INBOUND,
            exclude_inbound_ports: Vec::new(),
            exclude_outbound_ports: Vec::new(),
            exclude_outbound_cidrs: Vec::new(),
            include_inbound_ports: None,
            include_outbound_ports: Vec::new(),
            include_outbound_cidrs: None,
            dns_port: Some(ports::DNS),
        }
    }
}

/// Failure running `iptables`.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The binary could not be run.
    #[error("cannot run iptables (is it installed, and do we have NET_ADMIN?): {0}")]
    Spawn(#[source] std::io::Error),
    /// A rule was refused.
    #[error("iptables {args} failed: {stderr}")]
    Rule {
        /// The arguments.
        args: String,
        /// What iptables said.
        stderr: String,
    },
}

/// An include list as Istio writes it: `*` for everything, otherwise a
/// comma-separated list (empty: nothing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Include<T>(pub Option<Vec<T>>);

/// An include list item that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("{item:?} is not valid here ({why}); write `*` or a comma-separated list, e.g. 8080,9090 or 10.0.0.0/8")]
pub struct IncludeError {
    item: String,
    why: String,
}

impl<T: std::str::FromStr> std::str::FromStr for Include<T>
where
    T::Err: std::fmt::Display,
{
    type Err = IncludeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim() == "*" {
            return Ok(Include(None));
        }
        s.split(',')
            .map(str::trim)
            .filter(|i| !i.is_empty())
            .map(|i| {
                i.parse::<T>().map_err(|e| IncludeError {
                    item: i.to_string(),
                    why: e.to_string(),
                })
            })
            .collect::<Result<Vec<T>, _>>()
            .map(|v| Include(Some(v)))
    }
}

fn rule(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// The iptables argument lists, in order (all in the `nat` table).
pub fn iptables_rules(c: &CaptureConfig) -> Vec<Vec<String>> {
    let uid = c.proxy_uid.to_string();
    let inbound = c.inbound_port.to_string();
    let outbound = c.outbound_port.to_string();
    let mut r = Vec::new();
    for chain in [
        "TRELLIS_INBOUND",
        "TRELLIS_IN_REDIRECT",
        "TRELLIS_OUTPUT",
        "TRELLIS_REDIRECT",
    ] {
        r.push(rule(&["-t", "nat", "-N", chain]));
    }
    r.push(rule(&[
        "-t",
        "nat",
        "-A",
        "TRELLIS_IN_REDIRECT",
        "-p",
        "tcp",
        "-j",
        "REDIRECT",
        "--to-ports",
        &inbound,
    ]));
    r.push(rule(&[
        "-t",
        "nat",
        "-A",
        "TRELLIS_REDIRECT",
        "-p",
        "tcp",
        "-j",
        "REDIRECT",
        "--to-ports",
        &outbound,
    ]));

    // Inbound: everything except the proxy's own ports and exclusions.
    r.push(rule(&[
        "-t",
        "nat",
        "-A",
        "PREROUTING",
        "-p",
        "tcp",
        "-j",
        "TRELLIS_INBOUND",
    ]));
    let mut excluded_in: Vec<u16> = vec![
        ports::ADMIN,
        ports::STATS,
        ports::HEALTH,
        c.inbound_port,
        c.outbound_port,
    ];
    excluded_in.extend(&c.exclude_inbound_ports);
    excluded_in.sort_unstable();
    excluded_in.dedup();
    for p in excluded_in {
        r.push(rule(&[
            "-t",
            "nat",
            "-A",
            "TRELLIS_INBOUND",
            "-p",
            "tcp",
            "--dport",
            &p.to_string(),
            "-j",
            "RETURN",
        ]));
    }
    match &c.include_inbound_ports {
        None => r.push(rule(&[
            "-t",
            "nat",
            "-A",
            "TRELLIS_INBOUND",
            "-p",
            "tcp",
            "-j",
            "TRELLIS_IN_REDIRECT",
        ])),
        Some(included) => {
            for p in included {
                r.push(rule(&[
                    "-t",
                    "nat",
                    "-A",
                    "TRELLIS_INBOUND",
                    "-p",
                    "tcp",
                    "--dport",
                    &p.to_string(),
                    "-j",
                    "TRELLIS_IN_REDIRECT",
                ]));
            }
        }
    }

    // Outbound.
    r.push(rule(&[
        "-t",
        "nat",
        "-A",
        "OUTPUT",
        "-p",
        "tcp",
        "-j",
        "TRELLIS_OUTPUT",
    ]));
    // The app calling its own pod IP via the proxy comes back as inbound.
    r.push(rule(&[
        "-t",
        "nat",
        "-A",
        "TRELLIS_OUTPUT",
        "-o",
        "lo",
        "!",
        "-d",
        "127.0.0.1/32",
        "-m",
        "owner",
        "--uid-owner",
        &uid,
        "-j",
        "TRELLIS_IN_REDIRECT",
    ]));
    r.push(rule(&[
        "-t",
        "nat",
        "-A",
        "TRELLIS_OUTPUT",
        "-o",
        "lo",
        "-m",
        "owner",
        "!",
        "--uid-owner",
        &uid,
        "-j",
        "RETURN",
    ]));
    // The proxy's own traffic is never captured (no loops).
    r.push(rule(&[
        "-t",
        "nat",
        "-A",
        "TRELLIS_OUTPUT",
        "-m",
        "owner",
        "--uid-owner",
        &uid,
        "-j",
        "RETURN",
    ]));
    r.push(rule(&[
        "-t",
        "nat",
        "-A",
        "TRELLIS_OUTPUT",
        "-d",
        "127.0.0.1/32",
        "-j",
        "RETURN",
    ]));
    // Listed ports are captured whatever their destination (before the CIDR rules).
    for p in &c.include_outbound_ports {
        r.push(rule(&[
            "-t",
            "nat",
            "-A",
            "TRELLIS_OUTPUT",
            "-p",
            "tcp",
            "--dport",
            &p.to_string(),
            "-j",
            "TRELLIS_REDIRECT",
        ]));
    }
    for p in &c.exclude_outbound_ports {
        r.push(rule(&[
            "-t",
            "nat",
            "-A",
            "TRELLIS_OUTPUT",
            "-p",
            "tcp",
            "--dport",
            &p.to_string(),
            "-j",
            "RETURN",
        ]));
    }
    for cidr in &c.exclude_outbound_cidrs {
        r.push(rule(&[
            "-t",
            "nat",
            "-A",
            "TRELLIS_OUTPUT",
            "-d",
            &cidr.to_string(),
            "-j",
            "RETURN",
        ]));
    }
    match &c.include_outbound_cidrs {
        None => r.push(rule(&["-t", "nat", "-A", "TRELLIS_OUTPUT", "-j", "TRELLIS_REDIRECT"])),
        Some(included) => {
            for cidr in included {
                r.push(rule(&[
                    "-t",
                    "nat",
                    "-A",
                    "TRELLIS_OUTPUT",
                    "-d",
                    &cidr.to_string(),
                    "-j",
                    "TRELLIS_REDIRECT",
                ]));
            }
        }
    }

    if let Some(dns) = c.dns_port {
        let dns = dns.to_string();
        for proto in ["udp", "tcp"] {
            // Inserted first so DNS is not swallowed by the TCP capture above.
            r.push(rule(&[
                "-t",
                "nat",
                "-I",
                "OUTPUT",
                "1",
                "-p",
                proto,
                "--dport",
                "53",
                "-m",
                "owner",
                "!",
                "--uid-owner",
                &uid,
                "-j",
                "REDIRECT",
                "--to-ports",
                &dns,
            ]));
        }
    }
    r
}

/// Run the rules with `iptables` (stops at the first failure).
pub fn install(c: &CaptureConfig, iptables: &str) -> Result<(), CaptureError> {
    for args in iptables_rules(c) {
        let out = Command::new(iptables)
            .args(&args)
            .output()
            .map_err(CaptureError::Spawn)?;
        if !out.status.success() {
            return Err(CaptureError::Rule {
                args: args.join(" "),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn joined(c: &CaptureConfig) -> Vec<String> {
        iptables_rules(c).into_iter().map(|r| r.join(" ")).collect()
    }

    #[test]
    fn default_rules_redirect_and_exclude_the_proxy() {
        let rules = joined(&CaptureConfig::default());
        assert!(rules.contains(&"-t nat -A TRELLIS_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006".to_string()));
        assert!(rules.contains(&"-t nat -A TRELLIS_REDIRECT -p tcp -j REDIRECT --to-ports 15001".to_string()));
        assert!(rules.contains(&"-t nat -A TRELLIS_OUTPUT -m owner --uid-owner 1337 -j RETURN".to_string()));
        assert!(rules.contains(&"-t nat -A TRELLIS_INBOUND -p tcp --dport 15021 -j RETURN".to_string()));
        // The catch-all redirect comes after every exclusion.
        let last_out = rules
            .iter()
            .rposition(|r| r.contains("TRELLIS_OUTPUT -j TRELLIS_REDIRECT"))
            .unwrap();
        let uid_excl = rules
            .iter()
            .position(|r| r.contains("--uid-owner 1337 -j RETURN"))
            .unwrap();
        assert!(uid_excl < last_out);
        // DNS is captured by default, for every process but the proxy.
        for proto in ["udp", "tcp"] {
            let dns = format!(
                "-t nat -I OUTPUT 1 -p {proto} --dport 53 -m owner ! --uid-owner 1337 -j REDIRECT --to-ports 15053"
            );
            assert!(rules.contains(&dns), "{rules:#?}");
        }
        let off = joined(&CaptureConfig {
            dns_port: None,
            ..CaptureConfig::default()
        });
        assert!(!off.iter().any(|r| r.contains("--dport 53")));
    }

    #[test]
    fn include_lists_parse_star_lists_and_empty() {
        assert_eq!("*".parse::<Include<u16>>().unwrap(), Include(None));
        assert_eq!("80, 443".parse::<Include<u16>>().unwrap(), Include(Some(vec![80, 443])));
        assert_eq!("".parse::<Include<u16>>().unwrap(), Include(Some(vec![])));
        let err = "80,http".parse::<Include<u16>>().unwrap_err().to_string();
        assert!(err.contains("\"http\"") && err.contains("comma-separated"), "{err}");
    }

    #[test]
    fn include_lists_narrow_capture_and_included_ports_win_over_excluded_cidrs() {
        let c = CaptureConfig {
            include_inbound_ports: Some(vec![8080, 9090]),
            include_outbound_cidrs: Some(vec!["10.0.0.0/8".parse().unwrap()]),
            include_outbound_ports: vec![443],
            exclude_outbound_cidrs: vec!["10.96.0.0/12".parse().unwrap()],
            ..Default::default()
        };
        let rules = joined(&c);
        assert!(rules.contains(&"-t nat -A TRELLIS_INBOUND -p tcp --dport 8080 -j TRELLIS_IN_REDIRECT".to_string()));
        assert!(rules.contains(&"-t nat -A TRELLIS_INBOUND -p tcp --dport 9090 -j TRELLIS_IN_REDIRECT".to_string()));
        assert!(!rules.contains(&"-t nat -A TRELLIS_INBOUND -p tcp -j TRELLIS_IN_REDIRECT".to_string()));
        assert!(rules.contains(&"-t nat -A TRELLIS_OUTPUT -d 10.0.0.0/8 -j TRELLIS_REDIRECT".to_string()));
        assert!(!rules.contains(&"-t nat -A TRELLIS_OUTPUT -j TRELLIS_REDIRECT".to_string()));
        let included_port = rules
            .iter()
            .position(|r| r == "-t nat -A TRELLIS_OUTPUT -p tcp --dport 443 -j TRELLIS_REDIRECT")
            .unwrap();
        let excluded_cidr = rules
            .iter()
            .position(|r| r == "-t nat -A TRELLIS_OUTPUT -d 10.96.0.0/12 -j RETURN")
            .unwrap();
        assert!(included_port < excluded_cidr, "{rules:#?}");
        // No inbound capture at all: an empty include list.
        let none = joined(&CaptureConfig {
            include_inbound_ports: Some(Vec::new()),
            ..Default::default()
        });
        assert!(
            !none
                .iter()
                .any(|r| r.contains("TRELLIS_INBOUND") && r.ends_with("TRELLIS_IN_REDIRECT"))
        );
    }

    #[test]
    fn exclusions_and_dns() {
        let c = CaptureConfig {
            exclude_outbound_ports: vec![5432],
            exclude_outbound_cidrs: vec!["10.96.0.0/12".parse().unwrap()],
            exclude_inbound_ports: vec![22],
            dns_port: Some(15053),
            ..Default::default()
        };
        let rules = joined(&c);
        assert!(rules.contains(&"-t nat -A TRELLIS_OUTPUT -p tcp --dport 5432 -j RETURN".to_string()));
        assert!(rules.contains(&"-t nat -A TRELLIS_OUTPUT -d 10.96.0.0/12 -j RETURN".to_string()));
        assert!(rules.contains(&"-t nat -A TRELLIS_INBOUND -p tcp --dport 22 -j RETURN".to_string()));
        assert!(
            rules
                .iter()
                .any(|r| r.contains("-p udp --dport 53") && r.ends_with("--to-ports 15053"))
        );
        assert!(
            rules
                .iter()
                .any(|r| r.contains("-p tcp --dport 53") && r.ends_with("--to-ports 15053"))
        );
    }
}
