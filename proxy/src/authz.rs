//! Authorization on the request path: the workload's AuthorizationPolicies, evaluated by the
//! contract's one evaluator ([`trellis_contract::authorization`], which `meshctl routes` also
//! explains by), and the audit record an AUDIT policy asks for.

pub use trellis_contract::authorization::{Authorizer, AuthzError, Layer, peer_namespace};
use trellis_contract::authorization::{AuthzRequest, Decision};

use crate::metrics::Metrics;

/// Evaluate a request or connection against `authorizer`, and write the audit record (log
/// target `trellis_proxy::audit`, metric `trellis_proxy_authz_audited_total`) an AUDIT policy
/// it matches asks for.
pub fn authorize(authorizer: &Authorizer, req: &AuthzRequest<'_>, metrics: &Metrics) -> Decision {
    let decision = authorizer.evaluate(req);
    if let Some(policy) = authorizer.audited(req) {
        metrics.authz_audited();
        tracing::info!(
            target: "trellis_proxy::audit",
            %policy,
            allowed = decision.allowed(),
            layer = ?req.layer,
            peer = req.principal.unwrap_or("-"),
            source = %req.source_ip,
            destination = %req.destination_ip,
            port = req.port,
            method = req.method,
            host = req.host,
            path = req.path,
            "audited"
        );
    }
    decision
}
