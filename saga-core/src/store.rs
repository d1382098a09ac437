//! The Store trait: every durable write of the data path, fenced by the worker's lease.
//!
//! A backend persists sagas, their steps, an append-only event history and the
//! manual-intervention queue. Workers change a saga only through [`Store::apply`], which checks
//! the lease's fencing token and applies a batch of [`Change`]s atomically, appending one history
//! event per change.

pub mod memory;
pub mod overview;
mod snapshot;
pub mod write;

use std::any::Any;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::clock::Timestamp;
use crate::error::Result;
use crate::id::{
    Attempt, FencingToken, IdempotencyKey, InterventionId, SagaId, SagaType, StepIndex, StepName,
    WorkerId,
};
use crate::persisted::persisted;
use crate::status::{Phase, SagaStatus, StepStatus};
use crate::step::StepError;

pub use overview::{Overview, OverviewParts, OverviewQuery};
pub use snapshot::SagaSnapshot;
pub use write::{Refusal, MAX_REASON_BYTES};

/// A saga to create: what [`Store::create`] persists.
#[derive(Debug, Clone, PartialEq)]
pub struct NewSaga {
    /// Its fresh id.
    pub id: SagaId,
    /// Its registered type.
    pub saga_type: SagaType,
    /// The definition version it starts on.
    pub version: u32,
    /// Fingerprint of the definition's step graph, checked again on every resume.
    pub fingerprint: String,
    /// The serialized input.
    pub input: Value,
    /// Hash of (type, input), to tell a repeated start from a conflicting one.
    pub input_hash: String,
    /// The caller's start key, if any.
    pub idempotency_key: Option<IdempotencyKey>,
    /// W3C trace context of the caller, if any.
    pub trace_context: Option<String>,
    /// Create it already leased to this worker until this time (fencing token 1), so that the
    /// starting process drives it at once, without a claim. Ignored when the key already
    /// started a saga.
    pub lease: Option<(WorkerId, Timestamp)>,
    /// Step changes written with the creation, in the same transaction, as [`Store::apply`]
    /// would write them under the new lease: the first step's `BeginStep`, so that a saga
    /// driven by its starter needs no write of its own before its first step runs. Only
    /// `BeginStep` is accepted, and only with `lease` (see [`write::CreationPlan::compile`]); ignored
    /// when the key already started a saga.
    pub changes: Vec<Change>,
    /// The time (on the store's clock) by which the saga must have finished, set by its start
    /// call; its type's deadline applies as well, whichever comes first.
    pub deadline: Option<Timestamp>,
    /// With an idempotency key: how long the key dedups starts. A start with the key inside the
    /// window (from the creation of the saga holding it) returns that saga; after it, the key
    /// passes to a new saga (the earlier one keeps a key of its own, `<key>#<its id>`). The
    /// saga is not pruned before its window ends. `None`: the key dedups for as long as the
    /// saga is kept.
    pub dedup_window: Option<std::time::Duration>,
    /// The parent saga and step that start it, for a child saga (see
    /// [`Step::child`](crate::Step::child)); `None` for a saga started by a caller.
    pub parent: Option<ParentLink>,
}

/// Where a child saga comes from: the saga, and the step of it, that started it. The parent
/// waits at that step for the child's end; the store wakes it when the child ends or needs a
/// person.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ParentLink {
    /// The parent saga.
    pub saga: SagaId,
    /// The parent's step that started the child.
    pub step: StepName,
}

impl ParentLink {
    /// What the parent waits for while the child runs (its
    /// [`SagaRecord::waiting_for`]): `child:<step>`.
    pub fn waiting_for(&self) -> String {
        crate::wait::waiting_for_child(&self.step)
    }
}

/// The key a saga whose start key passed on to a later saga (its dedup window ended) keeps:
/// `<key>#<its id>`, unique, and telling where it came from.
pub fn retired_key(key: &IdempotencyKey, id: SagaId) -> IdempotencyKey {
    IdempotencyKey::new(format!("{}#{id}", key.as_str()))
}

/// What [`Store::create`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// A new saga was stored.
    New(SagaId),
    /// The start key had already started this saga, with the same input.
    Existing(SagaId),
}

impl Created {
    /// The saga id, new or existing.
    pub fn id(self) -> SagaId {
        match self {
            Created::New(id) | Created::Existing(id) => id,
        }
    }
}

/// One saga as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct SagaRecord {
    /// Its id.
    pub id: SagaId,
    /// Its type.
    pub saga_type: SagaType,
    /// The definition version it started on.
    pub version: u32,
    /// Fingerprint of the definition it started on.
    pub fingerprint: String,
    /// Where it is.
    pub status: SagaStatus,
    /// Why it is there, for compensating, parked and cancelled sagas.
    pub status_reason: Option<String>,
    /// The serialized input.
    pub input: Value,
    /// Hash of (type, input).
    pub input_hash: String,
    /// The caller's start key, if any.
    pub idempotency_key: Option<IdempotencyKey>,
    /// When a worker should next look at it; `None` when no worker needs to.
    pub next_run_at: Option<Timestamp>,
    /// The worker holding its lease, if any.
    pub lease_owner: Option<WorkerId>,
    /// When that lease expires.
    pub lease_expires_at: Option<Timestamp>,
    /// Grows by one at every claim.
    pub fencing_token: FencingToken,
    /// W3C trace context captured at start.
    pub trace_context: Option<String>,
    /// A pending operator request to cancel ("by alice: reason"), until the saga acts on it.
    pub cancel_requested: Option<String>,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it last changed.
    pub updated_at: Timestamp,
    /// What it waits for while a step waits (`timer`, `signal:<name>`; see [`crate::wait`]).
    pub waiting_for: Option<String>,
    /// The deadline its start call set, if any (see [`NewSaga::deadline`]).
    pub deadline: Option<Timestamp>,
    /// How many signals were delivered to it: a worker that gives the saga back to wait asks the
    /// store to make it due at once should this have grown since it read the saga, so that a
    /// signal arriving meanwhile is not left waiting. A child saga's end (or its need of a
    /// person) counts as one too.
    pub signals_received: u64,
    /// The saga and step that started it, for a child saga (boxed: every saga in flight carries
    /// the record, most of them without a parent).
    pub parent: Option<Box<ParentLink>>,
}

