//! What an operator's overview reads: sagas by type and status, what started and ended over a
//! recent window, steps that have been running longer than a threshold, and the
//! manual-intervention queue's depth and oldest item.
//!
//! A store answers an [`OverviewQuery`] with [`OverviewParts`], aggregates it computes where
//! the data is (one `GROUP BY` per part on SQL backends); [`Overview::assemble`] turns them into
//! the [`Overview`] every backend reports alike (one point per bucket, zeros included).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;
use crate::error::{Error, Result};
use crate::id::{SagaType, StepName};
use crate::status::{Phase, SagaStatus};

/// At most this many buckets in one overview.
pub const MAX_BUCKETS: u32 = 1_000;

/// What an overview covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverviewQuery {
    /// The end of the window (the store's clock).
    pub now: Timestamp,
    /// The start of the window: sagas started, finished or escalated since then are counted.
    pub since: Timestamp,
    /// The width of one point of the series.
    pub bucket: Duration,
    /// A step phase begun longer ago than this in a running or compensating saga is stuck.
    pub stuck_after: Duration,
    /// Whether to read the counts per type and status and the series. They read every saga
    /// row (or every one created in the window); a periodic sampler that only wants the stuck
    /// steps and the queue leaves them out (see [`OverviewQuery::queues`]).
    pub totals: bool,
}

impl OverviewQuery {
    /// The window `[now - window, now]` in buckets of `bucket`.
    ///
    /// # Errors
    /// [`Error::Configuration`] when the bucket is under a second, the window is not longer than
    /// one bucket, or there would be more than [`MAX_BUCKETS`] buckets.
    pub fn new(
        now: Timestamp,
        window: Duration,
        bucket: Duration,
        stuck_after: Duration,
    ) -> Result<Self> {
        if bucket < Duration::from_secs(1) {
            return Err(Error::Configuration(format!(
                "an overview bucket of {bucket:?} is too fine; use one second or more"
            )));
        }
        if window < bucket {
            return Err(Error::Configuration(format!(
                "an overview window of {window:?} is shorter than its bucket of {bucket:?}; widen the window"
            )));
        }
        let buckets = window.as_millis().div_ceil(bucket.as_millis());
        if buckets > u128::from(MAX_BUCKETS) {
            return Err(Error::Configuration(format!(
                "an overview of {window:?} in buckets of {bucket:?} has {buckets} points, more than {MAX_BUCKETS}; use wider buckets"
            )));
        }
        let window = chrono::Duration::from_std(window).map_err(|err| {
            Error::Configuration(format!("an overview window of {window:?}: {err}"))
        })?;
        let since = now.checked_sub_signed(window).ok_or_else(|| {
            Error::Configuration("an overview window reaching before the year 0".to_owned())
        })?;
        Ok(Self {
            now,
            since,
            bucket,
            stuck_after,
            totals: true,
        })
    }

    /// Only the stuck steps and the intervention queue, cheap enough to sample often: no
    /// counts, an empty series.
    pub fn queues(now: Timestamp, stuck_after: Duration) -> Self {
        Self {
            now,
            since: now,
            bucket: Duration::from_secs(1),
            stuck_after,
            totals: false,
        }
    }

    /// The window's start in milliseconds since the Unix epoch (what SQL stores compare with).
    pub fn since_millis(&self) -> i64 {
        self.since.timestamp_millis()
    }

    /// The bucket width in milliseconds.
    pub fn bucket_millis(&self) -> i64 {
        i64::try_from(self.bucket.as_millis()).unwrap_or(i64::MAX)
    }

    /// How many buckets the window has: the last one ends at `now` (and holds `now` itself).
    pub fn bucket_count(&self) -> usize {
        let span = (self.now.timestamp_millis() - self.since_millis()).max(1);
        let width = self.bucket_millis().max(1);
        usize::try_from((span + width - 1) / width).unwrap_or(1)
    }

