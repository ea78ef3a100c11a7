//! Signed checkpoints of the audit chain: cutting off the tail of a chain becomes detectable.
//!
//! Every `[audit] checkpoint_interval_seconds`, when the chain head moved, and once more at
//! shutdown, the daemon signs the canonical bytes of the head
//!
//! ```json
//! {"hash":"<64 lowercase hex digits>","node_id":"host-1","seq":1234}
//! ```
//!
//! (RFC 8785 JCS, like the rows) with its Ed25519 node key, stores the signature beside the
//! public key (SubjectPublicKeyInfo DER) in `audit_checkpoints`, and logs it, so journald keeps a
//! copy that whoever can write to the database cannot reach. `playbookd audit verify` then
//! proves that the chain still holds the signed hash at that seq, and still reaches it.
//!
//! Since migration V9 each checkpoint also stores its C2SP signed note ([`crate::note`]): the
//! same head with the RFC 6962 root of the tree over rows 1..=seq, which the audit writer keeps
//! up to date incrementally ([`crate::merkle::Frontier`]): one leaf hash and, amortized, one node
//! hash per committed row, and O(log n) per checkpoint. The chain is never re-read to sign.
//!
//! The node key lives at `paths.node_key` (PKCS#8 PEM). It is generated on first start, created
//! 0600 and owned by the daemon; a key file that other users can read or that someone else owns
//! is refused, because whoever holds the key can sign a shortened chain.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use tokio_util::sync::CancellationToken;

use crate::note::{self, TreeHead};
use crate::registry::signature::KeyId;
use crate::store::anchor::{AnchorError, AnchoredCheckpoint};
use crate::store::audit::{AuditHandle, MerkleHead};
use crate::store::chain::{ChainHead, now_micros};
use crate::store::{Store, StoreError};
use crate::sys::PrivateFault;

/// Problems with the node key file. All of them need an operator: the daemon does not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeKeyError {
    #[error("cannot read node key {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create node key {path} (does its directory exist and belong to the daemon?)")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("node key {path} is not a regular file")]
    NotRegular { path: PathBuf },
    #[error("node key {path} {fault}")]
    Private { path: PathBuf, fault: PrivateFault },
    #[error("node key {path} is not an Ed25519 PKCS#8 PEM private key")]
    Parse { path: PathBuf },
    #[error("{path} is not an Ed25519 public key (SubjectPublicKeyInfo PEM)")]
    ParsePublic { path: PathBuf },
}

/// Why a stored checkpoint's signature does not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignatureFault {
    /// The row carries no public key (written before migration V3, or stripped).
    NoPublicKey,
    /// The stored public key is not an Ed25519 SubjectPublicKeyInfo.
    BadPublicKey,
    /// `key_id` is not the SHA-256 of the stored public key.
    KeyIdMismatch,
    /// The signature does not verify over the checkpoint's canonical bytes.
    BadSignature,
}

impl std::fmt::Display for SignatureFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SignatureFault::NoPublicKey => "no public key stored",
            SignatureFault::BadPublicKey => "stored public key is not Ed25519",
            SignatureFault::KeyIdMismatch => "key_id is not the hash of the stored public key",
            SignatureFault::BadSignature => "signature does not verify",
        })
    }
}

/// The daemon's own Ed25519 key; signs checkpoints only.
pub struct NodeKey {
    signing: SigningKey,
    public_der: Vec<u8>,
    key_id: String,
}

