//! Detached signatures over the exact bytes of a file, and the keys allowed to make them.
//!
//! `FILE.sig` holds the raw signature bytes, exactly what stock openssl writes:
//! - Ed25519: `openssl pkeyutl -sign -rawin -inkey KEY -in FILE -out FILE.sig`, checked with
//!   `verify_strict` (no malleable or small-order signatures);
//! - RSA (modulus of at least 4096 bits): `openssl dgst -sha256 -sign KEY -out FILE.sig FILE`,
//!   PKCS#1 v1.5 or, with `-sigopt rsa_padding_mode:pss`, RSA-PSS with SHA-256 and MGF1-SHA-256
//!   with any salt length (openssl's default is the maximum: 478 bytes for RSA-4096).
//!
//! The algorithm is taken from the trusted key, never from the signature: a signature is only
//! ever checked against each trusted key with that key's own algorithm.
//!
//! `FILE.sig.2` is an optional second signature. Dual control (critical playbooks, the bindings
//! file) needs two *distinct* trusted keys; the same key twice counts once.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey};
use rsa::pkcs8::der::pem::LineEnding;
use rsa::pkcs8::spki::SubjectPublicKeyInfoRef;
use rsa::signature::{RandomizedSigner, SignatureEncoding, Verifier};
use rsa::traits::PublicKeyParts;
use rsa::{BigUint, RsaPrivateKey, RsaPublicKey};
use sha2::{Digest, Sha256};

use super::secure_open::{DOCUMENT_LIMIT, OpenError, SIGNATURE_LIMIT, TrustedDir};

/// Identifies a key: the lowercase hex SHA-256 of its SubjectPublicKeyInfo DER, as
/// `openssl pkey -pubin -outform DER | sha256sum` prints it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyId(String);

impl KeyId {
    /// The key id of a SubjectPublicKeyInfo in DER.
    pub fn of_spki_der(der: &[u8]) -> KeyId {
        KeyId(hex::encode(Sha256::digest(der)))
    }

