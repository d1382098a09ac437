//! An order that ships through a child saga: reserve the stock, then start a `shipment` saga
//! (pack the parcel, buy its label) and wait for it without holding a worker, then charge. The
//! shipment's end decides the order's step; undoing the order undoes the shipment.
//!
//! ```text
//! cargo run --example shipping                  # four orders on sqlite://saga-shipping.db
//! ```
//!
//! Order 1 ships and is charged. Order 2's carrier refuses the label: the shipment unpacks its
//! parcel and ends compensated, so the order's step fails and the stock is released. Order 3's
//! card is declined after the parcel shipped: the order sends its completed shipment back (the
//! label is voided, the parcel unpacked) before it releases the stock. Order 4 is cancelled by
//! an operator while its parcel is being packed: the shipment is cancelled with it.
//!
//! The simulated warehouse, carrier and bank honour the step's idempotency key and keep a
//! ledger. The program prints each order with its shipment, then checks what a customer would:
//! a completed order holds its stock, parcel and label; a compensated one holds none of them;
//! nothing was done twice. It prints `name=value` lines and exits non-zero when a check fails.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use saga::{
    ChildOutput, Config, Orchestrator, Saga, SagaFilter, SagaId, SagaStatus, StepContext,
    StepError, Store,
};
use serde::{Deserialize, Serialize};

/// Ships orders through child sagas.
#[derive(Debug, Parser)]
#[command(name = "shipping")]
struct Args {
    /// Store URL.
    #[arg(long, default_value = "sqlite://saga-shipping.db")]
    db: String,
}

/// One order: the order saga's input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Order {
    order_no: u64,
    /// The carrier refuses this order's label.
    label_refused: bool,
    /// The bank declines this order's card.
    card_declined: bool,
    /// How long packing takes, in ms.
    packing_ms: u64,
}

/// One parcel: the shipment saga's input, computed from the order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Parcel {
    order_no: u64,
    label_refused: bool,
    packing_ms: u64,
}

/// What a partner did, handed to the compensation that undoes it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Receipt {
    reference: String,
}

/// The warehouse, the carrier and the bank: what they did, by idempotency key.
#[derive(Default)]
struct World {
    /// Key -> (what, order, undone).
    ledger: Mutex<BTreeMap<String, (String, u64, bool)>>,
    /// Calls made with a key already seen (a key makes a repeat harmless, and counts it here).
    repeats: Mutex<u64>,
}

impl World {
    /// Does `what` for `order` under `key`, once.
    fn act(&self, key: &str, order: u64, what: &str) -> Receipt {
        if let Ok(mut ledger) = self.ledger.lock() {
            if ledger.contains_key(key) {
                if let Ok(mut repeats) = self.repeats.lock() {
                    *repeats += 1;
                }
            } else {
                ledger.insert(key.to_owned(), (what.to_owned(), order, false));
            }
        }
        Receipt {
            reference: format!("{what}-{order}"),
        }
    }

    /// Undoes what the action with `action_key` did.
    fn undo(&self, action_key: &str) {
        if let Ok(mut ledger) = self.ledger.lock() {
            if let Some(entry) = ledger.get_mut(action_key) {
                entry.2 = true;
            }
        }
    }

