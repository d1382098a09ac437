//! Opening the store as it is: no command but `saga migrate` creates or migrates anything, and
//! every other command first checks that the schema is exactly the one this CLI knows.

use std::sync::Arc;

use saga::{PgOptions, PgStore, SqliteOptions, SqliteStore, Store};
use saga_store::SchemaState;

use crate::{bad_input, Failure};

/// The Postgres schema the library uses unless told otherwise.
const DEFAULT_SCHEMA: &str = "saga";

/// The store the command line names: its URL, and for Postgres the schema.
pub(crate) enum Target {
    /// A SQLite file.
    Sqlite { url: String },
    /// A Postgres database, the saga tables in `schema`.
    Postgres { url: String, schema: String },
    /// Anything else (`memory:`, or a URL `saga::connect` refuses with what to use).
    Other { url: String },
}

/// A store opened without changes, and its schema (`None` for a store that has none).
pub(crate) struct Opened {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) schema: Option<SchemaState>,
}

impl Target {
    /// The target of `--db` and `--schema`.
    pub(crate) fn new(db: Option<String>, schema: Option<String>) -> Result<Self, Failure> {
        let Some(url) = db else {
            return Err(bad_input(
                "no store given; pass --db sqlite://path.db (or postgres://...) or set SAGA_DATABASE_URL"
                    .into(),
            ));
        };
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let schema = schema.unwrap_or_else(|| DEFAULT_SCHEMA.to_owned());
            return Ok(Target::Postgres { url, schema });
        }
        if let Some(schema) = schema {
            return Err(bad_input(format!(
                "--schema `{schema}` (or SAGA_SCHEMA) names a Postgres schema, and this store is not Postgres; drop the flag (unset SAGA_SCHEMA) for this store"
            )));
        }
        if url.starts_with("sqlite:") {
            let path = url
                .trim_start_matches("sqlite://")
                .trim_start_matches("sqlite:");
            let path = path.split('?').next().unwrap_or(path);
            if !path.is_empty() && path != ":memory:" && !std::path::Path::new(path).exists() {
                return Err(bad_input(format!(
                    "no SQLite database at `{path}`; check the path (the CLI never creates one)"
                )));
            }
            return Ok(Target::Sqlite { url });
        }
        Ok(Target::Other { url })
    }

    /// Opens the store as it is: creates nothing, migrates nothing.
    pub(crate) async fn open(&self) -> Result<Opened, Failure> {
        match self {
            Target::Sqlite { url } => {
                let options = SqliteOptions {
                    migrate: false,
                    ..SqliteOptions::default()
                };
                let store = SqliteStore::connect_with(url, options).await?;
                let schema = saga_store::sqlite_schema(store.pool()).await?;
                Ok(Opened {
                    store: Arc::new(store),
                    schema: Some(schema),
                })
            }
            Target::Postgres { url, schema } => {
                let options = PgOptions {
                    migrate: false,
                    ..pg_options(schema)
                };
                let store = PgStore::connect_with(url, options).await?;
                let state = saga_store::postgres_schema(store.pool(), schema).await?;
                Ok(Opened {
                    store: Arc::new(store),
                    schema: Some(state),
                })
            }
            Target::Other { url } => Ok(Opened {
                store: saga::connect(url).await?,
                schema: None,
            }),
        }
    }

    /// Opens the store as it is and refuses a schema other than this CLI's, saying how to get
    /// there: every command but `saga migrate` goes through here.
    pub(crate) async fn open_current(&self) -> Result<Arc<dyn Store>, Failure> {
        let opened = self.open().await?;
        if let Some(schema) = &opened.schema {
            self.check(schema)?;
        }
        Ok(opened.store)
    }

    /// Opens the store the way the library does: creating the schema if missing and applying
    /// every migration not applied yet.
    pub(crate) async fn migrate(&self) -> Result<(), Failure> {
        match self {
            Target::Sqlite { url } => {
                SqliteStore::connect_with(url, SqliteOptions::default()).await?;
            }
            Target::Postgres { url, schema } => {
                PgStore::connect_with(url, pg_options(schema))
                    .await?
                    .close()
                    .await;
            }
            Target::Other { .. } => {}
        }
        Ok(())
    }

    /// `saga migrate`, with `--schema` when the schema is not the default.
    pub(crate) fn migrate_command(&self) -> String {
        match self {
            Target::Postgres { schema, .. } if schema != DEFAULT_SCHEMA => {
                format!("`saga migrate --schema {schema}`")
            }
            _ => "`saga migrate`".to_owned(),
        }
    }

    /// Refuses (exit 2) a schema this CLI cannot work on, with the version found and what to do.
    pub(crate) fn check(&self, schema: &SchemaState) -> Result<(), Failure> {
        refuse_broken(schema)?;
        let migrate = self.migrate_command();
        let latest = schema.latest();
        match schema.version() {
            _ if schema.is_current() => Ok(()),
            None => Err(bad_input(match self {
                Target::Postgres { schema: name, .. } => format!(
                    "Postgres schema `{name}` holds no saga tables (schema version: none; this saga needs version {latest}); if the store lives in another schema, pass --schema NAME (or set SAGA_SCHEMA); to create the tables here, run {migrate}"
                ),
                _ => format!(
                    "this database holds no saga tables (schema version: none; this saga needs version {latest}); check --db, or run {migrate} to create them"
                ),
            })),
            Some(version) => Err(bad_input(format!(
                "the store's schema is at version {version} and this saga needs version {latest} (not applied: {}); run {migrate} to apply them (it lists what it runs; no other command migrates)",
                schema
                    .pending()
                    .iter()
                    .map(|info| format!("{} {}", info.version, info.name))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }
}

/// Refuses (exit 2) a schema no migration can fix: one that a migration left half-done, or one
/// a newer release migrated.
pub(crate) fn refuse_broken(schema: &SchemaState) -> Result<(), Failure> {
    if let Some(version) = schema.failed.first() {
        let name = schema
            .known
            .iter()
            .find(|info| info.version == *version)
            .map_or("unknown", |info| info.name);
        return Err(bad_input(format!(
            "migration {version} ({name}) is recorded as failed: it stopped part-way; compare the database with that migration, finish or undo it by hand, delete its row from _sqlx_migrations, then run `saga migrate`"
        )));
    }
    if let Some(version) = schema.unknown().last() {
        return Err(bad_input(format!(
            "the store's schema is at version {version}, newer than this saga knows (it ends at version {}); a newer release migrated it: use the `saga` CLI of that release",
            schema.latest()
        )));
    }
    Ok(())
}

/// The CLI's Postgres settings: the schema given, and no listening for workers' wake-ups.
fn pg_options(schema: &str) -> PgOptions {
    PgOptions {
        schema: schema.to_owned(),
        listen: false,
        ..PgOptions::default()
    }
}
