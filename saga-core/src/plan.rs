//! Every decision of the data path, as pure functions over a snapshot: which step phase runs
//! next, whether a failure is retried, when to compensate and in what order, when to escalate.

use std::time::Duration;

use crate::clock::{self, Timestamp};
use crate::definition::StepSpec;
use crate::id::{Attempt, IdempotencyKey, InterventionId, StepIndex, StepName};
use crate::retry::RetryPolicy;
use crate::status::{Phase, SagaStatus, StepStatus};
use crate::step::StepError;
use crate::store::{Change, InterventionKind, NewIntervention, SagaSnapshot};

/// What a worker holding a saga's lease does next.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Record `in_progress`, then run this step phase.
    Run {
        /// The step.
        index: StepIndex,
        /// Action or compensation.
        phase: Phase,
        /// The attempt to record and run.
        attempt: Attempt,
    },
    /// Record these changes (no step runs), then plan again.
    Record(Vec<Change>),
    /// Nothing is due before this time: release the lease until then.
    WaitUntil(Timestamp),
    /// The saga reached this final status.
    Finish(SagaStatus),
    /// Nothing to do (the saga is settled): release the lease.
    Idle,
}

/// The next action for `snapshot`, whose definition has `steps`, at `now`.
pub fn next_action(snapshot: &SagaSnapshot, steps: &[StepSpec], now: Timestamp) -> Action {
    match snapshot.record.status {
        SagaStatus::Running => next_forward(snapshot, steps, now),
        SagaStatus::Compensating => next_compensation(snapshot, steps, now),
        SagaStatus::Completed
        | SagaStatus::Compensated
        | SagaStatus::NeedsIntervention
        | SagaStatus::Cancelled => Action::Idle,
    }
}

fn next_forward(snapshot: &SagaSnapshot, steps: &[StepSpec], now: Timestamp) -> Action {
    for (position, spec) in steps.iter().enumerate() {
        let index = step_index(position);
        let record = snapshot.step(index, Phase::Action);
        match record.map(|step| step.status) {
            Some(StepStatus::Completed) => continue,
            None => {
                return Action::Run {
                    index,
                    phase: Phase::Action,
                    attempt: Attempt::FIRST,
                }
            }
            Some(StepStatus::Pending) => {
                let (attempt, due) = record
                    .map(|step| (step.attempt, step.next_attempt_at))
                    .unwrap_or((Attempt(0), None));
                return run_when_due(index, Phase::Action, attempt.next(), due, now);
            }
            Some(StepStatus::InProgress) => {
                let attempt = record.map_or(Attempt::FIRST, |step| step.attempt);
                return resume_interrupted(snapshot, spec, index, Phase::Action, attempt);
            }
            Some(StepStatus::Failed) => {
                let error = record
                    .and_then(|step| step.last_error.clone())
                    .unwrap_or_default();
                return Action::Record(vec![start_compensating(&spec.name, &error)]);
            }
        }
    }
    Action::Finish(SagaStatus::Completed)
}

fn next_compensation(snapshot: &SagaSnapshot, steps: &[StepSpec], now: Timestamp) -> Action {
    for (position, spec) in steps.iter().enumerate().rev() {
        let index = step_index(position);
        let action_done = snapshot
            .step(index, Phase::Action)
            .is_some_and(|step| step.status == StepStatus::Completed);
        if !action_done || !spec.compensable {
            continue;
        }
        let record = snapshot.step(index, Phase::Compensation);
        match record.map(|step| step.status) {
            Some(StepStatus::Completed) => continue,
            None => {
                return Action::Run {
                    index,
                    phase: Phase::Compensation,
                    attempt: Attempt::FIRST,
                }
            }
            Some(StepStatus::Pending) => {
                let (attempt, due) = record
                    .map(|step| (step.attempt, step.next_attempt_at))
                    .unwrap_or((Attempt(0), None));
                return run_when_due(index, Phase::Compensation, attempt.next(), due, now);
            }
            Some(StepStatus::InProgress) => {
                let attempt = record.map_or(Attempt::FIRST, |step| step.attempt);
                return resume_interrupted(snapshot, spec, index, Phase::Compensation, attempt);
            }
            Some(StepStatus::Failed) => {
                let error = record
                    .and_then(|step| step.last_error.clone())
                    .unwrap_or_default();
                return Action::Record(vec![escalate(snapshot, spec, index, error)]);
            }
        }
    }
    Action::Finish(SagaStatus::Compensated)
}

fn run_when_due(
    index: StepIndex,
    phase: Phase,
    attempt: Attempt,
    due: Option<Timestamp>,
    now: Timestamp,
) -> Action {
    match due {
        Some(at) if at > now => Action::WaitUntil(at),
        _ => Action::Run {
            index,
            phase,
            attempt,
        },
    }
}

