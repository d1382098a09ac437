//! Retry policy as data: exponential backoff with full jitter, bounded attempts and delay.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::id::Attempt;

/// How often and how patiently a step phase is retried after transient failures.
///
/// The delay before attempt `n + 1` is drawn uniformly from `[0, min(max_delay, base * 2^(n-1))]`
/// ("full jitter"), so retries from many sagas spread out instead of arriving together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Attempts in all, the first one included; at least 1.
    pub max_attempts: u32,
    /// Upper bound of the first retry's delay.
    pub base: Duration,
    /// Upper bound of any retry's delay.
    pub max_delay: Duration,
}

impl RetryPolicy {
    /// No retries: the first transient failure counts as final.
    pub const NONE: RetryPolicy = RetryPolicy {
        max_attempts: 1,
        base: Duration::ZERO,
        max_delay: Duration::ZERO,
    };

    /// `max_attempts` attempts with exponential backoff starting at `base`, capped at 30 s.
    pub fn exponential(max_attempts: u32, base: Duration) -> Self {
        Self {
            max_attempts: max_attempts.max(1),
            base,
            max_delay: Duration::from_secs(30),
        }
    }

    /// The same policy with another delay cap.
    pub fn with_max_delay(mut self, max_delay: Duration) -> Self {
        self.max_delay = max_delay;
        self
    }

    /// Whether another attempt may follow the failed attempt `attempt`.
    pub fn allows_retry_after(&self, attempt: Attempt) -> bool {
        attempt.0 < self.max_attempts
    }

    /// The largest delay that may follow the failed attempt `attempt`: `min(max_delay, base * 2^(attempt-1))`.
    pub fn delay_cap(&self, attempt: Attempt) -> Duration {
        let exponent = attempt.0.saturating_sub(1).min(31);
        let factor = 1u32 << exponent;
        self.base
            .checked_mul(factor)
            .unwrap_or(self.max_delay)
            .min(self.max_delay)
    }

    /// The delay after the failed attempt `attempt`, with full jitter; `unit` is a uniform draw
    /// from `[0, 1)` (a pure function of its inputs, so it is unit-testable).
    pub fn backoff(&self, attempt: Attempt, unit: f64) -> Duration {
        let unit = if unit.is_finite() {
            unit.clamp(0.0, 1.0)
        } else {
            0.0
        };
        self.delay_cap(attempt).mul_f64(unit)
    }
}

impl Default for RetryPolicy {
    /// 3 attempts, 100 ms base, 30 s cap.
    fn default() -> Self {
        RetryPolicy::exponential(3, Duration::from_millis(100))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_cap_doubles_then_stops_at_max_delay() {
        let policy = RetryPolicy::exponential(10, Duration::from_millis(100))
            .with_max_delay(Duration::from_millis(500));
        let caps: Vec<u128> = (1..=5)
            .map(|n| policy.delay_cap(Attempt(n)).as_millis())
            .collect();
        assert_eq!(caps, vec![100, 200, 400, 500, 500]);
    }

    #[test]
    fn full_jitter_draws_between_zero_and_the_cap() {
        let policy = RetryPolicy::exponential(5, Duration::from_millis(200));
        assert_eq!(policy.backoff(Attempt(2), 0.0), Duration::ZERO);
        assert_eq!(policy.backoff(Attempt(2), 0.5), Duration::from_millis(200));
        assert!(policy.backoff(Attempt(2), 0.999) < Duration::from_millis(400));
        assert_eq!(policy.backoff(Attempt(2), f64::NAN), Duration::ZERO);
    }

    #[test]
    fn max_attempts_bounds_retries() {
        let policy = RetryPolicy::exponential(3, Duration::from_millis(1));
        assert!(policy.allows_retry_after(Attempt(1)));
        assert!(policy.allows_retry_after(Attempt(2)));
        assert!(!policy.allows_retry_after(Attempt(3)));
        assert!(!RetryPolicy::NONE.allows_retry_after(Attempt::FIRST));
    }

    #[test]
    fn huge_attempt_numbers_do_not_overflow() {
        let policy = RetryPolicy::exponential(u32::MAX, Duration::from_secs(1));
        assert_eq!(policy.delay_cap(Attempt(u32::MAX)), Duration::from_secs(30));
    }
}
