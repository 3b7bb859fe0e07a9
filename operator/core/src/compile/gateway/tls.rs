//! The TLS a gateway server terminates: its certificate and client verification by mode
//! (SIMPLE, MUTUAL, OPTIONAL_MUTUAL from a Secret or files; ISTIO_MUTUAL with the proxy's
//! workload certificate and the mesh's roots), the names client certificates must carry,
//! protocol versions and TLS 1.2 cipher suites, and servers sharing a port told apart by SNI.

use trellis_api::networking::{Server, ServerTlsMode as ApiTlsMode, ServerTlsSettings, TlsProtocol};
use trellis_contract::{CertificateRef, PemSource, ServerTls, ServerTlsMode, SniTls, TlsVersion};

use super::{PortState, server_hosts};
use crate::compile::{Code, Ctx};

/// Add a terminating server's TLS to its port: the listener's default (the first), and its
/// names' entry for SNI.
pub(super) fn terminate(
    ctx: &mut Ctx<'_>,
    res: &str,
    server: &Server,
    gw_ns: &str,
    listen_port: u16,
    tls: &ServerTls,
    port: &mut PortState,
) {
    if port.listener.tls.is_none() {
        port.listener.tls = Some(tls.clone());
    }
    for (_, host) in server_hosts(server, gw_ns) {
        let name = host.to_ascii_lowercase();
        let served_by = port.sni.iter().find(|e| e.server_names.contains(&name));
        match served_by {
            Some(e) if e.tls == *tls => {}
            Some(_) => ctx.diag(
                Code::ConflictingGateways,
                res,
                format!("port {listen_port}: host {name} is already served with other TLS settings by an earlier server; this server keeps its other hosts"),
            ),
            None => match port.sni.iter_mut().find(|e| e.tls == *tls) {
                Some(e) => e.server_names.push(name),
                None => port.sni.push(SniTls {
                    server_names: vec![name],
                    tls: tls.clone(),
                }),
            },
        }
    }
}

/// The TLS a server terminates, if any. `Err` when it cannot be served (the server is
/// dropped, with a diagnostic). ISTIO_MUTUAL serves the proxy's workload certificate and
/// verifies clients against the mesh's roots: the proxy has both.
pub(super) fn server_tls(ctx: &mut Ctx<'_>, res: &str, server: &Server, proto: &str) -> Result<Option<ServerTls>, ()> {
    let Some(tls) = &server.tls else { return Ok(None) };
    if proto != "HTTPS" && proto != "TLS" {
        return Ok(None);
    }
    // HTTP is negotiated on HTTPS servers only: a TLS server's clients speak their own
    // protocol once TLS is terminated.
    let alpn = match proto {
        "HTTPS" => vec!["h2".into(), "http/1.1".into()],
        _ => Vec::new(),
    };
    let mode = match tls.effective_mode() {
        ApiTlsMode::Simple => ServerTlsMode::Simple,
        ApiTlsMode::Mutual => ServerTlsMode::Mutual,
        ApiTlsMode::OptionalMutual => ServerTlsMode::OptionalMutual,
        ApiTlsMode::IstioMutual => {
            return Ok(Some(ServerTls {
                mode: ServerTlsMode::IstioMutual,
                certificate: None,
                client_ca: None,
                client_crl: None,
                alpn,
                ..handshake(tls, ServerTlsMode::IstioMutual)
            }));
        }
        ApiTlsMode::Passthrough | ApiTlsMode::AutoPassthrough => return Ok(None),
    };
    let credential = tls.credential_name.as_ref().map(|name| {
        let key = crate::registry::ObjectKey::new(ctx.proxy.key.namespace.clone(), name.clone());
        (name, ctx.snapshot.registry.credentials.get(&key), key)
    });
    let certificate = match (credential, &tls.server_certificate, &tls.private_key) {
        (Some((_, Some(c), _)), _, _) => CertificateRef::Inline {
            cert_chain_pem: c.cert_chain_pem.clone(),
            private_key_pem: c.private_key_pem.clone(),
        },
        (Some((name, None, key)), _, _) => {
            ctx.diag(
                Code::ReferencedResourceNotFound,
                res,
                format!("credentialName {name:?}: no TLS Secret {key} (with tls.crt and tls.key) for the gateway pod's namespace; the server is dropped"),
            );
            return Err(());
        }
        (None, Some(cert), Some(key)) => CertificateRef::Files {
            cert_chain_file: cert.clone(),
            private_key_file: key.clone(),
        },
        (None, _, _) => return Err(()),
    };
    // The CA and its revocation list: files on the proxy, or the Secret's ca.crt and ca.crl.
    let secret = tls.credential_name.as_ref().and_then(|name| {
        let key = crate::registry::ObjectKey::new(ctx.proxy.key.namespace.clone(), name.clone());
        ctx.snapshot.registry.credentials.get(&key)
    });
    let (client_ca, client_crl) = match mode {
        ServerTlsMode::Simple => (None, None),
        _ => (
            tls.ca_certificates
                .clone()
                .map(PemSource::File)
                .or_else(|| secret?.ca_pem.clone().map(PemSource::Inline)),
            tls.ca_crl
                .clone()
                .map(PemSource::File)
                .or_else(|| secret?.crl_pem.clone().map(PemSource::Inline)),
        ),
    };
    if mode != ServerTlsMode::Simple && client_ca.is_none() {
        ctx.diag(
            Code::InvalidGatewayCredential,
            res,
            format!(
                "server port {}: tls.mode {:?} verifies client certificates but has no CA: set tls.caCertificates, or add ca.crt to the Secret credentialName names; the server is dropped",
                server.port.number,
                tls.effective_mode()
            ),
        );
        return Err(());
    }
    Ok(Some(ServerTls {
        mode,
        certificate: Some(certificate),
        client_ca,
        client_crl,
        alpn,
        ..handshake(tls, mode)
    }))
}

/// What a terminating server asks of the handshake: the names a client certificate must
/// carry (not with SIMPLE, where the validator refuses them), the protocol versions
/// (`TLS_AUTO` is the proxy's default; TLS 1.0 and 1.1 are refused by the validator) and the
/// TLS 1.2 cipher suites (a repeat, which the validator warns about, counts once).
fn handshake(tls: &ServerTlsSettings, mode: ServerTlsMode) -> ServerTls {
    let version = |v: Option<TlsProtocol>| match v {
        Some(TlsProtocol::Tlsv1_3) => Some(TlsVersion::Tls13),
        Some(TlsProtocol::Tlsv1_2) => Some(TlsVersion::Tls12),
        _ => None,
    };
    let mut cipher_suites: Vec<String> = Vec::new();
    for suite in tls.cipher_suites.iter().flatten() {
        if !cipher_suites.contains(suite) {
            cipher_suites.push(suite.clone());
        }
    }
    ServerTls {
        mode: ServerTlsMode::Simple,
        certificate: None,
        client_ca: None,
        client_crl: None,
        client_subject_alt_names: match mode {
            ServerTlsMode::Simple => Vec::new(),
            _ => tls.subject_alt_names.clone().unwrap_or_default(),
        },
        min_version: version(tls.min_protocol_version),
        max_version: version(tls.max_protocol_version),
        cipher_suites,
        alpn: Vec::new(),
    }
}
