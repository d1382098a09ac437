//! Every decision of the data path, as pure functions over a snapshot: which step phase runs
//! next, whether a failure is retried, when to compensate and in what order, when to escalate.

use std::time::Duration;

use crate::clock::{self, Timestamp};
use crate::definition::StepSpec;
use crate::id::{Attempt, IdempotencyKey, InterventionId, StepIndex, StepName};
use crate::retry::RetryPolicy;
use crate::status::{Phase, SagaStatus, StepStatus};
use crate::step::{FailureKind, StepError};
use crate::store::{
    Change, InterventionKind, NewIntervention, ParentLink, SagaSnapshot, StepRecord,
};
use crate::wait::{Approval, StepKind};

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
    /// Ask the step's probe, with the action's key, whether an attempt whose outcome is unknown
    /// took effect, then record its answer with [`on_probe`].
    Probe(Probing),
    /// A waiting step (a timer, a signal, an approval) waits: record it waiting (see [`wait`])
    /// and give the lease back.
    Wait(Waiting),
    /// Record these changes (no step runs), then plan again.
    Record(Vec<Change>),
    /// Run the steps of the parallel group that begins at `first` concurrently, in `phase`:
    /// ask [`group_round`] which may begin, record them `in_progress` together, run them, record
    /// each outcome as it comes, and ask again, until none may begin and none runs.
    RunGroup {
        /// The group's first step.
        first: StepIndex,
        /// Action (the group runs) or compensation (it is undone).
        phase: Phase,
    },
    /// A child step ([`StepKind::Child`]): start its child (`begins`: the phase begins now),
    /// or read the child and act on what it became ([`crate::child::decide`]).
    Child(ChildStep),
    /// Nothing is due before this time: release the lease until then.
    WaitUntil(Timestamp),
    /// The saga reached this final status.
    Finish(SagaStatus),
    /// Nothing to do (the saga is settled): release the lease.
    Idle,
}

/// A waiting step about to wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Waiting {
    /// The step.
    pub index: StepIndex,
    /// Whether the wait begins now (the step is not begun yet): its end is then computed by the
    /// worker (the step's limit from now, or its wake function).
    pub begins: bool,
    /// When the wait ends, if it began already (`None`: when its signal comes).
    pub until: Option<Timestamp>,
}

/// A child step to act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChildStep {
    /// The step.
    pub index: StepIndex,
    /// The action (start the child, or wait for its end) or the compensation (send the child
    /// back to compensate, and wait for that).
    pub phase: Phase,
    /// Whether the phase begins now, with this attempt; otherwise it began already.
    pub begins: Option<Attempt>,
}

/// The next action for `snapshot`, whose definition has `steps` and no deadline, at `now`.
pub fn next_action(snapshot: &SagaSnapshot, steps: &[StepSpec], now: Timestamp) -> Action {
    next_action_within(snapshot, steps, None, now)
}

/// The next action for `snapshot`, whose definition has `steps` and must end by `deadline`
/// (see [`applicable_deadline`]), at `now`.
pub fn next_action_within(
    snapshot: &SagaSnapshot,
    steps: &[StepSpec],
    deadline: Option<Timestamp>,
    now: Timestamp,
) -> Action {
    match snapshot.record.status {
        SagaStatus::Running => next_forward(snapshot, steps, deadline, now),
        SagaStatus::Compensating => next_compensation(snapshot, steps, now),
        SagaStatus::Completed
        | SagaStatus::Compensated
        | SagaStatus::NeedsIntervention
        | SagaStatus::Cancelled => Action::Idle,
    }
}

fn next_forward(
    snapshot: &SagaSnapshot,
    steps: &[StepSpec],
    deadline: Option<Timestamp>,
    now: Timestamp,
) -> Action {
    // Past the pivot the saga only goes forward; before it, a passed deadline stops it.
    let pivot = pivot_passed(snapshot, steps);
    let overdue = deadline.filter(|at| *at <= now && pivot.is_none());
    // Written only if no signal came since this snapshot was read: a signal might have let
    // the saga go on.
    let stop_for_deadline = |at: Timestamp| {
        Action::Record(vec![
            Change::SetStatus {
                status: SagaStatus::Compensating,
                reason: Some(format!(
                    "the saga's deadline ({}) passed before it finished",
                    at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                )),
            },
            no_signal_since(snapshot),
        ])
    };
    // A step failed for good: the saga compensates, unless it passed its point of no return.
    let failed = |index: StepIndex, spec: &StepSpec, error: String| {
        if let Some(pivot) = &pivot {
            return Action::Record(vec![escalate_past_pivot(
                snapshot,
                Some((index, &spec.name)),
                format!(
                    "step `{}` failed for good after the pivot step `{pivot}` completed, so the saga cannot be compensated: {error}",
                    spec.name
                ),
            )]);
        }
        Action::Record(vec![start_compensating(&spec.name, &error)])
    };
    for (position, spec) in steps.iter().enumerate() {
        let index = step_index(position);
        if let Some(members) = group_range(steps, position) {
            // A group is planned as one, at its first step.
            if position != members.start {
                continue;
            }
            let round = group_round(snapshot, steps, members, Phase::Action, now, &[]);
            if round.done {
                continue;
            }
            if let Some((spec, record)) = round
                .unsettled
                .and_then(|i| member(snapshot, steps, i, Phase::Action))
            {
                // Settled now, unless that calls a person while other steps of the group can
                // still run: they run first, so that the person finds nothing else unsettled.
                let settle = settle_begun(snapshot, spec, record, now);
                if !escalates(&settle) || !round.can_run() {
                    return settle;
                }
            }
            if let Some((spec, record)) = round
                .failed
                .and_then(|i| member(snapshot, steps, i, Phase::Action))
            {
                return failed(
                    record.index,
                    spec,
                    record.last_error.clone().unwrap_or_default(),
                );
            }
            if let Some(at) = overdue {
                return stop_for_deadline(at);
            }
            if !round.due.is_empty() {
                return Action::RunGroup {
                    first: index,
                    phase: Phase::Action,
                };
            }
            if let Some(at) = round.next_due {
                return Action::WaitUntil(
                    bounded(Some(at), deadline, pivot.is_none()).unwrap_or(at),
                );
            }
            continue;
        }
        let child = matches!(spec.kind, StepKind::Child { .. });
        let Some(record) = snapshot.step(index, Phase::Action) else {
            if child {
                if let Some(at) = overdue {
                    return stop_for_deadline(at);
                }
                return Action::Child(ChildStep {
                    index,
                    phase: Phase::Action,
                    begins: Some(Attempt::FIRST),
                });
            }
            if spec.kind.waits() {
                // A signal that came before the saga got here is consumed at once.
                if let Some(settled) = received(snapshot, spec, index, Attempt::FIRST) {
                    let mut changes = vec![Change::BeginStep {
                        index,
                        name: spec.name.clone(),
                        phase: Phase::Action,
                        attempt: Attempt::FIRST,
                        key: IdempotencyKey::for_step(
                            snapshot.record.id,
                            &spec.name,
                            Phase::Action,
                        ),
                    }];
                    changes.extend(settled);
                    return Action::Record(changes);
                }
                if let Some(at) = overdue {
                    return stop_for_deadline(at);
                }
                return Action::Wait(Waiting {
                    index,
                    begins: true,
                    until: None,
                });
            }
            if let Some(at) = overdue {
                return stop_for_deadline(at);
            }
            return Action::Run {
                index,
                phase: Phase::Action,
                attempt: Attempt::FIRST,
            };
        };
        match record.status {
            // A skipped step (a cap reached) is a recorded no-op: the saga goes on past it.
            StepStatus::Completed | StepStatus::Skipped => continue,
            StepStatus::Pending | StepStatus::InProgress if child => {
                if let Some(at) = overdue {
                    return stop_for_deadline(at);
                }
                return Action::Child(ChildStep {
                    index,
                    phase: Phase::Action,
                    // Sent forward again by a person: the step begins anew, and finds the child
                    // its key started.
                    begins: (record.status == StepStatus::Pending).then(|| record.attempt.next()),
                });
            }
            StepStatus::Pending if spec.kind.waits() => {
                // Sent forward again by a person (a `retry` past the pivot): wait anew.
                if let Some(at) = overdue {
                    return stop_for_deadline(at);
                }
                return Action::Wait(Waiting {
                    index,
                    begins: true,
                    until: None,
                });
            }
            StepStatus::Pending => {
                if let Some(at) = overdue {
                    return stop_for_deadline(at);
                }
                let attempt = record.attempt.next();
                return match run_when_due(
                    index,
                    Phase::Action,
                    attempt,
                    record.next_attempt_at,
                    now,
                ) {
                    // The deadline may come before the retry: be woken for it.
                    Action::WaitUntil(at) => Action::WaitUntil(
                        bounded(Some(at), deadline, pivot.is_none()).unwrap_or(at),
                    ),
                    action => action,
                };
            }
            StepStatus::InProgress if spec.kind.waits() => {
                return settle_wait(snapshot, spec, record, now).unwrap_or_else(|| {
                    overdue.map_or(
                        Action::Wait(Waiting {
                            index,
                            begins: false,
                            until: record.next_attempt_at,
                        }),
                        stop_for_deadline,
                    )
                })
            }
            StepStatus::InProgress => return settle_begun(snapshot, spec, record, now),
            StepStatus::Failed => {
                return failed(index, spec, record.last_error.clone().unwrap_or_default());
            }
        }
    }
    Action::Finish(SagaStatus::Completed)
}

