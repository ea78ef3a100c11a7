//! Witness cosignatures in the C2SP `tlog-cosignature` Ed25519 format
//! (<https://c2sp.org/tlog-cosignature>), key type 0x04. Pure: no I/O.
//!
//! A cosignature is a signed-note signature line by the witness key over
//!
//! ```text
//! cosignature/v1
//! time <POSIX seconds>
//! <the checkpoint text, every line including extensions, without signature lines>
//! ```
//!
//! whose bytes after the key ID are `u64 BE timestamp ‖ 64-byte Ed25519 signature`. It states
//! that, at that time, this was the largest consistent tree the witness had seen of that log.

use ed25519_dalek::Signature;

use crate::note::{self, KeyType, NoteError, SignatureLine, VerifierKey};

/// The timestamped signature: 8 bytes of time, 64 of Ed25519.
const TIMESTAMPED_LEN: usize = 8 + 64;

/// One witness's cosignature of a checkpoint, as stored in `audit_cosignatures`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cosignature {
    pub witness: String,
    pub key_id: u32,
    /// POSIX seconds; never zero (the witness protocol forbids omitting it).
    pub timestamp: u64,
    pub signature: [u8; 64],
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CosignatureError {
    #[error("the signature line is not by witness `{witness}` (key ID {key_id:08x})")]
    OtherKey { witness: String, key_id: u32 },
    #[error("the cosignature by `{witness}` is not 72 bytes (timestamp and Ed25519 signature)")]
    Length { witness: String },
    #[error("the cosignature by `{witness}` has timestamp 0 or beyond 2^63-1")]
    Timestamp { witness: String },
    #[error(
        "the cosignature by `{witness}` does not verify over this checkpoint: altered, or by another key"
    )]
    BadSignature { witness: String },
    #[error("`{witness}` is not a cosignature/v1 (type 0x04) key")]
    NotACosignerKey { witness: String },
    #[error(transparent)]
    Note(#[from] NoteError),
}

/// The bytes a cosignature/v1 signs: header, time line, then the checkpoint text.
pub fn message(checkpoint_text: &str, timestamp: u64) -> Vec<u8> {
    format!("cosignature/v1\ntime {timestamp}\n{checkpoint_text}").into_bytes()
}

impl Cosignature {
    /// Signs `checkpoint_text` at `timestamp` as `witness` (key type 0x04 of `key`).
    pub fn sign(
        witness: &VerifierKey,
        checkpoint_text: &str,
        timestamp: u64,
        sign: impl FnOnce(&[u8]) -> Signature,
    ) -> Cosignature {
        Cosignature {
            witness: witness.name.clone(),
            key_id: witness.id(),
            timestamp,
            signature: sign(&message(checkpoint_text, timestamp)).to_bytes(),
        }
    }

    /// Decodes a signature line as a cosignature by `key`, and checks it over `checkpoint_text`.
    pub fn from_line(
        line: &SignatureLine<'_>,
        key: &VerifierKey,
        checkpoint_text: &str,
    ) -> Result<Cosignature, CosignatureError> {
        let witness = key.name.clone();
        if key.key_type != KeyType::CosignatureV1 {
            return Err(CosignatureError::NotACosignerKey { witness });
        }
        if line.name != key.name || line.key_id != key.id() {
            return Err(CosignatureError::OtherKey {
                witness: line.name.to_owned(),
                key_id: line.key_id,
            });
        }
        let bytes: [u8; TIMESTAMPED_LEN] =
            line.signature
                .as_slice()
                .try_into()
                .map_err(|_| CosignatureError::Length {
                    witness: witness.clone(),
                })?;
        let (time, signature) = bytes.split_at(8);
        let mut timestamp = [0; 8];
        timestamp.copy_from_slice(time);
        let mut sig = [0; 64];
        sig.copy_from_slice(signature);
        let cosignature = Cosignature {
            witness,
            key_id: line.key_id,
            timestamp: u64::from_be_bytes(timestamp),
            signature: sig,
        };
        cosignature.verify(key, checkpoint_text)?;
        Ok(cosignature)
    }

    /// Checks this cosignature over `checkpoint_text` under `key`.
    pub fn verify(&self, key: &VerifierKey, checkpoint_text: &str) -> Result<(), CosignatureError> {
        let witness = self.witness.clone();
        if key.key_type != KeyType::CosignatureV1 {
            return Err(CosignatureError::NotACosignerKey { witness });
        }
        if self.witness != key.name || self.key_id != key.id() {
            return Err(CosignatureError::OtherKey {
                witness,
                key_id: self.key_id,
            });
        }
        if self.timestamp == 0 || self.timestamp > i64::MAX as u64 {
            return Err(CosignatureError::Timestamp { witness });
        }
        key.key
            .verify_strict(
                &message(checkpoint_text, self.timestamp),
                &Signature::from_bytes(&self.signature),
            )
            .map_err(|_| CosignatureError::BadSignature { witness })
    }

    /// The note signature line, newline included.
    pub fn line(&self) -> String {
        let mut bytes = self.timestamp.to_be_bytes().to_vec();
        bytes.extend_from_slice(&self.signature);
        note::format_signature_line(&self.witness, self.key_id, &bytes)
    }
}

