//! The daemon's side of the witness protocol: after each new checkpoint, a background task
//! submits the newest checkpoint note to every configured witness with a consistency proof
//! from the size that witness last cosigned, verifies the returned cosignature against the
//! configured key, and stores it (`audit_cosignatures`).
//!
//! It runs beside the checkpointer, never on the audit write path: a witness that is down,
//! slow or refusing costs a journal line and a metric
//! (`playbookd_witness_submissions_total{witness,result}`), never an event or a run. A 409
//! (the witness holds another size) is retried once from the size it names.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use tokio::sync::{Mutex, Notify};
use tokio_util::sync::CancellationToken;

use crate::config::WitnessEndpoint;
use crate::cosignature::{Cosignature, CosignatureError};
use crate::merkle::{Hash, Tree};
use crate::note;
use crate::store::checkpoint::NodeKey;
use crate::store::evidence;
use crate::store::{Store, StoreError};

/// One submission may take this long, connection included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The most of a refusal's body kept for the journal.
const MAX_REASON_BYTES: usize = 512;
pub const SUBMISSIONS_METRIC: &str = "playbookd_witness_submissions_total";

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the witness did not answer")]
    Unreachable(#[source] reqwest::Error),
    #[error("the witness holds size {latest}, beyond this checkpoint of size {size}")]
    Conflict { latest: u64, size: u64 },
    #[error("the witness answered 409 without a size")]
    BadConflict,
    #[error("the witness refused the checkpoint ({status}): {reason}")]
    Refused { status: u16, reason: String },
    #[error("the witness's answer holds no valid cosignature by its configured key")]
    NoCosignature,
    #[error("the witness's cosignature does not verify")]
    BadCosignature(#[source] CosignatureError),
}

impl SubmitError {
    /// The `result` label of the metric.
    fn label(&self) -> &'static str {
        match self {
            SubmitError::Store(_) => "store_error",
            SubmitError::Unreachable(_) => "unreachable",
            SubmitError::Conflict { .. } | SubmitError::BadConflict => "conflict",
            SubmitError::Refused { .. } => "refused",
            SubmitError::NoCosignature | SubmitError::BadCosignature(_) => "bad_cosignature",
        }
    }
}

/// What one submission did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Submitted {
    Cosigned {
        seq: u64,
    },
    /// No checkpoint yet, or this witness already cosigned the newest one.
    NothingNew,
}

/// Submits checkpoints; woken by the checkpointer ([`Submitter::wake_handle`]).
#[derive(Clone)]
pub struct Submitter {
    witnesses: Arc<Vec<WitnessEndpoint>>,
    store: Store,
    key: Arc<NodeKey>,
    node_id: String,
    http: reqwest::Client,
    wake: Arc<Notify>,
    /// The size each witness last cosigned, as far as this process knows.
    known: Arc<Mutex<HashMap<String, u64>>>,
}

