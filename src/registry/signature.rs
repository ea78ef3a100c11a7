//! Detached signatures over the exact bytes of a file, and the keys allowed to make them.
//!
//! `FILE.sig` holds the raw signature bytes, exactly what stock openssl writes:
//! - Ed25519: `openssl pkeyutl -sign -rawin -inkey KEY -in FILE -out FILE.sig`, checked with
//!   `verify_strict` (no malleable or small-order signatures);
//! - RSA (modulus of at least 4096 bits): `openssl dgst -sha256 -sign KEY -out FILE.sig FILE`,
//!   PKCS#1 v1.5 or, with `-sigopt rsa_padding_mode:pss`, RSA-PSS with SHA-256 and MGF1-SHA-256
//!   with any salt length (openssl's default is the maximum: 478 bytes for RSA-4096).
//!
//! The algorithm *and the scheme* are taken from the trusted key, never from the signature: a
//! signature is only ever checked against each trusted key with that key's own scheme (as TUF
//! pins a scheme per key). An RSA key verifies one padding only:
//! - a key whose SubjectPublicKeyInfo says RSASSA-PSS (`openssl genpkey -algorithm RSA-PSS`)
//!   verifies RSA-PSS only (and only within the restrictions its parameters state);
//! - a plain `rsaEncryption` key verifies PKCS#1 v1.5 only, unless its file in the trust
//!   directory is named `NAME.pss.pub`, which binds it to RSA-PSS instead.
//!
//! `FILE.sig.2` is an optional second signature. Dual control (critical playbooks, the bindings
//! file) needs two *distinct* trusted keys: keys are told apart by their key material (the RSA
//! modulus and exponent, the Ed25519 point), not by file or encoding, and the trust store
//! refuses two files holding the same key (one as plain, one as PSS; or one key under two
//! names), naming both, so one signer can never count twice.

use std::collections::BTreeMap;
use std::fmt;
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

/// The one signature scheme a trusted key verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    Ed25519,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RsaPkcs1v15,
    /// RSASSA-PSS with SHA-256, MGF1-SHA-256, any salt length the key allows.
    RsaPss,
}

impl Scheme {
    /// `ed25519`, `rsa-pkcs1v15-sha256` or `rsa-pss-sha256`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Ed25519 => "ed25519",
            Scheme::RsaPkcs1v15 => "rsa-pkcs1v15-sha256",
            Scheme::RsaPss => "rsa-pss-sha256",
        }
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A public key the trust store accepts: Ed25519, or RSA of at least [`MIN_RSA_BITS`] bits
/// bound to one padding scheme.
#[derive(Clone)]
pub struct PublicKey {
    id: KeyId,
    /// SHA-256 over the key material alone (algorithm, then the RSA modulus and exponent or
    /// the Ed25519 point): equal for the same key in any encoding, so dual control can count
    /// keys rather than files.
    material: [u8; 32],
    kind: PublicKind,
}

#[derive(Clone)]
enum PublicKind {
    Ed25519(ed25519_dalek::VerifyingKey),
    Rsa {
        key: Box<RsaPublicKey>,
        padding: RsaPadding,
    },
}