/// One phase (action or compensation) of one step of one saga, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StepRecord {
    /// Position of the step in the definition.
    pub index: StepIndex,
    /// Action or compensation.
    pub phase: Phase,
    /// The step's name.
    pub name: StepName,
    /// Where it is.
    pub status: StepStatus,
    /// The latest attempt started.
    pub attempt: Attempt,
    /// The stable key given to every attempt.
    pub idempotency_key: IdempotencyKey,
    /// The output of a completed action.
    pub output: Option<Value>,
    /// The latest failure.
    pub last_error: Option<String>,
    /// When a pending retry is due.
    pub next_attempt_at: Option<Timestamp>,
    /// When the latest attempt started.
    pub started_at: Option<Timestamp>,
    /// When the latest attempt ended.
    pub finished_at: Option<Timestamp>,
}

/// A worker's claim on one saga: only the holder of the current fencing token may write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The saga claimed.
    pub saga: SagaId,
    /// The worker holding it.
    pub owner: WorkerId,
    /// The token every write carries.
    pub token: FencingToken,
    /// When it lapses unless renewed by a heartbeat.
    pub expires_at: Timestamp,
    /// The worker whose expired lease this claim took over, if any.
    pub taken_over_from: Option<WorkerId>,
}

/// A durable change to one saga, made by the lease holder through [`Store::apply`].
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Record a step phase as `in_progress` with its attempt number, before its function runs.
    BeginStep {
        /// The step.
        index: StepIndex,
        /// Its name.
        name: StepName,
        /// Action or compensation.
        phase: Phase,
        /// The attempt about to run.
        attempt: Attempt,
        /// The stable key of this step phase.
        key: IdempotencyKey,
    },
    /// Record a step phase as `completed`, with its output.
    CompleteStep {
        /// The step.
        index: StepIndex,
        /// Its name.
        name: StepName,
        /// Action or compensation.
        phase: Phase,
        /// The attempt that succeeded.
        attempt: Attempt,
        /// The serialized output (actions), or `None` (compensations).
        output: Option<Value>,
    },
    /// Record a failed attempt: back to `pending` until `retry_at`, or `failed` for good.
    FailStep {
        /// The step.
        index: StepIndex,
        /// Its name.
        name: StepName,
        /// Action or compensation.
        phase: Phase,
        /// The attempt that failed.
        attempt: Attempt,
        /// Why.
        error: StepError,
        /// When the next attempt is due; `None` when no attempt follows.
        retry_at: Option<Timestamp>,
    },
    /// Move the saga to another status.
    SetStatus {
        /// The new status.
        status: SagaStatus,
        /// Why, in words an operator understands.
        reason: Option<String>,
    },
    /// Park the saga in `needs_intervention` and open one item in the manual-intervention queue.
    Escalate(NewIntervention),
    /// A waiting step (begun in the same batch or earlier) waits until `until` (`None`: until its
    /// signal comes) for what `waiting_for` says; the saga records it. With the lease given back
    /// in the same batch, the saga is due at once instead should a signal have been delivered
    /// since the worker read `signals_seen` of them.
    Wait {
        /// The step.
        index: StepIndex,
        /// Its name.
        name: StepName,
        /// When the wait ends (its timeout, or the sleep's end).
        until: Option<Timestamp>,
        /// What the saga waits for (`timer`, `signal:<name>`).
        waiting_for: String,
        /// [`SagaRecord::signals_received`] as the worker read it.
        signals_seen: u64,
    },
    /// A condition, not a change: the batch is written only if no signal was delivered to the
    /// saga since the worker read `signals_seen` of them (otherwise it is refused with
    /// [`Refusal::SignalArrived`] and nothing is written). A wait that ends for want of a signal
    /// is recorded with it, so that a signal stored in the meantime is never passed over.
    NoSignalSince {
        /// [`SagaRecord::signals_received`] as the worker read it.
        signals_seen: u64,
    },
    /// A step's action is not called: a policy (a frequency cap reached) makes it a recorded
    /// no-op, `skipped`, with the reason. A skipped step has no output and is never compensated;
    /// the saga goes on with the next step.
    SkipStep {
        /// The step.
        index: StepIndex,
        /// Its name.
        name: StepName,
        /// The attempt that would have run.
        attempt: Attempt,
        /// The stable key of the step's action (the phase is recorded with it).
        key: IdempotencyKey,
        /// Why, in words an operator understands.
        reason: String,
    },
    /// The saga is held back before a step (a pause, a rate limit, a concurrency limit) and
    /// records what it waits for; with `reason` set, the history says why (a worker sets it when
    /// the saga was not held for the same thing already, so a long hold appends one event).
    Hold {
        /// What it waits for (`paused:<type>`, `policy:rate_limit:<name>`).
        waiting_for: String,
        /// The step held back.
        step: Option<StepName>,
        /// Why, for the history.
        reason: Option<String>,
    },
    /// Start a child saga (a [`Step::child`](crate::Step::child) step), in the same write as its
    /// step's `in_progress`: the child exists exactly when its step began, and a stale worker
    /// (its lease lost) starts none. A child whose start key exists already is not started
    /// again.
    StartChild(Box<NewSaga>),
    /// The saga waits for its child saga `child`, started by step `index` (in `phase`: the
    /// action waits for the child's end; the compensation for the child's compensation or
    /// cancel), and records what it waits for (`child:<step>`). With the lease given back in the
    /// same batch, the saga is due at once instead should the child have ended since the worker
    /// read `signals_seen` (see [`SagaRecord::signals_received`]).
    AwaitChild {
        /// The step.
        index: StepIndex,
        /// Its name.
        name: StepName,
        /// Action or compensation.
        phase: Phase,
        /// The child saga.
        child: SagaId,
        /// The child's status as the worker read it, for the history.
        child_status: SagaStatus,
        /// [`SagaRecord::signals_received`] as the worker read it.
        signals_seen: u64,
    },
    /// Wake the parent of this child saga: the child ended or needs a person. The parent is due
    /// at once when nobody holds it, and a worker holding it finds out at its next wait (its
    /// [`SagaRecord::signals_received`] grows).
    NotifyParent(ParentLink),
    /// Give the lease back; the saga is due again at `next_run_at` (`None`: not until an operator acts).
    Release {
        /// When a worker should look at the saga again.
        next_run_at: Option<Timestamp>,
    },
}

