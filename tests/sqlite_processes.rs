//! Three worker processes (separate OS processes, each embedding an orchestrator and its own
//! pool) drive 300 five-step sagas on one SQLite file, while each step also writes its effect to
//! a table of its own in the same file. Each process groups its writes behind its own gate, so
//! the processes meet at the file's write lock. Checks: every saga completes; each step's
//! effect, keyed by its idempotency key, happened exactly once; no saga was run by two
//! processes at once; every process did work.
//!
//! Then again on a fresh file with a 2 s lease, and one process killed with SIGKILL part-way
//! (its groups of writes cut off wherever they were): the two others take its sagas over and
//! finish them all; no step phase began again after it completed; a step ran twice only in a
//! saga whose lease changed hands, with the same key; the file is intact.
//!
//! A test without the libtest harness: the binary re-runs itself with `--saga-worker` to become
//! a worker process.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use saga::{
    Config, IdempotencyKey, Orchestrator, Saga, SagaDefinition, SagaStatus, Step, StepContext,
    StepError, Store, WorkerId,
};
use saga_store::SqliteStore;
use sqlx::{Row, SqlitePool};

const SAGAS: u64 = 300;
const STEPS: usize = 5;
const WORKERS: usize = 3;

/// Five steps; each records its effect in `effects` (unique key) and its run in `ownership`.
struct FiveSteps {
    pool: SqlitePool,
    worker: String,
}

