//! Run-time log level control: what `/logging` on the admin port changes. The
//! binary implements it over its `tracing` subscriber; the library only calls it.

/// Changes the log filter at run time.
pub trait LogControl: Send + Sync {
    /// Replace the filter (an `EnvFilter` directive such as `debug` or
    /// `info,trellis_proxy=trace`).
    fn set(&self, directive: &str) -> Result<(), LogControlError>;
    /// The current filter.
    fn current(&self) -> String;
}

/// Why a filter was not put in force (the one in force stays).
#[derive(Debug, thiserror::Error)]
pub enum LogControlError {
    /// Not EnvFilter directives.
    #[error(transparent)]
    Filter(#[from] tracing_subscriber::filter::ParseError),
    /// The subscriber is gone (the process is ending).
    #[error(transparent)]
    Reload(#[from] tracing_subscriber::reload::Error),
}
