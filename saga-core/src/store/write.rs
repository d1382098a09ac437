//! What a write means, decided once, here: backends only carry it out.
//!
//! A batch of [`Change`]s compiles into a [`WritePlan`], the net effect on one saga's rows:
//!
//! - at most one update of the saga row ([`SagaUpdate`]: status, cancel request, lease, due time);
//! - one [`StepWrite`] per step phase touched, with the condition the stored phase must meet
//!   ([`Precondition`]). Repeated touches of one phase (a failed attempt and the next one's
//!   start, in one batch) fold into one write;
//! - the intervention items to open, and the history events to append, in order.
//!
//! Operators' actions decide the same way: [`decide_settle`] and [`decide_cancel`] read the
//! stored saga and give the plan to write. A saga's creation is a [`CreationPlan`].
//!
//! A store writes a plan as it is: the memory store and a worker's local copy through
//! [`SagaSnapshot::apply_plan`], SQLite as a few statements, Postgres as the columns of one
//! statement shared by many sagas. When a store finds a fenced write not admitted — the lease
//! moved on, a cancel request refuses a forward step, a step phase is not in the state the plan
//! needs — [`admit`] on the stored saga says why, with the error every backend returns.

use serde_json::Value;

use crate::clock::Timestamp;
use crate::error::{Error, Result};
use crate::id::{Attempt, FencingToken, IdempotencyKey, StepIndex, StepName};
use crate::status::{Phase, SagaStatus, StepStatus};

use crate::wait::{SignalDelivery, SignalRecord, SignalRefusal};

use super::{
    CancelOutcome, Change, EventData, EventKind, Intervention, InterventionKind, Lease,
    NewIntervention, NewSaga, ParentLink, SagaRecord, SagaSnapshot, SettleAction, Settlement,
    StepRecord,
};

/// Why a store refused a write for what it asks of a step phase, the same on every backend.
/// Nothing of the write is stored then.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// Beginning a step phase that completed: a completed phase never runs again.
    StepCompleted {
        /// The step.
        step: StepName,
        /// Action or compensation.
        phase: Phase,
    },
    /// Completing or failing a step phase that never began.
    StepNotBegun {
        /// The step.
        step: StepName,
        /// Action or compensation.
        phase: Phase,
    },
    /// A signal was delivered to the saga since the writer read it, and the write decided
    /// something (a wait ended for want of a signal) that the signal may change: read the saga
    /// again and decide anew.
    SignalArrived,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::StepCompleted { step, phase } => {
                write!(f, "step {step} ({phase}) is completed and never runs again")
            }
            Refusal::StepNotBegun { step, phase } => write!(
                f,
                "step {step} ({phase}) never began, so it cannot complete or fail"
            ),
            Refusal::SignalArrived => write!(
                f,
                "a signal arrived since the saga was read, and the write would pass it over; read the saga again"
            ),
        }
    }
}

/// What a stored step phase must be for a [`StepWrite`] to apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    /// Absent (the write inserts it, with [`StepWrite::key`]) or stored and not completed: the
    /// phase begins.
    NotCompleted,
    /// Stored (it began earlier): the phase completes, fails or is settled.
    Begun,
}

/// The net write to one step phase.
#[derive(Debug, Clone, PartialEq)]
pub struct StepWrite {
    /// The step.
    pub index: StepIndex,
    /// Action or compensation.
    pub phase: Phase,
    /// The step's name (stored when the phase is inserted; used in refusals).
    pub name: StepName,
    /// The condition on the stored phase.
    pub requires: Precondition,
    /// The key a phase inserted by this write gets (set exactly when `requires` is
    /// [`Precondition::NotCompleted`]); a stored phase keeps its own.
    pub key: Option<IdempotencyKey>,
    /// Its new status.
    pub status: StepStatus,
    /// Its new attempt number, when an attempt begins (else kept).
    pub attempt: Option<Attempt>,
    /// Whether an attempt begins: its start time becomes the write's time.
    pub began: bool,
    /// Its new output, when set (`Some(None)`: no output); else kept.
    pub output: Option<Option<Value>>,
    /// Its new last error, when set; else kept.
    pub error: Option<String>,
    /// When its next attempt is due (always written: `None` clears it).
    pub next_attempt_at: Option<Timestamp>,
    /// Whether its latest attempt ended: its end time becomes the write's time (else cleared).
    pub finished: bool,
}

impl StepWrite {
    /// The refusal when the stored phase (`None`: absent) does not meet the precondition.
    pub fn refusal(&self, stored: Option<&StepRecord>) -> Option<Refusal> {
        match (self.requires, stored) {
            (Precondition::NotCompleted, Some(step)) if step.status == StepStatus::Completed => {
                Some(Refusal::StepCompleted {
                    step: self.name.clone(),
                    phase: self.phase,
                })
            }
            (Precondition::Begun, None) => Some(Refusal::StepNotBegun {
                step: self.name.clone(),
                phase: self.phase,
            }),
            _ => None,
        }
    }

    /// Applies the write to the stored phase, at `now`.
    pub fn apply_to(&self, step: &mut StepRecord, now: Timestamp) {
        step.status = self.status;
        if let Some(attempt) = self.attempt {
            step.attempt = attempt;
        }
        if self.began {
            step.started_at = Some(now);
        }
        if let Some(output) = &self.output {
            step.output = output.clone();
        }
        if let Some(error) = &self.error {
            step.last_error = Some(error.clone());
        }
        step.next_attempt_at = self.next_attempt_at;
        step.finished_at = self.finished.then_some(now);
    }

    /// The phase as this write inserts it (for [`Precondition::NotCompleted`] on an absent
    /// phase), at `now`.
    pub fn inserted(&self, key: IdempotencyKey, now: Timestamp) -> StepRecord {
        let mut step = StepRecord {
            index: self.index,
            phase: self.phase,
            name: self.name.clone(),
            status: self.status,
            attempt: Attempt(0),
            idempotency_key: key,
            output: None,
            last_error: None,
            next_attempt_at: None,
            started_at: None,
            finished_at: None,
        };
        self.apply_to(&mut step, now);
        step
    }

    /// Folds one more change to the same phase into this write; a contradiction when the
    /// change cannot follow what the write already does (beginning a phase it completed).
    fn fold(&mut self, change: &Change) -> std::result::Result<(), Refusal> {
        match change {
            Change::BeginStep { attempt, .. } => {
                if self.status == StepStatus::Completed {
                    return Err(Refusal::StepCompleted {
                        step: self.name.clone(),
                        phase: self.phase,
                    });
                }
                self.attempt = Some(*attempt);
                self.began = true;
                self.finished = false;
                self.next_attempt_at = None;
            }
            Change::CompleteStep { output, .. } => {
                self.output = Some(output.clone());
                self.finished = true;
                self.next_attempt_at = None;
            }
            Change::FailStep {
                error, retry_at, ..
            } => {
                self.error = Some(error.to_string());
                self.finished = true;
                self.next_attempt_at = *retry_at;
            }
            Change::Wait { until, .. } => {
                self.finished = false;
                self.next_attempt_at = *until;
            }
            Change::SkipStep {
                attempt, reason, ..
            } => {
                if self.status == StepStatus::Completed {
                    return Err(Refusal::StepCompleted {
                        step: self.name.clone(),
                        phase: self.phase,
                    });
                }
                self.attempt = Some(*attempt);
                self.output = Some(None);
                self.error = Some(reason.clone());
                self.finished = true;
                self.next_attempt_at = None;
            }
            Change::SetStatus { .. }
            | Change::Escalate(_)
            | Change::Release { .. }
            | Change::Hold { .. }
            | Change::NoSignalSince { .. }
            | Change::StartChild(_)
            | Change::AwaitChild { .. }
            | Change::NotifyParent(_) => {}
        }
        if let Some(status) = change.step_status() {
            self.status = status;
        }
        Ok(())
    }

