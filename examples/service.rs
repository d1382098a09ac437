//! How a service embeds the orchestrator: an HTTP API (axum) that starts checkout sagas and
//! reports on them, with workers driving sagas in the same process.
//!
//! - `POST /orders` with an `Idempotency-Key` header and a JSON order starts a checkout saga:
//!   `201` with the new saga; the same key and body again returns the existing saga (`200`); the
//!   same key with another body is `409` with a message.
//! - `GET /orders/{id}` returns the saga's status, steps and history.
//! - `POST /transfers` (same headers and body) starts an order paid by bank transfer: it reserves
//!   the stock, then waits up to 3 days for the bank's webhook, holding no worker meanwhile.
//! - `POST /webhooks/bank` is that webhook: `{"event_id", "order_key", "amount_cents"}` becomes
//!   the `TransferReceived` signal of the order started with `order_key`, delivered once per
//!   `event_id` (`202` the first time, `200` for a repeat, as providers expect a 2xx; `404` for
//!   an unknown order, `409` for an order that no longer waits, `422` for a malformed body). On
//!   Postgres the order goes on at once in whichever instance claims it.
//! - SIGTERM (or Ctrl-C) stops accepting requests, lets running steps finish and releases
//!   leases, so another instance continues at once.
//!
//! The last step, `record_order`, is transactional: it inserts the order into the `orders` table
//! inside the store's transaction, so the row and the step's `completed` record commit together.
//!
//! Run two instances on one database; both serve requests and drive sagas:
//!
//! ```text
//! cargo run --example service -- --db postgres://localhost/shop --listen 127.0.0.1:3001 &
//! cargo run --example service -- --db postgres://localhost/shop --listen 127.0.0.1:3002 &
//! curl -X POST localhost:3001/orders -H 'Idempotency-Key: order-1' \
//!      -H 'Content-Type: application/json' \
//!      -d '{"customer":"ada@example.com","sku":"SKU-1","quantity":1,"amount_cents":1200}'
//! curl -X POST localhost:3001/transfers -H 'Idempotency-Key: order-2' ... # same body
//! curl -X POST localhost:3002/webhooks/bank -H 'Content-Type: application/json' \
//!      -d '{"event_id":"evt_1","order_key":"order-2","amount_cents":1200}'
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use clap::Parser;
use saga::{
    Config, Created, Delivered, Error, IdempotencyKey, Orchestrator, ResultExt, Saga, SagaId,
    Signal, SignalKey, SignalRefusal, SqliteStore, StepContext, StepError, Store, WorkerId,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// An HTTP service that starts and reports checkout sagas.
#[derive(Debug, Parser)]
#[command(name = "service")]
struct Args {
    /// Store URL (sqlite://file.db or postgres://...).
    #[arg(long, default_value = "sqlite://saga-service.db")]
    db: String,
    /// Address to listen on (loopback only in examples).
    #[arg(long, default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
    /// Name of this instance, recorded as its workers' lease owner.
    #[arg(long)]
    name: Option<String>,
    /// Simulated latency of the payment provider, per charge, in milliseconds.
    #[arg(long, default_value_t = 0)]
    charge_latency_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Order {
    customer: String,
    sku: String,
    quantity: u32,
    amount_cents: u64,
}

#[derive(Clone, Copy)]
enum Backend {
    Sqlite,
    Postgres,
}

/// The checkout saga; `record_order` writes the order row in the step's transaction.
#[derive(Saga)]
#[saga(name = "checkout", version = 1, input = Order)]
#[step(reserve_stock, compensate = release_stock, retry(max_attempts = 5, base = "100ms"))]
#[step(charge_card, compensate = refund, retry(max_attempts = 5, base = "100ms"))]
#[step(
    record_order,
    irreversible,
    transactional,
    retry(max_attempts = 5, base = "100ms")
)]
struct Checkout {
    backend: Backend,
    instance: String,
    charge_latency: Duration,
}

async fn reserve_stock<S>(_: Arc<S>, ctx: StepContext<Order>) -> Result<String, StepError> {
    if ctx.input().quantity == 0 {
        return Err(StepError::permanent("quantity must be at least 1"));
    }
    Ok(format!("reservation-{}", ctx.key()))
}

async fn release_stock<S>(
    _: Arc<S>,
    _: StepContext<Order>,
    _reservation: String,
) -> Result<(), StepError> {
    Ok(())
}

async fn charge_card(saga: Arc<Checkout>, ctx: StepContext<Order>) -> Result<String, StepError> {
    tokio::time::sleep(saga.charge_latency).await;
    if ctx.input().amount_cents > 100_000 {
        return Err(StepError::permanent("card declined: over the limit"));
    }
    Ok(format!("charge-{}", ctx.key()))
}

async fn refund(_: Arc<Checkout>, _: StepContext<Order>, _charge: String) -> Result<(), StepError> {
    Ok(())
}

