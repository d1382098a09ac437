//! Parallel groups, end to end on the backend under test. A `trip` checks a budget, books a
//! flight, a hotel and a car in one group, then charges; its steps follow a [`Script`] and log
//! when each call starts and ends, so that the scenarios can tell what ran at the same time.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use saga_core::{
    Phase, RetryPolicy, Saga, SagaDefinition, SagaStatus, Step, StepContext, StepError, Store,
};

use super::scenarios::{input, key, orchestrator, wait_until, Outcome, ProbeInput, Script};

const WAIT: Duration = Duration::from_secs(30);

/// When each call of a step phase started and ended, in order.
#[derive(Debug, Default)]
pub struct Gauge {
    log: Mutex<Vec<(String, Phase, bool)>>,
}

/// Logs the end of a call when dropped (a call that panics or is cancelled ends too).
struct Running<'g> {
    gauge: &'g Gauge,
    step: String,
    phase: Phase,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.gauge
            .log
            .lock()
            .unwrap()
            .push((self.step.clone(), self.phase, false));
    }
}

impl Gauge {
    /// A new, empty log.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn enter(&self, step: &str, phase: Phase) -> Running<'_> {
        self.log
            .lock()
            .unwrap()
            .push((step.to_owned(), phase, true));
        Running {
            gauge: self,
            step: step.to_owned(),
            phase,
        }
    }

    /// The most calls of `steps` in `phase` that ran at the same time.
    pub fn most_at_once(&self, steps: &[&str], phase: Phase) -> usize {
        let (mut now, mut most) = (0_usize, 0_usize);
        for (step, at, start) in self.log.lock().unwrap().iter() {
            if *at != phase || !steps.contains(&step.as_str()) {
                continue;
            }
            if *start {
                now += 1;
                most = most.max(now);
            } else {
                now = now.saturating_sub(1);
            }
        }
        most
    }

    /// The position in the log of the first start of `step` in `phase`.
    fn first_start(&self, step: &str, phase: Phase) -> Option<usize> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .position(|(s, p, start)| s == step && *p == phase && *start)
    }

    /// The position in the log of the last end of `step` in `phase`.
    fn last_end(&self, step: &str, phase: Phase) -> Option<usize> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .rposition(|(s, p, start)| s == step && *p == phase && !*start)
    }

    /// Whether every call of each of `before` in `phase` ended before `after` first started in
    /// `after_phase`.
    pub fn ended_before(
        &self,
        before: &[&str],
        phase: Phase,
        after: &str,
        after_phase: Phase,
    ) -> bool {
        let Some(start) = self.first_start(after, after_phase) else {
            return false;
        };
        before
            .iter()
            .all(|step| self.last_end(step, phase).is_some_and(|end| end < start))
    }
}

/// The group's steps.
const GROUP: [&str; 3] = ["flight", "hotel", "car"];

async fn trip_act(trip: Arc<Trip>, ctx: StepContext<ProbeInput>) -> Result<String, StepError> {
    let _running = trip.1.enter(ctx.step().as_str(), ctx.phase());
    trip.0.perform(&ctx).await?;
    Ok(format!("{}-done", ctx.step()))
}

async fn trip_undo(
    trip: Arc<Trip>,
    ctx: StepContext<ProbeInput>,
    output: String,
) -> Result<(), StepError> {
    if output != format!("{}-done", ctx.step()) {
        return Err(StepError::permanent(format!(
            "compensation got output `{output}`, not its action's"
        )));
    }
    let _running = trip.1.enter(ctx.step().as_str(), ctx.phase());
    trip.0.perform(&ctx).await.map(|_| ())
}

async fn trip_probe(
    trip: Arc<Trip>,
    ctx: StepContext<ProbeInput>,
) -> Result<Option<String>, StepError> {
    trip.0.probe(&ctx)
}

/// The trip, declared with `#[derive(Saga)]`: its three bookings run at once.
#[derive(saga_macros::Saga)]
#[saga(name = "trip", version = 1, input = ProbeInput, crate = ::saga_core)]
#[group(book, limit = 3)]
#[step(check_budget, action = trip_act, compensate = trip_undo,
       retry(max_attempts = 3, base = "20ms", max_delay = "100ms"), timeout = "2s",
       compensation_retry(max_attempts = 2, base = "20ms", max_delay = "100ms"))]