    /// Parses a stored key id: 64 lowercase hex digits.
    pub fn parse(text: &str) -> Option<KeyId> {
        let well_formed = text.len() == 64
            && text
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        well_formed.then(|| KeyId(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The signature algorithms a key may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Ed25519,
    /// RSA with a 4096-bit modulus (keygen); verification accepts larger moduli too.
    Rsa4096,
}

impl Algorithm {
    /// Parses the `--algorithm` spelling: `ed25519` or `rsa4096`.
    pub fn parse(text: &str) -> Result<Algorithm, KeyError> {
        match text {
            "ed25519" => Ok(Algorithm::Ed25519),
            "rsa4096" => Ok(Algorithm::Rsa4096),
            other => Err(KeyError::UnknownAlgorithm(other.to_owned())),
        }
    }
}

/// A public key the trust store accepts: Ed25519, or RSA of at least [`MIN_RSA_BITS`] bits.
#[derive(Clone)]
pub struct PublicKey {
    id: KeyId,
    kind: PublicKind,
}

#[derive(Clone)]
enum PublicKind {
    Ed25519(ed25519_dalek::VerifyingKey),
    Rsa(Box<RsaPublicKey>),
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicKey")
            .field("id", &self.id)
            .field("algorithm", &self.algorithm_name())
            .finish()
    }
}

impl PublicKey {
    /// Parses an SPKI PEM (`-----BEGIN PUBLIC KEY-----`); `origin` names the file in errors.
    pub fn parse_pem(pem: &[u8], origin: &Path) -> Result<PublicKey, KeyError> {
        let malformed = |detail: String| KeyError::Malformed {
            path: origin.to_owned(),
            detail,
        };
        let (label, der) = rsa::pkcs8::der::pem::decode_vec(pem)
            .map_err(|e| malformed(format!("not a PEM document: {e}")))?;
        if label != "PUBLIC KEY" {
            return Err(malformed(format!(
                "PEM label is `{label}`; expected `PUBLIC KEY` (SubjectPublicKeyInfo)"
            )));
        }
        PublicKey::parse_der(&der, origin)
    }

    /// Parses a SubjectPublicKeyInfo in DER; `origin` names the file in errors.
    pub fn parse_der(der: &[u8], origin: &Path) -> Result<PublicKey, KeyError> {
        let malformed = |detail: String| KeyError::Malformed {
            path: origin.to_owned(),
            detail,
        };
        let spki = SubjectPublicKeyInfoRef::try_from(der)
            .map_err(|e| malformed(format!("not a SubjectPublicKeyInfo: {e}")))?;
        let id = KeyId::of_spki_der(der);
        let oid = spki.algorithm.oid;
        let kind = if oid == ED25519_OID {
            let key = ed25519_dalek::VerifyingKey::try_from(spki)
                .map_err(|e| malformed(format!("bad Ed25519 key: {e}")))?;
            // A small-order key would let one signature verify for many messages.
            if key.is_weak() {
                return Err(malformed("Ed25519 key of small order".into()));
            }
            PublicKind::Ed25519(key)
        } else if oid == RSA_OID {
            let key = rsa::pkcs1::RsaPublicKey::try_from(
                spki.subject_public_key
                    .as_bytes()
                    .ok_or_else(|| malformed("RSA key bit string is not byte-aligned".into()))?,
            )
            .map_err(|e| malformed(format!("bad RSA key: {e}")))?;
            let n = BigUint::from_bytes_be(key.modulus.as_bytes());
            let e = BigUint::from_bytes_be(key.public_exponent.as_bytes());
            let bits = n.bits();
            if bits < MIN_RSA_BITS {
                return Err(KeyError::WeakRsa {
                    path: origin.to_owned(),
                    bits,
                });
            }
            let key = RsaPublicKey::new_with_max_size(n, e, MAX_RSA_BITS)
                .map_err(|e| malformed(format!("unusable RSA key: {e}")))?;
            PublicKind::Rsa(Box::new(key))
        } else {
            return Err(KeyError::UnsupportedAlgorithm {
                path: origin.to_owned(),
                oid: oid.to_string(),
            });
        };
        Ok(PublicKey { id, kind })
    }

    pub fn id(&self) -> &KeyId {
        &self.id
    }

    /// `ed25519` or `rsa-BITS`, for logs.
    pub fn algorithm_name(&self) -> String {
        match &self.kind {
            PublicKind::Ed25519(_) => "ed25519".into(),
            PublicKind::Rsa(key) => format!("rsa-{}", key.n().bits()),
        }
    }

    /// True when `signature` is a valid signature by this key over exactly `bytes`.
    pub fn verifies(&self, bytes: &[u8], signature: &[u8]) -> bool {
        match &self.kind {
            PublicKind::Ed25519(key) => {
                let Ok(signature) = ed25519_dalek::Signature::from_slice(signature) else {
                    return false;
                };
                key.verify_strict(bytes, &signature).is_ok()
            }
            PublicKind::Rsa(key) => rsa_verifies(key, bytes, signature),
        }
    }

    /// The length in bytes of every signature this key makes.
    fn signature_len(&self) -> usize {
        match &self.kind {
            PublicKind::Ed25519(_) => ed25519_dalek::SIGNATURE_LENGTH,
            PublicKind::Rsa(key) => key.size(),
        }
    }
}

/// The keys whose signatures make a file exist for the daemon.
#[derive(Debug, Clone, Default)]
pub struct TrustedKeys {
    keys: BTreeMap<KeyId, (PublicKey, PathBuf)>,
}

/// A key file in the trust directory that was not trusted, and why.
#[derive(Debug)]
pub struct RefusedKey {
    pub path: PathBuf,
    pub error: KeyError,
}

impl TrustedKeys {
    /// Loads every `*.pub` (SPKI PEM) in `dir`. A key file that is unsafe, malformed, of
    /// another algorithm or a weak RSA key is refused, named in the returned list, and not
    /// trusted; the others load. Fails only when the directory itself cannot be used.
    pub fn load(dir: &Path) -> Result<(TrustedKeys, Vec<RefusedKey>), TrustStoreError> {
        let trusted_dir = TrustedDir::open(dir).map_err(|source| TrustStoreError::Dir {
            dir: dir.to_owned(),
            source,
        })?;
        let entries = std::fs::read_dir(dir).map_err(|source| TrustStoreError::List {
            dir: dir.to_owned(),
            source,
        })?;
        let mut paths = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| TrustStoreError::List {
                dir: dir.to_owned(),
                source,
            })?;
            let path = entry.path();
            if path.extension().is_some_and(|ext| ext == "pub") {
                paths.push(path);
            }
        }
        paths.sort();
        let mut keys = TrustedKeys::default();
        let mut refused = Vec::new();
        for path in paths {
            let loaded = trusted_dir
                .read(&path, DOCUMENT_LIMIT)
                .map_err(KeyError::Open)
                .and_then(|pem| PublicKey::parse_pem(&pem, &path));
            match loaded {
                Ok(key) => keys.insert(key, path),
                Err(error) => refused.push(RefusedKey { path, error }),
            }
        }
        Ok((keys, refused))
    }

