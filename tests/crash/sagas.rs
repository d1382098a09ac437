//! The saga types the scenarios run. Every action and compensation that has an effect goes
//! through the ledger with its idempotency key; failures are planned from the input, so a
//! saga's fate is a function of the scenario's seed.

use std::sync::Arc;
use std::time::Duration;

use saga::{Orchestrator, RetryPolicy, Saga, SagaDefinition, Step, StepContext, StepError};
use serde::{Deserialize, Serialize};

use crate::capped::Capped;
use crate::ledger::Ledger;
use crate::rng::Rng;

/// Steps of `crash_five`: `s1`..`s4` compensable, `s5` irreversible.
pub(crate) const STEPS: u32 = 5;

/// What a `crash_five` saga will meet, decided by the scenario's seed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Plan {
    /// The saga's number in the scenario.
    pub(crate) n: u64,
    /// The step (1-based) whose action fails permanently, before its effect.
    pub(crate) fail_at: Option<u32>,
    /// The step whose compensation fails permanently (the saga then needs an operator).
    pub(crate) comp_fail_at: Option<u32>,
    /// Bit `i`: step `i` answers 503 (before the effect) on its first attempt.
    pub(crate) flaky: u8,
    /// Bit `i`: the response of step `i`'s first attempt is lost after the effect took place.
    pub(crate) lost: u8,
    /// How long each step works, so that kills land mid-step.
    pub(crate) work_ms: u32,
    /// Bit `i`: step `i`'s first attempt takes effect, then hangs past its timeout (an unknown
    /// outcome the library must settle, never record as a clean failure).
    #[serde(default)]
    pub(crate) stall: u8,
}

impl Plan {
    /// A plan for saga `n`: `fail` of the sagas fail (a step declined), a quarter of those
    /// with a compensation that fails too; some first attempts fail or lose their response.
    pub(crate) fn random(n: u64, rng: &mut Rng, fail: f64, work_ms: (u64, u64)) -> Plan {
        let fail_at = rng
            .chance(fail)
            .then(|| u32::try_from(rng.between(1, u64::from(STEPS))).unwrap_or(1));
        let comp_fail_at = match fail_at {
            Some(at) if at >= 2 && rng.chance(0.25) => {
                Some(u32::try_from(rng.between(1, u64::from(at - 1).min(4))).unwrap_or(1))
            }
            _ => None,
        };
        let mut bits = |odds: f64| {
            (1..=STEPS).fold(0u8, |bits, step| {
                if rng.chance(odds) {
                    bits | (1 << step)
                } else {
                    bits
                }
            })
        };
        let flaky = bits(0.08);
        let lost = bits(0.08);
        Plan {
            n,
            fail_at,
            comp_fail_at,
            flaky,
            lost,
            work_ms: u32::try_from(rng.between(work_ms.0, work_ms.1)).unwrap_or(0),
            stall: 0,
        }
    }

    fn first_attempt_fails<I>(bits: u8, step: u32, ctx: &StepContext<I>) -> bool {
        bits & (1 << step) != 0 && ctx.attempt().0 == 1
    }
}

/// The receipt a downstream returns; handed to the step's compensation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Receipt {
    pub(crate) receipt: String,
}

/// Generous retries: attempts interrupted by kills count, and must not exhaust the policy.
fn retry() -> RetryPolicy {
    RetryPolicy::exponential(12, Duration::from_millis(20))
        .with_max_delay(Duration::from_millis(400))
}

pub(crate) async fn work(ms: u32) {
    if ms > 0 {
        tokio::time::sleep(Duration::from_millis(u64::from(ms))).await;
    }
}

/// The timeout of each attempt of `crash_five`'s (and `crash_policy`'s) steps.
pub(crate) const STEP_TIMEOUT: Duration = Duration::from_secs(4);

/// Five steps against the ledger, with planned failures.
pub(crate) struct Crash(pub Ledger);

