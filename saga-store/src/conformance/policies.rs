//! Policies before side effects, end to end on the backend under test: frequency caps (a step
//! skipped, never compensated; counted once per step; freed after its window), rate limits
//! (never exceeded, no attempt spent), throttling (the whole integration backs off), per-key
//! concurrency (the excess held, holding no worker), retry budgets (spent: the step fails and
//! the saga compensates) and pauses (no new attempt until resumed; who and why recorded).
//!
//! Every call a step makes is recorded in a ledger with the instant it was made, so that a
//! scenario can tell what ran, for whom, how often and when.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use saga_core::{
    Admin, EventKind, Orchestrator, PauseScope, Phase, RetryPolicy, Saga, SagaDefinition, SagaId,
    SagaStatus, SagaType, Step, StepContext, StepError, StepIndex, StepName, StepStatus, Store,
};
use serde::{Deserialize, Serialize};

use super::scenarios::orchestrator;

const WAIT: Duration = Duration::from_secs(30);

/// The input of the sagas here: a cart of a customer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cart {
    /// The customer (the entity caps and budgets count under).
    pub customer: String,
    /// The cart (the key concurrency counts under).
    pub cart: String,
    /// Whether the last step fails for good (the saga compensates).
    pub fail_last: bool,
}

fn cart(customer: &str, cart: &str) -> Cart {
    Cart {
        customer: customer.into(),
        cart: cart.into(),
        fail_last: false,
    }
}

/// Every call the steps make: (what, customer, cart, when).
#[derive(Debug, Default)]
pub struct Ledger {
    calls: Mutex<Vec<(String, String, String, Instant)>>,
    /// How many of the next `email` calls fail transiently.
    email_failures: Mutex<u32>,
    /// How many of the next `call_partner` calls are throttled (retry after 600 ms).
    throttles: Mutex<u32>,
}

impl Ledger {
    fn record(&self, what: &str, input: &Cart) {
        self.calls.lock().unwrap().push((
            what.into(),
            input.customer.clone(),
            input.cart.clone(),
            Instant::now(),
        ));
    }

    fn calls(&self, what: &str) -> Vec<(String, String, Instant)> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|(call, ..)| call == what)
            .map(|(_, customer, cart, at)| (customer.clone(), cart.clone(), *at))
            .collect()
    }

    fn take(counter: &Mutex<u32>) -> bool {
        let mut left = counter.lock().unwrap();
        let take = *left > 0;
        if take {
            *left -= 1;
        }
        take
    }
}

trait Ledgered: Saga<Input = Cart> {
    fn ledger(&self) -> &Ledger;
}

async fn reserve<S: Ledgered>(saga: Arc<S>, ctx: StepContext<Cart>) -> Result<(), StepError> {
    saga.ledger().record("reserve", ctx.input());
    Ok(())
}

async fn release<S: Ledgered>(
    saga: Arc<S>,
    ctx: StepContext<Cart>,
    (): (),
) -> Result<(), StepError> {
    saga.ledger().record("release", ctx.input());
    Ok(())
}

async fn email<S: Ledgered>(saga: Arc<S>, ctx: StepContext<Cart>) -> Result<(), StepError> {
    let ledger = saga.ledger();
    ledger.record("email", ctx.input());
    if Ledger::take(&ledger.email_failures) {
        return Err(StepError::transient("mail server busy"));
    }
    Ok(())
}

async fn unsend<S: Ledgered>(
    saga: Arc<S>,
    ctx: StepContext<Cart>,
    (): (),
) -> Result<(), StepError> {
    saga.ledger().record("unsend", ctx.input());
    Ok(())
}

async fn call_partner<S: Ledgered>(saga: Arc<S>, ctx: StepContext<Cart>) -> Result<(), StepError> {
    let ledger = saga.ledger();
    ledger.record("partner", ctx.input());
    if Ledger::take(&ledger.throttles) {
        return Err(StepError::throttled(
            Duration::from_millis(600),
            "429 Too Many Requests",
        ));
    }
    Ok(())
}

async fn finish<S: Ledgered>(saga: Arc<S>, ctx: StepContext<Cart>) -> Result<(), StepError> {
    saga.ledger().record("finish", ctx.input());
    if ctx.input().fail_last {
        return Err(StepError::permanent("order cancelled upstream"));
    }
    Ok(())
}