    /// Trusts `key` (tests and tools); `origin` is where it came from.
    pub fn insert(&mut self, key: PublicKey, origin: PathBuf) {
        self.keys.insert(key.id.clone(), (key, origin));
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The trusted keys and the files they came from.
    pub fn iter(&self) -> impl Iterator<Item = (&PublicKey, &Path)> {
        self.keys.values().map(|(key, path)| (key, path.as_path()))
    }

    /// The id of the trusted key that made `signature` over exactly `bytes`.
    pub fn verify(&self, bytes: &[u8], signature: &[u8]) -> Result<KeyId, SignatureError> {
        let mut any_of_this_length = false;
        for (key, _) in self.keys.values() {
            if key.signature_len() != signature.len() {
                continue;
            }
            any_of_this_length = true;
            if key.verifies(bytes, signature) {
                return Ok(key.id.clone());
            }
        }
        if any_of_this_length {
            Err(SignatureError::Invalid)
        } else {
            Err(SignatureError::Malformed {
                len: signature.len(),
            })
        }
    }

    /// Reads `path` (at most 1 MiB) and `path.sig`, plus `path.sig.2` when present, through
    /// `dir`'s checks, and returns the bytes with every distinct trusted signer. A second
    /// signature that is present must verify too: a bad one is never silently ignored.
    pub fn verify_file(&self, dir: &TrustedDir, path: &Path) -> Result<VerifiedFile, FileError> {
        let bytes = dir
            .read(path, DOCUMENT_LIMIT)
            .map_err(FileError::Document)?;
        let mut signers: Vec<KeyId> = Vec::with_capacity(2);
        let mut signatures: Vec<(KeyId, Vec<u8>)> = Vec::with_capacity(2);
        for (suffix, required) in [(".sig", true), (".sig.2", false)] {
            let sig_path = with_suffix(path, suffix);
            let signature = match dir.read(&sig_path, SIGNATURE_LIMIT) {
                Ok(signature) => signature,
                Err(OpenError::Missing { .. }) if !required => continue,
                Err(OpenError::Missing { .. }) => {
                    return Err(FileError::SignatureMissing { path: sig_path });
                }
                Err(error) => return Err(FileError::SignatureFile(error)),
            };
            let signer =
                self.verify(&bytes, &signature)
                    .map_err(|source| FileError::Signature {
                        path: sig_path,
                        source,
                    })?;
            if !signers.contains(&signer) {
                signers.push(signer.clone());
                signatures.push((signer, signature));
            }
        }
        let sha256 = Sha256::digest(&bytes).into();
        Ok(VerifiedFile {
            bytes,
            sha256,
            signers,
            signatures,
        })
    }
}

/// A file whose exact bytes carry at least one valid signature by a trusted key.
/// Only [`TrustedKeys::verify_file`] builds one.
#[derive(Debug, Clone)]
pub struct VerifiedFile {
    bytes: Vec<u8>,
    sha256: [u8; 32],
    signers: Vec<KeyId>,
    /// The signature bytes that verified, one per signer: stored beside the version so a
    /// resumed run can be verified again.
    signatures: Vec<(KeyId, Vec<u8>)>,
}

impl VerifiedFile {
    /// The bytes that were verified: parse these, never the file again.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    pub fn sha256(&self) -> [u8; 32] {
        self.sha256
    }

