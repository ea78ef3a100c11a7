//! Witnesses (issue #24): `playbookd witness` speaks C2SP tlog-witness (status codes, 409 body,
//! atomic state that survives a restart), its cosignatures verify through Cloudflare's
//! `signed_note` (note parsing, key-ID matching) with the cosignature/v1 message built here from
//! the spec, and a daemon configured with a witness gets cosignatures stored, which `audit verify`
//! and `audit verify-bundle` count against `--require-witnesses`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{Signer, SigningKey, Verifier as _};
use futures::FutureExt;
use playbookd::merkle::{Hash, Tree, leaf_hash};
use playbookd::note::{self, TreeHead, VerifierKey};
use playbookd::store::Store;
use playbookd::store::audit::{self, Actor, AuditEvent};
use playbookd::store::checkpoint::{Checkpoint, Checkpointer, NodeKey};
use playbookd::witness::submit::{Submitted, Submitter, request_body};
use playbookd::witness::{Witness, WitnessConfig};
use tokio_util::sync::CancellationToken;

use crate::helpers::{
    ChildDaemon, DaemonDir, TestDb, assert_contains, audit_verify, configured, run_cli,
};

const LIMIT: Duration = Duration::from_secs(60);
const ORIGIN: &str = "playbookd/n1";

/// A cosignature/v1 verifier for `signed_note`: key name and ID matching and note parsing are
/// the crate's; the message is the spec's `cosignature/v1\ntime T\n` + text.
struct CosignatureV1Verifier {
    name: String,
    key: ed25519_dalek::VerifyingKey,
}

impl signed_note::Verifier for CosignatureV1Verifier {
    fn name(&self) -> &str {
        &self.name
    }
    fn key_id(&self) -> u32 {
        let mut typed = vec![0x04];
        typed.extend_from_slice(self.key.as_bytes());
        signed_note::key_id(&self.name, &typed)
    }
    fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        let Ok(bytes) = <[u8; 72]>::try_from(sig) else {
            return false;
        };
        let time = u64::from_be_bytes(bytes[..8].try_into().unwrap());
        let mut message = format!("cosignature/v1\ntime {time}\n").into_bytes();
        message.extend_from_slice(msg);
        let signature = ed25519_dalek::Signature::from_slice(&bytes[8..]).unwrap();
        time > 0 && self.key.verify(&message, &signature).is_ok()
    }
}

/// Checks `note` (checkpoint + the witness's lines) with `signed_note` and the witness's key.
fn independently_cosigned(note: &str, witness: &VerifierKey) -> bool {
    let verifier = CosignatureV1Verifier {
        name: witness.name.clone(),
        key: witness.key,
    };
    let list = signed_note::VerifierList::new(vec![Box::new(verifier)]);
    let parsed = signed_note::Note::from_bytes(note.as_bytes()).unwrap();
    matches!(parsed.verify(&list), Ok((verified, _)) if verified.len() == 1)
}

fn tree(size: u64, salt: u8) -> Tree {
    Tree::new(
        (0..size)
            .map(|i| {
                let mut leaf = i.to_be_bytes().to_vec();
                leaf.push(salt);
                leaf_hash(&leaf)
            })
            .collect(),
    )
}

fn signed(log: &SigningKey, tree: &Tree) -> String {
    let head = TreeHead {
        origin: ORIGIN.into(),
        size: tree.size(),
        root: tree.root(),
        chain_head: [9; 32],
    };
    note::signed_note(&head, &log.verifying_key(), |text| log.sign(text))
}

fn write_witness_config(
    dir: &Path,
    listen: &str,
    log: &ed25519_dalek::VerifyingKey,
) -> std::path::PathBuf {
    let path = dir.join("witness.toml");
    std::fs::write(
        &path,
        format!(
            "name = \"witness.test/w1\"\nkey = \"{}\"\nstate = \"{}\"\nlisten = \"{listen}\"\n\
             [[logs]]\norigin = \"{ORIGIN}\"\nvkey = \"{}\"\n",
            dir.join("witness.key").display(),
            dir.join("state.json").display(),
            note::verifier_key(ORIGIN, log)
        ),
    )
    .unwrap();
    path
}

