//! Evidence bundles and C2SP checkpoint notes through the real binary (`audit prove`,
//! `audit verify-bundle`, `audit checkpoint-text`), and cross-checks of the notes and proofs with
//! an implementation nobody here wrote (Cloudflare's `signed_note` and `tlog_tiles` crates).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::pkcs8::DecodePublicKey;
use playbookd::merkle::{self, Tree};
use playbookd::store::Store;
use playbookd::store::audit::{self, Actor, AuditEvent, AuditHandle};
use playbookd::store::checkpoint::{Checkpointer, NodeKey};
use tokio_util::sync::CancellationToken;

use crate::helpers::{DaemonDir, TestDb, assert_contains, audit_cli, configured, run_cli};

/// Node `n1`: runs A (3 rows) and B (2 rows) interleaved with other events, a checkpoint at
/// seq 10, then run C (1 row) after it.
struct Fixture {
    db: TestDb,
    dir: DaemonDir,
    config: PathBuf,
    run_a: uuid::Uuid,
    run_c: uuid::Uuid,
    _stop: CancellationToken,
}

impl Fixture {
    async fn new() -> Fixture {
        let (db, dir, config) = configured("n1", "").await;
        let stop = CancellationToken::new();
        let (handle, _task) = audit::start_writer(db.config.clone(), "n1".into(), stop.clone())
            .await
            .expect("start writer");
        let store = Store::connect(&db.config, 2, Duration::from_secs(5))
            .await
            .unwrap();
        let key = NodeKey::load_or_generate(&dir.path("node.key")).unwrap();
        let checkpointer = Checkpointer::new(handle.clone(), store, Arc::new(key));
        let (run_a, run_b, run_c) = (
            uuid::Uuid::new_v4(),
            uuid::Uuid::new_v4(),
            uuid::Uuid::new_v4(),
        );
        let plan: [Option<uuid::Uuid>; 10] = [
            None,
            Some(run_a),
            Some(run_b),
            None,
            Some(run_a),
            Some(run_b),
            None,
            None,
            Some(run_a),
            None,
        ];
        for (i, run) in plan.into_iter().enumerate() {
            append(&handle, i, run).await;
        }
        assert_eq!(checkpointer.checkpoint().await.unwrap().unwrap().seq, 10);
        append(&handle, 10, Some(run_c)).await;
        Fixture {
            db,
            dir,
            config,
            run_a,
            run_c,
            _stop: stop,
        }
    }

    fn prove(&self, run: uuid::Uuid) -> (std::process::ExitStatus, String, String) {
        let out = self.dir.path(&format!("{run}.json"));
        audit_cli(
            "prove",
            &self.config,
            &[&run.to_string(), "--out", out.to_str().unwrap()],
        )
    }

    /// Proves run A and returns the bundle's path.
    fn bundle_a(&self) -> PathBuf {
        let (status, stdout, stderr) = self.prove(self.run_a);
        assert!(status.success(), "{stdout}{stderr}");
        assert_contains(&stdout, "3 rows of execution");
        assert_contains(&stdout, "checkpoint seq 10");
        self.dir.path(&format!("{}.json", self.run_a))
    }

    /// Proves run A, expecting the checkpoint at `seq`, and returns the bundle's path.
    fn bundle_a_at(&self, seq: u64) -> PathBuf {
        let (status, stdout, stderr) = self.prove(self.run_a);
        assert!(status.success(), "{stdout}{stderr}");
        assert_contains(&stdout, &format!("checkpoint seq {seq}"));
        self.dir.path(&format!("{}.json", self.run_a))
    }

    fn verify_bundle(&self, file: &Path, key: &Path) -> (Option<i32>, String, String) {
        verify_bundle(file, key)
    }

    fn checkpoint_text(&self, extra: &[&str]) -> String {
        let (status, stdout, stderr) = audit_cli("checkpoint-text", &self.config, extra);
        assert!(status.success(), "{stdout}{stderr}");
        stdout
    }
}

fn verify_bundle(file: &Path, key: &Path) -> (Option<i32>, String, String) {
    let (status, stdout, stderr) = run_cli(
        &[
            "audit",
            "verify-bundle",
            file.to_str().unwrap(),
            "--trusted-node-key",
            key.to_str().unwrap(),
        ],
        &[],
    );
    (status.code(), stdout, stderr)
}

async fn append(handle: &AuditHandle, i: usize, run: Option<uuid::Uuid>) {
    let mut event = AuditEvent::new("test.event", Actor::System).with("i", i);
    if let Some(run) = run {
        event = event.execution(run);
    }
    handle.append(event).await.expect("append");
}

