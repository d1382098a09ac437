//! Sagas that wait, end to end on the backend under test: durable timers, signals (before and
//! during the wait, twice, too late, malformed), timeouts, approvals, deadlines, pivot steps and
//! cancelling a waiting saga.
//!
//! The sagas here reserve something (compensated by a release), wait, then ship: every call is
//! recorded in a ledger, so that a scenario can tell what ran, with what, and how often.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use saga_core::wait::WAITING_FOR_APPROVAL;
use saga_core::{
    Admin, Approval, Approvers, Delivered, Error, EventKind, IdempotencyKey, InterventionKind,
    Orchestrator, Phase, Saga, SagaDefinition, SagaId, SagaSnapshot, SagaStatus, Signal, SignalKey,
    SignalRefusal, Step, StepContext, StepError, StepIndex, StepStatus, Store,
};
use serde::{Deserialize, Serialize};

use super::scenarios::orchestrator;

/// The signal the sagas here wait for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Paid {
    /// The payment provider's charge.
    pub charge: String,
}

impl Signal for Paid {
    const NAME: &'static str = "paid";
}

/// Every call the sagas' steps make, in order.
#[derive(Debug, Default)]
pub struct Ledger {
    calls: Mutex<Vec<String>>,
    /// How many of the next `ship` calls fail permanently.
    ship_failures: Mutex<u32>,
}

impl Ledger {
    fn record(&self, call: String) {
        self.calls.lock().unwrap().push(call);
    }

    /// Every call made, in order.
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    fn count(&self, prefix: &str) -> usize {
        self.calls()
            .iter()
            .filter(|call| call.starts_with(prefix))
            .count()
    }
}

async fn reserve<S: Ledgered>(saga: Arc<S>, ctx: StepContext<u64>) -> Result<String, StepError> {
    saga.ledger().record(format!("reserve {}", ctx.input()));
    Ok(format!("reservation-{}", ctx.input()))
}

async fn release<S: Ledgered>(
    saga: Arc<S>,
    ctx: StepContext<u64>,
    reservation: String,
) -> Result<(), StepError> {
    saga.ledger()
        .record(format!("release {reservation} {}", ctx.input()));
    Ok(())
}

async fn ship<S: Ledgered>(saga: Arc<S>, ctx: StepContext<u64>) -> Result<(), StepError> {
    let ledger = saga.ledger();
    {
        let mut failures = ledger.ship_failures.lock().unwrap();
        if *failures > 0 {
            *failures -= 1;
            ledger.record(format!("ship failed {}", ctx.input()));
            return Err(StepError::permanent("carrier refused the parcel"));
        }
    }
    // What the waiting step recorded, read as any earlier output.
    let paid = ctx
        .output::<Paid>("payment")
        .map(|paid| paid.charge)
        .unwrap_or_default();
    ledger.record(format!("ship {} {paid}", ctx.input()));
    Ok(())
}

/// A saga type here, with the ledger its steps write to.
trait Ledgered: Saga<Input = u64> {
    fn ledger(&self) -> &Ledger;
}

macro_rules! ledgered {
    ($name:ident, $doc:literal, $definition:expr) => {
        #[doc = $doc]
        pub struct $name(pub Arc<Ledger>);

        impl Ledgered for $name {
            fn ledger(&self) -> &Ledger {
                &self.0
            }
        }

        impl Saga for $name {
            type Input = u64;
            fn definition() -> SagaDefinition<Self> {
                $definition
            }
        }
    };
}

ledgered!(
    Waits,
    "reserve, wait for `paid` (a minute at most), sleep 300 ms, ship.",
    SagaDefinition::new("waits", 1)
        .step(Step::new("reserve", reserve::<Self>).compensate(release::<Self>))
        .step(Step::signal::<Paid>("payment").timeout(Duration::from_secs(60)))
        .step(Step::sleep("cool_off", Duration::from_millis(300)))
        .step(Step::new("ship", ship::<Self>).irreversible())
);

