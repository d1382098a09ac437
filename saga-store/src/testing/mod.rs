//! Test support: real databases for tests, never mocks.

mod pg;

pub use pg::{TestCluster, TestPg};
