//! A test kit for the people who write sagas (feature `testing`): run a saga type on a store
//! (the memory store unless told otherwise), inject failures by step and attempt, and assert on
//! what happened with helpers that read like the guarantees.
//!
//! - **Virtual time.** Under `#[tokio::test(start_paused = true)]` (tokio's `test-util`
//!   feature), retries, timeouts, timers, leases and deadlines elapse at once: the library's
//!   clock follows tokio's (see [`crate::clock::now`]). A test of a saga that sleeps a day runs
//!   in milliseconds.
//! - **Faults**, by step, phase and attempt: a transient or permanent error instead of the call
//!   (the effect did not happen), a timeout after the effect (an unknown outcome: the library
//!   asks the step's probe, or escalates), a worker crash between the effect and its record (the
//!   saga is taken over when its lease expires), a lost signal.
//! - **Re-deliver everything**: every step and compensation is called twice with the same key,
//!   to prove that your code is idempotent.
//! - **Assertions** on a [`Run`]: final status, steps completed, compensations in reverse, one
//!   key per step across attempts, an intervention opened.
//!
//! ```
//! use saga_core::testing::{Fault, TestKit};
//! use saga_core::{Saga, SagaDefinition, SagaStatus, Step, StepContext, StepError};
//!
//! struct Checkout;
//!
//! async fn reserve_stock(_: std::sync::Arc<Checkout>, _: StepContext<u32>) -> Result<u32, StepError> {
//!     Ok(7)
//! }
//! async fn release_stock(_: std::sync::Arc<Checkout>, _: StepContext<u32>, _: u32) -> Result<(), StepError> {
//!     Ok(())
//! }
//! async fn charge_card(_: std::sync::Arc<Checkout>, _: StepContext<u32>) -> Result<(), StepError> {
//!     Ok(())
//! }
//!
//! impl Saga for Checkout {
//!     type Input = u32;
//!     fn definition() -> SagaDefinition<Self> {
//!         SagaDefinition::new("checkout", 1)
//!             .step(Step::new("reserve_stock", reserve_stock).compensate(release_stock))
//!             .step(Step::new("charge_card", charge_card).irreversible())
//!     }
//! }
//!
//! #[tokio::main(flavor = "current_thread", start_paused = true)]
//! async fn main() -> saga_core::Result<()> {
//!     let kit = TestKit::new();
//!     kit.register(Checkout)?;
//!     kit.inject(Fault::on("charge_card").attempt(1).permanent("card declined"));
//!     let run = kit.run::<Checkout>(&42).await?;
//!     run.assert_status(SagaStatus::Compensated)
//!         .assert_completed(&["reserve_stock"])
//!         .assert_compensated_in_reverse()
//!         .assert_one_key_per_step();
//!     kit.shutdown().await;
//!     Ok(())
//! }
//! ```

// The assertion helpers fail the test that calls them, as `assert!` does.
#![allow(clippy::panic)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::Value;

use crate::error::Result;
use crate::history::History;
use crate::id::{Attempt, IdempotencyKey, SagaId, SagaType, StepName};
use crate::intercept::{After, Before, Call, Intercept};
use crate::orchestrator::Orchestrator;
use crate::saga::Saga;
use crate::status::{Phase, SagaStatus, StepStatus};
use crate::step::StepError;
use crate::store::{EventKind, Intervention, SagaSnapshot, Store};
use crate::wait::{Delivered, SignalKey, SignalTarget};
use crate::{Config, MemoryStore};

/// What a fault does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultKind {
    /// The call is not made; the attempt fails with a transient error (retried per the step's
    /// policy).
    Transient(String),
    /// The call is not made; the attempt fails for good.
    Permanent(String),
    /// The call is made (its effect happens), then its answer is lost as if it timed out: an
    /// unknown outcome.
    TimeoutAfterEffect,
    /// The call is made, then the worker "crashes" before recording it: nothing is written, the
    /// lease is kept until it expires, and another drive takes the saga over.
    CrashAfterEffect,
    /// A signal of this name sent through [`TestKit::signal`] is lost on its way.
    LoseSignal(String),
}

