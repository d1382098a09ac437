//! A saga with its step records, and how a [`Change`] moves it: shared by the memory store and
//! by workers keeping their local copy in step with what they wrote.

use crate::clock::Timestamp;
use crate::error::{Error, Result};
use crate::id::{IdempotencyKey, StepIndex, StepName};
use crate::status::{Phase, SagaStatus, StepStatus};

use super::{Change, SagaRecord, StepRecord};

/// One saga and all its step records, as read in one go.
#[derive(Debug, Clone, PartialEq)]
pub struct SagaSnapshot {
    /// The saga.
    pub record: SagaRecord,
    /// Its step phases that ever started, ordered by (index, phase).
    pub steps: Vec<StepRecord>,
}

impl SagaSnapshot {
    /// The record of one step phase, if it ever started.
    pub fn step(&self, index: StepIndex, phase: Phase) -> Option<&StepRecord> {
        self.steps
            .iter()
            .find(|step| step.index == index && step.phase == phase)
    }

    fn step_mut(
        &mut self,
        index: StepIndex,
        name: &StepName,
        phase: Phase,
    ) -> Result<&mut StepRecord> {
        let saga = self.record.id;
        self.steps
            .iter_mut()
            .find(|step| step.index == index && step.phase == phase)
            .ok_or_else(|| Error::IllegalTransition {
                saga,
                reason: super::never_began(name, phase),
            })
    }

    /// Applies one change at time `now`, as a store does.
    ///
    /// # Errors
    /// [`Error::Store`] for an illegal transition (restarting a completed step, finishing a step
    /// that never started); nothing is changed then.
    pub fn apply(&mut self, change: &Change, now: Timestamp) -> Result<()> {
        match change {
            Change::BeginStep {
                index,
                name,
                phase,
                attempt,
                key,
            } => {
                if let Some(step) = self
                    .steps
                    .iter_mut()
                    .find(|step| step.index == *index && step.phase == *phase)
                {
                    if step.status == StepStatus::Completed {
                        return Err(Error::IllegalTransition {
                            saga: self.record.id,
                            reason: super::completed_never_runs_again(name, *phase),
                        });
                    }
                    step.status = StepStatus::InProgress;
                    step.attempt = *attempt;
                    step.next_attempt_at = None;
                    step.started_at = Some(now);
                    step.finished_at = None;
                } else {
                    self.steps.push(StepRecord {
                        index: *index,
                        phase: *phase,
                        name: name.clone(),
                        status: StepStatus::InProgress,
                        attempt: *attempt,
                        idempotency_key: key.clone(),
                        output: None,
                        last_error: None,
                        next_attempt_at: None,
                        started_at: Some(now),
                        finished_at: None,
                    });
                    self.steps.sort_by_key(|step| (step.index, step.phase));
                }
            }
            Change::CompleteStep {
                index,
                name,
                phase,
                output,
                ..
            } => {
                let step = self.step_mut(*index, name, *phase)?;
                step.status = StepStatus::Completed;
                step.output = output.clone();
                step.finished_at = Some(now);
                step.next_attempt_at = None;
            }
            Change::FailStep {
                index,
                name,
                phase,
                error,
                retry_at,
                ..
            } => {
                let status = change.step_status().unwrap_or(StepStatus::Failed);
                let step = self.step_mut(*index, name, *phase)?;
                step.status = status;
                step.last_error = Some(error.to_string());
                step.next_attempt_at = *retry_at;
                step.finished_at = Some(now);
            }
            Change::SetStatus { status, reason } => {
                self.record.status = *status;
                self.record.status_reason = reason.clone();
                if *status != SagaStatus::Running {
                    self.record.cancel_requested = None;
                }
            }
            Change::Escalate(item) => {
                // A pending cancel request outlives the escalation: a saga re-driven forward by
                // an operator still begins no new step, and compensates instead.
                self.record.status = SagaStatus::NeedsIntervention;
                self.record.status_reason = Some(item.error.clone());
            }
            Change::Release { next_run_at } => {
                self.record.lease_owner = None;
                self.record.lease_expires_at = None;
                self.record.next_run_at = *next_run_at;
            }
        }
        self.record.updated_at = now;
        Ok(())
    }

    /// Applies changes in order; on error, the snapshot may be partly changed (callers that
    /// need all-or-nothing apply to a clone).
    ///
    /// # Errors
    /// As [`SagaSnapshot::apply`].
    pub fn apply_all(&mut self, changes: &[Change], now: Timestamp) -> Result<()> {
        changes
            .iter()
            .try_for_each(|change| self.apply(change, now))
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
