//! PgStore: the production backend. Many workers in many processes share one database: claims
//! use `FOR UPDATE SKIP LOCKED`, every write is fenced by the lease's token, and LISTEN/NOTIFY
//! wakes idle workers when a saga is started or released.

mod notify;
mod presence;
mod rows;
mod statement;
mod writers;

use std::str::FromStr;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_trait::async_trait;
use saga_core::policy::{
    in_precedence, lock_name, use_expires_at, LimitState, Pause, PauseRequest, Permit,
    PermitRequest, PolicyKind, PolicyUse, UseState,
};
use saga_core::store::write::{self, decide_cancel, decide_settle, CreationPlan, WritePlan};
use saga_core::store::{OverviewParts, OverviewQuery};
use saga_core::wait::{Delivered, SignalDelivery};
use saga_core::{
    CancelOutcome, Change, Created, Error, Event, FencingToken, Intervention, InterventionId,
    Lease, NewSaga, ParentLink, Result, SagaFilter, SagaId, SagaRecord, SagaSnapshot, SagaStatus,
    Settlement, StepContext, StepError, StepTransaction, Store, Timestamp, WorkerId,
};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Connection, Executor, PgConnection, Postgres, Row, Transaction};
use uuid::Uuid;

use crate::error::{classify, migration};
use notify::Wakeup;

/// Pooled connections idle longer than this are checked before use.
const IDLE_PING: Duration = Duration::from_secs(1);

/// Settings of a [`PgStore`].
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// Schema holding the saga tables (default `saga`); created if missing. Must match
    /// `[a-z_][a-z0-9_]*` (at most 63 characters).
    pub schema: String,
    /// Most connections in the pool (default 10): operator reads and actions, and the
    /// transactions of transactional steps. The store also opens up to `2 × (writers + 1) + 2`
    /// connections of its own for step transitions, claims, heartbeats and loads
    /// (`max_connections + 2` of them when `writers` is 0), so that steps holding every pooled
    /// connection never starve a lease, and one to listen for wake-ups.
    pub max_connections: u32,
    /// How long to wait for a pooled connection before the store counts as unavailable.
    pub acquire_timeout: Duration,
    /// Whether to LISTEN for wake-ups from other processes (default true); without it, idle
    /// workers only poll.
    pub listen: bool,
    /// How many statements write sagas' step transitions at once, at most (default 2).
    /// Transitions that arrive while a statement is in flight wait and go out together in the
    /// next one, one commit for all; a writer starts a statement beside one in flight only once
    /// 16 transitions wait or after 3 ms, so under moderate load one statement at a time takes
    /// everything (fewer, fuller statements), under heavy load the others add throughput, and a
    /// statement held up holds back the others for no longer. 0 writes each transition in a
    /// statement of its own, from its caller's task.
    pub writers: usize,
    /// How long a step write waits for a saga row that someone else holds locked (an operator's
    /// transaction, a long transactional step) before giving up (default 1 s). A grouped
    /// statement that hits it is written again saga by saga, so one locked row holds back only
    /// its own saga's write, which fails as `StoreUnavailable` and is retried by its worker.
    pub write_lock_timeout: Duration,
    /// `true` (default): create the schema if missing and apply the migrations on connect.
    /// `false`: use the database as it is, creating and migrating nothing (for tools that must
    /// not change a production schema; read it with [`postgres_schema`](crate::postgres_schema)).
    pub migrate: bool,
}

impl Default for PgOptions {
    fn default() -> Self {
        Self {
            schema: "saga".to_owned(),
            max_connections: 10,
            acquire_timeout: Duration::from_secs(10),
            listen: true,
            writers: 2,
            write_lock_timeout: Duration::from_secs(1),
            migrate: true,
        }
    }
}

/// The transaction a transactional step runs in, on Postgres.
struct PgStepTransaction(Transaction<'static, Postgres>);

impl StepTransaction for PgStepTransaction {
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }

    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any + Send> {
        self
    }
}

/// The Postgres connection of a transactional step's transaction: writes made through it commit
/// together with the step's `completed` record, or not at all.
///
/// ```no_run
/// # use std::sync::Arc;
/// # use saga_core::{StepContext, StepError, ResultExt};
/// # struct Shop;
/// async fn record_order(_: Arc<Shop>, ctx: StepContext<u64>) -> Result<(), StepError> {
///     let mut tx = saga_store::pg_transaction(&ctx).await?;
///     sqlx::query("INSERT INTO orders (id) VALUES ($1)")
///         .bind(*ctx.input() as i64)
///         .execute(&mut *tx)
///         .await
///         .transient()?;
///     Ok(())
/// }
/// ```
///
/// # Errors
/// A permanent [`StepError`] when the step was not declared `.transactional()` or the store is
/// not a [`PgStore`].
pub async fn pg_transaction<I>(
    ctx: &StepContext<I>,
) -> std::result::Result<tokio::sync::MappedMutexGuard<'_, PgConnection>, StepError> {
    let slot = ctx.transaction().ok_or_else(|| {
        StepError::permanent(format!(
            "step `{}` has no transaction; declare it `.transactional()` and run it on PgStore",
            ctx.step()
        ))
    })?;
    let guard = slot.lock().await;
    tokio::sync::MutexGuard::try_map(guard, |tx| {
        tx.as_any_mut()
            .downcast_mut::<PgStepTransaction>()
            .map(|tx| &mut *tx.0)
    })
    .map_err(|_| {
        StepError::permanent("the step's transaction is not a Postgres transaction; use PgStore")
    })
}

/// A [`Store`] on PostgreSQL (15 or newer).
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    /// Connections for the workers' own traffic — step transitions, claims, heartbeats, loads,
    /// the clock — which steps' transactions (on `pool`) can never take (see `connect_with`).
    write_pool: PgPool,
    /// Connections for policy permits, committing without waiting for the log to be flushed:
    /// a permit stands only once the attempt's `in_progress` is written by a synchronous
    /// commit, which flushes the log up to it, so the permit too (a crash before loses both).
    permit_pool: PgPool,
    channel: String,
    wakeup: Arc<Wakeup>,
    writers: Arc<writers::Writers>,
    /// The presence locks of the workers claiming through this store.
    presence: Arc<presence::Presence>,
}

/// Checks a schema name against `[a-z_][a-z0-9_]{0,62}`: it is spliced into SQL (names cannot
/// be bind parameters), so anything else is refused.
///
/// # Errors
/// [`Error::Configuration`] naming the bad schema and the rule.
pub fn validate_schema(schema: &str) -> Result<&str> {
    let mut chars = schema.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if first_ok && rest_ok && schema.len() <= 63 {
        Ok(schema)
    } else {
        Err(Error::Configuration(format!(
            "schema name {schema:?} is not allowed; use lowercase letters, digits and underscores, starting with a letter or underscore, at most 63 characters"
        )))
    }
}