/// The positions of the parallel group that the step at `position` belongs to (`None`: it
/// belongs to none).
pub fn group_range(steps: &[StepSpec], position: usize) -> Option<std::ops::Range<usize>> {
    let name = &steps.get(position)?.group.as_ref()?.name;
    let same = |spec: &StepSpec| spec.group.as_ref().is_some_and(|g| &g.name == name);
    let start = steps
        .get(..position)?
        .iter()
        .rposition(|spec| !same(spec))
        .map_or(0, |before| before + 1);
    let end = steps
        .get(position..)?
        .iter()
        .position(|spec| !same(spec))
        .map_or(steps.len(), |after| position + after);
    Some(start..end)
}

/// Where the steps of a parallel group stand in one phase, for the worker running them.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Round {
    /// The steps that may begin now (not running), in their order.
    pub due: Vec<Attempted>,
    /// When the earliest retry not yet due is.
    pub next_due: Option<Timestamp>,
    /// A step begun and not running here: its outcome is unknown until it is settled (alone,
    /// like any begun step).
    pub unsettled: Option<StepIndex>,
    /// A step that failed for good: no step of the group begins anew.
    pub failed: Option<StepIndex>,
    /// Every step of the group is through this phase (completed, skipped, or, compensating,
    /// with nothing to undo).
    pub done: bool,
}

/// Where the steps at `members` (a parallel group) stand in `phase` at `now`; `running` lists
/// those whose attempts run now. In compensation, only the steps whose action completed and
/// that are compensable take part.
pub fn group_round(
    snapshot: &SagaSnapshot,
    steps: &[StepSpec],
    members: std::ops::Range<usize>,
    phase: Phase,
    now: Timestamp,
    running: &[StepIndex],
) -> Round {
    let mut round = Round {
        done: true,
        ..Round::default()
    };
    for position in members {
        let Some(spec) = steps.get(position) else {
            continue;
        };
        let index = step_index(position);
        if phase == Phase::Compensation {
            let action_done = snapshot
                .step(index, Phase::Action)
                .is_some_and(|step| step.status == StepStatus::Completed);
            if !action_done || !spec.compensable {
                continue;
            }
        }
        let Some(record) = snapshot.step(index, phase) else {
            round.done = false;
            round.due.push(Attempted {
                index,
                phase,
                attempt: Attempt::FIRST,
            });
            continue;
        };
        match record.status {
            StepStatus::Completed | StepStatus::Skipped => {}
            StepStatus::InProgress if running.contains(&index) => round.done = false,
            // An attempt whose outcome is unknown, with its next attempt scheduled and no probe
            // to ask first: that attempt (same key) begins beside the others when due, as
            // `settle_begun` would begin it alone.
            StepStatus::InProgress
                if record.next_attempt_at.is_some() && !(phase == Phase::Action && spec.probe) =>
            {
                round.done = false;
                match record.next_attempt_at {
                    Some(at) if at > now => {
                        round.next_due = Some(round.next_due.map_or(at, |next| next.min(at)));
                    }
                    _ => round.due.push(Attempted {
                        index,
                        phase,
                        attempt: record.attempt.next(),
                    }),
                }
            }
            StepStatus::InProgress => {
                round.done = false;
                round.unsettled = round.unsettled.or(Some(index));
            }
            StepStatus::Failed => {
                round.done = false;
                round.failed = round.failed.or(Some(index));
            }
            StepStatus::Pending => {
                round.done = false;
                match record.next_attempt_at {
                    Some(at) if at > now => {
                        round.next_due = Some(round.next_due.map_or(at, |next| next.min(at)));
                    }
                    _ => round.due.push(Attempted {
                        index,
                        phase,
                        attempt: record.attempt.next(),
                    }),
                }
            }
        }
    }
    round
}

impl Round {
    /// Whether a step of the group may still begin, now or at a retry's time.
    pub fn can_run(&self) -> bool {
        !self.due.is_empty() || self.next_due.is_some()
    }
}

/// Whether `action` calls a person (opens an intervention item).
fn escalates(action: &Action) -> bool {
    matches!(action, Action::Record(changes) if changes.iter().any(|change| matches!(change, Change::Escalate(_))))
}

/// The spec and the record of phase `phase` of the step at `index`, when both exist.
fn member<'s>(
    snapshot: &'s SagaSnapshot,
    steps: &'s [StepSpec],
    index: StepIndex,
    phase: Phase,
) -> Option<(&'s StepSpec, &'s StepRecord)> {
    let spec = steps.get(usize::try_from(index.0).ok()?)?;
    Some((spec, snapshot.step(index, phase)?))
}

/// The earlier of a wait's end and the saga's deadline (when the deadline still applies).
fn bounded(
    until: Option<Timestamp>,
    deadline: Option<Timestamp>,
    applies: bool,
) -> Option<Timestamp> {
    match (until, deadline.filter(|_| applies)) {
        (Some(until), Some(deadline)) => Some(until.min(deadline)),
        (until, deadline) => until.or(deadline),
    }
}

/// The name of the pivot step that completed, if the saga passed its point of no return.
pub fn pivot_passed(snapshot: &SagaSnapshot, steps: &[StepSpec]) -> Option<StepName> {
    steps.iter().enumerate().find_map(|(position, spec)| {
        let completed = snapshot
            .step(step_index(position), Phase::Action)
            .is_some_and(|step| step.status == StepStatus::Completed);
        (spec.pivot && completed).then(|| spec.name.clone())
    })
}