fn edit_bundle(path: &Path, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let mut bundle: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    edit(&mut bundle);
    let edited = path.with_extension("edited.json");
    std::fs::write(&edited, serde_json::to_vec(&bundle).unwrap()).unwrap();
    edited
}

#[tokio::test]
async fn a_proved_run_verifies_offline_with_the_node_key() {
    let fixture = Fixture::new().await;
    let bundle = fixture.bundle_a();
    let (code, stdout, stderr) = fixture.verify_bundle(&bundle, &fixture.dir.path("node.pub"));
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert_contains(
        &stdout,
        &format!(
            "ok: 3 rows of execution {} are in node n1's signed tree of 10 rows",
            fixture.run_a
        ),
    );
    // The database is not needed: drop it and verify again.
    let Fixture { db, dir, .. } = fixture;
    drop(db);
    let (code, stdout, stderr) = verify_bundle(&bundle, &dir.path("node.pub"));
    assert_eq!(code, Some(0), "{stdout}{stderr}");
}

#[tokio::test]
async fn a_tampered_row_a_bad_proof_and_another_key_each_fail_naming_the_reason() {
    let fixture = Fixture::new().await;
    let bundle = fixture.bundle_a();
    let node_pub = fixture.dir.path("node.pub");

    let tampered = edit_bundle(&bundle, |b| b["rows"][1]["event_data"]["i"] = 99.into());
    let (code, stdout, stderr) = fixture.verify_bundle(&tampered, &node_pub);
    assert_eq!(code, Some(2), "{stdout}{stderr}");
    assert_contains(&stderr, "row seq 5 was tampered with");

    let bad_proof = edit_bundle(&bundle, |b| {
        b["rows"][0]["inclusion_proof"][0] = BASE64.encode([7u8; 32]).into();
    });
    let (code, _, stderr) = fixture.verify_bundle(&bad_proof, &node_pub);
    assert_eq!(code, Some(2));
    assert_contains(&stderr, "row seq 2: inclusion proof fails");

    let other_dir = tempfile::tempdir().unwrap();
    NodeKey::load_or_generate(&other_dir.path().join("node.key")).unwrap();
    let (code, _, stderr) = fixture.verify_bundle(&bundle, &other_dir.path().join("node.pub"));
    assert_eq!(code, Some(2));
    assert_contains(
        &stderr,
        "carries no signature by the trusted key `playbookd/n1`",
    );

    let (code, _, stderr) = fixture.verify_bundle(&fixture.dir.path("missing.json"), &node_pub);
    assert_eq!(
        code,
        Some(1),
        "an unreadable bundle is not a verdict: {stderr}"
    );
}

#[tokio::test]
async fn prove_refuses_a_damaged_chain_and_rows_after_the_newest_checkpoint() {
    let fixture = Fixture::new().await;
    let (status, _, stderr) = fixture.prove(fixture.run_c);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert_contains(
        &stderr,
        "go up to seq 11, after the newest checkpoint (seq 10)",
    );

    fixture
        .db
        .client()
        .await
        .batch_execute(
            "ALTER TABLE playbook_audit_log DISABLE TRIGGER USER; \
             UPDATE playbook_audit_log SET event_data = jsonb_set(event_data, '{i}', '42') \
             WHERE seq = 3; \
             ALTER TABLE playbook_audit_log ENABLE TRIGGER USER;",
        )
        .await
        .unwrap();
    let (status, stdout, stderr) = fixture.prove(fixture.run_a);
    assert_eq!(status.code(), Some(2), "{stdout}{stderr}");
    assert_contains(&stderr, "refusing to sign evidence over a damaged chain");
    assert_contains(&stderr, "BREACH at seq 3: modified");
    assert!(
        !fixture
            .dir
            .path(&format!("{}.json", fixture.run_a))
            .exists(),
        "no bundle is written"
    );
}

