//! The key sets of RequestAuthentications' `jwksUri`: the operator fetches them (proxies never
//! fetch), caches and refreshes them as istiod's JwksResolver does, and puts them into the
//! snapshot the compiler reads ([`crate::index::Index::set_key_sets`]), so they reach proxies
//! inline with the rest of their configuration.
//!
//! - [`wanted`] (pure): every `jwksUri` the cluster's RequestAuthentications name, with the
//!   longest `timeout` of the rules naming it (default 5 s).
//! - [`cache`] (pure, injected clock): each URI's last good key set, its state and when it is
//!   fetched next — at once when first named, every 20 minutes ([`REFRESH`], Istio's
//!   `PILOT_JWT_PUB_KEY_REFRESH_INTERVAL` default) after a success, after 1 s, 2 s, 4 s, … at
//!   most 5 minutes after failures in a row.
//! - [`usable`] (pure): what a fetch brought, checked by the one key-set parser
//!   (`trellis_contract::jwt::parse_jwks`), reduced to the keys it accepts, in a canonical
//!   order.
//! - [`fetch`]: the I/O edge, one GET over HTTPS (rustls with the system roots) or HTTP; for a
//!   rule with neither `jwks` nor `jwksUri`, OpenID Connect discovery first (the issuer's
//!   `/.well-known/openid-configuration`, then its `jwks_uri`), as Istio does.
//! - [`run`]: the loop around them.
//!
//! # Guarantees
//! - Every replica fetches for itself (every replica serves push), so proxies get the same
//!   keys whichever replica they are connected to, at most a refresh apart.
//! - The index (and so the push) changes only when a key set, or whether one is available,
//!   changes: a refresh that brings the same keys, in any order, changes nothing.
//! - A failed refresh keeps the last good keys (Istio does) for up to 7 days, and says so: the
//!   leader's diagnostics put `TRL0112` (stale) or `TRL0111` (no keys: the issuer's tokens
//!   get 401) on the RequestAuthentication's `status.validationMessages` with a Warning event;
//!   the log says it once per change; `trellis_operator_jwks_uris{state}` and
//!   `trellis_operator_jwks_fetches_total{result}` count it.
//! - Bounded: each fetch by the rule's timeout and the proxy's key-set limit (64 KiB, 32 keys);
//!   at most [`MAX_URIS`] URIs, [`CONCURRENT_FETCHES`] at a time; no redirect is followed (a
//!   3xx names its `Location`, to write into `jwksUri`).
//! - Logs name the URI and why; never a token, and never a body (only the keys a fetch
//!   brought are kept: private or unusable members of a key set are dropped).
//!
//! # Caveats
//! - `http://` URIs are fetched as Istio fetches them (an in-cluster issuer, say); the key set
//!   then travels unauthenticated. Prefer `https://`.
//! - No HTTP proxy (`HTTPS_PROXY`) is used.
//! - A discovered key set is kept under the discovery document's URL: a provider that moves its
//!   `jwks_uri` is followed at the next refresh.

pub mod cache;
pub mod fetch;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;
use trellis_api::security::{KeySource, RequestAuthentication};
use trellis_contract::jwt::parse_jwks;

pub use cache::{Cache, State, Transition};
pub use fetch::Fetcher;

use crate::metrics::Metrics;

/// How often a key set is fetched again after a success (Istio's default).
pub const REFRESH: Duration = Duration::from_secs(20 * 60);
/// The first retry after a failure; each failure in a row doubles it.
pub const RETRY_FIRST: Duration = Duration::from_secs(1);
/// The longest wait between retries.
// why: under the 20-minute refresh, so a failing URI is always retried sooner than a working
// one is refreshed; Istio's resolver retries a failing set every minute, doubling to an hour.
pub const RETRY_MAX: Duration = Duration::from_secs(5 * 60);
/// How long the keys of the last successful fetch are used while every refresh fails
/// (Istio's `JwtPubKeyEvictionDuration`).
pub const KEEP_STALE: Duration = Duration::from_secs(7 * 24 * 3600);
/// The timeout of a fetch when the rule sets none (Istio's).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// The most distinct URIs fetched.
// why: each costs a fetch per refresh per replica and up to 64 KiB in every snapshot; a
// cluster naming more has a configuration problem the status reports, not a load to carry.
pub const MAX_URIS: usize = 256;
/// Fetches under way at once.
pub const CONCURRENT_FETCHES: usize = 8;