/// What a begun wait does now: complete with the signal that came (or the timer that rang),
/// or end at its time (a default output, or a permanent failure); `None` while it still waits.
fn settle_wait(
    snapshot: &SagaSnapshot,
    spec: &StepSpec,
    record: &StepRecord,
    now: Timestamp,
) -> Option<Action> {
    let (index, attempt) = (record.index, record.attempt);
    if let Some(changes) = received(snapshot, spec, index, attempt) {
        return Some(Action::Record(changes));
    }
    if record.next_attempt_at.is_none_or(|until| until > now) {
        // Not over yet; a sleep without a recorded end (never written so) ends now.
        return (matches!(spec.kind, StepKind::Sleep { .. }) && record.next_attempt_at.is_none())
            .then(|| {
                let now = serde_json::to_value(now).unwrap_or(serde_json::Value::Null);
                Action::Record(vec![complete(spec, index, attempt, now)])
            });
    }
    let until = record.next_attempt_at.unwrap_or(now);
    let ended = match &spec.kind {
        StepKind::Call | StepKind::Child { .. } => return None,
        StepKind::Sleep { .. } => complete(
            spec,
            index,
            attempt,
            serde_json::to_value(until).unwrap_or(serde_json::Value::Null),
        ),
        StepKind::Signal {
            default: Some(default),
            ..
        } => complete(spec, index, attempt, default.clone()),
        StepKind::Signal { name, .. } => fail(
            spec,
            index,
            attempt,
            format!(
                "no signal `{name}` came before the wait ended{}",
                waited_since(record)
            ),
        ),
        StepKind::Approval { .. } => fail(
            spec,
            index,
            attempt,
            format!(
                "nobody approved or rejected it before the wait ended{}",
                waited_since(record)
            ),
        ),
    };
    // A wait that ends without its signal is written only if none came since this snapshot.
    Some(Action::Record(match &spec.kind {
        StepKind::Sleep { .. } => vec![ended],
        _ => vec![ended, no_signal_since(snapshot)],
    }))
}

fn no_signal_since(snapshot: &SagaSnapshot) -> Change {
    Change::NoSignalSince {
        signals_seen: snapshot.record.signals_received,
    }
}

/// What the signal a step waits for decides, once it came: its payload completes the step (an
/// approval's rejection fails it); `None` while it has not come.
fn received(
    snapshot: &SagaSnapshot,
    spec: &StepSpec,
    index: StepIndex,
    attempt: Attempt,
) -> Option<Vec<Change>> {
    let signal = snapshot.signal(&spec.kind.signal_name(&spec.name)?)?;
    let change = match &spec.kind {
        StepKind::Approval { .. } => {
            match serde_json::from_value::<Approval>(signal.payload.clone()) {
                Ok(decision) if decision.approved => {
                    complete(spec, index, attempt, signal.payload.clone())
                }
                Ok(decision) => fail(
                    spec,
                    index,
                    attempt,
                    format!("rejected by {}: {}", decision.by, decision.reason),
                ),
                Err(err) => fail(
                    spec,
                    index,
                    attempt,
                    format!("the decision recorded is unreadable: {err}"),
                ),
            }
        }
        _ => complete(spec, index, attempt, signal.payload.clone()),
    };
    Some(vec![change])
}

fn complete(
    spec: &StepSpec,
    index: StepIndex,
    attempt: Attempt,
    output: serde_json::Value,
) -> Change {
    Change::CompleteStep {
        index,
        name: spec.name.clone(),
        phase: Phase::Action,
        attempt,
        output: Some(output),
    }
}

/// A waiting step's known failure: waiting took no effect.
fn fail(spec: &StepSpec, index: StepIndex, attempt: Attempt, message: String) -> Change {
    Change::FailStep {
        index,
        name: spec.name.clone(),
        phase: Phase::Action,
        attempt,
        error: StepError::permanent(message),
        retry_at: None,
    }
}

fn waited_since(record: &StepRecord) -> String {
    record
        .started_at
        .map(|since| {
            format!(
                " (waiting since {})",
                since.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            )
        })
        .unwrap_or_default()
}

/// The changes that record a waiting step waiting until `until` (`begins`: the wait starts now,
/// with the step's first attempt), and give the lease back until then — or until the saga's
/// `deadline` (as [`applicable_deadline`] gives it), whichever comes first — unless a signal
/// arrived since the worker read the saga.
pub fn wait(
    snapshot: &SagaSnapshot,
    spec: &StepSpec,
    waiting: Waiting,
    until: Option<Timestamp>,
    deadline: Option<Timestamp>,
) -> Vec<Change> {
    let mut changes = Vec::new();
    if waiting.begins {
        changes.push(Change::BeginStep {
            index: waiting.index,
            name: spec.name.clone(),
            phase: Phase::Action,
            // A wait begun again (sent forward by a person) is its step's next attempt.
            attempt: snapshot
                .step(waiting.index, Phase::Action)
                .map_or(Attempt::FIRST, |step| step.attempt.next()),
            key: IdempotencyKey::for_step(snapshot.record.id, &spec.name, Phase::Action),
        });
    }
    changes.push(Change::Wait {
        index: waiting.index,
        name: spec.name.clone(),
        until,
        waiting_for: spec
            .kind
            .waiting_for(&spec.name)
            .unwrap_or_else(|| crate::wait::TIMER.to_owned()),
        signals_seen: snapshot.record.signals_received,
    });
    changes.push(Change::Release {
        next_run_at: bounded(until, deadline, true),
    });
    changes
}

/// The saga's deadline — its start plus the definition's `deadline`, or the one its start call
/// set, whichever comes first — while it still applies: past the pivot step the saga only goes
/// forward.
pub fn applicable_deadline(
    snapshot: &SagaSnapshot,
    steps: &[StepSpec],
    deadline: Option<Duration>,
) -> Option<Timestamp> {
    if pivot_passed(snapshot, steps).is_some() {
        return None;
    }
    let by_type = deadline.map(|deadline| clock::after(snapshot.record.created_at, deadline));
    match (by_type, snapshot.record.deadline) {
        (Some(by_type), Some(by_start)) => Some(by_type.min(by_start)),
        (by_type, by_start) => by_type.or(by_start),
    }
}

