//! The document verbs: `validate`, `sign` and `verify` a playbook or bindings file offline, the
//! way the daemon's registry would check it at load, without a database.

use std::path::PathBuf;

use super::simulate::SimulateError;
use super::{CliError, Failure, write_stdout_line};
use crate::actions::limits::ActionLimits;
use crate::config::Config;
use crate::registry::secure_open::{DOCUMENT_LIMIT, TrustedDir};
use crate::registry::signature::{self, Algorithm, KeyError, Signer, TrustedKeys};
use crate::registry::{self, CheckedFile, RejectReason, playbook};
use crate::store;

/// `validate FILE…`: one line per file, `FILE: ok (…)` or `FILE: reason`.
pub fn validate(files: &[PathBuf]) -> Result<(), CliError> {
    let mut failed = 0;
    let mut unreadable = false;
    for file in files {
        match playbook::load_document(file) {
            Ok(document) => {
                write_stdout_line(&format!("{}: ok ({})", file.display(), document.summary()))?;
            }
            Err(error) => {
                failed += 1;
                unreadable |= matches!(error, playbook::LoadError::Io(_));
                write_stdout_line(&format!("{}: {error}", file.display()))?;
            }
        }
    }
    all_passed("validation", failed, files, unreadable)
}

/// `Ok` when no file failed `check`.
fn all_passed(
    check: &'static str,
    failed: usize,
    files: &[PathBuf],
    unreadable: bool,
) -> Result<(), CliError> {
    if failed == 0 {
        return Ok(());
    }
    Err(Failure::FilesFailed {
        check,
        failed,
        total: files.len(),
        unreadable,
    }
    .into())
}

/// `simulate --config`: the configuration's limits, as the registry applies them at load.
pub fn check_limits_offline(path: &std::path::Path, config: &Config) -> Result<(), CliError> {
    let refused = |reason: String| SimulateError::Playbook {
        path: path.display().to_string(),
        reason,
    };
    let document = match playbook::load_document(path) {
        Ok(document) => document,
        Err(playbook::LoadError::Io(source)) => {
            return Err(SimulateError::Unreadable {
                path: path.display().to_string(),
                source,
            }
            .into());
        }
        Err(error @ playbook::LoadError::Document(_)) => {
            return Err(refused(error.to_string()).into());
        }
    };
    if let playbook::Document::Playbook(playbook) = document {
        let limits = ActionLimits::from_config(&config.actions);
        registry::limits::check_playbook_limits(&playbook, &limits)
            .map_err(|violation| refused(format!("the daemon would refuse it: {violation}")))?;
    }
    Ok(())
}

/// `sign --key KEY [--second] FILE…`: writes `FILE.sig` (or `FILE.sig.2`, dual control) beside each file.
pub fn sign(key: &std::path::Path, second: bool, files: &[PathBuf]) -> Result<(), CliError> {
    // The registry's secure open, as for every file holding key material: a key in a
    // directory others can write could be swapped for theirs between two signatures.
    let pem = TrustedDir::parent_of(key)
        .and_then(|dir| dir.read(key, DOCUMENT_LIMIT))
        .map_err(KeyError::Open)?;
    let pem = rsa::pkcs8::der::zeroize::Zeroizing::new(pem);
    let pem = std::str::from_utf8(&pem).map_err(|_| KeyError::Malformed {
        path: key.to_owned(),
        detail: "not PEM text".into(),
    })?;
    let signer = Signer::load(pem, key)?;
    let suffix = if second { ".sig.2" } else { ".sig" };
    for file in files {
        let bytes = std::fs::read(file).map_err(|source| Failure::ReadInput {
            path: file.clone(),
            source,
        })?;
        let sig_path = signature::with_suffix(file, suffix);
        std::fs::write(&sig_path, signer.sign(&bytes)).map_err(|source| Failure::WriteOutput {
            path: sig_path.clone(),
            source,
        })?;
        write_stdout_line(&format!(
            "{}: signed by {}",
            sig_path.display(),
            signer.key_id()
        ))?;
    }
    Ok(())
}

/// `verify FILE…`: checks each file's signatures against the trust store, as the registry does at load.
pub fn verify(
    trusted_keys: &std::path::Path,
    limits: Option<&ActionLimits>,
    files: &[PathBuf],
) -> Result<(), CliError> {
    let (keys, refused) = TrustedKeys::load(trusted_keys)?;
    for refusal in &refused {
        eprintln!(
            "playbookd: warning: not trusted: {}",
            store::audit::error_chain(&refusal.error)
        );
    }
    if keys.is_empty() {
        return Err(Failure::NoTrustedKeys(trusted_keys.to_owned()).into());
    }
    let mut failed = 0;
    for file in files {
        let outcome = TrustedDir::parent_of(file)
            .map_err(|error| RejectReason::File(signature::FileError::Document(error)))
            .and_then(|dir| registry::check_signed_file(&keys, limits, &dir, file));
        match outcome {
            Ok(checked) => {
                let (what, verified) = match &checked {
                    CheckedFile::Playbook(candidate) => (
                        format!(
                            "playbook {}@{}",
                            candidate.playbook().id,
                            candidate.playbook().version
                        ),
                        candidate.verified(),
                    ),
                    CheckedFile::Bindings(verified, bindings) => {
                        (format!("bindings, {}", bindings.bindings.len()), verified)
                    }
                };
                let signers: Vec<String> = verified
                    .signatures()
                    .iter()
                    .map(|signature| format!("{} ({})", signature.key_id, signature.scheme))
                    .collect();
                write_stdout_line(&format!(
                    "{}: OK ({what}), sha256 {}, signed by {}",
                    file.display(),
                    hex::encode(verified.sha256()),
                    signers.join(" and ")
                ))?;
            }
            Err(reason) => {
                failed += 1;
                write_stdout_line(&format!(
                    "{}: REJECTED ({}): {}",
                    file.display(),
                    reason.label(),
                    store::audit::error_chain(&reason)
                ))?;
            }
        }
    }
    all_passed("verification", failed, files, false)
}

/// clap's parser for `--algorithm`.
pub fn parse_algorithm(text: &str) -> Result<Algorithm, String> {
    Algorithm::parse(text).map_err(|error| error.to_string())
}