/// Inserts the order row in the step's transaction: it commits with the step's completion.
async fn record_order(saga: Arc<Checkout>, ctx: StepContext<Order>) -> Result<(), StepError> {
    const INSERT: &str = "INSERT INTO orders (saga_id, customer, sku, recorded_by)
                          VALUES ($1, $2, $3, $4)";
    let order = ctx.input();
    let saga_id = ctx.saga_id().to_string();
    match saga.backend {
        Backend::Postgres => {
            let mut tx = saga_store::pg_transaction(&ctx).await?;
            sqlx::query(&INSERT.replace("orders", "public.orders"))
                .bind(&saga_id)
                .bind(&order.customer)
                .bind(&order.sku)
                .bind(&saga.instance)
                .execute(&mut *tx)
                .await
                .transient()?;
        }
        Backend::Sqlite => {
            let mut tx = saga_store::sqlite_transaction(&ctx).await?;
            sqlx::query(INSERT)
                .bind(&saga_id)
                .bind(&order.customer)
                .bind(&order.sku)
                .bind(&saga.instance)
                .execute(&mut *tx)
                .await
                .transient()?;
        }
    }
    Ok(())
}

/// The bank's word that a transfer arrived: the signal an order paid by transfer waits for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct TransferReceived {
    event_id: String,
    amount_cents: u64,
}

impl Signal for TransferReceived {
    const NAME: &'static str = "transfer_received";
}

/// An order paid by bank transfer: stock is held until the bank's webhook says the money came
/// (3 days at most; then the reservation is released).
#[derive(Saga)]
#[saga(name = "transfer_order", version = 1, input = Order)]
#[step(reserve_stock, compensate = release_stock)]
#[step(transfer_received, await_signal = TransferReceived, timeout = "72h")]
#[step(confirm_order, irreversible)]
struct TransferOrder;

async fn confirm_order(_: Arc<TransferOrder>, ctx: StepContext<Order>) -> Result<(), StepError> {
    let paid: TransferReceived = ctx.output(TransferOrder::TRANSFER_RECEIVED)?;
    if paid.amount_cents < ctx.input().amount_cents {
        return Err(StepError::permanent(format!(
            "the transfer ({} cents) does not cover the order ({} cents)",
            paid.amount_cents,
            ctx.input().amount_cents
        )));
    }
    Ok(())
}

#[derive(Clone)]
struct App {
    orchestrator: Orchestrator,
}

type Reply = (StatusCode, Json<Value>);

