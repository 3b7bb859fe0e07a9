//! The one list of finding codes: every problem `meshctl analyze` reports, the compiler's
//! diagnostics carry, and the operator surfaces as status conditions has a stable code here.
//!
//! Where Istio's analyzers report the same problem, the code, name, level and meaning are
//! Istio's (`IST0101` ReferencedResourceNotFound, ...), so migrating users and their CI scripts
//! carry over; problems only Trellis has get `TRL` codes.
//!
//! # Guarantees
//! A code's id and level never change once released; codes are only added.

use std::fmt;

use serde::{Serialize, Serializer};

/// How bad a finding is, most severe last (so `level >= threshold` reads naturally).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Level {
    /// Worth knowing; nothing is wrong yet.
    Info,
    /// Works, but probably not as intended.
    Warning,
    /// Configuration is dropped or cannot work as written.
    Error,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Info => "Info",
            Level::Warning => "Warning",
            Level::Error => "Error",
        })
    }
}

impl std::str::FromStr for Level {
    type Err = String;

    fn from_str(s: &str) -> Result<Level, String> {
        match s.to_ascii_lowercase().as_str() {
            "info" => Ok(Level::Info),
            "warning" | "warn" => Ok(Level::Warning),
            "error" => Ok(Level::Error),
            other => Err(format!("unknown level {other:?}; use Info, Warning or Error")),
        }
    }
}

/// What a code means: its id, name, level, a one-line description and how to fix it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Definition {
    /// `IST0101`, `TRL0101`.
    pub id: &'static str,
    /// `ReferencedResourceNotFound`.
    pub name: &'static str,
    /// The level every finding with this code has.
    pub level: Level,
    /// What the problem is.
    pub description: &'static str,
    /// What it causes and how to fix it (`meshctl analyze --explain CODE`).
    pub explanation: &'static str,
}

macro_rules! codes {
    ($($variant:ident => $id:literal, $level:ident, $description:literal, $explanation:literal;)+) => {
        /// A finding code. See the module documentation.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Code {
            $(
                #[doc = $description]
                $variant,
            )+
        }

        impl Code {
            /// Every code, in id order.
            pub const ALL: &'static [Code] = &[$(Code::$variant),+];

            /// The code's definition.
            pub fn definition(self) -> Definition {
                match self {
                    $(Code::$variant => Definition {
                        id: $id,
                        name: stringify!($variant),
                        level: Level::$level,
                        description: $description,
                        explanation: $explanation,
                    },)+
                }
            }
        }
    };
}

