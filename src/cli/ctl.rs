//! `playbookd ctl`: the operators' client for control.sock. One request, one reply; human
//! output by default, the raw reply with `--json`; a refused or failed request exits non-zero.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::Value;

use crate::cli::{OutputError, VerbError, write_stdout, write_stdout_line};
use crate::config::{Config, ConfigError};
use crate::control::protocol::WireRequest;
use crate::control::roles::Verb;

/// Where control.sock is when neither `--socket` nor `--config` says otherwise.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/playbookd/control.sock";

/// `playbookd ctl [OPTIONS] VERB …`; the options may come before or after the verb and its
/// arguments (`ctl approve E S --reason R --config F`).
#[derive(Debug, Args)]
pub struct CtlArgs {
    /// Path of control.sock (default: the config's `paths.control_socket`, else /run/playbookd/control.sock).
    #[arg(long, global = true, value_name = "PATH", conflicts_with = "config")]
    pub socket: Option<PathBuf>,
    /// Read the socket path from this daemon config.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print the daemon's reply as JSON, unchanged.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub verb: CtlVerb,
}

#[derive(Debug, Subcommand)]
pub enum CtlVerb {
    /// Approvals waiting, with their context and the votes so far.
    Pending,
    /// Approve a waiting step.
    Approve {
        /// The execution id (UUID), as `ctl pending` shows it.
        execution: String,
        /// The step id waiting at its gate.
        step: String,
        /// Why; recorded in the audit log with your uid.
        #[arg(long)]
        reason: String,
    },
    /// Deny a waiting step: the step is rejected and the run rolls back.
    Deny {
        /// The execution id (UUID), as `ctl pending` shows it.
        execution: String,
        /// The step id waiting at its gate.
        step: String,
        /// Why; recorded in the audit log with your uid.
        #[arg(long)]
        reason: String,
    },
    /// Cancel an execution: it stops and rolls back.
    Cancel {
        /// The execution id (UUID).
        execution: String,
        /// Why; recorded in the audit log with your uid.
        #[arg(long)]
        reason: String,
    },
    /// Clear the active SAFE-HALT of this node, or with --fleet the fleet's (admin).
    HaltResolve {
        /// Clear the fleet-wide halt instead of this node's own.
        #[arg(long)]
        fleet: bool,
        /// What was fixed; recorded in the audit log with your uid.
        #[arg(long)]
        reason: String,
    },
    /// Halt every node of the fleet (admin): no node starts another step until an admin runs
    /// `ctl halt-resolve --fleet`.
    Halt {
        /// Required: the whole fleet is halted (a node halts itself only when a rollback fails).
        #[arg(long, required = true)]
        fleet: bool,
        /// Why; recorded in the audit log with your uid.
        #[arg(long)]
        reason: String,
    },
    /// Re-read the playbooks and the bindings file (admin). Lists every refused file; exits 65
    /// when any was refused (the last verified versions stay active).
    Reload,
}

#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot connect to {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: the daemon closed the connection without a reply")]
    NoReply { path: PathBuf },
    #[error("{path}: unreadable reply: {detail}")]
    BadReply { path: PathBuf, detail: String },
    #[error("refused: {0}")]
    Refused(String),
    #[error("error: {0}")]
    Failed(String),
    #[error(transparent)]
    Output(#[from] OutputError),
    /// Already listed on stdout, one line per file.
    #[error("reload refused some files; the last verified versions stay active")]
    ReloadRefusedFiles,
}

impl VerbError for CtlError {
    /// 77 (EX_NOPERM) when the daemon refused, 65 (EX_DATAERR) when a reload refused files,
    /// 78 for a bad config, 1 otherwise.
    fn exit_code(&self) -> ExitCode {
        match self {
            CtlError::Refused(_) => ExitCode::from(EXIT_REFUSED),
            CtlError::Config(_) => ExitCode::from(crate::config::EXIT_CONFIG),
            CtlError::Output(error) => error.exit_code(),
            CtlError::ReloadRefusedFiles => ExitCode::from(crate::cli::EXIT_DATAERR),
            CtlError::Connect { .. }
            | CtlError::Io { .. }
            | CtlError::NoReply { .. }
            | CtlError::BadReply { .. }
            | CtlError::Failed(_) => ExitCode::FAILURE,
        }
    }
}

/// Exit status of `ctl` when the daemon refused the request.
pub const EXIT_REFUSED: u8 = 77;