/// The schedule and bounds (tests shorten them).
#[derive(Debug, Clone)]
pub struct Options {
    /// See [`REFRESH`].
    pub refresh: Duration,
    /// See [`RETRY_FIRST`].
    pub retry_first: Duration,
    /// See [`RETRY_MAX`].
    pub retry_max: Duration,
    /// See [`KEEP_STALE`].
    pub keep_stale: Duration,
    /// See [`MAX_URIS`].
    pub max_uris: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            refresh: REFRESH,
            retry_first: RETRY_FIRST,
            retry_max: RETRY_MAX,
            keep_stale: KEEP_STALE,
            max_uris: MAX_URIS,
        }
    }
}

/// Every key set to fetch: each `jwksUri` named by a rule without inline `jwks`, and each
/// issuer to discover from (a rule with neither; [`KeySource::fetch_key`]), with the longest
/// timeout of the rules naming it (an invalid or missing timeout counts as the default; the
/// validator refuses those).
pub fn wanted<'a>(policies: impl IntoIterator<Item = &'a RequestAuthentication>) -> BTreeMap<String, Duration> {
    let mut out: BTreeMap<String, Duration> = BTreeMap::new();
    for p in policies {
        for r in p.spec.jwt_rules.iter().flatten() {
            let Some(uri) = KeySource::of(r).fetch_key() else {
                continue;
            };
            let timeout = r
                .timeout
                .as_deref()
                .and_then(|t| trellis_api::duration::parse(t).ok())
                .filter(|t| !t.is_zero())
                .unwrap_or(DEFAULT_TIMEOUT)
                .min(Duration::from_secs(60));
            let e = out.entry(uri).or_insert(timeout);
            *e = (*e).max(timeout);
        }
    }
    out
}

/// A usable key set (compact JSON) and the reasons keys were left out, or why there is none.
pub type Usable = Result<(String, Vec<String>), String>;

/// What a fetch brought, as proxies get it: the keys `parse_jwks` accepts (each alone, so a
/// private or unsupported key is left out, as the proxy would leave it out), sorted, as
/// compact JSON — so the same keys in another order or layout are the same key set. Also the
/// reasons keys were left out. Errors say why the answer is no usable key set.
pub fn usable(body: &str) -> Usable {
    let set = parse_jwks(body).map_err(|e| e.to_string())?;
    let raw: serde_json::Value = serde_json::from_str(body).map_err(|e| e.to_string())?;
    let mut keys: Vec<String> = raw
        .get("keys")
        .and_then(|k| k.as_array())
        .into_iter()
        .flatten()
        .filter(|k| parse_jwks(&serde_json::json!({ "keys": [k] }).to_string()).is_ok())
        .map(|k| k.to_string())
        .collect();
    keys.sort();
    keys.dedup();
    Ok((format!("{{\"keys\":[{}]}}", keys.join(",")), set.skipped))
}

/// Fetch every wanted `jwksUri` and keep the index's key sets current, waking on every change
/// of the index (a RequestAuthentication added or removed), when a fetch ends and when one is
/// due. Runs on every replica until its task is aborted.
pub async fn run(
    index: crate::index::Shared,
    changed: tokio::sync::watch::Sender<u64>,
    fetcher: Fetcher,
    metrics: Arc<Metrics>,
    options: Options,
) {
    let mut rx = changed.subscribe();
    let mut cache = Cache::new(options);
    let mut fetches: JoinSet<(String, Usable)> = JoinSet::new();
    // The cache's clock is tokio's, so tests can pause and advance it.
    let now = || Instant::now().into_std();
    let mut published = None;
    loop {
        let Ok(uris) = index.read().map(|i| wanted(i.request_authentications())) else {
            return;
        };
        cache.want(&uris);
        let free = CONCURRENT_FETCHES.saturating_sub(fetches.len());
        for (uri, timeout) in cache.due(now(), free) {
            let fetcher = fetcher.clone();
            fetches.spawn(async move {
                let result = fetcher.key_set(&uri, timeout).await.and_then(|body| usable(&body));
                (uri, result)
            });
        }
        if published != Some(cache.version()) {
            published = Some(cache.version());
            publish(&index, &changed, &cache, &metrics);
        }
        // With every fetch slot taken, the next due one waits for a slot, not for a timer.
        let next = match cache.next_due() {
            Some(Some(at)) if fetches.len() < CONCURRENT_FETCHES => Instant::from_std(at),
            _ => Instant::now() + IDLE,
        };
        tokio::select! {
            r = rx.changed() => {
                if r.is_err() {
                    return;
                }
            }
            Some(done) = fetches.join_next(), if !fetches.is_empty() => {
                let Ok((uri, result)) = done else { continue };
                metrics.jwks_fetched(result.is_ok());
                let skipped = result.as_ref().map(|(_, s)| s.clone()).unwrap_or_default();
                if let Some(t) = cache.record(&uri, result.map(|(keys, _)| keys), now()) {
                    log(&t, &skipped);
                }
            }
            _ = tokio::time::sleep_until(next) => {}
        }
    }
}

