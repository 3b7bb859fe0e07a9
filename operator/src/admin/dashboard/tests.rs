//! The dashboard's HTTP handler without a browser: every route, its content type, the
//! security headers on every answer (errors and redirects included), 404s, and bad input
//! refused with a message that says what to send instead.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use http_body_util::BodyExt as _;
use serde_json::Value;
use tokio::sync::watch;
use trellis_contract::signals::{Counts, EdgeSignals, Report};
use trellis_core::registry::ObjectKey;
use trellis_core::snapshot::Snapshot;

use super::*;
use crate::ca::{MeshRoots, SigningCert, SystemClock};
use crate::index::{Change, Index, Object};
use crate::push::{self, PushService};
use crate::traffic::Traffic;

/// An admin API over an index holding Service `shop/web` and no peers.
fn admin() -> Admin {
    let mut index = Index::default();
    let web = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"clusterIP": "10.96.0.9", "selector": {"app": "web"}, "ports": [{"name": "http", "port": 8080}]}
    }))
    .unwrap();
    index.apply(Change::Applied(Object::Service(Box::new(web))));
    let index = Arc::new(RwLock::new(index));
    let (_, changed) = watch::channel(0);
    let root = SigningCert::self_signed_root("cluster.local", Duration::from_secs(3600), SystemTime::now()).unwrap();
    Admin {
        push: PushService::new(index.clone(), changed, push::Options::default()),
        peers: Arc::default(),
        replicas: crate::peers::Replicas::default(),
        index,
        ready: Arc::new(AtomicBool::new(true)),
        roots: Arc::new(MeshRoots::new(root, Duration::from_secs(600), Arc::new(SystemClock))),
        traffic: Arc::new(Traffic::default()),
    }
}

/// One answer: status, content type, body, and the headers by name.
struct Answer {
    status: StatusCode,
    content_type: String,
    body: String,
    headers: hyper::HeaderMap,
}