/// A step phase found `in_progress` was interrupted (its worker crashed or lost its lease).
/// The interrupted attempt counts: run the next one with the same key, or give up when the
/// policy allows no more.
fn resume_interrupted(
    snapshot: &SagaSnapshot,
    spec: &StepSpec,
    index: StepIndex,
    phase: Phase,
    attempt: Attempt,
) -> Action {
    let policy = policy_for(spec, phase);
    if policy.allows_retry_after(attempt) {
        return Action::Run {
            index,
            phase,
            attempt: attempt.next(),
        };
    }
    let error = StepError::transient(format!(
        "attempt {attempt} was interrupted (worker stopped or lost its lease) and no attempts are left"
    ));
    Action::Record(give_up(snapshot, spec, index, phase, attempt, error))
}

/// Which attempt of which step phase ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempted {
    /// The step.
    pub index: StepIndex,
    /// Action or compensation.
    pub phase: Phase,
    /// The attempt number.
    pub attempt: Attempt,
}

/// The changes that record the outcome of one attempt: completion; a retry at a jittered delay;
/// or, when the failure is final, compensation (for an action) or escalation (for a
/// compensation). `unit` is a uniform draw from `[0, 1)` for the jitter.
pub fn on_outcome(
    snapshot: &SagaSnapshot,
    spec: &StepSpec,
    attempted: Attempted,
    outcome: Result<Option<serde_json::Value>, StepError>,
    now: Timestamp,
    unit: f64,
) -> Vec<Change> {
    let Attempted {
        index,
        phase,
        attempt,
    } = attempted;
    match outcome {
        Ok(output) => vec![Change::CompleteStep {
            index,
            name: spec.name.clone(),
            phase,
            attempt,
            output,
        }],
        Err(error) => {
            let policy = policy_for(spec, phase);
            if !error.is_permanent() && policy.allows_retry_after(attempt) {
                let delay = policy.backoff(attempt, unit);
                vec![Change::FailStep {
                    index,
                    name: spec.name.clone(),
                    phase,
                    attempt,
                    error,
                    retry_at: Some(clock::after(now, delay)),
                }]
            } else {
                let error = if error.is_permanent() {
                    error
                } else {
                    StepError::transient(format!(
                        "{}; gave up after {attempt} attempt(s)",
                        error.message()
                    ))
                };
                give_up(snapshot, spec, index, phase, attempt, error)
            }
        }
    }
}

fn give_up(
    snapshot: &SagaSnapshot,
    spec: &StepSpec,
    index: StepIndex,
    phase: Phase,
    attempt: Attempt,
    error: StepError,
) -> Vec<Change> {
    let failed = Change::FailStep {
        index,
        name: spec.name.clone(),
        phase,
        attempt,
        error: error.clone(),
        retry_at: None,
    };
    match phase {
        Phase::Action => vec![failed, start_compensating(&spec.name, &error.to_string())],
        Phase::Compensation => vec![failed, escalate(snapshot, spec, index, error.to_string())],
    }
}

fn start_compensating(step: &StepName, error: &str) -> Change {
    Change::SetStatus {
        status: SagaStatus::Compensating,
        reason: Some(format!("step `{step}` failed: {error}")),
    }
}

fn escalate(snapshot: &SagaSnapshot, spec: &StepSpec, index: StepIndex, error: String) -> Change {
    Change::Escalate(NewIntervention {
        id: InterventionId::new(),
        kind: InterventionKind::CompensationFailed,
        step: Some((index, spec.name.clone())),
        phase: Some(Phase::Compensation),
        idempotency_key: Some(IdempotencyKey::for_step(
            snapshot.record.id,
            &spec.name,
            Phase::Compensation,
        )),
        input: Some(snapshot.record.input.clone()),
        output: snapshot
            .step(index, Phase::Action)
            .and_then(|step| step.output.clone()),
        error: format!("compensation of step `{}` failed: {error}", spec.name),
    })
}

/// The changes that park a saga that cannot be resumed (unknown type, changed definition,
/// unreadable data), with a readable reason.
pub fn park(snapshot: Option<&SagaSnapshot>, reason: String) -> Vec<Change> {
    vec![
        Change::Escalate(NewIntervention {
            id: InterventionId::new(),
            kind: InterventionKind::Unresumable,
            step: None,
            phase: None,
            idempotency_key: None,
            input: snapshot.map(|snapshot| snapshot.record.input.clone()),
            output: None,
            error: reason,
        }),
        Change::Release { next_run_at: None },
    ]
}

/// The retry policy of one phase of a step.
pub fn policy_for(spec: &StepSpec, phase: Phase) -> RetryPolicy {
    match phase {
        Phase::Action => spec.retry,
        Phase::Compensation => spec.compensation_retry,
    }
}

