//! The registry against a real database: each bad file is rejected with its own reason while
//! the valid playbooks beside it load.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use std::sync::Arc;

use playbookd::actions::limits::ActionLimits;
use playbookd::config::ActionsConfig;
use playbookd::registry::signature::{self, Algorithm, PublicKey, Signer, TrustedKeys};
use playbookd::registry::{LoadSummary, Registry, RegistryPaths, load_pinned};
use playbookd::store::audit::{self, AuditHandle};
use tokio_util::sync::CancellationToken;

use crate::helpers::{DaemonDir, TestDb, openssl, openssl_key_pair, query_column, query_value};

struct Fixture {
    db: TestDb,
    dir: DaemonDir,
    audit: AuditHandle,
    shutdown: CancellationToken,
}

impl Fixture {
    async fn new() -> Fixture {
        let db = TestDb::new().await;
        let dir = DaemonDir::new();
        let shutdown = CancellationToken::new();
        let (audit, _task) =
            audit::start_writer(db.config.clone(), "node-r".into(), shutdown.clone())
                .await
                .unwrap();
        Fixture {
            db,
            dir,
            audit,
            shutdown,
        }
    }

    fn paths(&self) -> RegistryPaths {
        RegistryPaths {
            playbooks: self.dir.path("playbooks"),
            trusted_keys: self.dir.path("trusted-keys"),
            bindings: self.dir.path("bindings.yaml"),
        }
    }

    /// A new registry over the same directory and database (as after a restart).
    async fn load(&self) -> (Registry, LoadSummary) {
        self.load_with(ActionsConfig::default()).await
    }

    /// Like [`Fixture::load`], under the limits of `actions` (the config's `[actions]`).
    async fn load_with(&self, actions: ActionsConfig) -> (Registry, LoadSummary) {
        Registry::load(
            self.paths(),
            Arc::new(ActionLimits::from_config(&actions)),
            self.audit.clone(),
        )
        .await
        .unwrap()
    }

    /// Writes and signs `playbooks/NAME.yaml`.
    fn playbook(&self, name: &str, id: &str, version: u32, risk: &str, dual: bool) -> PathBuf {
        self.dir.write_signed(
            &format!("playbooks/{name}.yaml"),
            &playbook_text(id, version, risk),
            dual,
        )
    }

