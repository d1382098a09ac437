//! `#[derive(Saga)]` against the builder: a saga declared with the derive and the same saga
//! written by hand have the same step specs and, run on the same scripted failures, the same
//! histories. Also: generic sagas, a renamed facade crate, enums with methods as steps, and the
//! step-name constants.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

// The facade crate under another name, as a user who renamed the dependency has it:
// `#[saga(crate = ::renamed_saga)]` below must resolve every generated path through it.
extern crate saga as renamed_saga;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use saga::{
    Config, MemoryStore, Orchestrator, Phase, RetryPolicy, Saga, SagaDefinition, SagaStatus, Step,
    StepContext, StepError, Store,
};
use saga_macros::Saga;
use serde::{Deserialize, Serialize};

const WAIT: Duration = Duration::from_secs(30);

/// What a scripted step does on one call.
#[derive(Debug, Clone, Copy)]
enum Outcome {
    Transient,
    Permanent,
}

/// Scripted failures per step phase (calls not scripted succeed), and the calls made.
#[derive(Default)]
struct Script {
    plan: Mutex<HashMap<(String, Phase), VecDeque<Outcome>>>,
    calls: Mutex<Vec<(String, Phase, u32)>>,
}

impl Script {
    fn with(plan: &[(&str, Phase, &[Outcome])]) -> Arc<Self> {
        let script = Self::default();
        for (step, phase, outcomes) in plan {
            script
                .plan
                .lock()
                .unwrap()
                .entry(((*step).to_owned(), *phase))
                .or_default()
                .extend(outcomes.iter().copied());
        }
        Arc::new(script)
    }

    fn perform(&self, ctx: &StepContext<ProbeInput>) -> Result<(), StepError> {
        let step = ctx.step().as_str().to_owned();
        self.calls
            .lock()
            .unwrap()
            .push((step.clone(), ctx.phase(), ctx.attempt().0));
        let outcome = self
            .plan
            .lock()
            .unwrap()
            .get_mut(&(step, ctx.phase()))
            .and_then(VecDeque::pop_front);
        match outcome {
            None => Ok(()),
            Some(Outcome::Transient) => Err(StepError::transient("simulated 503")),
            Some(Outcome::Permanent) => Err(StepError::permanent("simulated permanent failure")),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ProbeInput {
    order: u64,
}

/// What the step functions need from either probe.
trait Scripted: Saga {
    fn script(&self) -> &Script;
}

async fn act<P: Scripted>(
    probe: Arc<P>,
    ctx: StepContext<ProbeInput>,
) -> Result<String, StepError> {
    probe.script().perform(&ctx)?;
    Ok(format!("{}-done-{}", ctx.step(), ctx.input().order))
}

async fn undo<P: Scripted>(
    probe: Arc<P>,
    ctx: StepContext<ProbeInput>,
    output: String,
) -> Result<(), StepError> {
    if output != format!("{}-done-{}", ctx.step(), ctx.input().order) {
        return Err(StepError::permanent(format!(
            "compensation got output `{output}`, not its action's"
        )));
    }
    probe.script().perform(&ctx)
}

/// The probe saga, declared with the derive.
#[derive(Saga)]
#[saga(name = "probe", version = 1, input = ProbeInput)]
#[step(reserve_stock, action = act, compensate = undo,
       retry(max_attempts = 3, base = "20ms", max_delay = "100ms"), timeout = "1s",
       compensation_retry(max_attempts = 2, base = "20ms", max_delay = "100ms"),
       compensation_timeout = "1s")]
#[step(charge_card, action = act, compensate = undo,
       retry(max_attempts = 3, base = "20ms", max_delay = "100ms"), timeout = "1s",
       compensation_retry(max_attempts = 2, base = "20ms", max_delay = "100ms"),
       compensation_timeout = "1s")]
#[step(send_receipt, action = act, irreversible,
       retry(max_attempts = 3, base = "20ms", max_delay = "100ms"), timeout = "1s")]
