//! Configuration from a file: load (JSON or YAML), and watch for changes
//! (polling plus SIGHUP), applying each new version through [`App::apply`]
//! so an invalid file is rejected and the last good config stays.

use crate::app::{App, off_runtime_thread};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use trellis_contract::ProxyConfig;

/// Errors loading a config file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Unreadable file.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Not a valid contract document.
    #[error("config file {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The `version` the document declares, when it has a readable one.
        version: Option<String>,
        /// Cause.
        #[source]
        source: trellis_contract::ParseError,
    },
}

impl ConfigError {
    /// The version of the refused document, when known.
    pub fn version(&self) -> Option<&str> {
        match self {
            Self::Read { .. } => None,
            Self::Parse { version, .. } => version.as_deref(),
        }
    }
}

/// The `version` a document declares, read loosely: the document may not be
/// a valid config (YAML 1.2 reads JSON too).
fn declared_version(text: &str) -> Option<String> {
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).ok()?;
    doc.get("version")?.as_str().map(str::to_string)
}

/// Read and parse a config file (validation happens on apply).
pub fn load_file(path: &Path) -> Result<ProxyConfig, ConfigError> {
    parse(path, std::fs::read(path))
}

/// Parse the bytes read from `path` (or say why they could not be read).
fn parse(path: &Path, bytes: std::io::Result<Vec<u8>>) -> Result<ProxyConfig, ConfigError> {
    let read_error = |source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    };
    let text = String::from_utf8(bytes.map_err(read_error)?)
        .map_err(|e| read_error(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
    ProxyConfig::parse(&text).map_err(|source| ConfigError::Parse {
        path: path.to_path_buf(),
        version: declared_version(&text),
        source,
    })
}

/// Re-apply the file whenever its contents change (checked every `interval`)
/// or on SIGHUP. A file that cannot be read or parsed is rejected like one
/// that does not validate ([`App::reject`]). Runs until the task is dropped.
///
/// Each check looks at the file's metadata first and reads it only when that changed, or
/// while the file changed too recently for its metadata to tell ([`Seen::settled`]); SIGHUP
/// reads it whatever its metadata says.
pub async fn watch_file(app: &App, path: &Path, interval: Duration) {
    let mut last = {
        let path = path.to_path_buf();
        off_runtime_thread(move || observe(&path, SystemTime::now(), |p| std::fs::read(p)).0).await
    };
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        let forced = tokio::select! {
            _ = tokio::time::sleep(interval) => false,
            Some(()) = async { match &mut hup { Some(h) => h.recv().await, None => None } } => true,
        };
        let (current, loaded) = changed(path, std::mem::take(&mut last), forced).await;
        last = current;
        match loaded {
            None => {}
            Some(Ok(cfg)) => {
                // Errors are logged and recorded by apply; the old config stays.
                let _ = app.apply(cfg).await;
            }
            // Recorded like a config that does not validate: `/config_dump` shows it.
            Some(Err(e)) => app.reject(e.version(), &e.to_string()),
        }
    }
}

/// How long after a file's last change its metadata is final: a second write within the
/// same tick of the filesystem's clock leaves the times (and maybe the length) as the first
/// left them, so a file read sooner is read again at the next check, until a read comes this
/// long after the change.
// why: 2 s is the coarsest file time of the filesystems a config is read from (FAT's); ext4,
// xfs, tmpfs and overlayfs keep nanoseconds, written from a clock that ticks every few ms.
const SETTLED_AFTER: Duration = Duration::from_secs(2);

/// What of a file's metadata a write or a replacement changes: the file (device and inode:
/// a ConfigMap volume swaps a symlink to a new file, and a `mv` puts another file in place),
/// its length, and its modification and status-change times (the status-change time cannot be
/// set back by the writer, as the modification time can).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    device: u64,
    inode: u64,
    len: u64,
    /// Nanoseconds since the Unix epoch.
    modified: i128,
    /// Nanoseconds since the Unix epoch.
    changed: i128,
}

impl Stamp {
    /// The stamp of the file at `path`, after symlinks (`None` when there is none).
    fn of(path: &Path) -> Option<Stamp> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).ok()?;
        let nanos = |secs: i64, nanos: i64| i128::from(secs) * 1_000_000_000 + i128::from(nanos);
        Some(Stamp {
            device: m.dev(),
            inode: m.ino(),
            len: m.len(),
            modified: nanos(m.mtime(), m.mtime_nsec()),
            changed: nanos(m.ctime(), m.ctime_nsec()),
        })
    }

    /// Whether a read that began at `now` saw the file's last content for this stamp: it began
    /// [`SETTLED_AFTER`] or more after the file's last change, so a later write changes the stamp.
    fn settled_at(&self, now: SystemTime) -> bool {
        let Ok(now) = now.duration_since(UNIX_EPOCH) else {
            return false;
        };
        now.as_nanos() as i128 - self.modified.max(self.changed) >= SETTLED_AFTER.as_nanos() as i128
    }
}

