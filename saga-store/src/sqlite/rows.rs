//! SQLite rows <-> saga-core records: every text, number and JSON column checked on the way in.

use chrono::{DateTime, Utc};
use saga_core::{
    Attempt, Error, Event, EventKind, FencingToken, IdempotencyKey, Intervention, InterventionId,
    InterventionKind, InterventionStatus, NewIntervention, Phase, SagaId, SagaRecord, SagaType,
    StepIndex, StepName, StepRecord, Timestamp, WorkerId,
};
use serde_json::Value;
use sqlx::sqlite::SqliteRow;
use sqlx::Row;

/// Milliseconds since the epoch, as stored.
pub(super) fn millis(at: Timestamp) -> i64 {
    at.timestamp_millis()
}

/// Reads columns of one row of one saga, turning every failure into `CorruptRecord`.
pub(super) struct Reader<'r> {
    row: &'r SqliteRow,
    saga: SagaId,
}

impl<'r> Reader<'r> {
    pub(super) fn new(row: &'r SqliteRow, saga: SagaId) -> Self {
        Self { row, saga }
    }

    fn corrupt(&self, column: &str, reason: impl std::fmt::Display) -> Error {
        Error::CorruptRecord {
            saga: self.saga,
            reason: format!("column `{column}`: {reason}"),
        }
    }

    pub(super) fn text(&self, column: &str) -> Result<String, Error> {
        self.row
            .try_get::<String, _>(column)
            .map_err(|err| self.corrupt(column, err))
    }

    pub(super) fn opt_text(&self, column: &str) -> Result<Option<String>, Error> {
        self.row
            .try_get::<Option<String>, _>(column)
            .map_err(|err| self.corrupt(column, err))
    }

    pub(super) fn int(&self, column: &str) -> Result<i64, Error> {
        self.row
            .try_get::<i64, _>(column)
            .map_err(|err| self.corrupt(column, err))
    }

    pub(super) fn opt_int(&self, column: &str) -> Result<Option<i64>, Error> {
        self.row
            .try_get::<Option<i64>, _>(column)
            .map_err(|err| self.corrupt(column, err))
    }

    pub(super) fn time(&self, column: &str) -> Result<Timestamp, Error> {
        let ms = self.int(column)?;
        from_millis(ms).ok_or_else(|| self.corrupt(column, format!("{ms} is not a valid time")))
    }

    pub(super) fn opt_time(&self, column: &str) -> Result<Option<Timestamp>, Error> {
        self.opt_int(column)?
            .map(|ms| {
                from_millis(ms)
                    .ok_or_else(|| self.corrupt(column, format!("{ms} is not a valid time")))
            })
            .transpose()
    }

    pub(super) fn json(&self, column: &str) -> Result<Value, Error> {
        let text = self.text(column)?;
        serde_json::from_str(&text)
            .map_err(|err| self.corrupt(column, format!("malformed JSON: {err}")))
    }

    pub(super) fn opt_json(&self, column: &str) -> Result<Option<Value>, Error> {
        self.opt_text(column)?
            .map(|text| {
                serde_json::from_str(&text)
                    .map_err(|err| self.corrupt(column, format!("malformed JSON: {err}")))
            })
            .transpose()
    }

    pub(super) fn parsed<T, E: std::fmt::Display>(
        &self,
        column: &str,
        parse: impl FnOnce(&str) -> Result<T, E>,
    ) -> Result<T, Error> {
        let text = self.text(column)?;
        parse(&text).map_err(|err| self.corrupt(column, err))
    }

    pub(super) fn u32(&self, column: &str) -> Result<u32, Error> {
        let value = self.int(column)?;
        u32::try_from(value).map_err(|_| self.corrupt(column, format!("{value} is out of range")))
    }
}

fn from_millis(ms: i64) -> Option<Timestamp> {
    DateTime::<Utc>::from_timestamp_millis(ms)
}

/// Parses a saga id read from any table.
pub(super) fn saga_id(row: &SqliteRow, column: &str) -> Result<SagaId, Error> {
    let text: String = row
        .try_get(column)
        .map_err(|err| Error::Store(Box::new(err)))?;
    text.parse()
        .map_err(|err| Error::Store(format!("column `{column}` holds no saga id: {err}").into()))
}

