//! A saga's creation as one statement: the row, its first step changes and its history events
//! in a single `WITH … SELECT`, one round trip and one commit.
//!
//! Every sub-statement joins the `inst` CTE (the inserted row), so a start key that exists
//! already writes nothing.

use saga_core::store::{Change, EventData, NewSaga};
use saga_core::{Error, Result, SagaId, Timestamp};
use sqlx::postgres::PgArguments;
use sqlx::{Arguments, Encode, Postgres, Type};

/// A statement under construction: its text and its bound values.
pub(super) struct Statement {
    pub(super) sql: String,
    pub(super) args: PgArguments,
    count: usize,
    /// Whether the final SELECT wakes idle workers (a saga became due now).
    wake: bool,
}

/// What the compiled statement's single row says.
pub(super) const FENCED: &str = "fenced";

impl Statement {
    fn new() -> Self {
        Self {
            sql: String::with_capacity(2048),
            args: PgArguments::default(),
            count: 0,
            wake: false,
        }
    }

    /// Binds a value and returns its placeholder.
    fn bind<'q, T>(&mut self, value: T) -> Result<String>
    where
        T: Encode<'q, Postgres> + Type<Postgres> + 'q,
    {
        self.args
            .add(value)
            .map_err(|err| Error::Store(format!("binding a value failed: {err}").into()))?;
        self.count += 1;
        Ok(format!("${}", self.count))
    }
}

fn attempt_i32(value: u32) -> i32 {
    i32::try_from(value).unwrap_or(i32::MAX)
}

/// The creation of `saga` with its first changes, as one statement. Its row has `fenced` = 0
/// when the start key exists already (nothing was written).
pub(super) fn create(saga: &NewSaga, now: Timestamp, channel: &str) -> Result<Statement> {
    let mut st = Statement::new();
    let id = st.bind(saga.id.as_uuid())?;
    let at = st.bind(now)?;
    let saga_type = st.bind(saga.saga_type.as_str().to_owned())?;
    let version = st.bind(attempt_i32(saga.version))?;
    let fingerprint = st.bind(saga.fingerprint.clone())?;
    let input = st.bind(saga.input.clone())?;
    let input_hash = st.bind(saga.input_hash.clone())?;
    let key = st.bind(
        saga.idempotency_key
            .as_ref()
            .map(|key| key.as_str().to_owned()),
    )?;
    let trace = st.bind(saga.trace_context.clone())?;
    let owner = st.bind(
        saga.lease
            .as_ref()
            .map(|(owner, _)| owner.as_str().to_owned()),
    )?;
    let until = st.bind(saga.lease.as_ref().map(|(_, until)| *until))?;
    let token = st.bind(i64::from(saga.lease.is_some()))?;
    // A saga nobody holds is claimed by whichever worker wakes first.
    st.wake = saga.lease.is_none();
    st.sql = format!(
        "WITH inst AS (
             INSERT INTO saga_instances (id, saga_type, version, fingerprint, status, input,
                 input_hash, idempotency_key, next_run_at, fencing_token, trace_context,
                 created_at, updated_at, lease_owner, lease_expires_at)
             VALUES ({id}, {saga_type}, {version}, {fingerprint}, 'running', {input},
                 {input_hash}, {key}, {at}, {token}, {trace}, {at}, {at}, {owner}, {until})
             ON CONFLICT (idempotency_key) DO NOTHING
             RETURNING id)"
    );
    let mut events = vec![EventData {
        kind: saga_core::EventKind::SagaStarted,
        step: None,
        phase: None,
        attempt: None,
        detail: Some(format!("{} v{}", saga.saga_type, saga.version)),
    }];
    events.extend(saga.changes.iter().filter_map(Change::event));
    finish(&mut st, saga.id, &saga.changes, events, &at, channel)?;
    Ok(st)
}

/// Appends the first steps (new rows of a new saga: nothing to conflict with), the events and
/// the final SELECT (with its wake-up).
fn finish(
    st: &mut Statement,
    saga: SagaId,
    changes: &[Change],
    events: Vec<EventData>,
    at: &str,
    channel: &str,
) -> Result<()> {
    for (n, change) in changes.iter().enumerate() {
        match change {
            Change::BeginStep {
                index,
                name,
                phase,
                attempt,
                key,
            } => {
                let index = st.bind(attempt_i32(index.0))?;
                let phase_text = st.bind(phase.as_str())?;
                let step = st.bind(name.as_str().to_owned())?;
                let attempt = st.bind(attempt_i32(attempt.0))?;
                let key = st.bind(key.as_str().to_owned())?;
                st.sql.push_str(&format!(
                    ",
         c{n} AS (
             INSERT INTO saga_steps (saga_id, step_index, phase, name, status, attempt,
                 idempotency_key, started_at)
             SELECT inst.id, {index}, {phase_text}, {step}, 'in_progress', {attempt}, {key}, {at}
               FROM inst)"
                ));
            }
            // `check_initial_changes` lets only BeginStep through.
            Change::CompleteStep { .. }
            | Change::FailStep { .. }
            | Change::Escalate(_)
            | Change::SetStatus { .. }
            | Change::Release { .. } => {
                return Err(Error::InvalidAction(format!(
                    "saga {saga}: only BeginStep can be written with the creation"
                )))
            }
        }
    }
    if !events.is_empty() {
        let mut kinds = Vec::with_capacity(events.len());
        let mut steps = Vec::with_capacity(events.len());
        let mut phases = Vec::with_capacity(events.len());
        let mut attempts = Vec::with_capacity(events.len());
        let mut details = Vec::with_capacity(events.len());
        for event in events {
            kinds.push(event.kind.as_str().to_owned());
            steps.push(event.step.map(|step| step.as_str().to_owned()));
            phases.push(event.phase.map(|phase| phase.as_str().to_owned()));
            attempts.push(event.attempt.map(|attempt| attempt_i32(attempt.0)));
            details.push(event.detail);
        }
        let kinds = st.bind(kinds)?;
        let steps = st.bind(steps)?;
        let phases = st.bind(phases)?;
        let attempts = st.bind(attempts)?;
        let details = st.bind(details)?;
        st.sql.push_str(&format!(
            ",
         events AS (
             INSERT INTO saga_events (saga_id, at, kind, step, phase, attempt, detail)
             SELECT inst.id, {at}, e.kind, e.step, e.phase, e.attempt, e.detail
               FROM inst,
                    UNNEST({kinds}::text[], {steps}::text[], {phases}::text[], {attempts}::int[],
                           {details}::text[])
                    WITH ORDINALITY AS e(kind, step, phase, attempt, detail, n)
              ORDER BY e.n)"
        ));
    }
    st.sql
        .push_str("\n         SELECT (SELECT COUNT(*) FROM inst) AS fenced");
    if st.wake {
        let channel = st.bind(channel.to_owned())?;
        st.sql.push_str(&format!(
            ",
                CASE WHEN EXISTS (SELECT 1 FROM inst) THEN pg_notify({channel}, '')::text END
                    AS woke"
        ));
    }
    Ok(())
}