async fn crash_action(
    ledger: &Ledger,
    ctx: StepContext<Plan>,
    step: u32,
) -> Result<Receipt, StepError> {
    let plan = ctx.input().clone();
    work(plan.work_ms).await;
    if plan.fail_at == Some(step) {
        return Err(StepError::permanent(format!(
            "s{step} declined (planned for saga {})",
            plan.n
        )));
    }
    if Plan::first_attempt_fails(plan.flaky, step, &ctx) {
        return Err(StepError::transient(
            "503 from the downstream, before any effect",
        ));
    }
    let receipt = ledger.call(&ctx, step, None).await?;
    if Plan::first_attempt_fails(plan.lost, step, &ctx) {
        // The effect happened: the honest answer is "unknown", never "did not happen".
        return Err(StepError::unknown(
            "response lost after the downstream applied the effect",
        ));
    }
    if Plan::first_attempt_fails(plan.stall, step, &ctx) {
        tokio::time::sleep(STEP_TIMEOUT * 2).await;
    }
    Ok(Receipt { receipt })
}

async fn crash_compensation(
    ledger: &Ledger,
    ctx: StepContext<Plan>,
    step: u32,
    receipt: Receipt,
) -> Result<(), StepError> {
    let plan = ctx.input().clone();
    work(plan.work_ms / 2).await;
    if plan.comp_fail_at == Some(step) {
        return Err(StepError::permanent(format!(
            "refund of s{step} rejected (planned for saga {})",
            plan.n
        )));
    }
    if Plan::first_attempt_fails(plan.flaky, step, &ctx) {
        return Err(StepError::transient(
            "503 from the downstream, before any effect",
        ));
    }
    ledger.call(&ctx, step, Some(&receipt.receipt)).await?;
    if Plan::first_attempt_fails(plan.lost, step, &ctx) {
        return Err(StepError::unknown(
            "response lost after the downstream applied the refund",
        ));
    }
    Ok(())
}

/// Step `step` (1-based) of `crash_five` or `crash_grouped`, for saga type `S` whose value is
/// its ledger: `s1`..`s4` compensable, `s5` irreversible.
fn crash_step<S>(step: u32) -> Step<S>
where
    S: Saga<Input = Plan> + AsRef<Ledger>,
{
    let builder = Step::new(&format!("s{step}"), move |saga: Arc<S>, ctx| async move {
        crash_action(AsRef::<Ledger>::as_ref(&*saga), ctx, step).await
    })
    .retry(retry())
    .timeout(STEP_TIMEOUT);
    if step < STEPS {
        builder
            .compensate(move |saga: Arc<S>, ctx, receipt| async move {
                crash_compensation(AsRef::<Ledger>::as_ref(&*saga), ctx, step, receipt).await
            })
            .compensation_retry(retry())
            .compensation_timeout(STEP_TIMEOUT)
            .into()
    } else {
        builder.irreversible().into()
    }
}

impl AsRef<Ledger> for Crash {
    fn as_ref(&self) -> &Ledger {
        &self.0
    }
}

impl Saga for Crash {
    type Input = Plan;

    fn definition() -> SagaDefinition<Self> {
        (1..=STEPS).fold(SagaDefinition::new("crash_five", 1), |definition, step| {
            definition.step(crash_step(step))
        })
    }
}

/// The steps of `crash_grouped` that run as one parallel group.
pub(crate) const GROUPED: [u32; 3] = [2, 3, 4];

/// `crash_five`'s steps with `s2`, `s3` and `s4` as one parallel group (all three at once).
pub(crate) struct CrashGrouped(pub Ledger);

impl AsRef<Ledger> for CrashGrouped {
    fn as_ref(&self) -> &Ledger {
        &self.0
    }
}

impl Saga for CrashGrouped {
    type Input = Plan;

