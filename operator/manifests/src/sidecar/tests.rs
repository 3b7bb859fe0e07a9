//! The injector's tests: a plain app's pod template meshed, and what each setting, annotation and
//! refusal does to it.

use super::proxy::{IDENTITY_VOLUME, ROOT_VOLUME, TOKEN_VOLUME};
use super::*;
use k8s_openapi::api::core::v1::{PodSecurityContext, Probe, TCPSocketAction};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{Value, json};

fn app_template() -> PodTemplateSpec {
    serde_json::from_value(json!({
        "metadata": {"labels": {"app": "web"}},
        "spec": {
            "serviceAccountName": "web",
            "containers": [{
                "name": "web",
                "image": "ghcr.io/trellis-mesh/trellis-testapp:0.1.0",
                "ports": [{"name": "http", "containerPort": 8080}],
                "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 2},
                "livenessProbe": {"tcpSocket": {"port": 8080}, "timeoutSeconds": 3},
            }],
        }
    }))
    .unwrap()
}

#[test]
fn the_template_hash_follows_what_is_injected_not_the_image() {
    let settings = Settings::new(&Options::default());
    let hash = template_hash(&settings);
    assert_eq!(hash.len(), 16);
    assert_eq!(hash, template_hash(&settings), "deterministic");
    let other_image = Settings {
        proxy_image: "registry.example/proxy:2".into(),
        ..settings.clone()
    };
    assert_eq!(
        template_hash(&other_image),
        hash,
        "the image is the rollout's own business"
    );
    let other_domain = Settings {
        trust_domain: "new.example".into(),
        ..settings.clone()
    };
    assert_eq!(
        template_hash(&other_domain),
        hash,
        "a trust domain change restarts no workload: proxies follow their pushed identity"
    );
    let other_template = Settings {
        log_level: "debug".into(),
        ..settings.clone()
    };
    assert_ne!(template_hash(&other_template), hash);
    // Remembered per thread for the last settings: a change of settings is a new hash, and
    // back again the first one.
    let canonical = Settings {
        proxy_image: String::new(),
        trust_domain: String::new(),
        ..other_template.clone()
    };
    assert_eq!(template_hash(&other_template), hash_of(&canonical));
    assert_eq!(template_hash(&settings), hash);
    let mut t = app_template();
    inject(&mut t, &settings).unwrap();
    let annotations = t.metadata.unwrap().annotations.unwrap();
    assert_eq!(annotations[TEMPLATE_ANNOTATION], hash, "recorded on every injected pod");
}

fn settings() -> Settings {
    Settings::new(&Options::default())
}

#[test]
fn injects_init_then_native_sidecar_then_the_apps_own_init_containers() {
    let mut t = app_template();
    t.spec.as_mut().unwrap().init_containers = Some(vec![Container {
        name: "migrate".into(),
        ..Container::default()
    }]);
    inject(&mut t, &settings()).unwrap();
    let spec = t.spec.as_ref().unwrap();
    let names: Vec<_> = spec.init_containers.iter().flatten().map(|c| c.name.as_str()).collect();
    assert_eq!(names, [INIT_CONTAINER, PROXY_CONTAINER, "migrate"]);
    let proxy = &spec.init_containers.as_ref().unwrap()[1];
    assert_eq!(proxy.restart_policy.as_deref(), Some("Always"));
    assert_eq!(proxy.security_context.as_ref().unwrap().run_as_user, Some(PROXY_UID));
    assert!(proxy.startup_probe.is_some());
    let env: BTreeMap<_, _> = proxy
        .env
        .iter()
        .flatten()
        .map(|e| (e.name.as_str(), e.value.clone()))
        .collect();
    assert_eq!(
        env["TRELLIS_PUSH_ENDPOINT"].as_deref(),
        Some("https://trellis-operator.trellis-system.svc:15012")
    );
    let init = &spec.init_containers.as_ref().unwrap()[0];
    assert_eq!(init.args.as_ref().unwrap()[..3], ["init", "--proxy-uid", "1337"]);
    let caps = init.security_context.as_ref().unwrap().capabilities.as_ref().unwrap();
    assert!(caps.add.as_ref().unwrap().contains(&"NET_ADMIN".to_string()));
    let volumes: Vec<_> = spec.volumes.iter().flatten().map(|v| v.name.as_str()).collect();
    assert_eq!(volumes, [IDENTITY_VOLUME, TOKEN_VOLUME, ROOT_VOLUME]);
    let token = spec.volumes.as_ref().unwrap()[1]
        .projected
        .as_ref()
        .unwrap()
        .sources
        .as_ref()
        .unwrap()[0]
        .service_account_token
        .clone()
        .unwrap();
    assert_eq!(token.audience.as_deref(), Some(TOKEN_AUDIENCE));
    assert!(
        t.metadata
            .as_ref()
            .unwrap()
            .annotations
            .as_ref()
            .unwrap()
            .contains_key(INJECTED_ANNOTATION)
    );
}