/// Sends the verb, prints the reply, and turns a refusal or error into `Err`.
pub fn run(args: CtlArgs) -> Result<(), CtlError> {
    let socket = match (&args.socket, &args.config) {
        (Some(socket), _) => socket.clone(),
        (None, Some(config)) => Config::load(config)?.paths.control_socket,
        (None, None) => PathBuf::from(DEFAULT_CONTROL_SOCKET),
    };
    let reply = exchange(&socket, &request(&args.verb))?;
    let status = reply.get("status").and_then(Value::as_str).unwrap_or("");
    let reason = || {
        reply
            .get("reason")
            .and_then(Value::as_str)
            .unwrap_or("no reason given")
            .to_owned()
    };
    if args.json {
        write_stdout_line(&reply.to_string())?;
    }
    match status {
        "ok" => {
            if !args.json {
                write_stdout(&human(&args.verb, &reply))?;
            }
            // A reload that refused files did run, but what is active is not what is on disk:
            // scripts must notice.
            let refused = |key: &str| reply[key].as_array().is_some_and(|list| !list.is_empty());
            if matches!(args.verb, CtlVerb::Reload)
                && (refused("refused") || refused("refused_keys"))
            {
                return Err(CtlError::ReloadRefusedFiles);
            }
            Ok(())
        }
        "refused" => Err(CtlError::Refused(reason())),
        "error" => Err(CtlError::Failed(reason())),
        other => Err(CtlError::BadReply {
            path: socket,
            detail: format!("unknown status {other:?}"),
        }),
    }
}

/// The request line for a verb: the wire verb (spelled by [`Verb::as_str`]) and the fields it
/// takes. The execution id travels as typed: the daemon checks it, and records a malformed one.
pub fn request(verb: &CtlVerb) -> WireRequest {
    let (wire_verb, execution_id, step, reason) = match verb {
        CtlVerb::Pending => (Verb::Pending, None, None, None),
        CtlVerb::Reload => (Verb::Reload, None, None, None),
        CtlVerb::Approve {
            execution,
            step,
            reason,
        } => (Verb::Approve, Some(execution), Some(step), Some(reason)),
        CtlVerb::Deny {
            execution,
            step,
            reason,
        } => (Verb::Deny, Some(execution), Some(step), Some(reason)),
        CtlVerb::Cancel { execution, reason } => {
            (Verb::Cancel, Some(execution), None, Some(reason))
        }
        CtlVerb::HaltResolve { fleet, reason } => {
            let verb = if *fleet {
                Verb::HaltResolveFleet
            } else {
                Verb::HaltResolve
            };
            (verb, None, None, Some(reason))
        }
        CtlVerb::Halt { reason, .. } => (Verb::HaltFleet, None, None, Some(reason)),
    };
    WireRequest {
        verb: wire_verb.as_str().to_owned(),
        execution_id: execution_id.cloned(),
        step: step.cloned(),
        reason: reason.cloned(),
    }
}

/// One request line out, one reply line back.
pub fn exchange(socket: &Path, request: &WireRequest) -> Result<Value, CtlError> {
    let io = |source| CtlError::Io {
        path: socket.to_owned(),
        source,
    };
    let mut stream = UnixStream::connect(socket).map_err(|source| CtlError::Connect {
        path: socket.to_owned(),
        source,
    })?;
    stream.set_read_timeout(Some(REPLY_LIMIT)).map_err(io)?;
    stream.set_write_timeout(Some(REPLY_LIMIT)).map_err(io)?;
    let mut line = serde_json::to_vec(request).map_err(|error| CtlError::BadReply {
        path: socket.to_owned(),
        detail: error.to_string(),
    })?;
    line.push(b'\n');
    stream.write_all(&line).map_err(io)?;
    let mut reply = Vec::new();
    BufReader::new(stream)
        .take(MAX_REPLY_BYTES)
        .read_until(b'\n', &mut reply)
        .map_err(io)?;
    if reply.is_empty() {
        return Err(CtlError::NoReply {
            path: socket.to_owned(),
        });
    }
    serde_json::from_slice(&reply).map_err(|error| CtlError::BadReply {
        path: socket.to_owned(),
        detail: error.to_string(),
    })
}

/// The reply for a person to read.
fn human(verb: &CtlVerb, reply: &Value) -> String {
    let text = |key: &str| match reply.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => "?".to_owned(),
    };
    match verb {
        CtlVerb::Pending => pending_text(reply.get("pending")),
        CtlVerb::Approve { .. } | CtlVerb::Deny { .. } => match text("gate_state").as_str() {
            "pending" => format!(
                "vote recorded: {} of {} approvals; the step keeps waiting\n",
                text("approvals"),
                text("required")
            ),
            "approved" => "approved: the step continues\n".to_owned(),
            "denied" => "denied: the step is rejected and the run rolls back\n".to_owned(),
            other => format!("gate is {other}\n"),
        },
        CtlVerb::Cancel { execution, .. } => {
            format!("cancel requested for {execution}: the run stops and rolls back\n")
        }
        CtlVerb::HaltResolve { fleet: false, .. } => {
            format!("SAFE-HALT {} cleared\n", text("halt_id"))
        }
        CtlVerb::HaltResolve { fleet: true, .. } => {
            format!("fleet SAFE-HALT {} cleared\n", text("halt_id"))
        }
        CtlVerb::Halt { .. } => format!(
            "fleet SAFE-HALT {} entered: no node starts another step until `playbookd ctl halt-resolve --fleet --reason …`\n",
            text("halt_id")
        ),
        CtlVerb::Reload => reload_text(reply),
    }
}

