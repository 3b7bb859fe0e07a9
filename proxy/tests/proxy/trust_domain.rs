//! A trust domain change between two real proxies: the destination still serves its
//! certificate of the previous domain while both configurations name the new one with the
//! previous as an alias (`identity.trustDomainAliases`); the caller accepts it where it
//! expects the new-domain identity, and the destination loads it as its own.

use crate::support::*;
use serde_json::{Value, json};

const OLD_PAYMENT: &str = "spiffe://cluster.local/ns/shop/sa/payment";
const NEW_PAYMENT: &str = "spiffe://new.example/ns/shop/sa/payment";
const NEW_WEB: &str = "spiffe://new.example/ns/shop/sa/web";

/// `pki.identity(certificate)` as configured in `new.example`, naming `spiffe_id`.
fn identity(pki: &Pki, certificate: &str, spiffe_id: &str, aliases: &[&str]) -> Value {
    let mut identity = pki.identity(certificate);
    identity["trustDomain"] = json!("new.example");
    identity["spiffeId"] = json!(spiffe_id);
    identity["trustDomainAliases"] = json!(aliases);
    identity
}

async fn call(aliases: &[&str]) -> (Reply, Upstream) {
    let pki = Pki::new();
    let app = Upstream::start("payment-app").await;
    // payment has not renewed yet: its certificate is of cluster.local.
    let inbound = Proxy::start(json!({
        "version": "in-1",
        "node": {"workload": "payment", "namespace": "shop", "app": "payment", "version": "v1"},
        "identity": identity(&pki, OLD_PAYMENT, NEW_PAYMENT, &["cluster.local"]),
        "listeners": [{
            "name": "inbound", "address": "127.0.0.1:0", "direction": "inbound", "protocol": "http",
            "virtualHosts": [{"name": "inbound", "domains": ["*"], "routes": [forward_route("app")]}],
        }],
        "clusters": [cluster("app", &[&app])],
        "inbound": {"mtls": {"mode": "STRICT"}, "authorization": []},
    }))
    .await;
    let target = inbound.addr("inbound").await;
    // web has renewed, and expects payment in the new domain.
    let outbound = Proxy::start(json!({
        "version": "out-1",
        "node": {"workload": "web", "namespace": "shop", "app": "web", "version": "v1"},
        "identity": identity(&pki, NEW_WEB, NEW_WEB, aliases),
        "listeners": [{
            "name": "outbound", "address": "127.0.0.1:0", "direction": "outbound", "protocol": "http",
            "virtualHosts": [{"name": "payment", "domains": ["payment"], "routes": [forward_route("payment")]}],
        }],
        "clusters": [{
            "name": "payment",
            "service": "payment.shop.svc.cluster.local",
            "tls": {"mesh": {"expectedIdentities": [NEW_PAYMENT]}},
            "endpoints": [{"address": "127.0.0.1", "port": target.port(), "labels": {"app": "payment"}}],
        }],
    }))
    .await;
    let reply = get(outbound.addr("outbound").await, "payment", "/pay").await;
    drop((inbound, outbound));
    (reply, app)
}

#[tokio::test]
async fn a_peer_still_in_the_previous_domain_passes_where_the_new_one_is_expected() {
    let (r, app) = call(&["cluster.local"]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let xfcc = app.last_seen().headers["x-forwarded-client-cert"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        xfcc.starts_with(&format!("By={OLD_PAYMENT};")) && xfcc.ends_with(&format!("URI={NEW_WEB}")),
        "payment serves its previous-domain certificate as its own: {xfcc}"
    );
}

#[tokio::test]
async fn without_the_alias_the_previous_domain_is_refused() {
    let (r, app) = call(&[]).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(app.hits(), 0);
}
