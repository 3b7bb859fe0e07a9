//! Reading the spans the proxies exported to the demo's OTLP collector
//! (`GET /v1/traces` of the test app), and following one request's path
//! through them: each span parented to the previous hop's.

use anyhow::{bail, ensure};
use serde_json::Value;

/// OTLP `SPAN_KIND_SERVER`: a proxy's inbound side.
pub const SERVER: i64 = 2;
/// OTLP `SPAN_KIND_CLIENT`: a sidecar's outbound side, or a gateway.
pub const CLIENT: i64 = 3;

/// One exported span.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    /// The exporting proxy's `service.name` (its workload).
    pub service: String,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_id: String,
    pub name: String,
    /// [`SERVER`] or [`CLIENT`].
    pub kind: i64,
}

/// Every span of `trace_id` in the collector's answer (`{"exports": [...]}`), each once: OTLP
/// export is at-least-once (a proxy resends a batch whose answer timed out, though the collector
/// may have kept it), so a span the same proxy exported again with the same id is one span.
pub fn spans_of(collected: &Value, trace_id: &str) -> Vec<Span> {
    let mut out = Vec::new();
    let list = |v: &Value| v.as_array().cloned().unwrap_or_default();
    for export in list(&collected["exports"]) {
        for rs in list(&export["resourceSpans"]) {
            let service = list(&rs["resource"]["attributes"])
                .iter()
                .find(|a| a["key"] == "service.name")
                .and_then(|a| a["value"]["stringValue"].as_str())
                .unwrap_or_default()
                .to_string();
            for ss in list(&rs["scopeSpans"]) {
                for span in list(&ss["spans"]).into_iter().filter(|s| s["traceId"] == trace_id) {
                    let text = |k: &str| span[k].as_str().unwrap_or_default().to_string();
                    let span = Span {
                        service: service.clone(),
                        trace_id: text("traceId"),
                        span_id: text("spanId"),
                        parent_id: text("parentSpanId"),
                        name: text("name"),
                        kind: span["kind"].as_i64().unwrap_or_default(),
                    };
                    if !out.contains(&span) {
                        out.push(span);
                    }
                }
            }
        }
    }
    out
}

/// The chain of spans that starts under `root_parent` (the span id the
/// client sent): the one span whose parent is `root_parent`, then the one
/// whose parent is that span, and so on. Fails when a span has two children
/// (a hop reported twice) or when spans are left over that hang off nothing
/// in the chain (a hop that did not parent its span to the previous one).
pub fn chain(spans: &[Span], root_parent: &str) -> anyhow::Result<Vec<Span>> {
    let mut out: Vec<Span> = Vec::new();
    let mut parent = root_parent.to_string();
    loop {
        let children: Vec<&Span> = spans.iter().filter(|s| s.parent_id == parent).collect();
        match children.as_slice() {
            [] => break,
            [one] => {
                parent = one.span_id.clone();
                out.push((*one).clone());
            }
            many => bail!(
                "span {parent} has {} children, one hop expected: {}",
                many.len(),
                describe(many.iter().copied())
            ),
        }
    }
    let stray: Vec<&Span> = spans.iter().filter(|s| !out.contains(s)).collect();
    ensure!(
        stray.is_empty(),
        "spans not parented to the previous hop: {}; the chain from {root_parent}: {}",
        describe(stray.iter().copied()),
        describe(out.iter())
    );
    Ok(out)
}

/// The chain of `spans` from `root_parent` ([`chain`]) checked hop by hop against
/// `expected` ([`expect_hops`]); while fewer spans than hops have arrived, an error saying
/// how many.
pub fn expect_path<S: AsRef<str>>(
    spans: &[Span],
    root_parent: &str,
    expected: &[(S, i64, S)],
) -> anyhow::Result<Vec<Span>> {
    if spans.len() < expected.len() {
        bail!(
            "{} of {} spans so far: {}",
            spans.len(),
            expected.len(),
            describe(spans.iter())
        );
    }
    let chain = chain(spans, root_parent)?;
    expect_hops(&chain, expected)?;
    Ok(chain)
}

/// Checks a chain hop by hop against `(service, kind, span name)`, exactly.
pub fn expect_hops<S: AsRef<str>>(chain: &[Span], hops: &[(S, i64, S)]) -> anyhow::Result<()> {
    let seen: Vec<(&str, i64, &str)> = chain
        .iter()
        .map(|s| (s.service.as_str(), s.kind, s.name.as_str()))
        .collect();
    let hops: Vec<(&str, i64, &str)> = hops.iter().map(|(s, k, n)| (s.as_ref(), *k, n.as_ref())).collect();
    ensure!(
        seen == hops,
        "the spans' hops (service, kind, name) are {seen:?}, expected {hops:?}: {}",
        describe(chain.iter())
    );
    Ok(())
}

