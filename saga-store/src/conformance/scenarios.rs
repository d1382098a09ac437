//! The orchestrator's guarantees, end to end, on the backend under test.
//!
//! Every scenario runs a `probe` saga (reserve_stock, charge_card, send_receipt — the receipt is
//! irreversible) whose steps follow a script of outcomes and record every call in a ledger that
//! honours idempotency keys, the way a well-built downstream API does.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use saga_core::{
    Config, Error, IdempotencyKey, InterventionKind, Orchestrator, Phase, RetryPolicy, Saga,
    SagaDefinition, SagaId, SagaStatus, Step, StepContext, StepError, StepStatus, Store,
};
use serde::{Deserialize, Serialize};

/// What a scripted step does on one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Applies its effect and succeeds.
    Ok,
    /// Fails with a transient error, without effect.
    Transient,
    /// Fails with a permanent error, without effect.
    Permanent,
    /// Panics.
    Panic,
    /// Never returns.
    Hang,
    /// Applies its effect, then never returns: a crash between the effect and its checkpoint.
    ApplyThenHang,
    /// Applies its effect after a pause, then succeeds.
    Slow(Duration),
    /// Applies its effect and succeeds with this output (actions only).
    OkWith(&'static str),
    /// Applies its effect, then fails as if its answer was lost: an unknown outcome.
    ApplyThenUnknown,
    /// Fails at once as if its answer was lost (an unknown outcome), while its request is
    /// still on its way: the effect lands after this pause (before the attempt's deadline).
    UnknownThenLandsAfter(Duration),
}

/// One call of a step function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// The step.
    pub step: String,
    /// Action or compensation.
    pub phase: Phase,
    /// The attempt number the worker gave.
    pub attempt: u32,
    /// The idempotency key the worker gave.
    pub key: String,
}

/// The downstream's record of one idempotency key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Effect {
    /// Calls made with the key.
    pub calls: u32,
    /// Effects applied for the key (a downstream that honours keys applies at most one).
    pub applied: u32,
}

/// Scripted outcomes and the record of every call.
#[derive(Debug, Default)]
pub struct Script {
    plan: Mutex<HashMap<(String, Phase), VecDeque<Outcome>>>,
    calls: Mutex<Vec<Call>>,
    ledger: Mutex<HashMap<String, Effect>>,
    /// How many of the next probe calls fail (the downstream cannot be asked).
    probe_failures: Mutex<u32>,
    /// Every probe call: the key asked about.
    probes: Mutex<Vec<String>>,
    /// Requests still on their way: the key, and when its effect lands.
    in_flight: Mutex<Vec<(String, std::time::Instant)>>,
}

impl Script {
    /// A script in which every call succeeds.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Queues outcomes for the next calls of one step phase (then calls succeed).
    pub fn plan(&self, step: &str, phase: Phase, outcomes: &[Outcome]) {
        self.plan
            .lock()
            .unwrap()
            .entry((step.to_owned(), phase))
            .or_default()
            .extend(outcomes.iter().copied());
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    /// The calls of one step phase.
    pub fn calls_of(&self, step: &str, phase: Phase) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|call| call.step == step && call.phase == phase)
            .collect()
    }

    /// Lands the requests whose time has come.
    fn land(&self) {
        let now = std::time::Instant::now();
        let mut in_flight = self.in_flight.lock().unwrap();
        let mut ledger = self.ledger.lock().unwrap();
        in_flight.retain(|(key, lands)| {
            if *lands <= now {
                ledger.entry(key.clone()).or_default().applied = 1;
            }
            *lands > now
        });
    }

    /// The downstream's record for one key.
    pub fn effect(&self, key: &IdempotencyKey) -> Effect {
        self.land();
        self.ledger
            .lock()
            .unwrap()
            .get(key.as_str())
            .copied()
            .unwrap_or_default()
    }

    /// Records the effect of `key` as applied, as a downstream would (for scenarios that set
    /// up a state by hand).
    pub fn apply(&self, key: &IdempotencyKey) {
        let mut ledger = self.ledger.lock().unwrap();
        let effect = ledger.entry(key.as_str().to_owned()).or_default();
        effect.applied = 1;
    }

    /// Makes the next `count` probe calls fail.
    pub fn fail_probes(&self, count: u32) {
        *self.probe_failures.lock().unwrap() = count;
    }

    /// The keys every probe call asked about, in order.
    pub fn probes(&self) -> Vec<String> {
        self.probes.lock().unwrap().clone()
    }

    /// What the downstream says about `key`: its output when the effect applied, `None` when it
    /// did not, or an error while it cannot be asked.
    pub(crate) fn probe<I>(&self, ctx: &StepContext<I>) -> Result<Option<String>, StepError> {
        self.land();
        self.probes
            .lock()
            .unwrap()
            .push(ctx.key().as_str().to_owned());
        let mut failures = self.probe_failures.lock().unwrap();
        if *failures > 0 {
            *failures -= 1;
            return Err(StepError::transient(
                "simulated: the provider's lookup is down",
            ));
        }
        Ok((self.effect(ctx.key()).applied > 0).then(|| format!("{}-done", ctx.step())))
    }

    pub(crate) async fn perform<I>(
        &self,
        ctx: &StepContext<I>,
    ) -> Result<Option<&'static str>, StepError> {
        let outcome = self
            .plan
            .lock()
            .unwrap()
            .get_mut(&(ctx.step().as_str().to_owned(), ctx.phase()))
            .and_then(VecDeque::pop_front)
            .unwrap_or(Outcome::Ok);
        self.calls.lock().unwrap().push(Call {
            step: ctx.step().as_str().to_owned(),
            phase: ctx.phase(),
            attempt: ctx.attempt().0,
            key: ctx.key().as_str().to_owned(),
        });
        self.ledger
            .lock()
            .unwrap()
            .entry(ctx.key().as_str().to_owned())
            .or_default()
            .calls += 1;
        match outcome {
            Outcome::Ok => {
                self.apply(ctx.key());
                Ok(None)
            }
            Outcome::Transient => Err(StepError::transient("simulated 503")),
            Outcome::Permanent => Err(StepError::permanent("simulated permanent failure")),
            Outcome::Panic => panic!("simulated bug"),
            Outcome::Hang => futures_pending().await,
            Outcome::ApplyThenHang => {
                self.apply(ctx.key());
                futures_pending().await
            }
            Outcome::Slow(pause) => {
                tokio::time::sleep(pause).await;
                self.apply(ctx.key());
                Ok(None)
            }
            Outcome::OkWith(output) => {
                self.apply(ctx.key());
                Ok(Some(output))
            }
            Outcome::ApplyThenUnknown => {
                self.apply(ctx.key());
                Err(StepError::unknown("simulated: the answer was lost"))
            }
            Outcome::UnknownThenLandsAfter(pause) => {
                self.in_flight.lock().unwrap().push((
                    ctx.key().as_str().to_owned(),
                    std::time::Instant::now() + pause,
                ));
                Err(StepError::unknown(
                    "simulated: the answer was lost while the request is on its way",
                ))
            }
        }
    }
}

async fn futures_pending() -> Result<Option<&'static str>, StepError> {
    std::future::pending::<()>().await;
    Ok(None)
}

/// Input of the probe saga.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeInput {
    /// An order number.
    pub order: u64,
    /// Free text, to make inputs large.
    pub note: String,
    /// When non-zero, actions return an output of this many bytes.
    pub output_bytes: usize,
}

/// Input of order `order`, small.
pub fn input(order: u64) -> ProbeInput {
    ProbeInput {
        order,
        note: String::new(),
        output_bytes: 0,
    }
}

async fn act(probe: Arc<Probe>, ctx: StepContext<ProbeInput>) -> Result<String, StepError> {
    if let Some(output) = probe.0.perform(&ctx).await? {
        return Ok(output.to_owned());
    }
    if ctx.input().output_bytes > 0 {
        return Ok("x".repeat(ctx.input().output_bytes));
    }
    Ok(format!("{}-done", ctx.step()))
}

async fn undo(
    probe: Arc<Probe>,
    ctx: StepContext<ProbeInput>,
    output: String,
) -> Result<(), StepError> {
    if output != format!("{}-done", ctx.step()) {
        return Err(StepError::permanent(format!(
            "compensation got output `{output}`, not its action's"
        )));
    }
    probe.0.perform(&ctx).await.map(|_| ())
}

/// The probe saga: three steps driven by a [`Script`], declared with `#[derive(Saga)]`.
#[derive(saga_macros::Saga)]
#[saga(name = "probe", version = 1, input = ProbeInput, crate = ::saga_core)]
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
pub struct Probe(pub Arc<Script>);

/// The probe saga whose `charge_card` declares a probe that asks the downstream (the
/// [`Script`]'s ledger) whether a charge was made with the step's key.
#[derive(saga_macros::Saga)]
#[saga(name = "probed", version = 1, input = ProbeInput, crate = ::saga_core)]
#[step(reserve_stock, action = probed_act, compensate = probed_undo,
       retry(max_attempts = 3, base = "20ms", max_delay = "100ms"), timeout = "1s",
       compensation_retry(max_attempts = 2, base = "20ms", max_delay = "100ms"),
       compensation_timeout = "1s")]
#[step(charge_card, action = probed_act, compensate = probed_undo, probe = probed_probe,
       retry(max_attempts = 3, base = "20ms", max_delay = "100ms"), timeout = "1s",
       compensation_retry(max_attempts = 2, base = "20ms", max_delay = "100ms"),
       compensation_timeout = "1s")]
#[step(send_receipt, action = probed_act, irreversible,
       retry(max_attempts = 3, base = "20ms", max_delay = "100ms"), timeout = "1s")]
pub struct Probed(pub Arc<Script>);

async fn probed_act(saga: Arc<Probed>, ctx: StepContext<ProbeInput>) -> Result<String, StepError> {
    act(Arc::new(Probe(saga.0.clone())), ctx).await
}

async fn probed_undo(
    saga: Arc<Probed>,
    ctx: StepContext<ProbeInput>,
    output: String,
) -> Result<(), StepError> {
    undo(Arc::new(Probe(saga.0.clone())), ctx, output).await
}

async fn probed_probe(
    saga: Arc<Probed>,
    ctx: StepContext<ProbeInput>,
) -> Result<Option<String>, StepError> {
    saga.0.probe(&ctx)
}

/// The same saga as [`Probe`], written by hand with the builder: the derive must produce a
/// saga that behaves exactly like it.
pub struct HandProbe(pub Arc<Script>);

async fn hand_act(
    probe: Arc<HandProbe>,
    ctx: StepContext<ProbeInput>,
) -> Result<String, StepError> {
    act(Arc::new(Probe(probe.0.clone())), ctx).await
}

