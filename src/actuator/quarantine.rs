//! The quarantine directory behind the actuator's `quarantine` and `restore` requests
//! (`file.quarantine`, `file.restore`). Only files under the configured roots
//! (`actions.file.roots`) are touched; the directory belongs to the actuator's user, so neither
//! the daemon nor an `exec` child can read or change what it holds.
//!
//! Layout: `<dir>/<key>` is the quarantined file (mode 0400) and `<dir>/<key>.json` its sidecar
//! (original path, sha256, size, mode, owner, state), where `<key>` is the quarantine step's
//! idempotency key in hex. The sidecars are the index: `file.restore` runs as the rollback of
//! a quarantine step with the same `{path}` but its own key, so it finds the copy by original
//! path. Every change is written to a temporary name, fsynced, renamed, and the directory
//! fsynced, so a crash leaves either the old or the new state; a repeated call picks up from
//! the sidecar.

use std::fs::{self, File};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::protocol::Reply;
use crate::actions::limits;
use crate::sys;

/// Why a quarantine or restore did nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActionError {
    /// Never allowed: a path outside the roots, a symlink, not a regular file.
    Refused(String),
    /// Failed; a retry will fail again.
    Permanent(String),
    /// Failed; a retry may succeed (the file changed under us).
    Transient(String),
}

impl ActionError {
    /// The actuator's reply for this error.
    pub fn into_reply(self) -> Reply {
        match self {
            ActionError::Refused(reason) => Reply::Refused { reason },
            ActionError::Permanent(reason) => Reply::permanent(reason),
            ActionError::Transient(reason) => Reply::transient(reason),
        }
    }
}

