//! The crate's error type: what went wrong, and what to do next.

use std::time::Duration;

use crate::id::{IdempotencyKey, InterventionId, SagaId, SagaType};

/// A boxed error from a store driver or another lower layer.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Errors of the orchestrator and of every store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Starting or resuming a saga type that no orchestrator registered.
    #[error("saga type `{0}` is not registered; register it before starting or resuming")]
    UnknownSagaType(SagaType),

    /// A saga definition is malformed (no steps, duplicate names, missing compensation...).
    #[error("saga definition `{saga}` is invalid: {reason}")]
    InvalidDefinition {
        /// The saga type.
        saga: SagaType,
        /// What is wrong and how to fix it.
        reason: String,
    },

    /// The start key already started a saga with a different input.
    #[error("idempotency key `{key}` already started saga {existing} with a different input; use a new key for a new request")]
    Conflict {
        /// The start key.
        key: IdempotencyKey,
        /// The saga it started first.
        existing: SagaId,
    },

    /// A saga id that no store record has.
    #[error("saga {0} does not exist; check the id (list sagas to find it)")]
    SagaNotFound(SagaId),

    /// An intervention id that no store record has.
    #[error("intervention {0} does not exist; check the id (list interventions to find it)")]
    InterventionNotFound(InterventionId),

    /// The intervention was already settled by someone else.
    #[error("intervention {0} is already settled; nothing to do")]
    InterventionSettled(InterventionId),

    /// The worker lost its lease on the saga; it stopped writing.
    #[error("saga {0}: lease taken over by another worker; this worker stopped writing")]
    LeaseLost(SagaId),

    /// A serialized input or output is larger than the configured limit.
    #[error("{what} is {size} bytes, over the limit of {limit} bytes; keep payloads small (store references, not blobs) or raise the limit")]
    PayloadTooLarge {
        /// What was too large (for example `input of saga type checkout`).
        what: String,
        /// Its size in bytes.
        size: usize,
        /// The configured limit.
        limit: usize,
    },

    /// A value could not be serialized or deserialized.
    #[error("{what} could not be (de)serialized: {source}")]
    Serialization {
        /// What was being converted.
        what: String,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },

    /// A value no store can keep as it is (a NUL character, which Postgres refuses in JSON and
    /// text), refused alike on every backend.
    #[error("{what} cannot be stored: {reason}")]
    Unstorable {
        /// What was refused (for example `input of saga type checkout`).
        what: String,
        /// Why, and what to do instead.
        reason: String,
    },

    /// A write the step protocol forbids, refused alike by every store, with nothing written:
    /// beginning a step phase that completed (it never runs again), or finishing one that never
    /// began.
    #[error("saga {saga}: {refusal}; nothing was written")]
    Refused {
        /// The saga written to.
        saga: SagaId,
        /// Which transition was refused.
        refusal: crate::store::Refusal,
    },

    /// A stored record could not be read back.
    #[error(
        "stored record for saga {saga} is unreadable: {reason}; the saga is parked for an operator"
    )]
    CorruptRecord {
        /// The saga whose data is unreadable.
        saga: SagaId,
        /// What was unreadable.
        reason: String,
    },

    /// An interceptor (the test kit) simulated a crash between a step's effect and its record.
    #[error("saga {0}: a step's outcome was abandoned unrecorded (a crash simulated by a test); the saga resumes when its lease expires")]
    Abandoned(SagaId),

    /// The store could not be reached or did not answer in time.
    #[error("store unavailable ({0}); safe to retry, since every write is keyed and fenced")]
    StoreUnavailable(#[source] BoxError),

    /// The store failed in a way that retrying will not fix.
    #[error("store error: {0}")]
    Store(#[source] BoxError),

    /// The store URL or options are wrong.
    #[error("store configuration is invalid: {0}")]
    Configuration(String),

    /// Waiting for a saga took longer than the caller allowed.
    #[error("saga {saga} did not settle within {waited:?}; it keeps running, wait again or inspect its history")]
    WaitTimeout {
        /// The saga waited for.
        saga: SagaId,
        /// How long the caller waited.
        waited: Duration,
    },

    /// An operator asked to cancel the saga: no further forward step may begin.
    #[error("saga {saga}: cancelled by an operator ({reason}); no further step begins, completed steps are compensated")]
    CancelRequested {
        /// The saga.
        saga: SagaId,
        /// Who asked, and why.
        reason: String,
    },

    /// A signal was refused; nothing was stored.
    #[error("signal `{name}` to {target} refused: {refusal}")]
    SignalRefused {
        /// The saga (or start key) it was sent to.
        target: String,
        /// The signal's name.
        name: String,
        /// Why.
        refusal: crate::wait::SignalRefusal,
    },

    /// The operator may not take this action.
    #[error("{who} may not {action}; ask an operator the approval policy names (or extend it)")]
    NotAuthorized {
        /// Who tried.
        who: String,
        /// What, on which saga.
        action: String,
    },

    /// An operator action that does not apply to the saga or item in its current state.
    #[error("{0}")]
    InvalidAction(String),

    /// The orchestrator is shutting down and accepts no new work.
    #[error("orchestrator is shutting down; start sagas on a running orchestrator")]
    ShuttingDown,
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