/// A witness served in this process; stopped on drop.
struct Running {
    url: String,
    vkey: VerifierKey,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Stops serving and waits until the listener is closed.
    async fn shut_down(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(LIMIT, task).await.unwrap().unwrap();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn start_witness(config: &Path) -> Running {
    let witness = Witness::build(&WitnessConfig::load(config).unwrap())
        .await
        .unwrap();
    let url = format!("http://{}", witness.local_addr().unwrap());
    let vkey = witness.verifier_key().clone();
    let stop = CancellationToken::new();
    let task = tokio::spawn(witness.run_until_stopped(stop.clone()).map(|r| r.unwrap()));
    Running {
        url,
        vkey,
        stop,
        task: Some(task),
    }
}

async fn post(url: &str, body: String) -> (u16, Option<String>, String) {
    let response = reqwest::Client::new()
        .post(format!("{url}/add-checkpoint"))
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, content_type, response.text().await.unwrap())
}

fn body(old: u64, proof: &[Hash], note: &str) -> String {
    request_body(old, proof, note)
}

#[tokio::test]
async fn the_witness_cosigns_a_consistent_checkpoint_and_refuses_rollback_fork_bad_proof_and_unknown_keys()
 {
    let dir = tempfile::tempdir().unwrap();
    let log = SigningKey::from_bytes(&[5; 32]);
    let config = write_witness_config(dir.path(), "127.0.0.1:0", &log.verifying_key());
    let witness = start_witness(&config).await;

    // First contact: old 0, no proof.
    let t5 = tree(5, 0);
    let (status, _, cosig) = post(&witness.url, body(0, &[], &signed(&log, &t5))).await;
    assert_eq!(status, 200, "{cosig}");
    assert!(cosig.starts_with("\u{2014} witness.test/w1 ") && cosig.ends_with('\n'));
    assert!(independently_cosigned(
        &format!("{}{cosig}", signed(&log, &t5)),
        &witness.vkey
    ));
    // Cosigning another text fails the independent check: the test can fail.
    let t6 = tree(6, 0);
    let mut forged = signed(&log, &t6);
    forged.push_str(&cosig);
    assert!(!independently_cosigned(&forged, &witness.vkey));

    // A consistent extension with its proof.
    let t9 = tree(9, 0);
    let proof = t9.consistency_proof(5).unwrap();
    let (status, _, text) = post(&witness.url, body(5, &proof, &signed(&log, &t9))).await;
    assert_eq!(status, 200, "{text}");

    // Rollback: an old size that is not the witness's (it holds 9) → 409 with its size.
    let t7 = tree(7, 0);
    let (status, content_type, text) = post(
        &witness.url,
        body(5, &t7.consistency_proof(5).unwrap(), &signed(&log, &t7)),
    )
    .await;
    assert_eq!((status, text.as_str()), (409, "9\n"));
    assert_eq!(content_type.as_deref(), Some("text/x.tlog.size"));
    // A checkpoint smaller than the old size: 400.
    let (status, _, _) = post(&witness.url, body(9, &[], &signed(&log, &t7))).await;
    assert_eq!(status, 400);

    // Fork: the same size with another root.
    let fork = tree(9, 1);
    let (status, _, text) = post(&witness.url, body(9, &[], &signed(&log, &fork))).await;
    assert_eq!(status, 422, "{text}");
    assert_contains(&text, "fork");

    // A consistency proof that does not verify (a forked 12 from the cosigned 9).
    let fork12 = tree(12, 1);
    let (status, _, text) = post(
        &witness.url,
        body(
            9,
            &fork12.consistency_proof(9).unwrap(),
            &signed(&log, &fork12),
        ),
    )
    .await;
    assert_eq!(status, 422, "{text}");

    // Signed by another key: 403; another origin: 404; garbage: 400.
    let t12 = tree(12, 0);
    let other = SigningKey::from_bytes(&[6; 32]);
    let (status, _, _) = post(
        &witness.url,
        body(9, &t12.consistency_proof(9).unwrap(), &signed(&other, &t12)),
    )
    .await;
    assert_eq!(status, 403);
    let foreign = signed(&log, &t12).replace(ORIGIN, "playbookd/n2");
    let (status, _, _) = post(&witness.url, body(9, &[], &foreign)).await;
    assert_eq!(status, 404);
    let (status, _, _) = post(&witness.url, "old 9\nnot a proof\n\nx\n".into()).await;
    assert_eq!(status, 400);

    // Concurrent identical submissions from old 9: exactly one is cosigned, the rest see 12.
    let request = body(9, &t12.consistency_proof(9).unwrap(), &signed(&log, &t12));
    let answers =
        futures::future::join_all((0..8).map(|_| post(&witness.url, request.clone()))).await;
    let statuses: Vec<u16> = answers.iter().map(|(s, _, _)| *s).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 409).count(),
        7,
        "{statuses:?}"
    );

    // A restart keeps the state: old 0 now conflicts with the size it holds.
    witness.shut_down().await;
    let restarted = start_witness(&config).await;
    let (status, _, text) = post(&restarted.url, body(0, &[], &signed(&log, &t12))).await;
    assert_eq!((status, text.as_str()), (409, "12\n"));
    // The same key after the restart.
    let (_, _, cosig) = post(&restarted.url, body(12, &[], &signed(&log, &t12))).await;
    assert!(independently_cosigned(
        &format!("{}{cosig}", signed(&log, &t12)),
        &restarted.vkey
    ));
}