    /// The write of the first change to step phase (`index`, `phase`) in a batch: a phase that
    /// the change begins (it carries a key) must not be completed; any other must be stored.
    fn first(change: &Change, index: StepIndex, phase: Phase) -> Self {
        let (name, key) = match change {
            Change::BeginStep { name, key, .. } | Change::SkipStep { name, key, .. } => {
                (name.clone(), Some(key.clone()))
            }
            Change::CompleteStep { name, .. }
            | Change::FailStep { name, .. }
            | Change::Wait { name, .. } => (name.clone(), None),
            Change::SetStatus { .. }
            | Change::Escalate(_)
            | Change::Release { .. }
            | Change::Hold { .. }
            | Change::NoSignalSince { .. }
            | Change::StartChild(_)
            | Change::AwaitChild { .. }
            | Change::NotifyParent(_) => (StepName::new(""), None),
        };
        StepWrite {
            index,
            phase,
            name,
            requires: if key.is_some() {
                Precondition::NotCompleted
            } else {
                Precondition::Begun
            },
            key,
            status: StepStatus::InProgress,
            attempt: None,
            began: false,
            output: None,
            error: None,
            next_attempt_at: None,
            finished: false,
        }
    }
}

/// What a write does to the saga's pending cancel request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum CancelRequest {
    /// Left as it is.
    #[default]
    Keep,
    /// Cleared: the saga left `running`, so the request was acted on.
    Clear,
    /// Recorded ("cancel requested by alice: reason").
    Set(String),
}

/// What a write does to the saga's lease.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LeaseChange {
    /// Left as it is.
    #[default]
    Keep,
    /// Given back: no owner, no expiry.
    Release,
    /// Taken away for good: no owner, no expiry, and the fencing token grows by one, so that a
    /// holder that was in fact alive can write nothing more.
    Revoke,
}

/// The net update of the saga row (its `updated_at` always becomes the write's time).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SagaUpdate {
    /// Its new status and reason, when it changes.
    pub status: Option<(SagaStatus, Option<String>)>,
    /// Its cancel request.
    pub cancel: CancelRequest,
    /// Its lease.
    pub lease: LeaseChange,
    /// Its new due time, when set (`Some(None)`: due never, until an operator acts).
    pub next_run_at: Option<Option<Timestamp>>,
    /// What it waits for, when set (`Some(None)`: it no longer waits).
    pub waiting: Option<Option<String>>,
    /// Due at once instead of at `next_run_at` should the saga have received more signals than
    /// this when the update is written (a signal arrived since the worker read the saga).
    pub wake_if_signalled: Option<u64>,
}

impl SagaUpdate {
    /// Applies the update to the stored record, at `now`.
    pub fn apply_to(&self, record: &mut SagaRecord, now: Timestamp) {
        if let Some((status, reason)) = &self.status {
            record.status = *status;
            record.status_reason = reason.clone();
        }
        match &self.cancel {
            CancelRequest::Keep => {}
            CancelRequest::Clear => record.cancel_requested = None,
            CancelRequest::Set(request) => record.cancel_requested = Some(request.clone()),
        }
        if self.lease != LeaseChange::Keep {
            record.lease_owner = None;
            record.lease_expires_at = None;
        }
        if self.lease == LeaseChange::Revoke {
            record.fencing_token = FencingToken(record.fencing_token.0 + 1);
        }
        if let Some(next_run_at) = self.next_run_at {
            record.next_run_at = next_run_at;
            if self
                .wake_if_signalled
                .is_some_and(|seen| record.signals_received > seen)
            {
                record.next_run_at = Some(now);
            }
        }
        if let Some(waiting) = &self.waiting {
            record.waiting_for = waiting.clone();
        }
        record.updated_at = now;
    }

    /// Whether the update makes the saga due at or before `now` (a store then wakes idle
    /// workers).
    pub fn wakes(&self, now: Timestamp) -> bool {
        matches!(self.next_run_at, Some(Some(due)) if due <= now)
    }
}

/// The net effect of one write on one saga's rows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WritePlan {
    /// Whether the write begins a forward step (an action) or waits: refused while a cancel
    /// request is pending.
    pub begins_forward: bool,
    /// The update of the saga row.
    pub saga: SagaUpdate,
    /// One write per step phase touched, in the order the batch first touched them.
    pub steps: Vec<StepWrite>,
    /// Intervention items to open (an item whose id is stored already is not opened again).
    pub interventions: Vec<NewIntervention>,
    /// History events to append, in order.
    pub events: Vec<EventData>,
    /// Written only if the saga received at most this many signals (see
    /// [`Change::NoSignalSince`]).
    pub signals_at_most: Option<u64>,
    /// Child sagas to create with the write (see [`Change::StartChild`]): only if the write is
    /// admitted, and only those whose start key is not stored yet.
    pub children: Vec<NewSaga>,
    /// The parent to wake with the write (see [`Change::NotifyParent`]).
    pub wake_parent: Option<ParentLink>,
}

/// A batch that contradicts itself (it begins a step phase it completed): refused whatever is
/// stored. It keeps the plan of the changes before the contradiction, since a store reports the
/// first refusal in the batch's order, and an earlier change may be refused already.
#[derive(Debug, Clone, PartialEq)]
pub struct Contradiction {
    /// The plan of the changes before the contradicting one.
    pub before: WritePlan,
    /// The contradiction.
    pub refusal: Refusal,
}

impl Contradiction {
    /// The refusal a store reports for the batch on `stored`: the first of the earlier
    /// changes' refusals, else the contradiction.
    pub fn refusal_on(&self, stored: &SagaSnapshot) -> Refusal {
        self.before
            .refusal_on(stored)
            .unwrap_or_else(|| self.refusal.clone())
    }
}

/// A compiled batch: the plan, or why the batch can never be written.
pub type Compiled = std::result::Result<WritePlan, Box<Contradiction>>;

impl WritePlan {
    /// Compiles a batch of changes, as a store applies them in order, into its net effect.
    ///
    /// # Errors
    /// A [`Contradiction`] when a change cannot follow an earlier one of the batch.
    pub fn compile(changes: &[Change]) -> Compiled {
        let mut plan = WritePlan {
            // Beginning an action, or waiting (again): both go forward.
            begins_forward: changes.iter().any(|change| {
                matches!(
                    change,
                    Change::BeginStep {
                        phase: Phase::Action,
                        ..
                    } | Change::Wait { .. }
                        | Change::AwaitChild {
                            phase: Phase::Action,
                            ..
                        }
                )
            }),
            ..WritePlan::default()
        };
        for change in changes {
            if let Err(refusal) = plan.fold(change) {
                return Err(Box::new(Contradiction {
                    before: plan,
                    refusal,
                }));
            }
        }
        Ok(plan)
    }

