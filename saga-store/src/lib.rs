//! # saga-store
//!
//! Durable backends for [`saga_core`]: the embedded SQLite store (feature `sqlite`, the default),
//! with its migrations applied by the library, and the store conformance suite (feature
//! `conformance`) that every backend — memory, SQLite, and Postgres — must pass.
//!
//! ```
//! # #[cfg(feature = "sqlite")]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), saga_core::Error> {
//! use saga_store::SqliteStore;
//!
//! let store = SqliteStore::connect("sqlite::memory:").await?; // creates the schema
//! let counts = saga_core::Store::count_by_status(&store).await?;
//! assert!(counts.is_empty());
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "sqlite"))]
//! # fn main() {}
//! ```
//!
//! Each backend carries out the write plans compiled in `saga_core::store::write` and decides
//! nothing of its own: SQLite writes a plan as a few statements in one transaction; Postgres lays
//! the plans of many sagas out as the array columns of one statement, sent by writer tasks that
//! group the writes waiting at the same time (one round trip and one commit for all of them).
//! Both read rows through one reader.
//!
//! | feature | what it adds |
//! |---|---|
//! | `sqlite` (default) | `SqliteStore` |
//! | `postgres` | `PgStore`: the production backend |
//! | `conformance` | `conformance`: the suite every backend must pass |
//! | `testing` | `testing::TestPg`: a real, throwaway Postgres database per test |

#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "conformance")]
pub mod conformance;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod error;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod migrate;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod rows;
#[cfg(feature = "sqlite")]
mod sqlite;
#[cfg(feature = "testing")]
pub mod testing;

#[cfg(feature = "postgres")]
pub use migrate::{postgres_migrator, postgres_schema};
#[cfg(feature = "sqlite")]
pub use migrate::{sqlite_migrator, sqlite_schema};
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub use migrate::{MigrationInfo, SchemaState};
#[cfg(feature = "postgres")]
pub use postgres::{pg_transaction, validate_schema, PgOptions, PgStore};
#[cfg(feature = "sqlite")]
pub use sqlite::{sqlite_transaction, SqliteOptions, SqliteStore};
