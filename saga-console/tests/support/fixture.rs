//! A store holding a saga in each state the console shows, and the console over it.
//!
//! [`populate`] runs real sagas through an [`Orchestrator`] on any backend (memory, SQLite,
//! Postgres) until the store holds:
//!
//! | saga | type | start key | status |
//! |---|---|---|---|
//! | `completed` | `order` | `order-42` | completed |
//! | `compensated` | `order` | `order-43` | compensated (the card was declined) |
//! | `parked` | `order` | `order-44` | needs_intervention: the card was declined and the release of the stock failed for good, so one `compensation_failed` item is open (`item`) |
//! | `script` | `order` | none | completed; its input has a `<script>` note and a card number |
//! | `awaiting_approval` | `refund` | `refund-7` | running, waiting at its `manager_approval` step |
//!
//! Every `order` input carries [`CARD_NUMBER`] in `card_number`, which [`console`] redacts, so no
//! response of the console may contain it. [`console`] builds the router with one operator
//! ([`OPERATOR`], `alice`) and one viewer ([`VIEWER`], `victor`), and lets `alice` decide
//! the approvals of `refund` sagas.

#![allow(
    dead_code,
    unreachable_pub,
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use saga_console::{ConsoleOptions, RedactFields, Role, Tokens};
use saga_core::{
    Admin, Approval, Approvers, Config, IdempotencyKey, InterventionId, Orchestrator, RetryPolicy,
    Saga, SagaDefinition, SagaFilter, SagaId, SagaStatus, Step, StepContext, StepError, Store,
};
use serde_json::{json, Value};

/// The operator's name, as recorded in the history.
pub const OPERATOR: &str = "alice";
/// The operator's bearer token (also the value of her session cookie).
pub const OPERATOR_TOKEN: &str = "alice-operator-token-7f3a9c2e5b81";
/// The viewer's name.
pub const VIEWER: &str = "victor";
/// The viewer's bearer token.
pub const VIEWER_TOKEN: &str = "victor-viewer-token-0d4e6b1a9c37";
/// The card number in every `order` input; redacted, it must appear in no response.
pub const CARD_NUMBER: &str = "4242424242424242";
/// The note of the `script` saga, which every page must escape.
pub const SCRIPT_NOTE: &str = "<script>alert('x')</script>";
/// The start key of the completed saga, to search for.
pub const COMPLETED_KEY: &str = "order-42";
/// The start key of the parked saga.
pub const PARKED_KEY: &str = "order-44";
/// The field the console redacts.
pub const REDACTED_FIELD: &str = "card_number";

/// The error of the compensation that fails for good (the item's error).
pub const RELEASE_ERROR: &str = "the warehouse refused to release the reservation";

/// An order: reserve stock, charge the card, send the receipt. Its input says what fails:
/// `"decline": true` declines the card (the saga compensates), and `"release_fails": true`
/// makes the release of the stock fail for good (the saga then waits for a person).
pub struct Order;

async fn reserve_stock(_: Arc<Order>, ctx: StepContext<Value>) -> Result<Value, StepError> {
    Ok(json!({ "reservation": format!("res-{}", ctx.input()["order"]) }))
}

async fn release_stock(
    _: Arc<Order>,
    ctx: StepContext<Value>,
    _reservation: Value,
) -> Result<(), StepError> {
    if ctx.input()["release_fails"] == json!(true) {
        return Err(StepError::permanent(RELEASE_ERROR));
    }
    Ok(())
}

async fn charge_card(_: Arc<Order>, ctx: StepContext<Value>) -> Result<Value, StepError> {
    if ctx.input()["decline"] == json!(true) {
        return Err(StepError::permanent("card declined by the issuer"));
    }
    Ok(json!({ "charge": format!("ch-{}", ctx.input()["order"]) }))
}

async fn refund_card(
    _: Arc<Order>,
    _: StepContext<Value>,
    _charge: Value,
) -> Result<(), StepError> {
    Ok(())
}

async fn send_receipt(_: Arc<Order>, _: StepContext<Value>) -> Result<(), StepError> {
    Ok(())
}

impl Saga for Order {
    type Input = Value;