/// The checkpoint note and the bundle's inclusion proofs verify with Cloudflare's `signed_note`
/// and `tlog_tiles` (C2SP signed-note, tlog-checkpoint, and Go sumdb's RFC 6962 proof checks).
#[tokio::test]
async fn an_independent_c2sp_implementation_verifies_the_note_and_the_proofs() {
    let fixture = Fixture::new().await;
    let note_text = fixture.checkpoint_text(&[]);
    let our_vkey = fixture.checkpoint_text(&["--vkey"]);

    // Their verifier key, built by them from the SPKI public key.
    let pem = std::fs::read_to_string(fixture.dir.path("node.pub")).unwrap();
    let public = ed25519_dalek::VerifyingKey::from_public_key_pem(&pem).unwrap();
    let vkey = signed_note::new_ed25519_verifier_key("playbookd/n1", &public);
    assert_eq!(our_vkey.trim_end(), vkey, "same key ID and encoding");
    let verifier = signed_note::StandardVerifier::new(&vkey).unwrap();
    let verifiers = signed_note::VerifierList::new(vec![Box::new(verifier.clone())]);

    let note = signed_note::Note::from_bytes(note_text.as_bytes()).unwrap();
    let (verified, _) = note
        .verify(&verifiers)
        .expect("signed_note verifies the note");
    assert_eq!(verified.len(), 1);
    let checkpoint = tlog_tiles::Checkpoint::from_bytes(note.text()).unwrap();
    assert_eq!(checkpoint.origin(), "playbookd/n1");
    assert_eq!(checkpoint.size(), 10);
    assert!(checkpoint.extension().starts_with("chain-head "));

    // An altered note fails their check.
    let altered = note_text.replacen("\n10\n", "\n9\n", 1);
    let altered = signed_note::Note::from_bytes(altered.as_bytes()).unwrap();
    assert!(altered.verify(&verifiers).is_err());

    // The bundle's proofs against that root, checked by tlog_tiles (leaf data = chain hash).
    let bundle: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture.bundle_a()).unwrap()).unwrap();
    let bundle_note =
        signed_note::Note::from_bytes(bundle["checkpoint"].as_str().unwrap().as_bytes()).unwrap();
    bundle_note.verify(&verifiers).unwrap();
    let root = *tlog_tiles::Checkpoint::from_bytes(bundle_note.text())
        .unwrap()
        .hash();
    assert_eq!(&root, checkpoint.hash());
    let rows = bundle["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 3);
    for row in rows {
        let seq = row["seq"].as_u64().unwrap();
        let hash = hex::decode(row["hash"].as_str().unwrap()).unwrap();
        let proof: Vec<tlog_tiles::Hash> = row["inclusion_proof"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| {
                let bytes = BASE64.decode(h.as_str().unwrap()).unwrap();
                tlog_tiles::Hash(bytes.try_into().unwrap())
            })
            .collect();
        let leaf = tlog_tiles::record_hash(&hash);
        tlog_tiles::check_record(&proof, 10, root, seq - 1, leaf)
            .unwrap_or_else(|e| panic!("tlog_tiles rejects the proof of seq {seq}: {e:?}"));
        assert!(
            tlog_tiles::check_record(&proof, 10, root, seq % 10, leaf).is_err(),
            "and rejects it at another index"
        );
    }
}

/// Our consistency proofs and roots agree with tlog_tiles for every pair of sizes up to 64.
#[test]
fn consistency_proofs_verify_with_tlog_tiles() {
    let leaves: Vec<[u8; 32]> = (0u32..64)
        .map(|i| merkle::leaf_hash(&i.to_be_bytes()))
        .collect();
    for new in 1..=64usize {
        let tree = Tree::new(leaves[..new].to_vec());
        let new_root = tlog_tiles::Hash(tree.root());
        for old in 1..=new {
            let old_root = tlog_tiles::Hash(merkle::root_of(&leaves[..old]));
            let proof: Vec<tlog_tiles::Hash> = tree
                .consistency_proof(old as u64)
                .unwrap()
                .into_iter()
                .map(tlog_tiles::Hash)
                .collect();
            tlog_tiles::check_tree(&proof, new as u64, new_root, old as u64, old_root)
                .unwrap_or_else(|e| panic!("{old} -> {new}: {e:?}"));
        }
    }
}

