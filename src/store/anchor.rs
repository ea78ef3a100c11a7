//! The chain anchor: this node's last committed chain head and last signed checkpoint, kept in
//! the daemon's state directory, outside the database, so that a database that lost rows (a
//! tail cut by whoever can write it, or a failover to a standby that missed the last commits)
//! cannot make the daemon append on top of the gap.
//!
//! # File
//! `chain-anchor.json` beside the node key (`paths.node_key`'s directory), owner-only (0600),
//! owned by the daemon; a file with another owner or mode, a symlink, or one that does not
//! decode stops the daemon (exit 78) — no field has a default. It holds the node id, the last
//! committed head (seq, hash), the last signed checkpoint (seq, hash, key id, signature) and a
//! detected cut, if any, with its acknowledgment.
//!
//! # Durability
//! Every write goes to a temporary file that is renamed over the anchor. After each committed
//! audit batch the head is renamed in without fsync: that survives a daemon crash (the kernel
//! has the data) at the cost of a small write and a rename. At every checkpoint, at a detected
//! cut and at an acknowledgment the file and its directory are fsynced: what a checkpoint signs
//! survives a power loss too. Checkpoints are taken at once on SAFE-HALT (entered or cleared),
//! on an approval decision and at shutdown, so the head of those events is durable.
//!
//! # Detection
//! [`find_chain_loss`] compares what a node committed with what the database holds; the
//! audit writer calls it when it opens the chain at start and on every reconnect, `audit
//! verify --anchor` calls it offline, and a fleet failover check can call it with the head a
//! node knows it committed.

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use base64::Engine;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::store::StoreError;
use crate::store::chain::{ChainHead, GENESIS_HASH, now_micros};
use crate::sys::PrivateFault;

/// The anchor's file name, in the node key's directory.
pub const ANCHOR_FILE_NAME: &str = "chain-anchor.json";

/// Where the anchor of a daemon whose node key is at `node_key` lives.
pub fn anchor_path(node_key: &Path) -> PathBuf {
    node_key.with_file_name(ANCHOR_FILE_NAME)
}

/// The command that acknowledges a cut (the daemon stopped); every cut message names it.
pub const ACCEPT_COMMAND: &str = "playbookd audit accept-cut --reason …";

/// How the database's chain of a node falls short of what the node committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainLoss {
    pub node_id: String,
    /// The head this node committed (or signed) that the database no longer holds.
    pub committed: ChainHead,
    /// The head the database holds now.
    pub database: ChainHead,
    pub kind: LossKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LossKind {
    /// Rows `first..=last` were committed and are gone.
    Missing { first: i64, last: i64 },
    /// The row at `seq` is not the row this node committed there.
    Differs { seq: i64 },
}

impl ChainLoss {
    /// The seqs lost, as text: `5..9`, or `5` for one.
    pub fn seqs(&self) -> String {
        match self.kind {
            LossKind::Missing { first, last } if first == last => first.to_string(),
            LossKind::Missing { first, last } => format!("{first}..{last}"),
            LossKind::Differs { seq } => seq.to_string(),
        }
    }
}

impl std::fmt::Display for ChainLoss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.kind {
            LossKind::Missing { first, last } if first == last => write!(
                f,
                "the audit chain of node `{}` lost a committed row: seq {first} is missing \
                 (the database ends at seq {}; this node committed up to seq {})",
                self.node_id, self.database.seq, self.committed.seq
            ),
            LossKind::Missing { first, last } => write!(
                f,
                "the audit chain of node `{}` lost committed rows: seq {first}..={last} are missing \
                 (the database ends at seq {}; this node committed up to seq {})",
                self.node_id, self.database.seq, self.committed.seq
            ),
            LossKind::Differs { seq } => write!(
                f,
                "the audit chain of node `{}` was rewritten: the row at seq {seq} differs from the one \
                 this node committed (the database ends at seq {})",
                self.node_id, self.database.seq
            ),
        }
    }
}

