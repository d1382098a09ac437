//! The saga protocol, model-checked: every interleaving of two workers, crashes, lease expiry,
//! zombies, step outcomes, probes and operators on one saga, explored exhaustively up to a bound,
//! not only the interleavings a test happens to hit.
//!
//! What is checked is what runs: each worker plans with the real planner (`plan::next_action`,
//! `plan::on_outcome`, `plan::on_probe`), every store write goes through the real write plans
//! (`WritePlan::compile`, `write::admit`, `SagaSnapshot::apply_plan`), and operators decide with
//! the real `decide_cancel` and `decide_settle`. The model only supplies what the real system
//! leaves to the world: which worker moves next, whether a step took effect and what it
//! answered, when a worker crashes, when time passes, and what operators do. The worker's own
//! glue (queue changes, write them before a step or probe runs, honour a cancel request) follows
//! `worker.rs`.
//!
//! States are kept compact (statuses, attempts, error kinds, times in whole seconds), so that two
//! states that differ only in texts or random ids are one state; the real records are rebuilt
//! from them for every decision.
//!
//! Properties, in every reachable state:
//! - a step phase recorded completed is never begun again, and nothing recorded completed
//!   lacks its effect;
//! - no two workers hold the current fencing token (only its holder's writes succeed);
//! - a saga that ends compensated leaves no action's effect without its compensation, unless
//!   the step is irreversible or an intervention item names it; a saga ends cancelled only by a
//!   person's decision (an item settled with `cancel`: stop it where it is);
//! - once an operator's cancel is accepted, no action that had not begun begins;
//! - at most one intervention item is open, and a saga waiting for a person has one;
//! - a worker's own write is never refused for its content (its view of the saga is right).
//!
//! And one of progress: from every reachable state, the saga can still end (completed,
//! compensated, cancelled) or reach a person, by the workers' moves alone (no further crash or
//! operator action).
//!
//! A waiting variant makes the last step wait for a signal (`Step::signal`, three ticks at most)
//! that the world may deliver at any moment, twice with one key; the workers then also use the
//! real `plan::wait` and the stores' `decide_signal`. Its own properties:
//! - the waiting step is recorded completed only with its signal stored;
//! - a saga given back while it waits for a signal that is stored is due at once (a signal that
//!   raced the start of the wait is never left waiting);
//! - a signal stored while the saga could still use it never sees its waiting step fail, unless
//!   an operator's cancel stops the saga.
//!
//! The model has one clock: a worker whose clock runs ahead (and so ends a wait a moment early,
//! with a copy read before a signal came) is not modelled; `Change::NoSignalSince` covers that
//! case and the store conformance suite checks it.
//!
//! `cargo test -p saga-core --test model` checks the small size (two steps, two workers, one
//! crash, one cancel, one settlement, time jumping ahead three times: about 230,000 states, 20 s
//! in a debug build), and the waiting variant (the same bounds and two deliveries: about 315,000
//! states); `SAGA_MODEL=large` lets time jump four times in the first (about 1,000,000 states, two
//! minutes). `SAGA_MODEL_CAP` bounds the states explored (default 4,000,000).

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use saga_core::plan::{self, Action, Attempted, Probing};
use saga_core::store::write::{admit, decide_cancel, decide_settle, WritePlan};
use saga_core::{
    Attempt, Change, Error, FailureKind, FencingToken, IdempotencyKey, Intervention,
    InterventionId, InterventionKind, InterventionStatus, Lease, NewIntervention, Phase,
    RetryPolicy, Saga, SagaDefinition, SagaId, SagaRecord, SagaSnapshot, SagaStatus, SagaType,
    SettleAction, Settlement, Signal, Step, StepContext, StepError, StepIndex, StepRecord,
    StepSpec, StepStatus, Timestamp, WorkerId,
};

// ----------------------------------------------------------------------------- the saga

/// The saga checked: `steps` steps; the first is compensable and has a probe, the last is
/// irreversible, any in between are compensable without a probe. Two attempts per phase.
struct Modelled;

async fn act(_: Arc<Modelled>, _: StepContext<u32>) -> Result<u32, StepError> {
    Ok(1)
}

async fn undo(_: Arc<Modelled>, _: StepContext<u32>, _: u32) -> Result<(), StepError> {
    Ok(())
}

async fn look(_: Arc<Modelled>, _: StepContext<u32>) -> Result<Option<u32>, StepError> {
    Ok(None)
}

impl Saga for Modelled {
    type Input = u32;
    fn definition() -> SagaDefinition<Self> {
        unreachable!("the model builds its definitions with `definition(steps)`")
    }
}

/// The signal the waiting variant's last step waits for.
#[derive(serde::Serialize, serde::Deserialize)]
struct Paid(u32);

impl Signal for Paid {
    const NAME: &'static str = "paid";
}

/// How long the waiting step waits for its signal, in ticks.
const WAIT: Tick = 3;

/// As [`definition`], the last step waiting for the signal `paid` (for [`WAIT`] ticks) instead
/// of calling an action.
fn waiting_definition(steps: usize) -> Vec<StepSpec> {
    let mut specs = definition(steps - 1);
    let wait = SagaDefinition::<Modelled>::new("modelled", 1).step(
        Step::signal::<Paid>(&format!("s{}", steps - 1)).timeout(Duration::from_secs(WAIT as u64)),
    );
    specs.extend(wait.specs());
    specs
}

fn definition(steps: usize) -> Vec<StepSpec> {
    let policy = RetryPolicy::exponential(2, Duration::from_secs(1));
    let mut definition = SagaDefinition::<Modelled>::new("modelled", 1);
    for n in 0..steps {
        let step = Step::new(&format!("s{n}"), act)
            .retry(policy)
            .timeout(Duration::from_secs(TIMEOUT as u64));
        definition = definition.step(if n == 0 {
            step.compensate(undo).probe(look).compensation_retry(policy)
        } else if n + 1 == steps {
            step.irreversible()
        } else {
            step.compensate(undo).compensation_retry(policy)
        });
    }
    definition.specs()
}

// ----------------------------------------------------------------------------- time

/// Time in whole seconds since the model's epoch.
type Tick = i64;

fn epoch() -> Timestamp {
    chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap()
}

fn at(tick: Tick) -> Timestamp {
    epoch() + chrono::Duration::seconds(tick)
}

/// A time as a tick, rounded up (retry delays are whole seconds here anyway).
fn tick(time: Timestamp) -> Tick {
    let millis = (time - epoch()).num_milliseconds();
    millis.div_euclid(1000) + i64::from(millis.rem_euclid(1000) != 0)
}

/// How long a lease lasts, in ticks.
const LEASE: Tick = 2;

/// How long a step attempt may run, in ticks: its deadline, passed downstream, after which it
/// can no longer take effect.
const TIMEOUT: Tick = 2;

// ----------------------------------------------------------------------------- compact state

/// The kind of a recorded error: all the planner reads of its text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum ErrorKind {
    Unknown,
    Transient,
    Permanent,
    Other,
}

impl ErrorKind {
    fn of_text(text: &str) -> Self {
        if text.starts_with("unknown") {
            ErrorKind::Unknown
        } else if text.starts_with("transient") {
            ErrorKind::Transient
        } else if text.starts_with("permanent") {
            ErrorKind::Permanent
        } else {
            ErrorKind::Other
        }
    }

    fn of(error: &StepError) -> Self {
        match error.kind() {
            FailureKind::Unknown => ErrorKind::Unknown,
            FailureKind::Transient => ErrorKind::Transient,
            FailureKind::Permanent => ErrorKind::Permanent,
        }
    }

