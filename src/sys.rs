//! The one place for operating-system calls that the standard library does not offer: signals,
//! `/proc` reads, and the open flags and ownership checks the actions rely on. Everything goes
//! through `nix` (no `unsafe`); callers get `std::io::Error`s.

use std::fs::File;
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

/// Sends `signal` to every process in the group `pgid`. A group that no longer exists is not
/// an error (it has nothing left to kill).
pub fn kill_process_group(pgid: u32, signal: Signal) -> io::Result<()> {
    let pgid = to_pid(pgid)?;
    match signal::killpg(pgid, signal) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(errno) => Err(errno.into()),
    }
}

/// What happened when a signal was sent to one process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum SignalOutcome {
    Delivered,
    /// No such process (exited and reaped).
    NoSuchProcess,
}

/// Sends `signal` to the process `pid` (never a group: `pid` must be positive).
pub fn send_signal(pid: u32, signal: Signal) -> io::Result<SignalOutcome> {
    match signal::kill(to_pid(pid)?, signal) {
        Ok(()) => Ok(SignalOutcome::Delivered),
        Err(Errno::ESRCH) => Ok(SignalOutcome::NoSuchProcess),
        Err(errno) => Err(errno.into()),
    }
}

/// The start time of `pid` in clock ticks since boot (field 22 of `/proc/PID/stat`).
/// `Ok(None)`: no such process.
pub fn process_start_time(pid: u32) -> io::Result<Option<u64>> {
    let text = match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    parse_start_time(&text).map(Some).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected format of /proc/{pid}/stat"),
        )
    })
}

/// What `/proc/PID/status` says about a process or thread: who it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessStatus {
    /// The command name (`comm`, at most 15 bytes; any process can set its own).
    pub name: String,
    /// The thread group: the pid of the process this task (maybe a thread) belongs to.
    pub tgid: u32,
    /// The real uid.
    pub uid: u32,
}

/// Reads `/proc/PID/status` (PID may be a thread id). `Ok(None)`: no such process or thread.
pub fn process_status(pid: u32) -> io::Result<Option<ProcessStatus>> {
    let text = match std::fs::read_to_string(format!("/proc/{pid}/status")) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        // ESRCH: the task exited between open and read.
        Err(e) if e.raw_os_error() == Some(Errno::ESRCH as i32) => return Ok(None),
        Err(e) => return Err(e),
    };
    parse_status(&text).map(Some).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected format of /proc/{pid}/status"),
        )
    })
}

/// The capability sets and `no_new_privs` of this process, from `/proc/self/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Privileges {
    pub inheritable: u64,
    pub permitted: u64,
    pub effective: u64,
    pub bounding: u64,
    pub ambient: u64,
    pub no_new_privs: bool,
}

/// Reads this process's capability sets and `no_new_privs`.
pub fn own_privileges() -> io::Result<Privileges> {
    let text = std::fs::read_to_string("/proc/self/status")?;
    let hex = |name: &str| {
        field(&text, name)
            .and_then(|value| u64::from_str_radix(value, 16).ok())
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("no {name} in /proc/self/status"),
                )
            })
    };
    Ok(Privileges {
        inheritable: hex("CapInh")?,
        permitted: hex("CapPrm")?,
        effective: hex("CapEff")?,
        bounding: hex("CapBnd")?,
        ambient: hex("CapAmb")?,
        no_new_privs: field(&text, "NoNewPrivs") == Some("1"),
    })
}

/// The executable of `pid` (`/proc/PID/exe`). `Ok(None)`: no such process.
pub fn process_executable(pid: u32) -> io::Result<Option<PathBuf>> {
    match std::fs::read_link(format!("/proc/{pid}/exe")) {
        Ok(path) => Ok(Some(path)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// This process's pid.
pub fn own_pid() -> u32 {
    std::process::id()
}

/// This process's effective uid.
pub fn effective_uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// Opens `path` read-only without following a symlink in its last component (`O_NOFOLLOW`);
/// a symlink fails with `ELOOP`. `O_NONBLOCK` keeps a FIFO from blocking the open; callers
/// check the file type on the returned handle.
pub fn open_nofollow(path: &Path) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC).bits())
        .open(path)
}

