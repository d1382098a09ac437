//! Fenced writes of many sagas in one statement, and the writer tasks that group them.
//!
//! Every fenced write goes through one of a few fixed statements whose inputs are arrays
//! (`UNNEST`): the fence of each saga, its step changes, interventions and history events, and
//! sagas to create. Variants leave out the parts a group does not need (interventions, which
//! nearly no write has; creations), since the server sets up every part on each execution even
//! when its arrays are empty. Their text never changes, so every
//! connection prepares each once. Writes and creations that arrive while a statement is in
//! flight wait and go out together in the next one — one round trip and one commit for all of
//! them, the way a database groups commits — so the cost per step falls as load rises, while a
//! lone write goes out at once. A second writer starts a statement beside one in flight only
//! once [`OVERLAP_AT`] jobs wait, or after [`OVERLAP_AFTER`].
//!
//! Rows are found through `= ANY(array)` on their keys, so that the plan the server caches
//! for the statement (first made while the tables are small) stays an index lookup as they grow.
//!
//! Every row a write adds or changes joins that write's own fence (by its position in the
//! statement, not by saga id), so a stale write grouped with a current write of the same saga
//! writes nothing.
//!
//! Data-modifying CTEs all see the same snapshot and none sees another's rows: a saga's batch
//! qualifies only when it touches each step phase at most once (`compilable`). The worker's
//! writes nearly always do; a retry due at once is flushed with the failed attempt and the next
//! one's start (`FailStep` and `BeginStep` of one step phase), and takes the
//! statement-per-change path in `mod.rs`.
//! A step change that finds nothing to act on (beginning a completed step, finishing one that
//! never started) makes the statement raise through `saga_refuse`, which rolls all of it back;
//! the writer then writes each saga of that group alone, so only the offending one fails.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use saga_core::store::{begins_forward_step, Change, EventData, NewSaga};
use saga_core::{Error, Lease, Result, SagaId, SagaStatus, Timestamp};
use sqlx::postgres::{PgArguments, PgExecutor, PgPool, PgRow};
use sqlx::{Postgres, Row};
use tokio::sync::{mpsc, oneshot, Mutex, Notify};
use uuid::Uuid;

use crate::error::{classify, is_lock_timeout};

/// Most sagas written in one statement.
pub(super) const MAX_BATCH: usize = 64;

/// How many jobs a writer gathers before its statement may overlap another one in flight.
/// Below it, the writer waits for that statement to end and takes whatever arrived meanwhile:
/// one statement at a time costs the server and the process less per job than two half-full
/// ones, while a queue this long means that one statement at a time no longer keeps up.
const OVERLAP_AT: usize = MAX_BATCH / 4;

/// How long a writer waits for the statement in flight before it starts its own beside it
/// anyway, however few jobs it holds: a statement held up (by a row lock, a slow flush) holds
/// back the writes behind it for no longer. With 16 sagas in flight a statement and its commit
/// take about 1.5 ms; 3 ms did better than 20 ms on the workload with compensations and the
/// same on the one without.
const OVERLAP_AFTER: Duration = Duration::from_millis(3);

/// Whether a saga's batch can be written by the batch statement: no step phase touched twice.
pub(super) fn compilable(changes: &[Change]) -> bool {
    let mut seen = HashSet::new();
    changes.iter().all(|change| match change {
        Change::BeginStep { index, phase, .. }
        | Change::CompleteStep { index, phase, .. }
        | Change::FailStep { index, phase, .. } => seen.insert((*index, *phase)),
        Change::SetStatus { .. } | Change::Escalate(_) | Change::Release { .. } => true,
    })
}

/// One saga's fenced write.
pub(super) struct Write {
    pub(super) lease: Lease,
    pub(super) changes: Vec<Change>,
}

