//! The operator fetches RequestAuthentications' `jwksUri` from a real local HTTPS server (a
//! certificate from a test CA, trusted through the fetcher's injected root store): the key set
//! reaches the index (and so the compiler) once, again only when it changes, is kept when a
//! refresh fails, and every limit — size, timeout, redirects, untrusted servers, answers that
//! are no key set — leaves the issuer without keys (its tokens get 401), saying why. A rule
//! with neither jwks nor jwksUri has its keys discovered from the issuer (OpenID Connect).

mod support;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::loopback::Loopback;
use support::{free_port, until};
use trellis_api::security::RequestAuthentication;
use trellis_core::code::Code;
use trellis_operator::index::{Change, Index, Object, Shared};
use trellis_operator::jwks::{self, Fetcher, Options};
use trellis_operator::metrics::Metrics;
use trellis_operator::snapshot::FetchedJwks;

const RSA_1: &str = r#"{"kty":"RSA","kid":"one","use":"sig","n":"AQAB","e":"AQAB"}"#;
const RSA_2: &str = r#"{"kty":"RSA","kid":"two","use":"sig","n":"AQAB","e":"AQAB"}"#;

/// What the server answers on one path.
#[derive(Clone)]
enum Answer {
    Json(u16, String),
    /// 302 to this URL.
    Redirect(String),
    /// A body of this many bytes, without Content-Length (chunked).
    Chunked(usize),
    /// Nothing, for a minute.
    Hang,
}

/// A test CA and a server certificate for `localhost` it signed.
struct Pki {
    root: rustls::pki_types::CertificateDer<'static>,
    leaf_der: rustls::pki_types::CertificateDer<'static>,
    leaf_key: rustls::pki_types::PrivateKeyDer<'static>,
}

fn pki() -> Pki {
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name.push(rcgen::DnType::CommonName, "jwks test root");
    ca.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let mut leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    leaf.is_ca = rcgen::IsCa::ExplicitNoCa;
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();
    Pki {
        root: ca_cert.der().clone(),
        leaf_der: leaf_cert.der().clone(),
        leaf_key: rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
    }
}

/// A key-set server on 127.0.0.1: HTTPS with `pki`'s certificate, or plain HTTP.
struct Server {
    addr: SocketAddr,
    https: bool,
    answers: Arc<Mutex<BTreeMap<String, Answer>>>,
    requests: Arc<AtomicUsize>,
    _server: Loopback,
}

impl Server {
    async fn start(pki: Option<&Pki>) -> Self {
        let acceptor = pki.map(|p| {
            let config =
                rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                    .with_safe_default_protocol_versions()
                    .unwrap()
                    .with_no_client_auth()
                    .with_single_cert(vec![p.leaf_der.clone()], p.leaf_key.clone_key())
                    .unwrap();
            tokio_rustls::TlsAcceptor::from(Arc::new(config))
        });
        let answers: Arc<Mutex<BTreeMap<String, Answer>>> = Arc::default();
        let requests = Arc::new(AtomicUsize::new(0));
        let (a, r) = (answers.clone(), requests.clone());
        let server = Loopback::serve(0, move |tcp| {
            let (acceptor, answers, requests) = (acceptor.clone(), a.clone(), r.clone());
            async move {
                let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    requests.fetch_add(1, Ordering::SeqCst);
                    let answer = answers.lock().unwrap().get(req.uri().path()).cloned();
                    async move { Ok::<_, Infallible>(respond(answer).await) }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                match acceptor {
                    Some(acceptor) => {
                        // A client that does not trust the certificate hangs up here.
                        let Ok(tls) = acceptor.accept(tcp).await else { return };
                        let _ = builder.serve_connection(TokioIo::new(tls), svc).await;
                    }
                    None => {
                        let _ = builder.serve_connection(TokioIo::new(tcp), svc).await;
                    }
                }
            }
        })
        .await;
        Self {
            addr: server.addr,
            https: pki.is_some(),
            answers,
            requests,
            _server: server,
        }
    }

    fn set(&self, path: &str, answer: Answer) {
        self.answers.lock().unwrap().insert(path.to_string(), answer);
    }