/// A failure to inject: where, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    saga_type: Option<SagaType>,
    step: StepName,
    phase: Phase,
    attempt: Option<Attempt>,
    kind: FaultKind,
}

/// Where a fault will strike, before saying what it is.
#[derive(Debug, Clone)]
pub struct FaultAt {
    saga_type: Option<SagaType>,
    step: StepName,
    phase: Phase,
    attempt: Option<Attempt>,
}

impl Fault {
    /// A fault on the action of step `step` (of any saga type, every attempt until narrowed).
    pub fn on(step: &str) -> FaultAt {
        FaultAt {
            saga_type: None,
            step: StepName::new(step),
            phase: Phase::Action,
            attempt: None,
        }
    }

    /// Loses the first signal named `name` sent through [`TestKit::signal`].
    pub fn lose_signal(name: &str) -> Fault {
        Fault {
            saga_type: None,
            step: StepName::new(""),
            phase: Phase::Action,
            attempt: None,
            kind: FaultKind::LoseSignal(name.to_owned()),
        }
    }

    fn matches(&self, call: &Call) -> bool {
        !matches!(self.kind, FaultKind::LoseSignal(_))
            && self.step == call.step
            && self.phase == call.phase
            && self.attempt.is_none_or(|attempt| attempt == call.attempt)
            && self
                .saga_type
                .as_ref()
                .is_none_or(|saga_type| *saga_type == call.saga_type)
    }
}

impl FaultAt {
    /// On the step's compensation instead of its action.
    pub fn compensation(mut self) -> Self {
        self.phase = Phase::Compensation;
        self
    }

    /// Only on attempt `attempt` (from 1).
    pub fn attempt(mut self, attempt: u32) -> Self {
        self.attempt = Some(Attempt(attempt));
        self
    }

    /// Only in sagas of type `saga_type`.
    pub fn in_saga(mut self, saga_type: &str) -> Self {
        self.saga_type = Some(SagaType::new(saga_type));
        self
    }

    fn with(self, kind: FaultKind) -> Fault {
        Fault {
            saga_type: self.saga_type,
            step: self.step,
            phase: self.phase,
            attempt: self.attempt,
            kind,
        }
    }

    /// A transient error instead of the call.
    pub fn transient(self, message: &str) -> Fault {
        self.with(FaultKind::Transient(message.to_owned()))
    }

    /// A permanent error instead of the call.
    pub fn permanent(self, message: &str) -> Fault {
        self.with(FaultKind::Permanent(message.to_owned()))
    }

    /// The call happens, and its answer is lost to a timeout.
    pub fn timeout_after_effect(self) -> Fault {
        self.with(FaultKind::TimeoutAfterEffect)
    }

    /// The call happens, and the worker crashes before recording it.
    pub fn crash_after_effect(self) -> Fault {
        self.with(FaultKind::CrashAfterEffect)
    }
}

/// How a recorded call ended, as the kit saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallOutcome {
    /// The step returned `Ok`.
    Ok,
    /// The step returned this error.
    Failed(String),
    /// Not made: a fault failed the attempt with this error.
    Injected(String),
    /// Made; its answer was lost to an injected timeout.
    AnswerLost,
    /// Made; the worker crashed (by injection) before recording it.
    Crashed,
    /// The second call of a re-delivered step answered differently from the first (it says
    /// how): the step is not idempotent, and the attempt was recorded as an unknown outcome.
    NotIdempotent(String),
}

/// One call of a step phase, as the kit recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedCall {
    /// Which saga, step, phase and attempt, with which key.
    pub call: Call,
    /// Whether the step's code ran (its effect may have happened).
    pub ran: bool,
    /// How it ended.
    pub outcome: CallOutcome,
}