/// The one padding an RSA key verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RsaPadding {
    Pkcs1v15,
    /// The shortest salt accepted (the key's own `saltLength` restriction, else 0).
    Pss {
        min_salt: usize,
    },
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicKey")
            .field("id", &self.id)
            .field("algorithm", &self.algorithm_name())
            .field("scheme", &self.scheme())
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
        } else if oid == RSA_OID || oid == RSA_PSS_OID {
            // rsaEncryption: PKCS#1 v1.5 (unless the trust store marks it PSS);
            // id-RSASSA-PSS: PSS only, within the restrictions of its parameters.
            let padding = if oid == RSA_OID {
                RsaPadding::Pkcs1v15
            } else {
                RsaPadding::Pss {
                    min_salt: pss_min_salt(spki.algorithm.parameters, origin)?,
                }
            };
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
            PublicKind::Rsa {
                key: Box::new(key),
                padding,
            }
        } else {
            return Err(KeyError::UnsupportedAlgorithm {
                path: origin.to_owned(),
                oid: oid.to_string(),
            });
        };
        let material = key_material(&kind);
        Ok(PublicKey { id, material, kind })
    }

    /// Binds a plain RSA key to RSA-PSS (the trust store's `NAME.pss.pub` marker). An RSA-PSS
    /// key stays as it is; a key of another algorithm cannot be marked.
    pub fn bind_to_pss(self, origin: &Path) -> Result<PublicKey, KeyError> {
        match self.kind {
            PublicKind::Rsa {
                key,
                padding: RsaPadding::Pkcs1v15,
            } => Ok(PublicKey {
                kind: PublicKind::Rsa {
                    key,
                    padding: RsaPadding::Pss { min_salt: 0 },
                },
                ..self
            }),
            PublicKind::Rsa {
                padding: RsaPadding::Pss { .. },
                ..
            } => Ok(self),
            PublicKind::Ed25519(_) => Err(KeyError::PssMarkerOnNonRsa {
                path: origin.to_owned(),
            }),
        }
    }

    /// The one scheme this key verifies.
    pub fn scheme(&self) -> Scheme {
        match &self.kind {
            PublicKind::Ed25519(_) => Scheme::Ed25519,
            PublicKind::Rsa {
                padding: RsaPadding::Pkcs1v15,
                ..
            } => Scheme::RsaPkcs1v15,
            PublicKind::Rsa {
                padding: RsaPadding::Pss { .. },
                ..
            } => Scheme::RsaPss,
        }
    }

    /// True when `other` is the same key, whatever its encoding or scheme binding.
    pub fn same_key_as(&self, other: &PublicKey) -> bool {
        self.material == other.material
    }

    pub fn id(&self) -> &KeyId {
        &self.id
    }

    /// `ed25519` or `rsa-BITS`, for logs.
    pub fn algorithm_name(&self) -> String {
        match &self.kind {
            PublicKind::Ed25519(_) => "ed25519".into(),
            PublicKind::Rsa { key, .. } => format!("rsa-{}", key.n().bits()),
        }
    }

    /// True when `signature` is a valid signature by this key, in the key's own scheme, over
    /// exactly `bytes`.
    pub fn verifies(&self, bytes: &[u8], signature: &[u8]) -> bool {
        match &self.kind {
            PublicKind::Ed25519(key) => {
                let Ok(signature) = ed25519_dalek::Signature::from_slice(signature) else {
                    return false;
                };
                key.verify_strict(bytes, &signature).is_ok()
            }
            PublicKind::Rsa { key, padding } => rsa_verifies(key, *padding, bytes, signature),
        }
    }

    /// For a signature this key refused: the other RSA padding it would verify under, so the
    /// error can say "signed with the wrong scheme" rather than "changed or untrusted".
    fn other_scheme_verifies(&self, bytes: &[u8], signature: &[u8]) -> Option<Scheme> {
        match &self.kind {
            PublicKind::Ed25519(_) => None,
            PublicKind::Rsa {
                key,
                padding: RsaPadding::Pkcs1v15,
            } => rsa_verifies(key, RsaPadding::Pss { min_salt: 0 }, bytes, signature)
                .then_some(Scheme::RsaPss),
            PublicKind::Rsa {
                key,
                padding: RsaPadding::Pss { .. },
            } => rsa_verifies(key, RsaPadding::Pkcs1v15, bytes, signature)
                .then_some(Scheme::RsaPkcs1v15),
        }
    }

    /// The length in bytes of every signature this key makes.
    fn signature_len(&self) -> usize {
        match &self.kind {
            PublicKind::Ed25519(_) => ed25519_dalek::SIGNATURE_LENGTH,
            PublicKind::Rsa { key, .. } => key.size(),
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
    /// Loads every `*.pub` (SPKI PEM) in `dir`; a `NAME.pss.pub` binds a plain RSA key to
    /// RSA-PSS. A key file that is unsafe, malformed, of another algorithm, a weak RSA key, or
    /// the same key as another file (in any encoding or scheme) is refused, named in the
    /// returned list, and not trusted; the others load. Both files of a duplicate are refused:
    /// which scheme the operator meant is unknown, and a guess could let one signer count
    /// twice. Fails only when the directory itself cannot be used.
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
        let mut parsed: Vec<(PathBuf, PublicKey)> = Vec::new();
        let mut refused = Vec::new();
        for path in paths {
            let loaded = trusted_dir
                .read(&path, DOCUMENT_LIMIT)
                .map_err(KeyError::Open)
                .and_then(|pem| PublicKey::parse_pem(&pem, &path))
                .and_then(|key| {
                    if is_pss_marked(&path) {
                        key.bind_to_pss(&path)
                    } else {
                        Ok(key)
                    }
                });
            match loaded {
                Ok(key) => parsed.push((path, key)),
                Err(error) => refused.push(RefusedKey { path, error }),
            }
        }
        let mut keys = TrustedKeys::default();
        for (index, (path, key)) in parsed.iter().enumerate() {
            let twin = parsed
                .iter()
                .enumerate()
                .find(|(other, (_, candidate))| *other != index && candidate.same_key_as(key));
            match twin {
                Some((_, (other, _))) => refused.push(RefusedKey {
                    path: path.clone(),
                    error: KeyError::Duplicate {
                        path: path.clone(),
                        other: other.clone(),
                    },
                }),
                None => {
                    keys.keys
                        .insert(key.id.clone(), (key.clone(), path.clone()));
                }
            }
        }
        refused.sort_by(|a, b| a.path.cmp(&b.path));
        Ok((keys, refused))
    }

    /// Trusts `key` (tests and tools); `origin` is where it came from. Refuses a key that is
    /// already trusted in any encoding or scheme, as [`TrustedKeys::load`] does.
    pub fn insert(&mut self, key: PublicKey, origin: PathBuf) -> Result<(), KeyError> {
        if let Some((_, other)) = self
            .keys
            .values()
            .find(|(known, _)| known.same_key_as(&key))
        {
            return Err(KeyError::Duplicate {
                path: origin,
                other: other.clone(),
            });
        }
        self.keys.insert(key.id.clone(), (key, origin));
        Ok(())
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

    /// The trusted key that made `signature` over exactly `bytes`, and the scheme it used
    /// (always that key's own).
    pub fn verify(
        &self,
        bytes: &[u8],
        signature: &[u8],
    ) -> Result<(KeyId, Scheme), SignatureError> {
        let mut any_of_this_length = false;
        for (key, _) in self.keys.values() {
            if key.signature_len() != signature.len() {
                continue;
            }
            any_of_this_length = true;
            if key.verifies(bytes, signature) {
                return Ok((key.id.clone(), key.scheme()));
            }
        }
        if !any_of_this_length {
            return Err(SignatureError::Malformed {
                len: signature.len(),
            });
        }
        // Only on the failure path: say so when a trusted key made it with the other padding.
        for (key, _) in self.keys.values() {
            if key.signature_len() != signature.len() {
                continue;
            }
            if let Some(used) = key.other_scheme_verifies(bytes, signature) {
                return Err(SignatureError::WrongScheme {
                    key_id: key.id.clone(),
                    bound: key.scheme(),
                    used,
                });
            }
        }
        Err(SignatureError::Invalid)
    }

    /// Reads `path` (at most 1 MiB) and `path.sig`, plus `path.sig.2` when present, through
    /// `dir`'s checks, and returns the bytes with every distinct trusted signer. A second
    /// signature that is present must verify too: a bad one is never silently ignored.
    pub fn verify_file(&self, dir: &TrustedDir, path: &Path) -> Result<VerifiedFile, FileError> {
        let bytes = dir
            .read(path, DOCUMENT_LIMIT)
            .map_err(FileError::Document)?;
        let mut signatures = Vec::with_capacity(2);
        for (suffix, required) in [(".sig", true), (".sig.2", false)] {
            let sig_path = with_suffix(path, suffix);
            match dir.read(&sig_path, SIGNATURE_LIMIT) {
                Ok(signature) => signatures.push((sig_path, signature)),
                Err(OpenError::Missing { .. }) if !required => {}
                Err(OpenError::Missing { .. }) => {
                    return Err(FileError::SignatureMissing { path: sig_path });
                }
                Err(error) => return Err(FileError::SignatureFile(error)),
            }
        }
        self.verify_signatures(bytes, signatures)
    }

    /// Checks each of `signatures` (signature file, raw bytes) over `bytes`: every one must
    /// verify. Also how a version verified earlier is checked again against the current
    /// trust store (a key removed since no longer counts).
    pub fn verify_signatures(
        &self,
        bytes: Vec<u8>,
        signatures: Vec<(PathBuf, Vec<u8>)>,
    ) -> Result<VerifiedFile, FileError> {
        let mut verified: Vec<Signature> = Vec::with_capacity(signatures.len());
        for (file, raw) in signatures {
            let (key_id, scheme) =
                self.verify(&bytes, &raw)
                    .map_err(|source| FileError::Signature {
                        path: file.clone(),
                        source,
                    })?;
            verified.push(Signature {
                key_id,
                scheme,
                file,
                bytes: raw,
            });
        }
        let sha256 = Sha256::digest(&bytes).into();
        Ok(VerifiedFile {
            bytes,
            sha256,
            signatures: verified,
        })
    }
}

/// True for `NAME.pss.pub`: the operator binds this RSA key to RSA-PSS.
fn is_pss_marked(path: &Path) -> bool {
    path.file_name()
        .and_then(|name| name.to_str())
        .is_some_and(|name| name.ends_with(PSS_MARKER_SUFFIX))
}

/// One signature that verified: by which key, in which scheme, from which file.
#[derive(Debug, Clone)]
pub struct Signature {
    pub key_id: KeyId,
    pub scheme: Scheme,
    /// The signature file (`FILE.sig` or `FILE.sig.2`).
    pub file: PathBuf,
    bytes: Vec<u8>,
}

impl Signature {
    /// The raw signature bytes, as read.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// A file whose exact bytes carry at least one valid signature by a trusted key.
/// Only [`TrustedKeys::verify_signatures`] builds one.
#[derive(Debug, Clone)]
#[must_use]
pub struct VerifiedFile {
    bytes: Vec<u8>,
    sha256: [u8; 32],
    signatures: Vec<Signature>,
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

    /// Distinct trusted signers (one or two): the same key twice counts once (the trust store
    /// holds each key once, whatever its encoding, so distinct ids are distinct keys).
    pub fn signers(&self) -> Vec<KeyId> {
        let mut signers: Vec<KeyId> = Vec::with_capacity(self.signatures.len());
        for signature in &self.signatures {
            if !signers.contains(&signature.key_id) {
                signers.push(signature.key_id.clone());
            }
        }
        signers
    }

    /// Every signature that verified, in file order.
    pub fn signatures(&self) -> &[Signature] {
        &self.signatures
    }

    /// (signature file, raw bytes) of every signature, to check again later with
    /// [`TrustedKeys::verify_signatures`].
    pub fn signature_files(&self) -> Vec<(PathBuf, Vec<u8>)> {
        self.signatures
            .iter()
            .map(|signature| (signature.file.clone(), signature.bytes.clone()))
            .collect()
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
    #[error(
        "key {path} is an RSA-PSS key whose parameters restrict it to {detail}; only SHA-256 \
         with MGF1-SHA-256 is supported (generate it without restrictions, or with \
         -pkeyopt rsa_pss_keygen_md:sha256 -pkeyopt rsa_pss_keygen_mgf1_md:sha256)"
    )]
    UnsupportedPssParameters { path: PathBuf, detail: String },
    #[error(
        "key {path} is named *{PSS_MARKER_SUFFIX}, which binds an RSA key to RSA-PSS, but it is \
         not an RSA key"
    )]
    PssMarkerOnNonRsa { path: PathBuf },
    #[error(
        "key {path} is the same key as {other} (same key material, in another file, encoding \
         or scheme); neither is trusted until one is removed: one signer must never count twice"
    )]
    Duplicate { path: PathBuf, other: PathBuf },
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
    #[error(
        "signature was made with {used} by trusted key {key_id}, which is bound to {bound}; \
         sign with that scheme (or trust the key for the other one: see the README)"
    )]
    WrongScheme {
        key_id: KeyId,
        bound: Scheme,
        used: Scheme,
    },
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
            FileError::Signature {
                source: SignatureError::WrongScheme { .. },
                ..
            } => "signature_wrong_scheme",
        }
    }
}