async fn always_busy<S: Ledgered>(saga: Arc<S>, ctx: StepContext<Cart>) -> Result<(), StepError> {
    saga.ledger().record("busy", ctx.input());
    Err(StepError::transient("partner busy"))
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
            type Input = Cart;
            fn definition() -> SagaDefinition<Self> {
                $definition
            }
        }
    };
}

fn customer(cart: &Cart) -> String {
    cart.customer.clone()
}

ledgered!(
    Capped,
    "reserve, email (one per customer per hour, compensable), finish.",
    SagaDefinition::new("capped", 1)
        .step(Step::new("reserve", reserve::<Self>).compensate(release::<Self>))
        .step(
            Step::new("email", email::<Self>)
                .compensate(unsend::<Self>)
                .retry(RetryPolicy::exponential(3, Duration::from_millis(10)))
                .cap("email", 1, Duration::from_secs(3600), customer),
        )
        .step(Step::new("finish", finish::<Self>).irreversible())
);

ledgered!(
    Windowed,
    "email (one per customer per 400 ms).",
    SagaDefinition::new("windowed", 1).step(Step::new("email", email::<Self>).irreversible().cap(
        "email_window",
        1,
        Duration::from_millis(400),
        customer
    ))
);

ledgered!(
    Limited,
    "call the partner (5 calls per second across every saga; one attempt only).",
    SagaDefinition::new("limited", 1).step(
        Step::new("partner", call_partner::<Self>)
            .irreversible()
            .retry(RetryPolicy::exponential(1, Duration::from_millis(10)))
            .rate_limit("partner_api", 5, Duration::from_secs(1))
    )
);

ledgered!(
    Throttled,
    "call the partner (a generous limit; the partner may throttle).",
    SagaDefinition::new("throttled", 1).step(
        Step::new("partner", call_partner::<Self>)
            .irreversible()
            .retry(RetryPolicy::exponential(3, Duration::from_millis(10)))
            .rate_limit("throttling_partner", 1000, Duration::from_secs(1))
    )
);

ledgered!(
    OnePerCart,
    "reserve (one running saga per cart), wait for `go`, finish.",
    SagaDefinition::new("one_per_cart", 1)
        .step(
            Step::new("reserve", reserve::<Self>)
                .compensate(release::<Self>)
                .concurrency("cart_flow", 1, |cart: &Cart| cart.cart.clone())
        )
        .step(Step::sleep("linger", Duration::from_millis(400)))
        .step(Step::new("finish", finish::<Self>).irreversible())
);

ledgered!(
    Budgeted,
    "reserve, call a busy partner (10 attempts; 2 retries per customer per hour).",
    SagaDefinition::new("budgeted", 1)
        .step(Step::new("reserve", reserve::<Self>).compensate(release::<Self>))
        .step(
            Step::new("busy", always_busy::<Self>)
                .irreversible()
                .retry(RetryPolicy::exponential(10, Duration::from_millis(5)))
                .retry_budget("contact", 2, Duration::from_secs(3600), customer)
        )
);

fn running<S: Store>(store: &Arc<S>, register: impl Fn(&Orchestrator)) -> Orchestrator {
    let orchestrator = orchestrator(store, Duration::from_secs(5));
    register(&orchestrator);
    orchestrator.run();
    orchestrator
}

async fn finished(orchestrator: &Orchestrator, id: SagaId) -> SagaStatus {
    orchestrator.wait(id, WAIT).await.unwrap().status
}

async fn step_status<S: Store>(store: &Arc<S>, id: SagaId, index: u32) -> Option<StepStatus> {
    store
        .load(id)
        .await
        .unwrap()
        .unwrap()
        .step(StepIndex(index), Phase::Action)
        .map(|step| step.status)
}

