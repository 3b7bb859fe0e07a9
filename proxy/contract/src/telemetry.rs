//! Telemetry settings: tracing (sampling, OTLP collector) and access logs.
//! Metrics are always on and need no settings.

use crate::identity::PemSource;
use serde::{Deserialize, Serialize};

/// Tracing and access-log settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Telemetry {
    /// Distributed tracing; `None` = only propagate headers.
    pub tracing: Option<Tracing>,
    /// Access logging.
    pub access_log: AccessLog,
}

/// Distributed tracing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Tracing {
    /// Percentage of new traces sampled (0–100); an incoming sampled flag wins.
    pub sampling_percent: f64,
    /// OTLP collector endpoint, e.g. `http://otel-collector:4317` (gRPC) or
    /// `http://otel-collector:4318` (HTTP; a path may follow, default
    /// `/v1/traces`), or `https://…` for TLS: the collector's certificate is
    /// verified against `collectorCa` (else the system's roots) and its name
    /// against the host.
    pub otlp_endpoint: Option<String>,
    /// How spans travel. Absent means OTLP/HTTP with JSON, what proxies did
    /// before the field existed (the control plane always sends it).
    #[serde(default = "OtlpProtocol::legacy")]
    pub protocol: OtlpProtocol,
    /// `service.name` resource attribute; default the node's workload.
    #[serde(default)]
    pub service_name: Option<String>,
    /// Roots the collector's certificate must chain to (`https://` endpoints
    /// only); `None` = the system's roots (`/etc/ssl/certs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collector_ca: Option<PemSource>,
}

/// The OTLP transport and encoding of span export.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum OtlpProtocol {
    /// OTLP/gRPC: protobuf over HTTP/2 (`TraceService/Export`).
    Grpc,
    /// OTLP/HTTP with a protobuf body (`application/x-protobuf`).
    HttpProtobuf,
    /// OTLP/HTTP with a JSON body (`application/json`).
    HttpJson,
}

impl OtlpProtocol {
    /// The protocol of a config that names none.
    pub fn legacy() -> Self {
        Self::HttpJson
    }
}

/// Access logging.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct AccessLog {
    /// Log one line per request / TCP connection.
    pub enabled: bool,
    /// Line format.
    pub format: AccessLogFormat,
}

/// Access-log line format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum AccessLogFormat {
    /// One JSON object per line.
    #[default]
    Json,
    /// Envoy-like text.
    Text,
}
