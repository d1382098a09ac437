//! Driver errors, classified in one place: retryable outages versus everything else.

use saga_core::Error;

/// Converts a driver error: I/O, pool timeouts and a busy database become
/// [`Error::StoreUnavailable`] (safe to retry); decode failures and the rest become [`Error::Store`].
pub(crate) fn classify(err: sqlx::Error) -> Error {
    match &err {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Tls(_) => Error::StoreUnavailable(Box::new(err)),
        sqlx::Error::Database(db) if is_busy(db.code().as_deref()) => {
            Error::StoreUnavailable(Box::new(err))
        }
        _ => Error::Store(Box::new(err)),
    }
}

/// SQLITE_BUSY (5) and SQLITE_LOCKED (6), with their extended codes.
fn is_busy(code: Option<&str>) -> bool {
    code.and_then(|code| code.parse::<i64>().ok())
        .is_some_and(|code| matches!(code & 0xff, 5 | 6))
}

/// True when the error is a unique-constraint violation.
pub(crate) fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.is_unique_violation())
}

/// A migration failure, with what to do about it.
pub(crate) fn migration(err: sqlx::migrate::MigrateError) -> Error {
    Error::Configuration(format!(
        "applying the schema migrations failed: {err}; check that the database is writable and was not migrated by a newer version of this library"
    ))
}