#[test]
fn rewrites_app_probes_behind_the_health_port_and_keeps_the_originals() {
    let mut t = app_template();
    inject(&mut t, &settings()).unwrap();
    let spec = t.spec.as_ref().unwrap();
    let app = &spec.containers[0];
    let ready = app.readiness_probe.as_ref().unwrap().http_get.as_ref().unwrap();
    assert_eq!(ready.path.as_deref(), Some("/app-health/web/readyz"));
    assert_eq!(ready.port, IntOrString::Int(15021));
    let live = app.liveness_probe.as_ref().unwrap();
    assert!(live.tcp_socket.is_none());
    assert_eq!(
        live.http_get.as_ref().unwrap().path.as_deref(),
        Some("/app-health/web/livez")
    );
    let proxy = &spec.init_containers.as_ref().unwrap()[1];
    let probes = proxy.env.iter().flatten().find(|e| e.name == APP_PROBES_ENV).unwrap();
    let probes: Value = serde_json::from_str(probes.value.as_deref().unwrap()).unwrap();
    assert_eq!(probes["/app-health/web/readyz"]["httpGet"]["port"], 8080);
    assert_eq!(probes["/app-health/web/readyz"]["httpGet"]["path"], "/healthz");
    assert_eq!(probes["/app-health/web/livez"]["tcpSocket"]["port"], 8080);
    assert_eq!(probes["/app-health/web/livez"]["timeoutSeconds"], 3);
}

#[test]
fn is_idempotent() {
    let mut once = app_template();
    inject(&mut once, &settings()).unwrap();
    let mut twice = once.clone();
    inject(&mut twice, &settings()).unwrap();
    assert_eq!(once, twice);
}

#[test]
fn annotations_add_exclusions_and_bad_ones_are_explained() {
    let mut t = app_template();
    t.metadata.as_mut().unwrap().annotations = Some(BTreeMap::from([
        (
            "traffic.trellis.dev/excludeInboundPorts".to_string(),
            "9090, 9091".to_string(),
        ),
        (
            "traffic.trellis.dev/excludeOutboundIPRanges".to_string(),
            "10.0.0.0/8".to_string(),
        ),
    ]));
    inject(&mut t, &settings()).unwrap();
    let args = t.spec.as_ref().unwrap().init_containers.as_ref().unwrap()[0]
        .args
        .clone()
        .unwrap();
    assert!(args.windows(2).any(|w| w == ["--exclude-inbound-ports", "9090,9091"]));
    assert!(args.windows(2).any(|w| w == ["--exclude-outbound-cidrs", "10.0.0.0/8"]));

    // DNS is captured unless a pod opts out.
    assert!(!args.iter().any(|a| a.starts_with("--capture-dns")), "{args:?}");

    let mut bad = app_template();
    bad.metadata.as_mut().unwrap().annotations = Some(BTreeMap::from([(
        "traffic.trellis.dev/excludeOutboundIPRanges".to_string(),
        "10.0.0.0/33".to_string(),
    )]));
    let before = bad.clone();
    let err = inject(&mut bad, &settings()).unwrap_err().to_string();
    assert!(
        err.contains("excludeOutboundIPRanges") && err.contains("CIDRs"),
        "{err}"
    );
    assert_eq!(bad, before, "a failed injection changes nothing");
}

