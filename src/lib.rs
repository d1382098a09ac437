//! # saga
//!
//! A durable saga orchestrator for Rust services. A saga is a multi-step operation that touches
//! the outside world — reserve stock, charge a card, send a receipt — and must never do a step
//! twice, never half-finish silently, and survive a crash:
//!
//! - every step phase is recorded `in_progress` before it runs and `completed` after, so a
//!   completed step never runs again, across crashes, restarts and concurrent workers;
//! - every step phase gets a stable idempotency key, derived only from (saga id, step name,
//!   phase), to pass downstream;
//! - a step that fails for good triggers compensation of the completed steps, in reverse order;
//! - a compensation that fails for good parks the saga for a person, in the manual-intervention
//!   queue; nothing retries forever and nothing is dropped.
//!
//! This crate is the facade: it re-exports [`saga_core`] and the backends of [`saga_store`].
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `sqlite` | yes | [`SqliteStore`], the embedded backend (one file, no server) |
//! | `postgres` | no | `PgStore`, the production backend: many workers in many processes |
//! | `opentelemetry` | no | `init_otlp`: export spans over OTLP/gRPC; each saga's spans continue the trace it started in |
//! | `derive` | yes | `#[derive(Saga)]`: declare a saga's name, version, input and steps as attributes |
//!
//! ## Example
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use saga::{Orchestrator, Config, Saga, SagaDefinition, SagaStatus, Step, StepContext, StepError};
//!
//! struct Greet;
//! async fn hello(_: Arc<Greet>, ctx: StepContext<String>) -> Result<String, StepError> {
//!     Ok(format!("hello {} (key {})", ctx.input(), ctx.key()))
//! }
//! impl Saga for Greet {
//!     type Input = String;
//!     fn definition() -> SagaDefinition<Self> {
//!         SagaDefinition::new("greet", 1).step(Step::new("say_hello", hello).irreversible())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), saga::Error> {
//! let store = saga::connect("sqlite::memory:").await?;
//! let orchestrator = Orchestrator::new(store, Config::default());
//! orchestrator.register(Greet)?;
//! orchestrator.run();
//! let id = orchestrator.start::<Greet>(&"world".to_owned()).await?;
//! let record = orchestrator.wait(id, Duration::from_secs(10)).await?;
//! assert_eq!(record.status, SagaStatus::Completed);
//! orchestrator.shutdown().await;
//! # Ok(())
//! # }
//! ```

use std::sync::Arc;

#[cfg(feature = "opentelemetry")]
mod otlp;
pub mod upgrade;

#[cfg(feature = "opentelemetry")]
pub use otlp::{init_otlp, OtlpGuard};
// Re-exported by name, so that what the facade offers is this list and nothing that
// `saga-core` adds later by accident. Store implementors reach the write plans and operator
// decisions through `store::write`.
#[doc(hidden)]
pub use saga_core::__private;
pub use saga_core::{after, before, bounded_text, now, parse_age};
pub use saga_core::{child, plan, policy, store, telemetry, wait};

/// The test kit for your own tests (feature `testing`): see [`testing::TestKit`].
#[cfg(feature = "testing")]
pub use saga_core::testing;

/// The README's test-kit example (`docs/test_kit_example.md`, which `tests/readme.rs` checks
/// the README shows verbatim), compiled as a doc test.
#[cfg(all(feature = "testing", doctest))]
#[doc = include_str!("../docs/test_kit_example.md")]
pub struct TestKitReadmeExample;

/// The operator console (feature `console`): an HTTP admin API and a web dashboard to mount in
/// your service; see [`console::router`].
#[cfg(feature = "console")]
pub use saga_console as console;
pub use saga_core::{
    Admin, Approval, ApprovalPolicy, Approvers, Attempt, BatchResult, BoxError, CancelOutcome,
    Change, ChildOutput, Config, Created, Delivered, Error, Event, EventKind, FailureKind,
    FencingToken, History, IdempotencyKey, Intervention, InterventionId, InterventionKind,
    InterventionStatus, Lease, LifecycleEvent, MemoryStore, NewIntervention, NewSaga, Orchestrator,
    ParentLink, Pause, PauseScope, PendingApproval, Phase, Policy, PolicyKind, Refusal, Result,
    ResultExt, RetryPolicy, Saga, SagaDefinition, SagaFilter, SagaId, SagaRecord, SagaSnapshot,
    SagaStatus, SagaType, SettleAction, Settlement, Signal, SignalKey, SignalRecord, SignalRefusal,
    SignalTarget, Step, StepBuilder, StepContext, StepError, StepIndex, StepKind, StepName,
    StepRecord, StepSpec, StepStatus, StepTransaction, Store, Timestamp, TransactionSlot,
    UnknownValue, WorkerId, DEFAULT_TIMEOUT, MAX_MESSAGE_BYTES,
};
/// `#[derive(Saga)]`: implements the [`Saga`](trait@Saga) trait from `#[saga(...)]` and
/// `#[step(...)]` attributes.
#[cfg(feature = "derive")]
pub use saga_macros::Saga;
#[cfg(feature = "postgres")]
pub use saga_store::{PgOptions, PgStore};
#[cfg(feature = "sqlite")]
pub use saga_store::{SqliteOptions, SqliteStore};

/// Opens the store named by `url`: `sqlite://path.db` or `sqlite::memory:` (feature `sqlite`),
/// `postgres://user:password@host/database` (feature `postgres`), or `memory:` for the
/// in-memory store. Migrations are applied on connect.
///
/// # Errors
/// [`Error::Configuration`] for an unsupported or malformed URL; store errors when the database
/// cannot be opened.
pub async fn connect(url: &str) -> Result<Arc<dyn Store>> {
    if url == "memory:" {
        return Ok(Arc::new(MemoryStore::new()));
    }
    #[cfg(feature = "sqlite")]
    if url.starts_with("sqlite:") {
        return Ok(Arc::new(SqliteStore::connect(url).await?));
    }
    #[cfg(feature = "postgres")]
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Arc::new(PgStore::connect(url).await?));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Err(Error::Configuration(
            "this build has no Postgres backend; enable the `postgres` feature of `saga`".into(),
        ));
    }
    Err(Error::Configuration(format!(
        "unsupported store URL `{}`; use sqlite://path/to/file.db, sqlite::memory:, postgres://user:password@host/database or memory:",
        url.split('@').next_back().unwrap_or(url)
    )))
}