impl PgStore {
    /// Connects to the database at `url` (`postgres://user:pass@host/db`), creates the schema
    /// `saga` if missing, applies the migrations (safe when several processes start at once) and
    /// starts listening for wake-ups.
    ///
    /// # Errors
    /// [`Error::Configuration`] for a malformed URL, a bad schema name, a login the server
    /// refuses (wrong user or password), a database that does not exist or a failed migration;
    /// [`Error::StoreUnavailable`] when the server cannot be reached.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, PgOptions::default()).await
    }

    /// As [`PgStore::connect`], with settings.
    ///
    /// # Errors
    /// As [`PgStore::connect`].
    pub async fn connect_with(url: &str, options: PgOptions) -> Result<Self> {
        let schema = validate_schema(&options.schema)?.to_owned();
        let connect = PgConnectOptions::from_str(url).map_err(|err| {
            Error::Configuration(format!(
                "`{}` is not a Postgres URL ({err}); use postgres://user:password@host:5432/database",
                redact(url)
            ))
        })?;
        create_schema(&connect, &schema, options.migrate).await?;
        let pool = open_pool(
            &connect,
            &schema,
            options.max_connections.max(2),
            &options,
            None,
            false,
        )
        .await?;
        if options.migrate {
            crate::migrate::postgres_migrator()
                .run(&pool)
                .await
                .map_err(migration)?;
        }
        let channel = format!("{schema}_wake");
        let wakeup = Arc::new(if options.listen {
            Wakeup::listen(&connect, &channel).await?
        } else {
            Wakeup::none()
        });
        // Step transitions go out on connections of their own, planned for what they are: a
        // few rows found by key. A plan the server caches per connection must not depend on the
        // table sizes or array lengths it first saw: generic plans (no re-planning of the large
        // statement on every write), and index lookups even while the tables are still small.
        // Set after connecting rather than as startup parameters, which connection poolers
        // such as PgBouncer refuse.
        // Room for the writers and a direct write, twice: sqlx gives a connection back to its
        // pool only after a round trip of its own, so a writer done with one may need another.
        // Two more for claims, heartbeats and loads: on these connections, transactional steps
        // (whose transactions come from the users' pool) can never starve a lease.
        let write_connections = match options.writers {
            0 => options.max_connections.max(2),
            writers => {
                u32::try_from(writers.saturating_add(1).saturating_mul(2)).unwrap_or(u32::MAX)
            }
        }
        .saturating_add(LEASE_CONNECTIONS);
        let write_pool = open_pool(
            &connect,
            &schema,
            write_connections,
            &options,
            Some(write_settings(options.write_lock_timeout)),
            false,
        )
        .await?;
        let writers = Arc::new(writers::Writers::start(
            write_pool.clone(),
            channel.clone(),
            options.writers,
        ));
        let permit_pool = open_pool(
            &connect,
            &schema,
            options.max_connections.clamp(4, PERMIT_CONNECTIONS),
            &options,
            Some("SET synchronous_commit = off".to_owned()),
            // Opened when a first permit is asked for: a store whose sagas declare no policy
            // never opens one.
            true,
        )
        .await?;
        Ok(Self {
            pool,
            write_pool,
            permit_pool,
            channel,
            wakeup,
            writers,
            presence: Arc::new(presence::Presence::new(connect, schema)),
        })
    }

    /// The connection pool (its connections have the saga schema first on the search path).
    /// Step transitions go out on a few connections of the store's own, not from this pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Closes the store's pools (the one from [`PgStore::pool`] and the connections step
    /// transitions go out on), waiting until connections in use are given back, and stops
    /// listening for wake-ups (that connection closes in the background). The store and its
    /// clones cannot be used afterwards.
    pub async fn close(&self) {
        self.presence.close().await;
        self.write_pool.close().await;
        self.permit_pool.close().await;
        self.pool.close().await;
        self.wakeup.stop();
    }
}

/// Planner settings of the connections step transitions go out on.
/// Connections of the workers' pool kept for claims, heartbeats and loads.
const LEASE_CONNECTIONS: u32 = 2;

const WRITE_SETTINGS: &str = "SET plan_cache_mode = force_generic_plan; SET enable_seqscan = off";

/// The settings of the step-write connections: [`WRITE_SETTINGS`] and the lock timeout (at
/// least 1 ms: 0 would mean none).
fn write_settings(lock_timeout: Duration) -> String {
    let millis = lock_timeout.as_millis().clamp(1, u128::from(u32::MAX));
    format!("{WRITE_SETTINGS}; SET lock_timeout = {millis}")
}

/// How long an operator's transaction (settle, cancel) may sit idle holding saga rows locked
/// before the server ends it: a stalled operator process never holds workers back for long.
const OPERATOR_IDLE_LIMIT: &str = "SET LOCAL idle_in_transaction_session_timeout = 10000";

/// A pool on `connect` whose connections have `schema` first on the search path, and then
/// `settings` applied (a server that refuses them only costs speed: logged, not fatal).
async fn open_pool(
    connect: &PgConnectOptions,
    schema: &str,
    size: u32,
    options: &PgOptions,
    settings: Option<String>,
    lazy: bool,
) -> Result<PgPool> {
    let search_path = format!("SET search_path TO \"{schema}\", public");
    let pool = PgPoolOptions::new()
        .max_connections(size)
        .acquire_timeout(options.acquire_timeout)
        // sqlx pings every connection it hands out, a round trip per store call; ping only
        // connections that sat idle (a server restart shows there), and let an error on a
        // busy one surface as `StoreUnavailable`, which callers retry.
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for > IDLE_PING {
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
        .after_connect(move |conn, _| {
            let search_path = search_path.clone();
            let settings = settings.clone();
            Box::pin(async move {
                conn.execute(search_path.as_str()).await?;
                if let Some(settings) = settings {
                    if let Err(err) = conn.execute(settings.as_str()).await {
                        tracing::warn!(error = %err, settings, "the server refused the settings of step writes; writes work, planned per execution and without a lock timeout");
                    }
                }
                Ok(())
            })
        })
        ;
    if lazy {
        return Ok(pool.connect_lazy_with(connect.clone()));
    }
    pool.connect_with(connect.clone()).await.map_err(classify)
}

/// The URL without its password, for error messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme + 3],
                    &credentials[..colon],
                    &url[at..]
                ),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// A connection error: a login the server refuses or a database that does not exist is the
/// URL's fault, not an outage (retrying cannot help); anything else as [`classify`] says.
fn connect_error(err: sqlx::Error, connect: &PgConnectOptions) -> Error {
    let code = match &err {
        sqlx::Error::Database(db) => db.code().map(|code| code.into_owned()),
        _ => None,
    };
    match code.as_deref() {
        // invalid_password, invalid_authorization_specification (e.g. no such role)
        Some("28P01") | Some("28000") => Error::Configuration(format!(
            "the Postgres server refused the login as `{}`: {err}; check the user and password in the store URL",
            connect.get_username()
        )),
        // invalid_catalog_name
        Some("3D000") => Error::Configuration(format!(
            "database `{}` does not exist on the Postgres server; check the database name in the store URL",
            connect.get_database().unwrap_or_else(|| connect.get_username())
        )),
        _ => classify(err),
    }
}

/// Connects once (so that a bad URL fails at once, with what to fix) and, when `create`, creates
/// the schema if missing.
async fn create_schema(connect: &PgConnectOptions, schema: &str, create: bool) -> Result<()> {
    let mut conn = PgConnection::connect_with(connect)
        .await
        .map_err(|err| connect_error(err, connect))?;
    if !create {
        let _ = conn.close().await;
        return Ok(());
    }
    let created = conn
        .execute(format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\"").as_str())
        .await;
    let _ = conn.close().await;
    match created {
        Ok(_) => Ok(()),
        // Two processes creating it at once: the loser sees a duplicate; the schema exists.
        Err(sqlx::Error::Database(db))
            if matches!(db.code().as_deref(), Some("23505") | Some("42P06")) =>
        {
            Ok(())
        }
        Err(err) => Err(classify(err)),
    }
}

/// Opens a transaction in a task of its own, so that it is cancel-safe.
///
/// sqlx 0.8's `Pool::begin` is not, on Postgres (sqlx#4393): a caller dropped while its BEGIN is
/// in flight — a drive cancelled because its lease was lost, a caller's timeout — leaves the
/// pooled connection inside a transaction that nothing ends, and the next borrower's statements
/// (a claim, a step's own writes) silently run in it and are lost when it rolls back. Run to
/// completion in a task, the BEGIN is always answered; a transaction nobody takes any more is
/// dropped there and rolled back as usual.
async fn begin(pool: &PgPool) -> Result<Transaction<'static, Postgres>> {
    let pool = pool.clone();
    tokio::spawn(async move { pool.begin().await })
        .await
        .map_err(|err| Error::Store(Box::new(err)))?
        .map_err(classify)
}