/// Why a saga needs a person.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InterventionKind {
    /// A compensation failed for good.
    CompensationFailed,
    /// The saga cannot be resumed: unknown type, changed definition, unreadable data.
    Unresumable,
    /// A step's action may or may not have taken effect (its last attempt timed out, was
    /// interrupted or could not be recorded) and no probe could tell: a person decides whether to
    /// run it again with the same key (`retry`), record it as not applied (`resolve`), or stop.
    UnknownOutcome,
    /// A step after a pivot step gave up (or the saga was asked to stop after its pivot
    /// completed): the saga cannot be compensated past its point of no return, so a person
    /// decides: `retry` runs the step forward again (same key), `resolve` records it done by
    /// hand, `cancel` stops the saga where it is.
    PastPivot,
}

persisted!(
    InterventionKind,
    "intervention kind",
    [
        CompensationFailed => "compensation_failed",
        Unresumable => "unresumable",
        UnknownOutcome => "unknown_outcome",
        PastPivot => "past_pivot",
    ]
);

/// A manual-intervention item to open: everything a person needs to decide.
#[derive(Debug, Clone, PartialEq)]
pub struct NewIntervention {
    /// Its id, chosen by the worker so that a repeated write opens it only once.
    pub id: InterventionId,
    /// Why the saga needs a person.
    pub kind: InterventionKind,
    /// The step concerned, if any.
    pub step: Option<(StepIndex, StepName)>,
    /// The phase concerned, if any.
    pub phase: Option<Phase>,
    /// The idempotency key of the failed step phase, if any.
    pub idempotency_key: Option<IdempotencyKey>,
    /// The saga input, when readable.
    pub input: Option<Value>,
    /// The output of the step's action, when there is one.
    pub output: Option<Value>,
    /// What failed.
    pub error: String,
    /// The status the saga was in when it was parked (`running` or `compensating`): where a
    /// `retry` resumes it, so that a saga parked while compensating never runs forward again.
    /// `None` on items opened before this was recorded.
    pub parked_from: Option<SagaStatus>,
}

/// Whether an intervention item still waits for a person.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InterventionStatus {
    /// Waiting for a person.
    Open,
    /// Settled by a person.
    Resolved,
}

persisted!(
    InterventionStatus,
    "intervention status",
    [Open => "open", Resolved => "resolved"]
);

/// A manual-intervention item as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Intervention {
    /// The saga concerned.
    pub saga_id: SagaId,
    /// What was opened.
    pub item: NewIntervention,
    /// Open or resolved.
    pub status: InterventionStatus,
    /// When it was opened.
    pub opened_at: Timestamp,
    /// When it was settled.
    pub resolved_at: Option<Timestamp>,
    /// Who settled it.
    pub resolved_by: Option<String>,
    /// How it was settled (retry, resolve, cancel).
    pub resolution: Option<String>,
    /// Why, in the operator's words.
    pub resolution_reason: Option<String>,
}

/// What an event in a saga's history records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The saga was created.
    SagaStarted,
    /// A step phase was recorded `in_progress`.
    StepStarted,
    /// A step phase completed.
    StepCompleted,
    /// A step phase failed and will be retried.
    RetryScheduled,
    /// A step phase failed for good.
    StepFailed,
    /// The saga changed status.
    StatusChanged,
    /// An intervention item was opened.
    InterventionOpened,
    /// A worker took over a lease that had expired.
    LeaseTakenOver,
    /// An operator settled an intervention item or asked to cancel the saga.
    OperatorAction,
    /// A step attempt ended with an unknown outcome and no further attempt is due: it is
    /// settled by the step's probe or escalated.
    OutcomeUnknown,
    /// A waiting step began (or resumed) waiting: for what, and until when.
    Waiting,
    /// A signal was delivered to the saga.
    SignalReceived,
    /// A policy made a step a recorded no-op (a frequency cap was reached).
    StepSkipped,
    /// The saga was held back before a step: a pause, a rate limit, a concurrency limit.
    Held,
    /// A step started a child saga (the detail names its type and id).
    ChildStarted,
}

persisted!(
    EventKind,
    "event kind",
    [
        SagaStarted => "saga_started",
        StepStarted => "step_started",
        StepCompleted => "step_completed",
        RetryScheduled => "retry_scheduled",
        StepFailed => "step_failed",
        StatusChanged => "status_changed",
        InterventionOpened => "intervention_opened",
        LeaseTakenOver => "lease_taken_over",
        OperatorAction => "operator_action",
        OutcomeUnknown => "outcome_unknown",
        Waiting => "waiting",
        SignalReceived => "signal_received",
        StepSkipped => "step_skipped",
        Held => "held",
        ChildStarted => "child_started",
    ]
);

