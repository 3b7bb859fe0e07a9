//! The verdict of `meshctl check` on the proxies' workload certificates: which root signed the
//! certificate each running proxy serves now — as the proxy reports it on its subscription,
//! mesh-wide (every operator replica's own proxies) — against the mesh's roots (`/debug/ca`).
//!
//! - From the issuing root: ok.
//! - From a root the mesh still trusts but no longer issues from (a root rotation waits for the
//!   proxy to renew): a warning, with the time its certificate has left. The mesh works (both
//!   roots are trusted during the overlap), but the rotation cannot finish, and the proxy
//!   stops working when its certificate expires if it cannot renew.
//! - From a root the mesh no longer trusts, or expired: a failure. Its peers refuse its mutual
//!   TLS.
//! - No report (a proxy older than this check): a warning.
//!
//! Proxies that are not connected are the connection check's ([`super::data_plane`]).

use std::collections::BTreeMap;

use serde_json::Value;
use trellis_contract::certificate::ServedCertificate;
use trellis_core::analysis::ProxySync;
use trellis_manifests::sidecar::ProxyRole;

use super::Check;
use super::data_plane::{RunningProxies, proxy_log};

const IDENTITY: &str = "trellis-identity";
const NAME: &str = "every proxy's certificate comes from the current root";

/// A root of the mesh as `/debug/ca` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Root {
    trusted: bool,
    issuing: bool,
}

/// What one proxy's certificate is, for the verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Standing {
    /// From the issuing root.
    Current,
    /// From a trusted root the mesh no longer issues from; the certificate's seconds left.
    Previous { root: String, left: u64 },
    /// From a root the mesh does not trust, or expired: why.
    Untrusted(String),
    /// The proxy reported none.
    Unreported,
}