#[derive(Default)]
struct Shared {
    faults: Vec<Fault>,
    redeliver: bool,
    calls: Vec<RecordedCall>,
    /// Calls made a second time in re-delivery mode, with the first call's output.
    again: Vec<(Call, Option<Value>)>,
    /// Per registered saga type, its steps and whether each has a compensation.
    steps: BTreeMap<String, Vec<(StepName, bool)>>,
}

/// The kit's interceptor: applies faults and records every call.
struct Recorder {
    shared: Arc<Mutex<Shared>>,
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    shared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Intercept for Recorder {
    fn before(&self, call: &Call) -> Before {
        let mut shared = lock(&self.shared);
        let fault = shared
            .faults
            .iter()
            .find(|fault| fault.matches(call))
            .map(|fault| fault.kind.clone());
        let (before, outcome) = match fault {
            Some(FaultKind::Transient(message)) => (
                Before::Fail(StepError::transient(format!("injected: {message}"))),
                Some(CallOutcome::Injected(message)),
            ),
            Some(FaultKind::Permanent(message)) => (
                Before::Fail(StepError::permanent(format!("injected: {message}"))),
                Some(CallOutcome::Injected(message)),
            ),
            _ => (Before::Run, None),
        };
        if let Some(outcome) = outcome {
            shared.calls.push(RecordedCall {
                call: call.clone(),
                ran: false,
                outcome,
            });
        }
        before
    }

    fn after(&self, call: &Call, outcome: &std::result::Result<Option<Value>, StepError>) -> After {
        let mut shared = lock(&self.shared);
        let fault = shared
            .faults
            .iter()
            .find(|fault| fault.matches(call))
            .map(|fault| fault.kind.clone());
        let (after, seen) = match fault {
            Some(FaultKind::TimeoutAfterEffect) => (
                After::Replace(StepError::unknown(
                    "injected: the call timed out after its effect",
                )),
                CallOutcome::AnswerLost,
            ),
            Some(FaultKind::CrashAfterEffect) => (After::Abandon, CallOutcome::Crashed),
            _ => match outcome {
                Ok(_) => (After::Keep, CallOutcome::Ok),
                Err(error) => (After::Keep, CallOutcome::Failed(error.to_string())),
            },
        };
        let first = shared
            .again
            .iter()
            .find(|(again, _)| again == call)
            .map(|(_, output)| output.clone());
        if let (Some(first), After::Keep) = (first, &after) {
            // The second call of a re-delivered step must answer as the first did. If it does
            // not, its effect may have happened twice, or the first one's effect would be
            // misreported: never record that as a clean outcome.
            let same = matches!(outcome, Ok(output) if *output == first);
            if !same {
                let answered = match outcome {
                    Ok(output) => format!("returned {output:?}"),
                    Err(error) => format!("failed: {error}"),
                };
                shared.calls.push(RecordedCall {
                    call: call.clone(),
                    ran: true,
                    outcome: CallOutcome::NotIdempotent(answered.clone()),
                });
                return After::Replace(StepError::unknown(format!(
                    "not idempotent: called again with key `{}`, the step {answered} after returning {first:?}",
                    call.key
                )));
            }
        }
        shared.calls.push(RecordedCall {
            call: call.clone(),
            ran: true,
            outcome: seen,
        });
        let again = shared.again.iter().any(|(again, _)| again == call);
        if shared.redeliver && matches!(after, After::Keep) && !again {
            if let Ok(output) = outcome {
                shared.again.push((call.clone(), output.clone()));
                return After::CallAgain;
            }
        }
        after
    }
}

/// Runs saga types on a store with faults injected and every call recorded.
pub struct TestKit {
    store: Arc<dyn Store>,
    orchestrator: Orchestrator,
    shared: Arc<Mutex<Shared>>,
    settle_within: Duration,
}

impl Default for TestKit {
    fn default() -> Self {
        Self::new()
    }
}

impl TestKit {
    /// A kit on a fresh memory store, its orchestrator running, made for virtual time: its
    /// workers poll once a (virtual) minute, so that a day-long timer takes 1,440 polls, not
    /// millions. Starts, signals and operators' actions wake them at once; retries, timers and
    /// expired leases are picked up at the next poll. Under real time, use [`TestKit::on`]
    /// with a short poll interval.
    pub fn new() -> Self {
        Self::on(
            Arc::new(MemoryStore::new()),
            Config::default().poll_interval(Duration::from_secs(60)),
        )
    }