    fn text(self) -> String {
        match self {
            ErrorKind::Unknown => StepError::unknown("x").to_string(),
            ErrorKind::Transient => StepError::transient("x").to_string(),
            ErrorKind::Permanent => StepError::permanent("x").to_string(),
            ErrorKind::Other => "not applied, as settled by an operator".to_owned(),
        }
    }

    fn error(self) -> StepError {
        match self {
            ErrorKind::Unknown => StepError::unknown("x"),
            ErrorKind::Transient => StepError::transient("x"),
            ErrorKind::Permanent | ErrorKind::Other => StepError::permanent("x"),
        }
    }
}

/// One stored step phase.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PhaseRec {
    status: StepStatus,
    attempt: u32,
    error: Option<ErrorKind>,
    next_at: Option<Tick>,
    started: Option<Tick>,
    /// Whether its latest attempt ended, and if so whether before its deadline (all the
    /// planner asks of the end time).
    finished_early: Option<bool>,
    output: bool,
}

/// One saga as stored (or as a worker sees it).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Stored {
    status: SagaStatus,
    cancel: bool,
    owner: Option<u8>,
    token: i64,
    expires: Option<Tick>,
    next_run: Option<Tick>,
    /// Per step: action, compensation.
    steps: Vec<[Option<PhaseRec>; 2]>,
    /// Whether it records that it waits for the signal.
    waiting: bool,
    /// How many signals it received (0 or 1).
    signals: u8,
    /// Whether the signal is stored with it.
    signal: bool,
}

fn slot(phase: Phase) -> usize {
    match phase {
        Phase::Action => 0,
        Phase::Compensation => 1,
    }
}

fn saga_id() -> SagaId {
    "01890000-0000-7000-8000-000000000001".parse().unwrap()
}

fn worker_id(worker: u8) -> WorkerId {
    WorkerId::new(format!("w{worker}"))
}

impl Stored {
    fn new(steps: usize) -> Self {
        Stored {
            status: SagaStatus::Running,
            cancel: false,
            owner: None,
            token: 0,
            expires: None,
            next_run: Some(0),
            steps: vec![[None, None]; steps],
            waiting: false,
            signals: 0,
            signal: false,
        }
    }

    /// The real record.
    fn snapshot(&self, specs: &[StepSpec]) -> SagaSnapshot {
        let id = saga_id();
        let mut steps = Vec::new();
        for (n, pair) in self.steps.iter().enumerate() {
            for phase in [Phase::Action, Phase::Compensation] {
                let Some(rec) = &pair[slot(phase)] else {
                    continue;
                };
                let name = specs[n].name.clone();
                steps.push(StepRecord {
                    index: StepIndex(u32::try_from(n).unwrap()),
                    phase,
                    idempotency_key: IdempotencyKey::for_step(id, &name, phase),
                    name,
                    status: rec.status,
                    attempt: Attempt(rec.attempt),
                    output: rec.output.then(|| serde_json::json!(1)),
                    last_error: rec.error.map(ErrorKind::text),
                    next_attempt_at: rec.next_at.map(at),
                    started_at: rec.started.map(at),
                    finished_at: rec.finished_early.map(|early| {
                        let started = rec.started.unwrap_or(0);
                        at(if early { started } else { started + TIMEOUT })
                    }),
                });
            }
        }
        SagaSnapshot {
            record: SagaRecord {
                id,
                saga_type: SagaType::new("modelled"),
                version: 1,
                fingerprint: "f".into(),
                status: self.status,
                status_reason: None,
                input: serde_json::json!(7),
                input_hash: "h".into(),
                idempotency_key: None,
                next_run_at: self.next_run.map(at),
                lease_owner: self.owner.map(worker_id),
                lease_expires_at: self.expires.map(at),
                fencing_token: FencingToken(self.token),
                trace_context: None,
                cancel_requested: self.cancel.then(|| "cancel requested by op: model".into()),
                created_at: epoch(),
                updated_at: epoch(),
                waiting_for: self
                    .waiting
                    .then(|| saga_core::wait::waiting_for_signal(Paid::NAME)),
                signals_received: u64::from(self.signals),
                deadline: None,
                parent: None,
            },
            steps,
            signals: if self.signal {
                vec![saga_core::SignalRecord {
                    name: Paid::NAME.into(),
                    key: saga_core::SignalKey::new("evt"),
                    payload: serde_json::json!(1),
                    received_at: epoch(),
                }]
            } else {
                Vec::new()
            },
        }
    }

    /// Back from the real record.
    fn of(snapshot: &SagaSnapshot, steps: usize) -> Self {
        let record = &snapshot.record;
        let mut saga = Stored {
            status: record.status,
            cancel: record.cancel_requested.is_some(),
            owner: record
                .lease_owner
                .as_ref()
                .map(|owner| owner.as_str()[1..].parse().unwrap()),
            token: record.fencing_token.0,
            expires: record.lease_expires_at.map(tick),
            next_run: record.next_run_at.map(tick),
            steps: vec![[None, None]; steps],
            waiting: record.waiting_for.is_some(),
            signals: u8::try_from(record.signals_received).unwrap(),
            signal: snapshot.signal(Paid::NAME).is_some(),
        };
        for step in &snapshot.steps {
            saga.steps[step.index.0 as usize][slot(step.phase)] = Some(PhaseRec {
                status: step.status,
                attempt: step.attempt.0,
                error: step.last_error.as_deref().map(ErrorKind::of_text),
                next_at: step.next_attempt_at.map(tick),
                started: step.started_at.map(tick),
                finished_early: step.finished_at.map(|finished| {
                    let started = step.started_at.map_or(0, tick);
                    tick(finished) < started + TIMEOUT
                }),
                output: step.output.is_some(),
            });
        }
        saga
    }
}

/// A change a worker queued, compact.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Queued {
    Begin(u32, Phase, u32),
    Complete(u32, Phase, u32, bool),
    Fail(u32, Phase, u32, ErrorKind, Option<Tick>),
    Status(SagaStatus),
    Escalate(
        InterventionKind,
        Option<u32>,
        Option<Phase>,
        Option<SagaStatus>,
    ),
    Release(Option<Tick>),
    Wait(u32, Option<Tick>, u8),
    NoSignalSince(u8),
    /// A step skipped by a policy (the sagas modelled here declare none, so never queued).
    Skip(u32, u32),
    /// A saga held back before a step (a pause, a limit: not modelled, never queued).
    Hold,
    /// A child saga started, awaited or woken (not modelled, never queued: the model's sagas
    /// have no child step).
    Family,
}

impl Queued {
    fn of(change: &Change) -> Self {
        match change {
            Change::BeginStep {
                index,
                phase,
                attempt,
                ..
            } => Queued::Begin(index.0, *phase, attempt.0),
            Change::CompleteStep {
                index,
                phase,
                attempt,
                output,
                ..
            } => Queued::Complete(index.0, *phase, attempt.0, output.is_some()),
            Change::FailStep {
                index,
                phase,
                attempt,
                error,
                retry_at,
                ..
            } => Queued::Fail(
                index.0,
                *phase,
                attempt.0,
                ErrorKind::of(error),
                retry_at.map(tick),
            ),
            Change::SetStatus { status, .. } => Queued::Status(*status),
            Change::Escalate(item) => Queued::Escalate(
                item.kind,
                item.step.as_ref().map(|(index, _)| index.0),
                item.phase,
                item.parked_from,
            ),
            Change::Release { next_run_at } => Queued::Release(next_run_at.map(tick)),
            Change::Wait {
                index,
                until,
                signals_seen,
                ..
            } => Queued::Wait(
                index.0,
                until.map(tick),
                u8::try_from(*signals_seen).unwrap_or(u8::MAX),
            ),
            Change::NoSignalSince { signals_seen } => {
                Queued::NoSignalSince(u8::try_from(*signals_seen).unwrap_or(u8::MAX))
            }
            Change::SkipStep { index, attempt, .. } => Queued::Skip(index.0, attempt.0),
            Change::Hold { .. } => Queued::Hold,
            Change::StartChild(_) | Change::AwaitChild { .. } | Change::NotifyParent(_) => {
                Queued::Family
            }
        }
    }

