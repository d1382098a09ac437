//! A saga with its step records, as read in one go (how a write moves it is in
//! [`write`](super::write)).

use crate::id::{IdempotencyKey, StepIndex};
use crate::status::Phase;

use super::{Change, SagaRecord, StepRecord};

/// One saga and all its step records, as read in one go.
#[derive(Debug, Clone, PartialEq)]
pub struct SagaSnapshot {
    /// The saga.
    pub record: SagaRecord,
    /// Its step phases that ever started, ordered by (index, phase).
    pub steps: Vec<StepRecord>,
    /// The signals delivered to it, in the order they arrived.
    pub signals: Vec<crate::wait::SignalRecord>,
}

impl SagaSnapshot {
    /// The record of one step phase, if it ever started.
    pub fn step(&self, index: StepIndex, phase: Phase) -> Option<&StepRecord> {
        self.steps
            .iter()
            .find(|step| step.index == index && step.phase == phase)
    }

    /// The signal of this name delivered to the saga, if any.
    pub fn signal(&self, name: &str) -> Option<&crate::wait::SignalRecord> {
        self.signals.iter().find(|signal| signal.name == name)
    }

    /// Whether this snapshot, freshly loaded, already shows `changes` written under `lease`: no
    /// other worker claimed the saga since (same fencing token), and applying the changes again
    /// would move no status, attempt, error or lease. A worker whose write failed ambiguously
    /// (the store committed it, but the answer was lost) tells with this a committed write from
    /// one to retry: every batch a worker writes ends by beginning a step or releasing the
    /// lease, which changes the saga, so a batch that changes nothing was written already.
    pub fn reflects(&self, lease: &super::Lease, changes: &[Change]) -> bool {
        if self.record.fencing_token != lease.token {
            return false;
        }
        let mut again = self.clone();
        if again.apply_all(changes, self.record.updated_at).is_err() {
            return false;
        }
        let same_step = |a: &StepRecord, b: &StepRecord| {
            (a.index, a.phase, a.status, a.attempt, &a.last_error)
                == (b.index, b.phase, b.status, b.attempt, &b.last_error)
        };
        again.record.status == self.record.status
            && again.record.status_reason == self.record.status_reason
            && again.record.lease_owner == self.record.lease_owner
            && again.steps.len() == self.steps.len()
            && again
                .steps
                .iter()
                .zip(&self.steps)
                .all(|(a, b)| same_step(a, b))
    }

    /// The stable key of one step phase of this saga.
    pub fn key_for(&self, name: &crate::id::StepName, phase: Phase) -> IdempotencyKey {
        IdempotencyKey::for_step(self.record.id, name, phase)
    }
}