/// The statement's parts. Parameters: $1..$10 the sagas (fence and row changes), $11..$16 begun
/// steps, $17..$23 finished steps (completed, failed for good, or failed with a retry due),
/// $24..$33 interventions (and $70 the status each parked its saga from), $34..$39 events, $40
/// now, $41 whether to wake idle workers, $42 the wake-up channel, $43..$46 the position of the
/// write each begun step, finished step, intervention and event belongs to. It returns the positions of the writes whose fence held
/// (the others wrote nothing).
macro_rules! fence_begin_finish {
    () => {
        "
WITH s AS (
    SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::int8[], $4::bool[], $5::bool[], $6::text[],
                         $7::text[], $8::bool[], $9::bool[], $10::timestamptz[])
        WITH ORDINALITY
        AS t(id, owner, token, forward, set_status, status, reason, clear_cancel, release,
             next_run_at, n)),
inst AS (
    UPDATE saga_instances i
       SET updated_at = $40,
           status = CASE WHEN s.set_status THEN s.status ELSE i.status END,
           status_reason = CASE WHEN s.set_status THEN s.reason ELSE i.status_reason END,
           cancel_requested = CASE WHEN s.clear_cancel THEN NULL ELSE i.cancel_requested END,
           lease_owner = CASE WHEN s.release THEN NULL ELSE i.lease_owner END,
           lease_expires_at = CASE WHEN s.release THEN NULL ELSE i.lease_expires_at END,
           next_run_at = CASE WHEN s.release THEN s.next_run_at ELSE i.next_run_at END
      FROM s
     WHERE i.id = ANY($1::uuid[]) AND i.id = s.id
       AND i.lease_owner = s.owner AND i.fencing_token = s.token
       AND (NOT s.forward OR i.cancel_requested IS NULL)
    RETURNING i.id, s.n),
b AS (
    SELECT b.* FROM UNNEST($11::uuid[], $12::int4[], $13::text[], $14::text[], $15::int4[],
                           $16::text[], $43::int8[]) AS b(saga, idx, phase, name, attempt, key, w)
      JOIN inst ON inst.n = b.w),
begun AS (
    INSERT INTO saga_steps AS st (saga_id, step_index, phase, name, status, attempt,
        idempotency_key, started_at)
    SELECT saga, idx, phase, name, 'in_progress', attempt, key, $40 FROM b
    ON CONFLICT (saga_id, step_index, phase) DO UPDATE
       SET status = 'in_progress', attempt = EXCLUDED.attempt, next_attempt_at = NULL,
           started_at = EXCLUDED.started_at, finished_at = NULL
     WHERE st.status <> 'completed'
    RETURNING 1),
c AS (
    SELECT c.* FROM UNNEST($17::uuid[], $18::int4[], $19::text[], $20::text[], $21::jsonb[],
                           $22::text[], $23::timestamptz[], $44::int8[])
        AS c(saga, idx, phase, status, output, error, retry_at, w)
      JOIN inst ON inst.n = c.w),
finished AS (
    UPDATE saga_steps st
       SET status = c.status,
           output = CASE WHEN c.status = 'completed' THEN c.output ELSE st.output END,
           last_error = COALESCE(c.error, st.last_error),
           next_attempt_at = c.retry_at, finished_at = $40
      FROM c
     WHERE st.saga_id = ANY($17::uuid[])
       AND st.saga_id = c.saga AND st.step_index = c.idx AND st.phase = c.phase
    RETURNING 1),
"
    };
}

/// Interventions.
macro_rules! escalate {
    () => {
        "
escalated AS (
    INSERT INTO saga_interventions (id, saga_id, kind, step_index, step_name, phase,
        idempotency_key, input, output, error, status, opened_at, parked_from)
    SELECT e.id, e.saga, e.kind, e.idx, e.step, e.phase, e.key, e.input, e.output, e.error,
           'open', $40, e.parked_from
      FROM UNNEST($24::uuid[], $25::uuid[], $26::text[], $27::int4[], $28::text[], $29::text[],
                  $30::text[], $31::jsonb[], $32::jsonb[], $33::text[], $45::int8[],
                  $70::text[])
           AS e(id, saga, kind, idx, step, phase, key, input, output, error, w, parked_from)
      JOIN inst ON inst.n = e.w
    ON CONFLICT (id) DO NOTHING),
"
    };
}

/// History events.
macro_rules! history {
    () => {
        "
events AS (
    INSERT INTO saga_events (saga_id, at, kind, step, phase, attempt, detail)
    SELECT v.saga, $40, v.kind, v.step, v.phase, v.attempt, v.detail
      FROM UNNEST($34::uuid[], $35::text[], $36::text[], $37::text[], $38::int4[], $39::text[],
                  $46::int8[])
           WITH ORDINALITY AS v(saga, kind, step, phase, attempt, detail, w, n)
      JOIN inst ON inst.n = v.w
     ORDER BY v.n)
"
    };
}

/// Sagas created in the same statement: $47..$57 the sagas, $58..$63 the steps begun with them,
/// $64..$69 their events (no trailing comma: it also ends [`CREATE_SQL`]'s `WITH`). A start key
/// that exists already creates nothing (the caller reads the saga it started); rows of the same
/// creation join it by saga id.
macro_rules! creations {
    () => {
        "
new AS (
    INSERT INTO saga_instances (id, saga_type, version, fingerprint, status, input, input_hash,
        idempotency_key, next_run_at, fencing_token, trace_context, created_at, updated_at,
        lease_owner, lease_expires_at)
    SELECT k.id, k.saga_type, k.version, k.fingerprint, 'running', k.input, k.input_hash,
           k.key, $40, k.token, k.trace, $40, $40, k.owner, k.until
      FROM UNNEST($47::uuid[], $48::text[], $49::int4[], $50::text[], $51::jsonb[], $52::text[],
                  $53::text[], $54::text[], $55::text[], $56::timestamptz[], $57::int8[])
           AS k(id, saga_type, version, fingerprint, input, input_hash, key, trace, owner,
                until, token)
     -- One order for every statement, so that two of them inserting the same start keys wait
     -- for each other in turn instead of deadlocking.
     ORDER BY k.key, k.id
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING id),
new_begun AS (
    INSERT INTO saga_steps (saga_id, step_index, phase, name, status, attempt, idempotency_key,
        started_at)
    SELECT nb.saga, nb.idx, nb.phase, nb.name, 'in_progress', nb.attempt, nb.key, $40
      FROM UNNEST($58::uuid[], $59::int4[], $60::text[], $61::text[], $62::int4[], $63::text[])
           AS nb(saga, idx, phase, name, attempt, key)
      JOIN new ON new.id = nb.saga),
new_events AS (
    INSERT INTO saga_events (saga_id, at, kind, step, phase, attempt, detail)
    SELECT nv.saga, $40, nv.kind, nv.step, nv.phase, nv.attempt, nv.detail
      FROM UNNEST($64::uuid[], $65::text[], $66::text[], $67::text[], $68::int4[], $69::text[])
           WITH ORDINALITY AS nv(saga, kind, step, phase, attempt, detail, n)
      JOIN new ON new.id = nv.saga
     ORDER BY nv.n)"
    };
}