    fn uri(&self, path: &str) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://localhost:{}{path}", self.addr.port())
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn respond(answer: Option<Answer>) -> hyper::Response<Body> {
    let full = |b: Bytes| Full::new(b).boxed();
    let mut r = hyper::Response::new(full(Bytes::new()));
    match answer {
        None => *r.status_mut() = hyper::StatusCode::NOT_FOUND,
        Some(Answer::Json(status, body)) => {
            *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
            *r.body_mut() = full(Bytes::from(body));
        }
        Some(Answer::Redirect(to)) => {
            *r.status_mut() = hyper::StatusCode::FOUND;
            r.headers_mut().insert(hyper::header::LOCATION, to.parse().unwrap());
        }
        Some(Answer::Chunked(n)) => {
            // A body of unknown size: sent chunked, without Content-Length.
            let chunks = (0..n.div_ceil(1024))
                .map(|_| Ok::<_, Infallible>(hyper::body::Frame::data(Bytes::from(vec![b' '; 1024]))));
            *r.body_mut() = http_body_util::StreamBody::new(futures::stream::iter(chunks)).boxed();
        }
        Some(Answer::Hang) => tokio::time::sleep(Duration::from_secs(60)).await,
    }
    r
}

fn key_set(keys: &[&str]) -> String {
    format!("{{\"keys\": [{}]}}", keys.join(", "))
}

/// A RequestAuthentication in `shop` with one rule per URI (and timeout).
fn request_authentication(name: &str, uris: &[(&str, &str)]) -> RequestAuthentication {
    let rules: Vec<serde_json::Value> = uris
        .iter()
        .enumerate()
        .map(|(i, (uri, timeout))| serde_json::json!({"issuer": format!("https://issuer-{i}.example"), "jwksUri": uri, "timeout": timeout}))
        .collect();
    serde_json::from_value(serde_json::json!({
        "apiVersion": "security.trellis.dev/v1alpha1",
        "kind": "RequestAuthentication",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {"jwtRules": rules},
    }))
    .unwrap()
}

struct Operator {
    index: Shared,
    changes: tokio::sync::watch::Receiver<u64>,
    metrics: Arc<Metrics>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The fetcher loop over an index holding `ra`, trusting `root` only, with a short schedule.
fn operator(
    ra: RequestAuthentication,
    root: &rustls::pki_types::CertificateDer<'static>,
    options: Options,
) -> Operator {
    let mut index = Index::default();
    index.apply(Change::Applied(Object::RequestAuthentication(Box::new(ra))));
    let index: Shared = Arc::new(RwLock::new(index));
    let (tx, changes) = tokio::sync::watch::channel(0);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    let metrics = Arc::new(Metrics::default());
    let task = tokio::spawn(jwks::run(
        index.clone(),
        tx,
        Fetcher::with_roots(roots),
        metrics.clone(),
        options,
    ));
    Operator {
        index,
        changes,
        metrics,
        task,
    }
}

impl Operator {
    fn held(&self, uri: &str) -> Option<FetchedJwks> {
        self.index.read().unwrap().snapshot().jwks.get(uri).cloned()
    }

    fn stale(&self, uri: &str) -> Option<String> {
        self.index.read().unwrap().snapshot().jwks_stale.get(uri).cloned()
    }

    fn generation(&self) -> u64 {
        *self.changes.borrow()
    }

    fn keys(&self, uri: &str) -> Vec<String> {
        match self.held(uri) {
            Some(FetchedJwks::Keys(k)) => {
                let v: serde_json::Value = serde_json::from_str(&k).unwrap();
                v["keys"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|k| k["kid"].as_str().unwrap().to_string())
                    .collect()
            }
            _ => Vec::new(),
        }
    }

    fn unavailable(&self, uri: &str) -> Option<String> {
        match self.held(uri) {
            Some(FetchedJwks::Unavailable(why)) => Some(why),
            _ => None,
        }
    }

