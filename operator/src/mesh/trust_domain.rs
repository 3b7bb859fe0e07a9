//! A change of `spec.trustDomain`, as the reconciler carries it out (Istio's
//! `trustDomainAliases`, made implicit): every replica issues certificates in the new domain
//! at once and accepts the previous one as an alias; proxies renew into the new domain as soon
//! as their pushed configuration names it. The leader keeps the previous domain in
//! `status.certificateAuthority.previousTrustDomains` — which every replica's compiler and
//! signer read as an alias — until no connected proxy serves a certificate in it.
//!
//! Pure: the recorded status and the proxies' reported certificates in, the previous domains,
//! the condition's words and the events out.
//!
//! # Guarantees
//! - A previous domain is dropped only when every meshed pod's proxy is connected, has
//!   reported the trust domain of the certificate it serves, and none is in it: a proxy that
//!   does not say, or is not connected (it still serves what it had), keeps every previous
//!   domain an alias.
//!
//! # Caveats
//! - A meshed pod whose proxy never reconnects keeps the change from finishing (the
//!   CertificateAuthorityReady condition says how many proxies it waits for): delete the pod.
//! - Proxies renew as soon as their configuration names the new domain, all at once: one
//!   TokenReview and one signature per proxy, as a root rotation asks.

use std::collections::BTreeMap;

use trellis_api::mesh::{CertificateAuthorityStatus, MeshSpec, MeshStatus};

/// The key of [`super::conditions::CaObservation::served_trust_domains`] for connected
/// proxies that did not report their certificate's identity.
pub const UNREPORTED: &str = "";

/// The previous trust domains that stay aliases of `spec`'s: those `recorded` holds (and the
/// domain it says certificates were issued in, when `spec` names another), while a connected
/// proxy serves a certificate in one of them, one does not say which domain it serves in, or
/// a meshed pod's proxy is not connected (`disconnected`: it still serves the certificate it
/// had, and its peers must keep accepting it). `served` counts connected proxies by the trust
/// domain of the certificate they serve.
pub fn previous(
    recorded: Option<&MeshStatus>,
    spec: &MeshSpec,
    served: &BTreeMap<String, u32>,
    disconnected: u32,
) -> Vec<String> {
    let candidates = recorded.map(|s| s.previous_trust_domains(spec)).unwrap_or_default();
    let unreported = disconnected > 0 || served.get(UNREPORTED).copied().unwrap_or(0) > 0;
    candidates
        .into_iter()
        .filter(|td| unreported || served.get(td).copied().unwrap_or(0) > 0)
        .collect()
}

/// What the CertificateAuthorityReady condition says of a change under way (`None`: none).
pub fn progress(trust_domain: &str, previous: &[String], served: &BTreeMap<String, u32>) -> Option<String> {
    if previous.is_empty() {
        return None;
    }
    let on: u32 = previous.iter().filter_map(|td| served.get(td)).sum();
    let unreported = served.get(UNREPORTED).copied().unwrap_or(0);
    let total: u32 = served.values().sum();
    let mut message = format!(
        "trust domain changing to {trust_domain}: {on} of {total} connected proxies still serve a certificate in {} (an alias of {trust_domain} until none does and every meshed pod's proxy is connected; proxies renew as soon as their configuration names {trust_domain})",
        previous.join(", ")
    );
    if unreported > 0 {
        message.push_str(&format!(
            "; {unreported} proxies do not report their certificate's identity (an older trellis-proxy), so the previous domain stays an alias while they are connected"
        ));
    }
    Some(message)
}