    fn definition() -> SagaDefinition<Self> {
        SagaDefinition::new("crash_grouped", 1)
            .step(crash_step(1))
            .parallel("middle", 3, GROUPED.map(crash_step))
            .step(crash_step(STEPS))
    }
}

/// `crash_parent`: `s1`, then `s2` and `s3` as one parallel group, then `ship`, which starts a
/// `crash_child` saga and waits for it, then `s5` (irreversible). A plan declining step 4 has
/// the child decline its `s2` (the child compensates, so the parent's step fails); declining
/// step 5 has the parent undo a completed child, then its group, then `s1`.
pub(crate) struct CrashParent(pub Ledger);

impl AsRef<Ledger> for CrashParent {
    fn as_ref(&self) -> &Ledger {
        &self.0
    }
}

/// The plan of the child `crash_parent`'s step starts: its parent's, with only a declined step
/// 4 kept (as the child's own `s2`).
pub(crate) fn child_plan(plan: &Plan) -> Plan {
    Plan {
        fail_at: plan.fail_at.filter(|at| *at == 4).map(|_| 2),
        comp_fail_at: None,
        ..plan.clone()
    }
}

impl Saga for CrashParent {
    type Input = Plan;

    fn definition() -> SagaDefinition<Self> {
        SagaDefinition::new("crash_parent", 1)
            .step(crash_step(1))
            .parallel("pair", 2, [crash_step(2), crash_step(3)])
            .step(Step::child::<CrashChild, _>(
                "ship",
                |_: &CrashParent, ctx: &StepContext<Plan>| Ok(child_plan(ctx.input())),
            ))
            .step(crash_step(STEPS))
    }
}

/// `crash_child`: `s1` and `s2`, both compensable.
pub(crate) struct CrashChild(pub Ledger);

impl AsRef<Ledger> for CrashChild {
    fn as_ref(&self) -> &Ledger {
        &self.0
    }
}

impl Saga for CrashChild {
    type Input = Plan;

    fn definition() -> SagaDefinition<Self> {
        SagaDefinition::new("crash_child", 1)
            .step(crash_step(1))
            .step(crash_step(2))
    }
}

/// One irreversible step; registered only by the process that starts it, so workers meet an
/// unknown saga type.
pub(crate) struct Ghost(pub Ledger);

impl Saga for Ghost {
    type Input = u64;

    fn definition() -> SagaDefinition<Self> {
        SagaDefinition::new("ghost", 1).step(
            Step::new(
                "haunt",
                |saga: Arc<Ghost>, ctx: StepContext<u64>| async move {
                    saga.0.call(&ctx, 1, None).await
                },
            )
            .irreversible(),
        )
    }
}

/// How a definition changed between the version the saga started on and the one the workers
/// run, without a version bump.
pub(crate) const REMOVED: u8 = 0;
pub(crate) const REORDERED: u8 = 1;
pub(crate) const RENAMED: u8 = 2;

/// Three steps `a`, `b`, `c` (`OLD`), or the same name and version with a step removed,
/// reordered or renamed (`!OLD`).
pub(crate) struct Evolving<const CHANGE: u8, const OLD: bool>(pub Ledger);

impl<const CHANGE: u8, const OLD: bool> Saga for Evolving<CHANGE, OLD> {
    type Input = u64;

    fn definition() -> SagaDefinition<Self> {
        let name = match CHANGE {
            REMOVED => "evolving_removed",
            REORDERED => "evolving_reordered",
            _ => "evolving_renamed",
        };
        let steps: &[&str] = match (OLD, CHANGE) {
            (true, _) => &["a", "b", "c"],
            (false, REMOVED) => &["a", "c"],
            (false, REORDERED) => &["a", "c", "b"],
            (false, _) => &["a", "b", "c_renamed"],
        };
        steps
            .iter()
            .zip(1u32..)
            .fold(SagaDefinition::new(name, 1), |definition, (step, index)| {
                definition.step(
                    Step::new(
                        step,
                        move |saga: Arc<Self>, ctx: StepContext<u64>| async move {
                            saga.0.call(&ctx, index, None).await
                        },
                    )
                    .irreversible(),
                )
            })
    }
}