#[step(flight, action = trip_act, compensate = trip_undo, group = book,
       retry(max_attempts = 3, base = "20ms", max_delay = "100ms"), timeout = "2s",
       compensation_retry(max_attempts = 2, base = "20ms", max_delay = "100ms"))]
#[step(hotel, action = trip_act, compensate = trip_undo, group = book,
       retry(max_attempts = 3, base = "20ms", max_delay = "100ms"), timeout = "2s",
       compensation_retry(max_attempts = 2, base = "20ms", max_delay = "100ms"))]
#[step(car, action = trip_act, compensate = trip_undo, probe = trip_probe, group = book,
       retry(max_attempts = 3, base = "20ms", max_delay = "100ms"), timeout = "2s",
       compensation_retry(max_attempts = 2, base = "20ms", max_delay = "100ms"))]
#[step(charge, action = trip_act, compensate = trip_undo,
       retry(max_attempts = 3, base = "20ms", max_delay = "100ms"), timeout = "2s")]
pub struct Trip(pub Arc<Script>, pub Arc<Gauge>);

/// The same trip written with the builder, at most two bookings at once.
pub struct TwoAtATime(pub Arc<Script>, pub Arc<Gauge>);

async fn two_act(trip: Arc<TwoAtATime>, ctx: StepContext<ProbeInput>) -> Result<String, StepError> {
    trip_act(Arc::new(Trip(trip.0.clone(), trip.1.clone())), ctx).await
}

async fn two_undo(
    trip: Arc<TwoAtATime>,
    ctx: StepContext<ProbeInput>,
    output: String,
) -> Result<(), StepError> {
    trip_undo(Arc::new(Trip(trip.0.clone(), trip.1.clone())), ctx, output).await
}

impl Saga for TwoAtATime {
    type Input = ProbeInput;

    fn definition() -> SagaDefinition<Self> {
        let retry = RetryPolicy::exponential(3, Duration::from_millis(20))
            .with_max_delay(Duration::from_millis(100));
        let step = |name: &str| {
            Step::new(name, two_act)
                .retry(retry)
                .timeout(Duration::from_secs(2))
                .compensate(two_undo)
        };
        SagaDefinition::new("trip_two_at_a_time", 1)
            .step(step("check_budget"))
            .parallel("book", 2, GROUP.iter().map(|name| step(name).into()))
            .step(step("charge"))
    }
}

/// A running orchestrator for the scenarios, with both trips registered on one script and log.
fn running<S: Store>(
    store: &Arc<S>,
    script: &Arc<Script>,
    gauge: &Arc<Gauge>,
) -> saga_core::Orchestrator {
    let orchestrator = orchestrator(store, Duration::from_secs(10));
    orchestrator
        .register(Trip(script.clone(), gauge.clone()))
        .unwrap();
    orchestrator
        .register(TwoAtATime(script.clone(), gauge.clone()))
        .unwrap();
    orchestrator.run();
    orchestrator
}

fn slow(ms: u64) -> Outcome {
    Outcome::Slow(Duration::from_millis(ms))
}

