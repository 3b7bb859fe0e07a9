//! Nothing a Gateway server's `tls` says is dropped silently: every field of
//! `ServerTlsSettings` (walked from its schema, so a field added later is walked too), set on
//! each kind of server, is either one the compiler uses for that kind or draws a finding that
//! names it — an error where Istio refuses it, else a warning saying it is ignored.

use serde_json::{Value, json};
use trellis_api::networking::ServerTlsSettings;
use trellis_api::validation::{Finding, Outcome, Severity, validate};

/// A sample value for each field of `ServerTlsSettings`.
fn sample(field: &str) -> Value {
    match field {
        "httpsRedirect" => json!(true),
        "mode" => json!("SIMPLE"),
        "serverCertificate" => json!("/etc/certs/tls.crt"),
        "privateKey" => json!("/etc/certs/tls.key"),
        "caCertificates" => json!("/etc/certs/ca.crt"),
        "caCrl" => json!("/etc/certs/crl.pem"),
        "credentialName" => json!("shop-cert"),
        "credentialNames" => json!(["shop-cert", "shop-cert-ec"]),
        "subjectAltNames" => json!(["spiffe://cluster.local/ns/shop/sa/web"]),
        "verifyCertificateSpki" => json!(["bm90IGEgcmVhbCBoYXNo"]),
        "verifyCertificateHash" => json!(["AB:CD:EF"]),
        "minProtocolVersion" => json!("TLSV1_2"),
        "maxProtocolVersion" => json!("TLSV1_3"),
        "cipherSuites" => json!(["ECDHE-RSA-AES128-GCM-SHA256"]),
        "caCertCredentialName" => json!("shop-ca"),
        "tlsCertificates" => json!([{"serverCertificate": "/etc/certs/rsa.crt", "privateKey": "/etc/certs/rsa.key"}]),
        "insecureSkipVerify" => json!(true),
        other => panic!(
            "ServerTlsSettings has a field {other:?} this test has no sample for: add one, and say which servers use it"
        ),
    }
}

/// The fields of `ServerTlsSettings`, from its schema.
fn fields() -> Vec<String> {
    let schema = serde_json::to_value(schemars::schema_for!(ServerTlsSettings)).unwrap();
    let props = schema["properties"]
        .as_object()
        .expect("ServerTlsSettings has properties");
    assert!(props.len() >= 17, "{props:#?}");
    props.keys().cloned().collect()
}

/// A kind of server: its protocol, the `tls` it starts from and the fields the compiler uses
/// for it (`mode` and the start's own fields are not walked).
struct ServerKind {
    name: &'static str,
    protocol: &'static str,
    tls: Value,
    used: &'static [&'static str],
}

fn kinds() -> Vec<ServerKind> {
    vec![
        ServerKind {
            name: "HTTP redirecting to HTTPS",
            protocol: "HTTP",
            tls: json!({"httpsRedirect": true}),
            used: &[],
        },
        ServerKind {
            name: "HTTP2 redirecting to HTTPS",
            protocol: "HTTP2",
            tls: json!({"httpsRedirect": true}),
            used: &[],
        },
        ServerKind {
            name: "TCP",
            protocol: "TCP",
            tls: json!({}),
            used: &[],
        },
        ServerKind {
            name: "TLS passed through",
            protocol: "TLS",
            tls: json!({"mode": "PASSTHROUGH"}),
            used: &[],
        },
        ServerKind {
            name: "HTTPS terminated (SIMPLE)",
            protocol: "HTTPS",
            tls: json!({"mode": "SIMPLE", "credentialName": "shop-cert"}),
            used: &["minProtocolVersion", "maxProtocolVersion", "cipherSuites"],
        },
        ServerKind {
            name: "HTTPS terminated (MUTUAL)",
            protocol: "HTTPS",
            tls: json!({"mode": "MUTUAL", "credentialName": "shop-cert"}),
            used: &[
                "caCertificates",
                "subjectAltNames",
                "minProtocolVersion",
                "maxProtocolVersion",
                "cipherSuites",
            ],
        },
    ]
}

fn gateway(protocol: &str, tls: &Value) -> Value {
    let mut server =
        json!({"port": {"number": 8443, "name": "edge", "protocol": protocol}, "hosts": ["shop/shop.example.com"]});
    if tls.as_object().is_some_and(|o| !o.is_empty()) {
        server["tls"] = tls.clone();
    }
    json!({
        "apiVersion": "networking.trellis.dev/v1alpha1", "kind": "Gateway",
        "metadata": {"name": "edge", "namespace": "shop"},
        "spec": {"selector": {"app": "edge"}, "servers": [server]}
    })
}

