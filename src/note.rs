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
    typed_key_id(name, KeyType::Ed25519, key)
}

/// `SHA-256(name ‖ "\n" ‖ type byte ‖ key)[..4]`, big-endian: the key ID of every signed-note
/// key type this project knows.
pub fn typed_key_id(name: &str, key_type: KeyType, key: &VerifyingKey) -> u32 {
    let mut hasher = Sha256::new();
    hasher.update(name.as_bytes());
    hasher.update([b'\n', key_type.byte()]);
    hasher.update(key.as_bytes());
    let digest = hasher.finalize();
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// The verifier key string standard tools take: `name+hex key ID+base64(0x01 ‖ key)`.
pub fn verifier_key(name: &str, key: &VerifyingKey) -> String {
    VerifierKey {
        name: name.to_owned(),
        key_type: KeyType::Ed25519,
        key: *key,
    }
    .to_string()
}

/// The signed-note key types this project signs or checks, by their type byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    /// 0x01: a plain Ed25519 note signature (<https://c2sp.org/signed-note>): log keys.
    Ed25519,
    /// 0x04: a timestamped Ed25519 `cosignature/v1` (<https://c2sp.org/tlog-cosignature>):
    /// witness keys.
    CosignatureV1,
}

impl KeyType {
    pub fn byte(self) -> u8 {
        match self {
            KeyType::Ed25519 => 0x01,
            KeyType::CosignatureV1 => 0x04,
        }
    }

    fn from_byte(byte: u8) -> Option<KeyType> {
        match byte {
            0x01 => Some(KeyType::Ed25519),
            0x04 => Some(KeyType::CosignatureV1),
            _ => None,
        }
    }
}

/// A signed-note verifier key (`name+hex key ID+base64(type ‖ public key)`), decoded and checked.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct VerifierKey {
    pub name: String,
    pub key_type: KeyType,
    pub key: VerifyingKey,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifierKeyError {
    #[error("a verifier key has the form NAME+KEYID+BASE64 (got {0} `+`-separated field(s))")]
    Shape(usize),
    #[error("the key name is empty or holds whitespace or `+`")]
    Name,
    #[error("the key ID is not 8 hex digits")]
    KeyId,
    #[error("the key is not base64")]
    Base64,
    #[error(
        "key type 0x{0:02x} is not supported (0x01: Ed25519 signed note; 0x04: Ed25519 cosignature/v1)"
    )]
    Type(u8),
    #[error("the key is not 32 bytes of a valid Ed25519 public key")]
    Key,
    #[error("the key ID does not match the name and key (a typo, or another key's ID)")]
    KeyIdMismatch,
}

impl VerifierKey {
    /// The key ID lines signed by this key carry.
    pub fn id(&self) -> u32 {
        typed_key_id(&self.name, self.key_type, &self.key)
    }
}

impl std::fmt::Display for VerifierKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut typed = vec![self.key_type.byte()];
        typed.extend_from_slice(self.key.as_bytes());
        write!(
            f,
            "{}+{:08x}+{}",
            self.name,
            self.id(),
            BASE64.encode(typed)
        )
    }
}

impl std::str::FromStr for VerifierKey {
    type Err = VerifierKeyError;

    fn from_str(text: &str) -> Result<VerifierKey, VerifierKeyError> {
        // The base64 key may hold `+`; the name and the key ID may not.
        let fields: Vec<&str> = text.splitn(3, '+').collect();
        let [name, id, key] = fields.as_slice() else {
            return Err(VerifierKeyError::Shape(fields.len()));
        };
        if name.is_empty() || name.chars().any(char::is_whitespace) {
            return Err(VerifierKeyError::Name);
        }
        if id.len() != 8 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(VerifierKeyError::KeyId);
        }
        let id = u32::from_str_radix(id, 16).map_err(|_| VerifierKeyError::KeyId)?;
        let typed = BASE64.decode(key).map_err(|_| VerifierKeyError::Base64)?;
        let (&type_byte, key) = typed.split_first().ok_or(VerifierKeyError::Key)?;
        let key_type = KeyType::from_byte(type_byte).ok_or(VerifierKeyError::Type(type_byte))?;
        let key = <[u8; 32]>::try_from(key)
            .ok()
            .and_then(|key| VerifyingKey::from_bytes(&key).ok())
            .ok_or(VerifierKeyError::Key)?;
        let parsed = VerifierKey {
            name: (*name).to_owned(),
            key_type,
            key,
        };
        if parsed.id() != id {
            return Err(VerifierKeyError::KeyIdMismatch);
        }
        Ok(parsed)
    }
}

