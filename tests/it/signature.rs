//! Signatures interoperate with stock openssl in both directions, through the real binary.

use std::path::Path;
use std::process::Command;

use playbookd::registry::secure_open::TrustedDir;
use playbookd::registry::signature::{FileError, KeyId, SignatureError, TrustedKeys};
use sha2::{Digest, Sha256};

use crate::helpers::{assert_contains, openssl, openssl_key_pair, run_cli};

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
    openssl_key_pair("ed25519", None, &t.path("o.key"), &t.path("trusted/o.pub"));
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
    let openssl_verifies = || {
        openssl_ok(&[
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
        ])
    };
    assert!(openssl_verifies());
    // openssl refuses it once a byte changes, as we do.
    std::fs::write(&doc, "id: b\nversion: 2\n").unwrap();
    assert!(!openssl_verifies());
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

/// `openssl dgst -sha256 -sign KEY [-sigopt …] -out DOC.sig DOC`.
fn openssl_sign(key: &Path, doc: &Path, sigopts: &[&str]) {
    let sig = format!("{}.sig", s(doc));
    let mut args = vec!["dgst", "-sha256", "-sign", s(key)];
    for opt in sigopts {
        args.extend(["-sigopt", opt]);
    }
    args.extend(["-out", &sig, s(doc)]);
    openssl(&args);
}

/// A 4096-bit RSA key made by openssl: `rsaEncryption` unless `pss` (`-algorithm RSA-PSS`).
fn openssl_rsa_key(t: &Setup, name: &str, pss: bool) -> std::path::PathBuf {
    let key = t.path(&format!("{name}.key"));
    let algorithm = if pss { "RSA-PSS" } else { "RSA" };
    openssl(&[
        "genpkey",
        "-algorithm",
        algorithm,
        "-pkeyopt",
        "rsa_keygen_bits:4096",
        "-out",
        s(&key),
    ]);
    key
}

fn openssl_public(key: &Path, out: &Path) {
    openssl(&["pkey", "-in", s(key), "-pubout", "-out", s(out)]);
}

/// The same RSA public key re-labelled id-RSASSA-PSS (no parameters), as openssl writes the
/// public half of `genpkey -algorithm RSA-PSS`: openssl refuses to make a PKCS#1 v1.5
/// signature with such a key, so this is how the test gets one made by it.
fn as_rsa_pss_spki(plain_pub: &Path, out: &Path) {
    use rsa::pkcs8::der::asn1::BitStringRef;
    use rsa::pkcs8::der::{Encode, pem::LineEnding};
    use rsa::pkcs8::spki::{AlgorithmIdentifierRef, SubjectPublicKeyInfoRef};
    let (_, der) = rsa::pkcs8::der::pem::decode_vec(&std::fs::read(plain_pub).unwrap()).unwrap();
    let plain = SubjectPublicKeyInfoRef::try_from(der.as_slice()).unwrap();
    let pss = SubjectPublicKeyInfoRef {
        algorithm: AlgorithmIdentifierRef {
            oid: rsa::pkcs8::ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.10"),
            parameters: None,
        },
        subject_public_key: BitStringRef::from_bytes(plain.subject_public_key.raw_bytes()).unwrap(),
    };
    let pem =
        rsa::pkcs8::der::pem::encode_string("PUBLIC KEY", LineEnding::LF, &pss.to_der().unwrap())
            .unwrap();
    std::fs::write(out, pem).unwrap();
}

fn wrong_scheme(result: Result<Vec<KeyId>, FileError>) -> bool {
    matches!(
        result,
        Err(FileError::Signature {
            source: SignatureError::WrongScheme { .. },
            ..
        })
    )
}

