//! Kills a real quickstart demo process with SIGKILL part-way through a run on a SQLite file,
//! runs it again, and checks that every saga settled and no completed step ran twice.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod example;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sqlx::sqlite::SqlitePoolOptions;
use sqlx::{Row, SqlitePool};

const SAGAS: i64 = 400;

/// The quickstart binary, (re)built by cargo so that it matches the sources under test.
fn quickstart() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| example::binary("quickstart")).clone()
}

fn demo(db: &str) -> Command {
    let mut command = Command::new(quickstart());
    command.args([
        "--db",
        db,
        "--sagas",
        &SAGAS.to_string(),
        "--seed",
        "7",
        "--workers",
        "8",
    ]);
    command
}

/// A count while the demo runs: `None` while the database is busy or not created yet.
async fn count_now(pool: &SqlitePool, sql: &str) -> Option<i64> {
    sqlx::query(sql)
        .fetch_one(pool)
        .await
        .and_then(|row| row.try_get::<i64, _>(0))
        .ok()
}

/// A count that must succeed: a renamed table or column fails the test instead of reading 0.
async fn count(pool: &SqlitePool, sql: &str) -> i64 {
    sqlx::query(sql)
        .fetch_one(pool)
        .await
        .and_then(|row| row.try_get::<i64, _>(0))
        .unwrap_or_else(|err| panic!("{sql}: {err}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_killed_mid_run_resumes_and_never_repeats_a_completed_step() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("demo.db").display());

    let mut child = demo(&db)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the demo");

    // Wait until the run is well under way, then kill it without warning.
    let pool = loop {
        if let Ok(pool) = SqlitePoolOptions::new()
            .max_connections(1)
            .connect(&format!("{db}?mode=ro"))
            .await
        {
            break pool;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let settled = count_now(
            &pool,
            "SELECT COUNT(*) FROM saga_instances WHERE status NOT IN ('running', 'compensating')",
        )
        .await
        .unwrap_or(0);
        if settled >= 60 {
            break;
        }
        assert!(Instant::now() < deadline, "the demo made no progress");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the demo exited before it could be killed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    child.kill().expect("SIGKILL the demo");
    child.wait().unwrap();

    let active_at_kill = count(
        &pool,
        "SELECT COUNT(*) FROM saga_instances WHERE status IN ('running', 'compensating')",
    )
    .await;
    let started_at_kill = count(&pool, "SELECT COUNT(*) FROM saga_instances").await;
    assert!(
        active_at_kill > 0 || started_at_kill < SAGAS,
        "the kill must interrupt work in flight"
    );
    pool.close().await;

    // Run it again: it finishes what the killed run left, and starts nothing twice.
    let output = demo(&db).output().expect("rerun the demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "rerun failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("orders charged twice: 0"), "{stdout}");
    assert!(stdout.contains("orders emailed twice: 0"), "{stdout}");

    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect(&db)
        .await
        .unwrap();
    assert_eq!(
        count(&pool, "SELECT COUNT(*) FROM saga_instances").await,
        SAGAS,
        "one saga per order key"
    );
    assert_eq!(
        count(
            &pool,
            "SELECT COUNT(*) FROM saga_instances WHERE status IN ('running', 'compensating')"
        )
        .await,
        0,
        "every saga settled"
    );
    assert_eq!(
        count(
            &pool,
            "SELECT COUNT(*) FROM saga_instances s
              WHERE s.status = 'needs_intervention'
                AND (SELECT COUNT(*) FROM saga_interventions i
                      WHERE i.saga_id = s.id AND i.status = 'open') <> 1"
        )
        .await,
        0,
        "each parked saga has exactly one open intervention"
    );
    assert_eq!(
        count(
            &pool,
            "SELECT COUNT(*) FROM saga_events started
               JOIN saga_events done
                 ON done.saga_id = started.saga_id AND done.step = started.step
                AND done.phase = started.phase
              WHERE done.kind = 'step_completed' AND started.kind = 'step_started'
                AND started.seq > done.seq"
        )
        .await,
        0,
        "no step phase started again after it completed"
    );
    assert_eq!(
        count(
            &pool,
            "SELECT COUNT(DISTINCT idempotency_key) FROM saga_instances"
        )
        .await,
        SAGAS,
        "one saga per order key"
    );
    assert_eq!(
        count(
            &pool,
            "SELECT COUNT(*) FROM (SELECT 1 FROM demo_calls
                                    GROUP BY idempotency_key, attempt HAVING COUNT(*) > 1)"
        )
        .await,
        0,
        "one downstream call per (key, attempt): no attempt ran twice"
    );
    assert_eq!(
        count(
            &pool,
            "SELECT COUNT(*) FROM demo_effects e
              WHERE e.calls <> (SELECT COUNT(*) FROM demo_calls c
                                 WHERE c.idempotency_key = e.idempotency_key)"
        )
        .await,
        0,
        "the service counted every call the log shows"
    );
    assert!(
        count(
            &pool,
            "SELECT COUNT(*) FROM demo_calls c JOIN saga_steps s ON s.idempotency_key = c.idempotency_key
              WHERE c.attempt > 1"
        )
        .await
            > 0,
        "some calls were retries, so the checks above had something to check"
    );
    assert_eq!(
        count(
            &pool,
            "SELECT COUNT(*) FROM saga_steps s
              WHERE s.status = 'completed'
                AND NOT EXISTS (SELECT 1 FROM demo_effects e
                                 WHERE e.idempotency_key = s.idempotency_key AND e.applied = 1)"
        )
        .await,
        0,
        "every completed step's effect is in the downstream ledger exactly once"
    );
    assert_eq!(
        count(
            &pool,
            "SELECT COUNT(*) FROM (SELECT order_no FROM demo_effects
                                    WHERE step = 'charge_card' AND phase = 'action'
                                    GROUP BY order_no HAVING SUM(applied) > 1)"
        )
        .await,
        0,
        "no order charged twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_runs_on_postgres_with_the_same_guarantees() {
    let url = saga_store::testing::TestPg::fresh_database()
        .await
        .expect("a test database");
    let output = Command::new(quickstart())
        .args([
            "--db",
            &url,
            "--sagas",
            "120",
            "--seed",
            "3",
            "--workers",
            "8",
        ])
        .output()
        .expect("run the demo on Postgres");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "demo failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("orders charged twice: 0"), "{stdout}");
    assert!(stdout.contains("orders emailed twice: 0"), "{stdout}");
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let settled: i64 = sqlx::query(
        "SELECT COUNT(*) FROM saga.saga_instances WHERE status NOT IN ('running', 'compensating')",
    )
    .fetch_one(&pool)
    .await
    .and_then(|row| row.try_get(0))
    .unwrap();
    assert_eq!(settled, 120, "every saga settled");
    let applied_twice: i64 =
        sqlx::query("SELECT COUNT(*) FROM public.demo_effects WHERE applied > 1")
            .fetch_one(&pool)
            .await
            .and_then(|row| row.try_get(0))
            .unwrap();
    assert_eq!(applied_twice, 0);
}
