//! Gateway: the ports, protocols and TLS settings of a load balancer at the mesh's edge.

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};
use serde_with::skip_serializing_none;

use crate::schema::unsupported;
use crate::status::ConfigStatus;

/// A load balancer at the edge of the mesh: the ports, protocols, hosts and TLS settings that
/// the selected gateway proxies expose. VirtualServices bound to it route the traffic.
///
/// Istio equivalent: `networking.istio.io/v1 Gateway`.
#[skip_serializing_none]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "networking.trellis.dev",
    version = "v1alpha1",
    kind = "Gateway",
    doc = "Ports, protocols, hosts and TLS exposed by gateway proxies at the mesh edge (Istio Gateway).",
    plural = "gateways",
    namespaced,
    shortname = "gw",
    category = "trellis",
    status = "ConfigStatus",
    printcolumn = r#"{"name":"Selector", "type":"string", "jsonPath":".spec.selector", "description":"Labels of the gateway proxies"}"#,
    printcolumn = r#"{"name":"Age", "type":"date", "jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySpec {
    /// Labels of the gateway proxy pods this configuration applies to.
    pub selector: Option<BTreeMap<String, String>>,
    /// The servers (listeners) to expose.
    pub servers: Vec<Server>,
}

/// One listener of a gateway.
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = unsupported("defaultEndpoint", "remove it; Trellis gateways do not use sidecar default endpoints"))]
pub struct Server {
    /// Port, protocol and name.
    pub port: Port,
    /// Address to bind to: `0.0.0.0`, every address of the gateway pod (the default). One
    /// address only, or a Unix domain socket, is not supported by Trellis yet.
    pub bind: Option<String>,
    /// Hosts exposed, as `namespace/host` (`*/` any namespace, `./` own) or `host`.
    pub hosts: Vec<String>,
    /// TLS settings; required for HTTPS and TLS ports.
    pub tls: Option<ServerTlsSettings>,
    /// Not supported by Trellis yet.
    pub default_endpoint: Option<String>,
    /// Name of the server, referenced in logs and `meshctl proxy-config`.
    pub name: Option<String>,
}

/// A port on a gateway.
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Port {
    /// Port number, 1-65535.
    #[schemars(range(min = 1, max = 65535))]
    pub number: u32,
    /// Protocol: HTTP, HTTPS, GRPC, GRPC-WEB, HTTP2, MONGO, TCP or TLS.
    pub protocol: String,
    /// Name of the port.
    pub name: Option<String>,
    /// Port the gateway proxy actually listens on, when it differs from `number`.
    #[schemars(range(min = 1, max = 65535))]
    pub target_port: Option<u32>,
}

