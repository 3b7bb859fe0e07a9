//! Gateway TLS servers chosen by SNI: several Gateway servers on one port,
//! each with its own hosts, certificate, mode and client CA. The client's SNI
//! picks the server (exact name, then the longest `*.` suffix, then `*`), the
//! listener's `tls` serves everyone else; the whole rustls `ServerConfig` is
//! chosen per connection, so simple and mutual servers can share a port.

use crate::identity::{TlsError, WorkloadIdentity};
use crate::server_tls::gateway_server_config;
use rustls::ServerConfig;
use std::collections::HashMap;
use std::sync::Arc;
use trellis_contract::Listener;

/// The TLS servers of one gateway listener.
#[derive(Debug)]
pub struct TlsServers {
    default: Option<Arc<ServerConfig>>,
    exact: HashMap<String, Arc<ServerConfig>>,
    /// `(".example.com", config)`, longest suffix first.
    suffixes: Vec<(String, Arc<ServerConfig>)>,
    any: Option<Arc<ServerConfig>>,
}

impl TlsServers {
    /// Build the listener's TLS servers (`istioMutual` ones serve `identity`);
    /// `None` when it terminates no TLS.
    pub fn build(listener: &Listener, identity: Option<&WorkloadIdentity>) -> Result<Option<Self>, TlsError> {
        if listener.tls.is_none() && listener.sni_tls.is_empty() {
            return Ok(None);
        }
        let default = listener
            .tls
            .as_ref()
            .map(|t| gateway_server_config(t, identity))
            .transpose()?;
        let mut servers = Self {
            default,
            exact: HashMap::new(),
            suffixes: Vec::new(),
            any: None,
        };
        for entry in &listener.sni_tls {
            let cfg = gateway_server_config(&entry.tls, identity)?;
            for name in &entry.server_names {
                let name = name.trim_end_matches('.').to_ascii_lowercase();
                if name == "*" {
                    servers.any = Some(Arc::clone(&cfg));
                } else if let Some(suffix) = name.strip_prefix('*') {
                    servers.suffixes.push((suffix.to_string(), Arc::clone(&cfg)));
                } else {
                    servers.exact.insert(name, Arc::clone(&cfg));
                }
            }
        }
        servers
            .suffixes
            .sort_by_key(|(suffix, _)| std::cmp::Reverse(suffix.len()));
        Ok(Some(servers))
    }

    /// The one server when SNI cannot change the choice (no `sniTls`): the
    /// handshake then needs no ClientHello inspection.
    pub fn only(&self) -> Option<&Arc<ServerConfig>> {
        let by_sni = !self.exact.is_empty() || !self.suffixes.is_empty() || self.any.is_some();
        if by_sni { None } else { self.default.as_ref() }
    }

    /// The server for a ClientHello's SNI; `None` = refuse the handshake.
    pub fn select(&self, sni: Option<&str>) -> Option<&Arc<ServerConfig>> {
        let Some(name) = sni.map(|s| s.trim_end_matches('.').to_ascii_lowercase()) else {
            return self.default.as_ref();
        };
        self.exact
            .get(&name)
            .or_else(|| {
                self.suffixes
                    .iter()
                    .find(|(suffix, _)| name.len() > suffix.len() && name.ends_with(suffix.as_str()))
                    .map(|(_, cfg)| cfg)
            })
            .or(self.any.as_ref())
            .or(self.default.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_contract::{CertificateRef, ServerTls, ServerTlsMode, SniTls};

    fn tls(alpn: &str) -> ServerTls {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["x.test".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        ServerTls {
            mode: ServerTlsMode::Simple,
            certificate: Some(CertificateRef::Inline {
                cert_chain_pem: cert.pem(),
                private_key_pem: key.serialize_pem(),
            }),
            client_ca: None,
            client_crl: None,
            client_subject_alt_names: Vec::new(),
            min_version: None,
            max_version: None,
            cipher_suites: Vec::new(),
            // The ALPN list tells the configs apart in assertions.
            alpn: vec![alpn.to_string()],
        }
    }

    fn listener(default: bool, entries: Vec<(Vec<&str>, &str)>) -> Listener {
        let mut l: Listener = serde_json::from_value(serde_json::json!({
            "name": "gw", "address": "127.0.0.1:0", "direction": "gateway",
        }))
        .unwrap();
        l.tls = default.then(|| tls("default"));
        l.sni_tls = entries
            .into_iter()
            .map(|(names, alpn)| SniTls {
                server_names: names.into_iter().map(String::from).collect(),
                tls: tls(alpn),
            })
            .collect();
        l
    }

    fn chosen(s: &TlsServers, sni: Option<&str>) -> Option<String> {
        s.select(sni)
            .map(|c| String::from_utf8(c.alpn_protocols[0].clone()).unwrap())
    }

    #[test]
    fn most_specific_name_wins_then_default() {
        let l = listener(
            true,
            vec![
                (vec!["shop.example.com"], "exact"),
                (vec!["*.example.com"], "wide"),
                (vec!["*.api.example.com"], "narrow"),
            ],
        );
        let s = TlsServers::build(&l, None).unwrap().unwrap();
        assert!(s.only().is_none());
        assert_eq!(chosen(&s, Some("SHOP.example.com.")).as_deref(), Some("exact"));
        assert_eq!(chosen(&s, Some("v1.api.example.com")).as_deref(), Some("narrow"));
        assert_eq!(chosen(&s, Some("a.b.example.com")).as_deref(), Some("wide"));
        // A wildcard needs at least one label before its suffix.
        assert_eq!(chosen(&s, Some("example.com")).as_deref(), Some("default"));
        assert_eq!(chosen(&s, Some("other.test")).as_deref(), Some("default"));
        assert_eq!(chosen(&s, None).as_deref(), Some("default"));
    }

    #[test]
    fn star_catches_all_and_no_default_refuses() {
        let with_star = TlsServers::build(&listener(false, vec![(vec!["*"], "star")]), None)
            .unwrap()
            .unwrap();
        assert_eq!(chosen(&with_star, Some("anything.test")).as_deref(), Some("star"));
        assert_eq!(chosen(&with_star, None), None, "no SNI and no default: refused");
        let strict = TlsServers::build(&listener(false, vec![(vec!["a.test"], "a")]), None)
            .unwrap()
            .unwrap();
        assert_eq!(chosen(&strict, Some("b.test")), None);
    }

    #[test]
    fn without_sni_entries_there_is_one_server_or_none() {
        let one = TlsServers::build(&listener(true, vec![]), None).unwrap().unwrap();
        assert!(one.only().is_some());
        assert!(TlsServers::build(&listener(false, vec![]), None).unwrap().is_none());
    }
}
