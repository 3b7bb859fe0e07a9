//! Progress of long commands on stderr: an indicatif spinner on a terminal, one plain line
//! per step otherwise (logs, CI). Never on stdout, which carries only results.

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::output::Terminal;

/// Steps of a command, each begun and then finished or failed.
#[derive(Debug)]
pub struct Progress {
    terminal: Terminal,
    bar: Option<ProgressBar>,
    step: Option<(String, Instant)>,
    quiet: bool,
}

impl Progress {
    /// Progress for `terminal`; `quiet` shows nothing (e.g. `-o json` in a script).
    pub fn new(terminal: Terminal, quiet: bool) -> Progress {
        Progress {
            terminal,
            bar: None,
            step: None,
            quiet,
        }
    }

    /// Begin a step.
    pub fn begin(&mut self, what: impl Into<String>) {
        let what = what.into();
        if !self.quiet {
            if self.terminal.interactive {
                let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
                bar.set_style(
                    ProgressStyle::with_template("{spinner} {msg} {elapsed:.dim}")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                bar.set_message(what.clone());
                bar.enable_steady_tick(Duration::from_millis(100));
                self.bar = Some(bar);
            } else {
                eprintln!("• {what} ...");
            }
        }
        self.step = Some((what, Instant::now()));
    }

    /// Say more about the step under way (what it waits for).
    pub fn update(&self, detail: &str) {
        if let (Some(bar), Some((what, _))) = (&self.bar, &self.step) {
            bar.set_message(format!("{what}: {detail}"));
        }
    }

    /// The step succeeded; `note` says what came of it.
    pub fn done(&mut self, note: &str) {
        self.finish(true, note);
    }

    /// The step failed.
    pub fn failed(&mut self, note: &str) {
        self.finish(false, note);
    }

    fn finish(&mut self, ok: bool, note: &str) {
        let Some((what, started)) = self.step.take() else {
            return;
        };
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        if self.quiet {
            return;
        }
        let mark = if ok { self.terminal.ok() } else { self.terminal.fail() };
        let note = if note.is_empty() {
            String::new()
        } else {
            format!(": {note}")
        };
        eprintln!("{mark} {what}{note} ({:.1?})", started.elapsed());
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}
