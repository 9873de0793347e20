//! distlock-postgres: locks on PostgreSQL advisory locks.
//!
//! Work in progress (issue 3): this crate holds the key encoding so far; the backend itself
//! (sessions, waits, lost detection) is not built yet and nothing exposes it.

pub mod key;

pub use key::AdvisoryKey;