/// The longest the loop sleeps with nothing due (a cheap re-check of what is wanted).
const IDLE: Duration = Duration::from_secs(60);

/// Put the cache's view into the index; announce it only when it changed.
fn publish(index: &crate::index::Shared, changed: &tokio::sync::watch::Sender<u64>, cache: &Cache, metrics: &Metrics) {
    metrics.set_jwks_uris(cache.counts());
    let (keys, stale) = cache.view();
    let generation = {
        let Ok(mut i) = index.write() else { return };
        i.set_key_sets(keys, stale).then(|| i.generation())
    };
    if let Some(g) = generation {
        changed.send_replace(g);
    }
}

fn log(t: &Transition, skipped: &[String]) {
    // Never the query: it can hold a credential (`?api_key=…`).
    let uri = trellis_api::security::jwks_uri_for_display(&t.uri);
    match (&t.before, &t.after) {
        (_, State::Fresh(keys)) => {
            let count = serde_json::from_str::<serde_json::Value>(keys)
                .ok()
                .and_then(|v| v["keys"].as_array().map(Vec::len))
                .unwrap_or(0);
            tracing::info!(%uri, keys = count, skipped = ?skipped, "jwksUri: key set fetched; pushing it to the proxies");
        }
        (_, State::Stale(why)) => {
            tracing::warn!(%uri, %why, "jwksUri: refresh failed; the proxies keep the keys of the last successful fetch, retrying with backoff");
        }
        (_, State::Unavailable(why)) => {
            tracing::warn!(%uri, %why, "jwksUri: no key set; tokens of the issuers using it are refused (401) until a fetch succeeds, retrying with backoff");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wanted_uris_take_the_longest_timeout_skip_inline_keys_and_discover_from_url_issuers() {
        let ras: Vec<RequestAuthentication> = serde_yaml_ng::from_str::<Vec<RequestAuthentication>>(
            "
- apiVersion: security.trellis.dev/v1alpha1
  kind: RequestAuthentication
  metadata: {name: a, namespace: shop}
  spec:
    jwtRules:
    - {issuer: i1, jwksUri: 'https://x/keys'}
    - {issuer: i2, jwksUri: 'https://y/keys', timeout: 10s}
    - {issuer: i3, jwks: '{}'}
- apiVersion: security.trellis.dev/v1alpha1
  kind: RequestAuthentication
  metadata: {name: b, namespace: web}
  spec:
    jwtRules:
    - {issuer: i1, jwksUri: 'https://x/keys', timeout: 2s}
    - {issuer: i4, jwksUri: 'https://y/keys', timeout: 90s}
    - {issuer: 'https://idp.example/', timeout: 3s}
    - {issuer: 'not-a-url'}
",
        )
        .unwrap();
        let w = wanted(&ras);
        assert_eq!(
            w,
            BTreeMap::from([
                ("https://x/keys".to_string(), DEFAULT_TIMEOUT),
                ("https://y/keys".to_string(), Duration::from_secs(60)),
                (
                    "https://idp.example/.well-known/openid-configuration#trellis-oidc-discovery".to_string(),
                    Duration::from_secs(3)
                ),
            ])
        );
    }

    #[test]
    fn usable_keeps_the_keys_the_proxy_verifies_with_in_one_order() {
        let rsa = r#"{"kty":"RSA","kid":"r","n":"AQAB","e":"AQAB"}"#;
        let ed = r#"{"kty":"OKP","crv":"Ed25519","kid":"e","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}"#;
        let private = r#"{"kty":"RSA","kid":"p","n":"AQAB","e":"AQAB","d":"AQAB"}"#;
        let (a, skipped) = usable(&format!("{{\"keys\":[{rsa},{private},{ed}]}}")).unwrap();
        assert!(!a.contains("\"d\""), "private members never kept: {a}");
        assert_eq!(skipped.len(), 1, "{skipped:?}");
        assert!(skipped[0].contains("private key"));
        let (b, _) = usable(&format!("{{ \"keys\": [ {ed}, {rsa} ] }}")).unwrap();
        assert_eq!(a, b, "the same keys in another order are the same key set");
        assert!(parse_jwks(&a).is_ok_and(|s| s.keys.len() == 2));
        assert!(
            usable("<html>oops</html>")
                .unwrap_err()
                .contains("not a JSON Web Key Set")
        );
        assert!(usable(r#"{"keys":[]}"#).unwrap_err().contains("no usable key"));
    }
}