/// Compares what `node_id` committed (each of `committed`: heads or signed checkpoints) with the
/// database's chain; `Ok(None)` when the database holds every one of them, unchanged.
pub async fn find_chain_loss(
    client: &tokio_postgres::Client,
    node_id: &str,
    committed: &[ChainHead],
) -> Result<Option<ChainLoss>, StoreError> {
    let database = database_head(client, node_id).await?;
    let mut points: Vec<ChainHead> = committed.iter().copied().filter(|h| h.seq > 0).collect();
    points.sort_by_key(|head| std::cmp::Reverse(head.seq));
    let Some(highest) = points.first().copied() else {
        return Ok(None);
    };
    if database.seq < highest.seq {
        return Ok(Some(ChainLoss {
            node_id: node_id.to_owned(),
            committed: highest,
            database,
            kind: LossKind::Missing {
                first: database.seq + 1,
                last: highest.seq,
            },
        }));
    }
    for point in points {
        let row = client
            .query_opt(
                "SELECT hash FROM playbook_audit_log WHERE node_id = $1 AND seq = $2",
                &[&node_id, &point.seq],
            )
            .await?;
        let loss = |kind| ChainLoss {
            node_id: node_id.to_owned(),
            committed: point,
            database,
            kind,
        };
        match row {
            None => {
                return Ok(Some(loss(LossKind::Missing {
                    first: point.seq,
                    last: point.seq,
                })));
            }
            Some(row) => {
                let hash: Vec<u8> = row.get(0);
                if hash.as_slice() != point.hash.as_slice() {
                    return Ok(Some(loss(LossKind::Differs { seq: point.seq })));
                }
            }
        }
    }
    Ok(None)
}

/// The database's last row of `node_id`'s chain.
pub async fn database_head(
    client: &tokio_postgres::Client,
    node_id: &str,
) -> Result<ChainHead, StoreError> {
    let row = client
        .query_opt(
            "SELECT seq, hash FROM playbook_audit_log WHERE node_id = $1 ORDER BY seq DESC LIMIT 1",
            &[&node_id],
        )
        .await?;
    match row {
        None => Ok(ChainHead {
            seq: 0,
            hash: GENESIS_HASH,
        }),
        Some(row) => {
            let hash: Vec<u8> = row.get(1);
            let hash = <[u8; 32]>::try_from(hash.as_slice()).map_err(|_| StoreError::Corrupt {
                what: "audit chain head",
                detail: "hash is not 32 bytes".into(),
            })?;
            Ok(ChainHead {
                seq: row.get(0),
                hash,
            })
        }
    }
}

/// The last checkpoint this node signed, as kept in the anchor.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct AnchoredCheckpoint {
    pub seq: i64,
    pub hash: [u8; 32],
    pub key_id: String,
    pub signature: Vec<u8>,
}

impl AnchoredCheckpoint {
    pub fn head(&self) -> ChainHead {
        ChainHead {
            seq: self.seq,
            hash: self.hash,
        }
    }
}

/// A cut found in the database, and the admin's acknowledgment once given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedCut {
    pub loss: ChainLoss,
    pub detected_at: OffsetDateTime,
    pub accepted: Option<Acceptance>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acceptance {
    pub at: OffsetDateTime,
    pub uid: u32,
    pub reason: String,
}

/// What the anchor file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnchorState {
    pub node_id: String,
    pub head: ChainHead,
    pub checkpoint: Option<AnchoredCheckpoint>,
    pub cut: Option<RecordedCut>,
}

impl AnchorState {
    /// Every point this node committed that the database must still hold.
    pub fn committed_points(&self) -> Vec<ChainHead> {
        let mut points = vec![self.head];
        points.extend(self.checkpoint.as_ref().map(AnchoredCheckpoint::head));
        points
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AnchorError {
    #[error("cannot read the chain anchor {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write the chain anchor {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("chain anchor {path} is not a regular file")]
    NotRegular { path: PathBuf },
    #[error("chain anchor {path} {fault}")]
    Private { path: PathBuf, fault: PrivateFault },
    #[error(
        "chain anchor {path} does not decode ({detail}); check the chain with `playbookd audit verify`, \
         then move the file away to start over from the database's head"
    )]
    Decode { path: PathBuf, detail: String },
    #[error("chain anchor {path} belongs to node `{found}`, but this daemon is node `{expected}`")]
    OtherNode {
        path: PathBuf,
        found: String,
        expected: String,
    },
}

/// Whether reading the anchor insists the caller owns it (the daemon does; `audit verify` run
/// by an auditor reads it as evidence).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum OwnerCheck {
    Daemon,
    Evidence,
}

