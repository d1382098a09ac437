//! Four worker processes (separate OS processes, each embedding an orchestrator) drive 1,000
//! five-step sagas on one real PostgreSQL database. Checks: every saga completes; each step's
//! side effect, recorded in a table keyed by its idempotency key, happened exactly once; no saga
//! was ever run by two workers at once; the work was shared.
//!
//! A test without the libtest harness: the binary re-runs itself with `--saga-worker` to become
//! a worker process.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use saga::{
    Config, IdempotencyKey, Orchestrator, Saga, SagaDefinition, SagaStatus, Step, StepContext,
    StepError, Store, WorkerId,
};
use saga_store::testing::TestPg;
use saga_store::PgStore;
use sqlx::{PgPool, Row};

const SAGAS: u64 = 1_000;
const STEPS: usize = 5;
const WORKERS: usize = 4;

/// Five steps; each records its effect in `effects` (unique key) and its run in `ownership`.
struct FiveSteps {
    pool: PgPool,
    worker: String,
}

async fn step(saga: Arc<FiveSteps>, ctx: StepContext<u64>) -> Result<(), StepError> {
    let run: i64 = sqlx::query(
        "INSERT INTO public.ownership (saga_id, step, worker, started_at)
         VALUES ($1, $2, $3, clock_timestamp()) RETURNING id",
    )
    .bind(ctx.saga_id().to_string())
    .bind(ctx.step().as_str())
    .bind(&saga.worker)
    .fetch_one(&saga.pool)
    .await
    .and_then(|row| row.try_get("id"))
    .map_err(|err| StepError::transient(err.to_string()))?;
    sqlx::query(
        "INSERT INTO public.effects (idempotency_key, saga_id, worker, calls, applied)
         VALUES ($1, $2, $3, 1, 1)
         ON CONFLICT (idempotency_key) DO UPDATE SET calls = effects.calls + 1",
    )
    .bind(ctx.key().as_str())
    .bind(ctx.saga_id().to_string())
    .bind(&saga.worker)
    .execute(&saga.pool)
    .await
    .map_err(|err| StepError::transient(err.to_string()))?;
    sqlx::query("UPDATE public.ownership SET finished_at = clock_timestamp() WHERE id = $1")
        .bind(run)
        .execute(&saga.pool)
        .await
        .map_err(|err| StepError::transient(err.to_string()))?;
    Ok(())
}

impl Saga for FiveSteps {
    type Input = u64;

    fn definition() -> SagaDefinition<Self> {
        (1..=STEPS).fold(SagaDefinition::new("five_steps", 1), |definition, n| {
            definition.step(Step::new(&format!("step_{n}"), step).irreversible())
        })
    }
}

mod processes;

use processes::{Role, Workers};

fn main() -> ExitCode {
    let runtime = processes::runtime();
    match processes::role("multi_worker") {
        Role::List => ExitCode::SUCCESS,
        Role::Worker { url, name } => runtime.block_on(worker(url, name)),
        Role::Parent => {
            runtime.block_on(parent());
            println!("multi_worker: 1 passed, 0 failed");
            ExitCode::SUCCESS
        }
    }
}

async fn worker(url: String, name: String) -> ExitCode {
    let store = Arc::new(PgStore::connect(&url).await.expect("connect"));
    let pool = store.pool().clone();
    let dyn_store: Arc<dyn Store> = store.clone();
    let orchestrator = Orchestrator::new(
        dyn_store,
        Config::default()
            .worker_id(WorkerId::new(name.clone()))
            .concurrency(16)
            .lease_ttl(Duration::from_secs(10))
            .poll_interval(Duration::from_millis(100)),
    );
    orchestrator
        .register(FiveSteps {
            pool,
            worker: name.clone(),
        })
        .expect("register");
    orchestrator.run();
    let idle = processes::until_idle(&*store, &name, Duration::from_secs(170)).await;
    orchestrator.shutdown().await;
    idle
}