/// A transaction for an operator's action: rows it locks are held for as long as it runs, so it
/// may not sit idle for long.
async fn begin_operator(pool: &PgPool) -> Result<Transaction<'static, Postgres>> {
    let mut tx = begin(pool).await?;
    tx.execute(OPERATOR_IDLE_LIMIT).await.map_err(classify)?;
    Ok(tx)
}

/// Connections for policy permits, at most.
const PERMIT_CONNECTIONS: u32 = 32;

/// How many times a use races for a slot before the saga is held back briefly instead.
const SLOT_RACES: u32 = 8;

impl PgStore {
    /// A rate limit's grant, in one statement: granted when neither the back-off nor the
    /// spacing since the last grant forbids it (the rule of [`saga_core::policy::take_limit`]),
    /// moving the next free time on; else the wait, read back and decided by the core.
    async fn take_rate_limit(&self, wanted: &PolicyUse, now: Timestamp) -> Result<Option<Permit>> {
        let spacing = saga_core::policy::spacing(&wanted.policy);
        for _ in 0..SLOT_RACES {
            let granted = sqlx::query(
                "INSERT INTO saga_rate_limits AS l (name, next_at)
                 VALUES ($1, GREATEST($2, now()) + make_interval(secs => $3))
                 ON CONFLICT (name) DO UPDATE
                    SET next_at = GREATEST(l.next_at, $2, now()) + make_interval(secs => $3)
                  WHERE COALESCE(l.next_at, $2) <= GREATEST($2, now()) + make_interval(secs => $4)
                    AND COALESCE(l.backoff_until, $2) <= GREATEST($2, now())
                 RETURNING next_at",
            )
            .bind(&wanted.policy.name)
            .bind(now)
            .bind(spacing.as_secs_f64())
            .bind(saga_core::policy::tolerance(&wanted.policy).as_secs_f64())
            .fetch_optional(&self.permit_pool)
            .await
            .map_err(classify)?;
            if granted.is_some() {
                return Ok(None);
            }
            let row =
                sqlx::query("SELECT next_at, backoff_until FROM saga_rate_limits WHERE name = $1")
                    .bind(&wanted.policy.name)
                    .fetch_optional(&self.permit_pool)
                    .await
                    .map_err(classify)?;
            let state = match row {
                Some(row) => LimitState {
                    next_at: row.try_get("next_at").map_err(classify)?,
                    backoff_until: row.try_get("backoff_until").map_err(classify)?,
                },
                None => LimitState::default(),
            };
            // Freed between the two statements: take it again.
            if let Err(permit) = saga_core::policy::take_limit(&wanted.policy, &state, now) {
                return Ok(Some(permit));
            }
        }
        Ok(Some(raced(wanted, now)))
    }

    /// A cap's or a retry budget's use, in one statement: this attempt's own slot, or a free
    /// one taken; else the refusal the core decides on the count read.
    async fn take_slot(
        &self,
        request: &PermitRequest,
        wanted: &PolicyUse,
        now: Timestamp,
    ) -> Result<Option<Permit>> {
        let expires_at = use_expires_at(&wanted.policy, now).unwrap_or(now);
        let step = i32::try_from(wanted.counted_step(request.index).0).unwrap_or(i32::MAX);
        let attempt = i32::try_from(wanted.counted_attempt(request.attempt)).unwrap_or(i32::MAX);
        let max = i32::try_from(wanted.policy.max).unwrap_or(i32::MAX);
        for _ in 0..SLOT_RACES {
            let row = sqlx::query(
                "WITH mine AS (
                     SELECT slot FROM saga_policy_slots
                      WHERE kind = $1 AND name = $2 AND use_key = $3 AND saga_id = $4
                        AND step_index = $5 AND attempt = $6 AND expires_at > $7),
                 held AS (
                     SELECT slot, expires_at FROM saga_policy_slots
                      WHERE kind = $1 AND name = $2 AND use_key = $3 AND expires_at > $7),
                 free AS (
                     SELECT s FROM generate_series(0, $8 - 1) AS s
                      WHERE NOT EXISTS (SELECT 1 FROM mine)
                        AND s NOT IN (SELECT slot FROM held)
                      ORDER BY s LIMIT 1),
                 took AS (
                     INSERT INTO saga_policy_slots AS p
                            (kind, name, use_key, slot, saga_id, step_index, attempt, expires_at)
                     SELECT $1, $2, $3, s, $4, $5, $6, $9 FROM free
                     ON CONFLICT (kind, name, use_key, slot) DO UPDATE
                        SET saga_id = excluded.saga_id, step_index = excluded.step_index,
                            attempt = excluded.attempt, expires_at = excluded.expires_at
                      WHERE p.expires_at <= $7
                     RETURNING slot)
                 SELECT (SELECT COUNT(*) FROM mine) AS mine,
                        (SELECT COUNT(*) FROM took) AS took,
                        (SELECT COUNT(*) FROM free) AS free,
                        (SELECT COUNT(*) FROM held) AS counted,
                        (SELECT MIN(expires_at) FROM held) AS frees_at",
            )
            .bind(wanted.policy.kind.as_str())
            .bind(&wanted.policy.name)
            .bind(&wanted.key)
            .bind(request.saga.as_uuid())
            .bind(step)
            .bind(attempt)
            .bind(now)
            .bind(max)
            .bind(expires_at)
            .fetch_one(&self.permit_pool)
            .await
            .map_err(classify)?;
            let count = |column: &str| -> Result<i64> { row.try_get(column).map_err(classify) };
            if count("mine")? > 0 || count("took")? > 0 {
                return Ok(None);
            }
            if count("free")? > 0 {
                // Another use took the free slot first: look again.
                continue;
            }
            let read = UseState {
                counted: u32::try_from(count("counted")?).unwrap_or(u32::MAX),
                frees_at: row.try_get("frees_at").map_err(classify)?,
                ..UseState::default()
            };
            return Ok(saga_core::policy::judge(request, wanted, &read, now));
        }
        Ok(Some(raced(wanted, now)))
    }

    /// A concurrency slot: counted among the sagas of the key that have not ended, under a
    /// lock per key, and taken when one is free.
    async fn take_concurrency(
        &self,
        request: &PermitRequest,
        wanted: &PolicyUse,
        now: Timestamp,
    ) -> Result<Option<Permit>> {
        let mut tx = begin(&self.permit_pool).await?;
        tx.execute("SET LOCAL idle_in_transaction_session_timeout = 10000")
            .await
            .map_err(classify)?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind(lock_name(wanted))
            .execute(&mut *tx)
            .await
            .map_err(classify)?;
        let row = sqlx::query(
            "WITH gone AS (
                 DELETE FROM saga_policy_uses u
                  WHERE kind = $1 AND name = $2 AND use_key = $3
                    AND NOT EXISTS (SELECT 1 FROM saga_instances i
                                     WHERE i.id = u.saga_id
                                       AND i.status NOT IN ('completed', 'compensated', 'cancelled'))
              RETURNING saga_id),
             live AS (
                 SELECT u.saga_id FROM saga_policy_uses u
                  WHERE kind = $1 AND name = $2 AND use_key = $3
                    AND u.saga_id NOT IN (SELECT saga_id FROM gone))
             SELECT COUNT(*) FILTER (WHERE saga_id = $4) AS mine,
                    COUNT(*) FILTER (WHERE saga_id <> $4) AS counted,
                    MIN(saga_id::text) FILTER (WHERE saga_id <> $4) AS holder
               FROM live",
        )
        .bind(wanted.policy.kind.as_str())
        .bind(&wanted.policy.name)
        .bind(&wanted.key)
        .bind(request.saga.as_uuid())
        .fetch_one(&mut *tx)
        .await
        .map_err(classify)?;
        let count = |column: &str| -> Result<u32> {
            let value: i64 = row.try_get(column).map_err(classify)?;
            Ok(u32::try_from(value).unwrap_or(u32::MAX))
        };
        let holder: Option<String> = row.try_get("holder").map_err(classify)?;
        let read = UseState {
            mine: count("mine")? > 0,
            counted: count("counted")?,
            holder: holder.and_then(|holder| holder.parse().ok()),
            ..UseState::default()
        };
        if let Some(permit) = saga_core::policy::judge(request, wanted, &read, now) {
            return Ok(Some(permit));
        }
        if !read.mine {
            sqlx::query(
                "INSERT INTO saga_policy_uses
                     (kind, name, use_key, saga_id, step_index, attempt, used_at, expires_at)
                 VALUES ($1, $2, $3, $4, 0, 0, $5, NULL)
                 ON CONFLICT DO NOTHING",
            )
            .bind(wanted.policy.kind.as_str())
            .bind(&wanted.policy.name)
            .bind(&wanted.key)
            .bind(request.saga.as_uuid())
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(classify)?;
        }
        tx.commit().await.map_err(classify)?;
        Ok(None)
    }
}