async fn hand_undo(
    probe: Arc<HandProbe>,
    ctx: StepContext<ProbeInput>,
    output: String,
) -> Result<(), StepError> {
    undo(Arc::new(Probe(probe.0.clone())), ctx, output).await
}

const STEP_TIMEOUT: Duration = Duration::from_secs(1);

fn probe_retry() -> RetryPolicy {
    RetryPolicy::exponential(3, Duration::from_millis(20))
        .with_max_delay(Duration::from_millis(100))
}

fn probe_compensation_retry() -> RetryPolicy {
    RetryPolicy::exponential(2, Duration::from_millis(20))
        .with_max_delay(Duration::from_millis(100))
}

impl Saga for HandProbe {
    type Input = ProbeInput;

    fn definition() -> SagaDefinition<Self> {
        let step = |name: &str| {
            Step::new(name, hand_act)
                .retry(probe_retry())
                .timeout(STEP_TIMEOUT)
        };
        SagaDefinition::new("probe", 1)
            .step(
                step("reserve_stock")
                    .compensate(hand_undo)
                    .compensation_retry(probe_compensation_retry())
                    .compensation_timeout(STEP_TIMEOUT),
            )
            .step(
                step("charge_card")
                    .compensate(hand_undo)
                    .compensation_retry(probe_compensation_retry())
                    .compensation_timeout(STEP_TIMEOUT),
            )
            .step(step("send_receipt").irreversible())
    }
}

/// `probe` v1 with its steps renamed without a version bump: a changed definition.
pub struct RenamedProbe(pub Arc<Script>);

impl Saga for RenamedProbe {
    type Input = ProbeInput;

    fn definition() -> SagaDefinition<Self> {
        async fn act2(
            p: Arc<RenamedProbe>,
            ctx: StepContext<ProbeInput>,
        ) -> Result<String, StepError> {
            p.0.perform(&ctx).await.map(|_| "done".to_owned())
        }
        SagaDefinition::new("probe", 1)
            .step(Step::new("reserve_inventory", act2).irreversible())
            .step(Step::new("charge_card", act2).irreversible())
    }
}

/// `probe` v1 with the same steps but another input type: stored inputs do not decode.
pub struct NumberProbe(pub Arc<Script>);

impl Saga for NumberProbe {
    type Input = u64;

    fn definition() -> SagaDefinition<Self> {
        async fn act3(p: Arc<NumberProbe>, ctx: StepContext<u64>) -> Result<String, StepError> {
            p.0.perform(&ctx).await.map(|_| "done".to_owned())
        }
        async fn undo3(
            p: Arc<NumberProbe>,
            ctx: StepContext<u64>,
            _: String,
        ) -> Result<(), StepError> {
            p.0.perform(&ctx).await.map(|_| ())
        }
        SagaDefinition::new("probe", 1)
            .with_fingerprint(Probe::definition().fingerprint())
            .step(Step::new("reserve_stock", act3).compensate(undo3))
            .step(Step::new("charge_card", act3).compensate(undo3))
            .step(Step::new("send_receipt", act3).irreversible())
    }
}

/// An orchestrator for tests: short poll interval and lease.
pub fn orchestrator<S: Store>(store: &Arc<S>, lease_ttl: Duration) -> Orchestrator {
    let store: Arc<dyn Store> = store.clone();
    Orchestrator::new(
        store,
        Config::default()
            .concurrency(4)
            .lease_ttl(lease_ttl)
            .poll_interval(Duration::from_millis(20))
            .shutdown_grace(Duration::from_secs(10)),
    )
}

const WAIT: Duration = Duration::from_secs(30);

pub(crate) async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub(crate) fn key(id: SagaId, step: &str, phase: Phase) -> IdempotencyKey {
    IdempotencyKey::for_step(id, &saga_core::StepName::new(step), phase)
}

async fn run_one<S: Store>(
    store: &Arc<S>,
    script: &Arc<Script>,
    order: u64,
) -> (Orchestrator, SagaId) {
    let orchestrator = orchestrator(store, Duration::from_secs(5));
    orchestrator.register(Probe(script.clone())).unwrap();
    orchestrator.run();
    let id = orchestrator.start::<Probe>(&input(order)).await.unwrap();
    orchestrator.wait(id, WAIT).await.unwrap();
    (orchestrator, id)
}

pub async fn saga_completes_with_full_history<S: Store>(store: Arc<S>) {
    let script = Script::new();
    let (orchestrator, id) = run_one(&store, &script, 1).await;
    let snapshot = orchestrator.snapshot(id).await.unwrap();
    assert_eq!(snapshot.record.status, SagaStatus::Completed);
    assert_eq!(
        snapshot.record.lease_owner, None,
        "a finished saga holds no lease"
    );
    assert_eq!(
        snapshot.record.next_run_at, None,
        "a finished saga is never due"
    );
    assert_eq!(snapshot.steps.len(), 3);
    for step in &snapshot.steps {
        assert_eq!(step.status, StepStatus::Completed);
        assert_eq!(
            step.idempotency_key,
            key(id, step.name.as_str(), Phase::Action)
        );
        assert_eq!(
            step.output,
            Some(serde_json::json!(format!("{}-done", step.name)))
        );
    }
    let history = orchestrator.history(id).await.unwrap();
    assert_eq!(
        history.render(),
        "saga started  probe v1
reserve_stock  action  started  attempt=1
reserve_stock  action  completed  attempt=1
charge_card  action  started  attempt=1
charge_card  action  completed  attempt=1
send_receipt  action  started  attempt=1
send_receipt  action  completed  attempt=1
saga completed
"
    );
    orchestrator.shutdown().await;
}