fn next_compensation(snapshot: &SagaSnapshot, steps: &[StepSpec], now: Timestamp) -> Action {
    // A cancel begins no step that had not begun; an action that had begun and whose outcome
    // is unknown may have taken effect, so it is settled (probe, retry with its key, or a
    // person) before anything is compensated.
    // Past the pivot nothing is undone: a waiting step is left waiting for the person who
    // decides (a `retry` sends the saga on forward, to that wait).
    let pivot = pivot_passed(snapshot, steps);
    for (position, spec) in steps.iter().enumerate() {
        if let Some(record) = snapshot
            .step(step_index(position), Phase::Action)
            .filter(|step| step.status == StepStatus::InProgress)
        {
            if spec.kind.waits() {
                if pivot.is_some() {
                    continue;
                }
                if matches!(spec.kind, StepKind::Child { .. }) {
                    // The child is stopped (or, having completed, recorded so and compensated).
                    return Action::Child(ChildStep {
                        index: record.index,
                        phase: Phase::Action,
                        begins: None,
                    });
                }
                // A signal that came is taken (its step is then compensated like any other);
                // otherwise the wait ends, known to have had no effect — written only if no
                // signal came since this snapshot was read.
                if let Some(changes) = received(snapshot, spec, record.index, record.attempt) {
                    return Action::Record(changes);
                }
                return Action::Record(vec![
                    fail(
                        spec,
                        record.index,
                        record.attempt,
                        "stopped waiting: the saga is compensating".into(),
                    ),
                    no_signal_since(snapshot),
                ]);
            }
            return settle_begun(snapshot, spec, record, now);
        }
    }
    if let Some(pivot) = pivot {
        return Action::Record(vec![escalate_past_pivot(
            snapshot,
            None,
            format!(
                "the saga was asked to compensate ({}) after its pivot step `{pivot}` completed; past that point it cannot be undone",
                snapshot.record.status_reason.as_deref().unwrap_or("no reason recorded")
            ),
        )]);
    }
    for (position, spec) in steps.iter().enumerate().rev() {
        let index = step_index(position);
        if let Some(members) = group_range(steps, position) {
            // A group is undone as one, met at its last step going back.
            if position + 1 != members.end {
                continue;
            }
            let first = step_index(members.start);
            let round = group_round(snapshot, steps, members, Phase::Compensation, now, &[]);
            if round.done {
                continue;
            }
            if let Some((spec, record)) = round
                .unsettled
                .and_then(|i| member(snapshot, steps, i, Phase::Compensation))
            {
                let settle = settle_begun(snapshot, spec, record, now);
                if !escalates(&settle) || !round.can_run() {
                    return settle;
                }
            }
            // Every compensation of the group that can still run runs (one that failed for good
            // does not stop the others); the person is called once none is left to run.
            if !round.due.is_empty() {
                return Action::RunGroup {
                    first,
                    phase: Phase::Compensation,
                };
            }
            if let Some(at) = round.next_due {
                return Action::WaitUntil(at);
            }
            if let Some((spec, record)) = round
                .failed
                .and_then(|i| member(snapshot, steps, i, Phase::Compensation))
            {
                let error = record.last_error.clone().unwrap_or_default();
                return Action::Record(vec![escalate(snapshot, spec, record.index, error)]);
            }
            continue;
        }
        let action_done = snapshot
            .step(index, Phase::Action)
            .is_some_and(|step| step.status == StepStatus::Completed);
        if !action_done || !spec.compensable {
            continue;
        }
        if matches!(spec.kind, StepKind::Child { .. }) {
            let record = snapshot.step(index, Phase::Compensation);
            match record.map(|record| record.status) {
                Some(StepStatus::Completed | StepStatus::Skipped) => continue,
                Some(StepStatus::Failed) => {
                    let error = record
                        .and_then(|record| record.last_error.clone())
                        .unwrap_or_default();
                    return Action::Record(vec![escalate(snapshot, spec, index, error)]);
                }
                Some(StepStatus::InProgress) => {
                    return Action::Child(ChildStep {
                        index,
                        phase: Phase::Compensation,
                        begins: None,
                    })
                }
                Some(StepStatus::Pending) | None => {
                    return Action::Child(ChildStep {
                        index,
                        phase: Phase::Compensation,
                        begins: Some(record.map_or(Attempt::FIRST, |record| record.attempt.next())),
                    })
                }
            }
        }
        let Some(record) = snapshot.step(index, Phase::Compensation) else {
            return Action::Run {
                index,
                phase: Phase::Compensation,
                attempt: Attempt::FIRST,
            };
        };
        match record.status {
            StepStatus::Completed | StepStatus::Skipped => continue,
            StepStatus::Pending => {
                return run_when_due(
                    index,
                    Phase::Compensation,
                    record.attempt.next(),
                    record.next_attempt_at,
                    now,
                )
            }
            StepStatus::InProgress => return settle_begun(snapshot, spec, record, now),
            StepStatus::Failed => {
                let error = record.last_error.clone().unwrap_or_default();
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

/// A step phase found `in_progress` began and nobody knows whether it took effect: its worker
/// stopped or lost its lease mid-attempt, or the attempt ended with an unknown outcome. It is
/// settled with its own key, never recorded as a clean failure: at the time of a scheduled
/// retry, an action with a probe is asked first (check before acting again); otherwise the next
/// attempt runs while the policy (or an operator's retry) allows one; then a person decides.
fn settle_begun(
    snapshot: &SagaSnapshot,
    spec: &StepSpec,
    record: &StepRecord,
    now: Timestamp,
) -> Action {
    let (index, phase, attempt) = (record.index, record.phase, record.attempt);
    if let Some(at) = record.next_attempt_at {
        if at > now {
            return Action::WaitUntil(at);
        }
    }
    let may_retry =
        record.next_attempt_at.is_some() || policy_for(spec, phase).allows_retry_after(attempt);
    if phase == Phase::Action && spec.probe {
        // A probe that finds nothing is believed only once the attempt can no longer take
        // effect: until its deadline, a request it sent may still land.
        if let Some(until) = in_flight_until(record, spec) {
            if until > now {
                return Action::WaitUntil(until);
            }
        }
        return Action::Probe(Probing {
            index,
            attempt,
            // While compensating (a cancel), an action the probe finds not applied is over.
            retry: may_retry && snapshot.record.status == SagaStatus::Running,
        });
    }
    if record.finished_at.is_none() && record.next_attempt_at.is_none() {
        // Interrupted: its outcome is recorded unknown first (in the history too), with the next
        // attempt due now when one may follow, so that a later attempt's transient failure
        // cannot pass for a settlement of this one. Planned again, it is retried or escalated.
        return Action::Record(vec![Change::FailStep {
            index,
            name: spec.name.clone(),
            phase,
            attempt,
            error: StepError::unknown(format!(
                "attempt {attempt} was interrupted (worker stopped or lost its lease)"
            )),
            retry_at: may_retry.then_some(now),
        }]);
    }
    if may_retry {
        return Action::Run {
            index,
            phase,
            attempt: attempt.next(),
        };
    }
    let detail = record.last_error.clone().unwrap_or_default();
    Action::Record(vec![match phase {
        Phase::Action => escalate_unknown(
            snapshot,
            spec,
            index,
            attempt,
            format!("{detail}; no attempts are left and the step has no probe"),
        ),
        Phase::Compensation => escalate(
            snapshot,
            spec,
            index,
            format!("{detail}; no attempts are left"),
        ),
    }])
}

/// Whether the last attempt of step phase (`index`, `phase`) ended with an unknown outcome that
/// nothing settled since (its last error is an unknown one).
pub fn earlier_attempt_unknown(snapshot: &SagaSnapshot, index: StepIndex, phase: Phase) -> bool {
    snapshot
        .step(index, phase)
        .and_then(|step| step.last_error.as_deref())
        .is_some_and(|last| last.starts_with(FailureKind::Unknown.as_str()))
}

/// Why a policy refuses an attempt of a step's action for good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyRefusal {
    /// A cap is reached: the step is skipped.
    Skip(String),
    /// The retry budget is spent: the step fails.
    Fail(String),
}

/// What a policy's refusal records for the attempt `attempted` of `spec`'s action: the step
/// skipped (a cap) or failed for good (a spent retry budget) — both say the effect did not
/// happen, which is true only while no earlier attempt's outcome is unknown. After one, the
/// phase stays unknown and no attempt follows: the step's probe settles it, else a person (an
/// `unknown_outcome` item).
pub fn on_policy_refusal(
    snapshot: &SagaSnapshot,
    spec: &StepSpec,
    attempted: Attempted,
    refusal: PolicyRefusal,
) -> Vec<Change> {
    let Attempted {
        index,
        phase,
        attempt,
    } = attempted;
    let reason = match &refusal {
        PolicyRefusal::Skip(reason) | PolicyRefusal::Fail(reason) => reason.clone(),
    };
    if earlier_attempt_unknown(snapshot, index, phase) {
        let stored = snapshot
            .step(index, phase)
            .map_or(attempt, |step| step.attempt);
        let detail = format!(
            "{reason}; an earlier attempt's outcome is unknown, so the step is neither skipped nor failed"
        );
        let mut changes = vec![Change::FailStep {
            index,
            name: spec.name.clone(),
            phase,
            attempt: stored,
            error: StepError::unknown(detail.clone()),
            retry_at: None,
        }];
        if !spec.probe {
            changes.push(escalate_unknown(snapshot, spec, index, stored, detail));
        }
        return changes;
    }
    vec![match refusal {
        PolicyRefusal::Skip(reason) => Change::SkipStep {
            index,
            name: spec.name.clone(),
            attempt,
            key: IdempotencyKey::for_step(snapshot.record.id, &spec.name, phase),
            reason,
        },
        // A budget counts retries, so the phase is stored (an earlier attempt began).
        PolicyRefusal::Fail(reason) => Change::FailStep {
            index,
            name: spec.name.clone(),
            phase,
            attempt,
            error: StepError::permanent(reason),
            retry_at: None,
        },
    }]
}

/// An action attempt whose outcome is unknown, to settle with the step's probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probing {
    /// The step.
    pub index: StepIndex,
    /// The attempt whose outcome is unknown.
    pub attempt: Attempt,
    /// Whether another attempt may run if the probe finds no effect (the saga runs forward and
    /// the policy or an operator allows one more).
    pub retry: bool,
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

/// How far apart the clocks of the processes that record a step's start and plan its settling
/// may be: a probe waits this long past an attempt's deadline.
pub const CLOCK_MARGIN: Duration = Duration::from_secs(1);

/// Until when an action attempt whose outcome is unknown may still take effect, if it ended
/// before its deadline or never ended (its worker stopped): its start plus its timeout (the
/// deadline its step passes downstream), plus [`CLOCK_MARGIN`]. `None` once it ran to its
/// deadline (it timed out there: nothing it sent can land later).
fn in_flight_until(record: &StepRecord, spec: &StepSpec) -> Option<Timestamp> {
    let deadline = clock::after(record.started_at?, timeout_for(spec, record.phase));
    record
        .finished_at
        .is_none_or(|finished| finished < deadline)
        .then(|| clock::after(deadline, CLOCK_MARGIN))
}

/// The changes that record the outcome of one attempt: completion; a retry at a jittered delay;
/// or, when the failure is final, compensation (for an action) or escalation (for a
/// compensation). An unknown outcome is never final here: it is retried with the same key while
/// the policy allows, then left `in_progress` for [`next_action`] to settle (probe or person).
/// An action run to settle a cancel is not retried after a known failure: it did not take
/// effect, and the saga is compensating. `unit` is a uniform draw from `[0, 1)` for the jitter.
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
    let error = match outcome {
        Ok(output) => {
            return vec![Change::CompleteStep {
                index,
                name: spec.name.clone(),
                phase,
                attempt,
                output,
            }]
        }
        Err(error) => error,
    };
    // A transient failure says that this attempt did not take effect, not that an earlier one
    // whose outcome is unknown did not: the phase stays unknown until something settles it (a
    // success, a permanent answer for its key, the probe, or a person).
    let error = if earlier_attempt_unknown(snapshot, index, phase)
        && error.kind() == FailureKind::Transient
    {
        StepError::unknown(format!(
            "{} (an earlier attempt's outcome is unknown, and this failure does not settle it)",
            error.message()
        ))
    } else {
        error
    };
    let policy = policy_for(spec, phase);
    let forward = phase == Phase::Compensation || snapshot.record.status == SagaStatus::Running;
    let retry = policy.allows_retry_after(attempt)
        && (error.is_unknown() || (!error.is_permanent() && forward));
    if retry {
        // A throttled call is retried no sooner than the downstream asked.
        let delay = policy
            .backoff(attempt, unit)
            .max(error.retry_after().unwrap_or_default());
        return vec![Change::FailStep {
            index,
            name: spec.name.clone(),
            phase,
            attempt,
            error,
            retry_at: Some(clock::after(now, delay)),
        }];
    }
    if error.is_unknown() {
        return vec![Change::FailStep {
            index,
            name: spec.name.clone(),
            phase,
            attempt,
            error,
            retry_at: None,
        }];
    }
    let error = if error.is_permanent() || !forward {
        error
    } else {
        StepError::transient(format!(
            "{}; gave up after {attempt} attempt(s)",
            error.message()
        ))
    };
    give_up(snapshot, spec, index, phase, attempt, error)
}

/// As [`on_outcome`], for a step of a parallel group: a compensation that gives up is recorded
/// failed but not yet escalated. The planner escalates it once no other step of the group runs
/// and none is unsettled (see `next_compensation`), so that the person called finds every other
/// effect of the group settled, each compensation completed or known not to have happened.
pub fn on_group_outcome(
    snapshot: &SagaSnapshot,
    spec: &StepSpec,
    attempted: Attempted,
    outcome: Result<Option<serde_json::Value>, StepError>,
    now: Timestamp,
    unit: f64,
) -> Vec<Change> {
    let mut changes = on_outcome(snapshot, spec, attempted, outcome, now, unit);
    changes.retain(|change| !matches!(change, Change::Escalate(_)));
    changes
}

/// The changes that record a probe's answer on an attempt whose outcome was unknown:
/// `Some(output)` completes the action (so it is compensated like any other); `None` records
/// the attempt as not applied, then retries it (when `retry`) or gives up, as a known failure;
/// an error (the probe could not tell, after its retries) escalates an `unknown_outcome` item.
pub fn on_probe(
    snapshot: &SagaSnapshot,
    spec: &StepSpec,
    probing: Probing,
    answer: Result<Option<serde_json::Value>, StepError>,
    now: Timestamp,
    unit: f64,
) -> Vec<Change> {
    let Probing {
        index,
        attempt,
        retry,
    } = probing;
    match answer {
        Ok(Some(output)) => vec![Change::CompleteStep {
            index,
            name: spec.name.clone(),
            phase: Phase::Action,
            attempt,
            output: Some(output),
        }],
        Ok(None) if retry => vec![Change::FailStep {
            index,
            name: spec.name.clone(),
            phase: Phase::Action,
            attempt,
            error: StepError::transient(format!(
                "the probe found that attempt {attempt} did not take effect"
            )),
            retry_at: Some(clock::after(now, spec.retry.backoff(attempt, unit))),
        }],
        Ok(None) => give_up(
            snapshot,
            spec,
            index,
            Phase::Action,
            attempt,
            StepError::permanent(format!(
                "the probe found that attempt {attempt} did not take effect, and no attempt follows"
            )),
        ),
        Err(error) => vec![escalate_unknown(
            snapshot,
            spec,
            index,
            attempt,
            format!("the probe could not tell whether it took effect: {error}"),
        )],
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
        // What follows (compensation, or a person past the pivot) is the planner's to decide
        // with every step in view: see `next_forward`.
        Phase::Action => vec![failed],
        Phase::Compensation => vec![failed, escalate(snapshot, spec, index, error.to_string())],
    }
}

fn start_compensating(step: &StepName, error: &str) -> Change {
    Change::SetStatus {
        status: SagaStatus::Compensating,
        reason: Some(format!("step `{step}` failed: {error}")),
    }
}

/// Where a parked saga resumes when an operator retries it: the direction it was going.
fn direction(snapshot: &SagaSnapshot) -> Option<SagaStatus> {
    match snapshot.record.status {
        status @ (SagaStatus::Running | SagaStatus::Compensating) => Some(status),
        _ => None,
    }
}

pub(crate) fn escalate(
    snapshot: &SagaSnapshot,
    spec: &StepSpec,
    index: StepIndex,
    error: String,
) -> Change {
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
        parked_from: Some(SagaStatus::Compensating),
    })
}