/// The quarantine directory and the roots files may be taken from.
pub struct QuarantineStore {
    dir: PathBuf,
    /// Directories (absolute, no symlink) under which files may be quarantined and restored.
    roots: Vec<PathBuf>,
    /// Quarantine and restore read-modify-write the sidecars: one at a time.
    lock: Mutex<()>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Sidecar {
    key: String,
    original_path: PathBuf,
    state: State,
    /// Empty until the file has been moved and hashed.
    sha256: String,
    size: u64,
    mode: u32,
    uid: u32,
    gid: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum State {
    /// Written before the move: if a crash follows, a repeat finishes or redoes it.
    Moving,
    Quarantined,
    Restored,
}

impl QuarantineStore {
    /// A store in `dir` for files under `roots`; nothing is touched until the first request.
    pub fn new(dir: PathBuf, roots: Vec<PathBuf>) -> QuarantineStore {
        QuarantineStore {
            dir,
            roots,
            lock: Mutex::new(()),
        }
    }

    /// Moves `path` into quarantine under `key`. Repeating with the same key and path returns
    /// the same summary.
    pub fn quarantine(&self, path: &Path, key: &str) -> Result<Reply, ActionError> {
        let (_guard, dir) = self.begin(path)?;
        let content = dir.join(key);
        let sidecar_path = sidecar_path(&dir, key);
        if let Some(existing) = read_sidecar(&sidecar_path)? {
            if existing.original_path != path {
                return Err(ActionError::Permanent(format!(
                    "idempotency key already quarantined {}",
                    existing.original_path.display()
                )));
            }
            match existing.state {
                State::Quarantined => return Ok(quarantine_summary(&existing, &content)),
                // Interrupted after the move: finish the bookkeeping.
                State::Moving if content.exists() && !exists_nofollow(path) => {
                    return self.finish_quarantine(existing, &dir, &content);
                }
                State::Moving | State::Restored => {}
            }
        }

        let source = sys::open_nofollow(path).map_err(|e| open_error(path, &e))?;
        let meta = source.metadata().map_err(|e| io_error("stat", path, &e))?;
        if !meta.file_type().is_file() {
            return Err(ActionError::Refused(format!(
                "{} is not a regular file",
                path.display()
            )));
        }
        let sidecar = Sidecar {
            key: key.to_owned(),
            original_path: path.to_owned(),
            state: State::Moving,
            sha256: String::new(),
            size: meta.size(),
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
        };
        write_sidecar(&dir, &sidecar)?;
        move_in(path, &source, &meta, &content, &dir, key)?;
        self.finish_quarantine(sidecar, &dir, &content)
    }

    /// Puts the file quarantined from `path` back, with its mode and owner, after checking its
    /// hash. Already restored (and unchanged) → the same summary.
    pub fn restore(&self, path: &Path) -> Result<Reply, ActionError> {
        let (_guard, dir) = self.begin(path)?;
        let sidecars = list_sidecars(&dir)?;
        let mine = sidecars.iter().filter(|s| s.original_path == path);
        let quarantined = mine.clone().find(|s| {
            s.state == State::Quarantined
                || (s.state == State::Moving && dir.join(&s.key).exists() && !exists_nofollow(path))
        });
        let Some(sidecar) = quarantined else {
            // Idempotent repeat: restored before, and the file there is still the same.
            if let Some(done) = mine.clone().find(|s| s.state == State::Restored)
                && hash_path(path).ok().as_deref() == Some(done.sha256.as_str())
            {
                return Ok(restore_summary(done, &dir));
            }
            return Err(ActionError::Permanent(format!(
                "nothing quarantined from {}",
                path.display()
            )));
        };
        let mut sidecar = sidecar.clone();
        let content = dir.join(&sidecar.key);
        if sidecar.sha256.is_empty() {
            sidecar.sha256 = hash_path(&content).map_err(|e| io_error("hash", &content, &e))?;
        }
        let actual = hash_path(&content).map_err(|e| io_error("hash", &content, &e))?;
        if actual != sidecar.sha256 {
            return Err(ActionError::Permanent(format!(
                "quarantined copy of {} fails its sha256 check (expected {}, found {actual})",
                path.display(),
                sidecar.sha256
            )));
        }
        if exists_nofollow(path) {
            return Err(ActionError::Permanent(format!(
                "{} exists again: not overwriting it",
                path.display()
            )));
        }
        let parent = parent_of(path)?;
        move_out(&content, path, parent, &sidecar)?;
        let restored = hash_path(path).map_err(|e| io_error("hash", path, &e))?;
        if restored != sidecar.sha256 {
            return Err(ActionError::Permanent(format!(
                "restored {} fails its sha256 check",
                path.display()
            )));
        }
        sidecar.state = State::Restored;
        write_sidecar(&dir, &sidecar)?;
        Ok(restore_summary(&sidecar, &dir))
    }

    fn finish_quarantine(
        &self,
        mut sidecar: Sidecar,
        dir: &Path,
        content: &Path,
    ) -> Result<Reply, ActionError> {
        // Hash what actually landed in the 0700 directory, where nobody else can change it.
        sidecar.sha256 = hash_path(content).map_err(|e| io_error("hash", content, &e))?;
        sidecar.size = fs::metadata(content)
            .map_err(|e| io_error("stat", content, &e))?
            .len();
        sidecar.state = State::Quarantined;
        write_sidecar(dir, &sidecar)?;
        Ok(quarantine_summary(&sidecar, content))
    }

    /// What each operation does first: takes the lock (one operation at a time), checks the
    /// directory, and checks that `path` is one the actuator may touch; returns the guard and
    /// the directory's canonical path.
    fn begin(&self, path: &Path) -> Result<(MutexGuard<'_, ()>, PathBuf), ActionError> {
        let guard = self
            .lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let dir = self.ensure_dir()?;
        check_target_path(path, &dir, &self.roots)?;
        Ok((guard, dir))
    }

    /// Creates the directory 0700 if absent and returns its canonical path; refuses one that
    /// is a symlink, not ours, or open to others.
    fn ensure_dir(&self) -> Result<PathBuf, ActionError> {
        let fail = |what: String| {
            ActionError::Permanent(format!(
                "quarantine directory {}: {what}",
                self.dir.display()
            ))
        };
        match fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
        {
            Ok(()) => {}
            Err(e) => return Err(fail(e.to_string())),
        }
        let meta = fs::symlink_metadata(&self.dir).map_err(|e| fail(e.to_string()))?;
        if !meta.file_type().is_dir() {
            return Err(fail("not a directory (or a symlink)".into()));
        }
        if meta.uid() != sys::effective_uid() {
            return Err(fail("not owned by the actuator's uid".into()));
        }
        if meta.mode() & 0o077 != 0 {
            fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700))
                .map_err(|e| fail(e.to_string()))?;
        }
        fs::canonicalize(&self.dir).map_err(|e| fail(e.to_string()))
    }
}

