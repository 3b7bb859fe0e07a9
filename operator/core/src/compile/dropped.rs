//! The one list of constructs the compiler drops or ignores instead of compiling.
//!
//! The compiler meets these only in objects that bypassed the validator (written while the
//! admission webhook was down, or before an upgrade): the validator rejects every one of them
//! as "not supported by Trellis yet" (or, for a rule without destination, as invalid), so no
//! valid configuration loses anything on its way to a proxy. `tests/dropped.rs` walks this
//! list and proves it: for each construct, a document that reaches the compiler's drop site,
//! and the validator's rejection of that document naming the field.
//!
//! # Guarantees
//! Every drop site in the compiler reports through [`Dropped`]: a new one cannot be added
//! without a variant here, and a variant cannot be added without the test's fixture.

use crate::code::Code;

/// A construct the compiler drops (TRL0101) or ignores (TRL0102).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Dropped {
    /// DestinationRule `loadBalancer.simple: PASSTHROUGH`.
    LoadBalancerPassthrough,
    /// DestinationRule `consistentHash.httpCookie.ttl` (proxy-generated session cookies).
    SessionCookieTtl,
    /// DestinationRule `loadBalancer.warmup` / `warmupDurationSecs`.
    LoadBalancerWarmup,
    /// VirtualService `http[].match[].scheme`.
    SchemeMatch,
    /// VirtualService `directResponse.body.bytes` that are not UTF-8.
    BinaryDirectResponse,
    /// AuthorizationPolicy `action: CUSTOM` (external authorization).
    CustomAction,
    /// A VirtualService `http` rule with no route, redirect or direct response.
    RuleWithoutDestination,
    /// ServiceEntry `resolution: DYNAMIC_DNS` (compiled as NONE).
    DynamicDnsResolution,
    /// Mesh `outboundTrafficPolicy.mode: ALLOW_ANY_DYNAMIC_DNS` (compiled as ALLOW_ANY).
    AllowAnyDynamicDns,
}

impl Dropped {
    /// Every construct, in declaration order.
    pub const ALL: &'static [Dropped] = &[
        Dropped::LoadBalancerPassthrough,
        Dropped::SessionCookieTtl,
        Dropped::LoadBalancerWarmup,
        Dropped::SchemeMatch,
        Dropped::BinaryDirectResponse,
        Dropped::CustomAction,
        Dropped::RuleWithoutDestination,
        Dropped::DynamicDnsResolution,
        Dropped::AllowAnyDynamicDns,
    ];

    /// The code the compiler's diagnostic carries.
    pub fn code(self) -> Code {
        match self {
            Dropped::SessionCookieTtl | Dropped::LoadBalancerWarmup => Code::UnsupportedIgnored,
            Dropped::RuleWithoutDestination => Code::SchemaValidationError,
            _ => Code::UnsupportedDropped,
        }
    }

    /// The field at fault, as the last part of the path the validator and the compiler's
    /// message name (`tls.mode`, `httpCookie.ttl`, ...).
    pub fn field(self) -> &'static str {
        match self {
            Dropped::LoadBalancerPassthrough => "loadBalancer.simple",
            Dropped::SessionCookieTtl => "httpCookie.ttl",
            Dropped::LoadBalancerWarmup => "loadBalancer.warmup",
            Dropped::SchemeMatch => "scheme",
            Dropped::BinaryDirectResponse => "body.bytes",
            Dropped::CustomAction => "action",
            Dropped::RuleWithoutDestination => "route",
            Dropped::DynamicDnsResolution => "resolution",
            Dropped::AllowAnyDynamicDns => "mode",
        }
    }
}
