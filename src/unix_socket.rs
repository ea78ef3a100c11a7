//! Unix-socket plumbing shared by decisions.sock and control.sock: safe binding (a stale
//! socket from a crash is replaced, a live one or a non-socket is not; the status API's
//! socket follows the same policy), permissions, peer
//! credentials checked at connect, connection slots (per uid, with a reserve for privileged
//! peers), bounded NDJSON line reading with a deadline per line, and the one server loop
//! ([`serve`]) both sockets run around their [`LineService`].

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::UCred;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::store::audit::{AuditEvent, AuditHandle, error_chain};

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("{path}: another process is already serving on this socket")]
    InUse { path: PathBuf },
    #[error("{path}: exists and is not a socket; refusing to replace it")]
    NotASocket { path: PathBuf },
    #[error("{path}: unknown group `{group}`")]
    UnknownGroup { path: PathBuf, group: String },
    #[error(
        "{path}: cannot give the socket to group `{group}`: the daemon's user is not a member; add it (`usermod -aG {group} USER`) or let systemd create the socket (playbookd.socket sets SocketGroup=)"
    )]
    GroupNotPermitted { path: PathBuf, group: String },
    #[error("{path}: {action} failed")]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: io::Error,
    },
}

impl BindError {
    /// An error from `action` on `path`.
    pub fn io(path: &Path, action: &'static str, source: io::Error) -> BindError {
        BindError::Io {
            path: path.to_owned(),
            action,
            source,
        }
    }

    /// True when an operator must change something (a path, a group, a membership) before a
    /// restart can help: such errors exit 78 so systemd does not loop.
    pub fn is_config(&self) -> bool {
        match self {
            BindError::NotASocket { .. }
            | BindError::UnknownGroup { .. }
            | BindError::GroupNotPermitted { .. } => true,
            BindError::Io { source, .. } => matches!(
                source.kind(),
                io::ErrorKind::PermissionDenied | io::ErrorKind::NotFound
            ),
            BindError::InUse { .. } => false,
        }
    }
}

/// A listener systemd passed (socket activation), made ready for tokio. Nothing about its path,
/// owner or mode is changed: the socket unit decided those.
pub fn listener_from_std(listener: std::os::unix::net::UnixListener) -> io::Result<UnixListener> {
    listener.set_nonblocking(true)?;
    UnixListener::from_std(listener)
}

/// Binds `path` with mode 0660 and, when given, group `group`.
pub fn bind(path: &Path, group: Option<&str>) -> Result<UnixListener, BindError> {
    let io_error = |action: &'static str| {
        let path = path.to_owned();
        move |source| BindError::Io {
            path,
            action,
            source,
        }
    };
    remove_stale(path)?;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io_error("creating its directory"))?;
    }
    let listener = UnixListener::bind(path).map_err(io_error("bind"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(io_error("chmod 0660"))?;
    if let Some(name) = group {
        let gid = nix::unistd::Group::from_name(name)
            .ok()
            .flatten()
            .ok_or_else(|| BindError::UnknownGroup {
                path: path.to_owned(),
                group: name.to_owned(),
            })?
            .gid;
        nix::unistd::chown(path, None, Some(gid)).map_err(|errno| match errno {
            nix::errno::Errno::EPERM => BindError::GroupNotPermitted {
                path: path.to_owned(),
                group: name.to_owned(),
            },
            errno => BindError::Io {
                path: path.to_owned(),
                action: "chgrp",
                source: errno.into(),
            },
        })?;
    }
    Ok(listener)
}

/// The one stale-socket policy, for every socket the daemon binds (decisions, control, the
/// status API): a socket file left by a crashed daemon refuses connections, and only then is
/// it removed. A live one belongs to a running process (perhaps a second instance started by
/// mistake) and is never unlinked; anything that is not a socket is never touched.
pub fn remove_stale(path: &Path) -> Result<(), BindError> {
    let Ok(metadata) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !metadata.file_type().is_socket() {
        return Err(BindError::NotASocket {
            path: path.to_owned(),
        });
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(BindError::InUse {
            path: path.to_owned(),
        }),
        Err(_) => std::fs::remove_file(path).map_err(|source| BindError::Io {
            path: path.to_owned(),
            action: "removing the stale socket",
            source,
        }),
    }
}

/// A service on one of the daemon's NDJSON sockets (decisions.sock, control.sock): who may
/// connect, and the reply to each request line. [`serve`] is the server loop around it.
pub trait LineService: Clone + Send + Sync + 'static {
    /// What [`LineService::admit`] learned about a peer, handed to each reply.
    type Peer: Send + Sync + 'static;
    /// The longest request line, newline excluded.
    const MAX_LINE_BYTES: usize;
    /// What each line must hold, named when a blank one arrives (`JSON decision`).
    const LINE_HOLDS: &'static str;
    /// The setting that bounds each line's time, named when a line does not complete in time.
    const LINE_DEADLINE_KEY: &'static str;

    /// The socket's connection slots and line deadline.
    fn socket(&self) -> SocketSettings;
    /// Judges a peer from its kernel credentials at connect, before it holds a slot.
    fn admit(&self, credentials: UCred) -> Admission<Self::Peer>;
    /// The reply line for an admitted peer that found no free slot.
    fn busy(&self, busy: Busy) -> Vec<u8>;
    /// The reply line to one complete, non-blank request line.
    fn answer(&self, line: &[u8], peer: &Self::Peer) -> impl Future<Output = Vec<u8>> + Send;
    /// The reply line to a line that is no request (blank, too long, incomplete); `reason`
    /// says what was wrong with it.
    fn malformed(&self, reason: String, peer: &Self::Peer) -> impl Future<Output = Vec<u8>> + Send;
}

