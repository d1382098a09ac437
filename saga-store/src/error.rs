//! Driver errors, classified in one place: retryable outages versus everything else.

use saga_core::Error;

/// The SQLSTATE of a write the Postgres store refused as an illegal transition.
const REFUSED: &str = "SG001";

/// Converts a driver error: I/O, pool timeouts and a busy database become
/// [`Error::StoreUnavailable`] (safe to retry); decode failures and the rest become [`Error::Store`].
pub(crate) fn classify(err: sqlx::Error) -> Error {
    match &err {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Tls(_) => Error::StoreUnavailable(Box::new(err)),
        sqlx::Error::Database(db) if is_transient(db.code().as_deref()) => {
            Error::StoreUnavailable(Box::new(err))
        }
        // Raised by the store's own statements (`saga_refuse`): the message says it all.
        sqlx::Error::Database(db) if db.code().as_deref() == Some(REFUSED) => {
            Error::Store(Box::new(RefusedWrite(db.message().to_owned())))
        }
        _ => Error::Store(Box::new(err)),
    }
}

/// True when `err` is a write the store's own check (`saga_refuse`) refused: a step phase did
/// not meet its write's precondition. The caller finds out which from the stored saga.
#[cfg(feature = "postgres")]
pub(crate) fn is_refused(err: &Error) -> bool {
    matches!(err, Error::Store(source) if source.downcast_ref::<RefusedWrite>().is_some())
}

/// The message of a write the store's own check refused.
#[derive(Debug)]
pub(crate) struct RefusedWrite(pub(crate) String);

impl std::fmt::Display for RefusedWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RefusedWrite {}

/// Codes that mean "try again": SQLite's BUSY (5) and LOCKED (6) with their extended codes;
/// Postgres SQLSTATEs for lost connections (08...), shutdowns (57P01-57P03), too many
/// connections (53300), serialization failures (40001), deadlocks (40P01) and a lock timeout
/// (55P03: a row held locked by someone else).
fn is_transient(code: Option<&str>) -> bool {
    let Some(code) = code else {
        return false;
    };
    if let Ok(number) = code.parse::<i64>() {
        if code.len() != 5 {
            return matches!(number & 0xff, 5 | 6);
        }
    }
    code.starts_with("08")
        || matches!(
            code,
            "57P01" | "57P02" | "57P03" | "53300" | "40001" | "40P01" | LOCK_TIMEOUT
        )
}

/// Postgres's SQLSTATE for a lock not obtained within `lock_timeout`.
const LOCK_TIMEOUT: &str = "55P03";

/// True when `err` is a Postgres lock timeout: the statement waited too long for a row someone
/// else held locked, and was rolled back (nothing of it committed).
#[cfg(feature = "postgres")]
pub(crate) fn is_lock_timeout(err: &Error) -> bool {
    let Error::StoreUnavailable(source) = err else {
        return false;
    };
    matches!(
        source.downcast_ref::<sqlx::Error>(),
        Some(sqlx::Error::Database(db)) if db.code().as_deref() == Some(LOCK_TIMEOUT)
    )
}

/// True when the error is a unique-constraint violation.
#[cfg(feature = "sqlite")]
pub(crate) fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.is_unique_violation())
}

/// A migration failure, with what to do about it.
pub(crate) fn migration(err: sqlx::migrate::MigrateError) -> Error {
    Error::Configuration(format!(
        "applying the schema migrations failed: {err}; check that the database is writable and was not migrated by a newer version of this library"
    ))
}
