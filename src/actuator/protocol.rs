//! The actuator's wire format: one JSON object per line each way, one request per connection.
//!
//! A closed set: [`Request`] is an externally tagged enum whose variants each refuse unknown
//! fields, so anything else (another operation, an extra field, a template, a string where a
//! number belongs) fails to decode and is refused before anything is looked at. It shares no
//! parser with decisions or playbooks: the daemon has already rendered and checked the step,
//! and the actuator checks the typed values again on its own side.

use std::path::PathBuf;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// Longest request or reply line, newline excluded.
pub const MAX_LINE_BYTES: usize = 16 * 1024;

/// What the daemon may ask the actuator to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Send `signal` to `pid`, only if it is still the process the decision named.
    Signal(SignalRequest),
    /// Add `net` to the blocked set (with a timeout, or until unblocked).
    Block(BlockRequest),
    /// Remove `net` from the blocked set.
    Unblock(UnblockRequest),
    /// Move the file at `path` into the quarantine, under `key`.
    Quarantine(QuarantineRequest),
    /// Put back the file quarantined from `path`.
    Restore(RestoreRequest),
}

/// `signal`: the target and the checks that it is still the same process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignalRequest {
    pub pid: u32,
    pub signal: SignalName,
    /// Clock ticks since boot (field 22 of `/proc/PID/stat`); a different value means the pid
    /// was reused and the process is left alone.
    pub start_time: Option<u64>,
    /// The process's executable (`/proc/PID/exe`); a different one means the pid was reused.
    pub executable: Option<PathBuf>,
}

/// The signals a playbook may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum SignalName {
    Kill,
    Term,
    Int,
    Hup,
    Stop,
    Quit,
    Usr1,
    Usr2,
}

impl SignalName {
    /// Every signal a playbook may send, in the order error messages list them. The one list:
    /// the validator, the action and the actuator all read it.
    pub const ALL: [SignalName; 8] = [
        SignalName::Kill,
        SignalName::Term,
        SignalName::Int,
        SignalName::Hup,
        SignalName::Stop,
        SignalName::Quit,
        SignalName::Usr1,
        SignalName::Usr2,
    ];

    /// Parses a name without the `SIG` prefix (`KILL`, `TERM`, …).
    pub fn parse(name: &str) -> Option<SignalName> {
        SignalName::ALL
            .into_iter()
            .find(|signal| signal.as_str() == name)
    }

    /// The names of [`SignalName::ALL`], comma-separated, for error messages.
    pub fn names() -> String {
        SignalName::ALL.map(SignalName::as_str).join(", ")
    }

    /// The name without `SIG`.
    pub fn as_str(self) -> &'static str {
        match self {
            SignalName::Kill => "KILL",
            SignalName::Term => "TERM",
            SignalName::Int => "INT",
            SignalName::Hup => "HUP",
            SignalName::Stop => "STOP",
            SignalName::Quit => "QUIT",
            SignalName::Usr1 => "USR1",
            SignalName::Usr2 => "USR2",
        }
    }

    /// The signal to send.
    pub fn to_signal(self) -> nix::sys::signal::Signal {
        use nix::sys::signal::Signal;
        match self {
            SignalName::Kill => Signal::SIGKILL,
            SignalName::Term => Signal::SIGTERM,
            SignalName::Int => Signal::SIGINT,
            SignalName::Hup => Signal::SIGHUP,
            SignalName::Stop => Signal::SIGSTOP,
            SignalName::Quit => Signal::SIGQUIT,
            SignalName::Usr1 => Signal::SIGUSR1,
            SignalName::Usr2 => Signal::SIGUSR2,
        }
    }
}

/// `block`: an address or network, optionally for a while.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockRequest {
    pub net: IpNet,
    pub timeout_seconds: Option<u64>,
}

/// `unblock`: an address or network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnblockRequest {
    pub net: IpNet,
}

/// `quarantine`: the file, and the step's idempotency key that names its quarantined copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuarantineRequest {
    pub path: PathBuf,
    pub key: QuarantineKey,
}

/// `restore`: the original path of a quarantined file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreRequest {
    pub path: PathBuf,
}

/// 64 lowercase hex digits (a SHA-256): the only thing that becomes a file name in the
/// quarantine directory, so no request can name `../x`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct QuarantineKey(String);

impl QuarantineKey {
    /// The key as hex text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for QuarantineKey {
    type Error = String;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        if text.len() == 64
            && text
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            Ok(QuarantineKey(text))
        } else {
            Err("key must be 64 lowercase hex digits".into())
        }
    }
}

impl From<QuarantineKey> for String {
    fn from(key: QuarantineKey) -> String {
        key.0
    }
}

