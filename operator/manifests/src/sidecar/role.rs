//! Which containers are Trellis proxies, and in which role: told from the pods the manifests
//! make, in one place. A sidecar is the container `trellis-proxy` that [`super::inject`] adds;
//! a gateway is the container `gateway` of [`super::gateway_pod_template`], started with
//! `TRELLIS_ROLE=gateway`. The role is what the proxy announces when it subscribes to the
//! operator's push API (its Hello), so the push API and the operator's view of the data plane
//! read roles with [`ProxyRole::parse`], and pods with [`proxy_in`].

use k8s_openapi::api::core::v1::{Container, PodSpec};

/// The environment variable that starts a proxy in its role; the proxy announces it to the
/// operator when it subscribes.
pub const ROLE_ENV: &str = "TRELLIS_ROLE";
/// The proxy container of a gateway pod.
pub const GATEWAY_CONTAINER: &str = "gateway";

/// What a Trellis proxy does in its pod. Every proxy the operator pushes configuration to and
/// signs certificates for runs in one of these roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProxyRole {
    /// Beside a workload: the injected container `trellis-proxy`.
    Sidecar,
    /// An ingress gateway: the container `gateway`.
    Gateway,
}

impl ProxyRole {
    /// As [`ROLE_ENV`] and the push API's Hello name it.
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyRole::Sidecar => "sidecar",
            ProxyRole::Gateway => "gateway",
        }
    }

    /// The role a proxy announces; an empty one is a sidecar's (proxies that predate roles say
    /// none, and the proxy's own default is `sidecar`).
    pub fn parse(s: &str) -> Option<ProxyRole> {
        match s {
            "sidecar" | "" => Some(ProxyRole::Sidecar),
            "gateway" => Some(ProxyRole::Gateway),
            _ => None,
        }
    }

    /// The container the pods Trellis makes run this proxy in.
    pub fn container(self) -> &'static str {
        match self {
            ProxyRole::Sidecar => super::PROXY_CONTAINER,
            ProxyRole::Gateway => GATEWAY_CONTAINER,
        }
    }
}

/// The container of `spec` that runs a Trellis proxy (a native sidecar is an init container),
/// and its role: a container named as [`ProxyRole::container`] says for the role its
/// [`ROLE_ENV`] gives (none: a sidecar). A user's own container named `gateway` without that
/// role is not a proxy, nor is a container of another name whatever its environment.
pub fn proxy_in(spec: &PodSpec) -> Option<(ProxyRole, &Container)> {
    spec.init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .find_map(|c| {
            let role = match c.env.iter().flatten().find(|e| e.name == ROLE_ENV) {
                Some(e) => ProxyRole::parse(e.value.as_deref().unwrap_or_default())?,
                None => ProxyRole::Sidecar,
            };
            (c.name == role.container()).then_some((role, c))
        })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::install::Options;
    use crate::sidecar::{Settings, gateway_pod_template, inject};

    fn spec(v: serde_json::Value) -> PodSpec {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn the_proxies_the_manifests_make_are_told_with_their_role() {
        let settings = Settings::new(&Options::default());
        let gateway = gateway_pod_template("trellis-ingressgateway", &settings, &[8080]);
        let (role, c) = proxy_in(gateway.spec.as_ref().unwrap()).expect("a gateway's proxy");
        assert_eq!((role, c.name.as_str()), (ProxyRole::Gateway, GATEWAY_CONTAINER));

        let mut meshed: k8s_openapi::api::core::v1::PodTemplateSpec = serde_json::from_value(json!({
            "spec": {"containers": [{"name": "web", "image": "web"}]}
        }))
        .unwrap();
        inject(&mut meshed, &settings).unwrap();
        let (role, c) = proxy_in(meshed.spec.as_ref().unwrap()).expect("an injected sidecar");
        assert_eq!(
            (role, c.name.as_str()),
            (ProxyRole::Sidecar, super::super::PROXY_CONTAINER)
        );

        // A sidecar written before proxies had roles.
        let old = spec(
            json!({"initContainers": [{"name": "trellis-proxy", "image": "proxy:1"}],
                              "containers": [{"name": "app", "image": "app"}]}),
        );
        assert_eq!(proxy_in(&old).map(|(r, _)| r), Some(ProxyRole::Sidecar));
    }

    #[test]
    fn other_containers_are_not_proxies_whatever_their_name_or_environment() {
        let user_gateway = spec(json!({"containers": [{"name": "gateway", "image": "nginx"}]}));
        assert!(proxy_in(&user_gateway).is_none());
        let role_elsewhere = spec(json!({"containers": [{"name": "app", "image": "app",
                                                         "env": [{"name": ROLE_ENV, "value": "gateway"}]}]}));
        assert!(proxy_in(&role_elsewhere).is_none());
        let unknown_role = spec(json!({"containers": [{"name": "trellis-proxy", "image": "proxy",
                                                       "env": [{"name": ROLE_ENV, "value": "waypoint"}]}]}));
        assert!(proxy_in(&unknown_role).is_none());
        assert_eq!(ProxyRole::parse(""), Some(ProxyRole::Sidecar));
        assert_eq!(ProxyRole::parse("waypoint"), None);
        for role in [ProxyRole::Sidecar, ProxyRole::Gateway] {
            assert_eq!(ProxyRole::parse(role.as_str()), Some(role));
        }
    }
}