    /// Distinct trusted signers (one or two).
    pub fn signers(&self) -> &[KeyId] {
        &self.signers
    }

    /// The signature bytes that verified, with their signer (one per signer).
    pub fn signatures(&self) -> &[(KeyId, Vec<u8>)] {
        &self.signatures
    }
}

/// A private key that signs files the way openssl does.
pub struct Signer {
    id: KeyId,
    public_pem: String,
    kind: SignerKind,
}

enum SignerKind {
    Ed25519(ed25519_dalek::SigningKey),
    Rsa(rsa::pkcs1v15::SigningKey<Sha256>),
}

impl fmt::Debug for Signer {
    // Never the key material.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer").field("id", &self.id).finish()
    }
}

impl Signer {
    /// Loads a PKCS#8 PEM private key (`-----BEGIN PRIVATE KEY-----`): Ed25519, or RSA of at
    /// least 4096 bits. `origin` names the file in errors.
    pub fn load(pem: &str, origin: &Path) -> Result<Signer, KeyError> {
        let malformed = |detail: String| KeyError::Malformed {
            path: origin.to_owned(),
            detail,
        };
        let (label, der) = rsa::pkcs8::der::pem::decode_vec(pem.as_bytes())
            .map_err(|e| malformed(format!("not a PEM document: {e}")))?;
        let der = rsa::pkcs8::der::zeroize::Zeroizing::new(der);
        if label != "PRIVATE KEY" {
            return Err(malformed(format!(
                "PEM label is `{label}`; expected `PRIVATE KEY` (PKCS#8, unencrypted)"
            )));
        }
        let info = rsa::pkcs8::PrivateKeyInfo::try_from(der.as_slice())
            .map_err(|e| malformed(format!("not PKCS#8: {e}")))?;
        let oid = info.algorithm.oid;
        if oid == ED25519_OID {
            let key = ed25519_dalek::SigningKey::from_pkcs8_der(&der)
                .map_err(|e| malformed(format!("bad Ed25519 key: {e}")))?;
            Signer::from_ed25519(key, origin)
        } else if oid == RSA_OID {
            let key = RsaPrivateKey::from_pkcs8_der(&der)
                .map_err(|e| malformed(format!("bad RSA key: {e}")))?;
            Signer::from_rsa(key, origin)
        } else {
            Err(KeyError::UnsupportedAlgorithm {
                path: origin.to_owned(),
                oid: oid.to_string(),
            })
        }
    }

    /// Signs exactly `bytes`: Ed25519, or RSA PKCS#1 v1.5 with SHA-256 (blinded).
    pub fn sign(&self, bytes: &[u8]) -> Vec<u8> {
        match &self.kind {
            SignerKind::Ed25519(key) => {
                use ed25519_dalek::Signer as _;
                key.sign(bytes).to_bytes().to_vec()
            }
            SignerKind::Rsa(key) => key.sign_with_rng(&mut rand::rngs::OsRng, bytes).to_vec(),
        }
    }

    pub fn key_id(&self) -> &KeyId {
        &self.id
    }

    /// The matching public key as SPKI PEM (what goes in the trusted-keys directory).
    pub fn public_key_pem(&self) -> &str {
        &self.public_pem
    }

