//! The signed playbook registry: verify → parse strictly → validate → version check.
//!
//! Each `*.yaml` in the playbook directory goes through [`signature::TrustedKeys::verify_file`]
//! (secure open, `FILE.sig`, optional `FILE.sig.2`), [`playbook::parse_playbook`] on the verified
//! bytes, the dual-control rule (a playbook with a `critical` step needs two distinct trusted
//! signers) and the version check against `playbook_versions`, which runs in the same
//! transaction as the `playbook.loaded` audit event that records it. A failure rejects that file
//! only (journald error, `playbook.rejected` audit event, `playbookd_registry_rejections_total`).
//!
//! The result is an immutable [`Catalog`] snapshot; [`Registry::reload`] builds a new one and
//! swaps it in whole, so a reader sees either the old or the new set, never a mix.

pub mod limits;
pub mod model;
pub mod playbook;
pub mod secure_open;
pub mod signature;
pub mod template;
pub mod when;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio_postgres::GenericClient;

use crate::actions::limits::ActionLimits;
use crate::config::PathsConfig;
use crate::store::StoreError;
use crate::store::audit::{self, Actor, AppendError, AuditEvent, AuditHandle};
use crate::store::versions::{self, NewVersion, VersionConflict};
use limits::LimitViolation;
use model::{Binding, BindingsFile, Playbook};
use playbook::DocumentError;
use secure_open::{OpenError, TrustedDir};
use signature::{FileError, KeyId, TrustStoreError, TrustedKeys, VerifiedFile};

/// Where the registry reads from (the `[paths]` keys of the configuration).
#[derive(Debug, Clone)]
pub struct RegistryPaths {
    pub playbooks: PathBuf,
    pub trusted_keys: PathBuf,
    pub bindings: PathBuf,
}

impl From<&PathsConfig> for RegistryPaths {
    fn from(paths: &PathsConfig) -> RegistryPaths {
        RegistryPaths {
            playbooks: paths.playbooks.clone(),
            trusted_keys: paths.trusted_keys.clone(),
            bindings: paths.bindings.clone(),
        }
    }
}

/// The live registry: the current [`Catalog`] and what is needed to build the next one.
/// Cloning is shallow.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

struct Inner {
    paths: RegistryPaths,
    /// What the configuration allows steps to touch; read once at start (a reload re-reads
    /// the files, not the configuration).
    limits: Arc<ActionLimits>,
    audit: AuditHandle,
    /// Readers clone the `Arc` and drop the lock at once; a reload replaces the `Arc` whole.
    current: RwLock<Arc<Catalog>>,
    /// One reload at a time (SIGHUP and `ctl reload` may race); a tokio mutex because it is
    /// held across the database round trips of the reload.
    reloading: tokio::sync::Mutex<()>,
}

impl Registry {
    /// Loads the trusted keys, the playbooks and the bindings, recording every outcome.
    /// Every playbook is checked against `limits` too (what the configuration allows its
    /// steps to touch). Fails when the trusted-keys or playbook directory is unusable, when no
    /// key is trusted, or when the audit log is unavailable; a bad file only rejects that file.
    pub async fn load(
        paths: RegistryPaths,
        limits: Arc<ActionLimits>,
        audit: AuditHandle,
    ) -> Result<(Registry, LoadSummary), RegistryError> {
        let (catalog, summary) = build_catalog(&paths, &limits, &audit, None).await?;
        let registry = Registry {
            inner: Arc::new(Inner {
                paths,
                limits,
                audit,
                current: RwLock::new(Arc::new(catalog)),
                reloading: tokio::sync::Mutex::new(()),
            }),
        };
        Ok((registry, summary))
    }