/// Every combination of key kind and signature padding, with keys and signatures made by
/// stock openssl: a key verifies its own scheme only.
#[test]
fn rsa_keys_verify_only_their_own_scheme_with_openssl_signatures() {
    let t = Setup::new();
    let plain = openssl_rsa_key(&t, "plain", false);
    let doc = t.path("docs/a.yaml");
    std::fs::write(&doc, "id: a\nversion: 7\n").unwrap();

    // Plain key: PKCS#1 v1.5 verifies; PSS (any salt) is refused, and the error says why.
    openssl_public(&plain, &t.path("trusted/r.pub"));
    let expected_id = openssl_key_id(&t.path("trusted/r.pub"), &t.path("r.der"));
    openssl_sign(&plain, &doc, &[]);
    assert_eq!(t.verify("a.yaml").unwrap()[0].as_str(), expected_id);
    for salt in ["rsa_pss_saltlen:max", "rsa_pss_saltlen:32"] {
        openssl_sign(&plain, &doc, &["rsa_padding_mode:pss", salt]);
        assert!(
            wrong_scheme(t.verify("a.yaml")),
            "plain key took PSS {salt}"
        );
    }

    // The same key marked PSS in the trust store (`r.pss.pub`): PSS with openssl's default
    // salt (the maximum), 32 and an odd length verify; PKCS#1 v1.5 is refused.
    std::fs::rename(t.path("trusted/r.pub"), t.path("trusted/r.pss.pub")).unwrap();
    for extra in [None, Some("rsa_pss_saltlen:32"), Some("rsa_pss_saltlen:17")] {
        let mut opts = vec!["rsa_padding_mode:pss"];
        opts.extend(extra);
        openssl_sign(&plain, &doc, &opts);
        assert_eq!(
            t.verify("a.yaml").map_err(|e| e.to_string()).unwrap()[0].as_str(),
            expected_id,
            "PSS {extra:?}"
        );
    }
    openssl_sign(&plain, &doc, &[]);
    assert!(
        wrong_scheme(t.verify("a.yaml")),
        "PSS-marked key took PKCS#1 v1.5"
    );
    // A PSS signature over other bytes is plainly invalid.
    openssl_sign(&plain, &doc, &["rsa_padding_mode:pss"]);
    std::fs::write(&doc, "id: a\nversion: 8\n").unwrap();
    assert!(matches!(
        t.verify("a.yaml"),
        Err(FileError::Signature {
            source: SignatureError::Invalid,
            ..
        })
    ));
    std::fs::remove_file(t.path("trusted/r.pss.pub")).unwrap();

    // A key whose SPKI says RSASSA-PSS: the PKCS#1 v1.5 signature its modulus made is refused.
    as_rsa_pss_spki(&plain_pub(&t, &plain), &t.path("trusted/p.pub"));
    openssl_sign(&plain, &doc, &[]);
    assert!(
        wrong_scheme(t.verify("a.yaml")),
        "RSASSA-PSS key took PKCS#1 v1.5"
    );
    openssl_sign(&plain, &doc, &["rsa_padding_mode:pss"]);
    assert!(t.verify("a.yaml").is_ok());
    std::fs::remove_file(t.path("trusted/p.pub")).unwrap();

    // `openssl genpkey -algorithm RSA-PSS`: openssl signs PSS with it, and it verifies.
    let pss = openssl_rsa_key(&t, "pss", true);
    openssl_public(&pss, &t.path("trusted/pss.pub"));
    openssl_sign(&pss, &doc, &[]);
    assert!(
        t.verify("a.yaml").is_ok(),
        "openssl's RSA-PSS key and signature"
    );
    openssl_sign(&pss, &doc, &["rsa_pss_saltlen:32"]);
    assert!(t.verify("a.yaml").is_ok());

    // Ours (PKCS#1 v1.5 with a plain key), verified by openssl and by `verify`, which names
    // the scheme.
    std::fs::remove_file(t.path("trusted/pss.pub")).unwrap();
    openssl_public(&plain, &t.path("trusted/r.pub"));
    std::fs::write(&doc, PLAYBOOK).unwrap();
    let (status, _, stderr) = run_cli(&["sign", "--key", s(&plain), s(&doc)], &[]);
    assert!(status.success(), "{stderr}");
    openssl(&[
        "dgst",
        "-sha256",
        "-verify",
        s(&t.path("trusted/r.pub")),
        "-signature",
        &format!("{}.sig", s(&doc)),
        s(&doc),
    ]);
    let (status, stdout, stderr) = run_cli(
        &["verify", "--trusted-keys", s(&t.path("trusted")), s(&doc)],
        &[],
    );
    assert!(status.success(), "{stdout}{stderr}");
    assert_contains(&stdout, &format!("{expected_id} (rsa-pkcs1v15-sha256)"));
}

