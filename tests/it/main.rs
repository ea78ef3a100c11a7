//! Integration tests: one binary (links once), each test with its own database.
#![allow(clippy::unwrap_used)] // helpers outside #[test] functions unwrap too: a panic is a failed test

mod helpers;

mod audit;
mod daemon;
mod registry;
mod signature;