    fn change(&self, specs: &[StepSpec]) -> Change {
        let name = |index: u32| specs[index as usize].name.clone();
        match *self {
            Queued::Begin(index, phase, attempt) => Change::BeginStep {
                index: StepIndex(index),
                name: name(index),
                phase,
                attempt: Attempt(attempt),
                key: IdempotencyKey::for_step(saga_id(), &name(index), phase),
            },
            Queued::Complete(index, phase, attempt, output) => Change::CompleteStep {
                index: StepIndex(index),
                name: name(index),
                phase,
                attempt: Attempt(attempt),
                output: output.then(|| serde_json::json!(1)),
            },
            Queued::Fail(index, phase, attempt, kind, retry) => Change::FailStep {
                index: StepIndex(index),
                name: name(index),
                phase,
                attempt: Attempt(attempt),
                error: kind.error(),
                retry_at: retry.map(at),
            },
            Queued::Status(status) => Change::SetStatus {
                status,
                reason: None,
            },
            Queued::Escalate(kind, step, phase, parked_from) => Change::Escalate(NewIntervention {
                id: InterventionId::new(),
                kind,
                step: step.map(|index| (StepIndex(index), name(index))),
                phase,
                idempotency_key: None,
                input: None,
                output: None,
                error: "x".into(),
                parked_from,
            }),
            Queued::Release(next) => Change::Release {
                next_run_at: next.map(at),
            },
            Queued::Wait(index, until, seen) => Change::Wait {
                index: StepIndex(index),
                name: name(index),
                until: until.map(at),
                waiting_for: saga_core::wait::waiting_for_signal(Paid::NAME),
                signals_seen: u64::from(seen),
            },
            Queued::NoSignalSince(seen) => Change::NoSignalSince {
                signals_seen: u64::from(seen),
            },
            Queued::Skip(index, attempt) => Change::SkipStep {
                index: StepIndex(index),
                name: name(index),
                attempt: Attempt(attempt),
                key: IdempotencyKey::for_step(saga_id(), &name(index), Phase::Action),
                reason: "cap".into(),
            },
            Queued::Hold => Change::Hold {
                waiting_for: "paused:model".into(),
                step: None,
                reason: None,
            },
            Queued::Family => Change::NotifyParent(saga_core::ParentLink {
                saga: saga_id(),
                step: saga_core::StepName::new("model"),
            }),
        }
    }
}

/// An intervention item.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Item {
    kind: InterventionKind,
    step: Option<u32>,
    phase: Option<Phase>,
    parked_from: Option<SagaStatus>,
    open: bool,
}

impl Item {
    fn intervention(&self, specs: &[StepSpec]) -> Intervention {
        Intervention {
            saga_id: saga_id(),
            item: NewIntervention {
                id: InterventionId::new(),
                kind: self.kind,
                step: self
                    .step
                    .map(|index| (StepIndex(index), specs[index as usize].name.clone())),
                phase: self.phase,
                idempotency_key: None,
                input: None,
                output: None,
                error: "x".into(),
                parked_from: self.parked_from,
            },
            status: if self.open {
                InterventionStatus::Open
            } else {
                InterventionStatus::Resolved
            },
            opened_at: epoch(),
            resolved_at: None,
            resolved_by: None,
            resolution: None,
            resolution_reason: None,
        }
    }
}

/// What one worker is doing.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Worker {
    Idle,
    /// Holds the lease (as far as it knows, until `expires`), plans from its copy of the saga,
    /// with changes queued for its next write.
    Holding {
        token: i64,
        expires: Tick,
        local: Stored,
        queued: Vec<Queued>,
    },
    /// Runs an attempt whose begin is written; `applied`: its effect happened. Downstream
    /// takes its effect only until `deadline`; the worker may answer later (or never).
    Running {
        token: i64,
        expires: Tick,
        local: Stored,
        index: u32,
        phase: Phase,
        attempt: u32,
        applied: bool,
        deadline: Tick,
    },
}

/// Everything the model tracks.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct State {
    /// Always 0 between moves: every time is kept relative to now (see `normalize`).
    now: Tick,
    /// How many more times time may jump ahead.
    time_left: u8,
    store: Stored,
    items: Vec<Item>,
    /// Per step: whether its action, and its compensation, took effect downstream (by key).
    effects: Vec<[bool; 2]>,
    workers: Vec<Worker>,
    crashes_left: u8,
    cancels_left: u8,
    settles_left: u8,
    /// The actions that had begun when an operator's cancel was accepted.
    begun_at_cancel: Option<Vec<bool>>,
    /// The phases ever recorded completed.
    completed_ever: Vec<[bool; 2]>,
    /// How many more times the signal may be delivered.
    signals_left: u8,
    /// Whether the signal was stored while the saga could still use it (its wait had not
    /// ended): the waiting step must then not fail, unless an operator's cancel stops the saga.
    signal_in_time: bool,
}

/// The bounds of one check.
#[derive(Debug, Clone, Copy)]
struct Size {
    steps: usize,
    workers: usize,
    crashes: u8,
    cancels: u8,
    settles: u8,
    /// How many times time may jump ahead.
    time_jumps: u8,
    /// Whether the last step waits for a signal (delivered at most `signals` times).
    wait: bool,
    signals: u8,
}

impl Size {
    fn small() -> Self {
        Size {
            steps: 2,
            workers: 2,
            crashes: 1,
            cancels: 1,
            settles: 1,
            time_jumps: 3,
            wait: false,
            signals: 0,
        }
    }

    /// The waiting variant: the last step waits for a signal, delivered twice at most (the
    /// second with the same key: a duplicate).
    fn waiting() -> Self {
        Size {
            wait: true,
            signals: 2,
            ..Size::small()
        }
    }

    fn large() -> Self {
        Size {
            time_jumps: 4,
            ..Size::small()
        }
    }
}

/// How the planner is asked: the real one, or (to show the checker catches it) one that, while
/// compensating, ignores an action whose outcome is unknown, as the planner did before unknown
/// outcomes were settled first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Planner {
    Real,
    SkipsBegunActionsWhileCompensating,
    /// Waits and ends waits with no thought of signals that came since the saga was read (no
    /// wake-up on release, no `NoSignalSince`), as a first cut of waiting might.
    IgnoresSignalsThatCameMeanwhile,
}

struct Model {
    specs: Vec<StepSpec>,
    size: Size,
    planner: Planner,
}

/// A transition: its label, whether it is a worker's own move (the progress property uses only
/// those), and the state after it; or a broken property.
type Next = Result<(String, bool, State), String>;

impl Model {
    fn initial(&self) -> State {
        State {
            now: 0,
            time_left: self.size.time_jumps,
            store: Stored::new(self.size.steps),
            items: Vec::new(),
            effects: vec![[false; 2]; self.size.steps],
            workers: vec![Worker::Idle; self.size.workers],
            crashes_left: self.size.crashes,
            cancels_left: self.size.cancels,
            settles_left: self.size.settles,
            begun_at_cancel: None,
            completed_ever: vec![[false; 2]; self.size.steps],
            signals_left: self.size.signals,
            signal_in_time: false,
        }
    }

