//! The key sets the operator holds, one entry per `jwksUri`, and when each is fetched next:
//! plain data driven by an injected clock (every method takes `now`), so the refresh and
//! backoff schedule and the keep-last-good rule are tested without a network or a timer.
//!
//! # Guarantees
//! - A URI is fetched once when it is first wanted, then every [`Options::refresh`] while
//!   fetches succeed; after `n` failures in a row it is retried after
//!   `retry_first * 2^(n-1)`, at most [`Options::retry_max`] (sooner than a routine refresh).
//! - A failed fetch never drops keys a previous fetch brought (Istio's JwksResolver keeps
//!   them too) until [`Options::keep_stale`] passed without a successful fetch.
//! - At most [`Options::max_uris`] URIs are fetched (the first ones in order); the others are
//!   unavailable, and say why.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use trellis_core::snapshot::FetchedJwks;

use super::Options;

/// What the operator has of one URI, as logs and metrics tell it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// The last fetch brought this key set.
    Fresh(String),
    /// The last fetch failed (why); the key set of an earlier fetch is still in use.
    Stale(String),
    /// No key set (why): tokens of the issuers that use it get 401.
    Unavailable(String),
}

impl State {
    /// The metric label.
    pub fn label(&self) -> &'static str {
        match self {
            State::Fresh(_) => "fresh",
            State::Stale(_) => "stale",
            State::Unavailable(_) => "unavailable",
        }
    }
}

/// A change of what the operator has of one URI (logged once, when it happens).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// The URI.
    pub uri: String,
    /// Before (`None`: never fetched).
    pub before: Option<State>,
    /// After.
    pub after: State,
}

#[derive(Debug, Clone)]
struct Entry {
    timeout: Duration,
    /// The last good key set and when it was fetched.
    keys: Option<(String, Instant)>,
    /// Why the last fetch failed, if it did.
    failure: Option<String>,
    /// Failures in a row.
    failures: u32,
    /// When to fetch next (`None`: never fetched yet, so now).
    next: Option<Instant>,
    in_flight: bool,
}

impl Entry {
    fn state(&self) -> Option<State> {
        match (&self.keys, &self.failure) {
            (Some((k, _)), None) => Some(State::Fresh(k.clone())),
            (Some(_), Some(why)) => Some(State::Stale(why.clone())),
            (None, Some(why)) => Some(State::Unavailable(why.clone())),
            (None, None) => None,
        }
    }
}

/// Every wanted URI's key set and schedule.
#[derive(Debug, Clone)]
pub struct Cache {
    options: Options,
    entries: BTreeMap<String, Entry>,
    /// Wanted, but beyond [`Options::max_uris`].
    over_limit: BTreeSet<String>,
    /// Bumped whenever [`Cache::view`] may have changed.
    version: u64,
}

impl Cache {
    /// An empty cache.
    pub fn new(options: Options) -> Self {
        Self {
            options,
            entries: BTreeMap::new(),
            over_limit: BTreeSet::new(),
            version: 0,
        }
    }

    /// Changes whenever [`Cache::view`] may have changed (so the view is built only then).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Track exactly the URIs of `wanted` (with the timeout of each): new ones are due at once,
    /// ones no RequestAuthentication names any more are forgotten, with their keys.
    pub fn want(&mut self, wanted: &BTreeMap<String, Duration>) {
        let before: (Vec<String>, BTreeSet<String>) = (self.entries.keys().cloned().collect(), self.over_limit.clone());
        self.entries.retain(|uri, _| wanted.contains_key(uri));
        self.over_limit.clear();
        for (i, (uri, timeout)) in wanted.iter().enumerate() {
            if i >= self.options.max_uris && !self.entries.contains_key(uri) {
                self.over_limit.insert(uri.clone());
                continue;
            }
            let e = self.entries.entry(uri.clone()).or_insert_with(|| Entry {
                timeout: *timeout,
                keys: None,
                failure: None,
                failures: 0,
                next: None,
                in_flight: false,
            });
            e.timeout = *timeout;
        }
        // A URI kept from before may push a later one over the limit: the first ones win.
        while self.entries.len() > self.options.max_uris {
            let Some(last) = self.entries.keys().next_back().cloned() else {
                break;
            };
            self.entries.remove(&last);
            self.over_limit.insert(last);
        }
        if before != (self.entries.keys().cloned().collect(), self.over_limit.clone()) {
            self.version += 1;
        }
    }

