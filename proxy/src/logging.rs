//! Run-time log level control: what `/logging` on the admin port changes. The
//! binary implements it over its `tracing` subscriber; the library only calls it.

/// Changes the log filter at run time.
pub trait LogControl: Send + Sync {
    /// Replace the filter (an `EnvFilter` directive such as `debug` or
    /// `info,trellis_proxy=trace`).
    fn set(&self, directive: &str) -> Result<(), String>;
    /// The current filter.
    fn current(&self) -> String;
}
