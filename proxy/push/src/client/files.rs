//! The identity directory's files (chain, key, trust bundle): each replaced atomically (write,
//! fsync, rename), and a set of them replaced under [`IdentityFiles`]' write lock, so that a
//! reader holding its read lock never pairs a new key with the old chain. Without the set lock a
//! config applied between the key's rename and the chain's (seconds apart when fsync is slow)
//! was refused with `KeyMismatch` and NACKed.

use std::path::Path;
use std::sync::Arc;

use tokio::sync::{RwLock, RwLockReadGuard};

use super::{ClientError, io};

/// The lock over one identity directory. The writer ([`super::obtain_certificate`], the
/// pushed trust bundle) replaces files under it; whoever reads files that must agree (the
/// chain and its key: the proxy loading its certificate, the subscription's client identity)
/// holds [`IdentityFiles::read`] meanwhile. Clones share the lock.
#[derive(Debug, Clone, Default)]
pub struct IdentityFiles(Arc<RwLock<()>>);

impl IdentityFiles {
    /// Hold while reading several identity files: no replacement happens meanwhile.
    pub async fn read(&self) -> RwLockReadGuard<'_, ()> {
        self.0.read().await
    }

    /// Replace `files` (name, content, private) in `dir`, as one set for readers.
    pub(super) async fn replace(
        &self,
        dir: &Path,
        files: Vec<(&'static str, String, bool)>,
    ) -> Result<(), ClientError> {
        let _set = self.0.write().await;
        write_files(dir, files).await
    }
}

/// Write `content` to `dir/name` atomically, readable only by the owner when `private`.
fn write_atomic(dir: &Path, name: &str, content: &str, private: bool) -> Result<(), ClientError> {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    {
        use std::io::Write;
        let mut f = opts.open(&tmp).map_err(io(&tmp))?;
        f.write_all(content.as_bytes()).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
    }
    std::fs::rename(&tmp, &path).map_err(io(&path))
}

/// Write files with [`write_atomic`] on a blocking thread, in order: each is fsynced, which
/// can take seconds on a busy disk, and the proxy's data path shares the runtime (one worker
/// thread by default) — it must never wait for the disk.
async fn write_files(dir: &Path, files: Vec<(&'static str, String, bool)>) -> Result<(), ClientError> {
    let dir = dir.to_path_buf();
    let failed = dir.clone();
    tokio::task::spawn_blocking(move || {
        for (name, content, private) in files {
            write_atomic(&dir, name, &content, private)?;
        }
        Ok(())
    })
    .await
    .unwrap_or_else(|e| {
        Err(ClientError::Io {
            path: failed,
            source: std::io::Error::other(e.to_string()),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::KEY_FILE;

    #[test]
    fn files_are_replaced_atomically_and_keys_are_private() {
        let dir = tempfile::tempdir().unwrap();
        write_atomic(dir.path(), KEY_FILE, "secret", true).unwrap();
        write_atomic(dir.path(), KEY_FILE, "secret2", true).unwrap();
        assert_eq!(std::fs::read_to_string(dir.path().join(KEY_FILE)).unwrap(), "secret2");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(!dir.path().join(format!(".{KEY_FILE}.tmp")).exists());
    }

    /// A reader holding the read lock always finds a key and chain of the same generation,
    /// however the writer's fsyncs and renames interleave with it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reader_never_pairs_a_new_key_with_the_old_chain() {
        use crate::client::CERT_CHAIN_FILE;
        let dir = tempfile::tempdir().unwrap();
        let files = IdentityFiles::default();
        let generation = |i: u32| {
            vec![
                (KEY_FILE, format!("key {i}"), true),
                (CERT_CHAIN_FILE, format!("chain {i}"), false),
            ]
        };
        files.replace(dir.path(), generation(0)).await.unwrap();
        let writer = {
            let (files, dir) = (files.clone(), dir.path().to_path_buf());
            tokio::spawn(async move {
                for i in 1..=100 {
                    files.replace(&dir, generation(i)).await.unwrap();
                }
            })
        };
        let mut reads = 0;
        while !writer.is_finished() {
            let (key, chain) = {
                let _set = files.read().await;
                let read = |name| std::fs::read_to_string(dir.path().join(name)).unwrap();
                (read(KEY_FILE), read(CERT_CHAIN_FILE))
            };
            assert_eq!(key.strip_prefix("key "), chain.strip_prefix("chain "), "read {reads}");
            reads += 1;
            tokio::task::yield_now().await;
        }
        writer.await.unwrap();
        assert!(reads > 0);
    }
}