async fn ledger_step<S: HasLedger, I>(
    saga: Arc<S>,
    ctx: StepContext<I>,
) -> Result<Receipt, StepError> {
    let receipt = saga.ledger().call(&ctx, 1, None).await?;
    Ok(Receipt { receipt })
}

async fn ledger_refund<S: HasLedger, I>(
    saga: Arc<S>,
    ctx: StepContext<I>,
    receipt: Receipt,
) -> Result<(), StepError> {
    saga.ledger().call(&ctx, 1, Some(&receipt.receipt)).await?;
    Ok(())
}

pub(crate) trait HasLedger {
    fn ledger(&self) -> &Ledger;
}

/// `s1` (compensable), then `s2` returning an output over the payload limit.
pub(crate) struct BigOutput(pub Ledger);

impl HasLedger for BigOutput {
    fn ledger(&self) -> &Ledger {
        &self.0
    }
}

impl Saga for BigOutput {
    type Input = u64;

    fn definition() -> SagaDefinition<Self> {
        SagaDefinition::new("big_output", 1)
            .step(Step::new("s1", ledger_step::<Self, u64>).compensate(ledger_refund::<Self, u64>))
            .step(
                Step::new("s2", |_: Arc<Self>, _: StepContext<u64>| async move {
                    Ok::<_, StepError>("x".repeat(2 * 1024 * 1024))
                })
                .irreversible(),
            )
    }
}

/// `s1` (compensable), then `s2`, which panics.
pub(crate) struct Panicky(pub Ledger);

impl HasLedger for Panicky {
    fn ledger(&self) -> &Ledger {
        &self.0
    }
}

async fn panics(_: Arc<Panicky>, ctx: StepContext<u64>) -> Result<(), StepError> {
    if *ctx.input() < u64::MAX {
        panic!("poison input {}: index out of bounds", ctx.input());
    }
    Ok(())
}

impl Saga for Panicky {
    type Input = u64;

    fn definition() -> SagaDefinition<Self> {
        SagaDefinition::new("panicky", 1)
            .step(Step::new("s1", ledger_step::<Self, u64>).compensate(ledger_refund::<Self, u64>))
            .step(Step::new("s2", panics).irreversible())
    }
}

/// `s1`, whose compensation hangs past its timeout, then `s2`, which fails for good.
pub(crate) struct Hangs(pub Ledger);

impl HasLedger for Hangs {
    fn ledger(&self) -> &Ledger {
        &self.0
    }
}

impl Saga for Hangs {
    type Input = u64;

    fn definition() -> SagaDefinition<Self> {
        SagaDefinition::new("hangs", 1)
            .step(
                Step::new("s1", ledger_step::<Self, u64>)
                    .compensate(|_: Arc<Self>, _: StepContext<u64>, _: Receipt| async move {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        Ok::<_, StepError>(())
                    })
                    .compensation_timeout(Duration::from_millis(300))
                    .compensation_retry(RetryPolicy::exponential(2, Duration::from_millis(50))),
            )
            .step(
                Step::new("s2", |_: Arc<Self>, _: StepContext<u64>| async move {
                    Err::<(), _>(StepError::permanent("s2 declined"))
                })
                .irreversible(),
            )
    }
}

/// One step, with an input that can be made as large as one likes.
pub(crate) struct Bulky(pub Ledger);

impl Saga for Bulky {
    type Input = String;

    fn definition() -> SagaDefinition<Self> {
        SagaDefinition::new("bulky", 1).step(
            Step::new(
                "store",
                |saga: Arc<Bulky>, ctx: StepContext<String>| async move {
                    saga.0.call(&ctx, 1, None).await
                },
            )
            .irreversible(),
        )
    }
}