fn findings_of(obj: &Value) -> Vec<Finding> {
    match validate(obj) {
        Outcome::Validated { findings, .. } => findings,
        Outcome::Skipped(why) => panic!("skipped: {why}"),
    }
}

#[test]
fn every_server_kind_starts_valid() {
    for k in kinds() {
        let found = findings_of(&gateway(k.protocol, &k.tls));
        assert!(found.is_empty(), "{}: {found:#?}", k.name);
    }
}

#[test]
fn every_tls_field_a_server_does_not_use_draws_a_finding_naming_it() {
    let mut silent = Vec::new();
    for k in kinds() {
        for field in fields() {
            if field == "mode" && k.protocol != "HTTP" && k.protocol != "HTTP2" && k.protocol != "TCP" {
                continue;
            }
            if k.tls.get(&field).is_some() || k.used.contains(&field.as_str()) {
                continue;
            }
            let mut tls = k.tls.clone();
            tls[&field] = sample(&field);
            let found = findings_of(&gateway(k.protocol, &tls));
            let at = "spec.servers[0].tls";
            let named = found.iter().any(|f| {
                matches!(f.severity, Severity::Error | Severity::Warning)
                    && (f.path == format!("{at}.{field}") || (f.path == at && f.message.contains(&field)))
            });
            // A TCP server takes no tls at all: the one error at `tls` names them all.
            let tcp_refused = k.protocol == "TCP"
                && found
                    .iter()
                    .any(|f| f.severity == Severity::Error && f.path == at && f.message.contains("cannot have tls"));
            if !named && !tcp_refused {
                silent.push(format!("{} with {field}: {found:#?}", k.name));
            }
        }
    }
    assert!(
        silent.is_empty(),
        "fields dropped without a word:\n{}",
        silent.join("\n")
    );
}

#[test]
fn fields_istio_refuses_on_plaintext_http_servers_are_errors_and_the_rest_warnings() {
    let cases = [
        ("mode", json!("SIMPLE"), Severity::Error, "terminates TLS"),
        (
            "serverCertificate",
            json!("/c"),
            Severity::Error,
            "Istio refuses serverCertificate",
        ),
        ("privateKey", json!("/k"), Severity::Error, "Istio refuses privateKey"),
        (
            "caCertificates",
            json!("/ca"),
            Severity::Error,
            "Istio refuses caCertificates",
        ),
        ("mode", json!("PASSTHROUGH"), Severity::Warning, "has no effect"),
        ("credentialName", json!("shop-cert"), Severity::Warning, "is ignored"),
        (
            "cipherSuites",
            json!(["ECDHE-RSA-AES128-GCM-SHA256"]),
            Severity::Warning,
            "is ignored",
        ),
        ("minProtocolVersion", json!("TLSV1_2"), Severity::Warning, "is ignored"),
    ];
    for (field, v, severity, frag) in cases {
        let mut tls = json!({"httpsRedirect": true});
        tls[field] = v;
        let found = findings_of(&gateway("HTTP", &tls));
        let path = format!("spec.servers[0].tls.{field}");
        assert!(
            found
                .iter()
                .any(|f| f.severity == severity && f.path == path && f.message.contains(frag)),
            "{field}: {found:#?}"
        );
        if severity == Severity::Warning {
            assert!(
                found.iter().all(|f| f.severity == Severity::Warning),
                "{field}: {found:#?}"
            );
        }
    }
}

#[test]
fn a_tcp_server_with_only_https_redirect_is_refused_as_istio_refuses_it() {
    let found = findings_of(&gateway("TCP", &json!({"httpsRedirect": true})));
    assert!(
        found.iter().any(|f| f.severity == Severity::Error
            && f.path == "spec.servers[0].tls"
            && f.message.contains("TCP servers cannot have tls settings")
            && f.message.contains("use protocol TLS")),
        "{found:#?}"
    );
}

#[test]
fn a_bind_address_is_refused_unless_it_is_every_address() {
    for (bind, frag) in [
        ("10.0.0.7", "not supported by Trellis yet"),
        ("unix:///var/run/gw.sock", "not supported by Trellis yet"),
        ("gateway.local", "not an IP address"),
    ] {
        let mut gw = gateway("HTTP", &json!({}));
        gw["spec"]["servers"][0]["bind"] = json!(bind);
        let found = findings_of(&gw);
        assert!(
            found
                .iter()
                .any(|f| f.severity == Severity::Error && f.path == "spec.servers[0].bind" && f.message.contains(frag)),
            "{bind}: {found:#?}"
        );
    }
    let mut gw = gateway("HTTP", &json!({}));
    gw["spec"]["servers"][0]["bind"] = json!("0.0.0.0");
    assert!(findings_of(&gw).is_empty());
}