    /// The bucket `at` falls in (`(at - since) / bucket`, rounded down), or `None` outside the
    /// window. SQL stores compute the same expression in their queries.
    pub fn bucket_of(&self, at: Timestamp) -> Option<usize> {
        if at < self.since || at > self.now {
            return None;
        }
        let offset = at.timestamp_millis() - self.since_millis();
        usize::try_from(offset / self.bucket_millis().max(1)).ok()
    }

    /// Begun before this is stuck.
    pub fn stuck_before(&self) -> Timestamp {
        chrono::Duration::from_std(self.stuck_after)
            .ok()
            .and_then(|age| self.now.checked_sub_signed(age))
            .unwrap_or(self.now)
    }
}

/// What a series point counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SeriesKind {
    /// Sagas created in the bucket.
    Started,
    /// Sagas that completed in the bucket (by their last change).
    Completed,
    /// Sagas that ended compensated in the bucket (by their last change).
    Compensated,
    /// Intervention items opened in the bucket.
    Escalated,
}

/// The aggregates a store computes for an [`OverviewQuery`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OverviewParts {
    /// How many sagas per type and status (all of them, not only the window's).
    pub counts: Vec<(SagaType, SagaStatus, u64)>,
    /// How many per series kind and bucket index ([`OverviewQuery::bucket_of`]).
    pub series: Vec<(SeriesKind, usize, u64)>,
    /// Stuck step phases per type, step and phase, with the earliest begin among them.
    pub stuck: Vec<StuckStep>,
    /// Open intervention items.
    pub open_interventions: u64,
    /// When the oldest open item was opened.
    pub oldest_open_intervention: Option<Timestamp>,
}

/// Sagas of a type whose current step phase has been begun longer than the threshold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StuckStep {
    /// Their type.
    pub saga_type: SagaType,
    /// The step they are in.
    pub step: StepName,
    /// Its action or its compensation.
    pub phase: Phase,
    /// How many sagas.
    pub sagas: u64,
    /// When the longest-stuck of them began it.
    pub since: Timestamp,
}

/// How many sagas of a type are in a status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypeCount {
    /// The type.
    pub saga_type: SagaType,
    /// The status.
    pub status: SagaStatus,
    /// How many.
    pub sagas: u64,
}

/// One bucket of the series.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeriesPoint {
    /// Where the bucket starts.
    pub start: Timestamp,
    /// Sagas started.
    pub started: u64,
    /// Sagas completed.
    pub completed: u64,
    /// Sagas compensated.
    pub compensated: u64,
    /// Intervention items opened.
    pub escalated: u64,
}

/// An operator's overview of a store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Overview {
    /// When it was read (the store's clock).
    pub now: Timestamp,
    /// Sagas per type and status, by type then status.
    pub counts: Vec<TypeCount>,
    /// One point per bucket from the window's start, oldest first.
    pub series: Vec<SeriesPoint>,
    /// Stuck step phases, longest stuck first.
    pub stuck: Vec<StuckStep>,
    /// The manual-intervention queue's depth.
    pub open_interventions: u64,
    /// When its oldest open item was opened.
    pub oldest_open_intervention: Option<Timestamp>,
}