    async fn audit_events(&self, event_type: &str) -> Vec<serde_json::Value> {
        query_column(
            &self.db.client().await,
            "SELECT event_data FROM playbook_audit_log WHERE event_type = $1 ORDER BY seq",
            &[&event_type],
        )
        .await
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn playbook_text(id: &str, version: u32, risk: &str) -> String {
    format!(
        "id: {id}\nversion: {version}\nname: Notify the SOC\nowners: {{technical: sec@example.org, operational: soc@example.org}}\n\
         steps:\n  - id: tell\n    action: notify\n    with: {{message: \"hello\"}}\n    risk: {risk}\n    rollback: none\n"
    )
}

/// Asserts that exactly `file` was rejected, with `label`, that the rejection was audited
/// naming the file and reason, and that the valid playbook `good` is active.
async fn assert_only_rejection(
    f: &Fixture,
    summary: &LoadSummary,
    registry: &Registry,
    file: &str,
    label: &str,
) {
    let playbook_rejections: Vec<_> = summary
        .rejections
        .iter()
        .filter(|r| r.file.starts_with(f.dir.path("playbooks")))
        .collect();
    assert_eq!(playbook_rejections.len(), 1, "{:#?}", summary.rejections);
    let rejection = playbook_rejections[0];
    assert!(rejection.file.ends_with(file), "{rejection:?}");
    assert_eq!(rejection.reason.label(), label, "{}", rejection.reason);
    assert!(
        registry.active("good").is_some(),
        "the valid playbook beside it must load"
    );

    let audited = f.audit_events("playbook.rejected").await;
    assert!(
        audited.iter().any(
            |event| event["reason"] == label && event["file"].as_str().unwrap().ends_with(file)
        ),
        "no playbook.rejected event for {file} with reason {label}: {audited:#?}"
    );
}

#[tokio::test]
async fn valid_playbooks_load_are_recorded_and_can_be_reloaded_pinned() {
    let f = Fixture::new().await;
    f.playbook("good", "good", 1, "low", false);
    f.playbook("crit", "crit", 2, "critical", true);
    let (registry, summary) = f.load().await;
    assert!(
        summary
            .rejections
            .iter()
            .all(|r| r.reason.label() == "missing"),
        "{:#?}",
        summary.rejections
    );
    assert_eq!(summary.loaded, 2);
    let crit = registry.active("crit").unwrap();
    assert_eq!(crit.version(), 2);
    assert_eq!(crit.signers().len(), 2);
    assert_eq!(registry.catalog().playbooks().count(), 2);

    let client = f.db.client().await;
    let row = client
        .query_one("SELECT sha256, signer_key_ids, content FROM playbook_versions WHERE playbook_id = 'crit'", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, Vec<u8>>(0), crit.sha256().to_vec());
    assert_eq!(row.get::<_, Vec<String>>(1).len(), 2);
    assert_eq!(row.get::<_, Vec<u8>>(2).as_slice(), &crit.bytes()[..]);
    assert_eq!(f.audit_events("playbook.loaded").await.len(), 2);

    // Resume: the pinned version comes back from the database even after the file is gone.
    std::fs::remove_file(f.dir.path("playbooks/crit.yaml")).unwrap();
    let catalog = registry.catalog();
    let keys = catalog.keys();
    let pinned = load_pinned(&client, keys, "crit", 2, &crit.sha256())
        .await
        .unwrap();
    assert_eq!(pinned.playbook().steps.len(), 1);
    assert_eq!(pinned.sha256(), crit.sha256());
    assert_eq!(
        pinned.signers().len(),
        2,
        "both stored signatures verified again"
    );
    assert!(
        load_pinned(&client, keys, "crit", 2, &[0; 32])
            .await
            .is_err()
    );
    assert!(
        load_pinned(&client, keys, "crit", 3, &crit.sha256())
            .await
            .is_err()
    );

    // The signature bytes are stored beside the version, and checked again on every resume:
    // against a trust store without the signers' keys, or with only one of two for a
    // critical playbook, the stored bytes are refused.
    let stored: i64 = query_value(&client, "SELECT count(*) FROM playbook_version_signatures WHERE playbook_id = 'crit' AND version = 2", &[]).await;
    assert_eq!(stored, 2);
    let untrusted = load_pinned(
        &client,
        &playbookd::registry::signature::TrustedKeys::default(),
        "crit",
        2,
        &crit.sha256(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            untrusted,
            playbookd::registry::PinnedError::Unverified { .. }
        ),
        "{untrusted}"
    );
    assert!(untrusted.is_untrusted());
    let mut one_key = playbookd::registry::signature::TrustedKeys::default();
    let (first, origin) = keys.iter().next().unwrap();
    one_key.insert(first.clone(), origin.to_owned()).unwrap();
    let single = load_pinned(&client, &one_key, "crit", 2, &crit.sha256())
        .await
        .unwrap_err();
    assert!(
        matches!(
            single,
            playbookd::registry::PinnedError::DualControl { signers: 1, .. }
        ),
        "{single}"
    );
}

#[tokio::test]
async fn tampered_byte_is_rejected() {
    let f = Fixture::new().await;
    f.playbook("good", "good", 1, "low", false);
    let path = f.playbook("bad", "bad", 1, "low", false);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[3] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let (registry, summary) = f.load().await;
    assert_only_rejection(&f, &summary, &registry, "bad.yaml", "signature_invalid").await;
    assert!(registry.active("bad").is_none());
}

#[tokio::test]
async fn signature_by_an_untrusted_key_is_rejected() {
    let f = Fixture::new().await;
    f.playbook("good", "good", 1, "low", false);
    let stranger = f.dir.path("stranger");
    Signer::keygen(Algorithm::Ed25519, &stranger).unwrap();
    let pem = std::fs::read_to_string(f.dir.path("stranger.key")).unwrap();
    let stranger = Signer::load(&pem, &stranger).unwrap();
    let text = playbook_text("bad", 1, "low");
    std::fs::write(f.dir.path("playbooks/bad.yaml"), &text).unwrap();
    std::fs::write(
        f.dir.path("playbooks/bad.yaml.sig"),
        stranger.sign(text.as_bytes()),
    )
    .unwrap();
    let (registry, summary) = f.load().await;
    assert_only_rejection(&f, &summary, &registry, "bad.yaml", "signature_invalid").await;
}

#[tokio::test]
async fn truncated_signature_is_rejected() {
    let f = Fixture::new().await;
    f.playbook("good", "good", 1, "low", false);
    let path = f.playbook("bad", "bad", 1, "low", false);
    let sig = signature::with_suffix(&path, ".sig");
    let bytes = std::fs::read(&sig).unwrap();
    std::fs::write(&sig, &bytes[..40]).unwrap();
    let (registry, summary) = f.load().await;
    assert_only_rejection(&f, &summary, &registry, "bad.yaml", "signature_malformed").await;
}

#[tokio::test]
async fn missing_signature_is_rejected() {
    let f = Fixture::new().await;
    f.playbook("good", "good", 1, "low", false);
    std::fs::write(
        f.dir.path("playbooks/bad.yaml"),
        playbook_text("bad", 1, "low"),
    )
    .unwrap();
    let (registry, summary) = f.load().await;
    assert_only_rejection(&f, &summary, &registry, "bad.yaml", "signature_missing").await;
}

#[tokio::test]
async fn rsa_2048_trusted_key_is_refused_naming_the_file_and_its_playbooks_rejected() {
    let f = Fixture::new().await;
    f.playbook("good", "good", 1, "low", false);
    let key = f.dir.path("weak.key");
    let weak_pub = f.dir.path("trusted-keys/weak.pub");
    openssl_key_pair("RSA", Some("rsa_keygen_bits:2048"), &key, &weak_pub);
    let doc = f.dir.path("playbooks/bad.yaml");
    std::fs::write(&doc, playbook_text("bad", 1, "low")).unwrap();
    let sig = signature::with_suffix(&doc, ".sig");
    openssl(&[
        "dgst",
        "-sha256",
        "-sign",
        key.to_str().unwrap(),
        "-out",
        sig.to_str().unwrap(),
        doc.to_str().unwrap(),
    ]);

    let (registry, summary) = f.load().await;
    assert_eq!(summary.refused_keys.len(), 1);
    assert_eq!(summary.refused_keys[0].path, weak_pub);
    assert!(
        summary.refused_keys[0]
            .error
            .to_string()
            .contains("weak.pub")
    );
    let refused = f.audit_events("trusted_key.refused").await;
    assert!(
        refused[0]["file"].as_str().unwrap().ends_with("weak.pub"),
        "{refused:?}"
    );
    assert_only_rejection(&f, &summary, &registry, "bad.yaml", "signature_malformed").await;
}

#[tokio::test]
async fn unknown_field_is_rejected() {
    let f = Fixture::new().await;
    f.playbook("good", "good", 1, "low", false);
    let text = playbook_text("bad", 1, "low") + "run_as_root: true\n";
    f.dir.write_signed("playbooks/bad.yaml", &text, false);
    let (registry, summary) = f.load().await;
    assert_only_rejection(&f, &summary, &registry, "bad.yaml", "invalid_document").await;
}

#[tokio::test]
async fn duplicate_key_is_rejected() {
    let f = Fixture::new().await;
    f.playbook("good", "good", 1, "low", false);
    let text =
        playbook_text("bad", 1, "low").replace("name: Notify the SOC\n", "name: One\nname: Two\n");
    f.dir.write_signed("playbooks/bad.yaml", &text, false);
    let (registry, summary) = f.load().await;
    assert_only_rejection(&f, &summary, &registry, "bad.yaml", "invalid_document").await;
}

#[tokio::test]
async fn ten_megabyte_file_is_rejected() {
    let f = Fixture::new().await;
    f.playbook("good", "good", 1, "low", false);
    let text = playbook_text("bad", 1, "low") + &format!("# {}\n", "x".repeat(10 * 1024 * 1024));
    f.dir.write_signed("playbooks/bad.yaml", &text, false);
    let (registry, summary) = f.load().await;
    assert_only_rejection(&f, &summary, &registry, "bad.yaml", "too_large").await;
}

#[tokio::test]
async fn critical_playbook_with_one_signature_is_rejected() {
    let f = Fixture::new().await;
    f.playbook("good", "good", 1, "low", false);
    f.playbook("bad", "bad", 1, "critical", false);
    let (registry, summary) = f.load().await;
    assert_only_rejection(&f, &summary, &registry, "bad.yaml", "dual_control").await;
}

#[tokio::test]
async fn critical_playbook_signed_twice_by_the_same_key_is_rejected() {
    let f = Fixture::new().await;
    f.playbook("good", "good", 1, "low", false);
    let path = f.playbook("bad", "bad", 1, "critical", false);
    std::fs::copy(
        signature::with_suffix(&path, ".sig"),
        signature::with_suffix(&path, ".sig.2"),
    )
    .unwrap();
    let (registry, summary) = f.load().await;
    assert_only_rejection(&f, &summary, &registry, "bad.yaml", "dual_control").await;
}

#[tokio::test]
async fn group_writable_file_is_rejected() {
    let f = Fixture::new().await;
    f.playbook("good", "good", 1, "low", false);
    let path = f.playbook("bad", "bad", 1, "low", false);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o664)).unwrap();
    let (registry, summary) = f.load().await;
    assert_only_rejection(&f, &summary, &registry, "bad.yaml", "insecure_permissions").await;
}

