//! Signatures interoperate with stock openssl in both directions, through the real binary.

use std::path::Path;
use std::process::Command;

use playbookd::registry::secure_open::TrustedDir;
use playbookd::registry::signature::{FileError, KeyId, SignatureError, TrustedKeys};
use sha2::{Digest, Sha256};

use crate::helpers::run_cli;

fn openssl(args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        output.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn openssl_ok(args: &[&str]) -> bool {
    Command::new("openssl")
        .args(args)
        .output()
        .expect("run openssl")
        .status
        .success()
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A trust directory holding `pub_pem` only, and a document directory, both private.
struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("trusted")).unwrap();
        std::fs::create_dir(dir.path().join("docs")).unwrap();
        Setup { dir }
    }
    fn path(&self, relative: &str) -> std::path::PathBuf {
        self.dir.path().join(relative)
    }
    fn keys(&self) -> TrustedKeys {
        let (keys, refused) = TrustedKeys::load(&self.path("trusted")).unwrap();
        assert!(refused.is_empty(), "{refused:?}");
        keys
    }
    fn verify(&self, doc: &str) -> Result<Vec<KeyId>, FileError> {
        let dir = TrustedDir::open(&self.path("docs")).unwrap();
        self.keys()
            .verify_file(&dir, &self.path(&format!("docs/{doc}")))
            .map(|verified| verified.signers().to_vec())
    }
}

/// `openssl pkey -pubin -outform DER | sha256sum`.
fn openssl_key_id(pub_pem: &Path, out: &Path) -> String {
    openssl(&[
        "pkey",
        "-pubin",
        "-in",
        s(pub_pem),
        "-outform",
        "DER",
        "-out",
        s(out),
    ]);
    hex::encode(Sha256::digest(std::fs::read(out).unwrap()))
}

#[test]
fn openssl_ed25519_signature_verifies_and_ours_verifies_with_openssl() {
    let t = Setup::new();
    // openssl → us
    openssl(&[
        "genpkey",
        "-algorithm",
        "ed25519",
        "-out",
        s(&t.path("o.key")),
    ]);
    openssl(&[
        "pkey",
        "-in",
        s(&t.path("o.key")),
        "-pubout",
        "-out",
        s(&t.path("trusted/o.pub")),
    ]);
    let doc = t.path("docs/a.yaml");
    std::fs::write(&doc, "id: a\nversion: 1\n").unwrap();
    openssl(&[
        "pkeyutl",
        "-sign",
        "-rawin",
        "-inkey",
        s(&t.path("o.key")),
        "-in",
        s(&doc),
        "-out",
        s(&t.path("docs/a.yaml.sig")),
    ]);
    let expected_id = openssl_key_id(&t.path("trusted/o.pub"), &t.path("o.der"));
    assert_eq!(t.verify("a.yaml").unwrap()[0].as_str(), expected_id);

    // us → openssl, through the CLI
    let prefix = t.path("ours");
    let (status, stdout, stderr) = run_cli(
        &["keygen", "--algorithm", "ed25519", "--out", s(&prefix)],
        &[],
    );
    assert!(status.success(), "{stderr}");
    let ours_id = openssl_key_id(&t.path("ours.pub"), &t.path("ours.der"));
    assert!(
        stdout.contains(&ours_id),
        "keygen must print the key id {ours_id}: {stdout}"
    );
    let doc = t.path("docs/b.yaml");
    std::fs::write(&doc, "id: b\nversion: 1\n").unwrap();
    let (status, _, stderr) = run_cli(&["sign", "--key", s(&t.path("ours.key")), s(&doc)], &[]);
    assert!(status.success(), "{stderr}");
    assert!(openssl_ok(&[
        "pkeyutl",
        "-verify",
        "-pubin",
        "-inkey",
        s(&t.path("ours.pub")),
        "-rawin",
        "-in",
        s(&doc),
        "-sigfile",
        s(&t.path("docs/b.yaml.sig")),
    ]));
    // openssl refuses it once a byte changes, as we do.
    std::fs::write(&doc, "id: b\nversion: 2\n").unwrap();
    assert!(!openssl_ok(&[
        "pkeyutl",
        "-verify",
        "-pubin",
        "-inkey",
        s(&t.path("ours.pub")),
        "-rawin",
        "-in",
        s(&doc),
        "-sigfile",
        s(&t.path("docs/b.yaml.sig")),
    ]));
}

