//! A cluster as run-time discovery ([`crate::discovery`]) sees it: the runtimes a `dns` or
//! `originalDestination` cluster hands out are the same cluster over the endpoints found,
//! static, sharing its circuit breakers.

use super::{ClusterError, ClusterRuntime};
use crate::discovery::{Discovered, DiscoveryState};
use crate::identity::WorkloadIdentity;
use std::sync::Arc;
use trellis_contract::{Cluster, Discovery, Endpoint};

impl Discovered for ClusterRuntime {
    type Error = ClusterError;

    fn spec(&self) -> &Cluster {
        &self.spec
    }

    fn discovery(&self) -> Option<&DiscoveryState<Self>> {
        self.discovery.as_deref()
    }

    fn over(
        &self,
        endpoints: Vec<Endpoint>,
        identity: Option<&WorkloadIdentity>,
        local_cluster: &str,
    ) -> Result<Self, ClusterError> {
        let spec = Cluster {
            discovery: Discovery::Static,
            endpoints,
            ..self.spec.clone()
        };
        let mut rt = ClusterRuntime::build(spec, identity, local_cluster)?;
        rt.circuit = Arc::clone(&self.circuit);
        Ok(rt)
    }
}