/// Holds a saga back briefly after its use lost the race for a free slot several times over.
fn raced(wanted: &PolicyUse, now: Timestamp) -> Permit {
    Permit::Wait {
        until: saga_core::after(now, Duration::from_millis(50)),
        waiting_for: format!("policy:{}:{}", wanted.policy.kind, wanted.policy.name),
        reason: format!(
            "{}: many sagas raced for it at once; looking again shortly",
            wanted.policy.describe()
        ),
    }
}

#[async_trait]
impl Store for PgStore {
    async fn create(&self, saga: NewSaga) -> Result<Created> {
        let plan = CreationPlan::compile(&saga)?;
        if let Some((owner, _)) = &saga.lease {
            // A saga created leased to its starter: the starter is present before it holds it.
            self.presence.keep(owner, None).await.map_err(classify)?;
        }
        let (id, key, input_hash) = (
            saga.id,
            saga.idempotency_key.clone(),
            saga.input_hash.clone(),
        );
        let window = saga.dedup_window.filter(|_| key.is_some());
        if let (Some(key), Some(window)) = (&key, window) {
            // A saga holding the key since before the window gives it up.
            sqlx::query(
                "UPDATE saga_instances SET idempotency_key = idempotency_key || '#' || id::text
                  WHERE idempotency_key = $1 AND created_at <= $2",
            )
            .bind(key.as_str())
            .bind(saga_core::before(saga_core::now(), window))
            .execute(&self.write_pool)
            .await
            .map_err(classify)?;
        }
        // With the step writes waiting at the same time, in one statement and one commit.
        if self.writers.create(saga, plan).await? {
            if let Some(window) = window {
                // Kept from pruning until the window ends (should this write be lost, the
                // saga is only kept as any other, and a repeat start still finds it while it
                // is).
                sqlx::query(
                    "INSERT INTO saga_start_windows (saga_id, until) VALUES ($1, $2)
                     ON CONFLICT (saga_id) DO NOTHING",
                )
                .bind(id.as_uuid())
                .bind(saga_core::after(saga_core::now(), window))
                .execute(&self.write_pool)
                .await
                .map_err(classify)?;
            }
            return Ok(Created::New(id));
        }
        let Some(key) = &key else {
            return Err(statement::id_exists(id));
        };
        let existing =
            sqlx::query("SELECT id, input_hash FROM saga_instances WHERE idempotency_key = $1")
                .bind(key.as_str())
                .fetch_one(&self.pool)
                .await
                .map_err(classify)?;
        let id = SagaId::from_uuid(existing.try_get("id").map_err(classify)?);
        let hash: String = existing.try_get("input_hash").map_err(classify)?;
        if hash == input_hash {
            Ok(Created::Existing(id))
        } else {
            Err(Error::Conflict {
                key: key.clone(),
                existing: id,
            })
        }
    }

    async fn claim(
        &self,
        owner: &WorkerId,
        now: Timestamp,
        lease_for: Duration,
        limit: u32,
    ) -> Result<Vec<Lease>> {
        let expires_at = saga_core::after(now, lease_for);
        let scan = self
            .presence
            .keep(owner, Some(lease_for))
            .await
            .map_err(classify)?;
        let mut rows = claim_query(owner, expires_at, now, limit)
            .fetch_all(&self.write_pool)
            .await
            .map_err(classify)?;
        if scan {
            let room = room_left(limit, rows.len());
            if room > 0 {
                rows.extend(
                    self.orphans(owner, expires_at, now, room)
                        .fetch_all(&self.write_pool)
                        .await
                        .map_err(classify)?,
                );
            }
        }
        rows.iter()
            .map(|row| claimed_lease(row, owner, expires_at))
            .collect()
    }

    async fn reclaim(
        &self,
        owner: &WorkerId,
        granted_before: Timestamp,
        now: Timestamp,
        lease_for: Duration,
        limit: u32,
    ) -> Result<Vec<Lease>> {
        let expires_at = saga_core::after(now, lease_for);
        self.presence.keep(owner, None).await.map_err(classify)?;
        let rows = claim_where(
            &CLAIM_OWN,
            owner,
            Some(granted_before),
            expires_at,
            now,
            limit,
        )
        .fetch_all(&self.write_pool)
        .await
        .map_err(classify)?;
        rows.iter()
            .map(|row| claimed_lease(row, owner, expires_at))
            .collect()
    }

    async fn claim_loaded(
        &self,
        owner: &WorkerId,
        now: Timestamp,
        lease_for: Duration,
        limit: u32,
    ) -> Result<Vec<(Lease, Option<Result<SagaSnapshot>>)>> {
        let expires_at = saga_core::after(now, lease_for);
        let scan = self
            .presence
            .keep(owner, Some(lease_for))
            .await
            .map_err(classify)?;
        let mut tx = begin(&self.write_pool).await?;
        let mut sagas = claim_query(owner, expires_at, now, limit)
            .fetch_all(&mut *tx)
            .await
            .map_err(classify)?;
        if scan {
            let room = room_left(limit, sagas.len());
            if room > 0 {
                sagas.extend(
                    self.orphans(owner, expires_at, now, room)
                        .fetch_all(&mut *tx)
                        .await
                        .map_err(classify)?,
                );
            }
        }
        let ids: Vec<Uuid> = sagas
            .iter()
            .map(|row| row.try_get::<Uuid, _>("id").map_err(classify))
            .collect::<Result<_>>()?;
        let step_rows = if ids.is_empty() {
            Vec::new()
        } else {
            sqlx::query(
                "SELECT * FROM saga_steps WHERE saga_id = ANY($1)
                  ORDER BY saga_id, step_index, phase",
            )
            .bind(&ids)
            .fetch_all(&mut *tx)
            .await
            .map_err(classify)?
        };
        // Signals only for the sagas that received any (nearly none): no round trip otherwise.
        let signalled: Vec<Uuid> = sagas
            .iter()
            .filter(|row| {
                row.try_get::<i64, _>("signals_received")
                    .is_ok_and(|n| n > 0)
            })
            .filter_map(|row| row.try_get::<Uuid, _>("id").ok())
            .collect();
        let signal_rows = if signalled.is_empty() {
            Vec::new()
        } else {
            sqlx::query("SELECT * FROM saga_signals WHERE saga_id = ANY($1) ORDER BY seq")
                .bind(&signalled)
                .fetch_all(&mut *tx)
                .await
                .map_err(classify)?
        };
        tx.commit().await.map_err(classify)?;
        let of = |row: &sqlx::postgres::PgRow, id: SagaId| {
            row.try_get::<Uuid, _>("saga_id")
                .is_ok_and(|saga| saga == id.as_uuid())
        };
        let mut claimed = Vec::with_capacity(sagas.len());
        for row in &sagas {
            let lease = claimed_lease(row, owner, expires_at)?;
            let id = lease.saga;
            let snapshot = rows::saga_record(row).and_then(|record| {
                let steps = step_rows
                    .iter()
                    .filter(|step| of(step, id))
                    .map(|step| rows::step_record(step, id))
                    .collect::<Result<Vec<_>>>()?;
                let signals = signal_rows
                    .iter()
                    .filter(|signal| of(signal, id))
                    .map(|signal| rows::signal_record(signal, id))
                    .collect::<Result<Vec<_>>>()?;
                Ok(SagaSnapshot {
                    record,
                    steps,
                    signals,
                })
            });
            claimed.push((lease, Some(snapshot)));
        }
        Ok(claimed)
    }

