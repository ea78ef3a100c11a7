//! Reading a file only when nobody but root or the daemon could have put its bytes there.
//!
//! A signature protects the bytes, but the checks here keep an attacker from even getting a
//! file considered: a group- or world-writable playbook (or directory) lets another local user
//! swap a signed file for another signed file (an older version, a playbook meant for another
//! host); a symlink out of the directory lets whoever controls the target choose what we read;
//! a FIFO or device would block or misbehave; an enormous file would exhaust memory before
//! the signature check could refuse it. Compare sudo-rs `system/audit.rs`.

use std::fs::{File, Metadata};
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;

/// The largest playbook, bindings file or key we read (1 MiB).
pub const DOCUMENT_LIMIT: u64 = 1024 * 1024;
/// The largest signature file we read: far above any RSA-16384 signature.
pub const SIGNATURE_LIMIT: u64 = 64 * 1024;

/// Why a file was not read. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{path} does not exist")]
    Missing { path: PathBuf },
    #[error("failed to read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} resolves to {target}, outside {dir}")]
    OutsideDirectory {
        path: PathBuf,
        target: PathBuf,
        dir: PathBuf,
    },
    #[error("{path} is not a regular file")]
    NotRegular { path: PathBuf },
    #[error("{path} is group- or world-writable (mode {mode:o}); only its owner may write it")]
    Writable { path: PathBuf, mode: u32 },
    #[error(
        "{path} is owned by uid {uid}; only root or the daemon user (uid {daemon_uid}) may own it"
    )]
    Owner {
        path: PathBuf,
        uid: u32,
        daemon_uid: u32,
    },
    #[error("{path} is larger than the {limit}-byte limit")]
    TooLarge { path: PathBuf, limit: u64 },
}

impl OpenError {
    /// A short, stable name for the kind of refusal (metric labels, audit data).
    pub fn label(&self) -> &'static str {
        match self {
            OpenError::Missing { .. } => "missing",
            OpenError::Read { .. } => "read_failed",
            OpenError::OutsideDirectory { .. } => "symlink_outside_dir",
            OpenError::NotRegular { .. } => "not_regular_file",
            OpenError::Writable { .. } => "insecure_permissions",
            OpenError::Owner { .. } => "insecure_owner",
            OpenError::TooLarge { .. } => "too_large",
        }
    }
}

/// A directory whose files may be read, once it passed the same owner and mode checks.
#[derive(Debug, Clone)]
pub struct TrustedDir {
    /// Canonical (symlink-free) path: every file read must resolve inside it.
    root: PathBuf,
    daemon_uid: u32,
}

impl TrustedDir {
    /// Checks `dir` itself: a directory, owned by root or the current user, not group- or
    /// world-writable (anyone who can write the directory can replace its files).
    pub fn open(dir: &Path) -> Result<TrustedDir, OpenError> {
        let daemon_uid = nix::unistd::geteuid().as_raw();
        let root = std::fs::canonicalize(dir).map_err(|source| io_error(dir, source))?;
        let metadata = std::fs::metadata(&root).map_err(|source| io_error(dir, source))?;
        if !metadata.is_dir() {
            return Err(OpenError::NotRegular {
                path: dir.to_owned(),
            });
        }
        check_owner_and_mode(dir, &metadata, daemon_uid)?;
        Ok(TrustedDir { root, daemon_uid })
    }

    /// The directory of `file` (its parent, or `.`), checked as by [`TrustedDir::open`].
    pub fn parent_of(file: &Path) -> Result<TrustedDir, OpenError> {
        match file.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => TrustedDir::open(parent),
            _ => TrustedDir::open(Path::new(".")),
        }
    }

    /// Reads `path` whole if it resolves inside this directory, is a regular file owned by
    /// root or the daemon user, is not group- or world-writable, and holds at most `limit`
    /// bytes. At most `limit + 1` bytes are ever read, whatever the file claims its size is.
    pub fn read(&self, path: &Path, limit: u64) -> Result<Vec<u8>, OpenError> {
        let target = std::fs::canonicalize(path).map_err(|source| io_error(path, source))?;
        if !target.starts_with(&self.root) {
            return Err(OpenError::OutsideDirectory {
                path: path.to_owned(),
                target,
                dir: self.root.clone(),
            });
        }
        // Look before opening so that a FIFO or device is never opened at all.
        let before = std::fs::symlink_metadata(&target).map_err(|source| io_error(path, source))?;
        if !before.file_type().is_file() {
            return Err(OpenError::NotRegular {
                path: path.to_owned(),
            });
        }
        // O_NOFOLLOW: the resolved path must not have become a symlink since; O_NONBLOCK: if
        // it was swapped for a FIFO, opening it does not hang. The fstat below is what counts.
        let mut file = File::options()
            .read(true)
            .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC).bits())
            .open(&target)
            .map_err(|source| io_error(path, source))?;
        let metadata = file.metadata().map_err(|source| io_error(path, source))?;
        if !metadata.file_type().is_file() {
            return Err(OpenError::NotRegular {
                path: path.to_owned(),
            });
        }
        check_owner_and_mode(path, &metadata, self.daemon_uid)?;
        if metadata.len() > limit {
            return Err(OpenError::TooLarge {
                path: path.to_owned(),
                limit,
            });
        }
        let mut bytes = Vec::new();
        (&mut file)
            .take(limit.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(|source| io_error(path, source))?;
        // The file grew between fstat and read.
        if u64::try_from(bytes.len()).map_or(true, |len| len > limit) {
            return Err(OpenError::TooLarge {
                path: path.to_owned(),
                limit,
            });
        }
        Ok(bytes)
    }

    /// The canonical directory path.
    pub fn path(&self) -> &Path {
        &self.root
    }
}

