//! The benchmark sagas: five no-op steps, each with a no-op compensation, so that what is measured
//! is the orchestration itself. W1: every step succeeds. W2: step 4 fails for good (a permanent
//! error), so steps 3, 2, 1 are compensated.

use std::sync::Arc;

use saga::{Saga, SagaDefinition, Step, StepContext, StepError};

use crate::track::Tracker;

/// Steps per saga.
pub const STEPS: u32 = 5;

/// Step functions run per saga (actions and compensations): W1 runs 5 actions; W2 runs 4
/// actions (the 4th fails) and 3 compensations.
pub fn transitions_per_saga(workload: &str) -> u64 {
    match workload {
        "w2" => 7,
        _ => u64::from(STEPS),
    }
}

pub trait Tracked: Send + Sync + 'static {
    fn tracker(&self) -> Option<&Tracker>;
}

/// W1: five steps that all succeed.
pub struct W1(pub Option<Arc<Tracker>>);
/// W2: step 4 fails for good; steps 3..1 compensate.
pub struct W2(pub Option<Arc<Tracker>>);

impl Tracked for W1 {
    fn tracker(&self) -> Option<&Tracker> {
        self.0.as_deref()
    }
}

impl Tracked for W2 {
    fn tracker(&self) -> Option<&Tracker> {
        self.0.as_deref()
    }
}

async fn ok_step<S: Tracked>(saga: Arc<S>, ctx: StepContext<u64>) -> Result<(), StepError> {
    if let Some(tracker) = saga.tracker() {
        tracker.step_entered(ctx.saga_id());
    }
    Ok(())
}

async fn failing_step<S: Tracked>(saga: Arc<S>, ctx: StepContext<u64>) -> Result<(), StepError> {
    if let Some(tracker) = saga.tracker() {
        tracker.step_entered(ctx.saga_id());
    }
    Err(StepError::permanent("bench: step 4 fails for good"))
}

async fn compensation<S: Tracked>(
    saga: Arc<S>,
    ctx: StepContext<u64>,
    _output: (),
) -> Result<(), StepError> {
    if let Some(tracker) = saga.tracker() {
        tracker.step_entered(ctx.saga_id());
    }
    Ok(())
}

impl Saga for W1 {
    type Input = u64;

    fn definition() -> SagaDefinition<Self> {
        (1..=STEPS).fold(SagaDefinition::new("bench_w1", 1), |definition, n| {
            definition
                .step(Step::new(&format!("step_{n}"), ok_step::<W1>).compensate(compensation::<W1>))
        })
    }
}

impl Saga for W2 {
    type Input = u64;

    fn definition() -> SagaDefinition<Self> {
        (1..=STEPS).fold(SagaDefinition::new("bench_w2", 1), |definition, n| {
            if n == 4 {
                definition.step(
                    Step::new(&format!("step_{n}"), failing_step::<W2>)
                        .compensate(compensation::<W2>),
                )
            } else {
                definition.step(
                    Step::new(&format!("step_{n}"), ok_step::<W2>).compensate(compensation::<W2>),
                )
            }
        })
    }
}
