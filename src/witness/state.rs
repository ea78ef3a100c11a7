//! The witness's state file: the latest cosigned (size, root hash) per log origin.
//!
//! ```json
//! {"format":"playbookd-witness-state/1","logs":{"playbookd/host-1":{"size":1234,"root":"<base64>"}}}
//! ```
//!
//! Read once at start (a file that does not decode stops the witness: guessing would let a
//! log roll back); rewritten atomically and fsynced before each cosignature is returned.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};

use super::protocol::Cosigned;
use crate::store::anchor::replace_file;

const FORMAT: &str = "playbookd-witness-state/1";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read the witness state {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the witness state {path} does not decode ({detail}); restore it from a backup: starting \
         empty would let every log roll back"
    )]
    Decode { path: PathBuf, detail: String },
    #[error("cannot write the witness state {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Stored {
    format: String,
    logs: BTreeMap<String, StoredLog>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredLog {
    size: u64,
    root: String,
}

/// The state in memory and where it lives.
#[derive(Debug)]
pub struct StateFile {
    path: PathBuf,
    logs: BTreeMap<String, Cosigned>,
}

impl StateFile {
    /// Reads `path`; a missing file is an empty state (a new witness).
    pub fn load(path: &Path) -> Result<StateFile, StateError> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Ok(StateFile {
                    path: path.to_owned(),
                    logs: BTreeMap::new(),
                });
            }
            Err(source) => {
                return Err(StateError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        let decode = |detail: String| StateError::Decode {
            path: path.to_owned(),
            detail,
        };
        let stored: Stored =
            serde_json::from_slice(&bytes).map_err(|error| decode(error.to_string()))?;
        if stored.format != FORMAT {
            return Err(decode(format!(
                "format `{}`, expected `{FORMAT}`",
                stored.format
            )));
        }
        let logs = stored
            .logs
            .into_iter()
            .map(|(origin, log)| {
                let root = BASE64
                    .decode(&log.root)
                    .ok()
                    .and_then(|root| root.try_into().ok())
                    .ok_or_else(|| decode(format!("log `{origin}`: root is not a base64 hash")))?;
                Ok((
                    origin,
                    Cosigned {
                        size: log.size,
                        root,
                    },
                ))
            })
            .collect::<Result<_, StateError>>()?;
        Ok(StateFile {
            path: path.to_owned(),
            logs,
        })
    }

    pub fn latest(&self, origin: &str) -> Option<Cosigned> {
        self.logs.get(origin).copied()
    }

    /// Records `cosigned` as the latest of `origin`, durably; on failure the memory is unchanged.
    pub fn record(&mut self, origin: &str, cosigned: Cosigned) -> Result<(), StateError> {
        let mut logs = self.logs.clone();
        logs.insert(origin.to_owned(), cosigned);
        let stored = Stored {
            format: FORMAT.to_owned(),
            logs: logs
                .iter()
                .map(|(origin, log)| {
                    (
                        origin.clone(),
                        StoredLog {
                            size: log.size,
                            root: BASE64.encode(log.root),
                        },
                    )
                })
                .collect(),
        };
        // Strings and numbers always serialize.
        let bytes = serde_json::to_vec(&stored).unwrap_or_default();
        replace_file(&self.path, &bytes, true).map_err(|source| StateError::Write {
            path: self.path.clone(),
            source,
        })?;
        self.logs = logs;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_survives_a_reload_and_garbage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let mut state = StateFile::load(&path).unwrap();
        assert_eq!(state.latest("o"), None);
        let cosigned = Cosigned {
            size: 7,
            root: [3; 32],
        };
        state.record("o", cosigned).unwrap();
        assert_eq!(StateFile::load(&path).unwrap().latest("o"), Some(cosigned));
        std::fs::write(&path, b"{}").unwrap();
        assert!(matches!(
            StateFile::load(&path),
            Err(StateError::Decode { .. })
        ));
    }
}
