//! The quickstart demo: a checkout saga (reserve stock, charge card, send receipt) run for N
//! orders against simulated downstream services that fail the way real ones do — transient
//! errors, timeouts after the effect was applied, declined cards, compensations that fail.
//!
//! Every downstream call carries the step's idempotency key, and the simulated services honour
//! it, recording each call in the `demo_effects` table of the same database. However many
//! retries, crashes and reruns happen, no order is charged or emailed twice.
//!
//! ```text
//! cargo run --example quickstart -- --sagas 300 --seed 42 --workers 8
//! ```

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use saga::{
    Config, Error, IdempotencyKey, Orchestrator, Phase, RetryPolicy, Saga, SagaDefinition,
    SagaStatus, SqliteStore, Step, StepContext, StepError, Store,
};
use serde::{Deserialize, Serialize};
use sqlx::SqlitePool;

/// Runs the checkout saga for N orders against flaky simulated services.
#[derive(Debug, Parser)]
#[command(name = "quickstart")]
struct Args {
    /// Store URL.
    #[arg(long, default_value = "sqlite://saga-demo.db")]
    db: String,
    /// How many orders (sagas) to run; order i is started with the key `order-<i>`.
    #[arg(long, default_value_t = 300)]
    sagas: u64,
    /// Seed of the injected failures (a deterministic function of seed and order number).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// How many sagas run at once.
    #[arg(long, default_value_t = 8)]
    workers: usize,
}