#[test]
fn pod_annotations_set_image_resources_log_level_concurrency_capture_and_are_recorded() {
    let mut t = app_template();
    t.metadata.as_mut().unwrap().annotations = Some(BTreeMap::from(
        [
            (overrides::PROXY_IMAGE, "registry.local/trellis-proxy:0.2.0-rc.1"),
            (overrides::PROXY_CPU, "200m"),
            (overrides::PROXY_MEMORY_LIMIT, "256Mi"),
            (overrides::LOG_LEVEL, "debug"),
            (overrides::CONCURRENCY, "2"),
            (overrides::CAPTURE_DNS, "false"),
            (overrides::INCLUDE_INBOUND_PORTS, "8080"),
            (overrides::INCLUDE_OUTBOUND_CIDRS, "10.0.0.0/8"),
            (overrides::INCLUDE_OUTBOUND_PORTS, "443"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string())),
    ));
    inject(&mut t, &settings()).unwrap();
    let spec = t.spec.as_ref().unwrap();
    let (init, proxy) = (
        &spec.init_containers.as_ref().unwrap()[0],
        &spec.init_containers.as_ref().unwrap()[1],
    );
    for c in [init, proxy] {
        assert_eq!(c.image.as_deref(), Some("registry.local/trellis-proxy:0.2.0-rc.1"));
    }
    let args = init.args.clone().unwrap();
    for want in [
        "--capture-dns=false",
        "--include-inbound-ports=8080",
        "--include-outbound-cidrs=10.0.0.0/8",
    ] {
        assert!(args.contains(&want.to_string()), "{args:?}");
    }
    assert!(args.windows(2).any(|w| w == ["--include-outbound-ports", "443"]));
    let resources = proxy.resources.as_ref().unwrap();
    assert_eq!(resources.requests.as_ref().unwrap()["cpu"], Quantity("200m".into()));
    assert_eq!(resources.limits.as_ref().unwrap()["memory"], Quantity("256Mi".into()));
    let env: BTreeMap<_, _> = proxy
        .env
        .iter()
        .flatten()
        .map(|e| (e.name.as_str(), e.value.clone().unwrap_or_default()))
        .collect();
    assert_eq!(
        (env["TRELLIS_LOG"].as_str(), env["TRELLIS_WORKERS"].as_str()),
        ("debug", "2")
    );
    let meta = t.metadata.as_ref().unwrap();
    assert_eq!(
        meta.annotations.as_ref().unwrap()[PROXY_IMAGE_ANNOTATION],
        "registry.local/trellis-proxy:0.2.0-rc.1"
    );
    assert_eq!(meta.labels.as_ref().unwrap()[PROXY_VERSION_LABEL], "0.2.0-rc.1");
}

#[test]
fn version_labels_are_tags_or_digests_within_label_rules() {
    assert_eq!(version_label("ghcr.io/trellis-mesh/trellis-proxy:0.1.0"), "0.1.0");
    assert_eq!(version_label("localhost:5000/trellis-proxy"), "latest");
    assert_eq!(
        version_label("trellis-proxy@sha256:abcdef0123456789abcdef"),
        "sha256-abcdef012345"
    );
    assert_eq!(version_label("p:-weird+tag-"), "weird-tag");
    assert_eq!(version_label(&format!("p:{}", "a".repeat(80))).len(), 63);
}

#[test]
fn a_proxy_container_from_elsewhere_is_refused_and_an_injected_one_is_left_alone() {
    let mut t = app_template();
    t.spec.as_mut().unwrap().containers.push(Container {
        name: PROXY_CONTAINER.into(),
        ..Container::default()
    });
    let err = inject(&mut t, &settings()).unwrap_err();
    assert_eq!(err, InjectError::ReservedName(PROXY_CONTAINER.into()));
    assert!(err.to_string().contains("did not inject"), "{err}");

    // A copy of an injected pod (annotation and sidecar) is already meshed.
    let mut injected = app_template();
    inject(&mut injected, &settings()).unwrap();
    let mut other = Settings::new(&Options::default());
    other.proxy_image = "elsewhere/trellis-proxy:9".into();
    let before = injected.clone();
    inject(&mut injected, &other).unwrap();
    assert_eq!(injected, before);
}