#[tokio::test]
async fn symlink_out_of_the_directory_is_rejected() {
    let f = Fixture::new().await;
    f.playbook("good", "good", 1, "low", false);
    // A validly signed playbook, but outside the playbook directory.
    let outside = f
        .dir
        .write_signed("elsewhere.yaml", &playbook_text("bad", 1, "low"), false);
    let link = f.dir.path("playbooks/bad.yaml");
    std::os::unix::fs::symlink(&outside, &link).unwrap();
    std::os::unix::fs::symlink(
        signature::with_suffix(&outside, ".sig"),
        signature::with_suffix(&link, ".sig"),
    )
    .unwrap();
    let (registry, summary) = f.load().await;
    assert_only_rejection(&f, &summary, &registry, "bad.yaml", "symlink_outside_dir").await;
}

#[tokio::test]
async fn downgrade_after_restart_is_rejected() {
    let f = Fixture::new().await;
    f.playbook("good", "good", 1, "low", false);
    let v3 = f.playbook("bad-v3", "bad", 3, "low", false);
    let (registry, _) = f.load().await;
    assert_eq!(registry.active("bad").unwrap().version(), 3);

    // The attacker swaps the file for an older, validly signed version; the daemon restarts.
    std::fs::remove_file(&v3).unwrap();
    f.playbook("bad-v2", "bad", 2, "low", false);
    let (registry, summary) = f.load().await;
    assert_only_rejection(&f, &summary, &registry, "bad-v2.yaml", "downgrade").await;
    assert!(
        registry.active("bad").is_none(),
        "no lower version may become active"
    );
}

