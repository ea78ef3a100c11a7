//! `playbookd audit checkpoint-text`, `audit prove` and `audit verify-bundle`: the node's tree head
//! as a C2SP signed checkpoint note, and offline evidence bundles of one run ([`crate::bundle`]).
//!
//! Since migration V9 the daemon stores the signed note with each checkpoint; these commands use
//! the stored note (after checking its signature, and for `prove` that its root is the root of the
//! verified chain). For a checkpoint signed before V9 the note is signed here, from the rows: the
//! tree head it states is a function of the chain up to that checkpoint, signed only after that
//! chain verified against it under the same node key, so it says nothing the stored checkpoint
//! signature did not already commit to. Ed25519 is deterministic: the same head always yields
//! the same note.
//!
//! Exit status: 0 done or verified; 2 the evidence does not hold (a chain breach, a bundle that
//! fails a check); 1 the work could not be done (configuration, key, database, files).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::bundle::{self, BundleError};
use crate::cli::audit::report_line;
use crate::cli::witnesses::{self, WitnessArgs, WitnessCount};
use crate::cli::{OutputError, VerbError, write_stdout, write_stdout_line};
use crate::config::Config;
use crate::merkle::Tree;
use crate::note::{self, TreeHead};
use crate::store::checkpoint::{NodeKey, NodeKeyError, load_public_key};
use crate::store::evidence::{self, LatestCheckpoint};
use crate::store::{self, StoreError, verify};

/// Exit status when the evidence does not hold.
pub const EXIT_EVIDENCE_FAILED: u8 = 2;

#[derive(Debug, thiserror::Error)]
pub enum EvidenceError {
    #[error("cannot use the node key (signing a checkpoint note needs the daemon's own key)")]
    NodeKey(#[source] NodeKeyError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no audit row names execution {0}")]
    UnknownExecution(uuid::Uuid),
    #[error(
        "execution {execution_id} has audit rows on several nodes ({nodes}); refusing to guess"
    )]
    SeveralNodes {
        execution_id: uuid::Uuid,
        nodes: String,
    },
    #[error(
        "node `{node_id}` has no signed checkpoint yet; the daemon signs one every \
         [audit] checkpoint_interval_seconds and at shutdown"
    )]
    NoCheckpoint { node_id: String },
    #[error(
        "rows of execution {execution_id} go up to seq {last_seq}, after the newest checkpoint \
         (seq {checkpoint_seq}); prove again after the next checkpoint"
    )]
    AfterCheckpoint {
        execution_id: uuid::Uuid,
        last_seq: u64,
        checkpoint_seq: u64,
    },
    #[error("refusing to sign evidence over a damaged chain: {0}")]
    BrokenChain(String),
    #[error("failed to write {path} (an existing file is never overwritten)")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The same words as `audit verify --trusted-node-key`: one reader of the node's public key.
    #[error(transparent)]
    TrustedKey(NodeKeyError),
    #[error("evidence bundle {path} does not verify: {source}")]
    Bundle {
        path: PathBuf,
        #[source]
        source: BundleError,
    },
    #[error(transparent)]
    Output(#[from] OutputError),
    #[error("{0}")]
    WitnessArgs(String),
    #[error("only {found} trusted witness(es) cosigned the checkpoint; {required} required")]
    TooFewWitnesses { found: usize, required: usize },
}

impl VerbError for EvidenceError {
    fn exit_code(&self) -> ExitCode {
        match self {
            EvidenceError::BrokenChain(_) | EvidenceError::Bundle { .. } => {
                ExitCode::from(EXIT_EVIDENCE_FAILED)
            }
            EvidenceError::Output(error) => error.exit_code(),
            EvidenceError::TooFewWitnesses { .. } => {
                ExitCode::from(witnesses::EXIT_TOO_FEW_WITNESSES)
            }
            EvidenceError::WitnessArgs(_) => ExitCode::from(crate::config::EXIT_CONFIG),
            EvidenceError::NodeKey(_)
            | EvidenceError::Store(_)
            | EvidenceError::UnknownExecution(_)
            | EvidenceError::SeveralNodes { .. }
            | EvidenceError::NoCheckpoint { .. }
            | EvidenceError::AfterCheckpoint { .. }
            | EvidenceError::Write { .. }
            | EvidenceError::Read { .. }
            | EvidenceError::TrustedKey(_) => ExitCode::FAILURE,
        }
    }
}