/// A cap of one email per customer: across many sagas, one email per customer is sent; the
/// other sagas' email steps are skipped (with the reason in the history), never compensated,
/// and those sagas go on and complete (or compensate what did run).
pub async fn a_cap_lets_one_effect_per_entity_through_and_skips_the_rest<S: Store>(store: Arc<S>) {
    let ledger = Arc::new(Ledger::default());
    let orchestrator = running(&store, |o| o.register(Capped(ledger.clone())).unwrap());
    let mut ids = Vec::new();
    for (who, which) in [("ann", "c1"), ("ann", "c2"), ("bob", "c3"), ("ann", "c4")] {
        ids.push(
            orchestrator
                .start::<Capped>(&cart(who, which))
                .await
                .unwrap(),
        );
    }
    for id in &ids {
        assert_eq!(finished(&orchestrator, *id).await, SagaStatus::Completed);
    }
    // One more for ann, once her email went out, whose last step fails: it compensates, but
    // not its skipped email.
    let failing = Cart {
        fail_last: true,
        ..cart("ann", "c5")
    };
    let compensated = orchestrator.start::<Capped>(&failing).await.unwrap();
    assert_eq!(
        finished(&orchestrator, compensated).await,
        SagaStatus::Compensated
    );
    let emails = ledger.calls("email");
    let to = |who: &str| {
        emails
            .iter()
            .filter(|(customer, ..)| customer == who)
            .count()
    };
    assert_eq!(
        (to("ann"), to("bob")),
        (1, 1),
        "one email per customer: {emails:?}"
    );
    let mut skipped = 0;
    for id in ids.iter().chain([&compensated]) {
        if step_status(&store, *id, 1).await == Some(StepStatus::Skipped) {
            skipped += 1;
            let history = store.history(*id).await.unwrap();
            let skip = history
                .iter()
                .find(|event| event.kind == EventKind::StepSkipped)
                .expect("a skipped step is in the history");
            assert!(
                skip.detail
                    .as_deref()
                    .unwrap_or("")
                    .contains("cap `email`: 1 per 1h"),
                "the history says which cap: {:?}",
                skip.detail
            );
        }
    }
    assert_eq!(skipped, 3, "ann's other three sagas skipped the email");
    // The compensated saga released its reservation and never "unsent" an email it never sent.
    let c5 =
        |calls: Vec<(String, String, Instant)>| calls.iter().filter(|(_, c, _)| c == "c5").count();
    assert_eq!(c5(ledger.calls("release")), 1);
    assert_eq!(
        ledger.calls("unsend").len(),
        0,
        "a skipped step is never compensated"
    );
    orchestrator.shutdown().await;
}

/// A capped step counts once however many attempts it takes: a transient failure and its
/// retry send one email and skip nothing.
pub async fn a_cap_counts_a_step_once_across_its_attempts<S: Store>(store: Arc<S>) {
    let ledger = Arc::new(Ledger::default());
    *ledger.email_failures.lock().unwrap() = 1;
    let orchestrator = running(&store, |o| o.register(Capped(ledger.clone())).unwrap());
    let id = orchestrator
        .start::<Capped>(&cart("cid", "c1"))
        .await
        .unwrap();
    assert_eq!(finished(&orchestrator, id).await, SagaStatus::Completed);
    assert_eq!(
        ledger.calls("email").len(),
        2,
        "the failed attempt and its retry"
    );
    let snapshot = store.load(id).await.unwrap().unwrap();
    let step = snapshot.step(StepIndex(1), Phase::Action).unwrap();
    assert_eq!((step.status, step.attempt.0), (StepStatus::Completed, 2));
    orchestrator.shutdown().await;
}

/// Once its window has passed, a cap lets the entity through again.
pub async fn a_cap_frees_after_its_window<S: Store>(store: Arc<S>) {
    let ledger = Arc::new(Ledger::default());
    let orchestrator = running(&store, |o| o.register(Windowed(ledger.clone())).unwrap());
    let first = orchestrator
        .start::<Windowed>(&cart("dee", "c1"))
        .await
        .unwrap();
    finished(&orchestrator, first).await;
    let second = orchestrator
        .start::<Windowed>(&cart("dee", "c2"))
        .await
        .unwrap();
    finished(&orchestrator, second).await;
    let started = Instant::now();
    let window_left = ledger.calls("email")[0].2 + Duration::from_millis(450);
    tokio::time::sleep(window_left.saturating_duration_since(started)).await;
    let third = orchestrator
        .start::<Windowed>(&cart("dee", "c3"))
        .await
        .unwrap();
    finished(&orchestrator, third).await;
    let statuses = [
        step_status(&store, first, 0).await,
        step_status(&store, second, 0).await,
        step_status(&store, third, 0).await,
    ];
    assert_eq!(
        statuses,
        [
            Some(StepStatus::Completed),
            Some(StepStatus::Skipped),
            Some(StepStatus::Completed)
        ],
        "inside the window skipped, after it sent"
    );
    assert_eq!(ledger.calls("email").len(), 2);
    orchestrator.shutdown().await;
}