/// `reload: …` then one line per refused file (with its reason) and per version kept.
fn reload_text(reply: &Value) -> String {
    let field = |value: &Value, key: &str| value[key].as_str().unwrap_or("?").to_owned();
    let mut out = format!("reload: {}\n", field(reply, "detail"));
    for key in ["refused", "refused_keys"] {
        for refused in reply[key].as_array().into_iter().flatten() {
            out.push_str(&format!(
                "  REFUSED {} ({}): {}\n",
                field(refused, "file"),
                field(refused, "reason"),
                field(refused, "detail")
            ));
        }
    }
    for kept in reply["kept"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  KEPT {} from {}: its replacement was refused\n",
            field(kept, "what"),
            field(kept, "file")
        ));
    }
    out
}

fn pending_text(pending: Option<&Value>) -> String {
    let gates = pending
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if gates.is_empty() {
        return "no approvals pending\n".to_owned();
    }
    let mut out = String::new();
    for gate in gates {
        let field = |key: &str| match gate.get(key) {
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => "?".to_owned(),
        };
        let votes = gate
            .get("votes")
            .and_then(Value::as_array)
            .map(|votes| {
                votes
                    .iter()
                    .map(|vote| {
                        format!(
                            "uid {} {}",
                            vote["uid"],
                            vote["verdict"].as_str().unwrap_or("?")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .filter(|text| !text.is_empty())
            .unwrap_or_else(|| "none".to_owned());
        let approvals = gate
            .get("votes")
            .and_then(Value::as_array)
            .map_or(0, |votes| {
                votes.iter().filter(|v| v["verdict"] == "approve").count()
            });
        out.push_str(&format!(
            "{execution} step {step}: {action}, risk {risk}, {approvals}/{required} approvals, expires {expires}\n\
             \x20 org {org}, playbook {playbook}, undoable {undoable}\n\
             \x20 parameters {params}\n\
             \x20 votes: {votes}\n",
            execution = field("execution_id"),
            step = field("step_id"),
            action = field("action"),
            risk = field("risk"),
            required = field("required"),
            expires = field("expires_at"),
            org = field("org_id"),
            playbook = field("playbook"),
            undoable = field("undoable"),
            params = field("params"),
        ));
    }
    out
}

/// How long the client waits for the daemon's reply (a reload may take a while).
const REPLY_LIMIT: Duration = Duration::from_secs(90);
/// The longest reply read (a long pending list); the rest is cut off and fails to parse.
const MAX_REPLY_BYTES: u64 = 16 * 1024 * 1024;

#[cfg(test)]
mod tests {
    use super::{CtlVerb, request};
    use crate::control::protocol::{self, Request};

    /// What the client sends is what the server decodes: each command's request line, decoded
    /// by control.sock's own decoder.
    #[test]
    fn every_command_decodes_as_the_request_it_means() {
        let id = uuid::Uuid::new_v4();
        let reason = || "why".to_owned();
        let cases = [
            (CtlVerb::Pending, Request::Pending),
            (CtlVerb::Reload, Request::Reload),
            (
                CtlVerb::Approve {
                    execution: id.to_string(),
                    step: "kill".into(),
                    reason: reason(),
                },
                Request::Approve {
                    execution_id: id,
                    step: "kill".into(),
                    reason: reason(),
                },
            ),
            (
                CtlVerb::Deny {
                    execution: id.to_string(),
                    step: "kill".into(),
                    reason: reason(),
                },
                Request::Deny {
                    execution_id: id,
                    step: "kill".into(),
                    reason: reason(),
                },
            ),
            (
                CtlVerb::Cancel {
                    execution: id.to_string(),
                    reason: reason(),
                },
                Request::Cancel {
                    execution_id: id,
                    reason: reason(),
                },
            ),
            (
                CtlVerb::HaltResolve {
                    fleet: false,
                    reason: reason(),
                },
                Request::HaltResolve { reason: reason() },
            ),
            (
                CtlVerb::HaltResolve {
                    fleet: true,
                    reason: reason(),
                },
                Request::HaltResolveFleet { reason: reason() },
            ),
            (
                CtlVerb::Halt {
                    fleet: true,
                    reason: reason(),
                },
                Request::HaltFleet { reason: reason() },
            ),
        ];
        for (command, expected) in cases {
            let line = serde_json::to_vec(&request(&command)).expect("a request serializes");
            assert_eq!(protocol::decode(&line), Ok(expected), "{command:?}");
        }
    }
}