    /// Generates a fresh key; `PREFIX.key` is written (mode 0600, never over an existing file)
    /// as PKCS#8 PEM, `PREFIX.pub` as SPKI PEM. Returns the key id.
    pub fn keygen(algorithm: Algorithm, prefix: &Path) -> Result<KeyId, KeyError> {
        let (private_pem, signer) = match algorithm {
            Algorithm::Ed25519 => {
                let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
                let pem = key
                    .to_pkcs8_pem(LineEnding::LF)
                    .map_err(|e| KeyError::Encode(e.to_string()))?;
                (pem, Signer::from_ed25519(key, prefix)?)
            }
            Algorithm::Rsa4096 => {
                let key = RsaPrivateKey::new(&mut rand::rngs::OsRng, 4096)
                    .map_err(|e| KeyError::Encode(e.to_string()))?;
                let pem = rsa::pkcs8::EncodePrivateKey::to_pkcs8_pem(&key, LineEnding::LF)
                    .map_err(|e| KeyError::Encode(e.to_string()))?;
                (pem, Signer::from_rsa(key, prefix)?)
            }
        };
        let key_path = with_suffix(prefix, ".key");
        let pub_path = with_suffix(prefix, ".pub");
        write_new(&key_path, private_pem.as_bytes(), 0o600)?;
        write_new(&pub_path, signer.public_pem.as_bytes(), 0o644)?;
        Ok(signer.id)
    }

    fn from_ed25519(key: ed25519_dalek::SigningKey, origin: &Path) -> Result<Signer, KeyError> {
        let public = key.verifying_key();
        let der = public
            .to_public_key_der()
            .map_err(|e| KeyError::Encode(e.to_string()))?;
        let public_pem = public
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| KeyError::Encode(e.to_string()))?;
        // Same checks as a trusted key, so we never sign with a key we would refuse.
        let checked = PublicKey::parse_der(der.as_bytes(), origin)?;
        Ok(Signer {
            id: checked.id,
            public_pem,
            kind: SignerKind::Ed25519(key),
        })
    }

    fn from_rsa(key: RsaPrivateKey, origin: &Path) -> Result<Signer, KeyError> {
        let public = key.to_public_key();
        let der = rsa::pkcs8::EncodePublicKey::to_public_key_der(&public)
            .map_err(|e| KeyError::Encode(e.to_string()))?;
        let public_pem = rsa::pkcs8::EncodePublicKey::to_public_key_pem(&public, LineEnding::LF)
            .map_err(|e| KeyError::Encode(e.to_string()))?;
        let checked = PublicKey::parse_der(der.as_bytes(), origin)?;
        Ok(Signer {
            id: checked.id,
            public_pem,
            kind: SignerKind::Rsa(rsa::pkcs1v15::SigningKey::new(key)),
        })
    }
}

/// `path` with `suffix` appended to its file name (`a.yaml` → `a.yaml.sig`).
pub fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Why a key file was not usable.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(transparent)]
    Open(OpenError),
    #[error("key {path} is malformed: {detail}")]
    Malformed { path: PathBuf, detail: String },
    #[error(
        "key {path} is RSA with a {bits}-bit modulus; at least {MIN_RSA_BITS} bits are required"
    )]
    WeakRsa { path: PathBuf, bits: usize },
    #[error("key {path} uses unsupported algorithm {oid}; only Ed25519 and RSA are accepted")]
    UnsupportedAlgorithm { path: PathBuf, oid: String },
    #[error("unknown key algorithm `{0}`; use ed25519 or rsa4096")]
    UnknownAlgorithm(String),
    #[error("failed to encode the key: {0}")]
    Encode(String),
    #[error("failed to write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The trusted-keys directory as a whole could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TrustStoreError {
    #[error("trusted-keys directory {dir} is unusable")]
    Dir {
        dir: PathBuf,
        #[source]
        source: OpenError,
    },
    #[error("failed to list trusted-keys directory {dir}")]
    List {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Why a signature did not verify.
#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    #[error("signature is {len} bytes, a length no trusted key produces (truncated or corrupt)")]
    Malformed { len: usize },
    #[error(
        "signature matches no trusted key (the file was changed, or signed by an untrusted key)"
    )]
    Invalid,
}

