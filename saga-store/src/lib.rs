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
//! | feature | what it adds |
//! |---|---|
//! | `sqlite` (default) | [`SqliteStore`] |
//! | `conformance` | [`conformance`]: the suite every backend must pass |

#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "conformance")]
pub mod conformance;
#[cfg(feature = "sqlite")]
mod error;
#[cfg(feature = "sqlite")]
mod migrate;
#[cfg(feature = "sqlite")]
mod sqlite;

#[cfg(feature = "sqlite")]
pub use migrate::sqlite_migrator;
#[cfg(feature = "sqlite")]
pub use sqlite::{SqliteOptions, SqliteStore};