/// One order: the saga input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Order {
    order_no: u64,
    customer: String,
    sku: String,
    quantity: u32,
    amount_cents: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Reservation {
    reservation_id: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Payment {
    charge_id: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Receipt {
    message_id: String,
}

/// The simulated downstream services: inventory, payments, mail.
struct Downstream {
    pool: SqlitePool,
    seed: u64,
}

impl Downstream {
    /// One call to a downstream API with an idempotency key. The service applies the effect
    /// at most once per key and counts every call; failures are injected deterministically.
    async fn call(&self, ctx: &StepContext<Order>) -> Result<String, StepError> {
        let order = ctx.input().order_no;
        let step = ctx.step().as_str();
        let phase = ctx.phase();
        let roll = |what: &str| unit(self.seed, order, step, phase, ctx.attempt().0, what);
        tokio::time::sleep(Duration::from_millis(1 + (roll("latency") * 4.0) as u64)).await;

        // Permanent failures: decided by the order, not the attempt.
        let fixed = |what: &str| unit(self.seed, order, step, phase, 0, what);
        match (step, phase) {
            ("charge_card", Phase::Action) if fixed("declined") < 0.10 => {
                return Err(StepError::permanent("card declined"));
            }
            ("send_receipt", Phase::Action) if fixed("bounced") < 0.04 => {
                return Err(StepError::permanent("mailbox does not exist"));
            }
            ("reserve_stock", Phase::Compensation) if fixed("stuck") < 0.15 => {
                return Err(StepError::permanent(
                    "warehouse rejected the release: reservation locked",
                ));
            }
            _ => {}
        }
        // Transient failure before the effect: a 503.
        let unavailable = if phase == Phase::Compensation {
            0.30
        } else {
            0.15
        };
        if roll("unavailable") < unavailable {
            return Err(StepError::transient("503 service unavailable"));
        }
        self.record(ctx).await?;
        // Transient failure after the effect: the response was lost, so the caller retries a
        // call that already took effect. Only the idempotency key prevents a second effect.
        if roll("lost_response") < 0.10 {
            return Err(StepError::transient("timeout waiting for the response"));
        }
        Ok(format!("{step}-{order}"))
    }

    async fn record(&self, ctx: &StepContext<Order>) -> Result<(), StepError> {
        sqlx::query(
            "INSERT INTO demo_effects (idempotency_key, saga_id, order_no, step, phase, calls, applied)
             VALUES (?, ?, ?, ?, ?, 1, 1)
             ON CONFLICT (idempotency_key) DO UPDATE SET calls = calls + 1",
        )
        .bind(ctx.key().as_str())
        .bind(ctx.saga_id().to_string())
        .bind(i64::try_from(ctx.input().order_no).unwrap_or(i64::MAX))
        .bind(ctx.step().as_str())
        .bind(ctx.phase().as_str())
        .execute(&self.pool)
        .await
        .map(|_| ())
        .map_err(|err| StepError::transient(format!("downstream storage: {err}")))
    }
}

/// A uniform draw in [0, 1) from (seed, order, step, phase, attempt, what): splitmix64.
fn unit(seed: u64, order: u64, step: &str, phase: Phase, attempt: u32, what: &str) -> f64 {
    let mut hash = seed ^ 0x9e37_79b9_7f4a_7c15;
    let text = format!("{order}/{step}/{phase}/{attempt}/{what}");
    for byte in text.bytes() {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x100_0000_01b3);
    }
    hash = (hash ^ (hash >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash = (hash ^ (hash >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^= hash >> 31;
    (hash >> 11) as f64 / (1u64 << 53) as f64
}

/// The checkout saga.
struct Checkout {
    downstream: Downstream,
}

async fn reserve_stock(
    saga: Arc<Checkout>,
    ctx: StepContext<Order>,
) -> Result<Reservation, StepError> {
    let reservation_id = saga.downstream.call(&ctx).await?;
    Ok(Reservation { reservation_id })
}

async fn release_stock(
    saga: Arc<Checkout>,
    ctx: StepContext<Order>,
    _reservation: Reservation,
) -> Result<(), StepError> {
    saga.downstream.call(&ctx).await.map(|_| ())
}

async fn charge_card(saga: Arc<Checkout>, ctx: StepContext<Order>) -> Result<Payment, StepError> {
    let charge_id = saga.downstream.call(&ctx).await?;
    Ok(Payment { charge_id })
}

async fn refund(
    saga: Arc<Checkout>,
    ctx: StepContext<Order>,
    _payment: Payment,
) -> Result<(), StepError> {
    saga.downstream.call(&ctx).await.map(|_| ())
}

async fn send_receipt(saga: Arc<Checkout>, ctx: StepContext<Order>) -> Result<Receipt, StepError> {
    let message_id = saga.downstream.call(&ctx).await?;
    Ok(Receipt { message_id })
}

impl Saga for Checkout {
    type Input = Order;

    fn definition() -> SagaDefinition<Self> {
        let retry = RetryPolicy::exponential(5, Duration::from_millis(20))
            .with_max_delay(Duration::from_millis(500));
        let compensation_retry = RetryPolicy::exponential(3, Duration::from_millis(20))
            .with_max_delay(Duration::from_millis(500));
        SagaDefinition::new("checkout", 1)
            .step(
                Step::new("reserve_stock", reserve_stock)
                    .compensate(release_stock)
                    .retry(retry)
                    .compensation_retry(compensation_retry)
                    .timeout(Duration::from_secs(5)),
            )
            .step(
                Step::new("charge_card", charge_card)
                    .compensate(refund)
                    .retry(retry)
                    .compensation_retry(compensation_retry)
                    .timeout(Duration::from_secs(5)),
            )
            .step(
                Step::new("send_receipt", send_receipt)
                    .irreversible()
                    .retry(retry)
                    .timeout(Duration::from_secs(5)),
            )
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    match run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), Error> {
    if !args.db.starts_with("sqlite:") {
        return Err(Error::Configuration(format!(
            "`{}`: this demo runs on SQLite (sqlite://path.db); the Postgres backend is not built yet",
            args.db
        )));
    }
    let store = Arc::new(SqliteStore::connect(&args.db).await?);
    let pool = store.pool().clone();
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS demo_effects (
             idempotency_key TEXT PRIMARY KEY NOT NULL,
             saga_id         TEXT NOT NULL,
             order_no        INTEGER NOT NULL,
             step            TEXT NOT NULL,
             phase           TEXT NOT NULL,
             calls           INTEGER NOT NULL,
             applied         INTEGER NOT NULL
         )",
    )
    .execute(&pool)
    .await
    .map_err(|err| Error::Store(Box::new(err)))?;

    let dyn_store: Arc<dyn Store> = store.clone();
    let orchestrator = Orchestrator::new(
        dyn_store,
        Config::default()
            .concurrency(args.workers)
            .lease_ttl(Duration::from_secs(5))
            .poll_interval(Duration::from_millis(100)),
    );
    orchestrator.register(Checkout {
        downstream: Downstream {
            pool: pool.clone(),
            seed: args.seed,
        },
    })?;
    orchestrator.run();

    eprintln!(
        "running {} checkout sagas on {} (seed {}, {} at once)",
        args.sagas, args.db, args.seed, args.workers
    );
    let bar = ProgressBar::new(args.sagas);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} sagas settled {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut fresh = 0u64;
    for order_no in 1..=args.sagas {
        let order = Order {
            order_no,
            customer: format!("customer-{}@example.com", order_no % 97),
            sku: format!("SKU-{}", order_no % 13),
            quantity: 1 + (order_no % 3) as u32,
            amount_cents: 1_000 + (order_no * 137) % 9_000,
        };
        let created = orchestrator
            .start_with_key::<Checkout>(IdempotencyKey::new(format!("order-{order_no}")), &order)
            .await?;
        if matches!(created, saga::Created::New(_)) {
            fresh += 1;
        }
    }
    bar.set_message(format!(
        "({fresh} new, {} already started)",
        args.sagas - fresh
    ));

    loop {
        let counts = store.count_by_status().await?;
        let active: u64 = counts
            .iter()
            .filter(|(status, _)| status.is_active())
            .map(|(_, n)| n)
            .sum();
        let total: u64 = counts.iter().map(|(_, n)| n).sum();
        bar.set_length(total);
        bar.set_position(total - active);
        if active == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bar.finish();
    orchestrator.shutdown().await;
    report(store.as_ref(), &pool).await
}

async fn report(store: &SqliteStore, pool: &SqlitePool) -> Result<(), Error> {
    use sqlx::Row;
    let db = |err: sqlx::Error| Error::Store(Box::new(err));

    println!("\nSagas by status");
    for (status, count) in store.count_by_status().await? {
        println!("  {:<20} {count:>6}", status.as_str());
    }

    println!("\nDownstream calls (demo_effects): every retry reuses the step's key");
    println!(
        "  {:<14} {:<13} {:>6} {:>7} {:>8} {:>16}",
        "step", "phase", "keys", "calls", "applied", "max applied/key"
    );
    let rows = sqlx::query(
        "SELECT step, phase, COUNT(*) AS keys, SUM(calls) AS calls, SUM(applied) AS applied,
                MAX(applied) AS max_applied
           FROM demo_effects GROUP BY step, phase ORDER BY phase, MIN(rowid)",
    )
    .fetch_all(pool)
    .await
    .map_err(db)?;
    for row in &rows {
        let text = |name: &str| row.try_get::<String, _>(name).unwrap_or_default();
        let int = |name: &str| row.try_get::<i64, _>(name).unwrap_or_default();
        println!(
            "  {:<14} {:<13} {:>6} {:>7} {:>8} {:>16}",
            text("step"),
            text("phase"),
            int("keys"),
            int("calls"),
            int("applied"),
            int("max_applied")
        );
    }
    let twice = |step: &'static str| async move {
        sqlx::query(
            "SELECT COUNT(*) AS n FROM (
                 SELECT order_no FROM demo_effects WHERE step = ? AND phase = 'action'
                  GROUP BY order_no HAVING SUM(applied) > 1)",
        )
        .bind(step)
        .fetch_one(pool)
        .await
        .and_then(|row| row.try_get::<i64, _>("n"))
    };
    let charged_twice = twice("charge_card").await.map_err(db)?;
    let emailed_twice = twice("send_receipt").await.map_err(db)?;
    let absorbed: i64 =
        sqlx::query("SELECT COALESCE(SUM(calls - applied), 0) AS n FROM demo_effects")
            .fetch_one(pool)
            .await
            .and_then(|row| row.try_get("n"))
            .map_err(db)?;
    println!(
        "\n  repeated calls absorbed by idempotency keys: {absorbed}\n  orders charged twice: {charged_twice}\n  orders emailed twice: {emailed_twice}"
    );

    let open = store.interventions(true).await?;
    println!("\nOpen manual-intervention items: {}", open.len());
    for item in open.iter().take(20) {
        println!(
            "  saga {}  {}  {}",
            item.saga_id,
            item.item
                .step
                .as_ref()
                .map_or("-", |(_, name)| name.as_str()),
            item.item.error
        );
    }
    if open.len() > 20 {
        println!("  ... and {} more", open.len() - 20);
    }
    let stuck = store
        .count_by_status()
        .await?
        .iter()
        .any(|(status, n)| *n > 0 && !status.is_settled() && *status != SagaStatus::Running);
    if stuck {
        eprintln!("warning: some sagas are still compensating");
    }
    Ok(())
}