/// The timeout of one phase of a step.
pub fn timeout_for(spec: &StepSpec, phase: Phase) -> Duration {
    match phase {
        Phase::Action => spec.timeout,
        Phase::Compensation => spec.compensation_timeout,
    }
}

fn step_index(position: usize) -> StepIndex {
    StepIndex(u32::try_from(position).unwrap_or(u32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::{FencingToken, SagaId, SagaType};
    use crate::store::{SagaRecord, StepRecord};
    use serde_json::json;

    fn spec(name: &str, compensable: bool) -> StepSpec {
        StepSpec {
            name: StepName::new(name),
            compensable,
            retry: RetryPolicy::exponential(3, Duration::from_millis(100)),
            timeout: Duration::from_secs(1),
            compensation_retry: RetryPolicy::exponential(2, Duration::from_millis(100)),
            compensation_timeout: Duration::from_secs(1),
            transactional: false,
        }
    }

    fn steps() -> Vec<StepSpec> {
        vec![
            spec("reserve_stock", true),
            spec("send_receipt", false),
            spec("charge_card", true),
            spec("ship", true),
        ]
    }

    fn snapshot(status: SagaStatus) -> SagaSnapshot {
        let now = clock::now();
        SagaSnapshot {
            record: SagaRecord {
                id: SagaId::new(),
                saga_type: SagaType::new("checkout"),
                version: 1,
                fingerprint: "f".into(),
                status,
                status_reason: None,
                input: json!({"order": 1}),
                input_hash: "h".into(),
                idempotency_key: None,
                next_run_at: Some(now),
                lease_owner: None,
                lease_expires_at: None,
                fencing_token: FencingToken(1),
                trace_context: None,
                cancel_requested: None,
                created_at: now,
                updated_at: now,
            },
            steps: Vec::new(),
        }
    }

    fn with_step(
        mut snap: SagaSnapshot,
        index: u32,
        phase: Phase,
        status: StepStatus,
        attempt: u32,
    ) -> SagaSnapshot {
        let name = steps()[index as usize].name.clone();
        snap.steps.push(StepRecord {
            index: StepIndex(index),
            phase,
            idempotency_key: IdempotencyKey::for_step(snap.record.id, &name, phase),
            name,
            status,
            attempt: Attempt(attempt),
            output: Some(json!(index)),
            last_error: None,
            next_attempt_at: None,
            started_at: None,
            finished_at: None,
        });
        snap
    }

    fn run(index: u32, phase: Phase, attempt: u32) -> Action {
        Action::Run {
            index: StepIndex(index),
            phase,
            attempt: Attempt(attempt),
        }
    }

    #[test]
    fn a_new_saga_runs_its_first_action() {
        let snap = snapshot(SagaStatus::Running);
        assert_eq!(
            next_action(&snap, &steps(), clock::now()),
            run(0, Phase::Action, 1)
        );
    }

    #[test]
    fn completed_actions_are_skipped_and_never_rerun() {
        let snap = with_step(
            snapshot(SagaStatus::Running),
            0,
            Phase::Action,
            StepStatus::Completed,
            1,
        );
        assert_eq!(
            next_action(&snap, &steps(), clock::now()),
            run(1, Phase::Action, 1)
        );
    }

    #[test]
    fn all_actions_completed_finishes_the_saga() {
        let mut snap = snapshot(SagaStatus::Running);
        for index in 0..4 {
            snap = with_step(snap, index, Phase::Action, StepStatus::Completed, 1);
        }
        assert_eq!(
            next_action(&snap, &steps(), clock::now()),
            Action::Finish(SagaStatus::Completed)
        );
    }

    #[test]
    fn an_interrupted_step_is_retried_with_the_next_attempt() {
        let snap = with_step(
            snapshot(SagaStatus::Running),
            0,
            Phase::Action,
            StepStatus::InProgress,
            1,
        );
        assert_eq!(
            next_action(&snap, &steps(), clock::now()),
            run(0, Phase::Action, 2)
        );
    }

    #[test]
    fn an_interrupted_step_with_no_attempts_left_starts_compensation() {
        let snap = with_step(
            snapshot(SagaStatus::Running),
            0,
            Phase::Action,
            StepStatus::InProgress,
            3,
        );
        let Action::Record(changes) = next_action(&snap, &steps(), clock::now()) else {
            panic!("expected changes");
        };
        assert!(matches!(
            changes[0],
            Change::FailStep { retry_at: None, .. }
        ));
        assert!(matches!(
            changes[1],
            Change::SetStatus {
                status: SagaStatus::Compensating,
                ..
            }
        ));
    }

    #[test]
    fn a_pending_retry_waits_until_due() {
        let now = clock::now();
        let mut snap = with_step(
            snapshot(SagaStatus::Running),
            0,
            Phase::Action,
            StepStatus::Pending,
            1,
        );
        let due = clock::after(now, Duration::from_secs(5));
        snap.steps[0].next_attempt_at = Some(due);
        assert_eq!(next_action(&snap, &steps(), now), Action::WaitUntil(due));
        assert_eq!(next_action(&snap, &steps(), due), run(0, Phase::Action, 2));
    }

    #[test]
    fn transient_failures_retry_until_max_attempts_then_compensate() {
        let snap = snapshot(SagaStatus::Running);
        let spec = &steps()[0];
        let now = clock::now();
        for attempt in 1..=2 {
            let changes = on_outcome(
                &snap,
                spec,
                Attempted {
                    index: StepIndex(0),
                    phase: Phase::Action,
                    attempt: Attempt(attempt),
                },
                Err(StepError::transient("503")),
                now,
                0.5,
            );
            let [Change::FailStep {
                retry_at: Some(at), ..
            }] = changes.as_slice()
            else {
                panic!("attempt {attempt} should be retried: {changes:?}");
            };
            assert!(*at >= now);
        }
        let changes = on_outcome(
            &snap,
            spec,
            Attempted {
                index: StepIndex(0),
                phase: Phase::Action,
                attempt: Attempt(3),
            },
            Err(StepError::transient("503")),
            now,
            0.5,
        );
        assert_eq!(changes.len(), 2);
        assert!(matches!(
            changes[1],
            Change::SetStatus {
                status: SagaStatus::Compensating,
                ..
            }
        ));
    }

    #[test]
    fn permanent_failures_skip_retries() {
        let snap = snapshot(SagaStatus::Running);
        let changes = on_outcome(
            &snap,
            &steps()[0],
            Attempted {
                index: StepIndex(0),
                phase: Phase::Action,
                attempt: Attempt(1),
            },
            Err(StepError::permanent("card declined")),
            clock::now(),
            0.5,
        );
        assert!(matches!(
            changes[0],
            Change::FailStep { retry_at: None, .. }
        ));
        assert!(matches!(
            changes[1],
            Change::SetStatus {
                status: SagaStatus::Compensating,
                ..
            }
        ));
    }

    #[test]
    fn compensation_runs_completed_compensable_steps_in_reverse() {
        // Steps 0..=2 completed (1 is irreversible), step 3 failed.
        let mut snap = snapshot(SagaStatus::Compensating);
        for index in 0..3 {
            snap = with_step(snap, index, Phase::Action, StepStatus::Completed, 1);
        }
        snap = with_step(snap, 3, Phase::Action, StepStatus::Failed, 1);
        let now = clock::now();
        assert_eq!(
            next_action(&snap, &steps(), now),
            run(2, Phase::Compensation, 1)
        );
        snap = with_step(snap, 2, Phase::Compensation, StepStatus::Completed, 1);
        // The irreversible step 1 is skipped.
        assert_eq!(
            next_action(&snap, &steps(), now),
            run(0, Phase::Compensation, 1)
        );
        snap = with_step(snap, 0, Phase::Compensation, StepStatus::Completed, 1);
        assert_eq!(
            next_action(&snap, &steps(), now),
            Action::Finish(SagaStatus::Compensated)
        );
    }

    #[test]
    fn a_failed_compensation_escalates_with_the_step_key_input_and_output() {
        let snap = with_step(
            snapshot(SagaStatus::Compensating),
            0,
            Phase::Action,
            StepStatus::Completed,
            1,
        );
        let changes = on_outcome(
            &snap,
            &steps()[0],
            Attempted {
                index: StepIndex(0),
                phase: Phase::Compensation,
                attempt: Attempt(2),
            },
            Err(StepError::transient("warehouse down")),
            clock::now(),
            0.5,
        );
        let [Change::FailStep { .. }, Change::Escalate(item)] = changes.as_slice() else {
            panic!("expected escalation: {changes:?}");
        };
        assert_eq!(item.kind, InterventionKind::CompensationFailed);
        assert_eq!(
            item.idempotency_key
                .as_ref()
                .map(|key| key.as_str().to_owned()),
            Some(format!("{}:reserve_stock:compensation", snap.record.id))
        );
        assert_eq!(item.output, Some(json!(0)));
        assert_eq!(item.input, Some(json!({"order": 1})));
        assert!(item.error.contains("warehouse down"), "{}", item.error);
    }

    #[test]
    fn settled_sagas_have_nothing_to_do() {
        for status in [
            SagaStatus::Completed,
            SagaStatus::Compensated,
            SagaStatus::NeedsIntervention,
            SagaStatus::Cancelled,
        ] {
            assert_eq!(
                next_action(&snapshot(status), &steps(), clock::now()),
                Action::Idle
            );
        }
    }
}