    /// The current snapshot.
    pub fn catalog(&self) -> Arc<Catalog> {
        // A poisoned lock only means a panic while swapping an `Arc`: the value is whole.
        match self.inner.current.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The active version of `id` in the current snapshot.
    pub fn active(&self, id: &str) -> Option<Arc<ActivePlaybook>> {
        self.catalog().active(id)
    }

    /// Builds a new snapshot from disk and swaps it in. A playbook (or the bindings file) whose
    /// replacement is refused keeps its last verified version, checked again against the
    /// current trust store and limits (a key removed from the trust store still withdraws
    /// it); one whose file was removed is retired. On error the current snapshot stays (a
    /// vanished trust directory or a database outage must not silently empty it) and the
    /// error says why.
    pub async fn reload(&self) -> Result<LoadSummary, RegistryError> {
        let _one_at_a_time = self.inner.reloading.lock().await;
        let previous = self.catalog();
        let (catalog, summary) = build_catalog(
            &self.inner.paths,
            &self.inner.limits,
            &self.inner.audit,
            Some(&previous),
        )
        .await?;
        let catalog = Arc::new(catalog);
        match self.inner.current.write() {
            Ok(mut guard) => *guard = catalog,
            Err(poisoned) => *poisoned.into_inner() = catalog,
        }
        Ok(summary)
    }
}

/// One immutable view of every active playbook and the bindings.
#[derive(Debug, Default)]
pub struct Catalog {
    playbooks: BTreeMap<String, Arc<ActivePlaybook>>,
    bindings: Vec<Binding>,
    /// The trust store this snapshot was verified against: what a resumed run's stored bytes
    /// are verified against again ([`load_pinned`]).
    keys: TrustedKeys,
    /// The verified bytes of the bindings and where they came from, to check them again if a
    /// reload refuses their replacement; `None` when there are none.
    bindings_origin: Option<BindingsSource>,
}

/// The verified bytes of a bindings file and where they came from.
type BindingsSource = (Origin, Vec<u8>);

/// Where verified bytes came from: to check them again, later, against another trust store.
#[derive(Debug, Clone)]
struct Origin {
    file: PathBuf,
    signatures: Vec<(PathBuf, Vec<u8>)>,
}

impl Catalog {
    /// The highest valid version of playbook `id`.
    pub fn active(&self, id: &str) -> Option<Arc<ActivePlaybook>> {
        self.playbooks.get(id).cloned()
    }

    /// Every active playbook, by id.
    pub fn playbooks(&self) -> impl Iterator<Item = &Arc<ActivePlaybook>> {
        self.playbooks.values()
    }

    /// The bindings; empty when the bindings file is missing, unsigned or invalid (and no
    /// verified version was active before it became so).
    pub fn bindings(&self) -> &[Binding] {
        &self.bindings
    }

    /// The trusted keys of this snapshot.
    pub fn keys(&self) -> &TrustedKeys {
        &self.keys
    }

    /// The bindings whose playbook has no active version: decisions for them get
    /// `no_action: no active version`.
    pub fn unresolved_bindings(&self) -> impl Iterator<Item = &Binding> {
        self.bindings
            .iter()
            .filter(|binding| !self.playbooks.contains_key(&binding.playbook))
    }
}

/// A playbook version whose exact bytes were verified and recorded in `playbook_versions`.
/// Only this module builds one.
#[derive(Debug)]
pub struct ActivePlaybook {
    playbook: Playbook,
    sha256: [u8; 32],
    bytes: Arc<[u8]>,
    signers: Vec<KeyId>,
    /// The file and signatures it was verified from (`None` for a version re-loaded from the
    /// database for a resume).
    origin: Option<Origin>,
}

impl ActivePlaybook {
    pub fn playbook(&self) -> &Playbook {
        &self.playbook
    }

    pub fn id(&self) -> &str {
        &self.playbook.id
    }

    pub fn version(&self) -> u32 {
        self.playbook.version
    }

    /// SHA-256 of [`ActivePlaybook::bytes`]: what a run is pinned to.
    pub fn sha256(&self) -> [u8; 32] {
        self.sha256
    }

    /// The verified bytes the playbook was parsed from.
    pub fn bytes(&self) -> &Arc<[u8]> {
        &self.bytes
    }

    /// The distinct trusted keys that signed these bytes.
    pub fn signers(&self) -> &[KeyId] {
        &self.signers
    }
}

/// What one load or reload did.
#[derive(Debug, Default)]
pub struct LoadSummary {
    /// Playbook versions accepted (active or not).
    pub loaded: usize,
    /// Every file refused, with its reason.
    pub rejections: Vec<Rejection>,
    /// Bindings in force after the load.
    pub bindings: usize,
    /// Key files in the trust directory that were not trusted.
    pub refused_keys: Vec<signature::RefusedKey>,
    /// Versions that stayed active because their replacement was refused.
    pub kept: Vec<Kept>,
}

impl LoadSummary {
    /// True when nothing was refused: every file and every key was accepted.
    pub fn is_clean(&self) -> bool {
        self.rejections.is_empty() && self.refused_keys.is_empty()
    }
}

/// A file the registry refused.
#[derive(Debug)]
pub struct Rejection {
    pub file: PathBuf,
    /// The playbook id, when the file got far enough to say (after its signatures verified).
    pub playbook: Option<String>,
    pub reason: RejectReason,
}

/// A verified version a reload kept active because its replacement was refused.
#[derive(Debug, Clone)]
pub struct Kept {
    /// `playbook ID@VERSION` or `bindings`.
    pub what: String,
    /// The file it was verified from.
    pub file: PathBuf,
}

/// Why a playbook or bindings file was refused.
#[derive(Debug, thiserror::Error)]
pub enum RejectReason {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("invalid document")]
    Document(#[from] DocumentError),
    #[error(
        "{what} needs signatures from two distinct trusted keys (dual control); it has {signers}"
    )]
    DualControl { what: &'static str, signers: usize },
    #[error(
        "version {version} of `{id}` is lower than version {highest} already recorded (rollback)"
    )]
    Downgrade {
        id: String,
        version: u32,
        highest: i64,
    },
    #[error(
        "version {version} of `{id}` was recorded earlier with different bytes (sha256 {recorded}); a version never changes"
    )]
    Equivocation {
        id: String,
        version: u32,
        recorded: String,
    },
    /// A step parameter the configuration does not allow (`actions.exec.allowed_commands`, …).
    #[error(transparent)]
    Limit(#[from] LimitViolation),
    #[error("the database refused to record it")]
    Database(#[source] AppendError),
}

impl RejectReason {
    /// A short, stable name for the reason (metric label, audit `reason`).
    pub fn label(&self) -> &'static str {
        match self {
            RejectReason::File(error) => error.label(),
            RejectReason::Document(_) => "invalid_document",
            RejectReason::DualControl { .. } => "dual_control",
            RejectReason::Downgrade { .. } => "downgrade",
            RejectReason::Equivocation { .. } => "equivocation",
            RejectReason::Limit(violation) => violation.limit.label(),
            RejectReason::Database(_) => "database_refused",
        }
    }
}