    fn fold(&mut self, change: &Change) -> std::result::Result<(), Refusal> {
        match change {
            Change::BeginStep { index, phase, .. }
            | Change::CompleteStep { index, phase, .. }
            | Change::FailStep { index, phase, .. } => {
                self.saga.waiting = Some(None);
                self.step_write(change, *index, *phase).fold(change)?;
            }
            Change::SkipStep { index, .. } => {
                self.saga.waiting = Some(None);
                self.step_write(change, *index, Phase::Action)
                    .fold(change)?;
            }
            Change::Hold { waiting_for, .. } => {
                self.saga.waiting = Some(Some(waiting_for.clone()));
            }
            Change::Wait {
                index,
                waiting_for,
                signals_seen,
                ..
            } => {
                self.step_write(change, *index, Phase::Action)
                    .fold(change)?;
                self.saga.waiting = Some(Some(waiting_for.clone()));
                self.saga.wake_if_signalled = Some(*signals_seen);
            }
            Change::SetStatus { status, reason } => {
                self.saga.waiting = Some(None);
                self.saga.status = Some((*status, reason.clone()));
                if *status != SagaStatus::Running {
                    self.saga.cancel = CancelRequest::Clear;
                }
            }
            Change::Escalate(item) => {
                // A pending cancel request outlives the escalation: a saga re-driven forward by
                // an operator still begins no new step, and compensates instead.
                self.saga.status = Some((SagaStatus::NeedsIntervention, Some(item.error.clone())));
                self.saga.waiting = Some(None);
                self.interventions.push(item.clone());
            }
            Change::Release { next_run_at } => {
                self.saga.lease = LeaseChange::Release;
                self.saga.next_run_at = Some(*next_run_at);
            }
            Change::StartChild(child) => self.children.push((**child).clone()),
            Change::AwaitChild {
                name, signals_seen, ..
            } => {
                self.saga.waiting = Some(Some(crate::wait::waiting_for_child(name)));
                self.saga.wake_if_signalled = Some(*signals_seen);
            }
            Change::NotifyParent(parent) => self.wake_parent = Some(parent.clone()),
            Change::NoSignalSince { signals_seen } => {
                self.signals_at_most = Some(
                    self.signals_at_most
                        .map_or(*signals_seen, |at_most| at_most.min(*signals_seen)),
                );
            }
        }
        self.events.extend(change.event());
        Ok(())
    }

    /// The write to the phase a step change touches: the one this batch already has, or a new
    /// one started from the change.
    fn step_write(&mut self, change: &Change, index: StepIndex, phase: Phase) -> &mut StepWrite {
        let position = match self
            .steps
            .iter()
            .position(|step| step.index == index && step.phase == phase)
        {
            Some(position) => position,
            None => {
                self.steps.push(StepWrite::first(change, index, phase));
                self.steps.len() - 1
            }
        };
        &mut self.steps[position]
    }

    /// The first refusal of this plan's step writes on `stored`, in the batch's order.
    pub fn refusal_on(&self, stored: &SagaSnapshot) -> Option<Refusal> {
        self.steps
            .iter()
            .find_map(|write| write.refusal(stored.step(write.index, write.phase)))
    }
}

/// Whether a fenced write, compiled, is admitted on the saga as stored; the error every backend
/// returns when it is not, checked in this order: [`Error::LeaseLost`] (another worker claimed
/// the saga), [`Error::CancelRequested`] (a cancel request refuses a forward step),
/// [`Error::Refused`] (a signal arrived that the batch would pass over, a step phase is not in
/// the state the batch needs, or the batch contradicts itself).
///
/// # Errors
/// As listed.
pub fn admit<'p>(
    stored: &SagaSnapshot,
    lease: &Lease,
    compiled: &'p Compiled,
) -> Result<&'p WritePlan> {
    let record = &stored.record;
    if record.fencing_token != lease.token || record.lease_owner.as_ref() != Some(&lease.owner) {
        return Err(Error::LeaseLost(lease.saga));
    }
    let begins_forward = match compiled {
        Ok(plan) => plan.begins_forward,
        Err(contradiction) => contradiction.before.begins_forward,
    };
    if let (Some(reason), true) = (&record.cancel_requested, begins_forward) {
        return Err(Error::CancelRequested {
            saga: lease.saga,
            reason: reason.clone(),
        });
    }
    let refused = |refusal| Error::Refused {
        saga: lease.saga,
        refusal,
    };
    let signals_at_most = match compiled {
        Ok(plan) => plan.signals_at_most,
        Err(contradiction) => contradiction.before.signals_at_most,
    };
    if signals_at_most.is_some_and(|at_most| record.signals_received > at_most) {
        return Err(refused(Refusal::SignalArrived));
    }
    match compiled {
        Ok(plan) => match plan.refusal_on(stored) {
            Some(refusal) => Err(refused(refusal)),
            None => Ok(plan),
        },
        Err(contradiction) => Err(refused(contradiction.refusal_on(stored))),
    }
}

/// The error for a fenced write a store did not write (its fence, cancel check or a step
/// precondition failed, or the batch contradicts itself), judged on the saga as read back after
/// rolling the write back (`None`: it does not exist). Should the saga admit the write by then
/// (it changed in between), the write is reported unavailable, to be read back and retried.
pub fn not_admitted(stored: Option<&SagaSnapshot>, lease: &Lease, compiled: &Compiled) -> Error {
    match stored.map(|stored| admit(stored, lease, compiled)) {
        None => Error::SagaNotFound(lease.saga),
        Some(Err(err)) => err,
        Some(Ok(_)) => Error::StoreUnavailable(
            format!(
                "saga {} changed while a write to it was refused; nothing was written, read it back and retry",
                lease.saga
            )
            .into(),
        ),
    }
}

impl SagaSnapshot {
    /// Applies a plan at time `now`, as a store writes it (the fence is the store's to check).
    ///
    /// # Errors
    /// [`Error::Refused`] when a step phase is not in the state the plan needs; nothing is
    /// changed then.
    pub fn apply_plan(&mut self, plan: &WritePlan, now: Timestamp) -> Result<()> {
        if let Some(refusal) = plan.refusal_on(self) {
            return Err(Error::Refused {
                saga: self.record.id,
                refusal,
            });
        }
        let saga = self.record.id;
        let mut inserted = false;
        for write in &plan.steps {
            match self
                .steps
                .iter_mut()
                .find(|step| step.index == write.index && step.phase == write.phase)
            {
                Some(step) => write.apply_to(step, now),
                None => {
                    let key = write.key.clone().unwrap_or_else(|| {
                        IdempotencyKey::for_step(saga, &write.name, write.phase)
                    });
                    self.steps.push(write.inserted(key, now));
                    inserted = true;
                }
            }
        }
        if inserted {
            self.steps.sort_by_key(|step| (step.index, step.phase));
        }
        plan.saga.apply_to(&mut self.record, now);
        Ok(())
    }

    /// Applies a batch of changes at time `now`, all or nothing, as a store does.
    ///
    /// # Errors
    /// [`Error::Refused`] when the batch asks what a step phase cannot do (begin again after
    /// completing, complete or fail without beginning); nothing is changed then.
    pub fn apply_all(&mut self, changes: &[Change], now: Timestamp) -> Result<()> {
        match WritePlan::compile(changes) {
            Ok(plan) => self.apply_plan(&plan, now),
            Err(contradiction) => Err(Error::Refused {
                saga: self.record.id,
                refusal: contradiction.refusal_on(self),
            }),
        }
    }

    /// Applies one change at time `now`, as a store does.
    ///
    /// # Errors
    /// As [`SagaSnapshot::apply_all`].
    pub fn apply(&mut self, change: &Change, now: Timestamp) -> Result<()> {
        self.apply_all(std::slice::from_ref(change), now)
    }
}

/// A saga's creation, decided: the saga row, its first step phases and its first events.
#[derive(Debug, Clone, PartialEq)]
pub struct CreationPlan {
    /// Its fencing token: 1 when created leased, else 0.
    pub token: FencingToken,
    /// Step phases begun with the creation (all inserted).
    pub steps: Vec<StepWrite>,
    /// Its first events: `saga_started`, then those of the steps begun.
    pub events: Vec<EventData>,
}