/// One entry of a saga's append-only history.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Order of the event within the store (increasing).
    pub seq: i64,
    /// The saga.
    pub saga_id: SagaId,
    /// When it happened.
    pub at: Timestamp,
    /// What happened.
    pub kind: EventKind,
    /// The step concerned, if any.
    pub step: Option<StepName>,
    /// The phase concerned, if any.
    pub phase: Option<Phase>,
    /// The attempt concerned, if any.
    pub attempt: Option<Attempt>,
    /// Details: a status, an error, a worker name.
    pub detail: Option<String>,
}

/// The event a change appends, without its sequence number, saga and time.
#[derive(Debug, Clone, PartialEq)]
pub struct EventData {
    /// What happened.
    pub kind: EventKind,
    /// The step concerned, if any.
    pub step: Option<StepName>,
    /// The phase concerned, if any.
    pub phase: Option<Phase>,
    /// The attempt concerned, if any.
    pub attempt: Option<Attempt>,
    /// Details.
    pub detail: Option<String>,
}

impl Change {
    /// The status a step change leaves its step phase in (`None` for changes to the saga).
    ///
    /// A failed attempt whose outcome is unknown stays `in_progress`: the step began and nobody
    /// knows whether it took effect. With `retry_at` another attempt (same key) is due then;
    /// without, the planner settles it (probe or escalation). A known failure goes to `pending`
    /// (retry due) or `failed` (for good).
    pub fn step_status(&self) -> Option<StepStatus> {
        match self {
            Change::BeginStep { .. } | Change::Wait { .. } => Some(StepStatus::InProgress),
            Change::CompleteStep { .. } => Some(StepStatus::Completed),
            Change::SkipStep { .. } => Some(StepStatus::Skipped),
            Change::FailStep {
                error, retry_at, ..
            } => Some(if error.is_unknown() {
                StepStatus::InProgress
            } else if retry_at.is_some() {
                StepStatus::Pending
            } else {
                StepStatus::Failed
            }),
            Change::SetStatus { .. }
            | Change::Escalate(_)
            | Change::Release { .. }
            | Change::Hold { .. }
            | Change::StartChild(_)
            | Change::AwaitChild { .. }
            | Change::NotifyParent(_)
            | Change::NoSignalSince { .. } => None,
        }
    }

    /// The history event this change appends (`None` for a lease release).
    pub fn event(&self) -> Option<EventData> {
        let step_event = |kind, name: &StepName, phase, attempt, detail| EventData {
            kind,
            step: Some(name.clone()),
            phase: Some(phase),
            attempt: Some(attempt),
            detail,
        };
        match self {
            Change::BeginStep {
                name,
                phase,
                attempt,
                ..
            } => Some(step_event(
                EventKind::StepStarted,
                name,
                *phase,
                *attempt,
                None,
            )),
            Change::CompleteStep {
                name,
                phase,
                attempt,
                ..
            } => Some(step_event(
                EventKind::StepCompleted,
                name,
                *phase,
                *attempt,
                None,
            )),
            Change::FailStep {
                name,
                phase,
                attempt,
                error,
                retry_at,
                ..
            } => {
                let kind = if retry_at.is_some() {
                    EventKind::RetryScheduled
                } else if error.is_unknown() {
                    EventKind::OutcomeUnknown
                } else {
                    EventKind::StepFailed
                };
                Some(step_event(
                    kind,
                    name,
                    *phase,
                    *attempt,
                    Some(error.to_string()),
                ))
            }
            Change::Wait {
                name,
                until,
                waiting_for,
                ..
            } => Some(EventData {
                kind: EventKind::Waiting,
                step: Some(name.clone()),
                phase: Some(Phase::Action),
                attempt: None,
                detail: Some(match until {
                    Some(until) => format!(
                        "{waiting_for} until {}",
                        until.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                    ),
                    None => waiting_for.clone(),
                }),
            }),
            Change::SetStatus { status, reason } => Some(EventData {
                kind: EventKind::StatusChanged,
                step: None,
                phase: None,
                attempt: None,
                detail: Some(match reason {
                    Some(reason) => format!("{status}: {reason}"),
                    None => status.to_string(),
                }),
            }),
            Change::Escalate(item) => Some(EventData {
                kind: EventKind::InterventionOpened,
                step: item.step.as_ref().map(|(_, name)| name.clone()),
                phase: item.phase,
                attempt: None,
                detail: Some(format!("{}: {}", item.kind.as_str(), item.error)),
            }),
            Change::SkipStep {
                name,
                attempt,
                reason,
                ..
            } => Some(step_event(
                EventKind::StepSkipped,
                name,
                Phase::Action,
                *attempt,
                Some(reason.clone()),
            )),
            Change::Hold { step, reason, .. } => reason.as_ref().map(|reason| EventData {
                kind: EventKind::Held,
                step: step.clone(),
                phase: step.as_ref().map(|_| Phase::Action),
                attempt: None,
                detail: Some(reason.clone()),
            }),
            Change::StartChild(child) => Some(EventData {
                kind: EventKind::ChildStarted,
                step: child.parent.as_ref().map(|parent| parent.step.clone()),
                phase: Some(Phase::Action),
                attempt: None,
                detail: Some(format!("{} saga {}", child.saga_type, child.id)),
            }),
            Change::AwaitChild {
                name,
                phase,
                child,
                child_status,
                ..
            } => Some(EventData {
                kind: EventKind::Waiting,
                step: Some(name.clone()),
                phase: Some(*phase),
                attempt: None,
                detail: Some(format!(
                    "{}: child saga {child} is {child_status}",
                    crate::wait::waiting_for_child(name)
                )),
            }),
            Change::Release { .. } | Change::NoSignalSince { .. } | Change::NotifyParent(_) => None,
        }
    }
}