    /// A kit on `store` with `config` (its intercept is replaced by the kit's), its orchestrator
    /// running. Virtual time is for the memory store only: a paused tokio clock jumps ahead
    /// while the runtime waits on a database driver's thread (SQLite) or socket (Postgres,
    /// which also keeps its own clock), so timeouts would fire that never would; on those,
    /// run in real time with a short poll interval.
    pub fn on(store: Arc<dyn Store>, config: Config) -> Self {
        let shared = Arc::new(Mutex::new(Shared::default()));
        let config = config.intercept(Arc::new(Recorder {
            shared: Arc::clone(&shared),
        }));
        let orchestrator = Orchestrator::new(Arc::clone(&store), config);
        orchestrator.run();
        Self {
            store,
            orchestrator,
            shared,
            settle_within: Duration::from_secs(7 * 24 * 60 * 60),
        }
    }

    /// Registers a saga type.
    ///
    /// # Errors
    /// As [`Orchestrator::register`].
    pub fn register<S: Saga>(&self, saga: S) -> Result<()> {
        let definition = S::definition();
        let steps = definition
            .specs()
            .into_iter()
            .map(|spec| (spec.name, spec.compensable))
            .collect();
        self.orchestrator.register(saga)?;
        lock(&self.shared)
            .steps
            .insert(definition.name().as_str().to_owned(), steps);
        Ok(())
    }

    /// Adds a fault; the first fault matching a call applies.
    pub fn inject(&self, fault: Fault) -> &Self {
        lock(&self.shared).faults.push(fault);
        self
    }

    /// Calls every step and compensation that returns a second time with the same key, and
    /// records the second outcome: a step whose second call fails or changes the world again
    /// is not idempotent.
    pub fn redeliver_everything(&self) -> &Self {
        lock(&self.shared).redeliver = true;
        self
    }

    /// How long [`TestKit::run`] waits for a saga to settle (default: 7 days, at once under
    /// virtual time).
    pub fn settle_within(mut self, limit: Duration) -> Self {
        self.settle_within = limit;
        self
    }

