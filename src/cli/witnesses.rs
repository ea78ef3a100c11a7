//! `--witness-key VKEY` and `--require-witnesses N` of `audit verify` and `audit verify-bundle`:
//! how many trusted witnesses cosigned the checkpoint checked, and a distinct exit status
//! ([`EXIT_TOO_FEW_WITNESSES`]) when fewer than required did.

use std::collections::BTreeMap;

use crate::cosignature::{self, Cosignature, CosignatureError};
use crate::merkle::{self, Hash};
use crate::note::{self, KeyType, TreeHead, VerifierKey};
use crate::store::StoreError;
use crate::store::evidence;

/// Exit status of `audit verify` and `audit verify-bundle` when the evidence holds but fewer
/// trusted witnesses than `--require-witnesses` cosigned it.
pub const EXIT_TOO_FEW_WITNESSES: u8 = 4;

#[derive(Debug, Clone, Default, clap::Args)]
pub struct WitnessArgs {
    /// A trusted witness's cosignature/v1 verifier key (`name+keyid+base64`, type 0x04;
    /// `playbookd witness --vkey` prints it). Repeatable.
    #[arg(long = "witness-key", value_name = "VKEY", value_parser = parse_witness_key)]
    pub witness_keys: Vec<VerifierKey>,
    /// Fail (exit 4) unless at least N of the trusted witnesses cosigned the checkpoint.
    #[arg(long = "require-witnesses", value_name = "N", default_value_t = 0)]
    pub require_witnesses: usize,
}

fn parse_witness_key(text: &str) -> Result<VerifierKey, String> {
    let key: VerifierKey = text.parse().map_err(|e| format!("{e}"))?;
    if key.key_type != KeyType::CosignatureV1 {
        return Err("expected a witness cosignature/v1 key (type 0x04)".into());
    }
    Ok(key)
}

impl WitnessArgs {
    pub fn wanted(&self) -> bool {
        !self.witness_keys.is_empty() || self.require_witnesses > 0
    }

    /// A requirement no set of these keys can meet is a mistake on the command line.
    pub fn check(&self) -> Result<(), String> {
        let distinct: std::collections::BTreeSet<_> = self
            .witness_keys
            .iter()
            .map(|k| (k.name.as_str(), k.id()))
            .collect();
        if self.require_witnesses > distinct.len() {
            return Err(format!(
                "--require-witnesses {} needs at least that many distinct --witness-key",
                self.require_witnesses
            ));
        }
        Ok(())
    }
}

/// How many trusted witnesses cosigned one checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WitnessCount {
    /// The checkpoint's tree size (its seq), or None when nothing was cosigned.
    pub seq: Option<u64>,
    pub cosigners: Vec<String>,
}

impl WitnessCount {
    pub fn line(&self, required: usize) -> String {
        let names = if self.cosigners.is_empty() {
            String::new()
        } else {
            format!(" ({})", self.cosigners.join(", "))
        };
        let what = match self.seq {
            Some(seq) => format!("checkpoint seq {seq}"),
            None => "no checkpoint".to_owned(),
        };
        let verdict = if self.cosigners.len() >= required {
            "ok".to_owned()
        } else {
            format!("TOO FEW WITNESSES: {required} required")
        };
        format!(
            "{what} cosigned by {} trusted witness(es){names}: {verdict}",
            self.cosigners.len()
        )
    }
}

/// Counts the trusted cosigners of a note (a bundle's checkpoint).
pub fn count_in_note(note: &str, keys: &[VerifierKey]) -> Result<Vec<String>, CosignatureError> {
    Ok(cosignature::trusted_cosigners(note, keys)?
        .into_iter()
        .map(|c| c.witness)
        .collect())
}

/// A stored cosignature names a trusted key but does not verify: the database was altered.
#[derive(Debug, thiserror::Error)]
#[error("node {node_id}: the stored cosignature of checkpoint seq {seq}: {source}")]
pub struct StoredCosignatureBreach {
    pub node_id: String,
    pub seq: u64,
    #[source]
    pub source: CosignatureError,
}

#[derive(Debug, thiserror::Error)]
pub enum CountError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Breach(#[from] StoredCosignatureBreach),
}

/// For a node whose chain verified: the newest checkpoint cosigned by at least `required`
/// trusted witnesses, or else the one with the most trusted cosigners.
pub async fn count_stored(
    client: &tokio_postgres::Client,
    node_id: &str,
    keys: &[VerifierKey],
    required: usize,
) -> Result<WitnessCount, CountError> {
    let mut by_seq: BTreeMap<u64, Vec<Cosignature>> = BTreeMap::new();
    for (seq, cosignature) in evidence::cosignatures(client, node_id, None).await? {
        by_seq.entry(seq).or_default().push(cosignature);
    }
    let Some(&newest) = by_seq.keys().next_back() else {
        return Ok(WitnessCount {
            seq: None,
            cosigners: Vec::new(),
        });
    };
    let hashes = evidence::chain_hashes(client, node_id, newest).await?;
    let leaves: Vec<Hash> = hashes.iter().map(|h| merkle::leaf_hash(h)).collect();
    let mut best: Option<WitnessCount> = None;
    for (&seq, cosignatures) in by_seq.iter().rev() {
        let size = usize::try_from(seq).unwrap_or(usize::MAX).min(leaves.len());
        let text = note::checkpoint_text(&TreeHead {
            origin: note::origin(node_id),
            size: seq,
            root: merkle::root_of(&leaves[..size]),
            chain_head: hashes[size.saturating_sub(1)],
        });
        let mut cosigners = Vec::new();
        for key in keys {
            let Some(stored) = cosignatures
                .iter()
                .find(|c| c.witness == key.name && c.key_id == key.id())
            else {
                continue;
            };
            stored
                .verify(key, &text)
                .map_err(|source| StoredCosignatureBreach {
                    node_id: node_id.to_owned(),
                    seq,
                    source,
                })?;
            if !cosigners.contains(&key.name) {
                cosigners.push(key.name.clone());
            }
        }
        let count = WitnessCount {
            seq: Some(seq),
            cosigners,
        };
        if count.cosigners.len() >= required.max(1) {
            return Ok(count);
        }
        if best
            .as_ref()
            .is_none_or(|b| b.cosigners.len() < count.cosigners.len())
        {
            best = Some(count);
        }
    }
    Ok(best.unwrap_or(WitnessCount {
        seq: None,
        cosigners: Vec::new(),
    }))
}