/// Absolute, no `.`/`..`, no symlink anywhere in its directories, under one of `roots`, and
/// not inside the quarantine.
fn check_target_path(
    path: &Path,
    quarantine_dir: &Path,
    roots: &[PathBuf],
) -> Result<(), ActionError> {
    let plain = path.is_absolute()
        && path
            .components()
            .skip(1)
            .all(|c| matches!(c, Component::Normal(_)));
    if !plain {
        return Err(ActionError::Refused(format!(
            "{} must be an absolute path without `.` or `..`",
            path.display()
        )));
    }
    let parent = parent_of(path)?;
    let canonical = fs::canonicalize(parent).map_err(|e| io_error("resolve", parent, &e))?;
    if canonical != parent {
        return Err(ActionError::Refused(format!(
            "{} has a symlink in its directories (resolves to {})",
            path.display(),
            canonical.display()
        )));
    }
    // The same rule the registry applied at load, on the path as given and as resolved.
    limits::check_outside_quarantine(path, quarantine_dir)
        .and_then(|()| {
            limits::check_outside_quarantine(&canonical.join(file_name(path)), quarantine_dir)
        })
        .map_err(|refusal| ActionError::Refused(refusal.to_string()))?;
    // The roots are the operator's grant (see the actuator's drop-in): nothing outside them,
    // whatever the daemon asks, so a compromised daemon cannot move /etc/shadow away.
    if !roots
        .iter()
        .any(|root| fs::canonicalize(root).is_ok_and(|root| canonical.starts_with(root)))
    {
        return Err(ActionError::Refused(format!(
            "{} is outside the file roots the actuator may act in ({}); grant its directory in actions.file.roots",
            path.display(),
            if roots.is_empty() {
                "none configured".to_owned()
            } else {
                roots
                    .iter()
                    .map(|r| r.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        )));
    }
    Ok(())
}

/// The last component of a path `parent_of` accepted.
fn file_name(path: &Path) -> &std::ffi::OsStr {
    path.file_name().unwrap_or_default()
}

fn parent_of(path: &Path) -> Result<&Path, ActionError> {
    path.parent()
        .filter(|_| path.file_name().is_some())
        .ok_or_else(|| ActionError::Permanent(format!("{} names no file", path.display())))
}

/// Moves the opened file at `path` to `content`: a rename, or across filesystems a copy
/// (fsynced) then unlinking the original. Either way the file must still be the one opened.
fn move_in(
    path: &Path,
    source: &File,
    opened: &fs::Metadata,
    content: &Path,
    dir: &Path,
    key: &str,
) -> Result<(), ActionError> {
    let same_file = |meta: &fs::Metadata| meta.dev() == opened.dev() && meta.ino() == opened.ino();
    match fs::rename(path, content) {
        Ok(()) => {
            let moved = fs::symlink_metadata(content).map_err(|e| io_error("stat", content, &e))?;
            if !same_file(&moved) {
                // Swapped between open and rename: put it back and give up.
                let _ = fs::rename(content, path);
                return Err(ActionError::Transient(format!(
                    "{} was replaced while being quarantined",
                    path.display()
                )));
            }
        }
        Err(e) if e.kind() == io::ErrorKind::CrossesDevices => {
            let partial = dir.join(format!("{key}.partial"));
            let _ = fs::remove_file(&partial);
            let mut source = source;
            source.rewind().map_err(|e| io_error("read", path, &e))?;
            copy_synced(&mut source, &partial, 0o400)?;
            fs::rename(&partial, content).map_err(|e| io_error("rename", &partial, &e))?;
            sys::fsync_dir(dir).map_err(|e| io_error("fsync", dir, &e))?;
            let current = fs::symlink_metadata(path).map_err(|e| io_error("stat", path, &e))?;
            if !same_file(&current) {
                let _ = fs::remove_file(content);
                return Err(ActionError::Transient(format!(
                    "{} was replaced while being quarantined",
                    path.display()
                )));
            }
            fs::remove_file(path).map_err(|e| io_error("unlink", path, &e))?;
        }
        Err(e) => return Err(io_error("move", path, &e)),
    }
    fs::set_permissions(content, fs::Permissions::from_mode(0o400))
        .map_err(|e| io_error("chmod", content, &e))?;
    let parent = parent_of(path)?;
    sys::fsync_dir(parent).map_err(|e| io_error("fsync", parent, &e))?;
    sys::fsync_dir(dir).map_err(|e| io_error("fsync", dir, &e))
}

/// Puts `content` back at `path` without ever overwriting something there (a hard link fails
/// if the name exists), with the recorded owner and mode.
fn move_out(
    content: &Path,
    path: &Path,
    parent: &Path,
    sidecar: &Sidecar,
) -> Result<(), ActionError> {
    match fs::hard_link(content, path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::CrossesDevices => {
            let temp = parent.join(format!(".playbookd-restore-{}", sidecar.key));
            let _ = fs::remove_file(&temp);
            let mut source = File::open(content).map_err(|e| io_error("open", content, &e))?;
            copy_synced(&mut source, &temp, 0o600)?;
            let linked = fs::hard_link(&temp, path);
            let _ = fs::remove_file(&temp);
            linked.map_err(|e| io_error("link", path, &e))?;
        }
        Err(e) => return Err(io_error("restore", path, &e)),
    }
    std::os::unix::fs::lchown(path, Some(sidecar.uid), Some(sidecar.gid))
        .map_err(|e| io_error("chown", path, &e))?;
    // After chown, which clears set-id bits.
    fs::set_permissions(path, fs::Permissions::from_mode(sidecar.mode))
        .map_err(|e| io_error("chmod", path, &e))?;
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| io_error("fsync", path, &e))?;
    sys::fsync_dir(parent).map_err(|e| io_error("fsync", parent, &e))?;
    fs::remove_file(content).map_err(|e| io_error("unlink", content, &e))?;
    if let Some(dir) = content.parent() {
        sys::fsync_dir(dir).map_err(|e| io_error("fsync", dir, &e))?;
    }
    Ok(())
}

fn copy_synced(source: &mut impl Read, to: &Path, mode: u32) -> Result<(), ActionError> {
    let mut out = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(to)
        .map_err(|e| io_error("create", to, &e))?;
    io::copy(source, &mut out).map_err(|e| io_error("copy to", to, &e))?;
    out.flush().map_err(|e| io_error("write", to, &e))?;
    out.sync_all().map_err(|e| io_error("fsync", to, &e))
}

fn hash_path(path: &Path) -> io::Result<String> {
    let mut file = sys::open_nofollow(path)?;
    let mut hasher = Sha256::new();
    io::copy(&mut file, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

fn exists_nofollow(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok()
}

fn sidecar_path(dir: &Path, key: &str) -> PathBuf {
    dir.join(format!("{key}.json"))
}

fn read_sidecar(path: &Path) -> Result<Option<Sidecar>, ActionError> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error("read", path, &e)),
    };
    // A sidecar we cannot read is an error, never "nothing quarantined".
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| ActionError::Permanent(format!("corrupt sidecar {}: {e}", path.display())))
}