impl std::fmt::Debug for NodeKey {
    // Never print the private half.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeKey")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl NodeKey {
    /// Loads the key at `path`, or creates one there (0600) when no file exists. Also writes the
    /// public half beside a new key (`node.key` → `node.pub`) for `audit verify --trusted-node-key`.
    pub fn load_or_generate(path: &Path) -> Result<NodeKey, NodeKeyError> {
        match std::fs::symlink_metadata(path) {
            Ok(_) => return NodeKey::load(path),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(NodeKeyError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        }
        let key = NodeKey::from_signing(SigningKey::generate(&mut rand::rngs::OsRng));
        let create = |source| NodeKeyError::Create {
            path: path.to_owned(),
            source,
        };
        let pem = key
            .signing
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|_| create(std::io::Error::other("PKCS#8 encoding failed")))?;
        // create_new: if another process created the file meanwhile, use theirs rather than
        // overwrite a key that may already have signed checkpoints.
        let mut file = match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
                return NodeKey::load(path);
            }
            Err(source) => return Err(create(source)),
        };
        file.write_all(pem.as_bytes()).map_err(create)?;
        file.sync_all().map_err(create)?;
        let public = public_path(path);
        if public != path {
            std::fs::write(&public, key.public_key_pem()).map_err(|source| {
                NodeKeyError::Create {
                    path: public.clone(),
                    source,
                }
            })?;
        }
        tracing::info!(path = %path.display(), key_id = %key.key_id, "generated a new node key");
        Ok(key)
    }

    /// Loads an existing key, refusing a file that is a symlink, not regular, readable or
    /// writable by anyone but its owner, or owned by another user than the daemon.
    pub fn load(path: &Path) -> Result<NodeKey, NodeKeyError> {
        let read = |source| NodeKeyError::Read {
            path: path.to_owned(),
            source,
        };
        // O_NOFOLLOW, then fstat the open file: the checks apply to the bytes we read, not to
        // whatever a symlink or a rename points at a moment later.
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
            .open(path)
            .map_err(read)?;
        let metadata = file.metadata().map_err(read)?;
        if !metadata.is_file() {
            return Err(NodeKeyError::NotRegular {
                path: path.to_owned(),
            });
        }
        crate::sys::check_private(&metadata).map_err(|fault| NodeKeyError::Private {
            path: path.to_owned(),
            fault,
        })?;
        let mut pem = String::new();
        std::io::Read::read_to_string(&mut file, &mut pem).map_err(read)?;
        let signing = SigningKey::from_pkcs8_pem(&pem).map_err(|_| NodeKeyError::Parse {
            path: path.to_owned(),
        })?;
        Ok(NodeKey::from_signing(signing))
    }

    /// Hex SHA-256 of the public key's SubjectPublicKeyInfo DER (as for trusted keys).
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The public key as SubjectPublicKeyInfo DER, as stored with each checkpoint.
    pub fn public_key_der(&self) -> &[u8] {
        &self.public_der
    }

    /// The public key as SubjectPublicKeyInfo PEM (what `--trusted-node-key` reads).
    pub fn public_key_pem(&self) -> String {
        self.signing
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap_or_default()
    }

    /// Signs `head` of `node_id`'s chain.
    pub fn sign_head(&self, node_id: &str, head: ChainHead) -> Checkpoint {
        let signature = self
            .signing
            .sign(&checkpoint_bytes(node_id, head.seq, &head.hash));
        Checkpoint {
            node_id: node_id.to_owned(),
            seq: head.seq,
            hash: head.hash,
            key_id: self.key_id.clone(),
            public_key: self.public_der.clone(),
            signature: signature.to_bytes().to_vec(),
            note: None,
        }
    }

    /// Signs `merkle` of `node_id`'s chain: the legacy checkpoint signature over the chain head
    /// and the C2SP signed note over the tree head.
    pub fn sign_merkle_head(&self, node_id: &str, merkle: MerkleHead) -> Checkpoint {
        let mut checkpoint = self.sign_head(node_id, merkle.head);
        let head = TreeHead {
            origin: note::origin(node_id),
            // A committed head's seq is never negative.
            size: u64::try_from(merkle.head.seq).unwrap_or_default(),
            root: merkle.root,
            chain_head: merkle.head.hash,
        };
        checkpoint.note = Some(note::signed_note(&head, &self.verifying_key(), |text| {
            self.sign_note_text(text)
        }));
        checkpoint
    }

    /// The public half (for signed-note key IDs).
    pub fn verifying_key(&self) -> VerifyingKey {
        self.signing.verifying_key()
    }

    /// Signs the exact bytes of a C2SP checkpoint note text ([`crate::note`]).
    pub fn sign_note_text(&self, text: &[u8]) -> Signature {
        self.signing.sign(text)
    }

    fn from_signing(signing: SigningKey) -> NodeKey {
        // An Ed25519 SPKI is 44 bytes of fixed structure: encoding it cannot fail.
        let public_der = signing
            .verifying_key()
            .to_public_key_der()
            .map(|doc| doc.as_bytes().to_vec())
            .unwrap_or_default();
        let key_id = key_id_of(&public_der);
        NodeKey {
            signing,
            public_der,
            key_id,
        }
    }
}

/// A signed chain head, as stored in `audit_checkpoints`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct Checkpoint {
    pub node_id: String,
    pub seq: i64,
    pub hash: [u8; 32],
    pub key_id: String,
    /// SubjectPublicKeyInfo DER of the signing key.
    pub public_key: Vec<u8>,
    /// 64 bytes, Ed25519 over [`checkpoint_bytes`].
    pub signature: Vec<u8>,
    /// The C2SP signed checkpoint note of the same head (`None` before V9, or while the stored
    /// chain has a gap and no tree matches its seqs).
    pub note: Option<String>,
}