pub async fn a_group_runs_its_steps_at_once_within_its_limit_and_completes_when_all_do<S: Store>(
    store: Arc<S>,
) {
    let (script, gauge) = (Script::new(), Gauge::new());
    for step in GROUP {
        script.plan(step, Phase::Action, &[slow(150)]);
    }
    let orchestrator = running(&store, &script, &gauge);
    let id = orchestrator.start::<Trip>(&input(300)).await.unwrap();
    let record = orchestrator.wait(id, WAIT).await.unwrap();
    assert_eq!(record.status, SagaStatus::Completed);
    assert_eq!(
        gauge.most_at_once(&GROUP, Phase::Action),
        3,
        "the three bookings ran at the same time"
    );
    assert!(
        gauge.ended_before(&GROUP, Phase::Action, "charge", Phase::Action),
        "charge began only after every booking ended"
    );
    assert!(
        gauge.ended_before(&["check_budget"], Phase::Action, "flight", Phase::Action),
        "the group began after the step before it"
    );
    for step in ["check_budget", "flight", "hotel", "car", "charge"] {
        let effect = script.effect(&key(id, step, Phase::Action));
        assert_eq!(
            (effect.calls, effect.applied),
            (1, 1),
            "{step}: once, with its key"
        );
    }
    let snapshot = store.load(id).await.unwrap().unwrap();
    for step in GROUP {
        let record = snapshot
            .steps
            .iter()
            .find(|record| record.name.as_str() == step && record.phase == Phase::Action)
            .unwrap();
        assert_eq!(record.status, saga_core::StepStatus::Completed, "{step}");
        assert!(
            record.started_at.is_some() && record.finished_at.is_some(),
            "{step}"
        );
    }

    // With a limit of two, never three at once; all still complete.
    let limited = Gauge::new();
    orchestrator.shutdown().await;
    let orchestrator_two = running(&store, &script, &limited);
    for step in GROUP {
        script.plan(step, Phase::Action, &[slow(150)]);
    }
    let two = orchestrator_two
        .start::<TwoAtATime>(&input(301))
        .await
        .unwrap();
    let record = orchestrator_two.wait(two, WAIT).await.unwrap();
    assert_eq!(record.status, SagaStatus::Completed);
    assert_eq!(
        limited.most_at_once(&GROUP, Phase::Action),
        2,
        "at most the limit at once, and that many"
    );
    for step in GROUP {
        assert_eq!(script.effect(&key(two, step, Phase::Action)).applied, 1);
    }
    orchestrator_two.shutdown().await;
}

pub async fn a_failed_group_step_stops_the_group_and_its_completed_steps_are_undone_at_once_before_the_earlier_ones<
    S: Store,
>(
    store: Arc<S>,
) {
    let (script, gauge) = (Script::new(), Gauge::new());
    script.plan("flight", Phase::Action, &[slow(300)]);
    script.plan("hotel", Phase::Action, &[Outcome::Permanent]);
    script.plan("car", Phase::Action, &[slow(300)]);
    // The compensations take a while, so that running them one after the other would show.
    script.plan("flight", Phase::Compensation, &[slow(200)]);
    script.plan("car", Phase::Compensation, &[slow(200)]);
    let orchestrator = running(&store, &script, &gauge);
    let id = orchestrator.start::<Trip>(&input(310)).await.unwrap();
    let record = orchestrator.wait(id, WAIT).await.unwrap();
    assert_eq!(record.status, SagaStatus::Compensated);
    let calls = |step: &str, phase| script.calls_of(step, phase).len();
    assert_eq!(
        calls("hotel", Phase::Action),
        1,
        "a permanent failure is not retried"
    );
    assert_eq!(
        calls("hotel", Phase::Compensation),
        0,
        "the failed booking has nothing to undo"
    );
    assert!(
        script.calls_of("charge", Phase::Action).is_empty(),
        "nothing after the group"
    );
    for step in ["flight", "car"] {
        assert_eq!(
            calls(step, Phase::Action),
            1,
            "{step}: its attempt in flight ended"
        );
        assert_eq!(calls(step, Phase::Compensation), 1, "{step}: undone once");
        let undo = script.effect(&key(id, step, Phase::Compensation));
        assert_eq!(undo.applied, 1, "{step}");
    }
    assert_eq!(
        gauge.most_at_once(&["flight", "car"], Phase::Compensation),
        2,
        "the group's completed steps were undone at the same time"
    );
    assert!(
        gauge.ended_before(
            &["flight", "car"],
            Phase::Compensation,
            "check_budget",
            Phase::Compensation
        ),
        "the step before the group is undone after the group"
    );
    let history = orchestrator.history(id).await.unwrap().render();
    assert!(history.contains("hotel"), "{history}");
    orchestrator.shutdown().await;
}

pub async fn a_group_step_whose_outcome_is_unknown_is_settled_then_compensated_with_the_others<
    S: Store,