/// The actuator's answer: one typed result per operation, or why it did nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case", deny_unknown_fields)]
pub enum Reply {
    /// `signal` done; `already_gone` when the process had exited (nothing left to signal).
    Signalled {
        pid: u32,
        signal: SignalName,
        already_gone: bool,
    },
    /// `block` done (already present counts as done).
    Blocked {
        net: IpNet,
        set: String,
        timeout_seconds: Option<u64>,
    },
    /// `unblock` done; `was_blocked` false when it was not in the set.
    Unblocked {
        net: IpNet,
        set: String,
        was_blocked: bool,
    },
    /// `quarantine` done: where the copy is, and its hash and size.
    Quarantined {
        path: PathBuf,
        stored_as: PathBuf,
        sha256: String,
        size: u64,
    },
    /// `restore` done: the file is back with its owner and mode, hash checked.
    Restored {
        path: PathBuf,
        restored_from: PathBuf,
        sha256: String,
        size: u64,
    },
    /// The actuator will not do it, now or later (a protected process, a refused address, a
    /// path outside the file roots, a malformed request, a peer that is not the daemon).
    Refused { reason: String },
    /// It tried and failed; `transient` when a retry may succeed.
    Failed { reason: String, transient: bool },
}

impl Reply {
    /// A failure a retry will not mend.
    pub fn permanent(reason: impl Into<String>) -> Reply {
        Reply::Failed {
            reason: reason.into(),
            transient: false,
        }
    }

    /// A failure a retry may mend.
    pub fn transient(reason: impl Into<String>) -> Reply {
        Reply::Failed {
            reason: reason.into(),
            transient: true,
        }
    }

    /// The reply as one line, newline included.
    pub fn to_line(&self) -> Vec<u8> {
        encode_line(self)
    }
}

impl Request {
    /// The request as one line, newline included.
    pub fn to_line(&self) -> Vec<u8> {
        encode_line(self)
    }

    /// The operation's name, for logs and errors.
    pub fn operation(&self) -> &'static str {
        match self {
            Request::Signal(_) => "signal",
            Request::Block(_) => "block",
            Request::Unblock(_) => "unblock",
            Request::Quarantine(_) => "quarantine",
            Request::Restore(_) => "restore",
        }
    }
}

/// Decodes one request line; the error says what was wrong, in serde's words.
pub fn decode_request(line: &[u8]) -> Result<Request, String> {
    serde_json::from_slice(line).map_err(|error| error.to_string())
}

/// Decodes one reply line.
pub fn decode_reply(line: &[u8]) -> Result<Reply, String> {
    serde_json::from_slice(line).map_err(|error| error.to_string())
}

fn encode_line<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing these types cannot fail: no maps with non-string keys, no foreign types.
    let mut line = serde_json::to_vec(value).unwrap_or_else(|_| {
        br#"{"result":"failed","reason":"cannot encode","transient":false}"#.to_vec()
    });
    line.push(b'\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        let request = Request::Signal(SignalRequest {
            pid: 42,
            signal: SignalName::Kill,
            start_time: Some(7),
            executable: None,
        });
        let line = request.to_line();
        assert_eq!(
            std::str::from_utf8(&line).unwrap(),
            "{\"signal\":{\"pid\":42,\"signal\":\"KILL\",\"start_time\":7,\"executable\":null}}\n"
        );
        assert_eq!(decode_request(&line[..line.len() - 1]).unwrap(), request);
    }

    #[test]
    fn unknown_operations_fields_and_types_are_refused() {
        for bad in [
            r#"{"exec":{"command":"/bin/sh"}}"#,
            r#"{"signal":{"pid":42,"signal":"KILL","start_time":null,"executable":null,"force":true}}"#,
            r#"{"signal":{"pid":"42","signal":"KILL","start_time":null,"executable":null}}"#,
            r#"{"signal":{"pid":42,"signal":"SEGV","start_time":null,"executable":null}}"#,
            r#"{"block":{"net":"1.2.3.4; flush ruleset","timeout_seconds":null}}"#,
            r#"{"quarantine":{"path":"/srv/x","key":"../../etc/passwd"}}"#,
            r#"{"signal":{"pid":42,"signal":"KILL"},"block":{"net":"1.2.3.4"}}"#,
            "{{ subject.pid }}",
            "",
        ] {
            assert!(decode_request(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn replies_round_trip() {
        let reply = Reply::Refused {
            reason: "pid 1".into(),
        };
        let line = reply.to_line();
        assert_eq!(decode_reply(&line[..line.len() - 1]).unwrap(), reply);
    }
}