#[test]
fn refuses_pods_the_mesh_cannot_capture() {
    let mut t = app_template();
    t.spec.as_mut().unwrap().host_network = Some(true);
    assert_eq!(inject(&mut t, &settings()), Err(InjectError::HostNetwork));

    let mut t = app_template();
    t.spec.as_mut().unwrap().security_context = Some(PodSecurityContext {
        run_as_user: Some(PROXY_UID),
        ..PodSecurityContext::default()
    });
    assert_eq!(inject(&mut t, &settings()), Err(InjectError::ProxyUid("web".into())));

    let mut t = app_template();
    t.spec.as_mut().unwrap().containers[0].readiness_probe = Some(Probe {
        tcp_socket: Some(TCPSocketAction {
            port: IntOrString::String("grpc".into()),
            ..TCPSocketAction::default()
        }),
        ..Probe::default()
    });
    let err = inject(&mut t, &settings()).unwrap_err().to_string();
    assert!(err.contains("`grpc`") && err.contains("container `web`"), "{err}");
}

#[test]
fn gateway_template_runs_the_proxy_in_the_gateway_role() {
    let t = gateway_pod_template("trellis-ingressgateway", &settings(), &[8080]);
    let spec = t.spec.unwrap();
    let c = &spec.containers[0];
    assert!(
        c.env
            .iter()
            .flatten()
            .any(|e| e.name == "TRELLIS_ROLE" && e.value.as_deref() == Some("gateway"))
    );
    assert!(c.ports.iter().flatten().any(|p| p.container_port == 8080));
    assert_eq!(spec.service_account_name.as_deref(), Some("trellis-ingressgateway"));
    let meta = t.metadata.unwrap();
    let labels = meta.labels.unwrap();
    assert_eq!(labels["app"], "trellis-ingressgateway");
    // The injector leaves gateways alone, even in a meshed namespace.
    assert_eq!(labels[INJECT_LABEL], INJECT_DISABLED);
    // Prometheus scrapes gateways as it scrapes sidecars.
    let annotations = meta.annotations.unwrap();
    assert_eq!(
        (
            annotations[scrape::SCRAPE].as_str(),
            annotations[scrape::PORT].as_str(),
            annotations[scrape::PATH].as_str()
        ),
        ("true", "15020", "/stats/prometheus")
    );
}

#[test]
fn injected_pods_are_scraped_through_the_proxy_which_merges_the_apps_metrics() {
    let proxy_env = |t: &PodTemplateSpec| -> BTreeMap<String, String> {
        t.spec.as_ref().unwrap().init_containers.as_ref().unwrap()[1]
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
            .collect()
    };
    // No metrics of its own: the proxy is scraped, nothing to merge.
    let mut plain = app_template();
    inject(&mut plain, &settings()).unwrap();
    let annotations = plain.metadata.as_ref().unwrap().annotations.clone().unwrap();
    assert_eq!(annotations[scrape::PORT], "15020");
    assert_eq!(annotations[scrape::PATH], "/stats/prometheus");
    assert!(!proxy_env(&plain).contains_key(scrape::APP_METRICS_ENV));
    // The app's own request moves into the proxy's environment.
    let mut own = app_template();
    own.metadata.as_mut().unwrap().annotations = Some(BTreeMap::from([
        (scrape::SCRAPE.to_string(), "true".to_string()),
        (scrape::PORT.to_string(), "9090".to_string()),
    ]));
    inject(&mut own, &settings()).unwrap();
    let app: Value = serde_json::from_str(&proxy_env(&own)[scrape::APP_METRICS_ENV]).unwrap();
    assert_eq!(app, json!({"scrape": "true", "port": "9090", "path": ""}));
    assert_eq!(
        own.metadata.as_ref().unwrap().annotations.as_ref().unwrap()[scrape::PORT],
        "15020"
    );
    // Opted out: the app's annotations stay as written.
    let mut out = app_template();
    out.metadata.as_mut().unwrap().annotations = Some(BTreeMap::from([
        (scrape::PORT.to_string(), "9090".to_string()),
        (overrides::MERGE_METRICS.to_string(), "false".to_string()),
    ]));
    inject(&mut out, &settings()).unwrap();
    assert_eq!(
        out.metadata.as_ref().unwrap().annotations.as_ref().unwrap()[scrape::PORT],
        "9090"
    );
    assert!(!proxy_env(&out).contains_key(scrape::APP_METRICS_ENV));
}