/// Every label `playbookd_registry_rejections_total` can carry (each exists from the start, at
/// zero): [`RejectReason::label`], `trusted_key_refused`, and every [`Limit`] label.
///
/// [`Limit`]: crate::actions::limits::Limit
pub const REJECTION_LABELS: [&str; 23] = [
    // secure_open::OpenError (also the bindings file's `missing`)
    "missing",
    "read_failed",
    "symlink_outside_dir",
    "not_regular_file",
    "insecure_permissions",
    "insecure_owner",
    "too_large",
    // signature::FileError
    "signature_missing",
    "signature_malformed",
    "signature_invalid",
    "signature_wrong_scheme",
    // RejectReason
    "invalid_document",
    "dual_control",
    "downgrade",
    "equivocation",
    "database_refused",
    "trusted_key_refused",
    // actions::limits::Limit
    "command_not_allowed",
    "host_not_allowed",
    "plain_http_not_allowed",
    "inside_quarantine_dir",
    "address_never_blocked",
    "address_loopback",
];

/// Why the registry as a whole could not load.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    TrustStore(#[from] TrustStoreError),
    #[error("no usable trusted key in {dir}: no playbook could ever be accepted")]
    NoTrustedKeys { dir: PathBuf },
    #[error("playbook directory {dir} is unusable")]
    PlaybookDir {
        dir: PathBuf,
        #[source]
        source: OpenError,
    },
    #[error("failed to list playbook directory {dir}")]
    ListPlaybooks {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the audit log is unavailable; the registry cannot record what it loads")]
    Audit(#[source] AppendError),
}

impl RegistryError {
    /// True when an operator must fix the configuration or the files it points at (exit 78).
    pub fn is_config(&self) -> bool {
        match self {
            RegistryError::TrustStore(_)
            | RegistryError::NoTrustedKeys { .. }
            | RegistryError::PlaybookDir { .. }
            | RegistryError::ListPlaybooks { .. } => true,
            RegistryError::Audit(_) => false,
        }
    }
}

/// A playbook that passed every check that needs no database: secure open, signatures,
/// strict parsing and dual control.
#[derive(Debug)]
pub struct Candidate {
    playbook: Playbook,
    verified: VerifiedFile,
}

impl Candidate {
    pub fn playbook(&self) -> &Playbook {
        &self.playbook
    }

    pub fn sha256(&self) -> [u8; 32] {
        self.verified.sha256()
    }

    /// The signatures that verified it.
    pub fn verified(&self) -> &VerifiedFile {
        &self.verified
    }
}

/// Verifies, parses, checks dual control and the configuration's limits for one playbook file
/// (no database).
pub fn check_playbook_file(
    keys: &TrustedKeys,
    limits: &ActionLimits,
    dir: &TrustedDir,
    path: &Path,
) -> Result<Candidate, RejectReason> {
    let verified = keys.verify_file(dir, path)?;
    check_verified_playbook(verified, Some(limits)).map_err(|(_, reason)| reason)
}

/// Verifies, parses and checks the bindings file, which always needs two distinct trusted
/// signers (no database).
pub fn check_bindings_file(
    keys: &TrustedKeys,
    dir: &TrustedDir,
    path: &Path,
) -> Result<(VerifiedFile, BindingsFile), RejectReason> {
    check_verified_bindings(keys.verify_file(dir, path)?)
}

/// A signed file that passed every check the registry applies without the database.
#[derive(Debug)]
#[must_use]
pub enum CheckedFile {
    Playbook(Candidate),
    Bindings(VerifiedFile, BindingsFile),
}

/// Every check the registry applies to one signed file, playbook or bindings (told apart by
/// its top-level `bindings` key), except the version check against the database: secure open,
/// each signature in its key's own scheme, strict parsing, dual control, and the
/// configuration's limits when `limits` is given. What `playbookd verify` runs.
pub fn check_signed_file(
    keys: &TrustedKeys,
    limits: Option<&ActionLimits>,
    dir: &TrustedDir,
    path: &Path,
) -> Result<CheckedFile, RejectReason> {
    let verified = keys.verify_file(dir, path)?;
    // Verified bytes only: the document kind is read after the signatures checked out.
    if playbook::parse_value(verified.bytes())?
        .get("bindings")
        .is_some()
    {
        let (verified, bindings) = check_verified_bindings(verified)?;
        Ok(CheckedFile::Bindings(verified, bindings))
    } else {
        check_verified_playbook(verified, limits)
            .map(CheckedFile::Playbook)
            .map_err(|(_, reason)| reason)
    }
}

/// The checks after the signatures: parse, the configuration's limits, dual control. A
/// refusal carries the playbook id once it is known.
fn check_verified_playbook(
    verified: VerifiedFile,
    limits: Option<&ActionLimits>,
) -> Result<Candidate, (Option<String>, RejectReason)> {
    let playbook = playbook::parse_playbook(verified.bytes()).map_err(|e| (None, e.into()))?;
    let refused = |reason: RejectReason| (Some(playbook.id.clone()), reason);
    if let Some(limits) = limits {
        limits::check_playbook_limits(&playbook, limits).map_err(|e| refused(e.into()))?;
    }
    if playbook::has_critical_step(&playbook) {
        require_dual_control("a playbook with a critical step", &verified).map_err(refused)?;
    }
    Ok(Candidate { playbook, verified })
}

fn check_verified_bindings(
    verified: VerifiedFile,
) -> Result<(VerifiedFile, BindingsFile), RejectReason> {
    require_dual_control("the bindings file", &verified)?;
    let parsed = playbook::parse_bindings(verified.bytes())?;
    Ok((verified, parsed))
}

/// Dual control: two distinct trusted keys (the same key twice, in any encoding, is one).
fn require_dual_control(what: &'static str, verified: &VerifiedFile) -> Result<(), RejectReason> {
    let signers = verified.signers().len();
    if signers < 2 {
        return Err(RejectReason::DualControl { what, signers });
    }
    Ok(())
}

/// Re-loads the exact version a run is pinned to (for resume): the stored verified bytes,
/// checked against `sha256`, **verified again** against `keys` with the signature bytes stored
/// beside them (dual control included), and parsed again. Whoever can write the database must
/// not be able to make the daemon act: bytes changed there, or signed by a key no longer
/// trusted, are refused.
pub async fn load_pinned<C: GenericClient>(
    client: &C,
    keys: &TrustedKeys,
    id: &str,
    version: u32,
    sha256: &[u8; 32],
) -> Result<ActivePlaybook, PinnedError> {
    let stored = versions::load(client, id, version)
        .await
        .map_err(PinnedError::Query)?
        .ok_or_else(|| PinnedError::NotFound {
            id: id.to_owned(),
            version,
        })?;
    let actual: [u8; 32] = Sha256::digest(&stored.content).into();
    if stored.sha256.as_slice() != sha256 || &actual != sha256 {
        return Err(PinnedError::HashMismatch {
            id: id.to_owned(),
            version,
        });
    }
    if stored
        .signer_key_ids
        .iter()
        .any(|text| KeyId::parse(text).is_none())
    {
        return Err(PinnedError::BadSigners {
            id: id.to_owned(),
            version,
        });
    }
    let mut signers: Vec<KeyId> = Vec::new();
    for (key_id, signature) in &stored.signatures {
        // The stored key id only says which key to expect; the trust store decides.
        if let Ok((signer, _scheme)) = keys.verify(&stored.content, signature)
            && signer.as_str() == key_id
            && !signers.contains(&signer)
        {
            signers.push(signer);
        }
    }
    if signers.is_empty() {
        return Err(PinnedError::Unverified {
            id: id.to_owned(),
            version,
            stored: stored.signatures.len(),
        });
    }
    let playbook =
        playbook::parse_playbook(&stored.content).map_err(|source| PinnedError::Parse {
            id: id.to_owned(),
            version,
            source,
        })?;
    if playbook.id != id || playbook.version != version {
        return Err(PinnedError::HashMismatch {
            id: id.to_owned(),
            version,
        });
    }
    if playbook::has_critical_step(&playbook) && signers.len() < 2 {
        return Err(PinnedError::DualControl {
            id: id.to_owned(),
            version,
            signers: signers.len(),
        });
    }
    Ok(ActivePlaybook {
        playbook,
        sha256: actual,
        bytes: stored.content.into(),
        signers,
        origin: None,
    })
}

/// Why a pinned version could not be re-loaded.
#[derive(Debug, thiserror::Error)]
pub enum PinnedError {
    #[error("version {version} of `{id}` is not recorded")]
    NotFound { id: String, version: u32 },
    #[error("recorded version {version} of `{id}` does not match the pinned sha256")]
    HashMismatch { id: String, version: u32 },
    #[error("recorded version {version} of `{id}` has malformed signer key ids")]
    BadSigners { id: String, version: u32 },
    #[error(
        "recorded version {version} of `{id}` no longer verifies: none of its {stored} stored \
         signatures is valid under a trusted key (bytes changed in the database, or the key \
         was revoked)"
    )]
    Unverified {
        id: String,
        version: u32,
        stored: usize,
    },
    #[error(
        "recorded version {version} of `{id}` has a critical step and {signers} signature(s) \
         that still verify; dual control needs two"
    )]
    DualControl {
        id: String,
        version: u32,
        signers: usize,
    },
    #[error("recorded version {version} of `{id}` no longer parses")]
    Parse {
        id: String,
        version: u32,
        #[source]
        source: DocumentError,
    },
    #[error("failed to read playbook_versions")]
    Query(#[source] StoreError),
}