impl Submitter {
    pub fn new(
        witnesses: Vec<WitnessEndpoint>,
        store: Store,
        key: Arc<NodeKey>,
        node_id: String,
    ) -> Submitter {
        // Building a client without TLS roots or a proxy fails only on a broken platform; the
        // default client then still works with the same timeout per request.
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .unwrap_or_default();
        Submitter {
            witnesses: Arc::new(witnesses),
            store,
            key,
            node_id,
            http,
            wake: Arc::new(Notify::new()),
            known: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Notified after each stored checkpoint.
    pub fn wake_handle(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Submits at start, after each checkpoint and every `retry` (a witness that was down gets
    /// the newest checkpoint later), until `shutdown`. The daemon runs it in a task of its own.
    pub async fn run(self, retry: Duration, shutdown: CancellationToken) {
        let mut ticks = tokio::time::interval(retry);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticks.tick() => {}
                () = self.wake.notified() => {}
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.submit_all() => {}
            }
        }
    }

    /// Submits the newest checkpoint to every witness, concurrently; logs and counts each result.
    pub async fn submit_all(&self) {
        let submissions = self.witnesses.iter().map(|witness| async move {
            let result = self.submit(witness).await;
            let label = match &result {
                Ok(Submitted::Cosigned { seq }) => {
                    tracing::info!(witness = %witness.name, seq, "checkpoint cosigned by witness");
                    "cosigned"
                }
                Ok(Submitted::NothingNew) => return,
                Err(error) => {
                    tracing::warn!(
                        witness = %witness.name,
                        error = %crate::store::audit::error_chain(error),
                        "witness submission failed"
                    );
                    error.label()
                }
            };
            metrics::counter!(SUBMISSIONS_METRIC, "witness" => witness.name.clone(), "result" => label)
                .increment(1);
        });
        futures::future::join_all(submissions).await;
    }

    /// Submits the newest checkpoint to `witness` unless it already cosigned it.
    pub async fn submit(&self, witness: &WitnessEndpoint) -> Result<Submitted, SubmitError> {
        let client = self.store.client().await?;
        let Some(latest) = evidence::latest_checkpoint(&client, &self.node_id).await? else {
            return Ok(Submitted::NothingNew);
        };
        if evidence::cosignatures(&client, &self.node_id, Some(latest.seq))
            .await?
            .iter()
            .any(|(_, c)| c.witness == witness.name && c.key_id == witness.vkey.id())
        {
            return Ok(Submitted::NothingNew);
        }
        let tree = evidence::tree_at(&client, &self.node_id, &latest).await?;
        let head = evidence::tree_head(&self.node_id, &tree, latest.hash);
        let signed = note::signed_note(&head, &self.key.verifying_key(), |text| {
            self.key.sign_note_text(text)
        });
        let text = note::checkpoint_text(&head);
        let mut old = match self.known.lock().await.get(&witness.name) {
            Some(&size) => size,
            None => evidence::last_cosigned_seq(&client, &self.node_id, &witness.name)
                .await?
                .unwrap_or(0),
        };
        drop(client);
        let mut retried = false;
        loop {
            match self.post(witness, &tree, old, &signed).await? {
                Answer::Cosigned(body) => {
                    let cosignature = cosignature_in(&body, witness, &text)?;
                    let client = self.store.client().await?;
                    evidence::insert_cosignature(&client, &self.node_id, latest.seq, &cosignature)
                        .await?;
                    self.known
                        .lock()
                        .await
                        .insert(witness.name.clone(), tree.size());
                    return Ok(Submitted::Cosigned { seq: latest.seq });
                }
                Answer::Conflict(latest_size) if !retried && latest_size <= tree.size() => {
                    retried = true;
                    old = latest_size;
                }
                Answer::Conflict(latest_size) => {
                    self.known
                        .lock()
                        .await
                        .insert(witness.name.clone(), latest_size);
                    return Err(SubmitError::Conflict {
                        latest: latest_size,
                        size: tree.size(),
                    });
                }
            }
        }
    }

    async fn post(
        &self,
        witness: &WitnessEndpoint,
        tree: &Tree,
        old: u64,
        signed: &str,
    ) -> Result<Answer, SubmitError> {
        let proof = consistency_proof(tree, old);
        let response = self
            .http
            .post(add_checkpoint_url(&witness.url))
            .body(request_body(old, &proof, signed))
            .send()
            .await
            .map_err(SubmitError::Unreachable)?;
        let status = response.status().as_u16();
        let body = response.bytes().await.map_err(SubmitError::Unreachable)?;
        match status {
            200 => Ok(Answer::Cosigned(
                String::from_utf8_lossy(&body).into_owned(),
            )),
            409 => std::str::from_utf8(&body)
                .ok()
                .and_then(|text| text.strip_suffix('\n'))
                .and_then(|size| size.parse().ok())
                .map(Answer::Conflict)
                .ok_or(SubmitError::BadConflict),
            _ => Err(SubmitError::Refused {
                status,
                reason: crate::text::storable_bytes(&body, MAX_REASON_BYTES),
            }),
        }
    }
}

enum Answer {
    Cosigned(String),
    Conflict(u64),
}

/// `<prefix>/add-checkpoint`, whether or not the prefix ends with a slash.
fn add_checkpoint_url(prefix: &reqwest::Url) -> String {
    format!("{}/add-checkpoint", prefix.as_str().trim_end_matches('/'))
}

/// RFC 6962 proof from `old` to the tree; empty from 0 and for the same size (the spec's cases).
fn consistency_proof(tree: &Tree, old: u64) -> Vec<Hash> {
    if old == 0 || old >= tree.size() {
        return Vec::new();
    }
    // 0 < old < size: cannot fail.
    tree.consistency_proof(old).unwrap_or_default()
}

/// The add-checkpoint body: `old N`, the proof lines, a blank line, the signed note.
pub fn request_body(old: u64, proof: &[Hash], signed_note: &str) -> String {
    let mut body = format!("old {old}\n");
    for hash in proof {
        body.push_str(&BASE64.encode(hash));
        body.push('\n');
    }
    body.push('\n');
    body.push_str(signed_note);
    body
}

/// The witness's cosignature among the answer's signature lines, verified over `text`.
fn cosignature_in(
    body: &str,
    witness: &WitnessEndpoint,
    text: &str,
) -> Result<Cosignature, SubmitError> {
    for line in body.lines() {
        let Ok(line) = note::signature_line(line) else {
            continue;
        };
        if line.name == witness.vkey.name && line.key_id == witness.vkey.id() {
            return Cosignature::from_line(&line, &witness.vkey, text)
                .map_err(SubmitError::BadCosignature);
        }
    }
    Err(SubmitError::NoCosignature)
}
