//! Errors of the plugin runtime, as `std::error::Error`s with context.
//!
//! `wasmtime::Error` is not a `std::error::Error`, so it never leaves this module tree: it is
//! classified (trap, deadline, memory) and rendered to text where it is caught.

use std::path::PathBuf;
use std::time::Duration;

/// Loading a plugin component failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot load plugin {origin}: {cause}")]
pub struct LoadError {
    /// The file (or `built-in <name>`) the component came from.
    pub origin: String,
    /// Why, in words.
    pub cause: String,
}

impl LoadError {
    pub(crate) fn new(origin: impl Into<String>, cause: impl Into<String>) -> Self {
        LoadError {
            origin: origin.into(),
            cause: cause.into(),
        }
    }

    pub(crate) fn io(path: &std::path::Path, e: &std::io::Error) -> Self {
        Self::new(path.display().to_string(), format!("cannot read it: {e}"))
    }
}

/// Reading a plugin directory failed as a whole.
#[derive(Debug, thiserror::Error)]
#[error("cannot read plugin directory {}: {source}", dir.display())]
pub struct DirError {
    pub dir: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// What went wrong in one call into a plugin. Every kind discards the instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallErrorKind {
    /// The guest trapped (`unreachable`, out-of-bounds access, a panic...).
    Trap,
    /// The call ran past its deadline and was interrupted.
    Deadline,
    /// The guest tried to grow its memory past the cap.
    Memory,
    /// A fresh instance could not be created (pool exhausted, start-up trap).
    Instantiate,
    /// The guest returned something the host refuses (for example an invalid header name in
    /// a `respond-now`, or a configuration that changed between two instances).
    InvalidOutput,
}

/// One call into a plugin failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("plugin `{plugin}` failed in {call}: {}", self.describe())]
pub struct CallError {
    pub plugin: String,
    /// The export that was called (`configure`, `on-request-headers`...).
    pub call: &'static str,
    pub kind: CallErrorKind,
    /// The deadline in force for the call.
    pub deadline: Duration,
    /// Details (the trap message, the refused value...).
    pub detail: String,
}

impl CallError {
    fn describe(&self) -> String {
        match self.kind {
            CallErrorKind::Trap => format!("trapped: {}", self.detail),
            CallErrorKind::Deadline => format!("exceeded its {:?} deadline", self.deadline),
            CallErrorKind::Memory => format!("exceeded its memory limit ({})", self.detail),
            CallErrorKind::Instantiate => format!("could not be instantiated: {}", self.detail),
            CallErrorKind::InvalidOutput => format!("returned an invalid result: {}", self.detail),
        }
    }
}
