//! The cluster DNS server (placeholder until the server lands).

use std::sync::Arc;

use super::PodNetwork;
use crate::cluster::Cluster;

/// Starts the DNS server in the node namespace.
pub fn start(_net: &Arc<PodNetwork>, _cluster: Arc<Cluster>) -> Result<(), String> {
    Ok(())
}