pub async fn permanent_failure_compensates_in_reverse_order<S: Store>(store: Arc<S>) {
    let script = Script::new();
    script.plan("send_receipt", Phase::Action, &[Outcome::Permanent]);
    let (orchestrator, id) = run_one(&store, &script, 2).await;
    assert_eq!(
        orchestrator.snapshot(id).await.unwrap().record.status,
        SagaStatus::Compensated
    );
    let order: Vec<(String, Phase)> = script
        .calls()
        .into_iter()
        .map(|call| (call.step, call.phase))
        .collect();
    assert_eq!(
        order,
        vec![
            ("reserve_stock".to_owned(), Phase::Action),
            ("charge_card".to_owned(), Phase::Action),
            ("send_receipt".to_owned(), Phase::Action),
            ("charge_card".to_owned(), Phase::Compensation),
            ("reserve_stock".to_owned(), Phase::Compensation),
        ],
        "compensations run in reverse order of the completed steps"
    );
    assert_eq!(
        orchestrator.history(id).await.unwrap().render(),
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
    orchestrator.shutdown().await;
}

pub async fn transient_failures_retry_with_backoff_up_to_max_attempts<S: Store>(store: Arc<S>) {
    let script = Script::new();
    // Saga 1: two transient failures, then success on the third and last allowed attempt.
    script.plan(
        "charge_card",
        Phase::Action,
        &[Outcome::Transient, Outcome::Transient],
    );
    let (orchestrator, recovered) = run_one(&store, &script, 3).await;
    assert_eq!(
        orchestrator
            .snapshot(recovered)
            .await
            .unwrap()
            .record
            .status,
        SagaStatus::Completed
    );
    let calls = script.calls_of("charge_card", Phase::Action);
    assert_eq!(
        calls.iter().map(|call| call.attempt).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert!(
        calls.iter().all(|call| call.key == calls[0].key),
        "every attempt gets the same key"
    );
    let history = orchestrator.history(recovered).await.unwrap();
    let retries: Vec<_> = history
        .events
        .iter()
        .filter(|event| event.kind == saga_core::EventKind::RetryScheduled)
        .collect();
    assert_eq!(retries.len(), 2, "{}", history.render());
    // Each retry started no earlier than the failure that scheduled it.
    let starts: Vec<_> = history
        .events
        .iter()
        .filter(|e| {
            e.kind == saga_core::EventKind::StepStarted
                && e.step.as_ref().is_some_and(|s| s.as_str() == "charge_card")
        })
        .map(|e| e.at)
        .collect();
    for (retry, next_start) in retries.iter().zip(starts.iter().skip(1)) {
        assert!(next_start >= &retry.at);
    }

    // Saga 2: transient failures on every attempt: gives up after max_attempts (3) and compensates.
    script.plan(
        "charge_card",
        Phase::Action,
        &[
            Outcome::Transient,
            Outcome::Transient,
            Outcome::Transient,
            Outcome::Ok,
        ],
    );
    let exhausted = orchestrator.start::<Probe>(&input(4)).await.unwrap();
    let record = orchestrator.wait(exhausted, WAIT).await.unwrap();
    assert_eq!(record.status, SagaStatus::Compensated);
    let attempts = script
        .calls_of("charge_card", Phase::Action)
        .into_iter()
        .filter(|call| call.key == key(exhausted, "charge_card", Phase::Action).as_str())
        .count();
    assert_eq!(attempts, 3, "max_attempts counts every attempt");
    let rendered = orchestrator.history(exhausted).await.unwrap().render();
    assert!(
        rendered.contains("charge_card  action  failed  attempt=3  transient: simulated 503; gave up after 3 attempt(s)"),
        "{rendered}"
    );
    orchestrator.shutdown().await;
}

pub async fn permanent_error_skips_retries<S: Store>(store: Arc<S>) {
    let script = Script::new();
    script.plan("charge_card", Phase::Action, &[Outcome::Permanent]);
    let (orchestrator, id) = run_one(&store, &script, 5).await;
    assert_eq!(
        orchestrator.snapshot(id).await.unwrap().record.status,
        SagaStatus::Compensated
    );
    assert_eq!(script.calls_of("charge_card", Phase::Action).len(), 1);
    assert_eq!(script.calls_of("send_receipt", Phase::Action).len(), 0);
    assert_eq!(
        script.calls_of("reserve_stock", Phase::Compensation).len(),
        1
    );
    assert_eq!(
        script.calls_of("charge_card", Phase::Compensation).len(),
        0,
        "a step whose action failed is not compensated"
    );
    orchestrator.shutdown().await;
}

pub async fn failed_compensation_opens_exactly_one_intervention<S: Store>(store: Arc<S>) {
    let script = Script::new();
    script.plan("send_receipt", Phase::Action, &[Outcome::Permanent]);
    script.plan(
        "charge_card",
        Phase::Compensation,
        &[Outcome::Transient, Outcome::Transient],
    );
    let (orchestrator, id) = run_one(&store, &script, 6).await;
    let snapshot = orchestrator.snapshot(id).await.unwrap();
    assert_eq!(snapshot.record.status, SagaStatus::NeedsIntervention);
    assert_eq!(
        snapshot.record.next_run_at, None,
        "a parked saga is not rescheduled"
    );
    assert_eq!(
        script.calls_of("charge_card", Phase::Compensation).len(),
        2,
        "compensation retried per its policy (2 attempts)"
    );
    assert_eq!(
        script.calls_of("reserve_stock", Phase::Compensation).len(),
        0,
        "compensation stops at the failed step"
    );
    let items: Vec<_> = orchestrator
        .interventions(true)
        .await
        .unwrap()
        .into_iter()
        .filter(|item| item.saga_id == id)
        .collect();
    assert_eq!(items.len(), 1, "exactly one intervention item");
    let item = &items[0].item;
    assert_eq!(item.kind, InterventionKind::CompensationFailed);
    assert_eq!(
        item.step.as_ref().map(|(_, name)| name.as_str()),
        Some("charge_card")
    );
    assert_eq!(item.phase, Some(Phase::Compensation));
    assert_eq!(
        item.idempotency_key,
        Some(key(id, "charge_card", Phase::Compensation))
    );
    assert_eq!(item.output, Some(serde_json::json!("charge_card-done")));
    assert_eq!(item.input, Some(serde_json::to_value(input(6)).unwrap()));
    assert!(item.error.contains("simulated 503"), "{}", item.error);
    orchestrator.shutdown().await;
}

/// Starts saga `order` on a worker with leases of `lease_ttl` that dies (is killed) after its
/// charge took effect, before `completed` is written.
async fn died_after_charging<S: Store>(
    store: &Arc<S>,
    script: &Arc<Script>,
    lease_ttl: Duration,
    order: u64,
) -> SagaId {
    script.plan("charge_card", Phase::Action, &[Outcome::ApplyThenHang]);
    let first = orchestrator(store, lease_ttl);
    first.register(Probe(script.clone())).unwrap();
    first.run();
    let id = first.start::<Probe>(&input(order)).await.unwrap();
    wait_until("charge_card runs", || {
        !script.calls_of("charge_card", Phase::Action).is_empty()
    })
    .await;
    first.kill();
    id
}

pub async fn crash_mid_step_resumes_with_same_key_and_never_reruns_completed_steps<S: Store>(
    store: Arc<S>,
) {
    let script = Script::new();
    let id = died_after_charging(&store, &script, Duration::from_millis(600), 7).await;

    let stuck = store.load(id).await.unwrap().unwrap();
    let charge = stuck
        .step(saga_core::StepIndex(1), Phase::Action)
        .expect("charge_card was recorded before it ran");
    assert_eq!(
        charge.status,
        StepStatus::InProgress,
        "durable before acting"
    );

    let second = orchestrator(&store, Duration::from_millis(600));
    second.register(Probe(script.clone())).unwrap();
    second.run();
    let record = second.wait(id, WAIT).await.unwrap();
    assert_eq!(record.status, SagaStatus::Completed);

    assert_eq!(
        script.calls_of("reserve_stock", Phase::Action).len(),
        1,
        "a completed step never runs again"
    );
    let charges = script.calls_of("charge_card", Phase::Action);
    assert_eq!(
        charges.iter().map(|call| call.attempt).collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert!(charges.iter().all(|call| call.key == charges[0].key));
    let effect = script.effect(&key(id, "charge_card", Phase::Action));
    assert_eq!(
        effect,
        super::scenarios::Effect {
            calls: 2,
            applied: 1
        }
    );
    let rendered = second.history(id).await.unwrap().render();
    assert!(rendered.contains("lease taken over"), "{rendered}");
    second.shutdown().await;
}

pub async fn start_with_key_dedups_and_conflicts<S: Store>(store: Arc<S>) {
    let script = Script::new();
    let orchestrator = orchestrator(&store, Duration::from_secs(5));
    orchestrator.register(Probe(script.clone())).unwrap();
    let key = IdempotencyKey::new("order-8");
    let first = orchestrator
        .start_with_key::<Probe>(key.clone(), &input(8))
        .await
        .unwrap();
    assert!(matches!(first, saga_core::Created::New(_)));
    let again = orchestrator
        .start_with_key::<Probe>(key.clone(), &input(8))
        .await
        .unwrap();
    assert_eq!(again, saga_core::Created::Existing(first.id()));
    match orchestrator
        .start_with_key::<Probe>(key.clone(), &input(9))
        .await
    {
        Err(Error::Conflict { existing, .. }) => assert_eq!(existing, first.id()),
        other => panic!("expected a conflict, got {other:?}"),
    }
    orchestrator.run();
    orchestrator.wait(first.id(), WAIT).await.unwrap();
    assert_eq!(script.calls_of("reserve_stock", Phase::Action).len(), 1);
    let all = orchestrator
        .list(&saga_core::SagaFilter::default())
        .await
        .unwrap();
    assert_eq!(all.len(), 1, "one key, one saga");
    orchestrator.shutdown().await;
}

async fn start_unrun<S: Store>(store: &Arc<S>, script: &Arc<Script>) -> SagaId {
    let starter = orchestrator(store, Duration::from_secs(5));
    starter.register(Probe(script.clone())).unwrap();
    starter.start::<Probe>(&input(10)).await.unwrap()
}

async fn assert_parked<S: Store>(
    store: &Arc<S>,
    orchestrator: &Orchestrator,
    id: SagaId,
    reason: &str,
) {
    let record = orchestrator.wait(id, WAIT).await.unwrap();
    assert_eq!(record.status, SagaStatus::NeedsIntervention);
    assert_eq!(record.next_run_at, None, "a parked saga is not rescheduled");
    let reason_text = record.status_reason.unwrap_or_default();
    assert!(
        reason_text.contains(reason),
        "reason `{reason_text}` lacks `{reason}`"
    );
    let items: Vec<_> = store
        .interventions(true)
        .await
        .unwrap()
        .into_iter()
        .filter(|item| item.saga_id == id)
        .collect();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].item.kind, InterventionKind::Unresumable);
    let claimed = store
        .claim(
            &saga_core::WorkerId::new("probe"),
            saga_core::after(saga_core::now(), Duration::from_secs(3600)),
            Duration::from_secs(1),
            10,
        )
        .await
        .unwrap();
    assert!(claimed.is_empty(), "a parked saga is never claimed again");
}

pub async fn changed_definition_parks_saga<S: Store>(store: Arc<S>) {
    let script = Script::new();
    let id = start_unrun(&store, &script).await;
    let changed = orchestrator(&store, Duration::from_secs(5));
    changed.register(RenamedProbe(script.clone())).unwrap();
    changed.run();
    assert_parked(&store, &changed, id, "fingerprint").await;
    assert!(
        script.calls().is_empty(),
        "no step ran on the wrong definition"
    );
    changed.shutdown().await;
}

pub async fn unknown_saga_type_parks_saga<S: Store>(store: Arc<S>) {
    let script = Script::new();
    let id = start_unrun(&store, &script).await;
    let empty = orchestrator(&store, Duration::from_secs(5));
    empty.run();
    assert_parked(&store, &empty, id, "is not registered").await;
    empty.shutdown().await;
}

pub async fn undecodable_input_parks_saga<S: Store>(store: Arc<S>) {
    let script = Script::new();
    let id = start_unrun(&store, &script).await;
    let other = orchestrator(&store, Duration::from_secs(5));
    other.register(NumberProbe(script.clone())).unwrap();
    other.run();
    assert_parked(&store, &other, id, "does not decode").await;
    assert!(script.calls().is_empty());
    other.shutdown().await;
}

pub async fn panicking_step_is_an_unknown_outcome_retried_with_its_key_and_worker_survives<
    S: Store,
>(
    store: Arc<S>,
) {
    let script = Script::new();
    script.plan("charge_card", Phase::Action, &[Outcome::Panic]);
    let (orchestrator, id) = run_one(&store, &script, 11).await;
    assert_eq!(
        orchestrator.snapshot(id).await.unwrap().record.status,
        SagaStatus::Completed,
        "a panic may come after the effect: retried with the same key, not failed"
    );
    let charges = script.calls_of("charge_card", Phase::Action);
    assert_eq!(charges.len(), 2);
    assert_eq!(charges[0].key, charges[1].key);
    let rendered = orchestrator.history(id).await.unwrap().render();
    assert!(
        rendered.contains(
            "charge_card  action  retry  attempt=1  unknown: step panicked: simulated bug"
        ),
        "{rendered}"
    );
    let next = orchestrator.start::<Probe>(&input(12)).await.unwrap();
    assert_eq!(
        orchestrator.wait(next, WAIT).await.unwrap().status,
        SagaStatus::Completed,
        "the worker survived the panic"
    );
    orchestrator.shutdown().await;
}

pub async fn hanging_step_times_out_and_is_retried<S: Store>(store: Arc<S>) {
    let script = Script::new();
    script.plan("charge_card", Phase::Action, &[Outcome::Hang]);
    let (orchestrator, id) = run_one(&store, &script, 13).await;
    assert_eq!(
        orchestrator.snapshot(id).await.unwrap().record.status,
        SagaStatus::Completed
    );
    assert_eq!(script.calls_of("charge_card", Phase::Action).len(), 2);
    let rendered = orchestrator.history(id).await.unwrap().render();
    assert!(
        rendered.contains(
            "charge_card  action  retry  attempt=1  unknown: attempt timed out after 1s; it may have taken effect"
        ),
        "{rendered}"
    );
    orchestrator.shutdown().await;
}

pub async fn oversized_payloads_are_refused<S: Store>(store: Arc<S>) {
    let script = Script::new();
    let dyn_store: Arc<dyn Store> = store.clone();
    let orchestrator = Orchestrator::new(
        dyn_store,
        Config::default()
            .max_payload_bytes(1024)
            .poll_interval(Duration::from_millis(20)),
    );
    orchestrator.register(Probe(script.clone())).unwrap();
    orchestrator.run();
    let big = ProbeInput {
        note: "x".repeat(2000),
        ..input(14)
    };
    match orchestrator.start::<Probe>(&big).await {
        Err(Error::PayloadTooLarge { size, limit, .. }) => {
            assert!(size > 2000);
            assert_eq!(limit, 1024);
        }
        other => panic!("expected PayloadTooLarge, got {other:?}"),
    }
    assert!(
        store.list(&Default::default()).await.unwrap().is_empty(),
        "nothing stored"
    );

    let big_output = ProbeInput {
        output_bytes: 4096,
        ..input(15)
    };
    let id = orchestrator.start::<Probe>(&big_output).await.unwrap();
    let record = orchestrator.wait(id, WAIT).await.unwrap();
    // The step took effect, but its output cannot be recorded: an unknown outcome for a
    // person, never a clean failure that would leave the effect uncompensated.
    assert_eq!(record.status, SagaStatus::NeedsIntervention);
    let rendered = orchestrator.history(id).await.unwrap().render();
    assert!(
        rendered.contains("over the limit of 1024 bytes"),
        "{rendered}"
    );
    let items = store.interventions(true).await.unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].item.kind, InterventionKind::UnknownOutcome);
    orchestrator.shutdown().await;
}

