//! A change of `spec.trustDomain`, as the reconciler carries it out (Istio's
//! `trustDomainAliases`, made implicit): every replica issues certificates in the new domain
//! at once and accepts the previous one as an alias; proxies renew into the new domain as soon
//! as their pushed configuration names it. The leader keeps the previous domain in
//! `status.certificateAuthority.previousTrustDomains` — which every replica's compiler and
//! signer read as an alias — until no connected proxy serves a certificate in it.
//!
//! Pure: the recorded status, the proxies' reported certificates and the meshed pods in, the
//! previous domains, the condition's words and the events out.
//!
//! Every proxy counts, whatever its role: the injected sidecars and the gateways
//! ([`crate::dataplane::MeshedPod::role`], told apart as the push API tells them).
//!
//! # Guarantees
//! - A previous domain is dropped only when every connected proxy has reported the trust
//!   domain of the certificate it serves and none is in it, and every meshed pod's proxy that
//!   ever ran is connected: a proxy that does not say, or that ran and is not connected (it may
//!   still serve the certificate it had), keeps every previous domain an alias.
//! - A meshed pod whose proxy never ran ([`crate::dataplane::proxy_ran`]: its container never
//!   started — the image not pulled, its configuration not resolved, the pod not scheduled)
//!   holds no certificate, so it does not hold the change.
//! - The CertificateAuthorityReady condition names the pods that hold a change, and what to do.
//!
//! # Caveats
//! - A meshed pod whose proxy ran and never reconnects keeps the change from finishing (the
//!   condition names it): bring its proxy back, or delete the pod.
//! - Proxies renew as soon as their configuration names the new domain, all at once: one
//!   TokenReview and one signature per proxy, as a root rotation asks.

use std::collections::BTreeMap;

use trellis_api::mesh::{CertificateAuthorityStatus, MeshSpec, MeshStatus};

use crate::dataplane::{MeshedPod, ProxyLink};

/// The key of [`super::conditions::CaObservation::served_trust_domains`] for connected
/// proxies that did not report their certificate's identity.
pub const UNREPORTED: &str = "";

/// Pods named in a condition message at most (the rest are counted).
pub const NAMED: usize = 5;

/// The meshed pods (`namespace/name`, sorted) whose proxy, sidecar or gateway, ran and is not
/// connected now (`links`, by `namespace/name`): it may still serve the certificate it had.
/// A proxy that never ran is not one of them.
pub fn unconnected(pods: &[MeshedPod], links: &BTreeMap<String, ProxyLink>) -> Vec<String> {
    let mut out: Vec<String> = pods
        .iter()
        .filter(|p| p.proxy_ran && !links.get(&p.key()).is_some_and(|l| l.connected))
        .map(MeshedPod::key)
        .collect();
    out.sort();
    out
}

/// The previous trust domains that stay aliases of `spec`'s: those `recorded` holds (and the
/// domain it says certificates were issued in, when `spec` names another), while a connected
/// proxy serves a certificate in one of them, one does not say which domain it serves in, or
/// a meshed pod's proxy that ran is not connected (`unconnected`: it may still serve the
/// certificate it had, and its peers must keep accepting it). `served` lists the connected
/// proxies by the trust domain of the certificate they serve.
pub fn previous(
    recorded: Option<&MeshStatus>,
    spec: &MeshSpec,
    served: &BTreeMap<String, Vec<String>>,
    unconnected: &[String],
) -> Vec<String> {
    let candidates = recorded.map(|s| s.previous_trust_domains(spec)).unwrap_or_default();
    let on = |td: &str| served.get(td).is_some_and(|p| !p.is_empty());
    let unsure = !unconnected.is_empty() || on(UNREPORTED);
    candidates.into_iter().filter(|td| unsure || on(td)).collect()
}

/// `names`, at most [`NAMED`] of them, and how many more.
fn named(names: &[String]) -> String {
    let shown = names.iter().take(NAMED).cloned().collect::<Vec<_>>().join(", ");
    match names.len().saturating_sub(NAMED) {
        0 => shown,
        more => format!("{shown} and {more} more"),
    }
}