fn error_reply(err: &Error) -> Reply {
    let status = match err {
        Error::Conflict { .. } => StatusCode::CONFLICT,
        Error::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        Error::SagaNotFound(_) => StatusCode::NOT_FOUND,
        Error::StoreUnavailable(_) | Error::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (status, Json(json!({ "error": err.to_string() })))
}

async fn create_order(
    State(app): State<App>,
    headers: HeaderMap,
    body: Result<Json<Order>, axum::extract::rejection::JsonRejection>,
) -> Reply {
    start_order::<Checkout>(app, headers, body).await
}

async fn create_transfer_order(
    State(app): State<App>,
    headers: HeaderMap,
    body: Result<Json<Order>, axum::extract::rejection::JsonRejection>,
) -> Reply {
    start_order::<TransferOrder>(app, headers, body).await
}

/// The bank's webhook.
#[derive(Debug, Deserialize)]
struct BankWebhook {
    event_id: String,
    order_key: String,
    amount_cents: u64,
}

async fn bank_webhook(
    State(app): State<App>,
    body: Result<Json<BankWebhook>, axum::extract::rejection::JsonRejection>,
) -> Reply {
    let Json(event) = match body {
        Ok(event) => event,
        Err(rejection) => {
            return (
                StatusCode::UNPROCESSABLE_ENTITY,
                Json(json!({ "error": format!("the body is not a bank webhook: {rejection}") })),
            )
        }
    };
    let signal = TransferReceived {
        event_id: event.event_id.clone(),
        amount_cents: event.amount_cents,
    };
    // The bank's event id is the signal's key: a webhook delivered twice is one signal.
    let delivered = app
        .orchestrator
        .signal(
            IdempotencyKey::new(event.order_key),
            &signal,
            SignalKey::new(event.event_id),
        )
        .await;
    match delivered {
        Ok(Delivered::New(id)) => (
            StatusCode::ACCEPTED,
            Json(json!({ "order": id, "delivered": "new" })),
        ),
        Ok(Delivered::Duplicate(id)) => (
            StatusCode::OK,
            Json(json!({ "order": id, "delivered": "duplicate" })),
        ),
        Err(Error::SignalRefused { refusal, .. }) => {
            let status = match refusal {
                SignalRefusal::UnknownStartKey(_) => StatusCode::NOT_FOUND,
                SignalRefusal::Payload(_) | SignalRefusal::BadName(_) => {
                    StatusCode::UNPROCESSABLE_ENTITY
                }
                _ => StatusCode::CONFLICT,
            };
            (status, Json(json!({ "error": refusal.to_string() })))
        }
        Err(err) => error_reply(&err),
    }
}

async fn start_order<S: Saga<Input = Order>>(
    app: App,
    headers: HeaderMap,
    body: Result<Json<Order>, axum::extract::rejection::JsonRejection>,
) -> Reply {
    let Some(key) = headers
        .get("idempotency-key")
        .and_then(|value| value.to_str().ok())
        .filter(|key| !key.trim().is_empty() && key.len() <= 200)
    else {
        return (
            StatusCode::BAD_REQUEST,
            Json(
                json!({ "error": "missing Idempotency-Key header: send a unique key per order (at most 200 characters), and the same key when you retry" }),
            ),
        );
    };
    let Json(order) = match body {
        Ok(order) => order,
        Err(rejection) => {
            return (
                StatusCode::UNPROCESSABLE_ENTITY,
                Json(json!({ "error": format!("the body is not an order: {rejection}") })),
            )
        }
    };
    match app
        .orchestrator
        .start_with_key::<S>(IdempotencyKey::new(key), &order)
        .await
    {
        Ok(Created::New(id)) => (
            StatusCode::CREATED,
            Json(json!({ "id": id, "status": "running" })),
        ),
        Ok(Created::Existing(id)) => match app.orchestrator.snapshot(id).await {
            Ok(snapshot) => (
                StatusCode::OK,
                Json(json!({ "id": id, "status": snapshot.record.status })),
            ),
            Err(err) => error_reply(&err),
        },
        Err(err) => error_reply(&err),
    }
}

async fn show_order(State(app): State<App>, Path(id): Path<String>) -> Reply {
    let Ok(id) = id.parse::<SagaId>() else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({ "error": format!("`{id}` is not a saga id (a UUID)") })),
        );
    };
    let snapshot = match app.orchestrator.snapshot(id).await {
        Ok(snapshot) => snapshot,
        Err(err) => return error_reply(&err),
    };
    let history = match app.orchestrator.history(id).await {
        Ok(history) => history,
        Err(err) => return error_reply(&err),
    };
    let steps: Vec<Value> = snapshot
        .steps
        .iter()
        .map(|step| {
            json!({
                "step": step.name.as_str(),
                "phase": step.phase,
                "status": step.status,
                "attempt": step.attempt.0,
                "idempotency_key": step.idempotency_key.as_str(),
                "last_error": step.last_error,
            })
        })
        .collect();
    (
        StatusCode::OK,
        Json(json!({
            "id": id,
            "status": snapshot.record.status,
            "reason": snapshot.record.status_reason,
            "steps": steps,
            "history": history.render().lines().collect::<Vec<_>>(),
        })),
    )
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    match run(Args::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), Error> {
    const ORDERS: &str = "CREATE TABLE IF NOT EXISTS orders (
        saga_id TEXT PRIMARY KEY, customer TEXT NOT NULL, sku TEXT NOT NULL,
        recorded_by TEXT NOT NULL)";
    let db_error = |err: sqlx::Error| Error::Store(Box::new(err));
    let (store, backend): (Arc<dyn Store>, Backend) = if args.db.starts_with("sqlite:") {
        let store = SqliteStore::connect(&args.db).await?;
        sqlx::query(ORDERS)
            .execute(store.pool())
            .await
            .map_err(db_error)?;
        (Arc::new(store), Backend::Sqlite)
    } else if args.db.starts_with("postgres://") || args.db.starts_with("postgresql://") {
        let store = saga_store::PgStore::connect(&args.db).await?;
        // Instances starting together must not race on CREATE TABLE IF NOT EXISTS (Postgres
        // can fail one of them with a duplicate-key error): take a lock for it.
        let mut tx = store.pool().begin().await.map_err(db_error)?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('saga-service-orders'))::text")
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        sqlx::query(&ORDERS.replace("orders", "public.orders"))
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        tx.commit().await.map_err(db_error)?;
        (Arc::new(store), Backend::Postgres)
    } else {
        return Err(Error::Configuration(format!(
            "`{}` is not a store URL; use sqlite://file.db or postgres://user:password@host/database",
            args.db
        )));
    };
    let instance = args
        .name
        .unwrap_or_else(|| WorkerId::generate().as_str().to_owned());
    let orchestrator = Orchestrator::new(
        store,
        Config::default()
            .worker_id(WorkerId::new(instance.clone()))
            .shutdown_grace(Duration::from_secs(20)),
    );
    orchestrator.register(Checkout {
        backend,
        instance,
        charge_latency: Duration::from_millis(args.charge_latency_ms),
    })?;
    orchestrator.register(TransferOrder)?;
    orchestrator.run();

    let app = Router::new()
        .route("/orders", post(create_order))
        .route("/orders/{id}", get(show_order))
        .route("/transfers", post(create_transfer_order))
        .route("/webhooks/bank", post(bank_webhook))
        .with_state(App {
            orchestrator: orchestrator.clone(),
        });
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|err| Error::Configuration(format!("cannot listen on {}: {err}", args.listen)))?;
    eprintln!("listening on http://{}", args.listen);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .map_err(|err| Error::Configuration(format!("HTTP server failed: {err}")))?;
    // Requests have drained: let running steps finish and release every lease.
    orchestrator.shutdown().await;
    eprintln!("stopped");
    Ok(())
}