/// What an operator does with an open intervention item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SettleAction {
    /// Run the failed compensation once more with the same idempotency key, then continue
    /// compensating; for a parked (unresumable) saga, re-drive it once the code is fixed.
    Retry,
    /// The operator undid the step by hand: mark the compensation done and continue.
    Resolve,
    /// Stop the saga where it is (`cancelled`).
    Cancel,
}

persisted!(
    SettleAction,
    "settle action",
    [Retry => "retry", Resolve => "resolve", Cancel => "cancel"]
);

/// An operator's decision on one intervention item, as [`Store::settle`] applies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settlement {
    /// The item.
    pub intervention: InterventionId,
    /// What to do.
    pub action: SettleAction,
    /// Who decided (recorded in the history).
    pub by: String,
    /// Why (required; recorded in the history).
    pub reason: String,
}

/// What [`Store::request_cancel`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// No worker held the saga: it moved to `compensating` at once.
    Compensating,
    /// A worker holds the saga: it begins no further step and compensates.
    Requested,
    /// The saga was already compensating: nothing to do.
    AlreadyCompensating,
}

/// A store transaction lent to a transactional step (see
/// [`StepBuilder::transactional`](crate::StepBuilder::transactional)). The backend defines the
/// concrete type; steps reach it through a backend helper that downcasts it.
pub trait StepTransaction: Send + 'static {
    /// The concrete transaction, for downcasting.
    fn as_any_mut(&mut self) -> &mut dyn Any;
    /// The concrete transaction, owned, for downcasting.
    fn into_any(self: Box<Self>) -> Box<dyn Any + Send>;
}

/// Which sagas [`Store::list`] returns.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SagaFilter {
    /// Only sagas in this status.
    pub status: Option<SagaStatus>,
    /// Only sagas of this type.
    pub saga_type: Option<SagaType>,
    /// Only the saga started with this key.
    pub idempotency_key: Option<IdempotencyKey>,
    /// Only sagas created before this time.
    pub created_before: Option<Timestamp>,
    /// Paging: only sagas whose id sorts after this one.
    pub after: Option<SagaId>,
    /// At most this many (default 100).
    pub limit: Option<u32>,
    /// Only sagas waiting for something that starts with this (`""`: any wait; `"signal:"`:
    /// any signal; [`WAITING_FOR_APPROVAL`](crate::wait::WAITING_FOR_APPROVAL): approvals).
    pub waiting_for: Option<String>,
    /// Only the child sagas of this saga (started by its steps).
    pub parent: Option<SagaId>,
}

impl SagaFilter {
    /// The page size, 100 unless set.
    pub fn limit_or_default(&self) -> u32 {
        self.limit.unwrap_or(100)
    }

    /// Whether a record passes the filter (paging aside).
    pub fn matches(&self, record: &SagaRecord) -> bool {
        self.status.is_none_or(|status| record.status == status)
            && self
                .saga_type
                .as_ref()
                .is_none_or(|saga_type| &record.saga_type == saga_type)
            && self
                .idempotency_key
                .as_ref()
                .is_none_or(|key| record.idempotency_key.as_ref() == Some(key))
            && self
                .created_before
                .is_none_or(|before| record.created_at < before)
            && self.after.is_none_or(|after| record.id > after)
            && self
                .parent
                .is_none_or(|parent| record.parent.as_ref().is_some_and(|p| p.saga == parent))
            && self.waiting_for.as_ref().is_none_or(|prefix| {
                record
                    .waiting_for
                    .as_ref()
                    .is_some_and(|waiting| waiting.starts_with(prefix.as_str()))
            })
    }
}