fn micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|since| i64::try_from(since.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

async fn step(saga: Arc<FiveSteps>, ctx: StepContext<u64>) -> Result<(), StepError> {
    let started = micros();
    sqlx::query(
        "INSERT INTO effects (idempotency_key, saga_id, worker, calls) VALUES (?, ?, ?, 1)
         ON CONFLICT (idempotency_key) DO UPDATE SET calls = calls + 1",
    )
    .bind(ctx.key().as_str())
    .bind(ctx.saga_id().to_string())
    .bind(&saga.worker)
    .execute(&saga.pool)
    .await
    .map_err(|err| StepError::transient(err.to_string()))?;
    sqlx::query(
        "INSERT INTO ownership (saga_id, step, worker, started_at, finished_at)
         VALUES (?, ?, ?, ?, ?)",
    )
    .bind(ctx.saga_id().to_string())
    .bind(ctx.step().as_str())
    .bind(&saga.worker)
    .bind(started)
    .bind(micros())
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
    match processes::role("sqlite_processes") {
        Role::List => ExitCode::SUCCESS,
        Role::Worker { url, name } => runtime.block_on(worker(url, name)),
        Role::Parent => {
            runtime.block_on(parent());
            println!("sqlite_processes: 1 passed, 0 failed");
            ExitCode::SUCCESS
        }
    }
}

async fn worker(url: String, name: String) -> ExitCode {
    let lease = std::env::var("SAGA_TEST_LEASE_MS")
        .ok()
        .and_then(|ms| ms.parse().ok())
        .map_or(Duration::from_secs(30), Duration::from_millis);
    let store = Arc::new(SqliteStore::connect(&url).await.expect("connect"));
    let pool = store.pool().clone();
    let dyn_store: Arc<dyn Store> = store.clone();
    let orchestrator = Orchestrator::new(
        dyn_store,
        Config::default()
            .worker_id(WorkerId::new(name.clone()))
            .concurrency(16)
            .lease_ttl(lease)
            .poll_interval(Duration::from_millis(50)),
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

async fn scalar(pool: &SqlitePool, sql: &str) -> i64 {
    sqlx::query(sql)
        .fetch_one(pool)
        .await
        .and_then(|row| row.try_get::<i64, _>(0))
        .unwrap_or_else(|err| panic!("{sql}: {err}"))
}

/// A fresh file with the effects tables and `SAGAS` sagas started (none run yet).
async fn setup() -> (tempfile::TempDir, String, Arc<SqliteStore>, SqlitePool) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let url = format!("sqlite://{}", dir.path().join("shared.db").display());
    let store = Arc::new(SqliteStore::connect(&url).await.expect("connect"));
    let pool = store.pool().clone();
    for table in [
        "CREATE TABLE effects (idempotency_key TEXT PRIMARY KEY, saga_id TEXT NOT NULL,
             worker TEXT NOT NULL, calls INTEGER NOT NULL)",
        "CREATE TABLE ownership (id INTEGER PRIMARY KEY, saga_id TEXT NOT NULL,
             step TEXT NOT NULL, worker TEXT NOT NULL, started_at INTEGER NOT NULL,
             finished_at INTEGER NOT NULL)",
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
    (dir, url, store, pool)
}

async fn parent() {
    without_kills().await;
    with_a_kill().await;
}

async fn without_kills() {
    let (_dir, url, store, pool) = setup().await;
    let started = Instant::now();
    Workers::spawn(&url, WORKERS)
        .wait(Duration::from_secs(200))
        .await;
    let elapsed = started.elapsed();

    // Every saga completed.
    let counts = store.count_by_status().await.expect("count");
    assert_eq!(counts, vec![(SagaStatus::Completed, SAGAS)], "{counts:?}");
    // Each step's effect happened exactly once: one row per key, called once.
    let steps = i64::try_from(SAGAS).unwrap() * i64::try_from(STEPS).unwrap();
    assert_eq!(scalar(&pool, "SELECT COUNT(*) FROM effects").await, steps);
    assert_eq!(
        scalar(&pool, "SELECT COUNT(*) FROM effects WHERE calls <> 1").await,
        0,
        "a step ran more than once"
    );
    // No saga was run by two processes at once, and no lease was taken over.
    assert_eq!(
        scalar(
            &pool,
            "SELECT COUNT(*) FROM ownership a JOIN ownership b
               ON a.saga_id = b.saga_id AND a.worker <> b.worker
              AND a.started_at < b.finished_at AND b.started_at < a.finished_at"
        )
        .await,
        0,
        "two processes ran one saga at the same time"
    );
    assert_eq!(
        scalar(
            &pool,
            "SELECT COUNT(*) FROM saga_events WHERE kind = 'lease_taken_over'"
        )
        .await,
        0
    );
    // The work was shared between the processes.
    let shares = sqlx::query(
        "SELECT worker, COUNT(*) AS steps FROM effects GROUP BY worker ORDER BY worker",
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
        "sqlite_processes: {SAGAS} sagas x {STEPS} steps on {WORKERS} processes sharing one file in {:.1}s; steps per process {shares:?}",
        elapsed.as_secs_f64(),
    );
}

async fn with_a_kill() {
    let (_dir, url, store, pool) = setup().await;
    let mut workers = Workers::spawn_with(&url, WORKERS, &[("SAGA_TEST_LEASE_MS", "2000")]);
    let steps = i64::try_from(SAGAS).unwrap() * i64::try_from(STEPS).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    // Killed once a quarter of the steps are done, it has done some of them itself and it holds
    // sagas (a process that came up late may not have yet: killing it then would test nothing).
    while scalar(&pool, "SELECT COUNT(*) FROM effects").await < steps / 4
        || scalar(
            &pool,
            "SELECT COUNT(*) FROM effects WHERE worker = 'worker-1'",
        )
        .await
            == 0
        || scalar(
            &pool,
            "SELECT COUNT(*) FROM saga_instances
              WHERE lease_owner = 'worker-1' AND status IN ('running', 'compensating')",
        )
        .await
            == 0
    {
        assert!(
            Instant::now() < deadline,
            "the workers made no progress, or worker-1 did none of it"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    workers.kill(1);
    workers.wait(Duration::from_secs(200)).await;

    let counts = store.count_by_status().await.expect("count");
    assert_eq!(counts, vec![(SagaStatus::Completed, SAGAS)], "{counts:?}");
    assert_eq!(scalar(&pool, "SELECT COUNT(*) FROM effects").await, steps);
    assert_eq!(
        scalar(
            &pool,
            "SELECT COUNT(*) FROM saga_events done JOIN saga_events again
               ON again.saga_id = done.saga_id AND again.step = done.step
              AND again.phase = done.phase AND again.seq > done.seq
            WHERE done.kind = 'step_completed' AND again.kind = 'step_started'"
        )
        .await,
        0,
        "a step phase began again after it completed"
    );
    // A step runs again only in a saga whose lease changed hands (the killed process's, or a
    // lease that expired under load), and under the same key (the effects table's key).
    let again = scalar(&pool, "SELECT COUNT(*) FROM effects WHERE calls > 1").await;
    assert_eq!(
        scalar(
            &pool,
            "SELECT COUNT(*) FROM effects e
              WHERE e.calls > 1
                AND NOT EXISTS (SELECT 1 FROM saga_events t
                                 WHERE t.saga_id = e.saga_id AND t.kind = 'lease_taken_over')"
        )
        .await,
        0,
        "a step ran twice in a saga whose lease never changed hands"
    );
    assert!(
        scalar(
            &pool,
            "SELECT COUNT(*) FROM effects WHERE worker = 'worker-1'"
        )
        .await
            > 0,
        "the killed process did work before it was killed"
    );
    let taken_over = scalar(
        &pool,
        "SELECT COUNT(*) FROM saga_events WHERE kind = 'lease_taken_over'",
    )
    .await;
    assert!(taken_over > 0, "the killed process's sagas were taken over");
    let integrity: String = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_one(&pool)
        .await
        .expect("integrity check");
    assert_eq!(integrity, "ok", "the file is intact after the kill");
    println!(
        "sqlite_processes: worker-1 killed at a quarter of the steps; {taken_over} leases taken over, {again} steps run again with their key, all {SAGAS} completed"
    );
}