/// The answer, and the refusal of step changes that found nothing to act on. `$created`: the
/// ids of sagas created, and `$woken`: the condition (besides `$41`) for waking idle workers.
macro_rules! answer {
    ($created:expr, $woken:expr) => {
        concat!(
            "
SELECT ARRAY(SELECT n FROM inst) AS fenced, ",
            $created,
            " AS created,
       CASE WHEN (SELECT COUNT(*) FROM begun) < (SELECT COUNT(*) FROM b)
                 OR (SELECT COUNT(*) FROM finished) < (SELECT COUNT(*) FROM c)
            THEN saga_refuse('a step change found no step to act on: a completed step cannot begin again, and only a begun step can complete or fail')
       END AS refused,
       CASE WHEN $41 AND (",
            $woken,
            ") THEN pg_notify($42, '')::text END AS woke"
        )
    };
}

/// A statement for a group of writes, made of the fenced parts, the `$part`s given (none, or
/// interventions), the history and the answer; `and creations` adds the creations' parts.
macro_rules! statement {
    (writes $(, $part:expr)*) => {
        concat!(
            fence_begin_finish!(),
            $($part,)*
            history!(),
            answer!("'{}'::uuid[]", "EXISTS (SELECT 1 FROM inst)")
        )
    };
    (writes and creations $(, $part:expr)*) => {
        concat!(
            fence_begin_finish!(),
            $($part,)*
            creations!(),
            ",",
            history!(),
            answer!(
                "ARRAY(SELECT id FROM new)",
                "EXISTS (SELECT 1 FROM inst) OR EXISTS (SELECT 1 FROM new)"
            )
        )
    };
}

/// The statement for a group of writes without creations (nearly every write: steps finished
/// and the next ones begun). Parameters that only the parts it leaves out read are bound
/// (empty) all the same.
const SQL: &str = statement!(writes);

/// [`SQL`] with interventions, for a group that escalates (rare). The part it adds costs the
/// server its set-up on every execution even when its arrays are empty, so the other variants
/// leave it out.
const ESCALATE_SQL: &str = statement!(writes, escalate!());

/// [`SQL`] with creations.
const WITH_CREATIONS_SQL: &str = statement!(writes and creations);

/// [`ESCALATE_SQL`] with creations.
const ESCALATE_WITH_CREATIONS_SQL: &str = statement!(writes and creations, escalate!());

/// A step index, attempt or version as the `integer` it is stored as.
pub(super) fn int(value: u32) -> i32 {
    i32::try_from(value).unwrap_or(i32::MAX)
}

/// The statement's inputs, column by column.
#[derive(Default)]
struct Columns {
    s_id: Vec<Uuid>,
    s_owner: Vec<String>,
    s_token: Vec<i64>,
    s_forward: Vec<bool>,
    s_set_status: Vec<bool>,
    s_status: Vec<Option<String>>,
    s_reason: Vec<Option<String>>,
    s_clear_cancel: Vec<bool>,
    s_release: Vec<bool>,
    s_next_run_at: Vec<Option<Timestamp>>,
    begins: BeginColumns,
    c_saga: Vec<Uuid>,
    c_index: Vec<i32>,
    c_phase: Vec<String>,
    c_status: Vec<&'static str>,
    c_output: Vec<Option<serde_json::Value>>,
    c_error: Vec<Option<String>>,
    c_retry_at: Vec<Option<Timestamp>>,
    e_id: Vec<Uuid>,
    e_saga: Vec<Uuid>,
    e_kind: Vec<String>,
    e_index: Vec<Option<i32>>,
    e_step: Vec<Option<String>>,
    e_phase: Vec<Option<String>>,
    e_key: Vec<Option<String>>,
    e_input: Vec<Option<serde_json::Value>>,
    e_output: Vec<Option<serde_json::Value>>,
    e_error: Vec<String>,
    e_parked_from: Vec<Option<String>>,
    events: EventColumns,
    /// For each begun step, finished step, intervention and event: the position
    /// (from 1) of the write it belongs to. Rows join their own write's fence, not just any
    /// write of the same saga, so a stale write grouped with a current one of the same saga
    /// writes nothing.
    b_write: Vec<i64>,
    c_write: Vec<i64>,
    e_write: Vec<i64>,
    v_write: Vec<i64>,
    wake: bool,
    k_id: Vec<Uuid>,
    k_type: Vec<String>,
    k_version: Vec<i32>,
    k_fingerprint: Vec<String>,
    k_input: Vec<serde_json::Value>,
    k_hash: Vec<String>,
    k_key: Vec<Option<String>>,
    k_trace: Vec<Option<String>>,
    k_owner: Vec<Option<String>>,
    k_until: Vec<Option<Timestamp>>,
    k_token: Vec<i64>,
    k_begins: BeginColumns,
    k_events: EventColumns,
}

/// Begun step phases as columns, for `UNNEST`.
#[derive(Default)]
struct BeginColumns {
    saga: Vec<Uuid>,
    index: Vec<i32>,
    phase: Vec<String>,
    name: Vec<String>,
    attempt: Vec<i32>,
    key: Vec<String>,
}

impl BeginColumns {
    /// Appends `change` if it is a `BeginStep`.
    fn push(&mut self, saga: Uuid, change: &Change) {
        if let Change::BeginStep {
            index,
            name,
            phase,
            attempt,
            key,
        } = change
        {
            self.saga.push(saga);
            self.index.push(int(index.0));
            self.phase.push(phase.as_str().to_owned());
            self.name.push(name.as_str().to_owned());
            self.attempt.push(int(attempt.0));
            self.key.push(key.as_str().to_owned());
        }
    }

    /// Binds the six columns, in order.
    fn bind<'q>(
        self,
        query: sqlx::query::Query<'q, Postgres, PgArguments>,
    ) -> sqlx::query::Query<'q, Postgres, PgArguments> {
        query
            .bind(self.saga)
            .bind(self.index)
            .bind(self.phase)
            .bind(self.name)
            .bind(self.attempt)
            .bind(self.key)
    }
}