impl Overview {
    /// The overview of `parts` as read for `query`: counts sorted by type and status, one
    /// series point per bucket (zeros included, counts outside the window dropped), stuck steps
    /// longest stuck first.
    pub fn assemble(query: &OverviewQuery, parts: OverviewParts) -> Self {
        let mut counts: Vec<TypeCount> = parts
            .counts
            .into_iter()
            .filter(|(_, _, sagas)| *sagas > 0)
            .map(|(saga_type, status, sagas)| TypeCount {
                saga_type,
                status,
                sagas,
            })
            .collect();
        counts.sort_by(|a, b| {
            (a.saga_type.as_str(), a.status.as_str())
                .cmp(&(b.saga_type.as_str(), b.status.as_str()))
        });
        let bucket = chrono::Duration::from_std(query.bucket).unwrap_or(chrono::Duration::zero());
        let points = if query.totals {
            query.bucket_count()
        } else {
            0
        };
        let mut series: Vec<SeriesPoint> = (0..points)
            .map(|index| SeriesPoint {
                start: i32::try_from(index)
                    .ok()
                    .and_then(|index| query.since.checked_add_signed(bucket * index))
                    .unwrap_or(query.now),
                started: 0,
                completed: 0,
                compensated: 0,
                escalated: 0,
            })
            .collect();
        for (kind, index, count) in parts.series {
            // `now` itself falls one past the last bucket, which it ends.
            let index = if index == points && points > 0 {
                points - 1
            } else {
                index
            };
            if let Some(point) = series.get_mut(index) {
                let slot = match kind {
                    SeriesKind::Started => &mut point.started,
                    SeriesKind::Completed => &mut point.completed,
                    SeriesKind::Compensated => &mut point.compensated,
                    SeriesKind::Escalated => &mut point.escalated,
                };
                *slot += count;
            }
        }
        let mut stuck = parts.stuck;
        stuck.retain(|step| step.sagas > 0);
        stuck.sort_by(|a, b| {
            (
                a.since,
                a.saga_type.as_str(),
                a.step.as_str(),
                a.phase.as_str(),
            )
                .cmp(&(
                    b.since,
                    b.saga_type.as_str(),
                    b.step.as_str(),
                    b.phase.as_str(),
                ))
        });
        Self {
            now: query.now,
            counts,
            series,
            stuck,
            open_interventions: parts.open_interventions,
            oldest_open_intervention: parts.oldest_open_intervention,
        }
    }

    /// How many sagas are in `status`, all types together.
    pub fn total(&self, status: SagaStatus) -> u64 {
        self.counts
            .iter()
            .filter(|count| count.status == status)
            .map(|count| count.sagas)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: i64) -> Timestamp {
        chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default()
    }

    #[test]
    fn buckets_cover_the_window_and_drop_what_falls_outside() {
        let query = OverviewQuery::new(
            at(100_000),
            Duration::from_secs(60),
            Duration::from_secs(10),
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(query.since, at(40_000));
        assert_eq!(query.bucket_count(), 6, "the last bucket ends at now");
        assert_eq!(query.bucket_of(at(39_999)), None);
        assert_eq!(query.bucket_of(at(40_000)), Some(0));
        assert_eq!(query.bucket_of(at(49_999)), Some(0));
        assert_eq!(query.bucket_of(at(100_000)), Some(6));
        assert_eq!(query.bucket_of(at(100_001)), None);
        let overview = Overview::assemble(
            &query,
            OverviewParts {
                series: vec![
                    (SeriesKind::Started, 0, 2),
                    (SeriesKind::Escalated, 6, 1),
                    (SeriesKind::Completed, 9, 5),
                ],
                ..OverviewParts::default()
            },
        );
        assert_eq!(overview.series.len(), 6);
        assert_eq!(overview.series[0].start, at(40_000));
        assert_eq!(overview.series[0].started, 2);
        assert_eq!(overview.series[5].start, at(90_000));
        assert_eq!(
            overview.series[5].escalated, 1,
            "now itself is counted in the last bucket"
        );
        assert_eq!(
            overview.series.iter().map(|p| p.completed).sum::<u64>(),
            0,
            "a count outside the window is dropped"
        );
    }

    #[test]
    fn a_query_with_too_many_or_too_fine_buckets_is_refused() {
        let now = at(1_000_000_000);
        let day = Duration::from_secs(86_400);
        assert!(OverviewQuery::new(now, day, Duration::from_secs(1), day).is_err());
        assert!(OverviewQuery::new(now, day, Duration::from_millis(10), day).is_err());
        assert!(
            OverviewQuery::new(now, Duration::from_secs(1), Duration::from_secs(2), day).is_err()
        );
        assert!(OverviewQuery::new(now, day, Duration::from_secs(3_600), day).is_ok());
    }
}
