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
//! - [`status`]: the read-only HTTP status API and Prometheus metrics; [`status_client`] is
//!   the `playbookd status` client for it.
//! - [`cli`]: the `playbookd` command line; [`audit_cli`]: its `audit verify` verb; [`bench`](mod@bench): its
//!   `bench` verb (the real daemon under load).
//! - [`cli`]: the `playbookd` command line.
//! - [`control`]: control.sock, where operators approve, deny, cancel, clear a SAFE-HALT and
//!   reload, by role from peer credentials; [`ctl_client`] is the `playbookd ctl` client.
//! - [`actions`]: what a step can do to the host; [`sys`] holds the few raw system calls they need.

pub mod actions;
pub mod activation;
pub mod actuator;
pub mod approvals;
pub mod audit_cli;
pub mod bench;
pub mod bindings;
pub mod bundle;
pub mod cli;
pub mod config;
pub mod control;
pub mod ctl_client;
pub mod daemon;
pub mod evidence_cli;
pub mod executor;
pub mod fleet;
pub mod intake;
pub mod merkle;
pub mod note;
pub mod redact;
pub mod registry;
pub mod safe_halt;
pub mod simulate;
pub mod status;
pub mod status_client;
pub mod store;
pub mod sys;
pub mod systemd;
pub mod text;
pub mod unix_socket;
