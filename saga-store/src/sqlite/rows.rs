//! How SQLite keeps each kind of column: ids and texts as text, times as milliseconds since the
//! epoch, JSON as text. What the columns mean is read by [`crate::rows`].

use chrono::{DateTime, Utc};
use saga_core::{InterventionId, SagaId, Timestamp};
use serde_json::Value;
use sqlx::sqlite::SqliteRow;
use sqlx::Row;

pub(super) use crate::rows::{event, intervention, saga_record, signal_record, step_record};

/// Milliseconds since the epoch, as stored.
pub(super) fn millis(at: Timestamp) -> i64 {
    at.timestamp_millis()
}

/// Parses a saga id read from any table.
pub(super) fn saga_id(row: &SqliteRow, column: &str) -> Result<SagaId, saga_core::Error> {
    crate::rows::Columns::saga_id(row, column).map_err(|reason| {
        saga_core::Error::Store(format!("column `{column}` holds no saga id: {reason}").into())
    })
}

fn get<T>(row: &SqliteRow, column: &str) -> Result<Option<T>, String>
where
    for<'a> Option<T>: sqlx::Decode<'a, sqlx::Sqlite> + sqlx::Type<sqlx::Sqlite>,
{
    row.try_get::<Option<T>, _>(column)
        .map_err(|err| err.to_string())
}

impl crate::rows::Columns for SqliteRow {
    fn saga_id(&self, column: &str) -> Result<SagaId, String> {
        let text: Option<String> = get(self, column)?;
        text.ok_or("is NULL")?
            .parse()
            .map_err(|err| format!("{err}"))
    }

    fn opt_saga_id(&self, column: &str) -> Result<Option<SagaId>, String> {
        let text: Option<String> = get(self, column)?;
        text.map(|text| text.parse().map_err(|err| format!("{err}")))
            .transpose()
    }

    fn intervention_id(&self, column: &str) -> Result<InterventionId, String> {
        let text: Option<String> = get(self, column)?;
        text.ok_or("is NULL")?
            .parse()
            .map_err(|err| format!("{err}"))
    }

    fn text(&self, column: &str) -> Result<Option<String>, String> {
        get(self, column)
    }

    fn u32(&self, column: &str) -> Result<Option<u32>, String> {
        get::<i64>(self, column)?
            .map(|value| u32::try_from(value).map_err(|_| format!("{value} is out of range")))
            .transpose()
    }

    fn i64(&self, column: &str) -> Result<Option<i64>, String> {
        get(self, column)
    }

    fn time(&self, column: &str) -> Result<Option<Timestamp>, String> {
        get::<i64>(self, column)?
            .map(|ms| {
                DateTime::<Utc>::from_timestamp_millis(ms)
                    .ok_or_else(|| format!("{ms} is not a valid time"))
            })
            .transpose()
    }

    fn json(&self, column: &str) -> Result<Option<Value>, String> {
        get::<String>(self, column)?
            .map(|text| serde_json::from_str(&text).map_err(|err| format!("malformed JSON: {err}")))
            .transpose()
    }
}
