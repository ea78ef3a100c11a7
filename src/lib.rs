//! playbookd: a rootless, fail-closed daemon that runs signed incident-response playbooks.
//!
//! # Data flow
//! ```text
//! policy engine ─NDJSON─▶ intake (decisions.sock) ─▶ bindings, nonce, freshness ─▶ store (one transaction)
//!                                                                                   │
//! operators ─NDJSON─▶ control (control.sock) ─▶ approvals / cancel / halt-resolve   ▼
//!                                                          executor ─▶ actions ─▶ rollback ─▶ SAFE-HALT
//! playbooks/*.yaml + .sig ─▶ registry (verify → parse → validate → version check)
//! status (HTTP, GET only) ◀── store        journald ◀── tracing        systemd ◀── sd_notify
//! ```
//!
//! # Modules, in that order
//! The daemon's subsystems; none of them imports [`cli`], the tools built on them.
//!
//! | module | what it owns |
//! |---|---|
//! | [`config`] | the TOML configuration, read and checked once |
//! | [`activation`], [`unix_socket`] | sockets from systemd (`LISTEN_FDS`) or bound here; one stale-socket policy |
//! | [`intake`] | decisions.sock: peer credentials, decoding, nonces, freshness, storm control, admission |
//! | [`bindings`] | which decision runs which playbook; cooldowns |
//! | [`registry`] | signed playbooks and bindings: keys, strict YAML, validation, anti-rollback, reload |
//! | [`store`] | PostgreSQL: migrations, roles, the hash-chained audit writer, every table's transitions, checkpoints, the chain anchor |
//! | [`approvals`] | approval gates and votes: decides, never acts |
//! | [`control`] | control.sock: approve, deny, cancel, halt-resolve, reload, by role from peer credentials |
//! | [`executor`] | one task per run: steps, gates, retries, rollback, resume |
//! | [`actions`], [`sys`] | what a step does to the host; the few raw system calls |
//! | [`actuator`] | `playbookd actuator`, the privileged helper behind a closed protocol |
//! | [`safe_halt`] | this node's SAFE-HALT in memory and what operators are told about it |
//! | [`fleet`] | heartbeats and fleet-wide halts shared through the database |
//! | [`merkle`], [`note`], [`bundle`] | RFC 6962 trees and proofs, C2SP checkpoint notes, offline evidence bundles |
//! | [`cosignature`], [`witness`] | C2SP witness cosignatures; `playbookd witness` and the daemon's submissions to witnesses |
//! | [`status`] | the read-only HTTP API, Prometheus metrics and the operator console |
//! | [`redact`], [`text`] | secrets kept out of what is shown; outside bytes made storable text in one place |
//! | [`systemd`], [`daemon`] | journald and sd_notify; the wiring of all of the above |
//! | [`cli`] | the `playbookd` command line and its tools (`ctl`, `status`, `audit`, `bench`, `sign`/`verify`/`validate`, `simulate`), built on the modules above |

pub mod actions;
pub mod activation;
pub mod actuator;
pub mod approvals;
pub mod bindings;
pub mod bundle;
pub mod cli;
pub mod config;
pub mod control;
pub mod cosignature;
pub mod daemon;
pub mod executor;
pub mod fleet;
pub mod intake;
pub mod merkle;
pub mod note;
pub mod redact;
pub mod registry;
pub mod safe_halt;
pub mod status;
pub mod store;
pub mod sys;
pub mod systemd;
pub mod text;
pub mod unix_socket;
pub mod witness;