>(
    store: Arc<S>,
) {
    let (script, gauge) = (Script::new(), Gauge::new());
    script.plan("flight", Phase::Action, &[slow(200)]);
    // The car was booked, but its answer was lost; the hotel fails for good meanwhile.
    script.plan("car", Phase::Action, &[Outcome::ApplyThenUnknown]);
    script.plan("hotel", Phase::Action, &[Outcome::Permanent]);
    let orchestrator = running(&store, &script, &gauge);
    let id = orchestrator.start::<Trip>(&input(320)).await.unwrap();
    let record = orchestrator.wait(id, WAIT).await.unwrap();
    assert_eq!(
        record.status,
        SagaStatus::Compensated,
        "{}",
        orchestrator.history(id).await.unwrap().render()
    );
    let car = key(id, "car", Phase::Action);
    assert_eq!(script.effect(&car).applied, 1, "the car was booked once");
    assert!(
        script.probes().contains(&car.as_str().to_owned()),
        "the car's probe was asked with its key"
    );
    assert_eq!(
        script.calls_of("car", Phase::Compensation).len(),
        1,
        "the booking the probe found is undone"
    );
    assert_eq!(script.calls_of("flight", Phase::Compensation).len(), 1);
    assert_eq!(
        script.calls_of("check_budget", Phase::Compensation).len(),
        1
    );
    assert!(orchestrator
        .admin()
        .interventions(true)
        .await
        .unwrap()
        .is_empty());
    orchestrator.shutdown().await;
}

pub async fn a_cancel_while_a_group_runs_begins_none_of_its_waiting_steps<S: Store>(store: Arc<S>) {
    let (script, gauge) = (Script::new(), Gauge::new());
    script.plan("flight", Phase::Action, &[slow(400)]);
    script.plan("hotel", Phase::Action, &[slow(400)]);
    let orchestrator = running(&store, &script, &gauge);
    let admin = orchestrator.admin();
    let id = orchestrator.start::<TwoAtATime>(&input(330)).await.unwrap();
    wait_until("two bookings run", || {
        !script.calls_of("flight", Phase::Action).is_empty()
            && !script.calls_of("hotel", Phase::Action).is_empty()
    })
    .await;
    admin
        .cancel_saga(id, "erin", "the traveller cancelled")
        .await
        .unwrap();
    let record = orchestrator.wait(id, WAIT).await.unwrap();
    assert_eq!(record.status, SagaStatus::Compensated);
    assert!(
        script.calls_of("car", Phase::Action).is_empty(),
        "the booking waiting for room in the group never began"
    );
    assert!(script.calls_of("charge", Phase::Action).is_empty());
    for step in ["flight", "hotel", "check_budget"] {
        assert_eq!(
            script.calls_of(step, Phase::Compensation).len(),
            1,
            "{step}: completed, so undone"
        );
    }
    let snapshot = store.load(id).await.unwrap().unwrap();
    assert!(
        snapshot
            .step(saga_core::StepIndex(3), Phase::Action)
            .is_none(),
        "the car has no record: it never began"
    );
    orchestrator.shutdown().await;
}

pub async fn a_group_compensation_that_fails_is_escalated_once_the_others_are_settled<S: Store>(
    store: Arc<S>,
) {
    let (script, gauge) = (Script::new(), Gauge::new());
    script.plan("flight", Phase::Action, &[slow(100)]);
    script.plan("hotel", Phase::Action, &[Outcome::Permanent]);
    script.plan("car", Phase::Action, &[slow(100)]);
    // The flight's refund went through but its answer was lost; the car's is refused for good.
    script.plan("flight", Phase::Compensation, &[Outcome::ApplyThenUnknown]);
    script.plan("car", Phase::Compensation, &[Outcome::Permanent]);
    let orchestrator = running(&store, &script, &gauge);
    let id = orchestrator.start::<Trip>(&input(340)).await.unwrap();
    let record = orchestrator.wait(id, WAIT).await.unwrap();
    let history = orchestrator.history(id).await.unwrap().render();
    assert_eq!(record.status, SagaStatus::NeedsIntervention, "{history}");
    let open = orchestrator.admin().interventions(true).await.unwrap();
    assert_eq!(open.len(), 1, "one item: {open:?}");
    assert_eq!(
        open[0].item.step.as_ref().map(|(_, name)| name.as_str()),
        Some("car"),
        "the item names the refused compensation"
    );
    let snapshot = store.load(id).await.unwrap().unwrap();
    let flight_undo = snapshot
        .steps
        .iter()
        .find(|step| step.name.as_str() == "flight" && step.phase == Phase::Compensation)
        .unwrap();
    assert_eq!(
        flight_undo.status,
        saga_core::StepStatus::Completed,
        "the refund whose answer was lost was settled (again, with its key) before the person was called: {history}"
    );
    assert_eq!(
        script
            .effect(&key(id, "flight", Phase::Compensation))
            .applied,
        1,
        "refunded once"
    );
    assert!(
        script
            .calls_of("check_budget", Phase::Compensation)
            .is_empty(),
        "nothing before the group is undone while its compensation waits for a person"
    );
    orchestrator.shutdown().await;
}