/// The hops `/api/...` takes through the demo shop, as [`expect_hops`] reads them, when
/// payment `version` answers: the gateway's span (its route `api`), web's inbound and
/// outbound (route `split` of the payment VirtualService), payment's inbound and outbound
/// (db has no VirtualService: route `default`), db's inbound. A proxy's service is its
/// workload and namespace.
pub fn shop_path(version: &str) -> Vec<(String, i64, String)> {
    use trellis_manifests::demo;
    let service = |workload: &str| format!("{workload}.{}", demo::NAMESPACE);
    let inbound = format!("inbound|{}", demo::APP_PORT);
    let payment = service(&format!("payment-{version}"));
    vec![
        (service(demo::GATEWAY), CLIENT, "api".to_string()),
        (service("web"), SERVER, inbound.clone()),
        (service("web"), CLIENT, "split".to_string()),
        (payment.clone(), SERVER, inbound.clone()),
        (payment, CLIENT, "default".to_string()),
        (service("db"), SERVER, inbound),
    ]
}

/// One line per span: `service kind name span←parent`.
pub fn describe<'a>(spans: impl Iterator<Item = &'a Span>) -> String {
    spans
        .map(|s| {
            format!(
                "[{} kind {} {:?} {}←{}]",
                s.service, s.kind, s.name, s.span_id, s.parent_id
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The span ids of a `traceparent` header value (`00-<trace>-<span>-<flags>`).
pub fn traceparent_ids(value: &str) -> anyhow::Result<(String, String)> {
    let parts: Vec<&str> = value.split('-').collect();
    match parts.as_slice() {
        [_, trace, span, _] if trace.len() == 32 && span.len() == 16 => Ok((trace.to_string(), span.to_string())),
        _ => Err(anyhow::anyhow!("not a traceparent: {value:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn export(service: &str, spans: &[(&str, &str, &str, i64)]) -> Value {
        let spans: Vec<Value> = spans
            .iter()
            .map(|(id, parent, name, kind)| {
                json!({"traceId": "t1", "spanId": id, "parentSpanId": parent, "name": name, "kind": kind})
            })
            .collect();
        json!({"resourceSpans": [{
            "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]},
            "scopeSpans": [{"spans": spans}],
        }]})
    }

    #[test]
    fn a_well_parented_path_is_followed_hop_by_hop() {
        let collected = json!({"exports": [
            export("web", &[("w2", "w1", "payment", CLIENT), ("w1", "g", "api", SERVER)]),
            export("gw", &[("g", "client", "api", CLIENT)]),
            export("other", &[("x", "", "unrelated", SERVER)]),
        ]});
        let mut spans = spans_of(&collected, "t1");
        spans.retain(|s| s.service != "other");
        let chain = chain(&spans, "client").unwrap();
        let hops = [
            ("gw", CLIENT, "api"),
            ("web", SERVER, "api"),
            ("web", CLIENT, "payment"),
        ];
        expect_hops(&chain, &hops).unwrap();
        assert!(expect_hops(&chain, &hops[..2]).is_err());
        let renamed = [("gw", CLIENT, "api"), ("web", SERVER, "api"), ("web", CLIENT, "db")];
        assert!(expect_hops(&chain, &renamed).is_err());
    }

    #[test]
    fn a_hop_parented_elsewhere_breaks_the_chain() {
        // web's outbound span hangs off the client's span, as if web's inbound proxy had
        // passed the incoming traceparent on unchanged.
        let collected = json!({"exports": [
            export("gw", &[("g", "client", "api", CLIENT)]),
            export("web", &[("w1", "g", "api", SERVER), ("w2", "g", "payment", CLIENT)]),
        ]});
        let e = chain(&spans_of(&collected, "t1"), "client").unwrap_err().to_string();
        assert!(e.contains("span g has 2 children"), "{e}");
        // The same span exported twice (a batch resent after its answer timed out: first_light
        // failed so at load 16) is one hop, not two.
        let resent = json!({"exports": [
            export("gw", &[("g", "client", "api", CLIENT)]),
            export("web", &[("w1", "g", "api", SERVER)]),
            export("web", &[("w1", "g", "api", SERVER)]),
        ]});
        let spans = spans_of(&resent, "t1");
        assert_eq!(spans.len(), 2, "{spans:?}");
        assert_eq!(chain(&spans, "client").unwrap().len(), 2);
        // A span of a new trace is not part of this one at all, and a span whose parent is
        // unknown is reported.
        let collected = json!({"exports": [
            export("gw", &[("g", "client", "api", CLIENT)]),
            export("web", &[("w1", "elsewhere", "api", SERVER)]),
        ]});
        let e = chain(&spans_of(&collected, "t1"), "client").unwrap_err().to_string();
        assert!(
            e.contains("not parented to the previous hop") && e.contains("w1←elsewhere"),
            "{e}"
        );
    }

    #[test]
    fn traceparents_are_split() {
        let (trace, span) = traceparent_ids("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(
            (trace.as_str(), span.as_str()),
            ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7")
        );
        assert!(traceparent_ids("00-xyz").is_err());
    }
}
