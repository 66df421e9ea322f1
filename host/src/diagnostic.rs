//! Diagnostics: what the source and compile stages say about the user's objects.
//!
//! One type for every stage, so `wasmgress validate`, the log, and (later) Kubernetes Events all
//! speak the same words: where (file), what (object), which field, and why. This module only
//! describes problems; it never decides what to do about them.

use std::fmt;
use std::sync::Arc;

/// How bad a diagnostic is. `Error` on an Ingress means it was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    Info,
    Warning,
    Error,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
        })
    }
}

/// One finding about one object.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Diagnostic {
    pub severity: Severity,
    /// Where the object came from (a file path, with the document index for multi-document
    /// files); `None` when the source has no files (the Kubernetes API).
    pub origin: Option<Arc<str>>,
    /// `Kind namespace/name`, e.g. `Ingress default/web`.
    pub object: String,
    /// The field path inside the object, e.g. `spec.rules[0].host`; empty for the whole object.
    pub field: String,
    pub message: String,
}

impl Diagnostic {
    pub fn error(
        object: impl Into<String>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self::new(Severity::Error, object, field, message)
    }

    pub fn warning(
        object: impl Into<String>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self::new(Severity::Warning, object, field, message)
    }

    pub fn info(
        object: impl Into<String>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self::new(Severity::Info, object, field, message)
    }

    fn new(
        severity: Severity,
        object: impl Into<String>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            severity,
            origin: None,
            object: object.into(),
            field: field.into(),
            message: message.into(),
        }
    }

    pub fn at(mut self, origin: Option<Arc<str>>) -> Self {
        self.origin = origin;
        self
    }
}

/// `error: FILE: Ingress NS/NAME: FIELD: why`; parts that are unknown are left out.
impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.severity)?;
        if let Some(origin) = &self.origin {
            write!(f, "{origin}: ")?;
        }
        if !self.object.is_empty() {
            write!(f, "{}: ", self.object)?;
        }
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}
