//! How Postgres keeps each kind of column: ids as `uuid`, times as `timestamptz`, JSON as
//! `jsonb`, small numbers as `integer`. What the columns mean is read by [`crate::rows`].

use saga_core::{InterventionId, SagaId, Timestamp};
use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::Row;
use uuid::Uuid;

pub(super) use crate::rows::{event, intervention, saga_record, signal_record, step_record};

fn get<T>(row: &PgRow, column: &str) -> Result<Option<T>, String>
where
    for<'a> Option<T>: sqlx::Decode<'a, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
{
    row.try_get::<Option<T>, _>(column)
        .map_err(|err| err.to_string())
}

impl crate::rows::Columns for PgRow {
    fn saga_id(&self, column: &str) -> Result<SagaId, String> {
        Ok(SagaId::from_uuid(
            get::<Uuid>(self, column)?.ok_or("is NULL")?,
        ))
    }

    fn opt_saga_id(&self, column: &str) -> Result<Option<SagaId>, String> {
        Ok(get::<Uuid>(self, column)?.map(SagaId::from_uuid))
    }

    fn intervention_id(&self, column: &str) -> Result<InterventionId, String> {
        Ok(InterventionId::from_uuid(
            get::<Uuid>(self, column)?.ok_or("is NULL")?,
        ))
    }

    fn text(&self, column: &str) -> Result<Option<String>, String> {
        get(self, column)
    }

    fn u32(&self, column: &str) -> Result<Option<u32>, String> {
        get::<i32>(self, column)?
            .map(|value| u32::try_from(value).map_err(|_| format!("{value} is negative")))
            .transpose()
    }

    fn i64(&self, column: &str) -> Result<Option<i64>, String> {
        get(self, column)
    }

    fn time(&self, column: &str) -> Result<Option<Timestamp>, String> {
        get(self, column)
    }

    fn json(&self, column: &str) -> Result<Option<Value>, String> {
        get(self, column)
    }
}
