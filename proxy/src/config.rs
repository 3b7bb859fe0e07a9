//! Configuration from a file: load (JSON or YAML), and watch for changes
//! (polling plus SIGHUP), applying each new version through [`App::apply`]
//! so an invalid file is rejected and the last good config stays.

use crate::app::{App, off_runtime_thread};
use std::path::{Path, PathBuf};
use std::time::Duration;
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
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    ProxyConfig::parse(&text).map_err(|source| ConfigError::Parse {
        path: path.to_path_buf(),
        version: declared_version(&text),
        source,
    })
}

/// Re-apply the file whenever its contents change (checked every `interval`)
/// or on SIGHUP. A file that cannot be read or parsed is rejected like one
/// that does not validate ([`App::reject`]). Runs until the task is dropped.
pub async fn watch_file(app: &App, path: &Path, interval: Duration) {
    let mut last = {
        let path = path.to_path_buf();
        off_runtime_thread(move || digest(&path)).await
    };
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        let forced = tokio::select! {
            _ = tokio::time::sleep(interval) => false,
            Some(()) = async { match &mut hup { Some(h) => h.recv().await, None => None } } => true,
        };
        let (current, loaded) = changed(path, last.take(), forced).await;
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

/// The file at `path` read and digested (`None` when it cannot be read).
// why: a digest, not the file's bytes: a sidecar's config is megabytes at a thousand services,
// and the proxy holds it parsed already.
fn digest(path: &Path) -> Option<Vec<u8>> {
    let bytes = std::fs::read(path).ok()?;
    Some(ring::digest::digest(&ring::digest::SHA256, &bytes).as_ref().to_vec())
}

/// The digest of the file at `path` (`None` when unreadable), and the file loaded when the
/// digest is not `last`, or when `forced`. Read, digested and parsed on a blocking thread: a
/// sidecar's runtime is one thread that also carries every request.
async fn changed(
    path: &Path,
    last: Option<Vec<u8>>,
    forced: bool,
) -> (Option<Vec<u8>>, Option<Result<ProxyConfig, ConfigError>>) {
    let path = path.to_path_buf();
    off_runtime_thread(move || {
        let current = digest(&path);
        let loaded = (forced || current != last).then(|| load_file(&path));
        (current, loaded)
    })
    .await
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
            let r = changed(&path, None, false).await;
            done.store(true, Ordering::Relaxed);
            r
        };
        let ticker = async {
            while !done.load(Ordering::Relaxed) {
                ticks.fetch_add(1, Ordering::Relaxed);
                tokio::task::yield_now().await;
            }
        };
        let ((digest, loaded), ()) = tokio::join!(check, ticker);
        assert!(
            ticks.load(Ordering::Relaxed) > 0,
            "the runtime's thread was held while the file was checked"
        );
        assert_eq!(loaded.expect("a new file is loaded").unwrap().clusters.len(), 2000);

        // The same file again: nothing loaded, unless forced.
        let (again, loaded) = changed(&path, digest.clone(), false).await;
        assert_eq!(again, digest);
        assert!(loaded.is_none());
        assert!(changed(&path, digest, true).await.1.is_some());
        // An unreadable file has no digest, and is loaded (to be rejected) once it changed.
        let (gone, loaded) = changed(&dir.path().join("nope.json"), again, false).await;
        assert!(gone.is_none());
        assert!(matches!(loaded, Some(Err(ConfigError::Read { .. }))));
    }
}