    async fn heartbeat(&self, lease: &Lease, expires_at: Timestamp) -> Result<Lease> {
        let updated = sqlx::query(
            "UPDATE saga_instances SET lease_expires_at = $1
              WHERE id = $2 AND lease_owner = $3 AND fencing_token = $4",
        )
        .bind(expires_at)
        .bind(lease.saga.as_uuid())
        .bind(lease.owner.as_str())
        .bind(lease.token.0)
        .execute(&self.write_pool)
        .await
        .map_err(classify)?;
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
            return Box::pin(self.not_written(lease, changes, None)).await;
        };
        if !plan.children.is_empty() || plan.wake_parent.is_some() {
            // A write that starts children or wakes a parent (rare) is written alone, in one
            // transaction with them; boxed, so that the common write's future stays small.
            return Box::pin(self.apply_alone(lease, changes)).await;
        }
        // One statement, committed on its own (no BEGIN, no COMMIT round trip), together with
        // the writes of other sagas waiting at the same time.
        let write = statement::Write {
            saga: lease.saga,
            lease: Some(lease.clone()),
            plan,
        };
        // The rarer paths are boxed: a waiting write's future is held for every saga in
        // flight, so it is kept to what the common path needs.
        match self.writers.write(write).await {
            Ok(true) => Ok(()),
            Ok(false) => Box::pin(self.not_written(lease, changes, None)).await,
            Err(err) => Box::pin(self.not_written(lease, changes, Some(err))).await,
        }
    }

    async fn begin_step_transaction(
        &self,
        _lease: &Lease,
    ) -> Result<Option<Box<dyn StepTransaction>>> {
        let tx = begin(&self.pool).await?;
        Ok(Some(Box::new(PgStepTransaction(tx))))
    }

    async fn commit_step_transaction(
        &self,
        transaction: Box<dyn StepTransaction>,
        lease: &Lease,
        changes: &[Change],
    ) -> Result<()> {
        match transaction.into_any().downcast::<PgStepTransaction>() {
            Ok(tx) => self.apply_in(tx.0, lease, changes).await,
            Err(_) => Err(Error::Store(
                "a step transaction from another store was handed to PgStore".into(),
            )),
        }
    }

    async fn load(&self, id: SagaId) -> Result<Option<SagaSnapshot>> {
        let mut tx = begin(&self.write_pool).await?;
        tx.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .await
            .map_err(classify)?;
        let snapshot = load_with(&mut tx, id, false).await?;
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
        sqlx::query("SELECT * FROM saga_interventions WHERE id = $1")
            .bind(id.as_uuid())
            .fetch_optional(&self.pool)
            .await
            .map_err(classify)?
            .as_ref()
            .map(rows::intervention)
            .transpose()
    }

    async fn settle(&self, settlement: &Settlement) -> Result<SagaStatus> {
        let mut tx = begin_operator(&self.pool).await?;
        // Due times are set by the server's clock, not by the operator machine's.
        let now = db_now(&mut tx).await?;
        // Closing the item first is the gate: of concurrent settlements, one updates the row,
        // the others find it resolved once the winner commits.
        let claimed = sqlx::query(
            "UPDATE saga_interventions SET status = 'resolved', resolved_at = $1,
                    resolved_by = $2, resolution = $3, resolution_reason = $4
              WHERE id = $5 AND status = 'open'
          RETURNING *",
        )
        .bind(now)
        .bind(&settlement.by)
        .bind(settlement.action.as_str())
        .bind(&settlement.reason)
        .bind(settlement.intervention.as_uuid())
        .fetch_optional(&mut *tx)
        .await
        .map_err(classify)?;
        let Some(row) = claimed else {
            drop(tx);
            return match self.intervention(settlement.intervention).await? {
                Some(_) => Err(Error::InterventionSettled(settlement.intervention)),
                None => Err(Error::InterventionNotFound(settlement.intervention)),
            };
        };
        let item = rows::intervention(&row)?;
        let snapshot = load_with(&mut tx, item.saga_id, true)
            .await?
            .ok_or(Error::SagaNotFound(item.saga_id))?;
        let (status, plan) = decide_settle(&item, &snapshot, settlement, now)?;
        self.write_decided(&mut tx, &snapshot, plan, now).await?;
        tx.commit().await.map_err(classify)?;
        Ok(status)
    }

    async fn request_cancel(
        &self,
        id: SagaId,
        by: &str,
        reason: &str,
        _now: Timestamp,
    ) -> Result<CancelOutcome> {
        self.decide_and_write(id, |stored, now| decide_cancel(stored, by, reason, now))
            .await
    }

    async fn stop_child(
        &self,
        child: SagaId,
        parent: &ParentLink,
        reason: &str,
        _now: Timestamp,
    ) -> Result<()> {
        self.decide_and_write(child, |stored, now| {
            write::decide_stop_child(stored, parent, reason, now).map(|plan| ((), plan))
        })
        .await
    }

    async fn deliver_signal(&self, delivery: &SignalDelivery) -> Result<Delivered> {
        let id = delivery.saga;
        let mut tx = begin_operator(&self.pool).await?;
        let stored = load_with(&mut tx, id, true)
            .await?
            .ok_or(Error::SagaNotFound(id))?;
        let Some(write) = write::decide_signal(&stored, delivery)? else {
            return Ok(Delivered::Duplicate(id));
        };
        sqlx::query(
            "WITH signal AS (
                 INSERT INTO saga_signals (saga_id, name, signal_key, payload, received_at)
                 VALUES ($1, $2, $3, $4, date_trunc('milliseconds', now()))),
             saga AS (
                 UPDATE saga_instances
                    SET signals_received = signals_received + 1,
                        next_run_at = CASE WHEN $5 THEN date_trunc('milliseconds', now())
                                           ELSE next_run_at END
                  WHERE id = $1),
             event AS (
                 INSERT INTO saga_events (saga_id, at, kind, step, phase, attempt, detail)
                 VALUES ($1, date_trunc('milliseconds', now()), $6, NULL, NULL, NULL, $7))
             SELECT CASE WHEN $5 THEN pg_notify($8, '')::text END",
        )
        .bind(id.as_uuid())
        .bind(&delivery.name)
        .bind(delivery.key.as_str())
        .bind(&delivery.payload)
        .bind(write.wake)
        .bind(write.event.kind.as_str())
        .bind(write.event.detail.as_deref())
        .bind(&self.channel)
        .execute(&mut *tx)
        .await
        .map_err(classify)?;
        tx.commit().await.map_err(classify)?;
        Ok(Delivered::New(id))
    }

    async fn permit(&self, request: &PermitRequest, now: Timestamp) -> Result<Permit> {
        // Each use is taken atomically on its own, in the order the core decides them: a use
        // taken stays taken should a later one hold the attempt back, which is harmless, since
        // a use is keyed by saga, step and attempt and the same attempt finds it taken by itself.
        for position in in_precedence(request) {
            let wanted = &request.uses[position];
            let stopped = match wanted.policy.kind {
                PolicyKind::RateLimit => self.take_rate_limit(wanted, now).await?,
                PolicyKind::Concurrency => self.take_concurrency(request, wanted, now).await?,
                PolicyKind::Cap | PolicyKind::RetryBudget => {
                    self.take_slot(request, wanted, now).await?
                }
            };
            if let Some(permit) = stopped {
                return Ok(permit);
            }
        }
        Ok(Permit::Granted)
    }

    async fn throttle(&self, name: &str, until: Timestamp) -> Result<()> {
        sqlx::query(
            "INSERT INTO saga_rate_limits AS l (name, backoff_until) VALUES ($1, $2)
             ON CONFLICT (name) DO UPDATE
                SET backoff_until = GREATEST(l.backoff_until, excluded.backoff_until)",
        )
        .bind(name)
        .bind(until)
        .execute(&self.write_pool)
        .await
        .map_err(classify)?;
        Ok(())
    }

    async fn pause(&self, request: &PauseRequest, now: Timestamp) -> Result<(Pause, bool)> {
        let mut tx = begin_operator(&self.pool).await?;
        let step = request.scope.step.as_ref().map_or("", |step| step.as_str());
        let inserted = sqlx::query(
            "INSERT INTO saga_pauses (saga_type, step, paused_by, reason, paused_at)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (saga_type, step) WHERE resumed_at IS NULL DO NOTHING",
        )
        .bind(request.scope.saga_type.as_str())
        .bind(step)
        .bind(&request.by)
        .bind(&request.reason)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(classify)?
        .rows_affected()
            > 0;
        let row = sqlx::query(
            "SELECT * FROM saga_pauses WHERE saga_type = $1 AND step = $2 AND resumed_at IS NULL",
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
        let mut tx = begin_operator(&self.pool).await?;
        let step = request.scope.step.as_ref().map_or("", |step| step.as_str());
        let Some(row) = sqlx::query(
            "UPDATE saga_pauses SET resumed_at = $3, resumed_by = $4, resume_reason = $5
              WHERE saga_type = $1 AND step = $2 AND resumed_at IS NULL
          RETURNING *",
        )
        .bind(request.scope.saga_type.as_str())
        .bind(step)
        .bind(now)
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
            "UPDATE saga_instances SET next_run_at = $1
              WHERE waiting_for = $2 AND status IN ('running', 'compensating')
                AND lease_owner IS NULL",
        )
        .bind(now)
        .bind(request.scope.waiting_for())
        .execute(&mut *tx)
        .await
        .map_err(classify)?
        .rows_affected();
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(&self.channel)
            .execute(&mut *tx)
            .await
            .map_err(classify)?;
        tx.commit().await.map_err(classify)?;
        Ok(Some((pause, woken)))
    }

    async fn pauses(&self, all: bool) -> Result<Vec<Pause>> {
        let rows = sqlx::query(
            "SELECT * FROM saga_pauses WHERE $1 OR resumed_at IS NULL ORDER BY paused_at, id",
        )
        .bind(all)
        // Read by workers before steps and by starts: on the workers' own connections, which
        // steps' transactions can never take.
        .fetch_all(&self.write_pool)
        .await
        .map_err(classify)?;
        rows.iter().map(crate::rows::pause).collect()
    }

    async fn prune(&self, before: Timestamp, limit: u32) -> Result<u64> {
        sqlx::query("DELETE FROM saga_start_windows WHERE until <= now()")
            .execute(&self.pool)
            .await
            .map_err(classify)?;
        // Policy uses and slots that count no more: their window ended.
        sqlx::query("DELETE FROM saga_policy_slots WHERE expires_at <= now()")
            .execute(&self.pool)
            .await
            .map_err(classify)?;
        sqlx::query("DELETE FROM saga_policy_uses WHERE expires_at <= now()")
            .execute(&self.pool)
            .await
            .map_err(classify)?;
        // A saga whose start key's dedup window is open is kept: a repeat start finds it.
        let row = sqlx::query(
            "WITH doomed AS (
                 SELECT id FROM saga_instances
                  WHERE status IN ('completed', 'compensated', 'cancelled') AND updated_at < $1
                    AND id NOT IN (SELECT saga_id FROM saga_start_windows)
                    AND (parent_id IS NULL OR NOT EXISTS (
                         SELECT 1 FROM saga_instances p
                          WHERE p.id = saga_instances.parent_id
                            AND p.status NOT IN ('completed', 'compensated', 'cancelled')))
                  LIMIT $2
                  FOR UPDATE SKIP LOCKED),
             steps AS (DELETE FROM saga_steps WHERE saga_id IN (SELECT id FROM doomed)),
             events AS (DELETE FROM saga_events WHERE saga_id IN (SELECT id FROM doomed)),
             items AS (DELETE FROM saga_interventions WHERE saga_id IN (SELECT id FROM doomed)),
             signals AS (DELETE FROM saga_signals WHERE saga_id IN (SELECT id FROM doomed)),
             gone AS (DELETE FROM saga_instances WHERE id IN (SELECT id FROM doomed) RETURNING id)
             SELECT COUNT(*) AS n FROM gone",
        )
        .bind(before)
        .bind(i64::from(limit))
        .fetch_one(&self.pool)
        .await
        .map_err(classify)?;
        let deleted: i64 = row.try_get("n").map_err(classify)?;
        Ok(u64::try_from(deleted).unwrap_or(0))
    }

    async fn list(&self, filter: &SagaFilter) -> Result<Vec<SagaRecord>> {
        sqlx::query(
            "SELECT * FROM saga_instances
              WHERE ($1::text IS NULL OR status = $1)
                AND ($2::text IS NULL OR saga_type = $2)
                AND ($3::text IS NULL OR idempotency_key = $3)
                AND ($4::timestamptz IS NULL OR created_at < $4)
                AND ($5::uuid IS NULL OR id > $5)
                AND ($7::text IS NULL OR starts_with(waiting_for, $7))
                AND ($8::uuid IS NULL OR parent_id = $8)
              ORDER BY id
              LIMIT $6",
        )
        .bind(filter.status.map(SagaStatus::as_str))
        .bind(filter.saga_type.as_ref().map(|t| t.as_str()))
        .bind(filter.idempotency_key.as_ref().map(|k| k.as_str()))
        .bind(filter.created_before)
        .bind(filter.after.map(|id| id.as_uuid()))
        .bind(i64::from(filter.limit_or_default()))
        .bind(filter.waiting_for.as_deref())
        .bind(filter.parent.map(|id| id.as_uuid()))
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
            // Buckets as `OverviewQuery::bucket_of` numbers them: (at - since) / bucket, in
            // whole milliseconds.
            parts.series = sqlx::query(
                "WITH w AS (SELECT $1::bigint AS since, $2::bigint AS width,
                                   $3::timestamptz AS since_at, $4::timestamptz AS now_at)
                 SELECT 'started' AS kind,
                        (floor(extract(epoch FROM created_at) * 1000)::bigint - w.since) / w.width
                          AS bucket,
                        COUNT(*) AS n
                   FROM saga_instances, w
                  WHERE created_at >= w.since_at AND created_at <= w.now_at
                  GROUP BY 2
                 UNION ALL
                 SELECT status AS kind,
                        (floor(extract(epoch FROM updated_at) * 1000)::bigint - w.since) / w.width,
                        COUNT(*)
                   FROM saga_instances, w
                  WHERE status IN ('completed', 'compensated')
                    AND updated_at >= w.since_at AND updated_at <= w.now_at
                  GROUP BY 1, 2
                 UNION ALL
                 SELECT 'escalated' AS kind,
                        (floor(extract(epoch FROM opened_at) * 1000)::bigint - w.since) / w.width,
                        COUNT(*)
                   FROM saga_interventions, w
                  WHERE opened_at >= w.since_at AND opened_at <= w.now_at
                  GROUP BY 2",
            )
            .bind(query.since_millis())
            .bind(query.bucket_millis())
            .bind(query.since)
            .bind(query.now)
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
                AND s.status IN ('in_progress', 'pending') AND s.started_at < $1
              GROUP BY i.saga_type, s.name, s.phase",
        )
        .bind(query.stuck_before())
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
        sqlx::query("SELECT * FROM saga_events WHERE saga_id = $1 ORDER BY seq")
            .bind(id.as_uuid())
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
              WHERE (NOT $1 OR status = 'open')
              ORDER BY opened_at, id",
        )
        .bind(open_only)
        .fetch_all(&self.pool)
        .await
        .map_err(classify)?
        .iter()
        .map(rows::intervention)
        .collect()
    }

    async fn clock(&self) -> Result<Timestamp> {
        let now: Timestamp = sqlx::query_scalar("SELECT clock_timestamp()")
            .fetch_one(&self.write_pool)
            .await
            .map_err(classify)?;
        Ok(chrono::SubsecRound::trunc_subsecs(now, 3))
    }

    async fn wait_for_work(&self, max: Duration) {
        self.wakeup.wait(max).await;
    }
}