    /// The URIs due at `now` that are not being fetched, with their timeouts; they are marked
    /// in flight until [`Cache::record`]. At most `limit`.
    pub fn due(&mut self, now: Instant, limit: usize) -> Vec<(String, Duration)> {
        let mut out = Vec::new();
        for (uri, e) in &mut self.entries {
            if out.len() >= limit {
                break;
            }
            if !e.in_flight && e.next.is_none_or(|t| t <= now) {
                e.in_flight = true;
                out.push((uri.clone(), e.timeout));
            }
        }
        out
    }

    /// When the next fetch is due (`None`: nothing is waiting).
    pub fn next_due(&self) -> Option<Option<Instant>> {
        self.entries
            .values()
            .filter(|e| !e.in_flight)
            .map(|e| e.next)
            .min_by(|a, b| match (a, b) {
                (None, _) => std::cmp::Ordering::Less,
                (_, None) => std::cmp::Ordering::Greater,
                (Some(a), Some(b)) => a.cmp(b),
            })
    }

    /// The delay before retrying after `failures` failures in a row.
    fn backoff(&self, failures: u32) -> Duration {
        let doubled = self
            .options
            .retry_first
            .saturating_mul(2u32.saturating_pow(failures.saturating_sub(1).min(30)));
        doubled.min(self.options.retry_max)
    }

    /// Record the outcome of a fetch of `uri` that ended at `now`: the key set (as
    /// [`super::usable`] made it) or why there is none. Returns the transition, if what the
    /// operator has of the URI changed.
    pub fn record(&mut self, uri: &str, outcome: Result<String, String>, now: Instant) -> Option<Transition> {
        let keep_stale = self.options.keep_stale;
        let refresh = self.options.refresh;
        let failures = self.entries.get(uri)?.failures;
        let backoff = self.backoff(failures + 1);
        self.version += 1;
        let e = self.entries.get_mut(uri)?;
        let before = e.state();
        e.in_flight = false;
        match outcome {
            Ok(keys) => {
                e.keys = Some((keys, now));
                e.failure = None;
                e.failures = 0;
                e.next = Some(now + refresh);
            }
            Err(why) => {
                e.failures += 1;
                e.next = Some(now + backoff);
                let expired = e
                    .keys
                    .as_ref()
                    .is_some_and(|(_, at)| now.saturating_duration_since(*at) >= keep_stale);
                if expired {
                    e.keys = None;
                    e.failure = Some(format!(
                        "{why}; the keys of the last successful fetch were dropped after {} without one",
                        human(keep_stale)
                    ));
                } else {
                    e.failure = Some(why);
                }
            }
        }
        let after = e.state()?;
        (before.as_ref() != Some(&after)).then(|| Transition {
            uri: uri.to_string(),
            before,
            after,
        })
    }

    /// What the compiler reads: each URI's key set (or why there is none) and, for URIs whose
    /// keys are kept from an earlier fetch, why the last refresh failed. URIs never fetched yet
    /// are absent (the compiler refuses their tokens as "not fetched yet").
    pub fn view(&self) -> (BTreeMap<String, FetchedJwks>, BTreeMap<String, String>) {
        let mut keys = BTreeMap::new();
        let mut stale = BTreeMap::new();
        for (uri, e) in &self.entries {
            match e.state() {
                Some(State::Fresh(k)) => {
                    keys.insert(uri.clone(), FetchedJwks::Keys(k));
                }
                Some(State::Stale(why)) => {
                    let k = e.keys.as_ref().map(|(k, _)| k.clone()).unwrap_or_default();
                    keys.insert(uri.clone(), FetchedJwks::Keys(k));
                    stale.insert(uri.clone(), why);
                }
                Some(State::Unavailable(why)) => {
                    keys.insert(uri.clone(), FetchedJwks::Unavailable(why));
                }
                None => {}
            }
        }
        for uri in &self.over_limit {
            keys.insert(
                uri.clone(),
                FetchedJwks::Unavailable(format!(
                    "the cluster's RequestAuthentications name more than {} distinct jwksUri; the operator fetches the first {} in order",
                    self.options.max_uris, self.options.max_uris
                )),
            );
        }
        (keys, stale)
    }

