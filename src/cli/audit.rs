//! `playbookd audit verify`: re-verifies every node's audit chain (or one) and prints one line
//! per node, plus one line for an external anchor (`--anchor`, the daemon's chain anchor file).
//! `playbookd audit accept-cut`: an admin's acknowledgment of a cut the daemon found.
//!
//! Exit status of `verify`: 0 when every chain is intact (and matches the anchor); 2 when a
//! breach or a cut is found; 3 when the rows are intact but a pinned node key could not be
//! checked (no checkpoint yet); 4 when fewer trusted witnesses than `--require-witnesses`
//! cosigned a checkpoint; 1 when the verification itself could not be done.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use crate::cli::witnesses::{self, CountError, WitnessArgs};
use crate::cli::{OutputError, VerbError, write_stdout_line};
use crate::config::Config;
use crate::store::anchor::{self, AcceptError, AnchorError, AnchorState, OwnerCheck};
use crate::store::audit::{chain_lock_key, format_timestamp};
use crate::store::chain::ChainHead;
use crate::store::checkpoint::{NodeKeyError, load_public_key_id};
use crate::store::verify::{self, ChainReport};
use crate::store::{self, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum AuditCliError {
    #[error("cannot use --trusted-node-key")]
    TrustedKey(#[source] NodeKeyError),
    #[error("cannot use --anchor")]
    Anchor(#[source] AnchorError),
    #[error("cannot read the checkpoint log {path}")]
    CheckpointLog {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("there is no chain anchor at {path}")]
    NoAnchor { path: PathBuf },
    #[error("the anchor {path} belongs to node `{anchor_node}`, not to `{node_id}`")]
    AnchorNode {
        path: PathBuf,
        anchor_node: String,
        node_id: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("node `{node_id}` has no audit chain and no checkpoint in this database")]
    UnknownNode { node_id: String },
    /// Already reported on stdout, one line per node.
    #[error("audit chain breach found in {count} node(s)")]
    Breach { count: usize },
    /// Already reported on stdout.
    #[error("{count} node(s) have no checkpoint to check the pinned node key against")]
    NotChecked { count: usize },
    #[error(transparent)]
    Accept(#[from] AcceptError),
    #[error(
        "the daemon of node `{node_id}` is running (it holds the chain's lock): stop it first, \
         then accept the cut"
    )]
    DaemonRunning { node_id: String },
    #[error(transparent)]
    Output(#[from] OutputError),
    #[error("{0}")]
    WitnessArgs(String),
    /// Already reported on stdout.
    #[error("{count} node(s) have fewer trusted witness cosignatures than required")]
    TooFewWitnesses { count: usize },
}

impl VerbError for AuditCliError {
    /// 2 for a breach (the evidence is damaged), 3 when a pinned key could not be checked, 78
    /// when the anchor file must be fixed, 1 when verification could not run.
    fn exit_code(&self) -> ExitCode {
        match self {
            AuditCliError::Breach { .. } => ExitCode::from(EXIT_BREACH),
            AuditCliError::NotChecked { .. } => ExitCode::from(EXIT_NOT_CHECKED),
            AuditCliError::TooFewWitnesses { .. } => {
                ExitCode::from(witnesses::EXIT_TOO_FEW_WITNESSES)
            }
            AuditCliError::WitnessArgs(_) => ExitCode::from(crate::config::EXIT_CONFIG),
            AuditCliError::Output(error) => error.exit_code(),
            AuditCliError::Anchor(_)
            | AuditCliError::Accept(AcceptError::Anchor(_))
            | AuditCliError::AnchorNode { .. } => ExitCode::from(crate::config::EXIT_CONFIG),
            AuditCliError::TrustedKey(_)
            | AuditCliError::NoAnchor { .. }
            | AuditCliError::CheckpointLog { .. }
            | AuditCliError::Store(_)
            | AuditCliError::UnknownNode { .. }
            | AuditCliError::Accept(_)
            | AuditCliError::DaemonRunning { .. } => ExitCode::FAILURE,
        }
    }
}

/// Exit status of `audit verify` when a chain is damaged or cut.
pub const EXIT_BREACH: u8 = 2;
/// Exit status of `audit verify` when the rows are intact but a pinned node key was given and a
/// chain has no checkpoint it could be checked against.
pub const EXIT_NOT_CHECKED: u8 = 3;

/// Verifies the chains and prints one line per node on stdout; with `anchor`, one more line
/// comparing the anchor's node with what the database holds.
pub async fn verify(
    config: &Config,
    node: Option<&str>,
    trusted_node_keys: &[PathBuf],
    anchor: Option<&Path>,
    checkpoint_logs: &[PathBuf],
    witness_args: &WitnessArgs,
) -> Result<(), AuditCliError> {
    witness_args.check().map_err(AuditCliError::WitnessArgs)?;
    let mut logged: BTreeMap<String, Vec<ChainHead>> = BTreeMap::new();
    for path in checkpoint_logs {
        let text = std::fs::read(path).map_err(|source| AuditCliError::CheckpointLog {
            path: path.clone(),
            source,
        })?;
        for (node_id, head) in logged_checkpoints(&String::from_utf8_lossy(&text)) {
            logged.entry(node_id).or_default().push(head);
        }
    }
    let pinned = if trusted_node_keys.is_empty() {
        None
    } else {
        Some(
            trusted_node_keys
                .iter()
                .map(|path| load_public_key_id(path))
                .collect::<Result<BTreeSet<String>, _>>()
                .map_err(AuditCliError::TrustedKey)?,
        )
    };
    let anchored = match anchor {
        None => None,
        Some(path) => {
            let state = anchor::read_anchor(path, OwnerCheck::Evidence)
                .map_err(AuditCliError::Anchor)?
                .ok_or_else(|| AuditCliError::NoAnchor {
                    path: path.to_owned(),
                })?;
            if let Some(node) = node.filter(|node| *node != state.node_id) {
                return Err(AuditCliError::AnchorNode {
                    path: path.to_owned(),
                    anchor_node: state.node_id,
                    node_id: node.to_owned(),
                });
            }
            Some((path, state))
        }
    };
    let client = store::connect_single(&config.postgres_config()).await?;
    let mut nodes = verify::nodes(&client).await?;
    if let Some((_, state)) = &anchored
        && !nodes.contains(&state.node_id)
    {
        // A chain deleted whole, checkpoints and all: the anchor still knows it.
        nodes.push(state.node_id.clone());
    }
    for node_id in logged.keys() {
        if !nodes.contains(node_id) {
            nodes.push(node_id.clone());
        }
    }
    let nodes = match node {
        Some(node) if nodes.iter().any(|n| n == node) => vec![node.to_owned()],
        Some(node) => {
            return Err(AuditCliError::UnknownNode {
                node_id: node.to_owned(),
            });
        }
        None => nodes,
    };
    if nodes.is_empty() {
        write_stdout_line("no audit chains in this database")?;
        return Ok(());
    }
    let mut breaches = 0;
    let mut not_checked = 0;
    let mut too_few_witnesses = 0;
    for node in &nodes {
        let report = verify::verify_chain_with(&client, node, pinned.as_ref()).await?;
        let unchecked = pinned.is_some() && report.checkpoints == 0;
        write_stdout_line(&report_line(&report, unchecked))?;
        if report.breach.is_some() {
            breaches += 1;
            continue;
        } else if unchecked {
            not_checked += 1;
        }
        if witness_args.wanted() {
            let required = witness_args.require_witnesses;
            match witnesses::count_stored(&client, node, &witness_args.witness_keys, required).await
            {
                Ok(count) => {
                    write_stdout_line(&format!(
                        "node {node}: witnesses: {}",
                        count.line(required)
                    ))?;
                    if count.cosigners.len() < required {
                        too_few_witnesses += 1;
                    }
                }
                Err(CountError::Store(error)) => return Err(error.into()),
                Err(CountError::Breach(breach)) => {
                    write_stdout_line(&format!("node {node}: witnesses: BREACH: {breach}"))?;
                    breaches += 1;
                }
            }
        }
    }
    if let Some((path, state)) = &anchored {
        let (line, breach) = anchor_line(&client, path, state).await?;
        write_stdout_line(&line)?;
        if breach {
            breaches += 1;
        }
    }
    for (node_id, heads) in logged.iter().filter(|(n, _)| nodes.contains(n)) {
        let last = heads.iter().map(|h| h.seq).max().unwrap_or(0);
        let prefix = format!(
            "node {node_id}: {} logged checkpoints (last seq {last})",
            heads.len()
        );
        match anchor::find_chain_loss(&client, node_id, heads).await? {
            None => write_stdout_line(&format!("{prefix}: ok"))?,
            Some(loss) => {
                breaches += 1;
                write_stdout_line(&format!(
                    "{prefix}: BREACH at seq {}: cut: {loss}",
                    first_seq(&loss)
                ))?;
            }
        }
    }
    if breaches > 0 {
        return Err(AuditCliError::Breach { count: breaches });
    }
    if too_few_witnesses > 0 {
        return Err(AuditCliError::TooFewWitnesses {
            count: too_few_witnesses,
        });
    }
    if not_checked > 0 {
        return Err(AuditCliError::NotChecked { count: not_checked });
    }
    Ok(())
}

/// `node host-1: 1234 rows, last seq 1234, 5 checkpoints: ok`; on a breach, how many rows are
/// stored and how far they verified, then the first bad seq and what is wrong there; with a
/// pinned key and no checkpoint, says the key was not checked.
pub fn report_line(report: &ChainReport, unchecked: bool) -> String {
    match &report.breach {
        None => {
            let counts = format!(
                "node {}: {} rows, last seq {}, {} checkpoints",
                report.node_id, report.rows, report.last_seq, report.checkpoints
            );
            if unchecked {
                format!("{counts}: rows ok; pinned node key NOT CHECKED: no checkpoint signed yet")
            } else {
                format!("{counts}: ok")
            }
        }
        Some((seq, breach)) => format!(
            "node {}: {} rows stored (last seq {}), {}, {} checkpoints: BREACH at seq {seq}: {breach}",
            report.node_id,
            report.stored_rows,
            report.stored_last_seq,
            if report.last_seq == 0 {
                "none verified".to_owned()
            } else {
                format!("seq 1..{} verified", report.last_seq)
            },
            report.checkpoints
        ),
    }
}

/// One line comparing the anchor with the database, and whether it shows a cut.
async fn anchor_line(
    client: &tokio_postgres::Client,
    path: &Path,
    state: &AnchorState,
) -> Result<(String, bool), AuditCliError> {
    let prefix = format!(
        "node {}: anchor {} (head seq {}, checkpoint {})",
        state.node_id,
        path.display(),
        state.head.seq,
        state
            .checkpoint
            .as_ref()
            .map_or_else(|| "none".to_owned(), |cp| format!("seq {}", cp.seq))
    );
    if let Some(loss) =
        anchor::find_chain_loss(client, &state.node_id, &state.committed_points()).await?
    {
        return Ok((
            format!("{prefix}: BREACH at seq {}: cut: {loss}", first_seq(&loss)),
            true,
        ));
    }
    match &state.cut {
        None => Ok((format!("{prefix}: ok"), false)),
        Some(cut) => match &cut.accepted {
            None => Ok((
                format!(
                    "{prefix}: BREACH at seq {}: cut recorded by the daemon at {} and not accepted: {}",
                    first_seq(&cut.loss),
                    format_timestamp(cut.detected_at),
                    cut.loss
                ),
                true,
            )),
            Some(acceptance) => Ok((
                format!(
                    "{prefix}: ok; seq {} lost earlier, accepted by uid {} at {}: {}",
                    cut.loss.seqs(),
                    acceptance.uid,
                    format_timestamp(acceptance.at),
                    acceptance.reason
                ),
                false,
            )),
        },
    }
}

/// The (node, seq, hash) of every `audit checkpoint signed` line in a log: journald's JSON
/// export (`journalctl -u playbookd -o json`: fields `NODE_ID`, `SEQ`, `HASH`) or the daemon's
/// text lines on stderr (`node_id=… seq=… hash=…`). Lines that do not carry all three are
/// skipped. The signatures are not checked here: the log is evidence the auditor brings.
pub fn logged_checkpoints(log: &str) -> Vec<(String, ChainHead)> {
    let hash_of = |text: &str| -> Option<[u8; 32]> {
        let bytes = hex::decode(text).ok()?;
        <[u8; 32]>::try_from(bytes.as_slice()).ok()
    };
    log.lines()
        .filter(|line| line.contains(CHECKPOINT_MESSAGE))
        .filter_map(|line| {
            let (node, seq, hash) = if line.trim_start().starts_with('{') {
                let value: serde_json::Value = serde_json::from_str(line).ok()?;
                let field =
                    |name: &str| value.get(name).and_then(|v| v.as_str()).map(str::to_owned);
                (field("NODE_ID")?, field("SEQ")?, field("HASH")?)
            } else {
                let field = |name: &str| {
                    line.split_whitespace()
                        .find_map(|token| token.strip_prefix(name))
                        .map(|v| v.trim_matches('"').to_owned())
                };
                (field("node_id=")?, field("seq=")?, field("hash=")?)
            };
            let head = ChainHead {
                seq: seq.parse().ok().filter(|seq: &i64| *seq > 0)?,
                hash: hash_of(&hash)?,
            };
            Some((node, head))
        })
        .collect()
}

/// The message of the daemon's checkpoint log line.
const CHECKPOINT_MESSAGE: &str = "audit checkpoint signed";

fn first_seq(loss: &anchor::ChainLoss) -> i64 {
    match loss.kind {
        anchor::LossKind::Missing { first, .. } => first,
        anchor::LossKind::Differs { seq } => seq,
    }
}

/// How long `accept-cut` waits for the chain's lock before it says the daemon is running.
const STOPPED_DAEMON_GRACE: Duration = Duration::from_secs(5);

/// Records an admin's acknowledgment of the cut in the daemon's anchor (the daemon stopped), so
/// that the next start appends again, its first event naming the lost seqs.
pub async fn accept_cut(config: &Config, reason: &str) -> Result<(), AuditCliError> {
    let path = anchor::anchor_path(&config.paths.node_key);
    // The daemon must be stopped: it owns the anchor while it runs.
    let client = store::connect_single(&config.postgres_config()).await?;
    // A daemon that has just exited still holds the lock until PostgreSQL has ended its
    // session, which it does a moment later: only a lock held past that grace means a
    // running daemon.
    let deadline = tokio::time::Instant::now() + STOPPED_DAEMON_GRACE;
    loop {
        let locked: bool = client
            .query_one(
                "SELECT pg_try_advisory_lock($1)",
                &[&chain_lock_key(&config.node_id)],
            )
            .await
            .map_err(StoreError::from)?
            .get(0);
        if locked {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(AuditCliError::DaemonRunning {
                node_id: config.node_id.clone().into(),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let uid = nix::unistd::getuid().as_raw();
    let cut = anchor::accept_cut(&path, uid, reason)?;
    drop(client);
    write_stdout_line(&format!(
        "accepted the cut of node `{}`: seq {} lost (the database ends at seq {}); \
         the daemon's next start records this as its first audit event (audit.cut_accepted)",
        cut.loss.node_id,
        cut.loss.seqs(),
        cut.loss.database.seq
    ))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::verify::Breach;

    #[test]
    fn checkpoints_are_read_from_journal_json_and_from_text_lines() {
        let hash = "ab".repeat(32);
        let log = format!(
            "{{\"MESSAGE\":\"audit checkpoint signed\",\"NODE_ID\":\"host-1\",\"SEQ\":\"12\",\"HASH\":\"{hash}\"}}\n\
             2026-11-30T16:17:11Z  INFO audit checkpoint signed node_id=host-2 seq=7 hash={hash} key_id=x\n\
             2026-11-30T16:17:11Z  INFO audit checkpoint signed node_id=host-3 seq=7 hash=zz\n\
             2026-11-30T16:17:11Z  INFO playbookd ready node_id=host-1\n"
        );
        let found = logged_checkpoints(&log);
        let expected: Vec<(String, ChainHead)> = vec![
            (
                "host-1".into(),
                ChainHead {
                    seq: 12,
                    hash: [0xab; 32],
                },
            ),
            (
                "host-2".into(),
                ChainHead {
                    seq: 7,
                    hash: [0xab; 32],
                },
            ),
        ];
        assert_eq!(found, expected);
    }

    #[test]
    fn report_lines_name_the_seq_and_the_kind() {
        let mut report = ChainReport {
            node_id: "host-1".into(),
            rows: 1234,
            last_seq: 1234,
            checkpoints: 5,
            stored_rows: 1234,
            stored_last_seq: 1234,
            breach: None,
        };
        assert_eq!(
            report_line(&report, false),
            "node host-1: 1234 rows, last seq 1234, 5 checkpoints: ok"
        );
        report.checkpoints = 0;
        assert!(
            report_line(&report, true)
                .ends_with("pinned node key NOT CHECKED: no checkpoint signed yet"),
            "{}",
            report_line(&report, true)
        );
        report.checkpoints = 5;
        (report.rows, report.last_seq) = (56, 56);
        report.breach = Some((57, Breach::Modified));
        assert_eq!(
            report_line(&report, false),
            "node host-1: 1234 rows stored (last seq 1234), seq 1..56 verified, 5 checkpoints: \
             BREACH at seq 57: modified: the row does not match its hash"
        );
    }
}
