//! HTTP `CONNECT` tunnels on an outbound listener (explicit proxying: `HTTPS_PROXY`,
//! `curl -x` to an `https://` URL), as Envoy's CONNECT termination does: the target
//! (`host:port`, authority-form only) is routed like any request to that authority — a
//! virtual host's forwarding route, else a TCP route taking that port and server name, else
//! the listener's unrouted traffic (passthrough: the address the host resolves to;
//! REGISTRY_ONLY: 502; otherwise 404) —, the upstream connection is made (mesh mTLS to a mesh
//! cluster, as its TCP traffic) and only then answered `200`, after which the bytes are
//! spliced both ways with the listener's TCP idle timeout and counted in the TCP series.
//! A tunnel to any port the proxy listens on (its traffic listeners — the capture ones and
//! this one included —, admin, stats, health, DNS, as bound) on any local address of the pod
//! (loopback, `0.0.0.0`, the pod IP, every other address of its interfaces: a server bound to
//! `0.0.0.0` answers on each of them) is refused with 403.

use super::forward::weighted_choice;
use super::{ConnContext, RequestOutcome, text};
use crate::request_body::DrainOnDrop;
use crate::routing::RequestView;
use crate::runtime::Runtime;
use crate::snapshot::{ListenerRuntime, PASSTHROUGH_CLUSTER, Snapshot};
use crate::upstream::Body;
use http::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use trellis_contract::{RouteAction, Unrouted};

/// How long the target's name is looked up for (`/etc/resolv.conf`'s resolvers).
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest DNS name (RFC 1035).
const MAX_HOST_BYTES: usize = 253;

/// Where a `CONNECT` goes: its target's host (lowercase; an IPv6 literal without brackets)
/// and port.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Target {
    host: String,
    port: u16,
}

/// Parses a `CONNECT` request target: authority-form `host:port` only (RFC 9110 §9.3.6), no
/// user info, a port from 1 to 65535, a DNS name of letters, digits, `-` and `.` or an IP
/// literal (IPv6 in brackets).
pub(super) fn parse_target(req: &Request<DrainOnDrop>) -> Result<Target, &'static str> {
    let uri = req.uri();
    if uri.scheme().is_some() || uri.path_and_query().is_some_and(|p| !p.as_str().is_empty() && p != "/") {
        return Err("CONNECT target must be authority-form host:port, without scheme or path\n");
    }
    let Some(authority) = uri.authority() else {
        return Err("CONNECT target must be authority-form host:port\n");
    };
    if authority.as_str().contains('@') {
        return Err("CONNECT target must not carry user info\n");
    }
    let port = match authority.port_u16() {
        Some(0) | None => return Err("CONNECT target needs a port from 1 to 65535 (host:port)\n"),
        Some(p) => p,
    };
    let host = authority.host();
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return match v6.parse::<std::net::Ipv6Addr>() {
            Ok(ip) => Ok(Target {
                host: ip.to_string(),
                port,
            }),
            Err(_) => Err("CONNECT target's IPv6 literal is not an address\n"),
        };
    }
    let name_ok = !host.is_empty()
        && host.len() <= MAX_HOST_BYTES
        && host
            .split('.')
            .all(|l| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    if !name_ok {
        return Err("CONNECT target's host is not a DNS name or IP address\n");
    }
    Ok(Target {
        host: host.to_ascii_lowercase(),
        port,
    })
}

impl Target {
    /// The address the host names (an IP literal, else the first address it resolves to).
    async fn resolve(&self) -> Option<SocketAddr> {
        if let Ok(ip) = self.host.parse::<IpAddr>() {
            return Some(SocketAddr::new(ip, self.port));
        }
        let lookup = tokio::net::lookup_host((self.host.as_str(), self.port));
        match tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await {
            Ok(Ok(mut addrs)) => addrs.next(),
            _ => None,
        }
    }

    /// The authority as a virtual host sees it (an IPv6 literal in brackets).
    fn route_host(&self) -> String {
        match self.host.contains(':') {
            true => format!("[{}]", self.host),
            false => self.host.clone(),
        }
    }
}

/// Whether `addr` is a port this proxy listens on (`listens_on`) on an address of this pod
/// (`is_local`) — a loop through a listener, or a way into admin or health. The port alone
/// decides where the proxy is bound: a server on `0.0.0.0` answers on every local address, and
/// one bound to a single address has the port for itself anyway.
fn is_own(addr: SocketAddr, listens_on: impl Fn(u16) -> bool, is_local: impl Fn(IpAddr) -> bool) -> bool {
    listens_on(addr.port()) && is_local(addr.ip().to_canonical())
}