    fn definition() -> SagaDefinition<Self> {
        let quick = RetryPolicy::exponential(2, Duration::from_millis(10));
        SagaDefinition::new("order", 1)
            .step(
                Step::new("reserve_stock", reserve_stock)
                    .compensate(release_stock)
                    .compensation_retry(RetryPolicy::NONE),
            )
            .step(
                Step::new("charge_card", charge_card)
                    .compensate(refund_card)
                    .retry(quick),
            )
            .step(Step::new("send_receipt", send_receipt).irreversible())
    }
}

/// A refund: waits for a manager's approval, then pays.
pub struct Refund;

async fn pay_refund(_: Arc<Refund>, ctx: StepContext<Value>) -> Result<Value, StepError> {
    let approval: Approval = ctx.output("manager_approval")?;
    Ok(json!({ "paid": ctx.input()["amount"], "approved_by": approval.by }))
}

impl Saga for Refund {
    type Input = Value;

    fn definition() -> SagaDefinition<Self> {
        SagaDefinition::new("refund", 1)
            .step(Step::approval("manager_approval"))
            .step(Step::new("pay_refund", pay_refund).irreversible())
    }
}

/// What [`populate`] left in the store.
#[derive(Debug, Clone, Copy)]
pub struct Fixture {
    /// Completed, start key [`COMPLETED_KEY`].
    pub completed: SagaId,
    /// Compensated (the card was declined), start key `order-43`.
    pub compensated: SagaId,
    /// Waiting in `needs_intervention`, start key [`PARKED_KEY`].
    pub parked: SagaId,
    /// The parked saga's open `compensation_failed` item (step `reserve_stock`).
    pub item: InterventionId,
    /// Completed; its input has [`SCRIPT_NOTE`] and [`CARD_NUMBER`].
    pub script: SagaId,
    /// A `refund` saga, running, waiting for an approval (start key `refund-7`).
    pub awaiting_approval: SagaId,
}

impl Fixture {
    /// Every saga of the fixture.
    pub fn sagas(&self) -> [SagaId; 5] {
        [
            self.completed,
            self.compensated,
            self.parked,
            self.script,
            self.awaiting_approval,
        ]
    }
}

/// An order's input: `order` number, the card, and what fails.
pub fn order_input(order: u64, decline: bool, release_fails: bool) -> Value {
    json!({
        "order": order,
        "customer": "ada",
        "card_number": CARD_NUMBER,
        "decline": decline,
        "release_fails": release_fails,
    })
}

/// An orchestrator over `store` with [`Order`] and [`Refund`] registered and quick polling; no
/// worker runs until `run()`.
pub fn orchestrator(store: Arc<dyn Store>) -> Orchestrator {
    let orchestrator = Orchestrator::new(
        store,
        Config::default()
            .concurrency(2)
            .poll_interval(Duration::from_millis(20)),
    );
    orchestrator.register(Order).expect("register order");
    orchestrator.register(Refund).expect("register refund");
    orchestrator
}

const SETTLE: Duration = Duration::from_secs(30);

/// Starts an order with `key` and `input`, and waits until it settles (finished or waiting for
/// a person); returns its id and status.
pub async fn run_order(
    orchestrator: &Orchestrator,
    key: Option<&str>,
    input: &Value,
) -> (SagaId, SagaStatus) {
    let id = match key {
        Some(key) => orchestrator
            .start_with_key::<Order>(IdempotencyKey::new(key), input)
            .await
            .expect("start order")
            .id(),
        None => orchestrator
            .start::<Order>(input)
            .await
            .expect("start order"),
    };
    let record = orchestrator.wait(id, SETTLE).await.expect("order settles");
    (id, record.status)
}

/// The open item of saga `id`.
pub async fn open_item_of(store: &Arc<dyn Store>, id: SagaId) -> InterventionId {
    let items = store.interventions(true).await.expect("list interventions");
    items
        .iter()
        .find(|item| item.saga_id == id)
        .unwrap_or_else(|| panic!("saga {id} has no open item among {items:?}"))
        .item
        .id
}