/// Why a signed file was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error(transparent)]
    Document(OpenError),
    #[error("no signature file {path}")]
    SignatureMissing { path: PathBuf },
    #[error(transparent)]
    SignatureFile(OpenError),
    #[error("bad signature {path}")]
    Signature {
        path: PathBuf,
        #[source]
        source: SignatureError,
    },
}

impl FileError {
    /// A short, stable name for the kind of refusal (metric labels, audit data).
    pub fn label(&self) -> &'static str {
        match self {
            FileError::Document(error) | FileError::SignatureFile(error) => error.label(),
            FileError::SignatureMissing { .. } => "signature_missing",
            FileError::Signature {
                source: SignatureError::Malformed { .. },
                ..
            } => "signature_malformed",
            FileError::Signature {
                source: SignatureError::Invalid,
                ..
            } => "signature_invalid",
        }
    }
}

fn rsa_verifies(key: &RsaPublicKey, bytes: &[u8], signature: &[u8]) -> bool {
    let Ok(parsed) = rsa::pkcs1v15::Signature::try_from(signature) else {
        return false;
    };
    if rsa::pkcs1v15::VerifyingKey::<Sha256>::new(key.clone())
        .verify(bytes, &parsed)
        .is_ok()
    {
        return true;
    }
    let Ok(parsed) = rsa::pss::Signature::try_from(signature) else {
        return false;
    };
    let pss = |salt_len: usize| {
        rsa::pss::VerifyingKey::<Sha256>::new_with_salt_len(key.clone(), salt_len)
            .verify(bytes, &parsed)
            .is_ok()
    };
    let max_salt = pss_max_salt_len(key);
    // The lengths openssl and most libraries use: the digest length and the maximum.
    if pss(SHA256_LEN) || max_salt.is_some_and(pss) {
        return true;
    }
    // Any other length: read it from the encoded message, then verify properly with it.
    pss_recover_salt_len(key, signature).is_some_and(pss)
}

/// emLen - hLen - 2, the longest salt that fits (RFC 8017 §9.1.1).
fn pss_max_salt_len(key: &RsaPublicKey) -> Option<usize> {
    let em_len = (key.n().bits() - 1).div_ceil(8);
    em_len.checked_sub(SHA256_LEN + 2)
}

/// Recovers the salt length from a PSS signature (RFC 8017 §9.1.2 steps 7-10) without judging
/// it: the caller then runs the full verification with that length. A garbage signature gives
/// a garbage length, which that verification refuses.
fn pss_recover_salt_len(key: &RsaPublicKey, signature: &[u8]) -> Option<usize> {
    let s = BigUint::from_bytes_be(signature);
    if &s >= key.n() {
        return None;
    }
    let m = s.modpow(key.e(), key.n());
    let em_bits = key.n().bits() - 1;
    let em_len = em_bits.div_ceil(8);
    let raw = m.to_bytes_be();
    if raw.len() > em_len {
        return None;
    }
    let mut em = vec![0u8; em_len - raw.len()];
    em.extend_from_slice(&raw);
    let db_len = em_len.checked_sub(SHA256_LEN + 1)?;
    let (masked_db, rest) = em.split_at(db_len);
    let h = rest.get(..SHA256_LEN)?;
    let mut db = masked_db.to_vec();
    mgf1_sha256_xor(&mut db, h);
    db[0] &= 0xFF >> (8 * em_len - em_bits);
    let one = db.iter().position(|&b| b != 0)?;
    if db[one] != 0x01 {
        return None;
    }
    Some(db_len - one - 1)
}