/// The bytes a checkpoint signs: JCS of `{"hash": hex, "node_id": …, "seq": …}`.
pub fn checkpoint_bytes(node_id: &str, seq: i64, hash: &[u8; 32]) -> Vec<u8> {
    let head = serde_json::json!({
        "node_id": node_id,
        "seq": seq,
        "hash": hex::encode(hash),
    });
    // JCS cannot fail on a Value of strings and an integer.
    serde_json_canonicalizer::to_vec(&head).unwrap_or_default()
}

/// The key id of a SubjectPublicKeyInfo DER: the same [`KeyId`] rule as the playbook signers'.
pub fn key_id_of(spki_der: &[u8]) -> String {
    KeyId::of_spki_der(spki_der).to_string()
}

/// Checks a stored checkpoint's signature under the public key stored with it.
pub fn verify_checkpoint(
    node_id: &str,
    seq: i64,
    hash: &[u8],
    key_id: &str,
    public_key: Option<&[u8]>,
    signature: &[u8],
) -> Result<(), SignatureFault> {
    let public_key = public_key.ok_or(SignatureFault::NoPublicKey)?;
    let verifying =
        VerifyingKey::from_public_key_der(public_key).map_err(|_| SignatureFault::BadPublicKey)?;
    if key_id_of(public_key) != key_id {
        return Err(SignatureFault::KeyIdMismatch);
    }
    let hash = <[u8; 32]>::try_from(hash).map_err(|_| SignatureFault::BadSignature)?;
    let signature = Signature::from_slice(signature).map_err(|_| SignatureFault::BadSignature)?;
    verifying
        .verify_strict(&checkpoint_bytes(node_id, seq, &hash), &signature)
        .map_err(|_| SignatureFault::BadSignature)
}

/// Reads an Ed25519 public key (SubjectPublicKeyInfo PEM), as `playbookd` writes it beside the
/// node key.
pub fn load_public_key(path: &Path) -> Result<VerifyingKey, NodeKeyError> {
    let pem = std::fs::read_to_string(path).map_err(|source| NodeKeyError::Read {
        path: path.to_owned(),
        source,
    })?;
    VerifyingKey::from_public_key_pem(&pem).map_err(|_| NodeKeyError::ParsePublic {
        path: path.to_owned(),
    })
}

/// Reads an Ed25519 public key (SubjectPublicKeyInfo PEM) and returns its key id.
pub fn load_public_key_id(path: &Path) -> Result<String, NodeKeyError> {
    let der =
        load_public_key(path)?
            .to_public_key_der()
            .map_err(|_| NodeKeyError::ParsePublic {
                path: path.to_owned(),
            })?;
    Ok(key_id_of(der.as_bytes()))
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("failed to store the audit checkpoint of node `{node_id}` at seq {seq}")]
    Store {
        node_id: String,
        seq: i64,
        #[source]
        source: StoreError,
    },
    #[error(
        "failed to record the audit checkpoint of node `{node_id}` at seq {seq} in the chain anchor"
    )]
    Anchor {
        node_id: String,
        seq: i64,
        #[source]
        source: AnchorError,
    },
    #[error(
        "the audit chain of node `{node_id}` ends at seq {head_seq} but a signed checkpoint covers seq \
         {checkpoint_seq}: its tail was cut off; appending would reuse signed seqs. \
         Run `playbookd audit verify` and preserve the database as evidence"
    )]
    ChainTruncated {
        node_id: String,
        head_seq: i64,
        checkpoint_seq: i64,
    },
}

/// Signs and stores checkpoints of this node's chain.
#[derive(Clone)]
pub struct Checkpointer {
    audit: AuditHandle,
    store: Store,
    key: Arc<NodeKey>,
    /// Woken after each stored checkpoint (the witness submitter), if any.
    stored: Option<Arc<tokio::sync::Notify>>,
}

impl Checkpointer {
    pub fn new(audit: AuditHandle, store: Store, key: Arc<NodeKey>) -> Checkpointer {
        Checkpointer {
            audit,
            store,
            key,
            stored: None,
        }
    }

    /// Notifies `stored` after each checkpoint it stores.
    pub fn notify_on_checkpoint(mut self, stored: Arc<tokio::sync::Notify>) -> Checkpointer {
        self.stored = Some(stored);
        self
    }

