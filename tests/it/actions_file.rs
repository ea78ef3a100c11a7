//! `file.quarantine` / `file.restore` through a real actuator on real files, on one filesystem
//! and across two, confined to the actuator's file roots.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use playbookd::actions::ActionError;
use playbookd::config::ActionsConfig;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::actions_support::{
    ActuatorSetup, Fails, TestActuator, assert_fails, ctx, is_root, must, root_for,
};

/// An actuator keeping its quarantine in `quarantine_dir`, allowed to act under `root`.
fn actuator(quarantine_dir: &Path, root: &Path) -> TestActuator {
    TestActuator::start(ActuatorSetup {
        quarantine_dir: Some(quarantine_dir.to_owned()),
        roots: vec![root.to_owned()],
        ..ActuatorSetup::default()
    })
}

/// A scratch directory, its quarantine `q` and an actuator for both, with the default actions
/// configuration: (directory, quarantine, configuration, actuator).
fn quarantine_in_tempdir() -> (tempfile::TempDir, PathBuf, ActionsConfig, TestActuator) {
    let work = tempfile::tempdir().unwrap();
    let quarantine_dir = work.path().join("q");
    let actuator = actuator(&quarantine_dir, work.path());
    (work, quarantine_dir, ActionsConfig::default(), actuator)
}

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount() -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        must(&[
            "/usr/bin/mount",
            "-t",
            "tmpfs",
            "-o",
            "size=8m,mode=0700",
            "tmpfs",
            dir.path().to_str().unwrap(),
        ]);
        Tmpfs(dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("/usr/bin/umount")
            .arg(self.0.path())
            .status();
    }
}

async fn round_trip(quarantine_dir: PathBuf, work: &Path) {
    let config = ActionsConfig::default();
    let actuator = actuator(&quarantine_dir, work);
    let path = work.join("payload.bin");
    let content: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&path, &content).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o751)).unwrap();
    let owner = if is_root() {
        (1234, 2345)
    } else {
        (
            playbookd::sys::effective_uid(),
            std::fs::metadata(&path).unwrap().gid(),
        )
    };
    std::os::unix::fs::chown(&path, Some(owner.0), Some(owner.1)).unwrap();
    let expected_hash = hex::encode(Sha256::digest(&content));

    let step = ctx(Duration::from_secs(10));
    let quarantined = actuator
        .on_path(&config, "file.quarantine", &path, &step)
        .await;
    assert_eq!(quarantined.summary["sha256"], expected_hash);
    assert!(!path.exists(), "the original is still there");
    let copy = quarantine_dir.join(step.idempotency_key_hex());
    assert_eq!(std::fs::read(&copy).unwrap(), content);
    assert_eq!(std::fs::metadata(&copy).unwrap().mode() & 0o777, 0o400);
    let sidecar: serde_json::Value = serde_json::from_slice(
        &std::fs::read(quarantine_dir.join(format!("{}.json", step.idempotency_key_hex())))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(sidecar["original_path"], path.to_str().unwrap());
    assert_eq!(sidecar["mode"], 0o751);
    assert_eq!(sidecar["uid"], owner.0);

    // Same key again: same summary, nothing changes.
    let again = actuator
        .on_path(&config, "file.quarantine", &path, &step)
        .await;
    assert_eq!(again, quarantined);

    // The rollback runs with its own key and the same {path}.
    let rollback = ctx(Duration::from_secs(10));
    let restored = actuator
        .on_path(&config, "file.restore", &path, &rollback)
        .await;
    assert_eq!(restored.summary["sha256"], expected_hash);
    assert_eq!(std::fs::read(&path).unwrap(), content);
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o751);
    assert_eq!((meta.uid(), meta.gid()), owner);
    assert!(!copy.exists());
    let again = actuator
        .act(&config, "file.restore", json!({"path": path}))
        .await
        .unwrap();
    assert_eq!(again, restored);
}

#[tokio::test]
async fn quarantine_and_restore_round_trip_on_one_filesystem() {
    let work = tempfile::tempdir().unwrap();
    round_trip(work.path().join("quarantine"), work.path()).await;
}

#[tokio::test]
async fn quarantine_and_restore_round_trip_across_two_filesystems() {
    if !root_for("mounting a tmpfs") {
        return;
    }
    let tmpfs = Tmpfs::mount();
    let work = tempfile::tempdir().unwrap();
    assert_ne!(
        std::fs::metadata(tmpfs.0.path()).unwrap().dev(),
        std::fs::metadata(work.path()).unwrap().dev(),
        "the test needs two filesystems"
    );
    round_trip(tmpfs.0.path().join("quarantine"), work.path()).await;
}

#[tokio::test]
async fn a_tampered_quarantined_copy_is_not_restored() {
    let (work, quarantine_dir, config, actuator) = quarantine_in_tempdir();
    let path = work.path().join("evil.sh");
    std::fs::write(&path, b"#!/bin/sh\necho hi\n").unwrap();
    let step = ctx(Duration::from_secs(10));
    actuator
        .on_path(&config, "file.quarantine", &path, &step)
        .await;
    let copy = quarantine_dir.join(step.idempotency_key_hex());
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(&copy, b"#!/bin/sh\nrm -rf /\n").unwrap();
    assert_fails(
        actuator
            .act(&config, "file.restore", json!({"path": path}))
            .await,
        Fails::Permanent,
        &["sha256"],
    );
    assert!(!path.exists());
}

#[tokio::test]
async fn symlinks_directories_and_the_quarantine_itself_are_refused() {
    let (work, quarantine_dir, config, actuator) = quarantine_in_tempdir();
    let target = work.path().join("target");
    std::fs::write(&target, b"x").unwrap();
    let link = work.path().join("link");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    std::fs::create_dir(work.path().join("dir")).unwrap();
    std::fs::create_dir_all(&quarantine_dir).unwrap();
    std::fs::write(quarantine_dir.join("inside"), b"x").unwrap();
    let linked_dir = work.path().join("linked-dir");
    std::os::unix::fs::symlink(work.path(), &linked_dir).unwrap();

    for (path, expected) in [
        (link.clone(), "symlink"),
        (work.path().join("dir"), "not a regular file"),
        (quarantine_dir.join("inside"), "inside the quarantine"),
        (linked_dir.join("target"), "symlink in its directories"),
        (work.path().join("missing"), "does not exist"),
    ] {
        let error = actuator
            .act(&config, "file.quarantine", json!({"path": path}))
            .await
            .unwrap_err();
        assert!(
            matches!(&error, ActionError::Permanent(m) if m.contains(expected)),
            "{}: {error}",
            path.display()
        );
    }
    assert!(target.exists() && link.exists());
    let error = actuator
        .act(&config, "file.restore", json!({"path": target}))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("nothing quarantined"), "{error}");
}

#[tokio::test]
async fn a_file_outside_the_roots_is_refused_and_left_in_place() {
    let work = tempfile::tempdir().unwrap();
    let granted = work.path().join("granted");
    std::fs::create_dir(&granted).unwrap();
    let actuator = actuator(&work.path().join("q"), &granted);
    let outside = work.path().join("payload");
    std::fs::write(&outside, b"secret").unwrap();
    assert_fails(
        actuator
            .act(
                &ActionsConfig::default(),
                "file.quarantine",
                json!({"path": outside}),
            )
            .await,
        Fails::Permanent,
        &["outside the file roots"],
    );
    assert_eq!(std::fs::read(&outside).unwrap(), b"secret");
}