/// TLS settings of a gateway server.
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = unsupported("credentialNames", "use credentialName with one Secret"),
    validation = unsupported("verifyCertificateSpki", "use caCertificates or subjectAltNames"),
    validation = unsupported("verifyCertificateHash", "use caCertificates or subjectAltNames"),
    validation = unsupported(
        "caCertCredentialName",
        "put the CA certificates in the credentialName Secret as ca.crt, or set caCertificates"
    ),
    validation = unsupported(
        "tlsCertificates",
        "set one certificate with serverCertificate and privateKey, or credentialName"
    ),
    validation = unsupported(
        "insecureSkipVerify",
        "remove it; to let clients without a certificate through, use mode OPTIONAL_MUTUAL (certificates presented are still verified)"
    )
)]
pub struct ServerTlsSettings {
    /// Redirect plain HTTP requests on this server to HTTPS.
    pub https_redirect: Option<bool>,
    /// TLS mode.
    pub mode: Option<ServerTlsMode>,
    /// Server certificate file.
    pub server_certificate: Option<String>,
    /// Server private key file.
    pub private_key: Option<String>,
    /// CA certificates file used to verify clients (MUTUAL).
    pub ca_certificates: Option<String>,
    /// Certificate revocation list file (PEM) client certificates are checked against
    /// (MUTUAL, OPTIONAL_MUTUAL); with `credentialName`, the Secret's `ca.crl` instead.
    pub ca_crl: Option<String>,
    /// Secret (in the gateway's namespace) holding `tls.crt`, `tls.key` and optionally `ca.crt`
    /// and `ca.crl`.
    pub credential_name: Option<String>,
    /// Not supported by Trellis yet.
    pub credential_names: Option<Vec<String>>,
    /// Not supported by Trellis yet.
    pub ca_cert_credential_name: Option<String>,
    /// Not supported by Trellis yet.
    #[serde(default)]
    #[schemars(schema_with = "crate::schema::preserve_unknown_list")]
    pub tls_certificates: Option<Vec<serde_json::Value>>,
    /// Names a client certificate must carry one of (MUTUAL, OPTIONAL_MUTUAL, ISTIO_MUTUAL):
    /// DNS names or IP addresses among its DNS/IP SANs, other names (SPIFFE IDs) exactly
    /// among its URI SANs.
    pub subject_alt_names: Option<Vec<String>>,
    /// Not supported by Trellis yet.
    pub verify_certificate_spki: Option<Vec<String>>,
    /// Not supported by Trellis yet.
    pub verify_certificate_hash: Option<Vec<String>>,
    /// Minimum TLS version: `TLSV1_2` (also `TLS_AUTO`) or `TLSV1_3`.
    pub min_protocol_version: Option<TlsProtocol>,
    /// Maximum TLS version: `TLSV1_3` (also `TLS_AUTO`) or `TLSV1_2`.
    pub max_protocol_version: Option<TlsProtocol>,
    /// TLS 1.2 cipher suites accepted, by their OpenSSL names (ECDHE with AES-GCM or
    /// ChaCha20-Poly1305), preferred in this order; TLS 1.3's suites are always offered.
    pub cipher_suites: Option<Vec<String>>,
    /// Not supported by Trellis yet.
    pub insecure_skip_verify: Option<bool>,
}

impl ServerTlsSettings {
    /// The mode the server runs in: `mode`, or when unset SIMPLE for a server with a
    /// certificate (`credentialName`, or `serverCertificate`), else PASSTHROUGH — Istio's
    /// default, under which Istio ignores a certificate (the validator warns about the
    /// difference).
    pub fn effective_mode(&self) -> ServerTlsMode {
        match self.mode {
            Some(m) => m,
            None if self.credential_name.is_some() || self.server_certificate.is_some() => ServerTlsMode::Simple,
            None => ServerTlsMode::Passthrough,
        }
    }
}

/// TLS modes of a gateway server.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ServerTlsMode {
    /// Forward the TLS connection as-is, routed on SNI.
    Passthrough,
    /// Terminate TLS.
    Simple,
    /// Terminate TLS and require a client certificate.
    Mutual,
    /// Passthrough with routing on SNI to mesh services without a VirtualService.
    AutoPassthrough,
    /// Terminate mesh mTLS with the gateway's workload certificate.
    IstioMutual,
    /// Terminate TLS; verify a client certificate when one is presented.
    OptionalMutual,
}

/// TLS protocol versions.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsProtocol {
    /// The proxy's default: TLS 1.2 as the minimum, TLS 1.3 as the maximum.
    #[serde(rename = "TLS_AUTO")]
    TlsAuto,
    /// TLS 1.0 (refused by Trellis: insecure).
    #[serde(rename = "TLSV1_0")]
    Tlsv1_0,
    /// TLS 1.1 (refused by Trellis: insecure).
    #[serde(rename = "TLSV1_1")]
    Tlsv1_1,
    /// TLS 1.2.
    #[serde(rename = "TLSV1_2")]
    Tlsv1_2,
    /// TLS 1.3.
    #[serde(rename = "TLSV1_3")]
    Tlsv1_3,
}
