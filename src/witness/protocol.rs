//! The `add-checkpoint` request of C2SP tlog-witness (<https://c2sp.org/tlog-witness>) and the
//! witness's checks, in the order and with the status codes the spec gives. Pure: no I/O.
//!
//! ```text
//! old <size the client thinks the witness last cosigned>
//! <consistency proof hashes, base64, one a line, at most 63>
//!
//! <the checkpoint note: origin, size, root hash, extension lines, blank line, signatures>
//! ```

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::merkle::{self, Hash};
use crate::note::{self, VerifierKey};

/// The spec's bound on consistency proof lines.
pub const MAX_PROOF_LINES: usize = 63;

/// A parsed request: the checkpoint is not yet trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submission {
    pub old_size: u64,
    pub proof: Vec<Hash>,
    /// The whole checkpoint note as sent.
    pub note: String,
    pub checkpoint: Checkpoint,
}

/// The first lines of a checkpoint text (<https://c2sp.org/tlog-checkpoint>).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
    /// The note text: every line, extension lines included, ending with a newline.
    pub text: String,
}

/// What the witness keeps per log: the latest checkpoint it cosigned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cosigned {
    pub size: u64,
    pub root: Hash,
}

/// Why a submission is not cosigned, each with the status code the spec assigns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// 400.
    #[error("malformed request: {0}")]
    Malformed(String),
    /// 404.
    #[error("unknown log origin `{0}`")]
    UnknownOrigin(String),
    /// 403.
    #[error("the checkpoint carries no valid signature by the log's key `{0}`")]
    LogSignature(String),
    /// 409, with the size in a `text/x.tlog.size` body.
    #[error("old size {old} is not the size of the latest cosigned checkpoint ({latest})")]
    Conflict { old: u64, latest: u64 },
    /// 422.
    #[error("inconsistent checkpoint: {0}")]
    Inconsistent(String),
    /// 503: the witness could not record the new state, so it does not cosign.
    #[error("{0}")]
    Unavailable(&'static str),
}

impl Refusal {
    pub fn status(&self) -> u16 {
        match self {
            Refusal::Malformed(_) => 400,
            Refusal::LogSignature(_) => 403,
            Refusal::UnknownOrigin(_) => 404,
            Refusal::Conflict { .. } => 409,
            Refusal::Inconsistent(_) => 422,
            Refusal::Unavailable(_) => 503,
        }
    }
}

fn malformed(what: &str) -> Refusal {
    Refusal::Malformed(what.to_owned())
}

/// A decimal with no leading zeroes, as the spec requires for sizes.
fn parse_size(text: &str) -> Option<u64> {
    if text.is_empty()
        || !text.bytes().all(|b| b.is_ascii_digit())
        || (text.len() > 1 && text.starts_with('0'))
    {
        return None;
    }
    text.parse().ok()
}

fn parse_hash(text: &str) -> Option<Hash> {
    BASE64.decode(text).ok()?.try_into().ok()
}

/// Parses the request body (400 on anything malformed).
pub fn parse(body: &str) -> Result<Submission, Refusal> {
    let (head, note) = body
        .split_once("\n\n")
        .ok_or_else(|| malformed("no empty line between the proof and the checkpoint"))?;
    let mut lines = head.split('\n');
    let old_size = lines
        .next()
        .and_then(|line| line.strip_prefix("old "))
        .and_then(parse_size)
        .ok_or_else(|| malformed("the first line must be `old <decimal size>`"))?;
    let proof = lines
        .map(|line| parse_hash(line).ok_or_else(|| malformed("a proof line is not a base64 hash")))
        .collect::<Result<Vec<_>, _>>()?;
    if proof.len() > MAX_PROOF_LINES {
        return Err(malformed("more than 63 consistency proof lines"));
    }
    let (text, _) = note::split(note).map_err(|e| Refusal::Malformed(e.to_string()))?;
    let checkpoint = parse_checkpoint(text)?;
    Ok(Submission {
        old_size,
        proof,
        note: note.to_owned(),
        checkpoint,
    })
}

fn parse_checkpoint(text: &str) -> Result<Checkpoint, Refusal> {
    let mut lines = text.split('\n');
    let origin = lines
        .next()
        .filter(|origin| !origin.is_empty())
        .ok_or_else(|| malformed("the checkpoint has no origin line"))?;
    let size = lines
        .next()
        .and_then(parse_size)
        .ok_or_else(|| malformed("the checkpoint size is not a decimal"))?;
    let root = lines
        .next()
        .and_then(parse_hash)
        .ok_or_else(|| malformed("the checkpoint root is not a base64 SHA-256 hash"))?;
    Ok(Checkpoint {
        origin: origin.to_owned(),
        size,
        root,
        text: text.to_owned(),
    })
}

/// Checks the log's signature: 403 unless a line by `log_key` is present, and every such line
/// verifies (a failing one makes the note malformed per signed-note).
pub fn check_log_signature(submission: &Submission, log_key: &VerifierKey) -> Result<(), Refusal> {
    let refused = || Refusal::LogSignature(log_key.name.clone());
    let (text, lines) = note::split(&submission.note).map_err(|_| refused())?;
    let mut signed = false;
    for line in lines
        .iter()
        .filter(|line| line.name == log_key.name && line.key_id == log_key.id())
    {
        let signature =
            ed25519_dalek::Signature::from_slice(&line.signature).map_err(|_| refused())?;
        log_key
            .key
            .verify_strict(text.as_bytes(), &signature)
            .map_err(|_| refused())?;
        signed = true;
    }
    if signed { Ok(()) } else { Err(refused()) }
}