impl PinnedError {
    /// True when the stored version cannot be trusted (as opposed to a database that did not
    /// answer): nothing may run from it, and an admin must look.
    pub fn is_untrusted(&self) -> bool {
        match self {
            PinnedError::NotFound { .. }
            | PinnedError::HashMismatch { .. }
            | PinnedError::BadSigners { .. }
            | PinnedError::Unverified { .. }
            | PinnedError::DualControl { .. }
            | PinnedError::Parse { .. } => true,
            PinnedError::Query(_) => false,
        }
    }
}

// ---------------------------------------------------------------------------------------------

async fn build_catalog(
    paths: &RegistryPaths,
    limits: &ActionLimits,
    audit: &AuditHandle,
    previous: Option<&Catalog>,
) -> Result<(Catalog, LoadSummary), RegistryError> {
    let mut summary = LoadSummary::default();
    let (keys, refused) = TrustedKeys::load(&paths.trusted_keys)?;
    audit_refused_keys(audit, &refused).await?;
    summary.refused_keys = refused;
    if keys.is_empty() {
        return Err(RegistryError::NoTrustedKeys {
            dir: paths.trusted_keys.clone(),
        });
    }

    let candidates = check_playbook_files(paths, &keys, limits, audit, &mut summary).await?;
    let checked = record_versions(audit, candidates).await;
    let mut playbooks = activate_recorded(audit, checked, &mut summary).await?;
    if let Some(previous) = previous {
        keep_replaced_playbooks(previous, &keys, limits, audit, &mut playbooks, &mut summary)
            .await?;
    }
    summary.rejections.sort_by(|a, b| a.file.cmp(&b.file));

    let (bindings, bindings_origin) = load_bindings(
        &keys,
        &paths.bindings,
        previous.and_then(|p| p.bindings_origin.as_ref()),
        audit,
        &mut summary,
    )
    .await?;
    summary.bindings = bindings.len();
    Ok((
        Catalog {
            playbooks,
            bindings,
            keys,
            bindings_origin,
        },
        summary,
    ))
}