fn rsa_verifies(key: &RsaPublicKey, padding: RsaPadding, bytes: &[u8], signature: &[u8]) -> bool {
    match padding {
        RsaPadding::Pkcs1v15 => {
            let Ok(parsed) = rsa::pkcs1v15::Signature::try_from(signature) else {
                return false;
            };
            rsa::pkcs1v15::VerifyingKey::<Sha256>::new(key.clone())
                .verify(bytes, &parsed)
                .is_ok()
        }
        RsaPadding::Pss { min_salt } => {
            let Ok(parsed) = rsa::pss::Signature::try_from(signature) else {
                return false;
            };
            let pss = |salt_len: usize| {
                salt_len >= min_salt
                    && rsa::pss::VerifyingKey::<Sha256>::new_with_salt_len(key.clone(), salt_len)
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
    }
}

/// SHA-256 over the key material alone: equal for one key in any encoding or scheme binding.
fn key_material(kind: &PublicKind) -> [u8; 32] {
    let mut hash = Sha256::new();
    match kind {
        PublicKind::Ed25519(key) => {
            hash.update(b"ed25519\0");
            hash.update(key.as_bytes());
        }
        PublicKind::Rsa { key, .. } => {
            // Length-prefixed, so (n, e) can never be read as another split of the bytes.
            for (tag, part) in [
                (b"rsa-n\0", key.n().to_bytes_be()),
                (b"rsa-e\0", key.e().to_bytes_be()),
            ] {
                hash.update(tag);
                hash.update((part.len() as u64).to_be_bytes());
                hash.update(&part);
            }
        }
    }
    hash.finalize().into()
}

/// The shortest salt an RSA-PSS key's parameters allow (RFC 4055: `saltLength` in a public
/// key is a minimum), after checking they name SHA-256 and MGF1-SHA-256; no parameters at all
/// means an unrestricted key (what `openssl genpkey -algorithm RSA-PSS` makes).
fn pss_min_salt(
    parameters: Option<rsa::pkcs8::der::asn1::AnyRef<'_>>,
    origin: &Path,
) -> Result<usize, KeyError> {
    let Some(parameters) = parameters else {
        return Ok(0);
    };
    let unsupported = |detail: String| KeyError::UnsupportedPssParameters {
        path: origin.to_owned(),
        detail,
    };
    let params: rsa::pkcs1::RsaPssParams<'_> = parameters
        .decode_as()
        .map_err(|e| unsupported(format!("parameters that do not decode ({e})")))?;
    if params.hash.oid != SHA256_OID {
        return Err(unsupported(format!("hash {}", params.hash.oid)));
    }
    let mgf_hash = params.mask_gen.parameters.map(|hash| hash.oid);
    if params.mask_gen.oid != MGF1_OID || mgf_hash != Some(SHA256_OID) {
        return Err(unsupported(format!(
            "mask generation {} with {}",
            params.mask_gen.oid,
            mgf_hash.map_or_else(|| "no hash".to_owned(), |oid| oid.to_string())
        )));
    }
    if params.trailer_field != rsa::pkcs1::TrailerField::BC {
        return Err(unsupported("a trailer field other than 0xBC".into()));
    }
    Ok(usize::from(params.salt_len))
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
    crate::sys::write_new_file(path, bytes, mode).map_err(|source| KeyError::Write {
        path: path.to_owned(),
        source,
    })
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
/// id-RSASSA-PSS (RFC 4055): an RSA key for PSS signatures only.
const RSA_PSS_OID: rsa::pkcs8::ObjectIdentifier =
    rsa::pkcs8::ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.10");
const MGF1_OID: rsa::pkcs8::ObjectIdentifier =
    rsa::pkcs8::ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.8");
const SHA256_OID: rsa::pkcs8::ObjectIdentifier =
    rsa::pkcs8::ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");
/// A trusted key file named `NAME.pss.pub` binds a plain RSA key to RSA-PSS.
pub const PSS_MARKER_SUFFIX: &str = ".pss.pub";

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
            keys.insert(key, PathBuf::from("t")).unwrap();
        }
        keys
    }

    #[test]
    fn ed25519_signature_verifies_and_names_its_key() {
        let signer = ed25519();
        let keys = trust(&[&signer]);
        let signature = signer.sign(b"id: a\n");
        assert_eq!(
            keys.verify(b"id: a\n", &signature).unwrap(),
            (signer.key_id().clone(), Scheme::Ed25519)
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