fn check_owner_and_mode(
    path: &Path,
    metadata: &Metadata,
    daemon_uid: u32,
) -> Result<(), OpenError> {
    let mode = metadata.mode();
    if mode & 0o022 != 0 {
        return Err(OpenError::Writable {
            path: path.to_owned(),
            mode: mode & 0o7777,
        });
    }
    let uid = metadata.uid();
    if uid != 0 && uid != daemon_uid {
        return Err(OpenError::Owner {
            path: path.to_owned(),
            uid,
            daemon_uid,
        });
    }
    Ok(())
}

fn io_error(path: &Path, source: std::io::Error) -> OpenError {
    if source.kind() == std::io::ErrorKind::NotFound {
        OpenError::Missing {
            path: path.to_owned(),
        }
    } else {
        OpenError::Read {
            path: path.to_owned(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn private_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        dir
    }

    #[test]
    fn reads_a_private_file_and_refuses_a_group_writable_one() {
        let dir = private_dir();
        let file = dir.path().join("a.yaml");
        std::fs::write(&file, b"id: a").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let trusted = TrustedDir::open(dir.path()).unwrap();
        assert_eq!(trusted.read(&file, 100).unwrap(), b"id: a");

        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o664)).unwrap();
        let error = trusted.read(&file, 100).unwrap_err();
        assert!(matches!(error, OpenError::Writable { .. }), "{error}");
    }

    #[test]
    fn refuses_a_file_over_the_limit() {
        let dir = private_dir();
        let file = dir.path().join("big.yaml");
        std::fs::write(&file, vec![b'a'; 101]).unwrap();
        let trusted = TrustedDir::open(dir.path()).unwrap();
        assert!(matches!(
            trusted.read(&file, 100).unwrap_err(),
            OpenError::TooLarge { limit: 100, .. }
        ));
        assert_eq!(trusted.read(&file, 101).unwrap().len(), 101);
    }

    #[test]
    fn follows_a_symlink_inside_but_not_one_leading_out() {
        let outside = private_dir();
        let dir = private_dir();
        std::fs::write(outside.path().join("x.yaml"), b"x").unwrap();
        std::fs::write(dir.path().join("real.yaml"), b"r").unwrap();
        std::os::unix::fs::symlink(dir.path().join("real.yaml"), dir.path().join("in.yaml"))
            .unwrap();
        std::os::unix::fs::symlink(outside.path().join("x.yaml"), dir.path().join("out.yaml"))
            .unwrap();
        let trusted = TrustedDir::open(dir.path()).unwrap();
        assert_eq!(trusted.read(&dir.path().join("in.yaml"), 10).unwrap(), b"r");
        let error = trusted.read(&dir.path().join("out.yaml"), 10).unwrap_err();
        assert!(
            matches!(error, OpenError::OutsideDirectory { .. }),
            "{error}"
        );
    }

    #[test]
    fn refuses_a_fifo_without_blocking() {
        let dir = private_dir();
        let fifo = dir.path().join("f.yaml");
        nix::unistd::mkfifo(
            &fifo,
            nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR,
        )
        .unwrap();
        let trusted = TrustedDir::open(dir.path()).unwrap();
        assert!(matches!(
            trusted.read(&fifo, 10).unwrap_err(),
            OpenError::NotRegular { .. }
        ));
    }

    #[test]
    fn refuses_a_world_writable_directory() {
        let dir = private_dir();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(matches!(
            TrustedDir::open(dir.path()).unwrap_err(),
            OpenError::Writable { .. }
        ));
    }
}