/// A valid playbook with one low-risk step.
const PLAYBOOK: &str = "id: a\nversion: 1\nname: A\nowners: {technical: a@example.org, operational: b@example.org}\n\
steps:\n  - {id: one, action: noop, rollback: none}\n";

/// The public half of `key` written beside it.
fn plain_pub(t: &Setup, key: &Path) -> std::path::PathBuf {
    let out = t.path("plain-public.pem");
    openssl_public(key, &out);
    out
}

#[test]
fn one_key_under_two_names_or_schemes_is_refused_naming_both_files() {
    let t = Setup::new();
    let plain = openssl_rsa_key(&t, "plain", false);
    openssl_public(&plain, &t.path("trusted/alice.pub"));
    std::fs::copy(t.path("trusted/alice.pub"), t.path("trusted/alice.pss.pub")).unwrap();
    let (keys, refused) = TrustedKeys::load(&t.path("trusted")).unwrap();
    assert!(keys.is_empty(), "neither copy is trusted");
    assert_eq!(refused.len(), 2, "{refused:?}");
    for refusal in &refused {
        let message = refusal.error.to_string();
        assert_contains(&message, "alice.pub");
        assert_contains(&message, "alice.pss.pub");
    }
    // The same key under another name (same encoding), beside an unrelated Ed25519 key.
    std::fs::rename(t.path("trusted/alice.pss.pub"), t.path("trusted/bob.pub")).unwrap();
    run_cli(
        &[
            "keygen",
            "--algorithm",
            "ed25519",
            "--out",
            s(&t.path("carol")),
        ],
        &[],
    );
    std::fs::copy(t.path("carol.pub"), t.path("trusted/carol.pub")).unwrap();
    let (keys, refused) = TrustedKeys::load(&t.path("trusted")).unwrap();
    assert_eq!(keys.len(), 1, "only carol");
    assert_eq!(refused.len(), 2);
    assert!(refused[0].error.to_string().contains("bob.pub"));

    // `verify` says both are not trusted, and refuses what only they signed.
    let doc = t.path("docs/a.yaml");
    std::fs::write(&doc, PLAYBOOK).unwrap();
    openssl_sign(&plain, &doc, &[]);
    let (status, stdout, stderr) = run_cli(
        &["verify", "--trusted-keys", s(&t.path("trusted")), s(&doc)],
        &[],
    );
    assert_eq!(status.code(), Some(65), "{stdout}{stderr}");
    assert_contains(&stderr, "same key as");
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
    std::fs::write(&good, PLAYBOOK).unwrap();
    std::fs::write(&unsigned, PLAYBOOK).unwrap();
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
    assert_contains(&stdout, "good.yaml: OK (playbook a@1)");
    assert_contains(&stdout, "(ed25519)");
    assert_contains(&stdout, "unsigned.yaml: REJECTED (signature_missing)");
}

#[test]
fn rsa_2048_key_in_the_trust_dir_is_refused_naming_the_file() {
    let t = Setup::new();
    let bits = Some("rsa_keygen_bits:2048");
    openssl_key_pair("RSA", bits, &t.path("w.key"), &t.path("trusted/weak.pub"));
    let (keys, refused) = TrustedKeys::load(&t.path("trusted")).unwrap();
    assert!(keys.is_empty());
    assert_eq!(refused.len(), 1);
    let message = refused[0].error.to_string();
    assert_contains(&message, "weak.pub");
    assert_contains(&message, "2048");

    // And our signer refuses to sign with it.
    let doc = t.path("docs/a.yaml");
    std::fs::write(&doc, "x").unwrap();
    let (status, _, stderr) = run_cli(&["sign", "--key", s(&t.path("w.key")), s(&doc)], &[]);
    assert_eq!(status.code(), Some(65), "{stderr}");
    assert_contains(&stderr, "2048");
}