/// Logs, counts and audits each key file the trust store refused (the others still load).
async fn audit_refused_keys(
    audit: &AuditHandle,
    refused: &[signature::RefusedKey],
) -> Result<(), RegistryError> {
    for refusal in refused {
        let detail = audit::error_chain(&refusal.error);
        tracing::error!(file = %refusal.path.display(), reason = %detail, "trusted key refused");
        metrics::counter!(REJECTIONS_METRIC, "reason" => "trusted_key_refused").increment(1);
        audit
            .append(
                AuditEvent::new("trusted_key.refused", Actor::System)
                    .with("file", refusal.path.display().to_string())
                    .with("detail", detail),
            )
            .await
            .map_err(RegistryError::Audit)?;
    }
    Ok(())
}

/// The playbook files that verify and pass the checks, each with its path; the others are
/// rejected (logged, counted, audited) here.
async fn check_playbook_files(
    paths: &RegistryPaths,
    keys: &TrustedKeys,
    limits: &ActionLimits,
    audit: &AuditHandle,
    summary: &mut LoadSummary,
) -> Result<Vec<(PathBuf, Candidate)>, RegistryError> {
    let dir = TrustedDir::open(&paths.playbooks).map_err(|source| RegistryError::PlaybookDir {
        dir: paths.playbooks.clone(),
        source,
    })?;
    let mut candidates = Vec::new();
    for path in yaml_files(&paths.playbooks)? {
        let checked = keys
            .verify_file(&dir, &path)
            .map_err(|error| (None, error.into()))
            .and_then(|verified| check_verified_playbook(verified, Some(limits)));
        match checked {
            Ok(candidate) => candidates.push((path, candidate)),
            Err((playbook, reason)) => {
                reject(audit, summary, Document::Playbook, path, playbook, reason).await?;
            }
        }
    }
    Ok(candidates)
}