    /// Refuses a chain that ends before its newest checkpoint. Call before the first append.
    pub async fn ensure_not_truncated(&self) -> Result<(), CheckpointError> {
        let head = self.audit.head();
        let node_id = self.audit.node_id();
        let last = self.last_checkpoint_seq().await?;
        if let Some(checkpoint_seq) = last.filter(|&last| last > head.seq) {
            return Err(CheckpointError::ChainTruncated {
                node_id: node_id.to_owned(),
                head_seq: head.seq,
                checkpoint_seq,
            });
        }
        Ok(())
    }

    /// Signs the committed chain head if it moved past the newest stored checkpoint; returns
    /// the checkpoint written, or None when there was nothing new to sign.
    pub async fn checkpoint(&self) -> Result<Option<Checkpoint>, CheckpointError> {
        // The head and its tree are read together: the writer updates both under one lock.
        let merkle = self.audit.merkle_head();
        let head = merkle.map_or_else(|| self.audit.head(), |merkle| merkle.head);
        let node_id = self.audit.node_id();
        let fail = |source: StoreError| CheckpointError::Store {
            node_id: node_id.to_owned(),
            seq: head.seq,
            source,
        };
        if head.seq == 0 {
            return Ok(None);
        }
        if let Some(loss) = self.audit.chain_loss() {
            // Signing a head of a cut chain would vouch for the cut.
            return Err(fail(StoreError::ChainCut(Box::new(loss))));
        }
        if self
            .last_checkpoint_seq()
            .await?
            .is_some_and(|last| last >= head.seq)
        {
            return Ok(None);
        }
        let client = self.store.client().await.map_err(fail)?;
        let checkpoint = match merkle {
            Some(merkle) => self.key.sign_merkle_head(node_id, merkle),
            None => {
                tracing::warn!(
                    node_id,
                    seq = head.seq,
                    "the stored audit chain has a gap: this checkpoint carries no signed tree head"
                );
                self.key.sign_head(node_id, head)
            }
        };
        let inserted = client
            .execute(
                "INSERT INTO audit_checkpoints (node_id, seq, hash, key_id, signature, public_key, created_at, note) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (node_id, seq) DO NOTHING",
                &[
                    &checkpoint.node_id,
                    &checkpoint.seq,
                    &checkpoint.hash.as_slice(),
                    &checkpoint.key_id,
                    &checkpoint.signature,
                    &checkpoint.public_key,
                    &now_micros(),
                    &checkpoint.note,
                ],
            )
            .await
            .map_err(|e| fail(e.into()))?;
        if inserted == 0 {
            // The periodic task and the shutdown call raced to the same head.
            return Ok(None);
        }
        // Durably, outside the database: what this node signed cannot be cut off unnoticed.
        if let Some(anchor) = self.audit.anchor() {
            anchor
                .record_checkpoint(AnchoredCheckpoint {
                    seq: checkpoint.seq,
                    hash: checkpoint.hash,
                    key_id: checkpoint.key_id.clone(),
                    signature: checkpoint.signature.clone(),
                })
                .map_err(|source| CheckpointError::Anchor {
                    node_id: node_id.to_owned(),
                    seq: head.seq,
                    source,
                })?;
        }
        tracing::info!(
            node_id = %checkpoint.node_id,
            seq = checkpoint.seq,
            hash = %hex::encode(checkpoint.hash),
            key_id = %checkpoint.key_id,
            signature = %base64::engine::general_purpose::STANDARD.encode(&checkpoint.signature),
            "audit checkpoint signed"
        );
        if let Some(stored) = &self.stored {
            stored.notify_one();
        }
        Ok(Some(checkpoint))
    }

    async fn last_checkpoint_seq(&self) -> Result<Option<i64>, CheckpointError> {
        let node_id = self.audit.node_id();
        let fail = |source: StoreError| CheckpointError::Store {
            node_id: node_id.to_owned(),
            seq: self.audit.head().seq,
            source,
        };
        let client = self.store.client().await.map_err(fail)?;
        let row = client
            .query_one(
                "SELECT max(seq) FROM audit_checkpoints WHERE node_id = $1",
                &[&node_id],
            )
            .await
            .map_err(|e| fail(e.into()))?;
        Ok(row.get(0))
    }