    /// What the worker records, as the planner (or its mutant) wrote it.
    fn planned(&self, changes: Vec<Change>) -> Vec<Change> {
        if self.planner != Planner::IgnoresSignalsThatCameMeanwhile {
            return changes;
        }
        changes
            .into_iter()
            .filter(|change| !matches!(change, Change::NoSignalSince { .. }))
            .map(|change| match change {
                Change::Wait {
                    index,
                    name,
                    until,
                    waiting_for,
                    ..
                } => Change::Wait {
                    index,
                    name,
                    until,
                    waiting_for,
                    signals_seen: u64::from(u8::MAX),
                },
                other => other,
            })
            .collect()
    }

    fn next_action(&self, local: &Stored, now: Tick) -> Action {
        let mut snapshot = local.snapshot(&self.specs);
        if self.planner == Planner::SkipsBegunActionsWhileCompensating
            && snapshot.record.status == SagaStatus::Compensating
        {
            snapshot.steps.retain(|step| {
                !(step.phase == Phase::Action && step.status == StepStatus::InProgress)
            });
        }
        plan::next_action(&snapshot, &self.specs, at(now))
    }

    /// A fenced write of `changes` by `worker` under `token`, through the real write plans.
    fn write(
        &self,
        state: &mut State,
        worker: u8,
        token: i64,
        changes: &[Change],
    ) -> Result<Result<(), Error>, String> {
        let stored = state.store.snapshot(&self.specs);
        let lease = Lease {
            saga: saga_id(),
            owner: worker_id(worker),
            token: FencingToken(token),
            expires_at: at(state.now),
            taken_over_from: None,
        };
        let compiled = WritePlan::compile(changes);
        let plan = match admit(&stored, &lease, &compiled) {
            Ok(plan) => plan,
            // Expected: the worker read the saga before a signal came.
            Err(
                err @ Error::Refused {
                    refusal: saga_core::Refusal::SignalArrived,
                    ..
                },
            ) => return Ok(Err(err)),
            Err(err @ Error::Refused { .. }) => {
                return Err(format!(
                "worker w{worker}'s own write was refused ({err}): its view of the saga was wrong"
            ))
            }
            Err(err) => return Ok(Err(err)),
        };
        let mut next = stored.clone();
        next.apply_plan(plan, at(state.now))
            .map_err(|err| format!("an admitted plan failed to apply: {err}"))?;
        if let Some(begun) = &state.begun_at_cancel {
            for change in changes {
                if let Change::BeginStep {
                    index,
                    phase: Phase::Action,
                    ..
                } = change
                {
                    if !begun[index.0 as usize] {
                        return Err(format!(
                            "action of step {index} began after an operator's cancel was accepted"
                        ));
                    }
                }
            }
        }
        for item in &plan.interventions {
            state.items.push(Item {
                kind: item.kind,
                step: item.step.as_ref().map(|(index, _)| index.0),
                phase: item.phase,
                parked_from: item.parked_from,
                open: true,
            });
        }
        state.store = Stored::of(&next, self.size.steps);
        Ok(Ok(()))
    }

    /// Every transition from `state`.
    fn next(&self, state: &State) -> Vec<Next> {
        let mut out = Vec::new();
        for worker in 0..state.workers.len() {
            self.worker_moves(state, worker, &mut out);
        }
        if let Some(next) = self.next_moment(state).filter(|_| state.time_left > 0) {
            let mut later = state.clone();
            later.now = next;
            later.time_left -= 1;
            out.push(Ok((format!("time passes by {next}"), true, later)));
        }
        if state.cancels_left > 0 {
            let stored = state.store.snapshot(&self.specs);
            if let Ok((outcome, plan)) = decide_cancel(&stored, "op", "model", at(state.now)) {
                let mut after = state.clone();
                after.cancels_left -= 1;
                if let Some(plan) = plan {
                    let mut next = stored.clone();
                    match next.apply_plan(&plan, at(state.now)) {
                        Ok(()) => after.store = Stored::of(&next, self.size.steps),
                        Err(err) => out.push(Err(format!("a decided cancel failed: {err}"))),
                    }
                    let begun = (0..self.size.steps)
                        .map(|n| state.store.steps[n][0].is_some())
                        .collect();
                    after.begun_at_cancel = Some(begun);
                }
                out.push(Ok((format!("operator cancels: {outcome:?}"), false, after)));
            }
        }
        if state.signals_left > 0 {
            let stored = state.store.snapshot(&self.specs);
            let delivery = saga_core::wait::SignalDelivery {
                saga: saga_id(),
                name: Paid::NAME.into(),
                key: saga_core::SignalKey::new("evt"),
                payload: serde_json::json!(1),
            };
            if let Ok(Some(write)) = saga_core::store::write::decide_signal(&stored, &delivery) {
                let mut next = stored.clone();
                write.apply_to(&mut next, &delivery, at(state.now));
                let mut after = state.clone();
                after.signals_left -= 1;
                after.store = Stored::of(&next, self.size.steps);
                // Its wait had not ended: the step is not begun, or begun and still waiting.
                let last = self.size.steps - 1;
                after.signal_in_time = match &state.store.steps[last][0] {
                    None => true,
                    Some(rec) => {
                        rec.status == StepStatus::InProgress
                            && rec.next_at.is_none_or(|until| until > state.now)
                    }
                };
                out.push(Ok(("the signal arrives".into(), false, after)));
            } else {
                // A duplicate, or a saga that waits for nothing: nothing is stored.
                let mut after = state.clone();
                after.signals_left -= 1;
                out.push(Ok((
                    "the signal arrives again or too late".into(),
                    false,
                    after,
                )));
            }
        }
        if state.settles_left > 0 {
            for (n, item) in state.items.iter().enumerate().filter(|(_, item)| item.open) {
                for action in [
                    SettleAction::Retry,
                    SettleAction::Resolve,
                    SettleAction::Cancel,
                ] {
                    let stored = state.store.snapshot(&self.specs);
                    let settlement = Settlement {
                        intervention: InterventionId::new(),
                        action,
                        by: "op".into(),
                        reason: "model".into(),
                    };
                    let Ok((_, plan)) = decide_settle(
                        &item.intervention(&self.specs),
                        &stored,
                        &settlement,
                        at(state.now),
                    ) else {
                        continue;
                    };
                    let mut after = state.clone();
                    after.settles_left -= 1;
                    after.items[n].open = false;
                    let mut next = stored.clone();
                    match next.apply_plan(&plan, at(state.now)) {
                        Ok(()) => after.store = Stored::of(&next, self.size.steps),
                        Err(err) => {
                            out.push(Err(format!("a decided settlement failed: {err}")));
                            continue;
                        }
                    }
                    out.push(Ok((
                        format!("operator settles {:?} item with {action:?}", item.kind),
                        false,
                        after,
                    )));
                }
            }
        }
        out
    }