/// Records each candidate's version (or finds it recorded), per id highest version first, so
/// that a lower version in the same directory is judged against the higher one already
/// recorded, the same way on the first load as after a restart. Different ids are checked
/// concurrently so that the audit writer's group commit can batch them; the versions of one
/// id go one after the other, and stop at the first that the database could not judge.
async fn record_versions(
    audit: &AuditHandle,
    candidates: Vec<(PathBuf, Candidate)>,
) -> Vec<VersionCheck> {
    let mut by_id: BTreeMap<String, Vec<(PathBuf, Candidate)>> = BTreeMap::new();
    for (path, candidate) in candidates {
        by_id
            .entry(candidate.playbook.id.clone())
            .or_default()
            .push((path, candidate));
    }
    for group in by_id.values_mut() {
        group.sort_by(|(path_a, a), (path_b, b)| {
            (std::cmp::Reverse(a.playbook.version), path_a)
                .cmp(&(std::cmp::Reverse(b.playbook.version), path_b))
        });
    }
    let checked: Vec<Vec<VersionCheck>> =
        futures::stream::iter(by_id.into_values().map(|group| async move {
            let mut results = Vec::with_capacity(group.len());
            for (path, candidate) in group {
                let recorded = record_version(audit, &path, &candidate).await;
                let stop = recorded.is_err();
                results.push((path, candidate, recorded));
                if stop {
                    break;
                }
            }
            results
        }))
        .buffer_unordered(CONCURRENT_VERSION_CHECKS)
        .collect()
        .await;
    checked.into_iter().flatten().collect()
}

/// The playbooks to run from what [`record_versions`] found: per id, the highest recorded
/// version. A version the database refused is rejected; the first database error stops the
/// load.
async fn activate_recorded(
    audit: &AuditHandle,
    checked: Vec<VersionCheck>,
    summary: &mut LoadSummary,
) -> Result<BTreeMap<String, Arc<ActivePlaybook>>, RegistryError> {
    let mut playbooks: BTreeMap<String, Arc<ActivePlaybook>> = BTreeMap::new();
    for (path, candidate, recorded) in checked {
        match recorded? {
            Recorded::Yes => {
                summary.loaded += 1;
                tracing::info!(
                    file = %path.display(),
                    playbook = %candidate.playbook.id,
                    version = candidate.playbook.version,
                    "playbook loaded"
                );
                let active = ActivePlaybook::loaded(path, candidate);
                let newer = playbooks
                    .get(active.id())
                    .is_none_or(|current| current.version() < active.version());
                if newer {
                    playbooks.insert(active.id().to_owned(), Arc::new(active));
                }
            }
            Recorded::RefusedAndAudited(reason) => {
                log_rejection(&path, &reason);
                summary.rejections.push(Rejection {
                    file: path,
                    playbook: Some(candidate.playbook.id),
                    reason,
                });
            }
            Recorded::DatabaseRefused(reason) => {
                let id = Some(candidate.playbook.id);
                reject(audit, summary, Document::Playbook, path, id, reason).await?;
            }
        }
    }
    Ok(playbooks)
}

impl ActivePlaybook {
    /// The playbook of a candidate whose version is recorded, loaded from `path`.
    fn loaded(path: PathBuf, candidate: Candidate) -> ActivePlaybook {
        ActivePlaybook {
            sha256: candidate.verified.sha256(),
            signers: candidate.verified.signers(),
            playbook: candidate.playbook,
            origin: Some(Origin {
                signatures: candidate.verified.signature_files(),
                file: path,
            }),
            bytes: candidate.verified.into_bytes().into(),
        }
    }
}

