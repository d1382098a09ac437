//! The saga type of the policies scenario, `crash_policy`: an order for a customer whose steps
//! run under step policies, every effect through the ledger with its idempotency key (and, for
//! a capped step, the customer its cap counts under). Failures are planned from the input.
//!
//! 1. `reserve`: compensable.
//! 2. `notify`: irreversible, capped: one notice per customer per hour (`notice`).
//! 3. `issue_code`: compensable, capped: one discount code per customer per hour (`code`).
//! 4. `partner`: compensable, rate-limited: 200 calls per second to the partner (`partner`);
//!    some first attempts are throttled (a 429), so the whole integration backs off.
//! 5. `confirm`: irreversible; declined for some orders, so that the saga compensates.

use std::sync::Arc;
use std::time::Duration;

use saga::{RetryPolicy, Saga, SagaDefinition, Step, StepContext, StepError};
use serde::{Deserialize, Serialize};

use crate::ledger::Ledger;
use crate::rng::Rng;
use crate::sagas::{work, Receipt, STEP_TIMEOUT};

/// The saga type's name.
pub(crate) const TYPE: &str = "crash_policy";

/// The window of both caps: longer than any run, so every effect of a run counts.
const CAP_WINDOW: Duration = Duration::from_secs(3_600);

/// How long a throttled partner asks the integration to wait.
pub(crate) const THROTTLE: Duration = Duration::from_millis(150);

/// What a `crash_policy` saga will meet, decided by the scenario's seed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Order {
    /// The saga's number in the scenario.
    pub(crate) n: u64,
    /// The entity both caps count under.
    pub(crate) customer: String,
    /// `confirm` declines (permanently, before its effect): the saga compensates.
    pub(crate) decline: bool,
    /// Bit `i`: step `i` answers 503 (before the effect) on its first attempt, compensation
    /// included.
    pub(crate) flaky: u8,
    /// Bit `i`: the response of step `i`'s first action attempt is lost after the effect took
    /// place (an unknown outcome, retried with the same key).
    pub(crate) lost: u8,
    /// The partner's first answer is a 429: the integration backs off for [`THROTTLE`].
    pub(crate) throttled: bool,
    /// How long each step works, so that kills land mid-step.
    pub(crate) work_ms: u32,
}

impl Order {
    /// Order `n` of `customer`: `decline` of the orders are declined at `confirm`; a few first
    /// attempts fail before their effect or lose their response after it.
    pub(crate) fn random(n: u64, customer: String, rng: &mut Rng, decline: f64) -> Order {
        let mut bits = |odds: f64| {
            (1..=STEPS).fold(0u8, |bits, step| {
                if rng.chance(odds) {
                    bits | (1 << step)
                } else {
                    bits
                }
            })
        };
        let flaky = bits(0.06);
        let lost = bits(0.06);
        Order {
            n,
            customer,
            decline: rng.chance(decline),
            flaky,
            lost,
            throttled: rng.chance(0.04),
            work_ms: u32::try_from(rng.between(20, 120)).unwrap_or(0),
        }
    }

    fn first_attempt<I>(bits: u8, step: u32, ctx: &StepContext<I>) -> bool {
        bits & (1 << step) != 0 && ctx.attempt().0 == 1
    }
}

/// The attempts each step phase may take.
pub(crate) const ATTEMPTS: u32 = 20;

/// More generous than `crash_five`'s: besides SIGKILLs, workers here die after permits and
/// actions, and every death interrupts each attempt in flight in its process; an interrupted
/// attempt counts, and must not exhaust the policy.
fn retry() -> RetryPolicy {
    RetryPolicy::exponential(ATTEMPTS, Duration::from_millis(20))
        .with_max_delay(Duration::from_millis(400))
}

/// Steps of `crash_policy`.
const STEPS: u32 = 5;
const RESERVE: u32 = 1;
const NOTIFY: u32 = 2;
const ISSUE_CODE: u32 = 3;
const PARTNER: u32 = 4;
const CONFIRM: u32 = 5;

/// An order under caps and a rate limit, against the ledger.
pub(crate) struct Capped(pub Ledger);

/// Step `step`'s action: works, meets its planned failures, and calls the ledger (a capped step
/// with its customer).
async fn action(
    saga: Arc<Capped>,
    ctx: StepContext<Order>,
    step: u32,
) -> Result<Receipt, StepError> {
    let order = ctx.input().clone();
    work(order.work_ms).await;
    if step == CONFIRM && order.decline {
        return Err(StepError::permanent(format!(
            "confirm declined (planned for order {})",
            order.n
        )));
    }
    if step == PARTNER && order.throttled && ctx.attempt().0 == 1 {
        return Err(StepError::throttled(
            THROTTLE,
            "429 from the partner: slow down",
        ));
    }
    if Order::first_attempt(order.flaky, step, &ctx) {
        return Err(StepError::transient(
            "503 from the downstream, before any effect",
        ));
    }
    let entity = matches!(step, NOTIFY | ISSUE_CODE).then_some(order.customer.as_str());
    let receipt = saga.0.call_for(&ctx, step, None, entity).await?;
    if Order::first_attempt(order.lost, step, &ctx) {
        // The effect happened: the honest answer is "unknown", never "did not happen".
        return Err(StepError::unknown(
            "response lost after the downstream applied the effect",
        ));
    }
    Ok(Receipt { receipt })
}

/// Step `step`'s compensation: undoes the effect named by its receipt.
async fn compensation(
    saga: Arc<Capped>,
    ctx: StepContext<Order>,
    step: u32,
    receipt: Receipt,
) -> Result<(), StepError> {
    let order = ctx.input().clone();
    work(order.work_ms / 2).await;
    if Order::first_attempt(order.flaky, step, &ctx) {
        return Err(StepError::transient(
            "503 from the downstream, before any effect",
        ));
    }
    let entity = (step == ISSUE_CODE).then_some(order.customer.as_str());
    saga.0
        .call_for(&ctx, step, Some(&receipt.receipt), entity)
        .await
        .map(drop)
}

/// The customer both caps count under.
fn customer(order: &Order) -> String {
    order.customer.clone()
}

fn compensable(name: &str, step: u32) -> saga::StepBuilder<Capped, Receipt> {
    Step::new(name, move |saga, ctx| action(saga, ctx, step))
        .compensate(move |saga, ctx, receipt| compensation(saga, ctx, step, receipt))
        .retry(retry())
        .timeout(STEP_TIMEOUT)
        .compensation_retry(retry())
        .compensation_timeout(STEP_TIMEOUT)
}

fn irreversible(name: &str, step: u32) -> saga::StepBuilder<Capped, Receipt> {
    Step::new(name, move |saga, ctx| action(saga, ctx, step))
        .irreversible()
        .retry(retry())
        .timeout(STEP_TIMEOUT)
}

impl Saga for Capped {
    type Input = Order;

    fn definition() -> SagaDefinition<Self> {
        SagaDefinition::new(TYPE, 1)
            .step(compensable("reserve", RESERVE))
            .step(irreversible("notify", NOTIFY).cap("notice", 1, CAP_WINDOW, customer))
            .step(compensable("issue_code", ISSUE_CODE).cap("code", 1, CAP_WINDOW, customer))
            .step(compensable("partner", PARTNER).rate_limit(
                "partner",
                200,
                Duration::from_secs(1),
            ))
            .step(irreversible("confirm", CONFIRM))
    }
}
