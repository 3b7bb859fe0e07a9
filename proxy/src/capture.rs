//! Transparent capture: the iptables rules `trellis-proxy init` installs in
//! the pod's network namespace (the injected init container runs it), in the
//! shape Istio uses so operators recognise them. Inbound TCP is redirected to
//! the inbound port, outbound TCP to the outbound port; the proxy's own UID,
//! localhost, the proxy's own ports and configured ports/CIDRs are excluded.
//! Optionally DNS (UDP and TCP 53) is redirected to the DNS proxy.
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
            dns_port: None,
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
    r.push(rule(&[
        "-t",
        "nat",
        "-A",
        "TRELLIS_INBOUND",
        "-p",
        "tcp",
        "-j",
        "TRELLIS_IN_REDIRECT",
    ]));

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
    r.push(rule(&["-t", "nat", "-A", "TRELLIS_OUTPUT", "-j", "TRELLIS_REDIRECT"]));

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
        assert!(!rules.iter().any(|r| r.contains("--dport 53")));
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
