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
    Config, Error, IdempotencyKey, Orchestrator, Phase, Saga, SqliteStore, StepContext, StepError,
    Store,
};
use serde::{Deserialize, Serialize};
use sqlx::{PgPool, Row, SqlitePool};

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

/// The `demo_effects` table, in the store's own database.
#[derive(Clone)]
enum Effects {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

const EFFECTS_TABLE: &str = "CREATE TABLE IF NOT EXISTS demo_effects (
    idempotency_key TEXT PRIMARY KEY NOT NULL,
    saga_id         TEXT NOT NULL,
    order_no        BIGINT NOT NULL,
    step            TEXT NOT NULL,
    phase           TEXT NOT NULL,
    calls           BIGINT NOT NULL,
    applied         BIGINT NOT NULL
)";

/// Every call, with the attempt it was made by: a (key, attempt) pair called twice would mean
/// two workers ran one attempt.
const CALLS_TABLE: &str = "CREATE TABLE IF NOT EXISTS demo_calls (
    idempotency_key TEXT NOT NULL,
    attempt         BIGINT NOT NULL
)";

const RECORD_CALL: &str = "INSERT INTO demo_calls (idempotency_key, attempt) VALUES ($1, $2)";

const RECORD: &str =
    "INSERT INTO demo_effects (idempotency_key, saga_id, order_no, step, phase, calls, applied)
     VALUES ($1, $2, $3, $4, $5, 1, 1)
     ON CONFLICT (idempotency_key) DO UPDATE SET calls = demo_effects.calls + 1";

/// On Postgres the table lives in `public`, beside (not inside) the saga schema.
fn in_public(sql: &str) -> String {
    sql.replace("demo_effects", "public.demo_effects")
        .replace("demo_calls", "public.demo_calls")
}

impl Effects {
    async fn create_table(&self) -> Result<(), sqlx::Error> {
        match self {
            Effects::Sqlite(pool) => {
                sqlx::query(EFFECTS_TABLE).execute(pool).await?;
                sqlx::query(CALLS_TABLE).execute(pool).await.map(drop)
            }
            Effects::Postgres(pool) => {
                // Demos starting together must not race on CREATE TABLE IF NOT EXISTS.
                let mut tx = pool.begin().await?;
                sqlx::query("SELECT pg_advisory_xact_lock(hashtext('saga-demo-effects'))::text")
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(&in_public(EFFECTS_TABLE))
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(&in_public(CALLS_TABLE))
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await
            }
        }
    }

    /// Logs the call and applies its effect (at most once per key), in one transaction: the
    /// service's log of calls and its effects never disagree, even if the demo is killed.
    async fn record(&self, ctx: &StepContext<Order>) -> Result<(), sqlx::Error> {
        let order_no = i64::try_from(ctx.input().order_no).unwrap_or(i64::MAX);
        let saga_id = ctx.saga_id().to_string();
        let attempt = i64::from(ctx.attempt().0);
        let key = ctx.key().as_str();
        match self {
            Effects::Sqlite(pool) => {
                let mut tx = pool.begin().await?;
                sqlx::query(RECORD_CALL)
                    .bind(key)
                    .bind(attempt)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(RECORD)
                    .bind(key)
                    .bind(saga_id)
                    .bind(order_no)
                    .bind(ctx.step().as_str())
                    .bind(ctx.phase().as_str())
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await
            }
            Effects::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                sqlx::query(&in_public(RECORD_CALL))
                    .bind(key)
                    .bind(attempt)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(&in_public(RECORD))
                    .bind(key)
                    .bind(saga_id)
                    .bind(order_no)
                    .bind(ctx.step().as_str())
                    .bind(ctx.phase().as_str())
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await
            }
        }
    }

    /// Whether a call with this key took effect.
    async fn applied(&self, key: &str) -> Result<bool, sqlx::Error> {
        let sql = "SELECT COUNT(*) FROM demo_effects WHERE idempotency_key = $1 AND applied = 1";
        let count: i64 = match self {
            Effects::Sqlite(pool) => sqlx::query_scalar(sql).bind(key).fetch_one(pool).await?,
            Effects::Postgres(pool) => {
                sqlx::query_scalar(&in_public(sql))
                    .bind(key)
                    .fetch_one(pool)
                    .await?
            }
        };
        Ok(count > 0)
    }

    /// Runs a query returning rows of (text..., bigint...) columns, as strings.
    async fn rows(&self, sql: &str, columns: &[&str]) -> Result<Vec<Vec<String>>, sqlx::Error> {
        fn cell<R: Row>(row: &R, column: &str) -> String
        where
            for<'a> &'a str: sqlx::ColumnIndex<R>,
            for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
            for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
        {
            row.try_get::<String, _>(column)
                .or_else(|_| row.try_get::<i64, _>(column).map(|n| n.to_string()))
                .unwrap_or_default()
        }
        Ok(match self {
            Effects::Sqlite(pool) => sqlx::query(sql)
                .fetch_all(pool)
                .await?
                .iter()
                .map(|row| columns.iter().map(|c| cell(row, c)).collect())
                .collect(),
            Effects::Postgres(pool) => sqlx::query(&in_public(sql))
                .fetch_all(pool)
                .await?
                .iter()
                .map(|row| columns.iter().map(|c| cell(row, c)).collect())
                .collect(),
        })
    }
}