/// Reads and decodes an anchor file; `Ok(None)` when there is none.
pub fn read_anchor(path: &Path, check: OwnerCheck) -> Result<Option<AnchorState>, AnchorError> {
    let read = |source| AnchorError::Read {
        path: path.to_owned(),
        source,
    };
    let mut file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(path)
    {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(read(source)),
    };
    let metadata = file.metadata().map_err(read)?;
    if !metadata.is_file() {
        return Err(AnchorError::NotRegular {
            path: path.to_owned(),
        });
    }
    if check == OwnerCheck::Daemon {
        crate::sys::check_private(&metadata).map_err(|fault| AnchorError::Private {
            path: path.to_owned(),
            fault,
        })?;
    }
    let mut bytes = Vec::new();
    (&mut file)
        .take(MAX_ANCHOR_BYTES)
        .read_to_end(&mut bytes)
        .map_err(read)?;
    decode(&bytes)
        .map(Some)
        .map_err(|detail| AnchorError::Decode {
            path: path.to_owned(),
            detail,
        })
}

/// Writes `state` to `path` through a temporary file and a rename; with `durable`, the file and
/// its directory are fsynced as well.
pub fn write_anchor(path: &Path, state: &AnchorState, durable: bool) -> Result<(), AnchorError> {
    replace_file(path, &encode(state), durable).map_err(|source| AnchorError::Write {
        path: path.to_owned(),
        source,
    })
}

/// Replaces `path` with `bytes` (mode 0600) through `<path>.tmp` and a rename, so a reader sees
/// the old file or the new one, never a part; with `durable`, the file and its directory are
/// fsynced before this returns (also used by the witness's state file).
pub fn replace_file(path: &Path, bytes: &[u8], durable: bool) -> std::io::Result<()> {
    let temporary = path.with_extension("json.tmp");
    // A leftover temporary file (a crash between write and rename) is replaced.
    match std::fs::remove_file(&temporary) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(source),
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(&temporary)?;
    file.write_all(bytes)?;
    if durable {
        file.sync_all()?;
    }
    drop(file);
    std::fs::rename(&temporary, path)?;
    if durable {
        let directory = path.parent().unwrap_or(Path::new("."));
        std::fs::File::open(directory).and_then(|dir| dir.sync_all())?;
    }
    Ok(())
}

/// The daemon's anchor: the file and its in-memory copy, shared by the audit writer (heads, cuts)
/// and the checkpointer (signed heads).
#[derive(Debug)]
pub struct Anchor {
    path: PathBuf,
    node_id: String,
    /// `None` until the first start created the file.
    state: Mutex<Option<AnchorState>>,
}

/// What the anchor says when the writer opens the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum OpenCheck {
    /// The database holds everything this node committed.
    Intact,
    /// An admin acknowledged this cut; the daemon's first append records that.
    Accepted(RecordedCut),
    /// The database lost what this node committed: nothing may be appended.
    Cut(ChainLoss),
}