    fn diagnostics(&self) -> Vec<trellis_operator::compile::Diagnostic> {
        trellis_operator::compile::diagnose(&self.index.read().unwrap().snapshot())
    }
}

/// A schedule of fractions of a second: refreshed every 200 ms, retried after 100 ms.
fn quick() -> Options {
    Options {
        refresh: Duration::from_millis(200),
        retry_first: Duration::from_millis(100),
        retry_max: Duration::from_millis(200),
        ..Options::default()
    }
}

#[tokio::test]
async fn fetched_over_https_refreshed_pushed_only_on_change_and_kept_when_a_refresh_fails() {
    let pki = pki();
    let server = Server::start(Some(&pki)).await;
    server.set("/keys", Answer::Json(200, key_set(&[RSA_1])));
    let uri = server.uri("/keys");
    let op = operator(request_authentication("jwt", &[(&uri, "2s")]), &pki.root, quick());

    until("the key set is fetched", 10, || op.keys(&uri) == ["one"]).await;
    let fetched_at = op.generation();
    assert!(fetched_at > 0, "the change was announced");
    // Refreshes that bring the same keys (in another layout, even) change nothing.
    server.set("/keys", Answer::Json(200, format!("{{\"keys\":[{RSA_1}]}}")));
    let seen = server.requests();
    until("refreshed twice more", 10, || server.requests() >= seen + 2).await;
    assert_eq!(op.generation(), fetched_at, "an unchanged key set is announced once");

    // The issuer rotates: the new set is picked up at the next refresh and announced.
    server.set("/keys", Answer::Json(200, key_set(&[RSA_2, RSA_1])));
    until("the rotated key set is fetched", 10, || op.keys(&uri) == ["one", "two"]).await;
    assert!(op.generation() > fetched_at);

    // The issuer fails: the last good keys stay, and the RequestAuthentication says so.
    server.set("/keys", Answer::Json(503, "down".into()));
    until("the failed refresh is recorded", 10, || op.stale(&uri).is_some()).await;
    assert_eq!(op.keys(&uri), ["one", "two"], "the last good keys are kept");
    assert_eq!(op.stale(&uri).unwrap(), "HTTP 503 Service Unavailable");
    let d = op.diagnostics();
    assert!(
        d.iter().any(|d| d.code == Code::JwksStale
            && d.resource == "RequestAuthentication shop/jwt"
            && d.message.contains("HTTP 503")),
        "{d:#?}"
    );
    // Retried sooner than a refresh, with backoff; back to normal once it answers again.
    let failing = server.requests();
    until("retried", 10, || server.requests() >= failing + 2).await;
    server.set("/keys", Answer::Json(200, key_set(&[RSA_2])));
    until("recovered", 10, || op.stale(&uri).is_none() && op.keys(&uri) == ["two"]).await;
    assert!(op.diagnostics().is_empty(), "{:#?}", op.diagnostics());

    assert!(op.metrics.jwks_fetches("success") >= 4);
    assert!(op.metrics.jwks_fetches("failure") >= 1);
    let rendered = op.metrics.render("");
    assert!(
        rendered.contains("trellis_operator_jwks_uris{state=\"fresh\"} 1"),
        "{rendered}"
    );
    assert!(
        rendered.contains("trellis_operator_jwks_fetches_total{result=\"failure\"}"),
        "{rendered}"
    );
}

#[tokio::test]
async fn every_limit_leaves_the_issuer_without_keys_and_says_why() {
    let pki = pki();
    let server = Server::start(Some(&pki)).await;
    let plain = Server::start(None).await;
    let stranger = Server::start(Some(&self::pki())).await; // a certificate nobody trusts
    server.set(
        "/big",
        Answer::Json(
            200,
            format!("{{\"keys\":[{RSA_1}], \"pad\": \"{}\"}}", "x".repeat(70 * 1024)),
        ),
    );
    server.set("/chunked", Answer::Chunked(70 * 1024));
    // A redirect to a good key set on the same server: following it would bring keys.
    server.set("/moved", Answer::Redirect(server.uri("/keys")));
    server.set("/keys", Answer::Json(200, key_set(&[RSA_1])));
    server.set("/slow", Answer::Hang);
    server.set("/html", Answer::Json(200, "<html>sign in</html>".into()));
    server.set(
        "/private",
        Answer::Json(200, key_set(&[r#"{"kty":"RSA","n":"AQAB","e":"AQAB","d":"AQAB"}"#])),
    );
    plain.set("/keys", Answer::Json(200, key_set(&[RSA_1])));
    stranger.set("/keys", Answer::Json(200, key_set(&[RSA_1])));
    let uri = |s: &Server, p: &str| s.uri(p);
    let cases: Vec<(String, &str, &str)> = vec![
        (uri(&server, "/big"), "5s", "more than the 64 KiB"),
        (uri(&server, "/chunked"), "5s", "larger than the 64 KiB"),
        (
            uri(&server, "/moved"),
            "5s",
            "redirects are not followed; point jwksUri at \"https://localhost:",
        ),
        (uri(&server, "/slow"), "300ms", "no complete answer within 300ms"),
        (uri(&server, "/html"), "5s", "not a JSON Web Key Set"),
        (uri(&server, "/private"), "5s", "a private key"),
        (uri(&server, "/missing"), "5s", "HTTP 404"),
        (uri(&stranger, "/keys"), "5s", "TLS with localhost"),
        (
            format!("https://localhost:{}/keys", free_port()),
            "5s",
            "connecting to localhost",
        ),
    ];
    let plain_uri = uri(&plain, "/keys");
    let mut rules: Vec<(&str, &str)> = cases.iter().map(|(u, t, _)| (u.as_str(), *t)).collect();
    rules.push((plain_uri.as_str(), "5s"));
    let op = operator(request_authentication("limits", &rules), &pki.root, Options::default());

    until("every URI fetched once", 15, || {
        cases.iter().all(|(u, _, _)| op.held(u).is_some()) && op.held(&plain_uri).is_some()
    })
    .await;
    let mut failures = Vec::new();
    for (u, _, why) in &cases {
        match op.unavailable(u) {
            Some(got) if got.contains(why) => {}
            other => failures.push(format!("{u}: expected unavailable with {why:?}, got {other:?}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // http:// is fetched, as Istio does.
    assert_eq!(op.keys(&plain_uri), ["one"]);
    // Each unavailable key set is on its rule, as an error: the issuer's tokens get 401.
    let d = op.diagnostics();
    assert_eq!(
        d.iter().filter(|d| d.code == Code::JwksUnavailable).count(),
        cases.len(),
        "{d:#?}"
    );
    assert!(
        d.iter()
            .any(|d| d.message.contains("spec.jwtRules[3].jwksUri") && d.message.contains("300ms")),
        "{d:#?}"
    );
    assert_eq!(op.metrics.jwks_fetches("success"), 1);
}

/// A RequestAuthentication in `shop` whose one rule names only its `issuer`.
fn discovered(name: &str, issuer: &str) -> RequestAuthentication {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "security.trellis.dev/v1alpha1",
        "kind": "RequestAuthentication",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {"jwtRules": [{"issuer": issuer, "timeout": "2s"}]},
    }))
    .unwrap()
}

/// A rule with neither `jwks` nor `jwksUri`: the operator reads the issuer's OpenID Connect
/// discovery document, fetches the `jwks_uri` it names (on another path, as providers do), and
/// follows the provider when it moves its keys. A document for another issuer, or naming no
/// `jwks_uri`, leaves the issuer without keys and says why, on the rule's `issuer` field.
#[tokio::test]
async fn keys_are_discovered_from_the_issuer_by_openid_connect() {
    let pki = pki();
    let server = Server::start(Some(&pki)).await;
    let issuer = server.uri("/realms/shop");
    let document = |jwks_uri: &str| {
        Answer::Json(
            200,
            serde_json::json!({"issuer": issuer, "jwks_uri": jwks_uri, "authorization_endpoint": format!("{issuer}/auth")})
                .to_string(),
        )
    };
    server.set(
        "/realms/shop/.well-known/openid-configuration",
        document(&server.uri("/certs/v1")),
    );
    server.set("/certs/v1", Answer::Json(200, key_set(&[RSA_1])));
    let op = operator(discovered("oidc", &format!("{issuer}/")), &pki.root, quick());
    let key = format!("{issuer}/.well-known/openid-configuration#trellis-oidc-discovery");
    until("the key set is discovered and fetched", 10, || op.keys(&key) == ["one"]).await;
    // The provider moves its keys: followed at the next refresh.
    server.set(
        "/realms/shop/.well-known/openid-configuration",
        document(&server.uri("/certs/v2")),
    );
    server.set("/certs/v2", Answer::Json(200, key_set(&[RSA_2])));
    until("the moved key set is fetched", 10, || op.keys(&key) == ["two"]).await;

    // A document for another issuer is not trusted: after a good fetch, the keys go stale.
    server.set(
        "/realms/shop/.well-known/openid-configuration",
        Answer::Json(
            200,
            serde_json::json!({"issuer": "https://evil.example", "jwks_uri": server.uri("/certs/v2")}).to_string(),
        ),
    );
    until("the foreign document is refused", 10, || op.stale(&key).is_some()).await;
    let why = op.stale(&key).unwrap();
    assert!(why.contains("is for issuer \"https://evil.example\""), "{why}");
    let d = op.diagnostics();
    assert!(
        d.iter().any(|d| d.code == Code::JwksStale
            && d.resource == "RequestAuthentication shop/oidc"
            && d.message.starts_with("spec.jwtRules[0].issuer ")
            && d.message.contains("/realms/shop/.well-known/openid-configuration\"")
            && !d.message.contains("#trellis")),
        "{d:#?}"
    );

    // An issuer whose discovery document names no jwks_uri never gets keys.
    let bare = Server::start(Some(&pki)).await;
    bare.set(
        "/.well-known/openid-configuration",
        Answer::Json(200, serde_json::json!({"issuer": bare.uri("")}).to_string()),
    );
    let op = operator(discovered("bare", &bare.uri("")), &pki.root, Options::default());
    let key = format!(
        "{}/.well-known/openid-configuration#trellis-oidc-discovery",
        bare.uri("")
    );
    until("the document is read", 10, || op.unavailable(&key).is_some()).await;
    let why = op.unavailable(&key).unwrap();
    assert!(why.contains("names no jwks_uri; set jwksUri in the rule"), "{why}");
}