codes! {
    ReferencedResourceNotFound => "IST0101", Error,
        "A resource being referenced does not exist.",
        "A VirtualService names a gateway, destination host, port or subset; a Gateway a credentialName; a policy a namespace or Service that is not there. Requests that need it fail (503 for a missing destination or subset, no listener for a missing gateway). Create the referenced object or fix the name (a short host name resolves in the referencing object's namespace; qualify it as name.namespace to reach another).";
    NamespaceNotInjected => "IST0102", Info,
        "A namespace is not enabled for Trellis injection.",
        "Pods created in the namespace get no trellis-proxy, so they are outside the mesh (no mutual TLS, no routing, no policy). Label it: kubectl label namespace NS trellis.dev/inject=enabled, or trellis.dev/inject=disabled to say it stays outside on purpose.";
    PodMissingProxy => "IST0103", Warning,
        "A pod in an injected namespace runs without the trellis-proxy.",
        "The pod was created before its namespace was labelled, or injection failed. It sends and receives plaintext outside the mesh, and STRICT peers refuse it. Restart the workload (kubectl rollout restart) so the injector adds the proxy.";
    SchemaValidationError => "IST0106", Error,
        "The resource has a schema validation error.",
        "The object does not pass the validator the admission webhook runs (structure, CEL rules, semantic checks): the API server or the webhook rejects it. The message names the field and what is allowed.";
    ConflictingMeshGatewayVirtualServiceHosts => "IST0109", Error,
        "Several VirtualServices bound to the mesh define the same host.",
        "Sidecars merge them in creation order, so which rules win depends on the order the objects were created in. Merge the VirtualServices into one for the host.";
    ConflictingSidecarWorkloadSelectors => "IST0110", Error,
        "Several Sidecars of a namespace select the same pod.",
        "A proxy follows one Sidecar: the oldest of those that select it; the others' egress hosts and outbound traffic policy do not apply to it. Give the Sidecars selectors that pick distinct pods, or merge them.";
    MultipleSidecarsWithoutWorkloadSelectors => "IST0111", Error,
        "A namespace has several Sidecars without a workloadSelector.",
        "At most one Sidecar per namespace may go without a selector (in the root namespace: the mesh default); proxies follow the oldest and the others do not apply. Merge them into one, or give the others selectors.";
    VirtualServiceDestinationPortSelectorRequired => "IST0112", Error,
        "A VirtualService routes to a Service with several ports without naming one.",
        "The destination is ambiguous and the route cannot be built; set destination.port.number.";
    PortNameIsNotUnderNamingConvention => "IST0118", Info,
        "A Service port's protocol cannot be told from its name or appProtocol.",
        "Name the port <protocol>[-suffix] (http, http2, grpc, tcp, tls, https...) or set appProtocol; otherwise the proxy sniffs the protocol, which delays server-first protocols and disables HTTP routing guarantees.";
    InvalidAnnotation => "IST0125", Warning,
        "A Trellis annotation has a value Trellis cannot use.",
        "The object is read as if the annotation were not there, or only its valid part is used. The message names the annotation, the value and what is allowed; fix the value or remove the annotation.";
    NoMatchingWorkloadsFound => "IST0127", Warning,
        "A policy's or Gateway's selector matches no pod.",
        "The resource selects workloads by labels and none has them, so it has no effect. Fix the selector's labels or deploy the workload.";
    NoServerCertificateVerificationDestinationLevel => "IST0128", Warning,
        "A DestinationRule originates TLS (SIMPLE or MUTUAL) without caCertificates.",
        "The server's certificate is verified only against the proxy's system roots, so any public CA can vouch for it. Set tls.caCertificates (or credentialName) in the traffic policy.";
    NoServerCertificateVerificationPortLevel => "IST0129", Warning,
        "A DestinationRule's port-level TLS (SIMPLE or MUTUAL) has no caCertificates.",
        "Traffic to that port verifies the server's certificate only against the proxy's system roots. Set tls.caCertificates in the port-level settings.";
    VirtualServiceUnreachableRule => "IST0130", Warning,
        "A VirtualService rule is never used: an earlier rule matches everything it would.",
        "Rules are tried in order and the first match wins; a rule after a catch-all, or with the same match as an earlier rule, never applies. Remove it or move it before the rule that shadows it.";
    VirtualServiceIneffectiveMatch => "IST0131", Info,
        "A match of a VirtualService rule duplicates a match of an earlier rule.",
        "The earlier rule takes every request this match would select, so this match never applies. Remove it or reorder the rules.";
    VirtualServiceHostNotFoundInGateway => "IST0132", Warning,
        "A host of a VirtualService is not served by the Gateway it is bound to.",
        "The gateway only routes requests for hosts its servers list, so the VirtualService's rules for this host are never used there. Add the host to a server of the Gateway, or remove it from the VirtualService.";
    SchemaWarning => "IST0133", Warning,
        "The resource has a schema validation warning.",
        "The object is valid but probably not what was meant; the message names the field.";
    GatewayDuplicateCertificate => "IST0138", Warning,
        "Several Gateways serve the same certificate.",
        "HTTP/2 clients reuse a connection for every host of a certificate, so requests for a host of one Gateway can reach another Gateway's listener and get 404. Give each Gateway its own certificate, or serve the hosts from one Gateway.";
    InvalidApplicationUID => "IST0144", Warning,
        "An application container runs as UID 1337, which is reserved for the proxy.",
        "Capture excludes traffic from UID 1337, so the application's traffic bypasses the proxy (no mTLS, no routing). Run the application as another user.";
    ConflictingGateways => "IST0145", Error,
        "Gateway servers with the same selector and port serve the same host.",
        "Only one of them can take the host's traffic; which one depends on creation order. Give the servers distinct hosts or ports, or merge the Gateways.";
    InvalidGatewayCredential => "IST0161", Error,
        "The credential a Gateway references is not a usable TLS Secret.",
        "The Secret named by credentialName must be of type kubernetes.io/tls with tls.crt and tls.key (and ca.crt for MUTUAL). Until it is, the server is dropped and clients get no TLS listener.";
    GatewayPortNotDefinedOnService => "IST0162", Warning,
        "A Gateway listens on a port the Service in front of its pods does not expose.",
        "Clients reaching the gateway through its Service cannot use that port. Add the port to the gateway's Service, or change the server's port.";
    DestinationRuleSubsetNotSelectPods => "IST0173", Error,
        "A DestinationRule subset selects no pod of its host.",
        "Requests routed to the subset fail with 503 (no healthy upstream). Fix the subset's labels, deploy the pods it must select, or remove it.";
    UnknownDestinationRuleHost => "IST0174", Warning,
        "A DestinationRule's host matches no Service.",
        "The policy applies to nothing. Fix the host (a short name resolves in the DestinationRule's namespace) or create the Service.";
    UnsupportedDropped => "TRL0101", Error,
        "trellis-proxy does not implement a setting, so the configuration that needs it is dropped.",
        "The compiler drops what the proxy cannot do rather than do something else silently (a match, a server, a policy, a cluster's endpoints). The message names what and where; use a supported alternative or remove the setting.";
    UnsupportedIgnored => "TRL0102", Warning,
        "trellis-proxy does not implement a setting yet; it has no effect.",
        "The rest of the resource applies, without this setting. The message names the setting.";
    VirtualServiceHostNotFound => "TRL0103", Warning,
        "A mesh VirtualService's host matches no Service or ServiceEntry.",
        "Sidecars only route hosts of Services and ServiceEntries, so the rules for this host are not used. Fix the host, or create the Service or a ServiceEntry for it.";
    VirtualServiceShadowed => "TRL0104", Warning,
        "A VirtualService's rules for a host are never used: an earlier VirtualService for the same host ends with a catch-all.",
        "VirtualServices for one host are merged in creation order; after a rule without matches nothing else is reached. Add matches to the catch-all, or merge the VirtualServices.";
    ConflictingPeerAuthentications => "TRL0105", Warning,
        "Several workload PeerAuthentications select the same pod.",
        "Only the oldest applies. Give each workload one PeerAuthentication.";
    GatewayPortProtocolConflict => "TRL0106", Error,
        "Gateway servers that cannot share a port do: a TLS server (terminated or passed through) and a plaintext one, or plaintext HTTP and plaintext TCP.",
        "One listener cannot be both; the later server is dropped. Use distinct ports.";
    ProxyConfigRejected => "TRL0107", Error,
        "A proxy rejected (NACKed) the configuration the operator pushed.",
        "The proxy keeps serving its previous configuration, so recent changes do not apply to it. The message carries the proxy's reason; fix the resource it names, or report a bug if the compiled configuration is at fault.";
    ProxyVersionSkew => "TRL0108", Warning,
        "A proxy runs a version other than the operator's.",
        "Proxies of another version may not understand every setting the operator pushes. Restart the workload to get the current proxy (or finish the rollout).";
    ProxyNotSynced => "TRL0109", Warning,
        "A proxy has not acknowledged the latest configuration.",
        "The proxy serves an older configuration, or is not connected to the operator. Check the proxy's logs and its connection to trellis-operator.trellis-system:15012.";
    RouteWithoutTimeout => "TRL0110", Warning,
        "A VirtualService rule forwards without a timeout.",
        "trellis-proxy has no default route timeout (as Istio: the request may wait as long as the destination takes), so a hung destination holds the caller's request, connection and slot until the client gives up. Set the rule's timeout (e.g. timeout: 10s), or retries.perTryTimeout with attempts, to bound it.";
    JwksUnavailable => "TRL0111", Error,
        "The key set a RequestAuthentication's jwksUri names could not be fetched.",
        "The operator fetches every jwksUri (proxies never do) and retries with backoff; until a fetch succeeds, every token of that issuer is refused with 401 (requests without a token are not affected). The message says why: the address, TLS verification, the HTTP status, the size limit, or what in the answer is no key set. Fix the URL or the server, or paste the key set inline as jwks.";
    JwksStale => "TRL0112", Warning,
        "The last refresh of a jwksUri failed; proxies keep the keys of the last successful fetch.",
        "As Istio does, a failed refresh keeps the last good key set, and the operator retries with backoff. Keys the issuer added since (a key rotation) are unknown to the proxies, so tokens signed with them get 401; after 7 days without a successful fetch the kept keys are dropped. The message says why the refresh failed.";
    ServiceEntryHostConflict => "TRL0113", Warning,
        "A ServiceEntry host is declared by an older ServiceEntry too, or is a Service's.",
        "Sidecars route each host one way: a Service's host to the Service's endpoints, a host several entries declare by the oldest entry. The other declarations of the host are not used; declare each host once.";
    PortLevelSettingsReplacePolicy => "TRL0114", Info,
        "A DestinationRule's portLevelSettings entry leaves its port without settings the rest of the destination has.",
        "As in Istio, a port's entry replaces the policy whole on that port: the loadBalancer, connectionPool, outlierDetection and tls it leaves out have their defaults there, not the rule's (or, for a subset's entry, the subset's), and the rule's retryBudget does not apply there. The message names what the port goes without; repeat those blocks in the entry if the port needs them.";
}