/// A reload keeps the last verified version of a playbook whose replacement was refused (the
/// same file, or another file of the same id, refused) rather than leave its bindings with
/// nothing to run: a typo in an edit must not disarm a response. The kept version is checked
/// again against the current trust store and limits; a key removed from the trust store
/// still withdraws what only it signed. A playbook whose file is gone, with no refused
/// replacement, is retired.
async fn keep_replaced_playbooks(
    previous: &Catalog,
    keys: &TrustedKeys,
    limits: &ActionLimits,
    audit: &AuditHandle,
    playbooks: &mut BTreeMap<String, Arc<ActivePlaybook>>,
    summary: &mut LoadSummary,
) -> Result<(), RegistryError> {
    for (id, old) in &previous.playbooks {
        if playbooks.contains_key(id) {
            continue;
        }
        let Some(origin) = &old.origin else { continue };
        let replaced_by = summary.rejections.iter().find(|rejection| {
            rejection.file == origin.file || rejection.playbook.as_deref() == Some(id.as_str())
        });
        let Some(replacement) = replaced_by else {
            tracing::info!(playbook = %id, file = %origin.file.display(), "playbook retired: its file is gone");
            continue;
        };
        let replacement = replacement.file.display().to_string();
        let rechecked = keys
            .verify_signatures(old.bytes.to_vec(), origin.signatures.clone())
            .map_err(|error| (None, error.into()))
            .and_then(|verified| check_verified_playbook(verified, Some(limits)));
        if let Err((_, reason)) = rechecked {
            let detail = audit::error_chain(&reason);
            tracing::error!(playbook = %id, reason = %detail, "last verified version withdrawn: it no longer passes");
            continue;
        }
        let what = format!("playbook {id}@{}", old.version());
        tracing::warn!(playbook = %id, version = old.version(), refused = %replacement, "replacement refused; last verified version stays active");
        audit
            .append(
                AuditEvent::new("playbook.kept", Actor::System)
                    .with("playbook_id", id.as_str())
                    .with("version", old.version())
                    .with("sha256", hex::encode(old.sha256()))
                    .with("file", origin.file.display().to_string())
                    .with("refused", replacement),
            )
            .await
            .map_err(RegistryError::Audit)?;
        summary.kept.push(Kept {
            what,
            file: origin.file.clone(),
        });
        playbooks.insert(id.clone(), Arc::clone(old));
    }
    Ok(())
}

/// One file's version check, in order within its id.
type VersionCheck = (PathBuf, Candidate, Result<Recorded, RegistryError>);

/// The outcome of the version check.
enum Recorded {
    /// Accepted: recorded now or earlier with the same bytes, `playbook.loaded` committed.
    Yes,
    /// Refused (downgrade, equivocation); `playbook.rejected` committed in the same transaction.
    RefusedAndAudited(RejectReason),
    /// The database refused the statements; nothing committed, not audited yet.
    DatabaseRefused(RejectReason),
}

/// The version check and the `playbook_versions` insert, in the audit transaction.
/// An error means the audit log is unavailable.
async fn record_version(
    audit: &AuditHandle,
    path: &Path,
    candidate: &Candidate,
) -> Result<Recorded, RegistryError> {
    let id = candidate.playbook.id.clone();
    let version = candidate.playbook.version;
    let sha256 = candidate.verified.sha256();
    let signers: Vec<String> = candidate
        .verified
        .signers()
        .iter()
        .map(|key| key.as_str().to_owned())
        .collect();
    let new = NewVersion {
        playbook_id: id.clone(),
        version,
        sha256,
        signer_key_ids: signers.clone(),
        signatures: candidate
            .verified
            .signatures()
            .iter()
            .map(|signature| {
                (
                    signature.key_id.as_str().to_owned(),
                    signature.bytes().to_vec(),
                )
            })
            .collect(),
        content: candidate.verified.bytes().to_vec(),
    };
    let file = path.display().to_string();
    let effect: audit::Effect<Result<(), RejectReason>> = Box::new(move |tx| {
        let (new, id, file, signers) = (new.clone(), id.clone(), file.clone(), signers.clone());
        Box::pin(async move {
            let verdict = versions::check_and_record(tx, &new)
                .await?
                .map_err(|conflict| match conflict {
                    VersionConflict::Equivocation { recorded } => RejectReason::Equivocation {
                        id: id.clone(),
                        version,
                        recorded,
                    },
                    VersionConflict::Downgrade { highest } => RejectReason::Downgrade {
                        id: id.clone(),
                        version,
                        highest,
                    },
                });
            let event = match &verdict {
                Ok(first_seen) => AuditEvent::new("playbook.loaded", Actor::System)
                    .with("file", file)
                    .with("playbook_id", id.as_str())
                    .with("version", version)
                    .with("sha256", hex::encode(sha256))
                    .with("signers", signers.clone())
                    .with("first_seen", *first_seen),
                Err(reason) => rejected_event("playbook.rejected", &file, reason),
            };
            Ok((event, verdict.map(|_| ())))
        })
    });
    match audit.append_with(effect).await {
        Ok((_, Ok(()))) => Ok(Recorded::Yes),
        Ok((_, Err(reason))) => Ok(Recorded::RefusedAndAudited(reason)),
        Err(AppendError::Effect(source)) => Ok(Recorded::DatabaseRefused(RejectReason::Database(
            AppendError::Effect(source),
        ))),
        Err(error) => Err(RegistryError::Audit(error)),
    }
}

