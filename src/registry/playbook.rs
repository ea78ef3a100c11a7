//! Strict parsing and semantic validation of playbook and bindings documents.
//!
//! (Placeholder body: serde parse only; full validation lands with the registry work.)

use super::model::{BindingsFile, Playbook};

#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    #[error("not valid YAML for this document: {0}")]
    Syntax(String),
}

/// Parses and validates one playbook from its exact verified bytes.
pub fn parse_playbook(bytes: &[u8]) -> Result<Playbook, DocumentError> {
    let text = std::str::from_utf8(bytes).map_err(|e| DocumentError::Syntax(e.to_string()))?;
    serde_saphyr::from_str(text).map_err(|e| DocumentError::Syntax(e.to_string()))
}

/// Parses and validates the bindings file from its exact verified bytes.
pub fn parse_bindings(bytes: &[u8]) -> Result<BindingsFile, DocumentError> {
    let text = std::str::from_utf8(bytes).map_err(|e| DocumentError::Syntax(e.to_string()))?;
    serde_saphyr::from_str(text).map_err(|e| DocumentError::Syntax(e.to_string()))
}