impl Answer {
    fn json(&self) -> Value {
        assert_eq!(self.content_type, "application/json", "{}", self.body);
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

async fn call(admin: &Admin, method: &str, uri: &str) -> Answer {
    let req = Request::builder().method(method).uri(uri).body(()).unwrap();
    let response = handle(admin, &req).await;
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let answer = Answer {
        status,
        content_type: headers
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default(),
        body: String::from_utf8(body.to_vec()).unwrap(),
        headers,
    };
    // Every answer, whatever it is, carries the policy and the hardening headers.
    for (name, want) in [
        ("content-security-policy", CONTENT_SECURITY_POLICY),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
        ("cache-control", "no-store"),
    ] {
        assert_eq!(
            answer.headers.get(name).and_then(|v| v.to_str().ok()),
            Some(want),
            "{method} {uri} ({}): header {name}",
            answer.status
        );
    }
    answer
}

#[tokio::test]
async fn the_pages_and_their_content_types() {
    let admin = admin();
    let moved = call(&admin, "GET", "/dashboard").await;
    assert_eq!(moved.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(
        moved.headers.get("location").unwrap(),
        "dashboard/",
        "relative, so it works behind the API server's pod proxy"
    );
    for (uri, content_type, body) in [
        ("/dashboard/", "text/html; charset=utf-8", INDEX_HTML),
        ("/dashboard/index.html", "text/html; charset=utf-8", INDEX_HTML),
        ("/dashboard/dashboard.js", "text/javascript; charset=utf-8", SCRIPT),
        ("/dashboard/dashboard.css", "text/css; charset=utf-8", STYLE),
    ] {
        let a = call(&admin, "GET", uri).await;
        assert_eq!(
            (a.status, a.content_type.as_str()),
            (StatusCode::OK, content_type),
            "{uri}"
        );
        assert_eq!(a.body, body, "{uri}");
    }
    // The page loads its script and style from this origin, relatively, and nothing else.
    for want in [r#"src="dashboard.js""#, r#"href="dashboard.css""#] {
        assert!(INDEX_HTML.contains(want), "{want}");
    }
    // No other origin: the one absolute URL is SVG's XML namespace, a name never fetched.
    for file in [INDEX_HTML, SCRIPT, STYLE] {
        let absolute = file.replace("\"http://www.w3.org/2000/svg\"", "");
        assert!(
            !absolute.contains("http://") && !absolute.contains("https://") && !absolute.contains("//cdn"),
            "no other origin"
        );
        assert!(!file.contains("<script>"), "no inline script");
    }
    assert!(serves("/dashboard") && serves("/dashboard/api/graph"));
    assert!(!serves("/dashboards") && !serves("/metrics"));
}

#[tokio::test]
async fn the_api_answers_json() {
    let admin = admin();
    // One report of web's proxy: the gateway called it 4 times, once failing.
    let snapshot = Snapshot::from_yaml(
        "apiVersion: v1
kind: Pod
metadata: {name: web-5d8f-x7k2p, namespace: shop, labels: {app: web, pod-template-hash: 5d8f}}
spec: {serviceAccountName: web, containers: [{name: app, image: web}, {name: trellis-proxy, image: proxy}]}
status: {podIP: 10.244.0.5}
",
    )
    .unwrap();
    let report = Report {
        edges: vec![EdgeSignals {
            peer_namespace: "shop".into(),
            peer_workload: "gateway".into(),
            service: "web.shop.svc.cluster.local".into(),
            counts: Counts::in_buckets(4, 1, 4, &[(2, 4)]),
            ..EdgeSignals::default()
        }],
    };
    let signals = trellis_push::Signals {
        report_json: serde_json::to_vec(&report).unwrap(),
        ..Default::default()
    };
    admin
        .traffic
        .record(&snapshot, &ObjectKey::new("shop", "web-5d8f-x7k2p"), false, &signals);

    let graph = call(&admin, "GET", "/dashboard/api/graph?window=60").await;
    assert_eq!(graph.status, StatusCode::OK, "{}", graph.body);
    let graph = graph.json();
    assert_eq!(graph["windowSeconds"], 60);
    assert_eq!(graph["missingReplicas"], serde_json::json!([]));
    let edges = graph["edges"].as_array().unwrap();
    assert_eq!(edges.len(), 1, "{graph}");
    assert_eq!(
        (edges[0]["source"].as_str(), edges[0]["destination"].as_str()),
        (Some("shop/gateway"), Some("shop/web")),
        "{graph}"
    );
    assert_eq!(
        (&edges[0]["requests"], &edges[0]["failures"], &edges[0]["health"]),
        (&Value::from(4), &Value::from(1), &Value::from("failing")),
        "{graph}"
    );

    let page = call(&admin, "GET", "/dashboard/api/service?service=web.shop&window=30").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let page = page.json();
    assert_eq!(page["service"], "web.shop");
    assert_eq!(
        page["series"].as_array().unwrap().len(),
        3,
        "30 s in 10 s slots: {page}"
    );
    assert!(page["routes"].is_object() && page["routesError"].is_null(), "{page}");
    // A service the cluster does not have: the page, with why there are no routes.
    let ghost = call(&admin, "GET", "/dashboard/api/service?service=ghost.shop")
        .await
        .json();
    assert!(ghost["routes"].is_null(), "{ghost}");
    assert!(ghost["routesError"].as_str().unwrap().contains("ghost"), "{ghost}");

    let proxies = call(&admin, "GET", "/dashboard/api/proxies").await;
    assert_eq!(proxies.status, StatusCode::OK, "{}", proxies.body);
    let proxies = proxies.json();
    assert_eq!(proxies["operatorVersion"], env!("CARGO_PKG_VERSION"));
    assert_eq!(proxies["proxies"], serde_json::json!([]));
}

#[tokio::test]
async fn unknown_paths_are_404_and_name_the_routes() {
    let admin = admin();
    for uri in [
        "/dashboard/missing",
        "/dashboard/api",
        "/dashboard/api/graph/",
        "/dashboard/api/nodes",
        "/dashboard/dashboard.js.map",
        "/dashboard/../metrics",
        "/dashboard//index.html",
    ] {
        let a = call(&admin, "GET", uri).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{uri}");
        assert_eq!(a.content_type, "text/plain; charset=utf-8", "{uri}");
        for route in ["/dashboard/", "api/graph", "api/service", "api/proxies"] {
            assert!(a.body.contains(route), "{uri}: {}", a.body);
        }
    }
}

#[tokio::test]
async fn bad_input_is_refused_saying_what_to_send() {
    let admin = admin();
    for (uri, says) in [
        ("/dashboard/api/graph?window=7", "multiple of 10s"),
        ("/dashboard/api/graph?window=0", "window"),
        ("/dashboard/api/graph?window=3600", "window"),
        ("/dashboard/api/graph?window=x", "not a number of seconds"),
        ("/dashboard/api/graph?window=-10", "not a number of seconds"),
        ("/dashboard/api/graph?ns=shop", "unknown query parameter"),
        ("/dashboard/api/graph?window", "unknown query parameter"),
        ("/dashboard/api/service", "NAME.NAMESPACE"),
        ("/dashboard/api/service?service=web", "NAME.NAMESPACE"),
        ("/dashboard/api/service?service=.shop", "NAME.NAMESPACE"),
        ("/dashboard/api/service?service=web.", "NAME.NAMESPACE"),
        ("/dashboard/api/service?service=web.shop&window=5", "multiple of 10s"),
        (
            "/dashboard/api/service?service=web.shop&page=2",
            "unknown query parameter",
        ),
    ] {
        let a = call(&admin, "GET", uri).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{uri}: {}", a.body);
        assert_eq!(a.content_type, "text/plain; charset=utf-8", "{uri}");
        assert!(a.body.contains(says), "{uri}: {}", a.body);
    }
    for method in ["POST", "PUT", "DELETE", "PATCH"] {
        for uri in ["/dashboard/", "/dashboard/api/graph", "/dashboard"] {
            let a = call(&admin, method, uri).await;
            assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {uri}");
            assert_eq!(a.headers.get("allow").unwrap(), "GET", "{method} {uri}");
            assert!(a.body.contains("GET"), "{method} {uri}: {}", a.body);
        }
    }
}