pub async fn graceful_shutdown_releases_leases<S: Store>(store: Arc<S>) {
    let script = Script::new();
    script.plan(
        "charge_card",
        Phase::Action,
        &[Outcome::Slow(Duration::from_millis(300))],
    );
    let first = orchestrator(&store, Duration::from_secs(60));
    first.register(Probe(script.clone())).unwrap();
    first.run();
    let id = first.start::<Probe>(&input(16)).await.unwrap();
    wait_until("charge_card starts", || {
        !script.calls_of("charge_card", Phase::Action).is_empty()
    })
    .await;
    first.shutdown().await;

    let snapshot = store.load(id).await.unwrap().unwrap();
    assert_eq!(
        snapshot
            .step(saga_core::StepIndex(1), Phase::Action)
            .map(|step| step.status),
        Some(StepStatus::Completed),
        "the running step finished and its result was recorded"
    );
    assert_eq!(snapshot.record.status, SagaStatus::Running);
    assert_eq!(snapshot.record.lease_owner, None, "the lease was released");
    assert!(
        snapshot.record.next_run_at.is_some(),
        "the saga is due at once"
    );

    // Another worker continues at once, without waiting for the 60 s lease to expire.
    let second = orchestrator(&store, Duration::from_secs(60));
    second.register(Probe(script.clone())).unwrap();
    second.run();
    let record = second.wait(id, Duration::from_secs(10)).await.unwrap();
    assert_eq!(record.status, SagaStatus::Completed);
    assert_eq!(script.calls_of("charge_card", Phase::Action).len(), 1);
    second.shutdown().await;
}

pub async fn derived_and_hand_written_sagas_record_identical_histories<S: Store>(store: Arc<S>) {
    let plan = |script: &Script| {
        script.plan(
            "send_receipt",
            Phase::Action,
            &[Outcome::Transient, Outcome::Permanent],
        );
        script.plan("charge_card", Phase::Compensation, &[Outcome::Transient]);
    };
    let specs = |specs: Vec<saga_core::StepSpec>| specs;
    assert_eq!(
        specs(Probe::definition().specs()),
        specs(HandProbe::definition().specs()),
        "the derive declares the same steps, policies and timeouts"
    );

    let hand_script = Script::new();
    plan(&hand_script);
    let hand = orchestrator(&store, Duration::from_secs(5));
    hand.register(HandProbe(hand_script.clone())).unwrap();
    hand.run();
    let hand_id = hand.start::<HandProbe>(&input(20)).await.unwrap();
    let hand_record = hand.wait(hand_id, WAIT).await.unwrap();
    let hand_history = hand.history(hand_id).await.unwrap().render();
    hand.shutdown().await;

    let derived_script = Script::new();
    plan(&derived_script);
    let derived = orchestrator(&store, Duration::from_secs(5));
    derived.register(Probe(derived_script.clone())).unwrap();
    derived.run();
    let derived_id = derived.start::<Probe>(&input(21)).await.unwrap();
    let derived_record = derived.wait(derived_id, WAIT).await.unwrap();
    let derived_history = derived.history(derived_id).await.unwrap().render();
    derived.shutdown().await;

    assert_eq!(hand_record.status, SagaStatus::Compensated);
    assert_eq!(derived_record.status, hand_record.status);
    assert_eq!(derived_history, hand_history);
    let calls = |script: &Script| {
        script
            .calls()
            .into_iter()
            .map(|call| (call.step, call.phase, call.attempt))
            .collect::<Vec<_>>()
    };
    assert_eq!(calls(&derived_script), calls(&hand_script));
}

/// Runs one probe saga whose receipt fails for good and whose `charge_card` compensation fails
/// twice: it ends in `needs_intervention`. Returns the orchestrator (running), saga and item.
async fn escalated<S: Store>(
    store: &Arc<S>,
    script: &Arc<Script>,
    order: u64,
) -> (Orchestrator, SagaId, saga_core::InterventionId) {
    script.plan("send_receipt", Phase::Action, &[Outcome::Permanent]);
    script.plan(
        "charge_card",
        Phase::Compensation,
        &[Outcome::Transient, Outcome::Transient],
    );
    let (orchestrator, id) = run_one(store, script, order).await;
    assert_eq!(
        orchestrator.snapshot(id).await.unwrap().record.status,
        SagaStatus::NeedsIntervention
    );
    let item = open_item(store, id).await;
    (orchestrator, id, item)
}

async fn open_item<S: Store>(store: &Arc<S>, id: SagaId) -> saga_core::InterventionId {
    let items: Vec<_> = store
        .interventions(true)
        .await
        .unwrap()
        .into_iter()
        .filter(|item| item.saga_id == id)
        .collect();
    assert_eq!(items.len(), 1, "one open item for saga {id}");
    items[0].item.id
}

pub async fn operator_retry_reruns_the_failed_compensation_with_the_same_key<S: Store>(
    store: Arc<S>,
) {
    let script = Script::new();
    let (orchestrator, id, item) = escalated(&store, &script, 30).await;
    let admin = orchestrator.admin();
    let status = admin
        .retry(item, "alice", "payment gateway is back")
        .await
        .unwrap();
    assert_eq!(status, SagaStatus::Compensating);
    let record = orchestrator.wait(id, WAIT).await.unwrap();
    assert_eq!(record.status, SagaStatus::Compensated);
    let refunds = script.calls_of("charge_card", Phase::Compensation);
    assert_eq!(
        refunds.iter().map(|call| call.attempt).collect::<Vec<_>>(),
        vec![1, 2, 3],
        "the operator's retry is one more attempt"
    );
    assert!(
        refunds.iter().all(|call| call.key == refunds[0].key),
        "same key"
    );
    assert_eq!(
        script.calls_of("reserve_stock", Phase::Compensation).len(),
        1
    );
    let settled = admin.intervention(item).await.unwrap();
    assert_eq!(settled.status, saga_core::InterventionStatus::Resolved);
    assert_eq!(settled.resolved_by.as_deref(), Some("alice"));
    assert_eq!(settled.resolution.as_deref(), Some("retry"));
    assert_eq!(
        settled.resolution_reason.as_deref(),
        Some("payment gateway is back")
    );
    assert!(settled.resolved_at.is_some());
    let rendered = admin.history(id).await.unwrap().render();
    assert!(
        rendered.contains("operator retry by alice: payment gateway is back"),
        "{rendered}"
    );
    assert!(rendered.ends_with("saga compensated\n"), "{rendered}");
    orchestrator.shutdown().await;
}

pub async fn operator_resolve_marks_the_compensation_done_and_continues<S: Store>(store: Arc<S>) {
    let script = Script::new();
    let (orchestrator, id, item) = escalated(&store, &script, 31).await;
    let admin = orchestrator.admin();
    admin
        .resolve(item, "bob", "refunded by hand in the gateway console")
        .await
        .unwrap();
    let record = orchestrator.wait(id, WAIT).await.unwrap();
    assert_eq!(record.status, SagaStatus::Compensated);
    assert_eq!(
        script.calls_of("charge_card", Phase::Compensation).len(),
        2,
        "a resolved compensation does not run again"
    );
    assert_eq!(
        script.calls_of("reserve_stock", Phase::Compensation).len(),
        1
    );
    let refund = admin
        .show(id)
        .await
        .unwrap()
        .step(saga_core::StepIndex(1), Phase::Compensation)
        .map(|step| step.status);
    assert_eq!(refund, Some(StepStatus::Completed));
    orchestrator.shutdown().await;
}

pub async fn operator_cancel_stops_the_saga_where_it_is<S: Store>(store: Arc<S>) {
    let script = Script::new();
    let (orchestrator, id, item) = escalated(&store, &script, 32).await;
    let admin = orchestrator.admin();
    let calls_before = script.calls().len();
    let status = admin
        .cancel(item, "carol", "customer refunded off-platform")
        .await
        .unwrap();
    assert_eq!(status, SagaStatus::Cancelled);
    let record = admin.show(id).await.unwrap().record;
    assert_eq!(record.status, SagaStatus::Cancelled);
    assert_eq!(record.next_run_at, None, "a cancelled saga is never due");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        script.calls().len(),
        calls_before,
        "nothing ran after the cancel"
    );
    assert_eq!(
        admin
            .intervention(item)
            .await
            .unwrap()
            .resolution
            .as_deref(),
        Some("cancel")
    );
    orchestrator.shutdown().await;
}

pub async fn settling_repeatedly_or_concurrently_lets_exactly_one_win<S: Store>(store: Arc<S>) {
    let script = Script::new();
    let (orchestrator, _, item) = escalated(&store, &script, 33).await;
    orchestrator.shutdown().await;
    let admin = orchestrator.admin();
    let attempts: Vec<_> = (0..6)
        .map(|n| {
            let admin = admin.clone();
            tokio::spawn(async move {
                if n % 2 == 0 {
                    admin.retry(item, "op", "try again").await
                } else {
                    admin.cancel(item, "op", "give up").await
                }
            })
        })
        .collect();
    let mut wins = 0;
    for attempt in attempts {
        match attempt.await.unwrap() {
            Ok(_) => wins += 1,
            Err(Error::InterventionSettled(settled)) => assert_eq!(settled, item),
            Err(other) => panic!("unexpected error: {other}"),
        }
    }
    assert_eq!(wins, 1, "exactly one settlement wins");
    assert!(matches!(
        admin.retry(item, "op", "again").await,
        Err(Error::InterventionSettled(_))
    ));
    let unknown = saga_core::InterventionId::new();
    assert!(matches!(
        admin.retry(unknown, "op", "why").await,
        Err(Error::InterventionNotFound(found)) if found == unknown
    ));
    assert!(matches!(
        admin.retry(item, "op", "  ").await,
        Err(Error::InvalidAction(_))
    ));
}

