//! Versioned migrations, embedded in the library and applied with sqlx's migrator.

use std::borrow::Cow;

use sqlx::migrate::{Migration, MigrationType, Migrator};

/// The SQLite schema migrations, in version order.
const SQLITE: &[(i64, &str, &str)] = &[(
    1,
    "init",
    include_str!("../migrations/sqlite/0001_init.sql"),
)];

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

/// The migrator of the SQLite schema (applied by [`SqliteStore::connect`](crate::SqliteStore::connect)).
pub fn sqlite_migrator() -> Migrator {
    migrator(SQLITE)
}