/// The note stored with each checkpoint (migration V9) signs the root of the whole chain, kept
/// incrementally by the writer, also after a restart that seeds it from the stored hashes; a
/// bundle proves consistency from the checkpoint that first covered the run, which tlog_tiles
/// accepts; a changed proof is a forked tree and an earlier note by another key is named.
#[tokio::test]
async fn stored_notes_sign_the_chain_root_and_bundles_prove_consistency_with_earlier_ones() {
    let fixture = Fixture::new().await;
    let client = fixture.db.client().await;
    let stored_note = |seq: i64| {
        let client = &client;
        async move {
            client
                .query_one(
                    "SELECT note FROM audit_checkpoints WHERE node_id = 'n1' AND seq = $1",
                    &[&seq],
                )
                .await
                .unwrap()
                .get::<_, Option<String>>(0)
                .expect("a note is stored with the checkpoint")
        }
    };
    let full_root = |size: i64| {
        let client = &client;
        async move {
            let rows = client
                .query(
                    "SELECT hash FROM playbook_audit_log WHERE node_id = 'n1' AND seq <= $1 ORDER BY seq",
                    &[&size],
                )
                .await
                .unwrap();
            Tree::new(
                rows.iter()
                    .map(|row| merkle::leaf_hash(row.get::<_, &[u8]>(0)))
                    .collect(),
            )
            .root()
        }
    };
    let pem = std::fs::read_to_string(fixture.dir.path("node.pub")).unwrap();
    let public = ed25519_dalek::VerifyingKey::from_public_key_pem(&pem).unwrap();
    let vkey = signed_note::new_ed25519_verifier_key("playbookd/n1", &public);
    let verifiers = signed_note::VerifierList::new(vec![Box::new(
        signed_note::StandardVerifier::new(&vkey).unwrap(),
    )]);
    let their_root = |text: &str| {
        let note = signed_note::Note::from_bytes(text.as_bytes()).unwrap();
        note.verify(&verifiers)
            .expect("Cloudflare's signed_note verifies the stored note");
        let checkpoint = tlog_tiles::Checkpoint::from_bytes(note.text()).unwrap();
        (checkpoint.size(), *checkpoint.hash())
    };

    let first = stored_note(10).await;
    assert_eq!(
        fixture.checkpoint_text(&[]),
        first,
        "checkpoint-text prints the stored note"
    );
    let (size, root) = their_root(&first);
    assert_eq!((size, root.0), (10, full_root(10).await));

    // A second writer on the same chain seeds its frontier from the stored hashes.
    fixture._stop.cancel();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stop = CancellationToken::new();
    let (handle, _task) = audit::start_writer(fixture.db.config.clone(), "n1".into(), stop.clone())
        .await
        .expect("restart writer");
    for i in 11..14 {
        append(&handle, i, None).await;
    }
    let store = Store::connect(&fixture.db.config, 2, Duration::from_secs(5))
        .await
        .unwrap();
    let key = NodeKey::load(&fixture.dir.path("node.key")).unwrap();
    let checkpointer = Checkpointer::new(handle.clone(), store, Arc::new(key));
    assert_eq!(checkpointer.checkpoint().await.unwrap().unwrap().seq, 14);
    let second = stored_note(14).await;
    let (size, root) = their_root(&second);
    assert_eq!((size, root.0), (14, full_root(14).await));

    // Run A's last row (seq 9) was first covered at 10: the bundle proves 10 -> 14.
    let bundle_path = fixture.bundle_a_at(14);
    let bundle: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&bundle_path).unwrap()).unwrap();
    assert_eq!(bundle["checkpoint"], second.as_str());
    assert_eq!(bundle["consistency"][0]["checkpoint"], first.as_str());
    let proof: Vec<tlog_tiles::Hash> =
        crate::helpers::tlog_hashes(&bundle["consistency"][0]["proof"]);
    let (_, old_root) = their_root(&first);
    tlog_tiles::check_tree(&proof, 14, root, 10, old_root)
        .expect("tlog_tiles accepts the consistency proof 10 -> 14");
    let node_pub = fixture.dir.path("node.pub");
    let (code, stdout, stderr) = fixture.verify_bundle(&bundle_path, &node_pub);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert_contains(&stdout, "signed tree of 14 rows");
    assert_contains(&stdout, "extends the earlier signed trees of 10 rows");

    let forked = edit_bundle(&bundle_path, |b| {
        b["consistency"][0]["proof"][0] = BASE64.encode([5u8; 32]).into();
    });
    let (code, _, stderr) = fixture.verify_bundle(&forked, &node_pub);
    assert_eq!(code, Some(2), "{stderr}");
    assert_contains(
        &stderr,
        "forked tree: the checkpoint of 14 rows does not extend the earlier one of 10 rows",
    );
    let other_dir = tempfile::tempdir().unwrap();
    let other = NodeKey::load_or_generate(&other_dir.path().join("node.key")).unwrap();
    let head = playbookd::note::TreeHead {
        origin: "playbookd/n1".into(),
        size: 10,
        root: old_root.0,
        chain_head: [0; 32],
    };
    let foreign_note =
        playbookd::note::signed_note(&head, &other.verifying_key(), |t| other.sign_note_text(t));
    let foreign = edit_bundle(&bundle_path, |b| {
        b["consistency"][0]["checkpoint"] = foreign_note.into();
    });
    let (code, _, stderr) = fixture.verify_bundle(&foreign, &node_pub);
    assert_eq!(code, Some(2), "{stderr}");
    assert_contains(
        &stderr,
        "earlier checkpoint #0: the checkpoint carries no signature by the trusted key",
    );
    stop.cancel();
}