/// What the CertificateAuthorityReady condition says of a change under way (`None`: none): how
/// many connected proxies still serve a certificate in a previous domain, and which pods hold
/// the change — the proxies still on it, those that do not say, those that ran and are not
/// connected (`unconnected`) — each with what to do.
pub fn progress(
    trust_domain: &str,
    previous: &[String],
    served: &BTreeMap<String, Vec<String>>,
    unconnected: &[String],
) -> Option<String> {
    if previous.is_empty() {
        return None;
    }
    let mut on: Vec<String> = previous
        .iter()
        .filter_map(|td| served.get(td))
        .flatten()
        .cloned()
        .collect();
    on.sort();
    let unreported = served.get(UNREPORTED).cloned().unwrap_or_default();
    let total: usize = served.values().map(Vec::len).sum();
    let old = previous.join(", ");
    let mut message = format!(
        "trust domain changing to {trust_domain}: {} of {total} connected proxies still serve a certificate in {old} (an alias of {trust_domain} until none does and every meshed pod's proxy that ran is connected; proxies renew as soon as their configuration names {trust_domain})",
        on.len()
    );
    if !on.is_empty() {
        message.push_str(&format!(
            "; still in {old}: {} (if one does not renew, its log says why; restarting its pod gives it a certificate in {trust_domain})",
            named(&on)
        ));
    }
    if !unreported.is_empty() {
        message.push_str(&format!(
            "; {} proxies do not report their certificate's identity (an older trellis-proxy), so the previous domain stays an alias while they are connected: {} (roll them to a current proxy: spec.versions.proxy)",
            unreported.len(),
            named(&unreported)
        ));
    }
    if !unconnected.is_empty() {
        message.push_str(&format!(
            "; held by meshed pods whose proxy ran and is not connected (it may still serve a certificate in {old}): {} (bring its proxy back: its container status and log say why it is down; or delete the pod if it is not coming back)",
            named(unconnected)
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
    use crate::dataplane::{Owner, ProxyRole};

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

    /// `n` connected proxies per domain, named `<domain>-<i>`.
    fn served(counts: &[(&str, u32)]) -> BTreeMap<String, Vec<String>> {
        counts
            .iter()
            .map(|(k, n)| (k.to_string(), (0..*n).map(|i| format!("shop/{k}-{i}")).collect()))
            .collect()
    }

    fn none() -> Vec<String> {
        Vec::new()
    }

    #[test]
    fn the_previous_domain_stays_an_alias_until_no_connected_proxy_serves_it() {
        let new = spec("new.example");
        // Just changed: the status still says certificates are issued in old.example.
        let recorded = status("old.example", &[]);
        assert_eq!(
            previous(Some(&recorded), &new, &served(&[("old.example", 3)]), &none()),
            ["old.example"]
        );
        // Recorded, two proxies renewed, one still on the old domain.
        let recorded = status("new.example", &["old.example"]);
        let mixed = served(&[("old.example", 1), ("new.example", 2)]);
        assert_eq!(previous(Some(&recorded), &new, &mixed, &none()), ["old.example"]);
        // A proxy that does not say keeps it too.
        let unsure = served(&[(UNREPORTED, 1), ("new.example", 2)]);
        assert_eq!(previous(Some(&recorded), &new, &unsure, &none()), ["old.example"]);
        // So does a meshed pod whose proxy ran and is not connected: it may still serve what it
        // had.
        let renewed = served(&[("new.example", 3)]);
        let down = vec!["shop/web-1".to_string()];
        assert_eq!(previous(Some(&recorded), &new, &renewed, &down), ["old.example"]);
        // Every proxy renewed: over.
        assert!(previous(Some(&recorded), &new, &renewed, &none()).is_empty());
        // No change at all.
        assert!(previous(Some(&status("new.example", &[])), &new, &renewed, &down).is_empty());
        assert!(previous(None, &new, &served(&[]), &none()).is_empty());
    }

    #[test]
    fn the_condition_counts_the_proxies_still_on_the_previous_domain() {
        let mixed = served(&[("old.example", 1), ("new.example", 2)]);
        let message = progress("new.example", &["old.example".into()], &mixed, &none()).unwrap();
        assert!(
            message.contains("1 of 3 connected proxies still serve a certificate in old.example"),
            "{message}"
        );
        assert!(
            message.contains("still in old.example: shop/old.example-0 (if one does not renew, its log says why; restarting its pod gives it a certificate in new.example)"),
            "{message}"
        );
        assert!(!message.contains("held by"), "{message}");
        assert!(progress("new.example", &[], &mixed, &none()).is_none());
        let unsure = served(&[(UNREPORTED, 2), ("new.example", 2)]);
        let message = progress("new.example", &["old.example".into()], &unsure, &none()).unwrap();
        assert!(message.contains("2 proxies do not report"), "{message}");
        assert!(
            message.contains("shop/-0, shop/-1 (roll them to a current proxy"),
            "{message}"
        );
    }

    fn pod(name: &str, role: ProxyRole, proxy_ran: bool) -> MeshedPod {
        MeshedPod {
            namespace: "shop".into(),
            name: name.into(),
            role,
            proxy_ran,
            image: "proxy:1".into(),
            owner: Owner::Standalone,
            ready: false,
            restarts: 0,
            failing: None,
            template: None,
        }
    }

    #[test]
    fn a_gateway_that_ran_and_is_not_connected_holds_the_change_and_is_named() {
        let pods = [
            pod("web-1", ProxyRole::Sidecar, true),
            pod("trellis-ingressgateway-1", ProxyRole::Gateway, true),
        ];
        let connected = ProxyLink {
            connected: true,
            synced: true,
        };
        let links = BTreeMap::from([("shop/web-1".to_string(), connected)]);
        let down = unconnected(&pods, &links);
        assert_eq!(down, ["shop/trellis-ingressgateway-1"]);
        let recorded = status("new.example", &["old.example"]);
        let renewed = served(&[("new.example", 1)]);
        assert_eq!(
            previous(Some(&recorded), &spec("new.example"), &renewed, &down),
            ["old.example"],
            "the change waits for the gateway"
        );
        let message = progress("new.example", &["old.example".into()], &renewed, &down).unwrap();
        assert!(
            message.contains("held by meshed pods whose proxy ran and is not connected (it may still serve a certificate in old.example): shop/trellis-ingressgateway-1 (bring its proxy back: its container status and log say why it is down; or delete the pod if it is not coming back)"),
            "{message}"
        );
    }

    #[test]
    fn a_proxy_that_never_ran_does_not_hold_the_change() {
        let pods = [
            pod("web-1", ProxyRole::Sidecar, true),
            pod("unpulled", ProxyRole::Sidecar, false),
            pod("gateway-unpulled", ProxyRole::Gateway, false),
        ];
        let links = BTreeMap::from([(
            "shop/web-1".to_string(),
            ProxyLink {
                connected: true,
                synced: true,
            },
        )]);
        let down = unconnected(&pods, &links);
        assert!(down.is_empty(), "{down:?}");
        let recorded = status("new.example", &["old.example"]);
        assert!(
            previous(
                Some(&recorded),
                &spec("new.example"),
                &served(&[("new.example", 1)]),
                &down
            )
            .is_empty()
        );
        // Many held: five named, the rest counted.
        let many: Vec<String> = (0..7).map(|i| format!("shop/p-{i}")).collect();
        let message = progress("new.example", &["old.example".into()], &served(&[]), &many).unwrap();
        assert!(message.contains("shop/p-4 and 2 more"), "{message}");
    }

    /// The reconciler: a gateway whose proxy ran and is not connected keeps the previous domain
    /// in the status, and the condition names it (and the data plane counts it); a sidecar
    /// whose proxy never ran does not.
    #[tokio::test]
    async fn the_reconciler_waits_on_a_gateway_that_ran_and_not_on_a_proxy_that_never_ran() {
        use crate::mesh::fixtures::{Fixed, MeshFixture, Scenario, Step, mesh, timeout_after_1s};
        use trellis_api::mesh::conditions::CERTIFICATE_AUTHORITY_READY;
        let mut cluster = Fixed::default();
        cluster.ca.served_trust_domains = BTreeMap::from([(
            "new.example".to_string(),
            vec!["shop/web-1".to_string(), "shop/web-2".to_string()],
        )]);
        cluster.pods.push(MeshedPod {
            image: crate::settings::Defaults::default().proxy_image,
            ..pod("trellis-ingressgateway-1", ProxyRole::Gateway, true)
        });
        let recorded = status("new.example", &["old.example"]);
        let m = mesh("default", serde_json::json!({"trustDomain": "new.example"}))
            .finalized()
            .with_status(recorded.clone());
        let (ctx, server, _) = crate::mesh::Context::test(cluster.clone());
        let (tx, rx) = tokio::sync::oneshot::channel();
        let scenario = server.run(Scenario::Steps(vec![
            Step::Event("Ready".into()),
            Step::EventSaying("DataPlaneUpToDateFalse".into(), "3 proxies".into()),
            Step::Status(tx),
        ]));
        crate::mesh::reconcile(std::sync::Arc::new(m.clone()), ctx)
            .await
            .expect("reconcile");
        timeout_after_1s(scenario).await;
        let status = rx.await.unwrap();
        let ca = status.certificate_authority.as_ref().unwrap();
        assert_eq!(
            ca.previous_trust_domains.as_deref(),
            Some(&["old.example".to_string()][..])
        );
        let condition = status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == CERTIFICATE_AUTHORITY_READY)
            .unwrap();
        assert_eq!(condition.reason, "TrustDomainChanging");
        assert!(
            condition.message.contains(
                "not connected (it may still serve a certificate in old.example): shop/trellis-ingressgateway-1"
            ),
            "{}",
            condition.message
        );
        let dp = status.data_plane.as_ref().unwrap();
        assert_eq!(
            (dp.proxies, dp.connected),
            (3, 2),
            "every proxy counted, the gateway's not connected"
        );

        // The gateway gone, a sidecar whose proxy never ran (its image not pulled) in its place:
        // the change finishes.
        cluster.pods.pop();
        cluster.pods.push(pod("unpulled", ProxyRole::Sidecar, false));
        let (ctx, server, _) = crate::mesh::Context::test(cluster);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let scenario = server.run(Scenario::Steps(vec![
            Step::EventSaying("CertificateAuthorityReady".into(), "(RootValid)".into()),
            Step::Event("DataPlaneUpToDateFalse".into()),
            Step::EventSaying(
                "TrustDomainChangeFinished".into(),
                "old.example is no longer an alias".into(),
            ),
            Step::Status(tx),
        ]));
        let m = m.with_status(MeshStatus {
            conditions: status.conditions.clone(),
            ..recorded
        });
        crate::mesh::reconcile(std::sync::Arc::new(m), ctx)
            .await
            .expect("reconcile");
        timeout_after_1s(scenario).await;
        let status = rx.await.unwrap();
        assert!(
            status
                .certificate_authority
                .as_ref()
                .unwrap()
                .previous_trust_domains
                .is_none(),
            "{status:?}"
        );
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
