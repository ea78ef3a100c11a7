//! Integration tests: one binary (links once), each test with its own database.
#![allow(clippy::unwrap_used)] // helpers outside #[test] functions unwrap too: a panic is a failed test

mod harness;
mod helpers;

mod actions_exec;
mod actions_file;
mod actions_http;
mod actions_net;
mod actions_process;
mod actions_support;
mod actuator;
mod anchor;
mod api_conformance;
mod audit;
mod bench;
mod config_limits;
mod console;
mod control;
mod crash;
mod daemon;
mod decision_schema;
mod docs;
mod documents;
mod evidence;
mod executor;
mod failover;
mod fleet;
mod fleet_bench;
mod halt;
mod idle;
mod intake;
mod registry;
mod roles;
mod signature;
mod simulate;
mod status;
mod store;
mod systemd;
mod validate;
mod witness;
