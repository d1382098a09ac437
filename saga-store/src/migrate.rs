//! Versioned migrations, embedded in the library and applied with sqlx's migrator.

use std::borrow::Cow;

use sqlx::migrate::{Migration, MigrationType, Migrator};

/// The SQLite schema migrations, in version order.
#[cfg(feature = "sqlite")]
const SQLITE: &[(i64, &str, &str)] = &[
    (
        1,
        "init",
        include_str!("../migrations/sqlite/0001_init.sql"),
    ),
    (
        2,
        "operator",
        include_str!("../migrations/sqlite/0002_operator.sql"),
    ),
    (
        3,
        "parked_from",
        include_str!("../migrations/sqlite/0003_parked_from.sql"),
    ),
];

fn migrator(files: &[(i64, &'static str, &'static str)]) -> Migrator {
    let migrations = files
        .iter()
        .map(|(version, description, sql)| {
            Migration::new(
                *version,
                Cow::Borrowed(*description),
                MigrationType::Simple,
                Cow::Borrowed(*sql),
                false,
            )
        })
        .collect::<Vec<_>>();
    Migrator {
        migrations: Cow::Owned(migrations),
        ..Migrator::DEFAULT
    }
}

/// The Postgres schema migrations, in version order.
#[cfg(feature = "postgres")]
const POSTGRES: &[(i64, &str, &str)] = &[
    (
        1,
        "init",
        include_str!("../migrations/postgres/0001_init.sql"),
    ),
    (
        2,
        "operator",
        include_str!("../migrations/postgres/0002_operator.sql"),
    ),
    (
        3,
        "one_statement_writes",
        include_str!("../migrations/postgres/0003_one_statement_writes.sql"),
    ),
    (
        4,
        "steps_without_foreign_key",
        include_str!("../migrations/postgres/0004_steps_without_foreign_key.sql"),
    ),
    (
        5,
        "parked_from",
        include_str!("../migrations/postgres/0005_parked_from.sql"),
    ),
];

/// The migrator of the SQLite schema (applied by [`SqliteStore::connect`](crate::SqliteStore::connect)).
#[cfg(feature = "sqlite")]
pub fn sqlite_migrator() -> Migrator {
    migrator(SQLITE)
}

/// The migrator of the Postgres schema (applied by [`PgStore::connect`](crate::PgStore::connect)
/// in the store's schema, under sqlx's advisory lock, so concurrent start-ups are safe).
#[cfg(feature = "postgres")]
pub fn postgres_migrator() -> Migrator {
    migrator(POSTGRES)
}