/// The consistency checks against what the witness last cosigned for this log (`None`: never).
/// On success the checkpoint becomes the new latest.
pub fn check_consistency(
    submission: &Submission,
    latest: Option<Cosigned>,
) -> Result<Cosigned, Refusal> {
    let checkpoint = &submission.checkpoint;
    if submission.old_size > checkpoint.size {
        return Err(malformed("the old size is larger than the checkpoint size"));
    }
    let latest_size = latest.map_or(0, |latest| latest.size);
    if submission.old_size != latest_size {
        return Err(Refusal::Conflict {
            old: submission.old_size,
            latest: latest_size,
        });
    }
    if checkpoint.size == 0 && checkpoint.root != merkle::empty_root() {
        return Err(Refusal::Inconsistent(
            "a checkpoint of size 0 must have the root of the empty tree".into(),
        ));
    }
    let new = Cosigned {
        size: checkpoint.size,
        root: checkpoint.root,
    };
    let Some(latest) = latest.filter(|latest| latest.size > 0) else {
        if !submission.proof.is_empty() {
            return Err(Refusal::Inconsistent(
                "old size 0 needs an empty consistency proof".into(),
            ));
        }
        return Ok(new);
    };
    if latest.size == checkpoint.size {
        if latest.root != checkpoint.root {
            return Err(Refusal::Inconsistent(format!(
                "a fork: the witness cosigned another root hash for size {}",
                checkpoint.size
            )));
        }
        if !submission.proof.is_empty() {
            return Err(Refusal::Inconsistent(
                "same size: the consistency proof must be empty".into(),
            ));
        }
        return Ok(new);
    }
    merkle::verify_consistency(
        latest.size,
        checkpoint.size,
        &latest.root,
        &checkpoint.root,
        &submission.proof,
    )
    .map_err(|error| {
        Refusal::Inconsistent(format!(
            "the consistency proof from size {} to {} does not verify: {error}",
            latest.size, checkpoint.size
        ))
    })?;
    Ok(new)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::{Tree, leaf_hash};

    fn tree(size: u64) -> Tree {
        Tree::new((0..size).map(|i| leaf_hash(&i.to_be_bytes())).collect())
    }

    fn body(old: u64, proof: &[Hash], size: u64, root: &Hash) -> String {
        let mut body = format!("old {old}\n");
        for hash in proof {
            body.push_str(&BASE64.encode(hash));
            body.push('\n');
        }
        format!(
            "{body}\nexample.com/log\n{size}\n{}\nchain-head x\n\n\u{2014} k AAAAAAA=\n",
            BASE64.encode(root)
        )
    }

    #[test]
    fn a_consistent_extension_is_accepted_and_the_codes_follow_the_spec() {
        let (t5, t9) = (tree(5), tree(9));
        let latest = Some(Cosigned {
            size: 5,
            root: t5.root(),
        });
        let proof = t9.consistency_proof(5).unwrap();
        let sub = parse(&body(5, &proof, 9, &t9.root())).unwrap();
        assert_eq!(sub.checkpoint.origin, "example.com/log");
        assert!(sub.checkpoint.text.ends_with("chain-head x\n"));
        assert_eq!(
            check_consistency(&sub, latest),
            Ok(Cosigned {
                size: 9,
                root: t9.root()
            })
        );
        // Rollback: the client claims an older state.
        let sub = parse(&body(3, &t9.consistency_proof(3).unwrap(), 9, &t9.root())).unwrap();
        assert_eq!(check_consistency(&sub, latest).unwrap_err().status(), 409);
        // A smaller checkpoint than the old size: 400.
        let sub = parse(&body(5, &[], 4, &tree(4).root())).unwrap();
        assert_eq!(check_consistency(&sub, latest).unwrap_err().status(), 400);
        // Fork: same size, other root.
        let sub = parse(&body(5, &[], 5, &tree(6).root())).unwrap();
        assert_eq!(check_consistency(&sub, latest).unwrap_err().status(), 422);
        // A proof that does not verify.
        let mut bad = proof.clone();
        bad[0][0] ^= 1;
        let sub = parse(&body(5, &bad, 9, &t9.root())).unwrap();
        assert_eq!(check_consistency(&sub, latest).unwrap_err().status(), 422);
        // First submission: old 0, no proof.
        let sub = parse(&body(0, &[], 9, &t9.root())).unwrap();
        assert!(check_consistency(&sub, None).is_ok());
        let sub = parse(&body(0, &proof, 9, &t9.root())).unwrap();
        assert_eq!(check_consistency(&sub, None).unwrap_err().status(), 422);
        let sub = parse(&body(0, &[], 0, &t9.root())).unwrap();
        assert_eq!(check_consistency(&sub, None).unwrap_err().status(), 422);
    }

    #[test]
    fn malformed_bodies_are_400() {
        let root = tree(2).root();
        for bad in [
            String::new(),
            "old 01\n\nexample.com/log\n2\nAAAA\n\n\u{2014} k AAAAAAA=\n".into(),
            body(1, &[], 2, &root).replace("old 1", "old x"),
            body(1, &[], 2, &root).replace("\n2\n", "\n-2\n"),
            body(1, &[[0; 32]; 64], 2, &root),
            body(1, &[], 2, &root).replace("\u{2014} k AAAAAAA=\n", ""),
        ] {
            assert_eq!(parse(&bad).map(|_| ()).unwrap_err().status(), 400, "{bad}");
        }
    }
}