/// What the watcher knows of the file from its last read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Seen {
    /// Its metadata just before that read (`None`: there was no file).
    stamp: Option<Stamp>,
    /// The SHA-256 of what was read (`None`: it could not be read).
    // why: a digest, not the file's bytes: a sidecar's config is megabytes at a thousand
    // services, and the proxy holds it parsed already.
    digest: Option<Vec<u8>>,
    /// The read began long enough after the file's last change ([`Stamp::settled_at`]): until
    /// the stamp changes, the content has not.
    settled: bool,
}

/// Read the file at `path` with `read` at `now`, and what the watcher then knows of it, with
/// what was read.
fn observe(
    path: &Path,
    now: SystemTime,
    read: impl FnOnce(&Path) -> std::io::Result<Vec<u8>>,
) -> (Seen, std::io::Result<Vec<u8>>) {
    let stamp = Stamp::of(path);
    let bytes = read(path);
    let seen = Seen {
        stamp,
        digest: bytes
            .as_ref()
            .ok()
            .map(|b| ring::digest::digest(&ring::digest::SHA256, b).as_ref().to_vec()),
        settled: stamp.is_some_and(|s| s.settled_at(now)),
    };
    (seen, bytes)
}

/// One check of the file at `path` at `now`, after `last`: what is known of it then, and the
/// file loaded when its digest is not `last`'s, or when `forced`. The file is not read at all
/// (`read` is not called) when its metadata is `last`'s and that read was [`Seen::settled`].
fn check(
    path: &Path,
    last: Seen,
    forced: bool,
    now: SystemTime,
    read: impl FnOnce(&Path) -> std::io::Result<Vec<u8>>,
) -> (Seen, Option<Result<ProxyConfig, ConfigError>>) {
    if !forced && last.settled && last.stamp.is_some() && Stamp::of(path) == last.stamp {
        return (last, None);
    }
    let (seen, bytes) = observe(path, now, read);
    let loaded = (forced || seen.digest != last.digest).then(|| parse(path, bytes));
    (seen, loaded)
}