/// A rate limit of 5 calls per second: 12 sagas at once all complete, each on its one allowed
/// attempt (waiting spends none), and no window of a second holds more than 5 calls.
pub async fn a_rate_limit_is_never_exceeded_and_spends_no_attempt<S: Store>(store: Arc<S>) {
    let ledger = Arc::new(Ledger::default());
    let orchestrator = running(&store, |o| o.register(Limited(ledger.clone())).unwrap());
    let mut ids = Vec::new();
    for n in 0..12 {
        ids.push(
            orchestrator
                .start::<Limited>(&cart(&format!("c{n}"), &format!("k{n}")))
                .await
                .unwrap(),
        );
    }
    for id in &ids {
        assert_eq!(finished(&orchestrator, *id).await, SagaStatus::Completed);
        let snapshot = store.load(*id).await.unwrap().unwrap();
        assert_eq!(
            snapshot
                .step(StepIndex(0), Phase::Action)
                .unwrap()
                .attempt
                .0,
            1
        );
    }
    let mut calls: Vec<Instant> = ledger.calls("partner").iter().map(|(.., at)| *at).collect();
    calls.sort();
    assert_eq!(calls.len(), 12);
    // The limit counts when a call is granted; the call follows by the time its `in_progress`
    // takes to write, so the windows checked here allow for that much.
    let slack = Duration::from_millis(150);
    for (position, at) in calls.iter().enumerate() {
        let in_window = calls[position..]
            .iter()
            .take_while(|later| **later < *at + (Duration::from_secs(1) - slack))
            .count();
        assert!(
            in_window <= 5,
            "{in_window} calls within a second: {calls:?}"
        );
    }
    assert!(
        calls[11].duration_since(calls[0]) >= Duration::from_secs(2) - slack,
        "12 calls at 5 per second take two windows at least: {calls:?}"
    );
    orchestrator.shutdown().await;
}