struct DerivedProbe(Arc<Script>);

impl Scripted for DerivedProbe {
    fn script(&self) -> &Script {
        &self.0
    }
}

/// The same saga, written by hand with the builder.
struct HandProbe(Arc<Script>);

impl Scripted for HandProbe {
    fn script(&self) -> &Script {
        &self.0
    }
}

impl Saga for HandProbe {
    type Input = ProbeInput;

    fn definition() -> SagaDefinition<Self> {
        let retry = RetryPolicy::exponential(3, Duration::from_millis(20))
            .with_max_delay(Duration::from_millis(100));
        let compensation_retry = RetryPolicy::exponential(2, Duration::from_millis(20))
            .with_max_delay(Duration::from_millis(100));
        let timeout = Duration::from_secs(1);
        SagaDefinition::new("probe", 1)
            .step(
                Step::new("reserve_stock", act)
                    .compensate(undo)
                    .retry(retry)
                    .timeout(timeout)
                    .compensation_retry(compensation_retry)
                    .compensation_timeout(timeout),
            )
            .step(
                Step::new("charge_card", act)
                    .compensate(undo)
                    .retry(retry)
                    .timeout(timeout)
                    .compensation_retry(compensation_retry)
                    .compensation_timeout(timeout),
            )
            .step(
                Step::new("send_receipt", act)
                    .irreversible()
                    .retry(retry)
                    .timeout(timeout),
            )
    }
}

fn orchestrator() -> Orchestrator {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    Orchestrator::new(
        store,
        Config::default()
            .concurrency(2)
            .poll_interval(Duration::from_millis(10)),
    )
}

/// Runs one saga of type `S` (made from `script`) on its own store; returns its final status,
/// its rendered history and the calls its steps received.
async fn run<S: Saga<Input = ProbeInput>>(
    make: impl FnOnce(Arc<Script>) -> S,
    plan: &[(&str, Phase, &[Outcome])],
) -> (SagaStatus, String, Vec<(String, Phase, u32)>) {
    let script = Script::with(plan);
    let orchestrator = orchestrator();
    orchestrator.register(make(script.clone())).unwrap();
    orchestrator.run();
    let id = orchestrator
        .start::<S>(&ProbeInput { order: 7 })
        .await
        .unwrap();
    let record = orchestrator.wait(id, WAIT).await.unwrap();
    let history = orchestrator.history(id).await.unwrap().render();
    orchestrator.shutdown().await;
    let calls = script.calls.lock().unwrap().clone();
    (record.status, history, calls)
}

#[test]
fn derived_and_hand_written_definitions_have_the_same_specs() {
    let derived = DerivedProbe::definition();
    let hand = HandProbe::definition();
    assert_eq!(derived.name(), hand.name());
    assert_eq!(derived.version(), hand.version());
    assert_eq!(derived.specs(), hand.specs());
    derived.validate().unwrap();
}

#[test]
fn unset_options_keep_the_builder_defaults() {
    #[derive(Saga)]
    #[saga(name = "defaults", version = 1, input = ProbeInput)]
    #[step(only, action = act, compensate = undo, retry(max_attempts = 7))]
    struct Defaults(Arc<Script>);
    impl Scripted for Defaults {
        fn script(&self) -> &Script {
            &self.0
        }
    }

    let specs = Defaults::definition().specs();
    let spec = &specs[0];
    assert_eq!(spec.retry.max_attempts, 7);
    assert_eq!(spec.retry.base, RetryPolicy::default().base);
    assert_eq!(spec.retry.max_delay, RetryPolicy::default().max_delay);
    assert_eq!(spec.timeout, saga::DEFAULT_TIMEOUT);
    assert_eq!(spec.compensation_retry, RetryPolicy::default());
    assert_eq!(spec.compensation_timeout, saga::DEFAULT_TIMEOUT);
    assert!(spec.compensable);
}