/// History events as columns, for `UNNEST`.
#[derive(Default)]
pub(super) struct EventColumns {
    saga: Vec<Uuid>,
    kind: Vec<String>,
    step: Vec<Option<String>>,
    phase: Vec<Option<String>>,
    attempt: Vec<Option<i32>>,
    detail: Vec<Option<String>>,
}

impl EventColumns {
    /// Appends one event of `saga`.
    pub(super) fn push(&mut self, saga: Uuid, event: EventData) {
        self.saga.push(saga);
        self.kind.push(event.kind.as_str().to_owned());
        self.step
            .push(event.step.map(|step| step.as_str().to_owned()));
        self.phase
            .push(event.phase.map(|phase| phase.as_str().to_owned()));
        self.attempt
            .push(event.attempt.map(|attempt| int(attempt.0)));
        self.detail.push(event.detail);
    }

    /// Binds the six columns, in order.
    pub(super) fn bind<'q>(
        self,
        query: sqlx::query::Query<'q, Postgres, PgArguments>,
    ) -> sqlx::query::Query<'q, Postgres, PgArguments> {
        query
            .bind(self.saga)
            .bind(self.kind)
            .bind(self.step)
            .bind(self.phase)
            .bind(self.attempt)
            .bind(self.detail)
    }
}

impl Columns {
    /// Adds a saga to create, with its first steps (only `BeginStep`s, checked by the caller)
    /// and their events.
    fn add_creation(&mut self, saga: &NewSaga) {
        let id = saga.id.as_uuid();
        self.k_id.push(id);
        self.k_type.push(saga.saga_type.as_str().to_owned());
        self.k_version.push(int(saga.version));
        self.k_fingerprint.push(saga.fingerprint.clone());
        self.k_input.push(saga.input.clone());
        self.k_hash.push(saga.input_hash.clone());
        self.k_key.push(
            saga.idempotency_key
                .as_ref()
                .map(|key| key.as_str().to_owned()),
        );
        self.k_trace.push(saga.trace_context.clone());
        self.k_owner.push(
            saga.lease
                .as_ref()
                .map(|(owner, _)| owner.as_str().to_owned()),
        );
        self.k_until
            .push(saga.lease.as_ref().map(|(_, until)| *until));
        self.k_token.push(i64::from(saga.lease.is_some()));
        self.k_events.push(id, started_event(saga));
        for change in &saga.changes {
            self.k_begins.push(id, change);
            if let Some(event) = change.event() {
                self.k_events.push(id, event);
            }
        }
        // Nobody holds it: wake idle workers to claim it.
        self.wake |= saga.lease.is_none();
    }