    /// Checkpoints every `interval`, and at once after an event that calls for it (see
    /// [`crate::store::audit::CHECKPOINT_NOW_EVENTS`]), until `shutdown` fires. A failure is
    /// logged and retried at the next tick: a missing checkpoint weakens evidence but must not
    /// stop the daemon.
    pub fn spawn(
        self,
        interval: Duration,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut ticks =
                tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    _ = ticks.tick() => {
                        if let Err(error) = self.checkpoint().await {
                            tracing::warn!(error = %crate::store::audit::error_chain(&error), "audit checkpoint failed");
                        }
                    }
                    () = self.audit.checkpoint_wanted() => {
                        if let Err(error) = self.checkpoint().await {
                            tracing::warn!(error = %crate::store::audit::error_chain(&error), "immediate audit checkpoint failed");
                        }
                    }
                }
            }
        })
    }
}

/// `dir/node.key` → `dir/node.pub`.
fn public_path(key: &Path) -> PathBuf {
    key.with_extension("pub")
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;
    use sha2::{Digest, Sha256};

    fn head(seq: i64) -> ChainHead {
        ChainHead { seq, hash: [7; 32] }
    }

    #[test]
    fn checkpoint_bytes_are_sorted_jcs_with_hex_hash() {
        let bytes = checkpoint_bytes("host-1", 12, &[0xab; 32]);
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            format!(
                r#"{{"hash":"{}","node_id":"host-1","seq":12}}"#,
                "ab".repeat(32)
            )
        );
    }

    #[test]
    fn a_signed_head_verifies_and_a_changed_one_does_not() {
        let key = NodeKey::from_signing(SigningKey::generate(&mut rand::rngs::OsRng));
        let cp = key.sign_head("n1", head(5));
        let check = |node: &str, seq: i64, hash: &[u8], key_id: &str, sig: &[u8]| {
            verify_checkpoint(node, seq, hash, key_id, Some(&cp.public_key), sig)
        };
        assert_eq!(check("n1", 5, &cp.hash, &cp.key_id, &cp.signature), Ok(()));
        let bad = Err(SignatureFault::BadSignature);
        assert_eq!(check("n1", 6, &cp.hash, &cp.key_id, &cp.signature), bad);
        assert_eq!(check("n2", 5, &cp.hash, &cp.key_id, &cp.signature), bad);
        assert_eq!(check("n1", 5, &[8; 32], &cp.key_id, &cp.signature), bad);
        let mut sig = cp.signature.clone();
        sig[0] ^= 1;
        assert_eq!(check("n1", 5, &cp.hash, &cp.key_id, &sig), bad);
        assert_eq!(
            check("n1", 5, &cp.hash, "00", &cp.signature),
            Err(SignatureFault::KeyIdMismatch)
        );
        assert_eq!(
            verify_checkpoint("n1", 5, &cp.hash, &cp.key_id, None, &cp.signature),
            Err(SignatureFault::NoPublicKey)
        );
    }

    #[test]
    fn key_id_is_sha256_of_the_spki_der() {
        let key = NodeKey::from_signing(SigningKey::from_bytes(&[1; 32]));
        assert_eq!(key.public_key_der().len(), 44);
        assert_eq!(
            key.key_id(),
            hex::encode(Sha256::digest(key.public_key_der()))
        );
    }

    #[test]
    fn a_generated_key_is_private_and_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        let first = NodeKey::load_or_generate(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = NodeKey::load_or_generate(&path).unwrap();
        assert_eq!(first.key_id(), again.key_id());
        let pinned = load_public_key_id(&dir.path().join("node.pub")).unwrap();
        assert_eq!(pinned, first.key_id());
    }

    #[test]
    fn a_group_readable_key_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        NodeKey::load_or_generate(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let error = NodeKey::load_or_generate(&path).unwrap_err();
        let NodeKeyError::Private { fault, .. } = &error else {
            panic!("{error}")
        };
        assert_eq!(*fault, PrivateFault::Exposed { mode: 0o640 });
        assert!(error.to_string().contains("chmod 600"), "{error}");
    }

    #[test]
    fn a_symlinked_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.key");
        NodeKey::load_or_generate(&real).unwrap();
        let link = dir.path().join("node.key");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert!(matches!(
            NodeKey::load_or_generate(&link),
            Err(NodeKeyError::Read { .. })
        ));
    }

    #[test]
    fn garbage_in_the_key_file_is_a_parse_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .unwrap()
            .write_all(b"not a key")
            .unwrap();
        assert!(matches!(
            NodeKey::load(&path),
            Err(NodeKeyError::Parse { .. })
        ));
    }
}