pub async fn batch_retry_honours_its_bound_and_reports_each_item<S: Store>(store: Arc<S>) {
    let script = Script::new();
    for order in 40..43 {
        let (orchestrator, _, _) = escalated(&store, &script, order).await;
        orchestrator.shutdown().await;
    }
    let admin = saga_core::Admin::new(store.clone());
    assert_eq!(admin.interventions(true).await.unwrap().len(), 3);
    let results = admin.retry_batch(2, "dave", "bulk retry").await.unwrap();
    assert_eq!(results.len(), 2, "at most the bound");
    for result in &results {
        assert!(
            matches!(result.outcome, Ok(SagaStatus::Compensating)),
            "{result:?}"
        );
    }
    assert_eq!(admin.interventions(true).await.unwrap().len(), 1);
}

pub async fn cancelling_a_running_saga_compensates_what_completed<S: Store>(store: Arc<S>) {
    let script = Script::new();
    script.plan(
        "charge_card",
        Phase::Action,
        &[Outcome::Slow(Duration::from_millis(300))],
    );
    let orchestrator = orchestrator(&store, Duration::from_secs(10));
    orchestrator.register(Probe(script.clone())).unwrap();
    orchestrator.run();
    let admin = orchestrator.admin();
    let id = orchestrator.start::<Probe>(&input(50)).await.unwrap();
    wait_until("charge_card starts", || {
        !script.calls_of("charge_card", Phase::Action).is_empty()
    })
    .await;
    let outcome = admin
        .cancel_saga(id, "erin", "customer called to cancel")
        .await
        .unwrap();
    assert_eq!(
        outcome,
        saga_core::CancelOutcome::Requested,
        "a worker holds it"
    );
    let record = orchestrator.wait(id, WAIT).await.unwrap();
    assert_eq!(record.status, SagaStatus::Compensated);
    assert!(
        script.calls_of("send_receipt", Phase::Action).is_empty(),
        "no step begins after the cancel"
    );
    assert_eq!(script.calls_of("charge_card", Phase::Compensation).len(), 1);
    assert_eq!(
        script.calls_of("reserve_stock", Phase::Compensation).len(),
        1
    );
    let rendered = admin.history(id).await.unwrap().render();
    assert!(
        rendered.contains("saga compensating: cancel requested by erin: customer called to cancel"),
        "{rendered}"
    );

    // Not leased (no worker has it yet): compensating at once; nothing ran, nothing to undo.
    orchestrator.shutdown().await;
    let idle = orchestrator.start::<Probe>(&input(51)).await.unwrap();
    assert_eq!(
        admin
            .cancel_saga(idle, "erin", "duplicate order")
            .await
            .unwrap(),
        saga_core::CancelOutcome::Compensating
    );
    assert_eq!(
        admin.cancel_saga(idle, "erin", "again").await.unwrap(),
        saga_core::CancelOutcome::AlreadyCompensating
    );
    assert!(matches!(
        admin.cancel_saga(id, "erin", "too late").await,
        Err(Error::InvalidAction(_))
    ));
    let resumed = self::orchestrator(&store, Duration::from_secs(10));
    resumed.register(Probe(script.clone())).unwrap();
    resumed.run();
    assert_eq!(
        resumed.wait(idle, WAIT).await.unwrap().status,
        SagaStatus::Compensated
    );
    resumed.shutdown().await;
}

pub async fn parked_saga_is_redriven_once_the_code_is_fixed<S: Store>(store: Arc<S>) {
    let script = Script::new();
    let id = start_unrun(&store, &script).await;
    let broken = orchestrator(&store, Duration::from_secs(5));
    broken.run();
    assert_eq!(
        broken.wait(id, WAIT).await.unwrap().status,
        SagaStatus::NeedsIntervention
    );
    broken.shutdown().await;
    let admin = saga_core::Admin::new(store.clone());
    let item = open_item(&store, id).await;
    assert!(
        matches!(
            admin.resolve(item, "ops", "fixed").await,
            Err(Error::InvalidAction(_))
        ),
        "nothing to mark done on a parked saga"
    );
    assert_eq!(
        admin.retry(item, "ops", "deployed the fix").await.unwrap(),
        SagaStatus::Running
    );
    let fixed = orchestrator(&store, Duration::from_secs(5));
    fixed.register(Probe(script.clone())).unwrap();
    fixed.run();
    assert_eq!(
        fixed.wait(id, WAIT).await.unwrap().status,
        SagaStatus::Completed
    );
    fixed.shutdown().await;
}

pub async fn lifecycle_hooks_fire_once_per_event<S: Store>(store: Arc<S>) {
    let script = Script::new();
    script.plan("send_receipt", Phase::Action, &[Outcome::Permanent]);
    script.plan(
        "charge_card",
        Phase::Compensation,
        &[Outcome::Transient, Outcome::Transient],
    );
    let events = Arc::new(Mutex::new(Vec::new()));
    let orchestrator = orchestrator(&store, Duration::from_secs(5));
    orchestrator.register(Probe(script.clone())).unwrap();
    let seen = events.clone();
    orchestrator.on_lifecycle(move |event| seen.lock().unwrap().push(event.clone()));
    orchestrator.on_lifecycle(|_| panic!("a broken hook must not take the worker down"));
    orchestrator.run();
    let id = orchestrator.start::<Probe>(&input(60)).await.unwrap();
    orchestrator.wait(id, WAIT).await.unwrap();
    // The hooks run right after the write that a waiter may already have seen.
    wait_until("the escalation reaches the hooks", || {
        events.lock().unwrap().iter().any(
            |event| matches!(event, saga_core::LifecycleEvent::Escalated { saga, .. } if *saga == id),
        )
    })
    .await;
    orchestrator.shutdown().await;
    let events = events.lock().unwrap().clone();
    let escalated = events
        .iter()
        .filter(|event| matches!(event, saga_core::LifecycleEvent::Escalated { saga, .. } if *saga == id))
        .count();
    let exhausted: Vec<_> = events
        .iter()
        .filter_map(|event| match event {
            saga_core::LifecycleEvent::RetriesExhausted {
                step,
                phase,
                attempt,
                ..
            } => Some((step.as_str().to_owned(), *phase, attempt.0)),
            _ => None,
        })
        .collect();
    assert_eq!(escalated, 1, "{events:?}");
    assert_eq!(
        exhausted,
        vec![("charge_card".to_owned(), Phase::Compensation, 2)],
        "{events:?}"
    );
}

