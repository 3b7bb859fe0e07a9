//! Chunked snapshots: a whole configuration is megabytes at a thousand services, and a gRPC
//! stream's message buffers (tonic's encode buffer on the sender, its decode buffer on the
//! receiver) grow to the stream's largest message and keep that memory for the stream's life.
//! With a thousand subscriptions that is gigabytes on the operator. So the operator splits a
//! snapshot's payload into messages of at most [`CHUNK_BYTES`] (`Snapshot.more` set on all but
//! the last), for proxies whose Hello says `accepts_chunks`, and the proxy reassembles them.
//!
//! # Guarantees
//! - [`Reassembly`] yields a snapshot only when its last chunk arrived; chunks of different
//!   snapshots never mix (version, base and renewal request must match); the total is capped
//!   at [`MAX_SNAPSHOT_BYTES`](crate::MAX_SNAPSHOT_BYTES).

use crate::{MAX_SNAPSHOT_BYTES, Snapshot};

/// Payload bytes per message: with the envelope (versions, gRPC header) a message fits the
/// push codec's 8 KiB buffer ([`crate::codec::BUFFER_BYTES`]), so no stream's buffer grows.
pub const CHUNK_BYTES: usize = crate::codec::BUFFER_BYTES - 512;

/// Why chunks could not be put together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    /// A chunk of another snapshot arrived before the last chunk of the one being assembled.
    #[error(
        "chunk of snapshot {got:?} arrived while snapshot {expected:?} was incomplete; the operator must finish one snapshot before the next"
    )]
    Interleaved {
        /// The snapshot being assembled.
        expected: String,
        /// The chunk's snapshot.
        got: String,
    },
    /// The chunks add up to more than the limit.
    #[error("snapshot {version:?} exceeds {limit} bytes in chunks; the proxy refuses configs that large")]
    TooLarge {
        /// The snapshot.
        version: String,
        /// The limit.
        limit: usize,
    },
}

impl Snapshot {
    /// This snapshot as messages carrying at most `size` payload bytes each (at least one
    /// message; `more` set on all but the last), made one at a time as they are taken, so a
    /// sender holds the payload once plus one chunk.
    pub fn chunks(&self, size: usize) -> impl Iterator<Item = Snapshot> + '_ {
        let size = size.max(1);
        let delta = !self.base_version.is_empty();
        let payload = if delta { &self.delta_json } else { &self.config_json };
        let count = payload.len().div_ceil(size).max(1);
        (0..count).map(move |i| {
            let part = payload
                .get(i * size..((i + 1) * size).min(payload.len()))
                .unwrap_or_default();
            Snapshot {
                version: self.version.clone(),
                renew_unless_issued_by: self.renew_unless_issued_by.clone(),
                base_version: self.base_version.clone(),
                config_json: if delta { Vec::new() } else { part.to_vec() },
                delta_json: if delta { part.to_vec() } else { Vec::new() },
                more: i + 1 < count,
            }
        })
    }

    /// [`Snapshot::chunks`], all at once.
    pub fn into_chunks(self, size: usize) -> Vec<Snapshot> {
        self.chunks(size).collect()
    }
}

/// Puts chunked snapshots back together.
#[derive(Debug, Default)]
pub struct Reassembly {
    pending: Option<Snapshot>,
}

impl Reassembly {
    /// Add a message: the whole snapshot once its last chunk arrived, `None` while more are
    /// to come. On an error the partial snapshot is dropped.
    pub fn push(&mut self, chunk: Snapshot) -> Result<Option<Snapshot>, ChunkError> {
        let whole = match self.pending.take() {
            None => chunk,
            Some(mut pending) => {
                if pending.version != chunk.version
                    || pending.base_version != chunk.base_version
                    || pending.renew_unless_issued_by != chunk.renew_unless_issued_by
                {
                    return Err(ChunkError::Interleaved {
                        expected: pending.version,
                        got: chunk.version,
                    });
                }
                if pending.config_json.len()
                    + pending.delta_json.len()
                    + chunk.config_json.len()
                    + chunk.delta_json.len()
                    > MAX_SNAPSHOT_BYTES
                {
                    return Err(ChunkError::TooLarge {
                        version: pending.version,
                        limit: MAX_SNAPSHOT_BYTES,
                    });
                }
                pending.config_json.extend_from_slice(&chunk.config_json);
                pending.delta_json.extend_from_slice(&chunk.delta_json);
                pending.more = chunk.more;
                pending
            }
        };
        if whole.more {
            self.pending = Some(whole);
            Ok(None)
        } else {
            Ok(Some(whole))
        }
    }