/// Serves `service` on `listener` until `shutdown`: [`accept_loop`] with the service's limits
/// and admission, then [`answer_lines`] on each connection, in a task of its own.
pub async fn serve<S: LineService>(
    service: S,
    listener: UnixListener,
    shutdown: CancellationToken,
) {
    let (gate, busy) = (service.clone(), service.clone());
    let stop = shutdown.clone();
    accept_loop(
        listener,
        service.socket().limits,
        shutdown,
        move |credentials| gate.admit(credentials),
        move |why| busy.busy(why),
        move |stream, peer| connection(service.clone(), stream, peer, stop.clone()),
    )
    .await;
}

/// One connection of [`serve`]: each line answered in order, every malformed line answered
/// with its reason.
async fn connection<S: LineService>(
    service: S,
    stream: UnixStream,
    peer: S::Peer,
    shutdown: CancellationToken,
) {
    let (read, write) = stream.into_split();
    let deadline = service.socket().line_deadline;
    let (service, peer) = (&service, &peer);
    answer_lines(
        read,
        write,
        S::MAX_LINE_BYTES,
        deadline,
        &shutdown,
        |request| async move {
            let reason = match request {
                Request::Line(line) => return service.answer(&line, peer).await,
                Request::Blank => {
                    format!("malformed: empty line; send one {} per line", S::LINE_HOLDS)
                }
                Request::TooLong => {
                    format!("malformed: line longer than {} bytes", S::MAX_LINE_BYTES)
                }
                Request::Incomplete => format!(
                    "malformed: line not complete within {} s ({}); connection closed",
                    deadline.as_secs(),
                    S::LINE_DEADLINE_KEY
                ),
            };
            service.malformed(reason, peer).await
        },
    )
    .await;
}

/// The settings of one of the daemon's NDJSON sockets (`[intake]`, `[control]`), resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketSettings {
    pub limits: Limits,
    /// Deadline for each request line, from the first byte waited for to its newline.
    pub line_deadline: Duration,
}

/// How many connections a listener holds, and for whom.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections held at once, reserved slots included.
    pub max_connections: usize,
    /// Connections one uid may hold at once, so one peer (or one compromised account) cannot
    /// take every slot from the others.
    pub max_per_uid: usize,
    /// Slots only privileged peers (admins on control.sock) may take, so a flood of ordinary
    /// peers can never lock the people who clear a SAFE-HALT out of the socket.
    pub reserved_for_privileged: usize,
}

/// What a listener decided about a peer at connect, from its kernel credentials alone and
/// before reading a byte: a peer that may not use the socket never holds a slot.
#[must_use]
pub enum Admission<P> {
    /// Serve the connection; `privileged` peers may use the reserved slots.
    Serve { peer: P, privileged: bool },
    /// Refuse the connection with this reply line; the connection is closed at once.
    Refuse(Vec<u8>),
}

/// Why a peer allowed on the socket found no free slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Busy {
    /// The peer's uid already holds `limit` connections.
    PerUid { uid: u32, limit: usize },
    /// Every slot the peer may use is taken.
    Full { limit: usize },
}