/// A throttled call makes the whole integration back off: no other saga calls the partner
/// until the time it asked for, and the throttled saga retries after it.
pub async fn throttling_backs_off_the_whole_integration<S: Store>(store: Arc<S>) {
    let ledger = Arc::new(Ledger::default());
    *ledger.throttles.lock().unwrap() = 1;
    let orchestrator = running(&store, |o| o.register(Throttled(ledger.clone())).unwrap());
    let first = orchestrator
        .start::<Throttled>(&cart("t0", "k0"))
        .await
        .unwrap();
    let deadline = Instant::now() + WAIT;
    while ledger.calls("partner").is_empty() {
        assert!(Instant::now() < deadline, "the first call never came");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let throttled_at = ledger.calls("partner")[0].2;
    let mut ids = vec![first];
    for n in 1..4 {
        ids.push(
            orchestrator
                .start::<Throttled>(&cart(&format!("t{n}"), &format!("k{n}")))
                .await
                .unwrap(),
        );
    }
    for id in &ids {
        assert_eq!(finished(&orchestrator, *id).await, SagaStatus::Completed);
    }
    let calls = ledger.calls("partner");
    assert_eq!(
        calls.len(),
        5,
        "the throttled call, its retry, three others"
    );
    for (customer, _, at) in &calls[1..] {
        assert!(
            at.duration_since(throttled_at) >= Duration::from_millis(550),
            "{customer} called {:?} after the 429 asked for 600 ms",
            at.duration_since(throttled_at)
        );
    }
    let history = store.history(ids[1]).await.unwrap();
    assert!(
        history.iter().any(|event| event.kind == EventKind::Held
            && event.detail.as_deref().unwrap_or("").contains("throttling")),
        "a saga held by the back-off says so in its history"
    );
    orchestrator.shutdown().await;
}

/// One running saga per cart: a second saga for the same cart is held (no worker, no lease,
/// the reason recorded) until the first ends; another cart's saga runs at once.
pub async fn per_key_concurrency_holds_the_excess_until_a_slot_frees<S: Store>(store: Arc<S>) {
    let ledger = Arc::new(Ledger::default());
    let orchestrator = running(&store, |o| o.register(OnePerCart(ledger.clone())).unwrap());
    let first = orchestrator
        .start::<OnePerCart>(&cart("a", "cart-1"))
        .await
        .unwrap();
    let deadline = Instant::now() + WAIT;
    while ledger.calls("reserve").is_empty() {
        assert!(Instant::now() < deadline, "the first saga never reserved");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let second = orchestrator
        .start::<OnePerCart>(&cart("b", "cart-1"))
        .await
        .unwrap();
    let other = orchestrator
        .start::<OnePerCart>(&cart("c", "cart-2"))
        .await
        .unwrap();
    // The second is held while the first lingers.
    let deadline = Instant::now() + WAIT;
    loop {
        let saga = store.load(second).await.unwrap().unwrap();
        if saga.record.waiting_for.as_deref() == Some("policy:concurrency:cart_flow:cart-1") {
            assert!(
                saga.record.lease_owner.is_none(),
                "held sagas hold no lease"
            );
            break;
        }
        assert!(Instant::now() < deadline, "the second saga was never held");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for id in [first, second, other] {
        assert_eq!(finished(&orchestrator, id).await, SagaStatus::Completed);
    }
    let reserves = ledger.calls("reserve");
    let finishes = ledger.calls("finish");
    let at = |calls: &[(String, String, Instant)], who: &str| {
        calls
            .iter()
            .find(|(customer, ..)| customer == who)
            .unwrap()
            .2
    };
    assert!(
        at(&reserves, "b") > at(&finishes, "a"),
        "the second saga for cart-1 began only after the first ended"
    );
    assert!(
        at(&reserves, "c") < at(&finishes, "a"),
        "another cart's saga did not wait"
    );
    let history = store.history(second).await.unwrap();
    let held: Vec<_> = history
        .iter()
        .filter(|event| event.kind == EventKind::Held)
        .collect();
    assert_eq!(
        held.len(),
        1,
        "held once in the history, however often it looked"
    );
    assert!(held[0]
        .detail
        .as_deref()
        .unwrap_or("")
        .contains("concurrency `cart_flow`"));
    orchestrator.shutdown().await;
}

/// A retry budget of 2 per customer: the first saga retries twice and then fails for good
/// (and compensates) although its own policy allows 10 attempts; a second saga of the same
/// customer gets its first attempt and no retry; another customer's budget is its own.
pub async fn a_spent_retry_budget_fails_the_step_and_the_saga_compensates<S: Store>(store: Arc<S>) {
    let ledger = Arc::new(Ledger::default());
    let orchestrator = running(&store, |o| o.register(Budgeted(ledger.clone())).unwrap());
    let first = orchestrator
        .start::<Budgeted>(&cart("noisy", "c1"))
        .await
        .unwrap();
    assert_eq!(
        finished(&orchestrator, first).await,
        SagaStatus::Compensated
    );
    let second = orchestrator
        .start::<Budgeted>(&cart("noisy", "c2"))
        .await
        .unwrap();
    assert_eq!(
        finished(&orchestrator, second).await,
        SagaStatus::Compensated
    );
    let quiet = orchestrator
        .start::<Budgeted>(&cart("quiet", "c3"))
        .await
        .unwrap();
    assert_eq!(
        finished(&orchestrator, quiet).await,
        SagaStatus::Compensated
    );
    let busy = ledger.calls("busy");
    let of = |which: &str| busy.iter().filter(|(_, c, _)| c == which).count();
    assert_eq!(
        (of("c1"), of("c2"), of("c3")),
        (3, 1, 3),
        "noisy: 1 + 2 retries, then 1 and none; quiet: its own 2 retries"
    );
    let snapshot = store.load(first).await.unwrap().unwrap();
    let step = snapshot.step(StepIndex(1), Phase::Action).unwrap();
    assert_eq!(step.status, StepStatus::Failed);
    assert!(
        step.last_error
            .as_deref()
            .unwrap_or("")
            .contains("retry budget `contact`"),
        "the failure says which budget: {:?}",
        step.last_error
    );
    assert_eq!(
        ledger.calls("release").len(),
        3,
        "each saga released its reservation"
    );
    orchestrator.shutdown().await;
}

/// A pause of a saga type holds new attempts in every worker (the sagas hold no lease and
/// say why), lists who paused and why, and a resume (who and why recorded) wakes them.
pub async fn a_pause_holds_new_attempts_until_resumed<S: Store>(store: Arc<S>) {
    let ledger = Arc::new(Ledger::default());
    let orchestrator = running(&store, |o| o.register(Capped(ledger.clone())).unwrap());
    let admin = orchestrator.admin();
    let scope = PauseScope {
        saga_type: SagaType::new("capped"),
        step: Some(StepName::new("email")),
    };
    let (pause, new) = admin
        .pause(scope.clone(), "alice", "runaway campaign")
        .await
        .unwrap();
    assert!(new);
    let (again, new) = admin.pause(scope.clone(), "bob", "me too").await.unwrap();
    assert!(!new, "pausing twice keeps the first pause");
    assert_eq!((again.id, again.paused_by.as_str()), (pause.id, "alice"));
    let id = orchestrator
        .start::<Capped>(&cart("pat", "c1"))
        .await
        .unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let saga = store.load(id).await.unwrap().unwrap();
        if saga.record.waiting_for.as_deref() == Some("paused:capped/email")
            && saga.record.lease_owner.is_none()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the saga was never held by the pause"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        ledger.calls("reserve").len(),
        1,
        "the step before the paused one ran"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        ledger.calls("email").is_empty(),
        "nothing of the paused step began"
    );
    let in_force = Admin::new(store.clone() as Arc<dyn Store>)
        .pauses(false)
        .await
        .unwrap();
    assert_eq!(in_force.len(), 1);
    assert_eq!(in_force[0].reason, "runaway campaign");

    let (lifted, woken) = admin
        .resume(scope.clone(), "carol", "fixed the template")
        .await
        .unwrap();
    assert_eq!(woken, 1, "the held saga is woken");
    assert_eq!(lifted.resumed_by.as_deref(), Some("carol"));
    assert_eq!(finished(&orchestrator, id).await, SagaStatus::Completed);
    assert_eq!(ledger.calls("email").len(), 1);
    let all = admin.pauses(true).await.unwrap();
    assert!(admin.pauses(false).await.unwrap().is_empty());
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].resume_reason.as_deref(), Some("fixed the template"));
    let history = store.history(id).await.unwrap();
    assert!(history.iter().any(|event| event.kind == EventKind::Held
        && event
            .detail
            .as_deref()
            .unwrap_or("")
            .contains("paused by alice")));
    assert!(
        admin.resume(scope, "carol", "again").await.is_err(),
        "resuming what is not paused is refused"
    );
    orchestrator.shutdown().await;
}

