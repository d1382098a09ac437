//! States of sagas and steps, and the legal transitions between them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

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
    /// Every status, in life-cycle order.
    pub const ALL: [SagaStatus; 6] = [
        SagaStatus::Running,
        SagaStatus::Compensating,
        SagaStatus::Completed,
        SagaStatus::Compensated,
        SagaStatus::NeedsIntervention,
        SagaStatus::Cancelled,
    ];

    /// The persisted form.
    pub fn as_str(self) -> &'static str {
        match self {
            SagaStatus::Running => "running",
            SagaStatus::Completed => "completed",
            SagaStatus::Compensating => "compensating",
            SagaStatus::Compensated => "compensated",
            SagaStatus::NeedsIntervention => "needs_intervention",
            SagaStatus::Cancelled => "cancelled",
        }
    }

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

impl fmt::Display for SagaStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A persisted status text that names no known status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} `{value}`")]
pub struct UnknownStatus {
    /// What was being parsed.
    pub kind: &'static str,
    /// The text found.
    pub value: String,
}

impl FromStr for SagaStatus {
    type Err = UnknownStatus;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SagaStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| UnknownStatus {
                kind: "saga status",
                value: s.to_owned(),
            })
    }
}

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
}

impl StepStatus {
    const ALL: [StepStatus; 4] = [
        StepStatus::Pending,
        StepStatus::InProgress,
        StepStatus::Completed,
        StepStatus::Failed,
    ];

    /// The persisted form.
    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Pending => "pending",
            StepStatus::InProgress => "in_progress",
            StepStatus::Completed => "completed",
            StepStatus::Failed => "failed",
        }
    }

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
        )
    }
}

impl fmt::Display for StepStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for StepStatus {
    type Err = UnknownStatus;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        StepStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| UnknownStatus {
                kind: "step status",
                value: s.to_owned(),
            })
    }
}

/// The two phases of a step: its action, and the compensation that undoes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// The forward action.
    Action,
    /// The compensation, run in reverse order after a later step failed for good.
    Compensation,
}

impl Phase {
    /// The persisted form.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Action => "action",
            Phase::Compensation => "compensation",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Phase {
    type Err = UnknownStatus;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "action" => Ok(Phase::Action),
            "compensation" => Ok(Phase::Compensation),
            _ => Err(UnknownStatus {
                kind: "phase",
                value: s.to_owned(),
            }),
        }
    }
}

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
