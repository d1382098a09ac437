//! Wall-clock time as the stores record it: UTC, millisecond precision.

use chrono::{DateTime, SubsecRound, Utc};

/// A point in time as stored: UTC with millisecond precision (every backend keeps milliseconds).
pub type Timestamp = DateTime<Utc>;

/// The current time, truncated to milliseconds so that every backend round-trips it exactly.
pub fn now() -> Timestamp {
    Utc::now().trunc_subsecs(3)
}

/// `at + duration`, saturating at the far future instead of overflowing.
pub fn after(at: Timestamp, duration: std::time::Duration) -> Timestamp {
    chrono::Duration::from_std(duration)
        .ok()
        .and_then(|delta| at.checked_add_signed(delta))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
        .trunc_subsecs(3)
}