impl CreationPlan {
    /// Checks and compiles the [`NewSaga::changes`] written with a creation: only `BeginStep`s,
    /// each step phase at most once, and only for a saga created leased.
    ///
    /// # Errors
    /// [`Error::InvalidAction`] naming what is not accepted.
    pub fn compile(saga: &NewSaga) -> Result<CreationPlan> {
        if !saga.changes.is_empty() && saga.lease.is_none() {
            return Err(Error::InvalidAction(format!(
                "saga {}: changes written with the creation need a lease (NewSaga::lease); create it leased, or apply the changes after claiming it",
                saga.id
            )));
        }
        let mut seen = std::collections::HashSet::new();
        for change in &saga.changes {
            match change {
                Change::BeginStep { index, phase, .. } if seen.insert((*index, *phase)) => {}
                Change::BeginStep { name, phase, .. } => {
                    return Err(Error::InvalidAction(format!(
                        "saga {}: step {name} ({phase}) is begun twice in its creation; begin each step phase once",
                        saga.id
                    )))
                }
                other => {
                    return Err(Error::InvalidAction(format!(
                        "saga {}: only BeginStep can be written with the creation, not {other:?}; apply it under the lease afterwards",
                        saga.id
                    )))
                }
            }
        }
        // Each step phase begun once, nothing else: nothing to contradict.
        let plan = WritePlan::compile(&saga.changes)
            .map_err(|contradiction| Error::InvalidAction(contradiction.refusal.to_string()))?;
        let mut events = vec![EventData {
            kind: EventKind::SagaStarted,
            step: None,
            phase: None,
            attempt: None,
            detail: Some(match &saga.parent {
                Some(parent) => format!(
                    "{} v{}, child of saga {} (step {})",
                    saga.saga_type, saga.version, parent.saga, parent.step
                ),
                None => format!("{} v{}", saga.saga_type, saga.version),
            }),
        }];
        events.extend(plan.events);
        Ok(CreationPlan {
            token: FencingToken(i64::from(saga.lease.is_some())),
            steps: plan.steps,
            events,
        })
    }

    /// The saga as created at `now`: `running`, due now, leased as [`NewSaga::lease`] says,
    /// with its first step phases.
    pub fn snapshot(&self, saga: &NewSaga, now: Timestamp) -> SagaSnapshot {
        let mut snapshot = SagaSnapshot {
            record: SagaRecord {
                id: saga.id,
                saga_type: saga.saga_type.clone(),
                version: saga.version,
                fingerprint: saga.fingerprint.clone(),
                status: SagaStatus::Running,
                status_reason: None,
                input: saga.input.clone(),
                input_hash: saga.input_hash.clone(),
                idempotency_key: saga.idempotency_key.clone(),
                next_run_at: Some(now),
                lease_owner: saga.lease.as_ref().map(|(owner, _)| owner.clone()),
                lease_expires_at: saga.lease.as_ref().map(|(_, until)| *until),
                fencing_token: self.token,
                trace_context: saga.trace_context.clone(),
                cancel_requested: None,
                created_at: now,
                updated_at: now,
                waiting_for: None,
                deadline: saga.deadline,
                signals_received: 0,
                parent: saga.parent.clone().map(Box::new),
            },
            steps: Vec::new(),
            signals: Vec::new(),
        };
        for write in &self.steps {
            let key = write
                .key
                .clone()
                .unwrap_or_else(|| IdempotencyKey::for_step(saga.id, &write.name, write.phase));
            snapshot.steps.push(write.inserted(key, now));
        }
        snapshot.steps.sort_by_key(|step| (step.index, step.phase));
        snapshot
    }
}

/// A settlement, decided on the stored saga: the status it moves the saga to, and the plan to
/// write (unfenced: an operator holds no lease) besides closing the item.
///
/// - retry, compensation failed: the failed compensation goes back to `pending`, due now (its
///   next attempt reuses its key), and the saga to `compensating`;
/// - resolve, compensation failed: the compensation is `completed` (undone by hand), and the
///   saga goes back to `compensating`;
/// - retry, unknown outcome: the action stays `in_progress` (its outcome is still unknown) with
///   an attempt due now, run with the same key; the saga resumes where it was parked from;
/// - resolve, unknown outcome: the action is `failed` (the operator found it did not apply),
///   and what completed before it is compensated;
/// - retry, unresumable: the saga resumes where it was parked from;
/// - cancel: the saga becomes `cancelled` and is never due again.
///
/// # Errors
/// [`Error::InvalidAction`] when the saga does not wait for an operator, or for resolving an
/// unresumable saga (there is no step to mark done).
pub fn decide_settle(
    item: &Intervention,
    stored: &SagaSnapshot,
    settlement: &Settlement,
    now: Timestamp,
) -> Result<(SagaStatus, WritePlan)> {
    let status = settled_status(item, stored, settlement.action)?;
    let detail = settlement_detail(settlement);
    let mut plan = WritePlan {
        saga: SagaUpdate {
            status: Some((status, Some(detail.clone()))),
            cancel: if status == SagaStatus::Running {
                CancelRequest::Keep
            } else {
                CancelRequest::Clear
            },
            lease: LeaseChange::Keep,
            next_run_at: Some((!status.is_terminal()).then_some(now)),
            waiting: None,
            wake_if_signalled: None,
        },
        events: vec![operator_event(detail)],
        // A child stopped where it is by a person: its parent decides what that means for it.
        wake_parent: stored
            .record
            .parent
            .as_deref()
            .cloned()
            .filter(|_| status.is_terminal()),
        ..WritePlan::default()
    };
    if let Some(step) = settled_step(item, stored, settlement, now) {
        plan.steps.push(step);
    }
    Ok((status, plan))
}

/// A cancel request, decided on the stored saga at `now` (the store's clock): what it does, and
/// the plan to write (unfenced), if any.
///
/// - running and leased (a live lease): the request is recorded; the holder begins no further
///   forward step and compensates;
/// - running and not leased (or the lease expired): the saga moves to `compensating` at once,
///   due now, and its lease is revoked (owner cleared, fencing token grown), so that a holder
///   that was in fact alive (delayed heartbeats) cannot go on to complete a step;
/// - compensating already: nothing to write.
///
/// # Errors
/// [`Error::InvalidAction`] when the saga is settled or waits for an operator.
pub fn decide_cancel(
    stored: &SagaSnapshot,
    by: &str,
    reason: &str,
    now: Timestamp,
) -> Result<(CancelOutcome, Option<WritePlan>)> {
    let record = &stored.record;
    let request = cancel_detail(by, reason);
    let saga = match record.status {
        SagaStatus::Compensating => return Ok((CancelOutcome::AlreadyCompensating, None)),
        SagaStatus::Running => {
            let leased =
                record.lease_owner.is_some() && record.lease_expires_at.is_some_and(|at| at >= now);
            if leased {
                SagaUpdate {
                    cancel: CancelRequest::Set(request.clone()),
                    ..SagaUpdate::default()
                }
            } else {
                SagaUpdate {
                    status: Some((SagaStatus::Compensating, Some(request.clone()))),
                    cancel: CancelRequest::Clear,
                    lease: LeaseChange::Revoke,
                    next_run_at: Some(Some(now)),
                    waiting: Some(None),
                    wake_if_signalled: None,
                }
            }
        }
        SagaStatus::NeedsIntervention => {
            return Err(Error::InvalidAction(format!(
                "saga {} waits for an operator; settle its intervention item with `cancel` instead",
                record.id
            )))
        }
        other => {
            return Err(Error::InvalidAction(format!(
                "saga {} is already {other}; only running sagas can be cancelled",
                record.id
            )))
        }
    };
    let outcome = if saga.lease == LeaseChange::Revoke {
        CancelOutcome::Compensating
    } else {
        CancelOutcome::Requested
    };
    let plan = WritePlan {
        saga,
        events: vec![operator_event(request)],
        ..WritePlan::default()
    };
    Ok((outcome, Some(plan)))
}

