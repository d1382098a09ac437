//! SqliteStore: the embedded default backend. One file, no server; several processes may share
//! it (WAL mode, write transactions taken with `BEGIN IMMEDIATE`, a busy timeout). In a process,
//! writes take turns and are grouped by a writer task ([`writes`]).

mod many;
mod rows;
mod writes;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use saga_core::policy::{
    decide_permit, use_expires_at, LimitState, Pause, PauseRequest, Permit, PermitRequest,
    PolicyKind, PolicyState, UseState,
};
use saga_core::store::write::{
    self, decide_cancel, decide_settle, CancelRequest, CreationPlan, LeaseChange, Precondition,
    StepWrite, WritePlan,
};
use saga_core::store::{OverviewParts, OverviewQuery};
use saga_core::wait::{Delivered, SignalDelivery};
use saga_core::{
    CancelOutcome, Change, Created, Error, Event, Intervention, InterventionId, InterventionStatus,
    Lease, NewSaga, ParentLink, Result, SagaFilter, SagaId, SagaRecord, SagaSnapshot, SagaStatus,
    Settlement, StepContext, StepError, StepTransaction, Store, Timestamp, WorkerId,
};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Row, Sqlite, SqliteConnection, Transaction};

use crate::error::{classify, is_unique_violation, migration};
use rows::millis;

/// The transaction a transactional step runs in, on SQLite (a write transaction: other writers
/// wait for it, so keep transactional steps short).
struct SqliteStepTransaction(Transaction<'static, Sqlite>, writes::Gate);

impl StepTransaction for SqliteStepTransaction {
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }

    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any + Send> {
        self
    }
}

/// The SQLite connection of a transactional step's transaction: writes made through it commit
/// together with the step's `completed` record, or not at all.
///
/// # Errors
/// A permanent [`StepError`] when the step was not declared `.transactional()` or the store is
/// not a [`SqliteStore`].
pub async fn sqlite_transaction<I>(
    ctx: &StepContext<I>,
) -> std::result::Result<tokio::sync::MappedMutexGuard<'_, SqliteConnection>, StepError> {
    let slot = ctx.transaction().ok_or_else(|| {
        StepError::permanent(format!(
            "step `{}` has no transaction; declare it `.transactional()`",
            ctx.step()
        ))
    })?;
    let guard = slot.lock().await;
    tokio::sync::MutexGuard::try_map(guard, |tx| {
        tx.as_any_mut()
            .downcast_mut::<SqliteStepTransaction>()
            .map(|tx| &mut *tx.0)
    })
    .map_err(|_| {
        StepError::permanent("the step's transaction is not a SQLite transaction; use SqliteStore")
    })
}

/// Settings of a [`SqliteStore`].
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// Most connections in the pool (1 for an in-memory database).
    pub max_connections: u32,
    /// How long a write waits for another writer before failing as unavailable.
    pub busy_timeout: Duration,
    /// `true` (default): every commit is flushed to disk (`synchronous = FULL`); `false` keeps
    /// commits safe across process crashes but not power loss (`synchronous = NORMAL`), and is faster.
    pub durable: bool,
    /// `true` (default): create the file if missing and apply the schema migrations on connect.
    /// `false`: open the database as it is, creating and migrating nothing (for tools that must
    /// not change a production schema; read it with [`sqlite_schema`](crate::sqlite_schema)).
    pub migrate: bool,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            max_connections: 8,
            busy_timeout: Duration::from_secs(30),
            durable: true,
            migrate: true,
        }
    }
}

/// A [`Store`] on a SQLite database file (or `sqlite::memory:`).
///
/// Writes of one process take turns (one writer at a time, as SQLite allows), and the step
/// writes and creations of the sagas in flight at the same time share one transaction and one
/// commit: throughput rises with the sagas in flight. Several processes may share the file;
/// they meet at its write lock (WAL mode, `BEGIN IMMEDIATE`, the busy timeout).
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// Whether commits wait for the disk (`SqliteOptions::durable`).
    durable: bool,
    /// This process's turn to write, and the step writes waiting for it.
    writes: Arc<writes::Writes>,
}

