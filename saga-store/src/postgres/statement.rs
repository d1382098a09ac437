//! The statement that writes the plans of many sagas at once, and its columns.
//!
//! Every write (a worker's fenced write, an operator's decided one, a creation) is a plan
//! compiled in `saga-core` ([`WritePlan`], [`CreationPlan`]); this module only lays plans out as
//! the array columns of one of a few fixed statements (`UNNEST`) — the saga rows, their step
//! phases, interventions, history events, and sagas to create — and reads the answer. Variants
//! leave out the parts a group does not need (interventions, which nearly no write has;
//! creations), since the server sets up every part on each execution even when its arrays are
//! empty. Their text never changes, so every connection prepares each once.
//!
//! Rows are found through `= ANY(array)` on their keys, so that the plan the server caches for
//! the statement (first made while the tables are small) stays an index lookup as they grow.
//!
//! Every row a write adds or changes joins that write's own fence (by its position in the
//! statement, not by saga id), so a stale write grouped with a current write of the same saga
//! writes nothing. A step phase appears once per plan (the core folds repeated touches), so
//! the statement's parts, which all see the same snapshot and none another's rows, never touch
//! one row twice. A step write whose stored phase does not meet its precondition makes the
//! statement raise through `saga_refuse`, which rolls all of it back; the caller then finds out
//! why from the stored saga ([`write::not_admitted`](saga_core::store::write::not_admitted)).
//!
//! Parameters are numbered in the order of the parts below, and bound part by part in the same
//! order by [`Columns::bind`]; a test checks each statement's numbers against the binds.

use std::collections::HashSet;

use saga_core::store::write::{
    CancelRequest, CreationPlan, LeaseChange, Precondition, StepWrite, WritePlan,
};
use saga_core::store::{EventData, NewSaga};
use saga_core::{Error, Lease, Result, SagaId, Timestamp};
use sqlx::postgres::{PgArguments, PgExecutor, PgRow};
use sqlx::{Postgres, Row};
use uuid::Uuid;

use crate::error::classify;

/// A query with some of its parameters bound.
type Query<'q> = sqlx::query::Query<'q, Postgres, PgArguments>;

/// One saga's write: its plan, fenced by the lease when it has one (an operator's write has
/// none: it holds the saga's row locked instead).
#[derive(Debug)]
pub(super) struct Write {
    pub(super) saga: SagaId,
    pub(super) lease: Option<Lease>,
    pub(super) plan: WritePlan,
}

/// The saga rows: $1..$16 each write's fence and the update of its saga row (what it waits
/// for, when a signal that arrived meanwhile makes it due now, and the signals it may have
/// received for the write to hold); $17 whether to wake idle workers, $18 the wake-up channel.
/// Every time the statement records is the
/// server's (`now()`, to the millisecond, as every store keeps times): the clock workers
/// schedule by, whatever the clock of the process that writes.
macro_rules! sagas {
    () => {
        "
WITH s AS (
    SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::int8[], $4::bool[], $5::text[], $6::text[],
                         $7::bool[], $8::text[], $9::bool[], $10::bool[], $11::bool[],
                         $12::timestamptz[], $13::int8[], $14::bool[], $15::text[],
                         $16::int8[])
        WITH ORDINALITY
        AS t(id, owner, token, forward, status, reason, clear_cancel, cancel_request, release,
             bump, set_next, next_run_at, wake_seen, set_waiting, waiting, signals_at_most, n)),
inst AS (
    UPDATE saga_instances i
       SET updated_at = date_trunc('milliseconds', now()),
           status = COALESCE(s.status, i.status),
           status_reason = CASE WHEN s.status IS NULL THEN i.status_reason ELSE s.reason END,
           cancel_requested = CASE WHEN s.clear_cancel THEN NULL
                                   ELSE COALESCE(s.cancel_request, i.cancel_requested) END,
           lease_owner = CASE WHEN s.release THEN NULL ELSE i.lease_owner END,
           lease_expires_at = CASE WHEN s.release THEN NULL ELSE i.lease_expires_at END,
           fencing_token = CASE WHEN s.bump THEN i.fencing_token + 1 ELSE i.fencing_token END,
           next_run_at = CASE WHEN NOT s.set_next THEN i.next_run_at
                              -- A signal arrived since the worker read the saga: due now.
                              WHEN s.wake_seen IS NOT NULL AND i.signals_received > s.wake_seen
                                   THEN date_trunc('milliseconds', now())
                              ELSE s.next_run_at END,
           waiting_for = CASE WHEN s.set_waiting THEN s.waiting ELSE i.waiting_for END
      FROM s
     WHERE i.id = ANY($1::uuid[]) AND i.id = s.id
       AND (s.owner IS NULL OR (i.lease_owner = s.owner AND i.fencing_token = s.token))
       AND (NOT s.forward OR i.cancel_requested IS NULL)
       AND (s.signals_at_most IS NULL OR i.signals_received <= s.signals_at_most)
    RETURNING i.id, s.n,
              -- Made due now by a signal that raced the wait: wake idle workers for it.
              (s.set_next AND s.wake_seen IS NOT NULL AND i.signals_received > s.wake_seen)
                  AS signalled),
"
    };
}