/// Loads the bindings file, which always needs two distinct trusted signers. When it is
/// refused, the last verified bindings (`previous`, checked again against the current trust
/// store) stay in force, unless the file itself is gone; otherwise there are no bindings.
async fn load_bindings(
    keys: &TrustedKeys,
    path: &Path,
    previous: Option<&BindingsSource>,
    audit: &AuditHandle,
    summary: &mut LoadSummary,
) -> Result<(Vec<Binding>, Option<BindingsSource>), RegistryError> {
    let checked = TrustedDir::parent_of(path)
        .map_err(|error| RejectReason::File(FileError::Document(error)))
        .and_then(|dir| check_bindings_file(keys, &dir, path));
    let (verified, parsed) = match checked {
        Ok(checked) => checked,
        Err(reason) => {
            let file_gone = matches!(
                reason,
                RejectReason::File(FileError::Document(OpenError::Missing { .. }))
            );
            reject(
                audit,
                summary,
                Document::Bindings,
                path.to_owned(),
                None,
                reason,
            )
            .await?;
            let kept = previous
                .filter(|_| !file_gone)
                .and_then(|(origin, bytes)| recheck_bindings(keys, origin, bytes));
            let Some((origin, bindings)) = kept else {
                return Ok((Vec::new(), None));
            };
            tracing::warn!(file = %path.display(), count = bindings.len(), "bindings refused; the last verified bindings stay in force");
            audit
                .append(
                    AuditEvent::new("bindings.kept", Actor::System)
                        .with("file", path.display().to_string())
                        .with("count", bindings.len()),
                )
                .await
                .map_err(RegistryError::Audit)?;
            summary.kept.push(Kept {
                what: "bindings".into(),
                file: path.to_owned(),
            });
            return Ok((bindings, Some(origin)));
        }
    };
    let signers: Vec<String> = verified
        .signers()
        .iter()
        .map(|key| key.as_str().to_owned())
        .collect();
    audit
        .append(
            AuditEvent::new("bindings.loaded", Actor::System)
                .with("file", path.display().to_string())
                .with("sha256", hex::encode(verified.sha256()))
                .with("signers", signers)
                .with("count", parsed.bindings.len()),
        )
        .await
        .map_err(RegistryError::Audit)?;
    tracing::info!(file = %path.display(), count = parsed.bindings.len(), "bindings loaded");
    let origin = Origin {
        file: path.to_owned(),
        signatures: verified.signature_files(),
    };
    Ok((parsed.bindings, Some((origin, verified.into_bytes()))))
}

/// The last verified bindings, if they still pass against `keys`.
fn recheck_bindings(
    keys: &TrustedKeys,
    origin: &Origin,
    bytes: &[u8],
) -> Option<(BindingsSource, Vec<Binding>)> {
    let rechecked = keys
        .verify_signatures(bytes.to_vec(), origin.signatures.clone())
        .map_err(RejectReason::from)
        .and_then(check_verified_bindings);
    match rechecked {
        Ok((_, parsed)) => Some(((origin.clone(), bytes.to_vec()), parsed.bindings)),
        Err(reason) => {
            tracing::error!(reason = %audit::error_chain(&reason), "last verified bindings withdrawn: they no longer pass");
            None
        }
    }
}

/// The kind of signed document a rejection is about, which names its audit event.
#[derive(Debug, Clone, Copy)]
enum Document {
    Playbook,
    Bindings,
}

impl Document {
    fn rejected_event(self) -> &'static str {
        match self {
            Document::Playbook => "playbook.rejected",
            Document::Bindings => "bindings.rejected",
        }
    }
}

/// Logs, counts and audits one rejected file.
async fn reject(
    audit: &AuditHandle,
    summary: &mut LoadSummary,
    document: Document,
    file: PathBuf,
    playbook: Option<String>,
    reason: RejectReason,
) -> Result<(), RegistryError> {
    log_rejection(&file, &reason);
    audit
        .append(rejected_event(
            document.rejected_event(),
            &file.display().to_string(),
            &reason,
        ))
        .await
        .map_err(RegistryError::Audit)?;
    summary.rejections.push(Rejection {
        file,
        playbook,
        reason,
    });
    Ok(())
}

fn log_rejection(file: &Path, reason: &RejectReason) {
    let detail = audit::error_chain(reason);
    tracing::error!(file = %file.display(), reason = reason.label(), detail = %detail, "file rejected");
    metrics::counter!(REJECTIONS_METRIC, "reason" => reason.label()).increment(1);
}

fn rejected_event(event_type: &'static str, file: &str, reason: &RejectReason) -> AuditEvent {
    AuditEvent::new(event_type, Actor::System)
        .with("file", file)
        .with("reason", reason.label())
        .with("detail", audit::error_chain(reason))
}

/// `*.yaml` files directly in `dir`, sorted.
fn yaml_files(dir: &Path) -> Result<Vec<PathBuf>, RegistryError> {
    let list_error = |source| RegistryError::ListPlaybooks {
        dir: dir.to_owned(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(list_error)? {
        let path = entry.map_err(list_error)?.path();
        if path.extension().is_some_and(|ext| ext == "yaml") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

const REJECTIONS_METRIC: &str = "playbookd_registry_rejections_total";
/// Version checks in flight at once (each is one savepoint in the audit writer's batch).
const CONCURRENT_VERSION_CHECKS: usize = 64;