impl TryFrom<String> for VerifierKey {
    type Error = VerifierKeyError;

    fn try_from(text: String) -> Result<VerifierKey, VerifierKeyError> {
        text.parse()
    }
}

/// One signature line of a note: `— name base64(key ID ‖ signature)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureLine<'a> {
    pub name: &'a str,
    pub key_id: u32,
    /// The bytes after the key ID (their layout depends on the key type).
    pub signature: Vec<u8>,
}

/// Splits a signed note into its text (ending with a newline) and its signature lines.
pub fn split(note: &str) -> Result<(&str, Vec<SignatureLine<'_>>), NoteError> {
    let split = note
        .rfind("\n\n")
        .ok_or(NoteError::Malformed("no blank line before the signatures"))?;
    let (text, signatures) = (&note[..=split], &note[split + 2..]);
    let lines = signatures
        .strip_suffix('\n')
        .ok_or(NoteError::Malformed(
            "the last signature line has no newline",
        ))?
        .split('\n')
        .map(signature_line)
        .collect::<Result<Vec<_>, _>>()?;
    if lines.len() > MAX_SIGNATURES {
        return Err(NoteError::Malformed("more than 100 signature lines"));
    }
    Ok((text, lines))
}

/// Parses one signature line (without its newline).
pub fn signature_line(line: &str) -> Result<SignatureLine<'_>, NoteError> {
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
    Ok(SignatureLine {
        name,
        key_id: u32::from_be_bytes([blob[0], blob[1], blob[2], blob[3]]),
        signature: blob[4..].to_vec(),
    })
}

/// Formats a signature line, newline included.
pub fn format_signature_line(name: &str, key_id: u32, signature: &[u8]) -> String {
    let mut blob = key_id.to_be_bytes().to_vec();
    blob.extend_from_slice(signature);
    format!("{SIGNATURE_PREFIX}{name} {}\n", BASE64.encode(blob))
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
    format!(
        "{text}\n{}",
        format_signature_line(
            &head.origin,
            key_id(&head.origin, key),
            &signature.to_bytes()
        )
    )
}

/// Verifies `note` as a checkpoint of `expected_origin` signed by `key` (key name = origin), and
/// returns its tree head. Signatures by other keys (e.g. witnesses) are ignored, as the spec says.
pub fn verify(
    note: &str,
    expected_origin: &str,
    key: &VerifyingKey,
) -> Result<TreeHead, NoteError> {
    let (text, lines) = split(note)?;
    let wanted_id = key_id(expected_origin, key);
    let mut signed = false;
    for line in lines {
        if line.name != expected_origin || line.key_id != wanted_id {
            continue;
        }
        let bad = || NoteError::BadSignature {
            key_name: line.name.to_owned(),
        };
        let signature = Signature::from_slice(&line.signature).map_err(|_| bad())?;
        key.verify_strict(text.as_bytes(), &signature)
            .map_err(|_| bad())?;
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

/// The tree head a note states, without checking any signature: for a server that hands out
/// proofs against a note it stored (whoever receives them checks the signature).
pub fn parse_unverified(note: &str) -> Result<TreeHead, NoteError> {
    let split = note
        .rfind("\n\n")
        .ok_or(NoteError::Malformed("no blank line before the signatures"))?;
    parse_checkpoint(&note[..=split])
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