pub(crate) fn escalate_unknown(
    snapshot: &SagaSnapshot,
    spec: &StepSpec,
    index: StepIndex,
    attempt: Attempt,
    detail: String,
) -> Change {
    Change::Escalate(NewIntervention {
        id: InterventionId::new(),
        kind: InterventionKind::UnknownOutcome,
        step: Some((index, spec.name.clone())),
        phase: Some(Phase::Action),
        idempotency_key: Some(IdempotencyKey::for_step(
            snapshot.record.id,
            &spec.name,
            Phase::Action,
        )),
        input: Some(snapshot.record.input.clone()),
        output: None,
        error: format!(
            "outcome of step `{}` is unknown after {attempt} attempt(s): {detail}. It may have taken effect: `retry` runs it again with the same key (a downstream that honours the key answers with the original result), `resolve` records that it did not take effect, `cancel` stops the saga where it is",
            spec.name
        ),
        parked_from: direction(snapshot),
    })
}

fn escalate_past_pivot(
    snapshot: &SagaSnapshot,
    step: Option<(StepIndex, &StepName)>,
    detail: String,
) -> Change {
    Change::Escalate(NewIntervention {
        id: InterventionId::new(),
        kind: InterventionKind::PastPivot,
        step: step.map(|(index, name)| (index, name.clone())),
        phase: step.map(|_| Phase::Action),
        idempotency_key: step
            .map(|(_, name)| IdempotencyKey::for_step(snapshot.record.id, name, Phase::Action)),
        input: Some(snapshot.record.input.clone()),
        output: None,
        error: format!(
            "{detail}. `retry` runs {} forward again (same key), {}`cancel` stops the saga where it is",
            if step.is_some() { "the step" } else { "the saga" },
            if step.is_some() {
                "`resolve` records the step done by hand, "
            } else {
                ""
            }
        ),
        parked_from: Some(SagaStatus::Running),
    })
}