#[tokio::test]
async fn same_version_with_different_bytes_is_rejected_as_equivocation() {
    let f = Fixture::new().await;
    f.playbook("good", "good", 1, "low", false);
    f.playbook("bad", "bad", 4, "low", false);
    let (registry, _) = f.load().await;
    let original = registry.active("bad").unwrap().sha256();

    f.playbook("bad", "bad", 4, "high", false);
    registry.reload().await.unwrap();
    let (registry, summary) = f.load().await;
    assert_only_rejection(&f, &summary, &registry, "bad.yaml", "equivocation").await;
    assert!(registry.active("bad").is_none());
    let client = f.db.client().await;
    let stored: Vec<u8> = query_value(
        &client,
        "SELECT sha256 FROM playbook_versions WHERE playbook_id = 'bad'",
        &[],
    )
    .await;
    assert_eq!(stored, original.to_vec(), "the first recorded bytes stay");
}

#[tokio::test]
async fn highest_valid_version_is_active_and_reload_swaps_the_snapshot() {
    let f = Fixture::new().await;
    f.playbook("good-v1", "good", 1, "low", false);
    let (registry, _) = f.load().await;
    let before = registry.catalog();
    assert_eq!(before.active("good").unwrap().version(), 1);

    f.playbook("good-v2", "good", 2, "low", false);
    let summary = registry.reload().await.unwrap();
    assert_eq!(registry.active("good").unwrap().version(), 2);
    // The old snapshot a reader still holds is unchanged.
    assert_eq!(before.active("good").unwrap().version(), 1);
    // v1 still in the directory is now below the recorded v2.
    assert!(
        summary
            .rejections
            .iter()
            .any(|r| r.reason.label() == "downgrade")
    );
}