pub async fn a_cancel_refusing_the_group_keeps_the_outcome_of_the_step_before_it<S: Store>(
    store: Arc<S>,
) {
    let (script, gauge) = (Script::new(), Gauge::new());
    // The cancel comes while the step before the group runs; its completion is written with the
    // group's `in_progress` records, which the cancel refuses.
    script.plan("check_budget", Phase::Action, &[slow(400)]);
    let orchestrator = running(&store, &script, &gauge);
    let admin = orchestrator.admin();
    let id = orchestrator.start::<TwoAtATime>(&input(350)).await.unwrap();
    wait_until("check_budget runs", || {
        !script.calls_of("check_budget", Phase::Action).is_empty()
    })
    .await;
    admin
        .cancel_saga(id, "erin", "the traveller changed plans")
        .await
        .unwrap();
    let record = orchestrator.wait(id, WAIT).await.unwrap();
    let history = orchestrator.history(id).await.unwrap().render();
    assert_eq!(record.status, SagaStatus::Compensated, "{history}");
    assert!(
        GROUP
            .iter()
            .all(|step| script.calls_of(step, Phase::Action).is_empty()),
        "no booking began after the cancel"
    );
    assert_eq!(
        script.calls_of("check_budget", Phase::Action).len(),
        1,
        "its completion was kept, so it was not run again: {history}"
    );
    assert!(
        !history.contains("interrupted"),
        "a completion the worker knew is not recorded unknown: {history}"
    );
    assert_eq!(
        script.calls_of("check_budget", Phase::Compensation).len(),
        1,
        "and it was undone"
    );
    orchestrator.shutdown().await;
}

pub async fn a_failed_group_compensation_lets_the_others_run_before_a_person_is_called<S: Store>(
    store: Arc<S>,
) {
    let (script, gauge) = (Script::new(), Gauge::new());
    // Two refunds at a time: the flight's is refused for good while the hotel's runs, and the
    // car's still has to begin.
    script.plan("charge", Phase::Action, &[Outcome::Permanent]);
    script.plan("flight", Phase::Compensation, &[Outcome::Permanent]);
    script.plan("hotel", Phase::Compensation, &[slow(150)]);
    let orchestrator = running(&store, &script, &gauge);
    let id = orchestrator.start::<TwoAtATime>(&input(360)).await.unwrap();
    let record = orchestrator.wait(id, WAIT).await.unwrap();
    let history = orchestrator.history(id).await.unwrap().render();
    assert_eq!(record.status, SagaStatus::NeedsIntervention, "{history}");
    for step in ["hotel", "car"] {
        assert_eq!(
            script.effect(&key(id, step, Phase::Compensation)).applied,
            1,
            "{step}: undone although the flight's refund failed: {history}"
        );
    }
    let open = orchestrator.admin().interventions(true).await.unwrap();
    assert_eq!(open.len(), 1, "{open:?}");
    assert_eq!(
        open[0].item.step.as_ref().map(|(_, name)| name.as_str()),
        Some("flight")
    );
    assert!(
        script
            .calls_of("check_budget", Phase::Compensation)
            .is_empty(),
        "nothing before the group is undone while a person decides"
    );
    orchestrator.shutdown().await;
}