/// A parent's request that its child saga stop, decided on the stored child at `now` (the
/// store's clock): the plan to write (unfenced), if any.
///
/// - running: as a cancel ([`decide_cancel`]): recorded while a worker holds the child, or the
///   child moves to `compensating` at once;
/// - completed: the child moves back to `compensating`, due now, to undo its steps in reverse
///   (only its parent may ask this: the parent's step that started it is being compensated);
/// - waiting for a person: the request is recorded, and the child compensates once a person
///   sends it on;
/// - compensating, compensated or cancelled: nothing to write.
///
/// # Errors
/// [`Error::InvalidAction`] when the saga is not a child of `parent`.
pub fn decide_stop_child(
    stored: &SagaSnapshot,
    parent: &ParentLink,
    reason: &str,
    now: Timestamp,
) -> Result<Option<WritePlan>> {
    let record = &stored.record;
    if record.parent.as_deref() != Some(parent) {
        return Err(Error::InvalidAction(format!(
            "saga {} is not the child of step `{}` of saga {}; only its parent step can stop it",
            record.id, parent.step, parent.saga
        )));
    }
    let by = format!("parent saga {} (step {})", parent.saga, parent.step);
    let request = cancel_detail(&by, reason);
    let saga = match record.status {
        SagaStatus::Running => {
            return decide_cancel(stored, &by, reason, now).map(|(_, plan)| plan)
        }
        SagaStatus::Completed => SagaUpdate {
            status: Some((SagaStatus::Compensating, Some(request.clone()))),
            next_run_at: Some(Some(now)),
            waiting: Some(None),
            ..SagaUpdate::default()
        },
        SagaStatus::NeedsIntervention if record.cancel_requested.is_none() => SagaUpdate {
            cancel: CancelRequest::Set(request.clone()),
            ..SagaUpdate::default()
        },
        SagaStatus::NeedsIntervention
        | SagaStatus::Compensating
        | SagaStatus::Compensated
        | SagaStatus::Cancelled => return Ok(None),
    };
    Ok(Some(WritePlan {
        saga,
        events: vec![operator_event(request)],
        ..WritePlan::default()
    }))
}

/// A signal's delivery, decided on the stored saga: `None` when a signal of this name and key
/// is stored already (a duplicate: nothing to write); else what to write besides the signal
/// itself.
///
/// # Errors
/// [`Error::SignalRefused`] when the saga is finished or compensating (it waits for nothing), or
/// a signal of this name was delivered with another key.
pub fn decide_signal(
    stored: &SagaSnapshot,
    delivery: &SignalDelivery,
) -> Result<Option<SignalWrite>> {
    let record = &stored.record;
    let refused = |refusal| Error::SignalRefused {
        target: format!("saga {}", record.id),
        name: delivery.name.clone(),
        refusal,
    };
    let existing = stored.signal(&delivery.name);
    if existing.is_some_and(|existing| existing.key == delivery.key) {
        // Delivered again (a webhook retried): whatever the saga did since, nothing to write.
        return Ok(None);
    }
    match record.status {
        SagaStatus::Running | SagaStatus::NeedsIntervention => {}
        SagaStatus::Compensating => return Err(refused(SignalRefusal::Compensating)),
        status => return Err(refused(SignalRefusal::Finished(status))),
    }
    if let Some(existing) = existing {
        return Err(refused(SignalRefusal::AlreadyDelivered {
            key: existing.key.clone(),
        }));
    }
    Ok(Some(SignalWrite {
        wake: record.status == SagaStatus::Running
            && record.waiting_for.as_deref()
                == Some(crate::wait::waiting_for_signal(&delivery.name).as_str()),
        event: EventData {
            kind: EventKind::SignalReceived,
            step: None,
            phase: None,
            attempt: None,
            detail: Some(signal_detail(delivery)),
        },
    }))
}

/// The history text of a delivered signal: its name and key; for a person's decision on an
/// approval, also who decided what and why.
fn signal_detail(delivery: &SignalDelivery) -> String {
    let key = crate::step::bounded_text(delivery.key.as_str(), MAX_REASON_BYTES);
    let decision = delivery
        .name
        .starts_with("approval:")
        .then(|| serde_json::from_value::<crate::wait::Approval>(delivery.payload.clone()).ok())
        .flatten();
    match decision {
        Some(decision) => format!(
            "{} (key {key}): {} by {}: {}",
            delivery.name,
            if decision.approved {
                "approved"
            } else {
                "rejected"
            },
            crate::step::bounded_text(&decision.by, MAX_REASON_BYTES),
            crate::step::bounded_text(&decision.reason, MAX_REASON_BYTES)
        ),
        None => format!("{} (key {key})", delivery.name),
    }
}

/// What storing a signal writes besides the signal row: the count of signals received grows
/// by one, and the event is appended.
#[derive(Debug, Clone, PartialEq)]
pub struct SignalWrite {
    /// Whether the saga waits for this signal: it becomes due now (idle workers are woken).
    pub wake: bool,
    /// The `signal_received` event.
    pub event: EventData,
}

impl SignalWrite {
    /// Applies the write (and the signal) to the stored saga at `now`.
    pub fn apply_to(&self, stored: &mut SagaSnapshot, delivery: &SignalDelivery, now: Timestamp) {
        stored.signals.push(SignalRecord {
            name: delivery.name.clone(),
            key: delivery.key.clone(),
            payload: delivery.payload.clone(),
            received_at: now,
        });
        stored.record.signals_received += 1;
        if self.wake {
            stored.record.next_run_at = Some(now);
        }
    }
}

/// The status a settlement moves the saga to.
fn settled_status(
    item: &Intervention,
    stored: &SagaSnapshot,
    action: SettleAction,
) -> Result<SagaStatus> {
    if stored.record.status != SagaStatus::NeedsIntervention {
        return Err(Error::InvalidAction(format!(
            "saga {} is {}, not waiting for an operator; nothing to settle",
            stored.record.id, stored.record.status
        )));
    }
    let parked_from = || {
        item.item
            .parked_from
            .unwrap_or_else(|| resume_status(stored))
    };
    match (action, item.item.kind) {
        (SettleAction::Cancel, _) => Ok(SagaStatus::Cancelled),
        (SettleAction::Retry | SettleAction::Resolve, InterventionKind::CompensationFailed) => {
            Ok(SagaStatus::Compensating)
        }
        (SettleAction::Retry, InterventionKind::Unresumable | InterventionKind::UnknownOutcome) => {
            Ok(parked_from())
        }
        // The action did not take effect: what completed before it is compensated.
        (SettleAction::Resolve, InterventionKind::UnknownOutcome) => Ok(SagaStatus::Compensating),
        // Past the point of no return the saga only goes forward.
        (SettleAction::Retry, InterventionKind::PastPivot) => Ok(SagaStatus::Running),
        (SettleAction::Resolve, InterventionKind::PastPivot) if item.item.step.is_some() => {
            Ok(SagaStatus::Running)
        }
        (SettleAction::Resolve, InterventionKind::PastPivot) => Err(Error::InvalidAction(format!(
            "intervention {} names no step to mark done (saga {} was asked to stop after its pivot step completed): `retry` continues it forward, `cancel` stops it where it is",
            item.item.id, stored.record.id
        ))),
        (SettleAction::Resolve, InterventionKind::Unresumable) => Err(Error::InvalidAction(format!(
            "intervention {} parked saga {} because it cannot be resumed; there is no step to mark done: fix the code and `retry` to re-drive it, or `cancel` it",
            item.item.id, stored.record.id
        ))),
    }
}