    /// The orchestrator (to start sagas with keys, send signals, read them).
    pub fn orchestrator(&self) -> &Orchestrator {
        &self.orchestrator
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Starts a saga of type `S` and waits until it settles (completed, compensated, cancelled
    /// or waiting for a person) or [`TestKit::settle_within`] passes; then reports it.
    ///
    /// # Errors
    /// As [`Orchestrator::start`]; store errors.
    pub async fn run<S: Saga>(&self, input: &S::Input) -> Result<Run> {
        let id = self.orchestrator.start::<S>(input).await?;
        self.settle(id).await
    }

    /// Waits for saga `id` to settle (or for the limit) and reports it.
    ///
    /// # Errors
    /// [`crate::Error::SagaNotFound`]; store errors.
    pub async fn settle(&self, id: SagaId) -> Result<Run> {
        match self.orchestrator.wait(id, self.settle_within).await {
            Ok(_) | Err(crate::Error::WaitTimeout { .. }) => {}
            Err(err) => return Err(err),
        }
        self.report(id).await
    }

    /// Reports saga `id` as it is now.
    ///
    /// # Errors
    /// [`crate::Error::SagaNotFound`]; store errors.
    pub async fn report(&self, id: SagaId) -> Result<Run> {
        let snapshot = self.orchestrator.snapshot(id).await?;
        let history = self.orchestrator.history(id).await?;
        let interventions = self
            .store
            .interventions(false)
            .await?
            .into_iter()
            .filter(|item| item.saga_id == id)
            .collect();
        let calls = lock(&self.shared)
            .calls
            .iter()
            .filter(|call| call.call.saga == id)
            .cloned()
            .collect();
        let steps = lock(&self.shared)
            .steps
            .get(snapshot.record.saga_type.as_str())
            .cloned()
            .unwrap_or_default();
        Ok(Run {
            snapshot,
            history,
            interventions,
            calls,
            steps,
        })
    }

    /// Sends a signal, unless a [`Fault::lose_signal`] for its name is pending: then it is lost
    /// (that fault is used up) and `Ok(None)` is returned.
    ///
    /// # Errors
    /// As [`Orchestrator::signal_json`].
    pub async fn signal(
        &self,
        target: impl Into<SignalTarget>,
        name: &str,
        payload: Value,
        key: &str,
    ) -> Result<Option<Delivered>> {
        {
            let mut shared = lock(&self.shared);
            let lost = shared
                .faults
                .iter()
                .position(|fault| fault.kind == FaultKind::LoseSignal(name.to_owned()));
            if let Some(position) = lost {
                shared.faults.remove(position);
                return Ok(None);
            }
        }
        self.orchestrator
            .signal_json(target, name, payload, SignalKey::new(key))
            .await
            .map(Some)
    }

    /// Stops the orchestrator.
    pub async fn shutdown(&self) {
        self.orchestrator.shutdown().await;
    }
}

/// One saga as it ended up, with every call the kit saw; the `assert_*` helpers fail the test
/// with what was expected and what happened.
#[derive(Debug, Clone)]
pub struct Run {
    /// The saga with its step records.
    pub snapshot: SagaSnapshot,
    /// Its history.
    pub history: History,
    /// Its intervention items, open and settled.
    pub interventions: Vec<Intervention>,
    /// Every call of its steps, in the order they were made.
    pub calls: Vec<RecordedCall>,
    /// Its type's steps, in order, and whether each has a compensation (from the registered
    /// definition).
    pub steps: Vec<(StepName, bool)>,
}

impl Run {
    /// The saga's id.
    pub fn id(&self) -> SagaId {
        self.snapshot.record.id
    }

    /// Where it is.
    pub fn status(&self) -> SagaStatus {
        self.snapshot.record.status
    }

    /// The actions that completed, in step order.
    pub fn completed(&self) -> Vec<&str> {
        self.finished(Phase::Action)
    }

    fn finished(&self, phase: Phase) -> Vec<&str> {
        self.snapshot
            .steps
            .iter()
            .filter(|step| step.phase == phase && step.status == StepStatus::Completed)
            .map(|step| step.name.as_str())
            .collect()
    }

    /// The compensations that completed, in the order they completed (one an operator marked
    /// done by hand, which has no completion event of its own, comes last).
    pub fn compensated(&self) -> Vec<&str> {
        let mut done: Vec<&str> = self
            .history
            .events
            .iter()
            .filter(|event| {
                event.kind == EventKind::StepCompleted && event.phase == Some(Phase::Compensation)
            })
            .filter_map(|event| event.step.as_ref().map(StepName::as_str))
            .collect();
        for step in &self.snapshot.steps {
            if step.phase == Phase::Compensation
                && step.status == StepStatus::Completed
                && !done.contains(&step.name.as_str())
            {
                done.push(step.name.as_str());
            }
        }
        done
    }

    /// The calls of one step phase.
    pub fn calls_of(&self, step: &str, phase: Phase) -> Vec<&RecordedCall> {
        self.calls
            .iter()
            .filter(|call| call.call.step.as_str() == step && call.call.phase == phase)
            .collect()
    }

    /// How many times the code of a step phase ran (its effect may have happened each time).
    pub fn runs_of(&self, step: &str, phase: Phase) -> usize {
        self.calls_of(step, phase)
            .iter()
            .filter(|call| call.ran)
            .count()
    }

    /// Fails unless the saga is in `status`.
    pub fn assert_status(&self, status: SagaStatus) -> &Self {
        assert!(
            self.status() == status,
            "saga {} is {}, expected {status}; its history:\n{}",
            self.id(),
            self.status(),
            self.history.render()
        );
        self
    }

    /// Fails unless exactly these actions completed, in this step order.
    pub fn assert_completed(&self, steps: &[&str]) -> &Self {
        assert!(
            self.completed() == steps,
            "saga {}: completed actions {:?}, expected {steps:?}",
            self.id(),
            self.completed()
        );
        self
    }

    /// Fails unless every completed action whose step has a compensation (by the registered
    /// definition) was compensated, and in the reverse of the order the actions ran.
    pub fn assert_compensated_in_reverse(&self) -> &Self {
        let compensable: Vec<&str> = self
            .snapshot
            .steps
            .iter()
            .filter(|step| step.phase == Phase::Action && step.status == StepStatus::Completed)
            .filter(|step| {
                self.steps
                    .iter()
                    .any(|(name, compensable)| *name == step.name && *compensable)
            })
            .map(|step| step.name.as_str())
            .rev()
            .collect();
        let compensated = self.compensated();
        assert!(
            compensated == compensable,
            "saga {}: compensations completed in the order {compensated:?}, expected the reverse of the completed actions: {compensable:?}",
            self.id()
        );
        self
    }

    /// Fails unless the library called every step phase with one key, across attempts,
    /// re-deliveries and takeovers, and no two step phases shared one. Whether your code passes
    /// `ctx.key()` on to the downstream is yours to check (re-delivery shows whether the
    /// downstream honours it).
    pub fn assert_one_key_per_step(&self) -> &Self {
        let mut keys: BTreeMap<(String, &'static str), IdempotencyKey> = BTreeMap::new();
        for call in &self.calls {
            let phase = (call.call.step.as_str().to_owned(), call.call.phase.as_str());
            if let Some(key) = keys.get(&phase) {
                assert!(
                    *key == call.call.key,
                    "saga {}: step `{}` ({}) was called with key `{}` on attempt {} after key `{key}`",
                    self.id(),
                    phase.0,
                    phase.1,
                    call.call.key,
                    call.call.attempt
                );
            } else {
                keys.insert(phase, call.call.key.clone());
            }
        }
        let mut distinct: Vec<&IdempotencyKey> = keys.values().collect();
        distinct.sort_by_key(|key| key.as_str());
        distinct.dedup();
        assert!(
            distinct.len() == keys.len(),
            "saga {}: two step phases shared a key: {keys:?}",
            self.id()
        );
        self
    }

    /// Fails if a re-delivered call answered differently from the first (see
    /// [`TestKit::redeliver_everything`]).
    pub fn assert_idempotent(&self) -> &Self {
        let broken: Vec<String> = self
            .calls
            .iter()
            .filter_map(|call| match &call.outcome {
                CallOutcome::NotIdempotent(answered) => Some(format!(
                    "`{}` ({}) {answered}",
                    call.call.step, call.call.phase
                )),
                _ => None,
            })
            .collect();
        assert!(
            broken.is_empty(),
            "saga {}: called again with the same key, steps answered differently: {broken:?}",
            self.id()
        );
        self
    }

    /// Fails unless an intervention item was opened for the saga.
    pub fn assert_intervention_opened(&self) -> &Self {
        assert!(
            !self.interventions.is_empty(),
            "saga {} ({}) opened no intervention item; its history:\n{}",
            self.id(),
            self.status(),
            self.history.render()
        );
        self
    }

    /// Fails if an intervention item was opened for the saga.
    pub fn assert_no_intervention(&self) -> &Self {
        assert!(
            self.interventions.is_empty(),
            "saga {} opened intervention items: {:?}",
            self.id(),
            self.interventions
                .iter()
                .map(|item| &item.item.error)
                .collect::<Vec<_>>()
        );
        self
    }
}