    fn worker_moves(&self, state: &State, w: usize, out: &mut Vec<Next>) {
        let id = u8::try_from(w).unwrap();
        let store = &state.store;
        match &state.workers[w] {
            Worker::Idle => {
                let due = store.next_run.is_some_and(|due| due <= state.now);
                let free = store.owner.is_none() || store.expires.is_some_and(|t| t < state.now);
                if store.status.is_active() && due && free {
                    let mut after = state.clone();
                    after.store.owner = Some(id);
                    after.store.token += 1;
                    after.store.expires = Some(state.now + LEASE);
                    let mut local = after.store.clone();
                    local.owner = Some(id);
                    after.workers[w] = Worker::Holding {
                        token: after.store.token,
                        expires: state.now + LEASE,
                        local,
                        queued: Vec::new(),
                    };
                    out.push(Ok((
                        format!("w{w} claims (token {})", after.store.token),
                        true,
                        after,
                    )));
                }
                return;
            }
            Worker::Holding { token, .. } | Worker::Running { token, .. } => {
                if state.crashes_left > 0 {
                    let mut after = state.clone();
                    after.crashes_left -= 1;
                    after.workers[w] = Worker::Idle;
                    out.push(Ok((format!("w{w} crashes"), false, after)));
                }
                // A heartbeat extends the lease while it is this worker's; a failed one stops
                // the drive.
                let mut after = state.clone();
                let expires = match &state.workers[w] {
                    Worker::Holding { expires, .. } | Worker::Running { expires, .. } => *expires,
                    Worker::Idle => state.now,
                };
                // Only a heartbeat due before the lease ends makes a difference.
                if expires > state.now + 1 {
                } else if store.owner == Some(id) && store.token == *token {
                    after.store.expires = Some(state.now + LEASE);
                    match &mut after.workers[w] {
                        Worker::Holding { expires, .. } | Worker::Running { expires, .. } => {
                            *expires = state.now + LEASE
                        }
                        Worker::Idle => {}
                    }
                    if after != *state {
                        out.push(Ok((format!("w{w} heartbeats"), true, after)));
                    }
                } else {
                    after.workers[w] = Worker::Idle;
                    out.push(Ok((
                        format!("w{w}'s heartbeat finds the lease lost"),
                        true,
                        after,
                    )));
                }
            }
        }
        match state.workers[w].clone() {
            Worker::Idle => {}
            Worker::Holding {
                token,
                expires,
                local,
                queued,
            } => out.extend(self.plan_move(state, w, token, expires, local, queued)),
            Worker::Running {
                token,
                expires,
                local,
                index,
                phase,
                attempt,
                applied,
                deadline,
            } => {
                if !applied && state.now <= deadline {
                    let mut after = state.clone();
                    after.effects[index as usize][slot(phase)] = true;
                    after.workers[w] = Worker::Running {
                        token,
                        expires,
                        local: local.clone(),
                        index,
                        phase,
                        attempt,
                        applied: true,
                        deadline,
                    };
                    out.push(Ok((
                        format!("w{w}: step {index} {phase} attempt {attempt} takes effect"),
                        true,
                        after,
                    )));
                }
                // A step answers Ok only when its effect happened, and an error only when it
                // knows it did not; a timeout or a lost answer is unknown either way.
                let answers: Vec<(&str, Result<Option<serde_json::Value>, StepError>)> = if applied
                {
                    vec![
                        (
                            "ok",
                            Ok((phase == Phase::Action).then(|| serde_json::json!(1))),
                        ),
                        ("times out", Err(StepError::unknown("timed out"))),
                    ]
                } else {
                    vec![
                        ("fails (transient)", Err(StepError::transient("busy"))),
                        ("fails (permanent)", Err(StepError::permanent("declined"))),
                        ("times out", Err(StepError::unknown("timed out"))),
                    ]
                };
                for (label, answer) in answers {
                    let snapshot = local.snapshot(&self.specs);
                    let changes = plan::on_outcome(
                        &snapshot,
                        &self.specs[index as usize],
                        Attempted {
                            index: StepIndex(index),
                            phase,
                            attempt: Attempt(attempt),
                        },
                        answer,
                        at(state.now),
                        1.0,
                    );
                    let mut next_local = snapshot;
                    if let Err(err) = next_local.apply_all(&changes, at(state.now)) {
                        out.push(Err(format!("recording an outcome locally failed: {err}")));
                        continue;
                    }
                    let mut after = state.clone();
                    after.workers[w] = Worker::Holding {
                        token,
                        expires,
                        local: Stored::of(&next_local, self.size.steps),
                        queued: changes.iter().map(Queued::of).collect(),
                    };
                    out.push(Ok((
                        format!("w{w}: step {index} {phase} attempt {attempt} {label}"),
                        true,
                        after,
                    )));
                }
            }
        }
    }

    /// The next moment at which anything can turn out differently because time passed (a due
    /// time, a lease's end, an attempt's deadline, a probe's wait), within the bound: time
    /// jumps there, since nothing changes in between.
    fn next_moment(&self, state: &State) -> Option<Tick> {
        fn saga(moments: &mut Vec<Tick>, stored: &Stored) {
            moments.extend(stored.next_run);
            moments.extend(stored.expires.map(|t| t + 1));
            for rec in stored.steps.iter().flatten().flatten() {
                moments.extend(rec.next_at);
                moments.extend(rec.started.map(|t| t + TIMEOUT + 1));
            }
        }
        let mut moments: Vec<Tick> = Vec::new();
        saga(&mut moments, &state.store);
        for worker in &state.workers {
            match worker {
                Worker::Idle => {}
                Worker::Holding { expires, local, .. } => {
                    moments.push(*expires);
                    saga(&mut moments, local);
                }
                Worker::Running {
                    expires,
                    deadline,
                    local,
                    ..
                } => {
                    moments.extend([*expires, deadline + 1]);
                    saga(&mut moments, local);
                }
            }
        }
        moments.into_iter().filter(|&t| t > state.now).min()
    }