/// The newest checkpoint of `node_id`, the tree it covers and its signed note (stored, or signed
/// now for a checkpoint from before V9), after the whole chain verified with the node key pinned.
async fn signed_head(
    client: &tokio_postgres::Client,
    node_id: &str,
    key: &NodeKey,
) -> Result<(LatestCheckpoint, Tree, String), EvidenceError> {
    let pinned = BTreeSet::from([key.key_id().to_owned()]);
    let report = verify::verify_chain_with(client, node_id, Some(&pinned)).await?;
    if report.breach.is_some() {
        return Err(EvidenceError::BrokenChain(report_line(&report, false)));
    }
    let latest = evidence::latest_checkpoint(client, node_id)
        .await?
        .ok_or_else(|| EvidenceError::NoCheckpoint {
            node_id: node_id.to_owned(),
        })?;
    let tree = evidence::tree_at(client, node_id, &latest)
        .await
        .map_err(|error| match error {
            StoreError::Corrupt { detail, .. } => {
                EvidenceError::BrokenChain(format!("node {node_id}: {detail}"))
            }
            other => EvidenceError::Store(other),
        })?;
    let head = evidence::tree_head(node_id, &tree, latest.hash);
    let mut signed = match &latest.note {
        Some(stored) => {
            let signed_head = checked_note(stored, node_id, key)?;
            if signed_head != head {
                return Err(EvidenceError::BrokenChain(format!(
                    "node {node_id}: the stored note of checkpoint seq {} signs another tree than \
                     the verified chain holds",
                    latest.seq
                )));
            }
            stored.clone()
        }
        None => note::signed_note(&head, &key.verifying_key(), |text| key.sign_note_text(text)),
    };
    // The witnesses' cosignatures, as extra signature lines: standard signed-note verifiers
    // check the ones whose keys they trust and ignore the rest.
    for (_, cosignature) in evidence::cosignatures(client, node_id, Some(latest.seq)).await? {
        signed.push_str(&cosignature.line());
    }
    Ok((latest, tree, signed))
}

/// A stored note, checked under the node key: a note altered in the database is refused.
fn checked_note(stored: &str, node_id: &str, key: &NodeKey) -> Result<TreeHead, EvidenceError> {
    note::verify(stored, &note::origin(node_id), &key.verifying_key()).map_err(|error| {
        EvidenceError::BrokenChain(format!(
            "node {node_id}: a stored checkpoint note does not verify: {error}"
        ))
    })
}

fn load_key(config: &Config) -> Result<NodeKey, EvidenceError> {
    NodeKey::load(&config.paths.node_key).map_err(EvidenceError::NodeKey)
}

/// `audit checkpoint-text`: prints the signed note of the node's newest checkpoint, or with
/// `vkey` the signed-note verifier key of the node key.
pub async fn checkpoint_text(
    config: &Config,
    node: Option<&str>,
    vkey: bool,
) -> Result<(), EvidenceError> {
    let node_id = node.unwrap_or(&config.node_id);
    let key = load_key(config)?;
    if vkey {
        write_stdout_line(&note::verifier_key(
            &note::origin(node_id),
            &key.verifying_key(),
        ))?;
        return Ok(());
    }
    let client = store::connect_single(&config.postgres_config()).await?;
    let latest = evidence::latest_checkpoint(&client, node_id).await?;
    if let Some(latest) = latest
        && let Some(mut stored) = latest.note
    {
        // As signed at the time; only its signature is checked (whether it verifies is what
        // matters, not the tree head it states), not the chain.
        let _: TreeHead = checked_note(&stored, node_id, &key)?;
        for (_, cosignature) in evidence::cosignatures(&client, node_id, Some(latest.seq)).await? {
            stored.push_str(&cosignature.line());
        }
        write_stdout(&stored)?;
        return Ok(());
    }
    let (_, _, signed) = signed_head(&client, node_id, &key).await?;
    write_stdout(&signed)?;
    Ok(())
}

