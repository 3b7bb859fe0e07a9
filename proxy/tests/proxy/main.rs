//! Whole-proxy tests: the real `App` in process, real sockets on loopback,
//! real TLS, against loopback test servers.

mod admin;
mod binary;
mod capture;
mod dns;
mod gateway;
mod grpc;
mod h2load;
mod hardening;
mod lifecycle;
mod mtls;
mod resilience;
mod routing;
mod support;
mod tcp;
mod telemetry;
mod timeouts;
