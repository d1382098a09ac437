//! Wall-clock time as the stores record it: UTC, millisecond precision.

use chrono::{DateTime, SubsecRound, Utc};

/// A point in time as stored: UTC with millisecond precision (every backend keeps milliseconds).
pub type Timestamp = DateTime<Utc>;

/// The current time, truncated to milliseconds so that every backend round-trips it exactly.
///
/// Under a tokio runtime whose clock is paused (`#[tokio::test(start_paused = true)]`, tokio's
/// `test-util`), time also moves when tokio advances its clock: the wall time plus however far
/// tokio's clock has run ahead of the real one. Retries, timeouts, timers, leases and deadlines
/// then elapse at once in a test (see [`crate::testing`]). Elsewhere tokio's clock is the real
/// one, and this is the wall time.
pub fn now() -> Timestamp {
    let ahead = tokio::time::Instant::now()
        .into_std()
        .checked_duration_since(std::time::Instant::now())
        .and_then(|ahead| chrono::Duration::from_std(ahead).ok())
        .unwrap_or_else(chrono::Duration::zero);
    let wall = Utc::now();
    wall.checked_add_signed(ahead)
        .unwrap_or(wall)
        .trunc_subsecs(3)
}

/// `at - duration`, saturating at the Unix epoch (before which no saga exists) instead of
/// overflowing: an age of a hundred million days means "everything", not a panic.
pub fn before(at: Timestamp, duration: std::time::Duration) -> Timestamp {
    chrono::Duration::from_std(duration)
        .ok()
        .and_then(|delta| at.checked_sub_signed(delta))
        .filter(|cutoff| *cutoff > DateTime::<Utc>::UNIX_EPOCH)
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
        .trunc_subsecs(3)
}

/// The monotonic instant `duration` from now, saturating about thirty years ahead instead of
/// overflowing (`Duration::MAX` means "no limit", not a panic).
pub(crate) fn instant_after(duration: std::time::Duration) -> tokio::time::Instant {
    const FAR: std::time::Duration = std::time::Duration::from_secs(30 * 365 * 86_400);
    let now = tokio::time::Instant::now();
    now.checked_add(duration.min(FAR)).unwrap_or(now)
}

/// `at + duration`, saturating at the far future instead of overflowing.
pub fn after(at: Timestamp, duration: std::time::Duration) -> Timestamp {
    chrono::Duration::from_std(duration)
        .ok()
        .and_then(|delta| at.checked_add_signed(delta))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
        .trunc_subsecs(3)
}

/// Reads an age written as a whole number and a unit: `90s`, `15m`, `12h`, `30d`, `0s` (what the
/// CLI and the console accept for "older than" and windows).
///
/// # Errors
/// What is wrong with `text` and how to write it, when it is not such an age.
pub fn parse_age(text: &str) -> Result<std::time::Duration, String> {
    let invalid =
        || format!("`{text}` is not an age; write a number and a unit: 90s, 15m, 12h, 30d");
    let unit_at = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(invalid)?;
    let (number, unit) = text.split_at(unit_at);
    let number: u64 = number.parse().map_err(|_| invalid())?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => return Err(invalid()),
    };
    number
        .checked_mul(seconds)
        .map(std::time::Duration::from_secs)
        .ok_or_else(invalid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn huge_durations_saturate_instead_of_panicking() {
        let now = now();
        assert_eq!(
            after(now, Duration::MAX),
            DateTime::<Utc>::MAX_UTC.trunc_subsecs(3)
        );
        assert_eq!(before(now, Duration::MAX), DateTime::<Utc>::UNIX_EPOCH);
        assert_eq!(
            before(now, Duration::from_secs(100_000_000 * 86_400)),
            DateTime::<Utc>::UNIX_EPOCH
        );
        assert!(instant_after(Duration::MAX) > tokio::time::Instant::now());
        assert_eq!(before(now, Duration::ZERO), now);
    }
}
