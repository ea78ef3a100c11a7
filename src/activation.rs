//! systemd socket activation (`sd_listen_fds(3)`): the listening sockets a socket unit hands
//! over in `LISTEN_FDS`, named by `LISTEN_FDNAMES` (each unit's `FileDescriptorName=`).
//!
//! Why: a socket owned by systemd outlives the process that serves it. Across a crash and
//! restart, a policy engine's `connect()` waits in the listen backlog instead of failing, and
//! the daemon never has to bind a port again after a crash (which is what failed in the fault
//! campaign, see the README's "Reliability").
//!
//! The variables are read once, before any thread starts, and only when `LISTEN_PID` names
//! this process (a child that inherited them must not take its parent's sockets). The file
//! descriptors are turned into listeners by the `listenfd` crate, which checks each one is a
//! listening socket of the expected kind; no `unsafe` here.

use std::collections::BTreeMap;
use std::os::unix::net::UnixListener as StdUnixListener;

/// Names of the sockets the daemon and the actuator look for (`FileDescriptorName=` in their units).
pub const DECISIONS: &str = "decisions";
/// control.sock (`playbookd-control.socket`).
pub const CONTROL: &str = "control";
/// The status API's TCP port (`playbookd-status.socket`).
pub const STATUS: &str = "status";
/// The actuator's socket (`playbookd-actuator.socket`).
pub const ACTUATOR: &str = "actuator";

/// The sockets passed by systemd, by name; each can be taken once.
#[derive(Default)]
pub struct Activated {
    /// Index (0-based, fd = 3 + index) of each named descriptor.
    by_name: BTreeMap<String, usize>,
    fds: Option<listenfd::ListenFd>,
}

impl std::fmt::Debug for Activated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Activated")
            .field("by_name", &self.by_name)
            .finish_non_exhaustive()
    }
}

/// What went wrong with a passed socket.
#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    #[error(
        "LISTEN_FDNAMES names {names} descriptors but LISTEN_FDS says {count}; fix the socket units"
    )]
    CountMismatch { names: usize, count: usize },
    #[error(
        "socket `{name}` passed by systemd is not a listening {kind} socket (check ListenStream= in its socket unit)"
    )]
    WrongKind {
        name: String,
        kind: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "socket `{name}` passed by systemd appears twice in LISTEN_FDNAMES; give each socket unit its own FileDescriptorName="
    )]
    Duplicate { name: String },
}

impl Activated {
    /// Reads `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES`. Not activated (or activated for
    /// another process) → an empty set, and every socket is bound from the configuration.
    /// Call it before starting threads: the crate clears `LISTEN_PID`/`LISTEN_FDS`.
    pub fn from_env() -> Result<Activated, ActivationError> {
        let pid_matches = std::env::var("LISTEN_PID")
            .ok()
            .and_then(|pid| pid.trim().parse::<u32>().ok())
            == Some(std::process::id());
        let Some(count) = std::env::var("LISTEN_FDS")
            .ok()
            .and_then(|count| count.trim().parse::<usize>().ok())
        else {
            return Ok(Activated::default());
        };
        if !pid_matches {
            return Ok(Activated::default());
        }
        let names: Vec<String> = match std::env::var("LISTEN_FDNAMES") {
            Ok(names) if !names.is_empty() => names.split(':').map(str::to_owned).collect(),
            // systemd always sets names; without them every descriptor is "unknown".
            _ => vec!["unknown".to_owned(); count],
        };
        if names.len() != count {
            return Err(ActivationError::CountMismatch {
                names: names.len(),
                count,
            });
        }
        let mut by_name = BTreeMap::new();
        for (index, name) in names.iter().enumerate() {
            if by_name.insert(name.clone(), index).is_some() {
                return Err(ActivationError::Duplicate { name: name.clone() });
            }
        }
        let fds = listenfd::ListenFd::from_env();
        Ok(Activated {
            by_name,
            fds: Some(fds),
        })
    }

    /// True when systemd passed at least one socket.
    pub fn is_activated(&self) -> bool {
        !self.by_name.is_empty()
    }

    /// Takes the Unix listening socket named `name`, if systemd passed one.
    pub fn take_unix(&mut self, name: &str) -> Result<Option<StdUnixListener>, ActivationError> {
        self.take(name, "Unix stream", listenfd::ListenFd::take_unix_listener)
    }

    /// Takes the TCP listening socket named `name`, if systemd passed one.
    pub fn take_tcp(
        &mut self,
        name: &str,
    ) -> Result<Option<std::net::TcpListener>, ActivationError> {
        self.take(name, "TCP", listenfd::ListenFd::take_tcp_listener)
    }

    /// The socket named `name` as a `kind` listener (`take_listener` checks the kind), if
    /// systemd passed one.
    fn take<T>(
        &mut self,
        name: &str,
        kind: &'static str,
        take_listener: fn(&mut listenfd::ListenFd, usize) -> std::io::Result<Option<T>>,
    ) -> Result<Option<T>, ActivationError> {
        let Some(index) = self.index_of(name) else {
            return Ok(None);
        };
        let Some(fds) = self.fds.as_mut() else {
            return Ok(None);
        };
        take_listener(fds, index).map_err(|source| ActivationError::WrongKind {
            name: name.to_owned(),
            kind,
            source,
        })
    }

    /// Names passed by systemd that nothing took (a socket unit wired to the wrong service).
    pub fn untaken(&self) -> Vec<String> {
        self.by_name.keys().cloned().collect()
    }

    fn index_of(&mut self, name: &str) -> Option<usize> {
        self.by_name.remove(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_activated_without_the_variables() {
        // The test process was not started by systemd with sockets for itself.
        let activated = Activated::default();
        assert!(!activated.is_activated());
        assert!(activated.untaken().is_empty());
    }
}