/// The changes that park a saga that cannot be resumed (unknown type, changed definition,
/// unreadable data), with a readable reason.
pub fn park(snapshot: Option<&SagaSnapshot>, reason: String) -> Vec<Change> {
    let mut changes = vec![
        Change::Escalate(NewIntervention {
            id: InterventionId::new(),
            kind: InterventionKind::Unresumable,
            step: None,
            phase: None,
            idempotency_key: None,
            input: snapshot.map(|snapshot| snapshot.record.input.clone()),
            output: None,
            error: reason,
            parked_from: snapshot.and_then(direction),
        }),
        Change::Release { next_run_at: None },
    ];
    // A child waiting for a person: its parent, waiting for it, records that.
    changes.extend(notify_parent(
        snapshot.and_then(|snapshot| snapshot.record.parent.as_deref()),
        &changes,
    ));
    changes
}

/// The parent to wake with `changes` of a saga whose parent is `parent`: when they end the
/// saga or call a person for it.
pub fn notify_parent(parent: Option<&ParentLink>, changes: &[Change]) -> Option<Change> {
    let ends = changes.iter().any(|change| match change {
        Change::SetStatus { status, .. } => status.is_terminal(),
        Change::Escalate(_) => true,
        _ => false,
    });
    let noted = changes
        .iter()
        .any(|change| matches!(change, Change::NotifyParent(_)));
    parent
        .filter(|_| ends && !noted)
        .map(|parent| Change::NotifyParent(parent.clone()))
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
    use crate::store::SagaRecord;
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
            probe: false,
            kind: StepKind::Call,
            pivot: false,
            policies: Vec::new(),
            group: None,
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
                waiting_for: None,
                deadline: None,
                signals_received: 0,
                parent: None,
            },
            steps: Vec::new(),
            signals: Vec::new(),
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
    fn an_interrupted_step_is_recorded_unknown_then_retried_with_the_next_attempt() {
        let mut snap = with_step(
            snapshot(SagaStatus::Running),
            0,
            Phase::Action,
            StepStatus::InProgress,
            1,
        );
        let now = clock::now();
        let Action::Record(changes) = next_action(&snap, &steps(), now) else {
            panic!("expected the interruption recorded first");
        };
        let [change @ Change::FailStep {
            retry_at: Some(at),
            error,
            ..
        }] = changes.as_slice()
        else {
            panic!("expected an unknown outcome with its retry due now: {changes:?}");
        };
        assert!(error.is_unknown() && *at == now, "{error}");
        assert_eq!(change.step_status(), Some(StepStatus::InProgress));
        snap.apply_all(&changes, now).unwrap();
        assert_eq!(next_action(&snap, &steps(), now), run(0, Phase::Action, 2));
    }

    #[test]
    fn an_interrupted_step_with_no_attempts_left_and_no_probe_is_escalated_not_failed() {
        let mut snap = with_step(
            snapshot(SagaStatus::Running),
            0,
            Phase::Action,
            StepStatus::InProgress,
            3,
        );
        // What the worker records before anything else runs: every `Record` planned in a row.
        let now = clock::now();
        let mut changes = Vec::new();
        while let Action::Record(more) = next_action(&snap, &steps(), now) {
            snap.apply_all(&more, now).unwrap();
            changes.extend(more);
        }
        let [failed @ Change::FailStep {
            retry_at: None,
            error,
            ..
        }, Change::Escalate(item)] = changes.as_slice()
        else {
            panic!("expected the unknown outcome recorded and escalated: {changes:?}");
        };
        assert!(error.is_unknown(), "{error}");
        // Recorded as still begun, never as a clean failure.
        assert_eq!(failed.step_status(), Some(StepStatus::InProgress));
        assert_eq!(item.kind, InterventionKind::UnknownOutcome);
        assert_eq!(item.phase, Some(Phase::Action));
        assert_eq!(item.parked_from, Some(SagaStatus::Running));
        assert_eq!(
            item.idempotency_key
                .as_ref()
                .map(|key| key.as_str().to_owned()),
            Some(format!("{}:reserve_stock:action", snap.record.id))
        );
        assert!(
            !changes.iter().any(|change| matches!(
                change,
                Change::SetStatus {
                    status: SagaStatus::Compensating,
                    ..
                }
            )),
            "an unknown outcome must not start compensation as if the step had not happened"
        );
    }

    fn probed(name: &str) -> Vec<StepSpec> {
        steps()
            .into_iter()
            .map(|mut spec| {
                spec.probe = spec.name.as_str() == name;
                spec
            })
            .collect()
    }

    #[test]
    fn an_interrupted_step_with_a_probe_is_probed_before_it_runs_again() {
        let steps = probed("reserve_stock");
        for (attempt, retry) in [(1, true), (3, false)] {
            let snap = with_step(
                snapshot(SagaStatus::Running),
                0,
                Phase::Action,
                StepStatus::InProgress,
                attempt,
            );
            assert_eq!(
                next_action(&snap, &steps, clock::now()),
                Action::Probe(Probing {
                    index: StepIndex(0),
                    attempt: Attempt(attempt),
                    retry,
                })
            );
        }
    }

    #[test]
    fn a_probe_answer_completes_retries_fails_or_escalates() {
        let steps = probed("reserve_stock");
        let snap = with_step(
            snapshot(SagaStatus::Running),
            0,
            Phase::Action,
            StepStatus::InProgress,
            3,
        );
        let probing = |retry| Probing {
            index: StepIndex(0),
            attempt: Attempt(3),
            retry,
        };
        let now = clock::now();
        let applied = on_probe(
            &snap,
            &steps[0],
            probing(false),
            Ok(Some(json!("r-1"))),
            now,
            0.5,
        );
        assert!(matches!(
            applied.as_slice(),
            [Change::CompleteStep { output: Some(output), attempt: Attempt(3), .. }] if output == &json!("r-1")
        ));
        let again = on_probe(&snap, &steps[0], probing(true), Ok(None), now, 0.5);
        assert!(
            matches!(again.as_slice(), [change @ Change::FailStep { retry_at: Some(_), .. }] if change.step_status() == Some(StepStatus::Pending)),
            "{again:?}"
        );
        let over = on_probe(&snap, &steps[0], probing(false), Ok(None), now, 0.5);
        assert!(
            matches!(
                over.as_slice(),
                [change @ Change::FailStep { retry_at: None, .. }]
                    if change.step_status() == Some(StepStatus::Failed)
            ),
            "{over:?}"
        );
        let unknown = on_probe(
            &snap,
            &steps[0],
            probing(true),
            Err(StepError::unknown("provider down")),
            now,
            0.5,
        );
        let [Change::Escalate(item)] = unknown.as_slice() else {
            panic!("expected escalation: {unknown:?}");
        };
        assert_eq!(item.kind, InterventionKind::UnknownOutcome);
        assert!(item.error.contains("provider down"), "{}", item.error);
    }

    #[test]
    fn an_unknown_outcome_is_retried_with_its_key_then_left_begun_for_settling() {
        let snap = snapshot(SagaStatus::Running);
        let spec = &steps()[0];
        let now = clock::now();
        let attempted = |attempt| Attempted {
            index: StepIndex(0),
            phase: Phase::Action,
            attempt: Attempt(attempt),
        };
        let timeout = || Err(StepError::unknown("attempt timed out"));
        let retried = on_outcome(&snap, spec, attempted(1), timeout(), now, 0.5);
        let [change @ Change::FailStep {
            retry_at: Some(_), ..
        }] = retried.as_slice()
        else {
            panic!("expected a retry: {retried:?}");
        };
        // Still begun: a cancel during the backoff must settle it, not skip it.
        assert_eq!(change.step_status(), Some(StepStatus::InProgress));
        let last = on_outcome(&snap, spec, attempted(3), timeout(), now, 0.5);
        let [change @ Change::FailStep { retry_at: None, .. }] = last.as_slice() else {
            panic!("expected the last attempt recorded unknown: {last:?}");
        };
        assert_eq!(change.step_status(), Some(StepStatus::InProgress));
    }

    #[test]
    fn a_cancel_settles_a_begun_action_before_compensating_and_skips_a_known_failure() {
        // Step 0 completed; step 2's last attempt timed out and its retry is due.
        let mut snap = with_step(
            snapshot(SagaStatus::Compensating),
            0,
            Phase::Action,
            StepStatus::Completed,
            1,
        );
        snap = with_step(snap, 2, Phase::Action, StepStatus::InProgress, 1);
        let now = clock::now();
        snap.steps[1].next_attempt_at = Some(now);
        snap.steps[1].finished_at = Some(now);
        assert_eq!(next_action(&snap, &steps(), now), run(2, Phase::Action, 2));
        // Had it failed knowingly (pending a retry), it did not take effect: only step 0 is
        // compensated.
        snap.steps[1].status = StepStatus::Pending;
        assert_eq!(
            next_action(&snap, &steps(), now),
            run(0, Phase::Compensation, 1)
        );
    }

    #[test]
    fn a_transient_failure_after_an_unknown_attempt_does_not_settle_it() {
        let mut snap = with_step(
            snapshot(SagaStatus::Running),
            0,
            Phase::Action,
            StepStatus::InProgress,
            3,
        );
        snap.steps[0].last_error =
            Some(StepError::unknown("attempt timed out after 1s").to_string());
        let changes = on_outcome(
            &snap,
            &steps()[0],
            Attempted {
                index: StepIndex(0),
                phase: Phase::Action,
                attempt: Attempt(3),
            },
            Err(StepError::transient("503")),
            clock::now(),
            0.5,
        );
        let [change @ Change::FailStep {
            retry_at: None,
            error,
            ..
        }] = changes.as_slice()
        else {
            panic!("expected the phase left unknown for settling: {changes:?}");
        };
        assert!(error.is_unknown(), "{error}");
        assert_eq!(change.step_status(), Some(StepStatus::InProgress));
    }

    #[test]
    fn an_action_run_to_settle_a_cancel_is_not_retried_after_a_known_failure() {
        let snap = with_step(
            snapshot(SagaStatus::Compensating),
            0,
            Phase::Action,
            StepStatus::InProgress,
            1,
        );
        let changes = on_outcome(
            &snap,
            &steps()[0],
            Attempted {
                index: StepIndex(0),
                phase: Phase::Action,
                attempt: Attempt(2),
            },
            Err(StepError::transient("503")),
            clock::now(),
            0.5,
        );
        let [change @ Change::FailStep { retry_at: None, .. }] = changes.as_slice() else {
            panic!("expected a final known failure and no status change: {changes:?}");
        };
        assert_eq!(change.step_status(), Some(StepStatus::Failed));
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
        assert_failed_then_compensating(snap, &changes, now);
    }

    /// `changes` fail step 0 for good, and the planner then starts compensating.
    fn assert_failed_then_compensating(mut snap: SagaSnapshot, changes: &[Change], now: Timestamp) {
        let [failed @ Change::FailStep { retry_at: None, .. }] = changes else {
            panic!("expected one final failure: {changes:?}");
        };
        assert_eq!(failed.step_status(), Some(StepStatus::Failed));
        snap.apply_all(
            &[Change::BeginStep {
                index: StepIndex(0),
                name: steps()[0].name.clone(),
                phase: Phase::Action,
                attempt: Attempt(1),
                key: IdempotencyKey::for_step(snap.record.id, &steps()[0].name, Phase::Action),
            }],
            now,
        )
        .unwrap();
        snap.apply_all(changes, now).unwrap();
        assert!(matches!(
            next_action(&snap, &steps(), now).clone(),
            Action::Record(record) if matches!(
                record.as_slice(),
                [Change::SetStatus { status: SagaStatus::Compensating, .. }]
            )
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
        assert_failed_then_compensating(snap, &changes, clock::now());
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

    /// A saga waiting at step 1 for the signal `paid` (step 0 completed).
    fn waiting_for_paid(status: SagaStatus, pivot: bool) -> (SagaSnapshot, Vec<StepSpec>) {
        let mut steps = vec![spec("reserve_stock", !pivot), spec("payment", false)];
        steps[0].pivot = pivot;
        steps[1].kind = StepKind::Signal {
            name: "paid".into(),
            timeout: Some(Duration::from_secs(60)),
            default: None,
        };
        let mut snap = snapshot(status);
        for (index, step) in steps.iter().enumerate() {
            snap.steps.push(StepRecord {
                index: StepIndex(index as u32),
                phase: Phase::Action,
                idempotency_key: IdempotencyKey::for_step(
                    snap.record.id,
                    &step.name,
                    Phase::Action,
                ),
                name: step.name.clone(),
                status: if index == 0 {
                    StepStatus::Completed
                } else {
                    StepStatus::InProgress
                },
                attempt: Attempt(1),
                output: None,
                last_error: None,
                next_attempt_at: (index == 1)
                    .then(|| clock::after(clock::now(), Duration::from_secs(60))),
                started_at: None,
                finished_at: None,
            });
        }
        (snap, steps)
    }

    #[test]
    fn a_cancel_takes_a_signal_that_came_then_compensates_and_otherwise_ends_the_wait_guarded() {
        let (mut snap, steps) = waiting_for_paid(SagaStatus::Compensating, false);
        let Action::Record(changes) = next_action(&snap, &steps, clock::now()) else {
            panic!("expected the wait ended");
        };
        assert!(
            matches!(
                changes.as_slice(),
                [
                    Change::FailStep { retry_at: None, .. },
                    Change::NoSignalSince { signals_seen: 0 }
                ]
            ),
            "ended, known, only if no signal came since: {changes:?}"
        );
        snap.record.signals_received = 1;
        snap.signals.push(crate::wait::SignalRecord {
            name: "paid".into(),
            key: crate::wait::SignalKey::new("evt"),
            payload: json!({"charge": "ch"}),
            received_at: clock::now(),
        });
        let Action::Record(changes) = next_action(&snap, &steps, clock::now()) else {
            panic!("expected the signal taken");
        };
        assert!(
            matches!(changes.as_slice(), [Change::CompleteStep { output: Some(output), .. }] if output == &json!({"charge": "ch"})),
            "{changes:?}"
        );
    }

    #[test]
    fn past_the_pivot_a_cancel_leaves_a_wait_as_it_is_and_asks_a_person() {
        let (snap, steps) = waiting_for_paid(SagaStatus::Compensating, true);
        let Action::Record(changes) = next_action(&snap, &steps, clock::now()) else {
            panic!("expected an escalation");
        };
        let [Change::Escalate(item)] = changes.as_slice() else {
            panic!("expected only an escalation, the wait untouched: {changes:?}");
        };
        assert_eq!(item.kind, InterventionKind::PastPivot);
        assert_eq!(item.parked_from, Some(SagaStatus::Running));
    }

    #[test]
    fn a_policy_refusal_skips_or_fails_only_when_no_earlier_outcome_is_unknown() {
        let specs = steps();
        let attempted = Attempted {
            index: StepIndex(1),
            phase: Phase::Action,
            attempt: Attempt(2),
        };
        let known = with_step(
            snapshot(SagaStatus::Running),
            1,
            Phase::Action,
            StepStatus::Pending,
            1,
        );
        let skip = on_policy_refusal(
            &known,
            &specs[1],
            attempted,
            PolicyRefusal::Skip("cap".into()),
        );
        assert!(matches!(skip.as_slice(), [Change::SkipStep { .. }]));
        let fail = on_policy_refusal(
            &known,
            &specs[1],
            attempted,
            PolicyRefusal::Fail("budget".into()),
        );
        assert!(
            matches!(fail.as_slice(), [Change::FailStep { error, retry_at: None, .. }] if error.is_permanent())
        );

        // The attempt before timed out: it may have taken effect.
        let mut unknown = with_step(
            snapshot(SagaStatus::Running),
            1,
            Phase::Action,
            StepStatus::InProgress,
            1,
        );
        unknown.steps[0].last_error = Some(StepError::unknown("timed out").to_string());
        for refusal in [
            PolicyRefusal::Skip("cap".into()),
            PolicyRefusal::Fail("budget".into()),
        ] {
            let changes = on_policy_refusal(&unknown, &specs[1], attempted, refusal);
            assert!(
                matches!(&changes[0], Change::FailStep { error, retry_at: None, .. } if error.is_unknown()),
                "{changes:?}"
            );
            assert!(
                matches!(&changes[1], Change::Escalate(item) if item.kind == InterventionKind::UnknownOutcome),
                "without a probe, a person settles it: {changes:?}"
            );
        }
        let mut probed = specs[1].clone();
        probed.probe = true;
        let changes = on_policy_refusal(
            &unknown,
            &probed,
            attempted,
            PolicyRefusal::Fail("budget".into()),
        );
        assert_eq!(
            changes.len(),
            1,
            "with a probe, the probe settles it: {changes:?}"
        );
    }

    /// `reserve_stock`, then `send_receipt`, `charge_card` and `ship` as one group.
    fn grouped() -> Vec<StepSpec> {
        let mut specs = steps();
        for spec in specs.iter_mut().skip(1) {
            spec.group = Some(crate::definition::ParallelGroup {
                name: "rest".into(),
                limit: 3,
            });
        }
        specs
    }

    #[test]
    fn a_group_is_found_from_any_of_its_steps() {
        let specs = grouped();
        assert_eq!(group_range(&specs, 0), None);
        for position in 1..4 {
            assert_eq!(group_range(&specs, position), Some(1..4));
        }
    }

    #[test]
    fn a_group_runs_as_one_once_the_step_before_it_completed() {
        let specs = grouped();
        let now = clock::now();
        let snap = snapshot(SagaStatus::Running);
        assert_eq!(next_action(&snap, &specs, now), run(0, Phase::Action, 1));
        let snap = with_step(snap, 0, Phase::Action, StepStatus::Completed, 1);
        let group = Action::RunGroup {
            first: StepIndex(1),
            phase: Phase::Action,
        };
        assert_eq!(next_action(&snap, &specs, now), group);
        let round = group_round(&snap, &specs, 1..4, Phase::Action, now, &[]);
        assert_eq!(round.due.len(), 3, "every step may begin");
        // Two run here, one completed: nothing more may begin, and the group is not through.
        let snap = with_step(snap, 1, Phase::Action, StepStatus::InProgress, 1);
        let snap = with_step(snap, 2, Phase::Action, StepStatus::InProgress, 1);
        let snap = with_step(snap, 3, Phase::Action, StepStatus::Completed, 1);
        let running = [StepIndex(1), StepIndex(2)];
        let round = group_round(&snap, &specs, 1..4, Phase::Action, now, &running);
        assert!(round.due.is_empty() && !round.done && round.unsettled.is_none());
        // Read by another worker, the same steps are begun and unsettled: settled one by one.
        let round = group_round(&snap, &specs, 1..4, Phase::Action, now, &[]);
        assert_eq!(round.unsettled, Some(StepIndex(1)));
        assert!(
            matches!(
                next_action(&snap, &specs, now),
                Action::Record(changes)
                    if matches!(changes.as_slice(), [Change::FailStep { index: StepIndex(1), .. }])
            ),
            "the first begun step of the group is recorded unknown first"
        );
    }

    #[test]
    fn a_failed_group_step_compensates_the_group_at_once_then_the_steps_before() {
        let specs = grouped();
        let now = clock::now();
        let snap = with_step(
            snapshot(SagaStatus::Running),
            0,
            Phase::Action,
            StepStatus::Completed,
            1,
        );
        let snap = with_step(snap, 1, Phase::Action, StepStatus::Completed, 1);
        let snap = with_step(snap, 2, Phase::Action, StepStatus::Failed, 1);
        let snap = with_step(snap, 3, Phase::Action, StepStatus::Completed, 1);
        assert!(matches!(
            next_action(&snap, &specs, now),
            Action::Record(changes) if matches!(changes.as_slice(), [Change::SetStatus { status: SagaStatus::Compensating, .. }])
        ));
        let mut snap = snap;
        snap.record.status = SagaStatus::Compensating;
        let group = Action::RunGroup {
            first: StepIndex(1),
            phase: Phase::Compensation,
        };
        assert_eq!(next_action(&snap, &specs, now), group);
        // Only `ship` is compensable and completed in the group (`send_receipt` is
        // irreversible, `charge_card` failed): it alone takes part.
        let round = group_round(&snap, &specs, 1..4, Phase::Compensation, now, &[]);
        assert_eq!(
            round.due.iter().map(|a| a.index).collect::<Vec<_>>(),
            vec![StepIndex(3)]
        );
        let undone = with_step(
            snap.clone(),
            3,
            Phase::Compensation,
            StepStatus::Completed,
            1,
        );
        assert_eq!(
            next_action(&undone, &specs, now),
            run(0, Phase::Compensation, 1),
            "the step before the group, once the group is undone"
        );
        // A compensation that failed for good escalates, as outside a group.
        let failed = with_step(snap, 3, Phase::Compensation, StepStatus::Failed, 2);
        assert!(
            matches!(
                next_action(&failed, &specs, now),
                Action::Record(changes) if matches!(
                    changes.as_slice(),
                    [Change::Escalate(item)] if item.step.as_ref().map(|(index, _)| *index) == Some(StepIndex(3))
                )
            ),
            "escalated"
        );
    }

    #[test]
    fn a_group_step_that_would_call_a_person_waits_for_the_others_that_can_still_run() {
        let specs = grouped();
        let now = clock::now();
        let mut snap = snapshot(SagaStatus::Compensating);
        for index in 0..4 {
            snap = with_step(snap, index, Phase::Action, StepStatus::Completed, 1);
        }
        // `charge_card`'s refund timed out on its last attempt: unknown, none left.
        snap = with_step(snap, 2, Phase::Compensation, StepStatus::InProgress, 2);
        if let Some(step) = snap.steps.last_mut() {
            step.finished_at = Some(now);
            step.last_error = Some("unknown: attempt timed out".into());
        }
        // `ship`'s refund has a retry coming.
        let retry_at = clock::after(now, Duration::from_secs(10));
        snap = with_step(snap, 3, Phase::Compensation, StepStatus::Pending, 1);
        if let Some(step) = snap.steps.last_mut() {
            step.next_attempt_at = Some(retry_at);
        }
        assert_eq!(
            next_action(&snap, &specs, now),
            Action::WaitUntil(retry_at),
            "the other refund's retry comes before the person"
        );
        // Once it is through, the person is called.
        let done = with_step(snap, 3, Phase::Compensation, StepStatus::Completed, 2);
        let mut done = done;
        done.steps
            .retain(|step| !(step.index == StepIndex(3) && step.status == StepStatus::Pending));
        assert!(matches!(
            next_action(&done, &specs, now),
            Action::Record(changes) if matches!(changes.as_slice(), [Change::Escalate(_)])
        ));
    }
}