impl Anchor {
    /// Loads the anchor at `path` for `node_id` (no file yet is fine: the first open creates it).
    pub fn load(path: PathBuf, node_id: &str) -> Result<Anchor, AnchorError> {
        let state = read_anchor(&path, OwnerCheck::Daemon)?;
        if let Some(state) = &state
            && state.node_id != node_id
        {
            return Err(AnchorError::OtherNode {
                path,
                found: state.node_id.clone(),
                expected: node_id.to_owned(),
            });
        }
        Ok(Anchor {
            path,
            node_id: node_id.to_owned(),
            state: Mutex::new(state),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A copy of what the anchor holds now.
    pub fn state(&self) -> Option<AnchorState> {
        self.lock().clone()
    }

    /// Compares the anchor with the database when the writer opens the chain at start; records
    /// (durably) a cut it finds. Without an anchor file yet, the database's head is trusted once
    /// and written down.
    pub async fn check_open(
        &self,
        client: &tokio_postgres::Client,
    ) -> Result<Result<OpenCheck, AnchorError>, StoreError> {
        let Some(state) = self.state() else {
            let head = database_head(client, &self.node_id).await?;
            tracing::warn!(path = %self.path.display(), seq = head.seq,
                "no chain anchor yet: created one at the database's head (trusted on first use)");
            let state = AnchorState {
                node_id: self.node_id.clone(),
                head,
                checkpoint: None,
                cut: None,
            };
            return Ok(self.replace(state, true).map(|()| OpenCheck::Intact));
        };
        match &state.cut {
            Some(cut) => match &cut.accepted {
                None => Ok(Ok(OpenCheck::Cut(cut.loss.clone()))),
                Some(_) => {
                    // The acknowledgment covers the database as it was then, not a later cut.
                    match find_chain_loss(client, &self.node_id, &[cut.loss.database]).await? {
                        None => Ok(Ok(OpenCheck::Accepted(cut.clone()))),
                        Some(loss) => Ok(self.record_cut(&loss).map(|()| OpenCheck::Cut(loss))),
                    }
                }
            },
            None => {
                match find_chain_loss(client, &self.node_id, &state.committed_points()).await? {
                    None => Ok(Ok(OpenCheck::Intact)),
                    Some(loss) => Ok(self.record_cut(&loss).map(|()| OpenCheck::Cut(loss))),
                }
            }
        }
    }

    /// The last signed checkpoint's head, if any (also checked on reconnect).
    pub fn checkpoint_head(&self) -> Option<ChainHead> {
        self.lock()
            .as_ref()
            .and_then(|state| state.checkpoint.as_ref().map(AnchoredCheckpoint::head))
    }

    /// Records a committed head. Clears an acknowledged cut: the first append after it is the
    /// event that records the acknowledgment.
    pub fn record_head(&self, head: ChainHead, durable: bool) -> Result<(), AnchorError> {
        self.update(durable, |state| {
            // Heads only move forward (a checkpoint may have recorded a later one already).
            if head.seq >= state.head.seq {
                state.head = head;
            }
            if state.cut.as_ref().is_some_and(|cut| cut.accepted.is_some()) {
                state.cut = None;
            }
        })
    }

    /// Records a signed checkpoint, durably.
    pub fn record_checkpoint(&self, checkpoint: AnchoredCheckpoint) -> Result<(), AnchorError> {
        self.update(true, |state| {
            if checkpoint.seq > state.head.seq {
                state.head = checkpoint.head();
            }
            state.checkpoint = Some(checkpoint);
        })
    }

    /// Records a cut, durably; an earlier unacknowledged cut is kept (the first one found).
    pub fn record_cut(&self, loss: &ChainLoss) -> Result<(), AnchorError> {
        self.update(true, |state| {
            if state.cut.as_ref().is_none_or(|cut| cut.accepted.is_some()) {
                state.cut = Some(RecordedCut {
                    loss: loss.clone(),
                    detected_at: now_micros(),
                    accepted: None,
                });
            }
        })
    }

    fn update(
        &self,
        durable: bool,
        change: impl FnOnce(&mut AnchorState),
    ) -> Result<(), AnchorError> {
        let mut guard = self.lock();
        let mut state = guard.clone().unwrap_or_else(|| AnchorState {
            node_id: self.node_id.clone(),
            head: ChainHead {
                seq: 0,
                hash: GENESIS_HASH,
            },
            checkpoint: None,
            cut: None,
        });
        change(&mut state);
        write_anchor(&self.path, &state, durable)?;
        *guard = Some(state);
        Ok(())
    }

    fn replace(&self, state: AnchorState, durable: bool) -> Result<(), AnchorError> {
        let mut guard = self.lock();
        write_anchor(&self.path, &state, durable)?;
        *guard = Some(state);
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<AnchorState>> {
        // A panic while holding the lock leaves a consistent state (the file is written before
        // memory changes), so a poisoned lock is still usable.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Why `audit accept-cut` refused.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    #[error(transparent)]
    Anchor(#[from] AnchorError),
    #[error("there is no chain anchor at {path}: nothing to accept")]
    NoAnchor { path: PathBuf },
    #[error("the chain anchor {path} records no cut: nothing to accept")]
    NoCut { path: PathBuf },
    #[error("the cut recorded in {path} was already accepted; start the daemon")]
    AlreadyAccepted { path: PathBuf },
    #[error("a reason is required to accept a cut")]
    NoReason,
}

/// Records an admin's acknowledgment of the cut in the anchor at `path` (the daemon stopped).
pub fn accept_cut(path: &Path, uid: u32, reason: &str) -> Result<RecordedCut, AcceptError> {
    let reason = reason.trim();
    if reason.is_empty() {
        return Err(AcceptError::NoReason);
    }
    let mut state =
        read_anchor(path, OwnerCheck::Daemon)?.ok_or_else(|| AcceptError::NoAnchor {
            path: path.to_owned(),
        })?;
    let cut = state.cut.as_mut().ok_or_else(|| AcceptError::NoCut {
        path: path.to_owned(),
    })?;
    if cut.accepted.is_some() {
        return Err(AcceptError::AlreadyAccepted {
            path: path.to_owned(),
        });
    }
    cut.accepted = Some(Acceptance {
        at: now_micros(),
        uid,
        reason: crate::text::storable(reason, MAX_REASON_CHARS),
    });
    let cut = cut.clone();
    // What the node committed is gone; from here on the database's head is the chain.
    state.head = cut.loss.database;
    state.checkpoint = state
        .checkpoint
        .filter(|cp| cp.seq <= cut.loss.database.seq);
    write_anchor(path, &state, true)?;
    Ok(cut)
}

const MAX_ANCHOR_BYTES: u64 = 64 * 1024;
const MAX_REASON_CHARS: usize = 512;
const FORMAT: u32 = 1;

// ---------------------------------------------------------------------------------------------
// The file's JSON: every field required, unknown fields refused, decoded once into the types above.

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Doc {
    format: u32,
    node_id: String,
    head: HeadDoc,
    checkpoint: Option<CheckpointDoc>,
    cut: Option<CutDoc>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct HeadDoc {
    seq: i64,
    hash: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckpointDoc {
    seq: i64,
    hash: String,
    key_id: String,
    signature: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CutDoc {
    #[serde(with = "time::serde::rfc3339")]
    detected_at: OffsetDateTime,
    committed: HeadDoc,
    database: HeadDoc,
    loss: LossDoc,
    accepted: Option<AcceptDoc>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "snake_case")]
enum LossDoc {
    Missing { first: i64, last: i64 },
    Differs { seq: i64 },
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AcceptDoc {
    #[serde(with = "time::serde::rfc3339")]
    at: OffsetDateTime,
    uid: u32,
    reason: String,
}

fn head_doc(head: ChainHead) -> HeadDoc {
    HeadDoc {
        seq: head.seq,
        hash: hex::encode(head.hash),
    }
}

fn head_from(doc: HeadDoc, what: &str) -> Result<ChainHead, String> {
    if doc.seq < 0 {
        return Err(format!("{what}.seq is negative"));
    }
    Ok(ChainHead {
        seq: doc.seq,
        hash: hash_from(&doc.hash, what)?,
    })
}

fn hash_from(text: &str, what: &str) -> Result<[u8; 32], String> {
    let bytes = hex::decode(text).map_err(|_| format!("{what}.hash is not hex"))?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| format!("{what}.hash is not 32 bytes"))
}

fn encode(state: &AnchorState) -> Vec<u8> {
    let doc = Doc {
        format: FORMAT,
        node_id: state.node_id.clone(),
        head: head_doc(state.head),
        checkpoint: state.checkpoint.as_ref().map(|cp| CheckpointDoc {
            seq: cp.seq,
            hash: hex::encode(cp.hash),
            key_id: cp.key_id.clone(),
            signature: base64::engine::general_purpose::STANDARD.encode(&cp.signature),
        }),
        cut: state.cut.as_ref().map(|cut| CutDoc {
            detected_at: cut.detected_at,
            committed: head_doc(cut.loss.committed),
            database: head_doc(cut.loss.database),
            loss: match cut.loss.kind {
                LossKind::Missing { first, last } => LossDoc::Missing { first, last },
                LossKind::Differs { seq } => LossDoc::Differs { seq },
            },
            accepted: cut.accepted.as_ref().map(|a| AcceptDoc {
                at: a.at,
                uid: a.uid,
                reason: a.reason.clone(),
            }),
        }),
    };
    // Strings, integers and timestamps only: serializing cannot fail.
    let mut bytes = serde_json::to_vec_pretty(&doc).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

fn decode(bytes: &[u8]) -> Result<AnchorState, String> {
    let doc: Doc = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if doc.format != FORMAT {
        return Err(format!("format {} is not {FORMAT}", doc.format));
    }
    let node_id = doc.node_id;
    let checkpoint = match doc.checkpoint {
        None => None,
        Some(cp) => Some(AnchoredCheckpoint {
            seq: cp.seq,
            hash: hash_from(&cp.hash, "checkpoint")?,
            key_id: cp.key_id,
            signature: base64::engine::general_purpose::STANDARD
                .decode(&cp.signature)
                .map_err(|_| "checkpoint.signature is not base64".to_owned())?,
        }),
    };
    let cut = match doc.cut {
        None => None,
        Some(cut) => Some(RecordedCut {
            loss: ChainLoss {
                node_id: node_id.clone(),
                committed: head_from(cut.committed, "cut.committed")?,
                database: head_from(cut.database, "cut.database")?,
                kind: match cut.loss {
                    LossDoc::Missing { first, last } if 0 < first && first <= last => {
                        LossKind::Missing { first, last }
                    }
                    LossDoc::Missing { .. } => return Err("cut.loss has an empty range".into()),
                    LossDoc::Differs { seq } => LossKind::Differs { seq },
                },
            },
            detected_at: cut.detected_at,
            accepted: cut.accepted.map(|a| Acceptance {
                at: a.at,
                uid: a.uid,
                reason: a.reason,
            }),
        }),
    };
    Ok(AnchorState {
        head: head_from(doc.head, "head")?,
        node_id,
        checkpoint,
        cut,
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    fn state() -> AnchorState {
        AnchorState {
            node_id: "host-1".into(),
            head: ChainHead {
                seq: 9,
                hash: [3; 32],
            },
            checkpoint: Some(AnchoredCheckpoint {
                seq: 4,
                hash: [4; 32],
                key_id: "ab".into(),
                signature: vec![1, 2, 3],
            }),
            cut: Some(RecordedCut {
                loss: ChainLoss {
                    node_id: "host-1".into(),
                    committed: ChainHead {
                        seq: 9,
                        hash: [3; 32],
                    },
                    database: ChainHead {
                        seq: 4,
                        hash: [4; 32],
                    },
                    kind: LossKind::Missing { first: 5, last: 9 },
                },
                detected_at: time::macros::datetime!(2026-11-30 12:00:00.5 UTC),
                accepted: None,
            }),
        }
    }

    #[test]
    fn an_anchor_round_trips_and_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(ANCHOR_FILE_NAME);
        write_anchor(&path, &state(), true).unwrap();
        let mode = std::fs::metadata(&path).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            read_anchor(&path, OwnerCheck::Daemon).unwrap(),
            Some(state())
        );
    }

    #[test]
    fn a_missing_field_or_an_unknown_one_does_not_decode() {
        let good = String::from_utf8(encode(&state())).unwrap();
        assert!(decode(good.as_bytes()).is_ok());
        let missing = good.replace("\"checkpoint\"", "\"checkpointx\"");
        assert!(decode(missing.as_bytes()).is_err());
        let short_hash = good.replacen(&"03".repeat(32), "03", 1);
        assert!(
            decode(short_hash.as_bytes())
                .unwrap_err()
                .contains("32 bytes")
        );
        assert!(decode(b"").is_err());
    }

    #[test]
    fn a_group_readable_anchor_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(ANCHOR_FILE_NAME);
        write_anchor(&path, &state(), false).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let error = read_anchor(&path, OwnerCheck::Daemon).unwrap_err();
        let AnchorError::Private { fault, .. } = &error else {
            panic!("{error}")
        };
        assert_eq!(*fault, PrivateFault::Exposed { mode: 0o640 });
        // An auditor reading it as evidence does not need to own it.
        assert!(read_anchor(&path, OwnerCheck::Evidence).unwrap().is_some());
    }

    #[test]
    fn accepting_a_cut_needs_a_reason_and_moves_the_head_to_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(ANCHOR_FILE_NAME);
        write_anchor(&path, &state(), true).unwrap();
        assert!(matches!(
            accept_cut(&path, 0, " "),
            Err(AcceptError::NoReason)
        ));
        let cut = accept_cut(&path, 0, "failover lost rows 5..9").unwrap();
        assert_eq!(cut.loss.seqs(), "5..9");
        let after = read_anchor(&path, OwnerCheck::Daemon).unwrap().unwrap();
        assert_eq!(after.head.seq, 4);
        assert!(after.cut.unwrap().accepted.is_some());
        assert!(matches!(
            accept_cut(&path, 0, "again"),
            Err(AcceptError::AlreadyAccepted { .. })
        ));
    }
}