    /// What is still in effect for `order` (done and not undone).
    fn held(&self, order: u64) -> Vec<String> {
        self.ledger
            .lock()
            .map(|ledger| {
                ledger
                    .values()
                    .filter(|(_, o, undone)| *o == order && !undone)
                    .map(|(what, _, _)| what.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn started(&self, order: u64, what: &str) -> bool {
        self.ledger
            .lock()
            .map(|ledger| ledger.values().any(|(w, o, _)| *o == order && w == what))
            .unwrap_or(false)
    }
}

/// The key of the action that `ctx` (a compensation) undoes.
fn action_key<I>(ctx: &StepContext<I>) -> String {
    format!("{}:{}:action", ctx.saga_id(), ctx.step())
}

/// The order saga: its `ship` step starts a shipment saga and waits for its end.
#[derive(Saga)]
#[saga(name = "order", version = 1, input = Order)]
#[step(reserve_stock, compensate = release_stock)]
#[step(ship, child = ShipmentSaga, child_input = parcel_of)]
#[step(charge, irreversible)]
struct OrderSaga {
    world: Arc<World>,
}

async fn reserve_stock(
    saga: Arc<OrderSaga>,
    ctx: StepContext<Order>,
) -> Result<Receipt, StepError> {
    Ok(saga
        .world
        .act(ctx.key().as_str(), ctx.input().order_no, "stock"))
}

async fn release_stock(
    saga: Arc<OrderSaga>,
    ctx: StepContext<Order>,
    _: Receipt,
) -> Result<(), StepError> {
    saga.world.undo(&action_key(&ctx));
    Ok(())
}

/// The shipment's input: the parcel of this order.
fn parcel_of(_: &OrderSaga, ctx: &StepContext<Order>) -> Result<Parcel, StepError> {
    let order = ctx.input();
    Ok(Parcel {
        order_no: order.order_no,
        label_refused: order.label_refused,
        packing_ms: order.packing_ms,
    })
}

async fn charge(saga: Arc<OrderSaga>, ctx: StepContext<Order>) -> Result<Receipt, StepError> {
    // The shipment's outputs reach the steps after it.
    let shipped: ChildOutput = ctx.output("ship")?;
    let label: Receipt = shipped.output("buy_label")?;
    let order = ctx.input();
    if order.card_declined {
        return Err(StepError::permanent(format!(
            "card declined for order {} (parcel {} shipped)",
            order.order_no, label.reference
        )));
    }
    Ok(saga
        .world
        .act(ctx.key().as_str(), order.order_no, "payment"))
}

/// The shipment saga, started by an order's `ship` step.
#[derive(Saga)]
#[saga(name = "shipment", version = 1, input = Parcel)]
#[step(pack, compensate = unpack, timeout = "5s")]
#[step(buy_label, compensate = void_label)]
struct ShipmentSaga {
    world: Arc<World>,
}

async fn pack(saga: Arc<ShipmentSaga>, ctx: StepContext<Parcel>) -> Result<Receipt, StepError> {
    let parcel = ctx.input();
    let receipt = saga
        .world
        .act(ctx.key().as_str(), parcel.order_no, "parcel");
    tokio::time::sleep(Duration::from_millis(parcel.packing_ms)).await;
    Ok(receipt)
}

async fn unpack(
    saga: Arc<ShipmentSaga>,
    ctx: StepContext<Parcel>,
    _: Receipt,
) -> Result<(), StepError> {
    saga.world.undo(&action_key(&ctx));
    Ok(())
}

async fn buy_label(
    saga: Arc<ShipmentSaga>,
    ctx: StepContext<Parcel>,
) -> Result<Receipt, StepError> {
    let parcel = ctx.input();
    if parcel.label_refused {
        return Err(StepError::permanent(format!(
            "the carrier refuses a label for order {}'s parcel",
            parcel.order_no
        )));
    }
    Ok(saga.world.act(ctx.key().as_str(), parcel.order_no, "label"))
}

async fn void_label(
    saga: Arc<ShipmentSaga>,
    ctx: StepContext<Parcel>,
    _: Receipt,
) -> Result<(), StepError> {
    saga.world.undo(&action_key(&ctx));
    Ok(())
}

fn order(order_no: u64) -> Order {
    Order {
        order_no,
        label_refused: order_no == 2,
        card_declined: order_no == 3,
        packing_ms: if order_no == 4 { 1_500 } else { 20 },
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let store: Arc<dyn Store> = saga::connect(&args.db).await?;
    let orchestrator = Orchestrator::new(store.clone(), Config::default());
    let world = Arc::new(World::default());
    orchestrator.register(OrderSaga {
        world: world.clone(),
    })?;
    orchestrator.register(ShipmentSaga {
        world: world.clone(),
    })?;
    orchestrator.run();

    let mut ids: Vec<(u64, SagaId)> = Vec::new();
    for n in 1..=4 {
        ids.push((n, orchestrator.start::<OrderSaga>(&order(n)).await?));
    }
    // Order 4: an operator cancels it while its parcel is being packed.
    let cancelled = ids[3].1;
    for _ in 0..500 {
        if world.started(4, "parcel") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    orchestrator
        .admin()
        .cancel_saga(cancelled, "ops", "the customer cancelled before shipping")
        .await?;

    let (mut completed, mut compensated, mut left, mut missing) = (0, 0, 0, 0);
    for (n, id) in &ids {
        let record = orchestrator.wait(*id, Duration::from_secs(30)).await?;
        let children = store
            .list(&SagaFilter {
                parent: Some(*id),
                ..SagaFilter::default()
            })
            .await?;
        let held = world.held(*n);
        println!("order {n}: {} (saga {id})", record.status);
        for child in &children {
            println!(
                "  shipment {}: {} (child of step `{}`)",
                child.id,
                child.status,
                child.parent.as_ref().map_or("-", |p| p.step.as_str())
            );
            // What its parent asked of it, from the shipment's history.
            for event in orchestrator.history(child.id).await?.events {
                if event.kind == saga::EventKind::OperatorAction {
                    println!("    {}", event.detail.unwrap_or_default());
                }
            }
        }
        println!("  still in effect: {held:?}");
        match record.status {
            SagaStatus::Completed => {
                completed += 1;
                for what in ["stock", "parcel", "label", "payment"] {
                    if !held.iter().any(|h| h == what) {
                        missing += 1;
                    }
                }
            }
            SagaStatus::Compensated => {
                compensated += 1;
                left += held.len();
            }
            _ => {}
        }
    }
    orchestrator.shutdown().await;
    let repeats = world.repeats.lock().map(|r| *r).unwrap_or(0);
    println!("orders=4");
    println!("completed={completed}");
    println!("compensated={compensated}");
    println!("effects_left_by_compensated_orders={left}");
    println!("effects_missing_from_completed_orders={missing}");
    println!("repeated_calls={repeats}");
    if completed != 1 || compensated != 3 || left != 0 || missing != 0 {
        return Err("a check failed: see the figures above".into());
    }
    Ok(())
}
