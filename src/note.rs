//! Tree heads in the C2SP formats transparency logs share: a `tlog-checkpoint` body
//! (<https://c2sp.org/tlog-checkpoint>) wrapped in a `signed-note` (<https://c2sp.org/signed-note>)
//! with an Ed25519 signature by the node key. Pure: no I/O.
//!
//! ```text
//! playbookd/host-1
//! 1234
//! <base64 of the RFC 6962 root of the first 1234 rows>
//! chain-head <base64 of the chain hash of row 1234>
//!
//! — playbookd/host-1 <base64 of key ID (4 bytes) ‖ Ed25519 signature (64 bytes)>
//! ```
//!
//! The origin line and the key name are both `playbookd/<node_id>`. The key ID is the first four
//! bytes of `SHA-256(key name ‖ 0x0A ‖ 0x01 ‖ public key)`, as the signed-note spec defines for
//! Ed25519. Any standard verifier given [`verifier_key`] checks the note; the extension line lets
//! this project's verifier tie the tree to the hash chain.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{Signature, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::merkle::Hash;

/// The signature line prefix: an em dash (U+2014) and a space.
const SIGNATURE_PREFIX: &str = "\u{2014} ";
/// The signed-note spec's bound on signature lines; more is a malformed note.
const MAX_SIGNATURES: usize = 100;
const CHAIN_HEAD: &str = "chain-head ";

/// A signed tree head of one node's chain, as carried by a checkpoint note.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct TreeHead {
    pub origin: String,
    /// Number of leaves, i.e. the seq of the last row covered.
    pub size: u64,
    pub root: Hash,
    /// The chain hash of the row at seq `size`.
    pub chain_head: Hash,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    #[error("malformed checkpoint note: {0}")]
    Malformed(&'static str),
    #[error("the checkpoint names origin `{found}`, not `{expected}`")]
    WrongOrigin { expected: String, found: String },
    #[error(
        "the checkpoint carries no signature by the trusted key `{key_name}` (key ID {key_id:08x})"
    )]
    NotSignedByTrustedKey { key_name: String, key_id: u32 },
    #[error(
        "the checkpoint signature by `{key_name}` does not verify: the note was altered or signed by another key"
    )]
    BadSignature { key_name: String },
}

/// The origin line and key name of `node_id`'s log.
pub fn origin(node_id: &str) -> String {
    format!("playbookd/{node_id}")
}

