//! The operator's settings: flags or environment variables ([`Config`]), and what follows
//! from them — the defaults where the Mesh says nothing, the injector's settings, the
//! operator's identity and the names it is reached by.

use std::net::SocketAddr;
use std::time::Duration;

use super::OPERATOR_SERVICE_ACCOUNT;
use crate::settings::Defaults;

/// Settings, from flags or environment variables.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "trellis-operator", version, about = "The Trellis control plane")]
pub struct Config {
    /// Namespace the control plane runs in: its CA Secret, leader Lease and Service (which the
    /// webhook configurations it creates and the injected sidecars point at) are there. The
    /// Deployment sets POD_NAMESPACE from the pod's own namespace (under OLM, the
    /// OperatorGroup's).
    #[arg(long, env = trellis_manifests::install::NAMESPACE_ENV, default_value = trellis_api::mesh::SYSTEM_NAMESPACE)]
    pub namespace: String,
    /// Address of the push and certificate API (gRPC over TLS).
    #[arg(long, env = "TRELLIS_PUSH_ADDR", default_value = "0.0.0.0:15012")]
    pub push_addr: SocketAddr,
    /// Address of the admin API (/ready, /live, /metrics, /debug/syncz).
    #[arg(long, env = "TRELLIS_ADMIN_ADDR", default_value = "0.0.0.0:15014")]
    pub admin_addr: SocketAddr,
    /// SPIFFE trust domain while there is no Mesh (a Mesh's `spec.trustDomain` wins; a Mesh
    /// that names none is in `cluster.local`, as the compiler reads it).
    #[arg(long, env = "TRELLIS_TRUST_DOMAIN", default_value = trellis_api::mesh::DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,
    /// Lifetime of workload certificates while there is no Mesh, in seconds (at most half the
    /// root's 87600h); a Mesh without `spec.ca.workloadCertTtl` gets that field's default, 24h.
    #[arg(long, env = "TRELLIS_WORKLOAD_CERT_TTL_SECONDS", default_value_t = 24 * 3600)]
    pub workload_cert_ttl_seconds: u64,
    /// Address of the admission webhooks (HTTPS).
    #[arg(long, env = "TRELLIS_WEBHOOK_ADDR", default_value = "0.0.0.0:15017")]
    pub webhook_addr: SocketAddr,
    /// Create the webhook configurations missing at start (they point at the operator's
    /// Service; an operator run without one, e.g. in process in tests, turns this off).
    #[arg(long, env = "TRELLIS_CREATE_WEBHOOKS", default_value_t = true, action = clap::ArgAction::Set)]
    pub create_webhooks: bool,
    /// The proxy image injected when the Mesh names none (`spec.versions.proxy`).
    #[arg(long, env = "TRELLIS_PROXY_IMAGE", default_value_t = trellis_manifests::install::Options::default().proxy_image)]
    pub proxy_image: String,
    /// The image this operator runs (the install sets it): when the Mesh's
    /// `spec.versions.operator` names another, the leader rolls the operator's Deployment to it.
    #[arg(long, env = trellis_manifests::install::OPERATOR_IMAGE_ENV)]
    pub operator_image: Option<String>,
    /// This replica's name in the leader election (the pod's name).
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
    /// Compete for leadership on the Lease `trellis-operator` (`false`: this replica always
    /// leads; only for a single replica).
    #[arg(long, env = "TRELLIS_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,
    /// The other replicas' admin APIs, `NAME=http://HOST:PORT` each, for replicas that are not
    /// pods this one can find (run outside the cluster); empty: the ready pods labelled
    /// `app=trellis-operator` in the namespace, on this replica's admin port.
    #[arg(long, env = "TRELLIS_PEERS", value_delimiter = ',', value_parser = parse_peer)]
    pub peers: Vec<(String, String)>,
    /// Log filter (EnvFilter syntax), as the proxy's `--log`. Neither given: [`RUST_LOG`],
    /// then `info` ([`log_filter`]).
    #[arg(long, env = trellis_manifests::install::LOG_ENV)]
    pub log: Option<String>,
}

/// The log variable installs before 0.1's TRELLIS_LOG set (`install.rs` wrote it into the
/// operator's Deployment): still read, when neither `--log` nor TRELLIS_LOG is given, so an
/// operator whose image is changed under such a Deployment keeps its filter.
pub const RUST_LOG: &str = "RUST_LOG";

/// Where `--log`'s value comes from, as a bad one is named.
const LOG: &str = "--log / TRELLIS_LOG";

/// A log filter the operator cannot use, named by where it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogFilterError {
    /// Not EnvFilter directives.
    #[error(
        "{from} {value:?} is not a log filter ({error}); write EnvFilter directives such as `info` or \
         `warn,trellis_operator=debug`, or unset it for `info`"
    )]
    Invalid {
        from: &'static str,
        value: String,
        error: String,
    },
    /// Not UTF-8.
    #[error("{RUST_LOG}={value:?}: not valid UTF-8; set it in UTF-8, or unset it for `info`")]
    NotUnicode { value: String },
}

/// The operator's log filter: `--log` or TRELLIS_LOG (`log`), else [`RUST_LOG`] (`rust_log`, the
/// variable's value), else `info`. An empty value is unset.
pub fn log_filter(
    log: Option<&str>,
    rust_log: Option<std::ffi::OsString>,
) -> Result<tracing_subscriber::EnvFilter, LogFilterError> {
    let rust_log = match rust_log.map(std::ffi::OsString::into_string) {
        None => None,
        Some(Ok(v)) => Some(v),
        Some(Err(v)) => {
            return Err(LogFilterError::NotUnicode {
                value: v.to_string_lossy().into_owned(),
            });
        }
    };
    let (from, value) = match (log.filter(|v| !v.is_empty()), rust_log.filter(|v| !v.is_empty())) {
        (Some(log), _) => (LOG, log.to_string()),
        (None, Some(rust_log)) => (RUST_LOG, rust_log),
        (None, None) => return Ok(tracing_subscriber::EnvFilter::new("info")),
    };
    tracing_subscriber::EnvFilter::try_new(&value).map_err(|e| LogFilterError::Invalid {
        from,
        error: e.to_string(),
        value,
    })
}

