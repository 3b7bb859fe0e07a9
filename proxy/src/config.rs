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
    // why: a digest, not the file's bytes: a sidecar's config is megabytes at a thousand
    // services, and the proxy holds it parsed already.
    let digest = |bytes: Vec<u8>| ring::digest::digest(&ring::digest::SHA256, &bytes).as_ref().to_vec();
    let mut last = std::fs::read(path).ok().map(digest);
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        let forced = tokio::select! {
            _ = tokio::time::sleep(interval) => false,
            Some(()) = async { match &mut hup { Some(h) => h.recv().await, None => None } } => true,
        };
        let current = std::fs::read(path).ok().map(digest);
        if !forced && current == last {
            continue;
        }
        last = current;
        match load_file(path) {
            Ok(cfg) => {
                // Errors are logged and recorded by apply; the old config stays.
                let _ = app.apply(cfg).await;
            }
            // Recorded like a config that does not validate: `/config_dump` shows it.
            Err(e) => app.reject(e.version(), &e.to_string()),
        }
    }
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
}
