//! TCP keepalive on upstream sockets (a DestinationRule's `connectionPool.tcp.tcpKeepalive`,
//! Envoy's `upstream_connection_options.tcp_keepalive`): `SO_KEEPALIVE` with `TCP_KEEPIDLE`,
//! `TCP_KEEPINTVL` and `TCP_KEEPCNT` where given, the system's values where not.

use std::time::Duration;
use tokio::net::TcpStream;
use trellis_contract::TcpKeepalive;

/// Turn keepalive on for `tcp` as `ka` says.
pub(super) fn apply(tcp: &TcpStream, ka: &TcpKeepalive) -> std::io::Result<()> {
    let sock = socket2::SockRef::from(tcp);
    let mut params = socket2::TcpKeepalive::new();
    if let Some(s) = ka.time_secs {
        params = params.with_time(Duration::from_secs(u64::from(s)));
    }
    if let Some(s) = ka.interval_secs {
        params = params.with_interval(Duration::from_secs(u64::from(s)));
    }
    if let Some(n) = ka.probes {
        params = params.with_retries(n);
    }
    // Sets SO_KEEPALIVE, then each option given.
    sock.set_tcp_keepalive(&params)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn pair() -> (TcpStream, tokio::net::TcpListener) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        (tcp, l)
    }

    #[tokio::test]
    async fn the_options_given_are_set_on_the_socket() {
        let (tcp, _l) = pair().await;
        let sock = socket2::SockRef::from(&tcp);
        assert!(!sock.keepalive().unwrap(), "off by default");
        let ka = TcpKeepalive {
            time_secs: Some(7),
            interval_secs: Some(3),
            probes: Some(4),
        };
        apply(&tcp, &ka).unwrap();
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.tcp_keepalive_time().unwrap(), Duration::from_secs(7));
        assert_eq!(sock.tcp_keepalive_interval().unwrap(), Duration::from_secs(3));
        assert_eq!(sock.tcp_keepalive_retries().unwrap(), 4);
    }

    #[tokio::test]
    async fn unset_options_keep_the_systems_values() {
        let (reference, _l) = pair().await;
        let (tcp, _l2) = pair().await;
        apply(&tcp, &TcpKeepalive::default()).unwrap();
        let (sock, system) = (socket2::SockRef::from(&tcp), socket2::SockRef::from(&reference));
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.tcp_keepalive_time().unwrap(), system.tcp_keepalive_time().unwrap());
        assert_eq!(
            sock.tcp_keepalive_interval().unwrap(),
            system.tcp_keepalive_interval().unwrap()
        );
        assert_eq!(
            sock.tcp_keepalive_retries().unwrap(),
            system.tcp_keepalive_retries().unwrap()
        );
    }
}