/// Accepts connections until `shutdown`. Each peer is judged by `admit` from SO_PEERCRED at
/// connect; an admitted peer that finds a free slot ([`Limits`]) is served by `serve` in a task
/// of its own, holding the slot until it returns. A refused peer gets its reason and a peer
/// with no free slot gets `busy(..)`; both lines are written without waiting and the
/// connection is closed, so neither can make a real client wait.
pub async fn accept_loop<P, A, B, F, Fut>(
    listener: UnixListener,
    limits: Limits,
    shutdown: CancellationToken,
    admit: A,
    busy: B,
    serve: F,
) where
    P: Send + 'static,
    A: Fn(UCred) -> Admission<P>,
    B: Fn(Busy) -> Vec<u8>,
    F: Fn(UnixStream, P) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let slots = Slots::new(limits);
    let lingering = Arc::new(Semaphore::new(MAX_LINGERING));
    loop {
        let stream = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // EMFILE and friends: pause rather than spin.
                    tracing::warn!(error = %error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let credentials = match stream.peer_cred() {
            Ok(credentials) => credentials,
            Err(error) => {
                tracing::warn!(error = %error, "no peer credentials; connection dropped");
                continue;
            }
        };
        let (peer, privileged) = match admit(credentials) {
            Admission::Serve { peer, privileged } => (peer, privileged),
            Admission::Refuse(line) => {
                refuse_now(stream, &line, &lingering);
                continue;
            }
        };
        let slot = match slots.acquire(credentials.uid(), privileged) {
            Ok(slot) => slot,
            Err(why) => {
                refuse_now(stream, &busy(why), &lingering);
                continue;
            }
        };
        let connection = serve(stream, peer);
        tokio::spawn(async move {
            connection.await;
            drop(slot);
        });
    }
}

/// The connection slots of one listener: a general pool, a reserved pool for privileged
/// peers, and a count per uid.
struct Slots {
    general: Arc<Semaphore>,
    reserved: Arc<Semaphore>,
    per_uid: Arc<Mutex<HashMap<u32, usize>>>,
    max_per_uid: usize,
    max_connections: usize,
}

/// One held slot; dropping it gives the slot (and the uid's share) back.
struct Slot {
    _permit: OwnedSemaphorePermit,
    uid: u32,
    per_uid: Arc<Mutex<HashMap<u32, usize>>>,
}

impl Slots {
    fn new(limits: Limits) -> Slots {
        let reserved = limits
            .reserved_for_privileged
            .min(limits.max_connections.saturating_sub(1));
        Slots {
            general: Arc::new(Semaphore::new(limits.max_connections - reserved)),
            reserved: Arc::new(Semaphore::new(reserved)),
            per_uid: Arc::new(Mutex::new(HashMap::new())),
            max_per_uid: limits.max_per_uid.max(1),
            max_connections: limits.max_connections,
        }
    }