fn write_sidecar(dir: &Path, sidecar: &Sidecar) -> Result<(), ActionError> {
    let path = sidecar_path(dir, &sidecar.key);
    let temp = dir.join(format!("{}.json.tmp", sidecar.key));
    let _ = fs::remove_file(&temp);
    let bytes = serde_json::to_vec_pretty(sidecar)
        .map_err(|e| ActionError::Permanent(format!("cannot encode sidecar: {e}")))?;
    copy_synced(&mut bytes.as_slice(), &temp, 0o600)?;
    fs::rename(&temp, &path).map_err(|e| io_error("rename", &temp, &e))?;
    sys::fsync_dir(dir).map_err(|e| io_error("fsync", dir, &e))
}

fn list_sidecars(dir: &Path) -> Result<Vec<Sidecar>, ActionError> {
    let mut sidecars = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| io_error("list", dir, &e))? {
        let entry = entry.map_err(|e| io_error("list", dir, &e))?;
        let name = entry.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
            continue;
        };
        if stem.len() == 64
            && stem.bytes().all(|b| b.is_ascii_hexdigit())
            && let Some(sidecar) = read_sidecar(&entry.path())?
        {
            sidecars.push(sidecar);
        }
    }
    Ok(sidecars)
}

fn quarantine_summary(sidecar: &Sidecar, content: &Path) -> Reply {
    Reply::Quarantined {
        path: sidecar.original_path.clone(),
        stored_as: content.to_owned(),
        sha256: sidecar.sha256.clone(),
        size: sidecar.size,
    }
}

fn restore_summary(sidecar: &Sidecar, dir: &Path) -> Reply {
    Reply::Restored {
        path: sidecar.original_path.clone(),
        restored_from: dir.join(&sidecar.key),
        sha256: sidecar.sha256.clone(),
        size: sidecar.size,
    }
}

fn open_error(path: &Path, error: &io::Error) -> ActionError {
    if sys::is_symlink_error(error) {
        ActionError::Refused(format!("{} is a symlink: refused", path.display()))
    } else if error.kind() == io::ErrorKind::NotFound {
        ActionError::Permanent(format!("{} does not exist", path.display()))
    } else {
        io_error("open", path, error)
    }
}

fn io_error(what: &str, path: &Path, error: &io::Error) -> ActionError {
    ActionError::Permanent(format!("cannot {what} {}: {error}", path.display()))
}
