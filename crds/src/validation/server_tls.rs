//! Gateway server `tls`: modes and their certificates, revocation lists, protocol
//! versions, cipher suites and the names client certificates must carry, and what a
//! server that terminates no TLS takes (`httpsRedirect`), with Istio's
//! rules (istio/api `ServerTLSSettings`; Istio's `validateTLSOptions`) and a refusal,
//! naming the fix, for what the proxy cannot do.

use std::collections::BTreeSet;

use trellis_contract::TLS12_CIPHER_SUITES;

use super::Findings;
use super::format::not_supported;
use crate::networking::{ServerTlsMode, ServerTlsSettings, TlsProtocol};

/// Whether a server of this protocol terminates (or passes through) TLS: HTTPS and TLS.
pub(super) fn is_tls_proto(p: &str) -> bool {
    p == "HTTPS" || p == "TLS"
}

pub(super) fn server_tls(p: &str, proto: &str, tls: &Option<ServerTlsSettings>, f: &mut Findings) {
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
                (
                    "cipherSuites",
                    tls.cipher_suites.as_ref().is_some_and(|c| !c.is_empty()),
                ),
                (
                    "subjectAltNames",
                    tls.subject_alt_names.as_ref().is_some_and(|s| !s.is_empty()),
                ),
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
    protocol_versions(&tp, tls, f);
    cipher_suites(&tp, tls, f);
    subject_alt_names(&tp, mode, tls, f);
    if tls.https_redirect == Some(true) {
        f.warn(format!("{tp}.httpsRedirect"), "has effect only on HTTP servers");
    }
}

/// Plaintext HTTP protocols: the servers `tls.httpsRedirect` applies to (Istio's).
fn is_plaintext_http_proto(p: &str) -> bool {
    matches!(p, "HTTP" | "HTTP2" | "GRPC" | "GRPC-WEB")
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

/// `minProtocolVersion` and `maxProtocolVersion`: TLS 1.2 and 1.3, as Istio spells them.
fn protocol_versions(tp: &str, tls: &ServerTlsSettings, f: &mut Findings) {
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
}

/// The OpenSSL (BoringSSL) names Istio accepts in `cipherSuites` that rustls does not
/// implement: CBC modes, RSA key exchange, 3DES.
const CIPHER_SUITES_NOT_IMPLEMENTED: &[&str] = &[
    "ECDHE-ECDSA-AES128-SHA",
    "ECDHE-RSA-AES128-SHA",
    "ECDHE-ECDSA-AES256-SHA",
    "ECDHE-RSA-AES256-SHA",
    "AES128-GCM-SHA256",
    "AES256-GCM-SHA384",
    "AES128-SHA",
    "AES256-SHA",
    "DES-CBC3-SHA",
];
/// TLS 1.3's suites: always offered, never chosen by `cipherSuites` (as in Envoy).
const TLS13_SUITES: &[&str] = &[
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
];

/// `cipherSuites`: TLS 1.2 suites by the names Istio and Envoy use, those the proxy
/// implements ([`TLS12_CIPHER_SUITES`]); the rest are refused, naming the ones it can do.
fn cipher_suites(tp: &str, tls: &ServerTlsSettings, f: &mut Findings) {
    let suites = tls.cipher_suites.as_deref().unwrap_or_default();
    let can = TLS12_CIPHER_SUITES.join(", ");
    let mut seen = BTreeSet::new();
    for (i, name) in suites.iter().enumerate() {
        let path = format!("{tp}.cipherSuites[{i}]");
        let name = name.as_str();
        if TLS12_CIPHER_SUITES.contains(&name) {
            if !seen.insert(name) {
                f.warn(
                    path,
                    format!("{name} is listed twice (the repeat is ignored, as Istio does); remove it"),
                );
            }
        } else if CIPHER_SUITES_NOT_IMPLEMENTED.contains(&name) {
            not_supported(
                &path,
                &format!("{name} (CBC, RSA key exchange or 3DES; rustls does not implement it)"),
                &format!("use the suites the gateway can offer: {can}"),
                f,
            );
        } else if TLS13_SUITES.contains(&name) {
            f.error(
                path,
                format!("{name} is a TLS 1.3 suite: TLS 1.3's suites are always offered and cipherSuites chooses among TLS 1.2's (as in Envoy); remove it"),
            );
        } else if name == "ALL"
            || name.starts_with(|c: char| !c.is_ascii_alphanumeric())
            || name.contains(['[', '|', ':'])
        {
            not_supported(
                &path,
                &format!("{name:?}: cipher list expressions"),
                &format!("list suite names, from: {can}"),
                f,
            );
        } else {
            f.error(
                path,
                format!("{name:?} is not a cipher suite name (Istio uses OpenSSL's names); use one of: {can}"),
            );
        }
    }
    if !suites.is_empty() && tls.min_protocol_version == Some(TlsProtocol::Tlsv1_3) {
        f.warn(
            format!("{tp}.cipherSuites"),
            "has no effect with minProtocolVersion TLSV1_3: only TLS 1.2's suites are chosen; remove it",
        );
    }
}

/// `subjectAltNames`: the names a verified client certificate must carry one of, so only
/// where client certificates are verified; with ISTIO_MUTUAL, SPIFFE IDs.
fn subject_alt_names(tp: &str, mode: ServerTlsMode, tls: &ServerTlsSettings, f: &mut Findings) {
    let sans = tls.subject_alt_names.as_deref().unwrap_or_default();
    if sans.is_empty() {
        return;
    }
    match mode {
        ServerTlsMode::Simple => {
            return f.error(
                format!("{tp}.subjectAltNames"),
                "SIMPLE asks for no client certificate, so no name is checked: use MUTUAL or OPTIONAL_MUTUAL, or remove subjectAltNames",
            );
        }
        ServerTlsMode::Passthrough | ServerTlsMode::AutoPassthrough => return,
        _ => {}
    }
    for (i, san) in sans.iter().enumerate() {
        let path = format!("{tp}.subjectAltNames[{i}]");
        if san.is_empty() || san.chars().any(|c| c.is_whitespace() || c.is_control()) {
            f.error(path, format!("{san:?} is not a name"));
        } else if mode == ServerTlsMode::IstioMutual && trellis_contract::SpiffeId::parse(san).is_err() {
            f.error(
                path,
                format!("{san:?}: ISTIO_MUTUAL clients are mesh workloads, verified by SPIFFE identity; write spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>"),
            );
        }
    }
}