ledgered!(
    Nudge,
    "email (a start key dedups starts for 400 ms).",
    SagaDefinition::new("nudge", 1)
        .dedup_window(Duration::from_millis(400))
        .step(Step::new("email", email::<Self>).irreversible())
);

/// A start key with a dedup window: a repeat inside the window returns the saga that holds
/// the key (a different input is a conflict), after it the key starts a new saga (the earlier
/// one keeps a retired key); and a saga inside its window is not pruned.
pub async fn a_dedup_window_returns_the_saga_inside_it_and_starts_anew_after<S: Store>(
    store: Arc<S>,
) {
    use saga_core::{Created, Error, IdempotencyKey};
    let ledger = Arc::new(Ledger::default());
    let orchestrator = running(&store, |o| o.register(Nudge(ledger.clone())).unwrap());
    let key = IdempotencyKey::new("nudge:ann:store-7");
    let input = cart("ann", "c1");
    let first = orchestrator
        .start_with_key::<Nudge>(key.clone(), &input)
        .await
        .unwrap();
    assert!(matches!(first, Created::New(_)));
    let repeat = orchestrator
        .start_with_key::<Nudge>(key.clone(), &input)
        .await
        .unwrap();
    assert_eq!(
        repeat,
        Created::Existing(first.id()),
        "a repeat inside the window"
    );
    assert!(matches!(
        orchestrator
            .start_with_key::<Nudge>(key.clone(), &cart("ann", "other"))
            .await,
        Err(Error::Conflict { .. })
    ));
    finished(&orchestrator, first.id()).await;
    tokio::time::sleep(Duration::from_millis(450)).await;
    let later = orchestrator
        .start_with_key::<Nudge>(key.clone(), &input)
        .await
        .unwrap();
    assert!(
        matches!(later, Created::New(id) if id != first.id()),
        "after the window the key starts a new saga: {later:?}"
    );
    finished(&orchestrator, later.id()).await;
    let retired = store.load(first.id()).await.unwrap().unwrap();
    assert_eq!(
        retired.record.idempotency_key,
        Some(saga_core::store::retired_key(&key, first.id())),
        "the earlier saga keeps a retired key"
    );
    assert_eq!(ledger.calls("email").len(), 2);
    // Pruning everything finished: the first saga's window ended, the later one's has not.
    let far = saga_core::after(saga_core::now(), Duration::from_secs(3600));
    assert_eq!(store.prune(far, 100).await.unwrap(), 1);
    assert!(store.load(first.id()).await.unwrap().is_none());
    assert!(
        store.load(later.id()).await.unwrap().is_some(),
        "kept inside its window"
    );
    let again = orchestrator
        .start_with_key::<Nudge>(key.clone(), &input)
        .await
        .unwrap();
    assert_eq!(again, Created::Existing(later.id()));
    orchestrator.shutdown().await;
}

