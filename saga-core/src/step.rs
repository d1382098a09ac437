//! What a step function returns when it fails: a transient failure (retry) or a permanent one
//! (compensate now).

use std::fmt;

use serde::{Deserialize, Serialize};

/// How a step failure should be handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// May succeed on a later attempt: retried per the step's retry policy.
    Transient,
    /// Will not succeed: no more attempts; the saga compensates (or escalates, for a compensation).
    Permanent,
}

impl FailureKind {
    /// The persisted form.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Transient => "transient",
            FailureKind::Permanent => "permanent",
        }
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The failure of one step attempt, as returned by a step function.
///
/// Build one with [`StepError::transient`] / [`StepError::permanent`], or from any error with the
/// [`ResultExt`] methods:
///
/// ```
/// use saga_core::{ResultExt, StepError};
///
/// fn parse_quantity(text: &str) -> Result<u32, StepError> {
///     text.parse::<u32>().permanent() // bad data will not get better on retry
/// }
/// assert!(parse_quantity("three").unwrap_err().is_permanent());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepError {
    kind: FailureKind,
    message: String,
}

impl StepError {
    /// A failure worth retrying (timeout, 503, connection reset).
    pub fn transient(message: impl fmt::Display) -> Self {
        Self {
            kind: FailureKind::Transient,
            message: message.to_string(),
        }
    }

    /// A failure that retrying cannot fix (card declined, invalid input).
    pub fn permanent(message: impl fmt::Display) -> Self {
        Self {
            kind: FailureKind::Permanent,
            message: message.to_string(),
        }
    }

    /// Transient or permanent.
    pub fn kind(&self) -> FailureKind {
        self.kind
    }

    /// True for a permanent failure.
    pub fn is_permanent(&self) -> bool {
        self.kind == FailureKind::Permanent
    }

    /// The message, as recorded in the saga's history.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for StepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

impl std::error::Error for StepError {}

/// Classifies any error as a step failure: `.transient()?` or `.permanent()?`.
pub trait ResultExt<T> {
    /// Maps the error to a transient [`StepError`] (retried per policy).
    ///
    /// # Errors
    /// The original error, as a transient step failure.
    fn transient(self) -> Result<T, StepError>;

    /// Maps the error to a permanent [`StepError`] (compensate now).
    ///
    /// # Errors
    /// The original error, as a permanent step failure.
    fn permanent(self) -> Result<T, StepError>;
}

impl<T, E: fmt::Display> ResultExt<T> for Result<T, E> {
    fn transient(self) -> Result<T, StepError> {
        self.map_err(StepError::transient)
    }

    fn permanent(self) -> Result<T, StepError> {
        self.map_err(StepError::permanent)
    }
}