/// The events of a trust domain change between the status the Mesh holds and the next one:
/// started (the domain certificates are issued in changed), finished (no previous domain is an
/// alias any more, but those the user keeps: `kept`, `spec.trustDomainAliases`, which the notes
/// say stay aliases). `(reason, note)` pairs, in that order.
pub fn transitions(
    previous: Option<&CertificateAuthorityStatus>,
    next: &CertificateAuthorityStatus,
    kept: &[String],
) -> Vec<(&'static str, String)> {
    let Some(previous) = previous else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let (Some(from), Some(to)) = (&previous.trust_domain, &next.trust_domain) else {
        return out;
    };
    let changing = |s: &CertificateAuthorityStatus| s.previous_trust_domains.as_ref().is_some_and(|p| !p.is_empty());
    let is_kept = |td: &str| kept.iter().any(|k| k == td);
    if from != to {
        let alias = if is_kept(from) {
            format!("{from} stays an alias of it (spec.trustDomainAliases)")
        } else {
            format!("{from} is an alias of it until every connected proxy serves a certificate in {to}")
        };
        out.push((
            "TrustDomainChangeStarted",
            format!("spec.trustDomain changed from {from} to {to}: certificates are issued in {to}; {alias}"),
        ));
    }
    if (from != to || changing(previous)) && !changing(next) {
        let old: std::collections::BTreeSet<&String> = previous
            .previous_trust_domains
            .iter()
            .flatten()
            .chain((from != to).then_some(from))
            .collect();
        let (stay, dropped): (Vec<&str>, Vec<&str>) = old.into_iter().map(String::as_str).partition(|td| is_kept(td));
        let mut note = format!("every connected proxy serves a certificate in {to}");
        if !dropped.is_empty() {
            note.push_str(&format!("; {} is no longer an alias", dropped.join(", ")));
        }
        if !stay.is_empty() {
            note.push_str(&format!(
                "; {} stays an alias (spec.trustDomainAliases)",
                stay.join(", ")
            ));
        }
        out.push(("TrustDomainChangeFinished", note));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(td: &str) -> MeshSpec {
        MeshSpec {
            trust_domain: Some(td.into()),
            ..MeshSpec::default()
        }
    }

    fn ca(td: &str, previous: &[&str]) -> CertificateAuthorityStatus {
        CertificateAuthorityStatus {
            trust_domain: Some(td.into()),
            previous_trust_domains: Some(previous.iter().map(|s| s.to_string()).collect()),
            ..CertificateAuthorityStatus::default()
        }
    }

    fn status(td: &str, previous: &[&str]) -> MeshStatus {
        MeshStatus {
            certificate_authority: Some(ca(td, previous)),
            ..MeshStatus::default()
        }
    }

    fn served(counts: &[(&str, u32)]) -> BTreeMap<String, u32> {
        counts.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn the_previous_domain_stays_an_alias_until_no_connected_proxy_serves_it() {
        let new = spec("new.example");
        // Just changed: the status still says certificates are issued in old.example.
        let recorded = status("old.example", &[]);
        assert_eq!(
            previous(Some(&recorded), &new, &served(&[("old.example", 3)]), 0),
            ["old.example"]
        );
        // Recorded, two proxies renewed, one still on the old domain.
        let recorded = status("new.example", &["old.example"]);
        let mixed = served(&[("old.example", 1), ("new.example", 2)]);
        assert_eq!(previous(Some(&recorded), &new, &mixed, 0), ["old.example"]);
        // A proxy that does not say keeps it too.
        let unsure = served(&[(UNREPORTED, 1), ("new.example", 2)]);
        assert_eq!(previous(Some(&recorded), &new, &unsure, 0), ["old.example"]);
        // So does a meshed pod whose proxy is not connected: it still serves what it had.
        let renewed = served(&[("new.example", 3)]);
        assert_eq!(previous(Some(&recorded), &new, &renewed, 1), ["old.example"]);
        // Every proxy renewed: over.
        assert!(previous(Some(&recorded), &new, &renewed, 0).is_empty());
        // No change at all.
        assert!(previous(Some(&status("new.example", &[])), &new, &renewed, 1).is_empty());
        assert!(previous(None, &new, &served(&[]), 0).is_empty());
    }

    #[test]
    fn the_condition_counts_the_proxies_still_on_the_previous_domain() {
        let mixed = served(&[("old.example", 1), ("new.example", 2)]);
        let message = progress("new.example", &["old.example".into()], &mixed).unwrap();
        assert!(
            message.contains("1 of 3 connected proxies still serve a certificate in old.example"),
            "{message}"
        );
        assert!(progress("new.example", &[], &mixed).is_none());
        let unsure = served(&[(UNREPORTED, 2), ("new.example", 2)]);
        let message = progress("new.example", &["old.example".into()], &unsure).unwrap();
        assert!(message.contains("2 proxies do not report"), "{message}");
    }

    #[test]
    fn a_change_is_announced_when_it_starts_and_when_it_finishes() {
        let reasons = |p: Option<&CertificateAuthorityStatus>, n: &CertificateAuthorityStatus| {
            transitions(p, n, &[]).into_iter().map(|(r, _)| r).collect::<Vec<_>>()
        };
        let before = ca("old.example", &[]);
        let changing = ca("new.example", &["old.example"]);
        let done = ca("new.example", &[]);
        assert!(reasons(None, &changing).is_empty(), "a first status is no transition");
        assert!(reasons(Some(&before), &before).is_empty());
        let started = transitions(Some(&before), &changing, &[]);
        assert_eq!(started.len(), 1);
        assert_eq!(started[0].0, "TrustDomainChangeStarted");
        assert!(
            started[0].1.contains("from old.example to new.example"),
            "{}",
            started[0].1
        );
        assert!(reasons(Some(&changing), &changing).is_empty());
        let finished = transitions(Some(&changing), &done, &[]);
        assert_eq!(finished.len(), 1);
        assert_eq!(finished[0].0, "TrustDomainChangeFinished");
        assert!(
            finished[0].1.contains("old.example is no longer an alias"),
            "{}",
            finished[0].1
        );
        // Started and finished between two looks: both, once.
        assert_eq!(
            reasons(Some(&before), &done),
            ["TrustDomainChangeStarted", "TrustDomainChangeFinished"]
        );
    }

    #[test]
    fn a_previous_domain_the_user_keeps_is_said_to_stay_an_alias() {
        let kept = ["old.example".to_string()];
        let before = ca("old.example", &[]);
        let changing = ca("new.example", &["old.example"]);
        let done = ca("new.example", &[]);
        let started = transitions(Some(&before), &changing, &kept);
        assert!(
            started[0]
                .1
                .contains("old.example stays an alias of it (spec.trustDomainAliases)"),
            "{}",
            started[0].1
        );
        let finished = transitions(Some(&changing), &done, &kept);
        assert_eq!(finished.len(), 1);
        assert!(
            finished[0]
                .1
                .contains("old.example stays an alias (spec.trustDomainAliases)")
                && !finished[0].1.contains("no longer"),
            "{}",
            finished[0].1
        );
        // One kept, one not: each said for what it is.
        let two = ca("new.example", &["old.example", "older.example"]);
        let finished = transitions(Some(&two), &done, &kept);
        assert!(
            finished[0].1.contains("older.example is no longer an alias")
                && finished[0].1.contains("old.example stays an alias"),
            "{}",
            finished[0].1
        );
    }
}
