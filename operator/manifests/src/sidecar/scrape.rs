//! Prometheus scraping of meshed pods, as Istio's "metrics merging" does it.
//!
//! A meshed pod carries the standard scrape annotations pointing at its
//! proxy: `prometheus.io/scrape: "true"`, `prometheus.io/port: "15020"`,
//! `prometheus.io/path: "/stats/prometheus"`, so a Prometheus with the
//! common `kubernetes-pods` job (Kubernetes pod discovery, kept by these
//! annotations) scrapes every proxy with no configuration of its own. When
//! the app asked to be scraped itself (any of those annotations), what it
//! asked for moves into the proxy's [`APP_METRICS_ENV`] (Istio's JSON shape:
//! `{"scrape":…,"path":…,"port":…}`), and the proxy serves the app's metrics
//! after its own on the same endpoint. So one scrape gets both, and the app's
//! metrics port needs no exception from STRICT mTLS.
//!
//! Rules (Istio's): an app that says `prometheus.io/scrape: "false"` is left
//! alone, as is a pod already pointing at the proxy (re-injection); any
//! spelling Prometheus reads as the same label (`prometheus.io/port`,
//! `prometheus_io_port`, …) counts; `sidecar.trellis.dev/mergeMetrics:
//! "false"` opts a pod out.

use std::collections::BTreeMap;

use serde_json::json;

/// The sidecar env var holding the app's own scrape annotations.
pub const APP_METRICS_ENV: &str = "TRELLIS_PROMETHEUS_ANNOTATIONS";
/// The path the proxy serves merged metrics on (Istio's).
pub const STATS_PATH: &str = "/stats/prometheus";
/// `prometheus.io/scrape`.
pub const SCRAPE: &str = "prometheus.io/scrape";
/// `prometheus.io/port`.
pub const PORT: &str = "prometheus.io/port";
/// `prometheus.io/path`.
pub const PATH: &str = "prometheus.io/path";

/// What injection does to a pod's scrape annotations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Leave them (the app opted out of scraping, or the pod out of merging,
    /// or it already points at the proxy).
    Keep,
    /// Point them at the proxy; `app` is the app's own request for the
    /// proxy's [`APP_METRICS_ENV`], if it made one.
    Merge {
        /// JSON for [`APP_METRICS_ENV`].
        app: Option<String>,
    },
}

/// The annotation key as Prometheus' service discovery turns it into a
/// label name (`prometheus.io/port` → `prometheus_io_port`).
fn label_name(key: &str) -> String {
    key.chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' })
        .collect()
}

fn find<'a>(annotations: &'a BTreeMap<String, String>, key: &str) -> Option<&'a str> {
    let wanted = label_name(key);
    annotations
        .iter()
        .find(|(k, _)| label_name(k) == wanted)
        .map(|(_, v)| v.as_str())
}

/// Decides what injection does with a pod's annotations (pure).
pub fn plan(annotations: &BTreeMap<String, String>, merge: Option<bool>) -> Plan {
    let scrape = find(annotations, SCRAPE);
    if merge == Some(false) || scrape.and_then(parse_bool) == Some(false) {
        return Plan::Keep;
    }
    let port = find(annotations, PORT);
    if port == Some(&super::STATS_PORT.to_string()) {
        return Plan::Keep;
    }
    let path = find(annotations, PATH);
    let app = (scrape.is_some() || port.is_some() || path.is_some()).then(|| {
        json!({
            "scrape": scrape.unwrap_or_default(),
            "path": path.unwrap_or_default(),
            "port": port.unwrap_or_default(),
        })
        .to_string()
    });
    Plan::Merge { app }
}

/// Go's `strconv.ParseBool`, which Istio reads the annotation with.
fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// Points a pod's scrape annotations at its proxy, removing every other
/// spelling of them (Prometheus would pick one at random).
pub fn point_at_proxy(annotations: &mut BTreeMap<String, String>) {
    let ours = [SCRAPE, PORT, PATH].map(label_name);
    annotations.retain(|k, _| !ours.contains(&label_name(k)));
    annotations.insert(SCRAPE.into(), "true".into());
    annotations.insert(PORT.into(), super::STATS_PORT.to_string());
    annotations.insert(PATH.into(), STATS_PATH.into());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn an_app_without_metrics_gets_the_proxy_scraped() {
        assert_eq!(plan(&annotations(&[]), None), Plan::Merge { app: None });
        let mut a = annotations(&[("team", "shop")]);
        point_at_proxy(&mut a);
        assert_eq!(
            a,
            annotations(&[
                ("team", "shop"),
                (SCRAPE, "true"),
                (PORT, "15020"),
                (PATH, "/stats/prometheus")
            ])
        );
    }

    #[test]
    fn an_app_with_metrics_hands_them_to_the_proxy() {
        let a = annotations(&[(SCRAPE, "true"), (PORT, "9090"), ("prometheus.io.path", "/custom")]);
        let Plan::Merge { app: Some(app) } = plan(&a, None) else {
            panic!("expected a merge with the app's settings");
        };
        let app: serde_json::Value = serde_json::from_str(&app).unwrap();
        assert_eq!(app, json!({"scrape": "true", "port": "9090", "path": "/custom"}));
        let mut a = a;
        point_at_proxy(&mut a);
        assert!(
            !a.contains_key("prometheus.io.path"),
            "every spelling is replaced: {a:?}"
        );
        assert_eq!(a[PATH], "/stats/prometheus");
        assert_eq!(a[PORT], "15020");
    }

    #[test]
    fn opt_outs_and_reinjection_keep_the_annotations() {
        assert_eq!(plan(&annotations(&[(SCRAPE, "false")]), None), Plan::Keep);
        assert_eq!(plan(&annotations(&[(SCRAPE, "true")]), Some(false)), Plan::Keep);
        assert_eq!(plan(&annotations(&[(PORT, "15020")]), None), Plan::Keep);
        // An unparsable scrape value is not an opt-out (Istio's reading).
        assert!(matches!(
            plan(&annotations(&[(SCRAPE, "yes")]), None),
            Plan::Merge { app: Some(_) }
        ));
    }
}