ledgered!(
    WaitsBriefly,
    "reserve, wait for `paid` 300 ms at most, ship.",
    SagaDefinition::new("waits_briefly", 1)
        .step(Step::new("reserve", reserve::<Self>).compensate(release::<Self>))
        .step(Step::signal::<Paid>("payment").timeout(Duration::from_millis(300)))
        .step(Step::new("ship", ship::<Self>).irreversible())
);

ledgered!(
    WaitsWithDefault,
    "reserve, wait for `paid` 300 ms at most (else a default payment), sleep 1 s, ship.",
    SagaDefinition::new("waits_with_default", 1)
        .step(Step::new("reserve", reserve::<Self>).compensate(release::<Self>))
        .step(
            Step::signal::<Paid>("payment")
                .timeout(Duration::from_millis(300))
                .or_default(Paid {
                    charge: "invoice-later".into(),
                })
        )
        .step(Step::sleep("cool_off", Duration::from_secs(1)))
        .step(Step::new("ship", ship::<Self>).irreversible())
);

async fn refund(saga: Arc<Refunds>, ctx: StepContext<u64>, paid: Paid) -> Result<(), StepError> {
    saga.0
        .record(format!("refund {} {}", paid.charge, ctx.input()));
    Ok(())
}

ledgered!(
    Refunds,
    "reserve, wait for `paid` (refunded when compensated), ship.",
    SagaDefinition::new("refunds", 1)
        .step(Step::new("reserve", reserve::<Self>).compensate(release::<Self>))
        .step(
            Step::signal::<Paid>("payment")
                .timeout(Duration::from_secs(60))
                .compensate(refund)
        )
        .step(Step::new("ship", ship::<Self>).irreversible())
);

ledgered!(
    ApprovedAfterPivot,
    "reserve, charge (the pivot), wait 300 ms at most for an approval, ship.",
    SagaDefinition::new("approved_after_pivot", 1)
        .step(Step::new("reserve", reserve::<Self>).compensate(release::<Self>))
        .step(Step::new("charge", reserve::<Self>).irreversible().pivot())
        .step(Step::approval("approve_shipping").timeout(Duration::from_millis(300)))
        .step(Step::new("ship", ship::<Self>).irreversible())
);

ledgered!(
    Approved,
    "reserve, wait for a person's approval (a minute at most), ship.",
    SagaDefinition::new("approved", 1)
        .step(Step::new("reserve", reserve::<Self>).compensate(release::<Self>))
        .step(Step::approval("approve_budget").timeout(Duration::from_secs(60)))
        .step(Step::new("ship", ship::<Self>).irreversible())
);

ledgered!(
    Hurried,
    "reserve, wait for `paid` (a minute at most), ship; the saga's deadline is 400 ms.",
    SagaDefinition::new("hurried", 1)
        .deadline(Duration::from_millis(400))
        .step(Step::new("reserve", reserve::<Self>).compensate(release::<Self>))
        .step(Step::signal::<Paid>("payment").timeout(Duration::from_secs(60)))
        .step(Step::new("ship", ship::<Self>).irreversible())
);

ledgered!(
    Pivoted,
    "reserve, charge (the pivot), ship.",
    SagaDefinition::new("pivoted", 1)
        .step(Step::new("reserve", reserve::<Self>).compensate(release::<Self>))
        .step(Step::new("charge", reserve::<Self>).irreversible().pivot())
        .step(Step::new("ship", ship::<Self>).irreversible())
);

const WAIT: Duration = Duration::from_secs(30);

fn running<S: Store>(store: &Arc<S>, register: impl Fn(&Orchestrator)) -> Orchestrator {
    let orchestrator = orchestrator_for(store, register);
    orchestrator.run();
    orchestrator
}

/// An orchestrator with the types registered, not running.
fn orchestrator_for<S: Store>(store: &Arc<S>, register: impl Fn(&Orchestrator)) -> Orchestrator {
    let orchestrator = orchestrator(store, Duration::from_secs(5));
    register(&orchestrator);
    orchestrator
}

