//! States of sagas and steps, and the legal transitions between them.

use serde::{Deserialize, Serialize};

use crate::persisted::persisted;

/// Where a saga is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SagaStatus {
    /// Running its actions forward.
    Running,
    /// Every action completed.
    Completed,
    /// An action failed for good; compensating the completed steps in reverse order.
    Compensating,
    /// Every completed step was compensated.
    Compensated,
    /// A compensation failed for good, or the saga cannot be resumed: an operator must decide.
    NeedsIntervention,
    /// Stopped by an operator.
    Cancelled,
}

impl SagaStatus {
    /// True when workers drive sagas in this status.
    pub fn is_active(self) -> bool {
        matches!(self, SagaStatus::Running | SagaStatus::Compensating)
    }

    /// True when no worker will touch the saga again without an operator.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            SagaStatus::Completed | SagaStatus::Compensated | SagaStatus::Cancelled
        )
    }

    /// True when the saga stopped moving: terminal, or waiting for an operator.
    pub fn is_settled(self) -> bool {
        self.is_terminal() || self == SagaStatus::NeedsIntervention
    }

    /// Whether moving from `self` to `next` is a legal transition.
    pub fn can_become(self, next: SagaStatus) -> bool {
        use SagaStatus::*;
        matches!(
            (self, next),
            (Running, Completed)
                | (Running, Compensating)
                | (Running, NeedsIntervention)
                | (Running, Cancelled)
                | (Compensating, Compensated)
                | (Compensating, NeedsIntervention)
                | (Compensating, Cancelled)
                | (NeedsIntervention, Running)
                | (NeedsIntervention, Compensating)
                | (NeedsIntervention, Compensated)
                | (NeedsIntervention, Cancelled)
        )
    }
}

persisted!(
    SagaStatus,
    "saga status",
    [
        Running => "running",
        Compensating => "compensating",
        Completed => "completed",
        Compensated => "compensated",
        NeedsIntervention => "needs_intervention",
        Cancelled => "cancelled",
    ]
);

/// Where one phase (action or compensation) of one step is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// Not started, or waiting for a retry at its `next_attempt_at`.
    Pending,
    /// Recorded as started; its function is running or was interrupted by a crash.
    InProgress,
    /// Finished; its output is recorded.
    Completed,
    /// Failed for good.
    Failed,
    /// Not run on purpose: a policy (a frequency cap) made it a recorded no-op. It has no
    /// output, is never compensated, and the saga goes on past it.
    Skipped,
}

impl StepStatus {
    /// Whether moving from `self` to `next` is a legal transition.
    pub fn can_become(self, next: StepStatus) -> bool {
        use StepStatus::*;
        matches!(
            (self, next),
            (Pending, InProgress)
                | (InProgress, Completed)
                | (InProgress, Failed)
                | (InProgress, Pending)
                | (InProgress, InProgress)
                | (Failed, Pending)
                | (Failed, Completed)
                | (Pending, Skipped)
                | (InProgress, Skipped)
        )
    }
}

persisted!(
    StepStatus,
    "step status",
    [
        Pending => "pending",
        InProgress => "in_progress",
        Completed => "completed",
        Failed => "failed",
        Skipped => "skipped",
    ]
);

/// The two phases of a step: its action, and the compensation that undoes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// The forward action.
    Action,
    /// The compensation, run in reverse order after a later step failed for good.
    Compensation,
}

persisted!(
    Phase,
    "phase",
    [Action => "action", Compensation => "compensation"]
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_through_their_persisted_form() {
        for status in SagaStatus::ALL {
            assert_eq!(status.as_str().parse::<SagaStatus>().unwrap(), status);
        }
        for status in StepStatus::ALL {
            assert_eq!(status.as_str().parse::<StepStatus>().unwrap(), status);
        }
        assert_eq!(
            "compensation".parse::<Phase>().unwrap(),
            Phase::Compensation
        );
        assert!("Running".parse::<SagaStatus>().is_err());
    }

    #[test]
    fn finished_sagas_cannot_move_again() {
        for next in SagaStatus::ALL {
            assert!(!SagaStatus::Completed.can_become(next));
            assert!(!SagaStatus::Compensated.can_become(next));
            assert!(!SagaStatus::Cancelled.can_become(next));
        }
        assert!(SagaStatus::Running.can_become(SagaStatus::Compensating));
        assert!(!SagaStatus::Compensating.can_become(SagaStatus::Completed));
    }

    #[test]
    fn a_completed_step_never_runs_again() {
        assert!(!StepStatus::Completed.can_become(StepStatus::InProgress));
        assert!(!StepStatus::Completed.can_become(StepStatus::Pending));
        assert!(StepStatus::Pending.can_become(StepStatus::InProgress));
    }
}
