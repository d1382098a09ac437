//! Support shared by the console's integration tests.

pub mod browser;
pub mod fixture;