/// The step phases: $19..$32. A phase whose first change in its write begins it (it has a key)
/// is inserted, or updated if stored and not completed; such a write always begins an attempt
/// (its start time and attempt are set) and sets an error only to a text, so only its output
/// needs the row's own flag, read on the rare conflict. A phase that must be stored (its first
/// change completes or fails it) is updated.
macro_rules! steps {
    () => {
        "
x AS (
    SELECT x.* FROM UNNEST($19::uuid[], $20::int4[], $21::text[], $22::text[], $23::text[],
                           $24::text[], $25::int4[], $26::bool[], $27::bool[], $28::jsonb[],
                           $29::text[], $30::timestamptz[], $31::bool[], $32::int8[])
        AS x(saga, idx, phase, name, key, status, attempt, began, set_output, output, error,
             next_at, finished, w)
      JOIN inst ON inst.n = x.w),
begun AS (
    INSERT INTO saga_steps AS st (saga_id, step_index, phase, name, status, attempt,
        idempotency_key, output, last_error, next_attempt_at, started_at, finished_at)
    SELECT saga, idx, phase, name, status, attempt, key, output, error, next_at, date_trunc('milliseconds', now()),
           CASE WHEN finished THEN date_trunc('milliseconds', now()) END
      FROM x
     WHERE key IS NOT NULL
    ON CONFLICT (saga_id, step_index, phase) DO UPDATE
       SET status = EXCLUDED.status, attempt = EXCLUDED.attempt,
           output = CASE WHEN (SELECT x.set_output FROM x
                                WHERE x.saga = EXCLUDED.saga_id AND x.idx = EXCLUDED.step_index
                                  AND x.phase = EXCLUDED.phase)
                         THEN EXCLUDED.output ELSE st.output END,
           last_error = COALESCE(EXCLUDED.last_error, st.last_error),
           next_attempt_at = EXCLUDED.next_attempt_at,
           started_at = EXCLUDED.started_at, finished_at = EXCLUDED.finished_at
     WHERE st.status <> 'completed'
    RETURNING 1),
finished AS (
    UPDATE saga_steps st
       SET status = x.status,
           attempt = COALESCE(x.attempt, st.attempt),
           output = CASE WHEN x.set_output THEN x.output ELSE st.output END,
           last_error = COALESCE(x.error, st.last_error),
           next_attempt_at = x.next_at,
           started_at = CASE WHEN x.began THEN date_trunc('milliseconds', now()) ELSE st.started_at END,
           finished_at = CASE WHEN x.finished THEN date_trunc('milliseconds', now()) END
      FROM x
     WHERE x.key IS NULL
       AND st.saga_id = ANY($19::uuid[])
       AND st.saga_id = x.saga AND st.step_index = x.idx AND st.phase = x.phase
    RETURNING 1),
"
    };
}