#[test]
fn step_name_constants_hold_the_names_the_orchestrator_sees() {
    let specs = DerivedProbe::definition().specs();
    let names: Vec<&str> = specs.iter().map(|spec| spec.name.as_str()).collect();
    assert_eq!(
        names,
        [
            DerivedProbe::RESERVE_STOCK,
            DerivedProbe::CHARGE_CARD,
            DerivedProbe::SEND_RECEIPT
        ]
    );
    assert_eq!(DerivedProbe::RESERVE_STOCK, "reserve_stock");
    // The constants have the saga type's visibility; a raw identifier loses its `r#`.
    assert_eq!(payments::Payments::MATCH, "match");
}

/// A saga visible outside its module.
mod payments {
    use std::sync::Arc;

    use saga::{StepContext, StepError};
    use saga_macros::Saga;

    #[derive(Saga)]
    #[saga(name = "payments", version = 1, input = u64)]
    #[step(r#match, irreversible)]
    pub(crate) struct Payments;

    async fn r#match(_: Arc<Payments>, _: StepContext<u64>) -> Result<(), StepError> {
        Ok(())
    }
}

#[test]
fn the_fingerprint_is_pinned() {
    // A change here means sagas in flight would be parked after a deploy: bump the version.
    insta::assert_snapshot!(
        "probe_fingerprint",
        DerivedProbe::definition().fingerprint()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_failure_at_the_last_step_compensates_the_same_way() {
    let plan: &[(&str, Phase, &[Outcome])] =
        &[("send_receipt", Phase::Action, &[Outcome::Permanent])];
    let derived = run(DerivedProbe, plan).await;
    let hand = run(HandProbe, plan).await;
    assert_eq!(derived, hand);
    assert_eq!(derived.0, SagaStatus::Compensated);
    assert_eq!(
        derived.1,
        "saga started  probe v1
reserve_stock  action  started  attempt=1
reserve_stock  action  completed  attempt=1
charge_card  action  started  attempt=1
charge_card  action  completed  attempt=1
send_receipt  action  started  attempt=1
send_receipt  action  failed  attempt=1  permanent: simulated permanent failure
saga compensating: step `send_receipt` failed: permanent: simulated permanent failure
charge_card  compensation  started  attempt=1
charge_card  compensation  completed  attempt=1
reserve_stock  compensation  started  attempt=1
reserve_stock  compensation  completed  attempt=1
saga compensated
"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_and_a_failed_compensation_follow_the_same_policies() {
    let plan: &[(&str, Phase, &[Outcome])] = &[
        (
            "charge_card",
            Phase::Action,
            &[Outcome::Transient, Outcome::Transient, Outcome::Transient],
        ),
        (
            "reserve_stock",
            Phase::Compensation,
            &[Outcome::Transient, Outcome::Transient],
        ),
    ];
    let derived = run(DerivedProbe, plan).await;
    let hand = run(HandProbe, plan).await;
    assert_eq!(derived, hand);
    assert_eq!(
        derived.0,
        SagaStatus::NeedsIntervention,
        "3 transient failures exhaust charge_card's 3 attempts, 2 exhaust the compensation's 2"
    );
    let attempts: Vec<u32> = derived
        .2
        .iter()
        .filter(|(step, _, _)| step == "charge_card")
        .map(|(_, _, attempt)| *attempt)
        .collect();
    assert_eq!(attempts, [1, 2, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_run_completes_the_same_way() {
    let derived = run(DerivedProbe, &[]).await;
    let hand = run(HandProbe, &[]).await;
    assert_eq!(derived, hand);
    assert_eq!(derived.0, SagaStatus::Completed);
}

/// A generic saga: the impl carries the type's generics and where clause.
#[derive(Saga)]
#[saga(name = "tally", version = 2, input = u64)]
#[step(add, action = add::<C>, compensate = subtract)]
#[step(report, irreversible, timeout = "5s")]
struct Tally<C>
where
    C: Counter + Send + Sync + 'static,
{
    counter: C,
}

trait Counter {
    fn add(&self, amount: i64) -> i64;
}

#[derive(Default)]
struct AtomicCounter(std::sync::atomic::AtomicI64);

impl Counter for AtomicCounter {
    fn add(&self, amount: i64) -> i64 {
        self.0
            .fetch_add(amount, std::sync::atomic::Ordering::SeqCst)
            + amount
    }
}

async fn add<C: Counter + Send + Sync + 'static>(
    tally: Arc<Tally<C>>,
    ctx: StepContext<u64>,
) -> Result<i64, StepError> {
    let amount = i64::try_from(*ctx.input()).map_err(StepError::permanent)?;
    Ok(tally.counter.add(amount))
}

async fn subtract<C: Counter + Send + Sync + 'static>(
    tally: Arc<Tally<C>>,
    ctx: StepContext<u64>,
    _total: i64,
) -> Result<(), StepError> {
    let amount = i64::try_from(*ctx.input()).map_err(StepError::permanent)?;
    tally.counter.add(-amount);
    Ok(())
}

async fn report<C: Counter + Send + Sync + 'static>(
    _: Arc<Tally<C>>,
    ctx: StepContext<u64>,
) -> Result<(), StepError> {
    let total: i64 = ctx.output(Tally::<C>::ADD)?;
    if total > 100 {
        return Err(StepError::permanent("total over 100"));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generic_saga_runs_and_compensates() {
    let definition = Tally::<AtomicCounter>::definition();
    assert_eq!(definition.version(), 2);
    assert_eq!(definition.specs()[1].timeout, Duration::from_secs(5));

    let orchestrator = orchestrator();
    orchestrator
        .register(Tally {
            counter: AtomicCounter::default(),
        })
        .unwrap();
    orchestrator.run();
    let small = orchestrator
        .start::<Tally<AtomicCounter>>(&40)
        .await
        .unwrap();
    assert_eq!(
        orchestrator.wait(small, WAIT).await.unwrap().status,
        SagaStatus::Completed
    );
    let large = orchestrator
        .start::<Tally<AtomicCounter>>(&70)
        .await
        .unwrap();
    assert_eq!(
        orchestrator.wait(large, WAIT).await.unwrap().status,
        SagaStatus::Compensated,
        "40 + 70 is over 100, so `report` fails and `add` is compensated"
    );
    orchestrator.shutdown().await;
}

/// A unit-only enum whose steps are its associated functions, in a renamed facade crate.
#[derive(Saga)]
#[saga(crate = ::renamed_saga, name = "refresh", version = 1, input = String)]
#[step(refresh_cache, action = Self::refresh, compensate = Self::restore)]
enum Refresh {
    Fast,
}

impl Refresh {
    async fn refresh(
        saga: Arc<Self>,
        ctx: renamed_saga::StepContext<String>,
    ) -> Result<String, renamed_saga::StepError> {
        match *saga {
            Refresh::Fast => Ok(format!("refreshed {}", ctx.input())),
        }
    }

    async fn restore(
        _: Arc<Self>,
        _: renamed_saga::StepContext<String>,
        _refreshed: String,
    ) -> Result<(), renamed_saga::StepError> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enum_in_a_renamed_crate_runs() {
    let orchestrator = orchestrator();
    orchestrator.register(Refresh::Fast).unwrap();
    orchestrator.run();
    let id = orchestrator
        .start::<Refresh>(&"users".to_owned())
        .await
        .unwrap();
    let snapshot = {
        orchestrator.wait(id, WAIT).await.unwrap();
        orchestrator.snapshot(id).await.unwrap()
    };
    assert_eq!(snapshot.record.status, SagaStatus::Completed);
    assert_eq!(
        snapshot.steps[0].output,
        Some(serde_json::json!("refreshed users"))
    );
    orchestrator.shutdown().await;
}
