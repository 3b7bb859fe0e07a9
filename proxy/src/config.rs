//! Configuration from a file: load (JSON or YAML), and watch for changes
//! (polling plus SIGHUP), applying each new version through [`App::apply`]
//! so an invalid file is rejected and the last good config stays.

use crate::app::App;
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
        /// Cause.
        #[source]
        source: trellis_contract::ParseError,
    },
}

/// Read and parse a config file (validation happens on apply).
pub fn load_file(path: &Path) -> Result<ProxyConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    ProxyConfig::parse(&text).map_err(|source| ConfigError::Parse {
        path: path.to_path_buf(),
        source,
    })
}

/// Re-apply the file whenever its contents change (checked every `interval`)
/// or on SIGHUP. Runs until the task is dropped.
pub async fn watch_file(app: &App, path: &Path, interval: Duration) {
    let mut last = std::fs::read(path).ok();
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        let forced = tokio::select! {
            _ = tokio::time::sleep(interval) => false,
            Some(()) = async { match &mut hup { Some(h) => h.recv().await, None => None } } => true,
        };
        let current = std::fs::read(path).ok();
        if !forced && current == last {
            continue;
        }
        last = current;
        match load_file(path) {
            Ok(cfg) => {
                // Errors are logged and recorded by apply; the old config stays.
                let _ = app.apply(cfg).await;
            }
            Err(e) => tracing::warn!(error = %e, "config file not applied; keeping the last good one"),
        }
    }
}