#[tokio::test]
async fn bindings_need_two_distinct_signers() {
    let f = Fixture::new().await;
    f.playbook("good", "good", 1, "low", false);
    let text = "bindings:\n  - policy: ransomware.encryption_burst\n    outcome: contain\n    playbook: good\n";
    f.dir.write_signed("bindings.yaml", text, false);
    let (registry, summary) = f.load().await;
    assert!(registry.catalog().bindings().is_empty());
    assert_eq!(summary.bindings, 0);
    let rejected = f.audit_events("bindings.rejected").await;
    assert_eq!(
        rejected.last().unwrap()["reason"],
        "dual_control",
        "{rejected:?}"
    );

    f.dir.write_bindings(text);
    let summary = registry.reload().await.unwrap();
    assert_eq!(summary.bindings, 1);
    assert_eq!(registry.catalog().bindings()[0].playbook, "good");
    assert_eq!(f.audit_events("bindings.loaded").await.len(), 1);
}

#[tokio::test]
async fn a_refused_replacement_keeps_the_last_verified_version_and_a_removed_file_retires_it() {
    let f = Fixture::new().await;
    f.playbook("good", "good", 1, "low", false);
    f.playbook("edited", "edited", 4, "low", false);
    f.playbook("gone", "gone", 1, "low", false);
    let (registry, _) = f.load().await;
    let original = registry.active("edited").unwrap().sha256();

    // Edited without a version bump (equivocation), and `gone` deleted.
    f.playbook("edited", "edited", 4, "high", false);
    std::fs::remove_file(f.dir.path("playbooks/gone.yaml")).unwrap();
    let summary = registry.reload().await.unwrap();
    assert!(
        summary
            .rejections
            .iter()
            .any(|r| r.file.ends_with("edited.yaml") && r.reason.label() == "equivocation"),
        "{:#?}",
        summary.rejections
    );
    let kept = registry
        .active("edited")
        .expect("the last verified version stays");
    assert_eq!(kept.sha256(), original);
    assert_eq!(summary.kept.len(), 1, "{:?}", summary.kept);
    assert_eq!(summary.kept[0].what, "playbook edited@4");
    assert!(
        registry.active("gone").is_none(),
        "a deleted file retires its playbook"
    );
    assert!(registry.active("good").is_some());
    let audited = f.audit_events("playbook.kept").await;
    assert_eq!(audited.len(), 1, "{audited:?}");
    assert_eq!(audited[0]["playbook_id"], "edited");

    // A newer version that the configuration refuses: the kept one still stays.
    f.dir.write_signed(
        "playbooks/edited.yaml",
        &playbook_text("edited", 5, "low").replace(
            "action: notify\n    with: {message: \"hello\"}",
            "action: exec\n    with: {command: /bin/false}",
        ),
        false,
    );
    let summary = registry.reload().await.unwrap();
    assert!(
        summary
            .rejections
            .iter()
            .any(|r| r.reason.label() == "command_not_allowed"),
        "{:#?}",
        summary.rejections
    );
    assert_eq!(registry.active("edited").unwrap().sha256(), original);

    // Its signing key leaves the trust store: the kept version is withdrawn with it.
    std::fs::remove_file(f.dir.path("trusted-keys/author-a.pub")).unwrap();
    f.dir.write_signed(
        "playbooks/other.yaml",
        &playbook_text("other", 1, "low"),
        false,
    );
    let summary = registry.reload().await.unwrap();
    assert!(registry.active("edited").is_none(), "{:?}", summary.kept);
    assert!(summary.kept.is_empty());
}