impl SqliteStore {
    /// Opens (creating if missing) the database at `url` (`sqlite://saga.db`,
    /// `sqlite::memory:`) and applies the schema migrations.
    ///
    /// # Errors
    /// [`Error::Configuration`] for a malformed URL or a failed migration;
    /// [`Error::StoreUnavailable`] when the file cannot be opened.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, SqliteOptions::default()).await
    }

    /// As [`SqliteStore::connect`], with settings.
    ///
    /// # Errors
    /// As [`SqliteStore::connect`].
    pub async fn connect_with(url: &str, options: SqliteOptions) -> Result<Self> {
        let connect = SqliteConnectOptions::from_str(url)
            .map_err(|err| {
                Error::Configuration(format!(
                    "`{url}` is not a SQLite URL ({err}); use sqlite://path/to/file.db or sqlite::memory:"
                ))
            })?
            .create_if_missing(options.migrate)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(if options.durable {
                SqliteSynchronous::Full
            } else {
                SqliteSynchronous::Normal
            })
            .busy_timeout(options.busy_timeout)
            .foreign_keys(true);
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let pool = SqlitePoolOptions::new()
            .max_connections(if in_memory {
                1
            } else {
                options.max_connections.max(1)
            })
            .min_connections(if in_memory { 1 } else { 0 })
            .idle_timeout(if in_memory {
                None
            } else {
                Some(Duration::from_secs(600))
            })
            .max_lifetime(if in_memory {
                None
            } else {
                Some(Duration::from_secs(1800))
            })
            .acquire_timeout(options.busy_timeout)
            .connect_with(connect)
            .await
            .map_err(classify)?;
        if options.migrate {
            crate::migrate::sqlite_migrator()
                .run(&pool)
                .await
                .map_err(migration)?;
        }
        Ok(Self {
            writes: Arc::new(writes::Writes::start(pool.clone())),
            pool,
            durable: options.durable && !in_memory,
        })
    }

    /// The connection pool, for applications that keep their own tables in the same file.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Opens a write transaction (`BEGIN IMMEDIATE`: the file's one write lock) once this
    /// process's turn to write comes (see [`writes`]), in a task of its own, so that it is
    /// cancel-safe. The turn is held until the returned gate is dropped: keep it to the commit.
    ///
    /// sqlx 0.8's `begin_with` is not cancel-safe for a custom BEGIN on SQLite: a caller
    /// dropped after the BEGIN was answered but before the transaction was made (a worker
    /// killed, a drive whose lease was lost) leaves the pooled connection holding the write
    /// lock with nothing to end it, and every other writer waits out its busy timeout. Run to
    /// completion in a task, the transaction is always made; one nobody takes any more is
    /// dropped there and rolled back.
    async fn write_tx(&self) -> Result<(Transaction<'static, Sqlite>, writes::Gate)> {
        let gate = self.writes.gate().await;
        let pool = self.pool.clone();
        let tx = tokio::spawn(async move { pool.begin_with("BEGIN IMMEDIATE").await })
            .await
            .map_err(|err| Error::Store(Box::new(err)))?
            .map_err(classify)?;
        Ok((tx, gate))
    }

    /// Claims up to `limit` active, due sagas: unleased or expired ones, or (with
    /// `granted_before`) those leased to `owner` by an earlier run, expiring before that time.
    /// With `load`, reads each claimed saga in the same transaction.
    async fn claim_where(
        &self,
        owner: &WorkerId,
        granted_before: Option<Timestamp>,
        now: Timestamp,
        lease_for: Duration,
        limit: u32,
        load: bool,
    ) -> Result<Vec<(Lease, Option<Result<SagaSnapshot>>)>> {
        let expires_at = saga_core::after(now, lease_for);
        let (mut tx, _gate) = self.write_tx().await?;
        let eligible = match granted_before {
            None => "(lease_expires_at IS NULL OR lease_expires_at < ?3)",
            Some(_) => "(lease_owner = ?1 AND lease_expires_at < ?5)",
        };
        let sql = format!(
            "UPDATE saga_instances
                SET lease_previous_owner = lease_owner,
                    lease_owner = ?1,
                    lease_expires_at = ?2,
                    fencing_token = fencing_token + 1
              WHERE id IN (
                    SELECT id FROM saga_instances
                     WHERE status IN ('running', 'compensating')
                       AND next_run_at <= ?3
                       AND {eligible}
                     ORDER BY next_run_at
                     LIMIT ?4)
          RETURNING id, fencing_token, lease_previous_owner"
        );
        let claimed = sqlx::query(&sql)
            .bind(owner.as_str())
            .bind(millis(expires_at))
            .bind(millis(now))
            .bind(i64::from(limit))
            .bind(granted_before.map_or(0, millis))
            .fetch_all(&mut *tx)
            .await
            .map_err(classify)?;
        let mut leases = Vec::with_capacity(claimed.len());
        for row in &claimed {
            let saga = rows::saga_id(row, "id")?;
            let token: i64 = row.try_get("fencing_token").map_err(classify)?;
            let previous: Option<String> = row.try_get("lease_previous_owner").map_err(classify)?;
            if let Some(previous) = previous.clone() {
                insert_event(
                    &mut tx,
                    saga,
                    now,
                    &saga_core::store::EventData {
                        kind: saga_core::EventKind::LeaseTakenOver,
                        step: None,
                        phase: None,
                        attempt: None,
                        detail: Some(format!("{owner} took over from {previous}")),
                    },
                )
                .await?;
            }
            let lease = Lease {
                saga,
                owner: owner.clone(),
                token: saga_core::FencingToken(token),
                expires_at,
                taken_over_from: previous.map(WorkerId::new),
            };
            let snapshot = if load {
                load_with(&mut tx, saga).await.transpose()
            } else {
                None
            };
            leases.push((lease, snapshot));
        }
        tx.commit().await.map_err(classify)?;
        Ok(leases)
    }
}

