//! Semantic checks of Gateway: servers, their ports, hosts and TLS settings.

use std::collections::{BTreeMap, BTreeSet};

use super::Findings;
use super::format::{dns_label, host, labels, not_supported};
use crate::networking::*;

const GATEWAY_PROTOCOLS: &[&str] = &["HTTP", "HTTPS", "GRPC", "GRPC-WEB", "HTTP2", "MONGO", "TCP", "TLS"];
/// TLS 1.2 cipher suites the proxy (rustls) implements, by their OpenSSL names.
const CIPHER_SUITES: &[&str] = &[
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
];

pub(super) fn gateway(spec: &GatewaySpec, f: &mut Findings) {
    labels("spec.selector", &spec.selector, f);
    if spec.selector.as_ref().is_none_or(BTreeMap::is_empty) {
        f.warn(
            "spec.selector",
            "no selector: the Gateway applies to every gateway proxy in its scope",
        );
    }
    if spec.servers.is_empty() {
        f.error("spec.servers", "at least one server is required");
    }
    let mut port_protocols: BTreeMap<u32, String> = BTreeMap::new();
    let mut names = BTreeSet::new();
    for (i, s) in spec.servers.iter().enumerate() {
        let p = format!("spec.servers[{i}]");
        let proto = s.port.protocol.to_ascii_uppercase();
        if !GATEWAY_PROTOCOLS.contains(&proto.as_str()) {
            f.error(
                format!("{p}.port.protocol"),
                format!(
                    "{:?} is not a protocol; use one of {}",
                    s.port.protocol,
                    GATEWAY_PROTOCOLS.join(", ")
                ),
            );
        }
        match port_protocols.get(&s.port.number) {
            Some(other) if *other != proto && !(is_tls_proto(other) && is_tls_proto(&proto)) => f.error(
                format!("{p}.port.number"),
                format!(
                    "port {} is already used with protocol {other}; one port carries one protocol",
                    s.port.number
                ),
            ),
            _ => {
                port_protocols.insert(s.port.number, proto.clone());
            }
        }
        for (field, name) in [("name", &s.name), ("port.name", &s.port.name)] {
            if let Some(n) = name
                && field == "name"
                && !names.insert(n.clone())
            {
                f.error(format!("{p}.{field}"), format!("duplicate server name {n:?}"));
            }
        }
        if let Some(b) = &s.bind {
            server_bind(&format!("{p}.bind"), b, f);
        }
        if s.hosts.is_empty() {
            f.error(
                format!("{p}.hosts"),
                "at least one host is required, e.g. \"*/shop.example.com\"",
            );
        }
        for (j, h) in s.hosts.iter().enumerate() {
            gateway_host(&format!("{p}.hosts[{j}]"), h, f);
        }
        server_tls(&p, &proto, &s.tls, f);
    }
}

fn is_tls_proto(p: &str) -> bool {
    p == "HTTPS" || p == "TLS"
}

/// Plaintext HTTP protocols: the servers `tls.httpsRedirect` applies to (Istio's).
fn is_plaintext_http_proto(p: &str) -> bool {
    matches!(p, "HTTP" | "HTTP2" | "GRPC" | "GRPC-WEB")
}

/// A server's `bind`: the gateway's listeners take every address of the pod (`0.0.0.0`);
/// listening on one address only is not done yet, and saying so beats a listener that
/// would not listen where the Gateway says.
fn server_bind(p: &str, b: &str, f: &mut Findings) {
    if b.starts_with("unix://") {
        return not_supported(
            p,
            &format!("{b:?} (a Unix domain socket)"),
            "remove it; gateway servers listen on TCP ports of every address of the gateway pod",
            f,
        );
    }
    match b.parse::<std::net::IpAddr>() {
        Err(_) => f.error(p, format!("{b:?} is not an IP address")),
        Ok(ip) if ip == std::net::IpAddr::from([0, 0, 0, 0]) => {}
        Ok(_) => not_supported(
            p,
            &format!("{b:?} (listening on one address only)"),
            "remove it, or set 0.0.0.0; gateway servers listen on every address of the gateway pod",
            f,
        ),
    }
}