/// Claims up to `limit` due sagas for `owner` in one statement: skips rows other workers hold,
/// bumps each fencing token, records takeovers of expired leases, returns the claimed rows.
fn claim_query(
    owner: &WorkerId,
    expires_at: Timestamp,
    now: Timestamp,
    limit: u32,
) -> sqlx::query::Query<'static, Postgres, sqlx::postgres::PgArguments> {
    claim_where(&CLAIM_DUE, owner, None, expires_at, now, limit)
}

/// How many more sagas a claim of `limit` may take after `taken`.
fn room_left(limit: u32, taken: usize) -> u32 {
    let taken = u32::try_from(taken).unwrap_or(u32::MAX);
    limit.saturating_sub(taken)
}

impl PgStore {
    /// Takes over, for `owner`, up to `limit` sagas whose lease is live but whose holder is no
    /// longer present (its session ended: its process died). See `presence`.
    fn orphans(
        &self,
        owner: &WorkerId,
        expires_at: Timestamp,
        now: Timestamp,
        limit: u32,
    ) -> sqlx::query::Query<'static, Postgres, sqlx::postgres::PgArguments> {
        claim_where(&CLAIM_ORPHANED, owner, None, expires_at, now, limit)
            .bind(presence::LOCK_CLASS)
            .bind(self.presence.schema().to_owned())
    }
}

