//! Whole-proxy tests: the real `App` in process, real sockets on loopback,
//! real TLS, against loopback test servers.

mod admin;
mod authorization;
mod binary;
mod cancellation;
mod capture;
mod circuit_breakers;
mod client_errors;
mod connect;
mod discovery;
mod dns;
mod early_answers;
mod gateway;
mod gateway_handshake;
mod gateway_tls;
mod grpc;
mod h2load;
mod hardening;
mod http2;
mod http2_keepalive;
mod jwt;
mod keepalive;
mod lifecycle;
mod mtls;
mod origination;
mod overload;
mod pool;
mod resilience;
mod routing;
mod subscription;
mod support;
mod tcp;
mod telemetry;
mod timeouts;
mod trust_domain;
mod upstream_connections;