/// Interventions: $33..$44.
macro_rules! escalate {
    () => {
        "
escalated AS (
    INSERT INTO saga_interventions (id, saga_id, kind, step_index, step_name, phase,
        idempotency_key, input, output, error, status, opened_at, parked_from)
    SELECT e.id, e.saga, e.kind, e.idx, e.step, e.phase, e.key, e.input, e.output, e.error,
           'open', date_trunc('milliseconds', now()), e.parked_from
      FROM UNNEST($33::uuid[], $34::uuid[], $35::text[], $36::int4[], $37::text[], $38::text[],
                  $39::text[], $40::jsonb[], $41::jsonb[], $42::text[], $43::text[],
                  $44::int8[])
           AS e(id, saga, kind, idx, step, phase, key, input, output, error, parked_from, w)
      JOIN inst ON inst.n = e.w
    ON CONFLICT (id) DO NOTHING),
"
    };
}

/// History events: $45..$51.
macro_rules! history {
    () => {
        "
events AS (
    INSERT INTO saga_events (saga_id, at, kind, step, phase, attempt, detail)
    SELECT v.saga, date_trunc('milliseconds', now()), v.kind, v.step, v.phase, v.attempt, v.detail
      FROM UNNEST($45::uuid[], $46::text[], $47::text[], $48::text[], $49::int4[], $50::text[],
                  $51::int8[])
           WITH ORDINALITY AS v(saga, kind, step, phase, attempt, detail, w, n)
      JOIN inst ON inst.n = v.w
     ORDER BY v.n)
"
    };
}

/// Sagas created: $52..$63 the sagas (and $76, $77 their parents, for children), $64..$69 the
/// steps begun with them, $70..$75 their events (no trailing comma: it also ends
/// [`CREATE_SQL`]'s `WITH`). A start key that exists
/// already creates nothing (the caller reads the saga it started); rows of the same creation
/// join it by saga id.
macro_rules! creations {
    () => {
        "
new AS (
    INSERT INTO saga_instances (id, saga_type, version, fingerprint, status, input, input_hash,
        idempotency_key, next_run_at, fencing_token, trace_context, created_at, updated_at,
        lease_owner, lease_expires_at, deadline_at, parent_id, parent_step)
    SELECT k.id, k.saga_type, k.version, k.fingerprint, 'running', k.input, k.input_hash,
           k.key, date_trunc('milliseconds', now()), k.token, k.trace, date_trunc('milliseconds', now()), date_trunc('milliseconds', now()), k.owner, k.until,
           k.deadline, k.parent, k.parent_step
      FROM UNNEST($52::uuid[], $53::text[], $54::int4[], $55::text[], $56::jsonb[], $57::text[],
                  $58::text[], $59::text[], $60::text[], $61::timestamptz[], $62::int8[],
                  $63::timestamptz[], $76::uuid[], $77::text[])
           AS k(id, saga_type, version, fingerprint, input, input_hash, key, trace, owner,
                until, token, deadline, parent, parent_step)
     -- One order for every statement, so that two of them inserting the same start keys wait
     -- for each other in turn instead of deadlocking.
     ORDER BY k.key, k.id
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING id),
new_begun AS (
    INSERT INTO saga_steps (saga_id, step_index, phase, name, status, attempt, idempotency_key,
        started_at)
    SELECT nb.saga, nb.idx, nb.phase, nb.name, 'in_progress', nb.attempt, nb.key, date_trunc('milliseconds', now())
      FROM UNNEST($64::uuid[], $65::int4[], $66::text[], $67::text[], $68::int4[], $69::text[])
           AS nb(saga, idx, phase, name, attempt, key)
      JOIN new ON new.id = nb.saga),
new_events AS (
    INSERT INTO saga_events (saga_id, at, kind, step, phase, attempt, detail)
    SELECT nv.saga, date_trunc('milliseconds', now()), nv.kind, nv.step, nv.phase, nv.attempt, nv.detail
      FROM UNNEST($70::uuid[], $71::text[], $72::text[], $73::text[], $74::int4[], $75::text[])
           WITH ORDINALITY AS nv(saga, kind, step, phase, attempt, detail, n)
      JOIN new ON new.id = nv.saga
     ORDER BY nv.n)"
    };
}