/// `tls` on a server that terminates no TLS. Plaintext HTTP servers take `httpsRedirect`;
/// Istio refuses the certificate files and a terminating mode on them, and accepts and
/// ignores the rest, which Trellis names in a warning. Other protocols take no `tls` at
/// all (Istio refuses it too).
fn plaintext_server_tls(tp: &str, proto: &str, tls: &ServerTlsSettings, f: &mut Findings) {
    if !is_plaintext_http_proto(proto) {
        return f.error(
            tp,
            format!("{proto} servers cannot have tls settings (Istio refuses them too); remove tls, or use protocol TLS to terminate TLS"),
        );
    }
    let fix = "remove it, or set it on an HTTPS server, which terminates TLS";
    match tls.mode {
        None => {}
        Some(m @ (ServerTlsMode::Passthrough | ServerTlsMode::AutoPassthrough)) => f.warn(
            format!("{tp}.mode"),
            format!("{m:?} has no effect on a {proto} server, which neither terminates nor passes TLS through (Istio ignores it too); remove it"),
        ),
        Some(m) => f.error(
            format!("{tp}.mode"),
            format!("{m:?} terminates TLS, which {proto} servers do not (they take only tls.httpsRedirect); {fix}, or use protocol HTTPS"),
        ),
    }
    for (field, set) in [
        ("serverCertificate", tls.server_certificate.is_some()),
        ("privateKey", tls.private_key.is_some()),
        ("caCertificates", tls.ca_certificates.is_some()),
    ] {
        if set {
            f.error(
                format!("{tp}.{field}"),
                format!("{proto} servers terminate no TLS and take only tls.httpsRedirect (Istio refuses {field} here too); {fix}"),
            );
        }
    }
    for (field, set) in [
        ("caCrl", tls.ca_crl.is_some()),
        ("credentialName", tls.credential_name.is_some()),
        ("subjectAltNames", tls.subject_alt_names.is_some()),
        ("minProtocolVersion", tls.min_protocol_version.is_some()),
        ("maxProtocolVersion", tls.max_protocol_version.is_some()),
        ("cipherSuites", tls.cipher_suites.is_some()),
    ] {
        if set {
            f.warn(
                format!("{tp}.{field}"),
                format!("is ignored: {proto} servers terminate no TLS and take only tls.httpsRedirect (Istio ignores it too); {fix}"),
            );
        }
    }
}

fn gateway_host(p: &str, h: &str, f: &mut Findings) {
    let (ns, name) = match h.split_once('/') {
        Some((ns, name)) => (Some(ns), name),
        None => (None, h),
    };
    if let Some(ns) = ns
        && !matches!(ns, "*" | "." | "~")
        && dns_label(ns).is_err()
    {
        return f.error(
            p,
            format!("{h:?}: the namespace part must be *, ., ~ or a namespace name, as in */shop.example.com"),
        );
    }
    host(p, name, true, f);
}