/// Polls the stored saga until `condition` holds; returns it.
async fn until<S: Store>(
    store: &Arc<S>,
    id: SagaId,
    what: &str,
    condition: impl Fn(&SagaSnapshot) -> bool,
) -> SagaSnapshot {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(snapshot) = store.load(id).await.unwrap() {
            if condition(&snapshot) {
                return snapshot;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until the saga waits for `waiting_for`, given back (no lease).
async fn waiting<S: Store>(store: &Arc<S>, id: SagaId, waiting_for: &str) -> SagaSnapshot {
    until(store, id, &format!("it waits for {waiting_for}"), |saga| {
        saga.record.waiting_for.as_deref() == Some(waiting_for) && saga.record.lease_owner.is_none()
    })
    .await
}

fn paid(charge: &str) -> Paid {
    Paid {
        charge: charge.into(),
    }
}

fn events_of(history: &[saga_core::Event], kind: EventKind) -> Vec<&saga_core::Event> {
    history.iter().filter(|event| event.kind == kind).collect()
}

fn refusal(result: saga_core::Result<Delivered>) -> SignalRefusal {
    match result {
        Err(Error::SignalRefused { refusal, .. }) => refusal,
        other => panic!("expected a refused signal, got {other:?}"),
    }
}

pub async fn a_signal_sent_before_the_wait_is_kept_and_consumed_once<S: Store>(store: Arc<S>) {
    let ledger = Arc::new(Ledger::default());
    // Not running yet: the saga is stored, and nothing drives it.
    let orchestrator = orchestrator(&store, Duration::from_secs(5));
    orchestrator.register(Waits(ledger.clone())).unwrap();
    let id = orchestrator
        .start_with_key::<Waits>(IdempotencyKey::new("order-1"), &1)
        .await
        .unwrap()
        .id();
    let key = SignalKey::new("evt_1");
    assert_eq!(
        orchestrator
            .signal(IdempotencyKey::new("order-1"), &paid("ch_1"), key.clone())
            .await
            .unwrap(),
        Delivered::New(id),
        "a signal before the saga reaches its step is kept"
    );
    // The provider delivers its webhook again: one signal.
    assert_eq!(
        orchestrator
            .signal(id, &paid("ch_1"), key.clone())
            .await
            .unwrap(),
        Delivered::Duplicate(id)
    );
    // Another event under the same name is refused, naming the key that was delivered.
    assert_eq!(
        refusal(
            orchestrator
                .signal(id, &paid("ch_2"), SignalKey::new("evt_2"))
                .await
        ),
        SignalRefusal::AlreadyDelivered { key }
    );
    orchestrator.run();
    let record = orchestrator.wait(id, WAIT).await.unwrap();
    assert_eq!(record.status, SagaStatus::Completed);
    assert_eq!(ledger.calls(), vec!["reserve 1", "ship 1 ch_1"]);
    let saga = store.load(id).await.unwrap().unwrap();
    let payment = saga.step(StepIndex(1), Phase::Action).unwrap();
    assert_eq!(payment.status, StepStatus::Completed);
    assert_eq!(payment.output, Some(serde_json::json!({"charge": "ch_1"})));
    assert_eq!(saga.signals.len(), 1);
    assert_eq!(saga.record.waiting_for, None);
    let history = store.history(id).await.unwrap();
    assert_eq!(events_of(&history, EventKind::SignalReceived).len(), 1);
    orchestrator.shutdown().await;
}

pub async fn a_signal_during_the_wait_wakes_the_saga_which_held_nothing_meanwhile<S: Store>(
    store: Arc<S>,
) {
    let ledger = Arc::new(Ledger::default());
    let orchestrator = running(&store, |o| o.register(Waits(ledger.clone())).unwrap());
    let id = orchestrator.start::<Waits>(&2).await.unwrap();
    let saga = waiting(&store, id, "signal:paid").await;
    // Waiting holds no lease; the step is begun, with its wait's end recorded.
    let payment = saga.step(StepIndex(1), Phase::Action).unwrap();
    assert_eq!(payment.status, StepStatus::InProgress);
    let until = payment.next_attempt_at.expect("the wait's end is recorded");
    assert_eq!(saga.record.next_run_at, Some(until));
    assert_eq!(saga.record.status, SagaStatus::Running);
    let history = store.history(id).await.unwrap();
    assert_eq!(events_of(&history, EventKind::Waiting).len(), 1);
    assert_eq!(
        orchestrator
            .signal(id, &paid("ch_2"), SignalKey::new("evt_2"))
            .await
            .unwrap(),
        Delivered::New(id)
    );
    let record = orchestrator.wait(id, WAIT).await.unwrap();
    assert_eq!(record.status, SagaStatus::Completed);
    assert_eq!(ledger.calls(), vec!["reserve 2", "ship 2 ch_2"]);
    orchestrator.shutdown().await;
}

pub async fn signals_to_unknown_finished_or_mismatched_sagas_are_refused<S: Store>(store: Arc<S>) {
    let ledger = Arc::new(Ledger::default());
    let orchestrator = running(&store, |o| o.register(Waits(ledger.clone())).unwrap());
    assert!(matches!(
        refusal(
            orchestrator
                .signal(
                    IdempotencyKey::new("no-such-order"),
                    &paid("x"),
                    SignalKey::new("e")
                )
                .await
        ),
        SignalRefusal::UnknownStartKey(_)
    ));
    let nobody = SagaId::new();
    assert!(matches!(
        orchestrator
            .signal(nobody, &paid("x"), SignalKey::new("e"))
            .await,
        Err(Error::SagaNotFound(id)) if id == nobody
    ));
    let id = orchestrator.start::<Waits>(&3).await.unwrap();
    waiting(&store, id, "signal:paid").await;
    // A payload that does not decode as the step's signal type, and a name nothing waits for.
    assert!(matches!(
        refusal(
            orchestrator
                .signal_json(
                    id,
                    "paid",
                    serde_json::json!({"charge": 5}),
                    SignalKey::new("e1")
                )
                .await
        ),
        SignalRefusal::Payload(_)
    ));
    assert!(matches!(
        refusal(
            orchestrator
                .signal_json(id, "refunded", serde_json::json!({}), SignalKey::new("e2"))
                .await
        ),
        SignalRefusal::NotAwaited { .. }
    ));
    assert!(matches!(
        refusal(
            orchestrator
                .signal_json(
                    id,
                    "paid; drop",
                    serde_json::json!({}),
                    SignalKey::new("e3")
                )
                .await
        ),
        SignalRefusal::BadName(_)
    ));
    for key in ["", "evt\u{0}1"] {
        assert!(matches!(
            refusal(
                orchestrator
                    .signal(id, &paid("x"), SignalKey::new(key))
                    .await
            ),
            SignalRefusal::BadKey(_)
        ));
    }
    // Nothing refused was stored: the saga still waits, without a signal.
    let saga = store.load(id).await.unwrap().unwrap();
    assert!(saga.signals.is_empty());
    assert_eq!(saga.record.signals_received, 0);
    orchestrator
        .signal(id, &paid("ch_3"), SignalKey::new("evt_3"))
        .await
        .unwrap();
    assert_eq!(
        orchestrator.wait(id, WAIT).await.unwrap().status,
        SagaStatus::Completed
    );
    // Too late: the saga is finished.
    assert_eq!(
        refusal(
            orchestrator
                .signal(id, &paid("ch_4"), SignalKey::new("evt_4"))
                .await
        ),
        SignalRefusal::Finished(SagaStatus::Completed)
    );
    orchestrator.shutdown().await;
}

pub async fn a_wait_that_times_out_compensates_or_records_its_default<S: Store>(store: Arc<S>) {
    let ledger = Arc::new(Ledger::default());
    let orchestrator = running(&store, |o| {
        o.register(WaitsBriefly(ledger.clone())).unwrap();
        o.register(WaitsWithDefault(ledger.clone())).unwrap();
    });
    let id = orchestrator.start::<WaitsBriefly>(&4).await.unwrap();
    let record = orchestrator.wait(id, WAIT).await.unwrap();
    assert_eq!(record.status, SagaStatus::Compensated);
    assert_eq!(ledger.calls(), vec!["reserve 4", "release reservation-4 4"]);
    let saga = store.load(id).await.unwrap().unwrap();
    let payment = saga.step(StepIndex(1), Phase::Action).unwrap();
    assert_eq!(payment.status, StepStatus::Failed);
    assert!(
        payment
            .last_error
            .as_deref()
            .is_some_and(|error| error.contains("no signal `paid` came")),
        "{payment:?}"
    );
    // A signal after the wait ended finds the saga finished.
    assert_eq!(
        refusal(
            orchestrator
                .signal(id, &paid("late"), SignalKey::new("late"))
                .await
        ),
        SignalRefusal::Finished(SagaStatus::Compensated)
    );

    let id = orchestrator.start::<WaitsWithDefault>(&5).await.unwrap();
    // Past its wait (the default recorded), asleep: a signal now would change nothing.
    waiting(&store, id, "timer").await;
    assert_eq!(
        refusal(
            orchestrator
                .signal(id, &paid("late"), SignalKey::new("late"))
                .await
        ),
        SignalRefusal::TooLate {
            step: saga_core::StepName::new("payment")
        }
    );
    let record = orchestrator.wait(id, WAIT).await.unwrap();
    assert_eq!(record.status, SagaStatus::Completed);
    assert!(ledger.calls().contains(&"ship 5 invoice-later".to_owned()));
    assert!(store.load(id).await.unwrap().unwrap().signals.is_empty());
    orchestrator.shutdown().await;
}

pub async fn a_timer_fires_once_after_a_restart_mid_sleep<S: Store>(store: Arc<S>) {
    let ledger = Arc::new(Ledger::default());
    let first = running(&store, |o| o.register(Waits(ledger.clone())).unwrap());
    let id = first.start::<Waits>(&6).await.unwrap();
    waiting(&store, id, "signal:paid").await;
    first
        .signal(id, &paid("ch_6"), SignalKey::new("evt_6"))
        .await
        .unwrap();
    let asleep = waiting(&store, id, "timer").await;
    let wakes = asleep
        .step(StepIndex(2), Phase::Action)
        .and_then(|step| step.next_attempt_at)
        .expect("the wake time is recorded when the sleep begins");
    assert_eq!(asleep.record.next_run_at, Some(wakes));
    // The process stops mid-sleep; another one takes over.
    first.shutdown().await;
    let second = running(&store, |o| o.register(Waits(ledger.clone())).unwrap());
    let record = second.wait(id, WAIT).await.unwrap();
    assert_eq!(record.status, SagaStatus::Completed);
    let saga = store.load(id).await.unwrap().unwrap();
    let slept = saga.step(StepIndex(2), Phase::Action).unwrap();
    assert_eq!(slept.output, Some(serde_json::to_value(wakes).unwrap()));
    assert!(
        slept.finished_at.is_some_and(|at| at >= wakes),
        "the timer fired at or after its time: {slept:?}"
    );
    let history = store.history(id).await.unwrap();
    let fired: Vec<_> = events_of(&history, EventKind::StepCompleted)
        .into_iter()
        .filter(|event| {
            event
                .step
                .as_ref()
                .is_some_and(|s| s.as_str() == "cool_off")
        })
        .collect();
    assert_eq!(fired.len(), 1, "the timer fires once");
    assert_eq!(ledger.count("ship"), 1);
    second.shutdown().await;
}

pub async fn cancelling_a_waiting_saga_compensates_it<S: Store>(store: Arc<S>) {
    let ledger = Arc::new(Ledger::default());
    let orchestrator = running(&store, |o| o.register(Waits(ledger.clone())).unwrap());
    let id = orchestrator.start::<Waits>(&7).await.unwrap();
    waiting(&store, id, "signal:paid").await;
    // Nobody holds a waiting saga: it compensates at once.
    assert_eq!(
        orchestrator
            .admin()
            .cancel_saga(id, "erin", "customer withdrew")
            .await
            .unwrap(),
        saga_core::CancelOutcome::Compensating
    );
    let record = orchestrator.wait(id, WAIT).await.unwrap();
    assert_eq!(record.status, SagaStatus::Compensated);
    assert_eq!(ledger.calls(), vec!["reserve 7", "release reservation-7 7"]);
    let saga = store.load(id).await.unwrap().unwrap();
    assert_eq!(saga.record.waiting_for, None);
    let payment = saga.step(StepIndex(1), Phase::Action).unwrap();
    assert_eq!(
        payment.status,
        StepStatus::Failed,
        "known: waiting did nothing"
    );
    orchestrator.shutdown().await;

    // A signal that came before the cancel (no worker ran to take it) is taken first, and the
    // step it completed is compensated: the payment is refunded.
    let refunds = running(&store, |o| o.register(Refunds(ledger.clone())).unwrap());
    let id = refunds.start::<Refunds>(&8).await.unwrap();
    waiting(&store, id, "signal:paid").await;
    refunds.shutdown().await;
    let stopped = orchestrator_for(&store, |o| o.register(Refunds(ledger.clone())).unwrap());
    stopped
        .signal(id, &paid("ch_8"), SignalKey::new("evt_8"))
        .await
        .unwrap();
    stopped
        .admin()
        .cancel_saga(id, "erin", "customer withdrew")
        .await
        .unwrap();
    let again = running(&store, |o| o.register(Refunds(ledger.clone())).unwrap());
    assert_eq!(
        again.wait(id, WAIT).await.unwrap().status,
        SagaStatus::Compensated
    );
    assert_eq!(ledger.count("refund ch_8 8"), 1, "{:?}", ledger.calls());
    assert_eq!(ledger.count("release reservation-8 8"), 1);
    again.shutdown().await;
}

fn approvers(admin: Admin) -> Admin {
    let table: Approvers = "approved=alice; *=root".parse().unwrap();
    admin.with_approvals(Arc::new(table))
}

pub async fn approval_by_an_authorized_operator_continues_and_others_are_refused<S: Store>(
    store: Arc<S>,
) {
    let ledger = Arc::new(Ledger::default());
    let orchestrator = running(&store, |o| o.register(Approved(ledger.clone())).unwrap());
    let id = orchestrator.start::<Approved>(&8).await.unwrap();
    waiting(&store, id, "signal:approval:approve_budget").await;
    let pending = orchestrator
        .admin()
        .approvals(&saga_core::SagaFilter::default())
        .await
        .unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].saga.id, id);
    assert_eq!(pending[0].step.as_str(), "approve_budget");
    // No policy: nobody may decide. A policy: only whom it names.
    assert!(matches!(
        orchestrator.admin().approve(id, "alice", "budget ok").await,
        Err(Error::NotAuthorized { .. })
    ));
    let admin = approvers(orchestrator.admin());
    assert!(matches!(
        admin.approve(id, "bob", "looks fine").await,
        Err(Error::NotAuthorized { .. })
    ));
    assert!(matches!(
        admin.approve(id, "alice", "  ").await,
        Err(Error::InvalidAction(_))
    ));
    assert_eq!(
        admin.approve(id, "alice", "budget ok").await.unwrap(),
        Delivered::New(id)
    );
    let record = orchestrator.wait(id, WAIT).await.unwrap();
    assert_eq!(record.status, SagaStatus::Completed);
    let saga = store.load(id).await.unwrap().unwrap();
    let decision: Approval = serde_json::from_value(
        saga.step(StepIndex(1), Phase::Action)
            .and_then(|step| step.output.clone())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        decision,
        Approval {
            approved: true,
            by: "alice".into(),
            reason: "budget ok".into()
        }
    );
    let rendered = admin.history(id).await.unwrap().render();
    assert!(
        rendered.contains("(key approve:alice): approved by alice: budget ok"),
        "who decided what and why is in the history: {rendered}"
    );

    // Rejected: the saga compensates, with who and why in its history.
    let id = orchestrator.start::<Approved>(&9).await.unwrap();
    waiting(&store, id, "signal:approval:approve_budget").await;
    admin.reject(id, "root", "over budget").await.unwrap();
    let record = orchestrator.wait(id, WAIT).await.unwrap();
    assert_eq!(record.status, SagaStatus::Compensated);
    let rendered = admin.history(id).await.unwrap().render();
    assert!(
        rendered.contains("rejected by root: over budget"),
        "{rendered}"
    );
    // A decision on a saga that waits for no approval is refused.
    assert!(matches!(
        admin.approve(id, "alice", "again").await,
        Err(Error::InvalidAction(_))
    ));
    orchestrator.shutdown().await;
}

pub async fn bulk_approval_honours_its_bound<S: Store>(store: Arc<S>) {
    let ledger = Arc::new(Ledger::default());
    let orchestrator = running(&store, |o| o.register(Approved(ledger.clone())).unwrap());
    let mut ids = Vec::new();
    for order in 10..13 {
        let id = orchestrator.start::<Approved>(&order).await.unwrap();
        waiting(&store, id, "signal:approval:approve_budget").await;
        ids.push(id);
    }
    let admin = approvers(orchestrator.admin());
    let all = saga_core::SagaFilter::default();
    assert!(matches!(
        admin.approve_all(&all, 2, "alice", "campaign ok").await,
        Err(Error::InvalidAction(_))
    ));
    assert_eq!(
        store
            .list(&saga_core::SagaFilter {
                waiting_for: Some(WAITING_FOR_APPROVAL.into()),
                ..all.clone()
            })
            .await
            .unwrap()
            .len(),
        3,
        "over the bound, nothing was approved"
    );
    let approved = admin
        .approve_all(&all, 3, "alice", "campaign ok")
        .await
        .unwrap();
    assert_eq!(approved.len(), 3);
    assert!(approved.iter().all(|(_, outcome)| outcome.is_ok()));
    for id in ids {
        assert_eq!(
            orchestrator.wait(id, WAIT).await.unwrap().status,
            SagaStatus::Completed
        );
    }
    orchestrator.shutdown().await;
}

pub async fn a_saga_past_its_deadline_stops_waiting_and_compensates<S: Store>(store: Arc<S>) {
    let ledger = Arc::new(Ledger::default());
    let orchestrator = running(&store, |o| o.register(Hurried(ledger.clone())).unwrap());
    let id = orchestrator.start::<Hurried>(&14).await.unwrap();
    let saga = waiting(&store, id, "signal:paid").await;
    // Due at the deadline, not at the step's own minute-long timeout (give or take the
    // difference between this process's clock and the store's, well under a second).
    let wakes = saga.record.next_run_at.unwrap();
    let deadline = saga_core::after(saga.record.created_at, Duration::from_millis(400));
    assert!(
        wakes <= saga_core::after(deadline, Duration::from_secs(1)),
        "due at {wakes}, deadline {deadline}"
    );
    let record = orchestrator.wait(id, WAIT).await.unwrap();
    assert_eq!(record.status, SagaStatus::Compensated);
    assert_eq!(
        ledger.calls(),
        vec!["reserve 14", "release reservation-14 14"]
    );
    let rendered = orchestrator.history(id).await.unwrap().render();
    assert!(rendered.contains("deadline"), "{rendered}");
    orchestrator.shutdown().await;

    // A start call may set a deadline of its own, for a type that has none.
    let orchestrator = running(&store, |o| o.register(Waits(ledger.clone())).unwrap());
    let id = orchestrator
        .start_within::<Waits>(None, &18, Duration::from_millis(400))
        .await
        .unwrap()
        .id();
    let saga = waiting(&store, id, "signal:paid").await;
    assert!(saga.record.deadline.is_some());
    assert_eq!(
        orchestrator.wait(id, WAIT).await.unwrap().status,
        SagaStatus::Compensated
    );
    assert_eq!(ledger.count("release reservation-18 18"), 1);
    let rendered = orchestrator.history(id).await.unwrap().render();
    assert!(rendered.contains("deadline"), "{rendered}");
    orchestrator.shutdown().await;
}

pub async fn past_the_pivot_a_failure_waits_for_a_person_and_nothing_is_compensated<S: Store>(
    store: Arc<S>,
) {
    let ledger = Arc::new(Ledger::default());
    *ledger.ship_failures.lock().unwrap() = 1;
    let orchestrator = running(&store, |o| o.register(Pivoted(ledger.clone())).unwrap());
    let id = orchestrator.start::<Pivoted>(&15).await.unwrap();
    let record = orchestrator.wait(id, WAIT).await.unwrap();
    assert_eq!(record.status, SagaStatus::NeedsIntervention);
    assert_eq!(
        ledger.count("release"),
        0,
        "nothing before the pivot is undone"
    );
    let admin = orchestrator.admin();
    let items = admin.interventions(true).await.unwrap();
    let item = items.iter().find(|item| item.saga_id == id).unwrap();
    assert_eq!(item.item.kind, InterventionKind::PastPivot);
    assert_eq!(
        item.item.step.as_ref().map(|(_, name)| name.as_str()),
        Some("ship")
    );
    // The operator sends it forward again, with the same key.
    admin
        .retry(item.item.id, "erin", "carrier is back")
        .await
        .unwrap();
    let record = orchestrator.wait(id, WAIT).await.unwrap();
    assert_eq!(record.status, SagaStatus::Completed);
    assert_eq!(ledger.count("ship 15"), 1);
    assert_eq!(ledger.count("release"), 0);

    // A person may also stop it where it is: still nothing is compensated.
    *ledger.ship_failures.lock().unwrap() = 1;
    let id = orchestrator.start::<Pivoted>(&16).await.unwrap();
    let record = orchestrator.wait(id, WAIT).await.unwrap();
    assert_eq!(record.status, SagaStatus::NeedsIntervention);
    let item = admin
        .interventions(true)
        .await
        .unwrap()
        .into_iter()
        .find(|item| item.saga_id == id)
        .unwrap();
    admin
        .cancel(item.item.id, "erin", "customer gave up")
        .await
        .unwrap();
    assert_eq!(
        store.load(id).await.unwrap().unwrap().record.status,
        SagaStatus::Cancelled
    );
    assert_eq!(ledger.count("release"), 0);
    orchestrator.shutdown().await;

    // An approval past the pivot that nobody gave in time: a person sends the saga forward
    // again, and the step waits anew (its next attempt) until someone approves.
    let after_pivot = running(&store, |o| {
        o.register(ApprovedAfterPivot(ledger.clone())).unwrap()
    });
    let id = after_pivot.start::<ApprovedAfterPivot>(&17).await.unwrap();
    assert_eq!(
        after_pivot.wait(id, WAIT).await.unwrap().status,
        SagaStatus::NeedsIntervention
    );
    let admin = approvers(after_pivot.admin());
    let item = admin
        .interventions(true)
        .await
        .unwrap()
        .into_iter()
        .find(|item| item.saga_id == id)
        .unwrap();
    assert_eq!(item.item.kind, InterventionKind::PastPivot);
    admin
        .retry(item.item.id, "erin", "the approver is back")
        .await
        .unwrap();
    let saga = waiting(&store, id, "signal:approval:approve_shipping").await;
    assert_eq!(
        saga.step(StepIndex(2), Phase::Action).unwrap().attempt,
        saga_core::Attempt(2)
    );
    admin.approve(id, "root", "ship it").await.unwrap();
    assert_eq!(
        after_pivot.wait(id, WAIT).await.unwrap().status,
        SagaStatus::Completed
    );
    assert_eq!(ledger.count("ship 17"), 1);
    assert_eq!(ledger.count("release reservation-17"), 0);
    after_pivot.shutdown().await;
}
