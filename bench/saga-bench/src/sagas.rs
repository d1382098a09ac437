//! The benchmark sagas: five no-op steps, each with a no-op compensation, so that what is measured
//! is the orchestration itself. W1: every step succeeds. W2: step 4 fails for good (a permanent
//! error), so steps 3, 2, 1 are compensated. Order: a saga that waits for a signal between two
//! no-op steps.

use std::sync::Arc;
use std::time::Duration;

use saga::{Saga, SagaDefinition, Signal, Step, StepContext, StepError};
use serde::{Deserialize, Serialize};

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

/// W1 with a frequency cap on every step, keyed by the saga's input (unique per saga, so
/// never reached): what checking and counting a cap costs.
pub struct W1Cap(pub Option<Arc<Tracker>>);
/// W1 with one rate limit shared by every step, far above the rate reached (never waits):
/// what checking and counting a rate limit costs.
pub struct W1Limit(pub Option<Arc<Tracker>>);

/// Order: `reserve` -> `await_signal` (waits for [`Paid`], up to a day) -> `ship`.
pub struct Order(pub Option<Arc<Tracker>>);

/// The signal an [`Order`] waits for.
#[derive(Debug, Serialize, Deserialize)]
pub struct Paid {
    pub n: u64,
}

impl Signal for Paid {
    const NAME: &'static str = "paid";
}

/// What a waiting [`Order`] records as `waiting_for`.
pub const ORDER_WAITING_FOR: &str = "signal:paid";

/// How long an [`Order`] waits for its signal: far beyond any run, so that no waiting order
/// falls due by itself while it is measured.
pub const ORDER_SIGNAL_TIMEOUT: Duration = Duration::from_secs(86_400);

impl Tracked for Order {
    fn tracker(&self) -> Option<&Tracker> {
        self.0.as_deref()
    }
}

impl Tracked for W1 {
    fn tracker(&self) -> Option<&Tracker> {
        self.0.as_deref()
    }
}

impl Tracked for W1Cap {
    fn tracker(&self) -> Option<&Tracker> {
        self.0.as_deref()
    }
}

impl Tracked for W1Limit {
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

impl Saga for W1Cap {
    type Input = u64;

    fn definition() -> SagaDefinition<Self> {
        (1..=STEPS).fold(SagaDefinition::new("bench_w1_cap", 1), |definition, n| {
            definition.step(
                Step::new(&format!("step_{n}"), ok_step::<W1Cap>)
                    .compensate(compensation::<W1Cap>)
                    .cap(
                        &format!("bench_cap_{n}"),
                        1,
                        Duration::from_secs(3600),
                        |n: &u64| n.to_string(),
                    ),
            )
        })
    }
}

impl Saga for W1Limit {
    type Input = u64;

    fn definition() -> SagaDefinition<Self> {
        (1..=STEPS).fold(SagaDefinition::new("bench_w1_limit", 1), |definition, n| {
            definition.step(
                Step::new(&format!("step_{n}"), ok_step::<W1Limit>)
                    .compensate(compensation::<W1Limit>)
                    .rate_limit("bench_partner", 1_000_000, Duration::from_secs(1)),
            )
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

impl Saga for Order {
    type Input = u64;

    fn definition() -> SagaDefinition<Self> {
        SagaDefinition::new("bench_order", 1)
            .step(Step::new("reserve", ok_step::<Order>).compensate(compensation::<Order>))
            .step(Step::signal::<Paid>("await_signal").timeout(ORDER_SIGNAL_TIMEOUT))
            .step(Step::new("ship", ok_step::<Order>).compensate(compensation::<Order>))
    }
}
