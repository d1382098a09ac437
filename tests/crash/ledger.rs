//! The external effects ledger: a downstream service that honours idempotency keys, the way a
//! well-behaved payment API does. Every call is logged (key, attempt, worker); the effect of a
//! key is applied once (a unique key); a repeated call is counted and answered with the first
//! call's receipt, never applied again. A step under a frequency cap also records the entity
//! its cap counts under (the customer), so that the checks count effects per entity.

use saga::{StepContext, StepError};
use sqlx::{PgPool, Row};

/// The ledger's tables, in the `public` schema of the scenario's database (the saga tables live
/// in the schema `saga`).
pub(crate) const SCHEMA: [&str; 2] = [
    "CREATE TABLE IF NOT EXISTS public.ledger_effects (
         key          text PRIMARY KEY,
         seq          bigserial NOT NULL,
         saga_id      text NOT NULL,
         step         text NOT NULL,
         step_index   integer NOT NULL,
         phase        text NOT NULL,
         first_attempt integer NOT NULL,
         first_worker text NOT NULL,
         receipt      text NOT NULL,
         refund_of    text,
         entity       text,
         calls        integer NOT NULL)",
    "CREATE TABLE IF NOT EXISTS public.ledger_calls (
         id        bigserial PRIMARY KEY,
         key       text NOT NULL,
         saga_id   text NOT NULL,
         step_index integer NOT NULL,
         phase     text NOT NULL,
         attempt   integer NOT NULL,
         worker    text NOT NULL,
         at        timestamptz NOT NULL DEFAULT clock_timestamp())",
];

/// Creates the ledger's tables.
pub(crate) async fn create(pool: &PgPool) -> Result<(), sqlx::Error> {
    for statement in SCHEMA {
        sqlx::query(statement).execute(pool).await?;
    }
    Ok(())
}

/// A worker's client of the ledger.
#[derive(Clone)]
pub(crate) struct Ledger {
    pool: Option<PgPool>,
    worker: String,
}

impl Ledger {
    pub(crate) fn new(pool: Option<PgPool>, worker: String) -> Self {
        Self { pool, worker }
    }

    /// Calls the downstream with the step's idempotency key: logs the call, applies the effect
    /// unless the key was seen, and returns the receipt of the key's first call.
    pub(crate) async fn call<I>(
        &self,
        ctx: &StepContext<I>,
        index: u32,
        refund_of: Option<&str>,
    ) -> Result<String, StepError> {
        self.call_for(ctx, index, refund_of, None).await
    }

    /// [`call`](Self::call), recording the effect against `entity` (the key a cap counts it
    /// under: a customer).
    pub(crate) async fn call_for<I>(
        &self,
        ctx: &StepContext<I>,
        index: u32,
        refund_of: Option<&str>,
        entity: Option<&str>,
    ) -> Result<String, StepError> {
        let Some(pool) = &self.pool else {
            return Err(StepError::permanent(
                "this worker has no ledger (SQLite run); the step cannot reach its downstream",
            ));
        };
        let key = ctx.key().as_str();
        let attempt = i32::try_from(ctx.attempt().0).unwrap_or(i32::MAX);
        let receipt = format!("receipt:{key}:{}:{attempt}", self.worker);
        let row = sqlx::query(
            "WITH call AS (
                 INSERT INTO public.ledger_calls (key, saga_id, step_index, phase, attempt, worker)
                 VALUES ($1, $2, $4, $5, $6, $7))
             INSERT INTO public.ledger_effects AS e (key, saga_id, step, step_index, phase,
                 first_attempt, first_worker, receipt, refund_of, entity, calls)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 1)
             ON CONFLICT (key) DO UPDATE SET calls = e.calls + 1
             RETURNING receipt",
        )
        .bind(key)
        .bind(ctx.saga_id().to_string())
        .bind(ctx.step().as_str())
        .bind(i32::try_from(index).unwrap_or(i32::MAX))
        .bind(ctx.phase().as_str())
        .bind(attempt)
        .bind(&self.worker)
        .bind(&receipt)
        .bind(refund_of)
        .bind(entity)
        .fetch_one(pool)
        .await
        .map_err(|err| StepError::transient(format!("ledger unreachable: {err}")))?;
        row.try_get("receipt")
            .map_err(|err| StepError::transient(format!("ledger answer unreadable: {err}")))
    }
}