pub async fn prune_removes_only_old_finished_sagas<S: Store>(store: Arc<S>) {
    let script = Script::new();
    let (orchestrator, done) = run_one(&store, &script, 70).await;
    orchestrator.shutdown().await;
    let (orchestrator, parked, item) = escalated(&store, &script, 71).await;
    orchestrator.shutdown().await;
    let waiting = orchestrator.start::<Probe>(&input(72)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let admin = saga_core::Admin::new(store.clone());
    assert_eq!(
        admin.prune(Duration::from_secs(3600), 100).await.unwrap(),
        0,
        "nothing that old"
    );
    assert_eq!(admin.prune(Duration::ZERO, 100).await.unwrap(), 1);
    assert!(matches!(
        admin.show(done).await,
        Err(Error::SagaNotFound(_))
    ));
    assert!(store.history(done).await.unwrap().is_empty());
    assert_eq!(
        admin.show(parked).await.unwrap().record.status,
        SagaStatus::NeedsIntervention
    );
    assert_eq!(
        admin.intervention(item).await.unwrap().status,
        saga_core::InterventionStatus::Open
    );
    assert_eq!(
        admin.show(waiting).await.unwrap().record.status,
        SagaStatus::Running
    );
}

/// A store whose writes commit, but whose answer to the first try of each batch is lost: the
/// worker sees `StoreUnavailable` for a write that took effect (an ambiguous commit).
pub struct LosesFirstAnswers<S> {
    inner: Arc<S>,
    seen: Mutex<Vec<Vec<saga_core::Change>>>,
}

#[async_trait::async_trait]
impl<S: Store> Store for LosesFirstAnswers<S> {
    async fn create(&self, saga: saga_core::NewSaga) -> saga_core::Result<saga_core::Created> {
        self.inner.create(saga).await
    }
    async fn claim(
        &self,
        owner: &saga_core::WorkerId,
        now: saga_core::Timestamp,
        lease_for: Duration,
        limit: u32,
    ) -> saga_core::Result<Vec<saga_core::Lease>> {
        self.inner.claim(owner, now, lease_for, limit).await
    }
    async fn heartbeat(
        &self,
        lease: &saga_core::Lease,
        expires_at: saga_core::Timestamp,
    ) -> saga_core::Result<saga_core::Lease> {
        self.inner.heartbeat(lease, expires_at).await
    }
    async fn apply(
        &self,
        lease: &saga_core::Lease,
        changes: &[saga_core::Change],
    ) -> saga_core::Result<()> {
        self.inner.apply(lease, changes).await?;
        let mut seen = self.seen.lock().unwrap();
        if seen.iter().any(|batch| batch.as_slice() == changes) {
            return Ok(());
        }
        seen.push(changes.to_vec());
        Err(Error::StoreUnavailable(
            "the answer to a committed write was lost".into(),
        ))
    }
    async fn load(&self, id: SagaId) -> saga_core::Result<Option<saga_core::SagaSnapshot>> {
        self.inner.load(id).await
    }
    async fn list(
        &self,
        filter: &saga_core::SagaFilter,
    ) -> saga_core::Result<Vec<saga_core::SagaRecord>> {
        self.inner.list(filter).await
    }
    async fn count_by_status(&self) -> saga_core::Result<Vec<(SagaStatus, u64)>> {
        self.inner.count_by_status().await
    }
    async fn overview(
        &self,
        query: &saga_core::store::OverviewQuery,
    ) -> saga_core::Result<saga_core::store::OverviewParts> {
        self.inner.overview(query).await
    }
    async fn history(&self, id: SagaId) -> saga_core::Result<Vec<saga_core::Event>> {
        self.inner.history(id).await
    }
    async fn interventions(
        &self,
        open_only: bool,
    ) -> saga_core::Result<Vec<saga_core::Intervention>> {
        self.inner.interventions(open_only).await
    }
    async fn intervention(
        &self,
        id: saga_core::InterventionId,
    ) -> saga_core::Result<Option<saga_core::Intervention>> {
        self.inner.intervention(id).await
    }
    async fn settle(&self, settlement: &saga_core::Settlement) -> saga_core::Result<SagaStatus> {
        self.inner.settle(settlement).await
    }
    async fn request_cancel(
        &self,
        id: SagaId,
        by: &str,
        reason: &str,
        now: saga_core::Timestamp,
    ) -> saga_core::Result<saga_core::CancelOutcome> {
        self.inner.request_cancel(id, by, reason, now).await
    }
    async fn stop_child(
        &self,
        child: SagaId,
        parent: &saga_core::ParentLink,
        reason: &str,
        now: saga_core::Timestamp,
    ) -> saga_core::Result<()> {
        self.inner.stop_child(child, parent, reason, now).await
    }
    async fn prune(&self, before: saga_core::Timestamp, limit: u32) -> saga_core::Result<u64> {
        self.inner.prune(before, limit).await
    }
    async fn deliver_signal(
        &self,
        delivery: &saga_core::wait::SignalDelivery,
    ) -> saga_core::Result<saga_core::Delivered> {
        self.inner.deliver_signal(delivery).await
    }

    async fn permit(
        &self,
        request: &saga_core::policy::PermitRequest,
        now: saga_core::Timestamp,
    ) -> saga_core::Result<saga_core::policy::Permit> {
        self.inner.permit(request, now).await
    }

    async fn throttle(&self, name: &str, until: saga_core::Timestamp) -> saga_core::Result<()> {
        self.inner.throttle(name, until).await
    }

    async fn pause(
        &self,
        request: &saga_core::policy::PauseRequest,
        now: saga_core::Timestamp,
    ) -> saga_core::Result<(saga_core::Pause, bool)> {
        self.inner.pause(request, now).await
    }

    async fn resume(
        &self,
        request: &saga_core::policy::PauseRequest,
        now: saga_core::Timestamp,
    ) -> saga_core::Result<Option<(saga_core::Pause, u64)>> {
        self.inner.resume(request, now).await
    }

    async fn pauses(&self, all: bool) -> saga_core::Result<Vec<saga_core::Pause>> {
        self.inner.pauses(all).await
    }
}

/// Found by the crash suite (ambiguous commits): a write that committed but whose answer was
/// lost was written again, so its transitions appeared twice in the history; and when it gave
/// the lease back, the repeat was refused as a lost lease, so its lifecycle event (an
/// escalation) reached no hook. The worker now sees that the saga already shows the write.
pub async fn ambiguous_commits_are_recorded_and_announced_once<S: Store>(store: Arc<S>) {
    let script = Script::new();
    script.plan("charge_card", Phase::Action, &[Outcome::Transient]);
    script.plan("send_receipt", Phase::Action, &[Outcome::Permanent]);
    script.plan("charge_card", Phase::Compensation, &[Outcome::Permanent]);
    let store = Arc::new(LosesFirstAnswers {
        inner: store,
        seen: Mutex::new(Vec::new()),
    });
    let escalations = Arc::new(Mutex::new(0));
    let orchestrator = orchestrator(&store, Duration::from_secs(5));
    orchestrator.register(Probe(script.clone())).unwrap();
    let seen = escalations.clone();
    orchestrator.on_lifecycle(move |event| {
        if matches!(event, saga_core::LifecycleEvent::Escalated { .. }) {
            *seen.lock().unwrap() += 1;
        }
    });
    orchestrator.run();
    let id = orchestrator.start::<Probe>(&input(80)).await.unwrap();
    let record = orchestrator.wait(id, WAIT).await.unwrap();
    assert_eq!(record.status, SagaStatus::NeedsIntervention);
    let history = orchestrator.history(id).await.unwrap().render();
    let mut lines: Vec<&str> = history.lines().collect();
    let all = lines.len();
    lines.sort_unstable();
    lines.dedup();
    assert_eq!(
        lines.len(),
        all,
        "each transition recorded once:\n{history}"
    );
    assert_eq!(
        script.calls_of("charge_card", Phase::Action).len(),
        2,
        "one retry, after the transient failure"
    );
    // The worker learns that its write committed only after its retry pause.
    wait_until("the escalation is announced", || {
        *escalations.lock().unwrap() > 0
    })
    .await;
    orchestrator.shutdown().await;
    assert_eq!(
        *escalations.lock().unwrap(),
        1,
        "the escalation is announced once"
    );
    assert_eq!(orchestrator.interventions(true).await.unwrap().len(), 1);
}

pub async fn a_worker_restarted_under_its_id_resumes_its_sagas_without_waiting_for_the_lease<
    S: Store,
>(
    store: Arc<S>,
) {
    // A lease far longer than the test may wait: only taking the leases back can finish it.
    let lease_ttl = Duration::from_secs(600);
    let worker = saga_core::WorkerId::new("checkout-0");
    let config = || {
        Config::default()
            .worker_id(worker.clone())
            .concurrency(4)
            .lease_ttl(lease_ttl)
            .poll_interval(Duration::from_millis(20))
    };
    let script = Script::new();
    script.plan("charge_card", Phase::Action, &[Outcome::ApplyThenHang]);
    let dyn_store: Arc<dyn Store> = store.clone();
    let first = Orchestrator::new(Arc::clone(&dyn_store), config());
    first.register(Probe(script.clone())).unwrap();
    first.run();
    let id = first.start::<Probe>(&input(11)).await.unwrap();
    wait_until("charge_card runs", || {
        !script.calls_of("charge_card", Phase::Action).is_empty()
    })
    .await;
    first.kill();

    // Another worker id cannot take it: the lease is live for ten minutes.
    let other = Orchestrator::new(
        Arc::clone(&dyn_store),
        Config::default()
            .concurrency(4)
            .poll_interval(Duration::from_millis(20)),
    );
    other.register(Probe(script.clone())).unwrap();
    other.run();
    tokio::time::sleep(Duration::from_millis(300)).await;
    other.shutdown().await;
    assert_eq!(
        store.load(id).await.unwrap().unwrap().record.lease_owner,
        Some(worker.clone()),
        "a live lease is not claimable by another worker"
    );

    // The same worker id, restarted, takes it back at once and finishes it.
    let second = Orchestrator::new(Arc::clone(&dyn_store), config());
    second.register(Probe(script.clone())).unwrap();
    second.run();
    let record = second.wait(id, Duration::from_secs(20)).await.unwrap();
    assert_eq!(record.status, SagaStatus::Completed);
    let charges = script.calls_of("charge_card", Phase::Action);
    assert_eq!(
        charges.iter().map(|call| call.attempt).collect::<Vec<_>>(),
        vec![1, 2],
        "the interrupted attempt is retried once, with the same key"
    );
    assert!(charges.iter().all(|call| call.key == charges[0].key));
    assert_eq!(
        script.calls_of("reserve_stock", Phase::Action).len(),
        1,
        "a completed step never runs again"
    );
    second.shutdown().await;

    // Killed a moment after it took a lease (here, by starting the saga) and restarted at
    // once: the lease its earlier run granted just before is still taken back.
    script.plan("charge_card", Phase::Action, &[Outcome::ApplyThenHang]);
    let third = Orchestrator::new(Arc::clone(&dyn_store), config());
    third.register(Probe(script.clone())).unwrap();
    third.run();
    let quick = third.start::<Probe>(&input(12)).await.unwrap();
    wait_until("charge_card runs again", || {
        script.calls_of("charge_card", Phase::Action).len() == 3
    })
    .await;
    third.kill();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let fourth = Orchestrator::new(Arc::clone(&dyn_store), config());
    fourth.register(Probe(script.clone())).unwrap();
    fourth.run();
    let record = fourth.wait(quick, Duration::from_secs(20)).await.unwrap();
    assert_eq!(record.status, SagaStatus::Completed);
    fourth.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Known or escalated: unknown outcomes, probes, cancels that cannot lose an effect.

/// A saga created by hand as a worker `ghost` would have left it: `reserve_stock` completed,
/// `charge_card` begun (attempt 1) and its effect applied downstream; the lease is returned.
async fn begun_charge<S: Store>(
    store: &Arc<S>,
    script: &Arc<Script>,
    order: u64,
) -> (SagaId, saga_core::Lease) {
    use saga_core::{Attempt, Change, NewSaga, StepIndex, StepName, WorkerId};
    let id = SagaId::new();
    let owner = WorkerId::new("ghost");
    let begin = |index: u32, name: &str| Change::BeginStep {
        index: StepIndex(index),
        name: StepName::new(name),
        phase: Phase::Action,
        attempt: Attempt::FIRST,
        key: key(id, name, Phase::Action),
    };
    let starter = orchestrator(store, Duration::from_secs(5));
    starter.register(Probe(script.clone())).unwrap();
    store
        .create(NewSaga {
            id,
            saga_type: saga_core::SagaType::new("probe"),
            version: 1,
            fingerprint: Probe::definition().fingerprint(),
            input: serde_json::to_value(input(order)).unwrap(),
            input_hash: format!("hand-{order}"),
            idempotency_key: None,
            trace_context: None,
            lease: Some((
                owner.clone(),
                saga_core::after(saga_core::now(), Duration::from_secs(60)),
            )),
            changes: vec![begin(0, "reserve_stock")],
            deadline: None,
            dedup_window: None,
            parent: None,
        })
        .await
        .unwrap();
    script.apply(&key(id, "reserve_stock", Phase::Action));
    let lease = saga_core::Lease {
        saga: id,
        owner,
        token: saga_core::FencingToken(1),
        expires_at: saga_core::after(saga_core::now(), Duration::from_secs(60)),
        taken_over_from: None,
    };
    store
        .apply(
            &lease,
            &[
                Change::CompleteStep {
                    index: StepIndex(0),
                    name: StepName::new("reserve_stock"),
                    phase: Phase::Action,
                    attempt: Attempt::FIRST,
                    output: Some(serde_json::json!("reserve_stock-done")),
                },
                begin(1, "charge_card"),
            ],
        )
        .await
        .unwrap();
    script.apply(&key(id, "charge_card", Phase::Action));
    (id, lease)
}

/// Checks that both compensable steps were undone once each, with their own keys.
fn assert_both_undone(script: &Script, id: SagaId) {
    for step in ["charge_card", "reserve_stock"] {
        let undo = script.effect(&key(id, step, Phase::Compensation));
        assert_eq!(undo.applied, 1, "{step} was compensated");
    }
    assert_eq!(
        script.calls_of("charge_card", Phase::Compensation).len(),
        1,
        "one refund"
    );
}

/// Checks that a cancelled saga began no step after the cancel: the receipt never ran.
fn assert_nothing_new_began(script: &Script) {
    assert!(
        script.calls_of("send_receipt", Phase::Action).is_empty(),
        "a cancel never starts a step that had not begun"
    );
}

pub async fn a_cancel_during_a_retry_backoff_settles_the_begun_step_then_compensates_it<
    S: Store,
>(
    store: Arc<S>,
) {
    use saga_core::{Attempt, Change, StepIndex, StepName};
    let script = Script::new();
    let (id, lease) = begun_charge(&store, &script, 60).await;
    // The charge timed out (it took effect); its retry is due shortly and the lease returned.
    let due = saga_core::after(saga_core::now(), Duration::from_millis(300));
    store
        .apply(
            &lease,
            &[
                Change::FailStep {
                    index: StepIndex(1),
                    name: StepName::new("charge_card"),
                    phase: Phase::Action,
                    attempt: Attempt::FIRST,
                    error: StepError::unknown("attempt timed out after 1s"),
                    retry_at: Some(due),
                },
                Change::Release {
                    next_run_at: Some(due),
                },
            ],
        )
        .await
        .unwrap();
    let admin = saga_core::Admin::new(store.clone());
    assert_eq!(
        admin
            .cancel_saga(id, "erin", "customer changed their mind")
            .await
            .unwrap(),
        saga_core::CancelOutcome::Compensating,
        "nobody holds the saga during the backoff"
    );
    let worker = orchestrator(&store, Duration::from_secs(5));
    worker.register(Probe(script.clone())).unwrap();
    worker.run();
    assert_eq!(
        worker.wait(id, WAIT).await.unwrap().status,
        SagaStatus::Compensated
    );
    let charges = script.calls_of("charge_card", Phase::Action);
    assert_eq!(
        charges.iter().map(|call| call.attempt).collect::<Vec<_>>(),
        vec![2],
        "the begun charge is settled by its retry, with its key"
    );
    assert_eq!(
        charges[0].key,
        key(id, "charge_card", Phase::Action).as_str()
    );
    assert_both_undone(&script, id);
    assert_nothing_new_began(&script);
    worker.shutdown().await;
}

pub async fn a_cancel_after_a_worker_died_mid_action_compensates_that_action<S: Store>(
    store: Arc<S>,
) {
    let script = Script::new();
    let id = died_after_charging(&store, &script, Duration::from_millis(400), 61).await;
    let admin = saga_core::Admin::new(store.clone());
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        // Requested while the dead worker's lease still looks live; at once once it expired.
        let outcome = admin.cancel_saga(id, "erin", "order withdrawn").await;
        match outcome {
            Ok(saga_core::CancelOutcome::Compensating) => break,
            Ok(_) => {}
            Err(err) => panic!("cancel failed: {err}"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the lease never expired"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let second = orchestrator(&store, Duration::from_millis(400));
    second.register(Probe(script.clone())).unwrap();
    second.run();
    assert_eq!(
        second.wait(id, WAIT).await.unwrap().status,
        SagaStatus::Compensated
    );
    assert_eq!(
        script.effect(&key(id, "charge_card", Phase::Action)).calls,
        2,
        "the interrupted charge was settled by a retry with its key"
    );
    assert_both_undone(&script, id);
    assert_nothing_new_began(&script);
    second.shutdown().await;
}

pub async fn re_driving_a_saga_parked_while_compensating_keeps_compensating<S: Store>(
    store: Arc<S>,
) {
    let script = Script::new();
    let (id, lease) = begun_charge(&store, &script, 62).await;
    store
        .apply(
            &lease,
            &[saga_core::Change::Release {
                next_run_at: Some(saga_core::now()),
            }],
        )
        .await
        .unwrap();
    let admin = saga_core::Admin::new(store.clone());
    assert_eq!(
        admin
            .cancel_saga(id, "erin", "fraud suspected")
            .await
            .unwrap(),
        saga_core::CancelOutcome::Compensating
    );
    // A worker that does not know the saga type parks it.
    let broken = orchestrator(&store, Duration::from_secs(5));
    broken.run();
    assert_eq!(
        broken.wait(id, WAIT).await.unwrap().status,
        SagaStatus::NeedsIntervention
    );
    broken.shutdown().await;
    let item = open_item(&store, id).await;
    let parked = admin.intervention(item).await.unwrap();
    assert_eq!(parked.item.kind, InterventionKind::Unresumable);
    assert_eq!(parked.item.parked_from, Some(SagaStatus::Compensating));
    assert_eq!(
        admin.retry(item, "ops", "deployed the fix").await.unwrap(),
        SagaStatus::Compensating,
        "a saga parked while compensating resumes compensating"
    );
    let fixed = orchestrator(&store, Duration::from_secs(5));
    fixed.register(Probe(script.clone())).unwrap();
    fixed.run();
    assert_eq!(
        fixed.wait(id, WAIT).await.unwrap().status,
        SagaStatus::Compensated
    );
    assert_both_undone(&script, id);
    assert_nothing_new_began(&script);
    fixed.shutdown().await;
}

pub async fn an_output_with_a_nul_character_is_escalated_alike_then_retried_by_an_operator<
    S: Store,
>(
    store: Arc<S>,
) {
    let script = Script::new();
    let nul = Outcome::OkWith("receipt\u{0}42");
    script.plan("charge_card", Phase::Action, &[nul, nul, nul]);
    let (orchestrator, id) = run_one(&store, &script, 63).await;
    assert_eq!(
        orchestrator.snapshot(id).await.unwrap().record.status,
        SagaStatus::NeedsIntervention,
        "an output no store can keep is an unknown outcome, the same on every backend"
    );
    let items = store.interventions(true).await.unwrap();
    assert_eq!(items.len(), 1);
    let item = &items[0];
    assert_eq!(item.item.kind, InterventionKind::UnknownOutcome);
    assert_eq!(item.item.phase, Some(Phase::Action));
    assert_eq!(
        item.item.idempotency_key,
        Some(key(id, "charge_card", Phase::Action))
    );
    assert!(
        item.item.error.contains("NUL character"),
        "{}",
        item.item.error
    );
    let charge = orchestrator
        .snapshot(id)
        .await
        .unwrap()
        .step(saga_core::StepIndex(1), Phase::Action)
        .cloned()
        .unwrap();
    assert_eq!(
        charge.status,
        StepStatus::InProgress,
        "never recorded failed"
    );
    // The step is fixed (the next call answers cleanly): the operator runs it again.
    let admin = orchestrator.admin();
    assert_eq!(
        admin
            .retry(item.item.id, "alice", "fixed the receipt encoding")
            .await
            .unwrap(),
        SagaStatus::Running
    );
    assert_eq!(
        orchestrator.wait(id, WAIT).await.unwrap().status,
        SagaStatus::Completed
    );
    let charges = script.calls_of("charge_card", Phase::Action);
    assert_eq!(
        charges.iter().map(|call| call.attempt).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
    assert!(charges.iter().all(|call| call.key == charges[0].key));
    orchestrator.shutdown().await;
}

pub async fn an_operator_resolves_an_unknown_outcome_as_not_applied_and_the_saga_compensates<
    S: Store,
>(
    store: Arc<S>,
) {
    let script = Script::new();
    script.plan(
        "charge_card",
        Phase::Action,
        &[Outcome::Hang, Outcome::Hang, Outcome::Hang],
    );
    let (orchestrator, id) = run_one(&store, &script, 64).await;
    assert_eq!(
        orchestrator.snapshot(id).await.unwrap().record.status,
        SagaStatus::NeedsIntervention,
        "three timeouts: the outcome is unknown, so a person decides"
    );
    let item = open_item(&store, id).await;
    let admin = orchestrator.admin();
    assert_eq!(
        admin
            .resolve(item, "bob", "the provider shows no charge")
            .await
            .unwrap(),
        SagaStatus::Compensating
    );
    assert_eq!(
        orchestrator.wait(id, WAIT).await.unwrap().status,
        SagaStatus::Compensated
    );
    assert!(script
        .calls_of("charge_card", Phase::Compensation)
        .is_empty());
    assert_eq!(
        script.calls_of("reserve_stock", Phase::Compensation).len(),
        1
    );
    let charge = orchestrator
        .snapshot(id)
        .await
        .unwrap()
        .step(saga_core::StepIndex(1), Phase::Action)
        .cloned()
        .unwrap();
    assert_eq!(charge.status, StepStatus::Failed);
    assert!(
        charge
            .last_error
            .unwrap_or_default()
            .contains("resolve by bob"),
        "the history of the step says who decided"
    );
    orchestrator.shutdown().await;
}

pub async fn a_step_that_panics_before_its_future_exists_is_caught_like_any_panic<S: Store>(
    store: Arc<S>,
) {
    use std::sync::atomic::{AtomicU32, Ordering};
    struct Eager(AtomicU32);
    impl Saga for Eager {
        type Input = u64;
        fn definition() -> SagaDefinition<Self> {
            fn eager(
                saga: Arc<Eager>,
                _: StepContext<u64>,
            ) -> std::future::Ready<Result<u64, StepError>> {
                assert!(
                    saga.0.fetch_add(1, Ordering::SeqCst) > 0,
                    "panics before its future exists"
                );
                std::future::ready(Ok(7))
            }
            SagaDefinition::new("eager", 1).step(
                Step::new("eager", eager)
                    .retry(probe_retry())
                    .irreversible(),
            )
        }
    }
    let orchestrator = orchestrator(&store, Duration::from_secs(5));
    orchestrator.register(Eager(AtomicU32::new(0))).unwrap();
    orchestrator.run();
    let id = orchestrator.start::<Eager>(&1).await.unwrap();
    assert_eq!(
        orchestrator.wait(id, WAIT).await.unwrap().status,
        SagaStatus::Completed
    );
    let rendered = orchestrator.history(id).await.unwrap().render();
    assert!(
        rendered.contains("eager  action  retry  attempt=1  unknown: step panicked: panics before its future exists"),
        "{rendered}"
    );
    orchestrator.shutdown().await;
}

async fn run_probed<S: Store>(
    store: &Arc<S>,
    script: &Arc<Script>,
    order: u64,
) -> (Orchestrator, SagaId) {
    let orchestrator = orchestrator(store, Duration::from_secs(5));
    orchestrator.register(Probed(script.clone())).unwrap();
    orchestrator.run();
    let id = orchestrator.start::<Probed>(&input(order)).await.unwrap();
    orchestrator.wait(id, WAIT).await.unwrap();
    (orchestrator, id)
}

pub async fn a_probe_that_finds_the_effect_completes_the_step_without_running_it_again<S: Store>(
    store: Arc<S>,
) {
    let script = Script::new();
    script.plan("charge_card", Phase::Action, &[Outcome::ApplyThenUnknown]);
    script.plan("send_receipt", Phase::Action, &[Outcome::Permanent]);
    let (orchestrator, id) = run_probed(&store, &script, 65).await;
    assert_eq!(
        orchestrator.snapshot(id).await.unwrap().record.status,
        SagaStatus::Compensated
    );
    assert_eq!(
        script.calls_of("charge_card", Phase::Action).len(),
        1,
        "the probe found the charge: it is not made again"
    );
    assert_eq!(
        script.probes(),
        vec![key(id, "charge_card", Phase::Action).as_str().to_owned()]
    );
    // Compensated like any completed step, with the output the probe found.
    assert_both_undone(&script, id);
    orchestrator.shutdown().await;
}

pub async fn a_probe_that_finds_no_effect_lets_the_step_run_again<S: Store>(store: Arc<S>) {
    let script = Script::new();
    script.plan("charge_card", Phase::Action, &[Outcome::Hang]);
    let (orchestrator, id) = run_probed(&store, &script, 66).await;
    assert_eq!(
        orchestrator.snapshot(id).await.unwrap().record.status,
        SagaStatus::Completed
    );
    let charges = script.calls_of("charge_card", Phase::Action);
    assert_eq!(
        charges.iter().map(|call| call.attempt).collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert_eq!(script.probes().len(), 1, "asked once, before running again");
    let rendered = orchestrator.history(id).await.unwrap().render();
    assert!(
        rendered.contains("the probe found that attempt 1 did not take effect"),
        "{rendered}"
    );
    orchestrator.shutdown().await;
}

pub async fn a_probe_waits_for_the_attempts_deadline_before_believing_it_found_nothing<S: Store>(
    store: Arc<S>,
) {
    let script = Script::new();
    // The last attempt loses its answer at once, while its charge is still on its way: it lands
    // 300 ms later, before the attempt's 1 s deadline. A probe asked at once would find nothing,
    // and with no attempt left the step would be recorded not applied and the saga compensated
    // around a charge that then happens.
    script.plan(
        "charge_card",
        Phase::Action,
        &[
            Outcome::Transient,
            Outcome::Transient,
            Outcome::UnknownThenLandsAfter(Duration::from_millis(300)),
        ],
    );
    let (orchestrator, id) = run_probed(&store, &script, 76).await;
    let history = orchestrator.history(id).await.unwrap().render();
    assert_eq!(
        orchestrator.snapshot(id).await.unwrap().record.status,
        SagaStatus::Completed,
        "the probe, asked after the deadline, found the charge: {history}"
    );
    assert_eq!(
        script.calls_of("charge_card", Phase::Action).len(),
        3,
        "the charge is not made a fourth time"
    );
    assert!(
        !script.probes().is_empty(),
        "the probe was asked: {history}"
    );
    orchestrator.shutdown().await;
}

pub async fn a_probe_that_cannot_answer_escalates_the_unknown_outcome<S: Store>(store: Arc<S>) {
    let script = Script::new();
    script.plan("charge_card", Phase::Action, &[Outcome::ApplyThenUnknown]);
    script.fail_probes(u32::MAX);
    let (orchestrator, id) = run_probed(&store, &script, 67).await;
    assert_eq!(
        orchestrator.snapshot(id).await.unwrap().record.status,
        SagaStatus::NeedsIntervention
    );
    assert_eq!(
        script.probes().len(),
        3,
        "the probe is retried per the step's policy (3 attempts)"
    );
    let items = store.interventions(true).await.unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].item.kind, InterventionKind::UnknownOutcome);
    assert!(
        items[0].item.error.contains("the probe could not tell"),
        "{}",
        items[0].item.error
    );
    assert_eq!(script.calls_of("charge_card", Phase::Action).len(), 1);
    // The lookup is back: the operator's retry asks again and finds the charge.
    script.fail_probes(0);
    orchestrator
        .admin()
        .retry(items[0].item.id, "alice", "lookup restored")
        .await
        .unwrap();
    assert_eq!(
        orchestrator.wait(id, WAIT).await.unwrap().status,
        SagaStatus::Completed
    );
    assert_eq!(script.calls_of("charge_card", Phase::Action).len(), 1);
    orchestrator.shutdown().await;
}

/// An orchestrator whose process clock is `minutes` off (ahead when positive).
fn skewed<S: Store>(store: &Arc<S>, lease_ttl: Duration, minutes: i64) -> Orchestrator {
    let store: Arc<dyn Store> = store.clone();
    Orchestrator::new(
        store,
        Config::default()
            .concurrency(4)
            .lease_ttl(lease_ttl)
            .poll_interval(Duration::from_millis(20))
            .shutdown_grace(Duration::from_secs(10))
            .simulate_clock_skew(chrono::Duration::minutes(minutes)),
    )
}

pub async fn a_worker_whose_clock_runs_ahead_takes_over_no_live_lease<S: Store>(store: Arc<S>) {
    let script = Script::new();
    // Longer than the lease (kept alive by heartbeats), shorter than the step's timeout.
    script.plan(
        "charge_card",
        Phase::Action,
        &[Outcome::Slow(Duration::from_millis(800))],
    );
    let holder = orchestrator(&store, Duration::from_millis(300));
    holder.register(Probe(script.clone())).unwrap();
    holder.run();
    let id = holder.start::<Probe>(&input(70)).await.unwrap();
    // Ten minutes ahead: by its own clock every lease has long expired.
    let rival = skewed(&store, Duration::from_millis(300), 10);
    rival.register(Probe(script.clone())).unwrap();
    rival.run();
    assert_eq!(
        holder.wait(id, WAIT).await.unwrap().status,
        SagaStatus::Completed
    );
    let history = store.history(id).await.unwrap();
    assert!(
        !history
            .iter()
            .any(|event| event.kind == saga_core::EventKind::LeaseTakenOver),
        "a live lease was taken over: {}",
        holder.history(id).await.unwrap().render()
    );
    assert_eq!(script.calls_of("charge_card", Phase::Action).len(), 1);
    rival.shutdown().await;
    holder.shutdown().await;
}

pub async fn a_retry_scheduled_by_a_worker_whose_clock_runs_ahead_is_not_delayed<S: Store>(
    store: Arc<S>,
) {
    let script = Script::new();
    script.plan("charge_card", Phase::Action, &[Outcome::Transient]);
    let ahead = skewed(&store, Duration::from_secs(1), 10);
    ahead.register(Probe(script.clone())).unwrap();
    ahead.run();
    let id = ahead.start::<Probe>(&input(71)).await.unwrap();
    wait_until("charge_card fails once", || {
        !script.calls_of("charge_card", Phase::Action).is_empty()
    })
    .await;
    // It dies after the failed attempt: its lease or the retry it scheduled is all that is left.
    ahead.kill();
    let on_time = orchestrator(&store, Duration::from_secs(1));
    on_time.register(Probe(script.clone())).unwrap();
    on_time.run();
    assert_eq!(
        on_time.wait(id, WAIT).await.unwrap().status,
        SagaStatus::Completed,
        "due times and leases are on the store's clock, not ten minutes out"
    );
    on_time.shutdown().await;
}

pub async fn values_with_nul_characters_are_refused_or_cleaned_alike<S: Store>(store: Arc<S>) {
    let script = Script::new();
    let (orchestrator, id, item) = escalated(&store, &script, 72).await;
    let nul = ProbeInput {
        note: "gift\u{0}wrap".into(),
        ..input(73)
    };
    match orchestrator.start::<Probe>(&nul).await {
        Err(Error::Unstorable { what, reason }) => {
            assert!(what.contains("input"), "{what}");
            assert!(reason.contains("NUL"), "{reason}");
        }
        other => panic!("expected Unstorable, got {other:?}"),
    }
    assert_eq!(
        store.list(&Default::default()).await.unwrap().len(),
        1,
        "nothing stored for the refused input"
    );
    // An operator's words with a NUL in them (a paste gone wrong) are kept, cleaned.
    let admin = orchestrator.admin();
    admin
        .resolve(item, "ali\u{0}ce", "refunded\u{0} by hand")
        .await
        .unwrap();
    let settled = admin.intervention(item).await.unwrap();
    assert_eq!(settled.resolved_by.as_deref(), Some("ali\u{FFFD}ce"));
    assert_eq!(
        settled.resolution_reason.as_deref(),
        Some("refunded\u{FFFD} by hand")
    );
    let rendered = admin.history(id).await.unwrap().render();
    assert!(
        rendered.contains("operator resolve by ali\u{FFFD}ce: refunded\u{FFFD} by hand"),
        "{rendered}"
    );
    orchestrator.shutdown().await;
    // A 50 MB reason is kept cut, with a marker saying how much was cut.
    let (orchestrator, _, item) = escalated(&store, &Script::new(), 74).await;
    let huge = "x".repeat(50 * 1024 * 1024);
    orchestrator
        .admin()
        .resolve(item, "bob", &huge)
        .await
        .unwrap();
    let settled = orchestrator.admin().intervention(item).await.unwrap();
    let kept = settled.resolution_reason.unwrap_or_default();
    assert!(kept.len() < 4 * 1024, "{} bytes kept", kept.len());
    assert!(
        kept.ends_with("more bytes cut]"),
        "{}",
        &kept[kept.len() - 40..]
    );
    orchestrator.shutdown().await;
}

pub async fn a_cancel_requested_before_an_escalation_holds_when_the_operator_retries<S: Store>(
    store: Arc<S>,
) {
    let script = Script::new();
    script.plan(
        "charge_card",
        Phase::Action,
        &[Outcome::Hang, Outcome::Hang, Outcome::Hang],
    );
    let orchestrator = orchestrator(&store, Duration::from_secs(5));
    orchestrator.register(Probe(script.clone())).unwrap();
    orchestrator.run();
    let admin = orchestrator.admin();
    let id = orchestrator.start::<Probe>(&input(75)).await.unwrap();
    // The cancel arrives during the last attempt, which then times out: the outcome is
    // unknown, no attempt is left, and the saga is escalated before it could act on the cancel.
    wait_until("the last charge attempt runs", || {
        script.calls_of("charge_card", Phase::Action).len() == 3
    })
    .await;
    assert_eq!(
        admin
            .cancel_saga(id, "erin", "customer withdrew")
            .await
            .unwrap(),
        saga_core::CancelOutcome::Requested
    );
    assert_eq!(
        orchestrator.wait(id, WAIT).await.unwrap().status,
        SagaStatus::NeedsIntervention
    );
    let item = open_item(&store, id).await;
    // The operator runs the charge again with its key: the cancel still holds, so what took
    // effect is compensated and no further step begins.
    admin
        .retry(item, "alice", "provider is back")
        .await
        .unwrap();
    assert_eq!(
        orchestrator.wait(id, WAIT).await.unwrap().status,
        SagaStatus::Compensated,
        "{}",
        admin.history(id).await.unwrap().render()
    );
    assert_nothing_new_began(&script);
    assert_both_undone(&script, id);
    orchestrator.shutdown().await;
}