impl Code {
    /// `IST0101`.
    pub fn id(self) -> &'static str {
        self.definition().id
    }

    /// The level of every finding with this code.
    pub fn level(self) -> Level {
        self.definition().level
    }

    /// The code with this id (`IST0101`, case-insensitive) or name (`ReferencedResourceNotFound`).
    pub fn parse(s: &str) -> Option<Code> {
        Code::ALL.iter().copied().find(|c| {
            let d = c.definition();
            d.id.eq_ignore_ascii_case(s) || d.name.eq_ignore_ascii_case(s)
        })
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

impl Serialize for Code {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.id())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_ordered_and_well_formed() {
        let ids: Vec<&str> = Code::ALL.iter().map(|c| c.id()).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(ids, sorted, "codes must be unique and listed in id order");
        for c in Code::ALL {
            let id = c.id();
            assert!(
                (id.starts_with("IST") || id.starts_with("TRL"))
                    && id.len() == 7
                    && id[3..].chars().all(|ch| ch.is_ascii_digit()),
                "{id}"
            );
            assert_eq!(Code::parse(id), Some(*c));
            assert_eq!(Code::parse(c.definition().name), Some(*c));
        }
        assert_eq!(Code::parse("ist0101"), Some(Code::ReferencedResourceNotFound));
        assert_eq!(Code::parse("IST9999"), None);
    }

    #[test]
    fn istio_codes_keep_istio_levels() {
        assert_eq!(Code::ReferencedResourceNotFound.level(), Level::Error);
        assert_eq!(Code::NamespaceNotInjected.level(), Level::Info);
        assert_eq!(Code::ConflictingMeshGatewayVirtualServiceHosts.level(), Level::Error);
        assert_eq!(Code::VirtualServiceIneffectiveMatch.level(), Level::Info);
        assert_eq!(Code::UnknownDestinationRuleHost.level(), Level::Warning);
        assert!(Level::Error > Level::Warning && Level::Warning > Level::Info);
    }
}