    fn add(&mut self, write: &Write, position: i64, now: Timestamp) {
        let saga = write.lease.saga.as_uuid();
        let mut status: Option<(&'static str, Option<String>)> = None;
        let mut clear_cancel = false;
        let mut release: Option<Option<Timestamp>> = None;
        for change in &write.changes {
            match change {
                Change::BeginStep { .. } => {
                    self.begins.push(saga, change);
                    self.b_write.push(position);
                }
                Change::CompleteStep {
                    index,
                    phase,
                    output,
                    ..
                } => {
                    self.c_saga.push(saga);
                    self.c_write.push(position);
                    self.c_index.push(int(index.0));
                    self.c_phase.push(phase.as_str().to_owned());
                    self.c_status.push("completed");
                    self.c_output.push(output.clone());
                    self.c_error.push(None);
                    self.c_retry_at.push(None);
                }
                Change::FailStep {
                    index,
                    phase,
                    error,
                    retry_at,
                    ..
                } => {
                    self.c_saga.push(saga);
                    self.c_write.push(position);
                    self.c_index.push(int(index.0));
                    self.c_phase.push(phase.as_str().to_owned());
                    self.c_status.push(
                        change
                            .step_status()
                            .unwrap_or(saga_core::StepStatus::Failed)
                            .as_str(),
                    );
                    self.c_output.push(None);
                    self.c_error.push(Some(error.to_string()));
                    self.c_retry_at.push(*retry_at);
                }
                Change::SetStatus {
                    status: new,
                    reason,
                } => {
                    status = Some((new.as_str(), reason.clone()));
                    clear_cancel |= *new != SagaStatus::Running;
                }
                Change::Escalate(item) => {
                    status = Some((
                        SagaStatus::NeedsIntervention.as_str(),
                        Some(item.error.clone()),
                    ));
                    self.e_id.push(item.id.as_uuid());
                    self.e_saga.push(saga);
                    self.e_write.push(position);
                    self.e_kind.push(item.kind.as_str().to_owned());
                    self.e_index
                        .push(item.step.as_ref().map(|(index, _)| int(index.0)));
                    self.e_step
                        .push(item.step.as_ref().map(|(_, name)| name.as_str().to_owned()));
                    self.e_phase
                        .push(item.phase.map(|phase| phase.as_str().to_owned()));
                    self.e_key.push(
                        item.idempotency_key
                            .as_ref()
                            .map(|key| key.as_str().to_owned()),
                    );
                    self.e_input.push(item.input.clone());
                    self.e_output.push(item.output.clone());
                    self.e_error.push(item.error.clone());
                    self.e_parked_from
                        .push(item.parked_from.map(|status| status.as_str().to_owned()));
                }
                Change::Release { next_run_at } => release = Some(*next_run_at),
            }
            if let Some(event) = change.event() {
                self.events.push(saga, event);
                self.v_write.push(position);
            }
        }
        self.s_id.push(saga);
        self.s_owner.push(write.lease.owner.as_str().to_owned());
        self.s_token.push(write.lease.token.0);
        self.s_forward.push(begins_forward_step(&write.changes));
        self.s_set_status.push(status.is_some());
        let (status, reason) = match status {
            Some((status, reason)) => (Some(status.to_owned()), reason),
            None => (None, None),
        };
        self.s_status.push(status);
        self.s_reason.push(reason);
        self.s_clear_cancel.push(clear_cancel);
        self.s_release.push(release.is_some());
        self.s_next_run_at.push(release.flatten());
        self.wake |= release.flatten().is_some_and(|due| due <= now);
    }
}

/// What a grouped statement did: for each write in order, whether its fence held (a write whose
/// fence did not hold wrote nothing); for each creation in order, whether it created its saga
/// (`false`: its start key exists already).
pub(super) struct Outcome {
    pub(super) fenced: Vec<bool>,
    pub(super) created: Vec<bool>,
}

/// Writes `writes` and creates `creations` in one statement.
pub(super) async fn execute<'e>(
    executor: impl PgExecutor<'e>,
    writes: &[&Write],
    creations: &[&NewSaga],
    now: Timestamp,
    channel: &str,
) -> Result<Outcome> {
    let mut columns = Columns::default();
    for (position, write) in (1..).zip(writes) {
        columns.add(write, position, now);
    }
    for saga in creations {
        columns.add_creation(saga);
    }
    let c = columns;
    let escalates = !c.e_id.is_empty();
    let sql = match (writes.is_empty(), escalates, creations.is_empty()) {
        (true, _, false) => CREATE_SQL,
        (_, false, true) => SQL,
        (_, true, true) => ESCALATE_SQL,
        (_, false, false) => WITH_CREATIONS_SQL,
        (_, true, false) => ESCALATE_WITH_CREATIONS_SQL,
    };
    let query = sqlx::query(sql)
        .bind(c.s_id)
        .bind(c.s_owner)
        .bind(c.s_token)
        .bind(c.s_forward)
        .bind(c.s_set_status)
        .bind(c.s_status)
        .bind(c.s_reason)
        .bind(c.s_clear_cancel)
        .bind(c.s_release)
        .bind(c.s_next_run_at);
    let query = c
        .begins
        .bind(query)
        .bind(c.c_saga)
        .bind(c.c_index)
        .bind(c.c_phase)
        .bind(c.c_status)
        .bind(c.c_output)
        .bind(c.c_error)
        .bind(c.c_retry_at)
        .bind(c.e_id)
        .bind(c.e_saga)
        .bind(c.e_kind)
        .bind(c.e_index)
        .bind(c.e_step)
        .bind(c.e_phase)
        .bind(c.e_key)
        .bind(c.e_input)
        .bind(c.e_output)
        .bind(c.e_error);
    let query = c
        .events
        .bind(query)
        .bind(now)
        .bind(c.wake)
        .bind(channel.to_owned())
        .bind(c.b_write)
        .bind(c.c_write)
        .bind(c.e_write)
        .bind(c.v_write)
        .bind(c.k_id)
        .bind(c.k_type)
        .bind(c.k_version)
        .bind(c.k_fingerprint)
        .bind(c.k_input)
        .bind(c.k_hash)
        .bind(c.k_key)
        .bind(c.k_trace)
        .bind(c.k_owner)
        .bind(c.k_until)
        .bind(c.k_token);
    let row: PgRow = c
        .k_events
        .bind(c.k_begins.bind(query))
        .bind(c.e_parked_from)
        .fetch_one(executor)
        .await
        .map_err(|err| match (&err, creations) {
            // A lone creation refused for its id is named (in a group, each job then goes alone).
            (sqlx::Error::Database(db), [saga])
                if db.constraint() == Some("saga_instances_pkey") =>
            {
                id_exists(saga.id)
            }
            _ => classify(err),
        })?;
    let fenced: HashSet<i64> = row
        .try_get::<Vec<i64>, _>("fenced")
        .map_err(classify)?
        .into_iter()
        .collect();
    let created: HashSet<Uuid> = row
        .try_get::<Vec<Uuid>, _>("created")
        .map_err(classify)?
        .into_iter()
        .collect();
    Ok(Outcome {
        fenced: (1..=i64::try_from(writes.len()).unwrap_or(i64::MAX))
            .map(|position| fenced.contains(&position))
            .collect(),
        created: creations
            .iter()
            .map(|saga| created.contains(&saga.id.as_uuid()))
            .collect(),
    })
}