fn mgf1_sha256_xor(out: &mut [u8], seed: &[u8]) {
    for (counter, chunk) in (0u32..).zip(out.chunks_mut(SHA256_LEN)) {
        let mask = Sha256::new()
            .chain_update(seed)
            .chain_update(counter.to_be_bytes())
            .finalize();
        for (byte, m) in chunk.iter_mut().zip(mask.iter()) {
            *byte ^= m;
        }
    }
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), KeyError> {
    let write_error = |source| KeyError::Write {
        path: path.to_owned(),
        source,
    };
    // create_new: never overwrite (or follow a planted symlink to) an existing file; the mode
    // is set at creation so the private key is never readable by others, not even briefly.
    let mut file = std::fs::File::options()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(write_error)?;
    file.write_all(bytes).map_err(write_error)?;
    file.sync_all().map_err(write_error)
}

/// The smallest RSA modulus trusted.
pub const MIN_RSA_BITS: usize = 4096;
/// The largest RSA modulus accepted (bounds the cost of one verification).
const MAX_RSA_BITS: usize = 16384;
const SHA256_LEN: usize = 32;
const ED25519_OID: rsa::pkcs8::ObjectIdentifier =
    rsa::pkcs8::ObjectIdentifier::new_unwrap("1.3.101.112");
const RSA_OID: rsa::pkcs8::ObjectIdentifier =
    rsa::pkcs8::ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");

#[cfg(test)]
mod tests {
    use super::*;

    fn ed25519() -> Signer {
        let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
        Signer::from_ed25519(key, Path::new("test")).unwrap()
    }

    fn trust(signers: &[&Signer]) -> TrustedKeys {
        let mut keys = TrustedKeys::default();
        for signer in signers {
            let key =
                PublicKey::parse_pem(signer.public_key_pem().as_bytes(), Path::new("t")).unwrap();
            keys.insert(key, PathBuf::from("t"));
        }
        keys
    }

    #[test]
    fn ed25519_signature_verifies_and_names_its_key() {
        let signer = ed25519();
        let keys = trust(&[&signer]);
        let signature = signer.sign(b"id: a\n");
        assert_eq!(
            &keys.verify(b"id: a\n", &signature).unwrap(),
            signer.key_id()
        );
    }

    #[test]
    fn a_changed_byte_or_a_short_signature_is_refused_with_its_reason() {
        let signer = ed25519();
        let keys = trust(&[&signer]);
        let signature = signer.sign(b"id: a\n");
        assert!(matches!(
            keys.verify(b"id: b\n", &signature),
            Err(SignatureError::Invalid)
        ));
        assert!(matches!(
            keys.verify(b"id: a\n", &signature[..63]),
            Err(SignatureError::Malformed { len: 63 })
        ));
    }

    #[test]
    fn a_signature_by_an_untrusted_key_is_refused() {
        let trusted = ed25519();
        let other = ed25519();
        let keys = trust(&[&trusted]);
        assert!(matches!(
            keys.verify(b"x", &other.sign(b"x")),
            Err(SignatureError::Invalid)
        ));
    }

    #[test]
    fn key_id_is_the_sha256_of_the_spki_der() {
        let signer = ed25519();
        let (_, der) =
            rsa::pkcs8::der::pem::decode_vec(signer.public_key_pem().as_bytes()).unwrap();
        assert_eq!(signer.key_id().as_str(), hex::encode(Sha256::digest(&der)));
        assert_eq!(signer.key_id().as_str().len(), 64);
    }

    #[test]
    fn mgf1_matches_the_rfc_construction_for_two_blocks() {
        let seed = [7u8; 32];
        let mut out = vec![0u8; 40];
        mgf1_sha256_xor(&mut out, &seed);
        let first = Sha256::new()
            .chain_update(seed)
            .chain_update(0u32.to_be_bytes())
            .finalize();
        let second = Sha256::new()
            .chain_update(seed)
            .chain_update(1u32.to_be_bytes())
            .finalize();
        assert_eq!(&out[..32], first.as_slice());
        assert_eq!(&out[32..], &second[..8]);
    }
}