#[tokio::test]
async fn refused_bindings_keep_the_last_verified_ones_unless_the_file_is_gone() {
    let f = Fixture::new().await;
    f.playbook("good", "good", 1, "low", false);
    let text = "bindings:\n  - {policy: p, outcome: o, playbook: good}\n";
    f.dir.write_bindings(text);
    let (registry, _) = f.load().await;
    assert_eq!(registry.catalog().bindings().len(), 1);

    // The second signature goes missing: refused (dual control), the last verified stay.
    std::fs::remove_file(f.dir.path("bindings.yaml.sig.2")).unwrap();
    let summary = registry.reload().await.unwrap();
    assert!(
        summary
            .rejections
            .iter()
            .any(|r| r.file.ends_with("bindings.yaml") && r.reason.label() == "dual_control")
    );
    assert_eq!(summary.bindings, 1);
    assert_eq!(registry.catalog().bindings().len(), 1);
    assert_eq!(summary.kept[0].what, "bindings");
    assert_eq!(f.audit_events("bindings.kept").await.len(), 1);

    // The file removed: no bindings.
    std::fs::remove_file(f.dir.path("bindings.yaml")).unwrap();
    let summary = registry.reload().await.unwrap();
    assert_eq!(summary.bindings, 0);
    assert!(registry.catalog().bindings().is_empty());
}

#[tokio::test]
async fn a_binding_without_an_active_playbook_is_reported() {
    let f = Fixture::new().await;
    f.playbook("good", "good", 1, "low", false);
    f.dir.write_bindings("bindings:\n  - {policy: p, outcome: o, playbook: good}\n  - {policy: p, outcome: x, playbook: missing}\n");
    let (registry, _) = f.load().await;
    let catalog = registry.catalog();
    let unresolved: Vec<&str> = catalog
        .unresolved_bindings()
        .map(|b| b.playbook.as_str())
        .collect();
    assert_eq!(unresolved, ["missing"]);
}

/// A critical playbook signed twice by one RSA key, trusted once as plain (PKCS#1 v1.5) and
/// once as PSS (`NAME.pss.pub`): one key is one signer, so the trust store refuses both
/// files and the playbook does not load.
#[tokio::test]
async fn one_rsa_key_trusted_as_plain_and_as_pss_never_makes_dual_control() {
    let f = Fixture::new().await;
    f.playbook("good", "good", 1, "low", false);
    let key = f.dir.path("keys/rsa.key");
    let k = key.to_str().unwrap();
    let plain = f.dir.path("trusted-keys/rsa.pub");
    openssl_key_pair("RSA", Some("rsa_keygen_bits:4096"), &key, &plain);
    std::fs::copy(&plain, f.dir.path("trusted-keys/rsa.pss.pub")).unwrap();
    let doc = f.dir.path("playbooks/crit.yaml");
    std::fs::write(&doc, playbook_text("crit", 1, "critical")).unwrap();
    let d = doc.to_str().unwrap();
    let sig = format!("{d}.sig");
    let sig2 = format!("{d}.sig.2");
    openssl(&["dgst", "-sha256", "-sign", k, "-out", &sig, d]);
    openssl(&[
        "dgst",
        "-sha256",
        "-sign",
        k,
        "-sigopt",
        "rsa_padding_mode:pss",
        "-out",
        &sig2,
        d,
    ]);

    let (registry, summary) = f.load().await;
    assert!(registry.active("crit").is_none());
    assert!(registry.active("good").is_some());
    let refused: Vec<String> = summary
        .refused_keys
        .iter()
        .map(|r| r.error.to_string())
        .collect();
    assert_eq!(refused.len(), 2, "{refused:?}");
    assert!(
        refused
            .iter()
            .all(|m| m.contains("rsa.pub") && m.contains("rsa.pss.pub")),
        "{refused:?}"
    );
    assert!(
        summary
            .rejections
            .iter()
            .any(|r| r.file.ends_with("crit.yaml")),
        "{:#?}",
        summary.rejections
    );

    // Even a tool that builds its own trust store cannot trust the key twice.
    let pem = std::fs::read(&plain).unwrap();
    let as_plain = PublicKey::parse_pem(&pem, &plain).unwrap();
    let as_pss = PublicKey::parse_pem(&pem, &plain)
        .unwrap()
        .bind_to_pss(&plain)
        .unwrap();
    let mut keys = TrustedKeys::default();
    keys.insert(as_plain, plain.clone()).unwrap();
    assert!(keys.insert(as_pss, plain.clone()).is_err());
}
