//! `trellis-proxy`: the Trellis data plane, a sidecar and gateway proxy.
//!
//! It never depends on Kubernetes: everything it knows arrives as one
//! [`trellis_contract::ProxyConfig`]. The binary (`src/main.rs`) only parses
//! arguments and runs [`App`]; tests run the same `App` in process.

pub mod admin;
pub mod app;
pub mod app_metrics;
pub mod authz;
pub mod balance;
pub mod capture;
pub mod client_hello;
pub mod config;
pub mod connection;
pub mod control;
pub mod discovery;
pub mod dns;
pub mod dns_table;
pub mod downstream_waits;
pub mod head;
pub mod http;
pub mod identity;
pub mod idle;
pub mod jwt;
pub mod labels;
pub mod logging;
pub mod metrics;
pub mod origination;
pub mod otlp;
pub mod overload;
pub mod path;
pub mod peer_exchange;
pub mod peer_metadata;
pub mod ports;
pub mod probes;
pub mod request_body;
pub mod resolver;
pub mod routing;
pub mod runtime;
pub mod server;
pub mod server_tls;
pub mod settings;
pub mod signals;
pub mod snapshot;
pub mod sni;
pub mod sniff;
pub mod span_export;
pub mod spans;
pub mod stream;
pub mod subject_alt_names;
pub mod tcp;
pub mod trace;
pub mod upstream;

pub use app::{App, AppConfig, ApplyError};
