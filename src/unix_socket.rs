//! Unix-socket plumbing shared by decisions.sock and control.sock: safe binding (a stale
//! socket from a crash is replaced, a live one or a non-socket is not), permissions, peer
//! credentials, and bounded NDJSON line reading.

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use std::future::Future;
use std::sync::Arc;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

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

/// A socket file left by a crashed daemon refuses connections: only then is it removed.
fn remove_stale(path: &Path) -> Result<(), BindError> {
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

/// Accepts connections until `shutdown`, each served by `serve` in a task of its own. Beyond
/// `max_connections` at once, a connection gets `busy_line` and is closed, so idle or
/// half-open peers can never make a real client wait.
pub async fn accept_loop<F, Fut>(
    listener: UnixListener,
    max_connections: usize,
    shutdown: CancellationToken,
    busy_line: Vec<u8>,
    serve: F,
) where
    F: Fn(UnixStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(max_connections));
    let busy_line: Arc<[u8]> = busy_line.into();
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
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            let busy_line = busy_line.clone();
            tokio::spawn(async move {
                let mut stream = stream;
                let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&busy_line))
                    .await;
            });
            continue;
        };
        let connection = serve(stream);
        tokio::spawn(async move {
            connection.await;
            drop(slot);
        });
    }
}

/// One request from a peer, as [`answer_lines`] hands it over.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// A complete, non-blank line (without its newline).
    Line(Vec<u8>),
    /// A line over the limit; it was skipped up to its newline.
    TooLong,
}

/// Answers each line the peer sends with the line `answer` returns, in order, until the peer
/// closes, stays idle for `idle`, the write fails, or `shutdown` fires. Blank lines get no answer.
pub async fn answer_lines<R, W, F, Fut>(
    read: R,
    mut write: W,
    max: usize,
    idle: Duration,
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
            read = read_line(&mut reader, &mut line, max, idle) => read,
        };
        let request = match read {
            Ok(Line::Complete) if line.iter().all(u8::is_ascii_whitespace) => continue,
            Ok(Line::Complete) => Request::Line(std::mem::take(&mut line)),
            Ok(Line::TooLong) => Request::TooLong,
            Ok(Line::Closed | Line::Idle) | Err(_) => return,
        };
        if write.write_all(&answer(request).await).await.is_err() {
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
    /// The peer sent nothing for the idle limit.
    Idle,
}

/// Reads one `\n`-terminated line of at most `max` bytes into `buf` (cleared first), never
/// buffering more than `max` bytes whatever the peer sends.
pub async fn read_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
    idle: Duration,
) -> io::Result<Line> {
    buf.clear();
    let mut too_long = false;
    loop {
        let available = match tokio::time::timeout(idle, reader.fill_buf()).await {
            Err(_) => return Ok(Line::Idle),
            Ok(result) => result?,
        };
        if available.is_empty() {
            return Ok(if buf.is_empty() || too_long {
                Line::Closed
            } else {
                Line::Complete
            });
        }
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
}