/// One `--peers` entry: `NAME=http://HOST:PORT`.
fn parse_peer(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((name, url)) if !name.is_empty() && url.starts_with("http://") => {
            Ok((name.to_string(), url.trim_end_matches('/').to_string()))
        }
        _ => Err(format!(
            "{s:?} is not a peer: write NAME=http://HOST:PORT (the replica's name and its admin API)"
        )),
    }
}

/// What the operator acts on where the Mesh, or its field, says nothing: the flags.
pub fn defaults(config: &Config) -> Result<Defaults, crate::settings::DefaultsError> {
    Defaults {
        namespace: config.namespace.clone(),
        proxy_image: config.proxy_image.clone(),
        workload_cert_ttl: Duration::from_secs(config.workload_cert_ttl_seconds),
        trust_domain: config.trust_domain.clone(),
        ..Defaults::default()
    }
    .checked()
}

/// What the sidecar injector meshes pods with when the Mesh names no proxy image.
pub fn injector_settings(config: &Config) -> trellis_manifests::sidecar::Settings {
    let mut settings = trellis_manifests::sidecar::Settings::new(&trellis_manifests::install::Options {
        namespace: config.namespace.clone(),
        proxy_image: config.proxy_image.clone(),
        ..trellis_manifests::install::Options::default()
    });
    settings.trust_domain = config.trust_domain.clone();
    settings
}

/// The operator's SPIFFE identity, which its serving certificates carry: its ServiceAccount in
/// the trust domain `trust_domains` names when each is issued (the Mesh's, live).
pub fn operator_identity(config: &Config, trust_domains: crate::trust_domain::Source) -> crate::serving::Subject {
    crate::serving::Subject::service_account(trust_domains, config.namespace.clone(), OPERATOR_SERVICE_ACCOUNT)
}

/// The names clients reach the operator by: its Service (as proxies and the API server dial
/// it), and localhost.
pub fn service_dns_names(config: &Config) -> Vec<String> {
    vec![
        format!("trellis-operator.{}.svc", config.namespace),
        format!("trellis-operator.{}.svc.cluster.local", config.namespace),
        "localhost".to_string(),
    ]
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory as _, Parser as _};

    use super::*;

    #[test]
    fn the_log_filter_is_trellis_log_then_rust_log_then_info_and_a_bad_one_is_named() {
        let filter = |log: Option<&str>, rust_log: Option<&str>| {
            log_filter(log, rust_log.map(Into::into)).map(|f| f.to_string())
        };
        assert_eq!(filter(None, None).unwrap(), "info");
        assert_eq!(filter(Some(""), Some("")).unwrap(), "info");
        assert_eq!(filter(Some("debug"), Some("warn")).unwrap(), "debug");
        assert_eq!(filter(None, Some("warn")).unwrap(), "warn");
        assert_eq!(filter(Some(""), Some("warn")).unwrap(), "warn");
        assert_eq!(
            filter(Some("info,kube=loud"), Some("warn")).unwrap_err(),
            LogFilterError::Invalid {
                from: "--log / TRELLIS_LOG",
                value: "info,kube=loud".into(),
                error: tracing_subscriber::EnvFilter::try_new("info,kube=loud")
                    .unwrap_err()
                    .to_string(),
            }
        );
        let error = filter(None, Some("kube=loud")).unwrap_err().to_string();
        assert!(
            error.starts_with("RUST_LOG \"kube=loud\" is not a log filter (")
                && error.ends_with(
                    "); write EnvFilter directives such as `info` or `warn,trellis_operator=debug`, or unset it for `info`"
                ),
            "{error}"
        );
        use std::os::unix::ffi::OsStringExt as _;
        assert_eq!(
            log_filter(None, Some(std::ffi::OsString::from_vec(vec![0xff]))).unwrap_err(),
            LogFilterError::NotUnicode {
                value: "\u{fffd}".into()
            }
        );
        // The flag reads the variable the proxy reads.
        let command = Config::command();
        let arg = command
            .get_arguments()
            .find(|a| a.get_id() == "log")
            .expect("a log setting");
        assert_eq!(arg.get_env(), Some(std::ffi::OsStr::new("TRELLIS_LOG")));
    }

    #[test]
    fn the_namespace_is_the_pods_own_and_everything_namespaced_follows_it() {
        // The Deployment sets this variable from the pod's metadata.namespace (under OLM, the
        // OperatorGroup's namespace) and passes no --namespace.
        let command = Config::command();
        let arg = command
            .get_arguments()
            .find(|a| a.get_id() == "namespace")
            .expect("a namespace setting");
        assert_eq!(
            arg.get_env(),
            Some(std::ffi::OsStr::new(trellis_manifests::install::NAMESPACE_ENV))
        );
        let config = Config::parse_from(["trellis-operator", "--namespace", "operators"]);
        let sidecar = injector_settings(&config);
        assert_eq!(sidecar.control_plane_namespace, "operators");
        assert!(
            service_dns_names(&config).contains(&"trellis-operator.operators.svc".to_string()),
            "{:?}",
            service_dns_names(&config)
        );
        assert_eq!(
            operator_identity(&config, config.trust_domain.as_str().into()).get(),
            "spiffe://cluster.local/ns/operators/sa/trellis-operator"
        );
    }
}
