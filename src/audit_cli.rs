//! `playbookd audit verify`: re-verifies every node's audit chain (or one) and prints one line
//! per node. Exit status: 0 when every chain is intact, 2 when a breach is found, 1 when the
//! verification itself could not be done.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::cli::{OutputError, write_stdout_line};
use crate::config::{Config, ConfigError};
use crate::store::checkpoint::{NodeKeyError, load_public_key_id};
use crate::store::verify::{self, ChainReport};
use crate::store::{self, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum AuditCliError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot use --trusted-node-key")]
    TrustedKey(#[source] NodeKeyError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("node `{node_id}` has no audit chain and no checkpoint in this database")]
    UnknownNode { node_id: String },
    /// Already reported on stdout, one line per node.
    #[error("audit chain breach found in {count} node(s)")]
    Breach { count: usize },
    #[error(transparent)]
    Output(#[from] OutputError),
}

impl AuditCliError {
    /// 2 for a breach (the evidence is damaged), 1 when verification could not run.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            AuditCliError::Breach { .. } => ExitCode::from(EXIT_BREACH),
            AuditCliError::Output(error) => error.exit_code(),
            AuditCliError::Config(_)
            | AuditCliError::TrustedKey(_)
            | AuditCliError::Store(_)
            | AuditCliError::UnknownNode { .. } => ExitCode::FAILURE,
        }
    }
}

/// Exit status of `audit verify` when a chain is damaged.
pub const EXIT_BREACH: u8 = 2;

/// Verifies the chains and prints one line per node on stdout.
pub async fn verify(
    config: &Path,
    node: Option<&str>,
    trusted_node_keys: &[PathBuf],
) -> Result<(), AuditCliError> {
    let config = Config::load(config)?;
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
    let client = store::connect_single(&config.postgres_config()).await?;
    let nodes = verify::nodes(&client).await?;
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
    for node in &nodes {
        let report = verify::verify_chain_with(&client, node, pinned.as_ref()).await?;
        write_stdout_line(&report_line(&report))?;
        if report.breach.is_some() {
            breaches += 1;
        }
    }
    if breaches > 0 {
        return Err(AuditCliError::Breach { count: breaches });
    }
    Ok(())
}

/// `node host-1: 1234 rows, last seq 1234, 5 checkpoints: ok`, or the first bad seq and what is
/// wrong there.
pub fn report_line(report: &ChainReport) -> String {
    let counts = format!(
        "node {}: {} rows, last seq {}, {} checkpoints",
        report.node_id, report.rows, report.last_seq, report.checkpoints
    );
    match &report.breach {
        None => format!("{counts}: ok"),
        Some((seq, breach)) => format!("{counts}: BREACH at seq {seq}: {breach}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::verify::Breach;

    #[test]
    fn report_lines_name_the_seq_and_the_kind() {
        let mut report = ChainReport {
            node_id: "host-1".into(),
            rows: 1234,
            last_seq: 1234,
            checkpoints: 5,
            breach: None,
        };
        assert_eq!(
            report_line(&report),
            "node host-1: 1234 rows, last seq 1234, 5 checkpoints: ok"
        );
        report.breach = Some((57, Breach::Modified));
        let line = report_line(&report);
        assert!(
            line.ends_with("BREACH at seq 57: modified: the row does not match its hash"),
            "{line}"
        );
    }
}