/// The first event of a saga's history.
fn started_event(saga: &NewSaga) -> EventData {
    EventData {
        kind: saga_core::EventKind::SagaStarted,
        step: None,
        phase: None,
        attempt: None,
        detail: Some(format!("{} v{}", saga.saga_type, saga.version)),
    }
}

/// The statement for creations alone (a lone creation: the same parts as a group's, without the
/// fenced writes' parts, which the server would set up for nothing). Parameters other than $40,
/// $41, $42 and $47..$69 are bound (empty) but not read.
const CREATE_SQL: &str = concat!(
    "\nWITH",
    creations!(),
    "
SELECT '{}'::int8[] AS fenced, ARRAY(SELECT id FROM new) AS created,
       CASE WHEN $41 AND EXISTS (SELECT 1 FROM new) THEN pg_notify($42, '')::text END AS woke"
);

/// Creates `saga` with its first steps (its changes already checked: only `BeginStep`s, on a
/// new saga) and their events, in one statement. `false`: its start key exists already.
pub(super) async fn create<'e>(
    executor: impl PgExecutor<'e>,
    saga: &NewSaga,
    now: Timestamp,
    channel: &str,
) -> Result<bool> {
    let outcome = execute(executor, &[], &[saga], now, channel).await?;
    Ok(outcome.created.first().copied().unwrap_or(false))
}

/// The error for a saga id that exists already (ids are fresh: a caller sending one again).
pub(super) fn id_exists(id: SagaId) -> Error {
    Error::Store(format!("saga id {id} already exists; start again with a fresh id").into())
}

/// Writes one saga's changes in a statement of its own; whether its fence held.
pub(super) async fn execute_one<'e>(
    executor: impl PgExecutor<'e>,
    write: &Write,
    channel: &str,
) -> Result<bool> {
    let outcome = execute(executor, &[write], &[], saga_core::now(), channel)
        .await
        .map_err(|err| crate::error::refused_for(err, write.lease.saga))?;
    Ok(outcome.fenced.first().copied().unwrap_or(false))
}

/// What waits for a writer: a fenced write, or a saga to create (boxed: thousands of waiting
/// writes can be held at once, each sized to the larger variant).
enum Job {
    Write(Write),
    Create(Box<NewSaga>),
}

/// A job waiting for a writer, with where to send its outcome (fence held; saga created).
struct Queued {
    job: Job,
    done: oneshot::Sender<Result<bool>>,
}

/// The writer tasks and their queue. Writers stop when the last handle is dropped.
#[derive(Debug)]
pub(super) struct Writers {
    queue: Option<mpsc::UnboundedSender<Queued>>,
    /// Statements being written right now, by writers or directly by their callers.
    busy: Arc<InFlight>,
    pool: PgPool,
    channel: String,
}

/// The statements being written right now (a writer's counts from its first job on), and a
/// signal each time one ends.
#[derive(Debug, Default)]
struct InFlight {
    count: AtomicUsize,
    ended: Notify,
}

/// One statement being written (by a writer, or directly by its caller); dropped when done.
pub(super) struct Busy(Arc<InFlight>);

impl Busy {
    /// Counts one more statement in flight.
    fn start(in_flight: &Arc<InFlight>) -> Self {
        in_flight.count.fetch_add(1, Ordering::AcqRel);
        Self(Arc::clone(in_flight))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        // Count first, then signal: a writer woken by the signal sees the count without it.
        self.0.count.fetch_sub(1, Ordering::AcqRel);
        self.0.ended.notify_one();
    }
}

impl std::fmt::Debug for Queued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (kind, saga) = match &self.job {
            Job::Write(write) => ("write", write.lease.saga),
            Job::Create(saga) => ("create", saga.id),
        };
        f.debug_struct("Queued")
            .field("kind", &kind)
            .field("saga", &saga)
            .finish()
    }
}

impl Writers {
    /// Starts `count` writer tasks on the current runtime (none: every write goes alone).
    pub(super) fn start(pool: PgPool, channel: String, count: usize) -> Self {
        let busy = Arc::new(InFlight::default());
        if count == 0 {
            return Self {
                queue: None,
                busy,
                pool,
                channel,
            };
        }
        let (queue, receiver) = mpsc::unbounded_channel::<Queued>();
        let receiver = Arc::new(Mutex::new(receiver));
        for _ in 0..count {
            let receiver = Arc::clone(&receiver);
            let busy = Arc::clone(&busy);
            let pool = pool.clone();
            let channel = channel.clone();
            tokio::spawn(async move {
                loop {
                    let mut group = Vec::new();
                    let done = {
                        let mut receiver = receiver.lock().await;
                        match receiver.recv().await {
                            Some(first) => group.push(first),
                            None => return,
                        }
                        // From its first job on, this writer's statement counts as in flight:
                        // callers queue behind it rather than write past it.
                        let done = Busy::start(&busy);
                        gather(&mut receiver, &busy, &mut group).await;
                        done
                    };
                    write_group(&pool, &channel, group).await;
                    drop(done);
                }
            });
        }
        Self {
            queue: Some(queue),
            busy,
            pool,
            channel,
        }
    }