async fn lost_answer<S: Ledgered>(saga: Arc<S>, ctx: StepContext<Cart>) -> Result<(), StepError> {
    saga.ledger().record("lost", ctx.input());
    Err(StepError::unknown("the partner's answer was lost"))
}

ledgered!(
    Unanswered,
    "reserve, call a partner whose answers are lost (10 attempts; 1 retry per customer per hour).",
    SagaDefinition::new("unanswered", 1)
        .step(Step::new("reserve", reserve::<Self>).compensate(release::<Self>))
        .step(
            Step::new("call", lost_answer::<Self>)
                .compensate(unsend::<Self>)
                .retry(RetryPolicy::exponential(10, Duration::from_millis(5)))
                .retry_budget("unanswered", 1, Duration::from_secs(3600), customer)
        )
);

/// A retry budget spent after an attempt whose outcome is unknown neither fails the step nor
/// compensates the saga: the call may have taken effect, so a person settles it (an
/// `unknown_outcome` item), and nothing is compensated meanwhile.
pub async fn a_spent_retry_budget_after_an_unknown_outcome_escalates_it<S: Store>(store: Arc<S>) {
    use saga_core::InterventionKind;
    let ledger = Arc::new(Ledger::default());
    let orchestrator = running(&store, |o| o.register(Unanswered(ledger.clone())).unwrap());
    let id = orchestrator
        .start::<Unanswered>(&cart("una", "c1"))
        .await
        .unwrap();
    assert_eq!(
        finished(&orchestrator, id).await,
        SagaStatus::NeedsIntervention
    );
    assert_eq!(
        ledger.calls("lost").len(),
        2,
        "the first attempt and the one retry the budget allows"
    );
    let items = store.interventions(true).await.unwrap();
    let item = items
        .iter()
        .find(|item| item.saga_id == id)
        .expect("an intervention item for the saga");
    assert_eq!(item.item.kind, InterventionKind::UnknownOutcome);
    assert!(
        item.item.error.contains("retry budget `unanswered`"),
        "{}",
        item.item.error
    );
    let snapshot = store.load(id).await.unwrap().unwrap();
    let step = snapshot.step(StepIndex(1), Phase::Action).unwrap();
    assert_eq!(
        step.status,
        StepStatus::InProgress,
        "its outcome stays unknown"
    );
    assert!(
        ledger.calls("release").is_empty() && ledger.calls("unsend").is_empty(),
        "nothing is compensated while the outcome is unknown"
    );
    orchestrator.shutdown().await;
}