/// Durable storage of sagas. Object-safe, so a backend can be chosen at run time from a URL.
///
/// Every backend passes the conformance suite in `saga-store` (feature `conformance`). What a
/// write means is decided in [`mod@write`] (plans, refusals, operators' decisions); a backend only
/// carries plans out, so that every backend means the same by each write.
///
/// The contract, method by method, on the in-memory store (every backend behaves alike):
///
/// ```
/// use std::time::Duration;
/// use saga_core::{
///     now, Attempt, CancelOutcome, Change, Created, Error, IdempotencyKey, InterventionId,
///     InterventionKind, MemoryStore, NewIntervention, NewSaga, Phase, Refusal, SagaFilter,
///     SagaId, SagaStatus, SagaType, SettleAction, Settlement, StepIndex, StepName, StepStatus,
///     Store, WorkerId,
/// };
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Error> {
/// let store = MemoryStore::new();
/// let id = SagaId::new();
/// let new = NewSaga {
///     id,
///     saga_type: SagaType::new("checkout"),
///     version: 1,
///     fingerprint: "reserve_stock,charge_card".into(),
///     input: serde_json::json!({ "order": 7 }),
///     input_hash: "hash-of-type-and-input".into(),
///     idempotency_key: Some(IdempotencyKey::new("order-7")),
///     trace_context: None,
///     lease: None,
///     changes: Vec::new(),
///     deadline: None,
///     dedup_window: None,
///     parent: None,
/// };
///
/// // create: a new saga, running and due now; the same start key and input finds it again.
/// assert_eq!(store.create(new.clone()).await?, Created::New(id));
/// assert_eq!(store.create(NewSaga { id: SagaId::new(), ..new }).await?, Created::Existing(id));
///
/// // claim: each due saga goes to one worker, with a fencing token every write carries.
/// let worker = WorkerId::new("worker-1");
/// let lease = store.claim(&worker, now(), Duration::from_secs(30), 10).await?.remove(0);
/// assert!(store.claim(&WorkerId::new("worker-2"), now(), Duration::from_secs(30), 10).await?.is_empty());
///
/// // heartbeat: the holder extends its lease.
/// let lease = store.heartbeat(&lease, saga_core::after(now(), Duration::from_secs(60))).await?;
///
/// // apply: changes written all or nothing, each appending one history event.
/// let step = StepName::new("reserve_stock");
/// let key = IdempotencyKey::for_step(id, &step, Phase::Action);
/// store.apply(&lease, &[Change::BeginStep {
///     index: StepIndex(0), name: step.clone(), phase: Phase::Action, attempt: Attempt(1), key,
/// }]).await?;
/// store.apply(&lease, &[Change::CompleteStep {
///     index: StepIndex(0), name: step.clone(), phase: Phase::Action, attempt: Attempt(1),
///     output: Some(serde_json::json!("reservation-1")),
/// }]).await?;
///
/// // ...and refused alike on every backend, with nothing written: a completed step never
/// // begins again.
/// let again = Change::BeginStep {
///     index: StepIndex(0), name: step.clone(), phase: Phase::Action, attempt: Attempt(2),
///     key: IdempotencyKey::for_step(id, &step, Phase::Action),
/// };
/// assert!(matches!(
///     store.apply(&lease, &[again]).await,
///     Err(Error::Refused { refusal: Refusal::StepCompleted { .. }, .. })
/// ));
///
/// // load, list, count_by_status, history: what is stored.
/// let saga = store.load(id).await?.expect("stored");
/// assert_eq!(saga.step(StepIndex(0), Phase::Action).map(|s| s.status), Some(StepStatus::Completed));
/// assert_eq!(store.list(&SagaFilter::default()).await?.len(), 1);
/// assert_eq!(store.count_by_status().await?, vec![(SagaStatus::Running, 1)]);
/// assert_eq!(store.history(id).await?.len(), 3); // started, step started, step completed
///
/// // deliver_signal: stored with the saga once per (name, key), kept until its step takes it.
/// let paid = saga_core::wait::SignalDelivery {
///     saga: id, name: "paid".into(), key: saga_core::SignalKey::new("evt-1"),
///     payload: serde_json::json!({ "charge": "ch_1" }),
/// };
/// assert_eq!(store.deliver_signal(&paid).await?, saga_core::Delivered::New(id));
/// assert_eq!(store.deliver_signal(&paid).await?, saga_core::Delivered::Duplicate(id));
/// assert_eq!(store.load(id).await?.expect("stored").signals.len(), 1);
///
/// // Escalate: parked for a person, one item in the intervention queue.
/// let item = InterventionId::new();
/// store.apply(&lease, &[Change::Escalate(NewIntervention {
///     id: item, kind: InterventionKind::Unresumable, step: None, phase: None,
///     idempotency_key: None, input: None, output: None,
///     error: "definition changed".into(), parked_from: Some(SagaStatus::Running),
/// }), Change::Release { next_run_at: None }]).await?;
/// assert_eq!(store.count_open_interventions().await?, 1);
/// assert_eq!(store.interventions(true).await?[0].item.id, item);
///
/// // settle: an operator's decision, recorded with who and why; one settlement wins.
/// let cancel = Settlement {
///     intervention: item, action: SettleAction::Cancel, by: "alice".into(),
///     reason: "customer withdrew".into(),
/// };
/// assert_eq!(store.settle(&cancel).await?, SagaStatus::Cancelled);
/// assert!(matches!(store.settle(&cancel).await, Err(Error::InterventionSettled(_))));
/// assert!(store.intervention(item).await?.is_some());
///
/// // deliver_signal: a finished saga takes no new signal (a repeat is still a duplicate).
/// let late = saga_core::wait::SignalDelivery { name: "shipped".into(), ..paid.clone() };
/// assert!(matches!(
///     store.deliver_signal(&late).await,
///     Err(Error::SignalRefused { refusal: saga_core::SignalRefusal::Finished(SagaStatus::Cancelled), .. })
/// ));
///
/// // request_cancel: only running sagas can be cancelled.
/// assert!(matches!(
///     store.request_cancel(id, "bob", "too late", now()).await,
///     Err(Error::InvalidAction(_))
/// ));
///
/// // prune: finished sagas last changed before the cut-off go, with their history.
/// assert_eq!(store.prune(saga_core::after(now(), Duration::from_secs(1)), 100).await?, 1);
/// assert!(store.load(id).await?.is_none());
/// # let _ = CancelOutcome::Requested;
/// # Ok(())
/// # }
/// ```
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Stores a new saga in `running`, due now (leased to `saga.lease`'s worker with fencing
    /// token 1 when given), and appends its `saga_started` event; or, when its start key exists
    /// with the same input hash, returns the existing saga. With a [dedup
    /// window](NewSaga::dedup_window), only a saga created within the window counts: an older
    /// one gives the key up ([`retired_key`]) and a new saga is created; and a saga is not
    /// pruned before its window ends.
    ///
    /// # Errors
    /// [`Error::Conflict`](crate::Error::Conflict) when the key exists with another input hash;
    /// store errors.
    async fn create(&self, saga: NewSaga) -> Result<Created>;

    /// Claims up to `limit` active sagas that are due at `now` and not leased (or whose lease
    /// expired), for `owner`, until `now + lease_for`. Each claim increments the saga's fencing
    /// token; taking over an expired lease appends a `lease_taken_over` event.
    ///
    /// # Errors
    /// Store errors.
    async fn claim(
        &self,
        owner: &WorkerId,
        now: Timestamp,
        lease_for: std::time::Duration,
        limit: u32,
    ) -> Result<Vec<Lease>>;

    /// As [`Store::claim`], also reading each claimed saga with its steps when the backend can do
    /// it in the same round trip (saving a read per claim). A `None` snapshot means "not read:
    /// load it"; an `Err` means the stored record is unreadable.
    ///
    /// # Errors
    /// Store errors.
    async fn claim_loaded(
        &self,
        owner: &WorkerId,
        now: Timestamp,
        lease_for: std::time::Duration,
        limit: u32,
    ) -> Result<Vec<(Lease, Option<Result<SagaSnapshot>>)>> {
        Ok(self
            .claim(owner, now, lease_for, limit)
            .await?
            .into_iter()
            .map(|lease| (lease, None))
            .collect())
    }

    /// Takes back, for `owner`, the leases an earlier run of the same worker id still holds:
    /// after a crash or kill, a process restarted under its old [`WorkerId`] resumes its sagas
    /// at once instead of waiting for their leases to expire. Claims up to `limit` active, due
    /// sagas leased to `owner` whose lease expires before `granted_before` (leases granted since
    /// the restart expire later), with a new fencing token each (so a zombie of the earlier run
    /// is fenced off) and a `lease_taken_over` event. Returns nothing on backends that do not
    /// support it; their sagas resume when the leases expire.
    ///
    /// # Errors
    /// Store errors.
    async fn reclaim(
        &self,
        _owner: &WorkerId,
        _granted_before: Timestamp,
        _now: Timestamp,
        _lease_for: std::time::Duration,
        _limit: u32,
    ) -> Result<Vec<Lease>> {
        Ok(Vec::new())
    }

    /// Extends a lease to `expires_at`.
    ///
    /// # Errors
    /// [`Error::LeaseLost`](crate::Error::LeaseLost) when the token is no longer current.
    async fn heartbeat(&self, lease: &Lease, expires_at: Timestamp) -> Result<Lease>;

    /// Applies `changes` atomically if `lease` still holds the saga's current fencing token,
    /// appending one history event per change (in order). A `SetStatus` away from `running`
    /// clears a pending cancel request. What the changes mean is
    /// [`WritePlan::compile`](write::WritePlan::compile)'s; a backend writes that plan.
    ///
    /// # Errors
    /// In this order, as [`admit`](write::admit) judges them: [`Error::LeaseLost`](crate::Error::LeaseLost)
    /// when the token is stale; [`Error::CancelRequested`](crate::Error::CancelRequested) when an
    /// operator asked to cancel the saga and `changes` would begin a forward step;
    /// [`Error::Refused`](crate::Error::Refused) when a step phase cannot take its change (the
    /// first in the batch's order); store errors. Nothing is written then.
    async fn apply(&self, lease: &Lease, changes: &[Change]) -> Result<()>;

    /// Reads one saga with its step records, or `None` if it does not exist.
    ///
    /// # Errors
    /// [`Error::CorruptRecord`](crate::Error::CorruptRecord) when stored data is unreadable; store errors.
    async fn load(&self, id: SagaId) -> Result<Option<SagaSnapshot>>;

    /// Lists sagas matching `filter`, in id order (creation order).
    ///
    /// # Errors
    /// Store errors.
    async fn list(&self, filter: &SagaFilter) -> Result<Vec<SagaRecord>>;

    /// Counts sagas per status.
    ///
    /// # Errors
    /// Store errors.
    async fn count_by_status(&self) -> Result<Vec<(SagaStatus, u64)>>;

    /// The aggregates of an operator's overview (see [`overview`]): sagas per type and
    /// status, sagas started, finished and escalated per bucket of the query's window, stuck
    /// step phases, and the intervention queue's depth and oldest item. Assemble them with
    /// [`Overview::assemble`].
    ///
    /// # Errors
    /// Store errors.
    async fn overview(&self, query: &OverviewQuery) -> Result<OverviewParts>;

    /// The full history of one saga, oldest first.
    ///
    /// # Errors
    /// Store errors.
    async fn history(&self, id: SagaId) -> Result<Vec<Event>>;

    /// Intervention items, oldest first; only open ones when `open_only`.
    ///
    /// # Errors
    /// Store errors.
    async fn interventions(&self, open_only: bool) -> Result<Vec<Intervention>>;

    /// One intervention item, or `None` if it does not exist.
    ///
    /// # Errors
    /// Store errors.
    async fn intervention(&self, id: InterventionId) -> Result<Option<Intervention>>;

    /// Settles an open intervention item, atomically: closes it (who, when, how, why), moves the
    /// saga per the action, makes it due now, and appends an `operator_action` event. Of
    /// concurrent settlements of one item, exactly one wins.
    ///
    /// - retry, compensation failed: the failed compensation goes back to `pending` (its next
    ///   attempt reuses its key) and the saga to `compensating`;
    /// - retry, unresumable: the saga goes back to `running` (or `compensating` if it was);
    /// - resolve, compensation failed: the compensation is marked `completed` by hand and the
    ///   saga goes back to `compensating`;
    /// - cancel: the saga becomes `cancelled` and is never due again.
    ///
    /// # Errors
    /// [`Error::InterventionNotFound`](crate::Error::InterventionNotFound),
    /// [`Error::InterventionSettled`](crate::Error::InterventionSettled) (someone settled it first),
    /// [`Error::InvalidAction`](crate::Error::InvalidAction) (resolve on an unresumable saga);
    /// store errors.
    async fn settle(&self, settlement: &Settlement) -> Result<SagaStatus>;

    /// Stores a signal with its saga, as [`write::decide_signal`] decides on the stored saga:
    /// once per (name, key); a saga waiting for it becomes due at once (waking idle workers),
    /// and a `signal_received` event is appended.
    ///
    /// # Errors
    /// [`Error::SagaNotFound`](crate::Error::SagaNotFound);
    /// [`Error::SignalRefused`](crate::Error::SignalRefused) when the saga is finished or
    /// compensating, or the name was delivered with another key; store errors.
    async fn deliver_signal(
        &self,
        delivery: &crate::wait::SignalDelivery,
    ) -> Result<crate::wait::Delivered>;

    /// Decides a permit for an attempt of a step's action under its policies, as
    /// [`policy::decide_permit`](crate::policy::decide_permit) decides on what the policies
    /// counted so far, and counts the uses a granted permit takes, in one transaction under a
    /// lock per counted key, so that every process on the store sees one count. Uses whose window
    /// ended are forgotten on the way.
    ///
    /// # Errors
    /// Store errors.
    async fn permit(
        &self,
        request: &crate::policy::PermitRequest,
        now: Timestamp,
    ) -> Result<crate::policy::Permit>;

    /// Makes the integration (rate limit) `name` back off until `until` for every saga in every
    /// process: a step reported throttling. A later back-off that ends sooner shortens nothing.
    ///
    /// # Errors
    /// Store errors.
    async fn throttle(&self, name: &str, until: Timestamp) -> Result<()>;

    /// Pauses a saga type or one of its steps: no new attempt of it begins in any process (a
    /// worker holds the saga, holding no worker slot, until the pause is lifted). Returns the
    /// pause in force and whether this request made it (a scope paused already stays as it was).
    ///
    /// # Errors
    /// Store errors.
    async fn pause(
        &self,
        request: &crate::policy::PauseRequest,
        now: Timestamp,
    ) -> Result<(crate::policy::Pause, bool)>;

    /// Lifts the pause in force on the scope, recording who and why, and makes the sagas it held
    /// due at once. Returns the lifted pause and how many sagas were woken; `None` when nothing
    /// was paused there.
    ///
    /// # Errors
    /// Store errors.
    async fn resume(
        &self,
        request: &crate::policy::PauseRequest,
        now: Timestamp,
    ) -> Result<Option<(crate::policy::Pause, u64)>>;

    /// The pauses: those in force, or (`all`) also the lifted ones, oldest first.
    ///
    /// # Errors
    /// Store errors.
    async fn pauses(&self, all: bool) -> Result<Vec<crate::policy::Pause>>;

    /// Asks a `running` saga to stop and compensate what completed. Without a live lease it moves
    /// to `compensating` at once; otherwise the request is recorded, and the holder's next write
    /// that begins a forward step fails with [`Error::CancelRequested`](crate::Error::CancelRequested).
    ///
    /// # Errors
    /// [`Error::SagaNotFound`](crate::Error::SagaNotFound); [`Error::InvalidAction`](crate::Error::InvalidAction)
    /// when the saga is settled; store errors.
    async fn request_cancel(
        &self,
        id: SagaId,
        by: &str,
        reason: &str,
        now: Timestamp,
    ) -> Result<CancelOutcome>;

    /// Asks child saga `child` of `parent` to stop, as
    /// [`write::decide_stop_child`] decides on the stored child: a running child is cancelled, a
    /// completed one goes back to compensating its steps. Appends an `operator_action` event
    /// naming the parent.
    ///
    /// # Errors
    /// [`Error::SagaNotFound`](crate::Error::SagaNotFound);
    /// [`Error::InvalidAction`](crate::Error::InvalidAction) when it is not that parent's
    /// child; store errors.
    async fn stop_child(
        &self,
        child: SagaId,
        parent: &ParentLink,
        reason: &str,
        now: Timestamp,
    ) -> Result<()>;

    /// Deletes up to `limit` finished sagas (completed, compensated, cancelled) last changed
    /// before `before`, with their steps, events and (settled) intervention items. Running
    /// sagas and sagas waiting for an operator are never pruned, nor is a child saga whose
    /// parent is not finished (the parent reads it to know how its step ended). Returns how many were deleted.
    ///
    /// # Errors
    /// Store errors.
    async fn prune(&self, before: Timestamp, limit: u32) -> Result<u64>;

    /// How many intervention items are open (the manual-intervention queue's depth).
    ///
    /// # Errors
    /// Store errors.
    async fn count_open_interventions(&self) -> Result<u64> {
        Ok(u64::try_from(self.interventions(true).await?.len()).unwrap_or(u64::MAX))
    }

    /// Opens a transaction for a transactional step, or `None` when this backend has none.
    ///
    /// # Errors
    /// Store errors.
    async fn begin_step_transaction(
        &self,
        _lease: &Lease,
    ) -> Result<Option<Box<dyn StepTransaction>>> {
        Ok(None)
    }

    /// Whether a step's transaction holds the store's only write lock while the step runs
    /// (SQLite): the worker then records the step begun before it opens the transaction, since
    /// that record could not be written while the transaction is open. Otherwise (Postgres) the
    /// transaction is opened first, so that a step that cannot get one has not begun.
    fn step_transaction_holds_the_write_lock(&self) -> bool {
        false
    }

    /// Applies `changes` (fenced by `lease`, as [`Store::apply`]) inside `transaction`, then
    /// commits it: the step's own writes and its recorded outcome commit together or not at all.
    ///
    /// # Errors
    /// [`Error::LeaseLost`](crate::Error::LeaseLost) (nothing is committed); store errors.
    async fn commit_step_transaction(
        &self,
        transaction: Box<dyn StepTransaction>,
        lease: &Lease,
        changes: &[Change],
    ) -> Result<()> {
        drop(transaction);
        self.apply(lease, changes).await
    }

    /// The store's clock: the time against which it judges leases and due times. Workers
    /// measure their offset to it and schedule by it, so that a worker whose own clock is off
    /// neither takes over live leases nor delays retries. The default is this process's clock
    /// (right for stores kept in this process or on this machine); a database server reports
    /// its own.
    ///
    /// # Errors
    /// Store errors.
    async fn clock(&self) -> Result<Timestamp> {
        Ok(crate::clock::now())
    }

    /// Waits until the store signals that work may be due (a saga was started or released by
    /// any process), or until `max` has passed. Backends without notifications just sleep, so
    /// idle workers poll every `max`.
    async fn wait_for_work(&self, max: std::time::Duration) {
        tokio::time::sleep(max).await;
    }
}
