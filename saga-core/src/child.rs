//! Child sagas: a step that starts a saga of another type and waits for its end.
//!
//! A child step ([`Step::child`](crate::Step::child)) starts its child in the same write that
//! records the step `in_progress` ([`Change::StartChild`]), with a start key derived from the
//! step's own key ([`child_key`]), so that a step run again never starts a second child. The
//! parent then waits at the step holding no worker (`waiting_for` = `child:<step>`); the
//! child's last write wakes it ([`Change::NotifyParent`]). What the child became decides the
//! step ([`decide`]): completed completes it with a [`ChildOutput`]; compensated fails it for
//! good (the parent compensates what came before); running, compensating or waiting for a
//! person keeps the parent waiting (the child's own intervention item is where a person acts);
//! cancelled by a person (stopped where it was) leaves the step unknown, for a person.
//!
//! Compensating the step compensates the child: a completed child is sent back to compensate
//! its steps ([`Store::stop_child`](crate::Store::stop_child)), a running one is cancelled, and
//! the parent waits for it to end before it compensates the steps before.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::definition::StepSpec;
use crate::id::{IdempotencyKey, SagaId, SagaType, StepName};
use crate::status::{Phase, SagaStatus, StepStatus};
use crate::step::StepError;
use crate::store::{Change, SagaSnapshot, StepRecord};

/// The output of a child step: the child saga and the outputs of its steps, by step name. A
/// later step of the parent reads it with [`StepContext::output`](crate::StepContext::output).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChildOutput {
    /// The child saga.
    pub saga: SagaId,
    /// Its type.
    pub saga_type: SagaType,
    /// The output of each of its completed steps.
    pub outputs: BTreeMap<String, Value>,
}

impl ChildOutput {
    /// The output of the child's step `step`, decoded as `T`.
    ///
    /// # Errors
    /// A permanent [`StepError`] when the child has no such output or it does not decode as `T`.
    pub fn output<T: DeserializeOwned>(&self, step: &str) -> Result<T, StepError> {
        let value = self.outputs.get(step).ok_or_else(|| {
            StepError::permanent(format!(
                "child saga {} ({}) has no output of step `{step}`",
                self.saga, self.saga_type
            ))
        })?;
        serde_json::from_value(value.clone()).map_err(|err| {
            StepError::permanent(format!(
                "output of step `{step}` of child saga {} does not decode: {err}",
                self.saga
            ))
        })
    }

    /// The output of a completed child saga, from its snapshot.
    pub fn of(child: &SagaSnapshot) -> ChildOutput {
        ChildOutput {
            saga: child.record.id,
            saga_type: child.record.saga_type.clone(),
            outputs: child
                .steps
                .iter()
                .filter(|step| step.phase == Phase::Action && step.status == StepStatus::Completed)
                .filter_map(|step| {
                    step.output
                        .clone()
                        .map(|output| (step.name.as_str().to_owned(), output))
                })
                .collect(),
        }
    }
}

/// The start key of the child that step `step` of saga `parent` starts: derived from the
/// step's own key, so that every attempt of the step (and every worker that runs it) names the
/// same child.
pub fn child_key(parent: SagaId, step: &StepName) -> IdempotencyKey {
    IdempotencyKey::new(format!(
        "child:{}",
        IdempotencyKey::for_step(parent, step, Phase::Action)
    ))
}

/// What a child step does next, decided on the parent as read and its child as read now.
#[derive(Debug, Clone, PartialEq)]
pub enum ChildDecision {
    /// Record these changes on the parent, then plan again.
    Record(Vec<Change>),
    /// Ask the child (in this status) to stop — a cancel while it runs or waits for a person, a
    /// compensation once it completed — then look again.
    Stop(SagaId, SagaStatus),
    /// Wait for the child: record [`Change::AwaitChild`] and give the parent back.
    Await(SagaId, SagaStatus),
}

