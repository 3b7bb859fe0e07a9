//! Peer metadata for opaque TCP: how an inbound proxy learns which workload
//! opened a mesh TCP connection, which carries no request header (Istio's TCP
//! metadata exchange, `istio-peer-exchange`, does the same).
//!
//! The client proxy offers the ALPN protocol [`ALPN`] on the mesh mTLS
//! connections it opens for opaque TCP; a server proxy that selects it reads a
//! preamble before any application byte: [`MAGIC`], a big-endian `u16`
//! length, then the sender's metadata in [`crate::peer_metadata`]'s encoding.
//! The server believes it under the same rule as the HTTP header (only on a
//! verified connection, only when the claimed namespace is the identity's).
//!
//! Compatibility: a server that does not know [`ALPN`] refuses a client that
//! offers only it (TLS `no_application_protocol`); the client then connects
//! again without it and remembers, per endpoint, to stop offering it
//! ([`crate::upstream`]). The connection's labels then say `unknown`, as before.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The ALPN protocol that announces the preamble.
pub const ALPN: &[u8] = b"trellis-peer-exchange";
/// The preamble's first bytes.
pub const MAGIC: &[u8; 4] = b"TPX1";

/// Why a preamble could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// The client sent something else first.
    #[error("the connection does not start with a peer metadata preamble")]
    BadMagic,
    /// Longer than any real metadata.
    #[error("peer metadata of {0} bytes is over the {max} byte limit", max = crate::peer_metadata::MAX_LEN)]
    TooLong(usize),
    /// The client was too slow.
    #[error("no peer metadata preamble within {0:?}")]
    Timeout(Duration),
    /// The connection failed or closed.
    #[error("reading the peer metadata preamble: {0}")]
    Io(#[from] std::io::Error),
}

/// Writes the preamble carrying `metadata` (a [`crate::peer_metadata`] value).
pub async fn send<W: AsyncWrite + Unpin>(io: &mut W, metadata: &[u8]) -> std::io::Result<()> {
    let len = u16::try_from(metadata.len())
        .ok()
        .filter(|n| usize::from(*n) <= crate::peer_metadata::MAX_LEN)
        .ok_or_else(|| std::io::Error::other("peer metadata too long to send"))?;
    let mut buf = Vec::with_capacity(MAGIC.len() + 2 + metadata.len());
    buf.extend_from_slice(MAGIC);
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(metadata);
    io.write_all(&buf).await?;
    io.flush().await
}

/// Reads the preamble within `timeout`; the metadata value it carries (not
/// yet believed: see [`crate::peer_metadata::verified`]).
pub async fn receive<R: AsyncRead + Unpin>(io: &mut R, timeout: Duration) -> Result<Vec<u8>, ExchangeError> {
    let read = async {
        let mut head = [0u8; 6];
        io.read_exact(&mut head).await?;
        if &head[..4] != MAGIC {
            return Err(ExchangeError::BadMagic);
        }
        let len = usize::from(u16::from_be_bytes([head[4], head[5]]));
        if len > crate::peer_metadata::MAX_LEN {
            return Err(ExchangeError::TooLong(len));
        }
        let mut value = vec![0u8; len];
        io.read_exact(&mut value).await?;
        Ok(value)
    };
    tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| ExchangeError::Timeout(timeout))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn round_trip_and_the_bytes_after_it_are_untouched() {
        let (mut a, mut b) = tokio::io::duplex(4096);
        send(&mut a, b"w=web;n=shop").await.unwrap();
        a.write_all(b"app bytes").await.unwrap();
        let value = receive(&mut b, Duration::from_secs(1)).await.unwrap();
        assert_eq!(value, b"w=web;n=shop");
        let mut rest = [0u8; 9];
        b.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"app bytes");
    }

    #[tokio::test]
    async fn garbage_oversize_and_silence_are_refused() {
        let (mut a, mut b) = tokio::io::duplex(4096);
        a.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        assert!(matches!(
            receive(&mut b, Duration::from_secs(1)).await,
            Err(ExchangeError::BadMagic)
        ));
        let (mut a, mut b) = tokio::io::duplex(4096);
        a.write_all(b"TPX1\xff\xff").await.unwrap();
        assert!(matches!(
            receive(&mut b, Duration::from_secs(1)).await,
            Err(ExchangeError::TooLong(65535))
        ));
        let (_a, mut b) = tokio::io::duplex(4096);
        assert!(matches!(
            receive(&mut b, Duration::from_millis(20)).await,
            Err(ExchangeError::Timeout(_))
        ));
        let long = vec![b'x'; crate::peer_metadata::MAX_LEN + 1];
        assert!(send(&mut tokio::io::sink(), &long).await.is_err());
    }
}
