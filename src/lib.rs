//! playbookd: a rootless, fail-closed daemon that runs signed incident-response playbooks.
//!
//! # Layout
//! ```text
//! policy engine ─NDJSON─▶ intake (decisions.sock) ─▶ bindings, nonce, freshness ─▶ store (one transaction)
//!                                                                                   │
//! operators ─NDJSON─▶ control (control.sock) ─▶ approvals / cancel / halt-resolve   ▼
//!                                                          executor ─▶ actions ─▶ rollback ─▶ SAFE-HALT
//! playbooks/*.yaml + .sig ─▶ registry (verify → parse → validate → version check)
//! status (HTTP, GET only) ◀── store        journald ◀── tracing        systemd ◀── sd_notify
//! ```
//!
//! - [`config`]: the TOML configuration, read once.
//! - [`store`]: PostgreSQL pool, migrations, and the hash-chained audit writer through which every
//!   state change is committed together with its audit event.
//! - [`daemon`]: wires the subsystems together (`build`) and runs them (`run_until_stopped`).
//! - [`systemd`]: logging to journald or stderr, and sd_notify.
//! - [`cli`]: the `playbookd` command line; [`audit_cli`]: its `audit verify` verb.

pub mod actions;
pub mod audit_cli;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod registry;
pub mod store;
pub mod systemd;
