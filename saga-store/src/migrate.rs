//! Versioned migrations, embedded in the library and applied with sqlx's migrator; and what a
//! database's schema is, read without changing it (for tools that must not migrate).

use std::borrow::Cow;

use saga_core::Result;
use sqlx::migrate::{Migration, MigrationType, Migrator};

use crate::error::classify;

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
    (
        4,
        "waiting",
        include_str!("../migrations/sqlite/0004_waiting.sql"),
    ),
    (
        5,
        "policies",
        include_str!("../migrations/sqlite/0005_policies.sql"),
    ),
    (
        6,
        "children",
        include_str!("../migrations/sqlite/0006_children.sql"),
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
    (
        6,
        "waiting",
        include_str!("../migrations/postgres/0006_waiting.sql"),
    ),
    (
        7,
        "policies",
        include_str!("../migrations/postgres/0007_policies.sql"),
    ),
    (
        8,
        "children",
        include_str!("../migrations/postgres/0008_children.sql"),
    ),
];

/// Postgres migrations that hold busy tables locked for a while on a database with a long
/// history, with why; apply them in a quiet moment.
#[cfg(feature = "postgres")]
const POSTGRES_HEAVY: &[(i64, &str)] = &[(
    3,
    "it rebuilds the history table's primary key in one transaction, which blocks every step write (saga_events) while it runs",
)];

/// One of this library's schema migrations, as an operator sees it before applying it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MigrationInfo {
    /// Its version: migrations apply in version order.
    pub version: i64,
    /// Its name, e.g. `one_statement_writes`.
    pub name: &'static str,
    /// Why applying it to a database that already holds sagas needs a quiet moment (it holds
    /// busy tables locked while it runs); `None` for a quick one.
    pub heavy: Option<&'static str>,
}

fn infos(
    files: &[(i64, &'static str, &'static str)],
    heavy: &[(i64, &'static str)],
) -> Vec<MigrationInfo> {
    files
        .iter()
        .map(|(version, name, _)| MigrationInfo {
            version: *version,
            name,
            heavy: heavy
                .iter()
                .find(|(heavy, _)| heavy == version)
                .map(|(_, why)| *why),
        })
        .collect()
}

/// A database's saga schema next to this library's migrations, read without changing anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaState {
    /// Versions recorded as applied, ascending; empty when the database has no saga tables.
    pub applied: Vec<i64>,
    /// Versions recorded as started but not finished (sqlx's `success = false`): a migration
    /// that stopped part-way and needs repair before anything else.
    pub failed: Vec<i64>,
    /// This library's migrations, in version order.
    pub known: Vec<MigrationInfo>,
}

impl SchemaState {
    /// The schema's version: the highest applied migration (`None`: no saga tables).
    pub fn version(&self) -> Option<i64> {
        self.applied.last().copied()
    }

    /// The version this library's schema ends at.
    pub fn latest(&self) -> i64 {
        self.known.last().map_or(0, |info| info.version)
    }

    /// This library's migrations not applied yet, in the order they would run.
    pub fn pending(&self) -> Vec<MigrationInfo> {
        self.known
            .iter()
            .filter(|info| !self.applied.contains(&info.version))
            .copied()
            .collect()
    }

    /// Applied versions this library does not know: the database was migrated by a newer one.
    pub fn unknown(&self) -> Vec<i64> {
        self.applied
            .iter()
            .filter(|version| !self.known.iter().any(|info| info.version == **version))
            .copied()
            .collect()
    }

    /// True when the schema is exactly this library's: everything applied, nothing failed,
    /// nothing newer.
    pub fn is_current(&self) -> bool {
        self.failed.is_empty() && self.unknown().is_empty() && self.pending().is_empty()
    }
}

/// Splits `_sqlx_migrations` rows (version, success) into applied and failed versions.
fn state(rows: Vec<(i64, bool)>, known: Vec<MigrationInfo>) -> SchemaState {
    let (applied, failed): (Vec<_>, Vec<_>) = rows.into_iter().partition(|(_, ok)| *ok);
    let versions = |rows: Vec<(i64, bool)>| {
        let mut versions: Vec<i64> = rows.into_iter().map(|(version, _)| version).collect();
        versions.sort_unstable();
        versions
    };
    SchemaState {
        applied: versions(applied),
        failed: versions(failed),
        known,
    }
}

/// The SQLite database's saga schema, read without changing it (a store opened with
/// `SqliteOptions { migrate: false, .. }` leaves it as it is).
///
/// # Errors
/// Store errors.
#[cfg(feature = "sqlite")]
pub async fn sqlite_schema(pool: &sqlx::SqlitePool) -> Result<SchemaState> {
    let known = infos(SQLITE, &[]);
    let table: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
    )
    .fetch_one(pool)
    .await
    .map_err(classify)?;
    if table == 0 {
        return Ok(state(Vec::new(), known));
    }
    let rows = sqlx::query_as("SELECT version, success FROM _sqlx_migrations")
        .fetch_all(pool)
        .await
        .map_err(classify)?;
    Ok(state(rows, known))
}

/// The saga schema in the Postgres schema `schema`, read without changing it (a store opened
/// with `PgOptions { migrate: false, .. }` leaves it as it is). A schema that does not exist has
/// no saga tables.
///
/// # Errors
/// [`Error::Configuration`](saga_core::Error::Configuration) for a bad schema name; store errors.
#[cfg(feature = "postgres")]
pub async fn postgres_schema(pool: &sqlx::PgPool, schema: &str) -> Result<SchemaState> {
    let known = infos(POSTGRES, POSTGRES_HEAVY);
    let schema = crate::postgres::validate_schema(schema)?;
    let table = format!("\"{schema}\"._sqlx_migrations");
    let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(&table)
        .fetch_one(pool)
        .await
        .map_err(classify)?;
    if !exists {
        return Ok(state(Vec::new(), known));
    }
    let rows = sqlx::query_as(&format!("SELECT version, success FROM {table}"))
        .fetch_all(pool)
        .await
        .map_err(classify)?;
    Ok(state(rows, known))
}

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

#[cfg(all(test, feature = "postgres"))]
mod tests {
    use super::{infos, state, POSTGRES, POSTGRES_HEAVY};

    #[test]
    fn schema_state_names_what_is_pending_failed_or_newer() {
        let known = || infos(POSTGRES, POSTGRES_HEAVY);
        let empty = state(Vec::new(), known());
        assert_eq!(empty.version(), None);
        assert_eq!(empty.pending().len(), POSTGRES.len());
        assert!(!empty.is_current());

        let old = state(vec![(2, true), (1, true)], known());
        assert_eq!(old.version(), Some(2));
        let pending: Vec<_> = old.pending().iter().map(|info| info.version).collect();
        assert_eq!(pending, [3, 4, 5, 6, 7, 8]);
        assert!(old.pending()[0].heavy.is_some(), "migration 3 is heavy");
        assert!(old.pending()[1].heavy.is_none());

        let all: Vec<_> = POSTGRES.iter().map(|(v, _, _)| (*v, true)).collect();
        assert!(state(all.clone(), known()).is_current());
        let newer = state([all.clone(), vec![(99, true)]].concat(), known());
        assert_eq!(newer.unknown(), [99]);
        assert!(!newer.is_current());
        let broken = state([all, vec![(6, false)]].concat(), known());
        assert_eq!(broken.failed, [6]);
        assert!(!broken.is_current());
    }
}