    /// When no statement is being written at all, a caller writes its own: no hand-over to a
    /// writer task, the lowest latency when load is light. Otherwise writes queue for the
    /// writers, which group them.
    fn direct_turn(&self) -> Option<Busy> {
        self.busy
            .count
            .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| Busy(Arc::clone(&self.busy)))
    }

    /// Writes one saga's changes: alone when nothing else is being written or no writers are
    /// configured, else with whatever else is waiting. `Ok(false)`: the fence did not hold
    /// (nothing was written).
    pub(super) async fn write(&self, write: Write) -> Result<bool> {
        self.run(Job::Write(write)).await
    }

    /// Creates a saga (its changes already checked): alone when nothing else is being written
    /// or no writers are configured, else with whatever else is waiting. `Ok(false)`: its start
    /// key exists already (nothing was written).
    pub(super) async fn create(&self, saga: NewSaga) -> Result<bool> {
        self.run(Job::Create(Box::new(saga))).await
    }

    async fn run(&self, job: Job) -> Result<bool> {
        // Only the wait for a writer stays in the caller's future (it is held for every saga
        // in flight); a job written here is boxed with what it needs.
        let outcome = match self.submit(job) {
            Ok(outcome) => outcome,
            Err((job, busy)) => {
                return Box::pin(async move {
                    let _busy = busy;
                    alone(&self.pool, &job, &self.channel).await
                })
                .await
            }
        };
        // A writer that took the job and stopped before answering may have committed it:
        // report it as unavailable, so that the caller reads the saga back before writing again.
        outcome.await.unwrap_or_else(|_| {
            Err(Error::StoreUnavailable(
                "the store's writer stopped before answering; the write may have been made".into(),
            ))
        })
    }

    /// Hands `job` to the writers; gives it back (with the turn it holds, if any) when its
    /// caller is to write it: nothing else is being written, no writers are configured, or
    /// they are gone (their runtime shut down).
    fn submit(
        &self,
        job: Job,
    ) -> std::result::Result<oneshot::Receiver<Result<bool>>, (Job, Option<Busy>)> {
        let queue = match (&self.queue, self.direct_turn()) {
            (Some(queue), None) => queue,
            (_, busy) => return Err((job, busy)),
        };
        let (done, outcome) = oneshot::channel();
        match queue.send(Queued { job, done }) {
            Ok(()) => Ok(outcome),
            Err(unsent) => Err((unsent.0.job, None)),
        }
    }
}

/// Adds to `group` (which holds the first job) what waits in the queue, up to [`MAX_BATCH`].
/// While another statement is in flight (besides this writer's own) and fewer than
/// [`OVERLAP_AT`] jobs are gathered, waits for that statement to end, at most
/// [`OVERLAP_AFTER`], taking jobs as they arrive.
async fn gather(
    receiver: &mut mpsc::UnboundedReceiver<Queued>,
    busy: &InFlight,
    group: &mut Vec<Queued>,
) {
    // Set up only if this writer has to wait.
    let mut limit = None;
    loop {
        while group.len() < MAX_BATCH {
            match receiver.try_recv() {
                Ok(next) => group.push(next),
                Err(_) => break,
            }
        }
        if group.len() >= OVERLAP_AT || busy.count.load(Ordering::Acquire) <= 1 {
            return;
        }
        // The count is checked again after every wake-up, so a signal spent elsewhere, or one
        // left over from an earlier statement, costs a turn of the loop, never a stall: a
        // statement that ends after the check above leaves a signal for `notified`.
        let limit = limit.get_or_insert_with(|| Box::pin(tokio::time::sleep(OVERLAP_AFTER)));
        tokio::select! {
            () = busy.ended.notified() => {}
            () = limit.as_mut() => return,
            next = receiver.recv() => match next {
                Some(next) => group.push(next),
                None => return,
            },
        }
    }
}

/// Runs one job in a statement of its own.
async fn alone(pool: &PgPool, job: &Job, channel: &str) -> Result<bool> {
    match job {
        Job::Write(write) => execute_one(pool, write, channel).await,
        Job::Create(saga) => create(pool, saga, saga_core::now(), channel).await,
    }
}

/// Writes a group: in one statement, except creations of a saga id repeated in it.
async fn write_group(pool: &PgPool, channel: &str, group: Vec<Queued>) {
    // A saga id created twice in one statement would be inserted once and answered twice as
    // new: a repeated id waits for the statement, then goes alone and is told it exists.
    let mut ids = HashSet::new();
    let (group, repeated): (Vec<Queued>, Vec<Queued>) =
        group.into_iter().partition(|queued| match &queued.job {
            Job::Create(saga) => ids.insert(saga.id),
            Job::Write(_) => true,
        });
    write_statement(pool, channel, group).await;
    for queued in repeated {
        let outcome = alone(pool, &queued.job, channel).await;
        let _ = queued.done.send(outcome);
    }
}

