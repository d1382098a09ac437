//! A hook around every call of a step's action or compensation: what the test kit
//! ([`crate::testing`], feature `testing`) injects its faults through. Orchestrators run
//! without one unless [`Config::intercept`](crate::Config::intercept) sets it; production code
//! has no reason to.

use serde_json::Value;

use crate::id::{Attempt, IdempotencyKey, SagaId, SagaType, StepName};
use crate::status::Phase;
use crate::step::StepError;

/// One call of a step phase, as the worker is about to make it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// The saga.
    pub saga: SagaId,
    /// Its type.
    pub saga_type: SagaType,
    /// The step.
    pub step: StepName,
    /// Action or compensation.
    pub phase: Phase,
    /// Which attempt (from 1).
    pub attempt: Attempt,
    /// The idempotency key the call carries.
    pub key: IdempotencyKey,
}

/// What to do before a call.
#[derive(Debug, Clone)]
pub enum Before {
    /// Make the call.
    Run,
    /// Do not make it; the attempt ends with this error, as if the step had returned it (the
    /// effect did not happen).
    Fail(StepError),
}

/// What to do with a call's outcome.
#[derive(Debug, Clone)]
pub enum After {
    /// Record it.
    Keep,
    /// Record this error instead (for example an unknown outcome: the effect happened, and the
    /// answer was lost).
    Replace(StepError),
    /// Make the same call again, with the same key, and record the second outcome (is the step
    /// idempotent?); `after` is asked again about the second call (and its `CallAgain` then
    /// means `Keep`).
    CallAgain,
    /// Record nothing and stop driving the saga, keeping its lease, as a worker that crashed
    /// between the effect and its record would: the saga resumes once the lease expires.
    Abandon,
}

/// Decides, around each call, whether it runs and what is recorded.
pub trait Intercept: Send + Sync + 'static {
    /// Before `call`.
    fn before(&self, call: &Call) -> Before;
    /// After `call` returned `outcome` (the action's output; `None` for a compensation).
    fn after(&self, call: &Call, outcome: &Result<Option<Value>, StepError>) -> After;
}
