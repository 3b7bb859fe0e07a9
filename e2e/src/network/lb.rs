//! LoadBalancer Services (placeholder until the listeners land).

use std::sync::Arc;

use tokio::sync::watch;

use super::PodNetwork;
use crate::cluster::Cluster;

/// Serves LoadBalancer Services until `stop`.
pub async fn run(_net: Arc<PodNetwork>, _cluster: Arc<Cluster>, _stop: watch::Receiver<bool>) {}
