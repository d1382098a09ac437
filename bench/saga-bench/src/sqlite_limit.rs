//! SQLite's limit for durable step transitions, on the file system the W1 SQLite run uses: one
//! connection in a loop of write transactions, each `--per-commit` transitions — the pgbench
//! script's pair (insert a row with a unique random key, update a saga's status) — and one
//! commit. With more than one per commit the transitions are written as the Postgres ceiling
//! writes them (`--shape rows`, the default): one INSERT of all the keys and one UPDATE of all
//! the sagas; `--shape pairs` writes one INSERT and one UPDATE per transition instead.
//!
//! The file is opened through `SqliteStore` itself and the loop runs on a connection of the
//! store's pool, so the pragmas are the store's own (WAL, `synchronous = FULL`, its busy timeout,
//! foreign keys), and each write transaction opens with `BEGIN IMMEDIATE` as the store's do.
//! SQLite has one writer at a time, so one connection is the limit: more would only wait for
//! the write lock.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use saga::SqliteStore;
use serde_json::{json, Value};
use sqlx::Connection;

use crate::pgutil::{err, percentile, Res};

#[derive(clap::Args, Debug, Clone)]
pub struct SqliteLimitArgs {
    /// Transitions per commit (1: one per commit; 16: a group of 16 sharing one commit).
    #[arg(long, default_value_t = 1)]
    pub per_commit: u32,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Warm-up seconds before measuring.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Directory for the SQLite file (the bench's temp dir); the file is made fresh.
    #[arg(long, default_value = "/tmp")]
    pub dir: String,
    /// rows: a commit's transitions in one INSERT and one UPDATE (as the Postgres ceiling);
    /// pairs: one INSERT and one UPDATE per transition. The same with one per commit.
    #[arg(long, default_value = "rows")]
    pub shape: String,
}

/// Groups of saga rows the commits cycle through: each commit updates the `per_commit` sagas of
/// one group (as each saga in flight has a row of its own).
const GROUPS: i64 = 64;

pub async fn run(args: SqliteLimitArgs) -> Res<Value> {
    if args.per_commit == 0 || args.per_commit > 1024 {
        return Err(format!(
            "--per-commit must be between 1 and 1024 (got {})",
            args.per_commit
        ));
    }
    let pairs = match args.shape.as_str() {
        "rows" => false,
        "pairs" => true,
        other => return Err(format!("--shape must be rows or pairs (got {other})")),
    };
    let per = i64::from(args.per_commit);
    if !(args.duration > 0.0 && args.duration.is_finite())
        || !(args.warmup >= 0.0 && args.warmup.is_finite())
    {
        return Err("--duration must be > 0 and --warmup >= 0 (seconds)".into());
    }
    let path = format!(
        "{}/bench_sqlite_limit_{}.db",
        args.dir.trim_end_matches('/'),
        args.per_commit
    );
    let remove = || {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{path}{suffix}"));
        }
    };
    remove();
    let store = SqliteStore::connect(&format!("sqlite://{path}"))
        .await
        .map_err(err("opening SQLite"))?;
    let mut conn = store
        .pool()
        .acquire()
        .await
        .map_err(err("a SQLite connection"))?;
    let create = format!(
        "CREATE TABLE bench_steps (idempotency_key TEXT PRIMARY KEY, saga_id INTEGER NOT NULL,
             status TEXT NOT NULL, at INTEGER NOT NULL);
         CREATE TABLE bench_sagas (id INTEGER PRIMARY KEY, status TEXT NOT NULL,
             updated_at INTEGER NOT NULL);
         WITH RECURSIVE g(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM g WHERE n < {})
         INSERT INTO bench_sagas SELECT n, 'running', 0 FROM g;",
        GROUPS * per - 1
    );
    sqlx::raw_sql(&create)
        .execute(&mut *conn)
        .await
        .map_err(err("creating the tables"))?;

    // One transition (pairs, or one per commit): saga ?1.
    let insert = "INSERT INTO bench_steps (idempotency_key, saga_id, status, at)
                  VALUES (lower(hex(randomblob(16))), ?1, 'completed', ?2)";
    let update = "UPDATE bench_sagas SET status = 'running', updated_at = ?2 WHERE id = ?1";
    // All of a commit's transitions in one statement each: sagas ?1 ..= ?3.
    let insert_rows =
        "WITH RECURSIVE g(id) AS (SELECT ?1 UNION ALL SELECT id + 1 FROM g WHERE id < ?3)
                       INSERT INTO bench_steps (idempotency_key, saga_id, status, at)
                       SELECT lower(hex(randomblob(16))), id, 'completed', ?2 FROM g";
    let update_rows =
        "UPDATE bench_sagas SET status = 'running', updated_at = ?2 WHERE id BETWEEN ?1 AND ?3";
    let grouped_statements = per > 1 && !pairs;
    let begin = Instant::now();
    let window_start = begin + Duration::from_secs_f64(args.warmup);
    let window_end = window_start + Duration::from_secs_f64(args.duration);
    let mut latencies_ms: Vec<f64> = Vec::new();
    let mut commits: u64 = 0;
    let mut group: i64 = 0;
    loop {
        let started = Instant::now();
        if started >= window_end {
            break;
        }
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let mut tx = conn
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(err("BEGIN IMMEDIATE"))?;
        let first = group * per;
        let last = first + per - 1;
        group = (group + 1) % GROUPS;
        if grouped_statements {
            sqlx::query(insert_rows)
                .bind(first)
                .bind(now_ms)
                .bind(last)
                .execute(&mut *tx)
                .await
                .map_err(err("INSERT"))?;
            sqlx::query(update_rows)
                .bind(first)
                .bind(now_ms)
                .bind(last)
                .execute(&mut *tx)
                .await
                .map_err(err("UPDATE"))?;
        } else {
            for saga in first..=last {
                sqlx::query(insert)
                    .bind(saga)
                    .bind(now_ms)
                    .execute(&mut *tx)
                    .await
                    .map_err(err("INSERT"))?;
                sqlx::query(update)
                    .bind(saga)
                    .bind(now_ms)
                    .execute(&mut *tx)
                    .await
                    .map_err(err("UPDATE"))?;
            }
        }
        tx.commit().await.map_err(err("COMMIT"))?;
        if started >= window_start {
            commits += 1;
            latencies_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        }
    }
    let measured = window_end
        .saturating_duration_since(window_start)
        .as_secs_f64();
    drop(conn);
    store.pool().close().await;
    drop(store);
    let file_bytes = std::fs::metadata(&path)
        .map(|m| m.len() as f64)
        .unwrap_or(f64::NAN);
    remove();
    if commits == 0 {
        return Err("no commit finished within the measured window".into());
    }
    latencies_ms.sort_by(f64::total_cmp);
    let transitions = commits * u64::from(args.per_commit);
    Ok(json!({
        "engine": "sqlite",
        "backend": "sqlite",
        "workload": "sqlite_limit",
        "per_commit": args.per_commit,
        "shape": if per > 1 && pairs { "pairs" } else { "rows" },
        "inflight": 1,
        "commits": commits,
        "transitions": transitions,
        "elapsed_s": measured,
        "commits_per_s": commits as f64 / measured,
        "transitions_per_s": transitions as f64 / measured,
        "commit_p50_ms": percentile(&latencies_ms, 0.50),
        "commit_p99_ms": percentile(&latencies_ms, 0.99),
        "file_bytes": file_bytes,
        "pragmas": "the store's: journal_mode=WAL, synchronous=FULL, busy_timeout=30s, foreign_keys=ON; BEGIN IMMEDIATE",
    }))
}
