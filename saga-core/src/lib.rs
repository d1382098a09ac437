//! # saga-core
//!
//! The heart of a durable saga orchestrator: a multi-step operation that touches the outside
//! world (reserve stock, charge a card, send a receipt) runs each step at most once per
//! idempotency key, never half-finishes silently, and survives a crash.
//!
//! - Each step phase is recorded `in_progress` before it runs and `completed` (with its output)
//!   after; a completed step never runs again.
//! - Each step phase gets a key derived only from (saga id, step name, phase) — the same on
//!   every attempt and after every restart — to pass downstream.
//! - When a step fails for good, the completed steps are compensated in reverse order; a
//!   compensation that fails for good parks the saga in `needs_intervention` with one item in
//!   the manual-intervention queue.
//! - Workers hold sagas with fenced leases; a crashed worker's sagas resume elsewhere when its
//!   lease expires.
//!
//! ## How it is built
//!
//! - [`plan`]: every decision of the data path, as pure functions over a stored saga (which step
//!   runs next, retry or give up, compensate, escalate); it emits [`Change`]s.
//! - [`store::write`]: what those changes mean, decided once: a batch compiles into a
//!   [`WritePlan`](store::write::WritePlan) (the net effect on one saga's rows, each step write
//!   with its precondition), refusals are judged in one order
//!   ([`admit`](store::write::admit): lease, cancel request, then a [`Refusal`]), and operators'
//!   actions are decided here too. Backends only carry plans out, so each write means the same
//!   on every backend.
//! - [`Store`]: the durable contract; [`MemoryStore`] here, SQLite and Postgres in `saga-store`.
//! - [`Orchestrator`]: registers sagas, starts them, and runs the workers that claim, drive and
//!   release them under fenced leases.
//!
//! ## Quickstart (on the in-memory store)
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use saga_core::{
//!     Config, MemoryStore, Orchestrator, ResultExt, Saga, SagaDefinition, SagaStatus, Step,
//!     StepContext, StepError,
//! };
//!
//! struct Checkout;
//!
//! async fn reserve(_: Arc<Checkout>, ctx: StepContext<u32>) -> Result<String, StepError> {
//!     Ok(format!("reservation-for-{}-{}", ctx.input(), ctx.key()))
//! }
//! async fn release(_: Arc<Checkout>, _: StepContext<u32>, _reservation: String) -> Result<(), StepError> {
//!     Ok(())
//! }
//! async fn charge(_: Arc<Checkout>, ctx: StepContext<u32>) -> Result<u64, StepError> {
//!     let cents = u64::from(*ctx.input()) * 100;
//!     if cents > 10_000 { return Err(StepError::permanent("card declined")); }
//!     "42".parse::<u64>().transient().map(|id| id + cents)
//! }
//!
//! impl Saga for Checkout {
//!     type Input = u32;
//!     fn definition() -> SagaDefinition<Self> {
//!         SagaDefinition::new("checkout", 1)
//!             .step(Step::new("reserve_stock", reserve).compensate(release))
//!             .step(Step::new("charge_card", charge).irreversible())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), saga_core::Error> {
//! let orchestrator = Orchestrator::new(Arc::new(MemoryStore::new()), Config::default());
//! orchestrator.register(Checkout)?;
//! orchestrator.run();
//!
//! let ok = orchestrator.start::<Checkout>(&3).await?;
//! let declined = orchestrator.start::<Checkout>(&500).await?;
//! let wait = Duration::from_secs(10);
//! assert_eq!(orchestrator.wait(ok, wait).await?.status, SagaStatus::Completed);
//! assert_eq!(orchestrator.wait(declined, wait).await?.status, SagaStatus::Compensated);
//! orchestrator.shutdown().await;
//! # Ok(())
//! # }
//! ```

mod admin;
pub mod child;
mod clock;
mod config;
mod context;
mod definition;
mod error;
pub mod faults;
mod history;
mod id;
pub mod intercept;
mod orchestrator;
mod persisted;
pub mod plan;
pub mod policy;
mod retry;
mod saga;
mod slots;
mod status;
mod step;
pub mod store;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
pub mod upgrade;
pub mod wait;
mod worker;

pub use admin::{Admin, BatchResult, PendingApproval};
pub use child::ChildOutput;
pub use clock::{after, before, now, parse_age, Timestamp};
pub use config::Config;
pub use context::{StepContext, TransactionSlot};
pub use definition::{ParallelGroup, SagaDefinition, Step, StepBuilder, StepSpec, DEFAULT_TIMEOUT};
pub use error::{BoxError, Error, Result};
pub use history::History;
pub use id::{
    Attempt, FencingToken, IdempotencyKey, InterventionId, SagaId, SagaType, StepIndex, StepName,
    WorkerId,
};
pub use orchestrator::{LifecycleEvent, Orchestrator};
pub use persisted::UnknownValue;
pub use policy::{Pause, PauseScope, Policy, PolicyKind};
pub use retry::RetryPolicy;
pub use saga::Saga;
pub use status::{Phase, SagaStatus, StepStatus};
pub use step::{bounded_text, FailureKind, ResultExt, StepError, MAX_MESSAGE_BYTES};
pub use store::memory::MemoryStore;
pub use store::{
    CancelOutcome, Change, Created, Event, EventKind, Intervention, InterventionKind,
    InterventionStatus, Lease, NewIntervention, NewSaga, ParentLink, Refusal, SagaFilter,
    SagaRecord, SagaSnapshot, SettleAction, Settlement, StepRecord, StepTransaction, Store,
};
pub use wait::{
    Approval, ApprovalPolicy, Approvers, Delivered, Signal, SignalKey, SignalRecord, SignalRefusal,
    SignalTarget, StepKind,
};

/// What `#[derive(Saga)]` expands to refers to these paths (through the facade's re-export), so
/// that users depend on one crate only. Not a public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::context::StepContext;
    pub use crate::definition::{SagaDefinition, Step, DEFAULT_TIMEOUT};
    pub use crate::retry::RetryPolicy;
    pub use crate::saga::Saga;
    pub use crate::step::StepError;
    pub use crate::wait::{Approval, Signal};
    pub use std::sync::Arc;
    pub use std::time::Duration;
}