/// `3d`, `5h`, `12m` or `40s`: the largest whole unit.
pub fn duration_words(secs: u64) -> String {
    match secs {
        s if s >= 86_400 => format!("{}d", s / 86_400),
        s if s >= 3_600 => format!("{}h", s / 3_600),
        s if s >= 60 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

fn standing(certificate: Option<&ServedCertificate>, roots: &BTreeMap<String, Root>, now: u64) -> Standing {
    let Some(c) = certificate else {
        return Standing::Unreported;
    };
    let root = &c.root_fingerprint;
    if c.not_after_unix <= now {
        return Standing::Untrusted(format!(
            "its certificate (serial {}, from root {root}) expired {} ago",
            c.serial,
            duration_words(now - c.not_after_unix)
        ));
    }
    match roots.get(root) {
        Some(r) if r.issuing => Standing::Current,
        Some(r) if r.trusted => Standing::Previous {
            root: root.clone(),
            left: c.not_after_unix - now,
        },
        _ => Standing::Untrusted(format!(
            "its certificate (serial {}) is from root {root}, which the mesh no longer trusts",
            c.serial
        )),
    }
}

/// Every running proxy (`proxies`: `namespace/pod` of the running pods with one) connected to
/// the operator (`syncz`: the merged sync states) serves a certificate from the issuing root of
/// `ca` (`/debug/ca`), at `now` (seconds since the epoch).
pub fn proxy_certificates(
    ca: &Result<Value, String>,
    proxies: &Result<RunningProxies, String>,
    syncz: &Result<Value, String>,
    now: u64,
) -> Check {
    let ca = match ca {
        Ok(ca) => ca,
        Err(e) => {
            return Check::failed(
                IDENTITY,
                NAME,
                format!("the operator's /debug/ca did not answer: {e}"),
                "the operator must be running: see the operator line",
            );
        }
    };
    let states: Vec<ProxySync> = match syncz.as_ref().map(|v| serde_json::from_value(v.clone())) {
        Ok(Ok(states)) => states,
        Ok(Err(e)) => {
            return Check::failed(
                IDENTITY,
                NAME,
                format!("the operator's sync state is not a list of proxies: {e}"),
                "meshctl and the operator may be of different versions: see the version line",
            );
        }
        Err(e) => {
            return Check::failed(
                IDENTITY,
                NAME,
                e.clone(),
                "the operator must be running: see the operator line",
            );
        }
    };
    let roots: BTreeMap<String, Root> = ca["roots"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| {
            let root = Root {
                trusted: r["trusted"] == true,
                issuing: r["issuing"] == true,
            };
            Some((r["fingerprint"].as_str()?.to_string(), root))
        })
        .collect();
    let issuing = roots
        .iter()
        .find(|(_, r)| r.issuing)
        .map_or("(none)", |(fp, _)| fp.as_str());
    // A pod going away may still be subscribed; running pods only (all when they could not be
    // listed).
    let running = proxies.as_ref().ok();
    // The role a proxy's pod runs it in (its container), else the one it announced.
    let role = |s: &ProxySync| {
        running
            .and_then(|r| r.get(&s.proxy).copied())
            .or_else(|| ProxyRole::parse(&s.role))
            .unwrap_or(ProxyRole::Sidecar)
    };
    let mut current = 0;
    let (mut previous, mut untrusted, mut unreported) = (Vec::new(), Vec::new(), Vec::new());
    for s in states
        .iter()
        .filter(|s| s.connected && running.is_none_or(|r| r.contains_key(&s.proxy)))
    {
        match standing(s.certificate.as_ref(), &roots, now) {
            Standing::Current => current += 1,
            Standing::Previous { root, left } => previous.push((
                format!(
                    "{} (from root {root}; its certificate has {} left)",
                    s.proxy,
                    duration_words(left)
                ),
                (s.proxy.clone(), role(s)),
            )),
            Standing::Untrusted(why) => untrusted.push((s.proxy.clone(), why, role(s))),
            Standing::Unreported => unreported.push(s.proxy.clone()),
        }
    }
    let total = current + previous.len() + untrusted.len() + unreported.len();
    let phase = format!(
        "root rotation phase {}: {}",
        ca["phase"].as_str().unwrap_or("?"),
        ca["progress"].as_str().unwrap_or("")
    );
    if let Some((first, _, first_role)) = untrusted.first() {
        let (ns, pod) = first.split_once('/').unwrap_or(("NAMESPACE", first.as_str()));
        let log = proxy_log(first, *first_role);
        let listed: Vec<String> = untrusted.iter().map(|(p, why, _)| format!("{p}: {why}")).collect();
        return Check::failed(
            IDENTITY,
            NAME,
            format!(
                "{} of {total} proxies serve a certificate the mesh does not trust, so their peers refuse their \
                 mutual TLS: {}; the mesh issues from root {issuing}",
                untrusted.len(),
                listed.join("; ")
            ),
            format!(
                "restart the pod so its proxy gets a certificate from the current root (`kubectl -n {ns} delete pod \
                 {pod}`, or `kubectl -n {ns} rollout restart` its workload); `meshctl proxy-config secret {pod}.{ns}` \
                 shows the certificate it serves, and `{log}` why it did not renew"
            ),
        );
    }
    if let Some((_, (first, first_role))) = previous.first() {
        let (ns, pod) = first.split_once('/').unwrap_or(("NAMESPACE", first.as_str()));
        let log = proxy_log(first, *first_role);
        return Check::warning(
            IDENTITY,
            NAME,
            format!(
                "{} of {total} proxies still serve a certificate from a previous root, trusted until the rotation \
                 ends — and it waits for them: {}; {phase}",
                previous.len(),
                previous.iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>().join(", ")
            ),
            format!(
                "they are asked to renew at once; one that has not within a minute cannot: restart its pod (`kubectl \
                 -n {ns} delete pod {pod}`), and `{log}` says why; `meshctl proxy-config secret {pod}.{ns}` shows its \
                 certificate"
            ),
        );
    }
    if !unreported.is_empty() {
        return Check::warning(
            IDENTITY,
            NAME,
            format!(
                "{} of {total} proxies report no certificate: {}",
                unreported.len(),
                unreported.join(", ")
            ),
            "proxies older than the operator do not report theirs: `meshctl version` shows the skew, and the \
             operator's rollout moves them to its version; `meshctl proxy-config secret POD.NAMESPACE` shows a \
             proxy's certificate meanwhile",
        );
    }
    Check::ok(
        IDENTITY,
        NAME,
        format!("{current} proxies, all with a certificate from root {issuing}"),
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::check::Status;

    const NOW: u64 = 1_800_000_000;

    fn ca(roots: &[(&str, bool, bool)], phase: &str) -> Result<Value, String> {
        let roots: Vec<Value> = roots
            .iter()
            .map(|(fp, trusted, issuing)| json!({"fingerprint": fp, "trusted": trusted, "issuing": issuing}))
            .collect();
        Ok(json!({"phase": phase, "progress": "waiting on 1 proxies: shop/web-1", "roots": roots}))
    }

    /// A gateway's pod is named `gw-N` in these tests; others run sidecars.
    fn role_of(name: &str) -> ProxyRole {
        if name.contains("/gw-") {
            ProxyRole::Gateway
        } else {
            ProxyRole::Sidecar
        }
    }

    fn proxy(name: &str, connected: bool, root: Option<&str>, left: i64) -> Value {
        let certificate = root.map(|r| ServedCertificate {
            root_fingerprint: r.into(),
            serial: "0a:0b".into(),
            not_before_unix: NOW - 3_600,
            not_after_unix: NOW.saturating_add_signed(left),
            spiffe_id: String::new(),
        });
        serde_json::to_value(ProxySync {
            proxy: name.into(),
            role: role_of(name).as_str().into(),
            connected,
            certificate,
            ..ProxySync::default()
        })
        .unwrap()
    }

    fn pods(names: &[&str]) -> Result<RunningProxies, String> {
        Ok(names.iter().map(|n| (n.to_string(), role_of(n))).collect())
    }

    #[test]
    fn every_proxy_on_the_issuing_root_passes() {
        let syncz = Ok(json!([
            proxy("shop/web-1", true, Some("new"), 86_400),
            proxy("shop/db-0", true, Some("new"), 60)
        ]));
        let c = proxy_certificates(
            &ca(&[("new", true, true)], "Stable"),
            &pods(&["shop/web-1", "shop/db-0"]),
            &syncz,
            NOW,
        );
        assert_eq!(c.status, Status::Ok, "{c:?}");
        assert_eq!(c.detail, "2 proxies, all with a certificate from root new");
    }

    #[test]
    fn a_previous_root_still_trusted_is_a_warning_with_the_time_left() {
        let syncz = Ok(json!([
            proxy("shop/web-1", true, Some("old"), 5 * 3_600),
            proxy("shop/db-0", true, Some("new"), 86_400)
        ]));
        let c = proxy_certificates(
            &ca(&[("old", true, false), ("new", true, true)], "Reissuing"),
            &pods(&["shop/web-1", "shop/db-0"]),
            &syncz,
            NOW,
        );
        assert_eq!(c.status, Status::Warning, "{c:?}");
        assert!(
            c.detail
                .starts_with("1 of 2 proxies still serve a certificate from a previous root"),
            "{}",
            c.detail
        );
        assert!(
            c.detail
                .contains("shop/web-1 (from root old; its certificate has 5h left)"),
            "{}",
            c.detail
        );
        assert!(c.detail.contains("root rotation phase Reissuing"), "{}", c.detail);
        let hint = c.hint.unwrap();
        assert!(
            hint.contains("restart its pod (`kubectl -n shop delete pod web-1`)")
                && hint.contains("`kubectl -n shop logs web-1 -c trellis-proxy` says why"),
            "{hint}"
        );
        // A gateway's log is in its container `gateway`.
        let c = proxy_certificates(
            &ca(&[("old", true, false), ("new", true, true)], "Reissuing"),
            &pods(&["trellis-system/gw-1"]),
            &Ok(json!([proxy("trellis-system/gw-1", true, Some("old"), 5 * 3_600)])),
            NOW,
        );
        let hint = c.hint.unwrap();
        assert!(
            hint.contains("`kubectl -n trellis-system logs gw-1 -c gateway` says why"),
            "{hint}"
        );
    }

    #[test]
    fn a_root_no_longer_trusted_or_an_expired_certificate_fails_naming_the_proxy_and_the_fix() {
        let syncz = Ok(json!([
            proxy("trellis-system/gw-1", true, Some("old"), 86_400),
            proxy("shop/db-0", true, Some("new"), -120),
            proxy("shop/web-1", true, Some("new"), 86_400),
        ]));
        let c = proxy_certificates(
            &ca(&[("new", true, true)], "Stable"),
            &pods(&["trellis-system/gw-1", "shop/db-0", "shop/web-1"]),
            &syncz,
            NOW,
        );
        assert_eq!(c.status, Status::Failed, "{c:?}");
        assert!(
            c.detail
                .starts_with("2 of 3 proxies serve a certificate the mesh does not trust"),
            "{}",
            c.detail
        );
        assert!(
            c.detail.contains(
                "trellis-system/gw-1: its certificate (serial 0a:0b) is from root old, which the mesh no longer trusts"
            ),
            "{}",
            c.detail
        );
        assert!(
            c.detail
                .contains("shop/db-0: its certificate (serial 0a:0b, from root new) expired 2m ago"),
            "{}",
            c.detail
        );
        let hint = c.hint.unwrap();
        assert!(
            hint.contains("kubectl -n trellis-system delete pod gw-1")
                && hint.contains("meshctl proxy-config secret gw-1.trellis-system")
                && hint.contains("`kubectl -n trellis-system logs gw-1 -c gateway` why it did not renew"),
            "{hint}"
        );
        // A root held but no longer trusted (retiring) fails too.
        let c = proxy_certificates(
            &ca(&[("old", false, false), ("new", true, true)], "Retiring"),
            &pods(&["trellis-system/gw-1"]),
            &Ok(json!([proxy("trellis-system/gw-1", true, Some("old"), 86_400)])),
            NOW,
        );
        assert_eq!(c.status, Status::Failed, "{c:?}");
    }

    #[test]
    fn only_connected_running_proxies_count_and_a_missing_report_is_a_warning() {
        let syncz = Ok(json!([
            proxy("shop/gone-1", true, Some("old"), 86_400),
            proxy("shop/web-1", false, Some("old"), 86_400),
            proxy("shop/db-0", true, None, 0),
        ]));
        let roots = ca(&[("new", true, true)], "Stable");
        let c = proxy_certificates(&roots, &pods(&["shop/web-1", "shop/db-0"]), &syncz, NOW);
        assert_eq!(c.status, Status::Warning, "{c:?}");
        assert_eq!(c.detail, "1 of 1 proxies report no certificate: shop/db-0");
        // Pods that could not be listed: every connected proxy counts.
        let c = proxy_certificates(&roots, &Err("forbidden".into()), &syncz, NOW);
        assert_eq!(c.status, Status::Failed, "{c:?}");
        assert!(c.detail.contains("shop/gone-1"), "{}", c.detail);
    }

    #[test]
    fn an_operator_that_does_not_answer_fails_the_check() {
        let c = proxy_certificates(&Err("503".into()), &pods(&[]), &Ok(json!([])), NOW);
        assert_eq!(c.status, Status::Failed);
        let c = proxy_certificates(
            &ca(&[("new", true, true)], "Stable"),
            &pods(&[]),
            &Err("no running trellis-operator pod".into()),
            NOW,
        );
        assert_eq!(c.status, Status::Failed);
        assert!(c.hint.unwrap().contains("the operator must be running"));
        assert_eq!(duration_words(3 * 86_400 + 5), "3d");
        assert_eq!(duration_words(59), "59s");
    }
}
