//! A proxy's `/config_dump` as `meshctl proxy-config` reads it — live from the admin API or
//! saved (`-f`) — and which of its entries the views show (`--fqdn`, `--port`, `--subset`,
//! `--direction`, `--name`).

use serde_json::Value;
use trellis_contract::ProxyConfig;

/// A proxy's `/config_dump`, read.
#[derive(Debug)]
pub struct Dump {
    /// The configuration in force.
    pub config: ProxyConfig,
    /// The whole dump (endpoint health and certificates are outside the configuration).
    pub raw: Value,
}

/// Why a dump could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    /// Not JSON.
    #[error("{source_name} is not a proxy's /config_dump (not JSON: {message})")]
    NotJson {
        /// Where it came from.
        source_name: String,
        /// The parser's message.
        message: String,
    },
    /// JSON, but not a config dump.
    #[error(
        "{source_name} is not a proxy's /config_dump: {message}; save one with `meshctl proxy-config all POD -o json`"
    )]
    NotDump {
        /// Where it came from.
        source_name: String,
        /// What is wrong.
        message: String,
    },
}

impl Dump {
    /// Read a dump's text; `source_name` names it in errors.
    pub fn parse(text: &str, source_name: &str) -> Result<Dump, DumpError> {
        let raw: Value = serde_json::from_str(text).map_err(|e| DumpError::NotJson {
            source_name: source_name.into(),
            message: e.to_string(),
        })?;
        let config = raw.get("config").cloned().ok_or_else(|| DumpError::NotDump {
            source_name: source_name.into(),
            message: "it has no `config`".into(),
        })?;
        let config: ProxyConfig = serde_json::from_value(config).map_err(|e| DumpError::NotDump {
            source_name: source_name.into(),
            message: format!("its `config` is not a Trellis proxy configuration: {e}"),
        })?;
        Ok(Dump { config, raw })
    }

    /// The version the proxy rejected last, and why, if it did.
    pub fn rejected(&self) -> Option<(String, String)> {
        let r = self.raw.get("lastRejected").filter(|r| !r.is_null())?;
        Some((
            r["version"].as_str().unwrap_or("?").to_string(),
            r["error"].as_str().unwrap_or("?").to_string(),
        ))
    }
}

/// Which entries to show.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Filter {
    /// Only entries of this host (a cluster's or endpoint's FQDN, a virtual host's domain).
    #[arg(long, global = true)]
    pub fqdn: Option<String>,
    /// Only entries of this port.
    #[arg(long, global = true)]
    pub port: Option<u16>,
    /// Only clusters and endpoints of this subset.
    #[arg(long, global = true)]
    pub subset: Option<String>,
    /// Only this direction: inbound, outbound or gateway.
    #[arg(long, global = true, value_parser = ["inbound", "outbound", "gateway"])]
    pub direction: Option<String>,
    /// Only entries of this name (a listener, a virtual host or route, a cluster).
    #[arg(long, global = true)]
    pub name: Option<String>,
}

impl Filter {
    pub(super) fn direction_ok(&self, d: &str) -> bool {
        self.direction.as_deref().is_none_or(|want| want == d)
    }

    pub(super) fn port_ok(&self, p: Option<u16>) -> bool {
        self.port.is_none_or(|want| p == Some(want))
    }

    pub(super) fn name_ok(&self, n: &str) -> bool {
        self.name.as_deref().is_none_or(|want| want == n)
    }

    pub(super) fn fqdn_ok(&self, host: &str) -> bool {
        self.fqdn
            .as_deref()
            .is_none_or(|want| host == want || host.split(':').next() == Some(want))
    }

    pub(super) fn subset_ok(&self, subset: &str) -> bool {
        self.subset.as_deref().is_none_or(|want| want == subset)
    }
}

#[cfg(test)]
pub(super) mod fixtures {
    //! Dumps for the views' tests: what trellis-core compiles for the operator's shop fixture.

    use serde_json::{Value, json};
    use trellis_core::compile::{Role, compile};
    use trellis_core::registry::ObjectKey;
    use trellis_core::snapshot::Snapshot;

    use super::{Dump, Filter};

    /// The operator's shop fixture (gateway → web → payment v1/v2 → db, with a canary rule).
    pub(crate) const SHOP: &str = include_str!("../../../operator/tests/fixtures/shop.yaml");
    pub(crate) const PAYMENT: &str = "payment.shop.svc.cluster.local";

    /// web's proxy as its `/config_dump` shows it: the configuration trellis-core compiles for
    /// it, its one payment v2 endpoint ejected, and its certificate by metadata. (The fixture's
    /// other v2 pod, 10.244.0.23, is not ready: left out of the endpoints, as Istio does.)
    pub(crate) fn web_dump(rejected: Value) -> Dump {
        web_dump_of(SHOP, rejected)
    }

    /// web's proxy's dump for another set of objects.
    pub(crate) fn web_dump_of(yaml: &str, rejected: Value) -> Dump {
        dump_of(yaml, ObjectKey::new("shop", "web-5d8f-abcde"), Role::Sidecar, rejected)
    }

    /// The dump of the proxy in `pod`.
    pub(crate) fn dump_of(yaml: &str, pod: ObjectKey, role: Role, rejected: Value) -> Dump {
        let snapshot = Snapshot::from_yaml(yaml).unwrap();
        let config = compile(&snapshot, &pod, role, "v7").unwrap().config;
        let raw = json!({
            "version": "v7",
            "ready": true,
            "lastRejected": rejected,
            "config": config,
            "clusterStatus": [{"name": format!("outbound|80|v2|{PAYMENT}"), "endpoints": [
                {"address": "10.244.0.22:9091", "ejected": true},
            ]}],
            "workloadCertificate": {"spiffeId": "spiffe://cluster.local/ns/shop/sa/web", "chain": [
                {"subject": "", "issuer": "O=Trellis, CN=Trellis Root CA", "serial": "1a:2b", "uriSans": [],
                 "dnsSans": [], "notBefore": "Fri, 04 Dec 2026 20:00:00 +0000", "notAfter": "Sat, 05 Dec 2026 20:00:00 +0000"},
            ]},
        });
        Dump::parse(&raw.to_string(), "web's dump").unwrap()
    }

    pub(crate) fn only<F: FnOnce(&mut Filter)>(f: F) -> Filter {
        let mut filter = Filter::default();
        f(&mut filter);
        filter
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::fixtures::web_dump;
    use super::*;

    #[test]
    fn a_rejected_version_and_what_is_not_a_dump() {
        assert_eq!(web_dump(Value::Null).rejected(), None);
        let nacked = web_dump(json!({"version": "v8", "error": "listener outbound: duplicate address"}));
        assert_eq!(
            nacked.rejected(),
            Some(("v8".to_string(), "listener outbound: duplicate address".to_string()))
        );
        let e = Dump::parse("{oops", "dump.json").unwrap_err().to_string();
        assert!(
            e.starts_with("dump.json is not a proxy's /config_dump (not JSON"),
            "{e}"
        );
        let e = Dump::parse("{\"items\": []}", "dump.json").unwrap_err().to_string();
        assert!(
            e.contains("it has no `config`") && e.contains("meshctl proxy-config all POD -o json"),
            "{e}"
        );
        let e = Dump::parse("{\"config\": {\"listeners\": 3}}", "dump.json")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a Trellis proxy configuration"), "{e}");
    }
}