/// The simulated downstream services: inventory, payments, mail.
struct Downstream {
    effects: Effects,
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
        // The response is lost after the effect: the caller cannot tell whether the call took
        // effect, so it says "unknown" (never "did not happen"). The library then asks the
        // step's probe, or retries with the same key, which the service answers without a
        // second effect.
        if roll("lost_response") < 0.10 {
            return Err(StepError::unknown("timeout waiting for the response"));
        }
        Ok(format!("{step}-{order}"))
    }

    async fn record(&self, ctx: &StepContext<Order>) -> Result<(), StepError> {
        self.effects
            .record(ctx)
            .await
            // A write whose answer did not come back may have committed.
            .map_err(|err| StepError::unknown(format!("downstream storage: {err}")))
    }

    /// Asks the service whether a call with this key took effect (its output if so).
    async fn lookup(&self, ctx: &StepContext<Order>) -> Result<Option<String>, StepError> {
        let applied = self
            .effects
            .applied(ctx.key().as_str())
            .await
            .map_err(|err| StepError::transient(format!("lookup failed: {err}")))?;
        Ok(applied.then(|| format!("{}-{}", ctx.step(), ctx.input().order_no)))
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

/// The checkout saga. `send_receipt` is irreversible: an email cannot be unsent.
#[derive(Saga)]
#[saga(name = "checkout", version = 1, input = Order)]
#[step(reserve_stock, compensate = release_stock, timeout = "5s",
       retry(max_attempts = 5, base = "20ms", max_delay = "500ms"),
       compensation_retry(max_attempts = 3, base = "20ms", max_delay = "500ms"))]
#[step(charge_card, compensate = refund, probe = charge_status, timeout = "5s",
       retry(max_attempts = 5, base = "20ms", max_delay = "500ms"),
       compensation_retry(max_attempts = 3, base = "20ms", max_delay = "500ms"))]
#[step(
    send_receipt,
    irreversible,
    timeout = "5s",
    retry(max_attempts = 5, base = "20ms", max_delay = "500ms")
)]
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

/// The payment provider's lookup by idempotency key: asked when a charge's outcome is unknown
/// (a timeout, a lost answer, a worker that died mid-call) before charging again.
async fn charge_status(
    saga: Arc<Checkout>,
    ctx: StepContext<Order>,
) -> Result<Option<Payment>, StepError> {
    let found = saga.downstream.lookup(&ctx).await?;
    Ok(found.map(|charge_id| Payment { charge_id }))
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
    let (store, effects): (Arc<dyn Store>, Effects) = if args.db.starts_with("sqlite:") {
        let store = SqliteStore::connect(&args.db).await?;
        let effects = Effects::Sqlite(store.pool().clone());
        (Arc::new(store), effects)
    } else if args.db.starts_with("postgres://") || args.db.starts_with("postgresql://") {
        let store = saga_store::PgStore::connect(&args.db).await?;
        let effects = Effects::Postgres(store.pool().clone());
        (Arc::new(store), effects)
    } else {
        return Err(Error::Configuration(format!(
            "`{}` is not a store URL; use sqlite://path.db or postgres://user:password@host/database",
            args.db
        )));
    };
    effects
        .create_table()
        .await
        .map_err(|err| Error::Store(Box::new(err)))?;

    let orchestrator = Orchestrator::new(
        Arc::clone(&store),
        Config::default()
            .concurrency(args.workers)
            .lease_ttl(Duration::from_secs(5))
            .poll_interval(Duration::from_millis(100)),
    );
    orchestrator.register(Checkout {
        downstream: Downstream {
            effects: effects.clone(),
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
    report(store.as_ref(), &effects).await
}

async fn report(store: &dyn Store, effects: &Effects) -> Result<(), Error> {
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
    let rows = effects
        .rows(
            "SELECT step, phase, COUNT(*) AS keys, SUM(calls) AS calls, SUM(applied) AS applied,
                    MAX(applied) AS max_applied,
                    CASE step WHEN 'reserve_stock' THEN 1 WHEN 'charge_card' THEN 2 ELSE 3 END AS rank
               FROM demo_effects GROUP BY step, phase
              ORDER BY phase, rank",
            &["step", "phase", "keys", "calls", "applied", "max_applied"],
        )
        .await
        .map_err(db)?;
    for row in &rows {
        if let [step, phase, keys, calls, applied, max_applied] = row.as_slice() {
            println!(
                "  {step:<14} {phase:<13} {keys:>6} {calls:>7} {applied:>8} {max_applied:>16}"
            );
        }
    }
    let single = |sql: &'static str| async move {
        effects.rows(sql, &["n"]).await.map(|rows| {
            rows.first()
                .and_then(|row| row.first())
                .cloned()
                .unwrap_or_else(|| "0".to_owned())
        })
    };
    let charged_twice = single(
        "SELECT COUNT(*) AS n FROM (
             SELECT order_no FROM demo_effects WHERE step = 'charge_card' AND phase = 'action'
              GROUP BY order_no HAVING SUM(applied) > 1) AS twice",
    )
    .await
    .map_err(db)?;
    let emailed_twice = single(
        "SELECT COUNT(*) AS n FROM (
             SELECT order_no FROM demo_effects WHERE step = 'send_receipt' AND phase = 'action'
              GROUP BY order_no HAVING SUM(applied) > 1) AS twice",
    )
    .await
    .map_err(db)?;
    let absorbed =
        single("SELECT CAST(COALESCE(SUM(calls - applied), 0) AS BIGINT) AS n FROM demo_effects")
            .await
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
    Ok(())
}