    /// The version of a snapshot being assembled, if any.
    pub fn pending_version(&self) -> Option<&str> {
        self.pending.as_ref().map(|p| p.version.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(version: &str, base: &str, payload: &[u8]) -> Snapshot {
        let delta = !base.is_empty();
        Snapshot {
            version: version.into(),
            base_version: base.into(),
            config_json: if delta { Vec::new() } else { payload.to_vec() },
            delta_json: if delta { payload.to_vec() } else { Vec::new() },
            renew_unless_issued_by: "abc".into(),
            more: false,
        }
    }

    #[test]
    fn chunks_round_trip_whole_configs_and_deltas() {
        let payload: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        for base in ["", "v1"] {
            let s = snapshot("v2", base, &payload);
            let chunks = s.clone().into_chunks(CHUNK_BYTES);
            assert_eq!(chunks.len(), 100_000usize.div_ceil(CHUNK_BYTES));
            assert!(
                chunks
                    .iter()
                    .all(|c| c.config_json.len() + c.delta_json.len() <= CHUNK_BYTES)
            );
            assert!(chunks[..chunks.len() - 1].iter().all(|c| c.more) && !chunks[chunks.len() - 1].more);
            let mut r = Reassembly::default();
            let mut out = None;
            for (i, c) in chunks.into_iter().enumerate() {
                assert!(out.is_none(), "complete before the last chunk ({i})");
                out = r.push(c).unwrap();
            }
            assert_eq!(out.unwrap(), s);
            assert_eq!(r.pending_version(), None);
        }
        // Small snapshots stay one message.
        let small = snapshot("v3", "", b"{}");
        assert_eq!(small.clone().into_chunks(CHUNK_BYTES), vec![small.clone()]);
        assert_eq!(Reassembly::default().push(small.clone()).unwrap(), Some(small));
    }

    #[test]
    fn chunks_of_different_snapshots_do_not_mix() {
        let a = snapshot("v2", "", &[b'a'; 40_000]).into_chunks(CHUNK_BYTES);
        let b = snapshot("v3", "", &[b'b'; 40_000]).into_chunks(CHUNK_BYTES);
        let mut r = Reassembly::default();
        assert_eq!(r.push(a[0].clone()).unwrap(), None);
        assert_eq!(r.pending_version(), Some("v2"));
        let err = r.push(b[0].clone()).unwrap_err();
        assert!(
            err.to_string().contains("\"v3\" arrived while snapshot \"v2\""),
            "{err}"
        );
        // The partial one is dropped; the next snapshot assembles cleanly.
        assert_eq!(r.pending_version(), None);
        let mut out = None;
        for c in b {
            out = r.push(c).unwrap();
        }
        assert_eq!(out.unwrap().config_json, vec![b'b'; 40_000]);
    }

    #[test]
    fn reassembly_is_bounded() {
        let mut r = Reassembly::default();
        let mut chunk = snapshot("v9", "", &vec![0u8; 1 << 20]);
        chunk.more = true;
        let mut result = Ok(None);
        for _ in 0..(MAX_SNAPSHOT_BYTES >> 20) + 2 {
            result = r.push(chunk.clone());
            if result.is_err() {
                break;
            }
        }
        assert!(matches!(result, Err(ChunkError::TooLarge { .. })), "{result:?}");
        assert_eq!(r.pending_version(), None);
    }
}