/// The write a settlement makes to the step phase its item names, if that phase is stored.
fn settled_step(
    item: &Intervention,
    stored: &SagaSnapshot,
    settlement: &Settlement,
    now: Timestamp,
) -> Option<StepWrite> {
    let (index, name) = item.item.step.as_ref()?;
    let (phase, status, next_attempt_at, error) = match (item.item.kind, settlement.action) {
        (InterventionKind::CompensationFailed, SettleAction::Retry) => {
            (Phase::Compensation, StepStatus::Pending, Some(now), None)
        }
        (InterventionKind::CompensationFailed, SettleAction::Resolve) => {
            (Phase::Compensation, StepStatus::Completed, None, None)
        }
        (InterventionKind::UnknownOutcome, SettleAction::Retry) => {
            (Phase::Action, StepStatus::InProgress, Some(now), None)
        }
        (InterventionKind::UnknownOutcome, SettleAction::Resolve) => (
            Phase::Action,
            StepStatus::Failed,
            None,
            Some(format!(
                "not applied, as settled by an operator ({})",
                settlement_detail(settlement)
            )),
        ),
        // Forward again with the same key: a phase whose outcome is unknown stays so.
        (InterventionKind::PastPivot, SettleAction::Retry) => (
            Phase::Action,
            match stored.step(*index, Phase::Action).map(|step| step.status) {
                Some(StepStatus::InProgress) => StepStatus::InProgress,
                _ => StepStatus::Pending,
            },
            Some(now),
            None,
        ),
        (InterventionKind::PastPivot, SettleAction::Resolve) => (
            Phase::Action,
            StepStatus::Completed,
            None,
            Some(format!(
                "done by hand, as settled by an operator ({})",
                settlement_detail(settlement)
            )),
        ),
        _ => return None,
    };
    stored.step(*index, phase)?;
    Some(StepWrite {
        index: *index,
        phase,
        name: name.clone(),
        requires: Precondition::Begun,
        key: None,
        status,
        attempt: None,
        began: false,
        output: None,
        error,
        next_attempt_at,
        finished: true,
    })
}

/// The status a re-driven saga resumes in when its item does not say
/// ([`NewIntervention::parked_from`] is `None`): `compensating` if it had begun compensating (a
/// failed action or any compensation record), else `running`.
fn resume_status(snapshot: &SagaSnapshot) -> SagaStatus {
    let compensating = snapshot
        .steps
        .iter()
        .any(|step| step.phase == Phase::Compensation || step.status == StepStatus::Failed);
    if compensating {
        SagaStatus::Compensating
    } else {
        SagaStatus::Running
    }
}

/// The longest operator reason kept, in bytes (longer ones are cut with a marker).
pub const MAX_REASON_BYTES: usize = 2 * 1024;

/// The history text of a settlement: `retry by alice: reason` (who and why are bounded to
/// [`MAX_REASON_BYTES`] each).
pub fn settlement_detail(settlement: &Settlement) -> String {
    format!(
        "{} by {}: {}",
        settlement.action.as_str(),
        crate::step::bounded_text(&settlement.by, MAX_REASON_BYTES),
        crate::step::bounded_text(&settlement.reason, MAX_REASON_BYTES)
    )
}

/// The history text of a cancel request: `cancel requested by alice: reason` (bounded as
/// [`settlement_detail`]).
pub fn cancel_detail(by: &str, reason: &str) -> String {
    format!(
        "cancel requested by {}: {}",
        crate::step::bounded_text(by, MAX_REASON_BYTES),
        crate::step::bounded_text(reason, MAX_REASON_BYTES)
    )
}