/// Claims sagas nobody holds, or whose lease expired.
static CLAIM_DUE: LazyLock<String> =
    LazyLock::new(|| claim_sql("(lease_expires_at IS NULL OR lease_expires_at < $3)"));
/// Takes over sagas whose lease is live but whose holder holds no presence lock (its session
/// ended: see `presence`): $6 the lock's class, $7 the schema.
static CLAIM_ORPHANED: LazyLock<String> = LazyLock::new(|| {
    claim_sql(
        "(lease_expires_at >= $3 AND lease_owner <> $1
          AND hashtext($7 || '/' || lease_owner)::oid NOT IN (
              SELECT objid FROM pg_locks
               WHERE locktype = 'advisory' AND granted AND objsubid = 2
                 AND classid = hashtext($6)::oid
                 AND database = (SELECT oid FROM pg_database WHERE datname = current_database())))",
    )
});
/// Takes back sagas an earlier run of this worker id holds (leases expiring before $5).
static CLAIM_OWN: LazyLock<String> =
    LazyLock::new(|| claim_sql("(lease_owner = $1 AND lease_expires_at < $5::timestamptz)"));

/// The claim statement: $1 owner, $2 new expiry, $3 now, $4 limit, $5 `granted_before`.
fn claim_sql(eligible: &str) -> String {
    format!(
        "WITH due AS (
             SELECT id FROM saga_instances
              WHERE status IN ('running', 'compensating')
                AND next_run_at <= $3
                AND {eligible}
              ORDER BY next_run_at
              LIMIT $4
              FOR UPDATE SKIP LOCKED),
         claimed AS (
             UPDATE saga_instances s
                SET lease_previous_owner = s.lease_owner,
                    lease_owner = $1,
                    lease_expires_at = $2,
                    fencing_token = s.fencing_token + 1
               FROM due
              WHERE s.id = due.id
          RETURNING s.*),
         taken_over AS (
             INSERT INTO saga_events (saga_id, at, kind, detail)
             SELECT id, $3, 'lease_taken_over', $1 || ' took over from ' || lease_previous_owner
               FROM claimed WHERE lease_previous_owner IS NOT NULL)
         SELECT * FROM claimed"
    )
}

fn claim_where(
    sql: &'static LazyLock<String>,
    owner: &WorkerId,
    granted_before: Option<Timestamp>,
    expires_at: Timestamp,
    now: Timestamp,
    limit: u32,
) -> sqlx::query::Query<'static, Postgres, sqlx::postgres::PgArguments> {
    sqlx::query(sql.as_str())
        .bind(owner.as_str().to_owned())
        .bind(expires_at)
        .bind(now)
        .bind(i64::from(limit))
        .bind(granted_before)
}

/// The lease a claimed row grants.
fn claimed_lease(
    row: &sqlx::postgres::PgRow,
    owner: &WorkerId,
    expires_at: Timestamp,
) -> Result<Lease> {
    let previous: Option<String> = row.try_get("lease_previous_owner").map_err(classify)?;
    Ok(Lease {
        saga: SagaId::from_uuid(row.try_get("id").map_err(classify)?),
        owner: owner.clone(),
        token: FencingToken(row.try_get("fencing_token").map_err(classify)?),
        expires_at,
        taken_over_from: previous.map(WorkerId::new),
    })
}

