//! The Saga trait (implemented by hand or by `#[derive(Saga)]`), and its type-erased form that
//! workers run.

use std::any::Any;
use std::collections::BTreeMap;
use std::sync::Arc;

use futures::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde::Deserialize as _;
use serde::Serialize;
use serde_json::Value;

use crate::clock::Timestamp;
use crate::context::StepContext;
use crate::definition::{SagaDefinition, StepSpec};
use crate::id::{Attempt, IdempotencyKey, SagaId, SagaType, StepName};
use crate::status::Phase;
use crate::step::StepError;

/// A saga type: its input and its ordered steps.
///
/// The value registered with the orchestrator is handed to every step function (as `Arc<Self>`),
/// so it is the place for clients of downstream services.
pub trait Saga: Send + Sync + Sized + 'static {
    /// The saga's input, stored as JSON when the saga starts.
    type Input: Serialize + DeserializeOwned + Send + Sync + 'static;

    /// The saga's name, version and steps.
    fn definition() -> SagaDefinition<Self>;
}

/// What the worker passes to a step, before the input is decoded into its type.
#[derive(Clone)]
pub(crate) struct RawContext {
    pub(crate) saga_id: SagaId,
    pub(crate) step: StepName,
    pub(crate) phase: Phase,
    pub(crate) attempt: Attempt,
    pub(crate) key: IdempotencyKey,
    pub(crate) input: DecodedInput,
    pub(crate) outputs: Arc<BTreeMap<StepName, Value>>,
    pub(crate) deadline: Timestamp,
    pub(crate) transaction: Option<crate::context::TransactionSlot>,
}

/// A saga input decoded once per drive, shared by every step it runs.
#[derive(Clone)]
pub(crate) struct DecodedInput(Arc<dyn Any + Send + Sync>);

/// A registered saga with its types erased: what the worker runs.
pub(crate) trait ErasedSaga: Send + Sync {
    fn saga_type(&self) -> &SagaType;
    fn version(&self) -> u32;
    fn fingerprint(&self) -> &str;
    fn specs(&self) -> &[StepSpec];
    /// The saga's deadline, counted from its start.
    fn deadline(&self) -> Option<std::time::Duration>;
    /// The dedup window of starts with a key.
    fn dedup_window(&self) -> Option<std::time::Duration>;
    /// The computed end of sleep step `index` (`None`: its end is not computed).
    fn wake_at(&self, index: usize, ctx: RawContext) -> Option<Result<Timestamp, StepError>>;
    /// A child step's child type and input (`None`: the step starts no child).
    fn child_input(
        &self,
        index: usize,
        ctx: RawContext,
    ) -> Option<(std::any::TypeId, Result<Value, StepError>)>;
    /// The keys the policies of step `index` count this saga under (see
    /// [`StepSpec::policies`](crate::StepSpec::policies)); an error when the input has another
    /// type or a key function panicked.
    fn policy_keys(&self, index: usize, input: &DecodedInput) -> Result<Vec<String>, StepError>;
    /// Whether `payload` decodes as the signal type of step `index` (`Ok` for a step that
    /// declares no type).
    fn check_signal(&self, index: usize, payload: &Value) -> Result<(), String>;
    /// Decodes a stored input; `Err` with a readable reason when it does not fit the input type.
    fn decode_input(&self, input: &Value) -> Result<DecodedInput, String>;
    /// Runs one step phase. `output` is the action's output, for a compensation.
    fn run(
        &self,
        index: usize,
        ctx: RawContext,
        output: Option<Value>,
    ) -> BoxFuture<'static, Result<Value, StepError>>;
    /// Runs the probe of step `index` for an action attempt whose outcome is unknown.
    fn probe(
        &self,
        index: usize,
        ctx: RawContext,
    ) -> BoxFuture<'static, Result<Option<Value>, StepError>>;
}

pub(crate) struct Registered<S: Saga> {
    saga: Arc<S>,
    definition: SagaDefinition<S>,
    specs: Vec<StepSpec>,
    fingerprint: String,
}

impl<S: Saga> Registered<S> {
    pub(crate) fn new(saga: Arc<S>, definition: SagaDefinition<S>) -> Self {
        let specs = definition.specs();
        let fingerprint = definition.fingerprint();
        Self {
            saga,
            definition,
            specs,
            fingerprint,
        }
    }
}

impl<S: Saga> ErasedSaga for Registered<S> {
    fn saga_type(&self) -> &SagaType {
        self.definition.name()
    }

    fn version(&self) -> u32 {
        self.definition.version()
    }

    fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    fn specs(&self) -> &[StepSpec] {
        &self.specs
    }