    /// The worker's next planned move (worker.rs's drive loop).
    fn plan_move(
        &self,
        state: &State,
        w: usize,
        token: i64,
        expires: Tick,
        local: Stored,
        mut queued: Vec<Queued>,
    ) -> Vec<Next> {
        let id = u8::try_from(w).unwrap();
        let now = state.now;
        let action = self.next_action(&local, now);
        let label = format!("w{w} plans {action:?}");
        if let Action::Probe(probing) = &action {
            if now < expires {
                // What led here is written before anyone is asked.
                let mut asked = state.clone();
                return match self.flush(&mut asked, id, token, &queued) {
                    Err(broken) => vec![Err(broken)],
                    Ok(Err(_)) => {
                        asked.workers[w] = Worker::Idle;
                        vec![Ok((label, true, asked))]
                    }
                    Ok(Ok(())) => {
                        self.probe_moves(&asked, w, token, expires, &local, *probing, &label)
                    }
                };
            }
        }
        let mut after = state.clone();
        let holding = |local: Stored, queued: Vec<Queued>| Worker::Holding {
            token,
            expires,
            local,
            queued,
        };
        let outcome: Result<(), String> = (|| {
            // Runs and probes begin only while the lease lasts by the worker's own reckoning.
            if matches!(action, Action::Run { .. } | Action::Probe(_)) && now >= expires {
                after.workers[w] = Worker::Idle;
                return Ok(());
            }
            match action {
                Action::Run {
                    index,
                    phase,
                    attempt,
                } => {
                    let begin = Queued::Begin(index.0, phase, attempt.0);
                    let begun =
                        self.record(&local, &mut queued, &[begin.change(&self.specs)], now)?;
                    match self.flush(&mut after, id, token, &queued)? {
                        Ok(()) => {
                            after.workers[w] = Worker::Running {
                                token,
                                expires,
                                local: begun,
                                index: index.0,
                                phase,
                                attempt: attempt.0,
                                applied: false,
                                deadline: now + TIMEOUT,
                            }
                        }
                        Err(Error::CancelRequested { .. }) if phase == Phase::Action => {
                            after.workers[w] =
                                self.honour_cancel(&mut after, id, token, expires, &queued, now)?;
                        }
                        Err(_) => after.workers[w] = Worker::Idle,
                    }
                }
                // Explored above, by `probe_moves`, while the lease lasts.
                Action::Probe(_) => {}
                // The model's sagas have no parallel group: the conformance suite's `groups`
                // and the crash suite's group scenario cover them.
                Action::RunGroup { .. } => {
                    return Err(format!(
                        "w{w} planned a parallel group, which the model's sagas lack"
                    ));
                }
                // Nor a child step: the conformance suite's `children` and the crash suite's
                // child scenario cover them.
                Action::Child(_) => {
                    return Err(format!(
                        "w{w} planned a child step, which the model's sagas lack"
                    ));
                }
                Action::Wait(waiting) => {
                    // worker.rs's wait_step: the wait's end, recorded with the release.
                    let spec = &self.specs[waiting.index.0 as usize];
                    let until = if waiting.begins {
                        spec.kind
                            .limit()
                            .map(|limit| at(now + limit.as_secs() as Tick))
                    } else {
                        waiting.until
                    };
                    let snapshot = local.snapshot(&self.specs);
                    let changes = self.planned(plan::wait(&snapshot, spec, waiting, until, None));
                    self.record(&local, &mut queued, &changes, now)?;
                    match self.flush(&mut after, id, token, &queued)? {
                        Ok(()) => after.workers[w] = Worker::Idle,
                        Err(Error::CancelRequested { .. }) => {
                            after.workers[w] =
                                self.honour_cancel(&mut after, id, token, expires, &queued, now)?;
                        }
                        Err(_) => after.workers[w] = Worker::Idle,
                    }
                }
                Action::Record(changes) => {
                    let changes = self.planned(changes);
                    let guarded = changes
                        .iter()
                        .any(|change| matches!(change, Change::NoSignalSince { .. }));
                    if guarded {
                        // What was queued before is written first, on its own.
                        match self.flush(&mut after, id, token, &queued)? {
                            Ok(()) => queued.clear(),
                            Err(_) => {
                                after.workers[w] = Worker::Idle;
                                return Ok(());
                            }
                        }
                    }
                    let local = self.record(&local, &mut queued, &changes, now)?;
                    after.workers[w] = holding(local, queued.clone());
                    if guarded {
                        // Written at once; refused when a signal came since: read again.
                        match self.flush(&mut after, id, token, &queued)? {
                            Ok(()) => {
                                if let Worker::Holding { queued, .. } = &mut after.workers[w] {
                                    queued.clear();
                                }
                            }
                            Err(Error::Refused {
                                refusal: saga_core::Refusal::SignalArrived,
                                ..
                            }) => {
                                let mut fresh = after.store.clone();
                                fresh.owner = Some(id);
                                after.workers[w] = holding(fresh, Vec::new());
                            }
                            Err(_) => after.workers[w] = Worker::Idle,
                        }
                    }
                }
                Action::WaitUntil(_) | Action::Finish(_) | Action::Idle => {
                    let changes = match action {
                        Action::WaitUntil(due) => vec![Change::Release {
                            next_run_at: Some(due),
                        }],
                        Action::Finish(status) => vec![
                            Change::SetStatus {
                                status,
                                reason: None,
                            },
                            Change::Release { next_run_at: None },
                        ],
                        _ => vec![Change::Release { next_run_at: None }],
                    };
                    self.record(&local, &mut queued, &changes, now)?;
                    let _ = self.flush(&mut after, id, token, &queued)?;
                    after.workers[w] = Worker::Idle;
                }
            }
            Ok(())
        })();
        match outcome {
            Ok(()) => vec![Ok((label, true, after))],
            Err(broken) => vec![Err(broken)],
        }
    }

    /// Queues `changes` on a worker's local copy, as `Driver::record` does.
    fn record(
        &self,
        local: &Stored,
        queued: &mut Vec<Queued>,
        changes: &[Change],
        now: Tick,
    ) -> Result<Stored, String> {
        let mut snapshot = local.snapshot(&self.specs);
        snapshot
            .apply_all(changes, at(now))
            .map_err(|err| format!("a worker's plan was refused by its own copy: {err}"))?;
        queued.extend(changes.iter().map(Queued::of));
        Ok(Stored::of(&snapshot, self.size.steps))
    }

    /// `Driver::honour_cancel`: what was queued, without a forward step's begin or a wait and
    /// its release, and the move to compensating, written on the saga as stored. The worker goes
    /// on holding it, or stops when that write fails.
    fn honour_cancel(
        &self,
        after: &mut State,
        worker: u8,
        token: i64,
        expires: Tick,
        queued: &[Queued],
        now: Tick,
    ) -> Result<Worker, String> {
        let mut changes: Vec<Change> = queued
            .iter()
            .filter(|q| {
                !matches!(
                    q,
                    Queued::Begin(_, Phase::Action, _) | Queued::Wait(..) | Queued::Release(_)
                )
            })
            .map(|q| q.change(&self.specs))
            .collect();
        changes.push(Change::SetStatus {
            status: SagaStatus::Compensating,
            reason: None,
        });
        let mut stored = after.store.snapshot(&self.specs);
        if stored.apply_all(&changes, at(now)).is_ok()
            && self.write(after, worker, token, &changes)?.is_ok()
        {
            return Ok(Worker::Holding {
                token,
                expires,
                local: Stored::of(&stored, self.size.steps),
                queued: Vec::new(),
            });
        }
        Ok(Worker::Idle)
    }

    /// Writes what a worker queued, as `Driver::flush` does.
    fn flush(
        &self,
        state: &mut State,
        worker: u8,
        token: i64,
        queued: &[Queued],
    ) -> Result<Result<(), Error>, String> {
        if queued.is_empty() {
            return Ok(Ok(()));
        }
        let changes: Vec<Change> = queued.iter().map(|q| q.change(&self.specs)).collect();
        self.write(state, worker, token, &changes)
    }

    /// The probe's answers, recorded as `plan::on_probe` says.
    #[allow(clippy::too_many_arguments)]
    fn probe_moves(
        &self,
        after: &State,
        w: usize,
        token: i64,
        expires: Tick,
        local: &Stored,
        probing: Probing,
        label: &str,
    ) -> Vec<Next> {
        let snapshot = local.snapshot(&self.specs);
        let index = probing.index.0;
        let truth = after.effects[index as usize][0].then(|| serde_json::json!(1));
        let answers = [
            ("the probe answers", Ok(truth)),
            (
                "the probe cannot tell",
                Err(StepError::transient("probe down")),
            ),
        ];
        let mut out = Vec::new();
        for (said, answer) in answers {
            let changes = plan::on_probe(
                &snapshot,
                &self.specs[index as usize],
                probing,
                answer,
                at(after.now),
                1.0,
            );
            let mut next_local = snapshot.clone();
            if let Err(err) = next_local.apply_all(&changes, at(after.now)) {
                out.push(Err(format!(
                    "recording a probe's answer locally failed: {err}"
                )));
                continue;
            }
            let mut next = after.clone();
            next.workers[w] = Worker::Holding {
                token,
                expires,
                local: Stored::of(&next_local, self.size.steps),
                queued: changes.iter().map(Queued::of).collect(),
            };
            out.push(Ok((format!("{label}; {said}"), true, next)));
        }
        out
    }