#[tokio::test]
async fn the_witness_command_refuses_a_readable_key_and_prints_its_vkey() {
    let dir = tempfile::tempdir().unwrap();
    let log = SigningKey::from_bytes(&[5; 32]);
    let config = write_witness_config(dir.path(), "127.0.0.1:0", &log.verifying_key());
    let config_arg = config.to_str().unwrap();
    let (status, stdout, stderr) = run_cli(&["witness", "--config", config_arg, "--vkey"], &[]);
    assert!(status.success(), "{stdout}{stderr}");
    let vkey: VerifierKey = stdout.trim().parse().unwrap();
    assert_eq!(vkey.name, "witness.test/w1");
    assert_eq!(vkey.key_type, note::KeyType::CosignatureV1);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        dir.path().join("witness.key"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    let (status, _, stderr) = run_cli(&["witness", "--config", config_arg], &[]);
    assert_eq!(status.code(), Some(78), "{stderr}");
    assert_contains(&stderr, "other users could read it");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn cosignature_count(db: &TestDb) -> i64 {
    db.client()
        .await
        .query_one("SELECT count(*) FROM audit_cosignatures", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn a_daemon_with_a_witness_stores_cosignatures_and_verify_requires_them() {
    let db = TestDb::new().await;
    let dir = DaemonDir::new();
    let node_key = NodeKey::load_or_generate(&dir.path("node.key")).unwrap();
    let witness_dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let witness_config = write_witness_config(
        witness_dir.path(),
        &format!("127.0.0.1:{port}"),
        &node_key.verifying_key(),
    );
    let (status, witness_vkey, stderr) = run_cli(
        &[
            "witness",
            "--config",
            witness_config.to_str().unwrap(),
            "--vkey",
        ],
        &[],
    );
    assert!(status.success(), "{stderr}");
    let witness_vkey = witness_vkey.trim().to_owned();
    let config = dir.write_config(
        &db,
        "n1",
        &format!(
            "[audit]\ncheckpoint_interval_seconds = 1\n[[audit.witnesses]]\n\
             name = \"witness.test/w1\"\nurl = \"http://127.0.0.1:{port}/\"\nvkey = \"{witness_vkey}\"\n"
        ),
    );
    // The witness is not up yet: checkpoints are signed, submissions fail, the daemon serves.
    let mut daemon = ChildDaemon::start(&config, &dir.path("daemon.log"));
    daemon.wait_for_log("playbookd ready", LIMIT);
    daemon.wait_for_log("audit checkpoint signed", LIMIT);
    daemon.wait_for_log("witness submission failed", LIMIT);
    let witness_args = ["--witness-key", &witness_vkey, "--require-witnesses", "1"];
    let (status, stdout, stderr) = audit_verify(&config, &witness_args);
    assert_eq!(status.code(), Some(4), "{stdout}{stderr}");
    assert_contains(&stdout, "TOO FEW WITNESSES: 1 required");
    assert_eq!(cosignature_count(&db).await, 0);

    // The witness comes up: the next retry gets the newest checkpoint cosigned.
    let witness = start_witness(&witness_config).await;
    assert_eq!(witness.vkey.to_string(), witness_vkey);
    let deadline = tokio::time::Instant::now() + LIMIT;
    while cosignature_count(&db).await == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}",
            daemon.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    daemon.wait_for_log("checkpoint cosigned by witness", LIMIT);
    let (status, stdout, stderr) = audit_verify(&config, &witness_args);
    assert!(status.success(), "{stdout}{stderr}");
    assert_contains(
        &stdout,
        "cosigned by 1 trusted witness(es) (witness.test/w1): ok",
    );
    // Another witness's key is not this one's: 0 trusted cosigners.
    let stranger = VerifierKey {
        name: "witness.test/w2".into(),
        key_type: note::KeyType::CosignatureV1,
        key: SigningKey::from_bytes(&[8; 32]).verifying_key(),
    }
    .to_string();
    let (status, stdout, _) = audit_verify(
        &config,
        &["--witness-key", &stranger, "--require-witnesses", "1"],
    );
    assert_eq!(status.code(), Some(4), "{stdout}");
    daemon.stop_within(LIMIT);
}

#[tokio::test]
async fn a_bundle_carries_the_cosignatures_and_verify_bundle_counts_them() {
    let (db, dir, config) = configured("n1", "").await;
    let stop = CancellationToken::new();
    let (handle, _task) = audit::start_writer(db.config.clone(), "n1".into(), stop.clone())
        .await
        .unwrap();
    let store = Store::connect(&db.config, 2, Duration::from_secs(5))
        .await
        .unwrap();
    let key = Arc::new(NodeKey::load_or_generate(&dir.path("node.key")).unwrap());
    let checkpointer = Checkpointer::new(handle.clone(), store.clone(), key.clone());
    let run = uuid::Uuid::new_v4();
    for i in 0..6 {
        let mut event = AuditEvent::new("test.event", Actor::System).with("i", i);
        if i % 2 == 0 {
            event = event.execution(run);
        }
        handle.append(event).await.unwrap();
    }
    let _: Checkpoint = checkpointer.checkpoint().await.unwrap().unwrap();

    let witness_dir = tempfile::tempdir().unwrap();
    let witness_config =
        write_witness_config(witness_dir.path(), "127.0.0.1:0", &key.verifying_key());
    let witness = start_witness(&witness_config).await;
    let endpoint: playbookd::config::WitnessEndpoint = toml::from_str(&format!(
        "name = \"witness.test/w1\"\nurl = \"{}\"\nvkey = \"{}\"\n",
        witness.url, witness.vkey
    ))
    .unwrap();
    let submitter = Submitter::new(vec![endpoint.clone()], store, key.clone(), "n1".into());
    assert_eq!(
        submitter.submit(&endpoint).await.unwrap(),
        Submitted::Cosigned { seq: 6 }
    );
    // Already cosigned: nothing to send.
    assert_eq!(
        submitter.submit(&endpoint).await.unwrap(),
        Submitted::NothingNew
    );
    // More rows, a new checkpoint: submitted with a consistency proof from 6.
    handle
        .append(AuditEvent::new("test.event", Actor::System).execution(run))
        .await
        .unwrap();
    let _: Checkpoint = checkpointer.checkpoint().await.unwrap().unwrap();
    assert_eq!(
        submitter.submit(&endpoint).await.unwrap(),
        Submitted::Cosigned { seq: 7 }
    );

    let out = dir.path("bundle.json");
    let (status, stdout, stderr) = run_cli(
        &[
            "audit",
            "prove",
            "--config",
            config.to_str().unwrap(),
            &run.to_string(),
            "--out",
            out.to_str().unwrap(),
        ],
        &[],
    );
    assert!(status.success(), "{stdout}{stderr}");
    let bundle: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let checkpoint = bundle["checkpoint"].as_str().unwrap();
    assert!(
        independently_cosigned(checkpoint, &witness.vkey),
        "{checkpoint}"
    );

    let node_pub = dir.path("node.pub");
    let verify = |extra: &[&str]| {
        let mut args = vec![
            "audit",
            "verify-bundle",
            out.to_str().unwrap(),
            "--trusted-node-key",
            node_pub.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        run_cli(&args, &[])
    };
    let vkey = witness.vkey.to_string();
    let (status, stdout, stderr) = verify(&["--witness-key", &vkey, "--require-witnesses", "1"]);
    assert!(status.success(), "{stdout}{stderr}");
    assert_contains(
        &stdout,
        "checkpoint seq 7 cosigned by 1 trusted witness(es)",
    );
    let (status, stdout, stderr) = verify(&["--require-witnesses", "1"]);
    assert_eq!(status.code(), Some(78), "{stdout}{stderr}");
    let stranger = VerifierKey {
        name: "witness.test/w2".into(),
        key_type: note::KeyType::CosignatureV1,
        key: SigningKey::from_bytes(&[8; 32]).verifying_key(),
    }
    .to_string();
    let (status, stdout, stderr) =
        verify(&["--witness-key", &stranger, "--require-witnesses", "1"]);
    assert_eq!(status.code(), Some(4), "{stdout}{stderr}");
    assert_contains(&stderr, "only 0 trusted witness(es) cosigned");

    // A cosignature line altered in the bundle: a trusted key's line that fails is a failure.
    let line_start = checkpoint.find("\u{2014} witness.test/w1 ").unwrap();
    let blob_start = line_start + "\u{2014} witness.test/w1 ".len();
    let blob_end = blob_start + checkpoint[blob_start..].find('\n').unwrap();
    let mut blob = BASE64.decode(&checkpoint[blob_start..blob_end]).unwrap();
    blob[20] ^= 1;
    let altered = format!(
        "{}{}{}",
        &checkpoint[..blob_start],
        BASE64.encode(blob),
        &checkpoint[blob_end..]
    );
    let mut edited = bundle.clone();
    edited["checkpoint"] = altered.into();
    std::fs::write(&out, serde_json::to_vec(&edited).unwrap()).unwrap();
    let (status, stdout, stderr) = verify(&["--witness-key", &vkey]);
    assert_eq!(status.code(), Some(2), "{stdout}{stderr}");
    assert_contains(&stderr, "does not verify");
    stop.cancel();
}