    fn deadline(&self) -> Option<std::time::Duration> {
        self.definition.deadline_after_start()
    }

    fn dedup_window(&self) -> Option<std::time::Duration> {
        self.definition.dedup_window_of_starts()
    }

    fn policy_keys(&self, index: usize, input: &DecodedInput) -> Result<Vec<String>, StepError> {
        let Some(input) = input.0.downcast_ref::<S::Input>() else {
            return Err(StepError::permanent(
                "saga input has another type than this definition expects",
            ));
        };
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.definition.policy_keys(index, input)
        }))
        .map_err(|_| StepError::permanent("a policy's key function panicked"))
    }

    fn wake_at(&self, index: usize, raw: RawContext) -> Option<Result<Timestamp, StepError>> {
        let wake = self.definition.wake(index)?;
        let Some(ctx) = typed_context::<S>(raw) else {
            return Some(Err(StepError::permanent(
                "saga input has another type than this definition expects",
            )));
        };
        let saga = Arc::clone(&self.saga);
        Some(
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| wake(&saga, &ctx)))
                .unwrap_or_else(|_| {
                    Err(StepError::permanent(
                        "the step's wake-time function panicked",
                    ))
                }),
        )
    }

    fn child_input(
        &self,
        index: usize,
        raw: RawContext,
    ) -> Option<(std::any::TypeId, Result<Value, StepError>)> {
        let (type_id, input) = self.definition.child(index)?;
        let Some(ctx) = typed_context::<S>(raw) else {
            return Some((
                *type_id,
                Err(StepError::permanent(
                    "saga input has another type than this definition expects",
                )),
            ));
        };
        let saga = Arc::clone(&self.saga);
        Some((
            *type_id,
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| input(&saga, &ctx)))
                .unwrap_or_else(|_| {
                    Err(StepError::permanent("the child's input function panicked"))
                }),
        ))
    }

    fn check_signal(&self, index: usize, payload: &Value) -> Result<(), String> {
        self.definition
            .decodes(index)
            .map_or(Ok(()), |decodes| decodes(payload))
    }

    fn decode_input(&self, input: &Value) -> Result<DecodedInput, String> {
        S::Input::deserialize(input)
            .map(|decoded| DecodedInput(Arc::new(decoded)))
            .map_err(|err| {
                format!(
                    "stored input does not decode as the input type of `{}` v{}: {err}",
                    self.definition.name(),
                    self.definition.version()
                )
            })
    }

    fn probe(
        &self,
        index: usize,
        raw: RawContext,
    ) -> BoxFuture<'static, Result<Option<Value>, StepError>> {
        let Some(ctx) = typed_context::<S>(raw) else {
            return Box::pin(async {
                Err(StepError::unknown(
                    "saga input has another type than this definition expects",
                ))
            });
        };
        match self.definition.probe(index) {
            Some(probe) => probe(Arc::clone(&self.saga), ctx),
            None => {
                Box::pin(
                    async move { Err(StepError::unknown(format!("step {index} has no probe"))) },
                )
            }
        }
    }

    fn run(
        &self,
        index: usize,
        raw: RawContext,
        output: Option<Value>,
    ) -> BoxFuture<'static, Result<Value, StepError>> {
        let phase = raw.phase;
        let Some(ctx) = typed_context::<S>(raw) else {
            return Box::pin(async {
                Err(StepError::permanent(
                    "saga input has another type than this definition expects",
                ))
            });
        };
        let saga = Arc::clone(&self.saga);
        match phase {
            Phase::Action => match self.definition.action(index) {
                Some(action) => action(saga, ctx),
                None => Box::pin(async move {
                    Err(StepError::permanent(format!(
                        "definition has no step {index}"
                    )))
                }),
            },
            Phase::Compensation => match self.definition.compensation(index) {
                Some(compensation) => {
                    let future = compensation(saga, ctx, output.unwrap_or(Value::Null));
                    Box::pin(async move { future.await.map(|()| Value::Null) })
                }
                None => Box::pin(async move {
                    Err(StepError::permanent(format!(
                        "step {index} has no compensation"
                    )))
                }),
            },
        }
    }
}

/// The typed context of a step call, or `None` when the decoded input is of another type.
fn typed_context<S: Saga>(raw: RawContext) -> Option<StepContext<S::Input>> {
    let input = raw.input.0.downcast::<S::Input>().ok()?;
    Some(StepContext {
        saga_id: raw.saga_id,
        step: raw.step,
        phase: raw.phase,
        attempt: raw.attempt,
        key: raw.key,
        input,
        outputs: raw.outputs,
        deadline: raw.deadline,
        transaction: raw.transaction,
    })
}