/// The answer, and the refusal of step writes whose phase does not meet their precondition.
/// `$created`: the ids of sagas created, and `$woken`: the condition (besides `$17`) for
/// waking idle workers.
macro_rules! answer {
    ($created:expr, $woken:expr) => {
        concat!(
            "
SELECT ARRAY(SELECT n FROM inst) AS fenced, ",
            $created,
            " AS created,
       CASE WHEN (SELECT COUNT(*) FROM begun) + (SELECT COUNT(*) FROM finished)
                 < (SELECT COUNT(*) FROM x)
            THEN saga_refuse('a step write found its step phase in a state it cannot act on: a completed phase cannot begin again, and only a begun phase can complete or fail')
       END AS refused,
       CASE WHEN ($17 AND (",
            $woken,
            ")) OR EXISTS (SELECT 1 FROM inst WHERE signalled)
            THEN pg_notify($18, '')::text END AS woke"
        )
    };
}

/// A statement for a group of writes, made of the saga rows, the step phases, the `$part`s
/// given (none, or interventions), the history and the answer; `and creations` adds the
/// creations' parts.
macro_rules! statement {
    (writes $(, $part:expr)*) => {
        concat!(
            sagas!(),
            steps!(),
            $($part,)*
            history!(),
            answer!("'{}'::uuid[]", "EXISTS (SELECT 1 FROM inst)")
        )
    };
    (writes and creations $(, $part:expr)*) => {
        concat!(
            sagas!(),
            steps!(),
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

/// The statement for creations alone (a lone creation: the same parts as a group's, without the
/// writes' parts, which the server would set up for nothing). Parameters other than $17,
/// $18 and $52..$77 are bound (empty) but not read.
const CREATE_SQL: &str = concat!(
    "\nWITH",
    creations!(),
    "
SELECT '{}'::int8[] AS fenced, ARRAY(SELECT id FROM new) AS created,
       CASE WHEN $17 AND EXISTS (SELECT 1 FROM new) THEN pg_notify($18, '')::text END AS woke"
);

/// A step index, attempt or version as the `integer` it is stored as.
pub(super) fn int(value: u32) -> i32 {
    i32::try_from(value).unwrap_or(i32::MAX)
}

/// The saga rows ($1..$16).
#[derive(Default)]
struct SagaColumns {
    id: Vec<Uuid>,
    owner: Vec<Option<String>>,
    token: Vec<i64>,
    forward: Vec<bool>,
    status: Vec<Option<&'static str>>,
    reason: Vec<Option<String>>,
    clear_cancel: Vec<bool>,
    cancel_request: Vec<Option<String>>,
    release: Vec<bool>,
    bump: Vec<bool>,
    set_next: Vec<bool>,
    next_run_at: Vec<Option<Timestamp>>,
    wake_seen: Vec<Option<i64>>,
    set_waiting: Vec<bool>,
    waiting: Vec<Option<String>>,
    signals_at_most: Vec<Option<i64>>,
}

impl SagaColumns {
    fn push(&mut self, write: &Write) {
        let update = &write.plan.saga;
        self.id.push(write.saga.as_uuid());
        self.owner.push(
            write
                .lease
                .as_ref()
                .map(|lease| lease.owner.as_str().to_owned()),
        );
        self.token
            .push(write.lease.as_ref().map_or(0, |lease| lease.token.0));
        self.forward.push(write.plan.begins_forward);
        let (status, reason) = match &update.status {
            Some((status, reason)) => (Some(status.as_str()), reason.clone()),
            None => (None, None),
        };
        self.status.push(status);
        self.reason.push(reason);
        let (clear, request) = match &update.cancel {
            CancelRequest::Keep => (false, None),
            CancelRequest::Clear => (true, None),
            CancelRequest::Set(request) => (false, Some(request.clone())),
        };
        self.clear_cancel.push(clear);
        self.cancel_request.push(request);
        self.release.push(update.lease != LeaseChange::Keep);
        self.bump.push(update.lease == LeaseChange::Revoke);
        self.set_next.push(update.next_run_at.is_some());
        self.next_run_at.push(update.next_run_at.flatten());
        self.wake_seen.push(
            update
                .wake_if_signalled
                .map(|seen| i64::try_from(seen).unwrap_or(i64::MAX)),
        );
        self.set_waiting.push(update.waiting.is_some());
        self.waiting.push(update.waiting.clone().flatten());
        self.signals_at_most.push(
            write
                .plan
                .signals_at_most
                .map(|at_most| i64::try_from(at_most).unwrap_or(i64::MAX)),
        );
    }

    fn bind(self, query: Query<'_>) -> Query<'_> {
        query
            .bind(self.id)
            .bind(self.owner)
            .bind(self.token)
            .bind(self.forward)
            .bind(self.status)
            .bind(self.reason)
            .bind(self.clear_cancel)
            .bind(self.cancel_request)
            .bind(self.release)
            .bind(self.bump)
            .bind(self.set_next)
            .bind(self.next_run_at)
            .bind(self.wake_seen)
            .bind(self.set_waiting)
            .bind(self.waiting)
            .bind(self.signals_at_most)
    }
}

/// The step phases ($19..$32).
#[derive(Default)]
struct StepColumns {
    saga: Vec<Uuid>,
    index: Vec<i32>,
    phase: Vec<&'static str>,
    name: Vec<String>,
    key: Vec<Option<String>>,
    status: Vec<&'static str>,
    attempt: Vec<Option<i32>>,
    began: Vec<bool>,
    set_output: Vec<bool>,
    output: Vec<Option<serde_json::Value>>,
    error: Vec<Option<String>>,
    next_at: Vec<Option<Timestamp>>,
    finished: Vec<bool>,
    write: Vec<i64>,
}

impl StepColumns {
    fn push(&mut self, saga: Uuid, step: &StepWrite, position: i64) {
        self.saga.push(saga);
        self.index.push(int(step.index.0));
        self.phase.push(step.phase.as_str());
        self.name.push(step.name.as_str().to_owned());
        // Only a phase that may be absent carries the key it is inserted with.
        self.key.push(match step.requires {
            Precondition::NotCompleted => step.key.as_ref().map(|key| key.as_str().to_owned()),
            Precondition::Begun => None,
        });
        self.status.push(step.status.as_str());
        self.attempt
            .push(step.attempt.map(|attempt| int(attempt.0)));
        self.began.push(step.began);
        self.set_output.push(step.output.is_some());
        self.output.push(step.output.clone().flatten());
        self.error.push(step.error.clone());
        self.next_at.push(step.next_attempt_at);
        self.finished.push(step.finished);
        self.write.push(position);
    }

    fn bind(self, query: Query<'_>) -> Query<'_> {
        query
            .bind(self.saga)
            .bind(self.index)
            .bind(self.phase)
            .bind(self.name)
            .bind(self.key)
            .bind(self.status)
            .bind(self.attempt)
            .bind(self.began)
            .bind(self.set_output)
            .bind(self.output)
            .bind(self.error)
            .bind(self.next_at)
            .bind(self.finished)
            .bind(self.write)
    }
}

/// Interventions ($33..$44).
#[derive(Default)]
struct InterventionColumns {
    id: Vec<Uuid>,
    saga: Vec<Uuid>,
    kind: Vec<&'static str>,
    index: Vec<Option<i32>>,
    step: Vec<Option<String>>,
    phase: Vec<Option<&'static str>>,
    key: Vec<Option<String>>,
    input: Vec<Option<serde_json::Value>>,
    output: Vec<Option<serde_json::Value>>,
    error: Vec<String>,
    parked_from: Vec<Option<&'static str>>,
    write: Vec<i64>,
}

impl InterventionColumns {
    fn push(&mut self, saga: Uuid, item: &saga_core::NewIntervention, position: i64) {
        self.id.push(item.id.as_uuid());
        self.saga.push(saga);
        self.kind.push(item.kind.as_str());
        self.index
            .push(item.step.as_ref().map(|(index, _)| int(index.0)));
        self.step
            .push(item.step.as_ref().map(|(_, name)| name.as_str().to_owned()));
        self.phase.push(item.phase.map(|phase| phase.as_str()));
        self.key.push(
            item.idempotency_key
                .as_ref()
                .map(|key| key.as_str().to_owned()),
        );
        self.input.push(item.input.clone());
        self.output.push(item.output.clone());
        self.error.push(item.error.clone());
        self.parked_from
            .push(item.parked_from.map(|status| status.as_str()));
        self.write.push(position);
    }

    fn bind(self, query: Query<'_>) -> Query<'_> {
        query
            .bind(self.id)
            .bind(self.saga)
            .bind(self.kind)
            .bind(self.index)
            .bind(self.step)
            .bind(self.phase)
            .bind(self.key)
            .bind(self.input)
            .bind(self.output)
            .bind(self.error)
            .bind(self.parked_from)
            .bind(self.write)
    }
}

/// History events ($45..$51 for writes, with the position of their write; $70..$75 for
/// creations, without).
#[derive(Default)]
struct EventColumns {
    saga: Vec<Uuid>,
    kind: Vec<&'static str>,
    step: Vec<Option<String>>,
    phase: Vec<Option<&'static str>>,
    attempt: Vec<Option<i32>>,
    detail: Vec<Option<String>>,
    write: Vec<i64>,
}

impl EventColumns {
    fn push(&mut self, saga: Uuid, event: &EventData, position: i64) {
        self.saga.push(saga);
        self.kind.push(event.kind.as_str());
        self.step
            .push(event.step.as_ref().map(|step| step.as_str().to_owned()));
        self.phase.push(event.phase.map(|phase| phase.as_str()));
        self.attempt
            .push(event.attempt.map(|attempt| int(attempt.0)));
        self.detail.push(event.detail.clone());
        self.write.push(position);
    }

    /// Binds the columns, with the positions of their writes when `positions`.
    fn bind(self, query: Query<'_>, positions: bool) -> Query<'_> {
        let query = query
            .bind(self.saga)
            .bind(self.kind)
            .bind(self.step)
            .bind(self.phase)
            .bind(self.attempt)
            .bind(self.detail);
        if positions {
            query.bind(self.write)
        } else {
            query
        }
    }
}

/// Sagas to create ($52..$63) and the steps begun with them ($64..$69).
#[derive(Default)]
struct CreationColumns {
    id: Vec<Uuid>,
    saga_type: Vec<String>,
    version: Vec<i32>,
    fingerprint: Vec<String>,
    input: Vec<serde_json::Value>,
    hash: Vec<String>,
    key: Vec<Option<String>>,
    trace: Vec<Option<String>>,
    owner: Vec<Option<String>>,
    until: Vec<Option<Timestamp>>,
    token: Vec<i64>,
    deadline: Vec<Option<Timestamp>>,
    b_saga: Vec<Uuid>,
    b_index: Vec<i32>,
    b_phase: Vec<&'static str>,
    b_name: Vec<String>,
    b_attempt: Vec<i32>,
    b_key: Vec<String>,
    /// Bound last ($76, $77).
    parent: Vec<Option<Uuid>>,
    parent_step: Vec<Option<String>>,
}

impl CreationColumns {
    fn push(&mut self, saga: &NewSaga, plan: &CreationPlan) {
        let id = saga.id.as_uuid();
        self.id.push(id);
        self.saga_type.push(saga.saga_type.as_str().to_owned());
        self.version.push(int(saga.version));
        self.fingerprint.push(saga.fingerprint.clone());
        self.input.push(saga.input.clone());
        self.hash.push(saga.input_hash.clone());
        self.key.push(
            saga.idempotency_key
                .as_ref()
                .map(|key| key.as_str().to_owned()),
        );
        self.trace.push(saga.trace_context.clone());
        self.owner.push(
            saga.lease
                .as_ref()
                .map(|(owner, _)| owner.as_str().to_owned()),
        );
        self.until
            .push(saga.lease.as_ref().map(|(_, until)| *until));
        self.token.push(plan.token.0);
        self.deadline.push(saga.deadline);
        self.parent
            .push(saga.parent.as_ref().map(|parent| parent.saga.as_uuid()));
        self.parent_step.push(
            saga.parent
                .as_ref()
                .map(|parent| parent.step.as_str().to_owned()),
        );
        // A creation's step phases are all begun, new (`CreationPlan` accepts nothing else).
        for step in &plan.steps {
            self.b_saga.push(id);
            self.b_index.push(int(step.index.0));
            self.b_phase.push(step.phase.as_str());
            self.b_name.push(step.name.as_str().to_owned());
            self.b_attempt
                .push(step.attempt.map_or(1, |attempt| int(attempt.0)));
            self.b_key.push(
                step.key
                    .as_ref()
                    .map_or_else(String::new, |key| key.as_str().to_owned()),
            );
        }
    }

    /// Binds $52..$69; the parents ($76, $77) are bound by [`Columns::bind`], last.
    fn bind(self, query: Query<'_>) -> (Query<'_>, Vec<Option<Uuid>>, Vec<Option<String>>) {
        let query = query
            .bind(self.id)
            .bind(self.saga_type)
            .bind(self.version)
            .bind(self.fingerprint)
            .bind(self.input)
            .bind(self.hash)
            .bind(self.key)
            .bind(self.trace)
            .bind(self.owner)
            .bind(self.until)
            .bind(self.token)
            .bind(self.deadline)
            .bind(self.b_saga)
            .bind(self.b_index)
            .bind(self.b_phase)
            .bind(self.b_name)
            .bind(self.b_attempt)
            .bind(self.b_key);
        (query, self.parent, self.parent_step)
    }
}

/// The statement's inputs, part by part.
#[derive(Default)]
struct Columns {
    sagas: SagaColumns,
    steps: StepColumns,
    interventions: InterventionColumns,
    events: EventColumns,
    creations: CreationColumns,
    creation_events: EventColumns,
    wake: bool,
}

impl Columns {
    fn add(&mut self, write: &Write, position: i64, now: Timestamp) {
        let saga = write.saga.as_uuid();
        self.sagas.push(write);
        for step in &write.plan.steps {
            self.steps.push(saga, step, position);
        }
        for item in &write.plan.interventions {
            self.interventions.push(saga, item, position);
        }
        for event in &write.plan.events {
            self.events.push(saga, event, position);
        }
        self.wake |= write.plan.saga.wakes(now);
    }

    fn add_creation(&mut self, saga: &NewSaga, plan: &CreationPlan) {
        self.creations.push(saga, plan);
        for event in &plan.events {
            self.creation_events.push(saga.id.as_uuid(), event, 0);
        }
        // Nobody holds it: wake idle workers to claim it.
        self.wake |= saga.lease.is_none();
    }

    /// `sql` with every parameter bound, in the order of their numbers.
    fn bind<'q>(self, sql: &'q str, channel: &str) -> Query<'q> {
        let query = self.sagas.bind(sqlx::query(sql));
        let query = query.bind(self.wake).bind(channel.to_owned());
        let query = self.steps.bind(query);
        let query = self.interventions.bind(query);
        let query = self.events.bind(query, true);
        let (query, parent, parent_step) = self.creations.bind(query);
        self.creation_events
            .bind(query, false)
            .bind(parent)
            .bind(parent_step)
    }
}

/// What a statement did: for each write in order, whether its fence held (a write whose fence
/// did not hold wrote nothing); for each creation in order, whether it created its saga
/// (`false`: its start key exists already).
pub(super) struct Outcome {
    pub(super) fenced: Vec<bool>,
    pub(super) created: Vec<bool>,
}

/// Writes `writes` and creates `creations` (their plans compiled) in one statement.
pub(super) async fn execute<'e>(
    executor: impl PgExecutor<'e>,
    writes: &[&Write],
    creations: &[(&NewSaga, &CreationPlan)],
    now: Timestamp,
    channel: &str,
) -> Result<Outcome> {
    let mut columns = Columns::default();
    for (position, write) in (1..).zip(writes) {
        columns.add(write, position, now);
    }
    for (saga, plan) in creations {
        columns.add_creation(saga, plan);
    }
    let escalates = !columns.interventions.id.is_empty();
    let sql = match (writes.is_empty(), escalates, creations.is_empty()) {
        (true, _, false) => CREATE_SQL,
        (_, false, true) => SQL,
        (_, true, true) => ESCALATE_SQL,
        (_, false, false) => WITH_CREATIONS_SQL,
        (_, true, false) => ESCALATE_WITH_CREATIONS_SQL,
    };
    let row: PgRow = columns
        .bind(sql, channel)
        .fetch_one(executor)
        .await
        .map_err(|err| match (&err, creations) {
            // A lone creation refused for its id is named (in a group, each job then goes alone).
            (sqlx::Error::Database(db), [(saga, _)])
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
            .map(|(saga, _)| created.contains(&saga.id.as_uuid()))
            .collect(),
    })
}

/// Creates `saga` (its plan compiled) in one statement. `false`: its start key exists already.
pub(super) async fn create<'e>(
    executor: impl PgExecutor<'e>,
    saga: &NewSaga,
    plan: &CreationPlan,
    now: Timestamp,
    channel: &str,
) -> Result<bool> {
    let outcome = execute(executor, &[], &[(saga, plan)], now, channel).await?;
    Ok(outcome.created.first().copied().unwrap_or(false))
}

/// Writes one saga's plan in a statement of its own; whether its fence held.
pub(super) async fn execute_one<'e>(
    executor: impl PgExecutor<'e>,
    write: &Write,
    now: Timestamp,
    channel: &str,
) -> Result<bool> {
    let outcome = execute(executor, &[write], &[], now, channel).await?;
    Ok(outcome.fenced.first().copied().unwrap_or(false))
}

/// The error for a saga id that exists already (ids are fresh: a caller sending one again).
pub(super) fn id_exists(id: SagaId) -> Error {
    Error::Store(format!("saga id {id} already exists; start again with a fresh id").into())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use sqlx::{Arguments, Execute};

    /// The parameter numbers a statement's text reads.
    fn numbers(sql: &str) -> Vec<usize> {
        let mut found: Vec<usize> = sql
            .split('$')
            .skip(1)
            .filter_map(|rest| {
                let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                digits.parse().ok()
            })
            .collect();
        found.sort_unstable();
        found.dedup();
        found
    }

    #[test]
    fn every_parameter_a_statement_reads_is_bound_in_its_place() {
        let mut query = Columns::default().bind(ESCALATE_WITH_CREATIONS_SQL, "c");
        let bound = query.take_arguments().unwrap().unwrap().len();
        assert_eq!(
            numbers(ESCALATE_WITH_CREATIONS_SQL),
            (1..=bound).collect::<Vec<_>>(),
            "the statement with every part reads each bound parameter, numbered in bind order"
        );
        for sql in [SQL, ESCALATE_SQL, WITH_CREATIONS_SQL, CREATE_SQL] {
            assert!(
                numbers(sql).iter().all(|&n| (1..=bound).contains(&n)),
                "a variant reads only parameters that are bound"
            );
        }
        // The parts' comments give their ranges: the first and last number each part reads.
        assert_eq!(numbers(sagas!()), (1..=16).collect::<Vec<_>>());
        assert_eq!(numbers(steps!()), (19..=32).collect::<Vec<_>>());
        assert_eq!(numbers(escalate!()), (33..=44).collect::<Vec<_>>());
        assert_eq!(numbers(history!()), (45..=51).collect::<Vec<_>>());
        assert_eq!(numbers(creations!()), (52..=77).collect::<Vec<_>>());
    }
}