    /// The properties that must hold in every state; `None` when they do.
    fn broken(&self, state: &State) -> Option<String> {
        let store = &state.store;
        for (n, pair) in store.steps.iter().enumerate() {
            for phase in [Phase::Action, Phase::Compensation] {
                let completed = pair[slot(phase)]
                    .as_ref()
                    .is_some_and(|rec| rec.status == StepStatus::Completed);
                if state.completed_ever[n][slot(phase)] && !completed {
                    return Some(format!(
                        "step {n} {phase} was recorded completed, then moved on"
                    ));
                }
                let waits = phase == Phase::Action && self.specs[n].kind.waits();
                if completed && waits && !store.signal {
                    return Some(format!(
                        "step {n} waited for a signal and is recorded completed without one"
                    ));
                }
                let accounted = waits
                    || state.effects[n][slot(phase)]
                    || (phase == Phase::Compensation && self.resolved_by_hand(state, n));
                if completed && !accounted {
                    return Some(format!(
                        "step {n} {phase} is recorded completed but never took effect"
                    ));
                }
            }
        }
        // Only a person cancels a saga (settling its item with `cancel`: "stop it where it
        // is"); that decision, recorded with who and why, covers what it leaves in place.
        if store.status == SagaStatus::Cancelled && !state.items.iter().any(|item| !item.open) {
            return Some("the saga is cancelled, but no person settled an item".into());
        }
        if store.status == SagaStatus::Compensated {
            for (n, spec) in self.specs.iter().enumerate() {
                let undone = state.effects[n][1] || self.resolved_by_hand(state, n);
                let named = state.items.iter().any(|item| item.step == Some(n as u32));
                if state.effects[n][0] && spec.compensable && !undone && !named {
                    return Some(format!(
                        "the saga is {} but step {n}'s action took effect and was neither compensated nor named by an intervention",
                        store.status
                    ));
                }
            }
        }
        if store.status == SagaStatus::Completed {
            if let Some(n) = (0..self.specs.len())
                .find(|&n| !(state.effects[n][0] || (self.specs[n].kind.waits() && store.signal)))
            {
                return Some(format!(
                    "the saga is completed but step {n}'s action never took effect"
                ));
            }
        }
        let holders = state
            .workers
            .iter()
            .filter(|worker| {
                matches!(
                    worker,
                    Worker::Holding { token: 2, .. } | Worker::Running { token: 2, .. }
                )
            })
            .count();
        if holders > 1 {
            return Some(format!("{holders} workers hold the current fencing token"));
        }
        if store.owner.is_none()
            && store.status == SagaStatus::Running
            && store.waiting
            && store.signal
            && store.next_run.is_none_or(|due| due > state.now)
        {
            return Some(
                "the saga waits for a signal that is stored, given back, and not due now: the signal is left waiting"
                    .into(),
            );
        }
        let last = self.size.steps - 1;
        let wait_failed = store.steps[last][0]
            .as_ref()
            .is_some_and(|rec| rec.status == StepStatus::Failed);
        if self.size.wait
            && wait_failed
            && state.signal_in_time
            && store.signal
            && state.begun_at_cancel.is_none()
        {
            return Some(
                "the signal came while the saga could still use it, yet its waiting step failed"
                    .into(),
            );
        }
        let open = state.items.iter().filter(|item| item.open).count();
        if open > 1 {
            return Some(format!("{open} intervention items are open at once"));
        }
        if store.status == SagaStatus::NeedsIntervention && open != 1 {
            return Some("the saga waits for a person, but no item is open".into());
        }
        None
    }

    /// Whether an operator recorded step `n`'s compensation done by hand (resolve).
    fn resolved_by_hand(&self, state: &State, n: usize) -> bool {
        state.items.iter().any(|item| {
            !item.open
                && item.step == Some(n as u32)
                && item.kind == InterventionKind::CompensationFailed
        })
    }

    /// Whether the saga has ended or waits for a person; or the bound cut it off while it
    /// waits for time to pass (a due time, a lease's end), which the check cannot follow.
    fn settled(&self, state: &State) -> bool {
        let status = state.store.status;
        status.is_terminal()
            || status == SagaStatus::NeedsIntervention
            || (state.time_left == 0 && self.next_moment(state).is_some())
    }
}

/// What a check found.
#[derive(Debug)]
struct Report {
    states: usize,
    transitions: usize,
    /// The first broken property, with the trace that reaches it.
    counterexample: Option<String>,
}

/// The transitions from `state`, with the phases they record completed remembered.
fn successors(model: &Model, state: &State) -> Vec<Next> {
    let mut out = model.next(state);
    for (_, _, after) in out.iter_mut().flatten() {
        for (n, pair) in after.store.steps.iter().enumerate() {
            for (s, rec) in pair.iter().enumerate() {
                if rec
                    .as_ref()
                    .is_some_and(|rec| rec.status == StepStatus::Completed)
                {
                    after.completed_ever[n][s] = true;
                }
            }
        }
        normalize(after);
    }
    out
}

/// Shifts every time so that now is 0, and clamps times far enough in the past to the value
/// that compares the same against now (due: 0; a lease or deadline gone: -1; a start long
/// ago: just past its wait), so that states that differ only by when they happen are one.
fn normalize(state: &mut State) {
    let by = state.now;
    let due = |t: Tick| (t - by).max(0);
    let gone = |t: Tick| (t - by).max(-1);
    let stored = |saga: &mut Stored| {
        saga.next_run = saga.next_run.map(due);
        saga.expires = saga.expires.map(gone);
        for rec in saga.steps.iter_mut().flatten().flatten() {
            rec.next_at = rec.next_at.map(due);
            rec.started = rec.started.map(|t| (t - by).max(-(TIMEOUT + 1)));
            // The planner reads an attempt's start, end and error only while its outcome is
            // open (in progress), and a due time only then or while a retry waits (pending).
            if rec.status != StepStatus::InProgress {
                rec.started = None;
                rec.finished_early = None;
                rec.error = None;
                if rec.status != StepStatus::Pending {
                    rec.next_at = None;
                }
            }
        }
    };
    stored(&mut state.store);
    // Fencing compares tokens for equality with the store's only: the store's current token
    // becomes 2 and a worker's stale one 1; a worker's copy keeps no lease (the planner never
    // reads it).
    let current = state.store.token;
    for worker in &mut state.workers {
        if let Worker::Holding { token, local, .. } | Worker::Running { token, local, .. } = worker
        {
            *token = if *token == current { 2 } else { 1 };
            local.owner = None;
            local.token = 0;
            local.expires = None;
            local.next_run = None;
        }
    }
    state.store.token = 2;
    for worker in &mut state.workers {
        match worker {
            Worker::Idle => {}
            Worker::Holding {
                expires,
                local,
                queued,
                ..
            } => {
                *expires = due(*expires);
                stored(local);
                for change in queued {
                    match change {
                        Queued::Fail(_, _, _, _, Some(t))
                        | Queued::Release(Some(t))
                        | Queued::Wait(_, Some(t), _) => *t = due(*t),
                        _ => {}
                    }
                }
            }
            Worker::Running {
                expires,
                deadline,
                local,
                ..
            } => {
                *expires = due(*expires);
                *deadline = gone(*deadline);
                stored(local);
            }
        }
    }
    // The workers are alike: numbered by their states, so that a state and its mirror image
    // are one (the store's lease owner is renumbered with them).
    if state.workers.len() == 2
        && fingerprint_of(&state.workers[1]) < fingerprint_of(&state.workers[0])
    {
        state.workers.swap(0, 1);
        state.store.owner = state.store.owner.map(|owner| 1 - owner);
    }
    state.now = 0;
}

fn fingerprint(state: &State) -> u64 {
    fingerprint_of(state)
}

