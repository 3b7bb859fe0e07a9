//! The inbound policy: mTLS modes by port, JWT providers and authorization rules.

use std::collections::BTreeSet;

use crate::inbound::{AuthzCondition, AuthzSource, CONDITION_KEYS, IP_CONDITION_KEYS, InboundPolicy, condition_header};
use crate::jwt::JwtProvider;
use crate::route::StringMatch;
use crate::syntax::parse_cidr;

use super::Validator;

impl Validator {
    pub(super) fn inbound(&mut self, path: &str, p: &InboundPolicy) {
        for port in p.mtls.port_modes.keys() {
            if *port == 0 {
                self.err(format!("{path}.mtls.portModes"), "port 0 is not a port");
            }
        }
        for (i, provider) in p.jwt.iter().enumerate() {
            self.jwt_provider(&format!("{path}.jwt[{i}]"), provider);
        }
        let mut seen = BTreeSet::new();
        for (i, pol) in p.authorization.iter().enumerate() {
            let pp = format!("{path}.authorization[{i}]");
            if !seen.insert((pol.namespace.as_str(), pol.name.as_str())) {
                self.err(
                    format!("{pp}.name"),
                    format!("duplicate policy {}/{}", pol.namespace, pol.name),
                );
            }
            for (j, rule) in pol.rules.iter().enumerate() {
                let rp = format!("{pp}.rules[{j}]");
                for (k, s) in rule.from.iter().enumerate() {
                    self.authz_source(&format!("{rp}.from[{k}]"), s);
                }
                for (k, op) in rule.to.iter().enumerate() {
                    let op_path = format!("{rp}.to[{k}]");
                    for (field, list) in [
                        ("hosts", &op.hosts),
                        ("notHosts", &op.not_hosts),
                        ("methods", &op.methods),
                        ("notMethods", &op.not_methods),
                        ("paths", &op.paths),
                        ("notPaths", &op.not_paths),
                    ] {
                        for (n, m) in list.iter().enumerate() {
                            self.string_match(&format!("{op_path}.{field}[{n}]"), m);
                        }
                    }
                }
                for (k, cond) in rule.when.iter().enumerate() {
                    self.authz_condition(&format!("{rp}.when[{k}]"), cond);
                }
            }
        }
    }

    fn jwt_provider(&mut self, path: &str, p: &JwtProvider) {
        if p.issuer.is_empty() {
            self.err(format!("{path}.issuer"), "must not be empty");
        }
        if p.jwks_unavailable.is_none()
            && let Err(e) = crate::jwt::parse_jwks(&p.jwks)
        {
            self.err(format!("{path}.jwks"), e.to_string());
        }
        for (i, h) in p.from_headers.iter().enumerate() {
            if !crate::syntax::is_header_name(&h.name) {
                self.err(
                    format!("{path}.fromHeaders[{i}].name"),
                    format!("{:?} is not a header name", h.name),
                );
            }
        }
        for (i, name) in p.from_params.iter().chain(&p.from_cookies).enumerate() {
            if name.is_empty() {
                self.err(format!("{path}.fromParams/fromCookies[{i}]"), "must not be empty");
            }
        }
        let outputs = p
            .output_payload_to_header
            .iter()
            .map(|h| ("outputPayloadToHeader".to_string(), h))
            .chain(
                p.output_claim_to_headers
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (format!("outputClaimToHeaders[{i}].header"), &c.header)),
            );
        for (field, header) in outputs {
            if let Err(e) = crate::syntax::route_may_change(header, crate::syntax::HeaderDirection::Request) {
                self.err(format!("{path}.{field}"), e.to_string());
            }
        }
        for (i, c) in p.output_claim_to_headers.iter().enumerate() {
            if c.claim.is_empty() {
                self.err(format!("{path}.outputClaimToHeaders[{i}].claim"), "must not be empty");
            }
        }
    }

    fn authz_source(&mut self, path: &str, s: &AuthzSource) {
        for (field, list) in [
            ("principals", &s.principals),
            ("notPrincipals", &s.not_principals),
            ("requestPrincipals", &s.request_principals),
            ("notRequestPrincipals", &s.not_request_principals),
            ("namespaces", &s.namespaces),
            ("notNamespaces", &s.not_namespaces),
        ] {
            for (n, m) in list.iter().enumerate() {
                self.string_match(&format!("{path}.{field}[{n}]"), m);
            }
        }
        for (field, list) in [
            ("ipBlocks", &s.ip_blocks),
            ("notIpBlocks", &s.not_ip_blocks),
            ("remoteIpBlocks", &s.remote_ip_blocks),
            ("notRemoteIpBlocks", &s.not_remote_ip_blocks),
        ] {
            for (n, cidr) in list.iter().enumerate() {
                if parse_cidr(cidr).is_none() {
                    self.err(format!("{path}.{field}[{n}]"), format!("{cidr:?} is not an IP or CIDR"));
                }
            }
        }
    }

    fn authz_condition(&mut self, path: &str, c: &AuthzCondition) {
        let known = CONDITION_KEYS.contains(&c.key.as_str())
            || condition_header(&c.key).is_some()
            || crate::jwt::condition_claim(&c.key).is_some();
        if !known {
            self.err(
                format!("{path}.key"),
                format!(
                    "unsupported key {:?}; use request.headers[<name>], request.auth.claims[<name>], {}",
                    c.key,
                    CONDITION_KEYS.join(", ")
                ),
            );
        }
        let ip = IP_CONDITION_KEYS.contains(&c.key.as_str());
        for (n, m) in c.values.iter().chain(&c.not_values).enumerate() {
            let vp = format!("{path}.values[{n}]");
            match m {
                StringMatch::Exact(v) if ip && parse_cidr(v).is_none() => {
                    self.err(vp, format!("{v:?} is not an IP or CIDR"));
                }
                StringMatch::Exact(_) => {}
                _ if ip => self.err(vp, "addresses are matched with exact IPs or CIDRs"),
                _ => self.string_match(&vp, m),
            }
        }
    }
}