/// The payment webhook `crash_signal` sagas wait for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Paid {
    pub(crate) charge: String,
}

impl saga::Signal for Paid {
    const NAME: &'static str = "paid";
}

/// `s1` (compensable), then the step `paid` waiting for the signal `Paid`, then `s3`
/// (irreversible): sagas whose signals are sent from another process while workers die.
pub(crate) struct CrashSignal(pub Ledger);

async fn signal_step(
    saga: Arc<CrashSignal>,
    ctx: StepContext<u64>,
    index: u32,
) -> Result<Receipt, StepError> {
    // Long enough that kills land mid-step.
    work(u32::try_from(ctx.input() % 7 * 15).unwrap_or(0)).await;
    let receipt = saga.0.call(&ctx, index, None).await?;
    Ok(Receipt { receipt })
}

impl Saga for CrashSignal {
    type Input = u64;

    fn definition() -> SagaDefinition<Self> {
        SagaDefinition::new("crash_signal", 1)
            .step(
                Step::new("s1", |saga, ctx| signal_step(saga, ctx, 1))
                    .compensate(
                        |saga: Arc<Self>, ctx: StepContext<u64>, receipt: Receipt| async move {
                            saga.0.call(&ctx, 1, Some(&receipt.receipt)).await.map(drop)
                        },
                    )
                    .retry(retry())
                    .timeout(STEP_TIMEOUT),
            )
            .step(Step::signal::<Paid>("paid").timeout(Duration::from_secs(600)))
            .step(
                Step::new("s3", |saga, ctx| signal_step(saga, ctx, 3))
                    .irreversible()
                    .retry(retry())
                    .timeout(STEP_TIMEOUT),
            )
    }
}

/// Which saga types a process registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Registry {
    /// `crash_five`, `crash_signal` and `crash_policy`.
    Standard,
    /// What the poison scenario's workers run: the types they know, with the changed
    /// definitions (and no `ghost`).
    PoisonWorker,
    /// What the poison scenario's starter registers: every type, with the original definitions.
    PoisonStarter,
}

pub(crate) fn register(
    orchestrator: &Orchestrator,
    registry: Registry,
    ledger: &Ledger,
) -> saga::Result<()> {
    orchestrator.register(Crash(ledger.clone()))?;
    orchestrator.register(CrashGrouped(ledger.clone()))?;
    orchestrator.register(CrashParent(ledger.clone()))?;
    orchestrator.register(CrashChild(ledger.clone()))?;
    orchestrator.register(CrashSignal(ledger.clone()))?;
    orchestrator.register(Capped(ledger.clone()))?;
    match registry {
        Registry::Standard => {}
        Registry::PoisonWorker => {
            orchestrator.register(Evolving::<REMOVED, false>(ledger.clone()))?;
            orchestrator.register(Evolving::<REORDERED, false>(ledger.clone()))?;
            orchestrator.register(Evolving::<RENAMED, false>(ledger.clone()))?;
            orchestrator.register(BigOutput(ledger.clone()))?;
            orchestrator.register(Panicky(ledger.clone()))?;
            orchestrator.register(Hangs(ledger.clone()))?;
            orchestrator.register(Bulky(ledger.clone()))?;
        }
        Registry::PoisonStarter => {
            orchestrator.register(Ghost(ledger.clone()))?;
            orchestrator.register(Evolving::<REMOVED, true>(ledger.clone()))?;
            orchestrator.register(Evolving::<REORDERED, true>(ledger.clone()))?;
            orchestrator.register(Evolving::<RENAMED, true>(ledger.clone()))?;
            orchestrator.register(BigOutput(ledger.clone()))?;
            orchestrator.register(Panicky(ledger.clone()))?;
            orchestrator.register(Hangs(ledger.clone()))?;
            orchestrator.register(Bulky(ledger.clone()))?;
        }
    }
    Ok(())
}
