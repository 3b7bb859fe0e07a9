//! Run-time skips for tests whose prerequisites may be missing on a machine
//! (root and its capabilities, a program such as `openssl`, `curl` or
//! `h2load`).
//!
//! A test that cannot run calls [`skip`] with the reason and returns. Nextest
//! hides a passing test's output, so a bare "skipping" message would make a
//! machine without the prerequisite report the test as passed; instead:
//!
//! # Guarantees
//! - Under CI (`CI=true` or `CI=1`, as `.ci/run` and CI services set it) a
//!   skip is a failure: [`skip`] panics with the reason, so the test fails.
//! - Every skip is recorded: a line `TRELLIS-SKIP <test>: <reason>` on
//!   stderr and, when [`REPORT_ENV`] names a file, the same line appended to
//!   it; `.ci/run` counts that file for its summary ("run-time skips: N").
//!
//! # Caveats
//! - The test's name is its thread's name, which libtest and nextest set;
//!   a skip from another thread is recorded under that thread's name.

use std::io::Write as _;
use std::path::{Path, PathBuf};

/// The environment variable naming the file skips are appended to.
pub const REPORT_ENV: &str = "TRELLIS_SKIP_REPORT";

/// What starts every recorded skip line.
pub const MARKER: &str = "TRELLIS-SKIP";

/// What a skip depends on, read from the environment by [`skip`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Environment {
    /// The value of `CI`, if set.
    pub ci: Option<String>,
    /// The file named by [`REPORT_ENV`], if set.
    pub report: Option<PathBuf>,
}

impl Environment {
    /// This process's environment.
    pub fn current() -> Self {
        Environment {
            ci: std::env::var("CI").ok(),
            report: std::env::var_os(REPORT_ENV).map(PathBuf::from),
        }
    }

    /// Whether this is a CI run, where a skip is a failure.
    pub fn in_ci(&self) -> bool {
        self.ci
            .as_deref()
            .is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
    }
}

/// Records that the calling test is skipped because of `reason` and, under
/// CI, fails it (panics). The caller returns right after.
///
/// ```no_run
/// if !trellis_skip::have("openssl") {
///     trellis_skip::skip("openssl is not installed (Debian: apt-get install openssl)");
///     return;
/// }
/// ```
#[track_caller]
pub fn skip(reason: &str) {
    let thread = std::thread::current();
    skip_in(&Environment::current(), thread.name().unwrap_or("unnamed test"), reason);
}

/// [`skip`] for the test named `test`, with an explicit environment.
#[track_caller]
pub fn skip_in(env: &Environment, test: &str, reason: &str) {
    let line = format!("{MARKER} {test}: {reason}");
    eprintln!("{line}");
    if let Some(report) = &env.report
        && let Err(e) = append(report, &line)
    {
        // The skip must not go unnoticed: without the report, fail.
        panic!("{line}; and it could not be recorded in {}: {e}", report.display());
    }
    if env.in_ci() {
        panic!(
            "{line}: under CI (CI={}) a skipped test is a failure; install what it needs",
            env.ci.as_deref().unwrap_or_default()
        );
    }
}

fn append(report: &Path, line: &str) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(report)?;
    // One write per line: concurrent test processes append whole lines.
    file.write_all(format!("{line}\n").as_bytes())
}

/// Whether `program` is an executable file in a directory of `PATH`.
pub fn have(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| find_in(&path, program).is_some())
}

/// Where `program` is in the directories of `path` (a `PATH` value), if anywhere.
pub fn find_in(path: &std::ffi::OsStr, program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    std::env::split_paths(path)
        .map(|dir| dir.join(program))
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// Whether this process runs as root (effective uid 0).
pub fn is_root() -> bool {
    // The effective uid is the second field of `Uid:` in /proc/self/status.
    std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            == Some("0")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(ci: Option<&str>, report: Option<&Path>) -> Environment {
        Environment {
            ci: ci.map(str::to_string),
            report: report.map(Path::to_path_buf),
        }
    }

    #[test]
    fn ci_is_true_or_1() {
        for (value, ci) in [
            (Some("true"), true),
            (Some("TRUE"), true),
            (Some("1"), true),
            (Some("false"), false),
            (Some("0"), false),
            (Some(""), false),
            (None, false),
        ] {
            assert_eq!(env(value, None).in_ci(), ci, "CI={value:?}");
        }
    }

    #[test]
    fn a_skip_outside_ci_is_recorded_and_returns() {
        let dir = tempfile::tempdir().unwrap();
        let report = dir.path().join("skips.txt");
        skip_in(&env(None, Some(&report)), "t1", "needs openssl");
        skip_in(&env(Some("false"), Some(&report)), "t2", "needs root");
        assert_eq!(
            std::fs::read_to_string(&report).unwrap(),
            "TRELLIS-SKIP t1: needs openssl\nTRELLIS-SKIP t2: needs root\n"
        );
    }

    #[test]
    fn a_skip_under_ci_is_recorded_and_fails() {
        let dir = tempfile::tempdir().unwrap();
        let report = dir.path().join("skips.txt");
        let e = env(Some("true"), Some(&report));
        let panic = std::panic::catch_unwind(|| skip_in(&e, "t3", "needs curl")).unwrap_err();
        let message = panic.downcast_ref::<String>().unwrap();
        assert!(
            message.contains("needs curl") && message.contains("is a failure"),
            "{message}"
        );
        assert_eq!(
            std::fs::read_to_string(&report).unwrap(),
            "TRELLIS-SKIP t3: needs curl\n"
        );
    }

    #[test]
    fn a_skip_that_cannot_be_recorded_fails() {
        let dir = tempfile::tempdir().unwrap();
        let report = dir.path().join("no-such-dir").join("skips.txt");
        let e = env(None, Some(&report));
        assert!(std::panic::catch_unwind(|| skip_in(&e, "t4", "needs h2load")).is_err());
    }

    #[test]
    fn programs_are_found_on_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let tool = dir.path().join("tool");
        std::fs::write(&tool, "#!/bin/sh\n").unwrap();
        let path = std::ffi::OsString::from(format!("/nonexistent:{}", dir.path().display()));
        assert_eq!(find_in(&path, "tool"), None, "not executable yet");
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(find_in(&path, "tool"), Some(tool));
        assert_eq!(find_in(&path, "other"), None);
        assert!(have("sh"));
    }
}
