//! Shared test support.
pub mod fake;
pub mod invariants;
pub mod reader;
