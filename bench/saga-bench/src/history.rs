//! Finished sagas kept in the tables, to measure the write path against a long history: each
//! a completed W1 saga with its five completed steps and its twelve events, as the store would
//! have written them (ids that sort before new ones, as older UUIDv7 ids do).

use std::time::Instant;

use sqlx::SqlitePool;

use crate::pgutil::Res;

/// The twelve events of a completed five-step saga: (order, kind, step, phase, attempt).
const EVENTS: &str = "(0, 'saga_started', NULL, NULL, NULL),
     (1, 'step_started', 'step_1', 'action', 1), (2, 'step_completed', 'step_1', 'action', 1),
     (3, 'step_started', 'step_2', 'action', 1), (4, 'step_completed', 'step_2', 'action', 1),
     (5, 'step_started', 'step_3', 'action', 1), (6, 'step_completed', 'step_3', 'action', 1),
     (7, 'step_started', 'step_4', 'action', 1), (8, 'step_completed', 'step_4', 'action', 1),
     (9, 'step_started', 'step_5', 'action', 1), (10, 'step_completed', 'step_5', 'action', 1),
     (11, 'status_changed', NULL, NULL, NULL)";

/// Inserts `sagas` finished sagas into a migrated SQLite store; returns the seconds it took.
pub async fn preload_sqlite(pool: &SqlitePool, sagas: u64) -> Res<f64> {
    let started = Instant::now();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| format!("the clock: {e}"))?
        .as_millis();
    let n = i64::try_from(sagas).map_err(|_| "--history is too large".to_owned())?;
    let statements = [
        format!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {n})
             INSERT INTO saga_instances (id, saga_type, version, fingerprint, status, input,
                 input_hash, fencing_token, created_at, updated_at)
             SELECT printf('00000000-0000-7000-8000-%012x', i), 'bench_w1', 1, 'history',
                    'completed', '0', 'history', 1, {now}, {now}
               FROM n"
        ),
        format!(
            "INSERT INTO saga_steps (saga_id, step_index, phase, name, status, attempt,
                 idempotency_key, output, started_at, finished_at)
             SELECT s.id, k.column1, 'action', 'step_' || (k.column1 + 1), 'completed', 1,
                    s.id || '/step_' || (k.column1 + 1) || '/action', 'null', {now}, {now}
               FROM saga_instances s CROSS JOIN (VALUES (0), (1), (2), (3), (4)) k
              WHERE s.fingerprint = 'history'
              ORDER BY s.id, k.column1"
        ),
        format!(
            "INSERT INTO saga_events (saga_id, at, kind, step, phase, attempt)
             SELECT s.id, {now}, e.column2, e.column3, e.column4, e.column5
               FROM saga_instances s CROSS JOIN (VALUES {EVENTS}) e
              WHERE s.fingerprint = 'history'
              ORDER BY s.id, e.column1"
        ),
        "ANALYZE".to_owned(),
    ];
    let mut tx = pool.begin().await.map_err(|e| format!("preloading history: {e}"))?;
    for sql in &statements {
        sqlx::query(sql)
            .execute(&mut *tx)
            .await
            .map_err(|e| format!("preloading history: {e}"))?;
    }
    tx.commit()
        .await
        .map_err(|e| format!("preloading history: {e}"))?;
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(pool)
        .await
        .map_err(|e| format!("checkpointing after the history: {e}"))?;
    Ok(started.elapsed().as_secs_f64())
}

/// Inserts `sagas` finished sagas into a migrated Postgres store; returns the seconds it took.
pub async fn preload_pg(url: &str, sagas: u64) -> Res<f64> {
    let started = Instant::now();
    let n = i64::try_from(sagas).map_err(|_| "--history is too large".to_owned())?;
    // The store's tables are in its schema (`PgOptions::schema`, "saga" by default): one
    // connection, its search path set as the store sets it.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .after_connect(|conn, _| {
            Box::pin(async move {
                sqlx::Executor::execute(conn, "SET search_path TO saga, public").await?;
                Ok(())
            })
        })
        .connect(url)
        .await
        .map_err(|e| format!("connecting to preload history: {e}"))?;
    let statements = [
        format!(
            "INSERT INTO saga_instances (id, saga_type, version, fingerprint, status, input,
                 input_hash, fencing_token, created_at, updated_at)
             SELECT ('00000000-0000-7000-8000-' || lpad(to_hex(i), 12, '0'))::uuid, 'bench_w1',
                    1, 'history', 'completed', '0'::jsonb, 'history', 1, now(), now()
               FROM generate_series(1, {n}) i"
        ),
        "INSERT INTO saga_steps (saga_id, step_index, phase, name, status, attempt,
             idempotency_key, output, started_at, finished_at)
         SELECT s.id, k, 'action', 'step_' || (k + 1), 'completed', 1,
                s.id || '/step_' || (k + 1) || '/action', 'null'::jsonb, now(), now()
           FROM saga_instances s CROSS JOIN generate_series(0, 4) k
          WHERE s.fingerprint = 'history'
          ORDER BY s.id, k"
            .to_owned(),
        format!(
            "INSERT INTO saga_events (saga_id, at, kind, step, phase, attempt)
             SELECT s.id, now(), e.kind, e.step, e.phase, e.attempt
               FROM saga_instances s
              CROSS JOIN (VALUES {EVENTS}) AS e(ord, kind, step, phase, attempt)
              WHERE s.fingerprint = 'history'
              ORDER BY s.id, e.ord"
        ),
        "VACUUM ANALYZE saga_instances".to_owned(),
        "VACUUM ANALYZE saga_steps".to_owned(),
        "VACUUM ANALYZE saga_events".to_owned(),
        "CHECKPOINT".to_owned(),
    ];
    for sql in &statements {
        sqlx::query(sql)
            .execute(&pool)
            .await
            .map_err(|e| format!("preloading history: {e}"))?;
    }
    pool.close().await;
    Ok(started.elapsed().as_secs_f64())
}