    /// How many URIs are in each state (`fresh`, `stale`, `unavailable`, `pending`).
    pub fn counts(&self) -> BTreeMap<&'static str, u64> {
        let mut out = BTreeMap::from([("fresh", 0), ("stale", 0), ("unavailable", 0), ("pending", 0)]);
        for e in self.entries.values() {
            *out.entry(e.state().map_or("pending", |s| s.label())).or_default() += 1;
        }
        *out.entry("unavailable").or_default() += self.over_limit.len() as u64;
        out
    }
}

/// `20m`, `7d`, `1s`.
pub(super) fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => format!("{}ms", d.as_millis()),
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const URI: &str = "https://issuer.example/keys";

    fn options() -> Options {
        Options::default()
    }

    fn want(c: &mut Cache, uris: &[&str]) {
        c.want(&uris.iter().map(|u| (u.to_string(), Duration::from_secs(5))).collect());
    }

    #[test]
    fn fetched_at_once_then_every_twenty_minutes_while_it_works() {
        let t0 = Instant::now();
        let mut c = Cache::new(options());
        want(&mut c, &[URI]);
        assert_eq!(c.next_due(), Some(None), "never fetched: due now");
        assert_eq!(c.due(t0, 8), vec![(URI.to_string(), Duration::from_secs(5))]);
        assert!(c.due(t0, 8).is_empty(), "in flight: not started twice");
        assert_eq!(c.view().0, BTreeMap::new(), "nothing until the first fetch ends");
        let t = c.record(URI, Ok("K1".into()), t0).expect("a transition");
        assert_eq!((t.before, t.after), (None, State::Fresh("K1".into())));
        assert_eq!(c.view().0[URI], FetchedJwks::Keys("K1".into()));
        assert_eq!(c.next_due(), Some(Some(t0 + Duration::from_secs(20 * 60))));
        assert!(c.due(t0 + Duration::from_secs(20 * 60 - 1), 8).is_empty());
        assert_eq!(c.due(t0 + Duration::from_secs(20 * 60), 8).len(), 1);
        // The same keys again: nothing changed, nothing to say or push.
        assert_eq!(c.record(URI, Ok("K1".into()), t0 + Duration::from_secs(1200)), None);
        // New keys (the issuer rotated): a transition, and the view changes.
        c.due(t0 + Duration::from_secs(2400), 8);
        let t = c.record(URI, Ok("K2".into()), t0 + Duration::from_secs(2400)).unwrap();
        assert_eq!(t.after, State::Fresh("K2".into()));
        assert_eq!(c.view().0[URI], FetchedJwks::Keys("K2".into()));
    }

    #[test]
    fn a_failed_refresh_keeps_the_last_good_keys_and_retries_sooner_with_backoff() {
        let t0 = Instant::now();
        let mut c = Cache::new(options());
        want(&mut c, &[URI]);
        c.due(t0, 8);
        c.record(URI, Ok("K1".into()), t0);
        let mut now = t0 + Duration::from_secs(1200);
        c.due(now, 8);
        let t = c.record(URI, Err("HTTP 503".into()), now).unwrap();
        assert_eq!(t.before, Some(State::Fresh("K1".into())));
        assert_eq!(t.after, State::Stale("HTTP 503".into()));
        let (keys, stale) = c.view();
        assert_eq!(keys[URI], FetchedJwks::Keys("K1".into()), "kept");
        assert_eq!(stale[URI], "HTTP 503");
        // Retried after 1 s, 2 s, 4 s, ... at most 5 min; the same failure says nothing new.
        let mut delays = Vec::new();
        for _ in 0..12 {
            let Some(Some(next)) = c.next_due() else {
                panic!("scheduled")
            };
            delays.push(next - now);
            now = next;
            assert_eq!(c.due(now, 8).len(), 1);
            assert_eq!(c.record(URI, Err("HTTP 503".into()), now), None);
        }
        let secs: Vec<u64> = delays.iter().map(Duration::as_secs).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        // Another reason is a change worth saying.
        c.due(now + Duration::from_secs(300), 8);
        let t = c.record(URI, Err("connection refused".into()), now + Duration::from_secs(300));
        assert_eq!(t.unwrap().after, State::Stale("connection refused".into()));
        // A success ends the backoff: the next fetch is a routine refresh.
        now += Duration::from_secs(600);
        c.due(now, 8);
        let t = c.record(URI, Ok("K1".into()), now).unwrap();
        assert_eq!(t.after, State::Fresh("K1".into()));
        assert!(c.view().1.is_empty());
        assert_eq!(c.next_due(), Some(Some(now + Duration::from_secs(1200))));
    }

    #[test]
    fn never_fetched_is_unavailable_and_kept_keys_expire_after_a_week_of_failures() {
        let t0 = Instant::now();
        let mut c = Cache::new(options());
        want(&mut c, &[URI]);
        c.due(t0, 8);
        let t = c.record(URI, Err("HTTP 404".into()), t0).unwrap();
        assert_eq!(t.after, State::Unavailable("HTTP 404".into()));
        assert_eq!(c.view().0[URI], FetchedJwks::Unavailable("HTTP 404".into()));
        assert_eq!(c.counts()["unavailable"], 1);

        c.due(t0 + Duration::from_secs(1), 8);
        c.record(URI, Ok("K1".into()), t0 + Duration::from_secs(1));
        let week = Duration::from_secs(7 * 24 * 3600);
        let almost = t0 + Duration::from_secs(1) + week - Duration::from_secs(1);
        c.due(almost, 8);
        assert!(matches!(
            c.record(URI, Err("timeout".into()), almost).unwrap().after,
            State::Stale(_)
        ));
        let later = almost + Duration::from_secs(1);
        c.due(later, 8);
        let t = c.record(URI, Err("timeout".into()), later).unwrap();
        let State::Unavailable(why) = t.after else {
            panic!("{t:?}")
        };
        assert!(why.contains("dropped after 7d"), "{why}");
        assert!(matches!(c.view().0[URI], FetchedJwks::Unavailable(_)));
    }

    #[test]
    fn only_wanted_uris_are_kept_and_at_most_max_uris_are_fetched() {
        let t0 = Instant::now();
        let mut c = Cache::new(Options {
            max_uris: 2,
            ..options()
        });
        want(&mut c, &["https://b/k", "https://c/k", "https://a/k"]);
        let due: Vec<String> = c.due(t0, 8).into_iter().map(|(u, _)| u).collect();
        assert_eq!(due, ["https://a/k", "https://b/k"]);
        let (keys, _) = c.view();
        let FetchedJwks::Unavailable(why) = &keys["https://c/k"] else {
            panic!()
        };
        assert!(why.contains("more than 2 distinct jwksUri"), "{why}");
        c.record("https://a/k", Ok("A".into()), t0);
        // A RequestAuthentication deleted: its URI and keys are forgotten, c moves up.
        want(&mut c, &["https://b/k", "https://c/k"]);
        assert!(!c.view().0.contains_key("https://a/k"));
        assert_eq!(
            c.due(t0, 8).into_iter().map(|(u, _)| u).collect::<Vec<_>>(),
            ["https://c/k"]
        );
        // A result for a URI no longer wanted is dropped.
        assert_eq!(c.record("https://a/k", Ok("A".into()), t0), None);
        // The concurrency bound.
        want(&mut c, &["https://d/k"]);
        assert_eq!(c.due(t0, 0), vec![]);
        assert_eq!(c.due(t0, 1).len(), 1);
    }
}