async fn scalar(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query(sql)
        .fetch_one(pool)
        .await
        .and_then(|row| row.try_get::<i64, _>(0))
        .unwrap_or_else(|err| panic!("{sql}: {err}"))
}

async fn parent() {
    let url = TestPg::fresh_database().await.expect("a test database");
    let store = Arc::new(PgStore::connect(&url).await.expect("connect"));
    let pool = store.pool().clone();
    for table in [
        "CREATE TABLE public.effects (idempotency_key text PRIMARY KEY, saga_id text NOT NULL,
             worker text NOT NULL, calls bigint NOT NULL, applied bigint NOT NULL)",
        "CREATE TABLE public.ownership (id bigserial PRIMARY KEY, saga_id text NOT NULL,
             step text NOT NULL, worker text NOT NULL, started_at timestamptz NOT NULL,
             finished_at timestamptz)",
    ] {
        sqlx::query(table)
            .execute(&pool)
            .await
            .expect("create table");
    }
    let dyn_store: Arc<dyn Store> = store.clone();
    let starter = Orchestrator::new(dyn_store, Config::default());
    starter
        .register(FiveSteps {
            pool: pool.clone(),
            worker: "starter".into(),
        })
        .expect("register");
    for order in 1..=SAGAS {
        starter
            .start_with_key::<FiveSteps>(IdempotencyKey::new(format!("order-{order}")), &order)
            .await
            .expect("start");
    }
    let commits_before = scalar(
        &pool,
        "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
    )
    .await;

    let started = Instant::now();
    Workers::spawn(&url, WORKERS)
        .wait(Duration::from_secs(200))
        .await;
    let elapsed = started.elapsed();
    // pg_stat_database is updated when backends report; give the collector a moment.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let commits = scalar(
        &pool,
        "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
    )
    .await
        - commits_before;

    // Every saga completed.
    let counts = store.count_by_status().await.expect("count");
    assert_eq!(counts, vec![(SagaStatus::Completed, SAGAS)], "{counts:?}");
    // Each step's effect happened exactly once: one row per key, called once, applied once.
    let steps = i64::try_from(SAGAS).unwrap() * i64::try_from(STEPS).unwrap();
    assert_eq!(
        scalar(&pool, "SELECT COUNT(*) FROM public.effects").await,
        steps
    );
    assert_eq!(
        scalar(
            &pool,
            "SELECT COUNT(*) FROM public.effects WHERE calls <> 1 OR applied <> 1"
        )
        .await,
        0,
        "a step ran more than once"
    );
    // No saga was run by two workers at once: no two step runs of one saga by different
    // workers overlap in time, and no lease was ever taken over.
    assert_eq!(
        scalar(
            &pool,
            "SELECT COUNT(*) FROM public.ownership a JOIN public.ownership b
               ON a.saga_id = b.saga_id AND a.worker <> b.worker
              AND a.started_at < b.finished_at AND b.started_at < a.finished_at"
        )
        .await,
        0,
        "two workers ran one saga at the same time"
    );
    assert_eq!(
        scalar(
            &pool,
            "SELECT COUNT(*) FROM saga_events WHERE kind = 'lease_taken_over'"
        )
        .await,
        0
    );
    // The work was shared between processes.
    let shares = sqlx::query(
        "SELECT worker, COUNT(*) AS steps FROM public.effects GROUP BY worker ORDER BY worker",
    )
    .fetch_all(&pool)
    .await
    .expect("shares");
    let shares: Vec<(String, i64)> = shares
        .iter()
        .map(|row| (row.get("worker"), row.get("steps")))
        .collect();
    assert_eq!(
        shares.len(),
        WORKERS,
        "every one of the {WORKERS} worker processes did work: {shares:?}"
    );
    println!(
        "multi_worker: {SAGAS} sagas x {STEPS} steps on {WORKERS} processes in {:.1}s; steps per worker {shares:?}; {commits} server commits, {:.2} per step of which 3 are the test's own ledger writes (the rest: the orchestrator and the workers' polling)",
        elapsed.as_secs_f64(),
        commits as f64 / steps as f64
    );
}