    fn acquire(&self, uid: u32, privileged: bool) -> Result<Slot, Busy> {
        let mut per_uid = lock(&self.per_uid);
        let held = per_uid.get(&uid).copied().unwrap_or(0);
        if held >= self.max_per_uid {
            return Err(Busy::PerUid {
                uid,
                limit: self.max_per_uid,
            });
        }
        let permit = match self.general.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) if privileged => {
                self.reserved
                    .clone()
                    .try_acquire_owned()
                    .map_err(|_| Busy::Full {
                        limit: self.max_connections,
                    })?
            }
            Err(_) => {
                return Err(Busy::Full {
                    limit: self.max_connections,
                });
            }
        };
        per_uid.insert(uid, held + 1);
        Ok(Slot {
            _permit: permit,
            uid,
            per_uid: Arc::clone(&self.per_uid),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut per_uid = lock(&self.per_uid);
        if let Some(held) = per_uid.get_mut(&self.uid) {
            *held -= 1;
            if *held == 0 {
                per_uid.remove(&self.uid);
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The maps hold counts only; a panic elsewhere cannot leave them half-updated.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Writes `line` without waiting (a fresh socket's buffer always has room for one short line)
/// and closes the connection. So that a client that sent its request before reading still
/// gets the reason rather than a broken pipe, a bounded number of refused connections are
/// drained for at most [`LINGER`] first; beyond that bound they are closed at once.
fn refuse_now(stream: UnixStream, line: &[u8], lingering: &Arc<Semaphore>) {
    use std::io::Write;
    let Ok(mut stream) = stream.into_std() else {
        return;
    };
    let _ = stream.write(line);
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let Ok(permit) = lingering.clone().try_acquire_owned() else {
        return;
    };
    let Ok(stream) = UnixStream::from_std(stream) else {
        return;
    };
    tokio::spawn(async move {
        let mut stream = stream;
        let mut sink = [0u8; 4096];
        let drain = async { while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {} };
        let _ = tokio::time::timeout(LINGER, drain).await;
        drop(permit);
    });
}

/// Records refused connections at most once per uid per [`REFUSAL_RECORD_INTERVAL`], with the
/// number refused since, so a peer that reconnects in a loop cannot flood the audit log.
#[derive(Default)]
pub struct RefusalThrottle {
    seen: Mutex<HashMap<u32, (Instant, u64)>>,
}

impl RefusalThrottle {
    /// Counts one refusal of `uid` and, unless one was recorded less than the interval ago,
    /// appends `event(refusals)` to the audit log in a task of its own: the refused peer gets
    /// its reason at once, and an append that fails is logged.
    pub fn record(&self, uid: u32, audit: &AuditHandle, event: impl FnOnce(u64) -> AuditEvent) {
        let Some(refusals) = self.count(uid) else {
            return;
        };
        let (audit, event) = (audit.clone(), event(refusals));
        tokio::spawn(async move {
            if let Err(error) = audit.append(event).await {
                tracing::warn!(error = %error_chain(&error), "peer refusal not recorded in the audit log");
            }
        });
    }

    /// Counts one refusal of `uid`; returns how many refusals (this one included) to record
    /// now, or `None` when a record for this uid was written less than the interval ago.
    fn count(&self, uid: u32) -> Option<u64> {
        let now = Instant::now();
        let mut seen = lock(&self.seen);
        if seen.len() > 10_000 {
            seen.retain(|_, (at, _)| now.duration_since(*at) < REFUSAL_RECORD_INTERVAL);
        }
        match seen.get_mut(&uid) {
            Some((at, pending)) if now.duration_since(*at) < REFUSAL_RECORD_INTERVAL => {
                *pending += 1;
                None
            }
            Some((at, pending)) => {
                let count = *pending + 1;
                *at = now;
                *pending = 0;
                Some(count)
            }
            None => {
                seen.insert(uid, (now, 0));
                Some(1)
            }
        }
    }
}

/// One request from a peer, as [`answer_lines`] hands it over.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// A complete, non-blank line (without its newline).
    Line(Vec<u8>),
    /// An empty or whitespace-only line.
    Blank,
    /// A line over the limit; it was skipped up to its newline.
    TooLong,
    /// Part of a line arrived but not its end within the line deadline; the connection closes
    /// after the answer.
    Incomplete,
}

/// Answers each line the peer sends with the line `answer` returns, in order, until the peer
/// closes, a line (from the first byte waited for to its newline) takes longer than
/// `line_deadline`, an answer cannot be written within it, or `shutdown` fires.
///
/// The deadline is per line, not per read: a peer dripping one byte at a time cannot hold its
/// connection (and slot) beyond one deadline per line.
pub async fn answer_lines<R, W, F, Fut>(
    read: R,
    mut write: W,
    max: usize,
    line_deadline: Duration,
    shutdown: &CancellationToken,
    mut answer: F,
) where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
    F: FnMut(Request) -> Fut,
    Fut: Future<Output = Vec<u8>>,
{
    let mut reader = tokio::io::BufReader::new(read);
    let mut line = Vec::with_capacity(1024);
    loop {
        let read = tokio::select! {
            () = shutdown.cancelled() => return,
            read = read_line(&mut reader, &mut line, max, line_deadline) => read,
        };
        let (request, last) = match read {
            Ok(Line::Complete) if line.iter().all(u8::is_ascii_whitespace) => {
                (Request::Blank, false)
            }
            Ok(Line::Complete) => (Request::Line(std::mem::take(&mut line)), false),
            Ok(Line::TooLong) => (Request::TooLong, false),
            Ok(Line::TimedOut { partial: true }) => (Request::Incomplete, true),
            Ok(Line::Closed | Line::TimedOut { partial: false }) | Err(_) => return,
        };
        let reply = answer(request).await;
        let written = tokio::time::timeout(line_deadline, write.write_all(&reply)).await;
        if last || !matches!(written, Ok(Ok(()))) {
            return;
        }
    }
}

/// One line read from a peer.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A complete line (without its newline) is in the buffer.
    Complete,
    /// The line exceeded the limit; it was discarded up to its newline.
    TooLong,
    /// The peer closed the connection.
    Closed,
    /// The line was not complete within the deadline; `partial` when some of it had arrived.
    TimedOut { partial: bool },
}

/// Reads one `\n`-terminated line of at most `max` bytes into `buf` (cleared first), never
/// buffering more than `max` bytes whatever the peer sends, and giving up when the whole line
/// has not arrived within `deadline` of the call.
pub async fn read_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
    deadline: Duration,
) -> io::Result<Line> {
    buf.clear();
    let until = tokio::time::Instant::now() + deadline;
    let mut too_long = false;
    let mut received = false;
    loop {
        let available = match tokio::time::timeout_at(until, reader.fill_buf()).await {
            Err(_) => return Ok(Line::TimedOut { partial: received }),
            Ok(result) => result?,
        };
        if available.is_empty() {
            return Ok(if buf.is_empty() || too_long {
                Line::Closed
            } else {
                Line::Complete
            });
        }
        received = true;
        let (chunk, found_newline) = match available.iter().position(|&b| b == b'\n') {
            Some(at) => (&available[..at], true),
            None => (available, false),
        };
        if !too_long && buf.len() + chunk.len() <= max {
            buf.extend_from_slice(chunk);
        } else {
            too_long = true;
            buf.clear();
        }
        let used = chunk.len() + usize::from(found_newline);
        reader.consume(used);
        if found_newline {
            return Ok(if too_long {
                Line::TooLong
            } else {
                Line::Complete
            });
        }
    }
}

/// Refused connections drained at once so their peers can read the reason.
const MAX_LINGERING: usize = 64;
/// How long a refused connection is drained before it is closed.
const LINGER: Duration = Duration::from_secs(1);
/// At most one audit record per refused uid per interval (the count covers the rest).
pub const REFUSAL_RECORD_INTERVAL: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines(input: &[u8], max: usize) -> Vec<(Line, Vec<u8>)> {
        let mut reader = tokio::io::BufReader::with_capacity(4, input);
        let mut buf = Vec::new();
        let mut out = Vec::new();
        loop {
            let line = read_line(&mut reader, &mut buf, max, Duration::from_secs(1))
                .await
                .unwrap();
            if line == Line::Closed {
                return out;
            }
            out.push((line, buf.clone()));
        }
    }

    #[tokio::test]
    async fn splits_lines_and_refuses_long_ones_without_losing_the_next() {
        let got = lines(b"abc\n0123456789\nok\n", 5).await;
        assert_eq!(
            got,
            vec![
                (Line::Complete, b"abc".to_vec()),
                (Line::TooLong, Vec::new()),
                (Line::Complete, b"ok".to_vec()),
            ]
        );
    }

    #[tokio::test]
    async fn a_last_line_without_newline_still_counts() {
        assert_eq!(
            lines(b"tail", 10).await,
            vec![(Line::Complete, b"tail".to_vec())]
        );
    }

    #[tokio::test]
    async fn a_line_dripped_byte_by_byte_times_out_as_a_whole() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut reader = tokio::io::BufReader::new(server);
        let drip = tokio::spawn(async move {
            for _ in 0..100 {
                if client.write_all(b"x").await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        let mut buf = Vec::new();
        let started = Instant::now();
        let line = read_line(&mut reader, &mut buf, 1024, Duration::from_millis(400))
            .await
            .unwrap();
        assert_eq!(line, Line::TimedOut { partial: true });
        // Each byte came well within the deadline; the line as a whole did not.
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        drip.abort();
    }

    #[test]
    fn slots_limit_each_uid_and_keep_a_reserve_for_privileged_peers() {
        let slots = Slots::new(Limits {
            max_connections: 4,
            max_per_uid: 2,
            reserved_for_privileged: 1,
        });
        let a1 = slots.acquire(1000, false).unwrap();
        let _a2 = slots.acquire(1000, false).unwrap();
        assert_eq!(
            slots.acquire(1000, false).err(),
            Some(Busy::PerUid {
                uid: 1000,
                limit: 2
            })
        );
        let _b1 = slots.acquire(1001, false).unwrap();
        // Three general slots are taken: an ordinary peer is busy, an admin gets the reserve.
        assert_eq!(
            slots.acquire(1002, false).err(),
            Some(Busy::Full { limit: 4 })
        );
        let admin = slots.acquire(0, true).unwrap();
        assert_eq!(slots.acquire(2, true).err(), Some(Busy::Full { limit: 4 }));
        drop(a1);
        assert!(slots.acquire(1000, false).is_ok());
        drop(admin);
        assert!(lock(&slots.per_uid).get(&0).is_none());
    }

    #[test]
    fn refusals_are_recorded_once_per_interval_with_a_count() {
        let throttle = RefusalThrottle::default();
        assert_eq!(throttle.count(7), Some(1));
        assert_eq!(throttle.count(7), None);
        assert_eq!(throttle.count(7), None);
        assert_eq!(throttle.count(8), Some(1));
        lock(&throttle.seen).get_mut(&7).unwrap().0 -= REFUSAL_RECORD_INTERVAL;
        assert_eq!(throttle.count(7), Some(3));
    }
}