/// Whether `ip` is an address of this host (the pod's network namespace): loopback, `0.0.0.0`
/// or `::`, or one the kernel lets a socket bind to — which it allows for local addresses only:
/// every interface's, and those of local routes.
// why: asking the kernel covers addresses added after start and needs no interface listing;
// a host with `ip_nonlocal_bind` set would have every address count as local, so only
// tunnels to the proxy's own port numbers on other hosts would be refused too.
fn is_local(ip: IpAddr) -> bool {
    ip.is_loopback() || ip.is_unspecified() || std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

/// Answers a `CONNECT` on an outbound listener: routes its target, connects, answers `200`
/// and splices the tunnel in a task of its own.
pub(super) async fn tunnel(
    rt: &Arc<Runtime>,
    snap: &Arc<Snapshot>,
    listener: &Arc<ListenerRuntime>,
    conn: &Arc<ConnContext>,
    req: Request<DrainOnDrop>,
    out: &mut RequestOutcome,
) -> Response<Body> {
    let target = match parse_target(&req) {
        Ok(t) => t,
        Err(why) => {
            rt.metrics.downstream_rejected();
            out.flags = "DPE";
            return text(StatusCode::BAD_REQUEST, why);
        }
    };
    let host = target.route_host();
    let view = RequestView {
        method: "CONNECT",
        path: "/",
        query: None,
        host: &host,
        port: target.port,
        headers: req.headers(),
    };
    let routed = match listener.routes.route(&view).map(|hit| Arc::clone(&hit.route)) {
        Some(route) => match &route.spec.action {
            RouteAction::Forward(f) => Some(f.clusters[weighted_choice(f)].cluster.clone()),
            _ => {
                out.flags = "NR";
                return text(
                    StatusCode::METHOD_NOT_ALLOWED,
                    &format!(
                        "CONNECT {host}:{}: the route for this host answers itself (redirect or direct response); only a forwarding route can be tunnelled\n",
                        target.port
                    ),
                );
            }
        },
        None => None,
    };
    let addr = target.resolve().await;
    if let Some(a) = addr
        && is_own(a, |p| rt.listens_on(p), is_local)
    {
        rt.metrics.downstream_rejected();
        out.flags = "DPE";
        return text(
            StatusCode::FORBIDDEN,
            "CONNECT to the proxy's own ports (listeners, admin, stats, health, DNS) is refused\n",
        );
    }
    let cluster_name = match routed {
        Some(name) => name,
        None => {
            let tcp = addr.and_then(|a| listener.tcp_cluster(a, Some(&target.host), false));
            match (tcp, listener.spec.unrouted) {
                (Some(name), _) => name.to_string(),
                (None, Unrouted::Passthrough) => PASSTHROUGH_CLUSTER.to_string(),
                (None, Unrouted::BlackHole) => {
                    out.flags = "NR";
                    return text(
                        StatusCode::BAD_GATEWAY,
                        "no route: the host is not in the mesh's registry (outboundTrafficPolicy REGISTRY_ONLY)\n",
                    );
                }
                (None, Unrouted::NotFound) => {
                    out.flags = "NR";
                    return text(StatusCode::NOT_FOUND, "no route\n");
                }
            }
        }
    };
    let Some(cluster) = snap.clusters.get(&cluster_name).cloned() else {
        out.flags = "NC";
        return text(StatusCode::SERVICE_UNAVAILABLE, "no cluster\n");
    };
    // Endpoints found at run time: resolved names, or (passthrough, resolution NONE) the
    // address the target names.
    let Some(cluster) = crate::discovery::target(&cluster, addr).await else {
        out.flags = "UH";
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!(
                "CONNECT {host}:{}: the host does not resolve to an address\n",
                target.port
            ),
        );
    };
    out.cluster = Some(Arc::clone(&cluster));
    let ctx = ConnContext {
        dst: addr.unwrap_or(conn.dst),
        ..ConnContext::clone(conn)
    };
    let (upstream, endpoint) = crate::tcp::connect(rt, snap, &cluster, &ctx).await;
    out.endpoint = endpoint;
    let Some(upstream) = upstream else {
        out.flags = "UF";
        return text(StatusCode::SERVICE_UNAVAILABLE, "upstream connect error\n");
    };
    let on_upgrade = hyper::upgrade::on(req);
    let (rt, snap, listener) = (Arc::clone(rt), Arc::clone(snap), Arc::clone(listener));
    // The tunnel is a request in flight on the client's connection until it closes.
    let request = conn.requests.begin();
    tokio::spawn(async move {
        let _request = request;
        match on_upgrade.await {
            Ok(upgraded) => {
                let downstream = TokioIo::new(upgraded);
                crate::tcp::splice(
                    &rt,
                    &snap,
                    &listener,
                    &ctx,
                    &cluster,
                    endpoint,
                    Some(upstream),
                    downstream,
                    None,
                )
                .await;
            }
            Err(e) => tracing::debug!(listener = %ctx.listener, error = %e, "CONNECT tunnel not established"),
        }
    });
    Response::new(super::full(bytes::Bytes::new()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_ports_on_any_local_address_are_refused() {
        let own = |p: u16| [15000, 15021, 39001].contains(&p);
        let pod_ips = |ip: IpAddr| is_local(ip) || ip == "10.0.0.5".parse::<IpAddr>().unwrap();
        for local in [
            "127.0.0.1:15000",
            "0.0.0.0:15021",
            "[::1]:39001",
            "[::ffff:127.0.0.1]:15000",
        ] {
            assert!(is_own(local.parse().unwrap(), own, is_local), "{local}");
        }
        // The pod IP, whichever address the client reached the listener at.
        assert!(is_own("10.0.0.5:15021".parse().unwrap(), own, pod_ips));
        assert!(!is_own("10.0.0.6:15000".parse().unwrap(), own, pod_ips));
        assert!(!is_own("127.0.0.1:8443".parse().unwrap(), own, pod_ips));
    }

    #[test]
    fn the_kernel_says_which_addresses_are_local() {
        assert!(is_local("127.0.0.1".parse().unwrap()));
        assert!(is_local("127.9.9.9".parse().unwrap()));
        assert!(is_local("0.0.0.0".parse().unwrap()));
        // TEST-NET-3 (RFC 5737) is no interface's address.
        assert!(!is_local("203.0.113.7".parse().unwrap()));
    }
}
