//! The registry's immutable snapshot: active playbook versions and bindings.

use std::collections::HashMap;
use std::sync::Arc;

use super::model::{Binding, Playbook};

/// One verified, parsed, validated playbook version.
#[derive(Debug)]
pub struct ActivePlaybook {
    pub playbook: Playbook,
    pub version: u32,
    pub sha256: [u8; 32],
    pub bytes: Arc<[u8]>,
    pub signers: Vec<String>,
}

/// What the daemon may run right now.
#[derive(Debug, Default)]
pub struct Catalog {
    pub playbooks: HashMap<String, Arc<ActivePlaybook>>,
    pub bindings: Vec<Binding>,
}

impl Catalog {
    pub fn active(&self, id: &str) -> Option<Arc<ActivePlaybook>> {
        self.playbooks.get(id).cloned()
    }

    pub fn bindings(&self) -> &[Binding] {
        &self.bindings
    }
}

/// The catalog as shared between the registry (which swaps it on reload) and its readers.
pub type SharedCatalog = Arc<std::sync::RwLock<Arc<Catalog>>>;

/// The current snapshot.
pub fn snapshot(shared: &SharedCatalog) -> Arc<Catalog> {
    shared
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
}

/// Re-loads a pinned version from the verified bytes stored when it was first accepted,
/// checking the hash again.
pub async fn load_pinned(
    client: &tokio_postgres::Client,
    id: &str,
    version: i64,
    sha256: &[u8; 32],
) -> Result<ActivePlaybook, String> {
    use sha2::{Digest, Sha256};
    let row = client
        .query_opt(
            "SELECT sha256, content, signer_key_ids FROM playbook_versions \
             WHERE playbook_id = $1 AND version = $2",
            &[&id, &version],
        )
        .await
        .map_err(|error| format!("database: {error}"))?
        .ok_or_else(|| "no stored version".to_owned())?;
    let stored_sha: Vec<u8> = row.get(0);
    let content: Vec<u8> = row.get(1);
    let computed: [u8; 32] = Sha256::digest(&content).into();
    if stored_sha.as_slice() != sha256 || &computed != sha256 {
        return Err("stored bytes do not match the pinned sha256".into());
    }
    let playbook = super::playbook::parse_playbook(&content).map_err(|error| error.to_string())?;
    Ok(ActivePlaybook {
        version: playbook.version,
        playbook,
        sha256: computed,
        bytes: content.into(),
        signers: row.get(2),
    })
}