/// Waits (bounded) until saga `id` waits for an approval.
pub async fn until_awaiting_approval(store: &Arc<dyn Store>, id: SagaId) {
    let admin = Admin::new(Arc::clone(store));
    let deadline = Instant::now() + SETTLE;
    loop {
        let pending = admin
            .approvals(&SagaFilter::default())
            .await
            .expect("list approvals");
        if pending.iter().any(|approval| approval.saga.id == id) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "saga {id} did not reach its approval step within {SETTLE:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Fills `store` with the sagas of [`Fixture`] (see the module's table) and returns their ids.
/// No worker runs afterwards: the store stays as described until a test acts.
pub async fn populate(store: Arc<dyn Store>) -> Fixture {
    let orchestrator = orchestrator(Arc::clone(&store));
    orchestrator.run();
    let (completed, status) = run_order(
        &orchestrator,
        Some(COMPLETED_KEY),
        &order_input(42, false, false),
    )
    .await;
    assert_eq!(status, SagaStatus::Completed);
    let (compensated, status) = run_order(
        &orchestrator,
        Some("order-43"),
        &order_input(43, true, false),
    )
    .await;
    assert_eq!(status, SagaStatus::Compensated);
    let (parked, status) = run_order(
        &orchestrator,
        Some(PARKED_KEY),
        &order_input(44, true, true),
    )
    .await;
    assert_eq!(status, SagaStatus::NeedsIntervention);
    let mut script_input = order_input(45, false, false);
    script_input["note"] = json!(SCRIPT_NOTE);
    let (script, status) = run_order(&orchestrator, None, &script_input).await;
    assert_eq!(status, SagaStatus::Completed);
    let awaiting_approval = orchestrator
        .start_with_key::<Refund>(
            IdempotencyKey::new("refund-7"),
            &json!({ "order": 42, "amount": 1250 }),
        )
        .await
        .expect("start refund")
        .id();
    until_awaiting_approval(&store, awaiting_approval).await;
    orchestrator.shutdown().await;
    let item = open_item_of(&store, parked).await;
    Fixture {
        completed,
        compensated,
        parked,
        item,
        script,
        awaiting_approval,
    }
}

/// Parks one more order (its compensation fails for good) with start key `order-{order}`;
/// returns the saga and its open item.
pub async fn park_another(store: Arc<dyn Store>, order: u64) -> (SagaId, InterventionId) {
    let orchestrator = orchestrator(Arc::clone(&store));
    orchestrator.run();
    let (id, status) = run_order(
        &orchestrator,
        Some(&format!("order-{order}")),
        &order_input(order, true, true),
    )
    .await;
    orchestrator.shutdown().await;
    assert_eq!(status, SagaStatus::NeedsIntervention);
    (id, open_item_of(&store, id).await)
}

/// Runs an orchestrator over `store` until saga `id` settles (finished or waiting for a person)
/// and returns its status: how a test sees a saga move on after an operator's action.
pub async fn drive(store: Arc<dyn Store>, id: SagaId) -> SagaStatus {
    let orchestrator = orchestrator(store);
    orchestrator.run();
    let record = orchestrator.wait(id, SETTLE).await.expect("saga settles");
    orchestrator.shutdown().await;
    record.status
}

/// The console's tokens: `alice` operates, `victor` views.
pub fn tokens() -> Tokens {
    Tokens::new()
        .with(OPERATOR, Role::Operator, OPERATOR_TOKEN)
        .expect("operator token")
        .with(VIEWER, Role::Viewer, VIEWER_TOKEN)
        .expect("viewer token")
}

/// The console over `store` as tests see it.
pub struct Console {
    /// The console's router, not nested (its paths start at `/`).
    pub router: Router,
    /// `alice`'s token.
    pub operator_token: &'static str,
    /// `victor`'s token.
    pub viewer_token: &'static str,
}

/// The console's options: [`tokens`] and the `card_number` redactor.
pub fn options() -> ConsoleOptions {
    ConsoleOptions::new(Arc::new(tokens())).redact(Arc::new(RedactFields::new([REDACTED_FIELD])))
}

/// The console over `store` with [`options`]; `alice` may decide `refund` approvals.
pub fn console(store: Arc<dyn Store>) -> Console {
    console_with(store, options())
}

/// The console over `store` with other `options` (anonymous access, a bound on bulk retries).
pub fn console_with(store: Arc<dyn Store>, options: ConsoleOptions) -> Console {
    let approvers: Approvers = format!("refund={OPERATOR}").parse().expect("approvers");
    let admin = Admin::new(store).with_approvals(Arc::new(approvers));
    Console {
        router: saga_console::router(admin, options),
        operator_token: OPERATOR_TOKEN,
        viewer_token: VIEWER_TOKEN,
    }
}
