//! What a step function receives: who it is, which attempt, its stable key, the saga input,
//! the outputs of earlier steps and its deadline.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::clock::Timestamp;
use crate::id::{Attempt, IdempotencyKey, SagaId, StepName};
use crate::status::Phase;
use crate::step::StepError;
use crate::store::StepTransaction;

/// The store transaction lent to a transactional step (see [`StepContext::transaction`]).
pub type TransactionSlot = Arc<tokio::sync::Mutex<Box<dyn StepTransaction>>>;

/// The context of one attempt of one step phase.
#[derive(Clone)]
pub struct StepContext<I> {
    pub(crate) saga_id: SagaId,
    pub(crate) step: StepName,
    pub(crate) phase: Phase,
    pub(crate) attempt: Attempt,
    pub(crate) key: IdempotencyKey,
    pub(crate) input: Arc<I>,
    pub(crate) outputs: Arc<BTreeMap<StepName, Value>>,
    pub(crate) deadline: Timestamp,
    pub(crate) transaction: Option<TransactionSlot>,
}

impl<I: std::fmt::Debug> std::fmt::Debug for StepContext<I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepContext")
            .field("saga_id", &self.saga_id)
            .field("step", &self.step)
            .field("phase", &self.phase)
            .field("attempt", &self.attempt)
            .field("key", &self.key)
            .field("input", &self.input)
            .field("deadline", &self.deadline)
            .field("transactional", &self.transaction.is_some())
            .finish_non_exhaustive()
    }
}

impl<I> StepContext<I> {
    /// The saga this attempt belongs to.
    pub fn saga_id(&self) -> SagaId {
        self.saga_id
    }

    /// The step's name.
    pub fn step(&self) -> &StepName {
        &self.step
    }

    /// Action or compensation.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The attempt number, from 1.
    pub fn attempt(&self) -> Attempt {
        self.attempt
    }

    /// The idempotency key of this step phase: the same on every attempt and after every
    /// restart. Pass it downstream so that a repeated call has no repeated effect.
    pub fn key(&self) -> &IdempotencyKey {
        &self.key
    }

    /// The saga's input.
    pub fn input(&self) -> &I {
        &self.input
    }

    /// When this attempt times out; pass it downstream as a deadline.
    pub fn deadline(&self) -> Timestamp {
        self.deadline
    }

    /// The store transaction of a transactional step: writes made in it commit together with the
    /// step's `completed` record. `None` for other steps. Backends offer typed access (with
    /// Postgres: `saga_store::pg_transaction(&ctx)`).
    pub fn transaction(&self) -> Option<&TransactionSlot> {
        self.transaction.as_ref()
    }

    /// The output of an earlier, completed step, decoded as `T`.
    ///
    /// # Errors
    /// A permanent [`StepError`] when no completed step of that name has an output, or when the
    /// stored output does not decode as `T`.
    pub fn output<T: DeserializeOwned>(&self, step: &str) -> Result<T, StepError> {
        let value = self.outputs.get(&StepName::new(step)).ok_or_else(|| {
            StepError::permanent(format!(
                "no completed step `{step}` before `{}`; read outputs of earlier steps only",
                self.step
            ))
        })?;
        serde_json::from_value(value.clone()).map_err(|err| {
            StepError::permanent(format!(
                "output of step `{step}` does not decode as the requested type: {err}"
            ))
        })
    }
}
