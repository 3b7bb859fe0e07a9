//! The proxy's settings that come from its environment alone, with no flag: each variable a
//! named `ENV_*` constant, parsed once by the binary into [`Settings`] before anything starts,
//! and passed down. A bad value is an error naming the variable, its value and the fix; none
//! falls back to a default. An empty value is the variable unset (Kubernetes writes `value: ""`
//! for a variable it has nothing for), as Istio's agent reads its own.
//!
//! The flags, and the variables that stand for them (`TRELLIS_LOG`, `TRELLIS_CONFIG`, …), are
//! the binary's command line (`clap`), not this module's.

use crate::probes::{self, AppProbes, ProbesError};
use std::ffi::OsString;
use std::num::NonZeroUsize;

/// The tokio runtime's worker threads. Default 1: a sidecar shares its pod's CPU.
pub const ENV_WORKERS: &str = "TRELLIS_WORKERS";

/// The app's own probes, rewritten by the sidecar injector ([`crate::probes`]). Default: none.
pub const ENV_APP_PROBES: &str = probes::ENV;

/// Everything [`ENV_WORKERS`] and [`ENV_APP_PROBES`] say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Worker threads of the tokio runtime ([`ENV_WORKERS`]).
    pub workers: NonZeroUsize,
    /// The pod's rewritten probes, answered on the health port ([`ENV_APP_PROBES`]).
    pub app_probes: AppProbes,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            workers: NonZeroUsize::MIN,
            app_probes: AppProbes::default(),
        }
    }
}

/// A variable whose value the proxy cannot use; the message names it, the value and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    /// Not a whole number of threads, or zero.
    #[error("{ENV_WORKERS}={value:?}: not a number of worker threads; set a whole number ≥ 1, or unset it for one")]
    Workers { value: String },
    /// Not the injector's JSON of probes.
    #[error(
        "{ENV_APP_PROBES}={value:?}: {error}; the sidecar injector writes it from the pod's probes: \
         re-create the pod to have it written again, or unset it to run no app probes"
    )]
    AppProbes { value: String, error: ProbesError },
    /// Not UTF-8.
    #[error("{name}={value:?}: not valid UTF-8; set it in UTF-8, or unset it")]
    NotUnicode { name: &'static str, value: String },
}

impl Settings {
    /// The settings in this process's environment.
    pub fn from_env() -> Result<Self, SettingsError> {
        Self::from_vars(|name| std::env::var_os(name))
    }

    /// The settings `var` gives (a variable's value, `None` when unset).
    pub fn from_vars(var: impl Fn(&str) -> Option<OsString>) -> Result<Self, SettingsError> {
        let get = |name: &'static str| -> Result<Option<String>, SettingsError> {
            match var(name) {
                None => Ok(None),
                Some(v) => match v.into_string() {
                    Ok(v) if v.is_empty() => Ok(None),
                    Ok(v) => Ok(Some(v)),
                    Err(v) => Err(SettingsError::NotUnicode {
                        name,
                        value: v.to_string_lossy().into_owned(),
                    }),
                },
            }
        };
        let workers = match get(ENV_WORKERS)? {
            None => NonZeroUsize::MIN,
            Some(value) => value.parse().map_err(|_| SettingsError::Workers { value })?,
        };
        let app_probes = match get(ENV_APP_PROBES)? {
            None => AppProbes::default(),
            Some(value) => AppProbes::parse(&value).map_err(|error| SettingsError::AppProbes { value, error })?,
        };
        Ok(Self { workers, app_probes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse(vars: &[(&str, &str)]) -> Result<Settings, SettingsError> {
        let vars: HashMap<String, OsString> = vars.iter().map(|(k, v)| (k.to_string(), OsString::from(v))).collect();
        Settings::from_vars(|name| vars.get(name).cloned())
    }

    #[test]
    fn workers_default_to_one_and_take_a_whole_number_of_at_least_one() {
        assert_eq!(parse(&[]).unwrap().workers.get(), 1);
        assert_eq!(parse(&[(ENV_WORKERS, "")]).unwrap().workers.get(), 1);
        assert_eq!(parse(&[(ENV_WORKERS, "4")]).unwrap().workers.get(), 4);
        assert_eq!(
            parse(&[(ENV_WORKERS, "two")]).unwrap_err().to_string(),
            "TRELLIS_WORKERS=\"two\": not a number of worker threads; set a whole number ≥ 1, or unset it for one"
        );
        for bad in ["0", "-1", "1.5", " 4", "4 threads"] {
            assert_eq!(
                parse(&[(ENV_WORKERS, bad)]).unwrap_err(),
                SettingsError::Workers { value: bad.to_string() },
                "{bad}"
            );
        }
    }

    #[test]
    fn app_probes_default_to_none_and_a_bad_value_names_the_variable_the_value_and_the_fix() {
        assert_eq!(parse(&[]).unwrap().app_probes, AppProbes::default());
        assert_eq!(parse(&[(ENV_APP_PROBES, "")]).unwrap().app_probes, AppProbes::default());
        let good = r#"{"/app-health/web/livez":{"tcpSocket":{"port":8080}}}"#;
        assert_eq!(
            parse(&[(ENV_APP_PROBES, good)]).unwrap().app_probes,
            AppProbes::parse(good).unwrap()
        );
        let bad = r#"{"/x":{"tcpSocket":{"port":1}}}"#;
        assert_eq!(
            parse(&[(ENV_APP_PROBES, bad)]).unwrap_err().to_string(),
            format!(
                "TRELLIS_APP_PROBES={bad:?}: key `/x` must start with /app-health/; the sidecar injector writes it \
                 from the pod's probes: re-create the pod to have it written again, or unset it to run no app probes"
            )
        );
    }

    #[test]
    fn a_value_that_is_not_utf8_is_named() {
        use std::os::unix::ffi::OsStringExt as _;
        let err = Settings::from_vars(|name| (name == ENV_WORKERS).then(|| OsString::from_vec(vec![0x32, 0xff])))
            .unwrap_err();
        assert_eq!(
            err,
            SettingsError::NotUnicode {
                name: ENV_WORKERS,
                value: "2\u{fffd}".into()
            }
        );
        assert!(
            err.to_string()
                .starts_with("TRELLIS_WORKERS=\"2\u{fffd}\": not valid UTF-8")
        );
    }
}
