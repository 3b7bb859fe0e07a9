//! The demo's traffic: plain HTTP through the gateway's load balancer, as `curl` sends it, and
//! what the shop's answers say — which payment version answered, and the identity each hop
//! saw (the test app echoes every hop, with the `x-forwarded-client-cert` its proxy added).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest answer read (the shop's echoes are a few KiB).
const MAX_ANSWER: usize = 1 << 20;

/// One answer.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The body.
    pub body: Bytes,
}

impl Answer {
    /// The hops the shop's answer echoes, outermost first (gateway's callee first).
    pub fn hops(&self) -> anyhow::Result<Vec<Value>> {
        let body: Value = serde_json::from_slice(&self.body).with_context(|| {
            format!(
                "HTTP {}: the answer is not the shop's JSON echo: {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })?;
        Ok(hops(&body))
    }
}

/// The hops of a test-app echo: each app's echo nests the one it called under `upstream.body`.
pub fn hops(body: &Value) -> Vec<Value> {
    let mut hops = Vec::new();
    let mut echo = body.clone();
    loop {
        let next = echo.get("upstream").map(|u| u["body"].clone());
        hops.push(echo);
        match next {
            Some(body) if body.is_object() => echo = body,
            _ => break,
        }
    }
    hops
}

/// An HTTP/1.1 client.
#[derive(Debug, Clone)]
pub struct Client {
    inner: HyperClient<HttpConnector, Full<Bytes>>,
}

impl Client {
    /// A client with a small idle pool.
    pub fn new() -> Client {
        Client {
            inner: HyperClient::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(5))
                .build_http(),
        }
    }

    /// `GET url` with `headers`, within [`REQUEST_TIMEOUT`].
    pub async fn get(&self, url: &str, headers: &[(String, String)]) -> anyhow::Result<Answer> {
        let mut builder = http::Request::get(url);
        for (k, v) in headers {
            builder = builder.header(k, v);
        }
        let request = builder.body(Full::new(Bytes::new()))?;
        tokio::time::timeout(REQUEST_TIMEOUT, async {
            let response = self
                .inner
                .request(request)
                .await
                .with_context(|| format!("requesting {url}"))?;
            let status = response.status().as_u16();
            let body = http_body_util::Limited::new(response.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| anyhow::anyhow!("reading the answer of {url}: {e}"))?
                .to_bytes();
            Ok(Answer { status, body })
        })
        .await
        .with_context(|| format!("no answer from {url} within {REQUEST_TIMEOUT:?}"))?
    }

    /// `n` GETs, `concurrency` at a time: every answer, or its error as text.
    pub async fn many(
        &self,
        url: &str,
        headers: &[(String, String)],
        n: usize,
        concurrency: usize,
    ) -> Vec<Result<Answer, String>> {
        let next = Arc::new(AtomicUsize::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..concurrency.max(1) {
            let (client, url, headers, next) = (self.clone(), url.to_string(), headers.to_vec(), next.clone());
            tasks.spawn(async move {
                let mut answers = Vec::new();
                while next.fetch_add(1, Ordering::SeqCst) < n {
                    answers.push(client.get(&url, &headers).await.map_err(|e| format!("{e:#}")));
                }
                answers
            });
        }
        let mut all = Vec::new();
        while let Some(done) = tasks.join_next().await {
            match done {
                Ok(answers) => all.extend(answers),
                Err(e) => all.push(Err(format!("a request task failed: {e}"))),
            }
        }
        all
    }
}

impl Default for Client {
    fn default() -> Self {
        Client::new()
    }
}

/// Answers counted by who answered: `payment v1`, `HTTP 503`, `no answer`.
pub fn count_versions(answers: &[Result<Answer, String>]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for a in answers {
        let key = match a {
            Ok(a) if a.status == 200 => a
                .hops()
                .ok()
                .and_then(|h| h.iter().find(|e| e["service"] == "payment").cloned())
                .and_then(|e| e["version"].as_str().map(|v| format!("payment {v}")))
                .unwrap_or_else(|| "no payment hop".into()),
            Ok(a) => format!("HTTP {}", a.status),
            Err(_) => "no answer".into(),
        };
        *counts.entry(key).or_insert(0) += 1;
    }
    counts
}

/// Each hop's service, pod, the verified peer (`URI=` of its XFCC) and its own identity
/// (`By=`).
pub fn identities(answer: &Answer) -> anyhow::Result<Vec<[String; 4]>> {
    let mut rows = Vec::new();
    for hop in answer.hops()? {
        let xfcc = hop["clientCert"].as_str().unwrap_or_default();
        let field = |key: &str| {
            xfcc.split(';')
                .find_map(|f| f.strip_prefix(key))
                .unwrap_or("(none: not mTLS)")
                .to_string()
        };
        rows.push([
            hop["service"].as_str().unwrap_or("?").to_string(),
            hop["pod"].as_str().unwrap_or("?").to_string(),
            field("URI="),
            field("By="),
        ]);
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn answer(status: u16, body: Value) -> Result<Answer, String> {
        Ok(Answer {
            status,
            body: Bytes::from(body.to_string()),
        })
    }

    #[test]
    fn answers_are_counted_by_the_payment_version_and_hops_name_their_peers() {
        let chain = |v: &str| {
            json!({"service": "web", "pod": "web-1",
                "clientCert": "By=spiffe://cluster.local/ns/shop/sa/web;Hash=ab;URI=spiffe://cluster.local/ns/trellis-system/sa/trellis-ingressgateway",
                "upstream": {"status": 200, "body": {"service": "payment", "version": v, "pod": "payment-1"}}})
        };
        let answers = vec![
            answer(200, chain("v1")),
            answer(200, chain("v1")),
            answer(200, chain("v2")),
            answer(503, json!({})),
            Err("refused".into()),
        ];
        let counts = count_versions(&answers);
        assert_eq!(
            counts,
            BTreeMap::from([
                ("payment v1".to_string(), 2),
                ("payment v2".to_string(), 1),
                ("HTTP 503".to_string(), 1),
                ("no answer".to_string(), 1)
            ])
        );
        let Ok(first) = &answers[0] else { unreachable!() };
        let rows = identities(first).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(
            rows[0],
            [
                "web",
                "web-1",
                "spiffe://cluster.local/ns/trellis-system/sa/trellis-ingressgateway",
                "spiffe://cluster.local/ns/shop/sa/web"
            ]
        );
        assert_eq!(rows[1][2], "(none: not mTLS)");
    }
}
