//! What a step function returns when it fails: a transient failure (retry), a permanent one
//! (compensate now), or an unknown outcome (the effect may have happened: settle it with the same
//! key, by a retry, the step's probe or a person).

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
    /// The attempt may or may not have taken effect (a timeout, a lost answer, a panic, an
    /// interrupted worker). Never recorded as a clean failure: it is retried with the same key per
    /// the retry policy, settled by the step's probe, or escalated as an `unknown_outcome` item.
    Unknown,
}

impl FailureKind {
    /// The persisted form.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Transient => "transient",
            FailureKind::Permanent => "permanent",
            FailureKind::Unknown => "unknown",
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
/// Return an error only when you know the effect did not happen (transient or permanent), or
/// [`StepError::unknown`] when you cannot tell (the downstream timed out, the connection dropped
/// after the request was sent). Messages are kept to [`MAX_MESSAGE_BYTES`] (longer ones are cut
/// with a marker) and NUL characters are replaced, so every store can keep them.
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
    /// Set when the downstream refused the call for load (HTTP 429): wait this long (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    retry_after_ms: Option<u64>,
}

/// The longest message a [`StepError`] keeps, in bytes; the rest is cut with a marker.
pub const MAX_MESSAGE_BYTES: usize = 8 * 1024;

/// `text` without NUL characters (which Postgres cannot store in text) and at most `limit`
/// bytes long, cut on a character boundary with a marker saying how much was cut.
pub fn bounded_text(text: &str, limit: usize) -> String {
    let clean = if text.contains('\0') {
        text.replace('\0', "\u{FFFD}")
    } else {
        text.to_owned()
    };
    if clean.len() <= limit {
        return clean;
    }
    let mut end = limit;
    while !clean.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… [{} more bytes cut]", &clean[..end], clean.len() - end)
}

/// Whether a JSON value holds a NUL character in any string or object key (Postgres refuses
/// them in `jsonb`, so no store keeps them).
pub(crate) fn holds_nul(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::String(text) => text.contains('\0'),
        serde_json::Value::Array(items) => items.iter().any(holds_nul),
        serde_json::Value::Object(map) => map
            .iter()
            .any(|(key, item)| key.contains('\0') || holds_nul(item)),
        _ => false,
    }
}

impl StepError {
    fn new(kind: FailureKind, message: impl fmt::Display) -> Self {
        Self {
            kind,
            message: bounded_text(&message.to_string(), MAX_MESSAGE_BYTES),
            retry_after_ms: None,
        }
    }

    /// The downstream refused the call for load (an HTTP 429, a "slow down"), so the effect did
    /// not happen: retried like a transient failure, not before `retry_after`. When the step
    /// declares a [rate limit](crate::StepBuilder::rate_limit), the whole integration backs off
    /// until then, in every process, so that retries never add to the partner's load.
    pub fn throttled(retry_after: std::time::Duration, message: impl fmt::Display) -> Self {
        Self {
            retry_after_ms: Some(u64::try_from(retry_after.as_millis()).unwrap_or(u64::MAX)),
            ..Self::new(FailureKind::Transient, message)
        }
    }

    /// How long the downstream asked to wait, when it refused the call for load.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        self.retry_after_ms.map(std::time::Duration::from_millis)
    }

    /// A failure worth retrying that did not take effect (503, connection refused).
    pub fn transient(message: impl fmt::Display) -> Self {
        Self::new(FailureKind::Transient, message)
    }

    /// A failure that retrying cannot fix and that did not take effect (card declined, invalid
    /// input).
    pub fn permanent(message: impl fmt::Display) -> Self {
        Self::new(FailureKind::Permanent, message)
    }

    /// The attempt may have taken effect: the request went out and no answer came back (a
    /// timeout, a reset connection). The library retries with the same key per the policy, asks
    /// the step's probe, or escalates it; it never treats it as "did not happen".
    pub fn unknown(message: impl fmt::Display) -> Self {
        Self::new(FailureKind::Unknown, message)
    }

    /// Transient, permanent or unknown.
    pub fn kind(&self) -> FailureKind {
        self.kind
    }

    /// True for a permanent failure.
    pub fn is_permanent(&self) -> bool {
        self.kind == FailureKind::Permanent
    }

    /// True when the attempt may have taken effect.
    pub fn is_unknown(&self) -> bool {
        self.kind == FailureKind::Unknown
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

    /// Maps the error to an unknown outcome (the effect may have happened).
    ///
    /// # Errors
    /// The original error, as an unknown outcome.
    fn unknown(self) -> Result<T, StepError>;
}

impl<T, E: fmt::Display> ResultExt<T> for Result<T, E> {
    fn transient(self) -> Result<T, StepError> {
        self.map_err(StepError::transient)
    }

    fn permanent(self) -> Result<T, StepError> {
        self.map_err(StepError::permanent)
    }

    fn unknown(self) -> Result<T, StepError> {
        self.map_err(StepError::unknown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_characters_are_found_in_strings_and_keys_and_only_there() {
        assert!(holds_nul(&serde_json::json!({"a": ["x", "y\u{0}"]})));
        assert!(holds_nul(&serde_json::json!({"k\u{0}": 1})));
        // The six characters of an escape, as text, are not a NUL.
        assert!(!holds_nul(&serde_json::json!({"a": "\\u0000"})));
    }

    #[test]
    fn messages_lose_nul_characters_and_are_cut_with_a_marker() {
        let error = StepError::transient("a\0b");
        assert_eq!(error.message(), "a\u{FFFD}b");
        let long = "é".repeat(MAX_MESSAGE_BYTES);
        let error = StepError::unknown(&long);
        assert!(error.message().len() < MAX_MESSAGE_BYTES + 40);
        assert!(
            error
                .message()
                .ends_with(&format!("[{} more bytes cut]", MAX_MESSAGE_BYTES)),
            "{}",
            &error.message()[MAX_MESSAGE_BYTES - 10..]
        );
        assert!(error.is_unknown() && !error.is_permanent());
    }
}