/// True when the error is "this is a symlink" from [`open_nofollow`].
pub fn is_symlink_error(error: &io::Error) -> bool {
    error.raw_os_error() == Some(Errno::ELOOP as i32)
}

/// Opens a file that holds a secret: no symlink, a regular file, owned by the daemon's uid,
/// and readable by it alone (no group or other permission bits).
pub fn open_private_file(path: &Path) -> io::Result<File> {
    let file = open_nofollow(path)?;
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    check_private(&meta).map_err(|fault| io::Error::new(io::ErrorKind::PermissionDenied, fault))?;
    Ok(file)
}

/// Why a file that holds a secret (node key, chain anchor, credentials) is refused although it
/// is a regular file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PrivateFault {
    #[error(
        "has mode {mode:04o}: other users could read it (expected 0600 or stricter); run `chmod 600` on it"
    )]
    Exposed { mode: u32 },
    #[error("belongs to uid {owner}, not to the daemon (uid {daemon})")]
    WrongOwner { owner: u32, daemon: u32 },
}

/// The one rule for a secret file, checked on the metadata of the open handle (so it applies to
/// the bytes read, not to whatever a rename puts at the path later): no group or other
/// permission bits, and owned by the daemon's effective uid.
pub fn check_private(meta: &std::fs::Metadata) -> Result<(), PrivateFault> {
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(PrivateFault::Exposed { mode });
    }
    let daemon = effective_uid();
    if meta.uid() != daemon {
        return Err(PrivateFault::WrongOwner {
            owner: meta.uid(),
            daemon,
        });
    }
    Ok(())
}

/// Flushes a directory's entries (after a rename, create or unlink inside it) to disk.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes `bytes` to a new file created with `mode` (less the umask) and syncs it. It never
/// overwrites, nor follows a planted symlink to, an existing file (`O_EXCL`), and the mode is
/// set at creation, so a private file is never readable by others, not even briefly.
pub fn write_new_file(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let mut file = File::options()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    io::Write::write_all(&mut file, bytes)?;
    file.sync_all()
}

fn to_pid(pid: u32) -> io::Result<Pid> {
    i32::try_from(pid)
        .ok()
        .filter(|pid| *pid > 0)
        .map(Pid::from_raw)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "pid out of range"))
}

fn parse_status(text: &str) -> Option<ProcessStatus> {
    Some(ProcessStatus {
        name: field(text, "Name")?.to_owned(),
        tgid: field(text, "Tgid")?.parse().ok()?,
        uid: field(text, "Uid")?
            .split_ascii_whitespace()
            .next()?
            .parse()
            .ok()?,
    })
}

/// The value of `Name:\tvalue` in a `/proc/.../status` text.
fn field<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':').map(str::trim))
}

/// Field 22 of a `/proc/PID/stat` line. The command name (field 2) is in parentheses and may
/// itself contain spaces and parentheses, so fields are counted from the last `)`.
fn parse_start_time(stat: &str) -> Option<u64> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    // After the name come field 3 (state) onwards: field 22 is the 20th of those.
    after_comm.split_ascii_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_is_field_22_even_with_parentheses_in_the_name() {
        let stat = "1234 (evil) 1 2 3) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_start_time(stat), Some(987_654));
    }

    #[test]
    fn status_names_the_thread_group_and_the_real_uid() {
        let own = process_status(own_pid()).unwrap().unwrap();
        assert_eq!(own.tgid, own_pid());
        assert_eq!(own.uid, nix::unistd::getuid().as_raw());
        let text =
            "Name:\tsystemd-journal\nUmask:\t0022\nTgid:\t371\nPid:\t372\nUid:\t0\t0\t0\t0\n";
        assert_eq!(
            parse_status(text),
            Some(ProcessStatus {
                name: "systemd-journal".into(),
                tgid: 371,
                uid: 0
            })
        );
    }

    #[test]
    fn own_start_time_is_readable() {
        assert!(process_start_time(own_pid()).unwrap().is_some());
    }

    #[test]
    fn pid_zero_is_refused() {
        assert!(send_signal(0, Signal::SIGTERM).is_err());
        assert!(kill_process_group(0, Signal::SIGKILL).is_err());
    }
}