/// `audit prove EXECUTION [--out FILE]`: writes the run's evidence bundle.
pub async fn prove(
    config: &Config,
    execution_id: uuid::Uuid,
    out: Option<&Path>,
) -> Result<(), EvidenceError> {
    let key = load_key(config)?;
    let client = store::connect_single(&config.postgres_config()).await?;
    let mut nodes = evidence::execution_rows(&client, execution_id).await?;
    let (node_id, rows) = match nodes.len() {
        0 => return Err(EvidenceError::UnknownExecution(execution_id)),
        1 => nodes.remove(0),
        _ => {
            return Err(EvidenceError::SeveralNodes {
                execution_id,
                nodes: nodes
                    .iter()
                    .map(|(node, _)| node.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
    };
    let (latest, tree, signed) = signed_head(&client, &node_id, &key).await?;
    let last_seq = rows.last().map_or(0, |row| row.seq);
    if last_seq > latest.seq {
        return Err(EvidenceError::AfterCheckpoint {
            execution_id,
            last_seq,
            checkpoint_seq: latest.seq,
        });
    }
    let mut bundle = bundle::build(&node_id, execution_id, &rows, &tree, signed).map_err(|e| {
        EvidenceError::BrokenChain(format!("node {node_id}: cannot prove a row: {e}"))
    })?;
    // From the checkpoint that first covered the run's last row to this one: whoever saw that
    // note (or a witness that cosigned it) can check that nothing it covered changed since.
    if let Some(first) = evidence::first_note_covering(&client, &node_id, last_seq).await?
        && first.seq < latest.seq
    {
        let step = bundle::consistency_step(&tree, first.seq, first.note).map_err(|e| {
            EvidenceError::BrokenChain(format!("node {node_id}: cannot prove consistency: {e}"))
        })?;
        bundle.consistency.push(step);
    }
    // Checked before it is written: a stored earlier note that the chain does not extend (a
    // fork) is found here, not by whoever receives the bundle.
    let _: bundle::Verified =
        bundle::verify_bundle(&bundle, &key.verifying_key()).map_err(|e| {
            EvidenceError::BrokenChain(format!("node {node_id}: the bundle does not verify: {e}"))
        })?;
    // A Value of strings and numbers always serializes.
    let json = serde_json::to_string_pretty(&bundle).unwrap_or_default() + "\n";
    match out {
        None => write_stdout(&json)?,
        Some(path) => {
            // 0o666 less the umask: what any tool would create; never over an existing file.
            crate::sys::write_new_file(path, json.as_bytes(), 0o666).map_err(|source| {
                EvidenceError::Write {
                    path: path.to_owned(),
                    source,
                }
            })?;
            write_stdout_line(&format!(
                "wrote {}: {} rows of execution {execution_id} on node {node_id}, \
                 proved against checkpoint seq {}",
                path.display(),
                bundle.rows.len(),
                latest.seq
            ))?;
        }
    }
    Ok(())
}

/// `audit verify-bundle FILE --trusted-node-key PUBFILE [--witness-key VKEY]... [--require-witnesses N]`:
/// no database, no configuration.
pub fn verify_bundle(
    file: &Path,
    trusted_node_key: &Path,
    witness_args: &WitnessArgs,
) -> Result<(), EvidenceError> {
    witness_args.check().map_err(EvidenceError::WitnessArgs)?;
    let key = load_public_key(trusted_node_key).map_err(EvidenceError::TrustedKey)?;
    let json = std::fs::read(file).map_err(|source| EvidenceError::Read {
        path: file.to_owned(),
        source,
    })?;
    let verified = bundle::verify(&json, &key).map_err(|source| EvidenceError::Bundle {
        path: file.to_owned(),
        source,
    })?;
    let extends = if verified.extends.is_empty() {
        String::new()
    } else {
        format!(
            "; it extends the earlier signed trees of {} rows",
            verified
                .extends
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    write_stdout_line(&format!(
        "{}: ok: {} rows of execution {} are in node {}'s signed tree of {} rows (root {}){extends}",
        file.display(),
        verified.rows,
        verified.execution_id,
        verified.node_id,
        verified.tree_size,
        hex::encode(verified.root)
    ))?;
    if witness_args.wanted() {
        let cosigners = witnesses::count_in_note(&verified.checkpoint, &witness_args.witness_keys)
            .map_err(|source| EvidenceError::Bundle {
                path: file.to_owned(),
                source: BundleError::Cosignature(source),
            })?;
        let count = WitnessCount {
            seq: Some(verified.tree_size),
            cosigners,
        };
        let required = witness_args.require_witnesses;
        write_stdout_line(&format!(
            "{}: witnesses: {}",
            file.display(),
            count.line(required)
        ))?;
        if count.cosigners.len() < required {
            return Err(EvidenceError::TooFewWitnesses {
                found: count.cosigners.len(),
                required,
            });
        }
    }
    Ok(())
}