fn server_tls(p: &str, proto: &str, tls: &Option<ServerTlsSettings>, f: &mut Findings) {
    let tp = format!("{p}.tls");
    let Some(tls) = tls else {
        if is_tls_proto(proto) {
            f.error(
                tp,
                format!("{proto} servers need tls settings, e.g. tls: {{mode: SIMPLE, credentialName: shop-cert}}"),
            );
        }
        return;
    };
    if !is_tls_proto(proto) {
        return plaintext_server_tls(&tp, proto, tls, f);
    }
    let mode = tls.effective_mode();
    if tls.mode.is_none() && mode == ServerTlsMode::Simple {
        f.warn(
            format!("{tp}.mode"),
            "is not set: Istio's default is PASSTHROUGH, which ignores the certificate; Trellis terminates TLS with it (SIMPLE): set mode: SIMPLE, or PASSTHROUGH",
        );
    }
    let pair = tls.server_certificate.is_some() || tls.private_key.is_some();
    let has_cert = tls.credential_name.is_some() || (tls.server_certificate.is_some() && tls.private_key.is_some());
    if mode != ServerTlsMode::IstioMutual && tls.credential_name.is_some() && pair {
        f.error(
            &tp,
            "set credentialName or serverCertificate/privateKey, not both (Istio denies both)",
        );
    }
    match mode {
        ServerTlsMode::Simple | ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual => {
            if !has_cert {
                f.error(&tp, "needs credentialName, or serverCertificate and privateKey");
            }
            if tls.server_certificate.is_some() != tls.private_key.is_some() {
                f.error(&tp, "serverCertificate and privateKey go together");
            }
            if mode != ServerTlsMode::Simple && tls.credential_name.is_none() && tls.ca_certificates.is_none() {
                f.error(
                    format!("{tp}.caCertificates"),
                    "client certificates need a CA: set caCertificates, or credentialName with ca.crt",
                );
            }
            if mode == ServerTlsMode::Simple && tls.ca_certificates.is_some() {
                f.warn(
                    format!("{tp}.caCertificates"),
                    "is ignored: SIMPLE asks no client certificate, so there is nothing to verify (Istio ignores it too); remove it, or set mode MUTUAL (or OPTIONAL_MUTUAL) to verify clients",
                );
            }
        }
        ServerTlsMode::Passthrough | ServerTlsMode::AutoPassthrough => {
            for (field, set) in [
                ("serverCertificate", tls.server_certificate.is_some()),
                ("privateKey", tls.private_key.is_some()),
                ("caCertificates", tls.ca_certificates.is_some()),
                ("caCrl", tls.ca_crl.is_some()),
                ("credentialName", tls.credential_name.is_some()),
                ("minProtocolVersion", tls.min_protocol_version.is_some()),
                ("maxProtocolVersion", tls.max_protocol_version.is_some()),
            ] {
                if set {
                    f.warn(
                        format!("{tp}.{field}"),
                        "is ignored when TLS is passed through: the gateway takes no part in the handshake (Istio ignores it too); remove it, or use mode SIMPLE to terminate TLS",
                    );
                }
            }
        }
        ServerTlsMode::IstioMutual => {
            for (field, set, why) in [
                (
                    "serverCertificate",
                    tls.server_certificate.is_some(),
                    "the gateway's workload certificate is served",
                ),
                (
                    "privateKey",
                    tls.private_key.is_some(),
                    "the gateway's workload certificate is served",
                ),
                (
                    "credentialName",
                    tls.credential_name.is_some(),
                    "the gateway's workload certificate is served",
                ),
                (
                    "caCertificates",
                    tls.ca_certificates.is_some(),
                    "clients are verified against the mesh's roots",
                ),
            ] {
                if set {
                    f.error(
                        format!("{tp}.{field}"),
                        format!("ISTIO_MUTUAL cannot have {field}: {why}; remove it, or use SIMPLE or MUTUAL with your own certificate"),
                    );
                }
            }
        }
    }
    if tls.ca_crl.is_some() {
        match mode {
            ServerTlsMode::Simple => f.error(
                format!("{tp}.caCrl"),
                "CRL is not supported with SIMPLE TLS (no client certificate is verified): remove caCrl, or use MUTUAL or OPTIONAL_MUTUAL",
            ),
            ServerTlsMode::IstioMutual => f.error(
                format!("{tp}.caCrl"),
                "ISTIO_MUTUAL verifies clients against the mesh's roots, which revoke nothing by CRL: remove caCrl",
            ),
            ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual if tls.credential_name.is_some() => f.error(
                format!("{tp}.caCrl"),
                "CRL is not supported with credentialName: put the CRL in the Secret as ca.crl, and remove caCrl",
            ),
            _ => {}
        }
    }
    for (field, v) in [
        ("minProtocolVersion", tls.min_protocol_version),
        ("maxProtocolVersion", tls.max_protocol_version),
    ] {
        if matches!(v, Some(TlsProtocol::Tlsv1_0 | TlsProtocol::Tlsv1_1)) {
            f.error(
                format!("{tp}.{field}"),
                "TLS 1.0 and 1.1 are insecure and not offered by Trellis; use TLSV1_2 or TLSV1_3",
            );
        }
    }
    if let (Some(min), Some(max)) = (tls.min_protocol_version, tls.max_protocol_version)
        && min != TlsProtocol::TlsAuto
        && max != TlsProtocol::TlsAuto
        && min > max
    {
        f.error(format!("{tp}.minProtocolVersion"), "is above maxProtocolVersion");
    }
    // The gateway's TLS server offers TLS 1.2 and 1.3 with rustls' safe defaults. A floor of
    // TLS 1.2 or a ceiling of TLS 1.3 is what it does; anything narrower is not done yet, and
    // saying so is better than a setting the proxy would not apply.
    if tls.min_protocol_version == Some(TlsProtocol::Tlsv1_3) {
        not_supported(
            &format!("{tp}.minProtocolVersion"),
            "TLSV1_3 (a server refusing TLS 1.2)",
            "remove it or set TLSV1_2; the gateway offers TLS 1.2 and 1.3",
            f,
        );
    }
    if tls.max_protocol_version == Some(TlsProtocol::Tlsv1_2) {
        not_supported(
            &format!("{tp}.maxProtocolVersion"),
            "TLSV1_2 (a server refusing TLS 1.3)",
            "remove it or set TLSV1_3; the gateway offers TLS 1.2 and 1.3",
            f,
        );
    }
    if tls.cipher_suites.as_ref().is_some_and(|c| !c.is_empty()) {
        not_supported(
            &format!("{tp}.cipherSuites"),
            "choosing cipher suites",
            &format!(
                "remove it; the gateway offers TLS 1.3's suites and, for TLS 1.2, {}",
                CIPHER_SUITES.join(", ")
            ),
            f,
        );
    }
    if tls.subject_alt_names.as_ref().is_some_and(|s| !s.is_empty()) {
        not_supported(
            &format!("{tp}.subjectAltNames"),
            "checking a client certificate's subject alternative names",
            "remove it; a verified client's SPIFFE ID is its principal, so allow it with an AuthorizationPolicy (source.principals) on the gateway",
            f,
        );
    }
    if tls.https_redirect == Some(true) {
        f.warn(format!("{tp}.httpsRedirect"), "has effect only on HTTP servers");
    }
}
