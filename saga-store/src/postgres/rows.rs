//! Postgres rows <-> saga-core records.

use saga_core::{
    Attempt, Error, Event, EventKind, FencingToken, IdempotencyKey, Intervention, InterventionId,
    InterventionKind, InterventionStatus, NewIntervention, Phase, SagaId, SagaRecord, SagaType,
    StepIndex, StepName, StepRecord, Timestamp, WorkerId,
};
use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::Row;
use uuid::Uuid;

/// Reads columns of one row of one saga, turning every failure into `CorruptRecord`.
struct Reader<'r> {
    row: &'r PgRow,
    saga: SagaId,
}

impl Reader<'_> {
    fn corrupt(&self, column: &str, reason: impl std::fmt::Display) -> Error {
        Error::CorruptRecord {
            saga: self.saga,
            reason: format!("column `{column}`: {reason}"),
        }
    }

    fn get<T>(&self, column: &str) -> Result<T, Error>
    where
        T: for<'a> sqlx::Decode<'a, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
    {
        self.row
            .try_get::<T, _>(column)
            .map_err(|err| self.corrupt(column, err))
    }

    fn parsed<T, E: std::fmt::Display>(
        &self,
        column: &str,
        parse: impl FnOnce(&str) -> Result<T, E>,
    ) -> Result<T, Error> {
        let text: String = self.get(column)?;
        parse(&text).map_err(|err| self.corrupt(column, err))
    }

    fn opt_parsed<T, E: std::fmt::Display>(
        &self,
        column: &str,
        parse: impl FnOnce(&str) -> Result<T, E>,
    ) -> Result<Option<T>, Error> {
        let text: Option<String> = self.get(column)?;
        text.map(|text| parse(&text).map_err(|err| self.corrupt(column, err)))
            .transpose()
    }

    fn u32(&self, column: &str) -> Result<u32, Error> {
        let value: i32 = self.get(column)?;
        u32::try_from(value).map_err(|_| self.corrupt(column, format!("{value} is negative")))
    }

    fn opt_u32(&self, column: &str) -> Result<Option<u32>, Error> {
        let value: Option<i32> = self.get(column)?;
        value
            .map(|value| {
                u32::try_from(value)
                    .map_err(|_| self.corrupt(column, format!("{value} is negative")))
            })
            .transpose()
    }
}

fn id(row: &PgRow, column: &str) -> Result<SagaId, Error> {
    row.try_get::<Uuid, _>(column)
        .map(SagaId::from_uuid)
        .map_err(|err| Error::Store(Box::new(err)))
}

pub(super) fn saga_record(row: &PgRow) -> Result<SagaRecord, Error> {
    let saga = id(row, "id")?;
    let r = Reader { row, saga };
    Ok(SagaRecord {
        id: saga,
        saga_type: SagaType::new(r.get::<String>("saga_type")?),
        version: r.u32("version")?,
        fingerprint: r.get("fingerprint")?,
        status: r.parsed("status", str::parse)?,
        status_reason: r.get("status_reason")?,
        input: r.get::<Value>("input")?,
        input_hash: r.get("input_hash")?,
        idempotency_key: r
            .get::<Option<String>>("idempotency_key")?
            .map(IdempotencyKey::new),
        next_run_at: r.get::<Option<Timestamp>>("next_run_at")?,
        lease_owner: r.get::<Option<String>>("lease_owner")?.map(WorkerId::new),
        lease_expires_at: r.get::<Option<Timestamp>>("lease_expires_at")?,
        fencing_token: FencingToken(r.get::<i64>("fencing_token")?),
        trace_context: r.get("trace_context")?,
        cancel_requested: r.get("cancel_requested")?,
        created_at: r.get::<Timestamp>("created_at")?,
        updated_at: r.get::<Timestamp>("updated_at")?,
    })
}

pub(super) fn step_record(row: &PgRow, saga: SagaId) -> Result<StepRecord, Error> {
    let r = Reader { row, saga };
    Ok(StepRecord {
        index: StepIndex(r.u32("step_index")?),
        phase: r.parsed("phase", str::parse::<Phase>)?,
        name: StepName::new(r.get::<String>("name")?),
        status: r.parsed("status", str::parse)?,
        attempt: Attempt(r.u32("attempt")?),
        idempotency_key: IdempotencyKey::new(r.get::<String>("idempotency_key")?),
        output: r.get::<Option<Value>>("output")?,
        last_error: r.get("last_error")?,
        next_attempt_at: r.get("next_attempt_at")?,
        started_at: r.get("started_at")?,
        finished_at: r.get("finished_at")?,
    })
}

pub(super) fn event(row: &PgRow) -> Result<Event, Error> {
    let saga = id(row, "saga_id")?;
    let r = Reader { row, saga };
    Ok(Event {
        seq: r.get("seq")?,
        saga_id: saga,
        at: r.get("at")?,
        kind: r.parsed("kind", |text| {
            EventKind::parse(text).ok_or_else(|| format!("unknown event kind `{text}`"))
        })?,
        step: r.get::<Option<String>>("step")?.map(StepName::new),
        phase: r.opt_parsed("phase", str::parse::<Phase>)?,
        attempt: r.opt_u32("attempt")?.map(Attempt),
        detail: r.get("detail")?,
    })
}

pub(super) fn intervention(row: &PgRow) -> Result<Intervention, Error> {
    let saga = id(row, "saga_id")?;
    let r = Reader { row, saga };
    let step = match (
        r.opt_u32("step_index")?,
        r.get::<Option<String>>("step_name")?,
    ) {
        (Some(index), Some(name)) => Some((StepIndex(index), StepName::new(name))),
        _ => None,
    };
    Ok(Intervention {
        saga_id: saga,
        item: NewIntervention {
            id: InterventionId::from_uuid(r.get::<Uuid>("id")?),
            kind: r.parsed("kind", |text| {
                InterventionKind::parse(text).ok_or_else(|| format!("unknown kind `{text}`"))
            })?,
            step,
            phase: r.opt_parsed("phase", str::parse::<Phase>)?,
            idempotency_key: r
                .get::<Option<String>>("idempotency_key")?
                .map(IdempotencyKey::new),
            input: r.get("input")?,
            output: r.get("output")?,
            error: r.get("error")?,
            parked_from: r.opt_parsed("parked_from", str::parse::<saga_core::SagaStatus>)?,
        },
        status: r.parsed("status", |text| {
            InterventionStatus::parse(text).ok_or_else(|| format!("unknown status `{text}`"))
        })?,
        opened_at: r.get("opened_at")?,
        resolved_at: r.get("resolved_at")?,
        resolved_by: r.get("resolved_by")?,
        resolution: r.get("resolution")?,
        resolution_reason: r.get("resolution_reason")?,
    })
}
