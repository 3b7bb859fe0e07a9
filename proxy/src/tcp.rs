//! Opaque TCP proxying: route by original destination, pick an endpoint,
//! connect (plaintext or mesh mTLS) and copy bytes both ways, counting them.

use crate::http::ConnContext;
use crate::metrics::{ConnLabels, Peer};
use crate::runtime::Runtime;
use crate::snapshot::{ListenerRuntime, Snapshot};
use crate::stream::DownstreamStream;
use crate::upstream::ClusterRuntime;
use std::sync::Arc;
use std::time::Instant;
use trellis_contract::{ListenerDirection, UpstreamTls};

/// Proxy one TCP connection to the cluster its TCP route names.
pub async fn proxy(
    rt: Arc<Runtime>,
    snap: Arc<Snapshot>,
    listener: Arc<ListenerRuntime>,
    ctx: ConnContext,
    downstream: DownstreamStream,
) {
    let Some(cluster_name) = listener.tcp_cluster(ctx.dst) else {
        tracing::debug!(listener = %ctx.listener, dst = %ctx.dst, "no TCP route; closing");
        return;
    };
    let Some(cluster) = snap.clusters.get(cluster_name).cloned() else {
        return;
    };
    let labels = labels(&snap, &ctx, &cluster);
    rt.metrics.tcp_opened(&labels);
    let mut tried = Vec::new();
    let mut upstream = None;
    // One try per endpoint at most, bounded by the endpoint count and 3.
    for _ in 0..cluster.endpoints.len().min(3) {
        let Some(idx) = cluster.pick(
            Some(ClusterRuntime::hash_key(ctx.peer.ip().to_string().as_bytes())),
            &tried,
            Instant::now(),
        ) else {
            break;
        };
        tried.push(idx);
        match cluster
            .connect(&cluster.endpoints[idx], crate::upstream::ConnProtocol::Opaque)
            .await
        {
            Ok(io) => {
                upstream = Some(io.into_inner());
                break;
            }
            Err(e) => {
                tracing::debug!(cluster = %cluster.spec.name, error = %e, "TCP upstream connect failed");
                if matches!(e, crate::upstream::UpstreamError::TlsHandshake { .. }) {
                    rt.metrics.upstream_tls_failed(&cluster.spec.name);
                }
                cluster.record(idx, crate::upstream::Outcome::LocalFailure, Instant::now());
            }
        }
    }
    // Bytes in either direction pass through the downstream side, so its idle
    // clock is the connection's.
    let idle = (listener.spec.limits.tcp_idle_timeout_ms > 0)
        .then(|| std::time::Duration::from_millis(listener.spec.limits.tcp_idle_timeout_ms));
    let mut downstream = crate::idle::IdleIo::new(downstream, idle);
    let (sent, received) = match upstream {
        Some(mut up) => match tokio::io::copy_bidirectional(&mut downstream, &mut up).await {
            Ok((from_client, from_server)) => (from_server, from_client),
            Err(e) => {
                tracing::debug!(error = %e, "TCP proxy ended with error");
                (0, 0)
            }
        },
        None => (0, 0),
    };
    rt.metrics.tcp_closed(&labels, sent, received);
}

fn labels(snap: &Snapshot, ctx: &ConnContext, cluster: &ClusterRuntime) -> ConnLabels {
    let mesh = matches!(cluster.spec.tls, UpstreamTls::Mesh { .. });
    match ctx.direction {
        ListenerDirection::Inbound => ConnLabels {
            reporter: "destination",
            source: Arc::new(Peer {
                principal: ctx.peer_identity.clone().unwrap_or_default(),
                ..Default::default()
            }),
            destination: Arc::clone(&snap.node),
            destination_service: Arc::clone(&cluster.service_label),
            connection_security_policy: if ctx.peer_identity.is_some() {
                "mutual_tls"
            } else {
                "none"
            },
        },
        _ => ConnLabels {
            reporter: "source",
            source: Arc::clone(&snap.node),
            destination: Arc::default(),
            destination_service: Arc::clone(&cluster.service_label),
            connection_security_policy: if mesh { "mutual_tls" } else { "none" },
        },
    }
}