/// Reads one saga and its steps inside the caller's transaction (locking the saga's row for
/// update when `lock`).
async fn load_with(
    tx: &mut Transaction<'static, Postgres>,
    id: SagaId,
    lock: bool,
) -> Result<Option<SagaSnapshot>> {
    let query = if lock {
        "SELECT * FROM saga_instances WHERE id = $1 FOR UPDATE"
    } else {
        "SELECT * FROM saga_instances WHERE id = $1"
    };
    let Some(row) = sqlx::query(query)
        .bind(id.as_uuid())
        .fetch_optional(&mut **tx)
        .await
        .map_err(classify)?
    else {
        return Ok(None);
    };
    let record = rows::saga_record(&row)?;
    let steps =
        sqlx::query("SELECT * FROM saga_steps WHERE saga_id = $1 ORDER BY step_index, phase")
            .bind(id.as_uuid())
            .fetch_all(&mut **tx)
            .await
            .map_err(classify)?
            .iter()
            .map(|row| rows::step_record(row, id))
            .collect::<Result<Vec<_>>>()?;
    let signals = if record.signals_received == 0 {
        Vec::new()
    } else {
        sqlx::query("SELECT * FROM saga_signals WHERE saga_id = $1 ORDER BY seq")
            .bind(id.as_uuid())
            .fetch_all(&mut **tx)
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

/// The server's time at the start of the transaction, to the millisecond (as stored).
async fn db_now(tx: &mut Transaction<'static, Postgres>) -> Result<Timestamp> {
    let now: Timestamp = sqlx::query_scalar("SELECT now()")
        .fetch_one(&mut **tx)
        .await
        .map_err(classify)?;
    Ok(chrono::SubsecRound::trunc_subsecs(now, 3))
}

impl PgStore {
    /// A fenced write that was not written: its fence did not hold or a step phase refused it
    /// (`err` is `None` or the store's refusal), or the batch contradicts itself. Says why, from
    /// the saga as stored, as every backend does; any other error is returned as it is.
    async fn not_written(
        &self,
        lease: &Lease,
        changes: &[Change],
        err: Option<Error>,
    ) -> Result<()> {
        match err {
            Some(err) if !crate::error::is_refused(&err) => Err(err),
            _ => {
                let stored = self.load(lease.saga).await?;
                Err(write::not_admitted(
                    stored.as_ref(),
                    lease,
                    &WritePlan::compile(changes),
                ))
            }
        }
    }

    /// Writes `changes` in a transaction of their own, fenced by `lease`, and commits.
    async fn apply_alone(&self, lease: &Lease, changes: &[Change]) -> Result<()> {
        let tx = begin(&self.write_pool).await?;
        self.apply_in(tx, lease, changes).await
    }

    /// Writes `changes` in `tx` (a step's transaction), fenced by `lease`, and commits.
    async fn apply_in(
        &self,
        mut tx: Transaction<'static, Postgres>,
        lease: &Lease,
        changes: &[Change],
    ) -> Result<()> {
        let Ok(plan) = WritePlan::compile(changes) else {
            drop(tx);
            return self.not_written(lease, changes, None).await;
        };
        let write = statement::Write {
            saga: lease.saga,
            lease: Some(lease.clone()),
            plan,
        };
        let now = saga_core::now();
        match statement::execute_one(&mut *tx, &write, now, &self.channel).await {
            Ok(true) => {
                self.write_family(&mut tx, &write.plan, now).await?;
                tx.commit().await.map_err(classify)
            }
            outcome => {
                // Roll back the step's own writes before finding out why.
                drop(tx);
                self.not_written(lease, changes, outcome.err()).await
            }
        }
    }

    /// Reads saga `id` with its row locked, lets `decide` judge it at the database's time (every
    /// worker's lease expiry was measured against that clock, not the caller's), and writes the
    /// plan decided, if any: an operator's cancel, a parent's request that its child stop.
    async fn decide_and_write<T>(
        &self,
        id: SagaId,
        decide: impl FnOnce(&SagaSnapshot, Timestamp) -> Result<(T, Option<WritePlan>)>,
    ) -> Result<T> {
        let mut tx = begin_operator(&self.pool).await?;
        let snapshot = load_with(&mut tx, id, true)
            .await?
            .ok_or(Error::SagaNotFound(id))?;
        let now = db_now(&mut tx).await?;
        let (outcome, plan) = decide(&snapshot, now)?;
        if let Some(plan) = plan {
            self.write_decided(&mut tx, &snapshot, plan, now).await?;
            tx.commit().await.map_err(classify)?;
        }
        Ok(outcome)
    }

    /// Writes what `plan` (written in `tx`) does to other sagas: creates its children (a child
    /// whose start key is stored already is that child) and wakes its parent.
    async fn write_family(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        plan: &WritePlan,
        now: Timestamp,
    ) -> Result<()> {
        for child in &plan.children {
            let creation = CreationPlan::compile(child)?;
            statement::create(&mut **tx, child, &creation, now, &self.channel).await?;
        }
        if let Some(parent) = &plan.wake_parent {
            // In one round trip: the parent woken, and idle workers told when it became due.
            sqlx::query(
                "WITH woken AS (
                     UPDATE saga_instances
                        SET signals_received = signals_received + 1,
                            next_run_at = CASE WHEN status IN ('running', 'compensating')
                                                AND waiting_for = $2
                                               THEN date_trunc('milliseconds', now())
                                               ELSE next_run_at END
                      WHERE id = $1
                  RETURNING status IN ('running', 'compensating') AND waiting_for = $2 AS due)
                 SELECT pg_notify($3, '') FROM woken WHERE due",
            )
            .bind(parent.saga.as_uuid())
            .bind(parent.waiting_for())
            .bind(&self.channel)
            .execute(&mut **tx)
            .await
            .map_err(classify)?;
        }
        Ok(())
    }

    /// Writes a plan an operator's action decided on `stored` (read in `tx` with its row
    /// locked, so nothing changed since), through the same statement as every write.
    async fn write_decided(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        stored: &SagaSnapshot,
        plan: WritePlan,
        now: Timestamp,
    ) -> Result<()> {
        let write = statement::Write {
            saga: stored.record.id,
            lease: None,
            plan,
        };
        if statement::execute_one(&mut **tx, &write, now, &self.channel).await? {
            self.write_family(tx, &write.plan, now).await
        } else {
            Err(Error::Store(
                format!(
                    "saga {} could not be written by an operator's action; try the action again",
                    stored.record.id
                )
                .into(),
            ))
        }
    }
}

#[cfg(all(test, feature = "testing"))]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::testing::TestPg;

    async fn planner_settings(pool: &PgPool) -> (String, String) {
        let mut conn = pool.acquire().await.unwrap();
        sqlx::query_as(
            "SELECT current_setting('plan_cache_mode'), current_setting('enable_seqscan')",
        )
        .fetch_one(&mut *conn)
        .await
        .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn step_writes_plan_generically_and_the_users_pool_keeps_the_servers_settings() {
        let url = TestPg::fresh_database().await.unwrap();
        let store = PgStore::connect(&url).await.unwrap();
        assert_eq!(
            planner_settings(&store.write_pool).await,
            ("force_generic_plan".to_owned(), "off".to_owned())
        );
        assert_eq!(
            planner_settings(&store.pool).await,
            ("auto".to_owned(), "on".to_owned())
        );
        store.close().await;
    }

    async fn setting(conn: &mut sqlx::PgConnection, name: &str) -> String {
        sqlx::query_scalar("SELECT current_setting($1)")
            .bind(name)
            .fetch_one(conn)
            .await
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn step_writes_wait_for_a_locked_row_a_bounded_time_and_operators_may_not_idle_holding_locks(
    ) {
        let url = TestPg::fresh_database().await.unwrap();
        let store = PgStore::connect(&url).await.unwrap();
        let mut write = store.write_pool.acquire().await.unwrap();
        assert_eq!(setting(&mut write, "lock_timeout").await, "1s");
        drop(write);
        let mut user = store.pool.acquire().await.unwrap();
        assert_eq!(
            setting(&mut user, "lock_timeout").await,
            "0",
            "the users' pool keeps the server's settings"
        );
        drop(user);
        let mut operator = begin_operator(&store.pool).await.unwrap();
        assert_eq!(
            setting(&mut operator, "idle_in_transaction_session_timeout").await,
            "10s"
        );
        drop(operator);
        let mut after = store.pool.acquire().await.unwrap();
        assert_eq!(
            setting(&mut after, "idle_in_transaction_session_timeout").await,
            "0",
            "the bound is local to the operator's transaction"
        );
        drop(after);
        store.close().await;
    }
}