fn fingerprint_of(value: &impl std::hash::Hash) -> u64 {
    use std::hash::Hasher;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

/// More states than this, and the check stops (a bound too large for the machine).
const MAX_STATES: usize = 4_000_000;

/// Explores every state reachable from the initial one (breadth first, so counterexamples are
/// shortest), checking the properties in each, then checks progress from each.
fn check(model: &Model) -> Report {
    let mut seen: HashMap<u64, Vec<u32>> = HashMap::new();
    let mut states: Vec<State> = vec![model.initial()];
    let mut parent: Vec<u32> = vec![u32::MAX];
    let mut own_moves: Vec<Vec<u32>> = vec![Vec::new()];
    seen.insert(fingerprint(&states[0]), vec![0]);
    let mut queue = VecDeque::from([0usize]);
    let mut transitions = 0;
    // The path to a state, with each move's label found again from its predecessor.
    let trace = |states: &Vec<State>, parent: &Vec<u32>, mut at: usize, last: String| {
        let mut steps = vec![last];
        while parent[at] != u32::MAX {
            let from = parent[at] as usize;
            let label = successors(model, &states[from])
                .into_iter()
                .flatten()
                .find(|(_, _, after)| *after == states[at])
                .map_or_else(|| "?".to_owned(), |(label, _, _)| label);
            steps.push(format!("{label}\n      -> {}", summary(&states[at])));
            at = from;
        }
        steps.reverse();
        steps.join("\n  ")
    };
    while let Some(current) = queue.pop_front() {
        let state = states[current].clone();
        for next in successors(model, &state) {
            transitions += 1;
            let (label, own, after) = match next {
                Ok(next) => next,
                Err(broken) => {
                    return Report {
                        states: states.len(),
                        transitions,
                        counterexample: Some(trace(&states, &parent, current, broken)),
                    }
                }
            };
            let hash = fingerprint(&after);
            let known = seen
                .get(&hash)
                .and_then(|ids| ids.iter().find(|&&id| states[id as usize] == after));
            let id = match known {
                Some(&id) => id,
                None => {
                    if let Some(broken) = model.broken(&after) {
                        let last =
                            format!("{label}\n      -> {}\n  BROKEN: {broken}", summary(&after));
                        return Report {
                            states: states.len(),
                            transitions,
                            counterexample: Some(trace(&states, &parent, current, last)),
                        };
                    }
                    let cap = std::env::var("SAGA_MODEL_CAP")
                        .ok()
                        .and_then(|cap| cap.parse().ok())
                        .unwrap_or(MAX_STATES);
                    assert!(
                        states.len() < cap,
                        "more than {cap} states: choose a smaller bound"
                    );
                    let id = u32::try_from(states.len()).unwrap();
                    seen.entry(hash).or_default().push(id);
                    states.push(after);
                    parent.push(u32::try_from(current).unwrap());
                    own_moves.push(Vec::new());
                    queue.push_back(id as usize);
                    id
                }
            };
            if own {
                own_moves[current].push(id);
            }
        }
    }
    // Progress: walk back from the settled states along the workers' own moves.
    let mut can_settle = vec![false; states.len()];
    let mut back: Vec<Vec<u32>> = vec![Vec::new(); states.len()];
    for (from, tos) in own_moves.iter().enumerate() {
        for &to in tos {
            back[to as usize].push(u32::try_from(from).unwrap());
        }
    }
    drop(own_moves);
    let mut queue: VecDeque<usize> = (0..states.len())
        .filter(|&id| model.settled(&states[id]))
        .collect();
    for &id in &queue {
        can_settle[id] = true;
    }
    while let Some(id) = queue.pop_front() {
        for &from in &back[id] {
            if !can_settle[from as usize] {
                can_settle[from as usize] = true;
                queue.push_back(from as usize);
            }
        }
    }
    let counterexample = can_settle.iter().position(|ok| !ok).map(|stuck| {
        trace(
            &states,
            &parent,
            stuck,
            "STUCK: from here the workers alone can never end the saga or reach a person".into(),
        )
    });
    Report {
        states: states.len(),
        transitions,
        counterexample,
    }
}

fn summary(state: &State) -> String {
    let store = &state.store;
    let steps: Vec<String> = store
        .steps
        .iter()
        .enumerate()
        .map(|(n, pair)| {
            let phase = |rec: &Option<PhaseRec>| match rec {
                None => "-".to_owned(),
                Some(rec) => format!(
                    "{}#{}{}",
                    rec.status,
                    rec.attempt,
                    rec.next_at.map(|t| format!("@{t}")).unwrap_or_default()
                ),
            };
            format!(
                "s{n}[{} / {}]{}",
                phase(&pair[0]),
                phase(&pair[1]),
                match state.effects[n] {
                    [true, true] => " (done, undone)",
                    [true, false] => " (done)",
                    [false, true] => " (undone)",
                    [false, false] => "",
                }
            )
        })
        .collect();
    format!(
        "t={} {}{}{} lease={:?}/{} due={:?} {} items={} workers={:?}",
        state.now,
        store.status,
        if store.cancel {
            " (cancel requested)"
        } else {
            ""
        },
        match (store.waiting, store.signal) {
            (true, true) => " (waits; signal stored)",
            (true, false) => " (waits)",
            (false, true) => " (signal stored)",
            (false, false) => "",
        },
        store.owner,
        store.token,
        store.next_run,
        steps.join(" "),
        state.items.iter().filter(|item| item.open).count(),
        state
            .workers
            .iter()
            .map(|w| match w {
                Worker::Idle => "idle".to_owned(),
                Worker::Holding { token, queued, .. } =>
                    format!("holding#{token}+{}", queued.len()),
                Worker::Running {
                    index,
                    phase,
                    applied,
                    ..
                } => format!(
                    "running s{index} {phase}{}",
                    if *applied { " (applied)" } else { "" }
                ),
            })
            .collect::<Vec<_>>()
    )
}

fn size() -> Size {
    match std::env::var("SAGA_MODEL").as_deref() {
        Ok("large") => Size::large(),
        _ => Size::small(),
    }
}

/// Checks the real planner on `specs` within `size`: every property holds, in enough states to
/// mean something.
fn assert_holds(specs: Vec<StepSpec>, size: Size) {
    let model = Model {
        specs,
        size,
        planner: Planner::Real,
    };
    let report = check(&model);
    println!(
        "{size:?}: {} states, {} transitions explored",
        report.states, report.transitions
    );
    if let Some(trace) = report.counterexample {
        panic!("a property is broken:\n  {trace}");
    }
    assert!(
        report.states > 1_000,
        "the model explored {} states",
        report.states
    );
}

#[test]
fn every_interleaving_keeps_the_saga_known_or_escalated_and_lets_it_end() {
    let size = size();
    assert_holds(definition(size.steps), size);
}

#[test]
fn the_checker_finds_the_leak_of_a_planner_that_compensates_around_an_unknown_action() {
    let size = Size::small();
    let model = Model {
        specs: definition(size.steps),
        size,
        planner: Planner::SkipsBegunActionsWhileCompensating,
    };
    let report = check(&model);
    let trace = report.counterexample.expect(
        "a planner that ignores an action of unknown outcome while compensating leaks its effect",
    );
    println!("{trace}");
    assert!(
        trace.contains("neither compensated nor named"),
        "the leak is what breaks: {trace}"
    );
}

#[test]
fn a_signal_racing_a_wait_is_consumed_once_and_never_left_waiting() {
    let size = Size::waiting();
    assert_holds(waiting_definition(size.steps), size);
}

#[test]
fn the_checker_finds_a_signal_passed_over_by_a_planner_blind_to_signals_that_came_meanwhile() {
    let size = Size::waiting();
    let model = Model {
        specs: waiting_definition(size.steps),
        size,
        planner: Planner::IgnoresSignalsThatCameMeanwhile,
    };
    let report = check(&model);
    let trace = report
        .counterexample
        .expect("a planner blind to signals that came since it read the saga passes one over");
    println!("{trace}");
    assert!(
        trace.contains("the signal arrives"),
        "the counterexample involves the signal: {trace}"
    );
}