/// A permit decided and written in the transaction open on `conn`.
async fn permit_in(
    conn: &mut SqliteConnection,
    request: &PermitRequest,
    now: Timestamp,
) -> Result<Permit> {
    // Read once the write lock is held: a time read before waiting for it would let
    // grants bunch.
    let now = now.max(saga_core::now());
    let mut read = PolicyState::default();
    for wanted in &request.uses {
        if wanted.policy.kind == PolicyKind::RateLimit {
            let row =
                sqlx::query("SELECT next_at, backoff_until FROM saga_rate_limits WHERE name = ?")
                    .bind(&wanted.policy.name)
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err(classify)?;
            let time = |column: &str| -> Result<Option<Timestamp>> {
                Ok(match &row {
                    Some(row) => row
                        .try_get::<Option<i64>, _>(column)
                        .map_err(classify)?
                        .and_then(chrono::DateTime::from_timestamp_millis),
                    None => None,
                })
            };
            read.uses.push(UseState {
                limit: LimitState {
                    next_at: time("next_at")?,
                    backoff_until: time("backoff_until")?,
                },
                ..UseState::default()
            });
            continue;
        }
        let (kind, name, key) = (
            wanted.policy.kind.as_str(),
            wanted.policy.name.as_str(),
            wanted.key.as_str(),
        );
        sqlx::query(
                "DELETE FROM saga_policy_uses
                  WHERE kind = ?1 AND name = ?2 AND use_key = ?3
                    AND (expires_at <= ?4
                         OR (expires_at IS NULL AND NOT EXISTS (
                                SELECT 1 FROM saga_instances i
                                 WHERE i.id = saga_policy_uses.saga_id
                                   AND i.status NOT IN ('completed', 'compensated', 'cancelled'))))",
            )
            .bind(kind)
            .bind(name)
            .bind(key)
            .bind(millis(now))
            .execute(&mut *conn)
            .await
            .map_err(classify)?;
        let mine = (
            request.saga.to_string(),
            i64::from(wanted.counted_step(request.index).0),
            i64::from(wanted.counted_attempt(request.attempt)),
        );
        let row = sqlx::query(
                "SELECT COALESCE(SUM(saga_id = ?4 AND step_index = ?5 AND attempt = ?6), 0) AS mine,
                        COALESCE(SUM(NOT (saga_id = ?4 AND step_index = ?5 AND attempt = ?6)), 0) AS counted,
                        MIN(CASE WHEN NOT (saga_id = ?4 AND step_index = ?5 AND attempt = ?6) THEN expires_at END) AS frees_at,
                        MIN(CASE WHEN saga_id <> ?4 THEN saga_id END) AS holder
                   FROM saga_policy_uses
                  WHERE kind = ?1 AND name = ?2 AND use_key = ?3",
            )
            .bind(kind)
            .bind(name)
            .bind(key)
            .bind(&mine.0)
            .bind(mine.1)
            .bind(mine.2)
            .fetch_one(&mut *conn)
            .await
            .map_err(classify)?;
        let number = |column: &str| -> Result<i64> {
            row.try_get::<Option<i64>, _>(column)
                .map(Option::unwrap_or_default)
                .map_err(classify)
        };
        let time = |column: &str| -> Result<Option<Timestamp>> {
            Ok(row
                .try_get::<Option<i64>, _>(column)
                .map_err(classify)?
                .and_then(chrono::DateTime::from_timestamp_millis))
        };
        let holder: Option<String> = row.try_get("holder").map_err(classify)?;
        read.uses.push(UseState {
            mine: number("mine")? > 0,
            counted: u32::try_from(number("counted")?).unwrap_or(u32::MAX),
            frees_at: time("frees_at")?,
            limit: LimitState::default(),
            holder: holder.and_then(|holder| holder.parse().ok()),
        });
    }
    let decided = decide_permit(request, &read, now);
    for (position, next_at) in &decided.limits {
        let Some(wanted) = request.uses.get(*position) else {
            continue;
        };
        sqlx::query(
            "INSERT INTO saga_rate_limits (name, next_at) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET next_at = excluded.next_at",
        )
        .bind(&wanted.policy.name)
        .bind(millis(*next_at))
        .execute(&mut *conn)
        .await
        .map_err(classify)?;
    }
    for position in &decided.record {
        let Some(wanted) = request.uses.get(*position) else {
            continue;
        };
        sqlx::query(
            "INSERT OR IGNORE INTO saga_policy_uses
                     (kind, name, use_key, saga_id, step_index, attempt, used_at, expires_at)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(wanted.policy.kind.as_str())
        .bind(&wanted.policy.name)
        .bind(&wanted.key)
        .bind(request.saga.to_string())
        .bind(i64::from(wanted.counted_step(request.index).0))
        .bind(i64::from(wanted.counted_attempt(request.attempt)))
        .bind(millis(now))
        .bind(use_expires_at(&wanted.policy, now).map(millis))
        .execute(&mut *conn)
        .await
        .map_err(classify)?;
    }
    Ok(decided.permit)
}

async fn insert_event(
    tx: &mut Transaction<'static, Sqlite>,
    saga: SagaId,
    at: Timestamp,
    event: &saga_core::store::EventData,
) -> Result<()> {
    insert_events(tx, &[(saga, event)], at).await
}

/// Most events in one `INSERT` (7 values each, well under SQLite's 32,766 bound values).
const EVENTS_PER_INSERT: usize = 1_000;

/// Appends `events` to the sagas' histories, in their order, in as few statements as fit.
async fn insert_events(
    tx: &mut Transaction<'static, Sqlite>,
    events: &[(SagaId, &saga_core::store::EventData)],
    at: Timestamp,
) -> Result<()> {
    for chunk in events.chunks(EVENTS_PER_INSERT) {
        let mut insert = sqlx::QueryBuilder::<Sqlite>::new(
            "INSERT INTO saga_events (saga_id, at, kind, step, phase, attempt, detail) ",
        );
        insert.push_values(chunk, |mut row, (saga, event)| {
            row.push_bind(saga.to_string())
                .push_bind(millis(at))
                .push_bind(event.kind.as_str())
                .push_bind(event.step.as_ref().map(|step| step.as_str().to_owned()))
                .push_bind(event.phase.map(|phase| phase.as_str()))
                .push_bind(event.attempt.map(|attempt| i64::from(attempt.0)))
                .push_bind(event.detail.clone());
        });
        insert.build().execute(&mut **tx).await.map_err(classify)?;
    }
    Ok(())
}

/// Creates `saga` in `tx` at `now` (not committed). `Existing` and a conflict write nothing.
async fn create_in(
    tx: &mut Transaction<'static, Sqlite>,
    saga: &NewSaga,
    plan: &CreationPlan,
    now: Timestamp,
) -> Result<Created> {
    let created = create_rows(tx, saga, plan, now).await?;
    if let Created::New(id) = created {
        let events: Vec<_> = plan.events.iter().map(|event| (id, event)).collect();
        insert_events(tx, &events, now).await?;
    }
    Ok(created)
}

/// [`create_in`] but the events, which the caller appends (with other sagas' events).
async fn create_rows(
    tx: &mut Transaction<'static, Sqlite>,
    saga: &NewSaga,
    plan: &CreationPlan,
    now: Timestamp,
) -> Result<Created> {
    if let (Some(key), Some(window)) = (&saga.idempotency_key, saga.dedup_window) {
        // A saga holding the key since before the window gives it up.
        sqlx::query(
            "UPDATE saga_instances SET idempotency_key = idempotency_key || '#' || id
              WHERE idempotency_key = ? AND created_at <= ?",
        )
        .bind(key.as_str())
        .bind(millis(saga_core::before(now, window)))
        .execute(&mut **tx)
        .await
        .map_err(classify)?;
    }
    if let Some(key) = &saga.idempotency_key {
        let existing =
            sqlx::query("SELECT id, input_hash FROM saga_instances WHERE idempotency_key = ?")
                .bind(key.as_str())
                .fetch_optional(&mut **tx)
                .await
                .map_err(classify)?;
        if let Some(row) = existing {
            let id = rows::saga_id(&row, "id")?;
            let hash: String = row.try_get("input_hash").map_err(classify)?;
            return if hash == saga.input_hash {
                Ok(Created::Existing(id))
            } else {
                Err(Error::Conflict {
                    key: key.clone(),
                    existing: id,
                })
            };
        }
    }
    if let Some(window) = saga.dedup_window.filter(|_| saga.idempotency_key.is_some()) {
        sqlx::query("INSERT INTO saga_start_windows (saga_id, until) VALUES (?, ?)")
            .bind(saga.id.to_string())
            .bind(millis(saga_core::after(now, window)))
            .execute(&mut **tx)
            .await
            .map_err(classify)?;
    }
    let inserted = sqlx::query(
        "INSERT INTO saga_instances (id, saga_type, version, fingerprint, status, input,
             input_hash, idempotency_key, next_run_at, fencing_token, trace_context,
             created_at, updated_at, lease_owner, lease_expires_at, deadline_at, parent_id,
             parent_step)
         VALUES (?, ?, ?, ?, 'running', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(saga.id.to_string())
    .bind(saga.saga_type.as_str())
    .bind(i64::from(saga.version))
    .bind(&saga.fingerprint)
    .bind(json_text(&saga.input))
    .bind(&saga.input_hash)
    .bind(
        saga.idempotency_key
            .as_ref()
            .map(|key| key.as_str().to_owned()),
    )
    .bind(millis(now))
    .bind(plan.token.0)
    .bind(&saga.trace_context)
    .bind(millis(now))
    .bind(millis(now))
    .bind(
        saga.lease
            .as_ref()
            .map(|(owner, _)| owner.as_str().to_owned()),
    )
    .bind(saga.lease.as_ref().map(|(_, until)| millis(*until)))
    .bind(saga.deadline.map(millis))
    .bind(saga.parent.as_ref().map(|parent| parent.saga.to_string()))
    .bind(
        saga.parent
            .as_ref()
            .map(|parent| parent.step.as_str().to_owned()),
    )
    .execute(&mut **tx)
    .await;
    if let Err(err) = inserted {
        if is_unique_violation(&err) {
            return Err(Error::Store(
                format!(
                    "saga id {} already exists; start again with a fresh id",
                    saga.id
                )
                .into(),
            ));
        }
        return Err(classify(err));
    }
    let id = saga.id.to_string();
    for step in &plan.steps {
        write_step(tx, &id, step, now).await?;
    }
    Ok(Created::New(saga.id))
}

fn json_text(value: &serde_json::Value) -> String {
    value.to_string()
}

#[async_trait]
impl Store for SqliteStore {
    async fn create(&self, saga: NewSaga) -> Result<Created> {
        let plan = CreationPlan::compile(&saga)?;
        // In one transaction with the other creations and step writes waiting at the same time.
        self.writes.create(saga, plan).await
    }

    async fn claim(
        &self,
        owner: &WorkerId,
        now: Timestamp,
        lease_for: Duration,
        limit: u32,
    ) -> Result<Vec<Lease>> {
        let claimed = self
            .claim_where(owner, None, now, lease_for, limit, false)
            .await?;
        Ok(claimed.into_iter().map(|(lease, _)| lease).collect())
    }

    async fn claim_loaded(
        &self,
        owner: &WorkerId,
        now: Timestamp,
        lease_for: Duration,
        limit: u32,
    ) -> Result<Vec<(Lease, Option<Result<SagaSnapshot>>)>> {
        self.claim_where(owner, None, now, lease_for, limit, true)
            .await
    }

    async fn reclaim(
        &self,
        owner: &WorkerId,
        granted_before: Timestamp,
        now: Timestamp,
        lease_for: Duration,
        limit: u32,
    ) -> Result<Vec<Lease>> {
        let claimed = self
            .claim_where(owner, Some(granted_before), now, lease_for, limit, false)
            .await?;
        Ok(claimed.into_iter().map(|(lease, _)| lease).collect())
    }

    async fn heartbeat(&self, lease: &Lease, expires_at: Timestamp) -> Result<Lease> {
        let gate = self.writes.gate().await;
        let updated = sqlx::query(
            "UPDATE saga_instances SET lease_expires_at = ?
              WHERE id = ? AND lease_owner = ? AND fencing_token = ?",
        )
        .bind(millis(expires_at))
        .bind(lease.saga.to_string())
        .bind(lease.owner.as_str())
        .bind(lease.token.0)
        .execute(&self.pool)
        .await
        .map_err(classify)?;
        drop(gate);
        if updated.rows_affected() == 0 {
            return Err(Error::LeaseLost(lease.saga));
        }
        Ok(Lease {
            expires_at,
            ..lease.clone()
        })
    }

    async fn apply(&self, lease: &Lease, changes: &[Change]) -> Result<()> {
        let Ok(plan) = WritePlan::compile(changes) else {
            return Box::pin(self.not_written(lease, changes)).await;
        };
        if !plan.children.is_empty() || plan.wake_parent.is_some() {
            // A write that starts children or wakes a parent (rare) is written alone, in one
            // transaction with them; boxed, so that the common write's future stays small.
            return Box::pin(self.apply_alone(lease, changes)).await;
        }
        // In one transaction with the step writes of other sagas waiting at the same time.
        match self.writes.write(lease, plan).await {
            Ok(true) => Ok(()),
            Ok(false) => Box::pin(self.not_written(lease, changes)).await,
            Err(err) => Err(err),
        }
    }

    async fn begin_step_transaction(
        &self,
        _lease: &Lease,
    ) -> Result<Option<Box<dyn StepTransaction>>> {
        let (tx, gate) = self.write_tx().await?;
        Ok(Some(Box::new(SqliteStepTransaction(tx, gate))))
    }

    fn step_transaction_holds_the_write_lock(&self) -> bool {
        true
    }

    async fn commit_step_transaction(
        &self,
        transaction: Box<dyn StepTransaction>,
        lease: &Lease,
        changes: &[Change],
    ) -> Result<()> {
        match transaction.into_any().downcast::<SqliteStepTransaction>() {
            Ok(tx) => {
                let SqliteStepTransaction(tx, gate) = *tx;
                let applied = self.apply_in(tx, lease, changes).await;
                drop(gate);
                applied
            }
            Err(_) => Err(Error::Store(
                "a step transaction from another store was handed to SqliteStore".into(),
            )),
        }
    }

    async fn load(&self, id: SagaId) -> Result<Option<SagaSnapshot>> {
        let mut tx = self.pool.begin().await.map_err(classify)?;
        let snapshot = load_with(&mut tx, id).await?;
        tx.commit().await.map_err(classify)?;
        Ok(snapshot)
    }

    async fn count_open_interventions(&self) -> Result<u64> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM saga_interventions WHERE status = 'open'")
            .fetch_one(&self.pool)
            .await
            .map_err(classify)?;
        let count: i64 = row.try_get("n").map_err(classify)?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    async fn intervention(&self, id: InterventionId) -> Result<Option<Intervention>> {
        sqlx::query("SELECT * FROM saga_interventions WHERE id = ?")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(classify)?
            .as_ref()
            .map(rows::intervention)
            .transpose()
    }

    async fn settle(&self, settlement: &Settlement) -> Result<SagaStatus> {
        let now = saga_core::now();
        let (mut tx, _gate) = self.write_tx().await?;
        let item = sqlx::query("SELECT * FROM saga_interventions WHERE id = ?")
            .bind(settlement.intervention.to_string())
            .fetch_optional(&mut *tx)
            .await
            .map_err(classify)?
            .as_ref()
            .map(rows::intervention)
            .transpose()?
            .ok_or(Error::InterventionNotFound(settlement.intervention))?;
        if item.status != InterventionStatus::Open {
            return Err(Error::InterventionSettled(settlement.intervention));
        }
        let snapshot = load_with(&mut tx, item.saga_id)
            .await?
            .ok_or(Error::SagaNotFound(item.saga_id))?;
        let (status, plan) = decide_settle(&item, &snapshot, settlement, now)?;
        write_decided(&mut tx, &snapshot, &plan, now).await?;
        sqlx::query(
            "UPDATE saga_interventions SET status = 'resolved', resolved_at = ?, resolved_by = ?,
                    resolution = ?, resolution_reason = ?
              WHERE id = ? AND status = 'open'",
        )
        .bind(millis(now))
        .bind(&settlement.by)
        .bind(settlement.action.as_str())
        .bind(&settlement.reason)
        .bind(settlement.intervention.to_string())
        .execute(&mut *tx)
        .await
        .map_err(classify)?;
        tx.commit().await.map_err(classify)?;
        Ok(status)
    }

    async fn request_cancel(
        &self,
        id: SagaId,
        by: &str,
        reason: &str,
        now: Timestamp,
    ) -> Result<CancelOutcome> {
        self.decide_and_write(id, |stored| decide_cancel(stored, by, reason, now), now)
            .await
    }

    async fn stop_child(
        &self,
        child: SagaId,
        parent: &ParentLink,
        reason: &str,
        now: Timestamp,
    ) -> Result<()> {
        self.decide_and_write(
            child,
            |stored| write::decide_stop_child(stored, parent, reason, now).map(|plan| ((), plan)),
            now,
        )
        .await
    }

    async fn deliver_signal(&self, delivery: &SignalDelivery) -> Result<Delivered> {
        let id = delivery.saga;
        let (mut tx, _gate) = self.write_tx().await?;
        let stored = load_with(&mut tx, id)
            .await?
            .ok_or(Error::SagaNotFound(id))?;
        let Some(write) = write::decide_signal(&stored, delivery)? else {
            return Ok(Delivered::Duplicate(id));
        };
        let now = saga_core::now();
        sqlx::query(
            "INSERT INTO saga_signals (saga_id, name, signal_key, payload, received_at)
             VALUES (?, ?, ?, ?, ?)",
        )
        .bind(id.to_string())
        .bind(&delivery.name)
        .bind(delivery.key.as_str())
        .bind(json_text(&delivery.payload))
        .bind(millis(now))
        .execute(&mut *tx)
        .await
        .map_err(classify)?;
        sqlx::query(
            "UPDATE saga_instances
                SET signals_received = signals_received + 1,
                    next_run_at = CASE WHEN ?1 THEN ?2 ELSE next_run_at END
              WHERE id = ?3",
        )
        .bind(write.wake)
        .bind(millis(now))
        .bind(id.to_string())
        .execute(&mut *tx)
        .await
        .map_err(classify)?;
        insert_event(&mut tx, id, now, &write.event).await?;
        tx.commit().await.map_err(classify)?;
        Ok(Delivered::New(id))
    }

    async fn permit(&self, request: &PermitRequest, now: Timestamp) -> Result<Permit> {
        // Run to completion in a task of its own, so that the connection's durability setting
        // is always put back (see write_tx for why a transaction is begun in a task).
        let (pool, request, durable) = (self.pool.clone(), request.clone(), self.durable);
        let gate = self.writes.gate().await;
        tokio::spawn(async move {
            let _gate = gate;
            let mut conn = pool.acquire().await.map_err(classify)?;
            // A permit stands only once the attempt's `in_progress` is written by a synchronous
            // commit to the same log, which makes it durable too (a crash before loses both):
            // its own commit need not wait for the disk.
            if durable {
                sqlx::query("PRAGMA synchronous = NORMAL")
                    .execute(&mut *conn)
                    .await
                    .map_err(classify)?;
            }
            let decided = async {
                // BEGIN IMMEDIATE: one writer at a time on the file, so the count read is the
                // count written against.
                let mut tx = sqlx::Connection::begin_with(&mut *conn, "BEGIN IMMEDIATE")
                    .await
                    .map_err(classify)?;
                let permit = permit_in(&mut tx, &request, now).await?;
                tx.commit().await.map_err(classify)?;
                Ok(permit)
            }
            .await;
            if durable
                && sqlx::query("PRAGMA synchronous = FULL")
                    .execute(&mut *conn)
                    .await
                    .is_err()
            {
                // Never given back to the pool less durable than the rest.
                drop(conn.detach());
            }
            decided
        })
        .await
        .map_err(|err| Error::Store(Box::new(err)))?
    }

    async fn throttle(&self, name: &str, until: Timestamp) -> Result<()> {
        let (mut tx, _gate) = self.write_tx().await?;
        sqlx::query(
            "INSERT INTO saga_rate_limits (name, backoff_until) VALUES (?1, ?2)
             ON CONFLICT (name) DO UPDATE
                SET backoff_until = MAX(COALESCE(backoff_until, 0), excluded.backoff_until)",
        )
        .bind(name)
        .bind(millis(until))
        .execute(&mut *tx)
        .await
        .map_err(classify)?;
        tx.commit().await.map_err(classify)
    }

    async fn pause(&self, request: &PauseRequest, now: Timestamp) -> Result<(Pause, bool)> {
        let (mut tx, _gate) = self.write_tx().await?;
        let step = request.scope.step.as_ref().map_or("", |step| step.as_str());
        let inserted = sqlx::query(
            "INSERT INTO saga_pauses (saga_type, step, paused_by, reason, paused_at)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (saga_type, step) WHERE resumed_at IS NULL DO NOTHING",
        )
        .bind(request.scope.saga_type.as_str())
        .bind(step)
        .bind(&request.by)
        .bind(&request.reason)
        .bind(millis(now))
        .execute(&mut *tx)
        .await
        .map_err(classify)?
        .rows_affected()
            > 0;
        let row = sqlx::query(
            "SELECT * FROM saga_pauses WHERE saga_type = ? AND step = ? AND resumed_at IS NULL",
        )
        .bind(request.scope.saga_type.as_str())
        .bind(step)
        .fetch_one(&mut *tx)
        .await
        .map_err(classify)?;
        let pause = crate::rows::pause(&row)?;
        tx.commit().await.map_err(classify)?;
        Ok((pause, inserted))
    }

    async fn resume(&self, request: &PauseRequest, now: Timestamp) -> Result<Option<(Pause, u64)>> {
        let (mut tx, _gate) = self.write_tx().await?;
        let step = request.scope.step.as_ref().map_or("", |step| step.as_str());
        let Some(row) = sqlx::query(
            "UPDATE saga_pauses SET resumed_at = ?3, resumed_by = ?4, resume_reason = ?5
              WHERE saga_type = ?1 AND step = ?2 AND resumed_at IS NULL
          RETURNING *",
        )
        .bind(request.scope.saga_type.as_str())
        .bind(step)
        .bind(millis(now))
        .bind(&request.by)
        .bind(&request.reason)
        .fetch_optional(&mut *tx)
        .await
        .map_err(classify)?
        else {
            return Ok(None);
        };
        let pause = crate::rows::pause(&row)?;
        let woken = sqlx::query(
            "UPDATE saga_instances SET next_run_at = ?1
              WHERE waiting_for = ?2 AND status IN ('running', 'compensating')
                AND lease_owner IS NULL",
        )
        .bind(millis(now))
        .bind(request.scope.waiting_for())
        .execute(&mut *tx)
        .await
        .map_err(classify)?
        .rows_affected();
        tx.commit().await.map_err(classify)?;
        Ok(Some((pause, woken)))
    }

    async fn pauses(&self, all: bool) -> Result<Vec<Pause>> {
        let rows = sqlx::query(
            "SELECT * FROM saga_pauses WHERE ?1 OR resumed_at IS NULL ORDER BY paused_at, id",
        )
        .bind(all)
        .fetch_all(&self.pool)
        .await
        .map_err(classify)?;
        rows.iter().map(crate::rows::pause).collect()
    }

    async fn prune(&self, before: Timestamp, limit: u32) -> Result<u64> {
        let (mut tx, _gate) = self.write_tx().await?;
        let now = millis(saga_core::now());
        // A saga whose start key's dedup window is open is kept: a repeat start finds it.
        sqlx::query("DELETE FROM saga_start_windows WHERE until <= ?")
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(classify)?;
        // Policy uses that count no more: their window ended.
        sqlx::query("DELETE FROM saga_policy_uses WHERE expires_at <= ?")
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(classify)?;
        let doomed = "SELECT id FROM saga_instances
                       WHERE status IN ('completed', 'compensated', 'cancelled') AND updated_at < ?1
                         AND id NOT IN (SELECT saga_id FROM saga_start_windows)
                         AND (parent_id IS NULL OR NOT EXISTS (
                              SELECT 1 FROM saga_instances p
                               WHERE p.id = saga_instances.parent_id
                                 AND p.status NOT IN ('completed', 'compensated', 'cancelled')))
                       ORDER BY updated_at LIMIT ?2";
        for table in ["saga_events", "saga_interventions", "saga_signals"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE saga_id IN ({doomed})"))
                .bind(millis(before))
                .bind(i64::from(limit))
                .execute(&mut *tx)
                .await
                .map_err(classify)?;
        }
        let deleted = sqlx::query(&format!(
            "DELETE FROM saga_instances WHERE id IN ({doomed})"
        ))
        .bind(millis(before))
        .bind(i64::from(limit))
        .execute(&mut *tx)
        .await
        .map_err(classify)?
        .rows_affected();
        tx.commit().await.map_err(classify)?;
        Ok(deleted)
    }

    async fn list(&self, filter: &SagaFilter) -> Result<Vec<SagaRecord>> {
        sqlx::query(
            "SELECT * FROM saga_instances
              WHERE (?1 IS NULL OR status = ?1)
                AND (?2 IS NULL OR saga_type = ?2)
                AND (?3 IS NULL OR idempotency_key = ?3)
                AND (?4 IS NULL OR created_at < ?4)
                AND (?5 IS NULL OR id > ?5)
                AND (?7 IS NULL OR substr(waiting_for, 1, length(?7)) = ?7)
                AND (?8 IS NULL OR parent_id = ?8)
              ORDER BY id
              LIMIT ?6",
        )
        .bind(filter.status.map(SagaStatus::as_str))
        .bind(filter.saga_type.as_ref().map(|t| t.as_str().to_owned()))
        .bind(
            filter
                .idempotency_key
                .as_ref()
                .map(|k| k.as_str().to_owned()),
        )
        .bind(filter.created_before.map(millis))
        .bind(filter.after.map(|id| id.to_string()))
        .bind(i64::from(filter.limit_or_default()))
        .bind(filter.waiting_for.clone())
        .bind(filter.parent.map(|id| id.to_string()))
        .fetch_all(&self.pool)
        .await
        .map_err(classify)?
        .iter()
        .map(rows::saga_record)
        .collect()
    }

    async fn count_by_status(&self) -> Result<Vec<(SagaStatus, u64)>> {
        sqlx::query(
            "SELECT status, COUNT(*) AS n FROM saga_instances GROUP BY status ORDER BY status",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(classify)?
        .iter()
        .map(|row| {
            let status: String = row.try_get("status").map_err(classify)?;
            let count: i64 = row.try_get("n").map_err(classify)?;
            let status = status
                .parse::<SagaStatus>()
                .map_err(|err| Error::Store(format!("saga_instances.status: {err}").into()))?;
            Ok((status, u64::try_from(count).unwrap_or(0)))
        })
        .collect()
    }

    async fn overview(&self, query: &OverviewQuery) -> Result<OverviewParts> {
        let mut parts = OverviewParts::default();
        if query.totals {
            parts.counts = sqlx::query(
                "SELECT saga_type, status, COUNT(*) AS n FROM saga_instances
                  GROUP BY saga_type, status",
            )
            .fetch_all(&self.pool)
            .await
            .map_err(classify)?
            .iter()
            .map(crate::rows::type_count)
            .collect::<Result<_>>()?;
            // Buckets as `OverviewQuery::bucket_of` numbers them: (at - since) / bucket.
            parts.series = sqlx::query(
                "SELECT 'started' AS kind, (created_at - ?1) / ?2 AS bucket, COUNT(*) AS n
                   FROM saga_instances WHERE created_at >= ?1 AND created_at <= ?3
                  GROUP BY bucket
                 UNION ALL
                 SELECT status AS kind, (updated_at - ?1) / ?2 AS bucket, COUNT(*) AS n
                   FROM saga_instances
                  WHERE status IN ('completed', 'compensated')
                    AND updated_at >= ?1 AND updated_at <= ?3
                  GROUP BY status, bucket
                 UNION ALL
                 SELECT 'escalated' AS kind, (opened_at - ?1) / ?2 AS bucket, COUNT(*) AS n
                   FROM saga_interventions WHERE opened_at >= ?1 AND opened_at <= ?3
                  GROUP BY bucket",
            )
            .bind(query.since_millis())
            .bind(query.bucket_millis())
            .bind(millis(query.now))
            .fetch_all(&self.pool)
            .await
            .map_err(classify)?
            .iter()
            .map(crate::rows::series_count)
            .collect::<Result<_>>()?;
        }
        parts.stuck = sqlx::query(
            "SELECT i.saga_type, s.name, s.phase, COUNT(*) AS n, MIN(s.started_at) AS since
               FROM saga_instances i JOIN saga_steps s ON s.saga_id = i.id
              WHERE i.status IN ('running', 'compensating')
                AND s.status IN ('in_progress', 'pending') AND s.started_at < ?
              GROUP BY i.saga_type, s.name, s.phase",
        )
        .bind(millis(query.stuck_before()))
        .fetch_all(&self.pool)
        .await
        .map_err(classify)?
        .iter()
        .map(crate::rows::stuck_step)
        .collect::<Result<_>>()?;
        let queue = sqlx::query(
            "SELECT COUNT(*) AS n, MIN(opened_at) AS oldest
               FROM saga_interventions WHERE status = 'open'",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(classify)?;
        (parts.open_interventions, parts.oldest_open_intervention) = crate::rows::queue(&queue)?;
        Ok(parts)
    }

    async fn history(&self, id: SagaId) -> Result<Vec<Event>> {
        sqlx::query("SELECT * FROM saga_events WHERE saga_id = ? ORDER BY seq")
            .bind(id.to_string())
            .fetch_all(&self.pool)
            .await
            .map_err(classify)?
            .iter()
            .map(rows::event)
            .collect()
    }

    async fn interventions(&self, open_only: bool) -> Result<Vec<Intervention>> {
        sqlx::query(
            "SELECT * FROM saga_interventions
              WHERE (?1 = 0 OR status = 'open')
              ORDER BY opened_at, id",
        )
        .bind(i64::from(open_only))
        .fetch_all(&self.pool)
        .await
        .map_err(classify)?
        .iter()
        .map(rows::intervention)
        .collect()
    }
}

/// Reads one saga and its steps on `conn` (inside the caller's transaction).
async fn load_with(conn: &mut SqliteConnection, id: SagaId) -> Result<Option<SagaSnapshot>> {
    let Some(row) = sqlx::query("SELECT * FROM saga_instances WHERE id = ?")
        .bind(id.to_string())
        .fetch_optional(&mut *conn)
        .await
        .map_err(classify)?
    else {
        return Ok(None);
    };
    let record = rows::saga_record(&row)?;
    let steps =
        sqlx::query("SELECT * FROM saga_steps WHERE saga_id = ? ORDER BY step_index, phase")
            .bind(id.to_string())
            .fetch_all(&mut *conn)
            .await
            .map_err(classify)?
            .iter()
            .map(|row| rows::step_record(row, id))
            .collect::<Result<Vec<_>>>()?;
    let signals = if record.signals_received == 0 {
        Vec::new()
    } else {
        sqlx::query("SELECT * FROM saga_signals WHERE saga_id = ? ORDER BY received_at, rowid")
            .bind(id.to_string())
            .fetch_all(&mut *conn)
            .await
            .map_err(classify)?
            .iter()
            .map(|row| rows::signal_record(row, id))
            .collect::<Result<Vec<_>>>()?
    };
    Ok(Some(SagaSnapshot {
        record,
        steps,
        signals,
    }))
}

impl SqliteStore {
    /// Reads saga `id` holding the write lock, lets `decide` judge it, and writes the plan
    /// decided at `now`, if any: an operator's cancel, a parent's request that its child stop.
    async fn decide_and_write<T>(
        &self,
        id: SagaId,
        decide: impl FnOnce(&SagaSnapshot) -> Result<(T, Option<WritePlan>)>,
        now: Timestamp,
    ) -> Result<T> {
        let (mut tx, _gate) = self.write_tx().await?;
        let snapshot = load_with(&mut tx, id)
            .await?
            .ok_or(Error::SagaNotFound(id))?;
        let (outcome, plan) = decide(&snapshot)?;
        if let Some(plan) = plan {
            write_decided(&mut tx, &snapshot, &plan, now).await?;
            tx.commit().await.map_err(classify)?;
        }
        Ok(outcome)
    }

    /// Writes `changes` in a transaction of their own (holding the write gate), fenced by
    /// `lease`, and commits.
    async fn apply_alone(&self, lease: &Lease, changes: &[Change]) -> Result<()> {
        let (tx, gate) = self.write_tx().await?;
        let applied = self.apply_in(tx, lease, changes).await;
        drop(gate);
        applied
    }

    /// Writes `changes` in `tx`, fenced by `lease`, and commits; when the write is not
    /// admitted, rolls back and says why, as every backend does.
    async fn apply_in(
        &self,
        mut tx: Transaction<'static, Sqlite>,
        lease: &Lease,
        changes: &[Change],
    ) -> Result<()> {
        if let Ok(plan) = &WritePlan::compile(changes) {
            if write_plan(&mut tx, lease.saga, Some(lease), plan, saga_core::now()).await? {
                return tx.commit().await.map_err(classify);
            }
        }
        tx.rollback().await.map_err(classify)?;
        self.not_written(lease, changes).await
    }

    /// Why `changes` were not admitted, from the stored saga, as every backend says it.
    async fn not_written(&self, lease: &Lease, changes: &[Change]) -> Result<()> {
        let stored = self.load(lease.saga).await?;
        Err(write::not_admitted(
            stored.as_ref(),
            lease,
            &WritePlan::compile(changes),
        ))
    }
}

/// Writes a plan an operator's action decided on `stored` (read in `tx`, which holds the write
/// lock, so nothing changed since).
async fn write_decided(
    tx: &mut Transaction<'static, Sqlite>,
    stored: &SagaSnapshot,
    plan: &WritePlan,
    now: Timestamp,
) -> Result<()> {
    if write_plan(tx, stored.record.id, None, plan, now).await? {
        Ok(())
    } else {
        Err(Error::Store(
            format!(
                "saga {} changed while an operator's action was written; try the action again",
                stored.record.id
            )
            .into(),
        ))
    }
}

/// Writes `plan` to saga `id` in `tx` at `now`, fenced by `lease` when given (an operator's
/// write has none): the saga row, the step phases, the interventions and the events.
/// `Ok(false)`: the fence did not hold or a step phase refused the plan; roll `tx` back.
async fn write_plan(
    tx: &mut Transaction<'static, Sqlite>,
    id: SagaId,
    lease: Option<&Lease>,
    plan: &WritePlan,
    now: Timestamp,
) -> Result<bool> {
    if !write_rows(tx, id, lease, plan, now).await? {
        return Ok(false);
    }
    let events: Vec<_> = plan.events.iter().map(|event| (id, event)).collect();
    insert_events(tx, &events, now).await?;
    for child in &plan.children {
        // A child whose key is stored already (its step began before) is that child.
        match create_in(tx, child, &CreationPlan::compile(child)?, now).await {
            Ok(_) | Err(Error::Conflict { .. }) => {}
            Err(err) => return Err(err),
        }
    }
    if let Some(parent) = &plan.wake_parent {
        sqlx::query(
            "UPDATE saga_instances
                SET signals_received = signals_received + 1,
                    next_run_at = CASE WHEN status IN ('running', 'compensating')
                                        AND waiting_for = ?2 THEN ?3
                                       ELSE next_run_at END
              WHERE id = ?1",
        )
        .bind(parent.saga.to_string())
        .bind(parent.waiting_for())
        .bind(millis(now))
        .execute(&mut **tx)
        .await
        .map_err(classify)?;
    }
    Ok(true)
}

/// [`write_plan`] but the events, which the caller appends (with other sagas' events).
async fn write_rows(
    tx: &mut Transaction<'static, Sqlite>,
    id: SagaId,
    lease: Option<&Lease>,
    plan: &WritePlan,
    now: Timestamp,
) -> Result<bool> {
    let saga = id.to_string();
    let update = &plan.saga;
    let (set_status, status, reason) = match &update.status {
        Some((status, reason)) => (true, Some(status.as_str()), reason.as_deref()),
        None => (false, None, None),
    };
    let (cancel, request) = match &update.cancel {
        CancelRequest::Keep => ("keep", None),
        CancelRequest::Clear => ("clear", None),
        CancelRequest::Set(request) => ("set", Some(request.as_str())),
    };
    let fenced = sqlx::query(
        "UPDATE saga_instances
            SET updated_at = ?1,
                status = CASE WHEN ?2 THEN ?3 ELSE status END,
                status_reason = CASE WHEN ?2 THEN ?4 ELSE status_reason END,
                cancel_requested = CASE ?5 WHEN 'clear' THEN NULL WHEN 'set' THEN ?6
                                   ELSE cancel_requested END,
                lease_owner = CASE WHEN ?7 THEN NULL ELSE lease_owner END,
                lease_expires_at = CASE WHEN ?7 THEN NULL ELSE lease_expires_at END,
                fencing_token = fencing_token + ?8,
                next_run_at = CASE WHEN NOT ?9 THEN next_run_at
                                   WHEN ?15 IS NOT NULL AND signals_received > ?15 THEN ?1
                                   ELSE ?10 END,
                waiting_for = CASE WHEN ?16 THEN ?17 ELSE waiting_for END
          WHERE id = ?11
            AND (?12 IS NULL OR (lease_owner = ?12 AND fencing_token = ?13))
            AND (NOT ?14 OR cancel_requested IS NULL)
            AND (?18 IS NULL OR signals_received <= ?18)",
    )
    .bind(millis(now))
    .bind(set_status)
    .bind(status)
    .bind(reason)
    .bind(cancel)
    .bind(request)
    .bind(update.lease != LeaseChange::Keep)
    .bind(i64::from(update.lease == LeaseChange::Revoke))
    .bind(update.next_run_at.is_some())
    .bind(update.next_run_at.flatten().map(millis))
    .bind(&saga)
    .bind(lease.map(|lease| lease.owner.as_str().to_owned()))
    .bind(lease.map_or(0, |lease| lease.token.0))
    .bind(plan.begins_forward)
    .bind(
        update
            .wake_if_signalled
            .map(|seen| i64::try_from(seen).unwrap_or(i64::MAX)),
    )
    .bind(update.waiting.is_some())
    .bind(update.waiting.clone().flatten())
    .bind(
        plan.signals_at_most
            .map(|at_most| i64::try_from(at_most).unwrap_or(i64::MAX)),
    )
    .execute(&mut **tx)
    .await
    .map_err(classify)?;
    if fenced.rows_affected() == 0 {
        return Ok(false);
    }
    for step in &plan.steps {
        if !write_step(tx, &saga, step, now).await? {
            return Ok(false);
        }
    }
    for item in &plan.interventions {
        insert_intervention(tx, id, item, now).await?;
    }
    Ok(true)
}

/// Opens intervention `item` on saga `saga` (once: its id is its key).
async fn insert_intervention(
    conn: &mut SqliteConnection,
    saga: SagaId,
    item: &saga_core::NewIntervention,
    now: Timestamp,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO saga_interventions (id, saga_id, kind, step_index, step_name, phase,
             idempotency_key, input, output, error, status, opened_at, parked_from)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'open', ?, ?)
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(item.id.to_string())
    .bind(saga.to_string())
    .bind(item.kind.as_str())
    .bind(item.step.as_ref().map(|(index, _)| i64::from(index.0)))
    .bind(item.step.as_ref().map(|(_, name)| name.as_str().to_owned()))
    .bind(item.phase.map(|phase| phase.as_str()))
    .bind(
        item.idempotency_key
            .as_ref()
            .map(|key| key.as_str().to_owned()),
    )
    .bind(item.input.as_ref().map(json_text))
    .bind(item.output.as_ref().map(json_text))
    .bind(&item.error)
    .bind(millis(now))
    .bind(item.parked_from.map(|status| status.as_str()))
    .execute(&mut *conn)
    .await
    .map_err(classify)?;
    Ok(())
}

/// Writes one step phase: inserted when absent and the write may insert it, else updated if
/// it meets the write's precondition. `Ok(false)`: it does not.
async fn write_step(
    tx: &mut Transaction<'static, Sqlite>,
    saga: &str,
    step: &StepWrite,
    now: Timestamp,
) -> Result<bool> {
    let output = step
        .output
        .as_ref()
        .map(|output| output.as_ref().map(json_text));
    if let Some(key) = &step.key {
        let inserted = sqlx::query(
            "INSERT INTO saga_steps (saga_id, step_index, phase, name, status, attempt,
                 idempotency_key, output, last_error, next_attempt_at, started_at, finished_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT (saga_id, step_index, phase) DO NOTHING",
        )
        .bind(saga)
        .bind(i64::from(step.index.0))
        .bind(step.phase.as_str())
        .bind(step.name.as_str())
        .bind(step.status.as_str())
        .bind(i64::from(step.attempt.map_or(0, |attempt| attempt.0)))
        .bind(key.as_str())
        .bind(output.clone().flatten())
        .bind(&step.error)
        .bind(step.next_attempt_at.map(millis))
        .bind(step.began.then_some(millis(now)))
        .bind(step.finished.then_some(millis(now)))
        .execute(&mut **tx)
        .await
        .map_err(classify)?;
        if inserted.rows_affected() == 1 {
            return Ok(true);
        }
    }
    let updated = sqlx::query(
        "UPDATE saga_steps
            SET status = ?1, attempt = COALESCE(?2, attempt),
                output = CASE WHEN ?3 THEN ?4 ELSE output END,
                last_error = COALESCE(?5, last_error), next_attempt_at = ?6,
                started_at = CASE WHEN ?7 THEN ?8 ELSE started_at END,
                finished_at = CASE WHEN ?9 THEN ?8 END
          WHERE saga_id = ?10 AND step_index = ?11 AND phase = ?12
            AND (NOT ?13 OR status <> 'completed')",
    )
    .bind(step.status.as_str())
    .bind(step.attempt.map(|attempt| i64::from(attempt.0)))
    .bind(output.is_some())
    .bind(output.flatten())
    .bind(&step.error)
    .bind(step.next_attempt_at.map(millis))
    .bind(step.began)
    .bind(millis(now))
    .bind(step.finished)
    .bind(saga)
    .bind(i64::from(step.index.0))
    .bind(step.phase.as_str())
    .bind(step.requires == Precondition::NotCompleted)
    .execute(&mut **tx)
    .await
    .map_err(classify)?;
    Ok(updated.rows_affected() == 1)
}