/// signed-note key ID of an Ed25519 key: `SHA-256(name ‖ "\n" ‖ 0x01 ‖ key)[..4]`, big-endian.
pub fn key_id(name: &str, key: &VerifyingKey) -> u32 {
    let mut hasher = Sha256::new();
    hasher.update(name.as_bytes());
    hasher.update(b"\n\x01");
    hasher.update(key.as_bytes());
    let digest = hasher.finalize();
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// The verifier key string standard tools take: `name+hex key ID+base64(0x01 ‖ key)`.
pub fn verifier_key(name: &str, key: &VerifyingKey) -> String {
    let mut typed = vec![0x01];
    typed.extend_from_slice(key.as_bytes());
    format!("{name}+{:08x}+{}", key_id(name, key), BASE64.encode(typed))
}

/// The checkpoint body (the note text), ending with a newline.
pub fn checkpoint_text(head: &TreeHead) -> String {
    format!(
        "{}\n{}\n{}\n{CHAIN_HEAD}{}\n",
        head.origin,
        head.size,
        BASE64.encode(head.root),
        BASE64.encode(head.chain_head)
    )
}

/// The signed note: `text`, a blank line, and one signature line by `key_name`.
/// `sign` signs the exact text bytes (the caller holds the private key).
pub fn signed_note(
    head: &TreeHead,
    key: &VerifyingKey,
    sign: impl FnOnce(&[u8]) -> Signature,
) -> String {
    let text = checkpoint_text(head);
    let signature = sign(text.as_bytes());
    let mut blob = key_id(&head.origin, key).to_be_bytes().to_vec();
    blob.extend_from_slice(&signature.to_bytes());
    format!(
        "{text}\n{SIGNATURE_PREFIX}{} {}\n",
        head.origin,
        BASE64.encode(blob)
    )
}

/// Verifies `note` as a checkpoint of `expected_origin` signed by `key` (key name = origin), and
/// returns its tree head. Signatures by other keys (e.g. witnesses) are ignored, as the spec says.
pub fn verify(
    note: &str,
    expected_origin: &str,
    key: &VerifyingKey,
) -> Result<TreeHead, NoteError> {
    let split = note
        .rfind("\n\n")
        .ok_or(NoteError::Malformed("no blank line before the signatures"))?;
    let (text, signatures) = (&note[..=split], &note[split + 2..]);
    if !signatures.ends_with('\n') {
        return Err(NoteError::Malformed(
            "the last signature line has no newline",
        ));
    }
    let lines: Vec<&str> = signatures[..signatures.len() - 1].split('\n').collect();
    if lines.len() > MAX_SIGNATURES {
        return Err(NoteError::Malformed("more than 100 signature lines"));
    }
    let wanted_id = key_id(expected_origin, key);
    let mut signed = false;
    for line in lines {
        let rest = line
            .strip_prefix(SIGNATURE_PREFIX)
            .ok_or(NoteError::Malformed(
                "a signature line does not start with an em dash",
            ))?;
        let (name, blob) = rest
            .split_once(' ')
            .ok_or(NoteError::Malformed("a signature line has no key name"))?;
        let blob = BASE64
            .decode(blob)
            .map_err(|_| NoteError::Malformed("a signature is not base64"))?;
        if blob.len() < 5 {
            return Err(NoteError::Malformed("a signature is shorter than 5 bytes"));
        }
        let id = u32::from_be_bytes([blob[0], blob[1], blob[2], blob[3]]);
        if name != expected_origin || id != wanted_id {
            continue;
        }
        let signature = Signature::from_slice(&blob[4..]).map_err(|_| NoteError::BadSignature {
            key_name: name.to_owned(),
        })?;
        key.verify_strict(text.as_bytes(), &signature)
            .map_err(|_| NoteError::BadSignature {
                key_name: name.to_owned(),
            })?;
        signed = true;
    }
    if !signed {
        return Err(NoteError::NotSignedByTrustedKey {
            key_name: expected_origin.to_owned(),
            key_id: wanted_id,
        });
    }
    let head = parse_checkpoint(text)?;
    if head.origin != expected_origin {
        return Err(NoteError::WrongOrigin {
            expected: expected_origin.to_owned(),
            found: head.origin,
        });
    }
    Ok(head)
}

/// Parses a checkpoint body this project writes: exactly four lines.
fn parse_checkpoint(text: &str) -> Result<TreeHead, NoteError> {
    let body = text
        .strip_suffix('\n')
        .ok_or(NoteError::Malformed("the text does not end with a newline"))?;
    let lines: Vec<&str> = body.split('\n').collect();
    let [origin, size, root, extension] = lines.as_slice() else {
        return Err(NoteError::Malformed(
            "expected origin, size, root hash and chain-head lines",
        ));
    };
    if origin.is_empty() {
        return Err(NoteError::Malformed("empty origin line"));
    }
    if size.is_empty()
        || !size.bytes().all(|b| b.is_ascii_digit())
        || (size.len() > 1 && size.starts_with('0'))
    {
        return Err(NoteError::Malformed(
            "the tree size is not a decimal number",
        ));
    }
    let size: u64 = size
        .parse()
        .map_err(|_| NoteError::Malformed("the tree size is too large"))?;
    let root = decode_hash(root).ok_or(NoteError::Malformed(
        "the root hash is not 32 bytes of base64",
    ))?;
    let chain_head = extension
        .strip_prefix(CHAIN_HEAD)
        .and_then(decode_hash)
        .ok_or(NoteError::Malformed(
            "the chain-head line is missing or not 32 bytes of base64",
        ))?;
    Ok(TreeHead {
        origin: (*origin).to_owned(),
        size,
        root,
        chain_head,
    })
}

fn decode_hash(text: &str) -> Option<Hash> {
    BASE64.decode(text).ok()?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    fn head() -> TreeHead {
        TreeHead {
            origin: origin("host-1"),
            size: 1234,
            root: [0xab; 32],
            chain_head: [0xcd; 32],
        }
    }

    fn note(key: &SigningKey, head: &TreeHead) -> String {
        signed_note(head, &key.verifying_key(), |text| key.sign(text))
    }

    #[test]
    fn the_note_has_the_c2sp_layout_and_verifies() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let text = note(&key, &head());
        let root = BASE64.encode([0xab; 32]);
        let chain = BASE64.encode([0xcd; 32]);
        assert!(
            text.starts_with(&format!(
                "playbookd/host-1\n1234\n{root}\nchain-head {chain}\n\n\u{2014} playbookd/host-1 "
            )),
            "{text}"
        );
        assert_eq!(
            verify(&text, "playbookd/host-1", &key.verifying_key()),
            Ok(head())
        );
    }

    #[test]
    fn another_key_an_altered_text_or_another_origin_fail_with_the_reason() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let other = SigningKey::from_bytes(&[8; 32]);
        let text = note(&key, &head());
        assert!(matches!(
            verify(&text, "playbookd/host-1", &other.verifying_key()),
            Err(NoteError::NotSignedByTrustedKey { .. })
        ));
        let altered = text.replacen("1234", "1233", 1);
        assert!(matches!(
            verify(&altered, "playbookd/host-1", &key.verifying_key()),
            Err(NoteError::BadSignature { .. })
        ));
        assert!(matches!(
            verify(&text, "playbookd/host-2", &key.verifying_key()),
            Err(NoteError::NotSignedByTrustedKey { .. })
        ));
        // Signed under the right key name but claiming another origin.
        let mut foreign = head();
        foreign.origin = "playbookd/host-2".into();
        let body = checkpoint_text(&foreign);
        let signature = key.sign(body.as_bytes());
        let mut blob = key_id("playbookd/host-1", &key.verifying_key())
            .to_be_bytes()
            .to_vec();
        blob.extend_from_slice(&signature.to_bytes());
        let forged = format!(
            "{body}\n\u{2014} playbookd/host-1 {}\n",
            BASE64.encode(blob)
        );
        assert!(matches!(
            verify(&forged, "playbookd/host-1", &key.verifying_key()),
            Err(NoteError::WrongOrigin { .. })
        ));
    }

    #[test]
    fn foreign_signature_lines_are_ignored_and_garbage_is_malformed() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let witness = SigningKey::from_bytes(&[9; 32]);
        let text = note(&key, &head());
        let body = checkpoint_text(&head());
        let mut blob = key_id("witness.example", &witness.verifying_key())
            .to_be_bytes()
            .to_vec();
        blob.extend_from_slice(&witness.sign(body.as_bytes()).to_bytes());
        let cosigned = format!("{text}\u{2014} witness.example {}\n", BASE64.encode(blob));
        assert_eq!(
            verify(&cosigned, "playbookd/host-1", &key.verifying_key()),
            Ok(head())
        );
        for bad in ["", "x\n", "a\n\nno dash\n", "a\n\n\u{2014} n !!!\n"] {
            assert!(matches!(
                verify(bad, "playbookd/host-1", &key.verifying_key()),
                Err(NoteError::Malformed(_))
            ));
        }
    }

    #[test]
    fn the_key_id_follows_the_signed_note_spec() {
        let key = SigningKey::from_bytes(&[7; 32]).verifying_key();
        let mut hasher = Sha256::new();
        hasher.update(b"playbookd/host-1\n\x01");
        hasher.update(key.as_bytes());
        let digest = hasher.finalize();
        assert_eq!(key_id("playbookd/host-1", &key).to_be_bytes(), digest[..4]);
        let vkey = verifier_key("playbookd/host-1", &key);
        assert!(vkey.starts_with(&format!("playbookd/host-1+{}+", hex::encode(&digest[..4]))));
    }
}