/// What child step `spec` of `parent`, begun as `record` says (its phase and attempt), does
/// now, given its child as read now (`None`: no child holds its key).
///
/// Action phase, the parent running: a completed child completes the step with its
/// [`ChildOutput`]; a compensated one fails it for good; otherwise the parent waits. Action
/// phase, the parent compensating (a cancel, a deadline, while the child runs): a running child,
/// or one waiting for a person, is asked to stop; one that completed first is recorded so, and
/// then compensated like any completed step; one compensated fails the step (it left nothing to
/// undo). Compensation phase: a completed child is sent back to compensate; a compensated one
/// completes the step's compensation.
///
/// A child a person cancelled (stopped where it was) may have left effects: its step's outcome
/// is unknown, and a person decides (an `unknown_outcome` item for the action, a
/// `compensation_failed` one for the compensation). So does a child that cannot be found.
pub fn decide(
    parent: &SagaSnapshot,
    spec: &StepSpec,
    record: &StepRecord,
    child: Option<&SagaSnapshot>,
) -> ChildDecision {
    let (index, phase, attempt, name) = (record.index, record.phase, record.attempt, &spec.name);
    let unknown = |error: String| {
        ChildDecision::Record(vec![match phase {
            Phase::Action => crate::plan::escalate_unknown(parent, spec, index, attempt, error),
            Phase::Compensation => crate::plan::escalate(parent, spec, index, error),
        }])
    };
    let Some(child) = child else {
        // Begun, yet no child holds its key: the child's start is written with the step's
        // `in_progress`, so this is a child removed by hand.
        return unknown(format!(
            "no child saga holds the key {}; it was removed from the store, and what it did is unknown",
            child_key(parent.record.id, name)
        ));
    };
    let child_record = &child.record;
    let reason = child_record
        .status_reason
        .as_deref()
        .unwrap_or("no reason recorded");
    match (phase, child_record.status) {
        (Phase::Action, SagaStatus::Completed) => {
            let output = serde_json::to_value(ChildOutput::of(child)).unwrap_or(Value::Null);
            ChildDecision::Record(vec![Change::CompleteStep {
                index,
                name: name.clone(),
                phase,
                attempt,
                output: Some(output),
            }])
        }
        (_, SagaStatus::Cancelled) => unknown(format!(
            "child saga {} ({}) was cancelled by a person where it was ({reason}); what it did may still be in effect: undo what is left by hand, then resolve",
            child_record.id, child_record.saga_type
        )),
        (Phase::Action, SagaStatus::Compensated) => {
            ChildDecision::Record(vec![Change::FailStep {
                index,
                name: name.clone(),
                phase,
                attempt,
                error: StepError::permanent(format!(
                    "child saga {} ({}) ended {}: {reason}",
                    child_record.id, child_record.saga_type, child_record.status
                )),
                retry_at: None,
            }])
        }
        (Phase::Action, SagaStatus::Running | SagaStatus::NeedsIntervention)
            if parent.record.status != SagaStatus::Running =>
        {
            ChildDecision::Stop(child_record.id, child_record.status)
        }
        (Phase::Compensation, SagaStatus::Completed) => {
            ChildDecision::Stop(child_record.id, child_record.status)
        }
        (Phase::Compensation, SagaStatus::Compensated) => {
            ChildDecision::Record(vec![Change::CompleteStep {
                index,
                name: name.clone(),
                phase,
                attempt,
                output: None,
            }])
        }
        (_, status) => ChildDecision::Await(child_record.id, status),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::id::{Attempt, StepIndex};
    use crate::store::SagaRecord;

    fn spec() -> StepSpec {
        StepSpec {
            name: StepName::new("ship"),
            compensable: true,
            retry: crate::RetryPolicy::default(),
            timeout: crate::DEFAULT_TIMEOUT,
            compensation_retry: crate::RetryPolicy::default(),
            compensation_timeout: crate::DEFAULT_TIMEOUT,
            transactional: false,
            probe: false,
            kind: crate::wait::StepKind::Child {
                saga_type: SagaType::new("shipment"),
            },
            pivot: false,
            policies: Vec::new(),
            group: None,
        }
    }

    fn begun(phase: Phase) -> StepRecord {
        StepRecord {
            index: StepIndex(1),
            phase,
            name: StepName::new("ship"),
            status: StepStatus::InProgress,
            attempt: Attempt::FIRST,
            idempotency_key: IdempotencyKey::new("k"),
            output: None,
            last_error: None,
            next_attempt_at: None,
            started_at: None,
            finished_at: None,
        }
    }

    fn snapshot(status: SagaStatus) -> SagaSnapshot {
        let now = crate::clock::now();
        SagaSnapshot {
            record: SagaRecord {
                id: SagaId::new(),
                saga_type: SagaType::new("shipment"),
                version: 1,
                fingerprint: String::new(),
                status,
                status_reason: Some("why".into()),
                input: Value::Null,
                input_hash: String::new(),
                idempotency_key: None,
                next_run_at: None,
                lease_owner: None,
                lease_expires_at: None,
                fencing_token: crate::id::FencingToken(0),
                trace_context: None,
                cancel_requested: None,
                created_at: now,
                updated_at: now,
                waiting_for: None,
                deadline: None,
                signals_received: 0,
                parent: None,
            },
            steps: Vec::new(),
            signals: Vec::new(),
        }
    }

    fn decide_for(parent: SagaStatus, phase: Phase, child: SagaStatus) -> ChildDecision {
        let mut child = snapshot(child);
        child.steps.push(StepRecord {
            index: StepIndex(0),
            phase: Phase::Action,
            name: StepName::new("pack"),
            status: StepStatus::Completed,
            attempt: Attempt::FIRST,
            idempotency_key: IdempotencyKey::new("k"),
            output: Some(serde_json::json!({"box": 7})),
            last_error: None,
            next_attempt_at: None,
            started_at: None,
            finished_at: None,
        });
        decide(&snapshot(parent), &spec(), &begun(phase), Some(&child))
    }

    #[test]
    fn a_completed_child_completes_the_step_with_its_outputs() {
        let ChildDecision::Record(changes) =
            decide_for(SagaStatus::Running, Phase::Action, SagaStatus::Completed)
        else {
            panic!("expected the step completed");
        };
        let [Change::CompleteStep {
            output: Some(output),
            ..
        }] = changes.as_slice()
        else {
            panic!("expected one completion: {changes:?}");
        };
        let output: ChildOutput = serde_json::from_value(output.clone()).unwrap();
        assert_eq!(output.output::<Value>("pack").unwrap()["box"], 7);
        assert!(output.output::<Value>("label").is_err());
    }

    #[test]
    fn a_compensated_child_fails_the_step_for_good() {
        let decision = decide_for(SagaStatus::Running, Phase::Action, SagaStatus::Compensated);
        assert!(
            matches!(&decision, ChildDecision::Record(changes)
                if matches!(changes.as_slice(), [Change::FailStep { error, retry_at: None, .. }]
                    if error.is_permanent())),
            "{decision:?}"
        );
    }

    #[test]
    fn a_child_a_person_cancelled_calls_a_person_for_its_step() {
        for (parent, phase) in [
            (SagaStatus::Running, Phase::Action),
            (SagaStatus::Compensating, Phase::Action),
            (SagaStatus::Compensating, Phase::Compensation),
        ] {
            let decision = decide_for(parent, phase, SagaStatus::Cancelled);
            assert!(
                matches!(&decision, ChildDecision::Record(changes)
                    if matches!(changes.as_slice(), [Change::Escalate(item)]
                        if item.phase == Some(phase) && item.error.contains("cancelled by a person"))),
                "{phase}: {decision:?}"
            );
        }
    }

    #[test]
    fn a_running_child_is_awaited_forward_and_stopped_when_the_parent_compensates() {
        for status in [
            SagaStatus::Running,
            SagaStatus::Compensating,
            SagaStatus::NeedsIntervention,
        ] {
            assert!(matches!(
                decide_for(SagaStatus::Running, Phase::Action, status),
                ChildDecision::Await(_, seen) if seen == status
            ));
        }
        for status in [SagaStatus::Running, SagaStatus::NeedsIntervention] {
            assert!(matches!(
                decide_for(SagaStatus::Compensating, Phase::Action, status),
                ChildDecision::Stop(_, seen) if seen == status
            ));
        }
        assert!(matches!(
            decide_for(
                SagaStatus::Compensating,
                Phase::Action,
                SagaStatus::Compensating
            ),
            ChildDecision::Await(..)
        ));
    }

    #[test]
    fn compensating_the_step_sends_a_completed_child_back_and_ends_with_it() {
        assert!(matches!(
            decide_for(
                SagaStatus::Compensating,
                Phase::Compensation,
                SagaStatus::Completed
            ),
            ChildDecision::Stop(_, SagaStatus::Completed)
        ));
        assert!(matches!(
            decide_for(
                SagaStatus::Compensating,
                Phase::Compensation,
                SagaStatus::Compensating
            ),
            ChildDecision::Await(..)
        ));
        let ChildDecision::Record(changes) = decide_for(
            SagaStatus::Compensating,
            Phase::Compensation,
            SagaStatus::Compensated,
        ) else {
            panic!("expected the compensation completed");
        };
        assert!(matches!(
            changes.as_slice(),
            [Change::CompleteStep {
                phase: Phase::Compensation,
                output: None,
                ..
            }]
        ));
    }

    #[test]
    fn a_child_removed_by_hand_calls_a_person() {
        for phase in [Phase::Action, Phase::Compensation] {
            let decision = decide(&snapshot(SagaStatus::Running), &spec(), &begun(phase), None);
            assert!(
                matches!(&decision, ChildDecision::Record(changes)
                    if matches!(changes.as_slice(), [Change::Escalate(item)] if item.phase == Some(phase))),
                "{phase}: {decision:?}"
            );
        }
    }
}