/// The `operator_action` event with this detail.
fn operator_event(detail: String) -> EventData {
    EventData {
        kind: EventKind::OperatorAction,
        step: None,
        phase: None,
        attempt: None,
        detail: Some(detail),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    //! The plan against the meaning it compiles: changes applied one by one, in order, all or
    //! nothing, as every store applied them before plans existed.

    use super::*;
    use crate::id::{InterventionId, SagaId, SagaType, WorkerId};
    use crate::step::StepError;
    use crate::store::InterventionKind;

    /// Changes applied one at a time: the reference the plans must agree with.
    fn one_by_one(
        stored: &SagaSnapshot,
        lease: &Lease,
        changes: &[Change],
        now: Timestamp,
    ) -> Result<(SagaSnapshot, Vec<EventData>, Vec<NewIntervention>)> {
        let record = &stored.record;
        if record.fencing_token != lease.token || record.lease_owner.as_ref() != Some(&lease.owner)
        {
            return Err(Error::LeaseLost(lease.saga));
        }
        let forward = changes.iter().any(|change| {
            matches!(
                change,
                Change::BeginStep {
                    phase: Phase::Action,
                    ..
                } | Change::Wait { .. }
                    | Change::AwaitChild {
                        phase: Phase::Action,
                        ..
                    }
            )
        });
        if let (Some(reason), true) = (&record.cancel_requested, forward) {
            return Err(Error::CancelRequested {
                saga: lease.saga,
                reason: reason.clone(),
            });
        }
        if changes.iter().any(|change| {
            matches!(change, Change::NoSignalSince { signals_seen } if record.signals_received > *signals_seen)
        }) {
            return Err(Error::Refused {
                saga: lease.saga,
                refusal: Refusal::SignalArrived,
            });
        }
        let mut snap = stored.clone();
        let (mut events, mut items) = (Vec::new(), Vec::new());
        let saga = snap.record.id;
        let refused = |refusal| Error::Refused { saga, refusal };
        // The stored phase a completion or failure acts on, or the refusal.
        fn begun<'s>(
            snap: &'s mut SagaSnapshot,
            index: StepIndex,
            name: &StepName,
            phase: Phase,
        ) -> Result<&'s mut StepRecord> {
            let saga = snap.record.id;
            snap.steps
                .iter_mut()
                .find(|step| step.index == index && step.phase == phase)
                .ok_or_else(|| Error::Refused {
                    saga,
                    refusal: Refusal::StepNotBegun {
                        step: name.clone(),
                        phase,
                    },
                })
        }
        let (mut seen, mut released) = (None, false);
        for change in changes {
            match change {
                Change::BeginStep {
                    index,
                    name,
                    phase,
                    attempt,
                    key,
                } => match snap
                    .steps
                    .iter_mut()
                    .find(|step| step.index == *index && step.phase == *phase)
                {
                    Some(step) if step.status == StepStatus::Completed => {
                        return Err(refused(Refusal::StepCompleted {
                            step: name.clone(),
                            phase: *phase,
                        }))
                    }
                    Some(step) => {
                        step.status = StepStatus::InProgress;
                        step.attempt = *attempt;
                        step.next_attempt_at = None;
                        step.started_at = Some(now);
                        step.finished_at = None;
                    }
                    None => {
                        snap.steps.push(StepRecord {
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
                        snap.steps.sort_by_key(|step| (step.index, step.phase));
                    }
                },
                Change::CompleteStep {
                    index,
                    name,
                    phase,
                    output,
                    ..
                } => {
                    let step = begun(&mut snap, *index, name, *phase)?;
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
                    let status = change.step_status().unwrap();
                    let step = begun(&mut snap, *index, name, *phase)?;
                    step.status = status;
                    step.last_error = Some(error.to_string());
                    step.next_attempt_at = *retry_at;
                    step.finished_at = Some(now);
                }
                Change::Wait {
                    index,
                    name,
                    until,
                    waiting_for,
                    signals_seen,
                } => {
                    let step = begun(&mut snap, *index, name, Phase::Action)?;
                    step.status = StepStatus::InProgress;
                    step.next_attempt_at = *until;
                    step.finished_at = None;
                    snap.record.waiting_for = Some(waiting_for.clone());
                    seen = Some(*signals_seen);
                }
                Change::SetStatus { status, reason } => {
                    snap.record.status = *status;
                    snap.record.status_reason = reason.clone();
                    if *status != SagaStatus::Running {
                        snap.record.cancel_requested = None;
                    }
                }
                Change::Escalate(item) => {
                    snap.record.status = SagaStatus::NeedsIntervention;
                    snap.record.status_reason = Some(item.error.clone());
                    items.push(item.clone());
                }
                Change::Release { next_run_at } => {
                    snap.record.lease_owner = None;
                    snap.record.lease_expires_at = None;
                    snap.record.next_run_at = *next_run_at;
                    released = true;
                }
                Change::SkipStep {
                    index,
                    name,
                    attempt,
                    key,
                    reason,
                } => match snap
                    .steps
                    .iter_mut()
                    .find(|step| step.index == *index && step.phase == Phase::Action)
                {
                    Some(step) if step.status == StepStatus::Completed => {
                        return Err(refused(Refusal::StepCompleted {
                            step: name.clone(),
                            phase: Phase::Action,
                        }))
                    }
                    Some(step) => {
                        step.status = StepStatus::Skipped;
                        step.attempt = *attempt;
                        step.output = None;
                        step.last_error = Some(reason.clone());
                        step.next_attempt_at = None;
                        step.finished_at = Some(now);
                    }
                    None => {
                        snap.steps.push(StepRecord {
                            index: *index,
                            phase: Phase::Action,
                            name: name.clone(),
                            status: StepStatus::Skipped,
                            attempt: *attempt,
                            idempotency_key: key.clone(),
                            output: None,
                            last_error: Some(reason.clone()),
                            next_attempt_at: None,
                            started_at: None,
                            finished_at: Some(now),
                        });
                        snap.steps.sort_by_key(|step| (step.index, step.phase));
                    }
                },
                Change::Hold { waiting_for, .. } => {
                    snap.record.waiting_for = Some(waiting_for.clone());
                }
                // A condition, checked above.
                Change::NoSignalSince { .. } => {}
                // Writes to other sagas: nothing of this one.
                Change::StartChild(_) | Change::NotifyParent(_) => {}
                Change::AwaitChild {
                    name, signals_seen, ..
                } => {
                    snap.record.waiting_for = Some(crate::wait::waiting_for_child(name));
                    seen = Some(*signals_seen);
                }
            }
            if !matches!(
                change,
                Change::Wait { .. }
                    | Change::Hold { .. }
                    | Change::Release { .. }
                    | Change::NoSignalSince { .. }
                    | Change::StartChild(_)
                    | Change::AwaitChild { .. }
                    | Change::NotifyParent(_)
            ) {
                snap.record.waiting_for = None;
            }
            events.extend(change.event());
            snap.record.updated_at = now;
        }
        // A signal that arrived since the worker read the saga makes it due now.
        if released && seen.is_some_and(|seen| snap.record.signals_received > seen) {
            snap.record.next_run_at = Some(now);
        }
        Ok((snap, events, items))
    }

    /// The same through a compiled plan, as a store writes it.
    fn planned(
        stored: &SagaSnapshot,
        lease: &Lease,
        changes: &[Change],
        now: Timestamp,
    ) -> Result<(SagaSnapshot, Vec<EventData>, Vec<NewIntervention>)> {
        let compiled = WritePlan::compile(changes);
        let plan = admit(stored, lease, &compiled)?;
        let mut snap = stored.clone();
        snap.apply_plan(plan, now)?;
        Ok((snap, plan.events.clone(), plan.interventions.clone()))
    }

    /// A small deterministic generator (xorshift), so that a failure reproduces from its seed.
    struct Draw(u64);

    impl Draw {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
        fn flip(&mut self) -> bool {
            self.below(2) == 0
        }
        fn time(&mut self, base: Timestamp) -> Timestamp {
            base + chrono::Duration::milliseconds(i64::try_from(self.below(5_000)).unwrap())
        }
    }

    fn name(index: u64) -> StepName {
        StepName::new(format!("step_{index}"))
    }

    fn phase(draw: &mut Draw) -> Phase {
        if draw.flip() {
            Phase::Action
        } else {
            Phase::Compensation
        }
    }

    fn status(draw: &mut Draw) -> SagaStatus {
        [
            SagaStatus::Running,
            SagaStatus::Compensating,
            SagaStatus::NeedsIntervention,
            SagaStatus::Completed,
        ][usize::try_from(draw.below(4)).unwrap()]
    }

    fn stored(draw: &mut Draw, owner: &WorkerId, now: Timestamp) -> SagaSnapshot {
        let id = SagaId::new();
        let mut steps = Vec::new();
        for index in 0..3u32 {
            for phase in [Phase::Action, Phase::Compensation] {
                if draw.below(3) == 0 {
                    continue;
                }
                let step = name(u64::from(index));
                steps.push(StepRecord {
                    index: StepIndex(index),
                    phase,
                    name: step.clone(),
                    status: [
                        StepStatus::Pending,
                        StepStatus::InProgress,
                        StepStatus::Completed,
                        StepStatus::Failed,
                    ][usize::try_from(draw.below(4)).unwrap()],
                    attempt: Attempt(u32::try_from(draw.below(3)).unwrap() + 1),
                    idempotency_key: IdempotencyKey::for_step(id, &step, phase),
                    output: draw.flip().then(|| serde_json::json!({ "stored": index })),
                    last_error: draw.flip().then(|| "earlier".to_owned()),
                    next_attempt_at: draw.flip().then(|| draw.time(now)),
                    started_at: Some(now),
                    finished_at: draw.flip().then_some(now),
                });
            }
        }
        SagaSnapshot {
            record: SagaRecord {
                id,
                saga_type: SagaType::new("order"),
                version: 1,
                fingerprint: "f".into(),
                status: status(draw),
                status_reason: draw.flip().then(|| "why".to_owned()),
                input: serde_json::json!({}),
                input_hash: "h".into(),
                idempotency_key: None,
                next_run_at: draw.flip().then_some(now),
                lease_owner: (draw.below(4) != 0).then(|| owner.clone()),
                lease_expires_at: Some(now),
                fencing_token: FencingToken(i64::try_from(draw.below(2)).unwrap() + 1),
                trace_context: None,
                cancel_requested: (draw.below(3) == 0).then(|| "cancel requested by x: y".into()),
                created_at: now,
                updated_at: now,
                waiting_for: draw.flip().then(|| "signal:paid".to_owned()),
                deadline: None,
                signals_received: draw.below(3),
                parent: None,
            },
            steps,
            signals: Vec::new(),
        }
    }

    fn change(draw: &mut Draw, saga: SagaId, now: Timestamp) -> Change {
        let index = draw.below(3);
        let (step, phase) = (name(index), phase(draw));
        let index = StepIndex(u32::try_from(index).unwrap());
        let attempt = Attempt(u32::try_from(draw.below(4)).unwrap() + 1);
        match draw.below(10) {
            0..=2 => Change::BeginStep {
                index,
                key: IdempotencyKey::for_step(saga, &step, phase),
                name: step,
                phase,
                attempt,
            },
            3 | 4 => Change::CompleteStep {
                index,
                name: step,
                phase,
                attempt,
                output: draw.flip().then(|| serde_json::json!({ "out": attempt.0 })),
            },
            5 | 6 => Change::FailStep {
                index,
                name: step,
                phase,
                attempt,
                error: match draw.below(3) {
                    0 => StepError::transient("busy"),
                    1 => StepError::permanent("declined"),
                    _ => StepError::unknown("timed out"),
                },
                retry_at: draw.flip().then(|| draw.time(now)),
            },
            7 => match draw.below(3) {
                0 => Change::SetStatus {
                    status: status(draw),
                    reason: draw.flip().then(|| "because".to_owned()),
                },
                1 => Change::Escalate(NewIntervention {
                    id: InterventionId::new(),
                    kind: InterventionKind::CompensationFailed,
                    step: Some((index, step)),
                    phase: Some(phase),
                    idempotency_key: None,
                    input: None,
                    output: None,
                    error: "stuck".into(),
                    parked_from: Some(SagaStatus::Compensating),
                }),
                _ => Change::SetStatus {
                    status: SagaStatus::Running,
                    reason: None,
                },
            },
            8 => match draw.below(3) {
                0 => Change::SkipStep {
                    index,
                    key: IdempotencyKey::for_step(saga, &step, Phase::Action),
                    name: step,
                    attempt,
                    reason: "cap `email`: 1 per 1d reached".into(),
                },
                1 => Change::Hold {
                    waiting_for: "policy:rate_limit:partner".into(),
                    step: Some(step),
                    reason: draw.flip().then(|| "over the limit".to_owned()),
                },
                _ => Change::Wait {
                    index,
                    name: step,
                    until: draw.flip().then(|| draw.time(now)),
                    waiting_for: "signal:paid".into(),
                    signals_seen: draw.below(3),
                },
            },
            9 if draw.flip() => Change::AwaitChild {
                index,
                name: step,
                phase,
                child: SagaId::new(),
                child_status: status(draw),
                signals_seen: draw.below(3),
            },
            _ => Change::Release {
                next_run_at: draw.flip().then(|| draw.time(now)),
            },
        }
    }

    #[test]
    fn a_compiled_plan_writes_what_the_changes_write_one_by_one_refusals_included() {
        let owner = WorkerId::new("worker-a");
        let now = crate::clock::now();
        let (mut written, mut refused) = (0, 0);
        for seed in 1..=20_000u64 {
            let mut draw = Draw(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
            let stored = stored(&mut draw, &owner, now);
            let lease = Lease {
                saga: stored.record.id,
                owner: owner.clone(),
                token: FencingToken(i64::try_from(draw.below(2)).unwrap() + 1),
                expires_at: now,
                taken_over_from: None,
            };
            let mut changes: Vec<Change> = (0..=draw.below(6))
                .map(|_| change(&mut draw, stored.record.id, now))
                .collect();
            if draw.below(5) == 0 {
                changes.insert(
                    0,
                    Change::NoSignalSince {
                        signals_seen: draw.below(3),
                    },
                );
            }
            let expected = one_by_one(&stored, &lease, &changes, now);
            let actual = planned(&stored, &lease, &changes, now);
            match (&expected, &actual) {
                (Ok(expected), Ok(actual)) => {
                    assert_eq!(expected, actual, "seed {seed}: {changes:#?}");
                    written += 1;
                }
                (Err(expected), Err(actual)) => {
                    assert_eq!(
                        format!("{expected:?}"),
                        format!("{actual:?}"),
                        "seed {seed}: {changes:#?}"
                    );
                    refused += 1;
                }
                _ => {
                    panic!("seed {seed}: one by one {expected:?}, planned {actual:?}: {changes:#?}")
                }
            }
        }
        // Both outcomes are exercised in numbers, so that agreement means something.
        assert!(
            written > 2_000 && refused > 2_000,
            "{written} written, {refused} refused"
        );
    }

    #[test]
    fn repeated_touches_of_one_phase_fold_into_one_write() {
        let saga = SagaId::new();
        let step = name(0);
        let key = IdempotencyKey::for_step(saga, &step, Phase::Action);
        let retry_now = crate::clock::now();
        let plan = WritePlan::compile(&[
            Change::FailStep {
                index: StepIndex(0),
                name: step.clone(),
                phase: Phase::Action,
                attempt: Attempt(1),
                error: StepError::transient("busy"),
                retry_at: Some(retry_now),
            },
            Change::BeginStep {
                index: StepIndex(0),
                name: step.clone(),
                phase: Phase::Action,
                attempt: Attempt(2),
                key,
            },
        ])
        .unwrap();
        assert_eq!(plan.steps.len(), 1, "{plan:#?}");
        let write = &plan.steps[0];
        assert_eq!(
            write.requires,
            Precondition::Begun,
            "the first touch decides"
        );
        assert_eq!(
            (write.status, write.attempt, write.began, write.finished),
            (StepStatus::InProgress, Some(Attempt(2)), true, false)
        );
        assert_eq!(
            write.error.as_deref(),
            Some("transient: busy"),
            "the failure's error is kept"
        );
        assert_eq!(write.next_attempt_at, None, "the retry began");
        assert_eq!(plan.events.len(), 2, "one event per change");
    }

    #[test]
    fn a_creation_begins_each_step_phase_once_and_nothing_else() {
        let id = SagaId::new();
        let step = name(0);
        let begin = Change::BeginStep {
            index: StepIndex(0),
            name: step.clone(),
            phase: Phase::Action,
            attempt: Attempt(1),
            key: IdempotencyKey::for_step(id, &step, Phase::Action),
        };
        let saga = |changes: Vec<Change>| NewSaga {
            dedup_window: None,
            parent: None,
            id,
            saga_type: SagaType::new("order"),
            version: 1,
            fingerprint: "f".into(),
            input: serde_json::json!({}),
            input_hash: "h".into(),
            idempotency_key: None,
            trace_context: None,
            lease: Some((WorkerId::new("w"), crate::clock::now())),
            changes,
            deadline: None,
        };
        let plan = CreationPlan::compile(&saga(vec![begin.clone()])).unwrap();
        assert_eq!(
            (plan.token, plan.steps.len(), plan.events.len()),
            (FencingToken(1), 1, 2)
        );
        let twice = CreationPlan::compile(&saga(vec![begin.clone(), begin.clone()]));
        assert!(
            matches!(&twice, Err(Error::InvalidAction(text)) if text.contains("begun twice")),
            "{twice:?}"
        );
        let released =
            CreationPlan::compile(&saga(vec![begin, Change::Release { next_run_at: None }]));
        assert!(
            matches!(&released, Err(Error::InvalidAction(text)) if text.contains("only BeginStep")),
            "{released:?}"
        );
    }

    #[test]
    fn a_batch_that_begins_a_phase_it_completed_contradicts_itself() {
        let saga = SagaId::new();
        let step = name(1);
        let begin = |attempt| Change::BeginStep {
            index: StepIndex(1),
            name: step.clone(),
            phase: Phase::Action,
            attempt: Attempt(attempt),
            key: IdempotencyKey::for_step(saga, &step, Phase::Action),
        };
        let compiled = WritePlan::compile(&[
            begin(1),
            Change::CompleteStep {
                index: StepIndex(1),
                name: step.clone(),
                phase: Phase::Action,
                attempt: Attempt(1),
                output: None,
            },
            begin(2),
        ]);
        let contradiction = compiled.expect_err("refused whatever is stored");
        assert_eq!(
            contradiction.refusal,
            Refusal::StepCompleted {
                step: step.clone(),
                phase: Phase::Action
            }
        );
        assert_eq!(contradiction.before.steps.len(), 1);
    }
}