/// The trusted witnesses whose valid cosignature `note` carries, one entry per key (the newest
/// timestamp if a witness signed twice). Lines by other keys are ignored, as the signed-note spec
/// says; a line that names a trusted key but does not verify makes the note malformed, so it is
/// an error, never a lower count.
pub fn trusted_cosigners(
    note: &str,
    trusted: &[VerifierKey],
) -> Result<Vec<Cosignature>, CosignatureError> {
    let (text, lines) = note::split(note)?;
    let mut found: Vec<Cosignature> = Vec::new();
    for key in trusted {
        for line in lines
            .iter()
            .filter(|line| line.name == key.name && line.key_id == key.id())
        {
            let cosignature = Cosignature::from_line(line, key, text)?;
            match found
                .iter_mut()
                .find(|c| c.witness == cosignature.witness && c.key_id == cosignature.key_id)
            {
                Some(seen) if seen.timestamp >= cosignature.timestamp => {}
                Some(seen) => *seen = cosignature,
                None => found.push(cosignature),
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    fn witness(seed: u8) -> (SigningKey, VerifierKey) {
        let signing = SigningKey::from_bytes(&[seed; 32]);
        let key = VerifierKey {
            name: "witness.example/w1".into(),
            key_type: KeyType::CosignatureV1,
            key: signing.verifying_key(),
        };
        (signing, key)
    }

    const TEXT: &str = "example.com/log\n20\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n";

    #[test]
    fn a_cosignature_signs_the_v1_message_and_round_trips_through_its_line() {
        let (signing, key) = witness(3);
        let cosig = Cosignature::sign(&key, TEXT, 1_679_315_147, |m| signing.sign(m));
        let expected = b"cosignature/v1\ntime 1679315147\nexample.com/log\n20\n";
        assert!(message(TEXT, 1_679_315_147).starts_with(expected));
        let note = format!("{TEXT}\n{}", cosig.line());
        let found = trusted_cosigners(&note, std::slice::from_ref(&key)).unwrap();
        assert_eq!(found, vec![cosig]);
        // The key ID follows the spec: SHA-256(name ‖ "\n" ‖ 0x04 ‖ key)[:4].
        use sha2::Digest;
        let mut hasher = sha2::Sha256::new();
        hasher.update(b"witness.example/w1\n\x04");
        hasher.update(key.key.as_bytes());
        assert_eq!(key.id().to_be_bytes(), hasher.finalize()[..4]);
    }

    #[test]
    fn another_text_another_key_or_a_zero_time_fail_with_the_reason() {
        let (signing, key) = witness(3);
        let (_, other) = witness(4);
        let cosig = Cosignature::sign(&key, TEXT, 5, |m| signing.sign(m));
        let altered = TEXT.replace("\n20\n", "\n21\n");
        assert!(matches!(
            cosig.verify(&key, &altered),
            Err(CosignatureError::BadSignature { .. })
        ));
        assert!(matches!(
            cosig.verify(&other, TEXT),
            Err(CosignatureError::OtherKey { .. })
        ));
        // A note whose line names the trusted key but fails is malformed, not "0 cosigners".
        let note = format!("{altered}\n{}", cosig.line());
        assert!(matches!(
            trusted_cosigners(&note, std::slice::from_ref(&key)),
            Err(CosignatureError::BadSignature { .. })
        ));
        // Untrusted lines are ignored.
        assert_eq!(
            trusted_cosigners(&format!("{TEXT}\n{}", cosig.line()), &[other]).unwrap(),
            vec![]
        );
        let zero = Cosignature::sign(&key, TEXT, 0, |m| signing.sign(m));
        assert!(matches!(
            zero.verify(&key, TEXT),
            Err(CosignatureError::Timestamp { .. })
        ));
        let mut log_key = key.clone();
        log_key.key_type = KeyType::Ed25519;
        assert!(matches!(
            cosig.verify(&log_key, TEXT),
            Err(CosignatureError::NotACosignerKey { .. })
        ));
    }

    #[test]
    fn verifier_keys_round_trip_and_a_wrong_id_or_type_is_refused() {
        let (_, key) = witness(3);
        let text = key.to_string();
        assert_eq!(text.parse::<VerifierKey>(), Ok(key.clone()));
        // Keys whose base64 holds `+` (most do) parse too.
        let plus = (0..=255u8)
            .map(|seed| witness(seed).1)
            .find(|k| k.to_string().matches('+').count() > 2)
            .unwrap();
        assert_eq!(plus.to_string().parse::<VerifierKey>(), Ok(plus));
        let mut fields: Vec<String> = text.splitn(3, '+').map(str::to_owned).collect();
        fields[1] = "00000000".into();
        assert_eq!(
            fields.join("+").parse::<VerifierKey>(),
            Err(note::VerifierKeyError::KeyIdMismatch)
        );
        assert!(matches!(
            "a+b".parse::<VerifierKey>(),
            Err(note::VerifierKeyError::Shape(2))
        ));
        use base64::Engine;
        let mut typed = vec![0x02];
        typed.extend_from_slice(key.key.as_bytes());
        let wrong_type = format!(
            "n+00000000+{}",
            base64::engine::general_purpose::STANDARD.encode(typed)
        );
        assert_eq!(
            wrong_type.parse::<VerifierKey>(),
            Err(note::VerifierKeyError::Type(2))
        );
    }
}