#[test]
fn keygen_writes_a_private_key_only_its_owner_can_read() {
    use std::os::unix::fs::PermissionsExt;
    let t = Setup::new();
    let prefix = t.path("k");
    let (status, _, stderr) = run_cli(
        &["keygen", "--algorithm", "ed25519", "--out", s(&prefix)],
        &[],
    );
    assert!(status.success(), "{stderr}");
    let mode = std::fs::metadata(t.path("k.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(
        std::fs::read_to_string(t.path("k.key"))
            .unwrap()
            .starts_with("-----BEGIN PRIVATE KEY-----")
    );
    assert!(
        std::fs::read_to_string(t.path("k.pub"))
            .unwrap()
            .starts_with("-----BEGIN PUBLIC KEY-----")
    );
    // Never over an existing key.
    let (status, _, stderr) = run_cli(
        &["keygen", "--algorithm", "ed25519", "--out", s(&prefix)],
        &[],
    );
    assert_eq!(status.code(), Some(73), "{stderr}");
}

#[test]
fn rsa_4096_signatures_interoperate_with_openssl_in_every_padding() {
    let t = Setup::new();
    let key = t.path("r.key");
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:4096",
        "-out",
        s(&key),
    ]);
    openssl(&[
        "pkey",
        "-in",
        s(&key),
        "-pubout",
        "-out",
        s(&t.path("trusted/r.pub")),
    ]);
    let expected_id = openssl_key_id(&t.path("trusted/r.pub"), &t.path("r.der"));
    let doc = t.path("docs/a.yaml");
    std::fs::write(&doc, "id: a\nversion: 7\n").unwrap();
    let sig = t.path("docs/a.yaml.sig");

    // PKCS#1 v1.5, openssl defaults.
    openssl(&[
        "dgst",
        "-sha256",
        "-sign",
        s(&key),
        "-out",
        s(&sig),
        s(&doc),
    ]);
    assert_eq!(t.verify("a.yaml").unwrap()[0].as_str(), expected_id);

    // PSS with openssl's default salt (the maximum, 478 bytes), then 32, then an odd length.
    for extra in [None, Some("rsa_pss_saltlen:32"), Some("rsa_pss_saltlen:17")] {
        let mut args = vec![
            "dgst",
            "-sha256",
            "-sign",
            s(&key),
            "-sigopt",
            "rsa_padding_mode:pss",
        ];
        if let Some(salt) = extra {
            args.extend(["-sigopt", salt]);
        }
        args.extend(["-out", s(&sig), s(&doc)]);
        openssl(&args);
        assert_eq!(
            t.verify("a.yaml").map_err(|e| e.to_string()).unwrap()[0].as_str(),
            expected_id,
            "PSS {extra:?}"
        );
    }
    // A PSS signature over other bytes is refused.
    std::fs::write(&doc, "id: a\nversion: 8\n").unwrap();
    assert!(matches!(
        t.verify("a.yaml"),
        Err(FileError::Signature {
            source: SignatureError::Invalid,
            ..
        })
    ));

    // Ours, verified by openssl.
    std::fs::write(&doc, "id: a\nversion: 9\n").unwrap();
    let (status, _, stderr) = run_cli(&["sign", "--key", s(&key), s(&doc)], &[]);
    assert!(status.success(), "{stderr}");
    openssl(&[
        "dgst",
        "-sha256",
        "-verify",
        s(&t.path("trusted/r.pub")),
        "-signature",
        s(&sig),
        s(&doc),
    ]);
    let (status, stdout, stderr) = run_cli(
        &["verify", "--trusted-keys", s(&t.path("trusted")), s(&doc)],
        &[],
    );
    assert!(status.success(), "{stdout}{stderr}");
    assert!(stdout.contains(&expected_id), "{stdout}");
}

#[test]
fn verify_names_each_failing_file_and_exits_65() {
    let t = Setup::new();
    let prefix = t.path("k");
    run_cli(
        &["keygen", "--algorithm", "ed25519", "--out", s(&prefix)],
        &[],
    );
    std::fs::copy(t.path("k.pub"), t.path("trusted/k.pub")).unwrap();
    let good = t.path("docs/good.yaml");
    let unsigned = t.path("docs/unsigned.yaml");
    std::fs::write(&good, "id: good\n").unwrap();
    std::fs::write(&unsigned, "id: unsigned\n").unwrap();
    run_cli(&["sign", "--key", s(&t.path("k.key")), s(&good)], &[]);
    let (status, stdout, _) = run_cli(
        &[
            "verify",
            "--trusted-keys",
            s(&t.path("trusted")),
            s(&good),
            s(&unsigned),
        ],
        &[],
    );
    assert_eq!(status.code(), Some(65));
    assert!(stdout.contains("good.yaml: OK"), "{stdout}");
    assert!(
        stdout.contains("unsigned.yaml: REJECTED (signature_missing)"),
        "{stdout}"
    );
}

#[test]
fn rsa_2048_key_in_the_trust_dir_is_refused_naming_the_file() {
    let t = Setup::new();
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        s(&t.path("w.key")),
    ]);
    openssl(&[
        "pkey",
        "-in",
        s(&t.path("w.key")),
        "-pubout",
        "-out",
        s(&t.path("trusted/weak.pub")),
    ]);
    let (keys, refused) = TrustedKeys::load(&t.path("trusted")).unwrap();
    assert!(keys.is_empty());
    assert_eq!(refused.len(), 1);
    let message = refused[0].error.to_string();
    assert!(
        message.contains("weak.pub") && message.contains("2048"),
        "{message}"
    );

    // And our signer refuses to sign with it.
    let doc = t.path("docs/a.yaml");
    std::fs::write(&doc, "x").unwrap();
    let (status, _, stderr) = run_cli(&["sign", "--key", s(&t.path("w.key")), s(&doc)], &[]);
    assert_eq!(status.code(), Some(65), "{stderr}");
    assert!(stderr.contains("2048"), "{stderr}");
}