pub(super) fn saga_record(row: &SqliteRow) -> Result<SagaRecord, Error> {
    let id = saga_id(row, "id")?;
    let r = Reader::new(row, id);
    Ok(SagaRecord {
        id,
        saga_type: SagaType::new(r.text("saga_type")?),
        version: r.u32("version")?,
        fingerprint: r.text("fingerprint")?,
        status: r.parsed("status", str::parse)?,
        status_reason: r.opt_text("status_reason")?,
        input: r.json("input")?,
        input_hash: r.text("input_hash")?,
        idempotency_key: r.opt_text("idempotency_key")?.map(IdempotencyKey::new),
        next_run_at: r.opt_time("next_run_at")?,
        lease_owner: r.opt_text("lease_owner")?.map(WorkerId::new),
        lease_expires_at: r.opt_time("lease_expires_at")?,
        fencing_token: FencingToken(r.int("fencing_token")?),
        trace_context: r.opt_text("trace_context")?,
        cancel_requested: r.opt_text("cancel_requested")?,
        created_at: r.time("created_at")?,
        updated_at: r.time("updated_at")?,
    })
}

pub(super) fn step_record(row: &SqliteRow, saga: SagaId) -> Result<StepRecord, Error> {
    let r = Reader::new(row, saga);
    Ok(StepRecord {
        index: StepIndex(r.u32("step_index")?),
        phase: r.parsed("phase", str::parse::<Phase>)?,
        name: StepName::new(r.text("name")?),
        status: r.parsed("status", str::parse)?,
        attempt: Attempt(r.u32("attempt")?),
        idempotency_key: IdempotencyKey::new(r.text("idempotency_key")?),
        output: r.opt_json("output")?,
        last_error: r.opt_text("last_error")?,
        next_attempt_at: r.opt_time("next_attempt_at")?,
        started_at: r.opt_time("started_at")?,
        finished_at: r.opt_time("finished_at")?,
    })
}

pub(super) fn event(row: &SqliteRow) -> Result<Event, Error> {
    let saga = saga_id(row, "saga_id")?;
    let r = Reader::new(row, saga);
    Ok(Event {
        seq: r.int("seq")?,
        saga_id: saga,
        at: r.time("at")?,
        kind: r.parsed("kind", |text| {
            EventKind::parse(text).ok_or_else(|| format!("unknown event kind `{text}`"))
        })?,
        step: r.opt_text("step")?.map(StepName::new),
        phase: r
            .opt_text("phase")?
            .map(|text| text.parse::<Phase>())
            .transpose()
            .map_err(|err| r.corrupt("phase", err))?,
        attempt: r
            .opt_int("attempt")?
            .map(|n| u32::try_from(n).map(Attempt))
            .transpose()
            .map_err(|err| r.corrupt("attempt", err))?,
        detail: r.opt_text("detail")?,
    })
}

pub(super) fn intervention(row: &SqliteRow) -> Result<Intervention, Error> {
    let saga = saga_id(row, "saga_id")?;
    let r = Reader::new(row, saga);
    let step = match (r.opt_int("step_index")?, r.opt_text("step_name")?) {
        (Some(index), Some(name)) => Some((
            StepIndex(u32::try_from(index).map_err(|err| r.corrupt("step_index", err))?),
            StepName::new(name),
        )),
        _ => None,
    };
    Ok(Intervention {
        saga_id: saga,
        item: NewIntervention {
            id: r.parsed("id", |text| text.parse::<InterventionId>())?,
            kind: r.parsed("kind", |text| {
                InterventionKind::parse(text).ok_or_else(|| format!("unknown kind `{text}`"))
            })?,
            step,
            phase: r
                .opt_text("phase")?
                .map(|text| text.parse::<Phase>())
                .transpose()
                .map_err(|err| r.corrupt("phase", err))?,
            idempotency_key: r.opt_text("idempotency_key")?.map(IdempotencyKey::new),
            input: r.opt_json("input")?,
            output: r.opt_json("output")?,
            error: r.text("error")?,
            parked_from: r
                .opt_text("parked_from")?
                .map(|text| text.parse::<saga_core::SagaStatus>())
                .transpose()
                .map_err(|err| r.corrupt("parked_from", err))?,
        },
        status: r.parsed("status", |text| {
            InterventionStatus::parse(text).ok_or_else(|| format!("unknown status `{text}`"))
        })?,
        opened_at: r.time("opened_at")?,
        resolved_at: r.opt_time("resolved_at")?,
        resolved_by: r.opt_text("resolved_by")?,
        resolution: r.opt_text("resolution")?,
        resolution_reason: r.opt_text("resolution_reason")?,
    })
}