/// `verify` applies the registry's rules, not just the signatures: dual control for critical
/// playbooks and bindings, strict parsing, and with --config the configuration's limits.
#[test]
fn verify_applies_every_rule_the_daemon_applies_and_names_the_one_that_failed() {
    let t = Setup::new();
    for name in ["k1", "k2"] {
        run_cli(
            &[
                "keygen",
                "--algorithm",
                "ed25519",
                "--out",
                s(&t.path(name)),
            ],
            &[],
        );
        std::fs::copy(
            t.path(&format!("{name}.pub")),
            t.path(&format!("trusted/{name}.pub")),
        )
        .unwrap();
    }
    let sign = |doc: &Path, second: bool| {
        let key = t.path(if second { "k2.key" } else { "k1.key" });
        let mut args = vec!["sign", "--key", s(&key)];
        if second {
            args.push("--second");
        }
        args.push(s(doc));
        let (status, _, stderr) = run_cli(&args, &[]);
        assert!(status.success(), "{stderr}");
    };
    let verify = |extra: &[&str], doc: &Path| {
        let trusted = t.path("trusted");
        let mut args = vec!["verify", "--trusted-keys", s(&trusted)];
        args.extend(extra);
        args.push(s(doc));
        run_cli(&args, &[])
    };
    // `verify` of one document, which must fail with 65 (or pass): its report.
    let rejected = |doc: &Path| {
        let (status, stdout, _) = verify(&[], doc);
        assert_eq!(status.code(), Some(65), "{stdout}");
        stdout
    };
    let verified = |doc: &Path| {
        let (status, stdout, _) = verify(&[], doc);
        assert!(status.success(), "{stdout}");
        stdout
    };
    let critical = t.path("docs/critical.yaml");
    std::fs::write(
        &critical,
        PLAYBOOK.replace("rollback: none}", "risk: critical, rollback: none}"),
    )
    .unwrap();
    sign(&critical, false);
    let stdout = rejected(&critical);
    assert_contains(&stdout, "critical.yaml: REJECTED (dual_control)");
    assert_contains(&stdout, "two distinct trusted keys");
    // The same key twice is still one signer.
    std::fs::copy(
        format!("{}.sig", s(&critical)),
        format!("{}.sig.2", s(&critical)),
    )
    .unwrap();
    rejected(&critical);
    sign(&critical, true);
    let stdout = verified(&critical);
    assert!(stdout.contains(" and "), "two signers named: {stdout}");

    let bindings = t.path("docs/bindings.yaml");
    std::fs::write(
        &bindings,
        "bindings:\n  - {policy: p, outcome: o, playbook: a}\n",
    )
    .unwrap();
    sign(&bindings, false);
    let stdout = rejected(&bindings);
    assert_contains(&stdout, "bindings.yaml: REJECTED (dual_control)");
    assert_contains(&stdout, "bindings file");
    sign(&bindings, true);
    let stdout = verified(&bindings);
    assert_contains(&stdout, "OK (bindings, 1)");

    // A signed file that is not a valid document.
    let broken = t.path("docs/broken.yaml");
    std::fs::write(&broken, "id: broken\n").unwrap();
    sign(&broken, false);
    let stdout = rejected(&broken);
    assert_contains(&stdout, "REJECTED (invalid_document)");

    // With --config: the configuration's limits, as the daemon applies them at load.
    let exec = t.path("docs/exec.yaml");
    std::fs::write(
        &exec,
        PLAYBOOK.replace(
            "action: noop, rollback: none",
            "action: exec, with: {command: /bin/false}, risk: low, rollback: none",
        ),
    )
    .unwrap();
    sign(&exec, false);
    let config = t.path("playbookd.toml");
    std::fs::write(
        &config,
        "[actions.exec]\nallowed_commands = [\"/bin/true\"]\n",
    )
    .unwrap();
    let (status, stdout, _) = verify(&[], &exec);
    assert!(
        status.success(),
        "without --config the limits are not known: {stdout}"
    );
    let (status, stdout, _) = verify(&["--config", s(&config)], &exec);
    assert_eq!(status.code(), Some(65), "{stdout}");
    assert_contains(&stdout, "REJECTED (command_not_allowed)");
    assert_contains(&stdout, "step `one`, with.command");
    assert_contains(&stdout, "actions.exec.allowed_commands");
}