/// [`check`] now, on a blocking thread: a sidecar's runtime is one thread that also carries
/// every request, and reading, digesting and parsing a config of megabytes takes a while.
async fn changed(path: &Path, last: Seen, forced: bool) -> (Seen, Option<Result<ProxyConfig, ConfigError>>) {
    let path = path.to_path_buf();
    off_runtime_thread(move || check(&path, last, forced, SystemTime::now(), |p| std::fs::read(p))).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_document_that_does_not_parse_still_names_its_version() {
        assert_eq!(declared_version("version: v7\nlisteners: 3\n").as_deref(), Some("v7"));
        assert_eq!(
            declared_version(r#"{"version": "v8", "bogus": true}"#).as_deref(),
            Some("v8")
        );
        assert_eq!(declared_version("version: [not, a, string]"), None);
        assert_eq!(declared_version("{{{"), None);
    }

    /// The file is read, digested and parsed while the runtime's (one) thread goes on with its
    /// other tasks: the check is polled first and the ticker still gets its turns before it ends.
    #[tokio::test(flavor = "current_thread")]
    async fn a_config_file_is_checked_off_the_runtime_thread() {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let clusters: Vec<_> = (0..2000)
            .map(|i| serde_json::json!({"name": format!("c{i}"), "endpoints": [{"address": "10.0.0.1", "port": 80}]}))
            .collect();
        let doc = serde_json::json!({"version": "v1", "clusters": clusters});
        std::fs::write(&path, doc.to_string()).unwrap();

        let done = AtomicBool::new(false);
        let ticks = AtomicUsize::new(0);
        let check = async {
            let r = changed(&path, Seen::default(), false).await;
            done.store(true, Ordering::Relaxed);
            r
        };
        let ticker = async {
            while !done.load(Ordering::Relaxed) {
                ticks.fetch_add(1, Ordering::Relaxed);
                tokio::task::yield_now().await;
            }
        };
        let ((seen, loaded), ()) = tokio::join!(check, ticker);
        assert!(
            ticks.load(Ordering::Relaxed) > 0,
            "the runtime's thread was held while the file was checked"
        );
        assert_eq!(loaded.expect("a new file is loaded").unwrap().clusters.len(), 2000);

        // The same file again: nothing loaded, unless forced.
        let (again, loaded) = changed(&path, seen.clone(), false).await;
        assert_eq!(again.digest, seen.digest);
        assert!(loaded.is_none());
        assert!(changed(&path, seen, true).await.1.is_some());
        // An unreadable file has no digest, and is loaded (to be rejected) once it changed.
        let (gone, loaded) = changed(&dir.path().join("nope.json"), again, false).await;
        assert_eq!(gone, Seen::default());
        assert!(matches!(loaded, Some(Err(ConfigError::Read { .. }))));
    }

    /// A reader that counts the reads it makes.
    fn counting(reads: &std::cell::Cell<u32>) -> impl FnOnce(&Path) -> std::io::Result<Vec<u8>> + '_ {
        move |path| {
            reads.set(reads.get() + 1);
            std::fs::read(path)
        }
    }

    fn version(loaded: Option<Result<ProxyConfig, ConfigError>>) -> Option<String> {
        loaded.map(|l| l.expect("the file parses").version)
    }

    /// A check reads the file only when its metadata changed, or while it changed too recently
    /// for its metadata to tell (a write in the same tick of the file clock as the last one keeps
    /// the times, and here the length too).
    #[test]
    fn a_file_is_read_only_when_its_metadata_changed_or_has_not_settled() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, r#"{"version": "v1"}"#).unwrap();
        let reads = std::cell::Cell::new(0);
        let now = SystemTime::now;
        let later = || SystemTime::now() + Duration::from_secs(10);

        // Read at once after a write: loaded, not settled.
        let (seen, loaded) = check(&path, Seen::default(), false, now(), counting(&reads));
        assert_eq!(version(loaded).as_deref(), Some("v1"));
        assert!(!seen.settled);
        // The same metadata, still too recent: read again, and not loaded (the same digest).
        let (seen, loaded) = check(&path, seen, false, now(), counting(&reads));
        assert_eq!((reads.get(), loaded.is_none()), (2, true));
        // Read long enough after the change: settled; with the same metadata, not read again.
        let (seen, _) = check(&path, seen, false, later(), counting(&reads));
        assert!(seen.settled);
        assert_eq!(reads.get(), 3);
        for _ in 0..3 {
            let (again, loaded) = check(&path, seen.clone(), false, later(), counting(&reads));
            assert_eq!((&again, loaded.is_none()), (&seen, true));
        }
        assert_eq!(
            reads.get(),
            3,
            "a settled file whose metadata did not change is not read"
        );
        // SIGHUP reads it anyway, and loads it.
        let (_, loaded) = check(&path, seen.clone(), true, later(), counting(&reads));
        assert_eq!((reads.get(), version(loaded).as_deref()), (4, Some("v1")));

        // Another write: the metadata changed, so it is read and loaded.
        std::fs::write(&path, r#"{"version": "v2"}"#).unwrap();
        let (seen, loaded) = check(&path, seen, false, now(), counting(&reads));
        assert_eq!((reads.get(), version(loaded).as_deref()), (5, Some("v2")));
        // A write of the same length right after, which may keep every time as it was (the
        // file clock's tick): the last read was too recent to trust the metadata, so it is read.
        std::fs::write(&path, r#"{"version": "v3"}"#).unwrap();
        let (_, loaded) = check(&path, seen, false, now(), counting(&reads));
        assert_eq!((reads.get(), version(loaded).as_deref()), (6, Some("v3")));
    }

    /// A ConfigMap volume: the file is a symlink through `..data`, a symlink to a directory that
    /// the kubelet replaces with a new one. The watcher follows the links to the file: the
    /// links it reads through stay as they were, the file behind them is another (here of the
    /// same length and modification time).
    #[test]
    fn a_configmap_volume_update_is_seen_through_its_symlinks() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let modified = SystemTime::now() - Duration::from_secs(60);
        let version_dir = |name: &str, version: &str| {
            let d = dir.path().join(name);
            std::fs::create_dir(&d).unwrap();
            let file = d.join("config.json");
            std::fs::write(&file, format!(r#"{{"version": "{version}"}}"#)).unwrap();
            std::fs::File::options()
                .write(true)
                .open(&file)
                .unwrap()
                .set_modified(modified)
                .unwrap();
        };
        version_dir("..2026_12_07_18_00_00.1", "v1");
        symlink("..2026_12_07_18_00_00.1", dir.path().join("..data")).unwrap();
        let path = dir.path().join("config.json");
        symlink("..data/config.json", &path).unwrap();
        let reads = std::cell::Cell::new(0);
        let later = || SystemTime::now() + Duration::from_secs(10);

        let (seen, loaded) = check(&path, Seen::default(), false, later(), counting(&reads));
        assert_eq!(version(loaded).as_deref(), Some("v1"));
        let (seen, loaded) = check(&path, seen, false, later(), counting(&reads));
        assert_eq!((reads.get(), loaded.is_none()), (1, true));

        // The kubelet's update: a new directory, and `..data` swapped to it by a rename.
        version_dir("..2026_12_07_18_05_00.2", "v2");
        symlink("..2026_12_07_18_05_00.2", dir.path().join("..data_tmp")).unwrap();
        std::fs::rename(dir.path().join("..data_tmp"), dir.path().join("..data")).unwrap();
        let (_, loaded) = check(&path, seen, false, later(), counting(&reads));
        assert_eq!((reads.get(), version(loaded).as_deref()), (2, Some("v2")));
    }
}