/// Writes a group (no saga created twice) in one statement; if the statement fails for its
/// content, runs each job alone so that only the offending one fails.
async fn write_statement(pool: &PgPool, channel: &str, group: Vec<Queued>) {
    let mut writes: Vec<&Write> = Vec::new();
    let mut creations: Vec<&NewSaga> = Vec::new();
    for queued in &group {
        match &queued.job {
            Job::Write(write) => writes.push(write),
            Job::Create(saga) => creations.push(saga),
        }
    }
    let now = saga_core::now();
    match execute(pool, &writes, &creations, now, channel).await {
        Ok(outcome) => {
            let mut fenced = outcome.fenced.into_iter();
            let mut created = outcome.created.into_iter();
            for queued in group {
                let done = match queued.job {
                    Job::Write(_) => fenced.next(),
                    Job::Create(_) => created.next(),
                };
                let _ = queued.done.send(Ok(done.unwrap_or(false)));
            }
        }
        Err(err) if group.len() == 1 => {
            if let Some(queued) = group.into_iter().next() {
                let err = match &queued.job {
                    Job::Write(write) => crate::error::refused_for(err, write.lease.saga),
                    Job::Create(_) => err,
                };
                let _ = queued.done.send(Err(err));
            }
        }
        // A saga row held locked by someone else: nothing committed. Each write goes alone,
        // so that only the locked saga's write waits (and fails) again.
        Err(err) if is_lock_timeout(&err) => {
            for queued in group {
                let outcome = alone(pool, &queued.job, channel).await;
                let _ = queued.done.send(outcome);
            }
        }
        Err(Error::StoreUnavailable(err)) => {
            // The statement may have committed with only its answer lost: each caller decides
            // (the worker reads the saga back before writing again).
            let text = err.to_string();
            for queued in group {
                let _ = queued
                    .done
                    .send(Err(Error::StoreUnavailable(text.clone().into())));
            }
        }
        Err(_) => {
            for queued in group {
                let outcome = alone(pool, &queued.job, channel).await;
                let _ = queued.done.send(outcome);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use saga_core::{FencingToken, WorkerId};

    /// A queued write of a fresh saga (its outcome is not read).
    fn job() -> Queued {
        let (done, _) = oneshot::channel();
        Queued {
            job: Job::Write(Write {
                lease: Lease {
                    saga: SagaId::new(),
                    owner: WorkerId::new("gather"),
                    token: FencingToken(1),
                    expires_at: saga_core::now(),
                    taken_over_from: None,
                },
                changes: Vec::new(),
            }),
            done,
        }
    }

    /// Another statement in flight, and this writer's own.
    fn two_in_flight() -> (Arc<InFlight>, Busy, Busy) {
        let in_flight = Arc::new(InFlight::default());
        let other = Busy::start(&in_flight);
        let own = Busy::start(&in_flight);
        (in_flight, other, own)
    }

    #[tokio::test(start_paused = true)]
    async fn a_writer_waits_for_the_statement_in_flight_and_takes_what_arrives_meanwhile() {
        let (in_flight, other, _own) = two_in_flight();
        let (queue, mut receiver) = mpsc::unbounded_channel();
        let mut group = vec![job()];
        queue.send(job()).ok();
        {
            let gathering = gather(&mut receiver, &in_flight, &mut group);
            tokio::pin!(gathering);
            let waited = tokio::time::timeout(OVERLAP_AFTER / 2, &mut gathering).await;
            assert!(waited.is_err(), "two jobs wait for the statement in flight");
            queue.send(job()).ok();
            drop(other);
            gathering.await;
        }
        assert_eq!(
            group.len(),
            3,
            "the job that arrived meanwhile goes in the same statement"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_writer_starts_beside_the_statement_in_flight_once_enough_jobs_wait() {
        let (in_flight, _other, _own) = two_in_flight();
        let (queue, mut receiver) = mpsc::unbounded_channel();
        let mut group = vec![job()];
        for _ in 1..OVERLAP_AT {
            queue.send(job()).ok();
        }
        let gathered = tokio::time::timeout(
            OVERLAP_AFTER / 2,
            gather(&mut receiver, &in_flight, &mut group),
        )
        .await;
        assert!(gathered.is_ok(), "{OVERLAP_AT} jobs do not wait");
        assert_eq!(group.len(), OVERLAP_AT);
    }

    #[tokio::test(start_paused = true)]
    async fn a_writer_starts_beside_a_statement_held_up_after_the_time_limit() {
        let (in_flight, _other, _own) = two_in_flight();
        let (_queue, mut receiver) = mpsc::unbounded_channel();
        let mut group = vec![job()];
        let started = tokio::time::Instant::now();
        gather(&mut receiver, &in_flight, &mut group).await;
        assert!(started.elapsed() >= OVERLAP_AFTER, "waited for the limit");
        assert_eq!(group.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_writer_alone_in_flight_does_not_wait() {
        let in_flight = Arc::new(InFlight::default());
        let _own = Busy::start(&in_flight);
        let (queue, mut receiver) = mpsc::unbounded_channel();
        let mut group = vec![job()];
        queue.send(job()).ok();
        let started = tokio::time::Instant::now();
        gather(&mut receiver, &in_flight, &mut group).await;
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert_eq!(group.len(), 2, "what waits in the queue goes along");
    }
}
